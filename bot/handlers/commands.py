"""Every allowed user's commands: /start, /help, /history, /queue, /cancel, /settings."""

from __future__ import annotations

import time

from telegram import Update

from bot import texts
from bot.handlers.common import Context, bot_data, eta_for, usable_options
from bot.handlers.results import cancel_job
from bot.jobs import ACTIVE, JobOptions, Status
from bot.keyboards import history_keyboard
from bot.store import Flag


async def start(update: Update, context: Context) -> None:
    """/start: what the bot does and how to use it."""
    user, message = update.effective_user, update.effective_message
    if user is None or message is None:
        return
    await bot_data(context).store.touch_user(user.id, user.full_name, now=bot_data(context).clock())
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
    jobs = await bot_data(context).queue.history(user.id, limit=10)
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
    data = bot_data(context)
    now = data.clock()
    lines = []
    for place, job in enumerate(await data.queue.queued(), start=1):
        if job.user_id == user.id:
            wait = await eta_for(data, place, now)
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
    data = bot_data(context)
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
    data = bot_data(context)
    options = await data.store.get_user_options(user.id) or JobOptions()
    await message.reply_text(texts.settings_summary(usable_options(data.settings, options)))
