"""Turn one request into one clip: pick the backend, run it, fall back, encode.

``auto`` tries Veo and falls back to SVD. Veo is skipped when it has no credentials, when
the caller's budget check says no, or while the circuit breaker is open (after
``breaker_failures`` consecutive transient failures Veo is skipped for ``breaker_cooldown_s``,
then one probe is let through). Every fallback comes with a sentence a user can read.

Example::

    >>> gen = Generator(GeneratorSettings())
    >>> clip = asyncio.run(gen.generate(Request(image=Path("cat.jpg")), Path("cat.mp4")))
    >>> clip.backend, clip.fallback_reason
    (<Backend.SVD: 'svd'>, 'Veo is not configured, so the local engine made this clip.')
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from generator.clip import CancelFn, Clip, Progress, ProgressFn
from generator.config import GeneratorSettings, VeoCredentials, veo_credentials
from generator.errors import (
    BackendUnavailable,
    BudgetExceeded,
    Cancelled,
    GeneratorError,
    OutOfMemory,
    TransientError,
)
from generator.options import Backend, Profile, Request, check_request

if TYPE_CHECKING:
    from generator.image import PreparedImage
    from generator.svd import SvdBackend
    from generator.veo import VeoBackend

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # Veo is used
    OPEN = "open"  # Veo is skipped until the cool-down ends
    HALF_OPEN = "half-open"  # one probe is in flight


class CircuitBreaker:
    """Skips Veo after ``failures`` consecutive transient failures, for ``cooldown`` seconds.

    After the cool-down one call is let through (half-open): success closes the breaker,
    failure opens it for another cool-down. ``clock`` is injectable so tests never sleep.
    """

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float]) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.probing:
            return BreakerState.HALF_OPEN
        if self.clock() - self.opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether Veo may be tried now (claims the probe when half-open)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def record_success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.probing = False

    def record_failure(self) -> None:
        self.consecutive += 1
        if self.probing or self.consecutive >= self.failures:
            if self.opened_at is None or self.probing:
                log.warning("Veo circuit breaker opens for %.0f s", self.cooldown)
            self.opened_at = self.clock()
        self.probing = False

    def record_neutral(self) -> None:
        """A call that said nothing about Veo's health (cancelled, bad input): free the probe."""
        self.probing = False


@dataclass(frozen=True)
class Health:
    """What ``choose_backend`` needs to know about Veo right now."""

    veo_configured: bool
    breaker_allows: bool
    budget_ok: bool


@dataclass(frozen=True)
class Choice:
    """The backend to run first, and why SVD was chosen instead of Veo (if it was)."""

    backend: Backend
    reason: str | None = None


def choose_backend(request: Request, health: Health) -> Choice:
    """Pick the backend for ``request``. Raises for an explicit Veo request Veo cannot serve."""
    if request.backend is Backend.SVD:
        return Choice(Backend.SVD)
    if request.backend is Backend.VEO:
        if not health.veo_configured:
            raise BackendUnavailable(
                "Veo has no credentials (set GEMINI_API_KEY, or Vertex project/location)",
                user_text="Veo isn't set up on this bot. Choose the local engine (SVD) instead.",
            )
        if not health.budget_ok:
            raise BudgetExceeded("the Veo budget check refused this clip")
        if not health.breaker_allows:
            raise BackendUnavailable(
                "Veo failed repeatedly and is paused for a few minutes",
                user_text="Veo is having trouble right now. Try again later or use SVD.",
            )
        return Choice(Backend.VEO)
    if not health.veo_configured:
        return Choice(Backend.SVD, "Veo is not configured, so the local engine made this clip.")
    if not health.budget_ok:
        return Choice(Backend.SVD, "The Veo budget is used up, so the local engine made this clip.")
    if not health.breaker_allows:
        return Choice(
            Backend.SVD, "Veo has been failing, so the local engine made this clip meanwhile."
        )
    return Choice(Backend.VEO)


def fallback_reason(exc: GeneratorError) -> str:
    """The sentence shown when ``auto`` fell back to SVD after Veo raised ``exc``."""
    from generator.errors import ContentFiltered, RateLimited

    if isinstance(exc, ContentFiltered):
        return "Veo's safety filter declined this photo, so the local engine made this clip."
    if isinstance(exc, RateLimited):
        return "Veo was busy (rate limit), so the local engine made this clip."
    if isinstance(exc, TransientError):
        return "Veo had a temporary problem, so the local engine made this clip."
    return "Veo could not make this clip, so the local engine made it."


class Generator:
    """Makes clips. Holds the warm SVD pipeline, the Veo client and the circuit breaker.

    Args:
        settings: generator settings (``config.example.toml``'s generator tables).
        credentials: how to reach Veo; read from the environment when omitted.
        clock: monotonic seconds, injectable for the circuit breaker.
        svd, veo: prebuilt backends (tests); built from ``settings`` when omitted.
    """

    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        credentials: VeoCredentials | None = None,
        clock: Callable[[], float] = time.monotonic,
        svd: SvdBackend | None = None,
        veo: VeoBackend | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials if credentials is not None else veo_credentials(settings.veo)
        self.clock = clock
        self.breaker = CircuitBreaker(
            settings.auto.breaker_failures, settings.auto.breaker_cooldown_s, clock
        )
        self._svd = svd
        self._veo = veo

    # Backends are built on first use: importing torch and diffusers takes seconds.
    @property
    def svd(self) -> SvdBackend:
        if self._svd is None:
            from generator.svd import SvdBackend

            self._svd = SvdBackend(self.settings.svd)
        return self._svd

    @property
    def veo(self) -> VeoBackend:
        if self._veo is None:
            from generator.veo import VeoBackend

            self._veo = VeoBackend(self.settings.veo, self.credentials)
        return self._veo

    def veo_configured(self) -> bool:
        """Whether Veo has credentials (API key or Vertex project)."""
        return self.credentials.configured

    def veo_model(self, request: Request) -> str:
        model = request.model
        return model if model and model.startswith("veo") else self.settings.veo.model

    def svd_model(self, request: Request) -> str | None:
        model = request.model
        return model if model and not model.startswith("veo") else None

    def estimate_cost(self, request: Request) -> float:
        """What Veo would charge for ``request``, in US dollars."""
        from generator.veo import veo_cost

        return veo_cost(request.veo_duration(), self.veo_model(request), self.settings.veo)

    def check(self, request: Request) -> None:
        """Raise ``InvalidRequest`` before any work if the options cannot work together."""
        check_request(request, frames=self.settings.svd.frames, default_fps=self.settings.svd.fps)

    def warm_up(self) -> None:
        """Load the SVD pipeline now (blocking), so the first clip does not wait for it."""
        self.svd.load()

    async def generate(
        self,
        request: Request,
        out_path: Path,
        *,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        veo_budget_ok: Callable[[float], bool] | None = None,
        on_veo_operation: Callable[[str], Awaitable[None]] | None = None,
        resume_veo_operation: str | None = None,
    ) -> Clip:
        """Make the clip for ``request`` and write it to ``out_path``.

        Args:
            request: the photo and options.
            out_path: where the MP4 goes (its JPEG thumbnail lands beside it).
            on_progress: called with ``Progress`` events (SVD step k of n, Veo elapsed time).
            should_cancel: polled between steps; True stops with ``Cancelled``.
            veo_budget_ok: called with the estimated Veo cost; False skips (auto) or refuses
                (veo) Veo.
            on_veo_operation: awaited with the Veo operation name right after submission,
                so the caller can store it and resume after a restart without paying twice.
            resume_veo_operation: poll this operation instead of submitting a new one.

        Returns:
            ``Clip`` with the video's facts, the backend that made it, the fallback reason
            (auto) and the Veo cost.

        Raises:
            GeneratorError subclasses (see ``generator.errors``).
        """
        started = self.clock()
        # 1. Check inputs before any GPU or network work.
        self.check(request)
        from generator.image import prepare_image

        prepared = await asyncio.to_thread(prepare_image, request.image, self.settings.image)

        # 2. Choose, unless a stored Veo operation resumes: it was paid for already.
        if not resume_veo_operation:
            cost = self.estimate_cost(request)
            wants_veo = request.backend is not Backend.SVD and self.veo_configured()
            health = Health(
                veo_configured=self.veo_configured(),
                budget_ok=(veo_budget_ok(cost) if (wants_veo and veo_budget_ok) else True),
                breaker_allows=self.breaker.allow() if wants_veo else True,
            )
            choice = choose_backend(request, health)
            if choice.backend is Backend.SVD:
                if choice.reason:
                    log.info("auto uses SVD: %s", choice.reason)
                return await self._run_svd(
                    prepared, request, out_path, started, on_progress, should_cancel, choice.reason
                )

        # 3. Veo, with auto's fallback (not for a resumed operation: it answers for itself).
        try:
            return await self._run_veo(
                prepared,
                request,
                out_path,
                started,
                on_progress,
                should_cancel,
                on_veo_operation,
                resume_veo_operation,
            )
        except Cancelled:
            raise
        except GeneratorError as exc:
            if request.backend is not Backend.AUTO or resume_veo_operation:
                raise
            reason = fallback_reason(exc)
            log.warning("auto falls back to SVD after Veo failed: %s", type(exc).__name__)
            return await self._run_svd(
                prepared, request, out_path, started, on_progress, should_cancel, reason
            )

    async def _run_veo(
        self,
        prepared: PreparedImage,
        request: Request,
        out_path: Path,
        started: float,
        on_progress: ProgressFn | None,
        should_cancel: CancelFn | None,
        on_veo_operation: Callable[[str], Awaitable[None]] | None,
        resume: str | None,
    ) -> Clip:
        from generator.encode import normalise_mp4

        model_request = dataclasses.replace(request, model=self.veo_model(request))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        raw = out_path.with_name(out_path.stem + ".veo.mp4")
        submitted = resume is not None

        async def operation_started(name: str) -> None:
            nonlocal submitted
            submitted = True
            if on_veo_operation is not None:
                await on_veo_operation(name)

        try:
            result = await self.veo.generate(
                prepared,
                model_request,
                raw,
                on_operation=operation_started,
                resume_operation=resume,
                on_progress=on_progress,
                should_cancel=should_cancel,
            )
        except TransientError:
            self.breaker.record_failure()
            raise
        except Cancelled as exc:
            self.breaker.record_neutral()
            if submitted:
                # Veo cannot be stopped: an abandoned operation is still billed.
                exc.cost_usd = self.estimate_cost(model_request)  # type: ignore[attr-defined]
            raise
        except GeneratorError:
            # The service answered: it is up, even if it refused this photo.
            self.breaker.record_success()
            raise
        self.breaker.record_success()
        if on_progress:
            on_progress(Progress("encoding", backend=Backend.VEO))
        try:
            video = await asyncio.to_thread(normalise_mp4, raw, out_path, self.settings.encode)
        finally:
            raw.unlink(missing_ok=True)
        return Clip(
            video=video,
            backend=Backend.VEO,
            seed=request.seed,
            cost_usd=result.cost_usd,
            seconds=self.clock() - started,
            veo_operation=result.operation,
        )

    async def _run_svd(
        self,
        prepared: PreparedImage,
        request: Request,
        out_path: Path,
        started: float,
        on_progress: ProgressFn | None,
        should_cancel: CancelFn | None,
        reason: str | None,
    ) -> Clip:
        from generator.encode import encode_frames

        def run(profile: Profile | None):
            return self.svd.generate(
                prepared.image,
                motion_bucket=request.motion_bucket(),
                fps=request.fps or self.settings.svd.fps,
                steps=request.steps,
                seed=request.seed,
                profile=profile,
                model=self.svd_model(request),
                device=request.device,
                on_progress=on_progress,
                should_cancel=should_cancel,
            )

        profile = request.profile
        try:
            frames = await asyncio.to_thread(run, profile)
        except OutOfMemory:
            if profile is Profile.LOW_VRAM:
                raise
            # One retry with the low-VRAM profile: slower, but the user gets a clip.
            log.warning("SVD ran out of GPU memory; retrying once with the low-vram profile")
            frames = await asyncio.to_thread(run, Profile.LOW_VRAM)
        if on_progress:
            on_progress(Progress("encoding", backend=Backend.SVD))
        video = await asyncio.to_thread(
            encode_frames, frames.frames, frames.fps, out_path, self.settings.encode
        )
        return Clip(
            video=video,
            backend=Backend.SVD,
            seed=frames.seed,
            fallback_reason=reason,
            cost_usd=0.0,
            seconds=self.clock() - started,
        )


def default_output_path(image: Path) -> Path:
    """``photo.jpg`` -> ``photo.mp4`` beside it (never overwriting the photo itself)."""
    return (
        image.with_suffix(".mp4")
        if image.suffix.lower() != ".mp4"
        else image.with_name(image.stem + ".clip.mp4")
    )
