"""Wan 2.2's own behaviour on the tiny random-weight pipeline (CPU): what the contract test in
test_engines.py does not cover."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from generator.config import GeneratorSettings, WanSettings
from generator.engines import wan_speed
from generator.engines.catalog import build_engine
from generator.errors import ModelUnavailable, OutOfMemory
from generator.options import Backend, Intensity, PhotoType, Request

PHOTO = Path("photo.jpg")
REPO = Path(__file__).resolve().parents[2]


def engine_for(settings: WanSettings):
    return build_engine(Backend.WAN, GeneratorSettings(wan=settings))


def photo() -> PIL.Image.Image:
    return PIL.Image.new("RGB", (64, 32), (90, 140, 200))


def test_the_hub_layout_loads_as_image_to_video_with_the_photo_at_frame_0(tiny_wan) -> None:
    engine = engine_for(tiny_wan)
    engine.load()

    # The folder says WanPipeline (text-to-video), as Wan-AI/Wan2.2-TI2V-5B-Diffusers does.
    assert '"_class_name": "WanPipeline"' in (Path(tiny_wan.model) / "model_index.json").read_text()
    pipe = engine.pipeline
    assert type(pipe).__name__ == "WanImageToVideoPipeline"
    assert pipe.config.expand_timesteps and pipe.image_encoder is None
    assert pipe.vae.config.z_dim == 48


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
    ],
)
def test_out_of_memory_becomes_ours_and_the_next_clip_works(tiny_wan, error) -> None:
    engine = engine_for(tiny_wan)
    engine.load()

    def out_of_memory(*_args: object) -> None:
        raise error

    hook = engine.pipeline.transformer.register_forward_pre_hook(out_of_memory)
    with pytest.raises(OutOfMemory) as caught:
        engine.generate(photo(), Request(image=PHOTO, seed=0))
    hook.remove()
    after = engine.generate(photo(), Request(image=PHOTO, seed=0))

    assert caught.value.user_text == OutOfMemory.user_text
    assert caught.value.__cause__ is error
    assert len(after.frames) == 9


def test_a_missing_model_folder_says_which_key_to_set(tiny_wan, tmp_path) -> None:
    engine = engine_for(dataclasses.replace(tiny_wan, model=str(tmp_path / "gone")))

    with pytest.raises(ModelUnavailable, match=r"wan\.model is the folder") as caught:
        engine.load()

    assert caught.value.user_text == ModelUnavailable.user_text
    assert not engine.loaded


def test_the_text_encoder_runs_only_for_a_prompt_it_has_not_seen(tiny_wan) -> None:
    # On a 12 GB card the 10.6 GiB UMT5-XXL streams from CPU memory: each run costs seconds.
    engine = engine_for(tiny_wan)
    engine.load()
    runs: list[int] = []
    engine.pipeline.text_encoder.register_forward_pre_hook(lambda *_: runs.append(1))
    pet = Request(image=PHOTO, photo_type=PhotoType.PET, seed=1)

    engine.generate(photo(), pet)
    first = len(runs)
    engine.generate(photo(), dataclasses.replace(pet, seed=2))  # "Again": same prompt
    again = len(runs)
    engine.generate(photo(), dataclasses.replace(pet, intensity=Intensity.DRAMATIC))

    assert first == 2  # the prompt and the negative prompt (guidance 5)
    assert again == first
    assert len(runs) == first + 2


def test_fused_projections_make_the_same_clip_with_each_weight_stored_once(tiny_wan) -> None:
    engine = engine_for(tiny_wan)
    request = Request(image=PHOTO, seed=3)
    before = np.stack(engine.generate(photo(), request).frames)
    transformer = engine.pipeline.transformer
    weights = sum(p.numel() for p in transformer.parameters())

    wan_speed.fuse_projections(transformer)
    after = np.stack(engine.generate(photo(), request).frames)

    assert sum(p.numel() for p in transformer.parameters()) == weights  # no second copy
    assert all(not hasattr(m, "to_k") for m in transformer.modules() if hasattr(m, "to_qkv"))
    assert np.abs(after.astype(int) - before.astype(int)).max() <= 1  # rounding at most


def test_clips_stay_eager_until_the_compiled_blocks_are_ready(tiny_wan) -> None:
    engine = engine_for(tiny_wan)
    engine.load()
    gate = threading.Event()
    compiles: list[int] = []

    def slow_backend(graph: torch.fx.GraphModule, _inputs: list[Any]) -> Any:
        compiles.append(1)
        gate.wait(60)  # a compile that takes as long as the test wants
        return graph.forward

    job = wan_speed.compile_behind(engine.pipeline, backend=slow_backend)
    request = Request(image=PHOTO, seed=5)

    first = engine.generate(photo(), request)  # eager; its blocks' inputs start the compile
    second = engine.generate(photo(), request)  # the compile is still running: eager again
    compiled_meanwhile = job.swapped
    gate.set()
    assert job.wait(60) and not job.errors
    third = engine.generate(photo(), request)  # through the compiled blocks

    assert compiles and not compiled_meanwhile and job.swapped
    np.testing.assert_array_equal(np.stack(second.frames), np.stack(first.frames))
    np.testing.assert_array_equal(np.stack(third.frames), np.stack(first.frames))
    job.swap_out()


@pytest.mark.parametrize("mode", [[], ["--accuracy"]], ids=["clips", "one-pass-accuracy"])
def test_the_benchmark_runs_on_cpu(tmp_path: Path, mode: list[str]) -> None:
    out = tmp_path / "wan.json"
    proc = subprocess.run(
        [sys.executable, "bench/wan_bench.py", "--tiny", "--steps", "2", *mode, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    if mode:  # fp32 on the CPU: fused and compiled passes equal stock's
        row = result["accuracy"]
        assert row["compiled"] and not row["compile_errors"]
        assert row["fast_rel_l2_vs_fp32"] == pytest.approx(row["stock_rel_l2_vs_fp32"], abs=1e-6)
        return
    runs = result["runs"]
    assert not result["errors"]
    assert runs["fast_first_clip_eager_while_compiling"]["compile_s"]
    assert runs["fast"]["compiled"] and runs["fast"]["latents_rel_l2_vs_stock"] < 1e-5
    assert runs["decode_fp32_vs_bf16"]["bf16_vs_fp32_rel_l2"] > 0  # bf16 really decoded


def test_the_first_block_cache_is_off_unless_asked_for_and_then_skips_blocks(tiny_wan) -> None:
    def blocks_run(settings: WanSettings) -> int:
        engine = engine_for(settings)
        engine.load()
        runs: list[int] = []
        last = engine.pipeline.transformer.blocks[-1]  # its attention runs unless skipped
        last.attn1.register_forward_hook(lambda *_: runs.append(1))
        clip = engine.generate(photo(), Request(image=PHOTO, seed=1, steps=4))
        assert len(clip.frames) == 9
        return len(runs)

    default = blocks_run(tiny_wan)
    cached = blocks_run(dataclasses.replace(tiny_wan, first_block_cache=1.0))

    assert WanSettings().first_block_cache == 0.0
    assert default == 8  # 4 steps x (prompt + negative prompt)
    assert cached < default


def test_guidance_batch_runs_both_passes_in_one_call_on_a_12_gb_card_for_the_same_clip(
    tiny_wan,
) -> None:
    # Under offloading every transformer call streams its 10 GB of weights from CPU memory:
    # low-vram makes one call a step instead of two, and the clip stays the same.
    from generator.options import Profile

    request = Request(image=PHOTO, seed=5)

    def clip(profile: Profile) -> tuple[np.ndarray, list[int]]:
        engine = engine_for(dataclasses.replace(tiny_wan, guidance_batch=True))
        engine.generate(photo(), dataclasses.replace(request, profile=profile))  # placed
        passes: list[int] = []
        engine.pipeline.transformer.blocks[0].register_forward_pre_hook(
            lambda _m, args: passes.append(args[0].shape[0])  # the batch of each real pass
        )
        frames = engine.generate(photo(), dataclasses.replace(request, profile=profile)).frames
        return np.stack(frames), passes

    fast, fast_passes = clip(Profile.FAST)
    low, low_passes = clip(Profile.LOW_VRAM)

    steps = tiny_wan.steps
    assert fast_passes == [1] * (2 * steps)
    assert low_passes == [2] * steps
    assert np.abs(low.astype(int) - fast.astype(int)).max() <= 1  # rounding at most


def offloaded_on_cpu(engine: Any) -> torch.nn.Module:
    """The low-vram profile's block-level group offloading, onto and off the CPU (what a 12 GB
    card runs, minus the streams); returns a spare copy of one block taken before the hooks."""
    from diffusers.hooks import apply_group_offloading

    transformer = engine.pipeline.transformer
    spare = copy.deepcopy(transformer.blocks[0])
    apply_group_offloading(
        transformer,
        onload_device=torch.device("cpu"),
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
    )
    return spare


def test_low_vram_blocks_compile_after_the_first_clip_and_then_run_compiled_under_the_hooks(
    tiny_wan,
) -> None:
    engine = engine_for(tiny_wan)
    request = Request(image=PHOTO, seed=5)
    engine.generate(photo(), request)  # loaded and placed
    spare = offloaded_on_cpu(engine)
    gate = threading.Event()
    graphs: list[torch.fx.GraphModule] = []
    compiled_calls: list[int] = []

    def backend(graph: torch.fx.GraphModule, _inputs: list[Any]) -> Any:
        graphs.append(graph)
        gate.wait(60)  # a compile that takes as long as the test wants

        def run(*args: Any) -> Any:
            compiled_calls.append(1)
            return graph.forward(*args)

        return run

    job = wan_speed.compile_offloaded(engine.pipeline, spare, device="cpu", backend=backend)
    assert job is not None
    first = engine.generate(photo(), request)  # eager; records the blocks' inputs
    compiling_after_first = job.busy and not compiled_calls
    gate.set()
    assert job.wait(60) and not job.errors
    second = engine.generate(photo(), request)  # compiled, inside the offloading hooks

    blocks, steps = len(engine.pipeline.transformer.blocks), tiny_wan.steps
    assert compiling_after_first
    assert len(graphs) == 1  # one graph serves every streamed block and step: no recompiles
    # The spare block's one call, then every block's passes (both guidance halves).
    assert len(compiled_calls) == 1 + blocks * 2 * steps
    np.testing.assert_array_equal(np.stack(second.frames), np.stack(first.frames))


def test_a_low_vram_compile_that_fails_leaves_clips_eager_and_says_why(tiny_wan) -> None:
    engine = engine_for(tiny_wan)
    request = Request(image=PHOTO, seed=5)
    before = engine.generate(photo(), request)
    spare = offloaded_on_cpu(engine)

    def broken(_graph: torch.fx.GraphModule, _inputs: list[Any]) -> Any:
        raise RuntimeError("no compiler here")

    job = wan_speed.compile_offloaded(engine.pipeline, spare, device="cpu", backend=broken)
    assert job is not None
    engine.generate(photo(), request)
    assert job.wait(60)
    after = engine.generate(photo(), request)  # eager: the failed shape is not retried

    assert list(job.errors.values()) and "no compiler here" in next(iter(job.errors.values()))
    assert not job.busy and not job.compile_s
    np.testing.assert_array_equal(np.stack(after.frames), np.stack(before.frames))


def test_low_vram_block_calls_of_other_shapes_run_eagerly_instead_of_recompiling(
    tiny_wan,
) -> None:
    from generator.options import Profile

    engine = engine_for(tiny_wan)
    request = Request(image=PHOTO, seed=5, profile=Profile.LOW_VRAM)
    engine.generate(photo(), request)  # loaded and placed
    spare = offloaded_on_cpu(engine)
    graphs: list[torch.fx.GraphModule] = []
    compiled_calls: list[int] = []

    def backend(graph: torch.fx.GraphModule, _inputs: list[Any]) -> Any:
        graphs.append(graph)
        return lambda *args: compiled_calls.append(1) or graph.forward(*args)

    job = wan_speed.compile_offloaded(engine.pipeline, spare, device="cpu", backend=backend)
    assert job is not None
    single = engine.generate(photo(), request)  # records batch-1 block inputs; compiles after
    assert job.wait(60) and not job.errors
    calls_after_compile = len(compiled_calls)
    # [wan] guidance_batch: the same clip's blocks now see batch-2 inputs, which the graph was
    # not made for: they run eagerly rather than make this clip wait for a second compile.
    engine.settings = dataclasses.replace(engine.settings, guidance_batch=True)
    batched = engine.generate(photo(), request)

    assert len(graphs) == 1 and len(compiled_calls) == calls_after_compile
    assert np.abs(np.stack(batched.frames).astype(int) - np.stack(single.frames)).max() <= 1
