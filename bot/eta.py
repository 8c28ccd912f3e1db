"""How long a queued job will wait until its clip is ready, from recent run times.

Example::

    >>> estimate_wait(2, {Backend.SVD: [60.0, 80.0, 70.0]}, running_remaining=30.0)
    170.0
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

from bot.jobs import JobQueue
from generator.options import Backend


def typical_run(durations_by_backend: Mapping[Backend, Iterable[float]]) -> float | None:
    """The median run time over every recent job, whatever its backend; ``None`` if none."""
    pooled = [d for durations in durations_by_backend.values() for d in durations if d >= 0]
    return statistics.median(pooled) if pooled else None


def estimate_wait(
    position: int,
    durations_by_backend: Mapping[Backend, Iterable[float]],
    running_remaining: float | None,
    *,
    consumers: int = 1,
) -> float | None:
    """Seconds until the job at ``position`` (1-based among queued jobs) has its clip.

    ``consumers`` GPU consumers take jobs in parallel: the job waits for a consumer to come
    free (``running_remaining``: the soonest a busy one is done, ``None`` when one is idle),
    then for its turn among the jobs ahead, ``consumers`` at a time, each taking the typical
    run time. ``None`` when there is no history to go on, so the user is not shown a
    made-up number.

    >>> estimate_wait(3, {Backend.SVD: [60.0]}, 10.0, consumers=2)
    130.0
    """
    typical = typical_run(durations_by_backend)
    if typical is None or position < 1:
        return None
    rounds = -(-position // max(consumers, 1))  # ceil: this job's round among the consumers
    return max(running_remaining or 0.0, 0.0) + rounds * typical


def running_remaining(
    started_at: float | None, now: float, durations_by_backend: Mapping[Backend, Iterable[float]]
) -> float | None:
    """What the running job (started at ``started_at``) probably still needs; never negative."""
    typical = typical_run(durations_by_backend)
    if started_at is None or typical is None:
        return None
    return max(typical - (now - started_at), 0.0)


async def typical_wait(queue: JobQueue, backend: Backend) -> float | None:
    """The median run time of recent done jobs on ``backend``; ``None`` without history."""
    durations = [d for d in await queue.recent_durations(backend) if d >= 0]
    return statistics.median(durations) if durations else None


async def queue_wait(
    queue: JobQueue, position: int | None, *, now: float, consumers: int
) -> float | None:
    """``estimate_wait`` for the job at ``position``, from the queue's recent run times and
    the jobs running now (on any of the ``consumers``)."""
    if position is None:
        return None
    engines = [b for b in Backend if b is not Backend.AUTO]
    durations = {b: await queue.recent_durations(b) for b in engines}
    running = await queue.running()
    remaining = None
    if len(running) >= consumers:  # every consumer is busy: the first to finish takes it
        left = [running_remaining(job.started_at, now, durations) for job in running]
        known = [value for value in left if value is not None]
        remaining = min(known) if known else None
    return estimate_wait(position, durations, remaining, consumers=consumers)
