"""The job record, its states, and the queue interface the handlers and the GPU consumers use.

``bot.queue.SqlQueue`` implements ``JobQueue`` over SQLite or PostgreSQL (``bot.db``); the
handlers, the consumers and the status cards know only the protocol.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Protocol

from generator.options import Backend, Intensity, PhotoType


class Status(enum.StrEnum):
    """Where a job is. A row's status is the truth."""

    QUEUED = "queued"  # accepted, photo on disk, waiting for the GPU consumer
    RUNNING = "running"  # claimed by a consumer (heartbeat_at says it is alive)
    SENDING = "sending"  # clip made (video_path set), being uploaded to the chat
    DONE = "done"  # delivered
    FAILED = "failed"  # gave up; ``error`` holds the text the user was sent
    CANCELLED = "cancelled"  # by its owner
    EXPIRED = "expired"  # waited longer than the queue's time-to-live


#: What the chat of a job that kept dying under its consumer is told, and its stored error
#: (the queue gives such a job up; ``bot.texts.given_up`` returns this).
GIVE_UP_TEXT = "😞 I tried several times but couldn't make this clip. Please try again later."

ACTIVE = frozenset({Status.QUEUED, Status.RUNNING, Status.SENDING})
TERMINAL = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED, Status.EXPIRED})


class Charge(enum.StrEnum):
    """Why a run ended without a clip, and which of the job's counts it goes on.

    A restart of the bot or of the GPU process is not the photo's fault, so it does not
    spend the job's ``max_attempts``; it has its own, higher cap (``max_crashes``) against a
    photo that takes the engine down every time.
    """

    NONE = "none"  # we stopped it (shutdown), or the engine died before it took the job
    FAILURE = "failure"  # the job itself failed: the engine raised a retryable error for it
    CRASH = "crash"  # the bot or the GPU process died while the job ran


@dataclass(frozen=True)
class JobOptions:
    """What the user picked on the settings card."""

    backend: Backend = Backend.AUTO
    intensity: Intensity = Intensity.MODERATE
    photo_type: PhotoType = PhotoType.PORTRAIT
    duration: int | None = None  # Veo seconds (4/6/8); None = backend default
    custom_elements: tuple[str, ...] = ()
    motion: int | None = None  # explicit motion bucket (More/Less motion buttons)

    @property
    def engine_duration(self) -> int | None:
        """The length to ask of the engine: the duration is a Veo choice, and a local
        engine makes its own length (it would refuse Veo's 4/6/8 s)."""
        return None if self.backend.local else self.duration

    def on(self, backend: Backend) -> JobOptions:
        """These options made by ``backend`` (a local one drops the Veo duration)."""
        moved = dataclasses.replace(self, backend=backend)
        return dataclasses.replace(moved, duration=moved.engine_duration)


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


@dataclass(frozen=True)
class NewJob:
    """What the handlers hand to ``enqueue``.

    ``dedupe_key`` makes enqueue idempotent: a second enqueue with the same key (a double
    tap on Animate) returns the first job instead of creating another.
    """

    user_id: int
    chat_id: int
    photo_message_id: int  # the user's photo message, the video replies to it
    photo_path: str  # photo saved in the data folder
    options: JobOptions
    dedupe_key: str
    status_message_id: int | None = None  # the card that became the status message
    max_attempts: int = 3
    # Telegram's id of the photo: a consumer on a host without the file fetches it by this.
    photo_file_id: str | None = None


@dataclass(frozen=True)
class Job:
    """One row of the jobs table, frozen. Timestamps are UNIX seconds (float)."""

    id: int
    user_id: int
    chat_id: int
    photo_message_id: int
    photo_path: str
    options: JobOptions
    status: Status
    dedupe_key: str
    status_message_id: int | None = None
    photo_file_id: str | None = None  # fetch the photo by this where photo_path is not
    attempts: int = 0  # runs started (claims), whatever ended them
    max_attempts: int = 3  # the job fails at its max_attempts-th failure
    failures: int = 0  # runs in which the job itself failed (``Charge.FAILURE``)
    crashes: int = 0  # runs cut short by a crash of the bot or the GPU process
    created_at: float = 0.0
    started_at: float | None = None
    heartbeat_at: float | None = None
    finished_at: float | None = None
    not_before: float | None = None  # a retried job is not claimed before this time
    worker_id: str | None = None
    used_backend: Backend | None = None
    fallback_reason: str | None = None
    veo_operation: str | None = None
    cost_usd: float = 0.0
    error: str | None = None
    video_path: str | None = None
    video_file_id: str | None = None
    video_message_id: int | None = None  # the delivered clip's message in the user's chat
    video_size: int | None = None
    video_duration: float | None = None
    video_width: int | None = None
    video_height: int | None = None
    seed: int | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def info(self) -> str:
        """One-line identity for log lines."""
        return (
            f"job {self.id} (user {self.user_id}, {self.status}, run {self.attempts}, "
            f"{self.failures} failed, {self.crashes} crashed)"
        )


@dataclass(frozen=True)
class Outcome:
    """What ``finish`` records. Fields left ``None`` keep their stored value."""

    status: Status
    error: str | None = None
    used_backend: Backend | None = None
    fallback_reason: str | None = None
    cost_usd: float | None = None
    video_path: str | None = None
    video_file_id: str | None = None
    video_message_id: int | None = None  # the delivered clip's message in the user's chat
    video_size: int | None = None
    video_duration: float | None = None
    video_width: int | None = None
    video_height: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class JobFiles:
    """What the jobs table points at in the data folder, for the sweep (``bot.upkeep``).

    ``active_*`` belong to queued, running or sending jobs and must stay; ``photos`` is
    every photo any job names.
    """

    active_photos: frozenset[str]
    active_job_ids: frozenset[int]
    ended_job_ids: frozenset[int]
    photos: frozenset[str]


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


def is_stale(job: Job, now: float, timeout: float) -> bool:
    """A running job whose consumer stopped beating for ``timeout`` seconds."""
    if job.status is not Status.RUNNING:
        return False
    last = job.heartbeat_at or job.started_at or job.created_at
    return now - last > timeout


def can_retry(job: Job, charge: Charge, *, max_crashes: int) -> bool:
    """Whether a run that just ended for ``charge`` may be followed by another, counting it.

    ``max_attempts`` (on the row) caps the job's own failures, ``max_crashes`` (the
    consumer's setting) the crashes under it; a run we stopped ourselves costs nothing.

    >>> job = Job(1, 2, 2, 3, "p.jpg", JobOptions(), Status.RUNNING, "k", failures=1)
    >>> can_retry(job, Charge.FAILURE, max_crashes=10), can_retry(job, Charge.CRASH, max_crashes=1)
    (True, False)
    """
    if charge is Charge.FAILURE:
        return job.failures + 1 < job.max_attempts
    if charge is Charge.CRASH:
        return job.crashes + 1 < max_crashes
    return True


def is_expired(job: Job, now: float, ttl: float) -> bool:
    """A queued job that waited longer than the queue's time-to-live."""
    return job.status is Status.QUEUED and ttl > 0 and now - job.created_at > ttl


class JobQueue(Protocol):
    """The small interface every queue implements. All methods are safe to call concurrently."""

    async def enqueue(self, new: NewJob, *, now: float) -> Job:
        """Store a queued job (idempotent on ``dedupe_key``) and return it."""

    async def claim(self, worker_id: str, *, now: float) -> Job | None:
        """Atomically take the next job, fairly between users (least recently served first),
        mark it running, ``attempts += 1`` (a run, not yet a charge); ``None`` when nothing
        is queued."""

    async def heartbeat(self, job_id: int, *, now: float, worker_id: str | None = None) -> None:
        """Record that the consumer running ``job_id`` is alive (with ``worker_id``: only
        while that consumer holds it)."""

    async def set_veo_operation(self, job_id: int, name: str) -> None:
        """Remember a submitted Veo operation so a restart resumes it instead of paying again."""

    async def mark_sending(
        self, job_id: int, outcome: Outcome, *, now: float, worker_id: str | None = None
    ) -> Job:
        """The clip is made: record it (status ``sending``) before uploading. This and the
        other outcomes, given ``worker_id``, are ignored once that consumer lost the job (its
        lease went stale and another took it back)."""

    async def finish(
        self,
        job_id: int,
        outcome: Outcome,
        *,
        now: float,
        charge: Charge = Charge.NONE,
        worker_id: str | None = None,
    ) -> Job:
        """Record a terminal outcome (done, failed, cancelled, expired), counting the run that
        ended it as ``charge`` says."""

    async def requeue(
        self,
        job_id: int,
        *,
        now: float,
        delay_s: float = 0.0,
        charge: Charge = Charge.NONE,
        worker_id: str | None = None,
    ) -> Job:
        """Put a running job back in the queue (shutdown, retryable error, crash), adding one
        to the count ``charge`` names; it is not claimed again for ``delay_s`` seconds."""

    async def recover(
        self, *, now: float, stale_after: float, max_crashes: int, orphaned_by: str | None = None
    ) -> list[Job]:
        """Requeue stale running jobs, and every running job of the consumer ``orphaned_by``
        (it is restarting), each charged a crash, or fail them at ``max_crashes``; return the
        changed jobs."""

    async def expire(self, *, now: float, ttl: float) -> list[Job]:
        """Mark queued jobs older than ``ttl`` seconds expired; return them."""

    async def cancel(self, job_id: int, user_id: int, *, now: float) -> Job | None:
        """Owner's cancel: a queued job becomes cancelled at once; a running one gets its
        ``cancel_requested`` flag (the consumer stops at the next step). ``None`` if not
        the owner's or already finished."""

    async def cancel_requested(self, job_id: int) -> bool:
        """Whether the owner asked to stop this running job."""

    async def get(self, job_id: int) -> Job | None: ...

    async def by_dedupe_key(self, dedupe_key: str) -> Job | None:
        """The job enqueued under ``dedupe_key`` (a double tap finds the first one)."""

    async def sending(self) -> list[Job]:
        """Jobs whose clip is made but not yet delivered (re-delivered at start)."""

    async def position(self, job_id: int) -> int | None:
        """1-based place in the claim order among queued jobs; ``None`` if not queued."""

    async def queued(self) -> list[Job]:
        """Queued jobs in claim order."""

    async def running(self) -> list[Job]:
        """Jobs some consumer runs now (every consumer's), oldest claim first."""

    async def wait_for_jobs(self, timeout: float) -> bool:  # noqa: ASYNC109 (a wait, bounded)
        """Wait up to ``timeout`` seconds for news of a queued job (an enqueue or a requeue,
        from this process or, on PostgreSQL, any host); whether some came."""

    # -- reads for history, limits, ETAs, stats and the sweep --

    async def history(self, user_id: int, limit: int = 10) -> list[Job]:
        """The user's jobs, newest first."""

    async def active_count(self, user_id: int) -> int:
        """How many of the user's jobs are queued, running or sending."""

    async def jobs_since(self, user_id: int, since: float) -> int:
        """Jobs the user asked for since ``since`` that cost something (the daily limit)."""

    async def veo_spend(self, *, since: float, user_id: int | None = None) -> float:
        """US dollars recorded on jobs created since ``since`` (one user's or everyone's)."""

    async def recent_durations(self, backend: Backend, limit: int = 20) -> list[float]:
        """Run times of recent done jobs on ``backend``, newest first."""

    async def stats(self, *, now: float, day_start: float, month_start: float) -> Stats:
        """Counts, medians, Veo spend and the failure rate for the admin."""

    async def photo_in_use(self, photo_path: str) -> bool:
        """Whether any job was made from this photo file."""

    async def files(self) -> JobFiles:
        """What jobs point at in the data folder (the sweep keeps the active ones)."""
