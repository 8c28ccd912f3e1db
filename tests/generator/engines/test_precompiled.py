"""Compiled block graphs saved to disk: a restart runs compiled at once, and a stale graph is
never used for blocks it was not made for."""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from generator.engines import precompiled
from generator.engines.precompiled import PrecompiledBlocks, call_signature, module_fingerprint
from tests.support.graphs import saveable_eager

SHAPE = ("clip", 4, 8)


class Block(torch.nn.Module):
    def __init__(self, width: int, scale: float = 2.0) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)
        self.scale = scale

    def forward(self, x: torch.Tensor, *, gate: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.nn.functional.gelu(self.proj(x)) * self.scale
        return y if gate is None else y * gate


def make_blocks(seed: int) -> list[Block]:
    torch.manual_seed(seed)
    return [Block(8), Block(8), Block(16)]


def inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(3, 8, generator=g),
        torch.randn(3, 8, generator=g),
        torch.randn(3, 16, generator=g),
    ]


def run(blocks: list[Block]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [b(x) for b, x in zip(blocks, inputs(), strict=True)]


def compiled_job(blocks: list[Block], folder: Path) -> PrecompiledBlocks:
    job = PrecompiledBlocks(blocks, folder=folder, backend=saveable_eager, name="test graphs")
    assert job.start([(SHAPE, lambda: run(blocks))], inference=True)
    assert job.wait(120) and not job.errors, job.errors
    return job


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, any compile fails the test: only saved graphs may be used."""

    def refuse(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("compiled after a restart")

    monkeypatch.setattr(torch, "compile", refuse)


def test_blocks_alike_share_one_saved_graph_and_a_restart_runs_them_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = compiled_job(make_blocks(0), tmp_path)
    assert first.saved_files == 2  # the two width-8 blocks share a graph
    assert first.use(SHAPE)

    restarted = make_blocks(7)  # a new process: other objects, other weights
    expected = run(restarted)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled on restart"))
    job = PrecompiledBlocks(restarted, folder=tmp_path, backend=saveable_eager)

    assert job.preload(SHAPE) and job.use(SHAPE)
    got = run(restarted)

    assert job.loaded_files == 2
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)  # each block ran with its own weights


def test_a_block_changed_since_the_save_compiles_again(tmp_path: Path) -> None:
    compiled_job(make_blocks(0), tmp_path)
    changed = make_blocks(0)
    changed[0].scale = 3.0  # a setting the saved graph baked in

    job = PrecompiledBlocks(changed, folder=tmp_path, backend=saveable_eager)

    assert not job.preload(SHAPE)
    assert job.start([(SHAPE, lambda: run(changed))], inference=True)
    assert job.wait(120) and not job.errors and job.use(SHAPE)
    assert job.saved_files == 1 and job.loaded_files == 2  # only the changed block compiles
    expected = [b(x) for b, x in zip(copy.deepcopy(changed), inputs(), strict=True)]
    for g, e in zip(run(changed), expected, strict=True):
        torch.testing.assert_close(g, e)


def test_an_unreadable_graph_file_is_compiled_and_replaced(tmp_path: Path) -> None:
    compiled_job(make_blocks(0), tmp_path)
    for graph in tmp_path.glob("*.graph"):
        graph.write_bytes(b"not a graph")
    blocks = make_blocks(3)
    job = PrecompiledBlocks(blocks, folder=tmp_path, backend=saveable_eager)

    assert not job.preload(SHAPE)
    assert job.start([(SHAPE, lambda: run(blocks))], inference=True)
    assert job.wait(120) and not job.errors and job.use(SHAPE)

    assert job.saved_files == 2
    assert PrecompiledBlocks(make_blocks(4), folder=tmp_path, backend=saveable_eager).preload(SHAPE)


def test_a_call_the_graphs_were_not_made_for_runs_eagerly(
    tmp_path: Path, no_compiler: None
) -> None:
    blocks = make_blocks(0)
    job = PrecompiledBlocks(blocks, folder=tmp_path, backend=saveable_eager)
    job._graphs[(job.fingerprints[0], "nonsense")] = lambda *a: pytest.fail("wrong graph")
    job._ready.add(SHAPE)
    assert job.use(SHAPE)
    gate = torch.ones(5, 8)

    with torch.inference_mode():
        got = blocks[0](torch.ones(5, 8), gate=gate)  # no graph for this call
        expected = blocks[0]._call_impl(torch.ones(5, 8), gate=gate)

    torch.testing.assert_close(got, expected)


def test_a_call_signature_names_every_layout_and_refuses_what_it_cannot_key() -> None:
    x = torch.ones(2, 3)
    assert call_signature((x,), {}) != call_signature((x.t().contiguous().t(),), {})
    assert call_signature((x,), {"n": 2}) != call_signature((x,), {"n": 3})
    assert call_signature((x, object()), {}) is None


class Flatten(torch.nn.Module):
    """A block whose graph bakes its input's batch in (dynamo specializes ``x.shape[0]``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).reshape(x.shape[0], -1) * 2


def test_without_ahead_of_time_compiling_each_block_still_gets_its_own_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older torch (or one refusing aot_compile): graphs live in memory, with dynamo's guards,
    # so blocks of one class with other shapes never run each other's graph.
    monkeypatch.setattr(precompiled, "ahead_of_time_available", lambda: False)
    torch.manual_seed(0)
    blocks = [Flatten(8), Flatten(16)]
    xs = [torch.randn(3, 8), torch.randn(5, 16)]

    def work() -> None:
        for b, x in zip(blocks, xs, strict=True):
            b(x)

    job = PrecompiledBlocks(blocks, folder=tmp_path, backend="eager", name="test graphs")
    assert job.start([(SHAPE, work)], inference=True)
    assert job.wait(120) and not job.errors, job.errors
    assert job.use(SHAPE) and len(job._graphs) == 2 and job.saved_files == 0

    with torch.inference_mode():
        for b, x in zip(blocks, xs, strict=True):
            torch.testing.assert_close(b(x), b._call_impl(x))


def test_a_fresh_graph_runs_once_before_any_clip_uses_it(tmp_path: Path) -> None:
    # Its first call loads its kernels; that belongs to the side thread, not a user's clip.
    first_calls: list[str] = []

    def counting_backend(graph: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        compiled = saveable_eager(graph, inputs)
        run = compiled.graph_module.forward

        def forward(*args: Any) -> Any:
            first_calls.append(threading.current_thread().name)
            return run(*args)

        compiled.graph_module.forward = forward
        return compiled

    blocks = make_blocks(0)
    job = PrecompiledBlocks(blocks, folder=tmp_path, backend=counting_backend, name="graphs")
    assert job.start([(SHAPE, lambda: run(blocks))], inference=True)
    assert job.wait(120) and not job.errors

    assert first_calls == ["graphs", "graphs"]  # one per graph, on the compile's own thread


def test_saving_a_graph_deletes_graphs_unused_for_a_month_and_leftover_temp_files(
    tmp_path: Path,
) -> None:
    month_ago = time.time() - precompiled.KEEP_UNUSED_S - 60
    stale = tmp_path / "from-an-old-torch.graph"
    half_written = tmp_path / ".x.graph.crashed-mid-write.part"
    recent = tmp_path / "used-last-week.graph"
    for f in (stale, half_written, recent):
        f.write_bytes(b"x")
    os.utime(stale, (month_ago, month_ago))
    os.utime(half_written, (time.time() - 7200, time.time() - 7200))
    os.utime(recent, (time.time() - 7 * 86400, time.time() - 7 * 86400))

    compiled_job(make_blocks(0), tmp_path)

    assert not stale.exists() and not half_written.exists()
    assert recent.exists() and len(list(tmp_path.glob("*.graph"))) == 3


def test_blocks_differing_only_in_a_plain_tensor_attribute_never_share_a_graph() -> None:
    # A tensor kept as a plain attribute (not a buffer) is a constant a graph bakes in.
    one, other = Block(8), Block(8)
    one.table = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    other.table = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    copied = copy.deepcopy(one)

    assert module_fingerprint(one) != module_fingerprint(other)
    assert module_fingerprint(one) == module_fingerprint(copied)
