"""Run ``generator.engines.svd.SvdBackend`` on a CUDA GPU: the profiles, out-of-memory, cancel.

The unit tests cover the backend on CPU; this covers what only a GPU shows (fp16 placement,
the auto profile reading free VRAM, a real CUDA out-of-memory and recovery after it, memory
staying flat between jobs), then times the full-size architecture through the backend's own
``generate`` in the fast and low-vram profiles, beside stock diffusers in the same process.

    python bench/backend_check.py --out $OUT/backend.json            # on the GPU machine
    python bench/backend_check.py --tiny-only --device cpu             # the checks, on CPU

Cold start (``--coldstart``, empty ``--cache-dir``): stock, then the fast and low-vram
profiles from their first clip (eager, compiling behind it) through the switch-over to their
steady compiled clip, each clip timed; the UNet's error against fp32; one compiled UNet pass
profiled (which attention kernel runs). ``--restart`` then times a new process from its start
(``BENCH_T0``) to its first finished clip, with each step's time since the start in
``since_start_s`` (imports, CUDA ready, weights loaded, placed, first clip done)::

    BENCH_T0=$(date +%s.%N) python bench/backend_check.py --restart --out $OUT/restart.json

``--save-model DIR`` only saves the random-weight full-size pipeline to ``DIR`` (seconds, no
compile); ``--restart --model-dir DIR`` then loads it through the engine's own
``from_pretrained``, as a restarted service loads its downloaded weights (``--load-via-cpu``:
into CPU memory first, as before straight-to-GPU loading). ``--warm`` fills the cache with
nothing else running (``--one-orientation``: landscape only, for ``--warm`` and
``--restart``). ``--tiny`` runs any of them on the test model, on the CPU::

    python bench/backend_check.py --save-model /tmp/m --tiny --device cpu
    BENCH_T0=$(date +%s.%N) python bench/backend_check.py --restart --model-dir /tmp/m --tiny \
        --device cpu --width 64 --height 32 --frames 2 --steps 2 --out restart.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

import torch
from PIL import Image

from bench.svd_bench import (
    T_START,
    build_full,
    fp32_reference,
    log,
    rel_l2,
    run_clip,
    unet_inputs,
)
from generator.config import SvdSettings
from generator.engines import svd, svd_speed
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


def time_stock(pipe: Any, args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """Stock diffusers on the same architecture, same process, for the ratio: a 2-step
    warm-up clip, then one timed clip."""
    stock_args = argparse.Namespace(**vars(args), warmup_steps=2)
    run_clip(pipe, stock_args, steps=2, chunk=8)
    stock = run_clip(pipe, stock_args, steps=args.steps, chunk=8)
    for key in ("frames", "latents"):
        stock.pop(key)
    results["stock"] = stock
    log(f"stock {stock}")
    return stock


def adopt(pipe: Any, args: argparse.Namespace, *, compile: bool) -> SvdBackend:
    """An ``SvdBackend`` running ``pipe`` as if it had loaded it."""
    settings = SvdSettings(
        model="random-svd-xt",
        device=args.device,
        frames=args.frames,
        compile=compile,
        cache_dir=args.cache_dir,
    )
    backend = SvdBackend(settings)
    backend.adopt(pipe, model="random-svd-xt", device=args.device)
    return backend


def one_clip(
    backend: SvdBackend, profile: Profile, args: argparse.Namespace, *, portrait: bool = False
) -> dict[str, Any]:
    """One full clip through ``generate``: seconds, whether it ran compiled, peak memory."""
    size = (args.height, args.width) if portrait else (args.width, args.height)
    photo = Image.new("RGB", size, (200, 120, 40))
    warming: list[bool] = []
    stages: list[tuple[str, float]] = []  # each progress event's seconds since the clip began

    def on_progress(p: Any) -> None:
        stages.append((p.stage, round(time.perf_counter() - t, 3)))
        if p.stage == "denoising":
            warming.append(p.warming)

    if args.device.startswith("cuda"):
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
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    row = dict(
        s=time.perf_counter() - t,
        since_start_s=time.time() - T_START,
        warming=any(warming),  # ran on the not-yet-compiled path
        portrait=portrait,
        frames=len(out.frames),
        stages=stages,
    )
    if args.device.startswith("cuda"):
        row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    return row


def cold_profile(
    backend: SvdBackend, profile: Profile, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    """The first clip after placing ``profile`` (eager; the compile starts behind it and
    pauses while it runs), the compile finishing in the idle time after it, then the steady
    compiled clip in both orientations. ``--clips-while-compiling`` runs clips back to back
    meanwhile instead (what a busy queue sees)."""
    backend._profile = None  # place it again: a fresh background compile for this profile
    clips = [one_clip(backend, profile, args)]
    log(f"{profile} first clip {clips[0]}")
    job = svd_speed.compile_job(backend.pipeline)
    while args.clips_while_compiling and job is not None and job.busy:
        if time.time() > deadline:
            break
        clips.append(one_clip(backend, profile, args))
        log(f"{profile} clip while compiling {clips[-1]}")
    row: dict[str, Any] = dict(clips=clips)
    if job is not None:
        t = time.time()
        job.wait(max(1.0, deadline - t))
        row["idle_wait_s"] = time.time() - t
    if job is not None:
        row["compile_s"] = {str(k): v for k, v in job.compile_s.items()}
        row["compile_errors"] = {str(k): v for k, v in job.errors.items()}
        row["busy_at_deadline"] = job.busy
    if job is None or job.busy:
        return row
    row["steady"] = one_clip(backend, profile, args)
    if svd_speed.SvdCompile.both_orientations:
        row["steady_portrait"] = one_clip(backend, profile, args, portrait=True)
    log(f"{profile} steady {row['steady']} portrait {row.get('steady_portrait')}")
    return row


@torch.inference_mode()
def kernel_profile(backend: SvdBackend, args: argparse.Namespace) -> list[tuple[str, float]]:
    """The 25 costliest CUDA kernels of one compiled UNet pass (the attention one by name)."""
    from torch.profiler import ProfilerActivity, profile

    pipe = backend.pipeline
    inputs = unet_inputs(pipe, args, pipe.unet.dtype)
    pipe.unet(**inputs, return_dict=False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        pipe.unet(**inputs, return_dict=False)
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:25]
    return [(e.key[:120], e.device_time_total / 1000) for e in rows]


def tiny_compile() -> None:
    """Let the CPU "compile" with a do-nothing backend whose graphs can be saved (the bench's
    smoke test; ``BENCH_TINY_INDUCTOR=1`` compiles for real, C++ for minutes)."""
    from tests.support.graphs import saveable_eager

    svd_speed.compile_available = lambda device: True
    if os.environ.get("BENCH_TINY_INDUCTOR") != "1":
        svd_speed.COMPILE_BACKEND = saveable_eager


def build(args: argparse.Namespace) -> Any:
    """Full-size SVD-XT with random weights, or with ``--tiny`` the test model on the CPU."""
    if not args.tiny:
        return build_full(args.device, torch.float16)
    from bench.svd_bench import build_tiny

    tiny_compile()
    return build_tiny(Path(tempfile.mkdtemp()) / "tiny")


def variant(backend: SvdBackend, args: argparse.Namespace) -> dict[str, Any]:
    """What the compiled graphs are made with beyond the profile (issue 13's untried two):
    ``--channels-last`` stores the UNet's and the decoder's 4D weights NHWC, so the compiled
    graph's convolutions need no layout transposes around cuDNN; ``--autotune-gemm`` lets
    inductor time its own matrix-product kernels against cuBLAS (GEMMs only, no CUDA graphs),
    the winners cached with the rest."""
    chosen: dict[str, Any] = {}
    if args.channels_last:
        pipe = backend.pipeline
        convs = 0
        for module in (*pipe.unet.modules(), *pipe.vae.decoder.modules()):
            if isinstance(module, torch.nn.Conv2d):  # the 3D temporal convolutions stay
                module.weight.data = module.weight.data.contiguous(
                    memory_format=torch.channels_last
                )
                convs += 1
        chosen["channels_last_convs"] = convs
    if args.autotune_gemm:
        import torch._inductor.config as inductor_config

        inductor_config.max_autotune_gemm = True
        inductor_config.max_autotune_gemm_backends = "ATEN,TRITON"
        chosen["autotune_gemm"] = "ATEN,TRITON"
    return chosen


def save_model(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Save the random-weight pipeline to ``--save-model`` for a later ``--restart --model-dir``
    (what a user's downloaded weights are): nothing compiled, nothing timed but the save."""
    pipe = build(args)
    results["built_since_start_s"] = time.time() - T_START
    pipe.save_pretrained(args.save_model)
    results["saved_since_start_s"] = time.time() - T_START
    results["saved_gb"] = (
        sum(f.stat().st_size for f in Path(args.save_model).rglob("*") if f.is_file()) / 1e9
    )
    log(f"saved {results}")


def coldstart(args: argparse.Namespace, results: dict[str, Any], save: Any) -> None:
    """Stock, then fast and low-vram from an empty cache (see the module docstring)."""
    deadline = T_START + args.budget_s
    pipe = build(args)
    dtype = pipe.unet.dtype
    log("built")
    ref = None
    results["unet_rel_l2_vs_fp32"] = {}
    if args.stock_s:  # stock's time from an earlier run of the same day (short device calls)
        stock = results["stock"] = {"s_per_clip": args.stock_s, "given": True}
    else:
        ref = fp32_reference(pipe, args)
        with torch.inference_mode():
            stock_out = pipe.unet(**unet_inputs(pipe, args, dtype), return_dict=False)[0]
        results["unet_rel_l2_vs_fp32"]["stock"] = rel_l2(stock_out.float().cpu(), ref)
        stock = time_stock(pipe, args, results)
    save()
    backend = adopt(pipe, args, compile=False)
    settings = backend.settings
    del pipe
    if not args.skip_eager:
        # The fast profile eager (no compile beside it): the baseline for what compiling costs.
        one_clip(backend, Profile.FAST, argparse.Namespace(**{**vars(args), "steps": 2}))
        results["fast_eager"] = one_clip(backend, Profile.FAST, args)
        with torch.inference_mode():
            out = backend.pipeline.unet(
                **unet_inputs(backend.pipeline, args, dtype), return_dict=False
            )[0]
        if ref is not None:
            results["unet_rel_l2_vs_fp32"]["fast_eager"] = rel_l2(out.float().cpu(), ref)
        log(f"fast eager {results['fast_eager']} {results['unet_rel_l2_vs_fp32']}")
        save()
    results["variant"] = variant(backend, args)
    backend.settings = dataclasses.replace(settings, compile=True)
    for profile in [Profile(name) for name in args.profiles.split(",")]:
        # Both orientations for the first profile; the landscape one alone after it (time).
        svd_speed.SvdCompile.both_orientations = profile is Profile.FAST and not args.landscape_only
        if time.time() > deadline - 60:
            results[str(profile)] = {"skipped": "out of time"}
            break
        try:
            row = cold_profile(backend, profile, args, deadline)
            first, steady = row["clips"][0]["s"], row.get("steady", {}).get("s")
            row["first_clip_vs_stock"] = first / stock["s_per_clip"]
            if steady:
                row["steady_vs_stock"] = steady / stock["s_per_clip"]
            if profile is Profile.FAST and steady and ref is not None:
                with torch.inference_mode():
                    out = backend.pipeline.unet(
                        **unet_inputs(backend.pipeline, args, dtype), return_dict=False
                    )[0]
                results["unet_rel_l2_vs_fp32"]["fast_compiled"] = rel_l2(out.float().cpu(), ref)
                if args.device.startswith("cuda"):
                    results["kernels_ms"] = kernel_profile(backend, args)
        except Exception as exc:  # keep the other profile's numbers
            row = {"error": f"{type(exc).__name__}: {exc}"}
        results[str(profile)] = row
        log(f"{profile}: {row}")
        save()


def warm(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Fill ``--cache-dir`` for a later ``--restart``: the full-size random-weight pipeline
    (saved to ``--model-dir`` if given) compiled with nothing else running."""
    pipe = build(args)
    if args.model_dir:
        pipe.save_pretrained(args.model_dir)
        results["saved_since_start_s"] = time.time() - T_START
    backend = adopt(pipe, args, compile=True)
    del pipe
    backend.settings = dataclasses.replace(backend.settings, profile=Profile.FAST)
    svd_speed.LOAD_GRACE_S = 0.0  # no clip is coming: compile at once
    backend.prepare(args.width, args.height)
    job = svd_speed.compile_job(backend.pipeline)
    if job is not None:
        job.wait(max(1.0, T_START + args.budget_s - time.time()))
        results["compile_s"] = {str(k): v for k, v in job.compile_s.items()}
        results["compile_errors"] = {str(k): v for k, v in job.errors.items()}
        results["busy_at_deadline"] = job.busy
    log(f"warm {results}")


def restart(args: argparse.Namespace, results: dict[str, Any], save: Any) -> SvdBackend:
    """A new process: seconds from its start (``BENCH_T0``) to each step of a restarted
    service's first clip, in ``since_start_s``. With ``--model-dir`` the weights load through
    the engine's own ``from_pretrained`` (as a restarted service does); without it they are
    built at random in memory. Then, within ``--budget-s``, the compile and a second clip."""
    since: dict[str, float] = {}
    results["since_start_s"] = since

    def mark(step: str) -> None:
        since[step] = time.time() - T_START
        log(f"{step} at {since[step]:.2f} s")
        save()

    # What SvdBackend.load imports first (diffusers, and transformers through SVD's pipeline).
    from diffusers import StableVideoDiffusionPipeline  # noqa: F401

    mark("imports")
    if args.device.startswith("cuda"):
        torch.cuda.mem_get_info()  # the CUDA context, which load's free-memory check makes
        mark("cuda_ready")
    if args.model_dir:
        if args.tiny:
            tiny_compile()  # build() does this for the other branch
        settings = SvdSettings(
            model=args.model_dir,
            device=args.device,
            frames=args.frames,
            compile=True,
            cache_dir=args.cache_dir,
            profile=Profile.FAST,
        )
        backend = SvdBackend(settings)
        if args.load_via_cpu:
            svd.reads_onto_device = lambda *a: False
        backend.load()
        mark("loaded")
    else:
        pipe = build(args)
        mark("built")
        backend = adopt(pipe, args, compile=True)
        del pipe
    results["weights_loaded_on"] = str(next(backend.pipeline.unet.parameters()).device)
    backend.settings = dataclasses.replace(backend.settings, profile=Profile.FAST)
    backend.prepare(args.width, args.height)  # what SvdEngine.load does: compile from now on
    mark("placed")
    results["first_clip"] = one_clip(backend, Profile.FAST, args)
    mark("first_clip")
    job = svd_speed.compile_job(backend.pipeline)
    if job is not None:
        job.wait(max(1.0, T_START + args.budget_s - time.time()))
        results["compile_s"] = {str(k): v for k, v in job.compile_s.items()}
        results["compile_errors"] = {str(k): v for k, v in job.errors.items()}
        results["busy_at_deadline"] = job.busy
        results["graphs_loaded"] = job.loaded_files  # saved by an earlier process
        results["graphs_saved"] = job.saved_files
        if not job.busy:
            results["second_clip"] = one_clip(backend, Profile.FAST, args)
            mark("second_clip")
    log(f"restart {results}")
    return backend


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
    p.add_argument("--coldstart", action="store_true", help="first clips from an empty cache")
    p.add_argument("--restart", action="store_true", help="a new process with a warm cache")
    p.add_argument("--warm", action="store_true", help="save the weights, fill the cache")
    p.add_argument("--model-dir", default="", help="--warm saves, --restart loads it here")
    p.add_argument("--save-model", default="", help="only save the random-weight model here")
    p.add_argument("--load-via-cpu", action="store_true", help="--restart: the old loading")
    p.add_argument("--one-orientation", action="store_true", help="compile landscape only")
    p.add_argument("--clips-while-compiling", action="store_true", help="no idle time")
    p.add_argument("--tiny", action="store_true", help="the test model on the CPU (smoke)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting phases after")
    p.add_argument("--skip-eager", action="store_true", help="--coldstart: no eager baseline")
    p.add_argument("--stock-s", type=float, default=0.0, help="--coldstart: stock's s, not run")
    p.add_argument("--landscape-only", action="store_true", help="--coldstart: compile one")
    p.add_argument("--channels-last", action="store_true", help="--coldstart: NHWC weights")
    p.add_argument("--autotune-gemm", action="store_true", help="--coldstart: GEMM autotune")
    args = p.parse_args()
    results: dict[str, Any] = {"date": "2026-11-26", "argv": sys.argv, "torch": torch.__version__}
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(results, indent=2, default=str))

    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
    if args.save_model:
        results["date"] = time.strftime("%Y-%m-%d")
        try:
            save_model(args, results)
        finally:
            save()
        return
    if args.coldstart or args.restart or args.warm:
        svd_speed.configure_torch(Path(args.cache_dir))
        results["date"] = time.strftime("%Y-%m-%d")
        if args.one_orientation:
            svd_speed.SvdCompile.both_orientations = False
        backend = None
        try:
            if args.coldstart:
                coldstart(args, results, save)
            elif args.warm:
                warm(args, results)
            else:
                backend = restart(args, results, save)
        finally:
            save()
        job = svd_speed.compile_job(backend.pipeline) if backend is not None else None
        if job is not None and job.busy:
            # The budget ended with the compile still running (an empty cache): leave without
            # waiting for it, as the device call's time is what the next command needs.
            log("compile still running at the budget's end; exiting without it")
            sys.stdout.flush()
            os._exit(0)
        return
    checks(args.device, results)
    save()
    if args.tiny_only:
        return

    pipe = build_full(args.device, torch.float16)
    stock = time_stock(pipe, args, results)
    save()
    backend = adopt(pipe, args, compile=True)
    settings = backend.settings
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
