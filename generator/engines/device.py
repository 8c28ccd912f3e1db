"""Device plumbing every local engine shares: device kind, out-of-memory test, freeing memory
and a progress report that cannot break a clip."""

from __future__ import annotations

import gc
import logging

from generator.clip import Progress, ProgressFn

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
