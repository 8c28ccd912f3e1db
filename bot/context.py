"""The typed ``context.bot_data`` every handler reads: settings, the store, the queue, the
GPU consumers and the status-card keeper, plus the front end's own small state.

Example::

    data = BotData(settings=settings, store=store, queue=SqlQueue(store.db),
                   consumers=workers, cards=cards)
    app = build_app(data)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bot.cardedit import CardEditor
from bot.config import Settings
from bot.jobs import JobQueue
from bot.statuscard import StatusCards
from bot.store import Store
from bot.upkeep import DiskMeter


class Consumers(Protocol):
    """The GPU consumers as the front end sees them; each call reaches all of them."""

    @property
    def size(self) -> int:
        """How many consumers serve the queue (ETAs and /stats count them)."""

    async def start(self) -> None:
        """Recover what a previous run left, then start consuming (the app's ``post_init``)."""

    async def stop(self) -> None:
        """Stop consuming, with the running jobs' grace period (the app's ``post_stop``)."""

    def wake(self) -> None:
        """A job was queued: look at the queue now."""

    async def cancel(self, job_id: int) -> bool:
        """Stop ``job_id`` at its next step on whichever consumer runs it; whether one here
        did (a consumer elsewhere notices the stored cancel flag at its next heartbeat)."""

    async def pause(self) -> None:
        """Stop claiming new jobs (running ones finish); survives restarts."""

    async def resume(self) -> None:
        """Claim again."""


@dataclass
class BotData:
    """The services every handler reaches through ``context.bot_data``."""

    settings: Settings
    store: Store
    queue: JobQueue
    consumers: Consumers
    cards: StatusCards
    clock: Callable[[], float] = time.time
    # Card edits wait for Telegram's rate limit here, not in a handler's update slot.
    editor: CardEditor = field(default_factory=CardEditor)
    # Serialises "check limits, then enqueue" so a double tap cannot slip past a limit.
    enqueue_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Photos decoded at once at intake (``limits.max_concurrent_decodes``).
    decode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    # The data folder's size against ``data.max_disk_mb``, checked before each download.
    disk: DiskMeter = field(init=False)

    def __post_init__(self) -> None:
        self.disk = DiskMeter(self.settings, self.clock)
