"""Memory profiles and prompt embeddings for a loaded Wan 2.2 TI2V-5B pipeline.

``generator.engines.wan`` loads one ``WanImageToVideoPipeline`` per process and calls
:func:`apply_profile` once when it places it; the pipeline's ``__call__`` stays stock.

- ``fast``: everything on the GPU; the VAE in the dtype the engine loaded it in (``[wan]
  vae_dtype``, fp32 by default as the model card loads it). On an H200 stock diffusers peaks
  at 43.8 GiB, in the fp32 decode (PERF.md), so ``auto`` picks it only on large cards.
- ``low-vram`` (a 12 GB card): the 5B transformer (10 GB in bf16) and the UMT5-XXL text
  encoder (10.6 GiB in bf16, so ``enable_model_cpu_offload`` cannot even encode a prompt
  under a 12 GiB cap) live in pinned CPU memory and stream to the GPU one layer ahead of
  their use (diffusers' leaf-level group offloading with CUDA streams). The text encoder runs
  only for a prompt the cache has not seen: prompts are built deterministically from photo
  type x intensity x custom elements, so most clips never touch it. The VAE stays on the GPU
  and decodes in tiles. Measured with stock diffusers on an H200 under a 12 GiB cap: 149 s a
  clip at 8.5 GiB, against 131 s all on the GPU.

The prompt cache, the frames conversion and the allocator setting are the ones LTX-Video uses
(``generator.engines.ltx_speed``); only Wan's ``encode_prompt`` (no attention masks) differs.

Example::

    >>> apply_profile(pipe, Profile.LOW_VRAM, device="cuda")
    >>> embeds = prompt_kwargs(pipe, prompt, negative, guidance_scale=5.0)
    >>> video = pipe(image=photo, **embeds, output_type="pt").frames[0]
    >>> frames = frames_to_uint8(video)          # (frames, height, width, 3) uint8 on the CPU
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from generator.engines.ltx_speed import (
    PromptKey,
    _group_offloaded,
    expandable_segments,
    frames_to_uint8,
    prompt_cache,
)
from generator.options import Profile

__all__ = ["apply_profile", "frames_to_uint8", "prompt_kwargs"]

log = logging.getLogger(__name__)


def apply_profile(pipe: Any, profile: Profile, *, device: str) -> None:
    """Place ``pipe`` for ``profile`` on ``device``; off CUDA it only moves the pipeline there.

    Args:
        pipe: a loaded ``WanImageToVideoPipeline``.
        profile: ``Profile.FAST`` (all on the GPU) or ``Profile.LOW_VRAM`` (transformer and
            text encoder streamed from CPU memory layer by layer, VAE resident and tiled).
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"`` or ``"mps"``.

    Raises:
        ValueError: ``profile`` is ``AUTO`` (the caller resolves it by free VRAM first).
    """
    if profile not in (Profile.FAST, Profile.LOW_VRAM):
        raise ValueError(f"resolve the profile before applying it, got {profile}")
    if not str(device).startswith("cuda"):
        pipe.to(device)  # nothing to gain from offloading here
        return
    if profile is Profile.FAST:
        pipe.to(device)
        pipe.vae.disable_tiling()
        return
    from diffusers.hooks import apply_group_offloading

    # 1. The VAE resident (1.4 GB in bf16, 2.8 GB in fp32): it encodes the photo and decodes
    # every clip, and group offloading its 3D convolutions gains nothing.
    pipe.vae.to(device)
    # 2. Grow memory segments in place: under a cap, fixed cached blocks fragment.
    expandable_segments()
    # 3. Transformer and text encoder in pinned CPU memory, one layer ahead of their use.
    for name in ("transformer", "text_encoder"):
        module = getattr(pipe, name)
        if _group_offloaded(module):
            continue
        module.to("cpu")
        torch.cuda.empty_cache()
        apply_group_offloading(
            module,
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=True,
        )
    # 4. Tiles keep the decode's activations (tens of GiB for 121 frames at 1280x704) small.
    pipe.vae.enable_tiling()


def prompt_kwargs(
    pipe: Any,
    prompt: str,
    negative_prompt: str | None,
    *,
    guidance_scale: float,
    max_sequence_length: int = 512,
) -> dict[str, torch.Tensor]:
    """``pipe(...)``'s ``prompt_embeds`` (and ``negative_prompt_embeds`` with guidance),
    from the pipeline's cache when this prompt was seen before."""
    cfg = guidance_scale > 1.0
    key = PromptKey(prompt, (negative_prompt or "") if cfg else None, max_sequence_length)
    return prompt_cache(pipe).get_or_make(key, lambda: _encode(pipe, key, cfg))


def _encode(pipe: Any, key: PromptKey, cfg: bool) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(
            prompt=key.prompt,
            negative_prompt=key.negative_prompt,
            do_classifier_free_guidance=cfg,
            num_videos_per_prompt=1,
            max_sequence_length=key.max_sequence_length,
            device=pipe._execution_device,
        )
    out = {"prompt_embeds": embeds}
    if cfg:
        out["negative_prompt_embeds"] = negative
    return out
