"""The store on SQLite and on a real PostgreSQL: migrations, transactions, users, cards, flags,
history and stats (SQLite's own pragmas and upgrades on SQLite)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.jobs import JobOptions, NewJob, Outcome, Status
from bot.queue import SqlQueue, job_from_row
from bot.schema import SQLITE_MIGRATIONS as MIGRATIONS
from bot.store import Card, Store
from generator.options import Backend, Intensity, PhotoType

ALICE, BOB = 1, 2
DAY = 86_400.0


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The store on a new SQLite file, or on a fresh database on the session's PostgreSQL."""
    if request.param == "postgres":
        where: str | Path = request.getfixturevalue("postgres_url")
    else:
        where = tmp_path / "data" / "bot.sqlite3"
    store = await Store.open(where)
    yield store
    await store.close()


def new_job(user_id: int, key: str) -> NewJob:
    return NewJob(
        user_id=user_id,
        chat_id=user_id,
        photo_message_id=5,
        photo_path=f"/data/{key}.jpg",
        options=JobOptions(),
        dedupe_key=key,
    )


async def run_job(
    store: Store,
    user_id: int,
    key: str,
    *,
    created: float,
    seconds: float,
    status: Status = Status.DONE,
    backend: Backend = Backend.SVD,
    cost: float = 0.0,
) -> None:
    """Enqueue, claim and finish one job: started at ``created``, ``seconds`` long."""
    job = await SqlQueue(store.db).enqueue(new_job(user_id, key), now=created)
    claimed = await SqlQueue(store.db).claim("gpu0", now=created)
    assert claimed is not None and claimed.id == job.id
    outcome = Outcome(status, used_backend=backend, cost_usd=cost)
    await SqlQueue(store.db).finish(job.id, outcome, now=created + seconds)


def read_pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


async def test_open_creates_folder_migrates_and_turns_on_wal(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "bot.sqlite3"
    store = await Store.open(path)
    await store.close()

    assert read_pragma(path, "user_version") == len(MIGRATIONS)
    assert read_pragma(path, "journal_mode") == "wal"


async def test_reopening_a_migrated_store_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Store.open(path)
    await store.set_flag("paused", "1")
    await store.close()

    store = await Store.open(path)
    try:
        assert await store.get_flag("paused") == "1"
    finally:
        await store.close()
    assert read_pragma(path, "user_version") == len(MIGRATIONS)


async def test_a_job_running_during_the_upgrade_keeps_its_row_and_starts_with_no_charges(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as db:  # a database the previous release (schema 2) left
        for script in MIGRATIONS[:2]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO jobs (user_id, chat_id, photo_message_id, photo_path, options, status, "
            "dedupe_key, attempts, created_at, worker_id) VALUES "
            "(1, 1, 5, '/p.jpg', '{}', 'running', 'k', 2, 0, 'gpu0')"
        )

    store = await Store.open(path)
    try:
        [back] = await SqlQueue(store.db).recover(now=10.0, stale_after=0, max_crashes=10)
    finally:
        await store.close()
    # Two runs under the old counting, but none of them the photo's fault.
    assert (back.status, back.attempts, back.failures, back.crashes) == (Status.QUEUED, 2, 0, 1)


async def test_open_refuses_a_database_from_newer_code(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")

    with pytest.raises(RuntimeError, match="newer"):
        await Store.open(path)


async def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(KeyError):
        async with store.transaction():
            await store.set_flag("paused", "1")  # nested: a savepoint inside ours
            raise KeyError("boom")

    assert await store.get_flag("paused") is None


async def test_store_calls_inside_a_transaction_commit_with_it(store: Store) -> None:
    async with store.transaction():
        await store.set_flag("paused", "1")
        await store.set_allowed(BOB, True, by=ALICE, now=1.0)
        assert await store.get_flag("paused") == "1"  # reads see the open transaction

    assert await store.get_flag("paused") == "1"
    assert await store.allowed_override(BOB) is True


async def test_transaction_rolls_back_when_cancelled(store: Store) -> None:
    inside = asyncio.Event()

    async def write_then_wait() -> None:
        async with store.transaction():
            await store.set_flag("paused", "1")
            inside.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(write_then_wait())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await store.get_flag("paused") is None
    await store.set_flag("paused", "2")  # the connection is usable again
    assert await store.get_flag("paused") == "2"


async def test_concurrent_tasks_share_the_connection_safely(store: Store) -> None:
    await asyncio.gather(*(store.set_flag(f"f{n}", str(n)) for n in range(20)))

    assert [await store.get_flag(f"f{n}") for n in range(20)] == [str(n) for n in range(20)]


async def test_flags_set_and_clear(store: Store) -> None:
    assert await store.get_flag("paused") is None
    await store.set_flag("paused", "yes")
    await store.set_flag("paused", "still")
    assert await store.get_flag("paused") == "still"
    await store.set_flag("paused", None)
    assert await store.get_flag("paused") is None


async def test_user_options_round_trip(store: Store) -> None:
    assert await store.get_user_options(ALICE) is None
    chosen = JobOptions(
        backend=Backend.VEO,
        intensity=Intensity.DRAMATIC,
        photo_type=PhotoType.PET,
        duration=6,
        custom_elements=("a red balloon", "snow"),
        motion=200,
    )

    await store.save_user_options(ALICE, chosen)
    await store.touch_user(ALICE, "Alice", now=1.0)  # does not wipe the options

    assert await store.get_user_options(ALICE) == chosen
    assert await store.get_user_options(BOB) is None


async def test_allow_and_deny_are_remembered(store: Store) -> None:
    assert await store.allowed_override(BOB) is None  # config decides

    await store.set_allowed(BOB, True, by=ALICE, now=1.0)
    assert await store.allowed_override(BOB) is True
    await store.set_allowed(BOB, False, by=ALICE, now=2.0)
    assert await store.allowed_override(BOB) is False
    await store.touch_user(BOB, "Bob", now=3.0)  # seeing him again changes nothing
    assert await store.allowed_override(BOB) is False


async def test_cards_upsert_by_chat_and_message(store: Store) -> None:
    card = Card(
        chat_id=10,
        message_id=20,
        user_id=ALICE,
        photo_message_id=19,
        photo_path="/data/p.jpg",
        options=JobOptions(photo_type=PhotoType.LANDSCAPE),
        created_at=5.0,
    )
    await store.save_card(card)
    pressed = Card(**{**card.__dict__, "generation": 1, "options": JobOptions(motion=30)})
    await store.save_card(pressed)

    assert await store.get_card(10, 20) == pressed
    assert await store.get_card(10, 21) is None


async def test_history_is_newest_first_and_per_user(store: Store) -> None:
    for n in range(4):
        await SqlQueue(store.db).enqueue(new_job(ALICE, f"a{n}"), now=float(n))
    await SqlQueue(store.db).enqueue(new_job(BOB, "b0"), now=10.0)

    history = await SqlQueue(store.db).history(ALICE, limit=3)

    assert [job.dedupe_key for job in history] == ["a3", "a2", "a1"]


async def test_active_count_and_daily_count(store: Store) -> None:
    await run_job(store, ALICE, "yesterday", created=-DAY, seconds=10)
    await run_job(store, ALICE, "done", created=100, seconds=10)
    await SqlQueue(store.db).enqueue(new_job(ALICE, "first"), now=200)
    second = await SqlQueue(store.db).enqueue(new_job(ALICE, "second"), now=201)
    cancelled = await SqlQueue(store.db).enqueue(new_job(ALICE, "cancelled"), now=202)
    await SqlQueue(store.db).enqueue(new_job(BOB, "bob"), now=203)
    await SqlQueue(store.db).cancel(cancelled.id, ALICE, now=204)
    # Claims go Bob (not served yet today) first, then Alice's oldest queued one.
    await SqlQueue(store.db).claim("gpu0", now=205)
    claimed = await SqlQueue(store.db).claim("gpu0", now=206)
    assert claimed is not None and claimed.user_id == ALICE and claimed.id != second.id

    assert await SqlQueue(store.db).active_count(ALICE) == 2  # queued + running
    assert await SqlQueue(store.db).active_count(BOB) == 1
    # Today: done, running, queued; the one cancelled before it started costs nothing.
    assert await SqlQueue(store.db).jobs_since(ALICE, 0.0) == 3


async def test_veo_spend_by_day_and_user(store: Store) -> None:
    await run_job(store, ALICE, "a-old", created=-DAY, seconds=60, backend=Backend.VEO, cost=3.2)
    await run_job(store, ALICE, "a-new", created=10, seconds=60, backend=Backend.VEO, cost=1.6)
    await run_job(store, BOB, "b-new", created=20, seconds=60, backend=Backend.VEO, cost=0.8)
    await run_job(store, BOB, "b-svd", created=30, seconds=60, backend=Backend.SVD)

    assert await SqlQueue(store.db).veo_spend(since=0.0) == pytest.approx(2.4)
    assert await SqlQueue(store.db).veo_spend(since=0.0, user_id=ALICE) == pytest.approx(1.6)
    assert await SqlQueue(store.db).veo_spend(since=-2 * DAY) == pytest.approx(5.6)


async def test_recent_durations_are_done_jobs_of_that_backend_newest_first(store: Store) -> None:
    await run_job(store, ALICE, "s1", created=0, seconds=100)
    await run_job(store, ALICE, "s2", created=1000, seconds=120)
    await run_job(store, ALICE, "v1", created=2000, seconds=50, backend=Backend.VEO)
    await run_job(store, ALICE, "s3", created=3000, seconds=999, status=Status.FAILED)
    await run_job(store, ALICE, "s4", created=4000, seconds=90)

    assert await SqlQueue(store.db).recent_durations(Backend.SVD) == [90.0, 120.0, 100.0]
    assert await SqlQueue(store.db).recent_durations(Backend.SVD, limit=2) == [90.0, 120.0]
    assert await SqlQueue(store.db).recent_durations(Backend.VEO) == [50.0]


async def test_stats_numbers(store: Store) -> None:
    month_start, day_start, now = 0.0, 10 * DAY, 10 * DAY + 5000
    await run_job(store, ALICE, "old-fail", created=-DAY, seconds=5, status=Status.FAILED)
    await run_job(store, ALICE, "s1", created=DAY, seconds=100)
    await run_job(store, ALICE, "s2", created=2 * DAY, seconds=140)
    await run_job(store, BOB, "s3", created=3 * DAY, seconds=110)
    await run_job(
        store, BOB, "v1", created=day_start + 10, seconds=60, backend=Backend.VEO, cost=3.2
    )
    await run_job(store, ALICE, "v2", created=5 * DAY, seconds=80, backend=Backend.VEO, cost=1.6)
    await run_job(store, BOB, "fail", created=day_start + 100, seconds=5, status=Status.FAILED)
    await SqlQueue(store.db).enqueue(new_job(ALICE, "waiting"), now=day_start + 200)

    stats = await SqlQueue(store.db).stats(now=now, day_start=day_start, month_start=month_start)

    assert stats.total == 8
    assert stats.by_status == {"done": 5, "failed": 2, "queued": 1}
    assert stats.by_backend == {"svd": 5, "veo": 2}
    assert stats.median_seconds == {"svd": 110.0, "veo": 70.0}
    assert stats.veo_spend_today == pytest.approx(3.2)
    assert stats.veo_spend_month == pytest.approx(4.8)
    # This month: 5 done, 1 failed; last month's failure does not count.
    assert stats.failure_rate == pytest.approx(1 / 6)


async def test_stats_on_an_empty_store(store: Store) -> None:
    stats = await SqlQueue(store.db).stats(now=1.0, day_start=0.0, month_start=0.0)

    assert (stats.total, stats.failure_rate, stats.veo_spend_month) == (0, 0.0, 0.0)
    assert stats.by_status == {} and stats.median_seconds == {}


async def test_job_from_row_rejects_an_unknown_status(store: Store) -> None:
    job = await SqlQueue(store.db).enqueue(new_job(ALICE, "a"), now=0.0)
    async with store.transaction() as db:
        await db.execute("UPDATE jobs SET status = 'paused' WHERE id = :id", {"id": job.id})
    row = await store.db.fetchone("SELECT * FROM jobs WHERE id = :id", {"id": job.id})

    with pytest.raises(ValueError, match="unknown status 'paused'"):
        job_from_row(row)
    with pytest.raises(ValueError, match="unknown status"):
        await SqlQueue(store.db).history(ALICE)
