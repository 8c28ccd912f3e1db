"""Each job's status card: its place in the queue, its progress while it runs, and the
final word (done, failed, cancelled, expired). One keeper for every consumer in the process.

Example::

    cards = StatusCards(queue, settings, consumers=2)
    cards.bind(app.bot)
    async with cards.running(job):          # "Loading the model…", then progress edits
        clip = await runner.run(..., on_progress=lambda p: cards.report(job, p))
    await cards.tell(job, texts.failed(...))  # or cards.delivered(job)

The queue is the truth; this module only shows it. Progress lives here (in memory, per
job), so ``/queue`` asks the keeper what a running job is doing, whichever consumer runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bot import delivery, eta, texts
from bot.config import Settings
from bot.delivery import StatusEditor
from bot.jobs import Job, JobQueue
from bot.keyboards import status_keyboard
from generator.clip import Progress, Stage

log = logging.getLogger(__name__)

#: Positions at which a waiting job's status message is refreshed (Telegram edit limits).
MILESTONES = frozenset({1, 2, 3, 5, 10})


class StatusCards:
    """Keeps every job's status message in step with its row.

    Args:
        queue: where positions and run times come from.
        settings: edit interval (``worker.progress_edit_interval_s``).
        consumers: how many GPU consumers serve the queue (ETAs divide by it).
        clock: UNIX seconds, injected so tests control throttles.
    """

    def __init__(
        self,
        queue: JobQueue,
        settings: Settings,
        *,
        consumers: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.consumers = consumers
        self.clock = clock
        self._editor: StatusEditor | None = None
        self._progress: dict[int, Progress] = {}
        self._shown_position: dict[int, int] = {}
        self._wakes: dict[int, asyncio.Event] = {}

    def bind(self, bot: Any) -> None:
        """Take the bot that sent the status messages (the app's, once it is built)."""
        self._editor = StatusEditor(
            bot, interval_s=self.settings.worker.progress_edit_interval_s, clock=self.clock
        )

    @property
    def editor(self) -> StatusEditor:
        if self._editor is None:
            raise RuntimeError("call bind(bot) first")
        return self._editor

    @property
    def bot(self) -> Any:
        return self.editor.bot

    def progress(self, job_id: int) -> Progress | None:
        """The latest progress of a job running in this process, or ``None``."""
        return self._progress.get(job_id)

    async def wait_estimate(self, position: int | None) -> float | None:
        """Seconds until the job at ``position`` has its clip (``bot.eta``), or ``None``."""
        return await eta.queue_wait(
            self.queue, position, now=self.clock(), consumers=self.consumers
        )

    # --- a running job ---

    @contextlib.asynccontextmanager
    async def running(self, job: Job) -> AsyncIterator[None]:
        """While the body runs the job: show "loading", then each reported progress
        (throttled by the editor); forget the progress when it ends."""
        self._progress.pop(job.id, None)
        wake = asyncio.Event()
        self._wakes[job.id] = wake
        pump = asyncio.create_task(self._pump(job, wake), name=f"progress-{job.id}")
        try:
            if job.status_message_id is not None:
                await self.editor.edit(
                    job.chat_id,
                    job.status_message_id,
                    texts.progress_card(Stage.LOADING, 0, 0, 0.0, str(job.options.backend)),
                    status_keyboard(job.id),
                    force=True,
                )
            yield
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            self._wakes.pop(job.id, None)
            self._progress.pop(job.id, None)

    def report(self, job: Job, event: Progress) -> None:
        """A progress event of ``job`` (called on the loop; cheap)."""
        self._progress[job.id] = event
        wake = self._wakes.get(job.id)
        if wake is not None:
            wake.set()

    async def _pump(self, job: Job, wake: asyncio.Event) -> None:
        if job.status_message_id is None:
            return
        while True:
            await wake.wait()
            wake.clear()
            event = self._progress.get(job.id)
            if event is None:
                continue
            backend = event.backend or job.options.backend
            await self.editor.edit(
                job.chat_id,
                job.status_message_id,
                texts.progress_card(
                    event.stage,
                    event.step,
                    event.total,
                    event.elapsed,
                    backend,
                    warming=event.warming,
                    remaining_s=event.remaining_s,
                ),
                status_keyboard(job.id),
            )

    # --- waiting jobs ---

    async def refresh_positions(self, *, force: bool = False) -> None:
        """Update waiting jobs' status messages at milestone positions (or all, at start)."""
        try:
            waiting = await self.queue.queued()
        except Exception:
            log.exception("could not list the queue")
            return
        present = set()
        for position, job in enumerate(waiting, start=1):
            present.add(job.id)
            if job.status_message_id is None or self._shown_position.get(job.id) == position:
                continue
            if not force and position not in MILESTONES:
                continue
            shown = await self.editor.edit(
                job.chat_id,
                job.status_message_id,
                texts.queue_card(position, await self.wait_estimate(position)),
                status_keyboard(job.id),
                force=True,
            )
            if shown:
                self._shown_position[job.id] = position
        for job_id in set(self._shown_position) - present:
            del self._shown_position[job_id]

    # --- the final word ---

    async def tell(self, job: Job, text: str) -> None:
        """Put ``text`` in the job's status message (or a new message); never raises."""
        if job.status_message_id is not None:
            self.editor.forget(job.chat_id, job.status_message_id)
        await delivery.tell(
            self.bot,
            self.editor,
            chat_id=job.chat_id,
            status_message_id=job.status_message_id,
            reply_to=job.photo_message_id,
            text=text,
        )

    async def delivered(self, job: Job) -> None:
        """The clip is in the chat: the progress card would only be clutter now."""
        if job.status_message_id is not None:
            self.editor.forget(job.chat_id, job.status_message_id)
            await delivery.delete_quietly(self.bot, job.chat_id, job.status_message_id)
