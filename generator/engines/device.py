"""Device plumbing every local engine shares: device kind, out-of-memory test, freeing memory,
a progress report that cannot break a clip, and a clip's frames off the device."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from generator.clip import CancelFn, Progress, ProgressFn
from generator.errors import Cancelled
from generator.options import Backend

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)


def device_type(device: str) -> str:
    """``"cuda"`` for ``"cuda:1"``: the kind of a torch device string."""
    return device.split(":")[0]


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory."""
    import torch

    # MPS and older CUDA builds raise a plain RuntimeError with this phrase.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free_vram(device: str) -> int | None:
    """Bytes this process could use on ``device`` if CUDA, else ``None``.

    Memory this process's caching allocator already holds (our own pipeline) counts as free:
    it is ours to use, not "taken".
    """
    if device_type(device) != "cuda":
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device)


def free_device_memory() -> None:
    """Give cached device memory back after an unload or an out-of-memory error."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


def report(progress: ProgressFn | None, event: Progress) -> None:
    """Hand ``event`` to ``progress``; a broken progress display must not kill the clip."""
    if progress is None:
        return
    try:
        progress(event)
    except Exception:
        log.exception("progress callback failed")


def step_end_callback(
    *,
    steps: int,
    backend: Backend,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
    clock: Callable[[], float],
    warming: bool = False,
) -> Callable[..., dict[str, Any]]:
    """A diffusers ``callback_on_step_end``: progress after each denoising step, ``decoding``
    after the last, and ``Cancelled`` raised at the next step once ``cancel`` says so (raising
    skips the remaining steps and the decode; pipelines without an interrupt flag, like SVD's,
    stop only this way). ``warming`` marks a clip on the not-yet-compiled path; each report
    carries the denoising time left at this clip's own pace."""
    started = clock()

    def on_step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        done, elapsed = step + 1, clock() - started
        left = elapsed / done * (steps - done)
        report(progress, Progress("denoising", done, steps, elapsed, backend, warming, left))
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled after step {step + 1} of {steps}")
        if step + 1 == steps:
            report(progress, Progress("decoding", backend=backend))
        return kwargs

    return on_step_end


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(frames, 3, H, W)`` floats in 0-1 (``output_type="pt"``) to ``(frames, H, W, 3)`` uint8.

    The conversion runs where the tensor is (the GPU), so only a quarter of the bytes cross to
    the CPU. Rounding matches ``generator.encode`` on the stock float frames exactly: both go
    through float32, scale by 255 and round half to even.
    """
    import torch

    if video.ndim == 5:  # a batch of one clip
        video = video[0]
    scaled = video.float().clamp_(0.0, 1.0).mul_(255.0).round_()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
