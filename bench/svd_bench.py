"""Time stock diffusers SVD-XT against the project's fast, low-vram and fp8 profiles in one process.

Every configuration gets a pipeline with the same random weights (same seed), so clips can
be compared frame by frame; the full-size run builds SVD-XT's architecture directly on the
GPU in fp16 (no weights needed). Each profile is applied with ``generator.engines.svd_speed``'s
``apply_*`` functions on the pipeline object, the code path ``generator.engines.svd`` calls.

    python bench/svd_bench.py --profiles stock,fast,low-vram,fp8 --out results.json
    python bench/svd_bench.py --cpu-smoke --out /tmp/smoke.json      # seconds, on CPU
    BENCH_T0=$(date +%s.%N) python bench/svd_bench.py --restart-probe  # start-to-first-clip

Reported per configuration: s/clip, s/step, decode s, peak allocated (reset per clip, split
at the last denoising step), one-time costs, ratio to stock, the relative L2 error of one
UNet forward against an fp32 reference of the same weights, and the frames' difference
from stock's on the same seed.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

T_START = float(os.environ.get("BENCH_T0") or time.time())

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import torch  # noqa: E402

from generator.engines import svd_speed  # noqa: E402

# tests.support.tiny_svd (pytest with it) is imported where used: a --restart then imports
# what the service's GPU process imports, so its "imports" time is the service's.

GIB = 1024**3
SEED_WEIGHTS = 0
SEED_CLIP = 42


def log(msg: str) -> None:
    print(f"[{time.time() - T_START:7.1f}s] {msg}", flush=True)


# --- building pipelines ----------------------------------------------------------------------


def build_full(device: str, dtype: torch.dtype) -> Any:
    """SVD-XT's architecture with seeded random weights, built on ``device`` in ``dtype``."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from tests.support.tiny_svd import svd_xt_scheduler

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in fp16 directly: half the memory and time
    try:
        with torch.device(device):
            torch.manual_seed(SEED_WEIGHTS)
            unet = UNetSpatioTemporalConditionModel(sample_size=96)
            torch.manual_seed(SEED_WEIGHTS + 1)
            # SVD-XT's vae/config.json (the class defaults are a one-level toy VAE).
            vae = AutoencoderKLTemporalDecoder(
                down_block_types=("DownEncoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=4,
                sample_size=768,
                scaling_factor=0.18215,
                force_upcast=True,
            )
            torch.manual_seed(SEED_WEIGHTS + 2)
            encoder = CLIPVisionModelWithProjection(
                CLIPVisionConfig(
                    hidden_size=1280,
                    intermediate_size=5120,
                    num_attention_heads=16,
                    num_hidden_layers=32,
                    patch_size=14,
                    image_size=224,
                    projection_dim=1024,
                    hidden_act="gelu",
                )
            )
    finally:
        torch.set_default_dtype(previous)
    # A few diffusers parameters are made with the legacy ``torch.Tensor(...)``, which ignores
    # the device context; move the stragglers.
    unet, vae, encoder = (m.to(device) for m in (unet, vae, encoder))
    pipe = StableVideoDiffusionPipeline(
        vae=vae.eval(),
        image_encoder=encoder.to(dtype).eval(),
        unet=unet.eval(),
        scheduler=svd_xt_scheduler(),
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny(folder: Path) -> Any:
    """The tests' tiny pipeline (fp32, CPU)."""
    from diffusers import StableVideoDiffusionPipeline

    if not (folder / "model_index.json").exists():
        from tests.support.tiny_svd import build_tiny_svd

        build_tiny_svd(folder)
    pipe = StableVideoDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- measuring -------------------------------------------------------------------------------


class Clock:
    """Wall time that waits for the GPU before reading."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def run_clip(pipe: Any, args: argparse.Namespace, *, steps: int, chunk: int) -> dict[str, Any]:
    """One clip; returns timings, peaks and the frames (CPU, fp16)."""
    from PIL import Image

    clock = Clock(args.device)
    cuda = args.device.startswith("cuda")
    image = Image.new("RGB", (args.width, args.height), (200, 120, 40))
    marks: list[float] = []
    denoise_peak = [0]
    final: list[torch.Tensor] = []

    def on_step(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        marks.append(clock.now())  # a sync per step costs microseconds next to a 0.5 s step
        if cuda:
            denoise_peak[0] = torch.cuda.max_memory_allocated()
        if i == steps - 1:
            # The denoised latents: comparable across decode chunks (the temporal decoder
            # mixes frames within a chunk, so frames differ by chunk size by design).
            final.append(kwargs["latents"].float().cpu())
        return kwargs

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = clock.now()
    with torch.inference_mode():
        out = pipe(
            image,
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=steps,
            decode_chunk_size=chunk,
            generator=torch.Generator(args.device).manual_seed(SEED_CLIP),
            output_type="pt",
            callback_on_step_end=on_step,
        )
    end = clock.now()
    step_times = [b - a for a, b in itertools.pairwise(marks)]
    return dict(
        s_per_clip=end - start,
        s_per_step=(sorted(step_times)[len(step_times) // 2] if step_times else end - start),
        first_step_s=marks[0] - start if marks else None,  # encode + first step
        decode_s=end - marks[-1] if marks else None,
        peak_gib=torch.cuda.max_memory_allocated() / GIB if cuda else None,
        denoise_peak_gib=denoise_peak[0] / GIB if cuda else None,
        frames=out.frames[0].to("cpu", torch.float16),
        latents=final[0] if final else None,
    )


def unet_inputs(pipe: Any, args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    """The CFG batch-2 inputs of one denoising step, fixed by seed."""
    unet = svd_speed.base_unet(pipe)
    g = torch.Generator("cpu").manual_seed(3)
    h, w = args.height // 8, args.width // 8
    shape = (2, args.frames, unet.config.in_channels, h, w)
    embed = unet.config.cross_attention_dim
    return dict(
        sample=torch.randn(shape, generator=g).to(args.device, dtype),
        timestep=torch.tensor(1.5, device=args.device),
        encoder_hidden_states=torch.randn(2, 1, embed, generator=g).to(args.device, dtype),
        added_time_ids=torch.tensor([[6.0, 127.0, 0.02]] * 2, device=args.device, dtype=dtype),
    )


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@torch.inference_mode()
def fp32_reference(pipe: Any, args: argparse.Namespace) -> torch.Tensor:
    """One UNet forward of a float32 copy of the same weights, TF32 off (true fp32)."""
    import copy

    unet = copy.deepcopy(svd_speed.base_unet(pipe)).float()
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = unet(**unet_inputs(pipe, args, torch.float32), return_dict=False)[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    del unet
    return ref.float().cpu()


def apply(pipe: Any, name: str, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Apply configuration ``name``; return what was done and its decode chunk."""
    dev, comp = args.device, args.compile
    if name == "stock":
        return {"steps": ["stock diffusers"], "skipped": []}, args.stock_chunk
    if name in ("fast", "fast-tuned"):
        if name == "fast-tuned":
            import torch._inductor.config as inductor_config

            # Inductor searches block sizes for its reduction and pointwise kernels (the norm
            # and elementwise third of a step), and freezing folds the weights into the graph
            # as constants (weight layouts chosen once); both cost compile time.
            inductor_config.coordinate_descent_tuning = True
            inductor_config.freezing = True
        applied = svd_speed.apply_fast(pipe, device=dev, compile=comp)
        chunk = svd_speed.FAST_DECODE_CHUNK
    elif name == "low-vram":
        applied = svd_speed.apply_low_vram(pipe, device=dev, compile=comp)
        chunk = svd_speed.LOW_VRAM_DECODE_CHUNK
    elif name in ("fp8", "fp8-eager"):
        # fp8 sits on top of the fast profile (fused projections first: torchao's fp8 weights
        # cannot be concatenated); compiling is lazy, so the first call traces fp8 linears.
        fast = svd_speed.apply_fast(pipe, device=dev, compile=comp and name == "fp8")
        fp8 = svd_speed.apply_fp8(pipe, device=dev)
        applied = svd_speed.Applied("fp8", fast.steps + fp8.steps, fast.skipped)
        chunk = svd_speed.FAST_DECODE_CHUNK
    else:
        raise SystemExit(f"unknown profile {name!r}")
    # The engine compiles behind eager clips; this bench times the compiled path, so it waits.
    shape = dict(height=args.height, width=args.width, frames=args.frames, decode_chunk=chunk)
    job = svd_speed.compile_job(pipe)
    if job is not None and not svd_speed.before_clip(pipe, **shape):
        job.wait()
        svd_speed.before_clip(pipe, **shape)
    return {"steps": list(applied.steps), "skipped": list(applied.skipped)}, chunk


def free(pipe: Any) -> None:
    del pipe
    gc.collect()
    torch._dynamo.reset()  # compiled frames hold the old modules alive
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- probes ----------------------------------------------------------------------------------


@torch.inference_mode()
def attention_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Milliseconds of SDPA per backend at SVD-XT's level-1 shapes (CFG batch, fp16)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    f, h, w = args.frames, args.height // 8, args.width // 8
    shapes = {
        "spatial 9216 tokens": (2 * f, 5, h * w, 64),
        "temporal 25 frames": (2 * h * w, 5, f, 64),
    }
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    result: dict[str, Any] = {}
    for label, shape in shapes.items():
        q, k, v = (torch.randn(shape, device=args.device, dtype=torch.float16) for _ in range(3))
        for bname, backend in backends.items():
            try:
                with sdpa_kernel(backend):
                    for _ in range(3):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    for _ in range(10):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    torch.cuda.synchronize()
                result[f"{label} {bname} ms"] = (time.perf_counter() - t) * 100
            except Exception as exc:
                result[f"{label} {bname} ms"] = f"unsupported: {type(exc).__name__}"
    return result


# --- main ------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import torchao

        info["torchao"] = torchao.__version__
    except Exception as exc:
        info["torchao"] = f"unavailable ({type(exc).__name__})"
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", default="stock,fast,low-vram")
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--height", type=int, default=576)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=1, help="timed clips per configuration")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps of the warm-up clip")
    p.add_argument("--stock-chunk", type=int, default=8, help="stock's decode chunk")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--cache-dir", default="data/inductor-cache")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="results.json")
    p.add_argument("--probe", action="store_true", help="attention backend timings")
    p.add_argument("--no-equivalence", dest="equivalence", action="store_false")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny pipeline on CPU, seconds")
    p.add_argument(
        "--restart-probe",
        action="store_true",
        help="fast profile only, no warm-up: seconds from BENCH_T0 (process start) to 1st clip",
    )
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.device, args.frames, args.steps, args.height, args.width = "cpu", 2, 2, 32, 32
        args.warmup_steps, args.stock_chunk, args.probe = 1, 2, False
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    svd_speed.configure_torch(Path(args.cache_dir) if args.cache_dir else None)
    results: dict[str, Any] = {
        "date": "2026-11-26",
        "argv": sys.argv,
        "versions": versions(),
        "configs": [],
    }
    out = Path(args.out)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))

    log(f"imports done; {results['versions']}")
    tiny_dir = Path(tempfile.gettempdir()) / "svd-bench-tiny"
    dtype = torch.float32 if args.cpu_smoke else torch.float16

    def build() -> Any:
        t = time.perf_counter()
        pipe = build_tiny(tiny_dir) if args.cpu_smoke else build_full(args.device, dtype)
        where = {
            name: sorted({str(t.device) for t in (*m.parameters(), *m.buffers())})
            for name, m in pipe.components.items()
            if isinstance(m, torch.nn.Module)
        }
        log(f"built pipeline in {time.perf_counter() - t:.1f}s; devices {where}")
        return pipe

    if args.restart_probe:
        pipe = build()
        applied, chunk = apply(pipe, "fast", args)
        clip = run_clip(pipe, args, steps=args.steps, chunk=chunk)
        done = time.time() - T_START
        clip.pop("frames")
        clip.pop("latents")
        results["restart"] = {"first_clip_done_s_from_start": done, **clip, **applied}
        log(f"restart probe: first clip done {done:.1f}s after process start: {clip}")
        save()
        return

    if args.probe and args.device.startswith("cuda"):
        results["attention_probe"] = attention_probe(args)
        log(f"attention probe {results['attention_probe']}")
        save()

    reference = None
    stock_frames = None
    stock_time = None
    stock_chunk, stock_latents = None, None
    for name in args.profiles.split(","):
        row: dict[str, Any] = {"config": name}
        results["configs"].append(row)
        try:
            pipe = build()
            if args.equivalence and reference is None:
                t = time.perf_counter()
                reference = fp32_reference(pipe, args)
                log(f"fp32 reference forward in {time.perf_counter() - t:.1f}s")
            t = time.perf_counter()
            applied, chunk = apply(pipe, name, args)
            row.update(applied, decode_chunk=chunk, apply_s=time.perf_counter() - t)
            log(f"{name}: applied {applied}")
            if args.equivalence:
                with torch.inference_mode():
                    t = time.perf_counter()
                    got = pipe.unet(**unet_inputs(pipe, args, dtype), return_dict=False)[0]
                    row["unet_first_call_s"] = Clock(args.device).now() - t
                row["unet_rel_l2_vs_fp32"] = rel_l2(got.float().cpu(), reference)
                del got
                log(f"{name}: unet rel L2 vs fp32 {row['unet_rel_l2_vs_fp32']:.2e}")
            warm = run_clip(pipe, args, steps=args.warmup_steps, chunk=chunk)
            row["warmup_clip_s"] = warm["s_per_clip"]
            log(f"{name}: warm-up clip ({args.warmup_steps} steps) {warm['s_per_clip']:.1f}s")
            runs = [
                run_clip(pipe, args, steps=args.steps, chunk=chunk) for _ in range(args.repeats)
            ]
            best = min(runs, key=lambda r: r["s_per_clip"])
            frames, latents = best.pop("frames"), best.pop("latents")
            for r in runs:
                r.pop("frames", None)
                r.pop("latents", None)
            row.update(best, all_s_per_clip=[r["s_per_clip"] for r in runs])
            if name == "stock":
                stock_frames, stock_time = frames, best["s_per_clip"]
                stock_chunk, stock_latents = chunk, latents
            if stock_latents is not None:
                row["latents_vs_stock_rel_l2"] = rel_l2(latents, stock_latents)
            if stock_time:
                row["ratio_to_stock"] = best["s_per_clip"] / stock_time
            same_chunks = min(chunk, args.frames) == min(stock_chunk or 0, args.frames)
            if stock_frames is not None and same_chunks:
                diff = (frames.float() - stock_frames.float()).abs()
                row["frames_vs_stock_max_abs"] = float(diff.max())
                row["frames_vs_stock_mean_abs"] = float(diff.mean())
            log(
                f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'steps'}, default=str)}"
            )
            del pipe
        except Exception as exc:  # keep the other configurations' numbers
            row["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: FAILED {row['error']}\n{traceback.format_exc()}")
        free(None)
        save()
    log(f"done; wrote {out}")


if __name__ == "__main__":
    main()
