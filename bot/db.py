"""The one way the store and the queue reach a database: a small ``Database`` protocol, and
its SQLite implementation (PostgreSQL plugs in behind the same protocol).

Example::

    db = await open_database(Path("data/bot.sqlite3"))      # or "sqlite:///data/bot.sqlite3"
    async with db.transaction() as tx:
        await tx.execute("UPDATE flags SET value = :v WHERE name = :n", {"v": "1", "n": "paused"})
    row = await db.fetchone("SELECT value FROM flags WHERE name = :n", {"n": "paused"})
    await db.close()

SQL is written once, with ``:name`` parameters; rows come back as mappings by column name.
Times are always parameters (never the database's clock), so tests control them. SQLite:
one long-lived ``aiosqlite`` connection per process (each connection costs a thread), WAL,
a busy timeout, autocommit plus explicit ``BEGIN IMMEDIATE`` transactions serialised by an
``asyncio.Lock``; a transaction opened inside another in the same task is a savepoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from bot.schema import SQLITE_MIGRATIONS, Dialect

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]
__all__ = ["Database", "Dialect", "Row", "SqliteDatabase", "open_database"]


class Database(Protocol):
    """A connection (or pool) the store and the queue run their SQL through."""

    dialect: Dialect

    async def fetchone(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        """The first row of one statement, or ``None``."""

    async def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """Every row of one statement (``UPDATE ... RETURNING`` included)."""

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Run one statement; the number of rows it changed."""

    def transaction(self) -> AbstractAsyncContextManager[Database]:
        """One atomic unit: statements go through the yielded object; commit at the end,
        roll back on any exception (cancellation included)."""

    async def notify(self, channel: str) -> None:
        """Wake whoever waits on ``channel`` (call after the commit that is the news)."""

    async def wait(self, channel: str, timeout: float) -> bool:  # noqa: ASYNC109 (the seam)
        """Wait up to ``timeout`` seconds for a ``notify`` on ``channel``; whether one came."""

    async def close(self) -> None:
        """Close the connection (after a transaction in progress ends)."""


class SqliteDatabase:
    """``Database`` over one ``aiosqlite`` connection. Open with ``open_database(path)``."""

    dialect = Dialect.SQLITE

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0
        self._channels: dict[str, asyncio.Event] = {}

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        """Open (creating the folder and the file if needed) and migrate the database."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)
        try:
            connection.row_factory = aiosqlite.Row
            # Wait for another process's write lock instead of failing at once.
            await connection.execute("PRAGMA busy_timeout = 5000")
            async with connection.execute("PRAGMA journal_mode") as cursor:
                (mode,) = await cursor.fetchone()
            if str(mode).lower() != "wal":
                # WAL lets readers (CLI, stats) run while the worker writes.
                await connection.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode; only power loss
            # can drop the last commits, which costs a retried job at worst.
            await connection.execute("PRAGMA synchronous = NORMAL")
            await connection.execute("PRAGMA foreign_keys = ON")
            await _migrate_sqlite(connection)
        except BaseException:
            await connection.close()
            raise
        return cls(connection, path)

    # -- statements -------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        # fetchall: an UPDATE ... RETURNING must be stepped to the end before COMMIT.
        async with self._turn(), self._db.execute(sql, params or {}) as cursor:
            return [dict(zip(row.keys(), row, strict=True)) for row in await cursor.fetchall()]

    async def fetchone(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        async with self._turn(), self._db.execute(sql, params or {}) as cursor:
            return max(cursor.rowcount, 0)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The connection between other tasks' transactions (at once inside our own)."""
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            yield
            return
        async with self._lock:
            yield

    # -- transactions -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteDatabase]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` on any exception.

        ``IMMEDIATE`` takes the write lock up front, so two processes never both read and
        then fail to upgrade. Nested in the same task, it becomes a ``SAVEPOINT``.
        """
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            async with self._savepoint():
                yield self
            return
        async with self._lock:
            self._owner = task
            try:
                # BEGIN and COMMIT inside the try: a cancel while either is awaited still
                # runs it on aiosqlite's thread, so the connection must be rolled back.
                await self._db.execute("BEGIN IMMEDIATE")
                yield self
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

    # -- wake-ups (in this process: SQLite has no one else to tell) --------------------

    async def notify(self, channel: str) -> None:
        event = self._channels.pop(channel, None)
        if event is not None:
            event.set()  # every task waiting now wakes; later waiters get a fresh event

    async def wait(self, channel: str, timeout: float) -> bool:  # noqa: ASYNC109 (the seam)
        event = self._channels.setdefault(channel, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()


async def open_database(url_or_path: str | Path) -> Database:
    """The database a path or URL names, migrated to this code's schema.

    A path or ``sqlite:///path`` opens SQLite; ``postgresql://...`` PostgreSQL (the URL may
    hold a password: it is never logged).
    """
    text = str(url_or_path)
    if text.startswith(("postgresql://", "postgres://")):
        from bot.db_postgres import PostgresDatabase

        return await PostgresDatabase.open(text)
    if text.startswith("sqlite:///"):
        text = text.removeprefix("sqlite:///")
    return await SqliteDatabase.open(Path(text))


def split_statements(script: str) -> list[str]:
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


async def _migrate_sqlite(db: aiosqlite.Connection) -> None:
    """Apply pending migrations, each in its own ``BEGIN IMMEDIATE`` transaction.

    The version (``PRAGMA user_version``) is read inside the transaction, so two processes
    opening a fresh file at once cannot both apply the same script.
    """
    while True:
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute("PRAGMA user_version") as cursor:
                (version,) = await cursor.fetchone()
            if version > len(SQLITE_MIGRATIONS):
                raise RuntimeError(
                    f"database schema version {version} is newer than this code "
                    f"({len(SQLITE_MIGRATIONS)}); upgrade the bot"
                )
            if version == len(SQLITE_MIGRATIONS):
                await db.execute("COMMIT")
                return
            for statement in split_statements(SQLITE_MIGRATIONS[version]):
                await db.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            await db.execute(f"PRAGMA user_version = {version + 1}")
            await db.execute("COMMIT")
            logger.info("database migrated to schema version %d", version + 1)
        except BaseException:
            await db.execute("ROLLBACK")
            raise
