"""The durable job queue: ``bot.jobs.JobQueue`` over the store's SQLite ``jobs`` table.

A row's status is the truth; every transition is one ``UPDATE ... RETURNING *`` inside a
``BEGIN IMMEDIATE`` transaction, so a crash leaves each job in exactly one state and two
consumers never claim the same job. Claims are fair between users: the user served least
recently goes first, so one user's three photos do not make everyone else wait.

Example::

    store = await Store.open(path)
    job = await store.queue.enqueue(new_job, now=now)
    claimed = await store.queue.claim("gpu0", now=now)
    await store.queue.finish(claimed.id, Outcome(Status.DONE, video_path=...), now=later)
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
from collections.abc import Mapping
from typing import Any

import aiosqlite

from bot.jobs import TERMINAL, Charge, Job, NewJob, Outcome, Status, can_retry, is_stale
from bot.store import Store, _job_from_row, options_to_json

logger = logging.getLogger(__name__)

#: What the user is told when a job keeps dying under the consumer (the worker sends it).
GIVE_UP_TEXT = "This photo failed several times and was given up."

# Each charge adds one to its own column (``SET crashes = crashes + :crashed``).
_CHARGED = {
    Charge.NONE: {"failed": 0, "crashed": 0},
    Charge.FAILURE: {"failed": 1, "crashed": 0},
    Charge.CRASH: {"failed": 0, "crashed": 1},
}

# Queued jobs ordered the way ``claim`` takes them: users never served first, then the user
# whose latest start is oldest; within a user, and between equals, the oldest job.
_CLAIM_ORDER = """
    SELECT q.id FROM jobs AS q
    LEFT JOIN (
        SELECT user_id, MAX(started_at) AS last_started FROM jobs
        WHERE started_at IS NOT NULL
          AND user_id IN (SELECT user_id FROM jobs WHERE status = 'queued')
        GROUP BY user_id
    ) AS s ON s.user_id = q.user_id
    WHERE q.status = 'queued' AND (q.not_before IS NULL OR q.not_before <= :now)
    ORDER BY s.last_started IS NOT NULL, s.last_started, q.id
    LIMIT 1
"""

# Outcome fields that map one-to-one onto columns; ``None`` keeps the stored value.
_OUTCOME_COLUMNS = tuple(f.name for f in dataclasses.fields(Outcome) if f.name != "status")


class SqliteQueue:
    """``JobQueue`` on a ``Store``'s connection. Get it as ``store.queue``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def enqueue(self, new: NewJob, *, now: float) -> Job:
        """Store a queued job and return it; the same ``dedupe_key`` returns the first job."""
        async with self._store.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO jobs (user_id, chat_id, photo_message_id, photo_path, options, "
                "status, dedupe_key, status_message_id, max_attempts, created_at) VALUES "
                "(:user_id, :chat_id, :photo_message_id, :photo_path, :options, 'queued', "
                ":dedupe_key, :status_message_id, :max_attempts, :now) "
                "ON CONFLICT (dedupe_key) DO NOTHING",
                {
                    "user_id": new.user_id,
                    "chat_id": new.chat_id,
                    "photo_message_id": new.photo_message_id,
                    "photo_path": new.photo_path,
                    "options": options_to_json(new.options),
                    "dedupe_key": new.dedupe_key,
                    "status_message_id": new.status_message_id,
                    "max_attempts": new.max_attempts,
                    "now": now,
                },
            )
            inserted = cursor.rowcount == 1
            await cursor.close()
            job = await _one(
                db, "SELECT * FROM jobs WHERE dedupe_key = :key", {"key": new.dedupe_key}
            )
        # inserted, or already there: the key is unique
        if job is None:
            raise RuntimeError("broken invariant: job is not None")
        if inserted:
            logger.info("enqueued %s", job.info())
        else:
            logger.info("duplicate enqueue for %s (key %s)", job.info(), new.dedupe_key)
        return job

    async def claim(self, worker_id: str, *, now: float) -> Job | None:
        """Take the next job fairly, mark it running with ``attempts += 1``; ``None`` if idle."""
        async with self._store.transaction() as db:
            job = await _one(
                db,
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, "
                "started_at = :now, heartbeat_at = :now, worker_id = :worker_id "
                f"WHERE id = ({_CLAIM_ORDER}) AND status = 'queued' RETURNING *",
                {"now": now, "worker_id": worker_id},
            )
        if job is not None:
            logger.info("claimed %s by %s", job.info(), worker_id)
        return job

    async def heartbeat(self, job_id: int, *, now: float) -> None:
        """Record that the consumer running ``job_id`` is alive (no-op unless running)."""
        async with self._store.transaction() as db:
            await db.execute(
                "UPDATE jobs SET heartbeat_at = :now WHERE id = :id AND status = 'running'",
                {"now": now, "id": job_id},
            )

    async def set_veo_operation(self, job_id: int, name: str) -> None:
        """Remember a submitted Veo operation so a restart resumes it instead of paying again."""
        async with self._store.transaction() as db:
            job = await _one(
                db,
                "UPDATE jobs SET veo_operation = :name WHERE id = :id RETURNING *",
                {"name": name, "id": job_id},
            )
        if job is None:
            raise LookupError(f"no job {job_id}")
        logger.info("%s: Veo operation %s", job.info(), name)

    async def mark_sending(self, job_id: int, outcome: Outcome, *, now: float) -> Job:
        """Record the made clip (status ``sending``) before uploading it.

        ``outcome.status`` is ignored. Only a running (or already sending) job moves; any
        other job is returned unchanged, so the caller can see it was cancelled or recovered.
        """
        return await self._record(
            job_id, outcome, Status.SENDING, {Status.RUNNING, Status.SENDING}, now=now
        )

    async def finish(
        self, job_id: int, outcome: Outcome, *, now: float, charge: Charge = Charge.NONE
    ) -> Job:
        """Record a terminal outcome and ``finished_at``, counting the run that ended it as
        ``charge`` says (a job that failed on its last allowed try: ``Charge.FAILURE``).

        Outcome fields left ``None`` keep their stored value. A job already terminal is
        returned unchanged (the first outcome wins). ``ValueError`` for a non-terminal status.
        """
        if outcome.status not in TERMINAL:
            raise ValueError(f"finish needs a terminal status, got {outcome.status}")
        return await self._record(
            job_id,
            outcome,
            outcome.status,
            {Status.QUEUED, Status.RUNNING, Status.SENDING},
            now=now,
            finished=True,
            charge=charge,
        )

    async def requeue(
        self, job_id: int, *, now: float, delay_s: float = 0.0, charge: Charge = Charge.NONE
    ) -> Job:
        """Put a running or sending job back in the queue, adding one to the count that
        ``charge`` names (failures, crashes, or none); with ``delay_s`` it is not claimed
        again before ``now + delay_s`` (retry backoff). Whether it may run again is the
        caller's ``can_retry``.

        If its owner asked to cancel it, it becomes cancelled instead. Other jobs are
        returned unchanged.
        """
        async with self._store.transaction() as db:
            job = await _get(db, job_id)
            if job.status not in (Status.RUNNING, Status.SENDING):
                logger.warning("requeue ignored for %s", job.info())
                return job
            job = await self._put_back(db, job_id, now=now, delay_s=delay_s, charge=charge)
        if job.status is Status.QUEUED:
            logger.info("requeued %s%s", job.info(), f" for {delay_s:.0f} s" if delay_s else "")
        return job

    async def recover(
        self, *, now: float, stale_after: float, max_crashes: int, orphaned_by: str | None = None
    ) -> list[Job]:
        """Requeue running jobs whose heartbeat is older than ``stale_after`` seconds.

        ``orphaned_by`` names a consumer that is starting up: every job it had claimed was
        orphaned by its restart, fresh heartbeat or not, while other consumers' jobs are
        taken only once stale (so several GPU consumers can share one queue).
        ``stale_after <= 0`` takes every running job. Each is charged a crash (its run died
        with its consumer, not through its own fault); the one that reaches ``max_crashes``
        fails with ``GIVE_UP_TEXT`` instead, and one whose owner asked to cancel becomes
        cancelled.
        Sending jobs stay sending: the worker re-delivers their stored video. Old queued jobs
        are ``expire``'s business. Returns the jobs whose status changed.
        """
        changed: list[Job] = []
        async with self._store.transaction() as db:
            rows = await _all(db, "SELECT * FROM jobs WHERE status = 'running' ORDER BY id", {})
            for job in rows:
                orphaned = orphaned_by is not None and job.worker_id == orphaned_by
                if stale_after > 0 and not orphaned and not is_stale(job, now, stale_after):
                    continue
                if can_retry(job, Charge.CRASH, max_crashes=max_crashes) or await _cancel_flag(
                    db, job.id
                ):
                    changed.append(await self._put_back(db, job.id, now=now, charge=Charge.CRASH))
                else:
                    failed = await _one(
                        db,
                        "UPDATE jobs SET status = :failed, error = :error, finished_at = :now, "
                        "worker_id = NULL, crashes = crashes + 1 WHERE id = :id RETURNING *",
                        {"failed": Status.FAILED, "error": GIVE_UP_TEXT, "now": now, "id": job.id},
                    )
                    if failed is None:
                        raise RuntimeError("broken invariant: failed is not None")
                    changed.append(failed)
        for job in changed:
            logger.info("recovered %s", job.info())
        return changed

    async def expire(self, *, now: float, ttl: float) -> list[Job]:
        """Mark queued jobs older than ``ttl`` seconds ``expired``; ``ttl <= 0`` never expires."""
        if ttl <= 0:
            return []
        async with self._store.transaction() as db:
            jobs = await _all(
                db,
                "UPDATE jobs SET status = 'expired', finished_at = :now "
                "WHERE status = 'queued' AND :now - created_at > :ttl RETURNING *",
                {"now": now, "ttl": ttl},
            )
        jobs.sort(key=lambda job: job.id)
        for job in jobs:
            logger.info("expired %s", job.info())
        return jobs

    async def cancel(self, job_id: int, user_id: int, *, now: float) -> Job | None:
        """The owner's cancel: queued becomes cancelled; running gets ``cancel_requested``.

        ``None`` when the job is not ``user_id``'s, unknown, sending or already finished.
        """
        async with self._store.transaction() as db:
            row = await _one(db, "SELECT * FROM jobs WHERE id = :id", {"id": job_id})
            if row is None or row.user_id != user_id:
                return None
            if row.status is Status.QUEUED:
                job = await _one(
                    db,
                    "UPDATE jobs SET status = 'cancelled', finished_at = :now "
                    "WHERE id = :id RETURNING *",
                    {"now": now, "id": job_id},
                )
                if job is None:
                    raise RuntimeError("broken invariant: job is not None")
                logger.info("cancelled %s", job.info())
                return job
            if row.status is Status.RUNNING:
                await db.execute(
                    "UPDATE jobs SET cancel_requested = 1 WHERE id = :id", {"id": job_id}
                )
                logger.info("cancel requested for %s", row.info())
                return row
            return None

    async def cancel_requested(self, job_id: int) -> bool:
        """Whether the owner asked to stop this job."""
        async with self._store.read() as db:
            return await _cancel_flag(db, job_id)

    async def get(self, job_id: int) -> Job | None:
        """The job with that id, or ``None``."""
        async with self._store.read() as db:
            return await _one(db, "SELECT * FROM jobs WHERE id = :id", {"id": job_id})

    async def by_dedupe_key(self, dedupe_key: str) -> Job | None:
        """The job enqueued under ``dedupe_key``, or ``None``."""
        async with self._store.read() as db:
            return await _one(db, "SELECT * FROM jobs WHERE dedupe_key = :key", {"key": dedupe_key})

    async def sending(self) -> list[Job]:
        """Jobs whose clip is made but not yet delivered, oldest first (re-delivered at start)."""
        async with self._store.read() as db:
            return await _all(db, "SELECT * FROM jobs WHERE status = 'sending' ORDER BY id", {})

    async def position(self, job_id: int) -> int | None:
        """1-based place in the claim order among queued jobs; ``None`` if not queued."""
        for place, job in enumerate(await self.queued(), start=1):
            if job.id == job_id:
                return place
        return None

    async def queued(self) -> list[Job]:
        """Queued jobs in the order ``claim`` would take them, if nothing else arrived."""
        async with self._store.read() as db:
            jobs = await _all(db, "SELECT * FROM jobs WHERE status = 'queued' ORDER BY id", {})
            async with db.execute(
                "SELECT user_id, MAX(started_at) FROM jobs WHERE started_at IS NOT NULL "
                "AND user_id IN (SELECT user_id FROM jobs WHERE status = 'queued') "
                "GROUP BY user_id"
            ) as cursor:
                last_started = {row[0]: row[1] for row in await cursor.fetchall()}
        return _claim_order(jobs, last_started)

    async def _record(
        self,
        job_id: int,
        outcome: Outcome,
        status: Status,
        allowed_from: set[Status],
        *,
        now: float,
        finished: bool = False,
        charge: Charge = Charge.NONE,
    ) -> Job:
        params: dict[str, Any] = {name: getattr(outcome, name) for name in _OUTCOME_COLUMNS}
        if outcome.used_backend is not None:
            params["used_backend"] = outcome.used_backend.value
        params.update(_CHARGED[charge])
        sets = ", ".join(f"{name} = COALESCE(:{name}, {name})" for name in _OUTCOME_COLUMNS)
        sets += ", failures = failures + :failed, crashes = crashes + :crashed"
        if finished:
            sets += ", finished_at = :now"
        async with self._store.transaction() as db:
            job = await _get(db, job_id)
            if job.status not in allowed_from:
                logger.warning("%s ignored for %s", status, job.info())
                return job
            job = await _one(
                db,
                f"UPDATE jobs SET status = :status, {sets} WHERE id = :id RETURNING *",
                {**params, "status": status.value, "now": now, "id": job_id},
            )
        if job is None:
            raise RuntimeError("broken invariant: job is not None")
        logger.info("%s %s", "finished" if finished else "sending", job.info())
        return job

    async def _put_back(
        self,
        db: aiosqlite.Connection,
        job_id: int,
        *,
        now: float,
        delay_s: float = 0.0,
        charge: Charge = Charge.NONE,
    ) -> Job:
        """Requeue a job inside a transaction, or cancel it if its owner asked to; either
        way the run is counted as ``charge`` says."""
        counts = "failures = failures + :failed, crashes = crashes + :crashed"
        if await _cancel_flag(db, job_id):
            sql = (
                f"UPDATE jobs SET status = :cancelled, finished_at = :now, worker_id = NULL, "
                f"{counts} WHERE id = :id RETURNING *"
            )
        else:
            # started_at stays: it is this user's latest service, which fairness reads.
            sql = (
                "UPDATE jobs SET status = :queued, heartbeat_at = NULL, worker_id = NULL, "
                f"not_before = :not_before, {counts} WHERE id = :id RETURNING *"
            )
        not_before = now + delay_s if delay_s > 0 else None
        job = await _one(
            db,
            sql,
            {
                "now": now,
                "id": job_id,
                "not_before": not_before,
                "queued": Status.QUEUED,
                "cancelled": Status.CANCELLED,
                **_CHARGED[charge],
            },
        )
        if job is None:
            raise RuntimeError("broken invariant: job is not None")
        if job.status is Status.CANCELLED:
            logger.info("cancelled %s instead of requeueing it", job.info())
        return job


def _claim_order(jobs: list[Job], last_started: Mapping[int, float]) -> list[Job]:
    """Simulate successive claims over ``jobs`` (sorted by id), as ``_CLAIM_ORDER`` picks.

    Each user waits in a heap keyed like the SQL ``ORDER BY``: never served first, then by
    latest start, then by their oldest job; once served they go behind everyone.
    """
    per_user: dict[int, list[Job]] = {}
    for job in jobs:
        per_user.setdefault(job.user_id, []).append(job)
    heap: list[tuple[int, float, int, int]] = []
    for user_id, waiting in per_user.items():
        last = last_started.get(user_id)
        never = 0 if last is None else 1
        heap.append((never, -math.inf if last is None else last, waiting[0].id, user_id))
    heapq.heapify(heap)
    order: list[Job] = []
    served = 0
    while heap:
        _, _, _, user_id = heapq.heappop(heap)
        waiting = per_user[user_id]
        order.append(waiting.pop(0))
        if waiting:
            served += 1
            # Served just now: later than any stored start, in the order they were served.
            heapq.heappush(heap, (2, served, waiting[0].id, user_id))
    return order


async def _one(db: aiosqlite.Connection, sql: str, params: Mapping[str, Any]) -> Job | None:
    jobs = await _all(db, sql, params)
    return jobs[0] if jobs else None


async def _all(db: aiosqlite.Connection, sql: str, params: Mapping[str, Any]) -> list[Job]:
    # fetchall: an UPDATE ... RETURNING must be stepped to the end before COMMIT.
    async with db.execute(sql, params) as cursor:
        return [_job_from_row(row) for row in await cursor.fetchall()]


async def _get(db: aiosqlite.Connection, job_id: int) -> Job:
    job = await _one(db, "SELECT * FROM jobs WHERE id = :id", {"id": job_id})
    if job is None:
        raise LookupError(f"no job {job_id}")
    return job


async def _cancel_flag(db: aiosqlite.Connection, job_id: int) -> bool:
    async with db.execute(
        "SELECT cancel_requested FROM jobs WHERE id = :id", {"id": job_id}
    ) as cursor:
        row = await cursor.fetchone()
    return bool(row and row[0])
