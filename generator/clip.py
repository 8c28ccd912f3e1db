"""The result of one generation, and the progress events reported while it runs."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generator.options import Backend


class Stage(enum.StrEnum):
    """The stages a generation reports, in the order they usually come."""

    LOADING = "loading"  # a local engine loads its weights
    DENOISING = "denoising"  # a local engine's steps (``step``/``total`` count them)
    DECODING = "decoding"  # latents become frames
    SUBMITTED = "submitted"  # Veo took the request
    POLLING = "polling"  # Veo is making the clip
    DOWNLOADING = "downloading"  # Veo's clip comes down
    ENCODING = "encoding"  # ffmpeg writes the MP4


@dataclass(frozen=True)
class Progress:
    """Where a running generation is.

    ``stage`` is a ``Stage`` (a plain string naming one is turned into it). ``step``/``total``
    count denoising steps (0/0 where there are none); ``elapsed`` is seconds since the stage
    began. ``warming`` says this clip runs on the slower not-yet-compiled path (the first clips
    after an install or update, while the compiled one is built beside it), and
    ``remaining_s`` is this clip's own estimate of the denoising left, from its steps so far
    (``None`` before the first step or where there are no steps).
    """

    stage: Stage
    step: int = 0
    total: int = 0
    elapsed: float = 0.0
    backend: Backend | None = None
    warming: bool = False
    remaining_s: float | None = None

    def __post_init__(self) -> None:
        # Engines may name the stage as a string; an unknown one is a bug, said at once.
        object.__setattr__(self, "stage", Stage(self.stage))


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
