"""One GPU consumer's job lifecycle: a ``Worker`` claims queued jobs one at a time, runs them
on its own runner (its own GPU process), records the outcome and delivers the clip. The
group of consumers the handlers see is ``bot.consumers.Workers``; it lends an idle consumer
to a clip that may run on two GPUs (``bot.split``), which then serves that clip (``serve``)
instead of claiming jobs until the clip ends.

The job row is the truth: every transition is written (under ``asyncio.shield``) before the
user is told, so a crash at any point leaves a row that ``start`` knows how to pick up
(running -> requeued or given up; sending with a video on disk -> delivered once). Status
messages are ``bot.statuscard``'s, the data folder ``bot.upkeep``'s.

Example::

    worker = Worker(queue=queue, settings=settings, runner=ProcessRunner(..., device="0"),
                    cards=cards, upkeep=upkeep, worker_id="gpu0")
    await worker.recover_own()
    await worker.start()
    ...
    await worker.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from telegram.error import TelegramError

from bot import delivery, texts
from bot.config import Settings
from bot.delivery import DeliveryFailed
from bot.gpu import GenerationRunner, VeoBudget, WorkerCrashed, WorkerLost
from bot.jobs import Charge, Job, JobQueue, Outcome, Status, can_retry
from bot.keyboards import result_keyboard
from bot.limits import veo_allowance_for
from bot.split import ConsumerState
from bot.statuscard import StatusCards
from bot.upkeep import Upkeep
from generator.clip import Clip, Progress
from generator.engines.pairing import Pairing
from generator.errors import (
    Cancelled,
    GeneratorError,
    ModelUnavailable,
    RateLimited,
    TransientError,
)
from generator.options import Request

log = logging.getLogger(__name__)

#: When idle, look for expired jobs this often even if nothing wakes the worker.
IDLE_SWEEP_S = 30.0
#: After the grace period and a cancel, how long a job may take to notice it.
CANCEL_WAIT_S = 10.0
#: After a shared clip ends, how long its peer may take to hear the leader's stop; a peer
#: still serving then is stuck (its leader never joined) and its GPU process is restarted.
PEER_RELEASE_S = 10.0


@dataclass(frozen=True)
class Loan:
    """An idle consumer lent to one clip: it serves the clip's second guidance passes."""

    peer: Worker
    pairing: Pairing  # the leader's side; the peer takes ``pairing.as_peer()``


#: How a consumer asks its group for an idle peer for a job (``bot.consumers.Workers``).
Borrow = Callable[["Worker", Job], Awaitable[Loan | None]]


def request_for(job: Job) -> Request:
    """The generator request a job's options describe."""
    options = job.options
    return Request(
        image=Path(job.photo_path),
        backend=options.backend,
        photo_type=options.photo_type,
        intensity=options.intensity,
        duration=options.engine_duration,
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
    """One GPU consumer of the queue, with its own runner (its own GPU process and models).

    Args:
        queue: the shared job queue.
        settings: the bot's settings (worker timings, limits, data folder).
        runner: where clips are made (``ProcessRunner`` or ``InlineRunner``).
        cards: the status-card keeper (shared by every consumer in the process).
        upkeep: expiry and the data-folder sweep, run between jobs.
        clock: UNIX seconds; injected so tests control heartbeats, TTLs and throttles.
        worker_id: recorded on claimed rows; a restart takes back this id's running jobs.
    """

    def __init__(
        self,
        *,
        queue: JobQueue,
        settings: Settings,
        runner: GenerationRunner,
        cards: StatusCards,
        upkeep: Upkeep,
        clock: Callable[[], float] = time.time,
        worker_id: str = "gpu0",
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.runner = runner
        self.cards = cards
        self.upkeep = upkeep
        self.clock = clock
        self.worker_id = worker_id
        self.paused = False  # set by ``Workers`` from the stored flag
        self.lent = False  # serving another consumer's clip: claims nothing meanwhile
        self.borrow: Borrow | None = None  # set by ``Workers`` when it has several consumers
        self._waiting = False  # idle: waiting for a job, nothing claimed
        self._running_job_id: int | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()  # set by stop(): ends waits for the GPU process
        self._shutdown_cancel = False
        self._loop_task: asyncio.Task | None = None

    # --- control ---

    async def recover_own(self) -> None:
        """Our own running rows were orphaned by the restart (and other consumers' stale
        ones are fair game): requeue them or give them up."""
        await self._recover(orphaned_by=self.worker_id)

    async def start(self) -> None:
        """Start the runner (the GPU process loads its model) and the consumer loop."""
        start_runner = getattr(self.runner, "start", None)
        if start_runner is not None:
            await start_runner()
        # A task this worker owns, not ``application.create_task``: ``Application.stop()``
        # awaits those, and this loop only ends in ``stop()``, which runs in ``post_stop``.
        self._loop_task = asyncio.create_task(self._consume(), name=f"consumer-{self.worker_id}")
        log.info("worker %s started%s", self.worker_id, " (paused)" if self.paused else "")

    def wake(self) -> None:
        """A job was queued (or something changed): look at the queue now."""
        self._wake.set()

    async def cancel(self, job_id: int) -> bool:
        """Stop ``job_id`` at its next step if this consumer runs it (the owner asked)."""
        if self._running_job_id != job_id:
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
                    "job %s still running after the grace period; stopping it",
                    self._running_job_id,
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
            if self.paused or self.lent:
                await self._wake.wait()
                continue
            try:
                await self._between_jobs()
                # No claim for an engine that is gone: the job would pay for its death.
                ready = await self._engine_ready()
                job = await self.queue.claim(self.worker_id, now=self.clock()) if ready else None
            except Exception:
                log.exception("queue unavailable; retrying")
                job = None
            if job is None:
                self._waiting = True
                try:
                    await self._idle(IDLE_SWEEP_S)
                finally:
                    self._waiting = False
                continue
            await self.cards.refresh_positions()
            try:
                await self._run(job)
            except Exception:  # a database or Telegram failure while recording: keep serving
                log.exception("! job %s: could not record its outcome", job.id)

    def state(self) -> ConsumerState:
        """What the split rule (``bot.split``) sees of this consumer now."""
        return ConsumerState(
            running=not self._waiting or self.lent or self._stopping,
            paused=self.paused,
            engine_ready=getattr(self.runner, "engine_ready", False),
            can_pair=getattr(self.runner, "can_pair", False),
        )

    async def serve(self, request: Request, pairing: Pairing) -> None:
        """Serve as the peer of another consumer's clip (lent: ``lent`` is set); never raises:
        the leader makes its clip alone when this fails."""
        try:
            calls = await self.runner.serve_peer(request, pairing)  # type: ignore[attr-defined]
            log.info(
                "%s served %d guidance passes for a clip on port %d",
                self.worker_id,
                calls,
                pairing.port,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "%s could not serve as a peer: %s: %s", self.worker_id, type(exc).__name__, exc
            )

    async def _make(
        self,
        job: Job,
        request: Request,
        out_path: Path,
        *,
        on_progress: Callable[[Progress], None],
        on_veo_operation: Callable[[str], Awaitable[None]],
        resume_veo_operation: str | None,
        veo_budget_ok: VeoBudget,
    ) -> Clip:
        """Make the clip on this consumer's runner, its guidance passes shared with an idle
        consumer when the split rule lends one (``borrow``); the peer is released and woken
        however the clip ends."""
        loan = await self._borrow(job)
        if loan is None:
            return await self.runner.run(
                request,
                out_path,
                on_progress=on_progress,
                on_veo_operation=on_veo_operation,
                resume_veo_operation=resume_veo_operation,
                veo_budget_ok=veo_budget_ok,
            )
        log.info("⇉ job %s shares its guidance passes with %s", job.id, loan.peer.worker_id)
        serving = asyncio.create_task(
            loan.peer.serve(request, loan.pairing.as_peer()), name=f"peer-{job.id}"
        )
        try:
            return await self.runner.run(  # type: ignore[call-arg]  # runners that can_pair
                request,
                out_path,
                on_progress=on_progress,
                on_veo_operation=on_veo_operation,
                resume_veo_operation=resume_veo_operation,
                veo_budget_ok=veo_budget_ok,
                pairing=loan.pairing,
            )
        finally:
            await self._release(loan, serving)

    async def _borrow(self, job: Job) -> Loan | None:
        """An idle consumer for this clip, or ``None``; a failed look (the queue's count)
        only means one GPU, never a failed job."""
        if self.borrow is None:
            return None
        try:
            return await self.borrow(self, job)
        except Exception:
            log.exception("job %s: no second GPU (the look failed); one GPU", job.id)
            return None

    @staticmethod
    async def _release(loan: Loan, serving: asyncio.Task) -> None:
        """Wait briefly for the peer to hear the stop; a stuck one is ended (its runner
        restarts it), then the peer goes back to claiming jobs."""
        try:
            done, _ = await asyncio.wait({serving}, timeout=PEER_RELEASE_S)
            if not done:
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
        finally:
            loan.peer.lent = False
            loan.peer.wake()

    async def _idle(self, seconds: float) -> None:
        """Wait for a ``wake()`` (this process's front end), news from the queue (a job
        queued elsewhere), or ``seconds``, whichever comes first."""
        woken = asyncio.ensure_future(self._wake.wait())
        news = asyncio.ensure_future(self.queue.wait_for_jobs(seconds))
        try:
            await asyncio.wait({woken, news}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            if news.done() and not news.cancelled() and news.exception() is not None:
                # The database cannot listen now: wait out the interval, not a busy loop.
                log.warning("waiting for queue news failed: %s", news.exception())
                await asyncio.wait({woken}, timeout=seconds)
        finally:
            for task in (woken, news):
                task.cancel()
            await asyncio.gather(woken, news, return_exceptions=True)

    async def _between_jobs(self) -> None:
        """Expire old queued jobs, keep the data folder bounded, and take back the jobs of
        a consumer whose heartbeat stopped (another process, or another host)."""
        for job in await self.queue.expire(now=self.clock(), ttl=self.settings.limits.queue_ttl_s):
            await self.cards.tell(job, texts.expired())
        try:
            await self.upkeep.sweep_if_due()
        except Exception:  # a full disk or a locked file must not stop the queue
            log.exception("data folder sweep failed")
        await self._recover()

    async def _recover(self, *, orphaned_by: str | None = None) -> None:
        recovered = await self.queue.recover(
            now=self.clock(),
            stale_after=self.settings.worker.stale_after_s,
            max_crashes=self.settings.worker.max_crashes,
            orphaned_by=orphaned_by,
        )
        for job in recovered:
            if job.status is Status.FAILED:
                await self.cards.tell(job, texts.given_up())
            elif job.status is Status.CANCELLED:
                await self.cards.tell(job, texts.cancelled())

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

    async def _run(self, job: Job) -> None:
        """One job from claim to a terminal row (or back in the queue). Never raises."""
        log.info("→ %s (%s)", job.info(), self.worker_id)
        self._running_job_id = job.id
        self._shutdown_cancel = False
        heartbeat = asyncio.create_task(self._heartbeat(job), name=f"heartbeat-{job.id}")

        async def on_veo_operation(name: str) -> None:
            await asyncio.shield(self.queue.set_veo_operation(job.id, name))

        fetched: Path | None = None
        try:
            async with self.cards.running(job):
                photo = Path(job.photo_path)
                if job.photo_file_id and not await asyncio.to_thread(photo.exists):
                    fetched = photo = await self._fetch_photo(job)
                out_path = self.settings.data_dir / "videos" / f"{job.id}.mp4"
                await asyncio.to_thread(out_path.parent.mkdir, parents=True, exist_ok=True)
                allowed = await veo_allowance_for(
                    self.queue, self.settings, job.user_id, self.clock()
                )
                async with delivery.uploading_video(self.cards.bot, job.chat_id):
                    clip = await self._make(
                        job,
                        dataclasses.replace(request_for(job), image=photo),
                        out_path,
                        on_progress=lambda event: self.cards.report(job, event),
                        on_veo_operation=on_veo_operation,
                        resume_veo_operation=job.veo_operation,
                        veo_budget_ok=VeoBudget(allowed),
                    )
        except Cancelled as exc:
            await self._cancelled(job, exc)
        except TransientError as exc:
            await self._transient(job, exc)
        except ModelUnavailable as exc:
            # Not the photo's fault nor the user's choice: the operator has to act.
            log.error("! %s: the engine is down: %s", job.info(), exc)
            await self._fail(job, texts.engine_down(exc.user_text))
        except GeneratorError as exc:
            log.info("! %s: %s: %s", job.info(), type(exc).__name__, exc)
            await self._fail(job, texts.failed(exc.user_text))
        except asyncio.CancelledError:
            # stop() gave up on the runner: the job goes back, not counted against the user.
            await asyncio.shield(
                self.queue.requeue(job.id, now=self.clock(), worker_id=self.worker_id)
            )
            log.info("↻ job %s requeued at shutdown", job.id)
            raise
        except Exception:
            log.exception("! %s: unexpected error", job.info())
            await self._fail(job, texts.failed(GeneratorError.user_text))
        else:
            await self._deliver(job, clip)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self._running_job_id = None
            if fetched is not None:
                await asyncio.to_thread(remove_files, fetched)

    async def _fetch_photo(self, job: Job) -> Path:
        """The photo of a job queued on another host (no shared disk), fetched through the
        Bot API by its Telegram file id into this host's photos folder; removed after the run
        (the front end keeps its own copy for the buttons under the clip)."""
        target = self.settings.photos_dir / f"fetched-{job.id}-{Path(job.photo_path).name}"
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        try:
            file = await self.cards.bot.get_file(job.photo_file_id)
            await file.download_to_drive(target)
        except TelegramError as exc:
            raise TransientError(f"cannot fetch the photo from Telegram: {exc}") from exc
        log.info("%s: photo fetched from Telegram (not on this host)", job.info())
        return target

    async def _heartbeat(self, job: Job) -> None:
        """Beat every ``heartbeat_s``; also notice a cancel asked for through the database
        (from another process or host)."""
        while True:
            await asyncio.sleep(self.settings.worker.heartbeat_s)  # a timer, not synchronisation
            try:
                await self.queue.heartbeat(job.id, now=self.clock(), worker_id=self.worker_id)
                if await self.queue.cancel_requested(job.id):
                    await self.runner.cancel()
            except Exception:
                log.exception("heartbeat for job %s failed", job.id)

    # --- outcomes ---

    async def _cancelled(self, job: Job, exc: Cancelled) -> None:
        if self._shutdown_cancel:
            await asyncio.shield(
                self.queue.requeue(job.id, now=self.clock(), worker_id=self.worker_id)
            )
            log.info("↻ job %s requeued at shutdown", job.id)
            return
        done = await asyncio.shield(
            self.queue.finish(
                job.id,
                Outcome(Status.CANCELLED, cost_usd=exc.cost_usd or None),
                now=self.clock(),
                worker_id=self.worker_id,
            )
        )
        log.info("← %s cancelled", done.info())
        await self.cards.tell(done, texts.cancelled())

    async def _transient(self, job: Job, exc: TransientError) -> None:
        charge = charge_for(exc)
        if can_retry(job, charge, max_crashes=self.settings.worker.max_crashes):
            delay = retry_delay(job, exc)
            back = await asyncio.shield(
                self.queue.requeue(
                    job.id, now=self.clock(), delay_s=delay, charge=charge, worker_id=self.worker_id
                )
            )
            log.info("↻ %s: %s: %s", back.info(), type(exc).__name__, exc)
            if back.status is Status.CANCELLED:
                await self.cards.tell(back, texts.cancelled())
            return
        if charge is Charge.CRASH:
            # The engine died under this photo every time: "will be retried" is no longer true.
            log.warning("! %s crashed the GPU process too often; giving up", job.info())
            await self._fail(job, texts.given_up(), charge=charge)
            return
        log.info("! %s: %s: %s", job.info(), type(exc).__name__, exc)
        await self._fail(job, texts.failed(exc.user_text), charge=charge)

    async def _fail(self, job: Job, told: str, *, charge: Charge = Charge.NONE) -> None:
        """Record the job failed and tell its chat ``told``. The row stores that same text, so
        it says what the user read; the technical detail goes to the log before this."""
        done = await asyncio.shield(
            self.queue.finish(
                job.id,
                Outcome(Status.FAILED, error=told),
                now=self.clock(),
                charge=charge,
                worker_id=self.worker_id,
            )
        )
        log.info("← %s failed", done.info())
        await self.cards.tell(done, told)

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
                worker_id=self.worker_id,
            )
        )
        if sending.status is not Status.SENDING:
            log.info("%s changed while it ran; not delivering", sending.info())
            return
        await self.send(sending, thumbnail=video.thumbnail, seconds=clip.seconds)

    async def send(self, job: Job, *, thumbnail: Path | None, seconds: float) -> None:
        """Upload a sending job's clip and record it done (or failed: Telegram refused)."""
        if job.video_path is None:
            raise RuntimeError("broken invariant: job.video_path is not None")
        bot = self.cards.bot
        try:
            async with delivery.uploading_video(bot, job.chat_id):
                sent = await delivery.send_video(
                    bot,
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
                        worker_id=job.worker_id,
                    )
                )
        except DeliveryFailed as exc:
            # Stored even when the user blocked the bot and cannot read it; why is in the log.
            told = texts.failed(texts.delivery_failed())
            done = await asyncio.shield(
                self.queue.finish(
                    job.id,
                    Outcome(Status.FAILED, error=told),
                    now=self.clock(),
                    worker_id=job.worker_id,
                )
            )
            log.info("← %s not delivered: %s", done.info(), exc.reason)
            if exc.reason != delivery.USER_BLOCKED:
                await self.cards.tell(done, told)
            return
        log.info("← %s delivered", done.info())
        # Telegram keeps the clip (/history resends it by file id): free the disk.
        await asyncio.to_thread(remove_files, Path(job.video_path), thumbnail)
        await self.cards.delivered(job)

    async def redeliver(self, job: Job) -> None:
        """A clip made before the restart: send it once, or requeue if its file is gone."""
        path = Path(job.video_path) if job.video_path else None
        if path is None or not await asyncio.to_thread(path.exists):
            back = await asyncio.shield(
                self.queue.requeue(job.id, now=self.clock(), worker_id=job.worker_id)
            )
            log.info("↻ %s: its video is gone; making it again", back.info())
            return
        log.info("→ %s re-delivering after restart", job.info())
        thumbnail = path.with_suffix(".jpg")
        seconds = (job.heartbeat_at or self.clock()) - (job.started_at or job.created_at)
        await self.send(
            job,
            thumbnail=thumbnail if await asyncio.to_thread(thumbnail.exists) else None,
            seconds=seconds,
        )
