"""The one error handler: log first, then a short apology."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError

from bot import texts
from bot.handlers.common import Context

log = logging.getLogger(__name__)


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
