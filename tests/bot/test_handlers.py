"""The front end as a user meets it: photos, settings cards, buttons, commands, access, limits.

The real Application polls the loopback Bot API (tests/support/fake_botapi.py) and keeps its
state in a real SQLite store. The GPU consumer is replaced by ``RecordingWorker``, which only
records wake-ups and cancels, so jobs stay where the handlers put them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot import texts
from bot.app import build_app
from bot.config import AccessSettings, LimitSettings, Settings, TelegramSettings
from bot.eta import estimate_wait, running_remaining
from bot.handlers.access import check_access
from bot.handlers.results import result_options, shift_motion
from bot.jobs import JobOptions, Outcome, Status
from bot.keyboards import result_keyboard
from bot.limits import Refused, Usage, check_limits
from bot.queue import SqlQueue
from bot.store import Card, Flag, Store
from generator.config import VeoCredentials
from generator.errors import InvalidImage
from generator.options import Backend, Intensity
from tests.support.fake_botapi import TOKEN, BotMessage, FakeBotApi, FakeUser
from tests.support.images import bomb_png_bytes, photo_bytes

NOW = 1_780_000_000.0
ANN = FakeUser(101, "Ann")
BOB = FakeUser(202, "Bob")
ADMIN = FakeUser(303, "Ada")
STRANGER = FakeUser(909, "Sam")


class RecordingWorker:
    """Stands in for bot.consumers.Workers (``bot.context.Consumers``): records what the
    handlers asked of the consumers; pause and resume keep the stored flag as they do."""

    size = 1

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self.wakes = 0
        self.woken = asyncio.Event()
        self.cancelled: list[int] = []
        self.paused = False

    def wake(self) -> None:
        self.wakes += 1
        self.woken.set()

    async def cancel(self, job_id: int) -> bool:
        self.cancelled.append(job_id)
        return True

    async def pause(self) -> None:
        self.paused = True
        if self.store is not None:
            await self.store.set_flag(Flag.PAUSED, "1")

    async def resume(self) -> None:
        self.paused = False
        if self.store is not None:
            await self.store.set_flag(Flag.PAUSED, None)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclasses.dataclass
class Bot:
    """A running bot and the world around it."""

    fake: FakeBotApi
    store: Store
    worker: RecordingWorker
    settings: Settings
    app: Any

    async def card_for(self, user: FakeUser, caption: str | None = None) -> int:
        """Send a photo; return the id of the settings card answering it, once it has buttons."""
        pushed = self.fake.send_photo(user, photo_bytes(), caption=caption)

        def card() -> Any:
            for m in self.fake.messages(user.id).values():
                if m.reply_to_message_id == pushed.message_id and "Animate" in str(m.buttons):
                    return m
            return None

        return (await self.fake.wait_for(card, what="settings card")).message_id

    async def reply(self, user: FakeUser, command: str) -> BotMessage:
        """Send ``command``; return the bot's answer to it (its next message in the chat)."""
        return await self.fake.wait_for_reply(user.id, self.fake.send_command(user, command))

    async def ticked(self, user: FakeUser, message_id: int, label: str) -> None:
        """Wait until the card shows ``label`` (with its tick) on a button."""
        await self.fake.wait_for(
            lambda: any(label in t for t in labels(self.fake.message(user.id, message_id).buttons)),
            what=f"{label!r} on card {message_id}",
        )

    async def answers(self, count: int) -> list[Any]:
        """Wait until ``count`` callback queries have been answered."""
        return await self.fake.wait_for(
            lambda: self.fake.alerts if len(self.fake.alerts) >= count else None,
            what=f"{count} answered callback queries",
        )


def make_settings(fake: FakeBotApi, tmp_path: Path, **changes: Any) -> Settings:
    settings = Settings(
        telegram=TelegramSettings(
            token=TOKEN, base_url=fake.base_url, base_file_url=fake.base_file_url
        ),
        access=AccessSettings(
            allowed_users=frozenset({ANN.id, BOB.id}), admins=frozenset({ADMIN.id})
        ),
        data_dir=tmp_path / "data",
        veo=VeoCredentials(api_key="test-key"),
    )
    return dataclasses.replace(settings, **changes)


@pytest.fixture
def settings_changes() -> dict[str, Any]:
    """Override in a test module or with ``@pytest.mark.parametrize`` via indirect."""
    return {}


@pytest.fixture
async def bot(
    fake_botapi: FakeBotApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Bot]:
    changes = getattr(request, "param", {})
    settings = make_settings(fake_botapi, tmp_path, **changes)
    store = await Store.open(tmp_path / "bot.sqlite3")
    worker = RecordingWorker(store)
    app = build_app(settings, store, worker, clock=lambda: NOW, rate_limiter=False)
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        try:
            yield Bot(fake_botapi, store, worker, settings, app)
        finally:
            await app.updater.stop()
            await app.stop()
    await store.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"handler errors: {[r.getMessage() for r in errors]}"


def labels(buttons: list[list[tuple[str, str | None]]]) -> list[str]:
    return [text for row in buttons for text, _ in row]


# --- photos and the settings card --------------------------------------------------------


async def test_photo_gets_a_settings_card_and_is_saved(bot: Bot) -> None:
    card_id = await bot.card_for(ANN, caption="snow falling")

    card = bot.fake.message(ANN.id, card_id)
    shown = labels(card.buttons)
    engines = ("✓ Auto", "LTX 5s 24fps", "SVD 3.6s 7fps", "Veo ~$3.20")  # what each makes
    for label in ("Subtle", "✓ Moderate", "Dramatic", *engines):
        assert label in shown
    for label in ("✓ Portrait", "Group", "Landscape", "Pet", "Formal", "4 s", "6 s", "✓ 8 s"):
        assert label in shown
    assert "🎬 Animate" in shown and "✖ Cancel" in shown
    assert "snow falling" in card.content

    stored = await bot.store.get_card(ANN.id, card_id)
    assert stored is not None and stored.options.custom_elements == ("snow falling",)
    # The largest size, byte for byte, kept in the data folder.
    assert Path(stored.photo_path).parent == bot.settings.photos_dir
    assert Path(stored.photo_path).read_bytes() == photo_bytes()  # noqa: ASYNC240


@pytest.mark.parametrize("bot", [{"veo": VeoCredentials()}], indirect=True)
async def test_without_veo_credentials_the_card_offers_no_veo(bot: Bot) -> None:
    card = bot.fake.message(ANN.id, await bot.card_for(ANN))

    shown = labels(card.buttons)
    assert not any("Veo" in label for label in shown)
    assert not any(label.endswith(" s") for label in shown)  # no Veo durations
    assert "SVD 3.6s 7fps" in shown and "LTX 5s 24fps" in shown


async def test_tapping_an_option_ticks_it_in_place(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)
    messages_before = len(bot.fake.messages(ANN.id))

    bot.fake.press_button(ANN, card_id, "Dramatic")
    await bot.fake.wait_for(
        lambda: "✓ Dramatic" in labels(bot.fake.message(ANN.id, card_id).buttons)
    )

    card = bot.fake.message(ANN.id, card_id)
    assert "Moderate" in labels(card.buttons)  # the old tick is gone
    assert len(bot.fake.messages(ANN.id)) == messages_before  # edited, not a new message
    assert bot.fake.alerts[-1].show_alert is False
    stored = await bot.store.get_card(ANN.id, card_id)
    assert stored is not None and stored.options.intensity is Intensity.DRAMATIC


async def test_choosing_svd_hides_the_veo_durations(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)

    bot.fake.press_button(ANN, card_id, "SVD")
    await bot.ticked(ANN, card_id, "✓ SVD")

    assert "8 s" not in labels(bot.fake.message(ANN.id, card_id).buttons)


async def test_someone_elses_card_gets_an_alert(bot: Bot) -> None:
    # In a group both people see one card; here Ann's card sits on a message Bob can press.
    bot.fake.send_command(BOB, "/help")
    reply = await bot.fake.wait_for_text(BOB.id, "/queue")
    photo = bot.settings.photos_dir / "ann.jpg"
    await bot.store.save_card(
        Card(BOB.id, reply.message_id, ANN.id, 1, str(photo), JobOptions(), created_at=NOW)
    )

    bot.fake.press(BOB, reply.message_id, "c2:i:subtle", strict=False)
    (alert,) = await bot.answers(1)

    assert alert.show_alert and "someone else's" in (alert.text or "")
    card = await bot.store.get_card(BOB.id, reply.message_id)
    assert card is not None and card.options.intensity is Intensity.MODERATE


async def test_stale_or_unknown_buttons_get_an_alert(bot: Bot) -> None:
    bot.fake.send_command(ANN, "/help")
    reply = await bot.fake.wait_for_text(ANN.id, "/queue")

    bot.fake.press(ANN, reply.message_id, "c0:i:subtle", strict=False)  # an old layout
    bot.fake.press(ANN, reply.message_id, "c2:i:subtle", strict=False)  # not a card
    bot.fake.press(ANN, reply.message_id, "j1:99999", strict=False)  # no such job
    alerts = await bot.answers(3)

    assert all(a.show_alert and "expired" in (a.text or "") for a in alerts)


async def test_non_image_document_gets_a_friendly_message(bot: Bot) -> None:
    bot.fake.send_document(ANN, b"%PDF-1.4 ...", file_name="cv.pdf", mime_type="application/pdf")
    # The same sentence the generator gives for a file it cannot read (one text, not three).
    message = await bot.fake.wait_for_text(ANN.id, InvalidImage.user_text)
    assert message.buttons == []


async def test_a_jpg_that_is_not_an_image_is_refused_kindly(bot: Bot) -> None:
    bot.fake.send_document(ANN, b"this is not a jpeg at all", file_name="cat.jpg")
    await bot.fake.wait_for_text(ANN.id, InvalidImage.user_text)
    photos = bot.settings.photos_dir
    assert not photos.exists() or not any(photos.iterdir())


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (photo_bytes((400, 300))[:1500], "damaged"),  # a JPEG cut off mid-upload
        (bomb_png_bytes(), "too many pixels"),  # tiny file, 400 megapixels declared
    ],
)
async def test_damaged_photos_and_bombs_are_refused_before_any_card(
    bot: Bot, data: bytes, says: str
) -> None:
    bot.fake.send_document(ANN, data, file_name="photo.png", mime_type="image/png")
    message = await bot.fake.wait_for_text(ANN.id, says)
    assert message.buttons == []
    photos = bot.settings.photos_dir
    assert not photos.exists() or not any(photos.iterdir())


async def test_oversize_file_is_refused_with_the_limit(bot: Bot) -> None:
    bot.fake.send_document(ANN, photo_bytes(), file_name="huge.jpg", file_size=30 * 1024 * 1024)
    message = await bot.fake.wait_for_text(ANN.id, "too large")
    assert "20 MB" in message.content
    assert not bot.fake.calls("getFile")  # refused before downloading


async def test_image_document_gets_a_card_at_full_resolution(bot: Bot) -> None:
    data = photo_bytes((640, 480), fmt="PNG")
    pushed = bot.fake.send_document(ANN, data, file_name="full.png", mime_type="image/png")
    card = await bot.fake.wait_for_text(ANN.id, "How should I animate")
    await bot.fake.wait_for(lambda: bot.fake.message(ANN.id, card.message_id).buttons)

    assert card.reply_to_message_id == pushed.message_id
    stored = await bot.store.get_card(ANN.id, card.message_id)
    assert stored is not None and stored.photo_path.endswith(".png")
    assert Path(stored.photo_path).read_bytes() == data  # noqa: ASYNC240


# --- Animate, limits and cancel -----------------------------------------------------------


async def test_animate_twice_quickly_makes_one_job(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)
    data = bot.fake.message(ANN.id, card_id).button_data("Animate")

    bot.fake.press(ANN, card_id, data)
    bot.fake.press(ANN, card_id, data)
    await bot.answers(2)
    status = await bot.fake.wait_for_text(ANN.id, "queue")

    jobs = await SqlQueue(bot.store.db).history(ANN.id)
    assert len(jobs) == 1
    assert jobs[0].status is Status.QUEUED and jobs[0].status_message_id == card_id
    assert status.message_id == card_id  # the card became the status message
    assert "You're next" in status.content
    assert labels(status.buttons) == ["✖ Cancel"]
    async with asyncio.timeout(10):
        await bot.worker.woken.wait()
    assert await bot.store.get_user_options(ANN.id) == JobOptions()


async def test_animate_remembers_choices_for_the_next_card(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)
    bot.fake.press_button(ANN, card_id, "Pet")
    await bot.ticked(ANN, card_id, "✓ Pet")
    bot.fake.press_button(ANN, card_id, "Animate")
    await bot.fake.wait_for_text(ANN.id, "queue")

    next_card = bot.fake.message(ANN.id, await bot.card_for(ANN))
    assert "✓ Pet" in labels(next_card.buttons)


@pytest.mark.parametrize("bot", [{"limits": LimitSettings(max_queued_per_user=1)}], indirect=True)
async def test_queue_limit_refuses_with_the_reason(bot: Bot) -> None:
    first, second = await bot.card_for(ANN), await bot.card_for(ANN)
    bot.fake.press_button(ANN, first, "Animate")
    await bot.answers(1)

    bot.fake.press_button(ANN, second, "Animate")
    alerts = await bot.answers(2)

    assert alerts[1].show_alert and "already have 1 clip" in (alerts[1].text or "")
    assert len(await SqlQueue(bot.store.db).history(ANN.id)) == 1
    assert "🎬 Animate" in labels(bot.fake.message(ANN.id, second).buttons)  # card kept


@pytest.mark.parametrize("bot", [{"limits": LimitSettings(veo_user_daily_usd=1.0)}], indirect=True)
async def test_veo_budget_refuses_veo_and_turns_auto_into_svd(bot: Bot) -> None:
    veo_card, auto_card = await bot.card_for(ANN), await bot.card_for(ANN)
    bot.fake.press_button(ANN, veo_card, "Veo")
    await bot.fake.wait_for(
        lambda: "✓ Veo" in str(labels(bot.fake.message(ANN.id, veo_card).buttons))
    )

    bot.fake.press_button(ANN, veo_card, "Animate")
    alerts = await bot.answers(2)
    assert alerts[1].show_alert and "today's Veo budget" in (alerts[1].text or "")

    bot.fake.press_button(ANN, auto_card, "Animate")
    status = await bot.fake.wait_for_text(ANN.id, "local engine")

    (job,) = await SqlQueue(bot.store.db).history(ANN.id)
    assert job.options.backend is Backend.SVD and job.options.duration is None
    assert status.message_id == auto_card


async def test_cancel_a_queued_job_from_its_status_message(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)
    bot.fake.press_button(ANN, card_id, "Animate")
    await bot.fake.wait_for_text(ANN.id, "queue")

    bot.fake.press_button(ANN, card_id, "Cancel")
    status = await bot.fake.wait_for_text(ANN.id, "Cancelled")

    assert status.message_id == card_id and status.buttons == []
    (job,) = await SqlQueue(bot.store.db).history(ANN.id)
    assert job.status is Status.CANCELLED
    assert bot.worker.cancelled == []


async def test_cancel_a_running_job_asks_the_worker_to_stop(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)
    bot.fake.press_button(ANN, card_id, "Animate")
    await bot.fake.wait_for_text(ANN.id, "queue")
    running = await SqlQueue(bot.store.db).claim("gpu0", now=NOW)
    assert running is not None

    bot.fake.press_button(ANN, card_id, "Cancel")
    await bot.fake.wait_for_text(ANN.id, "Stopping")

    assert bot.worker.cancelled == [running.id]
    assert await SqlQueue(bot.store.db).cancel_requested(running.id)


async def test_someone_elses_job_cannot_be_cancelled(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)
    bot.fake.press_button(ANN, card_id, "Animate")
    await bot.fake.wait_for_text(ANN.id, "queue")
    (job,) = await SqlQueue(bot.store.db).history(ANN.id)
    bot.fake.send_command(BOB, "/help")
    reply = await bot.fake.wait_for_text(BOB.id, "/queue")

    bot.fake.press(BOB, reply.message_id, f"j1:{job.id}", strict=False)
    alerts = await bot.answers(2)

    assert alerts[-1].show_alert and "someone else's" in (alerts[-1].text or "")
    assert (await SqlQueue(bot.store.db).get(job.id)).status is Status.QUEUED  # type: ignore[union-attr]


async def test_cancel_command_cancels_the_latest_job(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)
    bot.fake.press_button(ANN, card_id, "Animate")
    await bot.fake.wait_for_text(ANN.id, "queue")

    bot.fake.send_command(ANN, "/cancel")
    await bot.fake.wait_for_text(ANN.id, "Cancelled. (#")

    (job,) = await SqlQueue(bot.store.db).history(ANN.id)
    assert job.status is Status.CANCELLED
    assert bot.fake.message(ANN.id, card_id).content == "✖ Cancelled."


# --- result buttons ----------------------------------------------------------------------


@pytest.mark.parametrize("bot", [{"limits": LimitSettings(veo_user_daily_usd=10.0)}], indirect=True)
async def test_more_motion_under_a_video_queues_a_new_job_each_press(bot: Bot) -> None:
    card_id = await bot.card_for(ANN)
    bot.fake.press_button(ANN, card_id, "Animate")
    await bot.fake.wait_for_text(ANN.id, "queue")
    (done,) = await SqlQueue(bot.store.db).history(ANN.id)
    await SqlQueue(bot.store.db).claim("gpu0", now=NOW)
    await SqlQueue(bot.store.db).finish(
        done.id, Outcome(Status.DONE, used_backend=Backend.SVD), now=NOW + 60
    )
    app_bot = bot.app.bot
    video = await app_bot.send_message(ANN.id, "(the clip)", reply_markup=result_keyboard(done.id))

    bot.fake.press_button(ANN, video.message_id, "More motion")
    bot.fake.press_button(ANN, video.message_id, "Other engine")
    # Each new job gets its own status message, with Cancel once the job is queued.
    await bot.fake.wait_for(
        lambda: (
            sum("✖ Cancel" in labels(m.buttons) for m in bot.fake.messages(ANN.id).values()) >= 3
        )
    )

    jobs = await SqlQueue(bot.store.db).history(ANN.id)
    more, other = sorted((j for j in jobs if j.id != done.id), key=lambda j: j.id)
    assert more.options.intensity is Intensity.DRAMATIC
    assert more.photo_path == done.photo_path and more.status is Status.QUEUED
    assert other.options.backend is Backend.VEO  # made with SVD, so the other is Veo
    assert more.status_message_id != other.status_message_id


# --- access and admin --------------------------------------------------------------------


async def test_unknown_user_is_refused_with_their_id(bot: Bot) -> None:
    bot.fake.send_photo(STRANGER, photo_bytes())
    message = await bot.fake.wait_for_text(STRANGER.id, "private bot")

    assert str(STRANGER.id) in message.content
    assert not bot.fake.calls("getFile")  # nothing of theirs was downloaded


async def test_allow_persists_and_lets_the_user_in(bot: Bot) -> None:
    bot.fake.send_command(ANN, f"/allow {STRANGER.id}")  # not an admin
    await bot.fake.wait_for_text(ANN.id, "for the bot's admins")
    assert await bot.store.allowed_override(STRANGER.id) is None

    bot.fake.send_command(ADMIN, f"/allow {STRANGER.id}")
    await bot.fake.wait_for_text(ADMIN.id, "is now allowed")
    assert await bot.store.allowed_override(STRANGER.id) is True

    bot.fake.send_command(STRANGER, "/start")
    await bot.fake.wait_for_text(STRANGER.id, "I turn a photo")

    bot.fake.send_command(ADMIN, f"/deny {ANN.id}")
    await bot.fake.wait_for_text(ADMIN.id, "is now denied")
    bot.fake.send_command(ANN, "/start")
    await bot.fake.wait_for_text(ANN.id, "private bot")


@pytest.mark.parametrize(
    "command", ["/stats", "/pause", "/resume", f"/allow {STRANGER.id}", f"/deny {BOB.id}"]
)
async def test_every_admin_command_refuses_a_user_and_changes_nothing(
    bot: Bot, command: str
) -> None:
    assert (await bot.reply(ANN, command)).content == texts.not_admin()
    assert not bot.worker.paused
    assert await bot.store.allowed_override(STRANGER.id) is None
    assert await bot.store.allowed_override(BOB.id) is None


async def test_admin_pause_resume_and_stats(bot: Bot) -> None:
    bot.fake.send_command(ADMIN, "/pause")
    await bot.fake.wait_for_text(ADMIN.id, "Paused")
    assert bot.worker.paused

    bot.fake.send_command(ADMIN, "/stats")
    stats = await bot.fake.wait_for_text(ADMIN.id, "Jobs:")
    assert "Queue: paused, 1 GPU consumer" in stats.content

    bot.fake.send_command(ADMIN, "/resume")
    await bot.fake.wait_for_text(ADMIN.id, "Resumed")
    assert not bot.worker.paused


async def test_history_queue_and_settings_commands(bot: Bot) -> None:
    # Each command's own answer is checked (the first message after it), not any message that
    # happens to contain the words: /queue's answer names the job too.
    assert "haven't animated anything" in (await bot.reply(ANN, "/history")).content

    card_id = await bot.card_for(ANN)
    bot.fake.press_button(ANN, card_id, "Animate")
    await bot.fake.wait_for_text(ANN.id, "queue")
    (job,) = await SqlQueue(bot.store.db).history(ANN.id)

    assert f"#{job.id}: number 1 in the queue" in (await bot.reply(ANN, "/queue")).content
    history = (await bot.reply(ANN, "/history")).content
    assert history.startswith("Your last clips:") and f"#{job.id} " in history
    assert "Your defaults" in (await bot.reply(ANN, "/settings")).content


# --- decisions -----------------------------------------------------------------------------


def _settings(**limits: Any) -> Settings:
    limits.setdefault("veo_user_daily_usd", 10.0)  # room for one 8 s clip ($3.20)
    return Settings(limits=LimitSettings(**limits), veo=VeoCredentials(api_key="k"))


def test_access_rules() -> None:
    settings = Settings(access=AccessSettings(allowed_users=frozenset({1}), admins=frozenset({2})))
    assert check_access(settings, 1, None)
    assert not check_access(settings, 1, False)  # /deny beats the config's allowlist
    assert check_access(settings, 2, False)  # admins cannot lock themselves out
    assert not check_access(settings, 3, None)
    assert check_access(settings, 3, True)
    public = dataclasses.replace(settings, access=AccessSettings(public=True))
    assert check_access(public, 3, None)


@pytest.mark.parametrize(
    ("usage", "limits", "expected"),
    [
        (Usage(3, 0, 0, 0), {}, "already have 3"),
        (Usage(0, 20, 0, 0), {}, "20 clips today"),
        (Usage(0, 0, 0, 29.0), {}, None),  # explicit SVD ignores Veo budgets
    ],
)
def test_limits_refuse_with_reasons(usage: Usage, limits: dict, expected: str | None) -> None:
    check: Callable[[], Any] = lambda: check_limits(  # noqa: E731
        _settings(**limits), JobOptions(backend=Backend.SVD), usage, 3.2
    )
    if expected is None:
        assert check() == (JobOptions(backend=Backend.SVD), None)
    else:
        with pytest.raises(Refused, match=expected):
            check()


def test_monthly_veo_budget_falls_back_for_auto() -> None:
    nearly_spent = Usage(0, 0, 0, _settings().limits.veo_month_usd - 1.0)  # $1 left, clip $3.20
    options, note = check_limits(_settings(), JobOptions(duration=8), nearly_spent, 3.2)
    assert options.backend is Backend.SVD and options.duration is None
    assert note is not None and "month" in note
    with pytest.raises(Refused, match="month"):
        check_limits(_settings(), JobOptions(backend=Backend.VEO), nearly_spent, 3.2)
    with pytest.raises(Refused, match="isn't set up"):
        check_limits(_settings(), JobOptions(backend=Backend.VEO), Usage(0, 0, 0, 0), None)


@pytest.mark.parametrize("engine", [Backend.LTX, Backend.WAN])
def test_a_local_engine_picked_on_the_card_stays_when_the_veo_budget_is_spent(engine) -> None:
    spent = Usage(0, 0, 0, _settings().limits.veo_month_usd)

    assert check_limits(_settings(), JobOptions(backend=engine), spent, 3.2) == (
        JobOptions(backend=engine),
        None,
    )


def test_more_and_less_motion_step_intensity_then_bands() -> None:
    assert shift_motion(JobOptions(), 1).intensity is Intensity.DRAMATIC
    assert shift_motion(JobOptions(), -1).intensity is Intensity.SUBTLE
    top = shift_motion(JobOptions(intensity=Intensity.DRAMATIC), 1)
    assert top.motion == 255 and top.intensity is Intensity.DRAMATIC
    bottom = shift_motion(JobOptions(intensity=Intensity.SUBTLE), -1)
    assert bottom.motion == 25  # from the gentle band down to very subtle's middle
    assert shift_motion(bottom, 1).motion == 75


def test_other_engine_swaps_what_made_the_clip() -> None:
    veo = JobOptions(backend=Backend.VEO, duration=6)
    assert result_options(veo, "other", Backend.VEO, True).backend is Backend.SVD
    assert result_options(veo, "other", Backend.VEO, True).duration is None
    assert result_options(JobOptions(), "other", None, True).backend is Backend.SVD
    assert result_options(JobOptions(), "other", Backend.SVD, True).backend is Backend.VEO
    with pytest.raises(Refused):
        result_options(JobOptions(), "other", Backend.SVD, False)
    assert result_options(veo, "again", Backend.VEO, True) == veo


def test_other_engine_moves_between_local_engines_when_veo_is_not_set_up() -> None:
    offered = [Backend.LTX, Backend.SVD]
    ltx = JobOptions(backend=Backend.LTX)
    assert result_options(ltx, "other", Backend.LTX, False, offered).backend is Backend.SVD
    assert result_options(JobOptions(), "other", Backend.SVD, False, offered).backend is Backend.LTX
    assert result_options(ltx, "other", Backend.LTX, True, offered).backend is Backend.VEO
    veo = JobOptions(backend=Backend.VEO, duration=6)
    assert result_options(veo, "other", Backend.VEO, True, offered).backend is Backend.LTX


def test_eta_counts_the_jobs_ahead_and_the_running_one() -> None:
    history = {Backend.SVD: [60.0, 80.0, 70.0], Backend.VEO: []}
    assert estimate_wait(1, history, None) == 70.0
    assert estimate_wait(3, history, 30.0) == 30.0 + 3 * 70.0
    # Two consumers take the jobs ahead two at a time.
    assert estimate_wait(3, history, 30.0, consumers=2) == 30.0 + 2 * 70.0
    assert estimate_wait(2, history, None, consumers=2) == 70.0
    assert estimate_wait(2, {Backend.SVD: []}, 10.0) is None  # no history: no made-up number
    assert running_remaining(NOW - 50.0, NOW, history) == 20.0
    assert running_remaining(NOW - 500.0, NOW, history) == 0.0


async def test_plain_text_gets_the_help(bot: Bot) -> None:
    bot.fake.send_text(ANN, "hello?")
    await bot.fake.wait_for_text(ANN.id, "Send a photo, pick options, press Animate")
