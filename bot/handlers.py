"""Handler bodies for the Telegram front end: photos, settings cards, buttons and commands.

Each handler gathers what it needs from the update and ``context.bot_data`` (a ``BotData``),
calls plain decision functions (``check_access``, ``check_limits``, ``result_options``) and
applies the result: a reply, an edited card, a queued job and ``consumers.wake()``. Wiring lives
in ``bot.app``; texts in ``bot.texts``; buttons in ``bot.keyboards``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

from telegram import CallbackQuery, InlineKeyboardMarkup, Message, Update
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError
from telegram.ext import ApplicationHandlerStop, CallbackContext, ExtBot

from bot import eta, texts
from bot.config import Settings
from bot.context import BotData
from bot.jobs import ACTIVE, Job, JobOptions, NewJob, Status
from bot.keyboards import (
    CardField,
    CardOption,
    EngineButton,
    HistoryResend,
    JobCancel,
    ResultAction,
    ResultChoice,
    history_keyboard,
    result_keyboard,
    settings_keyboard,
    status_keyboard,
)
from bot.limits import (
    STRANGER_REMINDER_S,
    Refused,
    Usage,
    check_limits,
    check_quota,
    day_start,
    month_start,
    veo_cost,
)
from bot.store import Card, Flag
from generator.engines.catalog import (
    LOCAL_BACKENDS,
    auto_local,
    card_vram_bytes,
    enabled,
    engine_specs,
)
from generator.errors import BackendUnavailable, InvalidImage
from generator.files import write_atomic
from generator.image import load_image, read_header, sniff_image
from generator.options import (
    INTENSITY_MOTION,
    MAX_CUSTOM_ELEMENTS_CHARS,
    MOTION_BANDS,
    Backend,
    motion_band,
    step_intensity,
)

log = logging.getLogger(__name__)

Context: TypeAlias = "CallbackContext[ExtBot[None], dict[Any, Any], dict[Any, Any], BotData]"


# --- decisions (pure) -------------------------------------------------------------------


def check_access(settings: Settings, user_id: int, override: bool | None) -> bool:
    """Whether ``user_id`` may use the bot; ``override`` is the stored /allow (True) or /deny."""
    access = settings.access
    if access.public or user_id in access.admins:
        return True
    if override is not None:
        return override
    return user_id in access.allowed_users


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


# --- helpers ----------------------------------------------------------------------------


def _data(context: Context) -> BotData:
    return context.bot_data


async def _local_engine(settings: Settings, options: JobOptions) -> Backend:
    """The local engine that makes this card's clip: the chosen one, or the one Auto uses on
    this machine's card (asked of nvidia-smi once, off the loop)."""
    if options.backend.local:
        return options.backend
    vram = await asyncio.to_thread(card_vram_bytes)
    try:
        return auto_local(settings.generator, vram)
    except BackendUnavailable:
        return Backend.SVD


async def _card_text(settings: Settings, options: JobOptions, note: str | None = None) -> str:
    local = await _local_engine(settings, options)
    return texts.settings_card(
        options,
        veo_available=settings.veo.configured,
        svd_seconds=engine_specs(settings.generator)[local].plan(None).seconds,
        note=note,
        local=local,
    )


async def _engine_buttons(data: BotData) -> list[EngineButton]:
    """The local engines this bot offers (enabled, model present), each labelled with what it
    makes and its typical wait from recent jobs."""
    specs = engine_specs(data.settings.generator)
    buttons = []
    for backend in LOCAL_BACKENDS:
        if not enabled(backend, data.settings.generator):
            continue
        spec = specs[backend]
        wait = await eta.typical_wait(data.queue, backend)
        label = texts.engine_button(backend, spec.plan(None).seconds, spec.fps, wait)
        buttons.append(EngineButton(backend, label))
    return buttons


def _offered(settings: Settings, backend: Backend) -> bool:
    """Whether the settings card offers ``backend`` on this bot."""
    if backend is Backend.VEO:
        return settings.veo.configured
    return not backend.local or enabled(backend, settings.generator)


async def _settings_keyboard(data: BotData, options: JobOptions) -> InlineKeyboardMarkup:
    return settings_keyboard(
        options,
        veo_cost_usd=veo_cost(data.settings, options),
        engines=await _engine_buttons(data),
    )


def _usable_options(settings: Settings, options: JobOptions) -> JobOptions:
    """Stored defaults, made valid for this bot (Veo may have been configured away)."""
    options = dataclasses.replace(options, motion=None, custom_elements=())
    if not settings.veo.configured and options.backend is Backend.VEO:
        options = dataclasses.replace(options, backend=Backend.AUTO)
    return options


def _show(data: BotData, query: CallbackQuery, text: str, reply_markup: Any = None) -> None:
    """Redraw the pressed card in the background: the tap's handler does not wait behind
    Telegram's rate limit (``bot.cardedit``)."""
    if query.message is not None:
        data.editor.edit(query.message.chat.id, query.message.message_id, text, reply_markup)


async def _usage(data: BotData, user_id: int, now: float) -> Usage:
    queue = data.queue
    return Usage(
        active=await queue.active_count(user_id),
        today=await queue.jobs_since(user_id, day_start(now)),
        veo_user_today=await queue.veo_spend(since=day_start(now), user_id=user_id),
        veo_month=await queue.veo_spend(since=month_start(now)),
    )


async def _eta(data: BotData, position: int | None, now: float) -> float | None:
    return await eta.queue_wait(data.queue, position, now=now, consumers=data.consumers.size)


async def _queue_text(data: BotData, job: Job, now: float, note: str | None) -> str:
    position = await data.queue.position(job.id)
    text = texts.queue_card(position or 1, await _eta(data, position, now))
    return f"{text}\n\n{note}" if note else text


async def _enqueue(
    data: BotData,
    user_id: int,
    options: JobOptions,
    *,
    chat_id: int,
    photo_message_id: int,
    photo_path: str,
    dedupe_key: str,
    status_message_id: int,
    photo_file_id: str | None,
) -> tuple[Job, str | None, bool]:
    """Check limits and queue one job; ``(job, note, new)``. ``Refused`` when over a limit.

    Runs under ``enqueue_lock`` so a double tap sees the first tap's job (and is not refused
    by the queue limit that job itself now fills).
    """
    now = data.clock()
    existing = await data.queue.by_dedupe_key(dedupe_key)
    if existing is not None:
        return existing, None, False
    usage = await _usage(data, user_id, now)
    queued_options, note = check_limits(
        data.settings, options, usage, veo_cost(data.settings, options)
    )
    job = await data.queue.enqueue(
        NewJob(
            user_id=user_id,
            chat_id=chat_id,
            photo_message_id=photo_message_id,
            photo_path=photo_path,
            photo_file_id=photo_file_id,
            options=queued_options,
            dedupe_key=dedupe_key,
            status_message_id=status_message_id,
            max_attempts=data.settings.worker.max_attempts,
        ),
        now=now,
    )
    return job, note, True


async def _intake_refusal(data: BotData, user_id: int) -> str | None:
    """Why a new photo from ``user_id`` is refused before it is downloaded, or ``None``.

    The user's queue and daily limits (a card they could never animate is not worth a
    download), then the data folder's disk budget.
    """
    try:
        check_quota(data.settings, await _usage(data, user_id, data.clock()))
    except Refused as exc:
        return exc.text
    if await data.disk.over_budget():
        return texts.disk_full()
    return None


# --- access guard -----------------------------------------------------------------------


async def guard(update: Update, context: Context) -> None:
    """Group -1: let allowed users through and stop every other update.

    An update with no user behind it (a channel post, a poll's new state) cannot be
    attributed to anyone on the allowlist, so it stops here too, without an answer: there
    is nobody to answer. A stranger hears once a day, in a private chat, that the bot is
    private (and their id, to pass on); a stranger's button press gets a short alert.
    """
    user = update.effective_user
    if user is None:
        log.debug("dropped update %s: no user to check", update.update_id)
        raise ApplicationHandlerStop
    data = _data(context)
    if check_access(data.settings, user.id, await data.store.allowed_override(user.id)):
        return
    log.info("refused update %s from user %s", update.update_id, user.id)
    chat, message = update.effective_chat, update.effective_message
    if update.callback_query is not None:
        await update.callback_query.answer(texts.not_allowed_alert(), show_alert=True)
    elif (
        message is not None
        and chat is not None
        and chat.type == "private"
        and await data.store.tell_stranger(user.id, now=data.clock(), every=STRANGER_REMINDER_S)
    ):
        await message.reply_text(texts.not_allowed(user.id))
    raise ApplicationHandlerStop


# --- photos -----------------------------------------------------------------------------


async def on_photo(update: Update, context: Context) -> None:
    """A photo (largest size) or an image document: download it and reply with a card."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return  # the guard lets no such update through; nothing to answer
    data = _data(context)
    limit = data.settings.limits.max_photo_bytes
    if message.photo:
        attachment: Any = message.photo[-1]  # sizes are sorted; the last is the largest
    elif message.document is not None:
        attachment = message.document
        if not (message.document.mime_type or "").startswith("image/"):
            await message.reply_text(texts.not_an_image())
            return
    else:
        return
    if limit and (attachment.file_size or 0) > limit:
        await message.reply_text(texts.too_large(limit))
        return
    # Echoed into the card and written into the prompt: no control or bidi characters.
    caption = texts.clean_text(message.caption or "")
    if len(caption) > MAX_CUSTOM_ELEMENTS_CHARS:
        await message.reply_text(texts.caption_too_long(MAX_CUSTOM_ELEMENTS_CHARS))
        return
    # Telegram sends an update again if the bot died before confirming it: one card a photo.
    if await data.store.card_for_photo(message.chat_id, message.message_id) is not None:
        log.info("user %s: photo %s already has its card", user.id, message.message_id)
        return
    # What costs nothing to check goes first: nothing is downloaded for a user at a limit
    # or while the data folder is full.
    refusal = await _intake_refusal(data, user.id)
    if refusal is not None:
        await message.reply_text(refusal)
        return
    try:
        file = await attachment.get_file()
        content = bytes(await file.download_as_bytearray())
    except TelegramError as exc:
        log.warning("user %s: photo download failed: %s", user.id, exc)
        await message.reply_text(texts.download_failed())
        return
    if limit and len(content) > limit:
        await message.reply_text(texts.too_large(limit))
        return
    kind = sniff_image(content[:32])
    if kind is None:
        await message.reply_text(texts.not_an_image())
        return
    image_settings = data.settings.generator.image
    try:
        # The header first: a small file declaring 50 megapixels is refused for the cost
        # of its header, before any bitmap exists.
        header = await asyncio.to_thread(read_header, content, image_settings)
        # Then decoded (off the loop, a few at a time: each decode holds a whole bitmap),
        # so a damaged file is refused before the user picks options, not in the queue.
        async with data.decode_slots:
            await asyncio.to_thread(load_image, content, image_settings)
    except InvalidImage as exc:
        log.info("user %s: image refused: %s", user.id, exc)
        await message.reply_text(exc.user_text)
        return
    name = f"{message.chat_id}-{message.message_id}-{attachment.file_unique_id}.{kind}"
    # Saved now, so nothing later depends on Telegram's file links (they expire).
    path = await asyncio.to_thread(write_atomic, data.settings.photos_dir / name, content)
    data.disk.add(len(content))
    log.debug("user %s: %s %dx%d saved", user.id, header.format, header.width, header.height)

    now = data.clock()
    await data.store.touch_user(user.id, user.full_name, now=now)
    stored = await data.store.get_user_options(user.id)
    options = _usable_options(data.settings, stored or JobOptions())
    if caption:
        options = dataclasses.replace(options, custom_elements=(caption,))
    # Buttons go on once the card is stored, so every button a user can see already works.
    card = await message.reply_text(await _card_text(data.settings, options), do_quote=True)
    await data.store.save_card(
        Card(
            chat_id=card.chat_id,
            message_id=card.message_id,
            user_id=user.id,
            photo_message_id=message.message_id,
            photo_path=str(path),
            photo_file_id=attachment.file_id,
            options=options,
            created_at=now,
        )
    )
    await card.edit_reply_markup(await _settings_keyboard(data, options))
    log.info("user %s: card %s for %s", user.id, card.message_id, path.name)


async def on_other_document(update: Update, context: Context) -> None:
    """A document that is not an image."""
    if update.effective_message is not None:
        await update.effective_message.reply_text(texts.not_an_image())


def message_kind(message: Message) -> str | None:
    """What a message holds, as a key of ``texts.MESSAGE_KINDS`` (``None``: something else)."""
    for kind in texts.MESSAGE_KINDS:
        if getattr(message, kind, None):
            return kind
    return None


async def on_other_message(update: Update, context: Context) -> None:
    """Anything else in a private chat (a sticker, a video, a location, an unknown command):
    say what the bot takes, so no message goes unanswered."""
    message = update.effective_message
    if message is None:
        return
    kind = message_kind(message)
    log.info("message %s: %s, not a photo", message.message_id, kind or "something else")
    await message.reply_text(texts.not_a_photo(kind))


async def on_text(update: Update, context: Context) -> None:
    """Plain text: say what the bot wants."""
    if update.effective_message is not None:
        await update.effective_message.reply_text(texts.help_text())


# --- settings card buttons --------------------------------------------------------------


async def _own_card(update: Update, context: Context) -> Card | None:
    """The pressed card if it exists and is the presser's; else alert and ``None``."""
    query = update.callback_query
    if query is None:
        return None
    if query.message is None:  # a button on an inline message: no card of ours
        await query.answer(texts.stale_button(), show_alert=True)
        return None
    card = await _data(context).store.get_card(query.message.chat.id, query.message.message_id)
    if card is None:
        await query.answer(texts.stale_button(), show_alert=True)
        return None
    if card.user_id != query.from_user.id:
        await query.answer(texts.not_yours(), show_alert=True)
        return None
    return card


async def on_card_option(update: Update, context: Context) -> None:
    """An option button: tick it and redraw the card in place."""
    query = update.callback_query
    if query is None:
        return
    data = _data(context)
    choice = CardOption.unpack(query.data or "")
    card = await _own_card(update, context)
    if card is None:
        return
    if (
        choice.field is CardField.BACKEND and not _offered(data.settings, Backend(choice.value))
    ) or await data.queue.photo_in_use(card.photo_path):
        # A card whose photo has a job is a status message or a video now, not a card.
        await query.answer(texts.stale_button(), show_alert=True)
        return
    await query.answer()  # first, so the button stops spinning
    options = choice.apply(card.options)
    if options == card.options:
        return
    await data.store.save_card(dataclasses.replace(card, options=options))
    _show(
        data,
        query,
        await _card_text(data.settings, options),
        reply_markup=await _settings_keyboard(data, options),
    )


async def on_animate(update: Update, context: Context) -> None:
    """Animate: one job per card (a double tap gives the same job), the card becomes its status."""
    query = update.callback_query
    if query is None:
        return
    data = _data(context)
    async with data.enqueue_lock:
        card = await _own_card(update, context)
        if card is None:
            return
        if not await asyncio.to_thread(
            os.path.exists, card.photo_path
        ):  # the card was dismissed (old client, forged)
            await query.answer(texts.stale_button(), show_alert=True)
            return
        key = f"card:{card.chat_id}:{card.message_id}:{card.generation}"
        try:
            job, note, new = await _enqueue(
                data,
                card.user_id,
                card.options,
                chat_id=card.chat_id,
                photo_message_id=card.photo_message_id,
                photo_path=card.photo_path,
                photo_file_id=card.photo_file_id,
                dedupe_key=key,
                status_message_id=card.message_id,
            )
        except Refused as exc:
            await query.answer(exc.text, show_alert=True)
            return
        await query.answer()
        if not new:
            return  # the first tap already turned the card into the status message
        await data.store.save_user_options(card.user_id, card.options)
    _show(data, query, await _queue_text(data, job, data.clock(), note), status_keyboard(job.id))
    data.consumers.wake()


async def on_card_cancel(update: Update, context: Context) -> None:
    """Cancel on a card: drop it and its photo, unless a job was made from that photo.

    Under ``enqueue_lock``, so a Cancel racing an Animate sees the job and leaves its photo.
    """
    query = update.callback_query
    if query is None:
        return
    data = _data(context)
    async with data.enqueue_lock:
        card = await _own_card(update, context)
        if card is None:
            return
        if await data.queue.photo_in_use(card.photo_path):
            # Animate won (or it is a video's buttons): the photo belongs to a job now.
            await query.answer(texts.stale_button(), show_alert=True)
            return
        await data.store.delete_card(card.chat_id, card.message_id, card.user_id)
        await asyncio.to_thread(Path(card.photo_path).unlink, missing_ok=True)
    await query.answer()
    _show(data, query, texts.card_dismissed())


# --- job buttons ------------------------------------------------------------------------


async def _own_job(update: Update, context: Context, job_id: int) -> Job | None:
    query = update.callback_query
    if query is None:
        return None
    job = await _data(context).queue.get(job_id)
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
    result = await cancel_job(_data(context), job, query.from_user.id, context.bot)
    if result is None:
        log.info("job %s: cancel came too late", job.id)


async def on_result_action(update: Update, context: Context) -> None:
    """Again / More motion / Less motion / Other engine under a video: a new job, same photo."""
    query = update.callback_query
    if query is None:
        return
    data = _data(context)
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
                await _usage(data, job.user_id, data.clock()),
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
            new_job, note, _new = await _enqueue(
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
        await _queue_text(data, new_job, data.clock(), note),
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


# --- commands ---------------------------------------------------------------------------


async def start(update: Update, context: Context) -> None:
    """/start: what the bot does and how to use it."""
    user, message = update.effective_user, update.effective_message
    if user is None or message is None:
        return
    await _data(context).store.touch_user(user.id, user.full_name, now=_data(context).clock())
    await message.reply_text(texts.start(user.first_name))


async def help_command(update: Update, context: Context) -> None:
    """/help."""
    if update.effective_message is not None:
        await update.effective_message.reply_text(texts.help_text())


async def history(update: Update, context: Context) -> None:
    """/history: the last 10 jobs, with a resend button for each delivered video."""
    user, message = update.effective_user, update.effective_message
    if user is None or message is None:
        return
    jobs = await _data(context).queue.history(user.id, limit=10)
    lines = [
        texts.history_line(j, time.strftime("%d %b %H:%M", time.gmtime(j.created_at))) for j in jobs
    ]
    resend = [
        (j.id, texts.resend_label(j.id))
        for j in jobs
        if j.status is Status.DONE and j.video_file_id
    ]
    await message.reply_text(texts.history(lines), reply_markup=history_keyboard(resend))


async def queue_command(update: Update, context: Context) -> None:
    """/queue: where the user's jobs are and what runs now."""
    user, message = update.effective_user, update.effective_message
    if user is None or message is None:
        return
    data = _data(context)
    now = data.clock()
    lines = []
    for place, job in enumerate(await data.queue.queued(), start=1):
        if job.user_id == user.id:
            wait = await _eta(data, place, now)
            eta_text = f", about {texts.human_seconds(wait)}" if wait is not None else ""
            lines.append(f"#{job.id}: number {place} in the queue{eta_text}")
    running = []
    for job in await data.queue.running():
        line = f"#{job.id}" + (" (yours)" if job.user_id == user.id else "")
        progress = data.cards.progress(job.id)
        if progress is not None:
            line += f", {texts.STAGE_TEXTS[progress.stage]}"
        running.append(line)
    paused = await data.store.get_flag(Flag.PAUSED) is not None
    await message.reply_text(texts.queue_overview(lines, running, paused))


async def cancel_command(update: Update, context: Context) -> None:
    """/cancel: cancel the user's latest active job."""
    user, message = update.effective_user, update.effective_message
    if user is None or message is None:
        return
    data = _data(context)
    for job in await data.queue.history(user.id, limit=20):
        if job.status in ACTIVE and await cancel_job(data, job, user.id, context.bot):
            await message.reply_text(f"{texts.cancelled()} (#{job.id})")
            return
    await message.reply_text(texts.nothing_to_cancel())


async def settings_command(update: Update, context: Context) -> None:
    """/settings: the user's defaults."""
    user, message = update.effective_user, update.effective_message
    if user is None or message is None:
        return
    data = _data(context)
    options = await data.store.get_user_options(user.id) or JobOptions()
    await message.reply_text(texts.settings_summary(_usable_options(data.settings, options)))


# --- admin commands ---------------------------------------------------------------------


async def _admin(update: Update, context: Context) -> Message | None:
    """The message to answer when an admin sent it; otherwise says so and ``None``."""
    user, message = update.effective_user, update.effective_message
    if user is None or message is None:
        return None
    if _data(context).settings.is_admin(user.id):
        return message
    await message.reply_text(texts.not_admin())
    return None


async def stats_command(update: Update, context: Context) -> None:
    """/stats (admins): job counts, run times, Veo spend, failure rate."""
    message = await _admin(update, context)
    if message is None:
        return
    data = _data(context)
    now = data.clock()
    stats = await data.queue.stats(now=now, day_start=day_start(now), month_start=month_start(now))
    paused = await data.store.get_flag(Flag.PAUSED) is not None
    await message.reply_text(texts.stats(stats, paused=paused, consumers=data.consumers.size))


async def pause_command(update: Update, context: Context) -> None:
    """/pause (admins): stop taking jobs from the queue; the running one finishes."""
    message = await _admin(update, context)
    if message is None:
        return
    await _data(context).consumers.pause()
    await message.reply_text(texts.paused())


async def resume_command(update: Update, context: Context) -> None:
    """/resume (admins)."""
    message = await _admin(update, context)
    if message is None:
        return
    await _data(context).consumers.resume()
    await message.reply_text(texts.resumed())


async def _set_access(update: Update, context: Context, allowed: bool) -> None:
    message, user = await _admin(update, context), update.effective_user
    if message is None or user is None:
        return
    command = "allow" if allowed else "deny"
    args = context.args or []
    if len(args) != 1 or not args[0].lstrip("-").isdigit():
        await message.reply_text(texts.usage(command, "USER_ID"))
        return
    target = int(args[0])
    data = _data(context)
    await data.store.set_allowed(target, allowed, by=user.id, now=data.clock())
    await message.reply_text(texts.access_changed(target, allowed))


async def allow_command(update: Update, context: Context) -> None:
    """/allow ID (admins): let a user in, stored in the database."""
    await _set_access(update, context, True)


async def deny_command(update: Update, context: Context) -> None:
    """/deny ID (admins): shut a user out, even one in the config's allowlist."""
    await _set_access(update, context, False)


# --- errors -----------------------------------------------------------------------------


async def on_error(update: object, context: Context) -> None:
    """Log first (update id and user, never the token), then a short apology if possible.

    Telegram's flood limit (429) and a network blip are conditions, not bugs: one WARNING
    line each, no traceback, and no apology (it would meet the same limit).
    """
    error = context.error
    user = update.effective_user if isinstance(update, Update) else None
    where = (
        f"update {update.update_id} from user {user.id if user else None}"
        if isinstance(update, Update)
        else "background task"
    )
    if isinstance(error, RetryAfter):
        log.warning("%s: Telegram flood limit, retry after %s s", where, error.retry_after)
        return
    if isinstance(error, NetworkError) and not isinstance(error, BadRequest):
        # TimedOut and Telegram's 5xx; a BadRequest (also a NetworkError in PTB) is our bug.
        log.warning("%s: Telegram unreachable: %s", where, error)
        return
    log.error("%s failed", where, exc_info=error)
    if not isinstance(update, Update):
        return
    try:
        if update.callback_query is not None:
            await update.callback_query.answer(texts.internal_error(), show_alert=True)
        elif update.effective_message is not None:
            await update.effective_message.reply_text(texts.internal_error())
    except TelegramError:
        pass  # already answered, or Telegram unreachable: the log line is what matters
