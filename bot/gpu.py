"""Where the clip is made: in this process (``InlineRunner``) or in a GPU child process
(``ProcessRunner``) that a crash or a CUDA error cannot take the bot down with.

Both implement ``GenerationRunner``; the worker does not know which one it has. Across the
process boundary everything is a frozen dataclass (``RunJob``, ``Started``, ``Report``,
``Finished``, ``Failed``...): the request, a ``VeoBudget`` (dollars allowed, not a callback),
progress events, the clip, and errors as an ``ErrorReport`` (an ``ErrorKind``, the user's
text, detail, and what was billed). The out-of-memory retry is the router's, not ours.
A ``ProcessRunner`` can also lend its GPU to another's clip: ``serve_peer`` (``ServePeer``)
runs the second guidance passes of a clip whose ``RunJob`` names the same ``Pairing``.

Example::

    >>> runner = ProcessRunner(settings.generator, device="1")   # CUDA device 1 only
    >>> clip = await runner.run(request, out, on_progress=print, on_veo_operation=save,
    ...                         resume_veo_operation=None, veo_budget_ok=VeoBudget(2.0))
    >>> await runner.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import multiprocessing
import os
import queue
import shutil
import socket
import subprocess
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn, Protocol

from generator import errors, logsafe
from generator.clip import Clip, Progress
from generator.config import GeneratorSettings
from generator.engines.pairing import Pairing
from generator.errors import GeneratorError, TransientError
from generator.options import Request

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]
OperationCallback = Callable[[str], Awaitable[None]]
BudgetCheck = Callable[[float], bool]


class WorkerCrashed(TransientError):
    """The GPU process died while making a clip (killed, segfault, CUDA abort)."""

    user_text = "The video engine stopped unexpectedly. Your clip will be retried."


class WorkerLost(TransientError):
    """The GPU process died before it took the job (or while starting): the job never ran,
    so the worker puts it back without counting anything against it."""

    user_text = "The video engine restarted. Your clip will start again."


@dataclass(frozen=True)
class VeoBudget:
    """A budget check that is plain data, so it can cross into the GPU process.

    ``allowed_usd`` is what may still be spent on this clip; ``None`` means no limit.
    """

    allowed_usd: float | None

    def __call__(self, cost_usd: float) -> bool:
        # A cent of slack so 2.0 - 1.6 - 0.4 (float noise) still allows a 0.40 clip.
        return self.allowed_usd is None or cost_usd <= self.allowed_usd + 1e-6


class GenerationRunner(Protocol):
    """Runs one generation at a time for the worker."""

    async def run(
        self,
        request: Request,
        out_path: Path,
        *,
        on_progress: ProgressCallback,
        on_veo_operation: OperationCallback,
        resume_veo_operation: str | None,
        veo_budget_ok: BudgetCheck | None,
    ) -> Clip:
        """Make the clip; raises ``generator.errors`` classes (``Cancelled`` after ``cancel``)."""

    async def ready(self) -> None:
        """Return once a job handed over now would be taken: a dead engine is restarted
        first. Raises ``WorkerLost`` when it cannot start."""

    async def cancel(self) -> None:
        """Ask the running generation to stop at its next step."""

    async def close(self) -> None:
        """Release the model (and the child process)."""


class ErrorKind(enum.StrEnum):
    """Which ``generator.errors`` class an error was, as data that crosses the pipe."""

    INVALID_REQUEST = "invalid-request"
    INVALID_IMAGE = "invalid-image"
    BACKEND_UNAVAILABLE = "backend-unavailable"
    BUDGET_EXCEEDED = "budget-exceeded"
    MODEL_UNAVAILABLE = "model-unavailable"
    TRANSIENT = "transient"
    RATE_LIMITED = "rate-limited"
    GENERATION_FAILED = "generation-failed"
    OUT_OF_MEMORY = "out-of-memory"
    CONTENT_FILTERED = "content-filtered"
    ENCODING_FAILED = "encoding-failed"
    CANCELLED = "cancelled"
    BUG = "bug"  # not one of ours: a library error the generator did not translate


# Most specific first: ``ErrorReport.of`` takes the first class the error is an instance of.
_ERROR_CLASSES: tuple[tuple[ErrorKind, type[GeneratorError]], ...] = (
    (ErrorKind.BUDGET_EXCEEDED, errors.BudgetExceeded),
    (ErrorKind.MODEL_UNAVAILABLE, errors.ModelUnavailable),
    (ErrorKind.BACKEND_UNAVAILABLE, errors.BackendUnavailable),
    (ErrorKind.RATE_LIMITED, errors.RateLimited),
    (ErrorKind.TRANSIENT, errors.TransientError),
    (ErrorKind.OUT_OF_MEMORY, errors.OutOfMemory),
    (ErrorKind.CONTENT_FILTERED, errors.ContentFiltered),
    (ErrorKind.ENCODING_FAILED, errors.EncodingFailed),
    (ErrorKind.GENERATION_FAILED, errors.GenerationFailed),
    (ErrorKind.INVALID_REQUEST, errors.InvalidRequest),
    (ErrorKind.INVALID_IMAGE, errors.InvalidImage),
    (ErrorKind.CANCELLED, errors.Cancelled),
)
_CLASS_OF = dict(_ERROR_CLASSES)


@dataclass(frozen=True)
class ErrorReport:
    """An error of the GPU process as plain data.

    ``detail`` is the message (and, for a ``BUG``, the traceback); ``user_text`` what the
    user may read; ``reasons`` the safety filter's; ``cost_usd`` what was billed anyway.
    """

    kind: ErrorKind
    detail: str
    user_text: str
    reasons: tuple[str, ...] = ()
    cost_usd: float = 0.0
    traceback: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> ErrorReport:
        for kind, error_class in _ERROR_CLASSES:
            if isinstance(exc, error_class):
                return cls(
                    kind=kind,
                    detail=str(exc),
                    user_text=exc.user_text,
                    reasons=exc.reasons if isinstance(exc, errors.ContentFiltered) else (),
                    cost_usd=exc.cost_usd if isinstance(exc, errors.Cancelled) else 0.0,
                )
        return cls(
            kind=ErrorKind.BUG,
            detail=f"{type(exc).__name__} in the GPU process: {exc}",
            user_text=GeneratorError.user_text,
            traceback="".join(traceback.format_exception(exc)),
        )

    def error(self) -> GeneratorError:
        """The exception the worker catches (``GenerationFailed`` for a ``BUG``)."""
        if self.kind is ErrorKind.CONTENT_FILTERED:
            return errors.ContentFiltered(
                self.detail, reasons=self.reasons, user_text=self.user_text
            )
        if self.kind is ErrorKind.CANCELLED:
            return errors.Cancelled(self.detail, cost_usd=self.cost_usd, user_text=self.user_text)
        if self.kind is ErrorKind.BUG:
            return errors.GenerationFailed(self.detail)
        return _CLASS_OF[self.kind](self.detail, user_text=self.user_text)


# --- messages over the pipe: bot -> GPU process ---


@dataclass(frozen=True)
class RunJob:
    seq: int
    request: Request
    out_path: Path
    resume_veo_operation: str | None
    budget: VeoBudget | None
    pairing: Pairing | None = None  # lead a clip shared with a peer GPU process


@dataclass(frozen=True)
class ServePeer:
    """Be the peer of another GPU process's clip for ``request`` until its leader stops."""

    seq: int
    request: Request
    pairing: Pairing


@dataclass(frozen=True)
class CancelRun:
    seq: int


@dataclass(frozen=True)
class Close:
    pass


# --- messages over the pipe: GPU process -> bot ---


@dataclass(frozen=True)
class Ready:
    """The generator is built (and warm): a job handed over now is taken."""


@dataclass(frozen=True)
class Started:
    """The child took run ``seq``: from here its death is this job's crash."""

    seq: int


@dataclass(frozen=True)
class Report:
    seq: int
    progress: Progress


@dataclass(frozen=True)
class VeoOperation:
    seq: int
    name: str


@dataclass(frozen=True)
class Finished:
    seq: int
    clip: Clip


@dataclass(frozen=True)
class Served:
    """The peer's part of a shared clip is over: it ran ``calls`` denoiser halves."""

    seq: int
    calls: int


@dataclass(frozen=True)
class Failed:
    seq: int
    error: ErrorReport


@dataclass(frozen=True)
class ChildGone:
    """Not sent by the child: the reader thread's news that the pipe closed."""


ToChild = RunJob | ServePeer | CancelRun | Close
FromChild = Ready | Started | Report | VeoOperation | Finished | Served | Failed | ChildGone


def visible_cuda_devices(env: dict[str, str] | None = None) -> list[str]:
    """The CUDA devices this machine shows the bot: ``CUDA_VISIBLE_DEVICES`` when set, else
    what ``nvidia-smi`` lists; none without NVIDIA (CPU, MPS).

    Asked of the environment and ``nvidia-smi`` rather than torch: the bot's own process must
    not create a CUDA context (hundreds of MB on the first GPU) to count the GPUs.
    """
    env = dict(os.environ) if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def free_port() -> int:
    """A loopback port nobody listens on now, for the leader of a shared clip to listen on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def consumer_devices(configured: tuple[str, ...], visible: list[str]) -> list[str | None]:
    """One entry per GPU consumer: the device its GPU process may use (``[gpu] devices``,
    else every visible CUDA device), or ``[None]``: one consumer that sees what the
    machine has (CPU, MPS, or the one GPU).

    >>> consumer_devices((), ["0", "1"]), consumer_devices((), []), consumer_devices(("1",), [])
    (['0', '1'], [None], ['1'])
    """
    if configured:
        return list(configured)
    if len(visible) > 1:
        return list(visible)
    return [None]


class InlineRunner:
    """Runs ``generator.router.Generator`` in this process (tests, CPU users who opt in).

    The generator already keeps blocking work off the loop (``asyncio.to_thread``); progress
    events raised on those threads are handed back to the loop before ``on_progress`` runs.
    """

    #: One process cannot be both sides of a shared clip: never lent as a peer.
    can_pair = False

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self._cancel = threading.Event()
        self._lock = asyncio.Lock()

    async def run(
        self,
        request: Request,
        out_path: Path,
        *,
        on_progress: ProgressCallback,
        on_veo_operation: OperationCallback,
        resume_veo_operation: str | None,
        veo_budget_ok: BudgetCheck | None,
    ) -> Clip:
        async with self._lock:
            self._cancel.clear()
            loop = asyncio.get_running_loop()
            loop_thread = threading.get_ident()

            def progress(event: Progress) -> None:
                # SVD steps report from a worker thread; the worker's state lives on the loop.
                if threading.get_ident() == loop_thread:
                    on_progress(event)
                else:
                    loop.call_soon_threadsafe(on_progress, event)

            return await self.generator.generate(
                request,
                out_path,
                on_progress=progress,
                should_cancel=self._cancel.is_set,
                veo_budget_ok=veo_budget_ok,
                on_veo_operation=on_veo_operation,
                resume_veo_operation=resume_veo_operation,
            )

    async def ready(self) -> None:
        pass  # the generator lives in this process: it is there as long as we are

    async def cancel(self) -> None:
        self._cancel.set()

    async def close(self) -> None:
        pass


# --- the GPU child process ---


def default_generator(settings: GeneratorSettings) -> Any:
    """The child's generator: ``generator.router.Generator`` with Veo credentials from env."""
    from generator.router import Generator

    return Generator(settings)


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _child_main(
    conn: Connection,
    settings: GeneratorSettings,
    factory: Callable[[GeneratorSettings], Any] = default_generator,
    warm_up: bool = False,
    device: str | None = None,
) -> None:
    """Entry point of the GPU process: build the generator once, then serve runs until closed.

    ``device`` (a CUDA index) is the only GPU this process sees: set before CUDA starts. A
    reader thread takes messages off the pipe so a ``CancelRun`` arrives while the
    generation runs; runs themselves happen on this thread, one at a time.
    """
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s gpu{'' if device is None else device} %(levelname)s %(message)s",
    )
    logsafe.install()  # HF_TOKEN and Veo keys live here too; the bot token does not
    send_lock = threading.Lock()
    cancel = threading.Event()
    jobs: queue.SimpleQueue[RunJob | ServePeer | Close] = queue.SimpleQueue()

    def send(message: FromChild) -> None:
        # Progress may come from a generator thread while the main thread sends the result.
        with send_lock:
            conn.send(message)

    def read() -> None:
        while True:
            try:
                message: ToChild = conn.recv()
            except (EOFError, OSError):
                cancel.set()  # the bot is gone: stop what runs, then exit
                jobs.put(Close())
                return
            if isinstance(message, CancelRun):
                cancel.set()
                continue
            if isinstance(message, RunJob):
                cancel.clear()  # here, in pipe order, so a later cancel is never lost
            jobs.put(message)
            if isinstance(message, Close):
                return

    threading.Thread(target=read, name="gpu-pipe-reader", daemon=True).start()
    generator = factory(settings)
    if warm_up and hasattr(generator, "warm_up") and _has_accelerator():
        # Load the model while nobody waits; on a CPU-only (Veo) machine, only if needed.
        try:
            generator.warm_up()
        except Exception as exc:  # no weights, no token: the first job says so to its user
            logging.getLogger(__name__).warning("warm-up failed (%s); the first clip retries", exc)
    send(Ready())  # the parent claims no job for this process before it hears this

    with asyncio.Runner() as runner:  # one loop for the process: clients may hold on to it
        while True:
            job = jobs.get()
            if isinstance(job, Close):
                break
            seq = job.seq
            # From here a death is this job's business (a crash); before it, nobody's.
            send(Started(seq))
            if isinstance(job, ServePeer):
                try:
                    calls = runner.run(generator.serve_peer(job.request, job.pairing))
                except Exception as exc:
                    send(Failed(seq, ErrorReport.of(exc)))
                else:
                    send(Served(seq, calls))
                continue
            # Only a shared clip names its pairing: generators without one need not know it.
            shared = {"pairing": job.pairing} if job.pairing is not None else {}

            async def veo_operation(name: str, seq: int = seq) -> None:
                send(VeoOperation(seq, name))

            def progress(event: Progress, seq: int = seq) -> None:
                send(Report(seq, event))

            try:
                clip = runner.run(
                    generator.generate(
                        job.request,
                        job.out_path,
                        on_progress=progress,
                        should_cancel=cancel.is_set,
                        veo_budget_ok=job.budget,
                        on_veo_operation=veo_operation,
                        resume_veo_operation=job.resume_veo_operation,
                        **shared,
                    )
                )
            except Exception as exc:
                send(Failed(seq, ErrorReport.of(exc)))
            else:
                send(Finished(seq, clip))
    conn.close()


class ProcessRunner:
    """Makes clips in a child process (spawned, so CUDA starts clean), kept warm between jobs.

    The child starts on the first ``run`` (or ``start``) and loads each engine once; it says
    ``Ready`` when it can take a job and ``Started`` when it takes one. ``ready`` restarts a
    child that died while idle and waits for its ``Ready``, so the worker claims no job for a
    dead engine. If the child dies after ``Started``, ``run`` raises ``WorkerCrashed`` (the
    job's crash); before it, ``WorkerLost`` (the job never ran).

    Args:
        settings: the generator settings the child builds its ``Generator`` from.
        generator_factory: module-level callable ``(settings) -> generator`` run in the
            child (pickled by qualified name); ``default_generator`` when omitted.
        warm_up: load the local engine auto uses as soon as the child starts.
        device: the CUDA device index the child may use (``CUDA_VISIBLE_DEVICES``);
            ``None`` leaves the environment as it is (CPU, MPS, or one GPU).
    """

    #: Its GPU process can serve as the peer of another's clip (``serve_peer``).
    can_pair = True

    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        generator_factory: Callable[[GeneratorSettings], Any] = default_generator,
        warm_up: bool = False,
        device: str | None = None,
    ) -> None:
        self.settings = settings
        self.generator_factory = generator_factory
        self.warm_up = warm_up
        self.device = device
        self._ctx = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._inbox: asyncio.Queue[FromChild] | None = None
        self._seq = itertools.count(1)
        self._running_seq: int | None = None
        self._child_ready = False  # the current child said Ready
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id while it lives (tests kill it to simulate a crash)."""
        return self._process.pid if self._process is not None else None

    @property
    def engine_ready(self) -> bool:
        """Whether a live child said ``Ready`` and nothing runs on it now."""
        alive = self._process is not None and self._process.is_alive()
        return alive and self._child_ready and not self._lock.locked()

    async def start(self) -> None:
        """Start the child now instead of on the first run."""
        if self._process is None or not self._process.is_alive():
            await self._spawn()

    async def _spawn(self) -> None:
        await self._kill()
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child_main,
            args=(child, self.settings, self.generator_factory, self.warm_up, self.device),
            name="gpu" if self.device is None else f"gpu{self.device}",
            daemon=True,
        )
        # Spawning writes and execs a new interpreter: seconds we keep off the loop.
        await asyncio.to_thread(process.start)
        child.close()  # only the child holds its end now, so its death reads as EOF here
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[FromChild] = asyncio.Queue()

        def read() -> None:
            while True:
                try:
                    message: FromChild = parent.recv()
                except (EOFError, OSError):
                    message = ChildGone()
                with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                    loop.call_soon_threadsafe(inbox.put_nowait, message)
                if isinstance(message, ChildGone):
                    return

        threading.Thread(target=read, name="gpu-result-reader", daemon=True).start()
        self._process, self._conn, self._inbox = process, parent, inbox
        log.info("GPU process %s started (device %s)", process.pid, self.device or "default")

    async def ready(self) -> None:
        """Return once a live child has said ``Ready`` (restarting one that died while idle).

        Raises:
            WorkerLost: the child died before it was ready (it cannot start).
        """
        async with self._lock:
            await self._ensure_ready()

    async def _ensure_ready(self) -> None:
        while True:
            if self._process is None or not self._process.is_alive():
                await self._spawn()
            if self._inbox is None:
                raise RuntimeError("broken invariant: self._inbox is not None")
            inbox = self._inbox
            # Between runs nobody else reads the inbox: what waits there is news of the
            # child (its Ready, its death, or the tail of a run nobody waits for).
            while not (self._child_ready and inbox.empty()):
                message = await inbox.get()
                if isinstance(message, Ready):
                    self._child_ready = True
                elif isinstance(message, ChildGone):
                    break
            else:
                return
            pid, starting = self.pid, not self._child_ready
            code = self._process.exitcode if self._process else None
            await self._kill()
            if starting:  # it never got as far as Ready: starting again would end the same
                raise WorkerLost(f"the GPU process {pid} exited while starting (code {code})")
            log.warning("GPU process %s died while idle (exit code %s); restarting it", pid, code)

    async def _died(self, started: bool, what: str) -> NoReturn:
        """The child died during a run (``what``): end it and say whose fault that is.

        Raises:
            WorkerLost: it died before it took the run (killed just before, or dying while
                we handed it over): not the job's crash.
            WorkerCrashed: it died after ``Started``: the job's crash.
        """
        code = self._process.exitcode if self._process else None
        await self._kill()
        if not started:
            raise WorkerLost(f"the GPU process died before {what} (exit {code})")
        raise WorkerCrashed(f"the GPU process died during {what} (exit code {code})")

    async def _kill(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = self._inbox = None
        self._child_ready = False
        if process is None:
            return
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, 10)
        if conn is not None:
            conn.close()

    async def run(
        self,
        request: Request,
        out_path: Path,
        *,
        on_progress: ProgressCallback,
        on_veo_operation: OperationCallback,
        resume_veo_operation: str | None,
        veo_budget_ok: BudgetCheck | None,
        pairing: Pairing | None = None,
    ) -> Clip:
        """Make the clip in the child (sharing its guidance passes with the peer of
        ``pairing``, which another runner's ``serve_peer`` serves)."""
        if veo_budget_ok is not None and not isinstance(veo_budget_ok, VeoBudget):
            raise TypeError("ProcessRunner needs a VeoBudget (data), not an arbitrary callable")
        async with self._lock:
            await self._ensure_ready()
            if self._conn is None or self._inbox is None:
                raise RuntimeError(
                    "broken invariant: self._conn is not None and self._inbox is not None"
                )
            seq = next(self._seq)
            inbox = self._inbox
            started = False
            try:
                self._conn.send(
                    RunJob(seq, request, out_path, resume_veo_operation, veo_budget_ok, pairing)
                )
            except OSError:
                pass  # the child is already gone: its ChildGone is on the way, and says so
            self._running_seq = seq
            try:
                while True:
                    message = await inbox.get()
                    if isinstance(message, ChildGone):
                        await self._died(started, "the job")
                    if isinstance(message, Ready) or message.seq != seq:
                        continue  # left over from a run this side stopped waiting for
                    if isinstance(message, Started):
                        started = True
                    elif isinstance(message, Report):
                        on_progress(message.progress)
                    elif isinstance(message, VeoOperation):
                        await on_veo_operation(message.name)
                    elif isinstance(message, Finished):
                        return message.clip
                    elif isinstance(message, Failed):
                        report = message.error
                        if report.kind is ErrorKind.BUG:
                            log.error("GPU process raised:\n%s", report.traceback)
                            await self._kill()  # an untranslated error may leave CUDA unusable
                        raise report.error()
            except asyncio.CancelledError:
                # Our caller gave up waiting: stop the child's work too, so the GPU is free.
                with contextlib.suppress(OSError, ValueError):
                    if self._conn is not None:
                        self._conn.send(CancelRun(seq))
                raise
            finally:
                self._running_seq = None

    async def serve_peer(self, request: Request, pairing: Pairing) -> int:
        """Serve as the peer of another runner's clip for ``request`` until its leader stops;
        returns the denoiser calls served.

        Cancelling this (the leader gave up waiting) ends the child: a peer half way through
        a step cannot be stopped otherwise, and the next ``ready`` starts a fresh one.

        Raises:
            WorkerLost, WorkerCrashed: the child died before, or while, serving.
            PeerLost (as ``TransientError``) and the generator's other errors.
        """
        async with self._lock:
            await self._ensure_ready()
            if self._conn is None or self._inbox is None:
                raise RuntimeError("broken invariant: a ready child has a pipe and an inbox")
            seq = next(self._seq)
            inbox = self._inbox
            started = False
            with contextlib.suppress(OSError):  # gone already: its ChildGone says so below
                self._conn.send(ServePeer(seq, request, pairing))
            try:
                while True:
                    message = await inbox.get()
                    if isinstance(message, ChildGone):
                        await self._died(started, "serving")
                    if isinstance(message, Ready) or message.seq != seq:
                        continue
                    if isinstance(message, Started):
                        started = True
                    elif isinstance(message, Served):
                        return message.calls
                    elif isinstance(message, Failed):
                        raise message.error.error()
            except asyncio.CancelledError:
                await self._kill()
                raise

    async def cancel(self) -> None:
        if self._running_seq is not None and self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(CancelRun(self._running_seq))

    async def close(self) -> None:
        process, conn = self._process, self._conn
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if conn is not None:
                conn.send(CancelRun(self._running_seq or 0))
                conn.send(Close())
        await asyncio.to_thread(process.join, 10)
        await self._kill()


__all__ = [
    "ErrorKind",
    "ErrorReport",
    "GenerationRunner",
    "InlineRunner",
    "ProcessRunner",
    "VeoBudget",
    "WorkerCrashed",
    "WorkerLost",
    "consumer_devices",
    "default_generator",
    "visible_cuda_devices",
]
