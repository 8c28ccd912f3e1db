"""Speed and memory settings for a loaded LTX-Video pipeline: profiles, a prompt cache, frames.

``generator.engines.ltx`` loads one ``LTXConditionPipeline`` per process and calls
:func:`apply_profile` once when it places it; the pipeline's ``__call__`` stays stock.

- ``fast``: everything on the GPU, cuDNN attention first.
- ``low-vram`` (a 12 GB card): the transformer and VAE stay on the GPU; the T5-XXL text
  encoder (9.5 GB in bf16, more than the rest together) lives in pinned CPU memory and is
  streamed to the GPU layer by layer only for a prompt the :class:`PromptCache` has not seen.
  Prompts are built deterministically from photo type x intensity x custom elements, so most
  clips never touch the encoder.

Both profiles ask the pipeline for frames as a GPU tensor (``output_type="pt"``) and turn them
into ``uint8`` there (:func:`frames_to_uint8`): the stock float-numpy path spends about half a
second on 121 frames.

Example::

    >>> apply_profile(pipe, Profile.LOW_VRAM, device="cuda")
    >>> cache = prompt_cache(pipe)
    >>> video = pipe(image=photo, **cache.kwargs(pipe, prompt, None, guidance_scale=1.0),
    ...              output_type="pt").frames[0]
    >>> frames = frames_to_uint8(video)          # (frames, height, width, 3) uint8 on the CPU

Measured on an H200 (``bench/ltx_bench.py``, ``bench/RESULTS.md``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from generator.options import Profile

log = logging.getLogger(__name__)

#: Prompts whose embeddings stay cached (about 2 MB each at 256 tokens in bf16).
PROMPT_CACHE_SIZE = 32
#: Whether the 12 GB profile tiles the VAE decode. Transformer + VAE weights are 6.3 GB and
#: an untiled decode of 121 frames at 768x512 peaks at about 3.5 GiB over them (bench/RESULTS.md).
LOW_VRAM_VAE_TILING = False

_CACHE_ATTR = "_ltx_prompt_cache"


# --- profiles -------------------------------------------------------------------------------


def apply_profile(
    pipe: Any, profile: Profile, *, device: str, vae_tiling: bool | None = None
) -> None:
    """Place ``pipe`` for ``profile`` on ``device``; on a CPU this is a no-op.

    Args:
        pipe: a loaded ``LTXConditionPipeline`` (or ``LTXImageToVideoPipeline``).
        profile: ``Profile.FAST`` (all on the GPU) or ``Profile.LOW_VRAM`` (text encoder
            streamed from CPU memory; transformer and VAE resident).
        device: ``"cuda"``, ``"cuda:1"`` or ``"cpu"``.
        vae_tiling: override :data:`LOW_VRAM_VAE_TILING` for the low-vram profile (the
            benchmark measures both).

    Raises:
        ValueError: ``profile`` is ``AUTO`` (the caller resolves it by free VRAM first).
    """
    if profile not in (Profile.FAST, Profile.LOW_VRAM):
        raise ValueError(f"resolve the profile before applying it, got {profile}")
    if not str(device).startswith("cuda"):
        return
    prefer_cudnn_attention()
    if profile is Profile.FAST:
        pipe.to(device)
        pipe.vae.disable_tiling()
        return
    # 1. Transformer and VAE resident: they run every clip.
    pipe.transformer.to(device)
    pipe.vae.to(device)
    tiling = LOW_VRAM_VAE_TILING if vae_tiling is None else vae_tiling
    if tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    # 2. The text encoder in pinned CPU memory, streamed one layer ahead of its use. It runs
    # only for prompts the cache has not seen.
    from diffusers.hooks import apply_group_offloading

    pipe.text_encoder.to("cpu")
    torch.cuda.empty_cache()
    apply_group_offloading(
        pipe.text_encoder,
        onload_device=torch.device(device),
        offload_device=torch.device("cpu"),
        offload_type="leaf_level",
        use_stream=True,
    )


def prefer_cudnn_attention() -> bool:
    """Make cuDNN's fused attention PyTorch's first choice; return whether it could.

    Process-wide and read when a graph is traced, so call it before compiling.
    """
    get = getattr(torch._C, "_get_sdp_priority_order", None)
    put = getattr(torch._C, "_set_sdp_priority_order", None)
    if get is None or put is None:
        return False
    from torch.nn.attention import SDPBackend

    cudnn = int(SDPBackend.CUDNN_ATTENTION)
    put([cudnn] + [int(b) for b in get() if int(b) != cudnn])
    torch.backends.cuda.enable_cudnn_sdp(True)
    return True


# --- frames ---------------------------------------------------------------------------------


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(frames, 3, H, W)`` floats in 0-1 (``output_type="pt"``) to ``(frames, H, W, 3)`` uint8.

    The conversion runs where the tensor is (the GPU), so only a quarter of the bytes cross to
    the CPU. Rounding matches ``generator.encode`` on the stock float frames exactly: both go
    through float32, scale by 255 and round half to even.
    """
    if video.ndim == 5:  # a batch of one clip
        video = video[0]
    scaled = video.float().clamp_(0.0, 1.0).mul_(255.0).round_()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


# --- prompt embeddings ------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptKey:
    """What decides a prompt's embeddings. The negative prompt counts only with guidance."""

    prompt: str
    negative_prompt: str | None
    max_sequence_length: int


class PromptCache:
    """The last ``capacity`` prompts' T5 embeddings, least recently used evicted first.

    Embeddings stay on the device the pipeline encodes on, ready to pass to ``pipe(...)``.
    """

    def __init__(self, capacity: int = PROMPT_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[PromptKey, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: PromptKey) -> bool:
        return key in self._entries

    def kwargs(
        self,
        pipe: Any,
        prompt: str,
        negative_prompt: str | None,
        *,
        guidance_scale: float,
        max_sequence_length: int = 256,
    ) -> dict[str, torch.Tensor]:
        """The ``prompt_embeds``/``prompt_attention_mask`` (and negatives) keyword arguments.

        Encodes with the pipeline's own ``encode_prompt`` on a miss.
        """
        cfg = guidance_scale > 1.0
        key = PromptKey(prompt, (negative_prompt or "") if cfg else None, max_sequence_length)
        return self.get_or_make(key, lambda: _encode(pipe, key, cfg))

    def get_or_make(
        self, key: PromptKey, make: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The entry for ``key``, made with ``make()`` (and cached) if absent."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return dict(entry)
        entry = make()
        with self._lock:
            self.misses += 1
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return dict(entry)

    def clear(self) -> None:
        """Forget every entry (after the text encoder or its weights change)."""
        with self._lock:
            self._entries.clear()


def prompt_cache(pipe: Any) -> PromptCache:
    """The pipeline's prompt cache, made on first use; it lives as long as the pipeline."""
    cache = getattr(pipe, _CACHE_ATTR, None)
    if cache is None:
        cache = PromptCache()
        setattr(pipe, _CACHE_ATTR, cache)
    return cache


def _encode(pipe: Any, key: PromptKey, cfg: bool) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt(
            prompt=key.prompt,
            negative_prompt=key.negative_prompt,
            do_classifier_free_guidance=cfg,
            num_videos_per_prompt=1,
            max_sequence_length=key.max_sequence_length,
            device=pipe._execution_device,
        )
    out = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
    if cfg:
        out |= {"negative_prompt_embeds": neg_embeds, "negative_prompt_attention_mask": neg_mask}
    return out


# --- compile without making anyone wait ------------------------------------------------------


class BackgroundCompile:
    """Compile the transformer's repeated blocks on a side thread while clips run eagerly.

    The first eager clip records one block's inputs (:meth:`attach`); a side thread then
    compiles a block forward on those inputs, and :meth:`swap_in_if_ready`, called between
    clips, points every block at the compiled forward. The compiled forward shares the
    blocks' weights (no extra memory), and a clip never switches kernels halfway through.

    A failed compile leaves the pipeline eager and says why in ``error``.
    """

    def __init__(
        self, transformer: torch.nn.Module, *, backend: str | Callable[..., Any] = "inductor"
    ) -> None:
        self._blocks = list(_repeated_blocks(transformer))
        self._backend = backend
        self._compiled: list[Callable[..., Any]] = []
        self._thread: threading.Thread | None = None
        self._hook: Any = None
        self.ready = threading.Event()
        self.swapped = False
        self.error: str | None = None
        self.compile_s: float | None = None

    def attach(self) -> None:
        """Start compiling after the next forward of the first block (during the next clip)."""
        if not self._blocks or self._hook is not None:
            return
        self._hook = self._blocks[0].register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._hook.remove()
        inputs = (_detached(args), _detached(kwargs))
        self._thread = threading.Thread(
            target=self._compile, args=inputs, name="ltx-compile", daemon=True
        )
        self._thread.start()

    def _compile(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        start = time.perf_counter()
        try:
            compiled = [
                torch.compile(block._call_impl, backend=self._backend) for block in self._blocks
            ]
            with torch.no_grad():
                # The blocks share one graph; the first call compiles it, the others only
                # check their guards.
                for fn in compiled:
                    fn(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._compiled = compiled
            self.compile_s = time.perf_counter() - start
            log.info("LTX transformer blocks compiled in %.1f s", self.compile_s)
        except Exception as exc:  # any compile failure: stay eager, say why
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("compiling the LTX transformer failed; staying eager (%s)", self.error)
        finally:
            self.ready.set()

    def swap_in_if_ready(self) -> bool:
        """Between clips: use the compiled blocks if they are ready; return whether in use."""
        if self.swapped or not self.ready.is_set() or not self._compiled:
            return self.swapped
        for block, fn in zip(self._blocks, self._compiled, strict=True):
            block._compiled_call_impl = fn  # what nn.Module.compile() sets
        self.swapped = True
        return True

    def swap_out(self) -> None:
        """Go back to the eager blocks (the benchmark compares both)."""
        for block in self._blocks:
            block._compiled_call_impl = None
        self.swapped = False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the side thread has finished (tests and the benchmark only)."""
        return self.ready.wait(timeout)


def _repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    names = set(getattr(transformer, "_repeated_blocks", ()) or ())
    return [m for m in transformer.modules() if type(m).__name__ in names]


def _detached(value: Any) -> Any:
    """A copy of a block's inputs that outlives the clip that made them."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value
