"""Card edits in the background: a handler hands over a card's new look and returns at once.

Telegram lets a bot send about 30 messages a second, edits included, so under load an edit
waits in the rate limiter for seconds. A handler that awaited it would hold one of the
``concurrent_updates`` slots all that time, and every other user's tap would wait for a slot.
Here each chat gets one task that sends its pending edits one at a time; a newer look for the
same message replaces one not sent yet (only the latest matters). The store is the truth: an
edit lost in a crash only leaves a card showing its previous state until the next tap.

Example::

    editor = CardEditor()
    editor.bind(app.bot)
    editor.edit(chat_id, message_id, "Queued", reply_markup=status_keyboard(job.id))
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from telegram.error import BadRequest, RetryAfter, TelegramError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CardLook:
    """What a card should show: its text and buttons (``None`` removes them)."""

    text: str
    reply_markup: Any = None


class CardEditor:
    """Per-chat coalescing editor of bot messages.

    Args:
        flush_grace_s: at ``stop()``, how long pending edits may still take before they are
            dropped (a stop should not wait behind Telegram's rate limit for long).
    """

    def __init__(self, flush_grace_s: float = 5.0) -> None:
        self.flush_grace_s = flush_grace_s
        self._bot: Any = None
        self._pending: dict[int, dict[int, CardLook]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def bind(self, bot: Any) -> None:
        """Take the bot whose ``edit_message_text`` sends the edits."""
        self._bot = bot

    def edit(self, chat_id: int, message_id: int, text: str, reply_markup: Any = None) -> None:
        """Show ``text`` (and ``reply_markup``) on the message soon; returns at once."""
        self._pending.setdefault(chat_id, {})[message_id] = CardLook(text, reply_markup)
        if chat_id not in self._tasks:
            self._tasks[chat_id] = asyncio.create_task(
                self._drain(chat_id), name=f"card-edits-{chat_id}"
            )

    async def _drain(self, chat_id: int) -> None:
        try:
            while pending := self._pending.get(chat_id):
                message_id = next(iter(pending))
                look = pending.pop(message_id)
                try:
                    await self._bot.edit_message_text(
                        look.text,
                        chat_id=chat_id,
                        message_id=message_id,
                        reply_markup=look.reply_markup,
                    )
                except RetryAfter as exc:
                    # Telegram's own flood limit: wait as told, then send the newest look.
                    log.warning("card %s/%s: Telegram asks to wait", chat_id, message_id)
                    await asyncio.sleep(exc._retry_after.total_seconds())
                    pending.setdefault(message_id, look)
                except BadRequest as exc:
                    if "not modified" not in str(exc):  # a double tap's second look
                        log.warning("card %s/%s: edit refused: %s", chat_id, message_id, exc)
                except TelegramError as exc:
                    log.warning("card %s/%s: edit failed: %s", chat_id, message_id, exc)
        finally:
            # No await since the loop saw the chat's queue empty: nothing was added meanwhile.
            self._pending.pop(chat_id, None)
            self._tasks.pop(chat_id, None)

    async def idle(self) -> None:
        """Wait until every edit handed over so far has been sent (or failed)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def stop(self) -> None:
        """Send what is pending for up to ``flush_grace_s`` seconds, then drop the rest."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.flush_grace_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("stop: card edits for %d chat(s) dropped", len(late))
            await asyncio.wait(late)
