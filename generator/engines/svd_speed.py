"""Speed and memory settings applied to a loaded SVD pipeline: the fast and low-vram profiles, fp8.

``generator.engines.svd`` loads one ``StableVideoDiffusionPipeline`` per process and calls one of
these when it places it for a profile. Every function changes the pipeline in place and
leaves its ``__call__`` stock; :func:`restore_stock` undoes all of them, so the caller can
switch profiles on the same object.

Example::

    >>> configure_torch(Path("data/inductor-cache"))  # once, before the first compile
    >>> applied = apply_fast(pipe, device="cuda", compile=True)
    >>> applied.steps
    ('on cuda', 'fused qkv (64 attentions)', 'cudnn attention first', 'compile unet', ...)
    >>> frames = pipe(image, decode_chunk_size=FAST_DECODE_CHUNK).frames[0]

Measured on an H100 (``bench/RESULTS.md``, ``bench/svd_bench.py``): stock 19.0 s a clip, fast
12.9 s (0.68x), low-vram 13.2 s at 5.7 GiB peak allocated; a restart with a warm inductor
cache finishes its first clip 45 s after process start.
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


# --- compile with an eager fallback --------------------------------------------------------


def compile_module(
    module: nn.Module,
    *,
    label: str,
    backend: str | Callable[..., Any] = "inductor",
    dynamic: bool | None = None,
) -> None:
    """Compile ``module``'s forward in place; if compiling or a compiled call fails, run eager.

    ``torch.compile`` is lazy: most failures (a missing compiler, an unsupported op) surface
    at the first call, not here, so the fallback wraps the call. Out-of-memory is not a
    compile failure and propagates, so the caller can retry in the low-vram profile.
    The module object stays the same (configs, hooks, ``pipe.unet`` identity are kept).
    """
    if "forward" in module.__dict__:
        return  # already compiled by us
    eager = module.forward
    try:
        compiled = torch.compile(eager, backend=backend, dynamic=dynamic)
    except Exception as exc:  # torch.compile itself refused (old torch, bad backend name)
        log.warning("torch.compile(%s) unavailable (%s); running it eager", label, exc)
        return
    failed = False

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if failed:
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # compiling failed at first call: eager still works
            failed = True
            log.warning("compiled %s failed (%s: %s); running it eager", label, type(exc), exc)
            return eager(*args, **kwargs)

    forward.compiled_label = label  # type: ignore[attr-defined]
    module.forward = forward  # type: ignore[method-assign]


def uncompile_module(module: nn.Module) -> None:
    """Undo :func:`compile_module` (and ``nn.Module.compile``): the next call runs eager."""
    module.__dict__.pop("forward", None)
    module._compiled_call_impl = None


def is_compiled(module: nn.Module) -> bool:
    """Whether :func:`compile_module` or ``nn.Module.compile`` wrapped this module."""
    return "forward" in module.__dict__ or module._compiled_call_impl is not None


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
    unsplit_cfg(pipe)
    unet = pipe.unet
    uncompile_module(unet)
    uncompile_module(pipe.vae.decoder)
    unfuse_qkv(unet)
    target = device or str(pipe.device)
    keep_on_device(pipe.image_encoder, target)
    restore_attention_order()
    if getattr(pipe, _STATE, None) == "fp8":
        log.warning("fp8 weights cannot be restored; reload the pipeline for full precision")
    pipe.to(target)


def _compile_parts(
    pipe: Any, modules: dict[str, nn.Module], *, device: str, compile: bool
) -> tuple[list[str], list[str]]:
    steps: list[str] = []
    skipped: list[str] = []
    if not compile:
        return steps, skipped
    if not compile_available(device):
        skipped.append(f"compile: torch.compile with Triton unavailable for {device}")
        return steps, skipped
    for label, module in modules.items():
        # Static shapes: each decode chunk size gets its own graph rather than a
        # dynamic-shape one that is slower for every chunk.
        compile_module(module, label=label, dynamic=False)
        steps.append(f"compile {label}")
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
    steps.append(f"fused qkv ({fuse_qkv(pipe.unet)} attentions)")
    if device.startswith("cuda") and prefer_cudnn_attention():
        steps.append("cudnn attention first")
    more, skipped = _compile_parts(
        pipe, {"unet": pipe.unet, "vae decoder": pipe.vae.decoder}, device=device, compile=compile
    )
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
    if device.startswith("cuda") and prefer_cudnn_attention():
        steps.append("cudnn attention first")
    more, skipped = _compile_parts(
        pipe, {"unet": pipe.unet, "vae decoder": pipe.vae.decoder}, device=device, compile=compile
    )
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
