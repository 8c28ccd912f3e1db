"""Buttons on a job: cancel, those under a clip, /history's resend, and stale ones."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

from telegram import Update
from telegram.error import BadRequest

from bot import texts
from bot.context import BotData
from bot.handlers.common import Context, bot_data, enqueue, queue_text, usage_of
from bot.jobs import Job, JobOptions, Status
from bot.keyboards import (
    HistoryResend,
    JobCancel,
    ResultAction,
    ResultChoice,
    result_keyboard,
    status_keyboard,
)
from bot.limits import Refused, check_limits, veo_cost
from generator.engines.catalog import LOCAL_BACKENDS, enabled
from generator.options import INTENSITY_MOTION, MOTION_BANDS, Backend, motion_band, step_intensity

log = logging.getLogger(__name__)


def shift_motion(options: JobOptions, delta: int) -> JobOptions:
    """One step more (+1) or less (-1) motion: the next intensity, then the next motion band."""
    if options.motion is None:
        stepped = step_intensity(options.intensity, delta)
        if stepped is not options.intensity:
            return dataclasses.replace(options, intensity=stepped)
    current = options.motion if options.motion is not None else INTENSITY_MOTION[options.intensity]
    index = MOTION_BANDS.index(motion_band(current))
    target = min(max(index + delta, 0), len(MOTION_BANDS) - 1)
    band = MOTION_BANDS[target]
    if target == index:  # already in the end band: go to its edge
        value = band.high if delta > 0 else band.low
    else:
        value = (band.low + band.high) // 2
    return dataclasses.replace(options, motion=value)


def result_options(
    options: JobOptions,
    action: ResultChoice,
    used: Backend | None,
    veo_available: bool,
    local_engines: Sequence[Backend] = (Backend.SVD,),
) -> JobOptions:
    """The options for a result button: ``again``, ``more``, ``less`` or ``other`` (engine).

    ``other`` swaps the engine that made the clip: a local clip is remade by Veo when it is
    configured, else by the next offered local engine (``local_engines``, in card order); a
    Veo clip by the first local engine. It raises ``Refused`` when there is no other engine.
    """
    action = ResultChoice(action)
    if action is ResultChoice.AGAIN:
        return options
    if action in (ResultChoice.MORE, ResultChoice.LESS):
        return shift_motion(options, 1 if action is ResultChoice.MORE else -1)
    made_with = used or options.backend
    if made_with.local:
        others = [b for b in local_engines if b is not made_with]
        if veo_available:
            return options.on(Backend.VEO)
        if not others:
            raise Refused(texts.veo_budget_refused(texts.VEO_NOT_CONFIGURED))
        return options.on(others[0])
    return options.on(local_engines[0] if local_engines else Backend.SVD)


async def _own_job(update: Update, context: Context, job_id: int) -> Job | None:
    query = update.callback_query
    if query is None:
        return None
    job = await bot_data(context).queue.get(job_id)
    if job is None:
        await query.answer(texts.stale_button(), show_alert=True)
        return None
    if job.user_id != query.from_user.id:
        await query.answer(texts.not_yours(), show_alert=True)
        return None
    return job


async def cancel_job(data: BotData, job: Job, user_id: int, bot: Any) -> Job | None:
    """Cancel ``job`` for its owner: queued ends now; running stops at the next step."""
    result = await data.queue.cancel(job.id, user_id, now=data.clock())
    if result is None:
        return None
    if result.status is Status.RUNNING:
        await data.consumers.cancel(job.id)
        text = texts.cancel_requested()
    else:
        text = texts.cancelled()
    if job.status_message_id is not None:
        try:
            await bot.edit_message_text(text, chat_id=job.chat_id, message_id=job.status_message_id)
        except BadRequest as exc:
            # The status message may be gone or already say this; the job is cancelled anyway.
            log.info("job %s: status message not edited: %s", job.id, exc)
    return result


async def on_job_cancel(update: Update, context: Context) -> None:
    """Cancel under a status message."""
    query = update.callback_query
    if query is None:
        return
    payload = JobCancel.unpack(query.data or "")
    job = await _own_job(update, context, payload.job_id)
    if job is None:
        return
    if not job.active:
        await query.answer(texts.stale_button(), show_alert=True)
        return
    await query.answer()
    result = await cancel_job(bot_data(context), job, query.from_user.id, context.bot)
    if result is None:
        log.info("job %s: cancel came too late", job.id)


async def on_result_action(update: Update, context: Context) -> None:
    """Again / More motion / Less motion / Other engine under a video: a new job, same photo."""
    query = update.callback_query
    if query is None:
        return
    data = bot_data(context)
    payload = ResultAction.unpack(query.data or "")
    job = await _own_job(update, context, payload.job_id)
    if job is None:
        return
    if query.message is None:
        await query.answer(texts.stale_button(), show_alert=True)
        return
    chat_id, pressed_id = query.message.chat.id, query.message.message_id
    # Each press is its own job; the same press handled again (a replayed update) is not.
    key = f"result:{chat_id}:{query.id}"
    async with data.enqueue_lock:
        if await data.queue.by_dedupe_key(key) is not None:
            await query.answer()
            return
        # Result buttons sit on the job's video, never on a card (the press's own id keeps
        # presses apart, so no card row is written here): a press on someone else's card or
        # a card of another photo is forged, and touches nothing.
        pressed_card = await data.store.get_card(chat_id, pressed_id)
        if pressed_card is not None and (
            pressed_card.user_id != job.user_id or pressed_card.photo_path != job.photo_path
        ):
            await query.answer(texts.stale_button(), show_alert=True)
            return
        try:
            options = result_options(
                job.options,
                payload.action,
                job.used_backend,
                data.settings.veo.configured,
                [b for b in LOCAL_BACKENDS if enabled(b, data.settings.generator)],
            )
            # Checked before the status message exists, so a refusal leaves no trace.
            check_limits(
                data.settings,
                options,
                await usage_of(data, job.user_id, data.clock()),
                veo_cost(data.settings, options),
            )
        except Refused as exc:
            await query.answer(exc.text, show_alert=True)
            return
        if not await asyncio.to_thread(os.path.exists, job.photo_path):
            await query.answer(texts.stale_button(), show_alert=True)
            return
        await query.answer()
        status = await context.bot.send_message(
            chat_id,
            texts.queue_card(1, None),
            reply_to_message_id=job.photo_message_id,
            allow_sending_without_reply=True,
        )
        try:
            new_job, note, _new = await enqueue(
                data,
                job.user_id,
                options,
                chat_id=chat_id,
                photo_message_id=job.photo_message_id,
                photo_path=job.photo_path,
                photo_file_id=job.photo_file_id,
                dedupe_key=key,
                status_message_id=status.message_id,
            )
        except Refused as exc:
            await status.edit_text(exc.text)
            return
    data.editor.edit(
        status.chat_id,
        status.message_id,
        await queue_text(data, new_job, data.clock(), note),
        status_keyboard(new_job.id),
    )
    data.consumers.wake()


async def on_history_resend(update: Update, context: Context) -> None:
    """A /history button: send that video again by its Telegram file id."""
    query = update.callback_query
    if query is None:
        return
    payload = HistoryResend.unpack(query.data or "")
    job = await _own_job(update, context, payload.job_id)
    if job is None:
        return
    if not job.video_file_id:
        await query.answer(texts.video_gone(), show_alert=True)
        return
    await query.answer()
    taken = (job.finished_at or 0) - (job.started_at or job.finished_at or 0)
    await context.bot.send_video(
        job.chat_id,
        job.video_file_id,
        caption=texts.video_caption(job, taken),
        reply_markup=result_keyboard(job.id),
    )


async def on_stale_button(update: Update, context: Context) -> None:
    """Any other button: an old layout or a forged payload."""
    if update.callback_query is not None:
        await update.callback_query.answer(texts.stale_button(), show_alert=True)
