"""The GPU consumer: claims queued jobs one at a time, runs them, and delivers the clips.

The job row is the truth: every transition is written (under ``asyncio.shield``) before the
user is told, so a crash at any point leaves a row that ``start`` knows how to pick up
(running -> requeued or given up; sending with a video on disk -> delivered once).

Example::

    worker = Worker(store=store, settings=settings, runner=ProcessRunner(settings.generator))
    worker.bind(application)
    await worker.start()
    ...
    await worker.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot import delivery, eta, texts
from bot.config import Settings
from bot.delivery import DeliveryFailed, StatusEditor
from bot.gpu import GenerationRunner, VeoBudget, WorkerCrashed, WorkerLost
from bot.jobs import Charge, Job, Outcome, Status, can_retry
from bot.keyboards import result_keyboard, status_keyboard
from bot.limits import day_start, month_start, veo_allowance
from bot.queue import GIVE_UP_TEXT
from bot.store import Store
from bot.upkeep import Upkeep
from generator.clip import Clip, Progress
from generator.errors import (
    Cancelled,
    GeneratorError,
    ModelUnavailable,
    RateLimited,
    TransientError,
)
from generator.options import Request

log = logging.getLogger(__name__)

#: Positions at which a waiting job's status message is refreshed (Telegram edit limits).
MILESTONES = frozenset({1, 2, 3, 5, 10})
#: When idle, look for expired jobs this often even if nothing wakes the worker.
IDLE_SWEEP_S = 30.0
#: After the grace period and a cancel, how long a job may take to notice it.
CANCEL_WAIT_S = 10.0


def request_for(job: Job) -> Request:
    """The generator request a job's options describe."""
    options = job.options
    return Request(
        image=Path(job.photo_path),
        backend=options.backend,
        photo_type=options.photo_type,
        intensity=options.intensity,
        # The duration choice is Veo's (4/6/8 s); local engines make their own length.
        duration=None if options.backend.local else options.duration,
        motion=options.motion,
        custom_elements=options.custom_elements,
    )


def charge_for(exc: TransientError) -> Charge:
    """Whose count a retryable error goes on: the engine dying under the job is a crash,
    the engine dying before it took the job is nobody's, anything else is the job's own."""
    if isinstance(exc, WorkerLost):
        return Charge.NONE
    if isinstance(exc, WorkerCrashed):
        return Charge.CRASH
    return Charge.FAILURE


def retry_delay(job: Job, exc: TransientError) -> float:
    """Seconds before a job that hit a transient error is tried again.

    A crashed GPU process is restarted for the next run, so that retry is immediate; a
    service that is down or rate-limited gets 1, then 2 minutes (4 for rate limits),
    doubling with each of the job's earlier failures.
    """
    if charge_for(exc) is not Charge.FAILURE:
        return 0.0
    base = 120.0 if isinstance(exc, RateLimited) else 60.0
    return min(base * 2**job.failures, 600.0)


def remove_files(*paths: Path | None) -> None:
    """Delete files that may already be gone."""
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)


class Worker:
    """The single GPU consumer of ``store.queue``.

    Args:
        store: the open store (its ``queue`` is claimed from).
        settings: the bot's settings (worker timings, limits, data folder).
        runner: where clips are made (``ProcessRunner`` or ``InlineRunner``).
        clock: UNIX seconds; injected so tests control heartbeats, TTLs and throttles.
        worker_id: recorded on claimed rows.
    """

    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        runner: GenerationRunner,
        clock: Callable[[], float] = time.time,
        worker_id: str = "gpu0",
    ) -> None:
        self.store = store
        self.queue = store.queue
        self.settings = settings
        self.runner = runner
        self.clock = clock
        self.worker_id = worker_id
        self.running_job_id: int | None = None
        self.current_progress: Progress | None = None
        self._app: Any = None
        self._bot: Any = None
        self._editor: StatusEditor | None = None
        self._wake = asyncio.Event()
        self._paused = False
        self._stopping = False
        self._stopped = asyncio.Event()  # set by stop(): ends waits for the GPU process
        self._shutdown_cancel = False
        self._loop_task: asyncio.Task | None = None
        self._shown_position: dict[int, int] = {}
        self.upkeep = Upkeep(store, settings, clock=clock)

    # --- wiring and control ---

    def bind(self, application: Any) -> None:
        """Take the bot of a PTB ``Application`` (anything with a ``bot`` will do)."""
        self._app = application
        self._bot = application.bot
        self._editor = StatusEditor(
            self._bot, interval_s=self.settings.worker.progress_edit_interval_s, clock=self.clock
        )

    @property
    def editor(self) -> StatusEditor:
        if self._editor is None:
            raise RuntimeError("call bind(application) first")
        return self._editor

    @property
    def paused(self) -> bool:
        return self._paused

    async def start(self) -> None:
        """Recover what a previous run left behind, then start the consumer loop."""
        if self._bot is None:
            raise RuntimeError("call bind(application) first")
        self._paused = await self.store.get_flag("paused") is not None
        # Our own running rows were orphaned by the restart (and other consumers' stale
        # ones are fair game): requeue them or give them up.
        await self._recover(orphaned_by=self.worker_id)
        for job in await self.queue.sending():
            await self._redeliver(job)
        await self._refresh_positions(force=True)
        start_runner = getattr(self.runner, "start", None)
        if start_runner is not None:
            await start_runner()  # the GPU process loads the model before the first job
        # A task this worker owns, not ``application.create_task``: ``Application.stop()``
        # awaits those, and this loop only ends in ``stop()``, which runs in ``post_stop``.
        self._loop_task = asyncio.create_task(self._consume(), name="gpu-worker")
        log.info("worker %s started%s", self.worker_id, " (paused)" if self._paused else "")

    async def _recover(self, *, orphaned_by: str | None = None) -> None:
        recovered = await self.queue.recover(
            now=self.clock(),
            stale_after=self.settings.worker.stale_after_s,
            max_crashes=self.settings.worker.max_crashes,
            orphaned_by=orphaned_by,
        )
        for job in recovered:
            if job.status is Status.FAILED:
                await self._tell(job, texts.given_up())
            elif job.status is Status.CANCELLED:
                await self._tell(job, texts.cancelled())

    def wake(self) -> None:
        """A job was queued (or something changed): look at the queue now."""
        self._wake.set()

    async def pause(self) -> None:
        """Stop claiming new jobs (the running one finishes). Survives restarts."""
        self._paused = True
        await self.store.set_flag("paused", "1")
        log.info("worker %s paused", self.worker_id)

    async def resume(self) -> None:
        self._paused = False
        await self.store.set_flag("paused", None)
        self.wake()
        log.info("worker %s resumed", self.worker_id)

    async def cancel_running(self, job_id: int) -> bool:
        """Stop ``job_id`` at its next step if it is the one running (the owner asked)."""
        if self.running_job_id != job_id:
            return False
        await self.runner.cancel()
        return True

    async def stop(self) -> None:
        """Stop claiming; give the running job ``shutdown_grace_s`` to finish, then cancel it
        and put it back in the queue; close the runner."""
        self._stopping = True
        self._stopped.set()
        self.wake()
        task = self._loop_task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.settings.worker.shutdown_grace_s)
            if not done:
                log.info(
                    "job %s still running after the grace period; stopping it", self.running_job_id
                )
                self._shutdown_cancel = True
                await self.runner.cancel()
                done, _ = await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
            if not done:
                task.cancel()  # the runner ignored the cancel; the job requeues on the way out
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.runner.close()
        log.info("worker %s stopped", self.worker_id)

    # --- the loop ---

    async def _consume(self) -> None:
        while not self._stopping:
            # Cleared before looking, so a wake() during the look is not lost.
            self._wake.clear()
            if self._paused:
                await self._wake.wait()
                continue
            try:
                await self._expire()
                await self._sweep_photos()
                await self._recover()  # another consumer's job whose heartbeat stopped
                # No claim for an engine that is gone: the job would pay for its death.
                ready = await self._engine_ready()
                job = await self.queue.claim(self.worker_id, now=self.clock()) if ready else None
            except Exception:
                log.exception("queue unavailable; retrying")
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_SWEEP_S)
                continue
            await self._refresh_positions()
            try:
                await self._run(job)
            except Exception:  # a database or Telegram failure while recording: keep serving
                log.exception("! job %s: could not record its outcome", job.id)

    async def _engine_ready(self) -> bool:
        """Whether the runner has a live, started GPU process (respawned first if it died
        while idle). False when stopping, or when it cannot start (the loop tries again at
        its next look, ``IDLE_SWEEP_S`` later or on a wake)."""
        ready = asyncio.ensure_future(self.runner.ready())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not ready.done():
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ready
        if ready.cancelled():
            return False
        exc = ready.exception()
        if exc is None:
            return True
        log.error("! the GPU process cannot start (%s); no job is claimed until it can", exc)
        return False

    async def _sweep_photos(self) -> None:
        """Keep the data folder bounded (``bot.upkeep``): at most once an hour, between jobs."""
        try:
            await self.upkeep.sweep_if_due()
        except Exception:  # a full disk or a locked file must not stop the queue
            log.exception("data folder sweep failed")

    async def _expire(self) -> None:
        for job in await self.queue.expire(now=self.clock(), ttl=self.settings.limits.queue_ttl_s):
            await self._tell(job, texts.expired())

    async def _run(self, job: Job) -> None:
        """One job from claim to a terminal row (or back in the queue). Never raises."""
        log.info("→ %s", job.info())
        self.running_job_id, self.current_progress = job.id, None
        self._shutdown_cancel = False
        heartbeat = asyncio.create_task(self._heartbeat(job), name=f"heartbeat-{job.id}")
        pump_wake = asyncio.Event()
        pump = asyncio.create_task(self._progress_pump(job, pump_wake), name=f"progress-{job.id}")

        def on_progress(event: Progress) -> None:
            self.current_progress = event
            pump_wake.set()

        async def on_veo_operation(name: str) -> None:
            await asyncio.shield(self.queue.set_veo_operation(job.id, name))

        try:
            if job.status_message_id is not None:
                await self.editor.edit(
                    job.chat_id,
                    job.status_message_id,
                    texts.progress_card("loading", 0, 0, 0.0, str(job.options.backend)),
                    status_keyboard(job.id),
                    force=True,
                )
            out_path = self.settings.data_dir / "videos" / f"{job.id}.mp4"
            await asyncio.to_thread(out_path.parent.mkdir, parents=True, exist_ok=True)
            budget = await self._veo_budget(job)
            async with delivery.uploading_video(self._bot, job.chat_id):
                clip = await self.runner.run(
                    request_for(job),
                    out_path,
                    on_progress=on_progress,
                    on_veo_operation=on_veo_operation,
                    resume_veo_operation=job.veo_operation,
                    veo_budget_ok=budget,
                )
        except Cancelled as exc:
            await self._cancelled(job, exc)
        except TransientError as exc:
            await self._transient(job, exc)
        except ModelUnavailable as exc:
            # Not the photo's fault nor the user's choice: the operator has to act.
            log.error("! %s: the engine is down: %s", job.info(), exc)
            await self._fail(job, exc.user_text, told=texts.engine_down(exc.user_text))
        except GeneratorError as exc:
            log.info("! %s: %s: %s", job.info(), type(exc).__name__, exc)
            await self._fail(job, exc.user_text, cost=getattr(exc, "cost_usd", None))
        except asyncio.CancelledError:
            # stop() gave up on the runner: the job goes back, not counted against the user.
            await asyncio.shield(self.queue.requeue(job.id, now=self.clock()))
            log.info("↻ job %s requeued at shutdown", job.id)
            raise
        except Exception:
            log.exception("! %s: unexpected error", job.info())
            await self._fail(job, GeneratorError.user_text)
        else:
            await self._deliver(job, clip)
        finally:
            heartbeat.cancel()
            pump.cancel()
            for task in (heartbeat, pump):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.running_job_id, self.current_progress = None, None

    async def _heartbeat(self, job: Job) -> None:
        """Beat every ``heartbeat_s``; also notice a cancel asked for through the database."""
        while True:
            await asyncio.sleep(self.settings.worker.heartbeat_s)  # a timer, not synchronisation
            try:
                await self.queue.heartbeat(job.id, now=self.clock())
                if await self.queue.cancel_requested(job.id):
                    await self.runner.cancel()
            except Exception:
                log.exception("heartbeat for job %s failed", job.id)

    async def _progress_pump(self, job: Job, wake: asyncio.Event) -> None:
        """Show the latest progress in the status message; the editor throttles."""
        if job.status_message_id is None:
            return
        while True:
            await wake.wait()
            wake.clear()
            event = self.current_progress
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

    async def _veo_budget(self, job: Job) -> VeoBudget:
        limits, now = self.settings.limits, self.clock()
        allowed = veo_allowance(
            user_daily_usd=limits.veo_user_daily_usd,
            month_usd=limits.veo_month_usd,
            user_spent_today=await self.store.veo_spend(since=day_start(now), user_id=job.user_id),
            spent_this_month=await self.store.veo_spend(since=month_start(now)),
        )
        return VeoBudget(allowed)

    # --- outcomes ---

    async def _cancelled(self, job: Job, exc: Cancelled) -> None:
        cost = getattr(exc, "cost_usd", None)
        if self._shutdown_cancel:
            await asyncio.shield(self.queue.requeue(job.id, now=self.clock()))
            log.info("↻ job %s requeued at shutdown", job.id)
            return
        done = await asyncio.shield(
            self.queue.finish(job.id, Outcome(Status.CANCELLED, cost_usd=cost), now=self.clock())
        )
        log.info("← %s cancelled", done.info())
        await self._tell(done, texts.cancelled())

    async def _transient(self, job: Job, exc: TransientError) -> None:
        charge = charge_for(exc)
        if can_retry(job, charge, max_crashes=self.settings.worker.max_crashes):
            delay = retry_delay(job, exc)
            back = await asyncio.shield(
                self.queue.requeue(job.id, now=self.clock(), delay_s=delay, charge=charge)
            )
            log.info("↻ %s: %s: %s", back.info(), type(exc).__name__, exc)
            if back.status is Status.CANCELLED:
                await self._tell(back, texts.cancelled())
            return
        if charge is Charge.CRASH:
            # The engine died under this photo every time: "will be retried" is no longer true.
            log.warning("! %s crashed the GPU process too often; giving up", job.info())
            await self._fail(job, GIVE_UP_TEXT, charge=charge, told=texts.given_up())
            return
        await self._fail(job, exc.user_text, charge=charge)

    async def _fail(
        self,
        job: Job,
        user_text: str,
        *,
        cost: float | None = None,
        charge: Charge = Charge.NONE,
        told: str | None = None,
    ) -> None:
        done = await asyncio.shield(
            self.queue.finish(
                job.id,
                Outcome(Status.FAILED, error=user_text, cost_usd=cost),
                now=self.clock(),
                charge=charge,
            )
        )
        log.info("← %s failed", done.info())
        await self._tell(done, told or texts.failed(user_text))

    async def _deliver(self, job: Job, clip: Clip) -> None:
        video = clip.video
        # Without Veo credentials every clip is local by design: saying so under each one
        # would be noise. A fallback is news only when Veo was there to be tried.
        reason = clip.fallback_reason if self.settings.veo.configured else None
        sending = await asyncio.shield(
            self.queue.mark_sending(
                job.id,
                Outcome(
                    Status.SENDING,
                    used_backend=clip.backend,
                    fallback_reason=reason,
                    cost_usd=clip.cost_usd,
                    video_path=str(video.path),
                    video_size=video.size_bytes,
                    video_duration=video.duration,
                    video_width=video.width,
                    video_height=video.height,
                    seed=clip.seed,
                ),
                now=self.clock(),
            )
        )
        if sending.status is not Status.SENDING:
            log.info("%s changed while it ran; not delivering", sending.info())
            return
        await self._send(sending, thumbnail=video.thumbnail, seconds=clip.seconds)

    async def _send(self, job: Job, *, thumbnail: Path | None, seconds: float) -> None:
        if job.video_path is None:
            raise RuntimeError("broken invariant: job.video_path is not None")
        try:
            async with delivery.uploading_video(self._bot, job.chat_id):
                sent = await delivery.send_video(
                    self._bot,
                    chat_id=job.chat_id,
                    video_path=Path(job.video_path),
                    reply_to=job.photo_message_id,
                    caption=texts.video_caption(job, seconds),
                    width=job.video_width,
                    height=job.video_height,
                    duration=job.video_duration,
                    thumbnail=thumbnail,
                    reply_markup=result_keyboard(job.id),
                )
                # The clip is in the chat: say so before anything else awaits (even the end of
                # the chat action). A kill between the upload's answer and this commit is the
                # one way a clip is sent twice (Telegram has no idempotency key for uploads),
                # so nothing else may widen that window; the shield lets no cancel skip it.
                done = await asyncio.shield(
                    self.queue.finish(
                        job.id,
                        Outcome(
                            Status.DONE,
                            video_file_id=sent.file_id,
                            video_message_id=sent.message_id,
                        ),
                        now=self.clock(),
                    )
                )
        except DeliveryFailed as exc:
            done = await asyncio.shield(
                self.queue.finish(
                    job.id, Outcome(Status.FAILED, error=exc.reason), now=self.clock()
                )
            )
            log.info("← %s not delivered: %s", done.info(), exc.reason)
            if exc.reason != delivery.USER_BLOCKED:
                await self._tell(done, texts.failed(texts.delivery_failed()))
            return
        log.info("← %s delivered", done.info())
        # Telegram keeps the clip (/history resends it by file id): free the disk.
        await asyncio.to_thread(remove_files, Path(job.video_path), thumbnail)
        if job.status_message_id is not None:
            self.editor.forget(job.chat_id, job.status_message_id)
            # The clip itself is the news now; the progress card would only be clutter.
            await delivery.delete_quietly(self._bot, job.chat_id, job.status_message_id)

    # --- restart and queue upkeep ---

    async def _redeliver(self, job: Job) -> None:
        """A clip made before the restart: send it once, or requeue if its file is gone."""
        path = Path(job.video_path) if job.video_path else None
        if path is None or not await asyncio.to_thread(path.exists):
            back = await asyncio.shield(self.queue.requeue(job.id, now=self.clock()))
            log.info("↻ %s: its video is gone; making it again", back.info())
            return
        log.info("→ %s re-delivering after restart", job.info())
        thumbnail = path.with_suffix(".jpg")
        seconds = (job.heartbeat_at or self.clock()) - (job.started_at or job.created_at)
        await self._send(
            job,
            thumbnail=thumbnail if await asyncio.to_thread(thumbnail.exists) else None,
            seconds=seconds,
        )

    async def _refresh_positions(self, *, force: bool = False) -> None:
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
            wait = await eta.queue_wait(
                self.store, position, now=self.clock(), running_job_id=self.running_job_id
            )
            shown = await self.editor.edit(
                job.chat_id,
                job.status_message_id,
                texts.queue_card(position, wait),
                status_keyboard(job.id),
                force=True,
            )
            if shown:
                self._shown_position[job.id] = position
        for job_id in set(self._shown_position) - present:
            del self._shown_position[job_id]

    async def _tell(self, job: Job, text: str) -> None:
        if job.status_message_id is not None:
            self.editor.forget(job.chat_id, job.status_message_id)
        await delivery.tell(
            self._bot,
            self.editor,
            chat_id=job.chat_id,
            status_message_id=job.status_message_id,
            reply_to=job.photo_message_id,
            text=text,
        )
