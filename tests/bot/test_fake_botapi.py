"""The loopback Bot API answers the real PTB Bot and Application the way Telegram would."""

import asyncio
import io
import time

import pytest
from PIL import Image
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, Update
from telegram.error import BadRequest, EndPointNotFound, Forbidden, NetworkError, RetryAfter
from telegram.ext import ApplicationBuilder, CommandHandler, ContextTypes

from tests.support.fake_botapi import (
    BOT_ID,
    BOT_USERNAME,
    TOKEN,
    FakeBotApi,
    FakeUser,
)

ANN = FakeUser(id=4242, first_name="Ann")
BOB = FakeUser(id=5151, first_name="Bob")


def jpeg(width: int = 1000, height: int = 600) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 90, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_bot(fake: FakeBotApi) -> Bot:
    return Bot(TOKEN, base_url=fake.base_url, base_file_url=fake.base_file_url)


async def test_get_me_is_the_test_bot(fake_botapi: FakeBotApi) -> None:
    async with make_bot(fake_botapi) as bot:
        me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (BOT_ID, BOT_USERNAME, True)


async def test_long_poll_returns_a_photo_pushed_while_waiting(fake_botapi: FakeBotApi) -> None:
    async with make_bot(fake_botapi) as bot:
        poll = asyncio.create_task(bot.get_updates(timeout=30))
        await fake_botapi.wait_for(lambda: fake_botapi.polling, what="a parked getUpdates")
        pushed = fake_botapi.send_photo(ANN, jpeg(), caption="animate me")
        updates = await asyncio.wait_for(poll, 5)

    [update] = updates
    message = update.message
    assert update.update_id == pushed.update_id
    assert message.message_id == pushed.message_id
    assert message.caption == "animate me"
    assert message.from_user.id == ANN.id and message.chat.id == ANN.id
    widths = [size.width for size in message.photo]
    assert widths == sorted(widths) and widths[-1] == 1000 and len(widths) > 1
    assert message.photo[-1].file_id == pushed.file_id


async def test_offset_confirms_updates(fake_botapi: FakeBotApi) -> None:
    first = fake_botapi.send_text(ANN, "one")
    second = fake_botapi.send_command(ANN, "/start deep-link")
    async with make_bot(fake_botapi) as bot:
        both = await bot.get_updates(timeout=0)
        rest = await bot.get_updates(offset=first.update_id + 1, timeout=0)
        none = await bot.get_updates(offset=second.update_id + 1, timeout=0)

    assert [u.update_id for u in both] == [first.update_id, second.update_id]
    assert [u.message.text for u in rest] == ["/start deep-link"]
    assert rest[0].message.entities[0].type == "bot_command"
    assert none == () and fake_botapi.pending_updates == 0


async def test_empty_long_poll_returns_after_its_timeout(fake_botapi: FakeBotApi) -> None:
    async with make_bot(fake_botapi) as bot:
        started = time.monotonic()
        updates = await bot.get_updates(timeout=1)
    assert updates == ()
    assert time.monotonic() - started < 5


async def test_stopping_the_server_releases_a_parked_long_poll() -> None:
    fake = FakeBotApi().start()
    try:
        async with make_bot(fake) as bot:
            poll = asyncio.create_task(bot.get_updates(timeout=60))
            await fake.wait_for(lambda: fake.polling, what="a parked getUpdates")
            await asyncio.to_thread(fake.stop)
            updates = await asyncio.wait_for(poll, 5)
    finally:
        fake.stop()
    assert updates == ()


async def test_downloaded_photo_has_the_sent_bytes(fake_botapi: FakeBotApi) -> None:
    data = jpeg()
    pushed = fake_botapi.send_photo(ANN, data)
    async with make_bot(fake_botapi) as bot:
        telegram_file = await bot.get_file(pushed.file_id)
        downloaded = await telegram_file.download_as_bytearray()
        buffer = io.BytesIO()
        await telegram_file.download_to_memory(buffer)
    assert bytes(downloaded) == data == buffer.getvalue()
    assert telegram_file.file_size == len(data)


async def test_document_over_20_mb_cannot_be_fetched(fake_botapi: FakeBotApi) -> None:
    pushed = fake_botapi.send_document(ANN, b"%PDF", "huge.png", "image/png", file_size=21 << 20)
    async with make_bot(fake_botapi) as bot:
        with pytest.raises(BadRequest, match="too big"):
            await bot.get_file(pushed.file_id)


async def test_sent_video_is_captured_and_can_be_resent_by_file_id(
    fake_botapi: FakeBotApi,
) -> None:
    request = fake_botapi.send_photo(ANN, jpeg())
    thumb = jpeg(64, 36)
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Again", callback_data="again:1")]])
    async with make_bot(fake_botapi) as bot:
        sent = await bot.send_video(
            ANN.id,
            b"\x00\x00\x00\x18ftypmp42\r\n\x00binary\r\n--",
            caption="Your clip",
            thumbnail=InputFile(thumb, filename="thumb.jpg"),  # as bot.delivery sends it
            width=576,
            height=320,
            duration=2,
            supports_streaming=True,
            reply_to_message_id=request.message_id,
            reply_markup=keyboard,
            filename="clip.mp4",
        )
        again = await bot.send_video(BOB.id, sent.video.file_id)

    video = await fake_botapi.wait_for_video(ANN.id)
    assert video.data == b"\x00\x00\x00\x18ftypmp42\r\n\x00binary\r\n--"
    assert video.thumbnail == thumb and sent.video.thumbnail.width == 64
    assert (video.width, video.height, video.duration) == (576, 320, 2)
    assert video.supports_streaming is True and video.caption == "Your clip"
    assert video.reply_to_message_id == request.message_id
    assert video.reply_markup == keyboard.to_dict() and video.file_name == "clip.mp4"
    assert sent.video.file_id == video.file_id and sent.caption == "Your clip"
    resent = await fake_botapi.wait_for_video(BOB.id)
    assert resent.resent and resent.data == video.data
    assert again.video.file_unique_id == sent.video.file_unique_id


async def test_edits_and_deletions_show_in_messages(fake_botapi: FakeBotApi) -> None:
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data="c:1")]])
    async with make_bot(fake_botapi) as bot:
        card = await bot.send_message(ANN.id, "Queued: position 2", reply_markup=keyboard)
        note = await bot.send_message(ANN.id, "Tip")
        await bot.edit_message_text("Queued: position 1", ANN.id, card.message_id)
        with pytest.raises(BadRequest, match="not modified"):
            await bot.edit_message_text("Queued: position 1", ANN.id, card.message_id)
        await bot.delete_message(ANN.id, note.message_id)
        with pytest.raises(BadRequest, match="not found"):
            await bot.edit_message_text("Tip 2", ANN.id, note.message_id)

    assert note.message_id == card.message_id + 1
    shown = fake_botapi.messages(ANN.id)
    assert list(shown) == [card.message_id]
    # Telegram drops the keyboard when an edit does not repeat it.
    assert shown[card.message_id].text == "Queued: position 1"
    assert shown[card.message_id].reply_markup is None
    assert (await fake_botapi.wait_for_text(ANN.id, "position 1")).edits == 1


async def test_button_press_reaches_the_bot_and_its_answer_is_recorded(
    fake_botapi: FakeBotApi,
) -> None:
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Zoom in", callback_data="m1:zoom")]])
    async with make_bot(fake_botapi) as bot:
        card = await bot.send_message(ANN.id, "Pick a motion", reply_markup=keyboard)
        pressed = fake_botapi.press_button(ANN, card.message_id, "Zoom")
        [update] = await bot.get_updates(timeout=0)
        query = update.callback_query
        await bot.answer_callback_query(query.id, "Zooming", show_alert=True)
        with pytest.raises(BadRequest, match=r"(?i)query is too old"):
            await bot.answer_callback_query("no-such-query")

    assert query.id == pressed.callback_query_id and query.data == "m1:zoom"
    assert query.from_user.id == ANN.id and query.message.message_id == card.message_id
    [alert] = fake_botapi.alerts
    assert (alert.text, alert.show_alert, alert.user_id) == ("Zooming", True, ANN.id)
    with pytest.raises(AssertionError, match="no button"):
        fake_botapi.press(ANN, card.message_id, "m1:forged")


async def test_callback_data_over_64_bytes_is_refused(fake_botapi: FakeBotApi) -> None:
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="x" * 65)]])
    async with make_bot(fake_botapi) as bot:
        with pytest.raises(BadRequest, match=r"(?i)button_data_invalid"):
            await bot.send_message(ANN.id, "card", reply_markup=keyboard)
    assert fake_botapi.messages(ANN.id) == {}


async def test_injected_429_surfaces_as_retry_after_once(fake_botapi: FakeBotApi) -> None:
    fake_botapi.fail_next("editMessageText", retry_after=3)
    async with make_bot(fake_botapi) as bot:
        card = await bot.send_message(ANN.id, "50%")
        with pytest.raises(RetryAfter) as caught:
            await bot.edit_message_text("60%", ANN.id, card.message_id)
        await bot.edit_message_text("70%", ANN.id, card.message_id)

    # The message, not .retry_after: that attribute is mid-deprecation (int -> timedelta).
    assert "Retry in 3 seconds" in str(caught.value)
    assert fake_botapi.message(ANN.id, card.message_id).text == "70%"
    assert [c.status for c in fake_botapi.calls("editMessageText")] == [429, 200]


async def test_blocked_user_is_forbidden_only_in_their_chat(fake_botapi: FakeBotApi) -> None:
    fake_botapi.fail_next("sendMessage", status=403, chat_id=BOB.id, count=2)
    fake_botapi.fail_next("sendChatAction", status=502)
    async with make_bot(fake_botapi) as bot:
        with pytest.raises(Forbidden, match="blocked by the user"):
            await bot.send_message(BOB.id, "done")
        await bot.send_message(ANN.id, "done")
        with pytest.raises(Forbidden):
            await bot.send_message(BOB.id, "done")
        await bot.send_message(BOB.id, "done")
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await bot.send_chat_action(ANN.id, "upload_video")
        assert await bot.send_chat_action(ANN.id, "upload_video")

    assert [m.text for m in fake_botapi.messages(BOB.id).values()] == ["done"]
    assert [m.text for m in fake_botapi.messages(ANN.id).values()] == ["done"]


async def test_unknown_method_is_not_found(fake_botapi: FakeBotApi) -> None:
    async with make_bot(fake_botapi) as bot:
        with pytest.raises(EndPointNotFound):
            await bot.do_api_request("sendTelepathy", api_kwargs={"chat_id": ANN.id})
    assert fake_botapi.calls("sendTelepathy")[0].status == 404


async def test_wait_for_wakes_on_the_send_it_waits_for(fake_botapi: FakeBotApi) -> None:
    async with make_bot(fake_botapi) as bot:
        send = asyncio.create_task(bot.send_message(ANN.id, "Working on it"))
        # message() fails until the bot has sent it; wait_for keeps waiting through that.
        text = await fake_botapi.wait_for(lambda: fake_botapi.message(ANN.id, 1).text)
        await send
    assert text == "Working on it"


async def test_wait_for_times_out_with_the_recent_calls(fake_botapi: FakeBotApi) -> None:
    async with make_bot(fake_botapi) as bot:
        await bot.send_message(ANN.id, "Working on it")
    with pytest.raises(AssertionError, match=r"(?s)timed out.*sendMessage.*Working on it"):
        await fake_botapi.wait_for_text(ANN.id, "Here is your clip", timeout=0.2)
    with pytest.raises(AssertionError, match=r"(?s)last check: the bot sent no message 7"):
        await fake_botapi.wait_for(lambda: fake_botapi.message(ANN.id, 7), timeout=0.2)


def test_a_malformed_update_is_refused_before_it_reaches_the_bot(
    fake_botapi: FakeBotApi,
) -> None:
    with pytest.raises(AssertionError, match="unknown keys"):
        fake_botapi._push(
            "message", {"message_id": 1, "date": 0, "chat": ANN.chat_dict(), "txt": "hi"}
        )
    assert fake_botapi.pending_updates == 0


async def test_application_answers_start_over_long_polling(fake_botapi: FakeBotApi) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.effective_message.reply_text(f"Hello {update.effective_user.first_name}")

    app = (
        ApplicationBuilder()
        .token(TOKEN)
        .base_url(fake_botapi.base_url)
        .base_file_url(fake_botapi.base_file_url)
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0, timeout=1)
    try:
        pushed = fake_botapi.send_command(ANN, "/start")
        reply = await fake_botapi.wait_for_text(ANN.id, "Hello Ann")
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()

    assert reply.chat_id == ANN.id and pushed.message_id < reply.message_id
    assert fake_botapi.pending_updates == 0


async def test_text_with_a_parse_mode_is_refused_not_half_checked(
    fake_botapi: FakeBotApi,
) -> None:
    async with make_bot(fake_botapi) as bot:
        with pytest.raises(BadRequest, match="plain text only"):
            await bot.send_message(ANN.id, "<b>Queued</b>", parse_mode="HTML")
    assert fake_botapi.messages(ANN.id) == {}


async def test_updates_outside_allowed_updates_are_dropped(fake_botapi: FakeBotApi) -> None:
    async with make_bot(fake_botapi) as bot:
        card = await bot.send_message(
            ANN.id,
            "Pick",
            reply_markup=InlineKeyboardMarkup([[InlineKeyboardButton("Go", callback_data="go")]]),
        )
        await bot.get_updates(timeout=0, allowed_updates=["message"])
        fake_botapi.press(ANN, card.message_id, "go")
        text = fake_botapi.send_text(ANN, "hello")
        updates = await bot.get_updates(timeout=0)

    assert [u.update_id for u in updates] == [text.update_id]
