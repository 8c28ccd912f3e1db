"""Front end and consumer hosts apart, on a real PostgreSQL: what one host's admin does
reaches the consumers of another through the database alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bot.config import Settings
from bot.consumers import Workers
from bot.queue import SqlQueue
from bot.roles import ListeningConsumers, RemoteConsumers
from bot.store import Flag, Store
from bot.upkeep import Upkeep
from bot.worker import Worker


async def _until(condition: Callable[[], bool]) -> None:
    # A flag set by the listener task: polled, as it has no event of its own to wait on.
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_pause_and_resume_on_the_front_end_reach_a_consumer_host(
    postgres_url: str, tmp_path: Path
) -> None:
    front, host = await Store.open(postgres_url), await Store.open(postgres_url)
    settings = Settings(data_dir=tmp_path)
    queue = SqlQueue(host.db)
    # The consumer host's worker, not started: what the listener tells it is what we watch.
    worker = Worker(
        queue=queue,
        settings=settings,
        runner=None,  # type: ignore[arg-type]
        cards=None,  # type: ignore[arg-type]
        upkeep=Upkeep(host, queue, settings),
        worker_id="host-b/gpu0",
    )
    consumers = ListeningConsumers(Workers([worker], store=host), host, poll_s=0.05)
    listener = asyncio.create_task(consumers._listen())
    remote = RemoteConsumers(front)
    try:
        await remote.pause()
        await asyncio.wait_for(_until(lambda: worker.paused), 10)
        assert await host.get_flag(Flag.PAUSED) is not None

        worker._wake.clear()
        await remote.resume()
        await asyncio.wait_for(_until(lambda: not worker.paused), 10)
        await asyncio.wait_for(worker._wake.wait(), 10)  # and told to look at the queue
        assert remote.size == 1 and await remote.cancel(1) is False
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await front.close()
        await host.close()
