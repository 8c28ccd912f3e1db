"""Every GPU consumer of this process as one (``bot.context.Consumers``): one ``Worker`` per
GPU (``[gpu] devices``), sharing one status-card keeper and one upkeep; wake, cancel, pause
and resume reach all of them, and a consumer whose clip may run on two GPUs borrows an idle
one here (``bot.split`` decides).

Example::

    workers = build_workers(settings, store, queue, [ProcessRunner(..., device="0"),
                                                    ProcessRunner(..., device="1")])
    app = build_app(settings, store, workers, queue=queue, cards=workers.cards)
    await workers.start()   # the app's post_init does this
    ...
    await workers.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bot.config import Settings
from bot.gpu import GenerationRunner, free_port
from bot.jobs import Job, JobQueue
from bot.split import SplitMode, choose_peer, split_engine
from bot.statuscard import StatusCards
from bot.store import Flag, Store
from bot.upkeep import Upkeep
from bot.worker import Loan, Worker
from generator.engines.catalog import auto_local, card_vram_bytes, engine_specs
from generator.engines.pairing import LEADER, Pairing
from generator.errors import BackendUnavailable
from generator.options import Backend

log = logging.getLogger(__name__)


def _of_this_process(job: Job, worker_id: str) -> bool:
    """Whether ``job`` was claimed by a consumer of this process (``<name>/gpuN``, or
    ``gpuN`` unnamed), so this process re-delivers it; another host's stays with that host."""
    if job.worker_id is None:
        return True
    return job.worker_id.rpartition("/")[0] == worker_id.rpartition("/")[0]


class Workers:
    """Every GPU consumer of this process, as the handlers see them (``bot.context.Consumers``):
    wake, cancel, pause and resume reach all of them.

    Args:
        workers: one per GPU (``[gpu] devices``), each with its own runner and ``worker_id``.
        store: where the paused flag is kept (so a restart, or another host, sees it).
    """

    def __init__(self, workers: list[Worker], *, store: Store) -> None:
        if not workers:
            raise ValueError("at least one worker")
        self.workers = workers
        self.store = store
        self.cards = workers[0].cards
        if len(workers) > 1:
            for worker in workers:
                worker.borrow = self.borrow

    async def borrow(self, leader: Worker, job: Job) -> Loan | None:
        """An idle consumer lent to ``leader`` for ``job``'s clip, or ``None`` (one GPU);
        the peer claims nothing until the leader releases it."""
        settings = leader.settings
        mode = SplitMode(settings.gpu.split)
        others = [worker for worker in self.workers if worker is not leader]
        states = [other.state() for other in others]
        if choose_peer(mode, engine_splits=True, others=states, waiting=0) is None:
            return None  # nobody to lend, whatever the job: skip the look-ups below
        backend = await self._split_engine(settings, job)
        waiting = len(await leader.queue.queued())
        # No await from here to the loan: the states read are the states lent.
        chosen = choose_peer(
            mode,
            engine_splits=backend is not None,
            others=[other.state() for other in others],
            waiting=waiting,
        )
        if chosen is None or backend is None:
            return None
        peer = others[chosen]
        peer.lent = True
        pairing = Pairing(LEADER, free_port(), backend, timeout_s=settings.gpu.split_timeout_s)
        return Loan(peer, pairing)

    @staticmethod
    async def _split_engine(settings: Settings, job: Job) -> Backend | None:
        """The local engine that will make ``job``'s clip when it shares guidance passes."""
        auto = None
        if not job.options.backend.local:
            try:
                vram = await asyncio.to_thread(card_vram_bytes)
                auto = auto_local(settings.generator, vram)
            except BackendUnavailable:
                return None
        return split_engine(
            job.options.backend,
            veo_configured=settings.veo.configured,
            auto_local=auto,
            specs=engine_specs(settings.generator),
        )

    @property
    def size(self) -> int:
        return len(self.workers)

    async def start(self) -> None:
        """Recover what a previous run left behind, re-deliver made clips once, then start
        every consumer."""
        paused = await self.store.get_flag(Flag.PAUSED) is not None
        for worker in self.workers:
            worker.paused = paused
            await worker.recover_own()
        first = self.workers[0]
        for job in await first.queue.sending():
            if _of_this_process(job, first.worker_id):
                await first.redeliver(job)
        await first.cards.refresh_positions(force=True)
        await asyncio.gather(*(worker.start() for worker in self.workers))

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self.workers))

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake()

    async def cancel(self, job_id: int) -> bool:
        """Stop ``job_id`` on whichever consumer runs it; False when none here does (the
        heartbeat of a consumer elsewhere sees the stored flag)."""
        results = [await worker.cancel(job_id) for worker in self.workers]
        return any(results)

    async def pause(self) -> None:
        """Stop claiming new jobs on every consumer (running ones finish). Survives restarts."""
        await self.store.set_flag(Flag.PAUSED, "1")
        for worker in self.workers:
            worker.paused = True
        log.info("consumers paused")

    async def resume(self) -> None:
        await self.store.set_flag(Flag.PAUSED, None)
        for worker in self.workers:
            worker.paused = False
            worker.wake()
        log.info("consumers resumed")


def build_workers(
    settings: Settings,
    store: Store,
    queue: JobQueue,
    runners: list[GenerationRunner],
    *,
    clock: Callable[[], float] = time.time,
    name: str = "",
) -> Workers:
    """One consumer per runner (``gpu0``, ``gpu1``...; ``<name>/gpu0``... with a ``name``, as
    each process sharing one database must have its own), sharing one status-card keeper
    (``workers.cards``, to bind to the app's bot) and one upkeep."""
    cards = StatusCards(queue, settings, consumers=len(runners), clock=clock)
    upkeep = Upkeep(store, queue, settings, clock=clock)
    return Workers(
        [
            Worker(
                queue=queue,
                settings=settings,
                runner=runner,
                cards=cards,
                upkeep=upkeep,
                clock=clock,
                worker_id=f"{name}/gpu{n}" if name else f"gpu{n}",
            )
            for n, runner in enumerate(runners)
        ],
        store=store,
    )
