"""The PostgreSQL ``Database``, against a real server: the seam's statements, transactions,
wake-ups between two hosts' connections, migrations, and the same tables as SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.db import Dialect, open_database
from bot.db_postgres import PostgresDatabase, to_psycopg


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[PostgresDatabase]:
    database = await open_database(postgres_url)
    assert isinstance(database, PostgresDatabase)
    yield database
    await database.close()


def test_named_parameters_become_psycopg_placeholders_outside_literals_and_casts() -> None:
    assert to_psycopg("SELECT :a::text, ':b%', \"c:d\", x % 2 FROM t -- :e\nWHERE y = :y_1") == (
        "SELECT %(a)s::text, ':b%%', \"c:d\", x %% 2 FROM t -- :e\nWHERE y = %(y_1)s"
    )


async def test_rows_come_back_by_column_name_with_sqlite_like_numbers(
    db: PostgresDatabase,
) -> None:
    assert db.dialect is Dialect.POSTGRES
    changed = await db.execute(
        "INSERT INTO flags (name, value) VALUES (:n, :v), ('other', '2')", {"n": "paused", "v": "1"}
    )
    row = await db.fetchone(
        "SELECT COUNT(*) AS n, SUM(LENGTH(value)) AS total, AVG(LENGTH(value) * 1.5) AS mean "
        "FROM flags WHERE name LIKE 'p%' OR name = :other",
        {"other": "other"},
    )

    assert changed == 2
    assert row == {"n": 2, "total": 2, "mean": 1.5}
    assert await db.fetchone("SELECT * FROM flags WHERE name = :n", {"n": "none"}) is None


async def test_a_failed_transaction_leaves_nothing_and_a_nested_one_is_a_savepoint(
    db: PostgresDatabase,
) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO flags (name, value) VALUES ('a', '1')")
            raise RuntimeError("boom")

    async with db.transaction() as tx:
        await tx.execute("INSERT INTO flags (name, value) VALUES ('b', '1')")
        with pytest.raises(RuntimeError):
            async with db.transaction() as inner:
                await inner.execute("INSERT INTO flags (name, value) VALUES ('c', '1')")
                raise RuntimeError("inner")
        # The same task outside ``tx`` still sees its own uncommitted row.
        assert await db.fetchone("SELECT value FROM flags WHERE name = 'b'") == {"value": "1"}

    names = [row["name"] for row in await db.fetchall("SELECT name FROM flags ORDER BY name")]
    assert names == ["b"]


async def test_a_notify_on_one_host_wakes_a_waiter_on_another(postgres_url: str) -> None:
    front, consumer = await open_database(postgres_url), await open_database(postgres_url)
    try:
        assert await consumer.wait("jobs", timeout=0.05) is False  # nothing said yet
        waiter = asyncio.create_task(consumer.wait("jobs", timeout=30))
        other = asyncio.create_task(consumer.wait("cancel", timeout=0.2))
        while not waiter.done():
            await front.notify("jobs")  # repeated: the waiter may not be listening yet
            await asyncio.wait({waiter}, timeout=0.05)
        assert waiter.result() is True
        assert await other is False  # another channel's waiter slept on
    finally:
        await front.close()
        await consumer.close()


async def test_a_notice_inside_a_rolled_back_transaction_is_never_sent(
    postgres_url: str,
) -> None:
    front, consumer = await open_database(postgres_url), await open_database(postgres_url)
    try:
        assert await consumer.wait("jobs", timeout=0.01) is False  # now listening
        with pytest.raises(RuntimeError):
            async with front.transaction() as tx:
                await tx.notify("jobs")
                raise RuntimeError("rolled back")
        assert await consumer.wait("jobs", timeout=0.3) is False
    finally:
        await front.close()
        await consumer.close()


async def test_hosts_starting_together_migrate_once(postgres_url: str) -> None:
    opened = await asyncio.gather(*(open_database(postgres_url) for _ in range(3)))
    try:
        rows = await opened[0].fetchall("SELECT version FROM schema_version")
        assert len(rows) == 1 and rows[0]["version"] > 0
    finally:
        for db in opened:
            await db.close()


async def test_the_tables_and_columns_are_those_of_sqlite(
    db: PostgresDatabase, tmp_path: Path
) -> None:
    sqlite = await open_database(tmp_path / "bot.sqlite3")
    try:
        tables = await sqlite.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
        )
        expected = {
            table["name"]: {
                row["name"] for row in await sqlite.fetchall(f"PRAGMA table_info({table['name']})")
            }
            for table in tables
        }
    finally:
        await sqlite.close()
    rows = await db.fetchall(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name <> 'schema_version'"
    )
    actual: dict[str, set[str]] = {}
    for row in rows:
        actual.setdefault(row["table_name"], set()).add(row["column_name"])

    assert actual == expected
