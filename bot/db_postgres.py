"""``bot.db.Database`` on PostgreSQL, the store and queue shared by several hosts.

Example::

    db = await open_database("postgresql://animate@db.example/animate")
    async with db.transaction() as tx:
        job = await tx.fetchone("SELECT * FROM jobs WHERE id = :id FOR UPDATE", {"id": 7})
    await db.close()

A ``psycopg`` pool of autocommit connections: a statement outside a transaction is its own
transaction; ``transaction()`` takes one pooled connection for the unit, and any statement
the same task runs before it ends goes through that connection (a nested ``transaction()``
is a savepoint), as on SQLite. SQL keeps the ``:name`` style and is converted once per text
to psycopg's ``%(name)s``. Wake-ups are ``NOTIFY``; waiters ``LISTEN`` on one dedicated
connection, so a consumer on another host hears of a new job at once. Schema migrations run
under an advisory lock, so hosts that start together apply each one once. The URL may hold a
password: nothing here logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Loader
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bot.schema import POSTGRES_MIGRATIONS, Dialect

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]  # bot.db.Row; not imported: bot.db imports this module

#: Connections per process: handlers, the consumers' heartbeats and claims run at once.
POOL_SIZE = 8
#: How long opening waits for the server before giving up (seconds).
CONNECT_TIMEOUT_S = 30.0
#: ``pg_advisory_xact_lock`` key that serialises migrations between hosts ("animate").
_MIGRATION_LOCK = 0x616E696D617465

# Literals, quoted names and comments pass through unchanged; ``::`` is a cast.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|::|:([A-Za-z_]\w*)|%")


@functools.lru_cache(maxsize=512)
def to_psycopg(text: str) -> str:
    """``:name`` parameters to psycopg's ``%(name)s``; every ``%`` doubled, as psycopg reads
    them everywhere, in literals too.

    >>> to_psycopg("SELECT x::text FROM t WHERE a = :a AND b LIKE 'p:%'")
    "SELECT x::text FROM t WHERE a = %(a)s AND b LIKE 'p:%%'"
    """

    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        if match.group(1) is not None:
            return f"%({match.group(1)})s"
        return token if token == "::" else token.replace("%", "%%")

    return _TOKENS.sub(swap, text)


class _NumberLoader(Loader):
    """``numeric`` (what ``SUM`` of integers and ``AVG`` return) as int or float, as SQLite
    gives them, instead of ``Decimal``."""

    def load(self, data: Buffer) -> int | float:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else float(text)


async def _configure(connection: psycopg.AsyncConnection[Any]) -> None:
    connection.adapters.register_loader("numeric", _NumberLoader)


class PostgresDatabase:
    """``Database`` over a PostgreSQL pool. Open with ``open_database(url)``."""

    dialect = Dialect.POSTGRES

    def __init__(self, pool: AsyncConnectionPool, url: str) -> None:
        self._pool = pool
        self._held: dict[asyncio.Task[Any], psycopg.AsyncConnection[Any]] = {}
        self._listener = _Listener(url)

    def __repr__(self) -> str:
        return "PostgresDatabase()"  # never the URL: it may hold a password

    @classmethod
    async def open(cls, url: str, *, pool_size: int = POOL_SIZE) -> PostgresDatabase:
        """Connect (waiting up to ``CONNECT_TIMEOUT_S``) and migrate the schema."""
        pool: AsyncConnectionPool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure,
            check=AsyncConnectionPool.check_connection,
            name="animate-db",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            await _migrate(pool)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url)

    # -- statements -------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        async with self._connection() as connection:
            cursor = await connection.execute(to_psycopg(sql), dict(params or {}))
            return list(await cursor.fetchall()) if cursor.description else []

    async def fetchone(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(to_psycopg(sql), dict(params or {}))
            return max(cursor.rowcount, 0)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """This task's transaction's connection, else one from the pool for one statement."""
        held = self._held.get(_task())
        if held is not None:
            yield held
            return
        async with self._pool.connection() as connection:
            yield connection

    # -- transactions -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresDatabase]:
        """``BEGIN`` ... ``COMMIT`` on one pooled connection; ``ROLLBACK`` on any exception.

        Rows are locked as the statements reach them (``FOR UPDATE`` where a read decides a
        write). Nested in the same task, it becomes a savepoint.
        """
        task = _task()
        held = self._held.get(task)
        if held is not None:
            async with held.transaction():
                yield self
            return
        async with self._pool.connection() as connection:
            self._held[task] = connection
            try:
                async with connection.transaction():
                    yield self
            finally:
                del self._held[task]

    # -- wake-ups (NOTIFY reaches every host's LISTEN) ---------------------------------

    async def notify(self, channel: str) -> None:
        # Inside a transaction the notice goes out at its commit, as PostgreSQL defines.
        await self.execute("SELECT pg_notify(:channel, '')", {"channel": channel})

    async def wait(self, channel: str, timeout: float) -> bool:  # noqa: ASYNC109 (the seam)
        return await self._listener.wait(channel, timeout)

    async def close(self) -> None:
        await self._listener.close()
        await self._pool.close()


class _Listener:
    """One connection that ``LISTEN``s on every channel anyone waited on, and a task that
    reads its notices and wakes the waiters.

    A lost connection is logged and reopened by the next ``wait``; until then waiters sleep
    out their timeout, so callers that poll on timeout lose nothing but latency.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._channels: set[str] = set()
        self._events: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()

    async def wait(self, channel: str, timeout: float) -> bool:  # noqa: ASYNC109 (the seam)
        event = self._events.setdefault(channel, asyncio.Event())
        try:
            # Before the timeout starts: once this returns, every later notice is heard.
            await self._listen(channel)
        except psycopg.Error as exc:
            logger.warning("cannot listen for wake-ups (%s); polling", type(exc).__name__)
            await asyncio.sleep(timeout)  # the caller's poll interval, as if nothing came
            return False
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def _listen(self, channel: str) -> None:
        """Make sure the connection listens on ``channel`` and its reader runs."""
        async with self._lock:
            connection = self._connection
            if connection is None or connection.closed:
                await self._stop_reader()
                connection = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
                )
                self._connection, self._channels = connection, set()
            if channel in self._channels and self._reader is not None and not self._reader.done():
                return
            # The reader holds the connection while it waits for notices: stop it to send
            # LISTEN (notices arriving meanwhile are kept by psycopg and read next).
            await self._stop_reader()
            for name in {*self._channels, channel}:
                await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
            self._channels.add(channel)
            self._reader = asyncio.create_task(self._read(connection), name="db-listener")

    async def _read(self, connection: psycopg.AsyncConnection[Any]) -> None:
        try:
            async for notice in connection.notifies():
                event = self._events.pop(notice.channel, None)
                if event is not None:
                    event.set()  # every task waiting now wakes; later ones get a fresh event
        except psycopg.Error as exc:
            logger.warning("lost the wake-up connection (%s); reopening", type(exc).__name__)
            await connection.close()

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def close(self) -> None:
        async with self._lock:
            await self._stop_reader()
            if self._connection is not None:
                await self._connection.close()
                self._connection = None


def _task() -> asyncio.Task[Any] | None:
    return asyncio.current_task()


async def _migrate(pool: AsyncConnectionPool) -> None:
    """Apply pending migrations, each in its own transaction under an advisory lock.

    The version is read under the lock, so two hosts opening a fresh database at once apply
    each script once; PostgreSQL's DDL is transactional, so a failed script leaves nothing.
    """
    async with pool.connection() as connection:
        while True:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                )
                row = await (
                    await connection.execute("SELECT version FROM schema_version")
                ).fetchone()
                if row is None:
                    await connection.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0 if row is None else row["version"]
                if version > len(POSTGRES_MIGRATIONS):
                    raise RuntimeError(
                        f"database schema version {version} is newer than this code "
                        f"({len(POSTGRES_MIGRATIONS)}); upgrade the bot"
                    )
                if version == len(POSTGRES_MIGRATIONS):
                    return
                # A script without parameters may hold several statements.
                await connection.execute(POSTGRES_MIGRATIONS[version])
                await connection.execute("UPDATE schema_version SET version = %s", (version + 1,))
            logger.info("database migrated to schema version %d", version + 1)
