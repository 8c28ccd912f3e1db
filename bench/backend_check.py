"""Run ``generator.engines.svd.SvdBackend`` on a CUDA GPU: the profiles, out-of-memory, cancel.

The unit tests cover the backend on CPU; this covers what only a GPU shows (fp16 placement,
the auto profile reading free VRAM, a real CUDA out-of-memory and recovery after it, memory
staying flat between jobs), then times the full-size architecture through the backend's own
``generate`` in the fast and low-vram profiles, beside stock diffusers in the same process.

    python bench/backend_check.py --out $OUT/backend.json            # on the GPU machine
    python bench/backend_check.py --tiny-only --device cpu             # the checks, on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

import torch
from PIL import Image

from bench.svd_bench import build_full, log, run_clip
from generator.config import SvdSettings
from generator.engines.svd import SvdBackend
from generator.errors import Cancelled, OutOfMemory
from generator.options import Profile

GIB = 1024**3


def checks(device: str, results: dict[str, Any]) -> None:
    """Behaviour of the backend on ``device`` with the tiny model (seconds)."""
    from tests.support.tiny_svd import build_tiny_svd

    folder = build_tiny_svd(Path(tempfile.mkdtemp()) / "tiny")
    settings = SvdSettings(model=str(folder), device=device, frames=4, steps=3, compile=False)
    backend = SvdBackend(settings)
    photo = Image.new("RGB", (64, 32), (90, 160, 200))
    got: dict[str, Any] = {}

    def clip(**kw: Any) -> Any:
        return backend.generate(photo, motion_bucket=127, fps=7, seed=1, **kw)

    fast = clip(profile=Profile.FAST)
    got["dtype"] = str(backend.pipeline.unet.dtype)
    got["fast_frames"] = len(fast.frames)
    low = clip(profile=Profile.LOW_VRAM)
    got["low_vram_frames"] = len(low.frames)
    got["low_vram_encoder_device"] = str(next(backend.pipeline.image_encoder.parameters()).device)
    got["auto_profile"] = str(clip(profile=Profile.AUTO).profile)
    try:
        backend.generate(photo, motion_bucket=127, fps=7, seed=1, should_cancel=lambda: True)
        got["cancel"] = "not cancelled"
    except Cancelled:
        got["cancel"] = "cancelled"
    got["after_cancel_frames"] = len(clip().frames)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(3):
            clip()
        got["allocated_growth_after_3_jobs_mib"] = (torch.cuda.memory_allocated() - before) / 2**20
        # A real out-of-memory: cap this process's allocator below what a step needs.
        # (Filling free memory with one tensor did not work: the caching allocator's
        # already reserved blocks served the whole tiny clip.)
        used = torch.cuda.memory_allocated() / torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(used * 1.001)
        try:
            clip(profile=Profile.FAST)
            got["oom"] = "no error"
        except OutOfMemory as exc:
            got["oom"] = f"OutOfMemory: {exc.user_text}"
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
        got["after_oom_frames"] = len(clip().frames)
    results["tiny_checks"] = got
    log(f"tiny checks {got}")


def timed(backend: SvdBackend, profile: Profile, args: argparse.Namespace) -> dict[str, Any]:
    """A 2-step warm-up clip (pays compiles), then one timed clip through ``generate``."""
    photo = Image.new("RGB", (args.width, args.height), (200, 120, 40))
    steps_at: list[float] = []

    def on_progress(p: Any) -> None:
        if p.stage == "denoising":
            torch.cuda.synchronize()
            steps_at.append(time.perf_counter())

    t = time.perf_counter()
    backend.generate(photo, motion_bucket=127, fps=7, steps=2, seed=1, profile=profile)
    warm = time.perf_counter() - t
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = backend.generate(
        photo,
        motion_bucket=127,
        fps=7,
        steps=args.steps,
        seed=1,
        profile=profile,
        on_progress=on_progress,
    )
    torch.cuda.synchronize()
    end = time.perf_counter()
    per_step = sorted(b - a for a, b in itertools.pairwise(steps_at))
    return dict(
        profile=str(out.profile),
        warmup_clip_s=warm,
        s_per_clip=end - t,
        s_per_step=per_step[len(per_step) // 2] if per_step else None,
        decode_and_convert_s=end - steps_at[-1],
        peak_gib=torch.cuda.max_memory_allocated() / GIB,
        frames=len(out.frames),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--height", type=int, default=576)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--compile-low-vram", action="store_true")
    p.add_argument("--profiles", default="fast,low-vram", help="which profiles to time")
    p.add_argument("--tiny-only", action="store_true")
    p.add_argument("--cache-dir", default="data/inductor-cache")
    p.add_argument("--out", default="backend.json")
    args = p.parse_args()
    results: dict[str, Any] = {"date": "2026-11-26", "argv": sys.argv, "torch": torch.__version__}
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(results, indent=2, default=str))

    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
    checks(args.device, results)
    save()
    if args.tiny_only:
        return

    # Stock diffusers on the same architecture, same process, for the ratio.
    pipe = build_full(args.device, torch.float16)
    stock_args = argparse.Namespace(**vars(args), warmup_steps=2)
    run_clip(pipe, stock_args, steps=2, chunk=8)
    stock = run_clip(pipe, stock_args, steps=args.steps, chunk=8)
    stock.pop("frames")
    stock.pop("latents")
    results["stock"] = stock
    log(f"stock {stock}")
    save()

    settings = SvdSettings(
        model="random-svd-xt",
        device=args.device,
        frames=args.frames,
        compile=True,
        cache_dir=args.cache_dir,
    )
    backend = SvdBackend(settings)
    backend.adopt(pipe, model="random-svd-xt", device=args.device)
    del pipe
    for profile in [Profile(name) for name in args.profiles.split(",")]:
        if profile is Profile.LOW_VRAM and not args.compile_low_vram:
            backend.settings = dataclasses.replace(settings, compile=False)
        try:
            row = timed(backend, profile, args)
            row["ratio_to_stock"] = row["s_per_clip"] / stock["s_per_clip"]
            row["compiled"] = backend.settings.compile
        except Exception as exc:  # keep the other profile's numbers
            row = {"error": f"{type(exc).__name__}: {exc}"}
        results[str(profile)] = row
        log(f"{profile} through SvdBackend.generate: {row}")
        save()
        gc.collect()
    log(f"done; wrote {out}")


if __name__ == "__main__":
    main()
