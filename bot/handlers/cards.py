"""The settings card's buttons: an option, Animate, and dismissing the card."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from telegram import Update

from bot import texts
from bot.handlers.common import (
    Context,
    bot_data,
    card_keyboard,
    card_text,
    enqueue,
    offered,
    queue_text,
    show,
)
from bot.keyboards import CardField, CardOption, status_keyboard
from bot.limits import Refused
from bot.store import Card
from generator.options import Backend


async def _own_card(update: Update, context: Context) -> Card | None:
    """The pressed card if it exists and is the presser's; else alert and ``None``."""
    query = update.callback_query
    if query is None:
        return None
    if query.message is None:  # a button on an inline message: no card of ours
        await query.answer(texts.stale_button(), show_alert=True)
        return None
    card = await bot_data(context).store.get_card(query.message.chat.id, query.message.message_id)
    if card is None:
        await query.answer(texts.stale_button(), show_alert=True)
        return None
    if card.user_id != query.from_user.id:
        await query.answer(texts.not_yours(), show_alert=True)
        return None
    return card


async def on_card_option(update: Update, context: Context) -> None:
    """An option button: tick it and redraw the card in place."""
    query = update.callback_query
    if query is None:
        return
    data = bot_data(context)
    choice = CardOption.unpack(query.data or "")
    card = await _own_card(update, context)
    if card is None:
        return
    if (
        choice.field is CardField.BACKEND and not offered(data.settings, Backend(choice.value))
    ) or await data.queue.photo_in_use(card.photo_path):
        # A card whose photo has a job is a status message or a video now, not a card.
        await query.answer(texts.stale_button(), show_alert=True)
        return
    await query.answer()  # first, so the button stops spinning
    options = choice.apply(card.options)
    if options == card.options:
        return
    await data.store.save_card(dataclasses.replace(card, options=options))
    show(
        data,
        query,
        await card_text(data.settings, options),
        reply_markup=await card_keyboard(data, options),
    )


async def on_animate(update: Update, context: Context) -> None:
    """Animate: one job per card (a double tap gives the same job), the card becomes its status."""
    query = update.callback_query
    if query is None:
        return
    data = bot_data(context)
    async with data.enqueue_lock:
        card = await _own_card(update, context)
        if card is None:
            return
        if not await asyncio.to_thread(
            os.path.exists, card.photo_path
        ):  # the card was dismissed (old client, forged)
            await query.answer(texts.stale_button(), show_alert=True)
            return
        key = f"card:{card.chat_id}:{card.message_id}:{card.generation}"
        try:
            job, note, new = await enqueue(
                data,
                card.user_id,
                card.options,
                chat_id=card.chat_id,
                photo_message_id=card.photo_message_id,
                photo_path=card.photo_path,
                photo_file_id=card.photo_file_id,
                dedupe_key=key,
                status_message_id=card.message_id,
            )
        except Refused as exc:
            await query.answer(exc.text, show_alert=True)
            return
        await query.answer()
        if not new:
            return  # the first tap already turned the card into the status message
        await data.store.save_user_options(card.user_id, card.options)
    show(data, query, await queue_text(data, job, data.clock(), note), status_keyboard(job.id))
    data.consumers.wake()


async def on_card_cancel(update: Update, context: Context) -> None:
    """Cancel on a card: drop it and its photo, unless a job was made from that photo.

    Under ``enqueue_lock``, so a Cancel racing an Animate sees the job and leaves its photo.
    """
    query = update.callback_query
    if query is None:
        return
    data = bot_data(context)
    async with data.enqueue_lock:
        card = await _own_card(update, context)
        if card is None:
            return
        if await data.queue.photo_in_use(card.photo_path):
            # Animate won (or it is a video's buttons): the photo belongs to a job now.
            await query.answer(texts.stale_button(), show_alert=True)
            return
        await data.store.delete_card(card.chat_id, card.message_id, card.user_id)
        await asyncio.to_thread(Path(card.photo_path).unlink, missing_ok=True)
    await query.answer()
    show(data, query, texts.card_dismissed())
