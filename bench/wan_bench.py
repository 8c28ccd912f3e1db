"""Wan 2.2 TI2V-5B on one GPU: stock diffusers against the project's fast and 12 GB profiles,
and the VAE decode in fp32 (the model card) against bf16 on the same latents.

The TI2V-5B architecture (transformer, 48-channel Wan 2.2 VAE, UMT5-XXL encoder, from the
configs in diffusers' ``scripts/convert_wan_to_diffusers.py``) is built with seeded random
weights directly on the GPU, transformer and encoder in bf16, VAE in fp32; a word-level
stand-in tokenizer feeds real prompt strings through the pipeline's own ``encode_prompt``.
Random weights do the same work as the real ones, so times and memory carry over; how close
two decodes are is measured on identical latents, and says nothing about picture quality.

    python bench/wan_bench.py --steps 4 --out results.json      # H200, about 4 minutes
    python bench/wan_bench.py --tiny --out /tmp/smoke.json      # seconds, on CPU

Per configuration: seconds per step (median of the steps after the first), the first step
(prompt and photo encoding included), decode, seconds from photo to frames, peak allocated
and reserved. A reduced step count keeps the run short: a 50-step clip is about
``first_step + 49 * s_per_step + decode``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

T_START = time.time()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator.config import WAN_NEGATIVE_PROMPT  # noqa: E402
from generator.engines import wan_speed  # noqa: E402
from generator.engines.ltx_speed import prompt_cache  # noqa: E402
from generator.options import MOTION_BANDS, PhotoType, Profile  # noqa: E402
from generator.prompt import build_ltx_prompt  # noqa: E402

GIB = 1024**3
SEED_WEIGHTS = 0
SEED_CLIP = 42
GUIDANCE = 5.0

# Wan2.2-TI2V-5B: get_transformer_config("Wan2.2-TI2V-5B") in the conversion script; 5.0B.
TRANSFORMER_5B = dict(
    added_kv_proj_dim=None,
    attention_head_dim=128,
    cross_attn_norm=True,
    eps=1e-06,
    ffn_dim=14336,
    freq_dim=256,
    in_channels=48,
    num_attention_heads=24,
    num_layers=30,
    out_channels=48,
    patch_size=(1, 2, 2),
    qk_norm="rms_norm_across_heads",
    text_dim=4096,
)
# vae22_diffusers_config in the conversion script (mean/std only rescale latents: zeros/ones).
VAE_22 = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    is_residual=True,
    in_channels=12,
    out_channels=12,
    scale_factor_temporal=4,
    scale_factor_spatial=16,
    patch_size=2,
    latents_mean=[0.0] * 48,
    latents_std=[1.0] * 48,
    clip_output=False,
)
# google/umt5-xxl's encoder: 5.68B parameters, 10.6 GiB in bf16.
UMT5_XXL = dict(
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_heads=64,
    num_layers=24,
    vocab_size=256384,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
)
# diffusers' Wan 2.2 5B image-to-video test shapes, for --tiny.
TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48,
    out_channels=48, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)  # fmt: skip
TINY_VAE = dict(
    base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
    latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
    scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
)  # fmt: skip
TINY_UMT5 = dict(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=1, vocab_size=512)


def log(msg: str) -> None:
    print(f"[{time.time() - T_START:7.1f}s] {msg}", flush=True)


def prompts() -> list[str]:
    """Every built-in prompt (photo type x intensity), the strings the engine sends."""
    return [build_ltx_prompt(t, band.name) for t in PhotoType for band in MOTION_BANDS]


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level stand-in for UMT5's tokenizer (pad 0, eos 1, unk 2) knowing the words of
    the project's prompts; real strings go through the pipeline's own ``encode_prompt``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    text = " ".join([*prompts(), WAN_NEGATIVE_PROMPT]).lower()
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
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


def build_pipe(device: str, *, tiny: bool) -> Any:
    """WanImageToVideoPipeline (expand_timesteps, no image encoder) with seeded random weights:
    transformer and encoder in bf16 (fp32 with --tiny), the VAE in fp32."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    t_cfg, v_cfg, e_cfg = (
        (TINY_TRANSFORMER, TINY_VAE, TINY_UMT5) if tiny else (TRANSFORMER_5B, VAE_22, UMT5_XXL)
    )
    dtype = torch.float32 if tiny else torch.bfloat16
    previous = torch.get_default_dtype()
    try:
        with torch.device(device):
            torch.set_default_dtype(dtype)  # initialise in bf16 directly: half the memory
            torch.manual_seed(SEED_WEIGHTS)
            transformer = WanTransformer3DModel(**t_cfg)
            torch.manual_seed(SEED_WEIGHTS + 2)
            encoder = UMT5EncoderModel(UMT5Config(**e_cfg))
            torch.set_default_dtype(torch.float32)
            torch.manual_seed(SEED_WEIGHTS + 1)
            vae = AutoencoderKLWan(**v_cfg)
    finally:
        torch.set_default_dtype(previous)
    transformer, encoder = (m.to(device, dtype).eval() for m in (transformer, encoder))
    _keep_fp32(transformer)
    vae = vae.to(device, torch.float32).eval()
    pipe = WanImageToVideoPipeline(
        tokenizer=word_tokenizer(e_cfg["vocab_size"]),
        text_encoder=encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
        ),
        transformer=transformer,
        expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _keep_fp32(model: torch.nn.Module) -> None:
    """Put back in fp32 what ``from_pretrained(dtype=bf16)`` keeps in fp32 (the transformer's
    norms, time embedder, rope and modulation table), as the engine's load does."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if keep & set(name.split(".")) and tensor.is_floating_point():
            tensor.data = tensor.data.float()


def photo(width: int, height: int) -> Any:
    """A seeded stand-in photo: smooth gradients plus grain, as a phone photo has."""
    from PIL import Image

    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 37 + y / 53)], axis=-1)
    pixels = np.clip(base * 255 + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


class Clock:
    """Wall time that waits for the GPU before reading."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def run_clip(pipe: Any, args: argparse.Namespace, *, ours: bool, steps: int) -> dict[str, Any]:
    """One clip from photo to frames, the way stock diffusers or our engine makes it."""
    clock = Clock(args.device)
    cuda = args.device.startswith("cuda")
    prompt = build_ltx_prompt(PhotoType.PORTRAIT, "gentle")
    marks: list[float] = []

    def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        marks.append(clock.now())  # a sync per step costs microseconds next to a 2 s step
        return kwargs

    common = dict(
        image=photo(args.width, args.height),
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(SEED_CLIP),
        callback_on_step_end=on_step,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = clock.now()
    with torch.inference_mode():
        if ours:
            prompt_cache(pipe).clear()  # a new prompt: the encoder's cost is in the first step
            embeds = wan_speed.prompt_kwargs(
                pipe, prompt, WAN_NEGATIVE_PROMPT, guidance_scale=GUIDANCE
            )
            out = pipe(**common, **embeds, output_type="pt")
            pipe_done = clock.now()
            frames = wan_speed.frames_to_uint8(out.frames[0])
        else:
            out = pipe(
                **common, prompt=prompt, negative_prompt=WAN_NEGATIVE_PROMPT, output_type="np"
            )
            pipe_done = clock.now()
            frames = (np.clip(out.frames[0], 0.0, 1.0) * 255.0).round().astype(np.uint8)
    done = clock.now()
    per_step = [b - a for a, b in itertools.pairwise(marks)]
    row: dict[str, Any] = dict(
        steps=steps,
        s_to_frames=done - start,
        first_step_s=marks[0] - start,
        s_per_step=statistics.median(per_step) if per_step else None,
        decode_s=pipe_done - marks[-1],
        to_numpy_s=done - pipe_done,
        peak_gib=torch.cuda.max_memory_allocated() / GIB if cuda else None,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB if cuda else None,
    )
    if row["s_per_step"] is not None:
        row["est_50_step_clip_s"] = (
            row["first_step_s"] + 49 * row["s_per_step"] + row["decode_s"] + row["to_numpy_s"]
        )
    row["_frames"] = frames
    return row


def latents_for_decode(pipe: Any, args: argparse.Namespace) -> torch.Tensor:
    """The final latents of a short clip (the warm-up), as the pipeline hands them to the VAE."""
    with torch.inference_mode():
        embeds = wan_speed.prompt_kwargs(
            pipe, prompts()[0], WAN_NEGATIVE_PROMPT, guidance_scale=GUIDANCE
        )
        out = pipe(
            image=photo(args.width, args.height),
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=2,
            guidance_scale=GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(SEED_CLIP),
            output_type="latent",
            **embeds,
        )
    latents = out.frames
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(latents)
    std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(latents)
    return latents * std + mean  # what __call__ does before vae.decode


def decode_study(pipe: Any, latents: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Decode the same latents with the fp32 VAE and a bf16 copy: time, peak, difference."""
    clock = Clock(args.device)
    cuda = args.device.startswith("cuda")
    result: dict[str, Any] = {}
    videos = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        vae = pipe.vae if dtype is torch.float32 else copy.deepcopy(pipe.vae).to(dtype)
        x = latents.to(dtype)
        with torch.inference_mode():
            vae.decode(x[:, :, :2], return_dict=False)  # warm the kernels on a short clip
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            start = clock.now()
            video = vae.decode(x, return_dict=False)[0]
            result[f"decode_{name}_s"] = clock.now() - start
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
        result[f"decode_{name}_peak_gib"] = peak
        videos[name] = video.float()
        if vae is not pipe.vae:
            del vae
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    a, b = videos["fp32"], videos["bf16"]
    result["bf16_vs_fp32_rel_l2"] = float((b - a).norm() / a.norm())
    # In the frames a user gets: values in [-1, 1] to 0-255, as the video processor does.
    ua = ((a.clamp(-1, 1) + 1) * 127.5).round()
    ub = ((b.clamp(-1, 1) + 1) * 127.5).round()
    diff = (ua - ub).abs()
    result["bf16_vs_fp32_uint8_mean_abs"] = float(diff.mean())
    result["bf16_vs_fp32_uint8_max_abs"] = float(diff.max())
    result["bf16_vs_fp32_uint8_share_over_2"] = float((diff > 2).float().mean())
    result["fp32_std"] = float(a.std())
    result["fp32_share_clipped"] = float((a.abs() > 1).float().mean())
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (smoke)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per timed clip")
    p.add_argument("--cap-gib", type=float, default=12.0, help="low-vram cap; 0 skips it")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.tiny:
        args.device = "cpu"
        args.width, args.height, args.frames = 64, 32, 9
    else:
        args.width, args.height, args.frames = 1280, 704, 121
    cuda = args.device.startswith("cuda")
    results: dict[str, Any] = dict(
        date=time.strftime("%Y-%m-%d", time.gmtime()),
        command=" ".join(sys.argv),
        clip=f"{args.frames} frames {args.width}x{args.height}, guidance {GUIDANCE}",
        torch=torch.__version__,
        python=platform.python_version(),
        gpu=torch.cuda.get_device_name() if cuda else None,
        runs={},
        errors={},
    )
    try:
        import diffusers

        results["diffusers"] = diffusers.__version__
    except ImportError:
        pass

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=2, default=str))

    def attempt(name: str, fn: Any) -> Any:
        log(f"{name} ...")
        try:
            value = fn()
        except Exception as exc:  # record and go on: one failure must not lose the others
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed:\n{traceback.format_exc()}")
            return None
        if isinstance(value, dict):
            shown = {k: v for k, v in value.items() if not k.startswith("_")}
            results["runs"][name] = shown
            log(f"{name}: {json.dumps(shown, default=str)}")
        save()
        return value

    pipe = build_pipe(args.device, tiny=args.tiny)
    results["build_s"] = time.time() - T_START
    results["params_b"] = {
        name: sum(t.numel() for t in getattr(pipe, name).parameters()) / 1e9
        for name in ("transformer", "vae", "text_encoder")
    }
    log(f"built in {results['build_s']:.1f} s: {results['params_b']}")

    # 1. Warm-up (2 steps, our path) whose final latents feed the decode study.
    latents = attempt("warmup", lambda: latents_for_decode(pipe, args))
    if latents is not None:
        attempt("decode_fp32_vs_bf16", lambda: decode_study(pipe, latents, args))
        del latents
    # 2. Stock diffusers, then the fast profile, on the same modules and seed.
    stock = attempt("stock", lambda: run_clip(pipe, args, ours=False, steps=args.steps))

    def fast() -> dict[str, Any]:
        wan_speed.apply_profile(pipe, Profile.FAST, device=args.device)
        row = run_clip(pipe, args, ours=True, steps=args.steps)
        if stock is not None:
            row["frames_max_abs_vs_stock"] = int(
                np.abs(row["_frames"].astype(np.int16) - stock["_frames"].astype(np.int16)).max()
            )
        return row

    attempt("fast", fast)
    # 3. The 12 GB profile under a cap: the weights leave the GPU first.
    if cuda and args.cap_gib:

        def low_vram() -> dict[str, Any]:
            prompt_cache(pipe).clear()
            pipe.transformer.to("cpu")
            pipe.text_encoder.to("cpu")
            gc.collect()
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(args.cap_gib * GIB / total)
            start = time.perf_counter()
            wan_speed.apply_profile(pipe, Profile.LOW_VRAM, device=args.device)
            placed = time.perf_counter() - start
            row = run_clip(pipe, args, ours=True, steps=args.steps)
            row["place_s"] = placed
            row["cap_gib"] = args.cap_gib
            return row

        attempt("low_vram_12gib", low_vram)
    results["total_s"] = time.time() - T_START
    save()
    log(f"done in {results['total_s']:.0f} s -> {args.out}")
    return 0 if not results["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
