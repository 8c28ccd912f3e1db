"""Wiring only: build the PTB ``Application`` from settings, store, queue and consumers.

Example::

    app = build_app(settings, store, workers, queue=queue, cards=cards)
    bot.intake.run(app, settings.telegram)

Services come in as arguments (``async with app`` in tests skips ``post_init``); handler
bodies live in ``bot.handlers``, the typed ``bot_data`` in ``bot.context``. ``post_init``
registers the command list and starts the consumers, ``post_stop`` stops them with their
grace period, ``post_shutdown`` closes the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from telegram import BotCommand, Update
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    BaseRateLimiter,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.request import BaseRequest

from bot import delivery
from bot.config import Settings
from bot.context import BotData, Consumers
from bot.handlers import access, admin, cards, commands, errors, photos, results
from bot.jobs import JobQueue
from bot.keyboards import Animate, CancelCard, CardOption, HistoryResend, JobCancel, ResultAction
from bot.queue import SqlQueue
from bot.statuscard import StatusCards
from bot.store import Store

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand("start", "What this bot does"),
    BotCommand("help", "How to use it"),
    BotCommand("queue", "Where your clips are in the queue"),
    BotCommand("cancel", "Cancel your latest clip"),
    BotCommand("history", "Your last clips"),
    BotCommand("settings", "Your default options"),
]


def quiet_loggers() -> None:
    """httpx logs every request URL at INFO, and Bot API URLs hold the token."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    delivery.quiet_rate_limit_tracebacks()


def add_handlers(app: Application) -> None:
    """Register every handler. Order matters within a group: the first match wins."""
    # Group -1 runs before everything and stops updates from users who are not allowed.
    app.add_handler(TypeHandler(Update, access.guard), group=-1)

    by_command = {
        "start": commands.start,
        "help": commands.help_command,
        "history": commands.history,
        "queue": commands.queue_command,
        "cancel": commands.cancel_command,
        "settings": commands.settings_command,
        "stats": admin.stats_command,
        "pause": admin.pause_command,
        "resume": admin.resume_command,
        "allow": admin.allow_command,
        "deny": admin.deny_command,
    }
    for name, callback in by_command.items():
        app.add_handler(CommandHandler(name, callback))

    app.add_handler(MessageHandler(filters.PHOTO | filters.Document.IMAGE, photos.on_photo))
    app.add_handler(MessageHandler(filters.Document.ALL, photos.on_other_document))
    # Only in private chats: in a group, people talk to each other, not to the bot.
    app.add_handler(
        MessageHandler(filters.TEXT & ~filters.COMMAND & filters.ChatType.PRIVATE, photos.on_text)
    )
    # Last for messages: whatever else a user sends in private (sticker, video, location,
    # an unknown command) gets told what the bot takes. Edits of old messages are left alone.
    app.add_handler(
        MessageHandler(
            filters.UpdateType.MESSAGE & filters.ChatType.PRIVATE & ~filters.StatusUpdate.ALL,
            photos.on_other_message,
        )
    )

    app.add_handler(CallbackQueryHandler(cards.on_card_option, pattern=CardOption.matches))
    app.add_handler(CallbackQueryHandler(cards.on_animate, pattern=Animate.matches))
    app.add_handler(CallbackQueryHandler(cards.on_card_cancel, pattern=CancelCard.matches))
    app.add_handler(CallbackQueryHandler(results.on_job_cancel, pattern=JobCancel.matches))
    app.add_handler(CallbackQueryHandler(results.on_result_action, pattern=ResultAction.matches))
    app.add_handler(CallbackQueryHandler(results.on_history_resend, pattern=HistoryResend.matches))
    # Last: old layouts and forged payloads get "expired" instead of silence.
    app.add_handler(CallbackQueryHandler(results.on_stale_button))

    app.add_error_handler(errors.on_error)


async def _post_init(app: Application) -> None:
    await app.bot.set_my_commands(COMMANDS)
    await app.bot_data.consumers.start()


async def _post_stop(app: Application) -> None:
    await app.bot_data.consumers.stop()
    await app.bot_data.editor.stop()


class ReplyFirstRateLimiter(AIORateLimiter):
    """PTB's ``AIORateLimiter`` for Telegram's send limits, except for answering button taps.

    ``answerCallbackQuery`` is a reply to the user's own tap, not a message, so Telegram's
    30-a-second and per-chat limits do not count it; the client shows a spinner until it
    comes. ``AIORateLimiter`` already leaves it out of the overall limit (it has no
    ``chat_id``) but would still hold it behind a pause after a 429; here it never waits.
    """

    async def process_request(
        self,
        callback: Callable[..., Any],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        if endpoint == "answerCallbackQuery":
            return await callback(*args, **kwargs)
        return await super().process_request(
            callback, args, kwargs, endpoint, data, rate_limit_args
        )


async def _post_shutdown(app: Application) -> None:
    await app.bot_data.store.close()


def build_app(
    settings: Settings,
    store: Store,
    consumers: Consumers,
    *,
    queue: JobQueue | None = None,
    cards: StatusCards | None = None,
    clock: Callable[[], float] = time.time,
    request: BaseRequest | None = None,
    rate_limiter: bool | BaseRateLimiter = True,
) -> Application:
    """The bot, ready for ``bot.intake.run`` or ``async with app`` in tests.

    ``queue`` defaults to the SQL queue on the store's database, ``cards`` to a status-card
    keeper over it (the consumers must share the same one). ``request`` replaces the HTTP
    transport (tests); ``rate_limiter`` keeps Telegram's flood
    limits with ``ReplyFirstRateLimiter`` (edits of progress messages add up); tests may pass
    their own limiter, or False for none.
    """
    quiet_loggers()
    telegram = settings.telegram
    builder: Any = (
        ApplicationBuilder()
        .token(telegram.token)
        .concurrent_updates(telegram.concurrent_updates)
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
    )
    if telegram.base_url:
        builder = builder.base_url(telegram.base_url)
    if telegram.base_file_url:
        builder = builder.base_file_url(telegram.base_file_url)
    if isinstance(rate_limiter, BaseRateLimiter):
        builder = builder.rate_limiter(rate_limiter)
    elif rate_limiter:
        builder = builder.rate_limiter(ReplyFirstRateLimiter())
    if request is not None:
        builder = builder.request(request).get_updates_request(request)
    queue = queue if queue is not None else SqlQueue(store.db)
    if cards is None:
        cards = StatusCards(queue, settings, consumers=consumers.size, clock=clock)
    data = BotData(
        settings=settings,
        store=store,
        queue=queue,
        consumers=consumers,
        cards=cards,
        clock=clock,
        decode_slots=asyncio.Semaphore(settings.limits.max_concurrent_decodes),
    )
    # ContextTypes calls bot_data() once to make application.bot_data; hand it our instance.
    app = builder.context_types(ContextTypes(bot_data=lambda: data)).build()
    add_handlers(app)
    data.editor.bind(app.bot)
    cards.bind(app.bot)
    return app
