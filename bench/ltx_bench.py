"""Time stock diffusers LTX-Video against the project's fast and 12 GB profiles in one process.

LTX-Video 2B distilled's architecture (transformer, VAE, T5-XXL from the published configs)
is built with seeded random weights directly on the GPU in bf16, and a word-level stand-in
tokenizer feeds real prompt strings through the pipeline's own ``encode_prompt``. Every
configuration runs the same modules, so clips compare frame by frame with stock's on the
same seed. The profiles come from ``generator.engines.ltx_speed``.

    python bench/ltx_bench.py --out results.json                  # H200: stock, fast, compile
    python bench/ltx_bench.py --cap-gib 12 --out results.json     # + the 12 GiB profile
    python bench/ltx_bench.py --tiny --out /tmp/smoke.json        # seconds, on CPU

Reported per configuration (median of the timed clips, after a warm-up clip): seconds from
photo to frames (``uint8``/float numpy on the CPU, what the encoder takes) and from photo to
a Telegram-ready MP4 (``generator.encode.encode_frames``), seconds per step, decode, peak
allocated, and the relative error of the final latents and frames against stock's.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

T_START = time.time()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator.config import EncodeSettings  # noqa: E402
from generator.encode import encode_frames  # noqa: E402
from generator.engines import device, ltx_speed  # noqa: E402
from generator.options import MOTION_BANDS, PhotoType, Profile  # noqa: E402
from generator.prompt import NEGATIVE_PROMPT, build_prompt  # noqa: E402

GIB = 1024**3
SEED_WEIGHTS = 0
SEED_CLIP = 42
#: The distilled checkpoint's 8-step schedule (diffusers' LTX docs for the distilled models).
DISTILLED_TIMESTEPS = [1000, 993, 987, 981, 975, 909, 725, 0.03]
DECODE_TIMESTEP = 0.05
DECODE_NOISE_SCALE = 0.025

# LTX-Video 2B (0.9.x): diffusers' scripts/convert_ltx_to_diffusers.py, get_transformer_config.
TRANSFORMER_2B = dict(
    in_channels=128,
    out_channels=128,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=32,
    attention_head_dim=64,
    cross_attention_dim=2048,
    num_layers=28,
    activation_fn="gelu-approximate",
    qk_norm="rms_norm_across_heads",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    caption_channels=4096,
    attention_bias=True,
    attention_out_bias=True,
)
# The 0.9.5+ VAE (get_vae_config("0.9.7")): 32x spatial, 8x temporal, timestep-conditioned.
VAE_095 = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=128,
    block_out_channels=(128, 256, 512, 1024, 2048),
    down_block_types=("LTXVideo095DownBlock3D",) * 4,
    decoder_block_out_channels=(256, 512, 1024),
    layers_per_block=(4, 6, 6, 2, 2),
    decoder_layers_per_block=(5, 5, 5, 5),
    spatio_temporal_scaling=(True, True, True, True),
    decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False),
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2),
    timestep_conditioning=True,
    patch_size=4,
    patch_size_t=1,
    resnet_norm_eps=1e-6,
    scaling_factor=1.0,
    encoder_causal=True,
    decoder_causal=False,
    spatial_compression_ratio=32,
    temporal_compression_ratio=8,
)
# T5 v1.1 XXL encoder (google/t5-v1_1-xxl config.json), 4.76B parameters.
T5_XXL = dict(
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_heads=64,
    num_layers=24,
    vocab_size=32128,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
)
# The distilled models' scheduler_config.json (no dynamic shifting: the timesteps are given).
SCHEDULER = dict(
    base_image_seq_len=1024,
    base_shift=0.95,
    max_image_seq_len=4096,
    max_shift=2.05,
    num_train_timesteps=1000,
    shift=1.0,
    shift_terminal=0.1,
    use_dynamic_shifting=False,
)


def log(msg: str) -> None:
    print(f"[{time.time() - T_START:7.1f}s] {msg}", flush=True)


# --- building the pipeline ---------------------------------------------------------------------


def prompts() -> list[str]:
    """Every built-in prompt (photo type x intensity), the strings the engine sends."""
    return [build_prompt(t, band.name) for t in PhotoType for band in MOTION_BANDS]


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level stand-in for T5's tokenizer: pad 0, eos 1, unk 2, like T5's ids.

    Knows the words of the project's prompts; anything else is ``<unk>``. Real strings go
    through the pipeline's own ``encode_prompt`` (padding, truncation, attention mask).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = sorted(
        {w for p in [*prompts(), NEGATIVE_PROMPT] for w in re.findall(r"\w+|[^\w\s]", p.lower())}
    )
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words[: vocab_size - len(vocab)]:
        vocab[word] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_pipe(device: str, dtype: torch.dtype, *, tiny: bool) -> Any:
    """LTXConditionPipeline with seeded random weights, built on ``device`` in ``dtype``."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXConditionPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    if tiny:  # diffusers' own LTX pipeline tests' shapes
        t_cfg: dict[str, Any] = dict(
            in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8,
            cross_attention_dim=32, num_layers=1, caption_channels=32,
        )  # fmt: skip
        v_cfg: dict[str, Any] = dict(
            latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
            upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1, patch_size_t=1,
        )  # fmt: skip
        e_cfg: dict[str, Any] = dict(
            d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, vocab_size=512
        )
    else:
        t_cfg, v_cfg, e_cfg = TRANSFORMER_2B, VAE_095, T5_XXL

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in bf16 directly: half the memory and time
    try:
        with torch.device(device):
            torch.manual_seed(SEED_WEIGHTS)
            transformer = LTXVideoTransformer3DModel(**t_cfg)
            torch.manual_seed(SEED_WEIGHTS + 1)
            vae = AutoencoderKLLTXVideo(**v_cfg)
            torch.manual_seed(SEED_WEIGHTS + 2)
            encoder = T5EncoderModel(T5Config(**e_cfg))
    finally:
        torch.set_default_dtype(previous)
    # A few parameters are made with the legacy ``torch.Tensor(...)``, which ignores the device
    # context; move the stragglers.
    transformer, vae, encoder = (m.to(device, dtype).eval() for m in (transformer, vae, encoder))
    pipe = LTXConditionPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=encoder,
        tokenizer=word_tokenizer(e_cfg["vocab_size"]),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photo(width: int, height: int) -> Any:
    """A seeded stand-in photo: smooth gradients plus grain, as a phone photo has."""
    from PIL import Image

    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 37 + y / 53)], axis=-1)
    pixels = np.clip(base * 255 + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


# --- one clip ------------------------------------------------------------------------------------


class Clock:
    """Wall time that waits for the GPU before reading."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def run_clip(
    pipe: Any, args: argparse.Namespace, *, ours: bool, cached: bool = True, mp4: bool = True
) -> dict[str, Any]:
    """One clip from photo to frames to MP4, the way stock or our engine makes it."""
    clock = Clock(args.device)
    cuda = args.device.startswith("cuda")
    image = photo(args.width, args.height)
    prompt = build_prompt(PhotoType.PORTRAIT, "gentle")
    marks: list[float] = []
    final: list[torch.Tensor] = []
    steps = len(args.timesteps)

    def on_step(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        marks.append(clock.now())  # a sync per step costs microseconds next to a 90 ms step
        if i == steps - 1:
            final.append(kwargs["latents"].float().cpu())
        return kwargs

    common = dict(
        image=image,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        frame_rate=args.fps,
        timesteps=args.timesteps,
        guidance_scale=1.0,
        decode_timestep=DECODE_TIMESTEP,
        decode_noise_scale=DECODE_NOISE_SCALE,
        generator=torch.Generator(args.device).manual_seed(SEED_CLIP),
        callback_on_step_end=on_step,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = clock.now()
    if ours:
        compiled = ltx_speed.before_clip(
            pipe, height=args.height, width=args.width, num_frames=args.frames
        )
        cache = ltx_speed.prompt_cache(pipe)
        if not cached:
            cache.clear()
        embeds = cache.kwargs(pipe, prompt, NEGATIVE_PROMPT, guidance_scale=1.0)
        out = pipe(**common, **embeds, output_type="pt")
        frames_end_pipe = clock.now()
        frames = device.frames_to_uint8(out.frames[0])
    else:
        out = pipe(**common, prompt=prompt, negative_prompt=NEGATIVE_PROMPT, output_type="np")
        frames_end_pipe = clock.now()
        frames = out.frames[0]  # float32 numpy, (frames, H, W, 3), already on the CPU
    frames_done = clock.now()
    row: dict[str, Any] = dict(
        s_to_frames=frames_done - start,
        s_per_step=statistics.median(b - a for a, b in itertools.pairwise(marks))
        if len(marks) > 1
        else None,
        first_step_s=marks[0] - start,  # prompt + image encode + first step
        decode_s=frames_end_pipe - marks[-1],
        to_numpy_s=frames_done - frames_end_pipe,
        peak_gib=torch.cuda.max_memory_allocated() / GIB if cuda else None,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB if cuda else None,
        compiled=float(ours and compiled),
    )
    if mp4:
        with tempfile.TemporaryDirectory() as folder:
            info = encode_frames(
                list(frames), args.fps, Path(folder) / "clip.mp4", EncodeSettings()
            )
        row |= dict(s_to_mp4=time.perf_counter() - start, mp4_bytes=info.size_bytes)
        row["encode_s"] = row["s_to_mp4"] - row["s_to_frames"]
    row["_frames"] = _as_uint8(frames)
    row["_latents"] = final[0]
    return row


def _as_uint8(frames: np.ndarray) -> np.ndarray:
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def rel_l2(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a64, b64 = (torch.as_tensor(np.asarray(v), dtype=torch.float64) for v in (a, b))
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-30))


# --- configurations -------------------------------------------------------------------------------


def time_config(
    name: str,
    pipe: Any,
    args: argparse.Namespace,
    results: dict[str, Any],
    *,
    ours: bool,
    cached: bool = True,
    setup: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Warm-up clip, then ``--repeats`` timed clips; one row in ``results["configs"]``."""
    log(f"config {name}")
    row: dict[str, Any] = dict(config=name)
    try:
        if setup is not None:
            row |= setup() or {}
        warm = run_clip(pipe, args, ours=ours, cached=True, mp4=True)
        row["warmup_s_to_frames"] = warm["s_to_frames"]
        row["warmup_decode_s"] = warm["decode_s"]
        clips = [run_clip(pipe, args, ours=ours, cached=cached) for _ in range(args.repeats)]
        for key in clips[0]:
            if key.startswith("_"):
                continue
            values = [c[key] for c in clips if c[key] is not None]
            row[key] = statistics.median(values) if values else None
        row["s_to_frames_all"] = [c["s_to_frames"] for c in clips]
        stock = results.get("_stock")
        last = clips[-1]
        if stock is None and not ours:
            results["_stock"] = last
        elif stock is not None:
            row["latents_vs_stock_rel_l2"] = rel_l2(last["_latents"], stock["_latents"])
            row["frames_vs_stock_rel_l2"] = rel_l2(last["_frames"], stock["_frames"])
            diff = np.abs(last["_frames"].astype(np.int16) - stock["_frames"].astype(np.int16))
            row["frames_vs_stock_max_abs"] = int(diff.max())
            row["frames_vs_stock_mean_abs"] = float(diff.mean())
        row["finite"] = bool(torch.isfinite(last["_latents"]).all())
    except Exception as exc:  # an OOM in one config must not lose the others
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        traceback.print_exc()
    results["configs"].append(row)
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
    log(f"  {shown}")
    write(results, args.out)


def background_compile(pipe: Any, args: argparse.Namespace, results: dict[str, Any]) -> Any:
    """Serve eager clips while the blocks compile on a side thread; record what users saw."""
    log("background compile: eager clips while the side thread compiles")
    ltx_speed.apply_profile(pipe, Profile.FAST, device=args.device, compile=True)
    job = getattr(pipe, ltx_speed._COMPILE_ATTR)
    shape = (args.height, args.width, args.frames)
    start = time.perf_counter()
    served: list[float] = []
    while time.perf_counter() - start < args.compile_budget_s:
        clip = run_clip(pipe, args, ours=True, mp4=False)
        if clip["compiled"]:
            break
        served.append(clip["s_to_frames"])
    row = dict(
        config="background-compile",
        eager_clips_while_compiling=len(served),
        eager_s_to_frames_while_compiling=served,
        compile_s=job.compile_s.get(shape),
        ready_after_s=time.perf_counter() - start,
        error=job.errors.get(shape),
        swapped=job.swapped,
    )
    results["configs"].append(row)
    log(f"  {row}")
    write(results, args.out)
    return job


def encode_study(frames: np.ndarray, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """MP4 encode time by x264 preset, for the benchmark's clip and for a smooth moving photo.

    Random weights make noisy frames that x264 works far harder on than a real clip; the
    slowly panning photo stands in for a real clip's cost.
    """
    from generator import encode

    base = np.asarray(photo(args.width + args.frames, args.height))
    smooth = np.stack([base[:, i : i + args.width] for i in range(args.frames)])
    calls: list[tuple[str, float]] = []
    real_run = encode._run_ffmpeg

    def timed_run(command: list[str], **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_run(command, **kwargs)
        finally:
            what = "encode" if "libx264" in command else "probe/thumbnail"
            calls.append((what, time.perf_counter() - t0))

    encode._run_ffmpeg = timed_run
    try:
        for clip_name, clip in (("benchmark clip", frames), ("smooth pan", smooth)):
            for preset in args.encode_presets.split(","):
                calls.clear()
                settings = EncodeSettings(preset=preset)
                with tempfile.TemporaryDirectory() as folder:
                    t0 = time.perf_counter()
                    info = encode_frames(list(clip), args.fps, Path(folder) / "c.mp4", settings)
                    total = time.perf_counter() - t0
                row = dict(
                    config=f"encode {clip_name}, preset {preset}",
                    encode_s=total,
                    x264_s=sum(t for w, t in calls if w == "encode"),
                    probe_and_thumbnail_s=sum(t for w, t in calls if w != "encode"),
                    mp4_bytes=info.size_bytes,
                    ffmpeg_runs=len(calls),
                )
                results["configs"].append(row)
                log(f"  {row}")
    finally:
        encode._run_ffmpeg = real_run
    write(results, args.out)


def engine_configs(pipe: Any, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Clips through ``LtxEngine.generate`` then ``encode_frames``: the bot's and the CLI's path.

    The engine gets the benchmark's pipeline instead of loading weights from disk; everything
    after loading (profile, prompt, compile, frames) is the engine's own code.
    """
    import importlib

    from generator.config import LtxSettings
    from generator.options import Backend, Intensity, Request

    # By name: the engine module lands separately from this benchmark.
    LtxEngine = importlib.import_module("generator.engines.ltx").LtxEngine

    def run(engine: Any, request: Request, image: Any, folder: Path) -> dict[str, Any]:
        clock = Clock(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = clock.now()
        made = engine.generate(image, request)
        frames_s = clock.now() - start
        info = encode_frames(made.frames, made.fps, folder / "clip.mp4", EncodeSettings())
        return dict(
            s_to_frames=frames_s,
            s_to_mp4=time.perf_counter() - start,
            frames=info.frames,
            mp4_bytes=info.size_bytes,
            peak_gib=torch.cuda.max_memory_allocated() / GIB if clock.cuda else None,
            compiled=bool(
                getattr(pipe, ltx_speed._COMPILE_ATTR, None)
                and getattr(pipe, ltx_speed._COMPILE_ATTR).swapped
            ),
        )

    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = photo(args.width, args.height)
        image.save(folder / "photo.png")
        for profile in args.engine_profiles.split(","):
            chosen = Profile(profile)
            seconds = args.frames / args.fps
            settings = LtxSettings(
                device=args.device, profile=chosen, min_seconds=min(2.0, seconds)
            )
            engine = LtxEngine(settings)
            # Hand the engine the built pipeline, as load() would have.
            engine._pipe, engine._model, engine._device = pipe, settings.model, args.device
            engine._profile = None
            if chosen is Profile.LOW_VRAM and args.cap_gib and args.device.startswith("cuda"):
                total = torch.cuda.get_device_properties(0).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
            request = Request(
                image=folder / "photo.png",
                backend=Backend.LTX,
                duration=args.frames / args.fps,
                seed=SEED_CLIP,
                photo_type=PhotoType.PORTRAIT,
                intensity=Intensity.SUBTLE,
                profile=chosen,
            )
            log(f"engine {profile}")
            clips = []
            start = time.perf_counter()
            try:
                # Eager clips until the compiled blocks take over (only CUDA compiles).
                while len(clips) < 3 or (cuda and not clips[-1]["compiled"]):
                    clips.append(run(engine, request, image, folder))
                    if time.perf_counter() - start > args.compile_budget_s:
                        break
                clips += [run(engine, request, image, folder) for _ in range(args.repeats)]
                if chosen is Profile.FAST:  # a portrait photo: same token count, same graph?
                    tall = photo(args.height, args.width)
                    tall.save(folder / "photo.png")
                    portrait = [run(engine, request, tall, folder) for _ in range(2)]
                    image.save(folder / "photo.png")
                    for clip in portrait:
                        clip["portrait"] = True
                    clips += portrait
            except Exception as exc:
                traceback.print_exc()
                clips.append(dict(error=f"{type(exc).__name__}: {str(exc)[:300]}"))
            row = dict(config=f"engine {profile}", clips=clips)
            landscape = [c for c in clips if not c.get("portrait")]
            timed = [c for c in landscape[-args.repeats :] if "s_to_frames" in c]
            for key in ("s_to_frames", "s_to_mp4", "peak_gib"):
                values = [c[key] for c in timed if c.get(key) is not None]
                row[key] = statistics.median(values) if values else None
            results["configs"].append(row)
            log(f"  {row}")
            write(results, args.out)


def write(results: dict[str, Any], out: Path | None) -> None:
    if out is None:
        return
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_text(json.dumps(public, indent=2, default=str))
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="diffusers' test shapes, on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="timed clips per config")
    parser.add_argument("--cap-gib", type=float, default=None, help="also run the capped profile")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-budget-s", type=float, default=240.0)
    parser.add_argument("--compile-vae", action="store_true", help="last: compile the decoder")
    parser.add_argument("--compile-vae-before-s", type=float, default=360.0)
    parser.add_argument(
        "--encode-presets", default="medium,veryfast", help="x264 presets to time; '' skips"
    )
    parser.add_argument(
        "--engine-profiles",
        default="",
        help="also time LtxEngine.generate in these profiles, e.g. fast,low-vram (last)",
    )
    parser.add_argument("--skip-ours", action="store_true", help="stock and engine rows only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        args.device = args.device or "cpu"
        args.frames, args.width, args.height = 9, 32, 32
    args.device = args.device or "cuda"
    args.timesteps = DISTILLED_TIMESTEPS if not args.tiny else DISTILLED_TIMESTEPS[::4]
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()  # one warning per step about timesteps

    results: dict[str, Any] = dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        device=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        versions=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
        ),
        clip=dict(
            frames=args.frames,
            width=args.width,
            height=args.height,
            fps=args.fps,
            timesteps=args.timesteps,
            guidance_scale=1.0,
            dtype=str(dtype),
        ),
        configs=[],
    )
    log(f"building the pipeline on {args.device} ({'tiny' if args.tiny else 'full size'})")
    pipe = build_pipe(args.device, dtype, tiny=args.tiny)
    results["params_b"] = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e9
        for name in ("transformer", "vae", "text_encoder")
    }
    log(f"built: {results['params_b']}")

    # 1. Stock: everything on the GPU, prompt encoded every clip, float numpy frames.
    time_config("stock", pipe, args, results, ours=False)
    if not args.skip_ours:
        # 2. Ours, eager: cached prompt embeddings, frames to uint8 on the GPU.
        time_config(
            "fast",
            pipe,
            args,
            results,
            ours=True,
            setup=lambda: (
                ltx_speed.apply_profile(pipe, Profile.FAST, device=args.device, compile=False) or {}
            ),
        )
        time_config("fast-uncached", pipe, args, results, ours=True, cached=False)
        # 3. Ours with the transformer's blocks compiled behind eager clips.
        job = None
        if cuda and not args.no_compile:
            job = background_compile(pipe, args, results)
            if job.swapped:
                time_config("fast-compiled", pipe, args, results, ours=True)
        if args.encode_presets:
            frames = run_clip(pipe, args, ours=True, mp4=False)["_frames"]
            encode_study(frames, args, results)
        # 4. The 12 GiB profile: text encoder streamed from CPU memory, the rest resident.
        if args.cap_gib:

            def low_vram(tiling: bool) -> dict[str, Any]:
                ltx_speed.apply_profile(
                    pipe, Profile.LOW_VRAM, device=args.device, vae_tiling=tiling
                )
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                    total = torch.cuda.get_device_properties(0).total_memory
                    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
                return dict(cap_gib=args.cap_gib, vae_tiling=tiling)

            label = "compiled" if job is not None and job.swapped else "eager"
            time_config(
                f"low-vram-{label}", pipe, args, results, ours=True, setup=lambda: low_vram(False)
            )
            time_config(f"low-vram-{label}-uncached", pipe, args, results, ours=True, cached=False)
            time_config(
                f"low-vram-{label}-tiled",
                pipe,
                args,
                results,
                ours=True,
                setup=lambda: low_vram(True),
            )
            if job is not None and job.swapped:  # before the compile is ready: eager under the cap

                def eager_low_vram() -> dict[str, Any]:
                    delattr(pipe, ltx_speed._COMPILE_ATTR)  # as before the compile is ready
                    job.swap_out()
                    return low_vram(False)

                time_config("low-vram-eager", pipe, args, results, ours=True, setup=eager_low_vram)
        # 5. Last, as it may compile for minutes: the VAE decoder compiled too.
        if cuda and args.compile_vae and time.time() - T_START < args.compile_vae_before_s:

            def compile_vae() -> dict[str, Any]:
                pipe.vae.decoder.compile()
                return dict(note="warm-up clip includes the decoder's compile")

            name = "low-vram-compiled-vae" if args.cap_gib else "fast-compiled-vae"
            time_config(name, pipe, args, results, ours=True, setup=compile_vae)
    # 6. Through the engine (generator.engines.ltx), as the bot and the CLI make clips.
    if args.engine_profiles:
        engine_configs(pipe, args, results)
    write(results, args.out)
    print(table(results["configs"]))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    keys = ("s_to_frames", "s_to_mp4", "s_per_step", "decode_s", "to_numpy_s", "encode_s",
            "peak_gib", "latents_vs_stock_rel_l2", "frames_vs_stock_mean_abs")  # fmt: skip
    lines = ["config | " + " | ".join(keys)]
    for row in rows:
        cells = [
            f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "-")) for k in keys
        ]
        lines.append(
            f"{row['config']} | " + " | ".join(cells) + (" ERROR" if row.get("error") else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
