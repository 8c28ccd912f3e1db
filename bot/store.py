"""The bot's own tables: users, settings cards, flags and strangers (the queue owns the jobs).

Example::

    store = await Store.open(Path("data/bot.sqlite3"))   # or Store(await open_database(url))
    await store.save_user_options(user_id, options)
    print(await store.get_flag("paused"))
    await store.close()

Every statement goes through ``bot.db.Database`` (SQLite or PostgreSQL); every value goes in
as a named parameter and every time comes in as an argument, so tests control the clock.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.db import Database, open_database
from bot.jobs import JobOptions, options_from_json, options_to_json

logger = logging.getLogger(__name__)


#: Users whose /allow or /deny answer is remembered in memory (the guard asks on every update).
ALLOWED_CACHE_SIZE = 10_000


class Flag(enum.StrEnum):
    """Names of the stored flags."""

    PAUSED = "paused"  # set: no consumer claims new jobs (admin's /pause)


@dataclass(frozen=True)
class Card:
    """A settings card: a photo waiting for Animate, keyed by the card message.

    ``generation`` counts Animate presses, so each press gets its own dedupe key while a
    double tap on the same press does not enqueue twice.
    """

    chat_id: int
    message_id: int
    user_id: int
    photo_message_id: int
    photo_path: str
    options: JobOptions
    created_at: float
    generation: int = 0
    photo_file_id: str | None = None  # Telegram's id of the photo (``NewJob.photo_file_id``)


def _card_from_row(row: Any) -> Card:
    return Card(
        chat_id=row["chat_id"],
        message_id=row["message_id"],
        user_id=row["user_id"],
        photo_message_id=row["photo_message_id"],
        photo_path=row["photo_path"],
        options=options_from_json(row["options"]),
        created_at=row["created_at"],
        generation=row["generation"],
        photo_file_id=row["photo_file_id"],
    )


class Store:
    """Users, cards, flags and strangers over a ``Database``. Open with ``Store.open(path)``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._allowed: OrderedDict[int, bool | None] = OrderedDict()

    @classmethod
    async def open(cls, url_or_path: str | Path) -> Store:
        """Open (creating and migrating) the database a path or URL names."""
        return cls(await open_database(url_or_path))

    async def close(self) -> None:
        """Close the database (waits for a transaction in progress to finish)."""
        await self.db.close()

    def transaction(self) -> AbstractAsyncContextManager[Database]:
        """One atomic unit around several calls (store or queue) on this database."""
        return self.db.transaction()

    # -- users and settings -------------------------------------------------------------

    async def get_user_options(self, user_id: int) -> JobOptions | None:
        """The user's last choices (defaults for their next card); ``None`` if none stored."""
        row = await self.db.fetchone("SELECT options FROM users WHERE id = :id", {"id": user_id})
        if row is None or row["options"] is None:
            return None
        try:
            return options_from_json(row["options"])
        except (ValueError, TypeError):
            # Old or damaged preferences should not lock the user out: start from defaults.
            logger.warning("user %s: unreadable stored options, using defaults", user_id)
            return None

    async def save_user_options(self, user_id: int, options: JobOptions) -> None:
        """Remember the user's choices for their next card."""
        async with self.db.transaction() as db:
            await db.execute(
                "INSERT INTO users (id, options) VALUES (:id, :options) "
                "ON CONFLICT (id) DO UPDATE SET options = excluded.options",
                {"id": user_id, "options": options_to_json(options)},
            )

    async def set_allowed(self, user_id: int, allowed: bool, *, by: int, now: float) -> None:
        """Persist an admin's /allow or /deny; it overrides the config's allowlist."""
        async with self.db.transaction() as db:
            await db.execute(
                "INSERT INTO users (id, allowed, allowed_by, allowed_at) "
                "VALUES (:id, :allowed, :by, :now) "
                "ON CONFLICT (id) DO UPDATE SET allowed = excluded.allowed, "
                "allowed_by = excluded.allowed_by, allowed_at = excluded.allowed_at",
                {"id": user_id, "allowed": int(allowed), "by": by, "now": now},
            )
        self._remember_allowed(user_id, allowed)
        logger.info("user %s %s by %s", user_id, "allowed" if allowed else "denied", by)

    async def allowed_override(self, user_id: int) -> bool | None:
        """The stored /allow (True) or /deny (False); ``None`` when the config decides.

        Asked on every update (the access guard), so answers are remembered: only
        ``set_allowed`` changes them, through this object. Bounded, as strangers are many.
        """
        if user_id in self._allowed:
            self._allowed.move_to_end(user_id)
            return self._allowed[user_id]
        row = await self.db.fetchone("SELECT allowed FROM users WHERE id = :id", {"id": user_id})
        allowed = None if row is None or row["allowed"] is None else bool(row["allowed"])
        self._remember_allowed(user_id, allowed)
        return allowed

    def _remember_allowed(self, user_id: int, allowed: bool | None) -> None:
        self._allowed[user_id] = allowed
        self._allowed.move_to_end(user_id)
        while len(self._allowed) > ALLOWED_CACHE_SIZE:
            self._allowed.popitem(last=False)

    async def touch_user(self, user_id: int, name: str, *, now: float) -> None:
        """Record that the user was seen, under this display name."""
        async with self.db.transaction() as db:
            await db.execute(
                "INSERT INTO users (id, name, first_seen, last_seen) "
                "VALUES (:id, :name, :now, :now) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "last_seen = excluded.last_seen, "
                "first_seen = COALESCE(users.first_seen, excluded.first_seen)",
                {"id": user_id, "name": name, "now": now},
            )

    # -- settings cards -----------------------------------------------------------------

    async def save_card(self, card: Card) -> bool:
        """Insert the card stored for ``(chat_id, message_id)``, or update it if it is the same
        user's; ``False`` (and nothing written) when that message holds another user's card."""
        async with self.db.transaction() as db:
            changed = await db.execute(
                "INSERT INTO cards (chat_id, message_id, user_id, photo_message_id, photo_path, "
                "photo_file_id, options, created_at, generation) VALUES (:chat_id, :message_id, "
                ":user_id, :photo_message_id, :photo_path, :photo_file_id, :options, :created_at, "
                ":generation) ON CONFLICT (chat_id, message_id) DO UPDATE SET "
                "photo_message_id = excluded.photo_message_id, "
                "photo_path = excluded.photo_path, photo_file_id = excluded.photo_file_id, "
                "options = excluded.options, "
                "created_at = excluded.created_at, generation = excluded.generation "
                "WHERE cards.user_id = excluded.user_id",
                {
                    "chat_id": card.chat_id,
                    "message_id": card.message_id,
                    "user_id": card.user_id,
                    "photo_message_id": card.photo_message_id,
                    "photo_path": card.photo_path,
                    "photo_file_id": card.photo_file_id,
                    "options": options_to_json(card.options),
                    "created_at": card.created_at,
                    "generation": card.generation,
                },
            )
            written = changed > 0
        return written

    async def delete_card(self, chat_id: int, message_id: int, user_id: int) -> bool:
        """Forget a card, only for its owner; whether a row went."""
        async with self.db.transaction() as db:
            changed = await db.execute(
                "DELETE FROM cards WHERE chat_id = :chat_id AND message_id = :message_id "
                "AND user_id = :user_id",
                {"chat_id": chat_id, "message_id": message_id, "user_id": user_id},
            )
            deleted = changed > 0
        return deleted

    async def get_card(self, chat_id: int, message_id: int) -> Card | None:
        """The card on that message, or ``None`` (never stored, or from before a wipe)."""
        row = await self.db.fetchone(
            "SELECT * FROM cards WHERE chat_id = :chat_id AND message_id = :message_id",
            {"chat_id": chat_id, "message_id": message_id},
        )
        return None if row is None else _card_from_row(row)

    async def card_for_photo(self, chat_id: int, photo_message_id: int) -> Card | None:
        """The settings card answering that photo, if one was stored (a replayed update)."""
        row = await self.db.fetchone(
            "SELECT * FROM cards WHERE chat_id = :chat_id AND photo_message_id = :photo "
            "ORDER BY message_id LIMIT 1",
            {"chat_id": chat_id, "photo": photo_message_id},
        )
        return None if row is None else _card_from_row(row)

    async def card_photos(self) -> frozenset[str]:
        """Every photo a stored card names (for the sweep: photos nothing refers to go)."""
        rows = await self.db.fetchall("SELECT DISTINCT photo_path FROM cards")
        return frozenset(row["photo_path"] for row in rows)

    async def prune_cards(
        self, *, created_before: float | None, photo_paths: Iterable[str] = ()
    ) -> int:
        """Delete card rows made before ``created_before`` (``None``: no age limit) or whose
        photo is one of ``photo_paths`` (deleted, or all its jobs ended: the card became a
        status message long ago); how many went."""
        removed = 0
        async with self.db.transaction() as db:
            if created_before is not None:
                removed += await db.execute(
                    "DELETE FROM cards WHERE created_at < :before", {"before": created_before}
                )
            for path in photo_paths:
                removed += await db.execute(
                    "DELETE FROM cards WHERE photo_path = :path", {"path": path}
                )
        return removed

    # -- strangers ----------------------------------------------------------------------

    async def prune_strangers(self, *, told_before: float) -> int:
        """Forget strangers last told before ``told_before`` (they would be told again anyway)."""
        async with self.db.transaction() as db:
            return await db.execute(
                "DELETE FROM strangers WHERE told_at < :before", {"before": told_before}
            )

    async def tell_stranger(self, user_id: int, *, now: float, every: float) -> bool:
        """Whether to tell ``user_id`` the bot is private now: at most once per ``every``
        seconds. Records the telling in the same transaction, so two updates at once from
        one stranger get one answer."""
        async with self.db.transaction() as db:
            changed = await db.execute(
                "INSERT INTO strangers (user_id, told_at) VALUES (:user_id, :now) "
                "ON CONFLICT (user_id) DO UPDATE SET told_at = excluded.told_at "
                "WHERE strangers.told_at <= :now - :every OR strangers.told_at > :now",
                {"user_id": user_id, "now": now, "every": every},
            )
            told = changed > 0
        return told

    # -- flags --------------------------------------------------------------------------

    async def get_flag(self, name: str) -> str | None:
        """A stored flag (e.g. ``"paused"``), or ``None`` when unset."""
        row = await self.db.fetchone("SELECT value FROM flags WHERE name = :name", {"name": name})
        return None if row is None else row["value"]

    async def set_flag(self, name: str, value: str | None) -> None:
        """Set a flag; ``None`` removes it."""
        async with self.db.transaction() as db:
            if value is None:
                await db.execute("DELETE FROM flags WHERE name = :name", {"name": name})
            else:
                await db.execute(
                    "INSERT INTO flags (name, value) VALUES (:name, :value) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    {"name": name, "value": value},
                )
