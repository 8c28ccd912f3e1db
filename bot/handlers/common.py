"""What several handler modules share: the card's text and buttons, look-ups, enqueue."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, TypeAlias

from telegram import CallbackQuery, InlineKeyboardMarkup
from telegram.ext import CallbackContext, ExtBot

from bot import eta, texts
from bot.config import Settings
from bot.context import BotData
from bot.jobs import Job, JobOptions, NewJob
from bot.keyboards import EngineButton, settings_keyboard
from bot.limits import Refused, Usage, check_limits, check_quota, day_start, month_start, veo_cost
from generator.engines.catalog import (
    LOCAL_BACKENDS,
    auto_local,
    card_vram_bytes,
    enabled,
    engine_specs,
)
from generator.errors import BackendUnavailable
from generator.options import Backend

Context: TypeAlias = "CallbackContext[ExtBot[None], dict[Any, Any], dict[Any, Any], BotData]"


def bot_data(context: Context) -> BotData:
    """The services this bot runs with (``context.bot_data``, typed)."""
    return context.bot_data


async def local_engine(settings: Settings, options: JobOptions) -> Backend:
    """The local engine that makes this card's clip: the chosen one, or the one Auto uses on
    this machine's card (asked of nvidia-smi once, off the loop)."""
    if options.backend.local:
        return options.backend
    vram = await asyncio.to_thread(card_vram_bytes)
    try:
        return auto_local(settings.generator, vram)
    except BackendUnavailable:
        return Backend.SVD


async def card_text(settings: Settings, options: JobOptions, note: str | None = None) -> str:
    """The settings card's text for ``options``, with ``note`` under it."""
    local = await local_engine(settings, options)
    return texts.settings_card(
        options,
        veo_available=settings.veo.configured,
        svd_seconds=engine_specs(settings.generator)[local].plan(None).seconds,
        note=note,
        local=local,
    )


async def engine_buttons(data: BotData) -> list[EngineButton]:
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


def offered(settings: Settings, backend: Backend) -> bool:
    """Whether the settings card offers ``backend`` on this bot."""
    if backend is Backend.VEO:
        return settings.veo.configured
    return not backend.local or enabled(backend, settings.generator)


async def card_keyboard(data: BotData, options: JobOptions) -> InlineKeyboardMarkup:
    """The settings card's buttons for ``options``: the engines offered here, Veo's price."""
    return settings_keyboard(
        options,
        veo_cost_usd=veo_cost(data.settings, options),
        engines=await engine_buttons(data),
    )


def usable_options(settings: Settings, options: JobOptions) -> JobOptions:
    """Stored defaults, made valid for this bot (Veo may have been configured away)."""
    options = dataclasses.replace(options, motion=None, custom_elements=())
    if not settings.veo.configured and options.backend is Backend.VEO:
        options = dataclasses.replace(options, backend=Backend.AUTO)
    return options


def show(data: BotData, query: CallbackQuery, text: str, reply_markup: Any = None) -> None:
    """Redraw the pressed card in the background: the tap's handler does not wait behind
    Telegram's rate limit (``bot.cardedit``)."""
    if query.message is not None:
        data.editor.edit(query.message.chat.id, query.message.message_id, text, reply_markup)


async def usage_of(data: BotData, user_id: int, now: float) -> Usage:
    """What ``user_id`` has used so far, for the limits."""
    queue = data.queue
    return Usage(
        active=await queue.active_count(user_id),
        today=await queue.jobs_since(user_id, day_start(now)),
        veo_user_today=await queue.veo_spend(since=day_start(now), user_id=user_id),
        veo_month=await queue.veo_spend(since=month_start(now)),
    )


async def eta_for(data: BotData, position: int | None, now: float) -> float | None:
    """Seconds a job at ``position`` in the queue may wait, or ``None`` with no history."""
    return await eta.queue_wait(data.queue, position, now=now, consumers=data.consumers.size)


async def queue_text(data: BotData, job: Job, now: float, note: str | None) -> str:
    """A queued job's status text: its place, the wait, and ``note``."""
    position = await data.queue.position(job.id)
    text = texts.queue_card(position or 1, await eta_for(data, position, now))
    return f"{text}\n\n{note}" if note else text


async def enqueue(
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
    usage = await usage_of(data, user_id, now)
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


async def intake_refusal(data: BotData, user_id: int) -> str | None:
    """Why a new photo from ``user_id`` is refused before it is downloaded, or ``None``.

    The user's queue and daily limits (a card they could never animate is not worth a
    download), then the data folder's disk budget.
    """
    try:
        check_quota(data.settings, await usage_of(data, user_id, data.clock()))
    except Refused as exc:
        return exc.text
    if await data.disk.over_budget():
        return texts.disk_full()
    return None
