"""The admins' commands (/stats, /pause, /resume, /allow, /deny) behind one check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

from telegram import Message, Update

from bot import texts
from bot.handlers.common import Context, bot_data
from bot.limits import day_start, month_start
from bot.store import Flag

AdminCommand: TypeAlias = Callable[[Update, Context, Message], Awaitable[None]]


def admin_only(command: AdminCommand) -> Callable[[Update, Context], Awaitable[None]]:
    """The one admin check: ``command`` runs, with the message to answer, for an admin; anyone
    else is told the command is for admins."""

    async def checked(update: Update, context: Context) -> None:
        user, message = update.effective_user, update.effective_message
        if user is None or message is None:
            return
        if not bot_data(context).settings.is_admin(user.id):
            await message.reply_text(texts.not_admin())
            return
        await command(update, context, message)

    checked.__name__ = checked.__qualname__ = command.__name__
    checked.__doc__ = command.__doc__
    return checked


@admin_only
async def stats_command(update: Update, context: Context, message: Message) -> None:
    """/stats (admins): job counts, run times, Veo spend, failure rate."""
    data = bot_data(context)
    now = data.clock()
    stats = await data.queue.stats(now=now, day_start=day_start(now), month_start=month_start(now))
    paused = await data.store.get_flag(Flag.PAUSED) is not None
    await message.reply_text(texts.stats(stats, paused=paused, consumers=data.consumers.size))


@admin_only
async def pause_command(update: Update, context: Context, message: Message) -> None:
    """/pause (admins): stop taking jobs from the queue; the running one finishes."""
    await bot_data(context).consumers.pause()
    await message.reply_text(texts.paused())


@admin_only
async def resume_command(update: Update, context: Context, message: Message) -> None:
    """/resume (admins)."""
    await bot_data(context).consumers.resume()
    await message.reply_text(texts.resumed())


async def _set_access(update: Update, context: Context, message: Message, allowed: bool) -> None:
    user = update.effective_user
    if user is None:
        return
    command = "allow" if allowed else "deny"
    args = context.args or []
    if len(args) != 1 or not args[0].lstrip("-").isdigit():
        await message.reply_text(texts.usage(command, "USER_ID"))
        return
    target = int(args[0])
    data = bot_data(context)
    await data.store.set_allowed(target, allowed, by=user.id, now=data.clock())
    await message.reply_text(texts.access_changed(target, allowed))


@admin_only
async def allow_command(update: Update, context: Context, message: Message) -> None:
    """/allow ID (admins): let a user in, stored in the database."""
    await _set_access(update, context, message, True)


@admin_only
async def deny_command(update: Update, context: Context, message: Message) -> None:
    """/deny ID (admins): shut a user out, even one in the config's allowlist."""
    await _set_access(update, context, message, False)
