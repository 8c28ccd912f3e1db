"""The bot's SQLite database: users, settings cards, flags, job history and stats, with migrations.

Example::

    store = await Store.open(Path("data/bot.sqlite3"))
    job = await store.queue.enqueue(new_job, now=time.time())
    print(await store.history(user_id, limit=5))
    await store.close()

One long-lived ``aiosqlite`` connection per process (``aiosqlite`` gives each connection its
own thread, so opening one per query would cost a thread each time). Autocommit mode plus
explicit ``BEGIN IMMEDIATE`` transactions; every value goes in as a named parameter and
every time comes in as an argument, so tests control the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import statistics
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from bot.jobs import ACTIVE, Job, JobOptions, Status
from generator.options import Backend, Intensity, PhotoType

if TYPE_CHECKING:
    from bot.queue import SqliteQueue

logger = logging.getLogger(__name__)

#: Forward-only schema migrations; migration ``n`` (0-based) moves ``PRAGMA user_version``
#: from ``n`` to ``n + 1``. Append new scripts, never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        options TEXT,                    -- JobOptions as JSON: defaults for the next card
        allowed INTEGER,                 -- NULL: config decides; 0 denied; 1 allowed
        allowed_by INTEGER,
        allowed_at REAL,
        first_seen REAL,
        last_seen REAL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL,
        chat_id INTEGER NOT NULL,
        photo_message_id INTEGER NOT NULL,
        photo_path TEXT NOT NULL,
        options TEXT NOT NULL,
        status TEXT NOT NULL,
        dedupe_key TEXT NOT NULL UNIQUE,
        status_message_id INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        created_at REAL NOT NULL,
        started_at REAL,
        heartbeat_at REAL,
        finished_at REAL,
        worker_id TEXT,
        used_backend TEXT,
        fallback_reason TEXT,
        veo_operation TEXT,
        cost_usd REAL NOT NULL DEFAULT 0,
        error TEXT,
        video_path TEXT,
        video_file_id TEXT,
        video_size INTEGER,
        video_duration REAL,
        video_width INTEGER,
        video_height INTEGER,
        seed INTEGER,
        extra TEXT NOT NULL DEFAULT '{}',
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_status_id ON jobs (status, id);
    CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
    CREATE INDEX jobs_user_started ON jobs (user_id, started_at);
    CREATE TABLE cards (
        chat_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        photo_message_id INTEGER NOT NULL,
        photo_path TEXT NOT NULL,
        options TEXT NOT NULL,
        created_at REAL NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (chat_id, message_id)
    );
    CREATE TABLE flags (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: a retried job waits before it can be claimed again (backoff after a transient error).
    """
    ALTER TABLE jobs ADD COLUMN not_before REAL;
    """,
    # 3: a job's own failures and the crashes under it are counted apart (``bot.jobs.Charge``),
    # so restarts do not spend the attempts of a good photo (rows from before start at zero);
    # a delivered clip's message id is recorded in the same write that says ``done``.
    """
    ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN video_message_id INTEGER;
    """,
    # 4: when each stranger was last told the bot is private (they hear it once a day).
    """
    CREATE TABLE strangers (
        user_id INTEGER PRIMARY KEY,
        told_at REAL NOT NULL
    );
    CREATE INDEX cards_created ON cards (created_at);
    CREATE INDEX jobs_photo ON jobs (photo_path);
    CREATE INDEX cards_photo_message ON cards (chat_id, photo_message_id);
    """,
)

#: Users whose /allow or /deny answer is remembered in memory (the guard asks on every update).
ALLOWED_CACHE_SIZE = 10_000

_TRANSACTION_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})


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


@dataclass(frozen=True)
class FileRefs:
    """What the jobs and cards tables point at in the data folder, for the sweep.

    ``active_*`` belong to queued, running or sending jobs and must stay; ``known_photos``
    is every photo a job or a card names (the rest are leftovers of an interrupted intake).
    """

    active_photos: frozenset[str]
    active_job_ids: frozenset[int]
    ended_job_ids: frozenset[int]
    known_photos: frozenset[str]


@dataclass(frozen=True)
class Stats:
    """Numbers for the admin's /stats. Keys of the dicts are status and backend values."""

    by_status: dict[str, int]  # every job ever, by current status
    by_backend: dict[str, int]  # jobs that ran, by the backend that made the clip
    median_seconds: dict[str, float]  # run time of done jobs, by backend
    veo_spend_today: float
    veo_spend_month: float
    failure_rate: float  # failed / (done + failed) among jobs finished this month
    total: int


def options_to_json(options: JobOptions) -> str:
    """Serialise ``JobOptions`` (enums by value, ``custom_elements`` as a list)."""
    return json.dumps(
        {
            "backend": options.backend.value,
            "intensity": options.intensity.value,
            "photo_type": options.photo_type.value,
            "duration": options.duration,
            "custom_elements": list(options.custom_elements),
            "motion": options.motion,
        },
        sort_keys=True,
    )


def options_from_json(text: str) -> JobOptions:
    """Parse what ``options_to_json`` wrote; missing keys take their defaults.

    Raises ``ValueError`` on malformed JSON or an unknown enum value.
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"options must be a JSON object, got {type(data).__name__}")
    default = JobOptions()
    return JobOptions(
        backend=Backend(data.get("backend", default.backend)),
        intensity=Intensity(data.get("intensity", default.intensity)),
        photo_type=PhotoType(data.get("photo_type", default.photo_type)),
        duration=data.get("duration"),
        custom_elements=tuple(data.get("custom_elements") or ()),
        motion=data.get("motion"),
    )


_JOB_FIELDS = frozenset(f.name for f in fields(Job))


def _job_from_row(row: Mapping[str, Any]) -> Job:
    """Turn one jobs row into a frozen ``Job``; the only place rows become jobs.

    Raises ``ValueError`` for a status this code does not know (a row written by newer code
    or by hand), rather than letting an unknown state flow through the bot.
    """
    status_text = row["status"]
    try:
        status = Status(status_text)
    except ValueError:
        raise ValueError(f"job {row['id']}: unknown status {status_text!r}") from None
    values = {key: row[key] for key in row.keys() if key in _JOB_FIELDS}
    values["status"] = status
    values["options"] = options_from_json(row["options"])
    values["used_backend"] = Backend(row["used_backend"]) if row["used_backend"] else None
    values["extra"] = json.loads(row["extra"] or "{}")
    return Job(**values)


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
    )


def _split_statements(script: str) -> list[str]:
    """Split a migration script into statements (``executescript`` would commit midway)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:60]!r}")
    return statements


class Store:
    """The bot's database over one connection. Open with ``await Store.open(path)``.

    Calls from concurrent tasks are serialised by an ``asyncio.Lock`` (one connection can
    hold one transaction); a ``transaction()`` opened inside another in the same task nests
    as a savepoint, so store methods may be called inside a caller's transaction.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        # Use ``Store.open``: it configures the connection and migrates the schema.
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0
        self._queue: SqliteQueue | None = None
        self._allowed: OrderedDict[int, bool | None] = OrderedDict()

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating the parent folder and the file if needed) and migrate the database."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = aiosqlite.Row
            # Wait for another process's write lock instead of failing at once.
            await db.execute("PRAGMA busy_timeout = 5000")
            async with db.execute("PRAGMA journal_mode") as cursor:
                (mode,) = await cursor.fetchone()
            if str(mode).lower() != "wal":
                # WAL lets readers (CLI, stats) run while the worker writes.
                await db.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode; only power loss
            # can drop the last commits, which costs a retried job at worst.
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await _migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    async def close(self) -> None:
        """Close the connection (waits for a transaction in progress to finish)."""
        async with self._lock:
            await self._db.close()

    @property
    def queue(self) -> SqliteQueue:
        """The ``JobQueue`` over this same connection."""
        if self._queue is None:
            # Imported here because bot.queue builds on this module.
            from bot.queue import SqliteQueue

            self._queue = SqliteQueue(self)
        return self._queue

    @property
    def connection(self) -> aiosqlite.Connection:
        """The raw connection, for ``bot.queue``; use it inside ``transaction()`` or ``read()``."""
        return self._db

    @contextlib.asynccontextmanager
    async def transaction(self, mode: str = "IMMEDIATE") -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN <mode>`` ... ``COMMIT``; ``ROLLBACK`` on any exception, cancellation included.

        ``IMMEDIATE`` takes the write lock up front, so two processes never both read and
        then fail to upgrade. Nested in the same task, it becomes a ``SAVEPOINT``.
        """
        mode = mode.upper()
        if mode not in _TRANSACTION_MODES:
            raise ValueError(f"transaction mode must be one of {sorted(_TRANSACTION_MODES)}")
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            async with self._savepoint():
                yield self._db
            return
        async with self._lock:
            self._owner = task
            try:
                # BEGIN and COMMIT inside the try: a cancel while either is awaited still
                # runs it on aiosqlite's thread, so the connection must be rolled back.
                await self._db.execute(f"BEGIN {mode}")
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
            finally:
                self._owner = None

    async def _rollback(self) -> None:
        try:
            await self._db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            # BEGIN failed (busy) or COMMIT went through: nothing left to undo.
            if "no transaction is active" not in str(exc):
                raise

    @contextlib.asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        self._depth += 1
        name = f"sp{self._depth}"
        await self._db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            await self._db.execute(f"ROLLBACK TO {name}")
            await self._db.execute(f"RELEASE {name}")
            raise
        else:
            await self._db.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for reads, taken between other tasks' transactions."""
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            yield self._db
            return
        async with self._lock:
            yield self._db

    async def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Rows of one query (``aiosqlite.Row``, indexable by column name)."""
        async with self.read() as db, db.execute(sql, params or {}) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Mapping[str, Any] | None = None) -> Any | None:
        """The first row of one query, or ``None``."""
        async with self.read() as db, db.execute(sql, params or {}) as cursor:
            return await cursor.fetchone()

    # -- users and settings -------------------------------------------------------------

    async def get_user_options(self, user_id: int) -> JobOptions | None:
        """The user's last choices (defaults for their next card); ``None`` if none stored."""
        row = await self.fetchone("SELECT options FROM users WHERE id = :id", {"id": user_id})
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
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO users (id, options) VALUES (:id, :options) "
                "ON CONFLICT (id) DO UPDATE SET options = excluded.options",
                {"id": user_id, "options": options_to_json(options)},
            )

    async def set_allowed(self, user_id: int, allowed: bool, *, by: int, now: float) -> None:
        """Persist an admin's /allow or /deny; it overrides the config's allowlist."""
        async with self.transaction() as db:
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
        row = await self.fetchone("SELECT allowed FROM users WHERE id = :id", {"id": user_id})
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
        async with self.transaction() as db:
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
        async with self.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO cards (chat_id, message_id, user_id, photo_message_id, photo_path, "
                "options, created_at, generation) VALUES (:chat_id, :message_id, :user_id, "
                ":photo_message_id, :photo_path, :options, :created_at, :generation) "
                "ON CONFLICT (chat_id, message_id) DO UPDATE SET "
                "photo_message_id = excluded.photo_message_id, "
                "photo_path = excluded.photo_path, options = excluded.options, "
                "created_at = excluded.created_at, generation = excluded.generation "
                "WHERE cards.user_id = excluded.user_id",
                {
                    "chat_id": card.chat_id,
                    "message_id": card.message_id,
                    "user_id": card.user_id,
                    "photo_message_id": card.photo_message_id,
                    "photo_path": card.photo_path,
                    "options": options_to_json(card.options),
                    "created_at": card.created_at,
                    "generation": card.generation,
                },
            )
            written = cursor.rowcount > 0
            await cursor.close()
        return written

    async def delete_card(self, chat_id: int, message_id: int, user_id: int) -> bool:
        """Forget a card, only for its owner; whether a row went."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM cards WHERE chat_id = :chat_id AND message_id = :message_id "
                "AND user_id = :user_id",
                {"chat_id": chat_id, "message_id": message_id, "user_id": user_id},
            )
            deleted = cursor.rowcount > 0
            await cursor.close()
        return deleted

    async def photo_in_use(self, photo_path: str) -> bool:
        """Whether any job (of any status) was made from this photo file."""
        row = await self.fetchone(
            "SELECT 1 FROM jobs WHERE photo_path = :path LIMIT 1", {"path": photo_path}
        )
        return row is not None

    async def get_card(self, chat_id: int, message_id: int) -> Card | None:
        """The card on that message, or ``None`` (never stored, or from before a wipe)."""
        row = await self.fetchone(
            "SELECT * FROM cards WHERE chat_id = :chat_id AND message_id = :message_id",
            {"chat_id": chat_id, "message_id": message_id},
        )
        return None if row is None else _card_from_row(row)

    async def card_for_photo(self, chat_id: int, photo_message_id: int) -> Card | None:
        """The settings card answering that photo, if one was stored (a replayed update)."""
        row = await self.fetchone(
            "SELECT * FROM cards WHERE chat_id = :chat_id AND photo_message_id = :photo "
            "ORDER BY message_id LIMIT 1",
            {"chat_id": chat_id, "photo": photo_message_id},
        )
        return None if row is None else _card_from_row(row)

    async def prune_cards(
        self, *, created_before: float | None, photo_paths: Iterable[str] = ()
    ) -> int:
        """Delete card rows made before ``created_before`` (``None``: no age limit), whose
        photo is one of ``photo_paths`` (deleted), or whose photo's jobs have all ended
        (the card became a status message long ago); how many went."""
        removed = 0
        async with self.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM cards WHERE photo_path IN (SELECT photo_path FROM jobs) "
                "AND photo_path NOT IN (SELECT photo_path FROM jobs "
                f"WHERE status IN ({_in(ACTIVE)}))",
                _in_params(ACTIVE),
            )
            removed += max(cursor.rowcount, 0)
            await cursor.close()
            if created_before is not None:
                cursor = await db.execute(
                    "DELETE FROM cards WHERE created_at < :before", {"before": created_before}
                )
                removed += max(cursor.rowcount, 0)
                await cursor.close()
            for path in photo_paths:
                cursor = await db.execute(
                    "DELETE FROM cards WHERE photo_path = :path", {"path": path}
                )
                removed += max(cursor.rowcount, 0)
                await cursor.close()
        return removed

    async def file_references(self) -> FileRefs:
        """What jobs and cards point at, for the sweep (``bot.upkeep``)."""
        active = await self.fetchall(
            f"SELECT id, photo_path FROM jobs WHERE status IN ({_in(ACTIVE)})", _in_params(ACTIVE)
        )
        ended = await self.fetchall(
            f"SELECT id FROM jobs WHERE status NOT IN ({_in(ACTIVE)})", _in_params(ACTIVE)
        )
        known = await self.fetchall(
            "SELECT photo_path FROM jobs UNION SELECT photo_path FROM cards"
        )
        return FileRefs(
            active_photos=frozenset(row["photo_path"] for row in active),
            active_job_ids=frozenset(int(row["id"]) for row in active),
            ended_job_ids=frozenset(int(row[0]) for row in ended),
            known_photos=frozenset(row[0] for row in known),
        )

    # -- strangers ----------------------------------------------------------------------

    async def prune_strangers(self, *, told_before: float) -> int:
        """Forget strangers last told before ``told_before`` (they would be told again anyway)."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM strangers WHERE told_at < :before", {"before": told_before}
            )
            removed = max(cursor.rowcount, 0)
            await cursor.close()
        return removed

    async def tell_stranger(self, user_id: int, *, now: float, every: float) -> bool:
        """Whether to tell ``user_id`` the bot is private now: at most once per ``every``
        seconds. Records the telling in the same transaction, so two updates at once from
        one stranger get one answer."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO strangers (user_id, told_at) VALUES (:user_id, :now) "
                "ON CONFLICT (user_id) DO UPDATE SET told_at = excluded.told_at "
                "WHERE strangers.told_at <= :now - :every OR strangers.told_at > :now",
                {"user_id": user_id, "now": now, "every": every},
            )
            told = cursor.rowcount > 0
            await cursor.close()
        return told

    # -- history, limits and stats ------------------------------------------------------

    async def history(self, user_id: int, limit: int = 10) -> list[Job]:
        """The user's jobs, newest first."""
        rows = await self.fetchall(
            "SELECT * FROM jobs WHERE user_id = :user_id "
            "ORDER BY created_at DESC, id DESC LIMIT :limit",
            {"user_id": user_id, "limit": limit},
        )
        return [_job_from_row(row) for row in rows]

    async def active_count(self, user_id: int) -> int:
        """How many of the user's jobs are queued, running or sending."""
        row = await self.fetchone(
            f"SELECT COUNT(*) FROM jobs WHERE user_id = :user_id AND status IN ({_in(ACTIVE)})",
            {"user_id": user_id, **_in_params(ACTIVE)},
        )
        return int(row[0])

    async def jobs_since(self, user_id: int, since: float) -> int:
        """Jobs the user asked for at or after ``since``, for the daily limit.

        Jobs cancelled or expired before they started do not count: they cost nothing.
        """
        row = await self.fetchone(
            "SELECT COUNT(*) FROM jobs WHERE user_id = :user_id AND created_at >= :since "
            "AND NOT (status IN ('cancelled', 'expired') AND started_at IS NULL)",
            {"user_id": user_id, "since": since},
        )
        return int(row[0])

    async def veo_spend(self, *, since: float, user_id: int | None = None) -> float:
        """US dollars recorded on jobs created at or after ``since`` (one user's, or everyone's)."""
        row = await self.fetchone(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM jobs WHERE created_at >= :since "
            "AND (:user_id IS NULL OR user_id = :user_id)",
            {"since": since, "user_id": user_id},
        )
        return float(row[0])

    async def recent_durations(self, backend: Backend, limit: int = 20) -> list[float]:
        """Run times (``finished_at - started_at``) of done jobs on ``backend``, newest first."""
        rows = await self.fetchall(
            "SELECT finished_at - started_at FROM jobs WHERE status = 'done' "
            "AND used_backend = :backend AND started_at IS NOT NULL "
            "AND finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT :limit",
            {"backend": Backend(backend).value, "limit": limit},
        )
        return [float(row[0]) for row in rows]

    async def stats(self, *, now: float, day_start: float, month_start: float) -> Stats:
        """Counts, medians, Veo spend and the failure rate for the admin."""
        by_status = {
            row[0]: int(row[1])
            for row in await self.fetchall("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        }
        by_backend = {
            row[0]: int(row[1])
            for row in await self.fetchall(
                "SELECT used_backend, COUNT(*) FROM jobs WHERE used_backend IS NOT NULL "
                "GROUP BY used_backend"
            )
        }
        durations: dict[str, list[float]] = {}
        for row in await self.fetchall(
            "SELECT used_backend, finished_at - started_at FROM jobs WHERE status = 'done' "
            "AND used_backend IS NOT NULL AND started_at IS NOT NULL AND finished_at IS NOT NULL"
        ):
            durations.setdefault(row[0], []).append(float(row[1]))
        finished = await self.fetchone(
            "SELECT COALESCE(SUM(status = 'failed'), 0), COUNT(*) FROM jobs "
            "WHERE status IN ('done', 'failed') AND finished_at >= :month_start "
            "AND finished_at <= :now",
            {"month_start": month_start, "now": now},
        )
        failed, ended = int(finished[0]), int(finished[1])
        return Stats(
            by_status=by_status,
            by_backend=by_backend,
            median_seconds={name: statistics.median(v) for name, v in durations.items()},
            veo_spend_today=await self.veo_spend(since=day_start),
            veo_spend_month=await self.veo_spend(since=month_start),
            failure_rate=failed / ended if ended else 0.0,
            total=sum(by_status.values()),
        )

    # -- flags --------------------------------------------------------------------------

    async def get_flag(self, name: str) -> str | None:
        """A stored flag (e.g. ``"paused"``), or ``None`` when unset."""
        row = await self.fetchone("SELECT value FROM flags WHERE name = :name", {"name": name})
        return None if row is None else row["value"]

    async def set_flag(self, name: str, value: str | None) -> None:
        """Set a flag; ``None`` removes it."""
        async with self.transaction() as db:
            if value is None:
                await db.execute("DELETE FROM flags WHERE name = :name", {"name": name})
            else:
                await db.execute(
                    "INSERT INTO flags (name, value) VALUES (:name, :value) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    {"name": name, "value": value},
                )


def _in(values: Iterable[Status]) -> str:
    """Named placeholders for an ``IN (...)`` list of statuses."""
    return ", ".join(f":status_{s.value}" for s in sorted(values))


def _in_params(values: Iterable[Status]) -> dict[str, str]:
    return {f"status_{s.value}": s.value for s in values}


async def _migrate(db: aiosqlite.Connection) -> None:
    """Apply pending migrations, each in its own ``BEGIN IMMEDIATE`` transaction.

    The version is read inside the transaction, so two processes opening a fresh file at
    once cannot both apply the same script.
    """
    while True:
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute("PRAGMA user_version") as cursor:
                (version,) = await cursor.fetchone()
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema version {version} is newer than this code "
                    f"({len(MIGRATIONS)}); upgrade the bot"
                )
            if version == len(MIGRATIONS):
                await db.execute("COMMIT")
                return
            for statement in _split_statements(MIGRATIONS[version]):
                await db.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            await db.execute(f"PRAGMA user_version = {version + 1}")
            await db.execute("COMMIT")
            logger.info("database migrated to schema version %d", version + 1)
        except BaseException:
            await db.execute("ROLLBACK")
            raise
