"""The durable job queue: ``bot.jobs.JobQueue`` over the ``jobs`` table, the only code that
speaks SQL about jobs (transitions, and the reads for history, limits, ETAs and stats).

A row's status is the truth; every transition is one ``UPDATE ... RETURNING *`` inside a
transaction (``bot.db``), so a crash leaves each job in exactly one state and two
consumers never claim the same job. Statuses are bound from ``Status`` as parameters.
Claims are fair between users: the user served least recently goes first, so one user's
three photos do not make everyone else wait.

Example::

    queue = SqlQueue(await open_database(path))
    job = await queue.enqueue(new_job, now=now)
    claimed = await queue.claim("gpu0", now=now)
    await queue.finish(claimed.id, Outcome(Status.DONE, video_path=...), now=later)
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from bot.db import Database, Dialect
from bot.jobs import (
    ACTIVE,
    GIVE_UP_TEXT,
    TERMINAL,
    Charge,
    Job,
    JobFiles,
    NewJob,
    Outcome,
    Stats,
    Status,
    can_retry,
    is_stale,
    options_from_json,
    options_to_json,
)
from generator.options import Backend

logger = logging.getLogger(__name__)

#: The channel ``enqueue`` (and ``requeue``) notify after commit: consumers wait on it.
JOBS_CHANNEL = "jobs"

# Each charge adds one to its own column (``SET crashes = crashes + :crashed``).
_CHARGED = {
    Charge.NONE: {"failed": 0, "crashed": 0},
    Charge.FAILURE: {"failed": 1, "crashed": 0},
    Charge.CRASH: {"failed": 0, "crashed": 1},
}

# Every status as a parameter (``:s_queued``...), so no status is spelled in SQL.
_STATUSES = {f"s_{status.value}": status.value for status in Status}


def _in(values: Iterable[Status]) -> str:
    """The parameters of an ``IN (...)`` list of statuses."""
    return ", ".join(f":s_{status.value}" for status in sorted(values))


# The fair order, written once: queued jobs with their ``place`` in the order ``claim``
# takes them. Users take turns (a user's n-th waiting job is in turn n); within a turn,
# users never served go first, then the user whose latest start is oldest, then the user
# whose oldest job is oldest. ``claim`` takes the first eligible place, ``position`` and
# ``queued`` read the places.
_FAIR_ORDER = """
    SELECT id, not_before, ROW_NUMBER() OVER (
        ORDER BY turn, last_started IS NOT NULL, last_started, first_id
    ) AS place
    FROM (
        SELECT q.id, q.not_before, s.last_started,
            ROW_NUMBER() OVER (PARTITION BY q.user_id ORDER BY q.id) AS turn,
            MIN(q.id) OVER (PARTITION BY q.user_id) AS first_id
        FROM jobs AS q
        LEFT JOIN (
            SELECT user_id, MAX(started_at) AS last_started FROM jobs
            WHERE started_at IS NOT NULL
              AND user_id IN (SELECT user_id FROM jobs WHERE status = :s_queued)
            GROUP BY user_id
        ) AS s ON s.user_id = q.user_id
        WHERE q.status = :s_queued
    ) AS waiting
"""

# The job ``claim`` takes: the first place whose backoff is over. PostgreSQL adds row locks
# that other claimers skip; SQLite's ``BEGIN IMMEDIATE`` already lets one claimer in.
_NEXT = f"""
    SELECT j.id FROM jobs AS j JOIN ({_FAIR_ORDER}) AS f ON f.id = j.id
    WHERE f.not_before IS NULL OR f.not_before <= :now
    ORDER BY f.place LIMIT 1
"""
_NEXT_LOCKED = _NEXT + " FOR UPDATE OF j SKIP LOCKED"

# Outcome fields that map one-to-one onto columns; ``None`` keeps the stored value.
_OUTCOME_COLUMNS = tuple(f.name for f in dataclasses.fields(Outcome) if f.name != "status")
_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job))


def job_from_row(row: Mapping[str, Any]) -> Job:
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
    return Job(**values)


class SqlQueue:
    """``JobQueue`` over a ``bot.db.Database`` (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(self, new: NewJob, *, now: float) -> Job:
        """Store a queued job and return it; the same ``dedupe_key`` returns the first job."""
        async with self.db.transaction() as db:
            inserted = await db.execute(
                "INSERT INTO jobs (user_id, chat_id, photo_message_id, photo_path, photo_file_id, "
                "options, status, dedupe_key, status_message_id, max_attempts, created_at) "
                "VALUES (:user_id, :chat_id, :photo_message_id, :photo_path, :photo_file_id, "
                ":options, :s_queued, :dedupe_key, :status_message_id, :max_attempts, :now) "
                "ON CONFLICT (dedupe_key) DO NOTHING",
                {
                    **_STATUSES,
                    "user_id": new.user_id,
                    "chat_id": new.chat_id,
                    "photo_message_id": new.photo_message_id,
                    "photo_path": new.photo_path,
                    "photo_file_id": new.photo_file_id,
                    "options": options_to_json(new.options),
                    "dedupe_key": new.dedupe_key,
                    "status_message_id": new.status_message_id,
                    "max_attempts": new.max_attempts,
                    "now": now,
                },
            )
            job = await _one(
                db, "SELECT * FROM jobs WHERE dedupe_key = :key", {"key": new.dedupe_key}
            )
        # inserted, or already there: the key is unique
        if job is None:
            raise RuntimeError("broken invariant: job is not None")
        if inserted == 1:
            logger.info("enqueued %s", job.info())
            await self.db.notify(JOBS_CHANNEL)
        else:
            logger.info("duplicate enqueue for %s (key %s)", job.info(), new.dedupe_key)
        return job

    async def claim(self, worker_id: str, *, now: float) -> Job | None:
        """Take the next job fairly, mark it running with ``attempts += 1``; ``None`` if idle."""
        pick = _NEXT_LOCKED if self.db.dialect is Dialect.POSTGRES else _NEXT
        async with self.db.transaction() as db:
            job = await _one(
                db,
                "UPDATE jobs SET status = :s_running, attempts = attempts + 1, "
                "started_at = :now, heartbeat_at = :now, worker_id = :worker_id "
                f"WHERE id = ({pick}) AND status = :s_queued RETURNING *",
                {"now": now, "worker_id": worker_id},
            )
        if job is not None:
            logger.info("claimed %s by %s", job.info(), worker_id)
        return job

    async def heartbeat(self, job_id: int, *, now: float, worker_id: str | None = None) -> None:
        """Record that the consumer running ``job_id`` is alive (no-op unless running; with
        ``worker_id``, unless that consumer still holds it)."""
        holder = "" if worker_id is None else " AND worker_id = :worker_id"
        await self.db.execute(
            "UPDATE jobs SET heartbeat_at = :now WHERE id = :id AND status = :s_running" + holder,
            {**_STATUSES, "now": now, "id": job_id, "worker_id": worker_id},
        )

    async def set_veo_operation(self, job_id: int, name: str) -> None:
        """Remember a submitted Veo operation so a restart resumes it instead of paying again."""
        async with self.db.transaction() as db:
            job = await _one(
                db,
                "UPDATE jobs SET veo_operation = :name WHERE id = :id RETURNING *",
                {"name": name, "id": job_id},
            )
        if job is None:
            raise LookupError(f"no job {job_id}")
        logger.info("%s: Veo operation %s", job.info(), name)

    async def mark_sending(
        self, job_id: int, outcome: Outcome, *, now: float, worker_id: str | None = None
    ) -> Job:
        """Record the made clip (status ``sending``) before uploading it.

        ``outcome.status`` is ignored. Only a running (or already sending) job moves; any
        other job is returned unchanged, so the caller can see it was cancelled or recovered.
        With ``worker_id``, only while that consumer holds the job (see ``_lost``).
        """
        return await self._record(
            job_id,
            outcome,
            Status.SENDING,
            {Status.RUNNING, Status.SENDING},
            now=now,
            worker_id=worker_id,
        )

    async def finish(
        self,
        job_id: int,
        outcome: Outcome,
        *,
        now: float,
        charge: Charge = Charge.NONE,
        worker_id: str | None = None,
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
            worker_id=worker_id,
        )

    async def requeue(
        self,
        job_id: int,
        *,
        now: float,
        delay_s: float = 0.0,
        charge: Charge = Charge.NONE,
        worker_id: str | None = None,
    ) -> Job:
        """Put a running or sending job back in the queue, adding one to the count that
        ``charge`` names (failures, crashes, or none); with ``delay_s`` it is not claimed
        again before ``now + delay_s`` (retry backoff). Whether it may run again is the
        caller's ``can_retry``.

        If its owner asked to cancel it, it becomes cancelled instead. Other jobs are
        returned unchanged.
        """
        async with self.db.transaction() as db:
            job = await _get(db, job_id)
            if job.status not in (Status.RUNNING, Status.SENDING) or _lost(job, worker_id):
                logger.warning("requeue ignored for %s", job.info())
                return job
            job = await _put_back(db, job_id, now=now, delay_s=delay_s, charge=charge)
        if job.status is Status.QUEUED:
            logger.info("requeued %s%s", job.info(), f" for {delay_s:.0f} s" if delay_s else "")
            await self.db.notify(JOBS_CHANNEL)
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
        async with self.db.transaction() as db:
            rows = await _all(
                db, f"SELECT * FROM jobs WHERE status = :s_running ORDER BY id{_locked(db)}", {}
            )
            for job in rows:
                orphaned = orphaned_by is not None and job.worker_id == orphaned_by
                if stale_after > 0 and not orphaned and not is_stale(job, now, stale_after):
                    continue
                if can_retry(job, Charge.CRASH, max_crashes=max_crashes) or await _cancel_flag(
                    db, job.id
                ):
                    changed.append(await _put_back(db, job.id, now=now, charge=Charge.CRASH))
                else:
                    failed = await _one(
                        db,
                        "UPDATE jobs SET status = :s_failed, error = :error, finished_at = :now, "
                        "worker_id = NULL, crashes = crashes + 1 WHERE id = :id RETURNING *",
                        {"error": GIVE_UP_TEXT, "now": now, "id": job.id},
                    )
                    if failed is None:
                        raise RuntimeError("broken invariant: failed is not None")
                    changed.append(failed)
        for job in changed:
            logger.info("recovered %s", job.info())
        if any(job.status is Status.QUEUED for job in changed):
            await self.db.notify(JOBS_CHANNEL)
        return changed

    async def expire(self, *, now: float, ttl: float) -> list[Job]:
        """Mark queued jobs older than ``ttl`` seconds ``expired``; ``ttl <= 0`` never expires."""
        if ttl <= 0:
            return []
        async with self.db.transaction() as db:
            jobs = await _all(
                db,
                "UPDATE jobs SET status = :s_expired, finished_at = :now "
                "WHERE status = :s_queued AND :now - created_at > :ttl RETURNING *",
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
        async with self.db.transaction() as db:
            row = await _one(db, f"SELECT * FROM jobs WHERE id = :id{_locked(db)}", {"id": job_id})
            if row is None or row.user_id != user_id:
                return None
            if row.status is Status.QUEUED:
                job = await _one(
                    db,
                    "UPDATE jobs SET status = :s_cancelled, finished_at = :now "
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
        return await _cancel_flag(self.db, job_id)

    async def get(self, job_id: int) -> Job | None:
        """The job with that id, or ``None``."""
        return await _one(self.db, "SELECT * FROM jobs WHERE id = :id", {"id": job_id})

    async def by_dedupe_key(self, dedupe_key: str) -> Job | None:
        """The job enqueued under ``dedupe_key``, or ``None``."""
        return await _one(
            self.db, "SELECT * FROM jobs WHERE dedupe_key = :key", {"key": dedupe_key}
        )

    async def sending(self) -> list[Job]:
        """Jobs whose clip is made but not yet delivered, oldest first (re-delivered at start)."""
        return await _all(self.db, "SELECT * FROM jobs WHERE status = :s_sending ORDER BY id", {})

    async def running(self) -> list[Job]:
        """Jobs a consumer runs now, oldest claim first (every consumer's, on every host)."""
        return await _all(
            self.db, "SELECT * FROM jobs WHERE status = :s_running ORDER BY started_at, id", {}
        )

    async def wait_for_jobs(self, timeout: float) -> bool:  # noqa: ASYNC109 (a wait, bounded)
        """Wait up to ``timeout`` seconds for ``enqueue``/``requeue`` news on ``JOBS_CHANNEL``."""
        return await self.db.wait(JOBS_CHANNEL, timeout)

    async def position(self, job_id: int) -> int | None:
        """1-based place in the claim order among queued jobs; ``None`` if not queued."""
        row = await self.db.fetchone(
            f"SELECT place FROM ({_FAIR_ORDER}) AS f WHERE f.id = :id",
            {**_STATUSES, "id": job_id},
        )
        return None if row is None else int(row["place"])

    async def queued(self) -> list[Job]:
        """Queued jobs in the order ``claim`` would take them, if nothing else arrived."""
        return await _all(
            self.db,
            f"SELECT j.* FROM jobs AS j JOIN ({_FAIR_ORDER}) AS f ON f.id = j.id ORDER BY f.place",
            {},
        )

    # -- reads for history, limits, ETAs, stats and the sweep --------------------------

    async def history(self, user_id: int, limit: int = 10) -> list[Job]:
        """The user's jobs, newest first."""
        return await _all(
            self.db,
            "SELECT * FROM jobs WHERE user_id = :user_id "
            "ORDER BY created_at DESC, id DESC LIMIT :limit",
            {"user_id": user_id, "limit": limit},
        )

    async def active_count(self, user_id: int) -> int:
        """How many of the user's jobs are queued, running or sending."""
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM jobs WHERE user_id = :user_id "
            f"AND status IN ({_in(ACTIVE)})",
            {**_STATUSES, "user_id": user_id},
        )
        return int(row["n"]) if row else 0

    async def jobs_since(self, user_id: int, since: float) -> int:
        """Jobs the user asked for at or after ``since``, for the daily limit.

        Jobs cancelled or expired before they started do not count: they cost nothing.
        """
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM jobs WHERE user_id = :user_id AND created_at >= :since "
            "AND NOT (status IN (:s_cancelled, :s_expired) AND started_at IS NULL)",
            {**_STATUSES, "user_id": user_id, "since": since},
        )
        return int(row["n"]) if row else 0

    async def veo_spend(self, *, since: float, user_id: int | None = None) -> float:
        """US dollars recorded on jobs created at or after ``since`` (one user's, or everyone's)."""
        if user_id is None:
            sql, params = "", {"since": since}
        else:
            sql, params = " AND user_id = :user_id", {"since": since, "user_id": user_id}
        row = await self.db.fetchone(
            f"SELECT COALESCE(SUM(cost_usd), 0) AS usd FROM jobs WHERE created_at >= :since{sql}",
            params,
        )
        return float(row["usd"]) if row else 0.0

    async def recent_durations(self, backend: Backend, limit: int = 20) -> list[float]:
        """Run times (``finished_at - started_at``) of done jobs on ``backend``, newest first."""
        rows = await self.db.fetchall(
            "SELECT finished_at - started_at AS seconds FROM jobs WHERE status = :s_done "
            "AND used_backend = :backend AND started_at IS NOT NULL "
            "AND finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT :limit",
            {**_STATUSES, "backend": Backend(backend).value, "limit": limit},
        )
        return [float(row["seconds"]) for row in rows]

    async def stats(self, *, now: float, day_start: float, month_start: float) -> Stats:
        """Counts, medians, Veo spend and the failure rate for the admin."""
        by_status = {
            row["status"]: int(row["n"])
            for row in await self.db.fetchall(
                "SELECT status, COUNT(*) AS n FROM jobs GROUP BY status"
            )
        }
        by_backend = {
            row["used_backend"]: int(row["n"])
            for row in await self.db.fetchall(
                "SELECT used_backend, COUNT(*) AS n FROM jobs WHERE used_backend IS NOT NULL "
                "GROUP BY used_backend"
            )
        }
        durations: dict[str, list[float]] = {}
        for row in await self.db.fetchall(
            "SELECT used_backend, finished_at - started_at AS seconds FROM jobs "
            "WHERE status = :s_done AND used_backend IS NOT NULL AND started_at IS NOT NULL "
            "AND finished_at IS NOT NULL",
            _STATUSES,
        ):
            durations.setdefault(row["used_backend"], []).append(float(row["seconds"]))
        finished = await self.db.fetchone(
            "SELECT COALESCE(SUM(CASE WHEN status = :s_failed THEN 1 ELSE 0 END), 0) AS failed, "
            "COUNT(*) AS ended FROM jobs WHERE status IN (:s_done, :s_failed) "
            "AND finished_at >= :month_start AND finished_at <= :now",
            {**_STATUSES, "month_start": month_start, "now": now},
        )
        failed, ended = (int(finished["failed"]), int(finished["ended"])) if finished else (0, 0)
        return Stats(
            by_status=by_status,
            by_backend=by_backend,
            median_seconds={name: statistics.median(v) for name, v in durations.items()},
            veo_spend_today=await self.veo_spend(since=day_start),
            veo_spend_month=await self.veo_spend(since=month_start),
            failure_rate=failed / ended if ended else 0.0,
            total=sum(by_status.values()),
        )

    async def photo_in_use(self, photo_path: str) -> bool:
        """Whether any job (of any status) was made from this photo file."""
        row = await self.db.fetchone(
            "SELECT 1 AS used FROM jobs WHERE photo_path = :path LIMIT 1", {"path": photo_path}
        )
        return row is not None

    async def files(self) -> JobFiles:
        """What jobs point at in the data folder, for the sweep (``bot.upkeep``)."""
        active = await self.db.fetchall(
            f"SELECT id, photo_path FROM jobs WHERE status IN ({_in(ACTIVE)})", _STATUSES
        )
        ended = await self.db.fetchall(
            f"SELECT id FROM jobs WHERE status NOT IN ({_in(ACTIVE)})", _STATUSES
        )
        photos = await self.db.fetchall("SELECT DISTINCT photo_path FROM jobs")
        return JobFiles(
            active_photos=frozenset(row["photo_path"] for row in active),
            active_job_ids=frozenset(int(row["id"]) for row in active),
            ended_job_ids=frozenset(int(row["id"]) for row in ended),
            photos=frozenset(row["photo_path"] for row in photos),
        )

    # -- recording --------------------------------------------------------------------

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
        worker_id: str | None = None,
    ) -> Job:
        params: dict[str, Any] = {name: getattr(outcome, name) for name in _OUTCOME_COLUMNS}
        if outcome.used_backend is not None:
            params["used_backend"] = outcome.used_backend.value
        params.update(_CHARGED[charge])
        sets = ", ".join(f"{name} = COALESCE(:{name}, {name})" for name in _OUTCOME_COLUMNS)
        sets += ", failures = failures + :failed, crashes = crashes + :crashed"
        if finished:
            sets += ", finished_at = :now"
        async with self.db.transaction() as db:
            job = await _get(db, job_id)
            if job.status not in allowed_from or _lost(job, worker_id):
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
    db: Database,
    job_id: int,
    *,
    now: float,
    delay_s: float = 0.0,
    charge: Charge = Charge.NONE,
) -> Job:
    """Requeue a job inside a transaction, or cancel it if its owner asked to; either way
    the run is counted as ``charge`` says."""
    counts = "failures = failures + :failed, crashes = crashes + :crashed"
    if await _cancel_flag(db, job_id):
        sql = (
            f"UPDATE jobs SET status = :s_cancelled, finished_at = :now, worker_id = NULL, "
            f"{counts} WHERE id = :id RETURNING *"
        )
    else:
        # started_at stays: it is this user's latest service, which fairness reads.
        sql = (
            "UPDATE jobs SET status = :s_queued, heartbeat_at = NULL, worker_id = NULL, "
            f"not_before = :not_before, {counts} WHERE id = :id RETURNING *"
        )
    not_before = now + delay_s if delay_s > 0 else None
    job = await _one(
        db, sql, {"now": now, "id": job_id, "not_before": not_before, **_CHARGED[charge]}
    )
    if job is None:
        raise RuntimeError("broken invariant: job is not None")
    if job.status is Status.CANCELLED:
        logger.info("cancelled %s instead of requeueing it", job.info())
    return job


async def _one(db: Database, sql: str, params: Mapping[str, Any]) -> Job | None:
    jobs = await _all(db, sql, params)
    return jobs[0] if jobs else None


async def _all(db: Database, sql: str, params: Mapping[str, Any]) -> list[Job]:
    """Jobs a statement returns; every status is bound (``:s_queued``...) for it to use."""
    rows = await db.fetchall(sql, {**_STATUSES, **params})
    return [job_from_row(row) for row in rows]


async def _get(db: Database, job_id: int) -> Job:
    """The job, read inside a transaction to decide a write (so locked on PostgreSQL)."""
    job = await _one(db, f"SELECT * FROM jobs WHERE id = :id{_locked(db)}", {"id": job_id})
    if job is None:
        raise LookupError(f"no job {job_id}")
    return job


def _lost(job: Job, worker_id: str | None) -> bool:
    """Whether ``worker_id`` no longer holds ``job``: its lease went stale and the job was
    taken back (and maybe claimed by another consumer) while it still ran. Its outcome is
    then ignored, so one job is never recorded, or delivered, by two consumers."""
    return worker_id is not None and job.worker_id != worker_id


def _locked(db: Database) -> str:
    """``FOR UPDATE`` on PostgreSQL, for a read that decides a write in the same transaction:
    the row stays as read until the commit, and a second host's read waits and then sees the
    new row (SQLite's ``BEGIN IMMEDIATE`` already keeps every other writer out)."""
    return " FOR UPDATE" if db.dialect is Dialect.POSTGRES else ""


async def _cancel_flag(db: Database, job_id: int) -> bool:
    row = await db.fetchone("SELECT cancel_requested FROM jobs WHERE id = :id", {"id": job_id})
    return bool(row and row["cancel_requested"])
