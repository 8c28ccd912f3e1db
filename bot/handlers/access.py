"""Who may use the bot: the allowlist rule and the guard in front of every handler."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import ApplicationHandlerStop

from bot import texts
from bot.config import Settings
from bot.handlers.common import Context, bot_data
from bot.limits import STRANGER_REMINDER_S

log = logging.getLogger(__name__)


def check_access(settings: Settings, user_id: int, override: bool | None) -> bool:
    """Whether ``user_id`` may use the bot; ``override`` is the stored /allow (True) or /deny."""
    access = settings.access
    if access.public or user_id in access.admins:
        return True
    if override is not None:
        return override
    return user_id in access.allowed_users


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
    data = bot_data(context)
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
