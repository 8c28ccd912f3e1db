"""What a user sends: a photo gets a settings card, anything else a short answer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from telegram import Message, Update
from telegram.error import TelegramError

from bot import texts
from bot.handlers.common import (
    Context,
    bot_data,
    card_keyboard,
    card_text,
    intake_refusal,
    usable_options,
)
from bot.jobs import JobOptions
from bot.store import Card
from generator.errors import InvalidImage
from generator.files import write_atomic
from generator.image import load_image, read_header, sniff_image
from generator.options import MAX_CUSTOM_ELEMENTS_CHARS

log = logging.getLogger(__name__)


async def on_photo(update: Update, context: Context) -> None:
    """A photo (largest size) or an image document: download it and reply with a card."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return  # the guard lets no such update through; nothing to answer
    data = bot_data(context)
    limit = data.settings.limits.max_photo_bytes
    if message.photo:
        attachment: Any = message.photo[-1]  # sizes are sorted; the last is the largest
    elif message.document is not None:
        attachment = message.document
        if not (message.document.mime_type or "").startswith("image/"):
            await message.reply_text(texts.not_an_image())
            return
    else:
        return
    if limit and (attachment.file_size or 0) > limit:
        await message.reply_text(texts.too_large(limit))
        return
    # Echoed into the card and written into the prompt: no control or bidi characters.
    caption = texts.clean_text(message.caption or "")
    if len(caption) > MAX_CUSTOM_ELEMENTS_CHARS:
        await message.reply_text(texts.caption_too_long(MAX_CUSTOM_ELEMENTS_CHARS))
        return
    # Telegram sends an update again if the bot died before confirming it: one card a photo.
    if await data.store.card_for_photo(message.chat_id, message.message_id) is not None:
        log.info("user %s: photo %s already has its card", user.id, message.message_id)
        return
    # What costs nothing to check goes first: nothing is downloaded for a user at a limit
    # or while the data folder is full.
    refusal = await intake_refusal(data, user.id)
    if refusal is not None:
        await message.reply_text(refusal)
        return
    try:
        file = await attachment.get_file()
        content = bytes(await file.download_as_bytearray())
    except TelegramError as exc:
        log.warning("user %s: photo download failed: %s", user.id, exc)
        await message.reply_text(texts.download_failed())
        return
    if limit and len(content) > limit:
        await message.reply_text(texts.too_large(limit))
        return
    kind = sniff_image(content[:32])
    if kind is None:
        await message.reply_text(texts.not_an_image())
        return
    image_settings = data.settings.generator.image
    try:
        # The header first: a small file declaring 50 megapixels is refused for the cost
        # of its header, before any bitmap exists.
        header = await asyncio.to_thread(read_header, content, image_settings)
        # Then decoded (off the loop, a few at a time: each decode holds a whole bitmap),
        # so a damaged file is refused before the user picks options, not in the queue.
        async with data.decode_slots:
            await asyncio.to_thread(load_image, content, image_settings)
    except InvalidImage as exc:
        log.info("user %s: image refused: %s", user.id, exc)
        await message.reply_text(exc.user_text)
        return
    name = f"{message.chat_id}-{message.message_id}-{attachment.file_unique_id}.{kind}"
    # Saved now, so nothing later depends on Telegram's file links (they expire).
    path = await asyncio.to_thread(write_atomic, data.settings.photos_dir / name, content)
    data.disk.add(len(content))
    log.debug("user %s: %s %dx%d saved", user.id, header.format, header.width, header.height)

    now = data.clock()
    await data.store.touch_user(user.id, user.full_name, now=now)
    stored = await data.store.get_user_options(user.id)
    options = usable_options(data.settings, stored or JobOptions())
    if caption:
        options = dataclasses.replace(options, custom_elements=(caption,))
    # Buttons go on once the card is stored, so every button a user can see already works.
    card = await message.reply_text(await card_text(data.settings, options), do_quote=True)
    await data.store.save_card(
        Card(
            chat_id=card.chat_id,
            message_id=card.message_id,
            user_id=user.id,
            photo_message_id=message.message_id,
            photo_path=str(path),
            photo_file_id=attachment.file_id,
            options=options,
            created_at=now,
        )
    )
    await card.edit_reply_markup(await card_keyboard(data, options))
    log.info("user %s: card %s for %s", user.id, card.message_id, path.name)


async def on_other_document(update: Update, context: Context) -> None:
    """A document that is not an image."""
    if update.effective_message is not None:
        await update.effective_message.reply_text(texts.not_an_image())


def message_kind(message: Message) -> str | None:
    """What a message holds, as a key of ``texts.MESSAGE_KINDS`` (``None``: something else)."""
    for kind in texts.MESSAGE_KINDS:
        if getattr(message, kind, None):
            return kind
    return None


async def on_other_message(update: Update, context: Context) -> None:
    """Anything else in a private chat (a sticker, a video, a location, an unknown command):
    say what the bot takes, so no message goes unanswered."""
    message = update.effective_message
    if message is None:
        return
    kind = message_kind(message)
    log.info("message %s: %s, not a photo", message.message_id, kind or "something else")
    await message.reply_text(texts.not_a_photo(kind))


async def on_text(update: Update, context: Context) -> None:
    """Plain text: say what the bot wants."""
    if update.effective_message is not None:
        await update.effective_message.reply_text(texts.help_text())
