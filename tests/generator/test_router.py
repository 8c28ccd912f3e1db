"""The whole generator: auto's fallback, Veo through the loopback server, SVD through the tiny
model, and the clip that comes out decoding as an MP4."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.clip import Progress
from generator.config import (
    AutoSettings,
    EnginesSettings,
    GeneratorSettings,
    ImageSettings,
    VeoCredentials,
    VeoSettings,
)
from generator.encode import probe_video
from generator.errors import BackendUnavailable, BudgetExceeded, Cancelled, ContentFiltered
from generator.options import Backend, Intensity, Request
from generator.router import Generator
from generator.veo import VeoBackend
from tests.support.fake_veo import FakeVeo
from tests.support.images import write_photo

KEY = VeoCredentials(api_key="test-key")


class FakeTime:
    """Moves only when something sleeps: retries and polls take no real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return write_photo(tmp_path / "photo.jpg", size=(96, 64))


def make_generator(
    tiny_svd_settings, fake_veo: FakeVeo | None, *, creds=KEY, failures: int = 3
) -> Generator:
    time = FakeTime()
    veo_settings = VeoSettings(base_url=fake_veo.base_url if fake_veo else "", poll_interval_s=5)
    settings = GeneratorSettings(
        image=ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64)),
        svd=tiny_svd_settings,
        veo=veo_settings,
        auto=AutoSettings(breaker_failures=failures, breaker_cooldown_s=300),
    )
    veo = VeoBackend(veo_settings, creds, clock=time.clock, sleep=time.sleep)
    return Generator(settings, credentials=creds, clock=time.clock, veo=veo)


async def test_auto_without_credentials_makes_an_svd_clip_and_says_why(
    tiny_svd_settings, photo, tmp_path
):
    gen = make_generator(tiny_svd_settings, None, creds=VeoCredentials())
    events: list[Progress] = []
    clip = await gen.generate(Request(image=photo), tmp_path / "out.mp4", on_progress=events.append)

    assert clip.backend is Backend.SVD
    assert "not configured" in clip.fallback_reason
    assert clip.cost_usd == 0
    probe = probe_video(clip.path)
    assert (probe.width, probe.height, probe.frames) == (64, 32, 2)
    assert probe.fps == pytest.approx(7)
    steps = [(e.step, e.total) for e in events if e.stage == "denoising"]
    assert steps[-1] == (2, 2)
    assert clip.video.thumbnail is not None and clip.video.thumbnail.exists()


async def test_auto_uses_veo_reports_cost_and_hands_out_the_operation_name(
    tiny_svd_settings, fake_veo, photo, tmp_path
):
    fake_veo.script(pending_polls=2)
    gen = make_generator(tiny_svd_settings, fake_veo)
    stored: list[str] = []

    async def store(name: str) -> None:
        stored.append(name)

    clip = await gen.generate(
        Request(image=photo, duration=6), tmp_path / "veo.mp4", on_veo_operation=store
    )
    assert clip.backend is Backend.VEO
    assert clip.fallback_reason is None
    assert clip.cost_usd == pytest.approx(6 * 0.40)
    assert len(stored) == 1 and "/operations/" in stored[0]
    assert probe_video(clip.path).frames > 0
    assert len(fake_veo.submits) == 1


async def test_resume_polls_the_stored_operation_without_paying_again(
    tiny_svd_settings, fake_veo, photo, tmp_path
):
    fake_veo.script(pending_polls=3)
    gen = make_generator(tiny_svd_settings, fake_veo)
    name = await gen.veo.submit(
        __import__("generator.image", fromlist=["x"]).prepare_image(photo, gen.settings.image),
        Request(image=photo),
    )
    # A new process after a restart: a new generator resumes by name.
    again = make_generator(tiny_svd_settings, fake_veo)
    clip = await again.generate(Request(image=photo), tmp_path / "r.mp4", resume_veo_operation=name)
    assert clip.backend is Backend.VEO
    assert len(fake_veo.submits) == 1


async def test_auto_falls_back_to_svd_when_veo_is_rate_limited_and_then_skips_it(
    tiny_svd_settings, fake_veo, photo, tmp_path
):
    fake_veo.script(submit_errors=[429] * 20)
    gen = make_generator(tiny_svd_settings, fake_veo, failures=1)

    first = await gen.generate(Request(image=photo), tmp_path / "a.mp4")
    assert first.backend is Backend.SVD
    assert "rate limit" in first.fallback_reason
    tries = len(fake_veo.submits)

    second = await gen.generate(Request(image=photo), tmp_path / "b.mp4")
    assert second.backend is Backend.SVD
    assert "failing" in second.fallback_reason
    assert len(fake_veo.submits) == tries  # breaker open: Veo was not called


async def test_safety_filter_falls_back_in_auto_and_is_an_error_when_veo_was_asked(
    tiny_svd_settings, fake_veo, photo, tmp_path
):
    fake_veo.script(outcome="filtered")
    gen = make_generator(tiny_svd_settings, fake_veo)
    clip = await gen.generate(Request(image=photo), tmp_path / "a.mp4")
    assert clip.backend is Backend.SVD
    assert "safety filter" in clip.fallback_reason

    with pytest.raises(ContentFiltered) as info:
        await gen.generate(Request(image=photo, backend=Backend.VEO), tmp_path / "b.mp4")
    assert info.value.reasons


async def test_budget_refusal_skips_veo_in_auto_and_refuses_explicit_veo(
    tiny_svd_settings, fake_veo, photo, tmp_path
):
    gen = make_generator(tiny_svd_settings, fake_veo)
    asked: list[float] = []

    def budget(cost: float) -> bool:
        asked.append(cost)
        return False

    clip = await gen.generate(Request(image=photo), tmp_path / "a.mp4", veo_budget_ok=budget)
    assert clip.backend is Backend.SVD and "budget" in clip.fallback_reason
    assert asked == [pytest.approx(8 * 0.40)]
    with pytest.raises(BudgetExceeded):
        await gen.generate(
            Request(image=photo, backend=Backend.VEO), tmp_path / "b.mp4", veo_budget_ok=budget
        )
    assert fake_veo.submits == []


async def test_explicit_veo_without_credentials_is_refused_before_any_work(
    tiny_svd_settings, photo, tmp_path
):
    gen = make_generator(tiny_svd_settings, None, creds=VeoCredentials())
    with pytest.raises(BackendUnavailable) as info:
        await gen.generate(Request(image=photo, backend=Backend.VEO), tmp_path / "a.mp4")
    assert "SVD" in info.value.user_text
    assert not (tmp_path / "a.mp4").exists()


async def test_intensity_changes_the_svd_motion_bucket(tiny_svd_settings, photo, tmp_path):
    gen = make_generator(tiny_svd_settings, None, creds=VeoCredentials())
    still = await gen.generate(
        Request(image=photo, backend=Backend.SVD, intensity=Intensity.SUBTLE, seed=3),
        tmp_path / "s.mp4",
    )
    wild = await gen.generate(
        Request(image=photo, backend=Backend.SVD, intensity=Intensity.DRAMATIC, seed=3),
        tmp_path / "d.mp4",
    )
    assert still.seed == wild.seed == 3
    assert still.path.read_bytes() != wild.path.read_bytes()


async def test_cancelling_a_submitted_veo_clip_still_reports_its_cost(
    tiny_svd_settings, fake_veo, photo, tmp_path
):
    fake_veo.script(pending_polls=5)
    gen = make_generator(tiny_svd_settings, fake_veo)
    polled: list[Progress] = []

    with pytest.raises(Cancelled) as info:
        await gen.generate(
            Request(image=photo, backend=Backend.VEO, duration=4),
            tmp_path / "c.mp4",
            on_progress=polled.append,
            should_cancel=lambda: any(p.stage == "polling" for p in polled),
        )
    assert len(fake_veo.submits) == 1
    assert info.value.cost_usd == pytest.approx(4 * 0.40)  # Veo bills the abandoned clip


@pytest.mark.parametrize(("residency", "svd_stays"), [("one", False), ("all", True)])
async def test_a_job_for_another_engine_swaps_it_in_unless_several_stay_warm(
    tiny_svd_settings, tiny_ltx, photo, tmp_path, caplog, residency, svd_stays
):
    settings = GeneratorSettings(
        image=ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64)),
        svd=tiny_svd_settings,
        ltx=tiny_ltx,
        engines=EnginesSettings(residency=residency),
    )
    gen = Generator(settings, credentials=VeoCredentials(), total_vram=lambda: 12 * 1024**3)

    await gen.generate(Request(image=photo, backend=Backend.SVD), tmp_path / "svd.mp4")
    with caplog.at_level("INFO", logger="generator.router"):
        clip = await gen.generate(Request(image=photo, backend=Backend.LTX), tmp_path / "ltx.mp4")

    assert clip.backend is Backend.LTX
    assert probe_video(clip.path).frames == 9
    assert gen.engine(Backend.LTX).loaded
    assert gen.engine(Backend.SVD).loaded is svd_stays
    swaps = [r.getMessage() for r in caplog.records if "swapped" in r.getMessage()]
    assert bool(swaps) is not svd_stays
    if swaps:
        assert swaps[0].startswith("swapped svd for ltx on the GPU in ")
