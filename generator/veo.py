"""Google Veo 3.1 through google-genai's async client: submit, poll, download, and price a clip.

Example::

    backend = VeoBackend(settings.veo, veo_credentials(settings.veo))
    result = await backend.generate(prepared, request, Path("out.mp4"), on_operation=store_name)
    print(result.path, result.cost_usd)

Library errors are translated here, once (see :func:`translate_error`); callers only see
``generator.errors``. Transient failures (5xx, 429, transport errors) are retried with
exponential backoff through the injected ``sleep``, so tests never wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from generator.clip import CancelFn, Progress, ProgressFn
from generator.config import VeoCredentials, VeoSettings
from generator.errors import (
    BackendUnavailable,
    Cancelled,
    ContentFiltered,
    GenerationFailed,
    GeneratorError,
    RateLimited,
    TransientError,
)
from generator.files import write_atomic
from generator.options import Backend, Request
from generator.prompt import build_prompt

if TYPE_CHECKING:
    from generator.image import PreparedImage

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: First backoff between transient retries, in seconds; doubles each time, capped.
BACKOFF_INITIAL_S = 2.0
BACKOFF_MAX_S = 60.0
#: Each single HTTP call's limit; the whole job is bounded by ``VeoSettings.timeout_s``.
REQUEST_TIMEOUT_MS = 120_000

# google.rpc codes an operation may end with that are worth trying again later.
_RPC_RESOURCE_EXHAUSTED = 8
_RPC_TRANSIENT = {4, 10, 13, 14}  # DEADLINE_EXCEEDED, ABORTED, INTERNAL, UNAVAILABLE


@dataclass(frozen=True)
class VeoResult:
    """A clip Veo made and we saved.

    ``operation`` is Veo's long-running operation name; ``seconds`` the clip length asked for;
    ``cost_usd`` what Veo charges for it (:func:`veo_cost`); ``elapsed`` wall seconds spent.
    """

    path: Path
    operation: str
    model: str
    seconds: int
    cost_usd: float
    elapsed: float


class VeoTimedOut(TransientError):
    """Veo did not finish within ``veo.timeout_s``; the operation may still finish later.

    ``operation`` is kept so the caller can resume with ``generate(resume_operation=...)``
    instead of paying for a second clip.
    """

    user_text = "The video service is taking too long. I'll keep the job and try again later."

    def __init__(self, message: str = "", *, operation: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.operation = operation


def veo_cost(seconds: int, model: str, settings: VeoSettings) -> float:
    """Dollars Veo charges for ``seconds`` of video from ``model``.

    The fast model (``settings.fast_model``, or any model named ``...-fast-...``) is priced at
    ``fast_price_per_second_usd``, every other at ``price_per_second_usd``.
    """
    fast = model == settings.fast_model or "-fast-" in model
    per_second = settings.fast_price_per_second_usd if fast else settings.price_per_second_usd
    return round(seconds * per_second, 6)  # drop float noise such as 1.2000000000000002


def _is_person_generation_refusal(exc: genai_errors.APIError) -> bool:
    """The known 400: this key's tier or region may not set personGeneration."""
    text = f"{exc.message or ''} {exc.details or ''}".lower()
    return exc.code == 400 and (
        "persongeneration" in text or "person_generation" in text or "allow_adult" in text
    )


def translate_error(exc: BaseException, what: str) -> GeneratorError:
    """Map a google-genai or httpx exception to ours; ``what`` says which call failed.

    429/RESOURCE_EXHAUSTED -> RateLimited; 5xx, 408, transport errors, timeouts ->
    TransientError; 401/403 -> BackendUnavailable (credentials or permission); 404 ->
    BackendUnavailable (unknown model or operation); other 4xx -> GenerationFailed.
    """
    if isinstance(exc, genai_errors.APIError):
        code, status = exc.code, exc.status
        detail = f"Veo {what}: {code} {status} {exc.message}"
        if code == 429 or status == "RESOURCE_EXHAUSTED":
            return RateLimited(detail)
        if isinstance(exc, genai_errors.ServerError) or code == 408:
            return TransientError(detail)
        if code in (401, 403):
            return BackendUnavailable(
                detail, user_text="The Veo credentials were refused; check the API key."
            )
        if code == 404:
            return BackendUnavailable(detail, user_text="Veo does not know that model or job.")
        return GenerationFailed(detail, user_text="Veo refused this request.")
    if isinstance(exc, httpx.TransportError | asyncio.TimeoutError | TimeoutError):
        return TransientError(f"Veo {what}: {type(exc).__name__}: {exc}")
    return GenerationFailed(f"Veo {what}: unexpected {type(exc).__name__}: {exc}")


def _operation_error(operation: str, error: dict[str, Any]) -> GeneratorError:
    """Turn an operation's final ``error`` (a google.rpc.Status) into our exception."""
    code = error.get("code")
    detail = f"Veo operation {operation} failed: {code} {error.get('message', '')}"
    if code in (_RPC_RESOURCE_EXHAUSTED, 429):
        return RateLimited(detail)
    if code in _RPC_TRANSIENT or (isinstance(code, int) and code >= 500):
        return TransientError(detail)
    return GenerationFailed(detail, user_text="Veo could not make a clip from this photo.")


class VeoBackend:
    """Veo 3.1 image-to-video through ``genai.Client(...).aio``, built on first use.

    Args:
        settings: the ``[veo]`` table (model, prices, polling, retries, ``base_url``).
        credentials: API key (Gemini Developer API) or Vertex project/location; never logged.
        clock: monotonic seconds; injected so tests control time.
        sleep: awaited between polls and retries; injected so tests never wait.
        google_credentials: Vertex only: a ``google.auth`` credentials object; ``None`` uses
            Application Default Credentials (``gcloud auth application-default login``).
    """

    def __init__(
        self,
        settings: VeoSettings,
        credentials: VeoCredentials,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        google_credentials: Any = None,
    ) -> None:
        self._settings = settings
        self._google_credentials = google_credentials
        self._credentials = credentials
        self._clock = clock
        self._sleep = sleep
        self._client: genai.Client | None = None

    @property
    def configured(self) -> bool:
        """Whether credentials are present (not whether they work)."""
        return self._credentials.configured

    def _aio(self) -> Any:
        """The async client, created on first use so importing costs nothing offline."""
        if self._client is None:
            if not self.configured:
                raise BackendUnavailable(
                    "Veo has no credentials (GEMINI_API_KEY or a Vertex project)",
                    user_text="Veo isn't set up on this bot.",
                )
            http_options = types.HttpOptions(
                base_url=self._settings.base_url or None, timeout=REQUEST_TIMEOUT_MS
            )
            creds = self._credentials
            if creds.use_vertex:
                self._client = genai.Client(
                    vertexai=True,
                    project=creds.project,
                    location=creds.location or self._settings.location,
                    credentials=self._google_credentials,
                    http_options=http_options,
                )
            else:
                self._client = genai.Client(api_key=creds.api_key, http_options=http_options)
        return self._client.aio

    async def aclose(self) -> None:
        """Close the HTTP connections; the backend builds a new client if used again."""
        if self._client is not None:
            await self._client.aio.aclose()
            self._client = None

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()``, retrying transient failures with exponential backoff.

        Raises our exception (``from`` the library's) once retries are spent or the failure
        is not transient.
        """
        retries = self._settings.max_transient_retries
        for attempt in range(retries + 1):
            try:
                return await call()
            except (genai_errors.APIError, httpx.TransportError, TimeoutError) as exc:
                ours = translate_error(exc, what)
                if not isinstance(ours, TransientError) or attempt == retries:
                    raise ours from exc
                delay = min(BACKOFF_INITIAL_S * 2**attempt, BACKOFF_MAX_S)
                logger.warning(
                    "Veo %s: %s; retry %d/%d in %.0f s", what, ours, attempt + 1, retries, delay
                )
                await self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _config(self, image: PreparedImage, request: Request, *, person: bool) -> Any:
        settings = self._settings
        fields: dict[str, Any] = {
            "aspect_ratio": image.aspect_ratio,
            "duration_seconds": request.veo_duration(),
            "resolution": request.veo_resolution,
            "negative_prompt": settings.negative_prompt or None,
            "number_of_videos": 1,
        }
        if person and settings.person_generation:
            fields["person_generation"] = settings.person_generation
        # The Gemini Developer API rejects a seed (google-genai raises ValueError); Vertex takes it.
        if request.seed is not None and self._credentials.use_vertex:
            fields["seed"] = request.seed
        return types.GenerateVideosConfig(**fields)

    async def submit(self, image: PreparedImage, request: Request) -> str:
        """Start a Veo generation and return its operation name (store it to resume later).

        Retries transient failures; if the API refuses ``person_generation`` for this key
        (a known 400), submits once more without it.
        """
        aio = self._aio()
        model = request.model or self._settings.model
        prompt = build_prompt(request.photo_type, request.motion_words(), request.custom_elements)
        jpeg = await asyncio.to_thread(image.jpeg_bytes)
        source = types.GenerateVideosSource(
            prompt=prompt, image=types.Image(image_bytes=jpeg, mime_type="image/jpeg")
        )

        async def start(person: bool) -> Any:
            config = self._config(image, request, person=person)
            return await self._retrying(
                "submit",
                lambda: aio.models.generate_videos(model=model, source=source, config=config),
            )

        try:
            operation = await start(person=True)
        except GenerationFailed as exc:
            cause = exc.__cause__
            if not (
                isinstance(cause, genai_errors.ClientError)
                and _is_person_generation_refusal(cause)
                and self._settings.person_generation
            ):
                raise
            logger.warning(
                "Veo refused person_generation=%s; retrying without it",
                self._settings.person_generation,
            )
            operation = await start(person=False)
        if not operation.name:
            raise GenerationFailed("Veo accepted the request but returned no operation name")
        logger.info("Veo submitted %s (model %s)", operation.name, model)
        return operation.name

    async def wait(
        self,
        operation: str,
        out_path: Path,
        *,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> Path:
        """Poll ``operation`` every ``poll_interval_s`` until done, then save the video.

        Raises:
            VeoTimedOut: not done within ``timeout_s`` (a ``TransientError`` carrying
                ``.operation`` for a later resume).
            Cancelled: ``should_cancel()`` returned True at a poll. Veo cannot be told to stop:
                the job is abandoned and its cost is still incurred.
            ContentFiltered: Veo's safety filter removed the video (``.reasons``).
            GenerationFailed / TransientError / RateLimited: the operation ended with an error.
        """
        aio = self._aio()
        settings = self._settings
        start = self._clock()
        current = types.GenerateVideosOperation(name=operation)
        while True:
            if should_cancel is not None and should_cancel():
                logger.info("Veo %s abandoned on request (still billed)", operation)
                raise Cancelled(f"cancelled while Veo {operation} was running")
            current = await self._retrying("poll", lambda op=current: aio.operations.get(op))
            if current.done:
                break
            elapsed = self._clock() - start
            if elapsed >= settings.timeout_s:
                raise VeoTimedOut(
                    f"Veo {operation} not done after {elapsed:.0f} s", operation=operation
                )
            if on_progress is not None:
                on_progress(Progress(stage="polling", elapsed=elapsed, backend=Backend.VEO))
            await self._sleep(min(settings.poll_interval_s, settings.timeout_s - elapsed))

        if current.error:
            raise _operation_error(operation, current.error)
        video = self._first_video(operation, current.result or current.response)
        if on_progress is not None:
            elapsed = self._clock() - start
            on_progress(Progress(stage="downloading", elapsed=elapsed, backend=Backend.VEO))
        data = video.video_bytes
        if not data:
            if not video.uri or self._credentials.use_vertex:
                # Vertex only returns a gs:// uri when output_gcs_uri is set, which we never do.
                raise GenerationFailed(f"Veo {operation} returned a video we cannot fetch")
            data = await self._retrying("download", lambda: aio.files.download(file=video))
        await asyncio.to_thread(write_atomic, out_path, data)
        logger.info("Veo %s saved to %s (%d bytes)", operation, out_path, len(data))
        return out_path

    @staticmethod
    def _first_video(operation: str, response: types.GenerateVideosResponse | None) -> Any:
        videos = (response.generated_videos if response else None) or []
        if videos and videos[0].video is not None:
            return videos[0].video
        reasons = tuple((response.rai_media_filtered_reasons if response else None) or ())
        if reasons or (response and response.rai_media_filtered_count):
            raise ContentFiltered(f"Veo {operation} filtered: {reasons}", reasons=reasons)
        raise GenerationFailed(f"Veo {operation} finished without a video")

    async def generate(
        self,
        image: PreparedImage,
        request: Request,
        out_path: Path,
        *,
        on_operation: Callable[[str], Awaitable[None]] | None = None,
        resume_operation: str | None = None,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> VeoResult:
        """Make one clip: submit (or resume), poll, download to ``out_path``.

        Args:
            image: the prepared photo; its ``aspect_ratio`` ("16:9"/"9:16") goes to Veo.
            request: photo type, intensity, custom elements, duration, resolution, model, seed
                (the seed reaches Veo on Vertex only; the Gemini API refuses one).
            out_path: where the MP4 lands (written to a temp name, then renamed).
            on_operation: awaited with the operation name right after submit, before polling,
                so the caller can store it and resume after a crash.
            resume_operation: poll this existing operation instead of submitting (no new cost).
            on_progress: receives ``submitted``, ``polling`` and ``downloading`` events.
            should_cancel: checked before submit and at each poll; see :meth:`wait`.

        Returns:
            A :class:`VeoResult` with the operation name and the cost of the clip.
        """
        # 1. Nothing is spent if the caller already gave up.
        start = self._clock()
        if should_cancel is not None and should_cancel():
            raise Cancelled("cancelled before Veo was asked")
        model = request.model or self._settings.model
        # 2. Submit, or pick up the operation a previous attempt paid for.
        if resume_operation is not None:
            operation = resume_operation
            logger.info("Veo resuming %s", operation)
        else:
            operation = await self.submit(image, request)
            if on_operation is not None:
                await on_operation(operation)
        if on_progress is not None:
            elapsed = self._clock() - start
            on_progress(Progress(stage="submitted", elapsed=elapsed, backend=Backend.VEO))
        # 3. Poll and download.
        path = await self.wait(
            operation, out_path, on_progress=on_progress, should_cancel=should_cancel
        )
        seconds = request.veo_duration()
        return VeoResult(
            path=path,
            operation=operation,
            model=model,
            seconds=seconds,
            cost_usd=veo_cost(seconds, model, self._settings),
            elapsed=self._clock() - start,
        )
