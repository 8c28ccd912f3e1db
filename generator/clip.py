"""The result of one generation, and the progress events reported while it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generator.options import Backend


@dataclass(frozen=True)
class Progress:
    """Where a running generation is.

    ``stage`` is one of ``"loading"``, ``"denoising"``, ``"decoding"``, ``"submitted"``,
    ``"polling"``, ``"downloading"``, ``"encoding"``. ``step``/``total`` count SVD
    denoising steps (0/0 where there are none); ``elapsed`` is seconds since the stage began.
    ``warming`` says this clip runs on the slower not-yet-compiled path (the first clips after
    an install or update, while the compiled one is built beside it), and ``remaining_s`` is
    this clip's own estimate of the denoising left, from its steps so far (``None`` before
    the first step or where there are no steps).
    """

    stage: str
    step: int = 0
    total: int = 0
    elapsed: float = 0.0
    backend: Backend | None = None
    warming: bool = False
    remaining_s: float | None = None


#: Called with each progress event; must be cheap and must not raise.
ProgressFn = Callable[[Progress], None]
#: Polled between steps; returning True asks the generation to stop (raises ``Cancelled``).
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg wrote: an H.264/yuv420p MP4 with ``+faststart``, and its thumbnail."""

    path: Path
    width: int
    height: int
    fps: float
    frames: int
    duration: float
    size_bytes: int
    thumbnail: Path | None = None


@dataclass(frozen=True)
class Clip:
    """A finished clip.

    ``backend`` is the engine that made it (never ``AUTO``); ``fallback_reason`` is a
    sentence a person can read when ``auto`` had to use SVD; ``cost_usd`` is what Veo
    charged (0 for SVD).
    """

    video: VideoInfo
    backend: Backend
    seed: int | None = None
    fallback_reason: str | None = None
    cost_usd: float = 0.0
    seconds: float = 0.0

    @property
    def path(self) -> Path:
        return self.video.path
