"""The GPU runners: a real child process makes clips, survives being killed, and carries
progress, Veo operations, budgets, cancel and errors across the process boundary."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from bot.gpu import InlineRunner, ProcessRunner, VeoBudget, WorkerCrashed
from generator.clip import Clip, Progress, VideoInfo
from generator.config import GeneratorSettings
from generator.engines import Engine
from generator.engines.catalog import engine_specs
from generator.errors import BudgetExceeded, Cancelled, ContentFiltered, OutOfMemory
from generator.options import Backend, Profile, Request
from generator.router import Generator
from tests.support.images import write_photo

HANG = 1  # seed that makes the scripted generator run until cancelled or killed
FILTERED = 2  # seed that makes it raise ContentFiltered
OOM = 3  # seed that runs out of memory unless the low-vram profile is asked for


class ScriptedGenerator:
    """A generator whose behaviour the request's seed picks; runs in the child process.

    It writes a real file and reports real progress, but skips the model, so the process
    plumbing is tested apart from SVD's speed.
    """

    def __init__(self, settings: GeneratorSettings) -> None:
        self.settings = settings

    async def generate(
        self,
        request: Request,
        out_path: Path,
        *,
        on_progress,
        should_cancel,
        veo_budget_ok,
        on_veo_operation,
        resume_veo_operation,
    ) -> Clip:
        on_progress(Progress("denoising", 1, 2, backend=Backend.SVD))
        if request.seed == HANG:
            # Stands in for denoising steps, on a thread as the real SVD runs.
            await asyncio.to_thread(_wait_for_cancel, should_cancel)
            raise Cancelled("stopped at step 2")
        if request.seed == FILTERED:
            raise ContentFiltered("filtered", reasons=("celebrity",))
        if request.seed == OOM and request.profile is not Profile.LOW_VRAM:
            raise OutOfMemory("CUDA out of memory")
        if request.backend is Backend.VEO:
            if veo_budget_ok is not None and not veo_budget_ok(3.2):
                raise BudgetExceeded("budget says no")
            await on_veo_operation(resume_veo_operation or "operations/new-1")
        size = await asyncio.to_thread(_write_clip, out_path)
        info = VideoInfo(out_path, 32, 32, 7.0, 2, 2 / 7, size)
        return Clip(info, Backend.VEO if request.backend is Backend.VEO else Backend.SVD, 5)


def _wait_for_cancel(should_cancel) -> None:
    while not should_cancel():
        time.sleep(0.01)


def _write_clip(out_path: Path) -> int:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(f"clip pid={os.getpid()}".encode())
    return out_path.stat().st_size


def scripted_factory(settings: GeneratorSettings) -> ScriptedGenerator:
    return ScriptedGenerator(settings)


@pytest.fixture
async def runner():
    runner = ProcessRunner(GeneratorSettings(), generator_factory=scripted_factory)
    yield runner
    await runner.close()


async def _noop_operation(name: str) -> None:
    pass


def run(runner, tmp_path: Path, *, budget=None, on_progress=lambda p: None, **request):
    """``runner.run`` for a photo in ``tmp_path``, nothing resumed, no operation to store."""
    return runner.run(
        Request(image=tmp_path / "p.jpg", **request),
        tmp_path / "out.mp4",
        on_progress=on_progress,
        on_veo_operation=_noop_operation,
        resume_veo_operation=None,
        veo_budget_ok=budget,
    )


async def start_hanging_run(runner, tmp_path: Path) -> asyncio.Task:
    """A run that hangs after its first progress event (until cancelled or killed)."""
    started = asyncio.Event()
    task = asyncio.create_task(
        run(runner, tmp_path, seed=HANG, on_progress=lambda p: started.set())
    )
    await started.wait()
    return task


async def test_child_makes_clip_and_reports_progress(runner: ProcessRunner, tmp_path: Path):
    events: list[Progress] = []
    operations: list[str] = []

    async def saved(name: str) -> None:
        operations.append(name)

    clip = await runner.run(
        Request(image=tmp_path / "p.jpg", backend=Backend.VEO),
        tmp_path / "out.mp4",
        on_progress=events.append,
        on_veo_operation=saved,
        resume_veo_operation="operations/old-7",
        veo_budget_ok=VeoBudget(5.0),
    )
    assert clip.backend is Backend.VEO
    assert clip.path.read_bytes() == f"clip pid={runner.pid}".encode()  # made in the child
    assert runner.pid != os.getpid()
    assert events == [Progress("denoising", 1, 2, backend=Backend.SVD)]
    assert operations == ["operations/old-7"]  # resumed, not resubmitted


async def test_budget_refusal_comes_back_as_budget_exceeded(runner: ProcessRunner, tmp_path):
    with pytest.raises(BudgetExceeded) as caught:
        await run(runner, tmp_path, backend=Backend.VEO, budget=VeoBudget(1.0))
    assert caught.value.user_text == BudgetExceeded.user_text


async def test_error_class_and_details_cross_the_boundary(runner: ProcessRunner, tmp_path):
    with pytest.raises(ContentFiltered) as caught:
        await run(runner, tmp_path, seed=FILTERED)
    assert caught.value.reasons == ("celebrity",)
    assert caught.value.user_text == ContentFiltered.user_text


async def test_cancel_stops_the_running_generation(runner: ProcessRunner, tmp_path: Path):
    hanging = await start_hanging_run(runner, tmp_path)
    await runner.cancel()
    with pytest.raises(Cancelled):
        await hanging


async def test_killed_child_raises_worker_crashed_and_next_run_restarts(
    runner: ProcessRunner, tmp_path: Path
):
    hanging = await start_hanging_run(runner, tmp_path)
    dead = runner.pid
    assert dead is not None
    os.kill(dead, signal.SIGKILL)
    with pytest.raises(WorkerCrashed):
        await hanging

    clip = await run(runner, tmp_path)
    assert runner.pid not in (None, dead)
    assert clip.path.read_bytes() == f"clip pid={runner.pid}".encode()


async def test_out_of_memory_crosses_the_boundary_without_a_retry_of_its_own(
    runner: ProcessRunner, tmp_path: Path
):
    await runner.start()
    first = runner.pid
    with pytest.raises(OutOfMemory):  # the router's retry is the only one
        await run(runner, tmp_path, seed=OOM)
    assert runner.pid == first  # a translated error leaves the warm child as it is


class OutOfMemoryEngine(Engine):
    """An SVD engine that runs out of memory in every profile, counting its attempts."""

    backend = Backend.SVD

    def __init__(self, spec) -> None:
        self.spec = spec
        self.profiles: list[Profile | None] = []

    @property
    def loaded(self) -> bool:
        return True

    def load(self, model=None, device=None) -> None:
        pass

    def generate(self, photo, request, progress=None, cancel=None, pairing=None):
        self.profiles.append(request.profile)
        raise OutOfMemory("CUDA out of memory")

    def unload(self) -> None:
        pass


async def test_a_job_out_of_memory_makes_two_attempts_the_second_in_low_vram(tmp_path: Path):
    settings = GeneratorSettings()
    engine = OutOfMemoryEngine(engine_specs(settings)[Backend.SVD])
    generator = Generator(settings, engines={Backend.SVD: engine}, total_vram=lambda: None)
    write_photo(tmp_path / "p.jpg", (48, 32))

    with pytest.raises(OutOfMemory):
        await run(InlineRunner(generator), tmp_path, backend=Backend.SVD)

    assert engine.profiles == [None, Profile.LOW_VRAM]


async def test_process_runner_refuses_a_budget_callback_it_cannot_send(runner, tmp_path):
    with pytest.raises(TypeError):
        await run(runner, tmp_path, budget=lambda cost: True)


async def test_inline_runner_cancel(tmp_path: Path):
    runner = InlineRunner(ScriptedGenerator(GeneratorSettings()))
    assert (await run(runner, tmp_path)).path.exists()

    hanging = await start_hanging_run(runner, tmp_path)
    await runner.cancel()
    with pytest.raises(Cancelled):
        await hanging


def test_veo_budget_is_data():
    assert VeoBudget(None)(100.0)
    assert VeoBudget(0.8)(0.8)
    assert not VeoBudget(0.79)(0.8)
