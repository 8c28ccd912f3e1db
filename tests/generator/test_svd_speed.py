"""The speed profiles keep SVD's output but change how it runs, and fall back when they can't."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from PIL import Image

from generator.engines import svd_speed
from generator.engines.svd_speed import (
    CfgSplitUNet,
    SvdCompile,
    apply_fast,
    apply_fp8,
    apply_low_vram,
    apply_profile,
    configure_torch,
    fuse_qkv,
    is_compiled,
    restore_cross_attention,
    restore_stock,
    shortcut_cross_attention,
    unfuse_qkv,
)
from generator.errors import BackendUnavailable
from generator.options import Profile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pipe(tiny_svd_dir: Path) -> StableVideoDiffusionPipeline:
    """A fresh tiny pipeline in fp32 on the CPU (each test may change it in place)."""
    return StableVideoDiffusionPipeline.from_pretrained(tiny_svd_dir, torch_dtype=torch.float32)


def unet_inputs(pipe: StableVideoDiffusionPipeline, batch: int = 2) -> dict[str, torch.Tensor]:
    """Inputs shaped like the pipeline's CFG call: 2 frames of 4x4 latents, 8 channels."""
    g = torch.Generator().manual_seed(1)
    unet = pipe.unet
    embed = unet.config.cross_attention_dim
    return dict(
        sample=torch.randn(batch, 2, unet.config.in_channels, 4, 4, generator=g),
        timestep=torch.tensor(0.5),
        encoder_hidden_states=torch.randn(batch, 1, embed, generator=g),
        added_time_ids=torch.randn(batch, 3, generator=g),
    )


def make_clip(pipe: StableVideoDiffusionPipeline, decode_chunk_size: int = 2) -> torch.Tensor:
    """Two 32x32 frames in 2 steps from a fixed photo and seed, as a tensor."""
    image = Image.new("RGB", (32, 32), (200, 120, 40))
    out = pipe(
        image,
        height=32,
        width=32,
        num_frames=2,
        num_inference_steps=2,
        decode_chunk_size=decode_chunk_size,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
    )
    return out.frames[0]


@torch.no_grad()
def test_cfg_split_gives_the_batch_2_result(pipe: StableVideoDiffusionPipeline) -> None:
    inputs = unet_inputs(pipe)
    whole = pipe.unet(**inputs, return_dict=False)[0]
    split = CfgSplitUNet(pipe.unet)(**inputs, return_dict=False)[0]
    assert split.shape == whole.shape
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    # The wrapper is invisible to the pipeline: config and submodules read through.
    wrapper = CfgSplitUNet(pipe.unet)
    assert wrapper.config.in_channels == pipe.unet.config.in_channels
    assert wrapper.add_embedding is pipe.unet.add_embedding


@torch.no_grad()
def test_cfg_split_leaves_a_batch_1_call_alone(pipe: StableVideoDiffusionPipeline) -> None:
    inputs = unet_inputs(pipe, batch=1)
    whole = pipe.unet(**inputs).sample
    split = CfgSplitUNet(pipe.unet)(**inputs).sample
    torch.testing.assert_close(split, whole, rtol=0, atol=0)


@torch.no_grad()
def test_fused_qkv_keeps_the_unet_output(pipe: StableVideoDiffusionPipeline) -> None:
    inputs = unet_inputs(pipe)
    before = pipe.unet(**inputs).sample
    assert fuse_qkv(pipe.unet) > 0
    torch.testing.assert_close(pipe.unet(**inputs).sample, before, rtol=1e-5, atol=1e-5)
    unfuse_qkv(pipe.unet)
    assert not any(hasattr(m, "to_qkv") for m in pipe.unet.modules())
    torch.testing.assert_close(pipe.unet(**inputs).sample, before, rtol=1e-5, atol=1e-5)


def test_low_vram_makes_the_same_clip_as_stock(pipe: StableVideoDiffusionPipeline) -> None:
    stock = make_clip(pipe)
    applied = apply_low_vram(pipe, device="cpu", compile=False)
    assert "cfg as two batch-1 passes" in applied.steps
    assert isinstance(pipe.unet, CfgSplitUNet)
    torch.testing.assert_close(make_clip(pipe), stock, rtol=1e-4, atol=1e-4)

    restore_stock(pipe, "cpu")
    assert not isinstance(pipe.unet, CfgSplitUNet)
    torch.testing.assert_close(make_clip(pipe), stock, rtol=1e-4, atol=1e-4)


def test_fast_on_cpu_skips_compile_and_says_why(pipe: StableVideoDiffusionPipeline) -> None:
    stock = make_clip(pipe)
    applied = apply_fast(pipe, device="cpu", compile=True)
    assert applied.profile == "fast"
    assert any("compile" in reason and "cpu" in reason for reason in applied.skipped)
    assert not is_compiled(pipe.unet)
    torch.testing.assert_close(make_clip(pipe), stock, rtol=1e-4, atol=1e-4)


def test_apply_profile_picks_by_profile_and_refuses_auto(
    pipe: StableVideoDiffusionPipeline,
) -> None:
    assert apply_profile(pipe, Profile.LOW_VRAM, device="cpu", compile=False).profile == "low-vram"
    assert isinstance(pipe.unet, CfgSplitUNet)
    assert apply_profile(pipe, Profile.FAST, device="cpu", compile=False).profile == "fast"
    assert not isinstance(pipe.unet, CfgSplitUNet)
    with pytest.raises(ValueError, match="auto"):
        apply_profile(pipe, Profile.AUTO, device="cpu", compile=False)


def test_the_cross_attention_shortcut_computes_the_same_unet(
    pipe: StableVideoDiffusionPipeline,
) -> None:
    blocks = [m for m in pipe.unet.modules() if getattr(m, "attn2", None) is not None]
    kinds = {type(m).__name__ for m in blocks}
    assert kinds == {"BasicTransformerBlock", "TemporalBasicTransformerBlock"}
    queries: list[int] = []
    for seed in (1, 2):  # fresh inputs each time: the same function on any input
        inputs = unet_inputs(pipe)
        inputs["sample"] = torch.randn_like(inputs["sample"], generator=None) * seed
        stock = pipe.unet(**inputs).sample
        assert shortcut_cross_attention(pipe.unet) == len(blocks)
        hooks = [m.attn2.to_q.register_forward_hook(lambda *_: queries.append(1)) for m in blocks]
        torch.testing.assert_close(pipe.unet(**inputs).sample, stock, rtol=1e-5, atol=1e-6)
        assert queries == []  # no query projection, so no attention over the query tokens
        assert all(isinstance(m.norm2, torch.nn.Identity) for m in blocks)
        for hook in hooks:
            hook.remove()
        restore_cross_attention(pipe.unet)
        assert all(isinstance(m.norm2, torch.nn.LayerNorm) for m in blocks)
        torch.testing.assert_close(pipe.unet(**inputs).sample, stock, rtol=0, atol=0)


def test_the_shortcut_hands_several_key_tokens_to_the_stock_attention(
    pipe: StableVideoDiffusionPipeline,
) -> None:
    block = next(m for m in pipe.unet.modules() if getattr(m, "attn2", None) is not None)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 5, block.attn2.query_dim, generator=g)
    keys = torch.randn(2, 3, block.attn2.cross_attention_dim, generator=g)  # three tokens
    stock = block.attn2(block.norm2(hidden), encoder_hidden_states=keys)
    shortcut_cross_attention(pipe.unet)
    torch.testing.assert_close(
        block.attn2(block.norm2(hidden), encoder_hidden_states=keys), stock, rtol=0, atol=0
    )


def test_clips_stay_eager_until_the_compiled_blocks_are_ready(
    pipe: StableVideoDiffusionPipeline,
) -> None:
    stock = make_clip(pipe)
    apply_fast(pipe, device="cpu", compile=False)
    gate = threading.Event()
    compiles: list[int] = []

    def slow_backend(graph: torch.fx.GraphModule, _inputs: list[Any]) -> Any:
        compiles.append(1)
        gate.wait(120)  # a compile that takes as long as the test wants
        return graph.forward

    job = SvdCompile(pipe, backend=slow_backend)
    setattr(pipe, svd_speed._COMPILE_ATTR, job)
    shape = {"height": 32, "width": 32, "frames": 2, "decode_chunk": 2}
    assert not svd_speed.before_clip(pipe, **shape)  # nothing compiled: eager, compiling behind
    assert job.busy
    first = make_clip(pipe)  # this user gets an eager clip without waiting for the compiler
    assert not svd_speed.before_clip(pipe, **shape) and not job.swapped  # still compiling
    gate.set()
    assert job.wait(120) and not job.errors, job.errors
    assert compiles  # the compiler really ran, for the blocks and the decoder
    assert svd_speed.before_clip(pipe, **shape) and job.swapped
    compiled = make_clip(pipe)
    torch.testing.assert_close(first, stock, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled, first, rtol=1e-5, atol=1e-5)
    # Another size runs eagerly again (and compiles behind it, with its other orientation).
    assert not svd_speed.before_clip(pipe, height=32, width=64, frames=2, decode_chunk=2)
    assert not job.swapped
    job.wait(120)
    assert job.ready(("fast", 64, 32, 2, 2, 2)) and job.ready(("fast", 32, 64, 2, 2, 2))
    restore_stock(pipe, "cpu")
    assert not any(m._compiled_call_impl for m in job.modules)


def test_a_failed_compile_leaves_that_shape_eager(pipe: StableVideoDiffusionPipeline) -> None:
    def broken(graph: torch.fx.GraphModule, _inputs: list[Any]) -> Any:
        raise RuntimeError("no C compiler here")

    torch._dynamo.reset()  # graphs earlier tests compiled for these blocks would be reused
    apply_low_vram(pipe, device="cpu", compile=False)
    job = SvdCompile(pipe, backend=broken)
    setattr(pipe, svd_speed._COMPILE_ATTR, job)
    stock = make_clip(pipe)
    shape = {"height": 32, "width": 32, "frames": 2, "decode_chunk": 2}
    assert not svd_speed.before_clip(pipe, **shape)
    assert job.wait(120)
    assert "no C compiler here" in job.errors[("low-vram", 32, 32, 2, 2, 2)]
    assert not svd_speed.before_clip(pipe, **shape) and not job.busy  # no second try
    torch.testing.assert_close(make_clip(pipe), stock, rtol=0, atol=0)


def test_configure_torch_puts_inductor_caches_in_the_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    target = tmp_path / "data" / "inductor"
    try:
        configure_torch(target)
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert target.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(target)
    assert cache_dir() == str(target)
    assert flags == (True, True)  # the same flags every start, so the cache key matches


def test_fp8_is_refused_without_an_fp8_gpu(pipe: StableVideoDiffusionPipeline) -> None:
    with pytest.raises(BackendUnavailable) as info:
        apply_fp8(pipe, device="cpu")
    assert "fp8" in info.value.user_text
    assert svd_speed.fp8_available("cpu") == "fp8 needs a CUDA GPU"


def test_bench_cpu_smoke_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "bench/svd_bench.py", "--cpu-smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    by_name = {row["config"]: row for row in results["configs"]}
    assert {"stock", "fast", "low-vram"} <= set(by_name)
    for row in by_name.values():
        assert row["s_per_clip"] > 0
    # The profiles must not change the clip (fp32 on CPU: tight).
    for name in ("fast", "low-vram"):
        assert by_name[name]["latents_vs_stock_rel_l2"] < 1e-4
        assert by_name[name]["frames_vs_stock_max_abs"] < 1e-3


def test_backend_check_runs_the_generators_own_svd_path_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "backend.json"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/backend_check.py",
            "--tiny-only",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = json.loads(out.read_text())["tiny_checks"]
    assert checks["fast_frames"] == checks["low_vram_frames"] == 4
    assert checks["cancel"] == "cancelled" and checks["after_cancel_frames"] == 4


def test_backend_check_times_a_cold_start_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "cold.json"
    args = ["--coldstart", "--tiny", "--device", "cpu", "--profiles", "fast"]
    args += ["--width", "64", "--height", "32", "--frames", "2", "--steps", "2"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "bench/backend_check.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    fast = results["fast"]
    assert fast["clips"][0]["warming"]  # the first clip ran eager, compiling behind it
    assert not fast["steady"]["warming"] and not fast["steady_portrait"]["warming"]
    assert not fast["compile_errors"] and len(fast["compile_s"]) == 2  # both orientations
    errors = results["unet_rel_l2_vs_fp32"]  # fp32 on the CPU: the shortcut is exact
    assert errors["fast_eager"] <= errors["stock"] + 1e-6


def test_backend_check_times_a_restart_from_saved_weights_on_cpu(tmp_path: Path) -> None:
    tiny = ["--tiny", "--device", "cpu", "--width", "64", "--height", "32"]
    tiny += ["--frames", "2", "--steps", "2"]
    model, out = tmp_path / "model", tmp_path / "restart.json"

    def bench(*args: str) -> None:
        proc = subprocess.run(
            [sys.executable, "bench/backend_check.py", *args, *tiny],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]

    bench("--save-model", str(model), "--out", str(tmp_path / "save.json"))
    assert (model / "model_index.json").is_file()
    bench(
        "--restart",
        "--model-dir",
        str(model),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--budget-s",
        "1",
        "--out",
        str(out),
    )

    results = json.loads(out.read_text())
    since = results["since_start_s"]
    steps = ["imports", "loaded", "placed", "first_clip"]
    assert list(since)[:4] == steps  # each step of a restart, seconds from the process start
    assert [since[s] for s in steps] == sorted(since[s] for s in steps)
    assert results["weights_loaded_on"] == "cpu"
    assert results["first_clip"]["warming"] and results["first_clip"]["frames"] == 2
