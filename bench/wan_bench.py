"""Wan 2.2 TI2V-5B on one GPU: stock diffusers against the project's fast and 12 GB profiles,
the attention kernels, and the VAE decode in fp32 (the model card) against bf16 on the same
latents.

The TI2V-5B architecture (transformer, 48-channel Wan 2.2 VAE, UMT5-XXL encoder, from the
configs in diffusers' ``scripts/convert_wan_to_diffusers.py``) is built with seeded random
weights directly on the GPU, transformer and encoder in bf16, VAE in fp32; a word-level
stand-in tokenizer feeds real prompt strings through the pipeline's own ``encode_prompt``.
Random weights do the same work as the real ones, so times and memory carry over; how close
two decodes are is measured on identical latents, and says nothing about picture quality.

    python bench/wan_bench.py --steps 4 --out results.json      # H200, about 5 minutes
    python bench/wan_bench.py --tiny --out /tmp/smoke.json      # seconds, on CPU

In order, one process, the same modules and seed throughout:

1. the decode of one set of final latents: fp32, bf16, bf16 in the low-vram tiles (time,
   peak beside the weights, difference to fp32);
2. one transformer pass (CFG's conditional half) under each SDPA kernel: flash (PyTorch's
   default here), memory-efficient, cuDNN;
3. stock diffusers (fp32 VAE, default kernels, eager);
4. stock again with the memory-efficient kernel: two kernels PyTorch itself may pick give the
   bf16 noise floor against which the fast profile's final latents are judged;
5. ``fast``: the first clip runs eagerly while the blocks compile behind it (what a user of
   a cold engine gets), then a clip through the compiled blocks; then the same with the VAE
   in bf16;
6. ``low-vram`` under a 12 GiB cap (``torch.cuda.set_per_process_memory_fraction``): the
   first clip eagerly (the streamed blocks compile after it, while the GPU is idle), then a
   clip through the compiled blocks, then (unless ``--profiles-only``) both guidance passes
   batched.

``--profiles-only`` skips 1, 2 and 4 (a shorter device call).

Per clip: seconds per step (median of the steps after the first), the first step (prompt and
photo encoding included), decode, seconds from photo to frames, peak allocated and reserved,
and the relative L2 difference of the final latents to stock's. A reduced step count keeps the
run short: a 50-step clip is estimated as ``first_step + 49 * s_per_step + decode``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import itertools
import json
import platform
import re
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

T_START = time.time()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import ftfy  # noqa: E402, F401  (diffusers' Wan pipeline cleans prompts with it: fail first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator.config import WAN_NEGATIVE_PROMPT  # noqa: E402
from generator.engines import device, wan_speed  # noqa: E402
from generator.engines.ltx_speed import BackgroundCompile, prompt_cache  # noqa: E402
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


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def run_clip(
    pipe: Any,
    args: argparse.Namespace,
    *,
    ours: bool,
    steps: int,
    decode: bool = True,
    guidance_batch: bool = False,
) -> dict[str, Any]:
    """One clip from photo to frames, the way stock diffusers or our engine makes it; the
    final latents are kept (``_latents``) to compare runs."""
    clock = Clock(args.device)
    cuda = args.device.startswith("cuda")
    prompt = build_ltx_prompt(PhotoType.PORTRAIT, "gentle")
    marks: list[float] = []
    final: list[torch.Tensor] = []

    def on_step(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        marks.append(clock.now())  # a sync per step costs microseconds next to a 2 s step
        if i == steps - 1:
            final.append(kwargs["latents"].detach().float().cpu())
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
    compiled = False
    graphs = None
    start = clock.now()
    with torch.inference_mode():
        if ours:
            compiled = wan_speed.before_clip(
                pipe, height=args.height, width=args.width, num_frames=args.frames
            )
            prompt_cache(pipe).clear()  # a new prompt: the encoder's cost is in the first step
            embeds = wan_speed.prompt_kwargs(
                pipe, prompt, WAN_NEGATIVE_PROMPT, guidance_scale=GUIDANCE
            )
            batch = (
                wan_speed.GuidanceBatch(
                    pipe.transformer, embeds["prompt_embeds"], embeds["negative_prompt_embeds"]
                )
                if guidance_batch
                else contextlib.nullcontext()
            )
            graphs = _graphs()
            with batch:
                out = pipe(**common, **embeds, output_type="pt" if decode else "latent")
            pipe_done = clock.now()
            frames = device.frames_to_uint8(out.frames[0]) if decode else None
            # Graphs dynamo made during the clip: 0 unless the clip compiled inline.
            graphs = _graphs() - graphs
            wan_speed.after_clip(pipe)  # low-vram: a new shape compiles now, while idle
        else:
            out = pipe(
                **common,
                prompt=prompt,
                negative_prompt=WAN_NEGATIVE_PROMPT,
                output_type="np" if decode else "latent",
            )
            pipe_done = clock.now()
            frames = None
            if decode:
                frames = (np.clip(out.frames[0], 0.0, 1.0) * 255.0).round().astype(np.uint8)
    done = clock.now()
    per_step = [b - a for a, b in itertools.pairwise(marks)]
    row: dict[str, Any] = dict(
        steps=steps,
        compiled=compiled,
        graphs_compiled_during_clip=graphs,
        s_to_frames=done - start,
        first_step_s=marks[0] - start,
        s_per_step=statistics.median(per_step) if per_step else None,
        step_s=per_step,
        decode_s=pipe_done - marks[-1] if decode else None,
        to_numpy_s=done - pipe_done if decode else None,
        peak_gib=torch.cuda.max_memory_allocated() / GIB if cuda else None,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB if cuda else None,
        latents_finite=bool(torch.isfinite(final[0]).all()),
    )
    if row["s_per_step"] is not None and decode:
        row["est_50_step_clip_s"] = (
            row["first_step_s"] + 49 * row["s_per_step"] + row["decode_s"] + row["to_numpy_s"]
        )
    row["_frames"] = frames
    row["_latents"] = final[0]
    return row


def compare(row: dict[str, Any], stock: dict[str, Any] | None) -> dict[str, Any]:
    """Add the final latents' and the frames' difference to stock's to ``row``."""
    if stock is None:
        return row
    row["latents_rel_l2_vs_stock"] = rel_l2(row["_latents"], stock["_latents"])
    if row.get("_frames") is not None and stock.get("_frames") is not None:
        diff = np.abs(row["_frames"].astype(np.int16) - stock["_frames"].astype(np.int16))
        row["frames_mean_abs_vs_stock"] = float(diff.mean())
        row["frames_max_abs_vs_stock"] = int(diff.max())
    return row


def latents_for_decode(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The final latents of a short clip (the warm-up), as the pipeline hands them to the VAE,
    and one transformer call's inputs (the first: conditional, step 1) for the kernel study."""
    captured: dict[str, Any] = {}

    def grab(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if not captured:
            skip = ("attention_kwargs", "return_dict")
            captured.update({k: v for k, v in kwargs.items() if k not in skip})

    hook = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
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
    finally:
        hook.remove()
    latents = out.frames
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(latents)
    std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(latents)
    return {"_latents": latents * std + mean, "_inputs": captured}  # what __call__ decodes


def decode_study(pipe: Any, latents: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Decode the same latents with the fp32 VAE, a bf16 copy, and the bf16 copy in the
    low-vram profile's tiles: time, peak beside what was allocated before, difference."""
    clock = Clock(args.device)
    cuda = args.device.startswith("cuda")
    result: dict[str, Any] = {}
    videos = {}
    bf16 = copy.deepcopy(pipe.vae).to(torch.bfloat16)
    for name, vae, tiled in (
        ("fp32", pipe.vae, False),
        ("bf16", bf16, False),
        ("bf16_tiled", bf16, True),
    ):
        if tiled:
            vae.enable_tiling(*wan_speed._tiles())
        x = latents.to(vae.dtype)
        with torch.inference_mode():
            vae.decode(x[:, :, :2], return_dict=False)  # warm the kernels on a short clip
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() if cuda else 0
            start = clock.now()
            video = vae.decode(x, return_dict=False)[0]
            result[f"decode_{name}_s"] = clock.now() - start
        if cuda:
            result[f"decode_{name}_peak_beside_weights_gib"] = (
                torch.cuda.max_memory_allocated() - before
            ) / GIB
        videos[name] = video.float().cpu()
        del video
        vae.disable_tiling()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    del bf16
    gc.collect()
    a = videos["fp32"]
    for name in ("bf16", "bf16_tiled"):
        b = videos[name]
        result[f"{name}_vs_fp32_rel_l2"] = rel_l2(b, a)
        # In the frames a user gets: values in [-1, 1] to 0-255, as the video processor does.
        ua = ((a.clamp(-1, 1) + 1) * 127.5).round()
        ub = ((b.clamp(-1, 1) + 1) * 127.5).round()
        diff = (ua - ub).abs()
        result[f"{name}_vs_fp32_uint8_mean_abs"] = float(diff.mean())
        result[f"{name}_vs_fp32_uint8_max_abs"] = float(diff.max())
        result[f"{name}_vs_fp32_uint8_share_over_2"] = float((diff > 2).float().mean())
    result["fp32_std"] = float(a.std())
    result["fp32_share_clipped"] = float((a.abs() > 1).float().mean())
    return result


def attention_study(pipe: Any, inputs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One transformer pass (the conditional half of a step) under each SDPA kernel, eager:
    median of two timed passes after one warm-up, and the output's difference to the default's."""
    clock = Clock(args.device)
    backends = (
        ["native", "_native_math"]
        if args.tiny
        else ["native", "_native_flash", "_native_efficient", "_native_cudnn"]
    )
    result: dict[str, Any] = {}
    reference = None
    try:
        for backend in backends:
            pipe.transformer.set_attention_backend(backend)
            name = backend.removeprefix("_native_")  # keys starting "_" stay out of the JSON
            times = []
            with torch.inference_mode():
                for _ in range(3):
                    start = clock.now()
                    out = pipe.transformer(**inputs, return_dict=False)[0]
                    times.append(clock.now() - start)
            out = out.float()
            result[f"{name}_pass_s"] = statistics.median(times[1:])
            if reference is None:
                reference = out
            else:
                result[f"{name}_rel_l2_vs_native"] = rel_l2(out, reference)
            result[f"{name}_finite"] = bool(torch.isfinite(out).all())
    finally:
        pipe.transformer.set_attention_backend("native")
    return result


def pass_inputs(args: argparse.Namespace, dtype: torch.dtype, text_dim: int) -> dict[str, Any]:
    """Seeded inputs of one transformer pass at the clip's shape, as the pipeline makes them
    with ``expand_timesteps``: the first latent frame (the photo) at timestep 0, the rest at
    900."""
    g = torch.Generator("cpu").manual_seed(SEED_CLIP)
    frames, h, w = (args.frames - 1) // 4 + 1, args.height // 16, args.width // 16
    hidden = torch.randn(1, 48, frames, h, w, generator=g)
    mask = torch.ones(frames, h // 2, w // 2)
    mask[0] = 0
    text = torch.randn(1, 512, text_dim, generator=g)
    return dict(
        hidden_states=hidden.to(args.device, dtype),
        timestep=(mask.flatten() * 900.0).unsqueeze(0).to(args.device),
        encoder_hidden_states=text.to(args.device, dtype),
    )


def accuracy_study(args: argparse.Namespace) -> dict[str, Any]:
    """One transformer pass against an fp32 reference of the same weights (TF32 off): stock
    bf16 (PyTorch's kernel), stock bf16 with the memory-efficient kernel, and the fast path
    (fused projections, cuDNN attention, compiled blocks); then the bf16 decode of one set
    of latents untiled against stock diffusers' tiles and the low-vram profile's."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    clock = Clock(args.device)
    cuda = args.device.startswith("cuda")
    t_cfg = TINY_TRANSFORMER if args.tiny else TRANSFORMER_5B
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result: dict[str, Any] = {}
    with torch.device(args.device):
        torch.manual_seed(SEED_WEIGHTS)
        model = WanTransformer3DModel(**t_cfg).eval()  # fp32, as initialised
    reference = model
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    _keep_fp32(bf16)
    x32 = pass_inputs(args, torch.float32, t_cfg["text_dim"])
    x16 = pass_inputs(args, torch.bfloat16, t_cfg["text_dim"])

    def timed(module: Any, inputs: dict[str, Any], runs: int = 3) -> tuple[torch.Tensor, float]:
        times = []
        with torch.inference_mode():
            for _ in range(runs):
                start = clock.now()
                out = module(**inputs, return_dict=False)[0]
                times.append(clock.now() - start)
        return out.float(), statistics.median(times[1:]) if runs > 1 else times[0]

    ref, result["fp32_pass_s"] = timed(reference, x32, runs=1)
    del reference, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    out, result["stock_pass_s"] = timed(bf16, x16)
    result["stock_rel_l2_vs_fp32"] = rel_l2(out, ref)
    other = "_native_math" if args.tiny else "_native_efficient"
    bf16.set_attention_backend(other)
    out, result["stock_other_kernel_pass_s"] = timed(bf16, x16)
    result["stock_other_kernel_rel_l2_vs_fp32"] = rel_l2(out, ref)
    bf16.set_attention_backend("native")
    wan_speed.fuse_projections(bf16)
    if not args.tiny:
        bf16.set_attention_backend(wan_speed.ATTENTION_BACKEND)
    out, result["fused_eager_pass_s"] = timed(bf16, x16)
    result["fused_eager_rel_l2_vs_fp32"] = rel_l2(out, ref)
    job = BackgroundCompile(bf16, backend="eager" if args.tiny else "inductor")
    shape = (args.height, args.width, args.frames)
    job.before_clip(shape)
    timed(bf16, x16, runs=1)  # records the first block's inputs; compiles behind
    job.wait()
    result["compile_s"] = list(job.compile_s.values())
    result["compile_errors"] = list(job.errors.values())
    result["compiled"] = job.before_clip(shape)
    out, result["fast_pass_s"] = timed(bf16, x16)
    result["fast_rel_l2_vs_fp32"] = rel_l2(out, ref)
    eager = timed(_eager(bf16, job), x16, runs=1)[0]
    result["fast_rel_l2_vs_fused_eager"] = rel_l2(out, eager)
    del bf16, ref, out
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    # The decode: untiled bf16 against diffusers' default tiles and the low-vram tiles.
    v_cfg = TINY_VAE if args.tiny else VAE_22
    with torch.device(args.device):
        torch.manual_seed(SEED_WEIGHTS + 1)
        vae = AutoencoderKLWan(**v_cfg).eval().to(torch.bfloat16)
    g = torch.Generator("cpu").manual_seed(SEED_CLIP + 1)
    shape = x16["hidden_states"].shape
    latents = torch.randn(shape, generator=g).to(args.device, torch.bfloat16)
    videos: dict[str, torch.Tensor] = {}
    tiles = {"untiled": None, "tiles_256": (256, 256, 192, 192), "tiles_512": wan_speed._tiles()}
    for name, tile in tiles.items():
        if tile is None:
            vae.disable_tiling()
        else:
            vae.enable_tiling(*tile)
        with torch.inference_mode():
            vae.decode(latents[:, :, :2], return_dict=False)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() if cuda else 0
            start = clock.now()
            video = vae.decode(latents, return_dict=False)[0]
            result[f"decode_{name}_s"] = clock.now() - start
        if cuda:
            result[f"decode_{name}_peak_gib"] = (torch.cuda.max_memory_allocated() - before) / GIB
        videos[name] = ((video.float().clamp(-1, 1) + 1) * 127.5).round().cpu()
        del video
    for name in ("tiles_256", "tiles_512"):
        diff = (videos[name] - videos["untiled"]).abs()
        result[f"decode_{name}_vs_untiled_uint8_mean_abs"] = float(diff.mean())
        result[f"decode_{name}_vs_untiled_uint8_share_over_2"] = float((diff > 2).float().mean())
    return result


def waited_for(job: Any, row: dict[str, Any], key: str) -> dict[str, Any]:
    """``row`` plus how long ``job``'s compile still ran after the clip (``key``), its
    seconds and its errors; ``row`` alone without a job."""
    if job is not None:
        start = time.perf_counter()
        job.wait()
        row[key] = time.perf_counter() - start
        row["compile_s"] = list(job.compile_s.values())
        row["compile_errors"] = list(job.errors.values())
    return row


def sdp_switches() -> None:
    """Log SDPA's kernel switches (process-wide) and the threads running."""
    b = torch.backends.cuda
    log(
        f"sdp enabled: flash {b.flash_sdp_enabled()} efficient {b.mem_efficient_sdp_enabled()} "
        f"math {b.math_sdp_enabled()} cudnn {b.cudnn_sdp_enabled()}; "
        f"threads {[t.name for t in threading.enumerate()]}"
    )


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _eager(model: Any, job: Any) -> Any:
    """The same fused weights through eager blocks and PyTorch's attention kernel."""
    job.swap_out()
    model.set_attention_backend("native")
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (smoke)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per timed clip")
    p.add_argument("--cap-gib", type=float, default=12.0, help="low-vram cap; 0 skips it")
    p.add_argument("--accuracy", action="store_true", help="only one pass against fp32")
    p.add_argument(
        "--profiles-only",
        action="store_true",
        help="skip the decode and kernel studies and the second kernel: stock and the profiles",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.tiny:
        args.device = "cpu"
        args.width, args.height, args.frames = 64, 32, 9
    else:
        args.width, args.height, args.frames = 1280, 704, 121
    if args.accuracy:
        row = accuracy_study(args)
        log(f"accuracy: {json.dumps(row, indent=1)}")
        args.out.write_text(json.dumps(dict(command=" ".join(sys.argv), accuracy=row), indent=2))
        return 0
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
            if cuda:
                sdp_switches()
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

    # 1. Warm-up (2 steps) whose final latents feed the decode study, and whose first
    # transformer call's inputs feed the kernel study.
    warm = None if args.profiles_only else attempt("warmup", lambda: latents_for_decode(pipe, args))
    if warm is not None:
        attempt("decode_fp32_vs_bf16", lambda: decode_study(pipe, warm["_latents"], args))
        attempt("attention_kernels", lambda: attention_study(pipe, warm["_inputs"], args))
        del warm
    # 2. Stock diffusers, and stock with another SDPA kernel: the bf16 noise floor.
    stock = attempt("stock", lambda: run_clip(pipe, args, ours=False, steps=args.steps))

    def other_kernel() -> dict[str, Any]:
        pipe.transformer.set_attention_backend("_native_math" if args.tiny else "_native_efficient")
        try:
            return compare(run_clip(pipe, args, ours=False, steps=args.steps, decode=False), stock)
        finally:
            pipe.transformer.set_attention_backend("native")

    if not args.profiles_only:
        attempt("stock_other_kernel", other_kernel)

    # 3. The fast profile: the first clip eager with the compile behind it, then compiled.
    state: dict[str, Any] = {}

    def fast_first() -> dict[str, Any]:
        if cuda:
            sdp_switches()
        start = time.perf_counter()
        wan_speed.apply_profile(pipe, Profile.FAST, device=args.device)
        if cuda:
            sdp_switches()
        if args.tiny:  # on the CPU the profile compiles nothing; smoke the path anyway
            wan_speed.compile_behind(pipe, backend="eager")
        placed = time.perf_counter() - start
        row = compare(run_clip(pipe, args, ours=True, steps=args.steps), stock)
        row["place_s"] = placed
        job = wan_speed.compile_behind(pipe, backend="eager" if args.tiny else "inductor")
        state["job"] = job
        return waited_for(job, row, "compile_left_after_clip_s")

    attempt("fast_first_clip_eager_while_compiling", fast_first)
    attempt("fast", lambda: compare(run_clip(pipe, args, ours=True, steps=args.steps), stock))

    def fast_bf16_vae() -> dict[str, Any]:
        pipe.vae.to(torch.bfloat16)
        return compare(run_clip(pipe, args, ours=True, steps=args.steps), stock)

    attempt("fast_bf16_vae", fast_bf16_vae)

    # 4. The 12 GB profile under a cap (bf16 VAE): the weights leave the GPU first.
    if cuda and args.cap_gib:

        def low_vram() -> dict[str, Any]:
            wan_speed.stop_compiling(pipe)  # the fast profile's compiled blocks: off
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
            # The first clip of a shape is eager; it records the first block's inputs and
            # the blocks compile after it, on a spare block (wan_speed.OffloadedCompile).
            row = compare(run_clip(pipe, args, ours=True, steps=args.steps), stock)
            row["place_s"] = placed
            row["cap_gib"] = args.cap_gib
            return waited_for(wan_speed.offloaded_compile(pipe), row, "compile_after_clip_s")

        attempt("low_vram_12gib", low_vram)

        def low_vram_compiled() -> dict[str, Any]:
            row = compare(run_clip(pipe, args, ours=True, steps=args.steps), stock)
            row["cap_gib"] = args.cap_gib
            return row

        attempt("low_vram_12gib_compiled", low_vram_compiled)

        if not args.profiles_only:

            def low_vram_batched() -> dict[str, Any]:
                # [wan] guidance_batch: both passes of a step in one call, weights streamed once.
                row = compare(
                    run_clip(pipe, args, ours=True, steps=args.steps, guidance_batch=True), stock
                )
                row["cap_gib"] = args.cap_gib
                return row

            attempt("low_vram_12gib_guidance_batch", low_vram_batched)
    results["total_s"] = time.time() - T_START
    save()
    summary = {
        name: {
            k: row.get(k)
            for k in (
                "est_50_step_clip_s",
                "s_per_step",
                "decode_s",
                "peak_gib",
                "latents_rel_l2_vs_stock",
            )
            if k in row
        }
        for name, row in results["runs"].items()
    }
    log(f"summary: {json.dumps(summary, indent=1, default=str)}")
    log(f"done in {results['total_s']:.0f} s -> {args.out}")
    return 0 if not results["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
