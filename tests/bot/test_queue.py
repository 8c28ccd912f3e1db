"""The job queue's contract, on SQLite and on a real PostgreSQL: idempotent enqueue, fair
atomic claims, positions, heartbeats, recovery, expiry and cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.jobs import Charge, JobOptions, NewJob, Outcome, Status
from bot.queue import GIVE_UP_TEXT, JOBS_CHANNEL, SqlQueue
from bot.store import Store
from generator.options import Backend

ALICE, BOB, CAROL = 1, 2, 3
CRASHES = 10  # the consumer's max_crashes, as config.example.toml sets it


def new_job(user_id: int, key: str, *, max_attempts: int = 3) -> NewJob:
    return NewJob(
        user_id=user_id,
        chat_id=user_id,
        photo_message_id=100,
        photo_path=f"/data/{key}.jpg",
        options=JobOptions(backend=Backend.SVD, custom_elements=("snow",)),
        dedupe_key=key,
        max_attempts=max_attempts,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where the queue lives: a SQLite file, or a fresh database on the session's server."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "bot.sqlite3"


@pytest.fixture
async def store(database: str | Path) -> AsyncIterator[Store]:
    store = await Store.open(database)
    yield store
    await store.close()


@pytest.fixture
def queue(store: Store) -> SqlQueue:
    return SqlQueue(store.db)


async def test_double_enqueue_with_same_key_makes_one_job(queue: SqlQueue) -> None:
    first = await queue.enqueue(new_job(ALICE, "card-7-0"), now=10.0)
    again = await queue.enqueue(new_job(ALICE, "card-7-0"), now=11.0)

    assert again == first
    assert first.status is Status.QUEUED
    assert first.options == JobOptions(backend=Backend.SVD, custom_elements=("snow",))
    assert [job.id for job in await queue.queued()] == [first.id]
    assert await queue.by_dedupe_key("card-7-0") == first
    assert await queue.by_dedupe_key("card-7-1") is None


async def test_claim_on_empty_queue_returns_none(queue: SqlQueue) -> None:
    assert await queue.claim("gpu0", now=1.0) is None


async def test_claim_marks_running_and_counts_the_attempt(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=1.0)

    claimed = await queue.claim("gpu0", now=5.0)

    assert claimed is not None and claimed.id == job.id
    assert (claimed.status, claimed.attempts, claimed.worker_id) == (Status.RUNNING, 1, "gpu0")
    assert claimed.started_at == claimed.heartbeat_at == 5.0
    assert await queue.claim("gpu0", now=6.0) is None


async def test_claims_are_fair_between_users(queue: SqlQueue) -> None:
    for n in range(3):
        await queue.enqueue(new_job(ALICE, f"a{n}"), now=1.0 + n)
    await queue.enqueue(new_job(BOB, "b0"), now=4.0)

    owners = []
    for now in (10.0, 20.0, 30.0, 40.0):
        job = await queue.claim("gpu0", now=now)
        assert job is not None
        owners.append(job.user_id)
        await queue.finish(job.id, Outcome(Status.DONE), now=now + 5)

    assert owners == [ALICE, BOB, ALICE, ALICE]


async def test_position_simulates_the_round_robin(queue: SqlQueue) -> None:
    alice = [await queue.enqueue(new_job(ALICE, f"a{n}"), now=1.0 + n) for n in range(3)]
    bob = await queue.enqueue(new_job(BOB, "b0"), now=4.0)

    assert [await queue.position(job.id) for job in alice] == [1, 3, 4]
    assert await queue.position(bob.id) == 2
    order = [alice[0].id, bob.id, alice[1].id, alice[2].id]
    assert [job.id for job in await queue.queued()] == order

    # Once Alice has been served, a newcomer (Carol) goes before Alice's next photo.
    await queue.claim("gpu0", now=10.0)
    carol = await queue.enqueue(new_job(CAROL, "c0"), now=11.0)
    assert [job.user_id for job in await queue.queued()] == [BOB, CAROL, ALICE, ALICE]
    assert await queue.position(carol.id) == 2
    assert await queue.position(alice[0].id) is None  # running, not queued


async def test_position_matches_the_actual_claim_order(queue: SqlQueue) -> None:
    keys = [(ALICE, "a0"), (ALICE, "a1"), (BOB, "b0"), (CAROL, "c0"), (BOB, "b1"), (ALICE, "a2")]
    for n, (user, key) in enumerate(keys):
        await queue.enqueue(new_job(user, key), now=float(n))
    await queue.enqueue(new_job(BOB, "b2"), now=6.0)
    await queue.claim("gpu0", now=1.0)  # Alice's a0: nobody served yet, oldest first
    predicted = [job.id for job in await queue.queued()]

    claimed = []
    now = 100.0
    while (job := await queue.claim("gpu0", now=now)) is not None:
        claimed.append(job.id)
        now += 10

    assert claimed == predicted


async def test_consumers_on_several_connections_never_claim_one_job_twice(
    database: str | Path,
) -> None:
    # Three consumers, each with its own connection (on PostgreSQL: its own pool, as on
    # three hosts), each with two claims in flight at once.
    stores = [await Store.open(database) for _ in range(3)]
    try:
        for n in range(24):
            await SqlQueue(stores[0].db).enqueue(new_job(ALICE + n % 3, f"k{n}"), now=float(n))

        async def drain(store: Store, name: str) -> list[int]:
            ids = []
            while (job := await SqlQueue(store.db).claim(name, now=50.0)) is not None:
                ids.append(job.id)
            return ids

        got = await asyncio.gather(
            *(drain(store, f"host{h}-gpu{g}") for h, store in enumerate(stores) for g in (0, 1))
        )
    finally:
        for store in stores:
            await store.close()

    taken = [job_id for ids in got for job_id in ids]
    assert sorted(taken) == list(range(1, 25))  # every job once: none twice, none left


async def test_concurrent_claims_on_one_connection_take_distinct_jobs(queue: SqlQueue) -> None:
    for n in range(4):
        await queue.enqueue(new_job(ALICE + n, f"k{n}"), now=float(n))

    claimed = await asyncio.gather(*(queue.claim(f"gpu{n}", now=9.0) for n in range(6)))

    ids = [job.id for job in claimed if job is not None]
    assert sorted(ids) == [1, 2, 3, 4]
    assert claimed.count(None) == 2


async def test_recover_requeues_stale_job_with_attempts_left(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)
    await queue.heartbeat(job.id, now=50.0)

    assert (
        await queue.recover(now=100.0, stale_after=60.0, max_crashes=CRASHES) == []
    )  # beat 50 s ago: alive

    [recovered] = await queue.recover(now=111.0, stale_after=60.0, max_crashes=CRASHES)
    assert (recovered.id, recovered.status, recovered.attempts) == (job.id, Status.QUEUED, 1)
    assert recovered.worker_id is None
    again = await queue.claim("gpu0", now=120.0)
    assert again is not None and again.attempts == 2


async def test_a_restarting_consumer_takes_back_only_its_own_running_jobs(
    queue: SqlQueue,
) -> None:
    mine = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    theirs = await queue.enqueue(new_job(BOB, "b"), now=0.0)
    await queue.claim("gpu0", now=1.0)
    await queue.claim("gpu1", now=1.0)

    # gpu0 restarts at once: its job was orphaned; gpu1's is alive and must not run twice.
    recovered = await queue.recover(
        now=2.0, stale_after=60.0, max_crashes=CRASHES, orphaned_by="gpu0"
    )
    assert [job.id for job in recovered] == [mine.id]
    still = await queue.get(theirs.id)
    assert still is not None and still.status is Status.RUNNING

    # gpu1 dies silently: once its heartbeat is stale, anyone's sweep requeues its job.
    [swept] = await queue.recover(now=100.0, stale_after=60.0, max_crashes=CRASHES)
    assert (swept.id, swept.status) == (theirs.id, Status.QUEUED)


async def test_a_job_requeued_with_a_delay_waits_and_others_go_first(queue: SqlQueue) -> None:
    flaky = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)
    back = await queue.requeue(flaky.id, now=10.0, delay_s=60.0)
    assert back.status is Status.QUEUED and back.not_before == 70.0
    other = await queue.enqueue(new_job(BOB, "b"), now=11.0)

    first = await queue.claim("gpu0", now=20.0)
    assert first is not None and first.id == other.id
    assert await queue.claim("gpu0", now=69.0) is None  # still backing off
    again = await queue.claim("gpu0", now=70.0)
    assert again is not None and again.id == flaky.id and again.attempts == 2


async def test_restarts_do_not_spend_attempts_but_a_job_that_always_crashes_is_given_up(
    queue: SqlQueue,
) -> None:
    job = await queue.enqueue(new_job(ALICE, "a", max_attempts=3), now=0.0)
    for run in range(1, 5):
        claimed = await queue.claim("gpu0", now=10.0 * run)
        assert claimed is not None and claimed.attempts == run
        # stale_after=0: at start-up every running job was orphaned by the restart.
        [recovered] = await queue.recover(now=10.0 * run, stale_after=0, max_crashes=5)
        # Four restarts, more than max_attempts: still queued, nothing counted as a failure.
        assert (recovered.status, recovered.crashes, recovered.failures) == (
            Status.QUEUED,
            run,
            0,
        )

    await queue.claim("gpu0", now=50.0)
    [recovered] = await queue.recover(now=50.0, stale_after=0, max_crashes=5)
    assert recovered.id == job.id
    assert (recovered.status, recovered.crashes) == (Status.FAILED, 5)
    assert recovered.error == GIVE_UP_TEXT
    assert recovered.finished_at == 50.0
    assert await queue.claim("gpu0", now=100.0) is None


async def test_requeue_counts_the_charge_it_is_given(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    charges = [Charge.FAILURE, Charge.CRASH, Charge.NONE, Charge.FAILURE]
    for at, charge in enumerate(charges, start=1):
        await queue.claim("gpu0", now=float(at))
        back = await queue.requeue(job.id, now=float(at), charge=charge)

    assert (back.attempts, back.failures, back.crashes) == (4, 2, 1)
    await queue.claim("gpu0", now=10.0)
    done = await queue.finish(
        job.id, Outcome(Status.FAILED, error="Engine busy."), now=11.0, charge=Charge.FAILURE
    )
    assert (done.status, done.failures, done.crashes) == (Status.FAILED, 3, 1)


async def test_recover_leaves_sending_jobs_for_redelivery(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)
    await queue.mark_sending(job.id, Outcome(Status.SENDING, video_path="/v/a.mp4"), now=2.0)

    assert await queue.recover(now=1000.0, stale_after=0, max_crashes=CRASHES) == []
    [stored] = await queue.sending()
    assert (stored.id, stored.status, stored.video_path) == (job.id, Status.SENDING, "/v/a.mp4")


async def test_recover_cancels_a_job_its_owner_asked_to_stop(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)
    await queue.cancel(job.id, ALICE, now=2.0)

    [recovered] = await queue.recover(now=3.0, stale_after=0, max_crashes=CRASHES)

    assert recovered.status is Status.CANCELLED


async def test_expire_only_takes_queued_jobs_past_the_ttl(queue: SqlQueue) -> None:
    old = await queue.enqueue(new_job(ALICE, "old"), now=0.0)
    fresh = await queue.enqueue(new_job(BOB, "fresh"), now=500.0)
    carol = await queue.enqueue(new_job(CAROL, "c"), now=0.0)
    await queue.claim("gpu0", now=1.0)  # Alice's, the oldest: a finished job never expires
    await queue.finish(old.id, Outcome(Status.DONE), now=2.0)
    old2 = await queue.enqueue(new_job(ALICE, "old2"), now=10.0)

    assert await queue.expire(now=1000.0, ttl=0) == []  # ttl 0: never expire
    expired = await queue.expire(now=1000.0, ttl=600.0)

    assert [job.id for job in expired] == [carol.id, old2.id]
    assert all(job.status is Status.EXPIRED and job.finished_at == 1000.0 for job in expired)
    assert [job.id for job in await queue.queued()] == [fresh.id]


async def test_owner_cancels_a_queued_job_at_once(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)

    assert await queue.cancel(job.id, BOB, now=1.0) is None  # not Bob's
    cancelled = await queue.cancel(job.id, ALICE, now=2.0)

    assert cancelled is not None
    assert (cancelled.status, cancelled.finished_at) == (Status.CANCELLED, 2.0)
    assert await queue.claim("gpu0", now=3.0) is None
    assert await queue.cancel(job.id, ALICE, now=4.0) is None  # already finished


async def test_owner_cancel_of_a_running_job_raises_the_flag(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)

    assert await queue.cancel(job.id, BOB, now=2.0) is None
    assert not await queue.cancel_requested(job.id)
    flagged = await queue.cancel(job.id, ALICE, now=2.0)

    assert flagged is not None and flagged.status is Status.RUNNING
    assert await queue.cancel_requested(job.id)
    # The consumer stops at its next step and records the cancel.
    done = await queue.finish(job.id, Outcome(Status.CANCELLED), now=3.0)
    assert done.status is Status.CANCELLED


async def test_cancel_of_sending_or_unknown_job_returns_none(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)
    await queue.mark_sending(job.id, Outcome(Status.SENDING, video_path="/v.mp4"), now=2.0)

    assert await queue.cancel(job.id, ALICE, now=3.0) is None
    assert await queue.cancel(999, ALICE, now=3.0) is None


async def test_finish_keeps_stored_values_for_fields_left_none(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)
    await queue.set_veo_operation(job.id, "operations/123")
    sending = await queue.mark_sending(
        job.id,
        Outcome(
            Status.SENDING,
            used_backend=Backend.VEO,
            cost_usd=1.2,
            video_path="/v/a.mp4",
            video_width=1280,
            video_height=720,
            video_duration=8.0,
            seed=42,
        ),
        now=30.0,
    )
    assert sending.status is Status.SENDING and sending.finished_at is None

    done = await queue.finish(
        job.id, Outcome(Status.DONE, video_file_id="BAAC", video_size=1234), now=31.0
    )

    assert done.status is Status.DONE and done.finished_at == 31.0
    assert done.used_backend is Backend.VEO and done.cost_usd == 1.2
    assert (done.video_path, done.video_file_id, done.video_size) == ("/v/a.mp4", "BAAC", 1234)
    assert (done.video_width, done.video_height, done.seed) == (1280, 720, 42)
    assert done.veo_operation == "operations/123"


async def test_finish_rejects_non_terminal_status_and_first_outcome_wins(
    queue: SqlQueue,
) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)
    with pytest.raises(ValueError, match="terminal"):
        await queue.finish(job.id, Outcome(Status.RUNNING), now=2.0)

    await queue.finish(job.id, Outcome(Status.FAILED, error="Out of memory."), now=2.0)
    after = await queue.finish(job.id, Outcome(Status.DONE), now=3.0)

    assert (after.status, after.error, after.finished_at) == (Status.FAILED, "Out of memory.", 2.0)


async def test_requeue_keeps_attempts_and_job_runs_again(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=1.0)

    requeued = await queue.requeue(job.id, now=2.0)

    assert (requeued.status, requeued.attempts) == (Status.QUEUED, 1)
    assert await queue.position(job.id) == 1
    again = await queue.claim("gpu0", now=3.0)
    assert again is not None and (again.id, again.attempts) == (job.id, 2)


async def test_heartbeat_keeps_a_running_job_alive(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("gpu0", now=0.0)

    await queue.heartbeat(job.id, now=100.0)

    stored = await queue.get(job.id)
    assert stored is not None and stored.heartbeat_at == 100.0
    assert await queue.recover(now=130.0, stale_after=60.0, max_crashes=CRASHES) == []


async def test_jobs_survive_closing_and_reopening(database: str | Path) -> None:
    path = database
    store = await Store.open(path)
    alice = await SqlQueue(store.db).enqueue(new_job(ALICE, "a"), now=0.0)
    bob = await SqlQueue(store.db).enqueue(new_job(BOB, "b"), now=1.0)
    await SqlQueue(store.db).claim("gpu0", now=2.0)  # Alice's, the oldest
    await store.close()

    reopened = await Store.open(path)
    try:
        assert await SqlQueue(reopened.db).get(bob.id) == bob
        stored = await SqlQueue(reopened.db).get(alice.id)
        assert stored is not None and stored.status is Status.RUNNING
        # After a restart, the orphaned running job goes back to the queue.
        [recovered] = await SqlQueue(reopened.db).recover(
            now=3.0, stale_after=0, max_crashes=CRASHES
        )
        assert recovered.id == alice.id and recovered.status is Status.QUEUED
    finally:
        await reopened.close()


async def test_on_postgres_a_claim_skips_a_job_another_host_is_claiming(
    postgres_url: str,
) -> None:
    first, second = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        for n in range(2):
            await SqlQueue(first.db).enqueue(new_job(ALICE + n, f"k{n}"), now=float(n))
        async with first.transaction():
            # The first host's claim is made but not committed: its row stays locked.
            mine = await SqlQueue(first.db).claim("host1", now=5.0)
            # The second host takes the next job at once instead of waiting on that lock.
            theirs = await asyncio.wait_for(SqlQueue(second.db).claim("host2", now=5.0), 10)
    finally:
        await first.close()
        await second.close()

    assert mine is not None and theirs is not None
    assert {mine.id, theirs.id} == {1, 2}


async def test_on_postgres_an_enqueue_wakes_a_consumer_on_another_host(postgres_url: str) -> None:
    front, consumer = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        assert await consumer.db.wait(JOBS_CHANNEL, timeout=0.01) is False  # listening now
        waiting = asyncio.create_task(consumer.db.wait(JOBS_CHANNEL, timeout=30))
        await SqlQueue(front.db).enqueue(new_job(ALICE, "a"), now=1.0)
        assert await waiting is True
        claimed = await SqlQueue(consumer.db).claim("host2", now=2.0)
    finally:
        await front.close()
        await consumer.close()

    assert claimed is not None and claimed.dedupe_key == "a"


async def _until_one_waits_on_a_lock(store: Store) -> None:
    """Return once a statement of another connection waits on a row lock (pg_stat_activity)."""
    # The server's own view of who waits, polled: there is no event to wait on.
    while True:
        waiting = await store.db.fetchone(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)


async def test_on_postgres_two_hosts_recovering_at_once_take_a_stale_job_back_once(
    postgres_url: str,
) -> None:
    first, second = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        await SqlQueue(first.db).enqueue(new_job(ALICE, "a"), now=0.0)
        await SqlQueue(first.db).claim("host3", now=1.0)  # host3 dies; its lease goes stale
        async with first.transaction():
            [mine] = await SqlQueue(first.db).recover(now=100.0, stale_after=60, max_crashes=9)
            theirs = asyncio.create_task(
                SqlQueue(second.db).recover(now=100.0, stale_after=60, max_crashes=9)
            )
            await asyncio.wait_for(_until_one_waits_on_a_lock(first), 10)
        # The second host read the job after the first's commit: queued, nothing to take.
        assert await theirs == []
        stored = await SqlQueue(first.db).get(mine.id)
    finally:
        await first.close()
        await second.close()

    assert stored is not None and (stored.status, stored.crashes) == (Status.QUEUED, 1)


async def test_a_consumer_whose_lease_was_taken_back_records_nothing(queue: SqlQueue) -> None:
    job = await queue.enqueue(new_job(ALICE, "a"), now=0.0)
    await queue.claim("host1/gpu0", now=1.0)
    # host1 stalls past the stale limit; host2 takes the job back and runs it.
    await queue.recover(now=200.0, stale_after=60.0, max_crashes=CRASHES)
    await queue.claim("host2/gpu0", now=201.0)

    # host1 comes back to life: its heartbeat, clip and failure are all ignored.
    await queue.heartbeat(job.id, now=202.0, worker_id="host1/gpu0")
    made = Outcome(Status.SENDING, video_path="/data/host1.mp4")
    sent = await queue.mark_sending(job.id, made, now=203.0, worker_id="host1/gpu0")
    assert sent.status is Status.RUNNING
    failed = Outcome(Status.FAILED, error="boom")
    await queue.finish(job.id, failed, now=204.0, worker_id="host1/gpu0")
    await queue.requeue(job.id, now=204.0, worker_id="host1/gpu0")
    held = await queue.get(job.id)
    assert held is not None
    assert (held.status, held.worker_id, held.heartbeat_at) == (Status.RUNNING, "host2/gpu0", 201.0)
    assert held.video_path is None

    # The holder's outcome counts.
    done = await queue.finish(job.id, Outcome(Status.DONE), now=300.0, worker_id="host2/gpu0")
    assert done.status is Status.DONE


def test_the_sql_queue_implements_every_method_of_the_protocol() -> None:
    import inspect

    from bot.jobs import JobQueue

    wanted = {name for name in vars(JobQueue) if not name.startswith("_")}
    for name in wanted:
        assert inspect.signature(getattr(SqlQueue, name)) == inspect.signature(
            getattr(JobQueue, name)
        ), name
