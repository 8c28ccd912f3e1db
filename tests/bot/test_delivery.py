"""Telegram side effects against the loopback Bot API: throttled status edits that survive
429, 5xx and deleted messages; uploads that retry, reply to the photo and report blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
from telegram import Bot

from bot.delivery import USER_BLOCKED, DeliveryFailed, StatusEditor, send_video, tell
from bot.keyboards import result_keyboard
from tests.support.fake_botapi import TOKEN, FakeBotApi, FakeUser
from tests.support.images import photo_bytes

ANN = FakeUser(101, "Ann")
CLIP_BYTES = b"\x00\x00\x00\x18ftypmp42 not really a video: the fake stores bytes"


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def bot(fake_botapi: FakeBotApi):
    async with Bot(
        TOKEN, base_url=fake_botapi.base_url, base_file_url=fake_botapi.base_file_url
    ) as bot:
        yield bot


@pytest.fixture
async def card(bot: Bot, fake_botapi: FakeBotApi) -> int:
    fake_botapi.send_photo(ANN, photo_bytes())
    return (await bot.send_message(ANN.id, "queued")).message_id


def edits(fake: FakeBotApi) -> list[str]:
    return [c.params["text"] for c in fake.calls("editMessageText")]


async def test_edits_are_throttled_per_message_and_skip_unchanged_text(
    bot, fake_botapi: FakeBotApi, card: int
):
    clock = ManualClock()
    editor = StatusEditor(bot, interval_s=3.0, clock=clock)

    assert await editor.edit(ANN.id, card, "step 1/25")
    assert not await editor.edit(ANN.id, card, "step 2/25")  # 0 s later: throttled
    clock.now += 3.0
    assert await editor.edit(ANN.id, card, "step 2/25")
    clock.now += 3.0
    assert await editor.edit(ANN.id, card, "step 2/25")  # same text: nothing sent
    assert await editor.edit(ANN.id, card, "Cancelled", force=True)  # finals skip the throttle

    assert edits(fake_botapi) == ["step 1/25", "step 2/25", "Cancelled"]
    assert fake_botapi.message(ANN.id, card).text == "Cancelled"


async def test_rate_limit_and_server_errors_skip_the_edit_without_raising(
    bot, fake_botapi: FakeBotApi, card: int
):
    clock = ManualClock()
    editor = StatusEditor(bot, interval_s=0.0, clock=clock)
    fake_botapi.fail_next("editMessageText", status=429, retry_after=5)
    assert not await editor.edit(ANN.id, card, "step 1/25")
    fake_botapi.fail_next("editMessageText", status=502)
    assert not await editor.edit(ANN.id, card, "step 2/25")
    assert await editor.edit(ANN.id, card, "step 3/25")
    assert fake_botapi.message(ANN.id, card).text == "step 3/25"


async def test_deleted_status_message_is_left_alone_and_tell_sends_a_new_one(
    bot, fake_botapi: FakeBotApi, card: int
):
    editor = StatusEditor(bot, interval_s=0.0, clock=ManualClock())
    await bot.delete_message(ANN.id, card)  # the user deleted the card

    assert not await editor.edit(ANN.id, card, "step 1/25")
    assert not await editor.edit(ANN.id, card, "step 2/25")
    assert len(fake_botapi.calls("editMessageText")) == 1  # it stopped trying

    await tell(bot, editor, chat_id=ANN.id, status_message_id=card, reply_to=None, text="😞 Failed")
    assert fake_botapi.last_message(ANN.id).text == "😞 Failed"


async def test_not_modified_counts_as_shown(bot, fake_botapi: FakeBotApi, card: int):
    editor = StatusEditor(bot, interval_s=0.0, clock=ManualClock())
    # Another editor (or a restart) already showed this text.
    await bot.edit_message_text("step 1/25", chat_id=ANN.id, message_id=card)
    assert await editor.edit(ANN.id, card, "step 1/25")


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "7.mp4"
    path.write_bytes(CLIP_BYTES)
    return path


async def test_video_replies_to_the_photo_with_caption_and_buttons(
    bot, fake_botapi: FakeBotApi, clip: Path
):
    photo = fake_botapi.send_photo(ANN, photo_bytes())
    sent = await send_video(
        bot,
        chat_id=ANN.id,
        video_path=clip,
        reply_to=photo.message_id,
        caption="Made with Veo",
        width=32,
        height=32,
        duration=2.4,
        reply_markup=result_keyboard(7),
    )
    (video,) = fake_botapi.videos(ANN.id)
    assert (video.file_id, video.message_id) == (sent.file_id, sent.message_id)
    assert video.data == CLIP_BYTES
    assert video.reply_to_message_id == photo.message_id
    assert (video.caption, video.width, video.duration) == ("Made with Veo", 32, 2)
    assert video.supports_streaming
    assert video.reply_markup == result_keyboard(7).to_dict()


async def test_video_still_arrives_when_the_photo_was_deleted(bot, fake_botapi, clip: Path):
    fake_botapi.send_photo(ANN, photo_bytes())
    await send_video(bot, chat_id=ANN.id, video_path=clip, reply_to=999_999, caption="c")
    (video,) = fake_botapi.videos(ANN.id)
    assert video.reply_to_message_id is None


async def test_upload_retries_after_429_and_network_errors(bot, fake_botapi, clip: Path):
    fake_botapi.send_photo(ANN, photo_bytes())
    fake_botapi.fail_next("sendVideo", status=429, retry_after=1)
    fake_botapi.fail_next("sendVideo", status=500)
    await send_video(
        bot, chat_id=ANN.id, video_path=clip, reply_to=None, caption="c", backoff_s=0.01
    )
    assert len(fake_botapi.videos(ANN.id)) == 1
    assert len(fake_botapi.calls("sendVideo", ok=False)) == 2


async def test_upload_gives_up_after_bounded_attempts(bot, fake_botapi, clip: Path):
    fake_botapi.send_photo(ANN, photo_bytes())
    fake_botapi.fail_next("sendVideo", status=502, count=10)
    with pytest.raises(DeliveryFailed):
        await send_video(
            bot,
            chat_id=ANN.id,
            video_path=clip,
            reply_to=None,
            caption="c",
            attempts=3,
            backoff_s=0.01,
        )
    assert len(fake_botapi.calls("sendVideo")) == 3


async def test_blocked_user_is_a_delivery_failure_not_a_crash(bot, fake_botapi, clip: Path):
    fake_botapi.send_photo(ANN, photo_bytes())
    fake_botapi.fail_next("sendVideo", status=403)
    with pytest.raises(DeliveryFailed) as caught:
        await send_video(bot, chat_id=ANN.id, video_path=clip, reply_to=None, caption="c")
    assert caught.value.reason == USER_BLOCKED
    assert len(fake_botapi.calls("sendVideo")) == 1  # a block is not retried
