"""Speed and memory settings for a loaded LTX-Video pipeline: profiles, a prompt cache, frames.

``generator.engines.ltx`` loads one ``LTXConditionPipeline`` per process and calls
:func:`apply_profile` once when it places it; the pipeline's ``__call__`` stays stock.

- ``fast``: everything on the GPU.
- ``low-vram`` (a 12 GB card): the transformer and VAE stay on the GPU; the T5-XXL text
  encoder (9.5 GB in bf16, more than the rest together) lives in pinned CPU memory and is
  streamed to the GPU layer by layer only for a prompt the :class:`PromptCache` has not seen.
  Prompts are built deterministically from photo type x intensity x custom elements, so most
  clips never touch the encoder. The decode is tiled only where memory needs it.
- Both, on CUDA: the transformer's 28 repeated blocks compile on a side thread behind eager
  clips (:class:`BackgroundCompile`); nobody waits for the compiler.

The engine asks the pipeline for frames as a GPU tensor (``output_type="pt"``) and turns them
into ``uint8`` there (``device.frames_to_uint8``): the stock float-numpy path spends about half a
second on 121 frames.

Example::

    >>> apply_profile(pipe, Profile.LOW_VRAM, device="cuda")
    >>> before_clip(pipe, height=512, width=768, num_frames=121)   # compiled yet?
    >>> embeds = prompt_kwargs(pipe, prompt, negative, guidance_scale=1.0)
    >>> video = pipe(image=photo, **embeds, output_type="pt").frames[0]
    >>> frames = device.frames_to_uint8(video)   # (frames, height, width, 3) uint8 on the CPU

Measured on an H200 (``bench/ltx_bench.py``, ``bench/RESULTS.md``): stock 1.45 s from photo
to frames; fast 0.85 s; low-vram under a 12 GiB cap 0.95 s (1.29 s for a new prompt).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from generator.engines import compiling
from generator.engines.compiling import compile_available
from generator.options import Profile

log = logging.getLogger(__name__)

#: Prompts whose embeddings stay cached (about 2 MB each at 256 tokens in bf16).
PROMPT_CACHE_SIZE = 32
#: Free GiB beside the resident weights below which the 12 GB profile tiles the VAE decode.
#: Untiled, 121 frames at 768x512 peaked at 10.5 GiB allocated and 11.5 GiB reserved with
#: 5.9 GiB of weights under a 12 GiB cap; tiled, 9.0 and 10.8 (bench/RESULTS.md, run 2).
#: A real 12 GB card also holds the CUDA context, so it tiles.
UNTILED_DECODE_GIB = 6.0

_CACHE_ATTR = "_ltx_prompt_cache"
_COMPILE_ATTR = "_ltx_background_compile"


# --- profiles -------------------------------------------------------------------------------


def apply_profile(
    pipe: Any,
    profile: Profile,
    *,
    device: str,
    vae_tiling: bool | None = None,
    compile: bool = True,
) -> None:
    """Place ``pipe`` for ``profile`` on ``device``; off CUDA it only moves the pipeline there.

    Args:
        pipe: a loaded ``LTXConditionPipeline`` (or ``LTXImageToVideoPipeline``).
        profile: ``Profile.FAST`` (all on the GPU) or ``Profile.LOW_VRAM`` (text encoder
            streamed from CPU memory when a prompt is new; transformer and VAE resident).
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"`` or ``"mps"``.
        vae_tiling: low-vram only: tile the VAE decode; ``None`` tiles only when the memory
            left beside the resident weights is under :data:`UNTILED_DECODE_GIB`.
        compile: on CUDA, compile the transformer's blocks behind eager clips
            (:func:`before_clip`); a failure leaves them eager.

    Raises:
        ValueError: ``profile`` is ``AUTO`` (the caller resolves it by free VRAM first).
    """
    if profile not in (Profile.FAST, Profile.LOW_VRAM):
        raise ValueError(f"resolve the profile before applying it, got {profile}")
    if not str(device).startswith("cuda"):
        pipe.to(device)  # nothing to gain from offloading or compiling here
        return
    if compile and getattr(pipe, _COMPILE_ATTR, None) is None and compile_available():
        setattr(pipe, _COMPILE_ATTR, BackgroundCompile(pipe.transformer))
    if profile is Profile.FAST:
        pipe.to(device)
        pipe.vae.disable_tiling()
        return
    # 1. Transformer and VAE resident: they run every clip.
    pipe.transformer.to(device)
    pipe.vae.to(device)
    # 2. Grow memory segments in place: under a cap, the untiled decode's 1.4 GiB requests
    # failed with 2 GiB free but fragmented (bench/RESULTS.md, run 1).
    expandable_segments()
    # 3. The text encoder in pinned CPU memory, streamed one layer ahead of its use. It runs
    # only for prompts the cache has not seen.
    if not _group_offloaded(pipe.text_encoder):
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
    # 4. Tile the decode only where the card needs it: tiles change the frames a little.
    if vae_tiling is None:
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        vae_tiling = tile_decode(free + cached)
    if vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()


def tile_decode(free_beside_weights: int) -> bool:
    """Whether the 12 GB profile tiles the decode, given the bytes free beside the weights."""
    return free_beside_weights < UNTILED_DECODE_GIB * 1024**3


def before_clip(pipe: Any, *, height: int, width: int, num_frames: int) -> bool:
    """Call before each clip: compiled blocks if ready for this shape, else eager.

    A shape not compiled yet starts compiling behind this clip (on a side thread), so no
    clip ever waits for the compiler. Returns whether this clip runs compiled.
    """
    job: BackgroundCompile | None = getattr(pipe, _COMPILE_ATTR, None)
    if job is None:
        return False
    return job.before_clip((height, width, num_frames))


def expandable_segments() -> bool:
    """Let PyTorch's allocator grow segments instead of caching fixed blocks; return success.

    Process-wide; it only changes how memory is laid out, never a result.
    """
    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (AttributeError, RuntimeError) as exc:  # an older torch or a backend without it
        log.info("expandable segments unavailable: %s", exc)
        return False
    return True


def _group_offloaded(module: torch.nn.Module) -> bool:
    """Whether diffusers' group offloading already manages ``module`` (apply only once)."""
    try:
        from diffusers.hooks.group_offloading import _is_group_offload_enabled
    except ImportError:
        return False
    return bool(_is_group_offload_enabled(module))


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


def prompt_kwargs(
    pipe: Any, prompt: str, negative_prompt: str | None, *, guidance_scale: float
) -> dict[str, torch.Tensor]:
    """``pipe(...)``'s prompt keyword arguments, from the pipeline's cache when seen before."""
    return prompt_cache(pipe).kwargs(pipe, prompt, negative_prompt, guidance_scale=guidance_scale)


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

#: A clip's shape as the compiled blocks see it: (height, width, frames).
ClipShape = tuple[int, int, int]


class BackgroundCompile(compiling.BackgroundCompile):
    """Compile the transformer's repeated blocks on a side thread while clips run eagerly.

    Before each clip the engine calls :meth:`before_clip` with the clip's shape. A shape
    compiled already runs compiled; any other shape runs eagerly, and its first block's inputs
    are recorded during that clip so a side thread compiles that shape behind it
    (``generator.engines.compiling`` holds the side thread and the switch-over). Landscape and
    portrait clips of one duration have the same token count and share one graph.

    The 28 blocks of LTX-Video 2B compile in about 10 s on an H200 (bench/RESULTS.md); a clip
    served meanwhile is slower (the compiler holds Python's lock part of the time), never
    blocked. A failed compile leaves that shape eager and says why in ``errors``.

    Example::

        >>> job = BackgroundCompile(pipe.transformer)
        >>> job.before_clip((512, 768, 121))   # False: eager, and compiling starts behind it
        >>> ...                                # later clips of that shape
        >>> job.before_clip((512, 768, 121))   # True once the side thread is done
    """

    def __init__(
        self, transformer: torch.nn.Module, *, backend: str | Callable[..., Any] = "inductor"
    ) -> None:
        # One compiled wrapper per block; they share one code cache, so a shape compiles once.
        super().__init__(_repeated_blocks(transformer), backend=backend, name="LTX blocks")
        self._hook: Any = None

    @property
    def busy(self) -> bool:
        """Whether a side thread is compiling (or waits for a clip to record inputs from)."""
        return self._hook is not None or super().busy

    def before_clip(self, shape: ClipShape) -> bool:
        """Pick eager or compiled blocks for the next clip; return whether it runs compiled."""
        if self.use(shape):
            return True
        if self.modules and not self.busy and not self.known(shape):
            self._hook = self.modules[0].register_forward_pre_hook(
                lambda _m, args, kwargs: self._capture(shape, args, kwargs), with_kwargs=True
            )
        return False

    def _capture(self, shape: ClipShape, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        args, kwargs = _detached(args), _detached(kwargs)

        def work() -> None:
            # The first call compiles the shared graph; the others only check guards.
            for i in range(len(self.modules)):
                self.call_compiled(i, *args, **kwargs)

        # Compile under the clip's own grad/inference mode, so the graph's guards match it.
        self.start([(shape, work)], inference=torch.is_inference_mode_enabled())


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
