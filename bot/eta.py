"""How long a queued job will wait until its clip is ready, from recent run times.

Example::

    >>> estimate_wait(2, {Backend.SVD: [60.0, 80.0, 70.0]}, running_remaining=30.0)
    170.0
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from generator.options import Backend

if TYPE_CHECKING:
    from bot.store import Store


def typical_run(durations_by_backend: Mapping[Backend, Iterable[float]]) -> float | None:
    """The median run time over every recent job, whatever its backend; ``None`` if none."""
    pooled = [d for durations in durations_by_backend.values() for d in durations if d >= 0]
    return statistics.median(pooled) if pooled else None


def estimate_wait(
    position: int,
    durations_by_backend: Mapping[Backend, Iterable[float]],
    running_remaining: float | None,
) -> float | None:
    """Seconds until the job at ``position`` (1-based among queued jobs) has its clip.

    The ``position - 1`` jobs ahead and this one each take the typical run time; the job
    running now needs ``running_remaining`` more (``None``: nothing runs). ``None`` when there
    is no history to go on, so the user is not shown a made-up number.
    """
    typical = typical_run(durations_by_backend)
    if typical is None or position < 1:
        return None
    return max(running_remaining or 0.0, 0.0) + position * typical


def running_remaining(
    started_at: float | None, now: float, durations_by_backend: Mapping[Backend, Iterable[float]]
) -> float | None:
    """What the running job (started at ``started_at``) probably still needs; never negative."""
    typical = typical_run(durations_by_backend)
    if started_at is None or typical is None:
        return None
    return max(typical - (now - started_at), 0.0)


async def typical_wait(store: Store, backend: Backend) -> float | None:
    """The median run time of recent done jobs on ``backend``; ``None`` without history."""
    durations = [d for d in await store.recent_durations(backend) if d >= 0]
    return statistics.median(durations) if durations else None


async def queue_wait(
    store: Store, position: int | None, *, now: float, running_job_id: int | None
) -> float | None:
    """``estimate_wait`` for the job at ``position``, reading recent run times from ``store``."""
    if position is None:
        return None
    engines = [b for b in Backend if b is not Backend.AUTO]
    durations = {b: await store.recent_durations(b) for b in engines}
    remaining = None
    if running_job_id is not None:
        running = await store.queue.get(running_job_id)
        started = running.started_at if running is not None else None
        remaining = running_remaining(started, now, durations)
    return estimate_wait(position, durations, remaining)
