"""The Veo backend, with the real google-genai client against the loopback Veo and a fake clock."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import imageio.v3 as iio
import pytest
from google.oauth2.credentials import Credentials as OAuthCredentials
from PIL import Image

from generator.clip import Progress
from generator.config import VeoCredentials, VeoSettings
from generator.errors import (
    BackendUnavailable,
    Cancelled,
    ContentFiltered,
    GenerationFailed,
    RateLimited,
    TransientError,
)
from generator.image import PreparedImage
from generator.options import Backend, Intensity, PhotoType, Request
from generator.prompt import build_prompt
from generator.veo import VeoBackend, VeoResult, VeoTimedOut, veo_cost
from tests.support.fake_veo import FakeVeo

KEY = "test-key-not-secret"


class FakeTime:
    """A clock that only moves when the backend sleeps, so no test ever waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def settings(fake_veo: FakeVeo) -> VeoSettings:
    return VeoSettings(
        base_url=fake_veo.base_url, poll_interval_s=10.0, timeout_s=600.0, max_transient_retries=3
    )


@pytest.fixture
async def backend(settings: VeoSettings, fake_time: FakeTime):
    veo = VeoBackend(
        settings, VeoCredentials(api_key=KEY), clock=fake_time.clock, sleep=fake_time.sleep
    )
    yield veo
    await veo.aclose()


def portrait_photo() -> PreparedImage:
    return PreparedImage(
        image=Image.new("RGB", (72, 128), (200, 150, 120)),
        orientation="portrait",
        aspect_ratio="9:16",
        source_size=(720, 1280),
    )


REQUEST = Request(
    image=Path("grandma.jpg"),
    backend=Backend.VEO,
    photo_type=PhotoType.PORTRAIT,
    intensity=Intensity.SUBTLE,
    duration=6,
    custom_elements=("a red  balloon",),
)


def assert_is_the_served_video(path: Path, fake_veo: FakeVeo) -> None:
    assert path.read_bytes() == fake_veo.video
    frames = iio.imread(path, plugin="FFMPEG", index=None)  # decodes as a real video
    assert frames.shape[1:3] == (36, 64)
    assert not list(path.parent.glob("*.part"))  # the temp file was renamed, not left behind


async def test_pending_polls_then_a_downloaded_video(
    backend: VeoBackend, fake_veo: FakeVeo, fake_time: FakeTime, tmp_path: Path
) -> None:
    fake_veo.script(pending_polls=3, outcome="file")
    stored: list[str] = []
    events: list[Progress] = []

    async def store(name: str) -> None:
        stored.append(name)

    result = await backend.generate(
        portrait_photo(),
        REQUEST,
        tmp_path / "clip.mp4",
        on_operation=store,
        on_progress=events.append,
    )

    assert isinstance(result, VeoResult)
    assert_is_the_served_video(result.path, fake_veo)
    assert result.operation == "models/veo-3.1-generate-preview/operations/op1"
    assert stored == [result.operation]  # handed over before polling began
    assert result.model == "veo-3.1-generate-preview"
    assert (result.seconds, result.cost_usd) == (6, 2.4)
    assert len(fake_veo.polls) == 4 and len(fake_veo.downloads) == 1
    assert fake_time.sleeps == [10.0, 10.0, 10.0]  # poll_interval_s, waited on the fake clock
    assert result.elapsed == 30.0
    assert [e.stage for e in events] == [
        "submitted",
        "polling",
        "polling",
        "polling",
        "downloading",
    ]
    assert all(e.backend is Backend.VEO for e in events)


async def test_the_request_carries_prompt_image_and_options(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(outcome="inline")
    photo = portrait_photo()
    await backend.generate(photo, REQUEST, tmp_path / "clip.mp4")

    (submit,) = fake_veo.submits
    assert submit.path == "/v1beta/models/veo-3.1-generate-preview:predictLongRunning"
    assert submit.api_key_sent and "x-goog-api-key" not in submit.headers
    instance = submit.body["instances"][0]
    assert instance["prompt"] == build_prompt(PhotoType.PORTRAIT, "gentle", ["a red balloon"])
    assert instance["image"]["mimeType"] == "image/jpeg"
    assert base64.b64decode(instance["image"]["bytesBase64Encoded"]) == photo.jpeg_bytes()
    assert submit.body["parameters"] == {
        "aspectRatio": "9:16",
        "durationSeconds": 6,
        "resolution": "720p",
        "negativePrompt": VeoSettings().negative_prompt,
        "personGeneration": "allow_adult",
        "sampleCount": 1,
    }


async def test_request_model_overrides_settings_and_fast_model_is_cheaper(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(outcome="inline")
    request = dataclasses.replace(REQUEST, model="veo-3.1-fast-generate-preview", duration=8)
    result = await backend.generate(portrait_photo(), request, tmp_path / "clip.mp4")
    assert fake_veo.submits[0].path.endswith("/veo-3.1-fast-generate-preview:predictLongRunning")
    assert result.cost_usd == pytest.approx(8 * 0.15)


async def test_inline_video_bytes_are_saved_without_a_download(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(pending_polls=1, outcome="inline")
    result = await backend.generate(portrait_photo(), REQUEST, tmp_path / "out" / "clip.mp4")
    assert_is_the_served_video(result.path, fake_veo)
    assert fake_veo.downloads == []


async def test_a_502_is_retried_with_backoff_then_succeeds(
    backend: VeoBackend, fake_veo: FakeVeo, fake_time: FakeTime, tmp_path: Path
) -> None:
    fake_veo.script(submit_errors=[502], poll_errors=[502, 503], download_errors=[500])
    result = await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    assert_is_the_served_video(result.path, fake_veo)
    assert len(fake_veo.submits) == 2
    # Each failure waits 2 s before its first retry; the poll's second failure waits 4 s.
    assert fake_time.sleeps == [2.0, 2.0, 4.0, 2.0]


async def test_rate_limit_persists_then_raises_rate_limited(
    backend: VeoBackend, fake_veo: FakeVeo, fake_time: FakeTime, tmp_path: Path
) -> None:
    fake_veo.script(submit_errors=[429] * 10)
    with pytest.raises(RateLimited) as caught:
        await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    assert len(fake_veo.submits) == 4  # first try + max_transient_retries
    assert fake_time.sleeps == [2.0, 4.0, 8.0]
    assert "rate limit" in caught.value.user_text
    assert not (tmp_path / "clip.mp4").exists()


async def test_server_errors_beyond_the_retries_are_transient(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(poll_errors=[503] * 10)
    with pytest.raises(TransientError) as caught:
        await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    assert not isinstance(caught.value, RateLimited)
    assert len(fake_veo.polls) == 4


async def test_safety_filter_raises_content_filtered_with_reasons(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(pending_polls=1, outcome="filtered", filtered_reasons=("celebrity likeness",))
    with pytest.raises(ContentFiltered) as caught:
        await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    assert caught.value.reasons == ("celebrity likeness",)
    assert "safety filter" in caught.value.user_text
    assert fake_veo.downloads == [] and not (tmp_path / "clip.mp4").exists()


async def test_operation_error_raises_generation_failed(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(outcome="error", operation_error={"code": 3, "message": "bad image"})
    with pytest.raises(GenerationFailed) as caught:
        await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    assert not isinstance(caught.value, ContentFiltered)
    assert "bad image" in str(caught.value)


async def test_operation_error_with_a_transient_code_is_transient(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(outcome="error", operation_error={"code": 14, "message": "try later"})
    with pytest.raises(TransientError):
        await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")


async def test_person_generation_refusal_is_retried_once_without_it(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(reject_person_generation=True, outcome="inline")
    result = await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    assert_is_the_served_video(result.path, fake_veo)
    first, second = fake_veo.submits
    assert first.body["parameters"]["personGeneration"] == "allow_adult"
    assert "personGeneration" not in second.body["parameters"]
    assert first.body["instances"] == second.body["instances"]


async def test_other_bad_requests_are_not_retried(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(submit_errors=[400, 400])
    with pytest.raises(GenerationFailed):
        await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    assert len(fake_veo.submits) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_make_veo_unavailable(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path, status: int
) -> None:
    fake_veo.script(submit_errors=[status])
    with pytest.raises(BackendUnavailable) as caught:
        await backend.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    assert "credentials" in caught.value.user_text
    assert KEY not in str(caught.value)


async def test_overall_timeout_keeps_the_operation_for_a_later_resume(
    settings: VeoSettings, fake_veo: FakeVeo, fake_time: FakeTime, tmp_path: Path
) -> None:
    fake_veo.script(outcome="never")
    veo = VeoBackend(
        dataclasses.replace(settings, timeout_s=95.0),
        VeoCredentials(api_key=KEY),
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    stored: list[str] = []

    async def store(name: str) -> None:
        stored.append(name)

    with pytest.raises(TransientError) as caught:
        await veo.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4", on_operation=store)
    await veo.aclose()
    assert isinstance(caught.value, VeoTimedOut)
    assert caught.value.operation == stored[0]
    # Polls every 10 s, the last sleep shortened so the give-up lands on timeout_s exactly.
    assert fake_time.sleeps == [10.0] * 9 + [5.0]
    assert len(fake_veo.polls) == 11


async def test_resume_polls_the_stored_operation_without_submitting_again(
    settings: VeoSettings, fake_veo: FakeVeo, fake_time: FakeTime, tmp_path: Path
) -> None:
    fake_veo.script(pending_polls=2, outcome="file")
    first = VeoBackend(settings, VeoCredentials(api_key=KEY), sleep=fake_time.sleep)
    operation = await first.submit(portrait_photo(), REQUEST)
    await first.aclose()  # the process that submitted is gone

    again = VeoBackend(
        settings, VeoCredentials(api_key=KEY), clock=fake_time.clock, sleep=fake_time.sleep
    )
    result = await again.generate(
        portrait_photo(), REQUEST, tmp_path / "clip.mp4", resume_operation=operation
    )
    await again.aclose()
    assert result.operation == operation
    assert_is_the_served_video(result.path, fake_veo)
    assert len(fake_veo.submits) == 1
    assert [r.path for r in fake_veo.polls] == [f"/v1beta/{operation}"] * 3


async def test_resuming_an_unknown_operation_says_so(backend: VeoBackend, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable):
        await backend.generate(
            portrait_photo(),
            REQUEST,
            tmp_path / "clip.mp4",
            resume_operation="models/veo-3.1-generate-preview/operations/gone",
        )


async def test_cancel_while_polling_stops_and_saves_nothing(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(outcome="never")
    events: list[Progress] = []

    def cancel_after_two_polls() -> bool:
        return sum(e.stage == "polling" for e in events) >= 2

    with pytest.raises(Cancelled):
        await backend.generate(
            portrait_photo(),
            REQUEST,
            tmp_path / "clip.mp4",
            on_progress=events.append,
            should_cancel=cancel_after_two_polls,
        )
    assert len(fake_veo.submits) == 1 and len(fake_veo.polls) == 2
    assert not (tmp_path / "clip.mp4").exists()


async def test_cancel_before_submit_costs_nothing(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    with pytest.raises(Cancelled):
        await backend.generate(
            portrait_photo(), REQUEST, tmp_path / "clip.mp4", should_cancel=lambda: True
        )
    assert fake_veo.requests == []


async def test_without_credentials_veo_is_unavailable(
    settings: VeoSettings, tmp_path: Path
) -> None:
    veo = VeoBackend(settings, VeoCredentials())
    assert not veo.configured
    with pytest.raises(BackendUnavailable):
        await veo.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")


def test_cost_is_price_per_second_times_seconds() -> None:
    settings = VeoSettings(price_per_second_usd=0.40, fast_price_per_second_usd=0.15)
    assert veo_cost(8, "veo-3.1-generate-preview", settings) == 3.2
    assert veo_cost(4, "veo-3.1-generate-preview", settings) == 1.6
    assert veo_cost(8, settings.fast_model, settings) == 1.2
    assert veo_cost(6, "veo-3.1-fast-generate-001", settings) == 0.9


def vertex_backend(settings: VeoSettings, fake_time: FakeTime) -> VeoBackend:
    # A ready-made bearer token stands in for Application Default Credentials offline.
    return VeoBackend(
        settings,
        VeoCredentials(use_vertex=True, project="family-photos", location="europe-west4"),
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        google_credentials=OAuthCredentials(token="vertex-test-token"),
    )


async def test_vertex_mode_submits_polls_and_saves_the_returned_bytes(
    settings: VeoSettings, fake_veo: FakeVeo, fake_time: FakeTime, tmp_path: Path
) -> None:
    fake_veo.script(pending_polls=1, outcome="inline")
    veo = vertex_backend(settings, fake_time)
    request = dataclasses.replace(REQUEST, seed=1234)
    result = await veo.generate(portrait_photo(), request, tmp_path / "clip.mp4")
    await veo.aclose()

    assert_is_the_served_video(result.path, fake_veo)
    model = "projects/family-photos/locations/europe-west4/publishers/google/models/"
    model += "veo-3.1-generate-preview"
    (submit,) = fake_veo.submits
    assert submit.path == f"/v1beta1/{model}:predictLongRunning"
    assert submit.headers["authorization"] == "Bearer vertex-test-token"
    assert submit.body["parameters"]["seed"] == 1234  # Vertex takes a seed; the Gemini API not
    assert [p.path for p in fake_veo.polls] == [f"/v1beta1/{model}:fetchPredictOperation"] * 2
    assert fake_veo.polls[0].body == {"operationName": result.operation}


async def test_vertex_safety_filter_raises_content_filtered(
    settings: VeoSettings, fake_veo: FakeVeo, fake_time: FakeTime, tmp_path: Path
) -> None:
    fake_veo.script(outcome="filtered", filtered_reasons=("minor detected",))
    veo = vertex_backend(settings, fake_time)
    with pytest.raises(ContentFiltered) as caught:
        await veo.generate(portrait_photo(), REQUEST, tmp_path / "clip.mp4")
    await veo.aclose()
    assert caught.value.reasons == ("minor detected",)


async def test_api_key_mode_never_sends_a_seed(
    backend: VeoBackend, fake_veo: FakeVeo, tmp_path: Path
) -> None:
    fake_veo.script(outcome="inline")
    await backend.generate(
        portrait_photo(), dataclasses.replace(REQUEST, seed=7), tmp_path / "clip.mp4"
    )
    assert "seed" not in fake_veo.submits[0].body["parameters"]
