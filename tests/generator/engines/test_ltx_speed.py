"""LTX speed settings keep the clip the same while skipping work: cached prompts, compile later."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.ltx_bench import build_pipe, photo
from generator.encode import _rgb_array
from generator.engines import ltx_speed
from generator.engines.device import frames_to_uint8
from generator.engines.ltx_speed import BackgroundCompile, PromptCache, PromptKey
from generator.options import Profile

REPO = Path(__file__).resolve().parents[3]
PROMPT = "Animate this photo as a realistic, smoothly moving video."


@pytest.fixture(scope="module")
def pipe() -> Any:
    """The tiny random-weight LTX pipeline (diffusers' test shapes), fp32 on the CPU."""
    return build_pipe("cpu", torch.float32, tiny=True)


def make_clip(pipe: Any, **embeds: torch.Tensor) -> np.ndarray:
    """Frames of one tiny clip, seeded, as the engine asks for them (GPU tensor -> uint8)."""
    prompt = {} if embeds else {"prompt": PROMPT}
    out = pipe(
        image=photo(32, 32),
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="pt",
        **prompt,
        **embeds,
    )
    return frames_to_uint8(out.frames[0])


def count_encoder_calls(pipe: Any) -> list[int]:
    calls: list[int] = []
    pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_a_repeated_prompt_skips_the_text_encoder_and_makes_the_same_clip(pipe: Any) -> None:
    calls = count_encoder_calls(pipe)
    stock = make_clip(pipe)
    cache = PromptCache()
    first = make_clip(pipe, **cache.kwargs(pipe, PROMPT, None, guidance_scale=1.0))
    encoded = len(calls)
    second = make_clip(pipe, **cache.kwargs(pipe, PROMPT, None, guidance_scale=1.0))
    assert len(calls) == encoded  # the second clip never ran T5
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, stock)
    np.testing.assert_array_equal(second, stock)


def test_the_negative_prompt_only_matters_with_guidance(pipe: Any) -> None:
    cache = PromptCache()
    cache.kwargs(pipe, PROMPT, "blurry", guidance_scale=1.0)
    cache.kwargs(pipe, PROMPT, "jittery", guidance_scale=1.0)
    assert (cache.hits, cache.misses) == (1, 1)
    with_cfg = cache.kwargs(pipe, PROMPT, "blurry", guidance_scale=3.0)
    assert (cache.hits, cache.misses) == (1, 2)
    assert "negative_prompt_embeds" in with_cfg


def test_the_least_recently_used_prompt_is_evicted_first() -> None:
    cache = PromptCache(capacity=2)
    made: list[str] = []

    def entry(name: str) -> dict[str, torch.Tensor]:
        return cache.get_or_make(
            PromptKey(name, None, 256), lambda: made.append(name) or {"x": torch.zeros(1)}
        )

    entry("portrait")
    entry("pet")
    entry("portrait")  # used again: now "pet" is the oldest
    entry("landscape")  # evicts "pet"
    assert PromptKey("pet", None, 256) not in cache
    entry("portrait")
    entry("pet")  # made again
    assert made == ["portrait", "pet", "landscape", "pet"]
    assert len(cache) == 2
    with pytest.raises(ValueError):
        PromptCache(capacity=0)


def test_profiles_on_a_cpu_change_nothing(pipe: Any) -> None:
    before = make_clip(pipe)
    for profile in (Profile.FAST, Profile.LOW_VRAM):
        ltx_speed.apply_profile(pipe, profile, device="cpu")
        np.testing.assert_array_equal(make_clip(pipe), before)
    with pytest.raises(ValueError, match="resolve the profile"):
        ltx_speed.apply_profile(pipe, Profile.AUTO, device="cpu")


def test_a_12_gb_card_tiles_the_decode_and_a_24_gb_card_does_not() -> None:
    gib = 1024**3
    weights = 6.3e9  # transformer + VAE resident in the 12 GB profile
    assert ltx_speed.tile_decode(int(11.5 * gib - weights))  # 12 GB card after its context
    assert not ltx_speed.tile_decode(int(23.5 * gib - weights))


def test_uint8_frames_match_the_encoders_rounding_of_stock_float_frames() -> None:
    video = torch.rand(5, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    video[0, 0, 0, 0], video[0, 0, 0, 1] = 0.5 / 255, 1.0  # a tie and the top
    stock_float = video.permute(0, 2, 3, 1).numpy()  # what output_type="np" gives
    expected = np.stack([_rgb_array(frame) for frame in stock_float])
    np.testing.assert_array_equal(frames_to_uint8(video[None]), expected)


def test_clips_stay_eager_until_the_compiled_blocks_are_ready(pipe: Any) -> None:
    gate = threading.Event()
    compiles: list[int] = []

    def slow_backend(graph: torch.fx.GraphModule, _inputs: list[Any]) -> Any:
        compiles.append(1)
        gate.wait(60)  # a compile that takes as long as the test wants
        return graph.forward

    job = BackgroundCompile(pipe.transformer, backend=slow_backend)
    shape = (32, 32, 9)
    assert not job.before_clip(shape)  # nothing compiled yet: eager
    first = make_clip(pipe)  # records the block's inputs; compiling starts behind it
    assert not job.before_clip(shape)  # the compile is still running
    second = make_clip(pipe)  # so this user gets an eager clip, without waiting
    gate.set()
    assert job.wait(60) and not job.errors
    assert job.before_clip(shape)
    third = make_clip(pipe)  # through the compiled blocks
    assert compiles  # the compiler really ran
    np.testing.assert_array_equal(second, first)
    np.testing.assert_array_equal(third, first)
    # A clip of a shape not compiled yet runs eagerly again (and compiles behind it).
    assert not job.before_clip((64, 32, 9)) and not job.swapped
    job.swap_out()


def test_the_benchmark_runs_stock_and_ours_side_by_side_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "ltx.json"
    args = ["--tiny", "--repeats", "1", "--cap-gib", "12", "--encode-presets", "veryfast"]
    args += ["--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "bench/ltx_bench.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["config"]: row for row in json.loads(out.read_text())["configs"]}
    assert {"stock", "fast", "fast-uncached", "low-vram-eager"} <= set(rows)
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        if name.startswith("encode"):
            assert row["x264_s"] > 0 and row["mp4_bytes"] > 0
        else:
            assert row["s_to_mp4"] > row["s_to_frames"] > 0
    for name in ("fast", "low-vram-eager"):  # fp32 on the CPU: the very same clip
        assert rows[name]["frames_vs_stock_max_abs"] == 0
