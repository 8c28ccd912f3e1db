"""Speed and memory settings applied to a loaded SVD pipeline: the fast and low-vram profiles, fp8.

``generator.engines.svd`` loads one ``StableVideoDiffusionPipeline`` per process and calls one of
these when it places it for a profile. Every function changes the pipeline in place and
leaves its ``__call__`` stock; :func:`restore_stock` undoes all of them, so the caller can
switch profiles on the same object.

Example::

    >>> configure_torch(Path("data/inductor-cache"))  # once, before the first compile
    >>> applied = apply_fast(pipe, device="cuda", compile=True)
    >>> applied.steps
    ('on cuda', 'cross-attention shortcut (32 blocks)', ..., 'fused qkv (32 attentions)')
    >>> job = compile_job(pipe)
    >>> with job.serving():                 # the compile it starts begins after this clip
    ...     before_clip(pipe, height=576, width=1024, frames=25, decode_chunk=FAST_DECODE_CHUNK)
    ...     frames = pipe(image, decode_chunk_size=FAST_DECODE_CHUNK).frames[0]
    False                                   # eager; compiling behind it

Measured on an H200 (``bench/RESULTS.md``, ``bench/backend_check.py``): stock 18.05-18.2 s a
clip, fast 11.3-11.6 s (0.64x), low-vram 12.2 s at 6.0 GiB peak allocated; a restart loads the
saved graphs (``precompiled``) and finishes its first clip, compiled, 24-28 s after process
start (``bench/svd_restart.sh``; with Python's bytecode caches, as an install has them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generator.engines import precompiled
from generator.errors import BackendUnavailable
from generator.options import Profile

log = logging.getLogger(__name__)

#: Frames the VAE decodes at once in each profile (the caller passes it as ``decode_chunk_size``).
#: The decode chunk sets the decode peak and barely the time (bench/RESULTS.md).
FAST_DECODE_CHUNK = 8
LOW_VRAM_DECODE_CHUNK = 2

#: Marker attribute: what this module changed on a pipeline, so it can be undone.
_STATE = "_svd_speed_state"


@dataclass(frozen=True)
class Applied:
    """What a profile function did to the pipeline, for logs and the benchmark.

    ``steps`` lists the changes made, in order; ``skipped`` says what was left out and why
    (``"compile: torch.compile unavailable"``), so a slow run can be explained from its log.
    """

    profile: str
    steps: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def configure_torch(cache_dir: Path | None) -> None:
    """Fix the numeric flags and point inductor's caches at ``cache_dir``.

    The TF32 flags are part of inductor's cache key: leaving them to whoever ran last makes a
    restart miss the cache and recompile for minutes, so they are set to one value here.
    With a warm cache a restarted process skips most of the compile (bench/RESULTS.md).
    Call once per process, before the first compiled call.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser().resolve()
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Inductor reads this variable whenever it needs its cache folder, so setting it
        # here, before the first compile, is enough.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    try:
        import torch._inductor.config as inductor_config
    except ImportError:  # a torch without inductor: nothing to cache
        return
    inductor_config.fx_graph_cache = True


def compile_available(device: str) -> bool:
    """Whether ``torch.compile`` can make kernels for ``device`` here (CUDA needs Triton)."""
    if not hasattr(torch, "compile") or not device.startswith("cuda"):
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(has_triton())


# --- compile behind eager clips --------------------------------------------------------------


def uncompile_module(module: nn.Module) -> None:
    """Undo ``nn.Module.compile`` (and :class:`SvdCompile`'s swap): the next call runs eager."""
    module.__dict__.pop("forward", None)
    module._compiled_call_impl = None


def is_compiled(module: nn.Module) -> bool:
    """Whether ``nn.Module.compile`` (or :class:`SvdCompile`) wrapped this module."""
    return "forward" in module.__dict__ or module._compiled_call_impl is not None


#: The UNet's repeated block classes compiled one by one (regional compilation): one graph per
#: block shape instead of one for the whole UNet; on an H100 111 s of compiling instead of
#: 217 s for the same step time (../shared/PERF.md).
REGIONAL_BLOCKS = ("SpatioTemporalResBlock", "TransformerSpatioTemporalModel")
#: Graphs per block class: about 15 shapes an orientation, two orientations, two batch sizes.
RECOMPILE_LIMIT = 256
#: How long a compile started at load (``SvdBackend.prepare``) waits for a first clip before it
#: begins: a restarted worker with jobs queued takes one within a second or two, and that clip
#: then runs alone; with none, the compile starts this much later (it takes 50-300 s anyway).
LOAD_GRACE_S = 10.0

_COMPILE_ATTR = "_svd_background_compile"
#: ``torch.compile``'s backend for the blocks (tests set one that compiles nothing).
COMPILE_BACKEND: str | Callable[..., Any] = "inductor"

#: What one compiled graph set serves: (profile, height, width, frames, decode chunk, batch);
#: the batch is 2 with classifier-free guidance (the pipeline's default), else 1.
ClipShape = tuple[str, int, int, int, int, int]


class SvdCompile(precompiled.PrecompiledBlocks):
    """Compile the UNet's repeated blocks and the VAE decoder behind eager clips, and keep them.

    Before each clip the engine calls :meth:`before_clip` with the clip's shape. A shape
    compiled already runs compiled; so does one whose graphs a former process saved (loaded in
    seconds, no compiling: a restart's first clip runs at full speed). Any other runs eagerly,
    at stock speed, while a side thread compiles that shape and its other orientation
    (portrait for landscape) from one UNet pass and one decode on random inputs of those sizes,
    pausing while clips run (``serving``), and saves the graphs beside inductor's cache
    (``precompiled``); the first clip after it is done runs compiled. A failed compile leaves
    that shape eager (``errors`` says why).

    The side thread's pass needs activation memory beside the running clip's, once per shape.
    """

    #: Compile the other orientation too (benchmarks turn it off to time one orientation).
    both_orientations = True

    def __init__(
        self,
        pipe: Any,
        *,
        backend: str | Callable[..., Any] = "inductor",
        folder: Path | None = None,
    ) -> None:
        blocks = [m for m in base_unet(pipe).modules() if type(m).__name__ in REGIONAL_BLOCKS]
        super().__init__(
            [*blocks, pipe.vae.decoder],
            folder=folder,
            backend=backend,
            name="SVD compile",
            dynamo_config={
                "recompile_limit": RECOMPILE_LIMIT,
                "accumulated_recompile_limit": 4 * RECOMPILE_LIMIT,
            },
        )
        self._pipe = pipe

    def before_clip(self, shape: ClipShape, *, grace_s: float = 0.0) -> bool:
        """Compiled modules if ``shape`` is ready or saved, else eager and compile it (and its
        turn) behind the clip.

        Called inside the clip's ``serving()``, the compile begins when that clip ends;
        ``grace_s`` is for a call with no clip yet (see ``BackgroundCompile.start``).
        """
        if not self.busy:
            if not self.known(shape):
                self.preload(shape)  # graphs a former process saved: no compiling
            profile, height, width, frames, chunk, batch = shape
            turned: ClipShape = (profile, width, height, frames, chunk, batch)
            both = (shape, turned) if self.both_orientations else (shape,)
            todo = [s for s in dict.fromkeys(both) if not self.known(s)]
            work = [(s, lambda s=s: self._exercise(s)) for s in todo]
            self.start(work, inference=True, grace_s=grace_s)
        return self.use(shape)

    def _exercise(self, shape: ClipShape) -> None:
        """One UNet pass (batch two with classifier-free guidance, as the pipeline calls it)
        and one chunked decode at ``shape``: every graph a clip of that shape runs."""
        _profile, height, width, frames, chunk, batch = shape
        pipe, unet = self._pipe, base_unet(self._pipe)
        device, dtype = unet.device, unet.dtype
        noise = torch.Generator().manual_seed(0)

        def rand(*size: int) -> torch.Tensor:
            return torch.randn(*size, generator=noise).to(device, dtype)

        h, w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
        pipe.unet(
            rand(batch, frames, unet.config.in_channels, h, w),
            torch.tensor(1.0, device=device),
            encoder_hidden_states=rand(batch, 1, unet.config.cross_attention_dim),
            added_time_ids=torch.tensor([[6.0, 127.0, 0.02]] * batch).to(device, dtype),
            return_dict=False,
        )
        self.pause()  # the decode's uncompiled parts wait for a clip as the decoder does
        pipe.decode_latents(rand(1, frames, pipe.vae.config.latent_channels, h, w), frames, chunk)


def before_clip(
    pipe: Any,
    *,
    height: int,
    width: int,
    frames: int,
    decode_chunk: int,
    guidance: bool = True,
    grace_s: float = 0.0,
) -> bool:
    """Call at the start of each clip, inside its ``serving()``: whether it runs compiled
    (``False`` off CUDA or while compiling).

    ``guidance``: whether the clip uses classifier-free guidance (``max_guidance_scale > 1``,
    SVD's default), which doubles the UNet's batch and so needs its own graphs.
    ``grace_s``: for a call with no clip (at load), how long the compile waits for one.

    A shape not compiled yet runs eagerly and starts compiling behind the clip (see
    :class:`SvdCompile`): the compile begins when the clip ends, so no clip waits for it.
    """
    job: SvdCompile | None = getattr(pipe, _COMPILE_ATTR, None)
    if job is None:
        return False
    profile = getattr(pipe, _STATE, "")
    batch = 2 if guidance else 1
    return job.before_clip(
        (str(profile), height, width, frames, decode_chunk, batch), grace_s=grace_s
    )


def compile_job(pipe: Any) -> SvdCompile | None:
    """The pipeline's background compile (``None`` when the profile compiles nothing)."""
    return getattr(pipe, _COMPILE_ATTR, None)


def _stop_compiling(pipe: Any) -> None:
    """Clips run eager from now on; a side thread still compiling finishes on its own."""
    job = compile_job(pipe)
    if job is not None:
        job.swap_out()
        delattr(pipe, _COMPILE_ATTR)
    for module in (*base_unet(pipe).modules(), pipe.vae.decoder):
        if module._compiled_call_impl is not None:
            module._compiled_call_impl = None


# --- the cross-attention shortcut --------------------------------------------------------------


class SingleTokenCrossAttention:
    """Cross-attention to a single key token, computed as ``to_out(to_v(key))``.

    SVD's cross-attention attends to one token (the photo's CLIP embedding, per frame in the
    spatial blocks and per pixel column in the temporal ones). Softmax over one key is exactly
    1, so every query gets that token's value: the query projection, the attention kernel and
    the per-token output projection compute the same row for every query. This computes it
    once per batch entry and broadcasts it; the block's ``norm2`` (which only fed ``to_q``) is
    skipped by :func:`shortcut_cross_attention`. Anything else (a mask, several keys) goes to
    the stock processor with the norm applied, so the function never changes.
    """

    def __init__(self, norm: nn.Module) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.norm = norm
        self.stock = AttnProcessor2_0()

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        single = (
            encoder_hidden_states is not None
            and encoder_hidden_states.ndim == 3
            and encoder_hidden_states.shape[1] == 1
            and hidden_states.ndim == 3
            and attention_mask is None
            and attn.spatial_norm is None
            and attn.group_norm is None
            and not attn.norm_cross
            and not attn.residual_connection
        )
        if not single:
            normed = self.norm(hidden_states)
            return self.stock(attn, normed, encoder_hidden_states, attention_mask, temb)
        value = attn.to_out[1](attn.to_out[0](attn.to_v(encoder_hidden_states)))
        if attn.rescale_output_factor != 1.0:
            value = value / attn.rescale_output_factor
        return value.expand(hidden_states.shape[0], hidden_states.shape[1], value.shape[-1])


def shortcut_cross_attention(unet: nn.Module) -> int:
    """Give every transformer block's cross-attention (``attn2``) the exact single-token
    shortcut and skip its ``norm2``; return how many blocks changed."""
    count = 0
    for block in unet.modules():
        attn, norm = getattr(block, "attn2", None), getattr(block, "norm2", None)
        if attn is None or not isinstance(norm, nn.LayerNorm) or not attn.is_cross_attention:
            continue
        attn.set_processor(SingleTokenCrossAttention(norm))
        block.norm2 = nn.Identity()  # its output only fed the query projection
        count += 1
    return count


def restore_cross_attention(unet: nn.Module) -> None:
    """Undo :func:`shortcut_cross_attention`."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for block in unet.modules():
        attn = getattr(block, "attn2", None)
        processor = getattr(attn, "processor", None)
        if isinstance(processor, SingleTokenCrossAttention):
            block.norm2 = processor.norm
            attn.set_processor(AttnProcessor2_0())


# --- the VAE encoder in fp32 -------------------------------------------------------------------


def fp32_vae_encoder(pipe: Any) -> bool:
    """Keep the VAE's encoder in fp32 and its decoder in fp16; return whether it changed.

    Stock diffusers casts the whole fp16 VAE to fp32 around encoding the photo and back before
    decoding (``force_upcast``), every clip. Keeping the encoder (and ``quant_conv``) fp32 does
    the same arithmetic without the two casts, and no clip ever changes the decoder's weights
    while a side thread compiles it. ``vae.dtype`` (its first weight, the encoder's) then
    reads fp32, so the pipeline feeds the encoder fp32 and skips its casts.
    """
    vae = pipe.vae
    if vae.dtype != torch.float16 or not vae.config.get("force_upcast", False):
        return False
    vae.encoder.to(torch.float32)
    vae.quant_conv.to(torch.float32)
    return True


def restore_vae_encoder(pipe: Any) -> None:
    """Undo :func:`fp32_vae_encoder`: the whole VAE in the decoder's dtype again."""
    vae = pipe.vae
    dtype = next(vae.decoder.parameters()).dtype
    if vae.dtype != dtype:
        vae.to(dtype)


# --- classifier-free guidance as two batch-1 passes ----------------------------------------


class CfgSplitUNet(nn.Module):
    """Runs the pipeline's batch-2 (unconditional, conditional) UNet call as two batch-1 passes.

    Each sample's computation in the UNet is independent of the other's (group norm and
    attention work per sample), so the result is the same; the activations alive at once
    halve, which is most of the denoising peak. Attribute reads (``config``, ``dtype``,
    ``add_embedding``) go to the wrapped UNet, so the pipeline cannot tell the difference.
    """

    def __init__(self, unet: nn.Module, parts: int = 2) -> None:
        super().__init__()
        self.unet = unet
        self.parts = parts

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        return_dict: bool = True,
    ) -> Any:
        batch = sample.shape[0]
        if batch < self.parts or batch % self.parts:
            return self.unet(
                sample,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                added_time_ids=added_time_ids,
                return_dict=return_dict,
            )
        outputs = [
            self.unet(s, timestep, encoder_hidden_states=e, added_time_ids=a, return_dict=False)[0]
            for s, e, a in zip(
                sample.chunk(self.parts),
                encoder_hidden_states.chunk(self.parts),
                added_time_ids.chunk(self.parts),
                strict=True,
            )
        ]
        out = torch.cat(outputs)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_spatio_temporal_condition import (
            UNetSpatioTemporalConditionOutput,
        )

        return UNetSpatioTemporalConditionOutput(sample=out)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("unet"), name)


def split_cfg(pipe: Any, parts: int = 2) -> None:
    """Make ``pipe`` run classifier-free guidance as ``parts`` separate UNet passes."""
    if not isinstance(pipe.unet, CfgSplitUNet):
        pipe.unet = CfgSplitUNet(pipe.unet, parts)


def unsplit_cfg(pipe: Any) -> None:
    """Undo :func:`split_cfg`."""
    if isinstance(pipe.unet, CfgSplitUNet):
        pipe.unet = pipe.unet.unet


def base_unet(pipe: Any) -> nn.Module:
    """The pipeline's own UNet, under any wrapper of ours."""
    unet = pipe.unet
    return unet.unet if isinstance(unet, CfgSplitUNet) else unet


# --- fused attention projections -----------------------------------------------------------


def fuse_qkv(unet: nn.Module) -> int:
    """Fuse each attention's q/k/v (k/v for cross-attention) into one matmul; return the count.

    One wide matmul reads the activations once instead of three times. Uses diffusers' own
    ``Attention.fuse_projections`` and ``FusedAttnProcessor2_0``.
    """
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    count = 0
    for module in unet.modules():
        if isinstance(module, Attention) and not module.fused_projections:
            if isinstance(module.processor, SingleTokenCrossAttention):
                continue  # one key token: nothing left to fuse
            with torch.no_grad():
                module.fuse_projections(fuse=True)
            module.set_processor(FusedAttnProcessor2_0())
            count += 1
    return count


def unfuse_qkv(unet: nn.Module) -> None:
    """Undo :func:`fuse_qkv`: back to separate projections and the stock processor."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    for module in unet.modules():
        if isinstance(module, Attention) and module.fused_projections:
            for name in ("to_qkv", "to_kv"):
                if hasattr(module, name):
                    delattr(module, name)
            module.fused_projections = False
            module.set_processor(AttnProcessor2_0())


# --- attention kernel choice -----------------------------------------------------------------

_DEFAULT_SDP_ORDER: list[int] | None = None


def prefer_cudnn_attention() -> bool:
    """Make cuDNN's fused attention PyTorch's first choice; return whether it could.

    At SVD-XT's level-1 shapes cuDNN ran spatial attention 1.5x faster than the flash kernel
    PyTorch picks by default (bench/RESULTS.md). The order is read when a graph is traced,
    so call this before compiling. Process-wide: :func:`restore_attention_order` undoes it.
    """
    global _DEFAULT_SDP_ORDER
    get = getattr(torch._C, "_get_sdp_priority_order", None)
    put = getattr(torch._C, "_set_sdp_priority_order", None)
    if get is None or put is None:
        return False
    from torch.nn.attention import SDPBackend

    order = [int(b) for b in get()]
    if _DEFAULT_SDP_ORDER is None:
        _DEFAULT_SDP_ORDER = order
    cudnn = int(SDPBackend.CUDNN_ATTENTION)
    put([cudnn] + [b for b in order if b != cudnn])
    torch.backends.cuda.enable_cudnn_sdp(True)
    return True


def restore_attention_order() -> None:
    """Undo :func:`prefer_cudnn_attention`."""
    if _DEFAULT_SDP_ORDER is not None:
        torch._C._set_sdp_priority_order(_DEFAULT_SDP_ORDER)


# --- keep a module off the GPU except while it runs ----------------------------------------


def offload_when_idle(module: nn.Module, device: str) -> None:
    """Keep ``module``'s weights in pinned CPU memory, on ``device`` only during its forward.

    For the image encoder (1.2 GiB, used once per clip): unlike model CPU offload, the UNet
    stays on the GPU across steps. The weights never change, so going back to the CPU is a
    pointer swap, not a copy.
    """
    if getattr(module, "_svd_offload", None) is not None:
        return
    tensors = [*module.parameters(), *module.buffers()]
    pin = torch.cuda.is_available() and device.startswith("cuda")
    cpu_copies = [t.detach().to("cpu") for t in tensors]
    if pin:
        cpu_copies = [c.pin_memory() for c in cpu_copies]
    for t, c in zip(tensors, cpu_copies, strict=True):
        t.data = c

    def before(_module: nn.Module, _args: Any) -> None:
        for t, c in zip(tensors, cpu_copies, strict=True):
            t.data = c.to(device, non_blocking=pin)

    def after(_module: nn.Module, _args: Any, _output: Any) -> None:
        for t, c in zip(tensors, cpu_copies, strict=True):
            t.data = c

    handles = (module.register_forward_pre_hook(before), module.register_forward_hook(after))
    module._svd_offload = (handles, tensors, cpu_copies)  # type: ignore[assignment]


def keep_on_device(module: nn.Module, device: str) -> None:
    """Undo :func:`offload_when_idle` and put ``module`` on ``device``."""
    state = getattr(module, "_svd_offload", None)
    if state is not None:
        handles, tensors, cpu_copies = state
        for handle in handles:
            handle.remove()
        for t, c in zip(tensors, cpu_copies, strict=True):
            t.data = c
        del module._svd_offload
    module.to(device)


# --- profiles --------------------------------------------------------------------------------


def restore_stock(pipe: Any, device: str | None = None) -> None:
    """Undo everything this module did to ``pipe`` (and ``nn.Module.compile``)."""
    _stop_compiling(pipe)
    unsplit_cfg(pipe)
    unet = pipe.unet
    uncompile_module(unet)
    uncompile_module(pipe.vae.decoder)
    restore_cross_attention(unet)
    unfuse_qkv(unet)
    restore_vae_encoder(pipe)
    target = device or str(pipe.device)
    keep_on_device(pipe.image_encoder, target)
    restore_attention_order()
    if getattr(pipe, _STATE, None) == "fp8":
        log.warning("fp8 weights cannot be restored; reload the pipeline for full precision")
    pipe.to(target)


def _common(pipe: Any, *, device: str, compile: bool) -> tuple[list[str], list[str]]:
    """What both profiles do: the exact cross-attention shortcut, the fp32 VAE encoder,
    cuDNN attention first, and the background compile."""
    steps = [f"cross-attention shortcut ({shortcut_cross_attention(base_unet(pipe))} blocks)"]
    skipped: list[str] = []
    if fp32_vae_encoder(pipe):
        steps.append("vae encoder kept in fp32")
    if device.startswith("cuda") and prefer_cudnn_attention():
        steps.append("cudnn attention first")
    if compile and not compile_available(device):
        skipped.append(f"compile: torch.compile with Triton unavailable for {device}")
    elif compile:
        try:
            setattr(pipe, _COMPILE_ATTR, SvdCompile(pipe, backend=COMPILE_BACKEND))
            steps.append("unet blocks and vae decoder compiled behind eager clips")
        except Exception as exc:  # torch.compile itself refused (old torch, bad backend)
            skipped.append(f"compile: {type(exc).__name__}: {exc}")
            log.warning("torch.compile unavailable (%s); SVD runs eager", exc)
    return steps, skipped


def apply_fast(pipe: Any, *, device: str, compile: bool) -> Applied:
    """Set ``pipe`` up for speed: all on ``device``, fused QKV, cuDNN attention, compiled UNet/VAE.

    Args:
        pipe: a loaded ``StableVideoDiffusionPipeline`` (any dtype).
        device: ``cuda``, ``cuda:N``, ``mps`` or ``cpu``.
        compile: ``torch.compile`` the UNet and the VAE decoder (CUDA only; the first clip
            pays the compile, see ``configure_torch`` for the cache). Falls back to eager.

    Decode with :data:`FAST_DECODE_CHUNK` frames at a time.
    """
    restore_stock(pipe, device)
    steps = [f"on {device}"]
    more, skipped = _common(pipe, device=device, compile=compile)
    steps.append(f"fused qkv ({fuse_qkv(pipe.unet)} attentions)")
    setattr(pipe, _STATE, Profile.FAST.value)
    return Applied(Profile.FAST.value, tuple(steps + more), tuple(skipped))


def apply_low_vram(pipe: Any, *, device: str, compile: bool) -> Applied:
    """Set ``pipe`` up to fit a small GPU without slowing every step.

    Classifier-free guidance runs as two batch-1 UNet passes (half the activations, which
    are most of the denoising peak); the image encoder sits in CPU memory except while it
    encodes the photo; the UNet and VAE stay on the GPU. With ``compile`` the UNet and the
    VAE decoder are compiled as in ``apply_fast``.

    Decode with :data:`LOW_VRAM_DECODE_CHUNK` frames at a time.
    """
    restore_stock(pipe, device)
    steps = [f"unet and vae on {device}"]
    if device.startswith(("cuda", "mps")):
        offload_when_idle(pipe.image_encoder, device)
        steps.append("image encoder in cpu memory between clips")
    more, skipped = _common(pipe, device=device, compile=compile)
    split_cfg(pipe)
    steps.append("cfg as two batch-1 passes")
    setattr(pipe, _STATE, Profile.LOW_VRAM.value)
    return Applied(Profile.LOW_VRAM.value, tuple(steps + more), tuple(skipped))


def apply_profile(pipe: Any, profile: Profile, *, device: str, compile: bool) -> Applied:
    """Apply ``FAST`` or ``LOW_VRAM`` (resolve ``AUTO`` first, e.g. with ``svd.choose_profile``)."""
    if profile is Profile.FAST:
        return apply_fast(pipe, device=device, compile=compile)
    if profile is Profile.LOW_VRAM:
        return apply_low_vram(pipe, device=device, compile=compile)
    raise ValueError(f"resolve {profile} to fast or low-vram before applying it")


def fp8_available(device: str) -> str | None:
    """``None`` if fp8 weights can run on ``device``, else a sentence saying why not."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "fp8 needs a CUDA GPU"
    if torch.cuda.get_device_capability(torch.device(device)) < (8, 9):
        return "fp8 needs an Ada or Hopper GPU (compute capability 8.9+)"
    try:
        import torchao.quantization  # noqa: F401
    except Exception as exc:  # ImportError, or a torchao built for another torch
        return f"torchao is not usable here ({type(exc).__name__})"
    return None


def apply_fp8(pipe: Any, *, device: str = "cuda") -> Applied:
    """Quantize the UNet's linear layers to float8 (torchao), on top of a profile. Opt-in only.

    Dynamic per-row float8 activations and weights: about half the matmul time on Hopper,
    at a measured cost in accuracy (bench/RESULTS.md). Not undoable: reload the pipeline
    to go back to full precision. Call it after ``apply_fast`` (whose fused projections
    cannot be built from fp8 weights) and before the first clip, so the lazy compile traces
    the fp8 layers.

    Raises:
        BackendUnavailable: no fp8-capable GPU or no usable torchao.
    """
    reason = fp8_available(device)
    if reason is not None:
        raise BackendUnavailable(reason, user_text="fp8 mode isn't available on this machine.")
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        PerTensor,
        quantize_,
    )

    def wide_linear(module: nn.Module, _fqn: str) -> bool:
        # fp8 matmuls need both dimensions divisible by 16; tiny ones are not worth it.
        return (
            isinstance(module, nn.Linear)
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
            and module.in_features * module.out_features >= 256 * 256
        )

    unet = base_unet(pipe)
    try:
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        quantize_(unet, config, filter_fn=wide_linear)
        how = "per-row"
    except Exception as exc:  # some torchao versions take per-row scales for bf16 only
        log.warning("per-row fp8 refused (%s); using per-tensor scales", exc)
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())
        quantize_(unet, config, filter_fn=wide_linear)
        how = "per-tensor"
    setattr(pipe, _STATE, "fp8")
    return Applied("fp8", (f"float8 dynamic {how} linears in the unet",))
