"""Whole journeys: the real bot polls the loopback Bot API and makes clips with the tiny models.

Everything is real except Telegram (tests/support/fake_botapi.py) and the model weights
(tests/support/tiny_svd.py: 2 frames, 2 steps on CPU; tests/support/tiny_ltx.py and
tests/support/tiny_wan.py: 9 frames, 2 steps): ``build_app`` with its handlers, the SQLite
store, ``bot.consumers.Workers`` (one consumer) with an ``InlineRunner`` over ``Generator``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import build_app
from bot.config import AccessSettings, Settings, TelegramSettings, WorkerSettings
from bot.consumers import Workers, build_workers
from bot.gpu import InlineRunner
from bot.jobs import Job, Status
from bot.queue import SqlQueue
from bot.store import Store
from generator.config import AutoSettings, GeneratorSettings, ImageSettings, VeoCredentials
from generator.encode import probe_video
from generator.options import Backend
from generator.router import Generator
from tests.support.fake_botapi import TOKEN, FakeBotApi, FakeUser
from tests.support.images import photo_bytes
from tests.support.tiny_ltx import tiny_ltx_settings
from tests.support.tiny_svd import tiny_settings
from tests.support.tiny_wan import tiny_wan_settings

ANN = FakeUser(101, "Ann")
ADMIN = FakeUser(303, "Ada")
CLIP_TIMEOUT = 120.0  # the tiny SVD on a shared 2-core machine


@dataclasses.dataclass
class Journey:
    fake: FakeBotApi
    store: Store
    worker: Workers
    tmp_path: Path

    async def card_for(self, pushed_message_id: int) -> int:
        def card() -> int | None:
            for m in self.fake.messages(ANN.id).values():
                if m.reply_to_message_id == pushed_message_id and "Animate" in str(m.buttons):
                    return m.message_id
            return None

        return await self.fake.wait_for(card, what="settings card")

    async def tick(self, card_id: int, label: str) -> None:
        self.fake.press_button(ANN, card_id, label)
        await self.fake.wait_for(
            lambda: f"✓ {label}" in str(self.fake.message(ANN.id, card_id).buttons),
            what=f"{label} ticked",
        )

    async def finished(self, job_id: int) -> Job:
        """The job's row once terminal. The worker records "done" after the upload; every
        step after it talks to the Bot API, so wait on recorded calls, not on time."""
        for _ in range(100):
            job = await SqlQueue(self.store.db).get(job_id)
            if job is not None and not job.active:
                return job
            seen = len(self.fake.calls())
            await self.fake.wait_for(lambda seen=seen: len(self.fake.calls()) > seen)
        raise AssertionError(f"job {job_id} never finished\n{self.fake.dump()}")

    def check_video(self, data: bytes) -> None:
        path = self.tmp_path / f"received-{len(data)}.mp4"
        path.write_bytes(data)
        probe = probe_video(path)
        assert probe.codec == "h264" and probe.frames == 2
        assert (probe.width, probe.height) == (32, 32)


@pytest.fixture(scope="module")
def generator_settings(
    tiny_svd_dir: Path, tiny_ltx_dir: Path, tiny_wan_dir: Path
) -> GeneratorSettings:
    return GeneratorSettings(
        svd=tiny_settings(tiny_svd_dir),
        ltx=tiny_ltx_settings(tiny_ltx_dir),
        wan=tiny_wan_settings(tiny_wan_dir),
        image=ImageSettings(landscape_size=(32, 32), portrait_size=(32, 32)),
        auto=AutoSettings(chain=("veo", "svd", "ltx")),  # Auto means the tiny SVD here
    )


@pytest.fixture(scope="module")
def generator(generator_settings: GeneratorSettings) -> Generator:
    """One generator for the module, so the tiny SVD loads once. No Veo: auto means SVD."""
    return Generator(generator_settings, credentials=VeoCredentials())


@pytest.fixture
async def journey(
    fake_botapi: FakeBotApi,
    tmp_path: Path,
    generator: Generator,
    generator_settings: GeneratorSettings,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Journey]:
    settings = Settings(
        telegram=TelegramSettings(
            token=TOKEN, base_url=fake_botapi.base_url, base_file_url=fake_botapi.base_file_url
        ),
        access=AccessSettings(allowed_users=frozenset({ANN.id}), admins=frozenset({ADMIN.id})),
        worker=WorkerSettings(shutdown_grace_s=0.0, progress_edit_interval_s=0.5),
        generator=generator_settings,
        data_dir=tmp_path / "data",
    )
    store = await Store.open(settings.db_path)
    queue = SqlQueue(store.db)
    worker = build_workers(settings, store, queue, [InlineRunner(generator)])
    app = build_app(settings, store, worker, queue=queue, cards=worker.cards, rate_limiter=False)
    # What run_polling does, step by step, so the test runs on its own event loop.
    async with app:
        await app.post_init(app)  # type: ignore[misc]
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        await app.start()
        try:
            yield Journey(fake_botapi, store, worker, tmp_path)
        finally:
            await app.updater.stop()
            await app.stop()
            await app.post_stop(app)  # type: ignore[misc]
    await app.post_shutdown(app)  # type: ignore[misc]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_photo_options_animate_then_a_video_arrives(journey: Journey) -> None:
    fake = journey.fake
    assert {c["command"] for c in fake.commands} >= {"start", "help", "queue", "cancel"}
    pushed = fake.send_photo(ANN, photo_bytes((96, 64)))
    card_id = await journey.card_for(pushed.message_id)
    await journey.tick(card_id, "Subtle")
    await journey.tick(card_id, "Landscape")

    fake.press_button(ANN, card_id, "Animate")
    video = await fake.wait_for_video(ANN.id, timeout=CLIP_TIMEOUT)

    journey.check_video(video.data)
    assert video.reply_to_message_id == pushed.message_id
    assert video.caption is not None and "subtle" in video.caption
    assert "Veo" not in video.caption  # no Veo set up: nothing "fell back", nothing to say
    assert "Again" in str(video.reply_markup)
    (queued,) = await SqlQueue(journey.store.db).history(ANN.id)
    job = await journey.finished(queued.id)
    assert job.status is Status.DONE and job.video_file_id == video.file_id

    # /history offers the clip again; the button resends it by file id, no new upload.
    fake.send_command(ANN, "/history")
    listing = await fake.wait_for_text(ANN.id, "Your last clips")
    assert f"#{job.id}" in listing.content and "done" in listing.content
    fake.press_button(ANN, listing.message_id, f"Send #{job.id} again")
    again = await fake.wait_for_video(ANN.id, count=2)
    assert again.resent and again.file_id == video.file_id


async def test_image_sent_as_a_document_becomes_a_clip(journey: Journey) -> None:
    fake = journey.fake
    pushed = fake.send_document(
        ANN, photo_bytes((640, 480), fmt="PNG"), file_name="scan.png", mime_type="image/png"
    )
    card_id = await journey.card_for(pushed.message_id)

    fake.press_button(ANN, card_id, "Animate")
    video = await fake.wait_for_video(ANN.id, timeout=CLIP_TIMEOUT)

    journey.check_video(video.data)
    assert video.reply_to_message_id == pushed.message_id


async def test_cancel_a_queued_job(journey: Journey) -> None:
    fake = journey.fake
    fake.send_command(ADMIN, "/pause")  # hold the queue so the job is still waiting
    await fake.wait_for_text(ADMIN.id, "Paused")
    pushed = fake.send_photo(ANN, photo_bytes())
    card_id = await journey.card_for(pushed.message_id)
    fake.press_button(ANN, card_id, "Animate")
    await fake.wait_for_text(ANN.id, "in the queue")

    fake.press_button(ANN, card_id, "Cancel")
    status = await fake.wait_for_text(ANN.id, "Cancelled")

    assert status.message_id == card_id
    (job,) = await SqlQueue(journey.store.db).history(ANN.id)
    assert job.status is Status.CANCELLED

    # After /resume another photo goes through, and only its clip is delivered.
    fake.send_command(ADMIN, "/resume")
    await fake.wait_for_text(ADMIN.id, "Resumed")
    second = fake.send_photo(ANN, photo_bytes())
    fake.press_button(ANN, await journey.card_for(second.message_id), "Animate")
    video = await fake.wait_for_video(ANN.id, timeout=CLIP_TIMEOUT)
    assert video.reply_to_message_id == second.message_id
    assert len(fake.videos(ANN.id)) == 1


async def test_pick_ltx_on_the_card_and_a_smooth_clip_in_the_photos_aspect_arrives(
    journey: Journey,
) -> None:
    fake = journey.fake
    pushed = fake.send_photo(ANN, photo_bytes((96, 64)))  # 3:2 landscape
    card_id = await journey.card_for(pushed.message_id)
    card = fake.message(ANN.id, card_id)
    assert "LTX 1.1s 8fps" in str(card.buttons)  # what it makes, before any history
    assert "SVD 0.3s 7fps" in str(card.buttons)

    await journey.tick(card_id, "LTX")
    assert "local (LTX-Video), a clip of about 1.1 s" in fake.message(ANN.id, card_id).content
    fake.press_button(ANN, card_id, "Animate")
    video = await fake.wait_for_video(ANN.id, timeout=CLIP_TIMEOUT)

    path = journey.tmp_path / "ltx.mp4"
    path.write_bytes(video.data)
    probe = probe_video(path)
    assert probe.codec == "h264" and probe.frames == 9  # 8k+1 frames
    assert (probe.width, probe.height) == (64, 32)  # the photo's landscape aspect, /32 sides
    (queued,) = await SqlQueue(journey.store.db).history(ANN.id)
    job = await journey.finished(queued.id)
    assert job.status is Status.DONE and job.used_backend is Backend.LTX

    # The next card shows LTX's typical wait, from this job.
    second = fake.send_photo(ANN, photo_bytes((96, 64)))
    next_card = fake.message(ANN.id, await journey.card_for(second.message_id))
    assert "LTX 1.1s 8fps ~" in str(next_card.buttons)


async def test_pick_wan_on_the_card_and_a_clip_in_the_photos_aspect_arrives(
    journey: Journey,
) -> None:
    fake = journey.fake
    pushed = fake.send_photo(ANN, photo_bytes((64, 96)))  # 2:3 portrait
    card_id = await journey.card_for(pushed.message_id)
    assert "Wan 1.1s 8fps" in str(fake.message(ANN.id, card_id).buttons)

    await journey.tick(card_id, "Wan")
    assert "local (Wan 2.2), a clip of about 1.1 s" in fake.message(ANN.id, card_id).content
    fake.press_button(ANN, card_id, "Animate")
    video = await fake.wait_for_video(ANN.id, timeout=CLIP_TIMEOUT)

    path = journey.tmp_path / "wan.mp4"
    path.write_bytes(video.data)
    probe = probe_video(path)
    assert probe.codec == "h264" and probe.frames == 9  # 4k+1 frames
    assert (probe.width, probe.height) == (32, 64)  # the photo's portrait aspect, /32 sides
    (queued,) = await SqlQueue(journey.store.db).history(ANN.id)
    job = await journey.finished(queued.id)
    assert job.status is Status.DONE and job.used_backend is Backend.WAN

    # The next card shows Wan's typical wait, from this job.
    second = fake.send_photo(ANN, photo_bytes((64, 96)))
    next_card = fake.message(ANN.id, await journey.card_for(second.message_id))
    assert "Wan 1.1s 8fps ~" in str(next_card.buttons)
