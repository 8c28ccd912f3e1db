"""Memory profiles, speed settings and prompt embeddings for a loaded Wan 2.2 TI2V-5B pipeline.

``generator.engines.wan`` loads one ``WanImageToVideoPipeline`` per process and calls
:func:`apply_profile` once when it places it, and :func:`before_clip` before each clip; the
pipeline's ``__call__`` stays stock.

On CUDA both profiles compute the same function as stock diffusers: one transformer pass of
the fast profile is 1.30e-2 (relative L2) from an fp32 pass of the same weights, stock bf16's
1.49e-2 (``bench/wan_bench.py --accuracy``, ``bench/RESULTS.md``). What changes:

- the query/key/value projections fused into one matrix product per attention (diffusers'
  ``fuse_qkv_projections``), the separate copies dropped so no weight is stored twice or
  streamed for nothing;
- attention pinned to cuDNN's fused kernel on Hopper (:data:`ATTENTION_BACKEND`): PyTorch 2.11
  picks it there by itself in eager mode (1.17 s a pass; flash 1.46 s, memory-efficient
  2.24 s), and pinning it keeps it inside the compiled graph too;
- ``fast`` only: the transformer's 30 repeated blocks compiled (regional ``torch.compile``)
  on a side thread behind eager clips, by the same ``BackgroundCompile`` LTX-Video uses
  (:func:`compile_behind`): nobody waits for the compiler. A step goes from 2.34 s to 1.85 s
  on an H200.

Profiles:

- ``fast``: everything on the GPU. The decode is tiled only when the memory left beside the
  weights is under what an untiled decode needs (:func:`tile_decode`).
- ``low-vram`` (a 12 GB card): the 5B transformer (10 GB in bf16) lives in pinned CPU memory
  and streams to the GPU one block ahead of its use (diffusers' block-level group offloading
  with CUDA streams); the UMT5-XXL text encoder (10.6 GiB in bf16, so
  ``enable_model_cpu_offload`` cannot even encode a prompt under a 12 GiB cap) streams layer
  by layer, and only for a prompt the cache has not seen: prompts are built deterministically
  from photo type x intensity x custom elements, so most clips never touch it. The VAE stays
  on the GPU and decodes in large tiles (:data:`LOW_VRAM_TILE`). The blocks compile too, but
  differently (:class:`OffloadedCompile`): after the first clip of a shape, in the idle time
  before the next one, on a spare copy of one block, so neither the offloading hooks nor a
  clip's memory are touched; the streamed blocks then run the compiled graph.

The prompt cache, the frames conversion and the allocator setting are the ones LTX-Video uses
(``generator.engines.ltx_speed``); only Wan's ``encode_prompt`` (no attention masks) differs.

Example::

    >>> apply_profile(pipe, Profile.LOW_VRAM, device="cuda")
    >>> before_clip(pipe, height=704, width=1280, num_frames=121)   # compiled yet?
    >>> embeds = prompt_kwargs(pipe, prompt, negative, guidance_scale=5.0)
    >>> video = pipe(image=photo, **embeds, output_type="pt").frames[0]
    >>> after_clip(pipe)                         # low-vram: compile this shape while idle
    >>> frames = device.frames_to_uint8(video)   # (frames, height, width, 3) uint8 on the CPU
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import torch

from generator.engines.ltx_speed import (
    BackgroundCompile,
    PromptKey,
    _group_offloaded,
    compile_available,
    expandable_segments,
    prompt_cache,
)
from generator.options import Profile

__all__ = [
    "after_clip",
    "apply_profile",
    "before_clip",
    "compile_behind",
    "prompt_kwargs",
]

log = logging.getLogger(__name__)

#: diffusers' attention backend on Hopper (compute capability 9); other GPUs keep PyTorch's
#: own choice, which was not measured against it.
ATTENTION_BACKEND = "_native_cudnn"
#: The low-vram decode's tiles, in pixels: (tile, stride). diffusers' default (256, 192)
#: decodes 28 overlapping tiles of a 1280x704 clip in 13.4 s; these make 6, in 7.5 s at 3.2
#: GiB beside the weights, and differ from the untiled decode half as much.
LOW_VRAM_TILE = (512, 448)
#: GiB an untiled decode of 121 frames at 1280x704 needs beside the weights, by VAE dtype
#: (measured on an H200: 21.0 in fp32, 10.5 in bf16).
UNTILED_DECODE_GIB = {torch.float32: 22.0, torch.bfloat16: 11.0, torch.float16: 11.0}

_COMPILE_ATTR = "_wan_background_compile"
_OFFLOADED_ATTR = "_wan_offloaded_compile"


def apply_profile(
    pipe: Any,
    profile: Profile,
    *,
    device: str,
    compile: bool = True,
    attention: str | None = ATTENTION_BACKEND,
    fuse: bool = True,
    offload: str = "block_level",
    first_block_cache: float = 0.0,
) -> None:
    """Place ``pipe`` for ``profile`` on ``device``; off CUDA it only moves the pipeline there.

    Args:
        pipe: a loaded ``WanImageToVideoPipeline``.
        profile: ``Profile.FAST`` (all on the GPU) or ``Profile.LOW_VRAM`` (transformer and
            text encoder streamed from CPU memory, VAE resident and tiled).
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"`` or ``"mps"``.
        compile: compile the transformer's blocks: in ``fast`` behind eager clips, in
            ``low-vram`` between clips (:class:`OffloadedCompile`).
        attention: diffusers' attention backend name, used on Hopper; ``None`` keeps
            PyTorch's choice everywhere.
        fuse: fuse the attention projections (same function, fewer matrix products).
        offload: ``low-vram`` only: group offloading of the transformer, ``"block_level"``
            or ``"leaf_level"``.
        first_block_cache: opt-in approximation that changes the clip (``[wan]
            first_block_cache``): above 0, diffusers' first-block cache with this threshold,
            on the CPU and in ``fast`` (the blocks then stay eager: skipping blocks is a
            decision on data the compiled graphs were not made for); ``low-vram`` ignores it
            (block-level offloading prefetches blocks in the order they ran).

    Raises:
        ValueError: ``profile`` is ``AUTO`` (the caller resolves it by free VRAM first).
    """
    if profile not in (Profile.FAST, Profile.LOW_VRAM):
        raise ValueError(f"resolve the profile before applying it, got {profile}")
    cuda = str(device).startswith("cuda")
    if first_block_cache > 0:
        if profile is Profile.FAST or not cuda:
            _first_block_cache(pipe.transformer, first_block_cache)
        else:
            log.info("Wan 2.2: first-block cache ignored in %s", profile)
    if not cuda:
        pipe.to(device)  # nothing to gain from kernels, offloading or compiling here
        return
    # 1. Same function, faster kernels: before any offloading, which must see the final layers.
    if fuse:
        fuse_projections(pipe.transformer)
    if attention and torch.cuda.get_device_capability(torch.device(device))[0] == 9:
        pipe.transformer.set_attention_backend(attention)
    if profile is Profile.FAST:
        pipe.to(device)
        if compile and not first_block_cache:
            compile_behind(pipe)
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if tile_decode(free + cached, pipe.vae.dtype):
            pipe.vae.enable_tiling(*_tiles())
        else:
            pipe.vae.disable_tiling()
        return
    from diffusers.hooks import apply_group_offloading

    # A spare copy of one block, taken before the hooks: the low-vram compile runs on it.
    spare = (
        copy.deepcopy(pipe.transformer.blocks[0]).to("cpu")
        if compile and not _group_offloaded(pipe.transformer) and compile_available()
        else None
    )
    # 2. The VAE resident (1.4 GB in bf16, 2.8 GB in fp32): it encodes the photo and decodes
    # every clip, and group offloading its 3D convolutions gains nothing.
    pipe.vae.to(device)
    # 3. Grow memory segments in place: under a cap, fixed cached blocks fragment.
    expandable_segments()
    # 4. Transformer and text encoder in pinned CPU memory, streamed ahead of their use: the
    # transformer a block at a time (30 blocks of 0.33 GB, two transfers a step), the encoder
    # a layer at a time (its layers are not one list of blocks).
    for name, kind in (("transformer", offload), ("text_encoder", "leaf_level")):
        module = getattr(pipe, name)
        if _group_offloaded(module):
            continue
        module.to("cpu")
        torch.cuda.empty_cache()
        extra = {"num_blocks_per_group": 1} if kind == "block_level" else {}
        apply_group_offloading(
            module,
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type=kind,
            use_stream=True,
            **extra,
        )
    # 5. Tiles keep the decode's activations (tens of GiB for 121 frames at 1280x704) small.
    pipe.vae.enable_tiling(*_tiles())
    # 6. The streamed blocks compiled between clips.
    if spare is not None:
        compile_offloaded(pipe, spare, device=device)


def _first_block_cache(transformer: Any, threshold: float) -> None:
    """diffusers' first-block cache on the transformer, once (it changes the clip)."""
    if getattr(transformer, "_wan_first_block_cache", None) is not None:
        return
    from diffusers.hooks import FirstBlockCacheConfig

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    transformer._wan_first_block_cache = threshold
    log.warning("Wan 2.2: first-block cache at %s: faster, and the clips change", threshold)


def _tiles() -> tuple[int, int, int, int]:
    tile, stride = LOW_VRAM_TILE
    return tile, tile, stride, stride


def tile_decode(free_beside_weights: int, vae_dtype: torch.dtype) -> bool:
    """Whether the decode is tiled, given the bytes free beside the resident weights."""
    return free_beside_weights < UNTILED_DECODE_GIB.get(vae_dtype, 22.0) * 1024**3


def fuse_projections(transformer: torch.nn.Module) -> None:
    """Fuse each attention's projections (q, k, v in self-attention; k, v in cross-attention)
    into one linear layer and drop the separate ones, so the weights are stored once.

    Each output is the same dot product as before; only the kernel computing it changes."""
    if getattr(transformer, "_wan_fused", False):
        return
    transformer.fuse_qkv_projections()
    for module in transformer.modules():
        if not getattr(module, "fused_projections", False):
            continue
        # Self-attention reads only to_qkv now; cross-attention still reads to_q.
        unused = ("to_k", "to_v") if module.is_cross_attention else ("to_q", "to_k", "to_v")
        for name in unused:
            delattr(module, name)
    transformer._wan_fused = True


def compile_behind(pipe: Any, *, backend: str | Any = "inductor") -> BackgroundCompile | None:
    """The pipeline's compile job, made on first use: the transformer's repeated blocks
    compile on a side thread behind eager clips. ``None`` where inductor cannot run (no
    Triton); tests pass a cheap ``backend``."""
    job = getattr(pipe, _COMPILE_ATTR, None)
    if job is None and (backend != "inductor" or compile_available()):
        job = BackgroundCompile(pipe.transformer, backend=backend)
        setattr(pipe, _COMPILE_ATTR, job)
    return job


def stop_compiling(pipe: Any) -> None:
    """Back to eager blocks for good (before the weights move under offloading hooks)."""
    job = getattr(pipe, _COMPILE_ATTR, None)
    if job is not None:
        job.wait()
        job.swap_out()
        delattr(pipe, _COMPILE_ATTR)


def before_clip(pipe: Any, *, height: int, width: int, num_frames: int) -> bool:
    """Call before each clip: compiled blocks if ready for this shape, else eager (and a shape
    not compiled yet starts compiling behind this clip, or after it under ``low-vram``).
    Returns whether it runs compiled."""
    shape = (height, width, num_frames)
    job = getattr(pipe, _COMPILE_ATTR, None)
    if job is not None:
        return bool(job.before_clip(shape))
    offloaded = offloaded_compile(pipe)
    return False if offloaded is None else offloaded.before_clip(shape)


def after_clip(pipe: Any) -> None:
    """Call after each clip, whatever its outcome: under ``low-vram`` a shape first seen in
    it compiles now, while the GPU is idle (:class:`OffloadedCompile`)."""
    offloaded = offloaded_compile(pipe)
    if offloaded is not None:
        offloaded.after_clip()


def offloaded_compile(pipe: Any) -> OffloadedCompile | None:
    """The pipeline's low-vram compile job, if :func:`compile_offloaded` made one."""
    return getattr(pipe, _OFFLOADED_ATTR, None)


def compile_offloaded(
    pipe: Any,
    spare: torch.nn.Module,
    *,
    device: str,
    backend: str | Callable[..., Any] = "inductor",
) -> OffloadedCompile | None:
    """The pipeline's low-vram compile job, made once; ``None`` where the blocks' forwards
    are not reachable under the offloading hooks (they then stay eager)."""
    job = offloaded_compile(pipe)
    if job is None:
        try:
            job = OffloadedCompile(pipe.transformer.blocks, spare, device=device, backend=backend)
        except LookupError as exc:
            log.warning("Wan 2.2: low-vram blocks stay eager (%s)", exc)
            return None
        setattr(pipe, _OFFLOADED_ATTR, job)
    return job


class OffloadedCompile:
    """Compiled blocks under block-level group offloading (the ``low-vram`` profile).

    A streamed block's weights live in CPU memory and reach the GPU only for its own forward,
    inside diffusers' offloading hook; so the graph cannot be made by calling the real blocks
    on a side thread (that would move weights under a running clip), nor during a clip
    (someone would wait for the compiler). Instead:

    1. The first clip of a shape runs eagerly and leaves a copy of the first block's inputs in
       CPU memory (about 1.2 GB at 1280x704x121, mostly the per-token timestep embedding).
    2. :meth:`after_clip` compiles that shape on a side thread, while the GPU is idle, by
       calling the block class's compiled forward on ``spare``, a copy of one block made
       before the hooks (0.33 GB), on the GPU for the few seconds it takes.
    3. Later clips of that shape call the same compiled forward inside each block's hook,
       after its weights arrived: the blocks share one class and shapes, so they share the
       graph (``torch.compile`` treats a module's weights as inputs, not constants).

    A clip that starts while a compile runs waits for it (once per shape and process: about
    12 s on an H200's host for Wan's blocks) rather than sharing a 12 GB card with it. A
    failed compile leaves that shape eager and says why in ``errors``.

    Args:
        blocks: the transformer's blocks, under block-level group offloading (or none).
        spare: a copy of one block without hooks, anywhere (it moves to ``device`` to compile).
        device: where the blocks run.
        backend: ``torch.compile``'s backend (tests pass a cheap one).
    """

    def __init__(
        self,
        blocks: Any,
        spare: torch.nn.Module,
        *,
        device: str,
        backend: str | Callable[..., Any] = "inductor",
    ) -> None:
        self._blocks = list(blocks)
        self._spare, self._device = spare, device
        self._forward = torch.compile(type(spare).forward, backend=backend, dynamic=False)
        # The input shapes of the graph the clip now running may use (None: eager). A block
        # call of other shapes (both guidance passes batched, say) runs eagerly instead of
        # making a clip wait for a recompile.
        self._active: tuple[Any, ...] | None = None
        self._ready: dict[Hashable, tuple[Any, ...]] = {}
        self.errors: dict[Hashable, str] = {}
        self.compile_s: dict[Hashable, float] = {}
        self.waited_s = 0.0  # what clips spent waiting for a compile in progress
        self._recorded: tuple[Hashable, tuple[Any, ...], bool] | None = None
        self._recording: Any = None
        self._thread: threading.Thread | None = None
        for block in self._blocks:
            original = _own_forward(block)
            original.holder.forward = functools.partial(self._call, block, original.forward)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ready(self, shape: Hashable) -> bool:
        return shape in self._ready

    def before_clip(self, shape: Hashable) -> bool:
        """Wait for a compile in progress; compiled if ``shape`` is ready, else eager (and
        this clip records the block inputs to compile it from). Returns whether compiled."""
        self.wait()
        self._active = self._ready.get(shape)
        if self._active is None and shape not in self.errors and self._recording is None:
            self._recording = self._blocks[0].register_forward_pre_hook(
                lambda _m, args: self._record(shape, args)
            )
        return self._active is not None

    def after_clip(self) -> None:
        """Compile what the clip recorded, on a side thread (returns at once)."""
        self._active = None
        if self._recording is not None:  # the clip stopped before its first block
            self._recording.remove()
            self._recording = None
        recorded, self._recorded = self._recorded, None
        if recorded is None or self.busy:
            return
        self._thread = threading.Thread(
            target=self._compile, args=recorded, name="Wan low-vram compile", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a compile in progress is done; whether none runs now."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            start = time.perf_counter()
            thread.join(timeout)
            waited = time.perf_counter() - start
            self.waited_s += waited
            log.info("Wan 2.2: a clip waited %.1f s for the low-vram compile", waited)
        return not self.busy

    # --- inside -------------------------------------------------------------------------------

    def _call(self, block: torch.nn.Module, eager: Callable[..., Any], *args: Any) -> Any:
        if self._active is not None and _shapes(args) == self._active:
            return self._forward(block, *args)
        return eager(*args)

    def _record(self, shape: Hashable, args: tuple[Any, ...]) -> None:
        if self._recording is not None:
            self._recording.remove()
        self._recording = None
        self._recorded = (shape, _to(args, "cpu"), torch.is_inference_mode_enabled())

    def _compile(self, shape: Hashable, args: tuple[Any, ...], inference: bool) -> None:
        start = time.perf_counter()
        cuda = str(self._device).startswith("cuda")
        # The clip's own mode, for the moves too: the hooks bring the real blocks' weights in
        # under it, and the graph's guards must see the spare's weights made the same way.
        with torch.inference_mode() if inference else torch.no_grad():
            try:
                spare = self._spare.to(self._device)
                self._forward(spare, *_to(args, self._device))
                if cuda:
                    torch.cuda.synchronize(self._device)
            except Exception as exc:  # any compile failure: this shape stays eager, say why
                self.errors[shape] = f"{type(exc).__name__}: {exc}"
                log.warning("Wan 2.2 low-vram compile for %s failed; eager (%s)", shape, exc)
                return
            finally:
                self._spare.to("cpu")
                if cuda:
                    torch.cuda.empty_cache()  # the card's memory back for the next clip
        self.compile_s[shape] = time.perf_counter() - start
        self._ready[shape] = _shapes(args)
        log.info("Wan 2.2: low-vram blocks for %s compiled in %.1f s", shape, self.compile_s[shape])


class _Forward:
    """Where a block's own forward is called from: the hook that wraps it, or the block."""

    def __init__(self, holder: Any, forward: Callable[..., Any]) -> None:
        self.holder, self.forward = holder, forward


def _own_forward(block: torch.nn.Module) -> _Forward:
    """The reference through which ``block``'s own forward is called: the innermost diffusers
    hook's, or the block itself when no hook wraps it.

    Raises:
        LookupError: a hook wraps the block but none of them calls its own forward.
    """
    registry = getattr(block, "_diffusers_hook", None)
    refs = list(getattr(registry, "_fn_refs", ()) or ())
    if not refs:
        return _Forward(block, block.forward)
    for ref in refs:
        fn = ref.forward
        if (
            getattr(fn, "__self__", None) is block
            and getattr(fn, "__func__", None) is type(block).forward
        ):
            return _Forward(ref, fn)
    raise LookupError(f"no hook of {type(block).__name__} calls its own forward")


def _shapes(value: Any) -> Any:
    """The tensor shapes in a block's inputs (what a graph compiled for them needs)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, tuple | list):
        return tuple(_shapes(v) for v in value)
    return None


def _to(value: Any, device: str) -> Any:
    """A copy of a block's inputs on ``device`` (tuples and lists kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    return value


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


class GuidanceBatch:
    """Both guidance passes of a step in one transformer call of batch 2 (``low-vram``).

    Wan's pipeline calls the transformer twice a step, conditional then unconditional, with the
    same latents and timestep and only the text embeddings different. Under group offloading
    every call streams all 10 GB of weights from CPU memory, so two calls a step stream them
    twice; here the conditional call runs both passes at once and the unconditional call gets
    its half back without running anything: the weights stream once a step. The same function
    (each sample of a batch is computed on its own); activations double, which the 12 GB
    profile has room for.

    Use as a context manager around one clip, with the very tensors passed to the pipeline::

        with GuidanceBatch(pipe.transformer, embeds["prompt_embeds"],
                           embeds["negative_prompt_embeds"]):
            pipe(..., **embeds)

    Calls it does not recognise (other embeddings) run unchanged.
    """

    def __init__(
        self, transformer: torch.nn.Module, positive: torch.Tensor, negative: torch.Tensor
    ):
        self.transformer, self.positive, self.negative = transformer, positive, negative
        self.calls = 0  # transformer passes actually run (one a step when batched)
        self._held: tuple[torch.Tensor, torch.Tensor] | None = None  # (latents, unconditional)

    def __enter__(self) -> GuidanceBatch:
        self._original = self.transformer.forward
        self.transformer.forward = self._forward  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.transformer.forward = self._original  # type: ignore[method-assign]
        self._held = None

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        text = kwargs.get("encoder_hidden_states")
        latents = kwargs.get("hidden_states")
        if text is self.negative and self._held is not None and self._held[0] is latents:
            unconditional = self._held[1]
            self._held = None
            return (
                (unconditional,) if not kwargs.get("return_dict", True) else _sample(unconditional)
            )
        self.calls += 1
        if args or text is not self.positive or latents is None:
            return self._original(*args, **kwargs)
        both = dict(kwargs)
        both["hidden_states"] = torch.cat([latents, latents])
        both["encoder_hidden_states"] = torch.cat([self.positive, self.negative])
        timestep = kwargs.get("timestep")
        if isinstance(timestep, torch.Tensor) and timestep.ndim and timestep.shape[0] == 1:
            both["timestep"] = torch.cat([timestep, timestep])
        both["return_dict"] = False
        conditional, unconditional = self._original(**both)[0].chunk(2)
        self._held = (latents, unconditional)
        return (conditional,) if not kwargs.get("return_dict", True) else _sample(conditional)


def _sample(sample: torch.Tensor) -> Any:
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)
