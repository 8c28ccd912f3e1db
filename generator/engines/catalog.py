"""Which local engines exist, what each makes under the current settings, and how to build one.

Torch-free: the bot describes engines on its settings card without loading a model, and the
router decides what ``auto`` runs before anything is imported. Engines themselves are
imported only in :func:`build_engine`.

Example::

    >>> specs = engine_specs(GeneratorSettings())
    >>> specs[Backend.LTX].plan(None).describe()
    '121 frames at 24 fps = 5.04 s'
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from generator.config import GeneratorSettings
from generator.engines import Engine, EngineSpec
from generator.engines.ltx import ltx_spec
from generator.engines.wan import wan_spec
from generator.errors import BackendUnavailable
from generator.options import Backend

_GIB = 1024**3

#: Local engines in the order ``auto`` prefers when the chain does not say, and the order of
#: the engine row in chat: LTX-Video (seconds), Wan 2.2 (best quality, minutes), SVD.
LOCAL_BACKENDS: tuple[Backend, ...] = (Backend.LTX, Backend.WAN, Backend.SVD)


def svd_spec(settings: GeneratorSettings) -> EngineSpec:
    """SVD-XT makes ``[svd] frames`` frames at ``[svd] fps`` at the ``[image]`` sizes."""
    s = settings.svd
    return EngineSpec(
        backend=Backend.SVD,
        title="SVD",
        fps=s.fps,
        frame_step=1,
        default_frames=s.frames,
        min_frames=s.frames,
        max_frames=s.frames,
        size=settings.image.landscape_size,
        min_vram_gib=6.0,  # its low-vram profile peaks at 5.7 GiB (PERF.md)
        steps=s.steps,
        fps_adjustable=True,  # --fps is both its conditioning and its playback rate
        splits_guidance=s.max_guidance_scale > 1,  # guidance 1 runs one pass a step
    )


def engine_specs(settings: GeneratorSettings) -> dict[Backend, EngineSpec]:
    """What each local engine makes under ``settings`` (enabled or not)."""
    return {
        Backend.LTX: ltx_spec(settings.ltx),
        Backend.WAN: wan_spec(settings.wan),
        Backend.SVD: svd_spec(settings),
    }


def _section(backend: Backend, settings: GeneratorSettings) -> Any:
    """The settings table of a local engine (``[svd]``, ``[ltx]``, ``[wan]``)."""
    return {Backend.LTX: settings.ltx, Backend.WAN: settings.wan}.get(backend, settings.svd)


def enabled(backend: Backend, settings: GeneratorSettings) -> bool:
    """Whether a local engine is configured to be offered: enabled, and its model is a hub id
    or a folder that exists (a missing folder would only fail at the first clip)."""
    section = _section(backend, settings)
    if not getattr(section, "enabled", True):
        return False
    model = section.model
    looks_like_folder = model.startswith(("/", ".", "~")) or model.count("/") != 1
    return not looks_like_folder or Path(model).expanduser().is_dir()


def build_engine(backend: Backend, settings: GeneratorSettings, **kwargs: Any) -> Engine:
    """Build (not load) the engine for ``backend``; torch and diffusers load with it."""
    spec = engine_specs(settings)[backend]
    if backend is Backend.SVD:
        from generator.engines.svd import SvdEngine

        return SvdEngine(settings.svd, spec=spec, **kwargs)
    if backend is Backend.LTX:
        from generator.engines.ltx import LtxEngine

        return LtxEngine(settings.ltx, spec=spec, **kwargs)
    if backend is Backend.WAN:
        from generator.engines.wan import WanEngine

        return WanEngine(settings.wan, spec=spec, **kwargs)
    raise ValueError(f"{backend} is not a local engine")


def choose_local(
    chain: Sequence[str],
    specs: dict[Backend, EngineSpec],
    *,
    usable: Callable[[Backend], bool],
    fits: Callable[[EngineSpec], bool],
) -> Backend:
    """The local engine ``auto`` uses: the first in ``chain`` that is usable (enabled, model
    present) and fits the card; if none fits, the last usable one in the chain (it still
    runs, slowly, on the CPU or in low-vram). Engines missing from the chain follow it, best
    first.

    Raises:
        BackendUnavailable: no local engine is enabled.
    """
    order = [Backend(name) for name in chain if Backend(name).local]
    order += [b for b in LOCAL_BACKENDS if b not in order and b in specs]
    candidates = [b for b in order if usable(b)]
    if not candidates:
        raise BackendUnavailable(
            "no local engine is enabled ([svd] / [ltx] / [wan] enabled, model)",
            user_text="No local video engine is set up on this bot.",
        )
    for backend in candidates:
        if fits(specs[backend]):
            return backend
    return candidates[-1]


def auto_local(settings: GeneratorSettings, total_vram: int | None) -> Backend:
    """The local engine ``auto`` uses with ``settings`` on a card of ``total_vram`` bytes
    (``None``: no CUDA card). An engine fits when its device is set to ``cpu`` by the
    operator, or the card has at least its ``min_vram_gib``."""

    def fits(spec: EngineSpec) -> bool:
        if _section(spec.backend, settings).device == "cpu":
            return True
        return total_vram is not None and total_vram >= spec.min_vram_gib * _GIB

    return choose_local(
        settings.auto.chain,
        engine_specs(settings),
        usable=lambda b: enabled(b, settings),
        fits=fits,
    )


@functools.lru_cache(maxsize=1)
def card_vram_bytes() -> int | None:
    """Total VRAM of the first visible NVIDIA card, ``None`` without one.

    Asked of ``nvidia-smi`` rather than torch: the bot's own process must not create a CUDA
    context (hundreds of MB of VRAM) just to label a button.
    """
    exe = shutil.which("nvidia-smi")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if exe is None or visible == "-1":
        return None
    command = [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    if visible:
        command += ["-i", visible]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
        return int(out.stdout.split()[0]) * 1024**2  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
