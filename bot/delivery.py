"""Telegram side effects of the worker, made robust: throttled status edits, the
"sending a video" chat action, and the video upload with bounded retries.

None of these raise Telegram's transient errors into the worker loop: an edit that hits
429 or a network error is skipped (the next one carries newer news), an upload retries a
bounded number of times, and a user who blocked the bot becomes a ``DeliveryFailed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from telegram import Bot, InlineKeyboardMarkup, InputFile, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

log = logging.getLogger(__name__)

#: Telegram shows a chat action for about 5 s; renew it a little sooner.
CHAT_ACTION_EVERY_S = 4.5
#: Upload attempts (first try included) before the job is given up as undeliverable.
SEND_ATTEMPTS = 4
#: Longest ``retry_after`` an upload waits for; longer means Telegram is refusing for a while.
MAX_RETRY_AFTER_S = 60.0
USER_BLOCKED = "user blocked the bot"


@dataclass(frozen=True)
class Sent:
    """A delivered clip: Telegram's ``file_id`` (for resending) and the message it is in."""

    file_id: str
    message_id: int


class RetryAfterOneLine(logging.Filter):
    """Turns PTB's "Rate limit hit" traceback into one WARNING line.

    ``AIORateLimiter`` logs every 429 it passes on with ``logger.exception``, although the
    caller (this module, or the error handler) handles it: a traceback for a handled
    condition buries real errors in the journal.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RetryAfter):
            record.msg, record.args = "Telegram flood limit: retry after %s s", (error.retry_after,)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_rate_limit_tracebacks() -> None:
    """Install ``RetryAfterOneLine`` on PTB's rate limiter logger (idempotent)."""
    logger = logging.getLogger("telegram.ext.AIORateLimiter")
    if not any(isinstance(f, RetryAfterOneLine) for f in logger.filters):
        logger.addFilter(RetryAfterOneLine())


class DeliveryFailed(Exception):
    """The clip could not be delivered; ``reason`` is what the job row records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _seconds(value: object) -> float:
    """``RetryAfter.retry_after`` as seconds (an int, or a timedelta in newer PTB)."""
    total = getattr(value, "total_seconds", None)
    return float(total()) if total is not None else float(value)  # type: ignore[arg-type]


def _message_gone(exc: BadRequest) -> bool:
    text = exc.message.lower()
    return "message to edit not found" in text or "message can't be edited" in text


@dataclass
class _Shown:
    text: str
    markup: InlineKeyboardMarkup | None
    at: float


class StatusEditor:
    """Edits status messages: only when the text changed, at most every ``interval_s`` per
    message, and never raising for 429, 5xx, "not modified" or a deleted message.

    Args:
        bot: the bot that sent the messages.
        interval_s: least time between two edits of one message (Telegram allows about one
            edit per second per chat; progress needs far less).
        clock: seconds, injectable so tests control the throttle.
    """

    def __init__(self, bot: Bot, *, interval_s: float, clock: Callable[[], float] = time.time):
        self.bot = bot
        self.interval_s = interval_s
        self.clock = clock
        self._shown: dict[tuple[int, int], _Shown] = {}
        self._gone: set[tuple[int, int]] = set()

    def due(self, chat_id: int, message_id: int) -> bool:
        """Whether a non-forced edit of this message would go out now."""
        shown = self._shown.get((chat_id, message_id))
        return shown is None or self.clock() - shown.at >= self.interval_s

    async def edit(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        reply_markup: InlineKeyboardMarkup | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Show ``text`` in the message. ``force`` skips the throttle (final states).

        Returns whether the message now shows ``text`` (False: skipped or it is gone).
        """
        key = (chat_id, message_id)
        if key in self._gone:
            return False
        shown = self._shown.get(key)
        if shown is not None and shown.text == text and shown.markup == reply_markup:
            return True
        if not force and not self.due(chat_id, message_id):
            return False
        try:
            await self._edit_once(key, text, reply_markup, retry_429=force)
        except BadRequest as exc:
            if "not modified" in exc.message.lower():
                pass  # it already shows this text: as good as an edit
            elif _message_gone(exc):
                log.info("status message %s/%s is gone; no more edits", chat_id, message_id)
                self._gone.add(key)
                return False
            else:
                log.warning("edit of %s/%s refused: %s", chat_id, message_id, exc.message)
                return False
        except Forbidden:
            self._gone.add(key)  # blocked: nothing more will reach this chat
            return False
        except RetryAfter as exc:
            # Skip, don't wait: the next progress event carries newer news anyway.
            log.info("edit of %s/%s rate limited for %s", chat_id, message_id, exc.retry_after)
            return False
        except NetworkError as exc:  # includes TimedOut and Telegram's 5xx
            log.info("edit of %s/%s failed: %s", chat_id, message_id, exc)
            return False
        except TelegramError as exc:  # anything else: a status line is never worth a crash
            log.warning("edit of %s/%s failed: %s", chat_id, message_id, exc)
            return False
        self._shown[key] = _Shown(text, reply_markup, self.clock())
        return True

    async def _edit_once(
        self,
        key: tuple[int, int],
        text: str,
        reply_markup: InlineKeyboardMarkup | None,
        *,
        retry_429: bool,
    ) -> None:
        chat_id, message_id = key
        try:
            await self.bot.edit_message_text(
                text, chat_id=chat_id, message_id=message_id, reply_markup=reply_markup
            )
        except RetryAfter as exc:
            # A final state (done, failed, cancelled) is worth one short wait; progress is not.
            seconds = _seconds(exc.retry_after)
            if not retry_429 or seconds > MAX_RETRY_AFTER_S:
                raise
            await asyncio.sleep(seconds)
            await self.bot.edit_message_text(
                text, chat_id=chat_id, message_id=message_id, reply_markup=reply_markup
            )

    def forget(self, chat_id: int, message_id: int) -> None:
        """Drop what is remembered of a message (deleted, or its job finished)."""
        self._shown.pop((chat_id, message_id), None)


@contextlib.asynccontextmanager
async def uploading_video(
    bot: Bot, chat_id: int, *, every_s: float = CHAT_ACTION_EVERY_S
) -> AsyncIterator[None]:
    """Keep "sending a video…" showing in the chat while the body runs."""

    async def keep_alive() -> None:
        while True:
            with contextlib.suppress(TelegramError):
                await bot.send_chat_action(chat_id, ChatAction.UPLOAD_VIDEO)
            await asyncio.sleep(every_s)  # a timer, not synchronisation

    task = asyncio.create_task(keep_alive(), name=f"chat-action-{chat_id}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def send_video(
    bot: Bot,
    *,
    chat_id: int,
    video_path: Path,
    reply_to: int | None,
    caption: str,
    width: int | None = None,
    height: int | None = None,
    duration: float | None = None,
    thumbnail: Path | None = None,
    reply_markup: InlineKeyboardMarkup | None = None,
    attempts: int = SEND_ATTEMPTS,
    backoff_s: float = 1.0,
) -> Sent:
    """Upload the clip as a reply to the user's photo; return its ``file_id`` and message.

    The reply does not need the photo to still exist (``allow_sending_without_reply``).
    429 waits ``retry_after`` and tries again; network errors back off ``backoff_s``,
    doubling; both at most ``attempts`` tries in all.

    Raises:
        DeliveryFailed: the user blocked the bot, the request was refused, or every attempt
            failed; ``reason`` says which.
    """
    # Files are read on a thread: a 50 MB clip must not stall the loop.
    video = await asyncio.to_thread(video_path.read_bytes)
    thumb = None
    if thumbnail is not None:
        with contextlib.suppress(OSError):
            thumb = await asyncio.to_thread(thumbnail.read_bytes)
    reply = (
        ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
        if reply_to is not None
        else None
    )
    delay = backoff_s
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            message = await bot.send_video(
                chat_id,
                InputFile(video, filename=video_path.name),
                duration=round(duration) if duration else None,
                width=width,
                height=height,
                caption=caption,
                supports_streaming=True,
                thumbnail=InputFile(thumb, filename="thumb.jpg") if thumb else None,
                reply_parameters=reply,
                reply_markup=reply_markup,
                write_timeout=120,  # uploads of tens of MB take longer than PTB's 5 s
                read_timeout=60,
            )
        except Forbidden as exc:
            log.info("chat %s: %s", chat_id, exc.message)
            raise DeliveryFailed(USER_BLOCKED) from exc
        except RetryAfter as exc:
            last = exc
            seconds = _seconds(exc.retry_after)
            if seconds > MAX_RETRY_AFTER_S or attempt == attempts:
                break
            log.info("sendVideo to %s rate limited; retrying in %.0f s", chat_id, seconds)
            await asyncio.sleep(seconds)
        except BadRequest as exc:
            raise DeliveryFailed(f"Telegram refused the video: {exc.message}") from exc
        except NetworkError as exc:  # TimedOut and 5xx included
            last = exc
            if attempt == attempts:
                break
            log.info("sendVideo to %s failed (%s); retrying in %.0f s", chat_id, exc, delay)
            await asyncio.sleep(delay)
            delay *= 2
        else:
            if message.video is None:
                raise DeliveryFailed("Telegram returned no video")
            return Sent(message.video.file_id, message.message_id)
    raise DeliveryFailed(f"upload failed after {attempts} attempts: {last}")


async def tell(
    bot: Bot,
    editor: StatusEditor,
    *,
    chat_id: int,
    status_message_id: int | None,
    reply_to: int | None,
    text: str,
) -> None:
    """Put a final word in the status message, or a new message if there is none (or it is
    gone). Never raises: the user may have blocked the bot."""
    if status_message_id is not None and await editor.edit(
        chat_id, status_message_id, text, None, force=True
    ):
        return
    reply = (
        ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
        if reply_to is not None
        else None
    )
    try:
        await bot.send_message(chat_id, text, reply_parameters=reply)
    except TelegramError as exc:
        log.info("could not tell chat %s: %s", chat_id, exc)


async def delete_quietly(bot: Bot, chat_id: int, message_id: int) -> bool:
    """Delete a message; False (never an error) if it cannot be deleted."""
    try:
        return await bot.delete_message(chat_id, message_id)
    except TelegramError as exc:
        log.info("could not delete %s/%s: %s", chat_id, message_id, exc)
        return False
