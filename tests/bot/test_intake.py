"""Updates reach their handlers whatever happens to the bot: a kill while a photo is being
handled, a webhook answered only once the update is handled, taps answered while card edits
wait for Telegram's rate limit."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from telegram import Bot, Update
from telegram.ext import Application

from bot.app import ReplyFirstRateLimiter, build_app
from bot.config import AccessSettings
from bot.intake import MIN_BUSY_GAP_S, confirm_offset, serve
from bot.jobs import JobOptions, Outcome, Status
from bot.keyboards import CardOption, result_keyboard, settings_keyboard
from bot.queue import SqlQueue
from bot.store import Card, Store
from generator.config import VeoCredentials
from generator.options import Backend, Intensity
from tests.bot.test_handlers import ANN as ANN_IN_PROCESS
from tests.bot.test_handlers import RecordingWorker, make_settings
from tests.support.fake_botapi import TOKEN, FakeBotApi, FakeUser
from tests.support.images import photo_bytes

ROOT = Path(__file__).resolve().parents[2]
ANN = FakeUser(4242, "Ann")
SLOW = 60.0  # a Python process importing torch on a shared 2-core machine


def write_config(tmp_path: Path, fake: FakeBotApi, telegram_extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[telegram]
base_url = "{fake.base_url}"
base_file_url = "{fake.base_file_url}"
{telegram_extra}

[access]
allowed_users = [{ANN.id}]

[worker]
gpu_process = false

[data]
dir = "{tmp_path / "data"}"
"""
    )
    return path


def start_bot(config: Path, log: Path, **extra_env: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
    env["TELEGRAM_BOT_TOKEN"] = TOKEN
    env.update(extra_env)
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def cards(fake: FakeBotApi, photo_message_id: int, user: FakeUser = ANN) -> list[Any]:
    """Settings cards (with their buttons) the bot sent in reply to one photo."""
    return [
        m
        for m in fake.messages(user.id).values()
        if m.reply_to_message_id == photo_message_id and "Animate" in str(m.buttons)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(bot: subprocess.Popen, log: Path) -> None:
    bot.send_signal(signal.SIGTERM)
    assert bot.wait(timeout=SLOW) == 0, log.read_text()[-3000:]


def test_the_offset_confirms_only_updates_whose_handling_finished():
    assert confirm_offset({}, next_new=0, now=5.0) == 0
    assert confirm_offset({}, next_new=12, now=5.0) == 12
    # 9 still runs: 10 and 11 finished, but confirming them would confirm 9 too.
    assert confirm_offset({9: 4.0, 11: 4.5}, next_new=12, now=5.0) == 9
    # A handler hung for minutes no longer holds every later update back.
    assert confirm_offset({9: 0.0, 11: 990.0}, next_new=12, now=1000.0) == 11


async def test_a_photo_being_handled_when_the_bot_is_killed_gets_its_card_once_after_restart(
    tmp_path, fake_botapi
):
    fake = fake_botapi
    config = write_config(tmp_path, fake)
    log = tmp_path / "bot.log"
    # Telegram keeps the file link waiting: the bot is inside the photo handler when it dies.
    download = fake.hold("getFile")
    bot = start_bot(config, log)
    try:
        photo = fake.send_photo(ANN, photo_bytes((96, 64)))
        await fake.wait_for(lambda: download.arrived, timeout=SLOW, what="the photo's getFile")
        os.killpg(bot.pid, signal.SIGKILL)  # power cut mid-handler
        bot.wait(timeout=30)
        download.release()
        assert cards(fake, photo.message_id) == []

        bot = start_bot(config, log)
        await fake.wait_for(
            lambda: cards(fake, photo.message_id), timeout=SLOW, what="the photo's card"
        )
        stop(bot, log)
        assert len(cards(fake, photo.message_id)) == 1
        assert fake.pending_updates == 0  # handled, so confirmed
    finally:
        print(log.read_text()[-4000:])  # shown by pytest when the test fails
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()


async def test_webhook_answers_telegram_only_after_the_photo_got_its_card(tmp_path, fake_botapi):
    fake = fake_botapi
    port = free_port()
    fake.webhook_proxy_to = f"http://127.0.0.1:{port}/telegram"
    config = write_config(
        tmp_path,
        fake,
        f"""mode = "webhook"
webhook_url = "https://bot.example.org/telegram"
webhook_listen = "127.0.0.1"
webhook_port = {port}
webhook_path = "telegram"
""",
    )
    log = tmp_path / "bot.log"
    download = fake.hold("download")
    bot = start_bot(config, log, TELEGRAM_WEBHOOK_SECRET="s3cret-header-value")
    try:
        photo = fake.send_photo(ANN, photo_bytes((96, 64)))
        await fake.wait_for(lambda: download.arrived, timeout=SLOW, what="the photo's download")
        # Telegram has had no answer while the handler waits: it would deliver it again.
        assert [d for d in fake.webhook_deliveries if d.update_id == photo.update_id] == []
        assert fake.pending_updates == 1

        download.release()
        delivery = await fake.wait_for(
            lambda: next((d for d in fake.webhook_deliveries if d.status == 200), None),
            timeout=SLOW,
            what="the webhook's 200",
        )
        assert delivery.update_id == photo.update_id
        [card] = cards(fake, photo.message_id)
        buttons_added = max(
            c.index
            for c in fake.calls("editMessageReplyMarkup", ok=True)
            if c.params["message_id"] == card.message_id
        )
        assert buttons_added < delivery.calls_before  # the card was whole before the 200
        stop(bot, log)
        assert len(cards(fake, photo.message_id)) == 1
    finally:
        print(log.read_text()[-4000:])
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()


# --- handlers run twice -------------------------------------------------------------------
# After a kill mid-handler Telegram sends the update again: handling it twice does it once.


@pytest.fixture
async def app(fake_botapi: FakeBotApi, tmp_path: Path) -> AsyncIterator[Application]:
    settings = make_settings(fake_botapi, tmp_path, veo=VeoCredentials())
    store = await Store.open(settings.db_path)
    application = build_app(settings, store, RecordingWorker(store), rate_limiter=False)
    async with application:
        yield application
    await store.close()


async def twice(app: Application, fake: FakeBotApi, update_id: int) -> None:
    update = Update.de_json(fake.update(update_id), app.bot)
    await app.process_update(update)
    await app.process_update(update)


async def test_a_photo_handled_twice_gets_one_card(app, fake_botapi):
    photo = fake_botapi.send_photo(ANN_IN_PROCESS, photo_bytes())
    await twice(app, fake_botapi, photo.update_id)
    assert len(cards(fake_botapi, photo.message_id, ANN_IN_PROCESS)) == 1


async def test_a_result_press_handled_twice_queues_one_job(app, fake_botapi):
    fake = fake_botapi
    store: Store = app.bot_data.store
    photo = fake.send_photo(ANN_IN_PROCESS, photo_bytes())
    await app.process_update(Update.de_json(fake.update(photo.update_id), app.bot))
    [card] = cards(fake, photo.message_id, ANN_IN_PROCESS)
    pressed = fake.press_button(ANN_IN_PROCESS, card.message_id, "Animate")
    await app.process_update(Update.de_json(fake.update(pressed.update_id), app.bot))
    [done] = await SqlQueue(store.db).history(ANN_IN_PROCESS.id)
    await SqlQueue(store.db).claim("gpu0", now=time.time())
    await SqlQueue(store.db).finish(
        done.id, Outcome(Status.DONE, used_backend=Backend.SVD), now=time.time()
    )
    video = await app.bot.send_message(
        ANN_IN_PROCESS.id, "(the clip)", reply_markup=result_keyboard(done.id)
    )

    again = fake.press_button(ANN_IN_PROCESS, video.message_id, "Again")
    await twice(app, fake, again.update_id)

    assert len(await SqlQueue(store.db).history(ANN_IN_PROCESS.id)) == 2  # the clip and one new job


# --- taps under load ----------------------------------------------------------------------


async def settings_cards(fake: FakeBotApi, store: Store, users: list[FakeUser]) -> dict[int, int]:
    """One settings card per user, sent by a plain Bot: each user's card message id."""
    cards: dict[int, int] = {}
    async with Bot(TOKEN, base_url=fake.base_url) as plain:
        for user in users:
            card = await plain.send_message(
                user.id, "card", reply_markup=settings_keyboard(JobOptions())
            )
            await store.save_card(
                Card(user.id, card.message_id, user.id, 1, "/gone.jpg", JobOptions(), 0.0)
            )
            cards[user.id] = card.message_id
    return cards


async def test_taps_are_answered_while_card_edits_wait_for_telegrams_rate_limit(
    fake_botapi, tmp_path
):
    fake = fake_botapi
    users = [FakeUser(5000 + i, f"User{i}") for i in range(20)]
    settings = make_settings(
        fake, tmp_path, access=AccessSettings(allowed_users=frozenset(u.id for u in users))
    )
    # More tappers than update slots, and a sending budget spent after one edit.
    assert settings.telegram.concurrent_updates < len(users)
    store = await Store.open(settings.db_path)
    limiter = ReplyFirstRateLimiter(overall_max_rate=1, overall_time_period=3600)
    app = build_app(settings, store, RecordingWorker(store), rate_limiter=limiter)
    app.bot_data.editor.flush_grace_s = 0.0  # the budget never comes back in this test
    cards = await settings_cards(fake, store, users)
    stop = asyncio.Event()
    running = asyncio.create_task(serve(app, settings.telegram, stop))
    try:
        await fake.wait_for(lambda: fake.polling, what="the bot polling")
        for user in users:
            fake.press(user, cards[user.id], CardOption("i", Intensity.DRAMATIC.value).pack())

        answered = await fake.wait_for(
            lambda: len(fake.alerts) == len(users) and fake.alerts, what="every tap answered"
        )
        assert {a.user_id for a in answered} == {u.id for u in users}
        assert len(fake.calls("editMessageText")) <= 1  # the rest wait for the limit
        # Every tap's handling finished (so Telegram got its confirmation) with the edits
        # still waiting, and what each user chose is recorded, whatever the card shows.
        await fake.wait_for(lambda: fake.pending_updates == 0, what="every tap confirmed")
        assert len(fake.calls("editMessageText")) <= 1
        for user in users:
            card = await store.get_card(user.id, cards[user.id])
            assert card is not None and card.options.intensity is Intensity.DRAMATIC
    finally:
        stop.set()
        await running


async def test_a_burst_of_taps_is_fetched_without_polling_after_every_finished_handler(
    fake_botapi, tmp_path
):
    # Telegram answers getUpdates at once while updates are unconfirmed, with the whole
    # window again: polling after each finished tap decoded the same updates over and over.
    fake = fake_botapi
    users = [FakeUser(6000 + i, f"User{i}") for i in range(40)]
    settings = make_settings(
        fake, tmp_path, access=AccessSettings(allowed_users=frozenset(u.id for u in users))
    )
    store = await Store.open(settings.db_path)
    app = build_app(settings, store, RecordingWorker(store), rate_limiter=False)
    cards = await settings_cards(fake, store, users)
    stop = asyncio.Event()
    running = asyncio.create_task(serve(app, settings.telegram, stop))
    try:
        await fake.wait_for(lambda: fake.polling, what="the bot polling")
        for user in users:
            fake.press(user, cards[user.id], CardOption("i", Intensity.DRAMATIC.value).pack())
        await fake.wait_for(lambda: len(fake.alerts) == len(users), what="every tap answered")
        await fake.wait_for(lambda: fake.pending_updates == 0, what="every tap confirmed")
    finally:
        stop.set()
        await running
    # (The one short poll at exit, limit=1, only confirms what was handled.)
    polls = [c for c in fake.calls("getUpdates") if c.ok and c.params.get("limit") != 1]
    gaps = [
        later.at - earlier.at
        for earlier, later in itertools.pairwise(polls)
        if earlier.result  # the bot had updates in hand: it was busy when it asked again
    ]
    assert gaps, "the taps came in some poll"
    assert min(gaps) >= MIN_BUSY_GAP_S
