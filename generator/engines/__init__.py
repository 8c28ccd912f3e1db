"""The local engine interface: what every on-device image-to-video model offers the other code.

The router, the GPU process, the CLI and the bot drive local engines only through
:class:`Engine` and :class:`EngineSpec`; each engine's own knobs (SVD's motion bucket and fps
conditioning, LTX-Video's frame rule, timesteps and decode noise) stay inside its module.
Nothing here imports torch, so the bot can describe engines without loading a model.

Example::

    >>> spec = EngineSpec(Backend.LTX, "LTX-Video", fps=24, frame_step=8,
    ...                   default_frames=121, min_frames=49, max_frames=241, size=(768, 512))
    >>> spec.plan(4).describe()
    '97 frames at 24 fps = 4.04 s'
    >>> engine = build_engine(Backend.LTX, settings)  # generator.engines.catalog; not loaded
    >>> frames = engine.generate(photo, request, progress=print, cancel=lambda: False)
    >>> frames.fps, len(frames.frames)
    (24, 97)
"""

from __future__ import annotations

import abc
import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from generator.clip import CancelFn, ProgressFn
from generator.errors import InvalidRequest
from generator.options import Backend, Profile, Request

if TYPE_CHECKING:
    import numpy as np
    import PIL.Image

    from generator.engines.pairing import Pairing

_GIB = 1024**3

#: A requested length may differ from what the engine makes by this much and still be accepted.
LENGTH_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class ClipPlan:
    """The clip an engine will make for a request: frame count and playback rate."""

    frames: int
    fps: int

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def describe(self) -> str:
        """``"121 frames at 24 fps = 5.04 s"``: what a user is told before any work."""
        return f"{self.frames} frames at {self.fps} fps = {self.seconds:.2f} s"


@dataclass(frozen=True)
class EngineSpec:
    """What an engine makes, as plain data (no model loaded, no torch imported).

    Args:
        backend: which engine.
        title: its name for people ("LTX-Video 2B distilled").
        fps: frames per second of its clips.
        frame_step: frame counts are ``frame_step * k + 1`` (1: any count).
        default_frames, min_frames, max_frames: the lengths it makes, in frames.
        size: the landscape ``(width, height)`` it makes; portrait swaps them.
        min_vram_gib: the least total VRAM it runs on (its low-VRAM profile), for ``auto``.
        steps: denoising steps per clip (for the typical-wait estimate in chat).
        fps_adjustable: whether ``--fps`` may change its rate (and so its length).
        keep_aspect: sizes follow the photo's aspect within ``size``'s area (sides divisible
            by ``size_multiple``) instead of the fixed landscape/portrait pair.
        splits_guidance: it runs classifier-free guidance (two denoiser passes a step), so
            one clip can share them with a peer on a second GPU (``generator.engines.pairing``).
    """

    backend: Backend
    title: str
    fps: int
    frame_step: int
    default_frames: int
    min_frames: int
    max_frames: int
    size: tuple[int, int]
    min_vram_gib: float = 6.0
    steps: int = 0
    fps_adjustable: bool = False
    keep_aspect: bool = False
    size_multiple: int = 8
    splits_guidance: bool = False

    def plan(self, duration: float | None, fps: int | None = None) -> ClipPlan:
        """The frames this engine makes for ``duration`` seconds (its default when ``None``),
        at ``fps`` (default: the engine's own rate).

        Raises:
            InvalidRequest: the engine cannot make a clip within half a second of ``duration``;
                the message says what it can make.
        """
        fps = fps or self.fps
        if duration is None:
            return ClipPlan(self.default_frames, fps)
        k = round((duration * fps - 1) / self.frame_step)
        frames = min(max(self.frame_step * k + 1, self.min_frames), self.max_frames)
        plan = ClipPlan(frames, fps)
        if duration <= 0 or abs(plan.seconds - duration) > LENGTH_TOLERANCE_S:
            raise InvalidRequest(
                f"{self.title} makes {self.lengths(fps)}, not {duration:g} s",
                user_text=f"The {self.title} engine makes {self.lengths(fps)}.",
            )
        return plan

    def lengths(self, fps: int | None = None) -> str:
        """``"clips of 3.6 s (25 frames at 7 fps)"`` or ``"clips of 2.0 to 10.0 s at 24 fps"``."""
        fps = fps or self.fps
        low, high = self.min_frames / fps, self.max_frames / fps
        if self.min_frames == self.max_frames:
            return f"clips of {low:.1f} s ({self.min_frames} frames at {fps} fps)"
        return f"clips of {low:.1f} to {high:.1f} s at {fps} fps"

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The clip size for a photo of ``width`` x ``height``: its aspect within the area
        (``keep_aspect``), else the landscape size or its portrait turn (a square photo gets
        the landscape size)."""
        w, h = self.size
        if self.keep_aspect:
            return fit_area(width, height, area=w * h, multiple=self.size_multiple)
        return (min(w, h), max(w, h)) if height > width * 1.05 else (max(w, h), min(w, h))


def fit_area(
    width: int, height: int, *, area: int, multiple: int, max_aspect: float = 2.0
) -> tuple[int, int]:
    """A size of about ``area`` pixels with the photo's aspect ratio, sides divisible by
    ``multiple``. Aspect ratios beyond ``max_aspect`` (either way) are clamped: the photo is
    then centre-cropped rather than squeezed into a sliver.

    >>> fit_area(4000, 3000, area=768 * 512, multiple=32)
    (736, 544)
    """
    aspect = min(max(width / height, 1 / max_aspect), max_aspect)
    h = math.sqrt(area / aspect)
    w = h * aspect
    return max(multiple, round(w / multiple) * multiple), max(
        multiple, round(h / multiple) * multiple
    )


@dataclass(frozen=True)
class Frames:
    """What one local run made: the frames in order, their rate, and how (to reproduce it).

    Frames are PIL images or ``(height, width, 3)`` ``uint8`` arrays (what
    ``generator.encode.encode_frames`` takes); an engine hands over whichever it makes
    cheapest.
    """

    frames: list[PIL.Image.Image] | list[np.ndarray]
    fps: int
    seed: int
    profile: Profile
    steps: int


def choose_profile(
    requested: Profile, free_vram_bytes: int | None, threshold_gib: float
) -> Profile:
    """Pick the profile: ``AUTO`` is ``LOW_VRAM`` below ``threshold_gib`` GiB free, else ``FAST``.

    ``free_vram_bytes`` is ``None`` where it cannot be measured (CPU, MPS): ``FAST`` then.
    An explicit ``FAST`` or ``LOW_VRAM`` is returned as asked.
    """
    if requested is not Profile.AUTO:
        return requested
    if free_vram_bytes is None:
        return Profile.FAST
    return Profile.LOW_VRAM if free_vram_bytes < threshold_gib * _GIB else Profile.FAST


class Engine(abc.ABC):
    """One local image-to-video model, loaded once per process and reused across clips.

    Implementations load through ``from_pretrained`` (a hub id or a local folder, exactly as
    a user's real weights load), place the weights for a memory profile chosen by free VRAM,
    report progress per step and stop at the next step when ``cancel`` says so, and raise
    only ``generator.errors`` classes (CUDA out-of-memory as ``OutOfMemory``).
    Not thread-safe: the worker runs one ``generate`` at a time.
    """

    #: Which engine this is.
    backend: Backend
    #: What it makes; set by the constructor from its settings (``generator.engines.catalog``).
    spec: EngineSpec

    @property
    @abc.abstractmethod
    def loaded(self) -> bool:
        """Whether the model is in memory."""

    @abc.abstractmethod
    def load(self, model: str | None = None, device: str | None = None) -> None:
        """Load the model (hub id or folder; default from settings) unless already loaded.

        Raises:
            BackendUnavailable: no such folder, hub unreachable, gated, device missing.
        """

    @abc.abstractmethod
    def generate(
        self,
        photo: PIL.Image.Image,
        request: Request,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        pairing: Pairing | None = None,
    ) -> Frames:
        """Animate ``photo`` (already the size ``spec.size_for`` chose) as ``request`` asks;
        with a leader's ``pairing`` (only where ``supports_split``), each guided step's two
        passes are shared with the peer serving ``serve_peer`` for the same request.

        Raises:
            InvalidRequest, BackendUnavailable, OutOfMemory, Cancelled; ``PeerLost``
            (``generator.engines.pairing``) when the peer cannot be reached: nothing is kept,
            and the same call without ``pairing`` makes the clip alone.
        """

    @abc.abstractmethod
    def unload(self) -> None:
        """Drop the model and give its memory back."""

    @property
    def supports_split(self) -> bool:
        """Whether ``generate`` can share its guidance passes with a peer (``pairing``)."""
        return self.spec.splits_guidance

    def serve_peer(self, request: Request, pairing: Pairing) -> int:
        """Be the peer (rank 1) of a leader making ``request``'s clip: load the same model
        and profile, run half of each guided step until the leader stops; returns the calls
        served. Engines that do not ``supports_split`` refuse.

        Raises:
            InvalidRequest: this engine has no guidance passes to share.
            BackendUnavailable: the model cannot be loaded.
            PeerLost: the leader did not join, or stopped answering.
        """
        raise InvalidRequest(f"{self.spec.title} has no guidance passes to share")

    def refuse_pairing(self, pairing: Pairing | None) -> None:
        """``InvalidRequest`` when asked to share a clip this engine cannot share."""
        if pairing is not None and not self.supports_split:
            raise InvalidRequest(f"{self.spec.title} has no guidance passes to share")

    def check(self, request: Request) -> ClipPlan:
        """The clip ``request`` will get, or ``InvalidRequest`` before any work."""
        return plan_for(self.spec, request)

    def resident_bytes(self) -> int:
        """Device memory this engine's weights hold now (0 when unloaded or off the GPU)."""
        return 0


def plan_for(spec: EngineSpec, request: Request) -> ClipPlan:
    """The clip ``spec``'s engine makes for ``request`` (``--fps`` changes the length of an
    engine whose rate is adjustable)."""
    return spec.plan(request.duration, fps=request.fps if spec.fps_adjustable else None)


class Residency(enum.StrEnum):
    """How many local engines one GPU keeps loaded (``[engines] residency``)."""

    AUTO = "auto"  # by total VRAM against [engines] keep_warm_gib
    ONE = "one"  # swap: a job for another engine unloads the resident one first
    ALL = "all"  # every engine used stays loaded


def keeps_several(residency: Residency, total_vram_bytes: int | None, budget_gib: float) -> bool:
    """Whether several engines may stay loaded at once on this machine.

    ``AUTO`` keeps several when the card has at least ``budget_gib`` of VRAM (a large card
    holds SVD and LTX-Video side by side); off CUDA (``None``) memory is the host's, and one
    engine at a time keeps it bounded.
    """
    if residency is Residency.ONE:
        return False
    if residency is Residency.ALL:
        return True
    return total_vram_bytes is not None and total_vram_bytes >= budget_gib * _GIB
