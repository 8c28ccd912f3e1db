"""What a request for a clip can say, and the checks that run before any GPU or network work.

Example::

    >>> req = Request(image=Path("cat.jpg"), photo_type=PhotoType.PET, intensity=Intensity.SUBTLE)
    >>> check_request(req, frames=25)
    >>> req.motion_bucket()
    80
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from generator.errors import InvalidRequest


class Backend(enum.StrEnum):
    """Which engine makes the clip. ``AUTO`` follows ``[auto] chain`` (Veo, else a local engine)."""

    AUTO = "auto"
    VEO = "veo"
    SVD = "svd"
    LTX = "ltx"
    WAN = "wan"

    @property
    def local(self) -> bool:
        """Whether this engine runs on this machine (SVD, LTX-Video, Wan 2.2)."""
        return self in (Backend.SVD, Backend.LTX, Backend.WAN)


class PhotoType(enum.StrEnum):
    """What is in the photo; shapes the Veo prompt."""

    PORTRAIT = "portrait"
    GROUP = "group"
    LANDSCAPE = "landscape"
    PET = "pet"
    FORMAL = "formal"


class Intensity(enum.StrEnum):
    """How much things move."""

    SUBTLE = "subtle"
    MODERATE = "moderate"
    DRAMATIC = "dramatic"


class Profile(enum.StrEnum):
    """A local engine's memory profile. ``AUTO`` picks by free VRAM."""

    AUTO = "auto"
    FAST = "fast"
    LOW_VRAM = "low-vram"


@dataclass(frozen=True)
class MotionBand:
    """A named range of SVD motion-bucket values (inclusive)."""

    name: str
    low: int
    high: int

    def __contains__(self, value: int) -> bool:
        return self.low <= value <= self.high


#: The seed's motion bands, in order. Used for SVD's motion bucket and for Veo's prompt wording.
MOTION_BANDS: tuple[MotionBand, ...] = (
    MotionBand("very subtle", 0, 50),
    MotionBand("gentle", 51, 100),
    MotionBand("moderate", 101, 150),
    MotionBand("active", 151, 200),
    MotionBand("dramatic", 201, 255),
)

#: The motion value each intensity picks (inside its band) when ``--motion`` is not given.
INTENSITY_MOTION: dict[Intensity, int] = {
    Intensity.SUBTLE: 80,  # gentle band: breathing, hair, light
    Intensity.MODERATE: 127,  # moderate band: SVD's own default
    Intensity.DRAMATIC: 220,  # dramatic band: camera and subject both move
}

#: Clip lengths Veo 3.1 accepts, in seconds. 1080p needs 8.
VEO_DURATIONS: tuple[int, ...] = (4, 6, 8)
#: The length asked of Veo when nobody chose one.
VEO_DEFAULT_SECONDS = 8
VEO_RESOLUTIONS: tuple[str, ...] = ("720p", "1080p")
MAX_CUSTOM_ELEMENTS_CHARS = 300


def motion_band(value: int) -> MotionBand:
    """Return the band a motion value falls in (``ValueError`` outside 0-255)."""
    for band in MOTION_BANDS:
        if value in band:
            return band
    raise ValueError(f"motion must be 0-255, got {value}")


def step_intensity(intensity: Intensity, delta: int) -> Intensity:
    """Return the next intensity up (+1) or down (-1), saturating at the ends."""
    order = list(Intensity)
    index = min(max(order.index(intensity) + delta, 0), len(order) - 1)
    return order[index]


@dataclass(frozen=True)
class Request:
    """One photo and how to animate it.

    Args:
        image: path of the photo on disk.
        backend: ``auto`` (``[auto] chain``: Veo, else the best local engine), ``veo``,
            ``ltx``, ``wan`` or ``svd``.
        photo_type: what is in the photo; shapes the Veo, LTX-Video and Wan prompts.
        intensity: subtle / moderate / dramatic; picks the motion unless ``motion`` is given.
        duration: seconds. Veo takes 4, 6 or 8 (default 8); LTX-Video about 2 to 10
            (8k+1 frames at 24 fps, default 5); Wan 2.2 about 2 to 5 (4k+1 frames at 24 fps,
            default 5); SVD makes ``frames / fps`` seconds. Nothing is
            ignored silently: a duration the engine cannot make is an error.
        fps: SVD frame rate, both its conditioning and the playback rate (default 7).
            Veo always delivers 24 fps.
        motion: SVD motion bucket 0-255; overrides ``intensity``'s choice.
        custom_elements: extra words for the Veo, LTX-Video and Wan prompts ("snow falling").
        seed: for reproducible clips; ``None`` picks one (reported in the result).
        steps: SVD denoising steps (default from config, 25).
        model: overrides the configured model (a local engine's hub id or folder, or a Veo
            model name).
        device: ``cuda``, ``mps`` or ``cpu`` for the local engine.
        profile: the local engine's memory profile.
        veo_resolution: ``720p`` or ``1080p`` (1080p needs 8 s).
    """

    image: Path
    backend: Backend = Backend.AUTO
    photo_type: PhotoType = PhotoType.PORTRAIT
    intensity: Intensity = Intensity.MODERATE
    duration: float | None = None
    fps: int | None = None
    motion: int | None = None
    custom_elements: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    steps: int | None = None
    model: str | None = None
    device: str | None = None
    profile: Profile | None = None
    veo_resolution: str = "720p"

    def motion_bucket(self) -> int:
        """The SVD motion bucket: ``motion`` if given, else the intensity's value."""
        return self.motion if self.motion is not None else INTENSITY_MOTION[self.intensity]

    def motion_words(self) -> str:
        """The band name of this request's motion, for prompts and captions."""
        return motion_band(self.motion_bucket()).name

    def veo_duration(self) -> int:
        """Seconds asked of Veo (``VEO_DEFAULT_SECONDS`` when unspecified)."""
        return veo_seconds(self.duration)


def veo_seconds(duration: float | None) -> int:
    """Seconds asked of Veo for a chosen ``duration``; ``None`` means Veo's default.

    >>> veo_seconds(None), veo_seconds(4)
    (8, 4)
    """
    return int(duration) if duration is not None else VEO_DEFAULT_SECONDS


def svd_duration(frames: int, fps: int) -> float:
    """Seconds an SVD clip of ``frames`` frames lasts at ``fps``."""
    return frames / fps


def check_request(request: Request, *, frames: int = 25, default_fps: int = 7) -> None:
    """Raise ``InvalidRequest`` with a short reason if the request cannot work.

    ``frames`` and ``default_fps`` are the SVD settings in force, used to tell the user
    how long an SVD clip will be.
    """
    if request.motion is not None and not 0 <= request.motion <= 255:
        raise InvalidRequest(
            f"--motion must be 0-255, got {request.motion}",
            user_text="Motion must be between 0 and 255.",
        )
    if request.fps is not None and not 1 <= request.fps <= 60:
        raise InvalidRequest(f"--fps must be 1-60, got {request.fps}")
    if request.steps is not None and not 1 <= request.steps <= 200:
        raise InvalidRequest(f"--steps must be 1-200, got {request.steps}")
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise InvalidRequest(f"--seed must be 0 to 2**63-1, got {request.seed}")
    if request.device is not None and request.device.split(":")[0] not in ("cuda", "mps", "cpu"):
        raise InvalidRequest(f"--device must be cuda, mps or cpu, got {request.device!r}")
    if request.veo_resolution not in VEO_RESOLUTIONS:
        raise InvalidRequest(f"Veo resolution must be 720p or 1080p, got {request.veo_resolution}")
    text = " ".join(request.custom_elements)
    if len(text) > MAX_CUSTOM_ELEMENTS_CHARS:
        raise InvalidRequest(
            f"custom elements are {len(text)} characters; at most {MAX_CUSTOM_ELEMENTS_CHARS}",
            user_text=f"Please keep the description under {MAX_CUSTOM_ELEMENTS_CHARS} characters.",
        )

    fps = request.fps or default_fps
    svd_seconds = svd_duration(frames, fps)
    if request.backend in (Backend.LTX, Backend.WAN):
        # Their length rules live with the engines (generator.engines), checked by the router.
        name = "LTX-Video" if request.backend is Backend.LTX else "Wan 2.2"
        if request.veo_resolution != "720p":
            raise InvalidRequest("--resolution applies to Veo only")
        if request.fps is not None:
            raise InvalidRequest(f"--fps applies to SVD only ({name} makes 24 fps clips)")
        return
    if request.backend is Backend.SVD:
        if request.veo_resolution != "720p":
            raise InvalidRequest("--resolution applies to Veo only")
        if request.duration is not None and abs(request.duration - svd_seconds) > 0.5:
            raise InvalidRequest(
                f"SVD makes {frames} frames at {fps} fps = {svd_seconds:.1f} s, not "
                f"{request.duration:g} s; change --fps to change its length",
                user_text=f"The local engine makes clips of about {svd_seconds:.1f} s.",
            )
        return

    # Veo or auto: Veo's rules apply to the duration; SVD's fallback length is reported.
    if request.duration is not None:
        if request.duration not in VEO_DURATIONS:
            raise InvalidRequest(
                f"Veo makes 4, 6 or 8 s clips, not {request.duration:g} s",
                user_text="Veo makes clips of 4, 6 or 8 seconds.",
            )
    if request.veo_resolution == "1080p" and request.veo_duration() != 8:
        raise InvalidRequest(
            "Veo's 1080p needs --duration 8", user_text="1080p clips must be 8 seconds long."
        )
    if request.backend is Backend.VEO and request.fps is not None:
        raise InvalidRequest("--fps applies to SVD only (Veo delivers 24 fps)")
    if request.backend is Backend.VEO and request.motion is not None:
        # Allowed: the motion band words go into the prompt. Nothing to check.
        pass
