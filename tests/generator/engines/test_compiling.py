"""A compile behind clips never runs beside the clip that starts it, nor one right after load."""

from __future__ import annotations

import threading
from typing import Any

import torch

from generator.engines.compiling import BackgroundCompile


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class PausePoint(threading.Event):
    """The side thread's pause: ``reached`` is set once someone waits here while it is clear,
    so a test knows the side thread went as far as it may."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.reached = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.reached.set()
        return super().wait(timeout)


def watched_job() -> tuple[BackgroundCompile, Doubler, PausePoint]:
    block = Doubler()
    job = BackgroundCompile([block], backend="eager", name="test compile")
    pause = PausePoint()
    job._idle = pause  # the event serving() clears; watched so the test needs no sleeps
    return job, block, pause


def one_pass(block: Doubler, clip: threading.Event, seen: list[tuple[str, bool]]) -> Any:
    """What an engine's exercise does: some uncompiled work, then the compiled block."""

    def work() -> None:
        seen.append(("uncompiled part", clip.is_set()))
        block(torch.ones(2))
        seen.append(("compiled block", clip.is_set()))

    return work


def test_a_compile_a_clip_starts_begins_after_that_clip() -> None:
    job, block, pause = watched_job()
    clip = threading.Event()  # set while the user's clip runs
    seen: list[tuple[str, bool]] = []

    with job.serving():
        clip.set()
        assert job.start([("shape", one_pass(block, clip, seen))], inference=True)
        assert pause.reached.wait(30)  # the side thread stopped where it pauses
        assert seen == []  # nothing of the compile's pass ran beside the clip
        clip.clear()

    assert job.wait(30) and job.ready("shape") and not job.errors
    assert seen == [("uncompiled part", False), ("compiled block", False)]


def test_a_compile_started_at_load_lets_a_clip_that_comes_at_once_run_alone() -> None:
    job, block, pause = watched_job()
    clip = threading.Event()
    seen: list[tuple[str, bool]] = []

    # Nothing is served yet (the engine has just loaded); a clip comes within the grace.
    assert job.start([("shape", one_pass(block, clip, seen))], inference=True, grace_s=600)
    with job.serving():
        clip.set()
        assert pause.reached.wait(30)
        assert seen == []
        clip.clear()

    assert job.wait(30) and job.ready("shape")
    assert seen == [("uncompiled part", False), ("compiled block", False)]


def test_with_no_clip_the_compile_starts_when_the_grace_ends() -> None:
    job, block, _pause = watched_job()
    seen: list[tuple[str, bool]] = []

    assert job.start(
        [("shape", one_pass(block, threading.Event(), seen))], inference=True, grace_s=0.01
    )

    assert job.wait(30) and job.ready("shape")  # nobody entered serving(): no hang
    assert seen == [("uncompiled part", False), ("compiled block", False)]


def test_a_clip_between_two_shapes_holds_the_second_one_back() -> None:
    job, block, pause = watched_job()
    clip = threading.Event()
    seen: list[tuple[str, bool]] = []
    first_done = threading.Event()
    go_on = threading.Event()

    def first() -> None:
        block(torch.ones(2))
        first_done.set()
        go_on.wait(30)  # the clip starts while the first shape is still being finished

    assert job.start([("a", first), ("b", one_pass(block, clip, seen))], inference=True)
    assert first_done.wait(30)
    with job.serving():
        clip.set()
        go_on.set()
        assert pause.reached.wait(30)  # stopped before the second shape's pass
        assert seen == []
        clip.clear()

    assert job.wait(30) and job.ready("a") and job.ready("b")
    assert seen == [("uncompiled part", False), ("compiled block", False)]
