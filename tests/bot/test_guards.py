"""Every update path is guarded: who may reach a handler, what a forged button can touch,
and what a caption may smuggle into the bot's own messages.

The real Application talks to the loopback Bot API; each test pulls the updates it pushed
with ``getUpdates`` and hands them to ``process_update`` one by one, so when a step returns,
its handlers have finished (no waiting on the clock).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from telegram.ext import Application

from bot.app import build_app
from bot.config import LimitSettings
from bot.jobs import Outcome, Status
from bot.keyboards import result_keyboard
from bot.limits import DAY
from bot.queue import SqlQueue
from bot.store import Card, Store
from generator.options import Backend
from tests.bot.test_handlers import ANN, BOB, NOW, STRANGER, RecordingWorker, make_settings
from tests.support.fake_botapi import FakeBotApi
from tests.support.images import bomb_png_bytes, photo_bytes

CHANNEL = -1001234567890


@dataclasses.dataclass
class World:
    """The bot (not polling), its store and clock, and the fake Telegram around it."""

    app: Application
    fake: FakeBotApi
    store: Store
    photos: Path
    now: list[float]
    offset: int = 0

    async def handle(self) -> None:
        """Fetch every pending update and handle each to the end, in order."""
        updates = await self.app.bot.get_updates(offset=self.offset, timeout=0)
        for update in updates:
            self.offset = update.update_id + 1
            await self.app.process_update(update)
        await self.app.bot_data.editor.idle()  # card redraws run in the background

    def texts(self, chat_id: int) -> list[str]:
        return [m.content for m in self.fake.messages(chat_id).values()]

    async def card(self, user: Any = ANN, caption: str | None = None) -> int:
        """Send a photo and return the settings card's message id."""
        pushed = self.fake.send_photo(user, photo_bytes(), caption=caption)
        await self.handle()
        (card,) = [
            m
            for m in self.fake.messages(user.id).values()
            if m.reply_to_message_id == pushed.message_id
        ]
        return card.message_id


@pytest.fixture
async def world(
    fake_botapi: FakeBotApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> AsyncIterator[World]:
    settings = make_settings(fake_botapi, tmp_path, **getattr(request, "param", {}))
    store = await Store.open(tmp_path / "bot.sqlite3")
    now = [NOW]
    app = build_app(
        settings,
        store,
        RecordingWorker(store),
        clock=lambda: now[0],
        rate_limiter=False,
    )
    async with app:
        yield World(app, fake_botapi, store, settings.photos_dir, now)
    await store.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"handler errors: {[r.getMessage() for r in errors]}"


def _photos(world: World) -> list[Path]:
    return sorted(world.photos.iterdir()) if world.photos.exists() else []


# --- who gets through -------------------------------------------------------------------


async def test_a_channel_post_with_a_photo_reaches_no_handler(world: World) -> None:
    world.fake.post_in_channel(CHANNEL, photo=photo_bytes())
    world.fake.post_in_channel(CHANNEL, text="/start")
    await world.handle()

    assert not world.fake.calls("getFile")  # nothing downloaded
    assert _photos(world) == []
    assert not world.fake.calls("sendMessage")  # no "something went wrong" in the channel


async def test_a_stranger_is_told_once_a_day(world: World) -> None:
    for text in ("hello", "hello?", "anyone there?"):
        world.fake.send_text(STRANGER, text)
    world.fake.send_photo(STRANGER, photo_bytes())
    await world.handle()

    refusals = [t for t in world.texts(STRANGER.id) if "private bot" in t]
    assert len(refusals) == 1 and str(STRANGER.id) in refusals[0]
    assert not world.fake.calls("getFile")

    world.now[0] += DAY - 60  # still the same day, as far as the stranger is concerned
    world.fake.send_text(STRANGER, "please?")
    await world.handle()
    assert len([t for t in world.texts(STRANGER.id) if "private bot" in t]) == 1

    world.now[0] += 120  # a day after the first answer
    world.fake.send_text(STRANGER, "tomorrow then")
    await world.handle()
    assert len([t for t in world.texts(STRANGER.id) if "private bot" in t]) == 2


# --- forged and raced buttons ------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["j1", "h1", "r1"])
async def test_a_button_with_a_23_digit_job_id_has_expired(world: World, prefix: str) -> None:
    world.fake.send_text(ANN, "hi")
    await world.handle()
    (reply_id,) = world.fake.messages(ANN.id)
    suffix = ":again" if prefix == "r1" else ""

    world.fake.press(ANN, reply_id, f"{prefix}:{'9' * 23}{suffix}", strict=False)
    await world.handle()

    (alert,) = world.fake.alerts
    assert alert.show_alert and "expired" in (alert.text or "")


async def test_cancel_on_a_card_after_animate_keeps_the_jobs_photo(world: World) -> None:
    card_id = await world.card()
    animate = world.fake.message(ANN.id, card_id).button_data("Animate")
    cancel = world.fake.message(ANN.id, card_id).button_data("Cancel")  # the card's own
    world.fake.press(ANN, card_id, animate)
    await world.handle()

    # The card is a status message now; its old Cancel arrives late (or is forged).
    world.fake.press(ANN, card_id, cancel, strict=False)
    world.fake.press(ANN, card_id, "c2:i:subtle", strict=False)
    await world.handle()

    (job,) = await SqlQueue(world.store.db).history(ANN.id)
    assert job.status is Status.QUEUED
    assert Path(job.photo_path).exists()  # noqa: ASYNC240
    assert "queue" in world.fake.message(ANN.id, card_id).content  # still the status
    assert [a.show_alert for a in world.fake.alerts] == [False, True, True]


async def test_cancel_on_a_card_drops_it_and_its_photo(world: World) -> None:
    card_id = await world.card()
    world.fake.press_button(ANN, card_id, "Cancel")
    await world.handle()

    assert "won't animate" in world.fake.message(ANN.id, card_id).content
    assert _photos(world) == []
    assert await world.store.get_card(ANN.id, card_id) is None


async def test_a_result_press_leaves_another_users_card_alone(world: World) -> None:
    card_id = await world.card()
    world.fake.press_button(ANN, card_id, "Animate")
    await world.handle()
    (done,) = await SqlQueue(world.store.db).history(ANN.id)
    await SqlQueue(world.store.db).claim("gpu0", now=NOW)
    await SqlQueue(world.store.db).finish(
        done.id, Outcome(Status.DONE, used_backend=Backend.SVD), now=NOW
    )
    # In a group, Bob's settings card is a message Ann can press too.
    bobs = await world.app.bot.send_message(ANN.id, "Bob's card")
    bobs_card = Card(ANN.id, bobs.message_id, BOB.id, 1, "bob.jpg", done.options, created_at=NOW)
    await world.store.save_card(bobs_card)

    world.fake.press(ANN, bobs.message_id, result_keyboard(done.id).inline_keyboard[0][0]
                     .callback_data, strict=False)  # fmt: skip
    await world.handle()

    assert await world.store.get_card(ANN.id, bobs.message_id) == bobs_card
    assert len(await SqlQueue(world.store.db).history(ANN.id)) == 1
    assert "expired" in (world.fake.alerts[-1].text or "")


# --- what a caption may carry -------------------------------------------------------------


async def test_a_caption_is_echoed_without_control_or_bidi_characters(world: World) -> None:
    card_id = await world.card(caption="snow\u202e falling\x00\x07\nslowly\u2066 \U0001f328")

    card = world.fake.message(ANN.id, card_id).content
    assert "Extra: snow falling slowly \U0001f328" in card
    stored = await world.store.get_card(ANN.id, card_id)
    assert stored is not None
    assert stored.options.custom_elements == ("snow falling slowly \U0001f328",)


# --- every message gets an answer ---------------------------------------------------------

STICKER = {
    "file_id": "CAACAgIAAxk-sticker",
    "file_unique_id": "AgADsticker",
    "type": "regular",
    "width": 512,
    "height": 512,
    "is_animated": False,
    "is_video": False,
}
VIDEO = {
    "file_id": "BAACAgIAAxk-video",
    "file_unique_id": "AgADvideo",
    "width": 640,
    "height": 360,
    "duration": 3,
}
VOICE = {"file_id": "AwACAgIAAxk-voice", "file_unique_id": "AgADvoice", "duration": 2}
LOCATION = {"latitude": 48.2, "longitude": 16.37}
CONTACT = {"phone_number": "+431234567", "first_name": "Eve"}


@pytest.mark.parametrize(
    ("kind", "payload", "named"),
    [
        ("sticker", STICKER, "a sticker"),
        ("video", VIDEO, "a video"),
        ("animation", {**VIDEO, "file_unique_id": "AgADgif"}, "a GIF"),
        ("voice", VOICE, "a voice message"),
        ("location", LOCATION, "a location"),
        ("contact", CONTACT, "a contact"),
    ],
)
async def test_any_other_message_is_told_what_the_bot_takes(
    world: World, kind: str, payload: dict[str, Any], named: str
) -> None:
    world.fake.send_other(ANN, kind, payload)
    await world.handle()

    (answer,) = world.fake.messages(ANN.id).values()
    assert f"I can't animate {named}" in answer.content and "send me a photo" in answer.content


async def test_an_unknown_command_is_answered(world: World) -> None:
    world.fake.send_command(ANN, "/animate_everything")
    await world.handle()

    (answer,) = world.fake.messages(ANN.id).values()
    assert "send me a photo" in answer.content


async def test_a_handled_flood_limit_is_one_warning_line(
    fake_botapi: FakeBotApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(fake_botapi, tmp_path)
    store = await Store.open(tmp_path / "bot.sqlite3")
    app = build_app(settings, store, RecordingWorker(store), clock=lambda: NOW)
    fake_botapi.fail_next("sendMessage", retry_after=7)
    fake_botapi.send_command(ANN, "/help")
    caplog.set_level(logging.INFO)
    async with app:
        for update in await app.bot.get_updates(timeout=0):
            await app.process_update(update)
    await store.close()

    flood = [r for r in caplog.records if "flood limit" in r.getMessage()]
    assert [r.levelname for r in flood] == ["WARNING", "WARNING"]  # the limiter, the handler
    assert all("7" in r.getMessage() for r in flood)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# --- memory and disk at intake ------------------------------------------------------------


def _pillow_bitmaps() -> int:
    """Bitmaps Pillow has allocated in this process so far (its allocator's own count)."""
    return int(Image.core.get_stats()["new_count"])


async def test_a_48_megapixel_png_is_refused_from_its_header(world: World) -> None:
    png = bomb_png_bytes(8000, 6000)  # a few kB that would decode to 48 MP
    world.fake.send_document(ANN, png, file_name="scan.png", mime_type="image/png")
    bitmaps = _pillow_bitmaps()

    await world.handle()

    (answer,) = world.fake.messages(ANN.id).values()
    assert "too many pixels" in answer.content and "as a photo" in answer.content
    assert _pillow_bitmaps() == bitmaps  # refused before any bitmap existed
    assert _photos(world) == []


@pytest.mark.parametrize("world", [{"limits": LimitSettings(max_queued_per_user=1)}], indirect=True)
async def test_a_user_at_the_queue_limit_is_refused_before_any_download(world: World) -> None:
    card_id = await world.card()
    world.fake.press_button(ANN, card_id, "Animate")
    await world.handle()
    downloads = len(world.fake.calls("getFile"))

    world.fake.send_document(ANN, photo_bytes((640, 480), fmt="PNG"), file_name="next.png")
    await world.handle()

    assert "already have 1 clip" in world.fake.last_message(ANN.id).content  # type: ignore[union-attr]
    assert len(world.fake.calls("getFile")) == downloads
    assert len(_photos(world)) == 1


@pytest.mark.parametrize("world", [{"max_disk_mb": 1}], indirect=True)
async def test_intake_refuses_while_the_data_folder_is_over_budget(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.photos.mkdir(parents=True)
    (world.photos / "old.jpg").write_bytes(b"x" * (1024 * 1024))

    world.fake.send_photo(ANN, photo_bytes())
    world.fake.send_photo(BOB, photo_bytes())
    await world.handle()

    for user in (ANN, BOB):
        assert "out of storage space" in world.fake.last_message(user.id).content  # type: ignore[union-attr]
    assert not world.fake.calls("getFile")
    full = [r for r in caplog.records if "max_disk_mb" in r.getMessage()]
    assert [r.levelname for r in full] == ["WARNING"]  # one line for the operator, not two
