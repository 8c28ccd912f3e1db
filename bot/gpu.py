"""Where the clip is made: in this process (``InlineRunner``) or in a GPU child process
(``ProcessRunner``) that a crash or a CUDA error cannot take the bot down with.

Both implement ``GenerationRunner``; the worker does not know which one it has. Across the
process boundary everything is data: the request, a ``VeoBudget`` (dollars allowed, not a
callback), progress events, the clip, and errors as (class name, message, user text, extras).

Example::

    >>> runner = ProcessRunner(settings.generator)
    >>> clip = await runner.run(request, out, on_progress=print, on_veo_operation=save,
    ...                         resume_veo_operation=None, veo_budget_ok=VeoBudget(2.0))
    >>> await runner.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import pickle
import queue
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import generator.errors as gen_errors
from generator import logsafe
from generator.clip import Clip, Progress
from generator.config import GeneratorSettings
from generator.errors import GenerationFailed, GeneratorError, OutOfMemory, TransientError
from generator.options import Profile, Request

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


def _low_vram(request: Request) -> Request | None:
    """The request to retry after ``OutOfMemory``, or ``None`` if it already was low-VRAM."""
    if request.profile is Profile.LOW_VRAM:
        return None
    return dataclasses.replace(request, profile=Profile.LOW_VRAM)


class InlineRunner:
    """Runs ``generator.router.Generator`` in this process (tests, CPU users who opt in).

    The generator already keeps blocking work off the loop (``asyncio.to_thread``); progress
    events raised on those threads are handed back to the loop before ``on_progress`` runs.
    """

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

            async def attempt(req: Request) -> Clip:
                return await self.generator.generate(
                    req,
                    out_path,
                    on_progress=progress,
                    should_cancel=self._cancel.is_set,
                    veo_budget_ok=veo_budget_ok,
                    on_veo_operation=on_veo_operation,
                    resume_veo_operation=resume_veo_operation,
                )

            try:
                return await attempt(request)
            except OutOfMemory:
                retry = _low_vram(request)
                if retry is None:
                    raise
                log.warning("out of GPU memory; retrying once with the low-vram profile")
                return await attempt(retry)

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


def _error_message(exc: BaseException) -> tuple:
    """An exception as picklable data: (class name, message, user text, extra attributes)."""
    extra = {}
    for key, value in vars(exc).items():
        if key == "user_text":
            continue
        try:
            pickle.dumps(value)
        except Exception:  # an attribute holding a library object: drop it, keep the rest
            continue
        extra[key] = value
    if not isinstance(exc, GeneratorError):
        extra["traceback"] = "".join(traceback.format_exception(exc))
    user_text = exc.user_text if isinstance(exc, GeneratorError) else None
    return type(exc).__name__, str(exc), user_text, extra


def _rebuild_error(name: str, message: str, user_text: str | None, extra: dict) -> Exception:
    """The parent's copy of an error the child raised: the same ``generator.errors`` class."""
    cls = getattr(gen_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, GeneratorError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        vars(exc).update(extra)
        if user_text is not None:
            exc.user_text = user_text
        return exc
    # Not one of ours: a bug or a library error the generator did not translate.
    return GenerationFailed(f"{name} in the GPU process: {message}")


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _child_main(
    conn: Connection,
    settings: GeneratorSettings,
    factory: Callable[[GeneratorSettings], Any] = default_generator,
    warm_up: bool = False,
) -> None:
    """Entry point of the GPU process: build the generator once, then serve runs until closed.

    A reader thread takes messages off the pipe so a ("cancel", seq) arrives while the
    generation runs; runs themselves happen on this thread, one at a time.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpu %(levelname)s %(message)s")
    logsafe.install()  # HF_TOKEN and Veo keys live here too; the bot token does not
    send_lock = threading.Lock()
    cancel = threading.Event()
    jobs: queue.SimpleQueue[tuple] = queue.SimpleQueue()

    def send(message: tuple) -> None:
        # Progress may come from a generator thread while the main thread sends "done".
        with send_lock:
            conn.send(message)

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                cancel.set()  # the bot is gone: stop what runs, then exit
                jobs.put(("close",))
                return
            if message[0] == "cancel":
                cancel.set()
            else:
                if message[0] == "run":
                    cancel.clear()  # here, in pipe order, so a later cancel is never lost
                jobs.put(message)
                if message[0] == "close":
                    return

    threading.Thread(target=read, name="gpu-pipe-reader", daemon=True).start()
    generator = factory(settings)
    if warm_up and hasattr(generator, "warm_up") and _has_accelerator():
        # Load the model while nobody waits; on a CPU-only (Veo) machine, only if needed.
        try:
            generator.warm_up()
        except Exception as exc:  # no weights, no token: the first job says so to its user
            logging.getLogger(__name__).warning("warm-up failed (%s); the first clip retries", exc)
    send(("ready", 0))  # the parent claims no job for this process before it hears this

    with asyncio.Runner() as runner:  # one loop for the process: clients may hold on to it
        while True:
            message = jobs.get()
            if message[0] == "close":
                break
            _, seq, request, out_path, resume, budget = message
            # From here a death is this job's business (a crash); before it, nobody's.
            send(("started", seq))

            async def veo_operation(name: str, seq: int = seq) -> None:
                send(("veo_operation", seq, name))

            def progress(event: Progress, seq: int = seq) -> None:
                send(("progress", seq, event))

            try:
                clip = runner.run(
                    generator.generate(
                        request,
                        out_path,
                        on_progress=progress,
                        should_cancel=cancel.is_set,
                        veo_budget_ok=budget,
                        on_veo_operation=veo_operation,
                        resume_veo_operation=resume,
                    )
                )
            except Exception as exc:
                send(("error", seq, *_error_message(exc)))
            else:
                send(("done", seq, clip))
    conn.close()


class ProcessRunner:
    """Makes clips in a child process (spawned, so CUDA starts clean), kept warm between jobs.

    The child starts on the first ``run`` (or ``start``) and loads each engine once; it says
    "ready" when it can take a job and "started" when it takes one. ``ready`` restarts a
    child that died while idle and waits for its "ready", so the worker claims no job for a
    dead engine. If the child dies after "started", ``run`` raises ``WorkerCrashed`` (the
    job's crash); before it, ``WorkerLost`` (the job never ran). ``OutOfMemory`` is retried
    once in a fresh child with the low-VRAM profile.

    Args:
        settings: the generator settings the child builds its ``Generator`` from.
        generator_factory: module-level callable ``(settings) -> generator`` run in the
            child (pickled by qualified name); ``default_generator`` when omitted.
        warm_up: load the local engine auto uses as soon as the child starts.
    """

    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        generator_factory: Callable[[GeneratorSettings], Any] = default_generator,
        warm_up: bool = False,
    ) -> None:
        self.settings = settings
        self.generator_factory = generator_factory
        self.warm_up = warm_up
        self._ctx = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._inbox: asyncio.Queue[tuple] | None = None
        self._seq = itertools.count(1)
        self._running_seq: int | None = None
        self._child_ready = False  # the current child said "ready"
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id while it lives (tests kill it to simulate a crash)."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the child now instead of on the first run."""
        if self._process is None or not self._process.is_alive():
            await self._spawn()

    async def _spawn(self) -> None:
        await self._kill()
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child_main,
            args=(child, self.settings, self.generator_factory, self.warm_up),
            name="gpu",
            daemon=True,
        )
        # Spawning writes and execs a new interpreter: seconds we keep off the loop.
        await asyncio.to_thread(process.start)
        child.close()  # only the child holds its end now, so its death reads as EOF here
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple] = asyncio.Queue()

        def read() -> None:
            while True:
                try:
                    message = parent.recv()
                except (EOFError, OSError):
                    message = ("eof",)
                with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                    loop.call_soon_threadsafe(inbox.put_nowait, message)
                if message[0] == "eof":
                    return

        threading.Thread(target=read, name="gpu-result-reader", daemon=True).start()
        self._process, self._conn, self._inbox = process, parent, inbox
        log.info("GPU process %s started", process.pid)

    async def ready(self) -> None:
        """Return once a live child has said "ready" (restarting one that died while idle).

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
            # child (its "ready", its death, or the tail of a run nobody waits for).
            while not (self._child_ready and inbox.empty()):
                message = await inbox.get()
                if message[0] == "ready":
                    self._child_ready = True
                elif message[0] == "eof":
                    break
            else:
                return
            pid, starting = self.pid, not self._child_ready
            code = self._process.exitcode if self._process else None
            await self._kill()
            if starting:  # it never got as far as "ready": starting again would end the same
                raise WorkerLost(f"the GPU process {pid} exited while starting (code {code})")
            log.warning("GPU process %s died while idle (exit code %s); restarting it", pid, code)

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
    ) -> Clip:
        if veo_budget_ok is not None and not isinstance(veo_budget_ok, VeoBudget):
            raise TypeError("ProcessRunner needs a VeoBudget (data), not an arbitrary callable")
        async with self._lock:
            try:
                return await self._run_once(
                    request,
                    out_path,
                    on_progress,
                    on_veo_operation,
                    resume_veo_operation,
                    veo_budget_ok,
                )
            except OutOfMemory:
                retry = _low_vram(request)
                if retry is None:
                    raise
                # A fresh process gives back every byte the failed attempt fragmented.
                log.warning("out of GPU memory; restarting the GPU process in low-vram")
                await self._kill()
                return await self._run_once(
                    retry,
                    out_path,
                    on_progress,
                    on_veo_operation,
                    resume_veo_operation,
                    veo_budget_ok,
                )

    async def _run_once(
        self,
        request: Request,
        out_path: Path,
        on_progress: ProgressCallback,
        on_veo_operation: OperationCallback,
        resume: str | None,
        budget: VeoBudget | None,
    ) -> Clip:
        await self._ensure_ready()
        if self._conn is None or self._inbox is None:
            raise RuntimeError(
                "broken invariant: self._conn is not None and self._inbox is not None"
            )
        seq = next(self._seq)
        inbox = self._inbox
        started = False
        try:
            self._conn.send(("run", seq, request, out_path, resume, budget))
        except OSError:
            pass  # the child is already gone: its "eof" is on the way, and says so below
        self._running_seq = seq
        try:
            while True:
                message = await inbox.get()
                kind = message[0]
                if kind == "eof":
                    code = self._process.exitcode if self._process else None
                    await self._kill()
                    if not started:
                        # Died before it took the job (killed just before, or dying while
                        # we handed it over): not this job's crash.
                        raise WorkerLost(f"the GPU process died before the job (exit {code})")
                    raise WorkerCrashed(f"the GPU process died (exit code {code})")
                if message[1] != seq:
                    continue  # left over from a run this side stopped waiting for
                if kind == "started":
                    started = True
                elif kind == "progress":
                    on_progress(message[2])
                elif kind == "veo_operation":
                    await on_veo_operation(message[2])
                elif kind == "done":
                    return message[2]
                elif kind == "error":
                    _, _, name, text, user_text, extra = message
                    exc = _rebuild_error(name, text, user_text, extra)
                    if "traceback" in extra:
                        log.error("GPU process raised %s:\n%s", name, extra["traceback"])
                        await self._kill()  # an untranslated error may leave CUDA unusable
                    raise exc
        except asyncio.CancelledError:
            # Our caller gave up waiting: stop the child's work too, so the GPU is free.
            with contextlib.suppress(OSError, ValueError):
                if self._conn is not None:
                    self._conn.send(("cancel", seq))
            raise
        finally:
            self._running_seq = None

    async def cancel(self) -> None:
        if self._running_seq is not None and self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("cancel", self._running_seq))

    async def close(self) -> None:
        process, conn = self._process, self._conn
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if conn is not None:
                conn.send(("cancel", self._running_seq or 0))
                conn.send(("close",))
        await asyncio.to_thread(process.join, 10)
        await self._kill()


__all__ = [
    "GenerationRunner",
    "InlineRunner",
    "ProcessRunner",
    "VeoBudget",
    "WorkerCrashed",
    "WorkerLost",
    "default_generator",
]
