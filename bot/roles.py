"""What the consumers look like to a process of each role (``[service] role``, ``--role``).

``all`` runs this host's GPU consumers beside the Telegram front end, as one process.
``frontend`` takes updates and enqueues; its consumers run on other hosts, so it reaches them
only through the shared database (``RemoteConsumers``). ``consumer`` takes no updates; its
consumers hear what the front end did through the database too (``ListeningConsumers``):
a queued job by ``NOTIFY``, pause and resume by the stored flag, a cancel by the job's flag
at the next heartbeat. Nothing else passes between hosts.

Example::

    consumers = ListeningConsumers(build_workers(...), store)   # role consumer
    consumers = RemoteConsumers(store)                          # role frontend
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from bot.queue import JOBS_CHANNEL
from bot.store import Flag, Store
from bot.upkeep import Upkeep

if TYPE_CHECKING:  # a front end never loads the GPU side
    from bot.consumers import Workers

log = logging.getLogger(__name__)


class RemoteConsumers:
    """The front end's ``bot.context.Consumers`` when every consumer runs on another host.

    Waking is the queue's ``NOTIFY`` at enqueue; a cancel is the job's stored flag, which
    the consumer running it checks at each heartbeat; pause and resume are the stored flag,
    announced on the jobs channel. ``size`` is one: this host cannot count the others, so
    queue ETAs assume one consumer. With ``upkeep``, this host's data folder (the photos
    the front end saved) is swept as a consumer host sweeps its own, every ``sweep_s``.
    """

    def __init__(
        self, store: Store, *, upkeep: Upkeep | None = None, sweep_s: float = 600.0
    ) -> None:
        self.store = store
        self.upkeep = upkeep
        self.sweep_s = sweep_s
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def size(self) -> int:
        return 1

    async def start(self) -> None:
        log.info("front end only: jobs are made by consumers on other hosts")
        if self.upkeep is not None:
            self._sweeper = asyncio.create_task(self._sweep(self.upkeep), name="sweeper")

    async def stop(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep(self, upkeep: Upkeep) -> None:
        while True:
            try:
                await upkeep.sweep_if_due()  # at most once per its own period
            except Exception:  # a full disk or a locked file must not stop the front end
                log.exception("data folder sweep failed")
            await asyncio.sleep(self.sweep_s)  # a timer, not synchronisation

    def wake(self) -> None:
        pass  # enqueue's NOTIFY already reached them

    async def cancel(self, job_id: int) -> bool:
        return False  # the stored cancel flag reaches the consumer at its next heartbeat

    async def pause(self) -> None:
        await self.store.set_flag(Flag.PAUSED, "1")
        await self.store.db.notify(JOBS_CHANNEL)
        log.info("consumers paused (every host)")

    async def resume(self) -> None:
        await self.store.set_flag(Flag.PAUSED, None)
        await self.store.db.notify(JOBS_CHANNEL)
        log.info("consumers resumed (every host)")


class ListeningConsumers:
    """This host's ``Workers``, also told by the database what other hosts did.

    A listener waits on the jobs channel (PostgreSQL ``LISTEN``), at most ``poll_s`` at a
    time; then it reads the stored paused flag and wakes the consumers, which look at the
    queue (and take back stale jobs). Everything else is the ``Workers``' own.
    """

    def __init__(self, workers: Workers, store: Store, *, poll_s: float = 5.0) -> None:
        self.workers = workers
        self.store = store
        self.cards = workers.cards
        self.poll_s = poll_s
        self._listener: asyncio.Task[None] | None = None

    @property
    def size(self) -> int:
        return self.workers.size

    async def start(self) -> None:
        await self.workers.start()
        self._listener = asyncio.create_task(self._listen(), name="consumers-listener")

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        await self.workers.stop()

    def wake(self) -> None:
        self.workers.wake()

    async def cancel(self, job_id: int) -> bool:
        return await self.workers.cancel(job_id)

    async def pause(self) -> None:
        await self.workers.pause()
        await self.store.db.notify(JOBS_CHANNEL)

    async def resume(self) -> None:
        await self.workers.resume()
        await self.store.db.notify(JOBS_CHANNEL)

    async def _listen(self) -> None:
        while True:
            try:
                notified = await self.store.db.wait(JOBS_CHANNEL, self.poll_s)
                paused = await self.store.get_flag(Flag.PAUSED) is not None
            except Exception:  # the database is away: the consumers' own loop says so
                log.warning("cannot hear the database; retrying", exc_info=True)
                await asyncio.sleep(self.poll_s)  # a retry timer, not synchronisation
                continue
            changed = [w for w in self.workers.workers if w.paused != paused]
            for worker in changed:
                worker.paused = paused
            if changed:
                log.info("consumers %s by another host", "paused" if paused else "resumed")
            if notified:
                log.debug("a job was queued")
            # Every tick, not only on news: an idle consumer then also takes back, within
            # poll_s of going stale, the job of a consumer that died on another host.
            self.workers.wake()
