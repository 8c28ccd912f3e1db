"""Turn one request into one clip: pick the engine, run it, fall back, encode.

``auto`` follows ``[auto] chain`` (default Veo, then LTX-Video, then SVD): Veo when it is
configured, else the first enabled local engine that fits the card
(``generator.engines.catalog.choose_local``). Veo is skipped when it has no credentials, when
the caller's budget check says no, or while the circuit breaker is open (after
``breaker_failures`` consecutive transient failures Veo is skipped for ``breaker_cooldown_s``,
then one probe is let through).
Every fallback comes with a sentence a user can read. Length rules are those of the engine
``auto`` will actually use, checked before any work.

Local engines are driven only through ``generator.engines.Engine``. One GPU holds what fits:
with ``[engines] residency = "auto"`` a card of at least ``keep_warm_gib`` keeps every engine
it has used loaded; a smaller one keeps one, and a job for another engine swaps it (the swap
is logged with its cost in seconds). Swaps never reorder the queue: the claim order stays the
fair one of ``bot/queue.py`` (the user served least recently goes next), so no user waits
longer for someone else's choice of engine; a large card avoids swaps by keeping engines warm.

Example::

    >>> gen = Generator(GeneratorSettings())
    >>> clip = asyncio.run(gen.generate(Request(image=Path("cat.jpg")), Path("cat.mp4")))
    >>> clip.backend, clip.fallback_reason
    (<Backend.LTX: 'ltx'>, 'Veo is not configured, so the local engine made this clip.')
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from generator.clip import CancelFn, Clip, Progress, ProgressFn
from generator.config import GeneratorSettings, VeoCredentials, veo_credentials
from generator.engines import Engine, EngineSpec, Residency, keeps_several, plan_for
from generator.engines.catalog import (
    auto_local,
    build_engine,
    card_vram_bytes,
    enabled,
    engine_specs,
)
from generator.engines.pairing import Pairing, PeerLost
from generator.errors import (
    BackendUnavailable,
    BudgetExceeded,
    Cancelled,
    GeneratorError,
    InvalidRequest,
    OutOfMemory,
    TransientError,
)
from generator.options import Backend, Profile, Request, check_request

if TYPE_CHECKING:
    from generator.image import PreparedImage
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
    """What ``choose_backend`` needs to know about Veo right now, and which local engine
    ``auto`` would use instead (``catalog.auto_local``)."""

    veo_configured: bool
    breaker_allows: bool
    budget_ok: bool
    local: Backend = Backend.SVD


@dataclass(frozen=True)
class Choice:
    """The backend to run first, and why a local engine was chosen instead of Veo (if it was)."""

    backend: Backend
    reason: str | None = None


def choose_backend(request: Request, health: Health) -> Choice:
    """Pick the backend for ``request``. Raises for an explicit Veo request Veo cannot serve."""
    if request.backend.local:
        return Choice(request.backend)
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
    local = health.local
    if not health.veo_configured:
        return Choice(local, "Veo is not configured, so the local engine made this clip.")
    if not health.budget_ok:
        return Choice(local, "The Veo budget is used up, so the local engine made this clip.")
    if not health.breaker_allows:
        return Choice(local, "Veo has been failing, so the local engine made this clip meanwhile.")
    return Choice(Backend.VEO)


@dataclass(frozen=True)
class Plan:
    """What a request will make, said before any work: the engine and the clip's length."""

    backend: Backend
    text: str


def fallback_reason(exc: GeneratorError) -> str:
    """The sentence shown when ``auto`` fell back to a local engine after Veo raised ``exc``."""
    from generator.errors import ContentFiltered, RateLimited

    if isinstance(exc, ContentFiltered):
        return "Veo's safety filter declined this photo, so the local engine made this clip."
    if isinstance(exc, RateLimited):
        return "Veo was busy (rate limit), so the local engine made this clip."
    if isinstance(exc, TransientError):
        return "Veo had a temporary problem, so the local engine made this clip."
    return "Veo could not make this clip, so the local engine made it."


class Generator:
    """Makes clips. Holds the warm local engines, the Veo client and the circuit breaker.

    Args:
        settings: generator settings (``config.example.toml``'s generator tables).
        credentials: how to reach Veo; read from the environment when omitted.
        clock: monotonic seconds, injectable for the circuit breaker and swap timing.
        veo: a prebuilt Veo backend (tests); built from ``settings`` when omitted.
        engines: prebuilt local engines by backend (tests); built on first use otherwise.
        total_vram: bytes of VRAM on the card, ``None`` without CUDA; measured when omitted.
    """

    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        credentials: VeoCredentials | None = None,
        clock: Callable[[], float] = time.monotonic,
        veo: VeoBackend | None = None,
        engines: Mapping[Backend, Engine] | None = None,
        total_vram: Callable[[], int | None] | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials if credentials is not None else veo_credentials(settings.veo)
        self.clock = clock
        self.breaker = CircuitBreaker(
            settings.auto.breaker_failures, settings.auto.breaker_cooldown_s, clock
        )
        self.specs = engine_specs(settings)
        self._engines: dict[Backend, Engine] = dict(engines or {})
        self._veo = veo
        self._total_vram_fn = total_vram or card_vram_bytes
        self._total_vram: tuple[int | None] | None = None  # measured once

    # Engines are built on first use: importing torch and diffusers takes seconds.
    def engine(self, backend: Backend) -> Engine:
        """The engine for a local ``backend`` (built, not loaded)."""
        if backend not in self._engines:
            self._engines[backend] = build_engine(backend, self.settings)
        return self._engines[backend]

    @property
    def veo(self) -> VeoBackend:
        if self._veo is None:
            from generator.veo import VeoBackend

            self._veo = VeoBackend(self.settings.veo, self.credentials)
        return self._veo

    def total_vram(self) -> int | None:
        """Bytes of VRAM on the card (``None`` without CUDA), measured once."""
        if self._total_vram is None:
            self._total_vram = (self._total_vram_fn(),)
        return self._total_vram[0]

    def veo_configured(self) -> bool:
        """Whether Veo has credentials (API key or Vertex project)."""
        return self.credentials.configured

    def veo_model(self, request: Request) -> str:
        model = request.model
        return model if model and model.startswith("veo") else self.settings.veo.model

    def local_request(self, request: Request) -> Request:
        """``request`` with a Veo model name dropped: local engines load their own."""
        model = request.model
        if model and model.startswith("veo"):
            return dataclasses.replace(request, model=None)
        return request

    def estimate_cost(self, request: Request) -> float:
        """What Veo would charge for ``request``, in US dollars."""
        from generator.veo import veo_cost

        return veo_cost(request.veo_duration(), self.veo_model(request), self.settings.veo)

    def usable(self, backend: Backend) -> bool:
        """Whether a local engine is enabled and its model is a hub id or an existing folder."""
        return enabled(backend, self.settings)

    def auto_local(self) -> Backend:
        """The local engine ``auto`` uses on this machine (``catalog.auto_local``)."""
        return auto_local(self.settings, self.total_vram())

    def _auto_uses_veo(self) -> bool:
        return self.veo_configured() and "veo" in self.settings.auto.chain

    def check(self, request: Request) -> Plan:
        """Raise ``InvalidRequest`` before any work if the options cannot work together, under
        the rules of the engine that will make the clip (``auto``: the one it will use)."""
        backend = request.backend
        if backend is Backend.AUTO and not self._auto_uses_veo():
            backend = self.auto_local()
        if backend.local:
            spec = self.specs[backend]
            check_request(
                dataclasses.replace(request, backend=backend, duration=None),
                frames=spec.default_frames,
                default_fps=spec.fps,
            )
            plan = plan_for(spec, request)
            return Plan(backend, f"{spec.title} makes {plan.describe()}")
        check_request(request)
        text = f"Veo makes {request.veo_duration()} s at 24 fps"
        if request.backend is Backend.AUTO:
            spec = self.specs[self.auto_local()]
            fallback = plan_for(spec, self.fallback_request(spec, request))
            text += f" (if it cannot, {spec.title} makes {fallback.describe()})"
        return Plan(Backend.VEO, text)

    @staticmethod
    def fallback_request(spec: EngineSpec, request: Request) -> Request:
        """``request`` for a local engine ``auto`` fell back to: a length Veo's rules allowed
        but this engine cannot make becomes the engine's own default length."""
        try:
            plan_for(spec, request)
        except InvalidRequest:
            return dataclasses.replace(request, duration=None)
        return request

    async def serve_peer(self, request: Request, pairing: Pairing) -> int:
        """Be the peer of another process's clip for ``request``: load ``pairing.backend``
        (swapping engines out as a clip would) and serve half of each guided step until the
        leader stops; returns the calls served.

        Raises:
            InvalidRequest: that engine has no guidance passes to share.
            BackendUnavailable, OutOfMemory, PeerLost (the leader never came, or vanished).
        """
        backend = pairing.backend
        if not backend.local:
            raise InvalidRequest(f"{backend} is not a local engine")
        engine = self.engine(backend)
        local = self.local_request(request)

        def serve() -> int:
            self._make_resident(backend, local)
            return engine.serve_peer(local, pairing)

        return await asyncio.to_thread(serve)

    def warm_up(self) -> None:
        """Load the local engine ``auto`` would use now (blocking), so the first clip does not
        wait for it."""
        self.engine(self.auto_local()).load()

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
        pairing: Pairing | None = None,
    ) -> Clip:
        """Make the clip for ``request`` and write it to ``out_path``.

        Args:
            request: the photo and options.
            out_path: where the MP4 goes (its JPEG thumbnail lands beside it).
            on_progress: called with ``Progress`` events (local step k of n, Veo elapsed time).
            should_cancel: polled between steps; True stops with ``Cancelled``.
            veo_budget_ok: called with the estimated Veo cost; False skips (auto) or refuses
                (veo) Veo.
            on_veo_operation: awaited with the Veo operation name right after submission,
                so the caller can store it and resume after a restart without paying twice.
            resume_veo_operation: poll this operation instead of submitting a new one.
            pairing: the leader's side of a clip shared with a peer process serving
                ``serve_peer`` (``generator.engines.pairing``): used when the local engine
                that makes the clip is ``pairing.backend`` and ``supports_split``; a peer
                that cannot be reached costs nothing but time: the clip is made alone.

        Returns:
            ``Clip`` with the video's facts, the backend that made it, the fallback reason
            (auto) and the Veo cost.

        Raises:
            GeneratorError subclasses (see ``generator.errors``).
        """
        started = self.clock()
        # 1. Check inputs before any GPU or network work (the photo too: a broken file is
        #    refused before Veo is paid or a model loads).
        self.check(request)
        from generator.image import load_image

        await asyncio.to_thread(load_image, request.image, self.settings.image)

        # 2. Choose, unless a stored Veo operation resumes: it was paid for already.
        if not resume_veo_operation:
            cost = self.estimate_cost(request)
            wants_veo = request.backend in (Backend.AUTO, Backend.VEO) and self._auto_uses_veo()
            health = Health(
                veo_configured=(
                    self.veo_configured()
                    if request.backend is Backend.VEO
                    else self._auto_uses_veo()
                ),
                budget_ok=(veo_budget_ok(cost) if (wants_veo and veo_budget_ok) else True),
                breaker_allows=self.breaker.allow() if wants_veo else True,
                local=(
                    self.auto_local()
                    if request.backend is Backend.AUTO
                    else (request.backend if request.backend.local else Backend.SVD)
                ),
            )
            choice = choose_backend(request, health)
            if choice.backend.local:
                if choice.reason:
                    log.info("auto uses %s: %s", choice.backend, choice.reason)
                return await self._run_local(
                    choice.backend,
                    request,
                    out_path,
                    started,
                    on_progress,
                    should_cancel,
                    choice.reason,
                    pairing,
                )

        # 3. Veo, with auto's fallback (not for a resumed operation: it answers for itself).
        from generator.image import prepare_image

        prepared = await asyncio.to_thread(prepare_image, request.image, self.settings.image)
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
            local = self.auto_local()
            log.warning("auto falls back to %s after Veo failed: %s", local, type(exc).__name__)
            return await self._run_local(
                local, request, out_path, started, on_progress, should_cancel, reason
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
            if not submitted:
                raise
            # Veo cannot be stopped: an abandoned operation is still billed.
            raise Cancelled(str(exc), cost_usd=self.estimate_cost(model_request)) from exc
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
        )

    def _make_resident(self, backend: Backend, request: Request) -> None:
        """Unload the other engines first when this card keeps only one, logging the swap."""
        engine = self.engine(backend)
        several = keeps_several(
            Residency(self.settings.engines.residency),
            self.total_vram(),
            self.settings.engines.keep_warm_gib,
        )
        others = [e for b, e in self._engines.items() if b is not backend and e.loaded]
        if several or not others:
            return
        started = self.clock()
        for other in others:
            other.unload()
        engine.load(request.model, request.device)
        log.info(
            "swapped %s for %s on the GPU in %.1f s",
            ", ".join(str(o.backend) for o in others),
            backend,
            self.clock() - started,
        )

    async def _run_local(
        self,
        backend: Backend,
        request: Request,
        out_path: Path,
        started: float,
        on_progress: ProgressFn | None,
        should_cancel: CancelFn | None,
        reason: str | None,
        pairing: Pairing | None = None,
    ) -> Clip:
        from generator.encode import encode_frames
        from generator.image import prepare_image

        engine = self.engine(backend)
        spec = self.specs[backend]
        local = self.local_request(request)
        if request.backend is Backend.AUTO:
            local = self.fallback_request(spec, local)
        size = spec.size_for if spec.keep_aspect else None
        prepared = await asyncio.to_thread(
            prepare_image, request.image, self.settings.image, size=size
        )

        def run(req: Request, pair: Pairing | None = None):
            self._make_resident(backend, req)
            return engine.generate(prepared.image, req, on_progress, should_cancel, pairing=pair)

        shared = shares_with(pairing, backend, engine.supports_split)
        if pairing is not None and shared is None:
            log.warning("%s makes this clip on one GPU: the peer waits for %s", backend, pairing)

        # The one owner of the out-of-memory retry (the bot's runners and the CLI have none):
        # at most one more attempt, in the smaller profile; slower, but the user gets a clip.
        try:
            try:
                frames = await asyncio.to_thread(run, local, shared)
            except PeerLost as exc:
                # The peer's failure is not the photo's: the same clip, on this GPU alone.
                log.warning("%s: %s; making the clip on one GPU", backend, exc)
                frames = await asyncio.to_thread(run, local)
        except OutOfMemory:
            smaller = smaller_profile(local)
            if smaller is None:
                raise
            log.warning("%s ran out of GPU memory; retrying once in %s", backend, smaller.profile)
            frames = await asyncio.to_thread(run, smaller)
        if on_progress:
            on_progress(Progress("encoding", backend=backend))
        video = await asyncio.to_thread(
            encode_frames, frames.frames, frames.fps, out_path, self.settings.encode
        )
        return Clip(
            video=video,
            backend=backend,
            seed=frames.seed,
            fallback_reason=reason,
            cost_usd=0.0,
            seconds=self.clock() - started,
        )


def shares_with(pairing: Pairing | None, backend: Backend, splits: bool) -> Pairing | None:
    """The pairing the engine making the clip gets: ``pairing`` when that engine is the one
    the peer loaded and it shares guidance passes (``splits``); else ``None`` (alone)."""
    if pairing is None or pairing.backend is not backend or not splits:
        return None
    return pairing


def smaller_profile(request: Request) -> Request | None:
    """The request to retry after ``OutOfMemory``: the low-VRAM profile; ``None`` when it
    already was low-VRAM (nothing smaller to try).

    >>> smaller_profile(Request(image=Path("p.jpg"))).profile
    <Profile.LOW_VRAM: 'low-vram'>
    """
    if request.profile is Profile.LOW_VRAM:
        return None
    return dataclasses.replace(request, profile=Profile.LOW_VRAM)


def default_output_path(image: Path) -> Path:
    """``photo.jpg`` -> ``photo.mp4`` beside it (never overwriting the photo itself)."""
    return (
        image.with_suffix(".mp4")
        if image.suffix.lower() != ".mp4"
        else image.with_name(image.stem + ".clip.mp4")
    )
