"""How long a button tap waits for its answer when many users tap at once (loopback Bot API).

The real bot (``build_app`` with Telegram's rate limiter, ``bot.intake`` polling, SQLite store,
the real worker, idle) runs against ``tests/support/fake_botapi.py``. Each of ``--users``
users has a settings card; in each of ``--rounds`` rounds every user taps a motion button on
their card at the same moment, and the tap's latency is the time from the tap reaching the
fake Telegram to the bot's ``answerCallbackQuery`` arriving there. Every tap changes the
card, so every tap also asks for a card edit, which Telegram's 30 messages/s limit throttles.

Example::

    .venv/bin/python -m bench.taps --users 200 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from telegram import Bot

from bot.app import build_app
from bot.config import AccessSettings, Settings, TelegramSettings
from bot.gpu import InlineRunner
from bot.intake import serve
from bot.jobs import JobOptions
from bot.keyboards import CardOption, settings_keyboard
from bot.store import Card, Store
from bot.worker import Worker
from generator.config import VeoCredentials
from generator.options import Intensity
from generator.router import Generator
from tests.support.fake_botapi import TOKEN, FakeBotApi, FakeUser

# Each round moves every card to the next intensity, so every tap changes the card.
ROUNDS = (Intensity.DRAMATIC, Intensity.SUBTLE, Intensity.MODERATE)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def make_cards(fake: FakeBotApi, store: Store, users: list[FakeUser]) -> dict[int, int]:
    """One settings card per user, sent by a plain Bot (setup is not what is measured)."""
    cards: dict[int, int] = {}
    async with Bot(TOKEN, base_url=fake.base_url) as bot:
        for user in users:
            message = await bot.send_message(
                user.id,
                "How should I animate this photo?",
                reply_markup=settings_keyboard(JobOptions()),
            )
            await store.save_card(
                Card(
                    chat_id=user.id,
                    message_id=message.message_id,
                    user_id=user.id,
                    photo_message_id=1,
                    photo_path="/nonexistent.jpg",
                    options=JobOptions(),
                    created_at=time.time(),
                )
            )
            cards[user.id] = message.message_id
    return cards


async def measure(n_users: int, rounds: int, data_dir: Path) -> list[float]:
    users = [FakeUser(10_000 + i, f"User{i}") for i in range(n_users)]
    with FakeBotApi() as fake:
        settings = Settings(
            telegram=TelegramSettings(
                token=TOKEN, base_url=fake.base_url, base_file_url=fake.base_file_url
            ),
            access=AccessSettings(allowed_users=frozenset(u.id for u in users)),
            data_dir=data_dir,
        )
        settings.photos_dir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(settings.db_path)
        generator = Generator(settings.generator, credentials=VeoCredentials())
        worker = Worker(store=store, settings=settings, runner=InlineRunner(generator))
        app = build_app(settings, store, worker)  # with the production rate limiter
        cards = await make_cards(fake, store, users)
        stop = asyncio.Event()
        running = asyncio.create_task(serve(app, settings.telegram, stop))
        await fake.wait_for(lambda: fake.polling, timeout=60, what="the bot polling")
        latencies: list[float] = []
        for r in range(rounds):
            value = ROUNDS[r % len(ROUNDS)].value
            pressed: dict[str, float] = {}
            seen = [len(fake.sent())]
            for user in users:
                push = fake.press(user, cards[user.id], CardOption("i", value).pack(), strict=False)
                pressed[push.callback_query_id or ""] = time.monotonic()

            got: dict[str, float] = {}

            def answered(
                got: dict[str, float] = got,
                seen: list[int] = seen,
                pressed: dict[str, float] = pressed,
            ) -> bool:
                # Incremental: this runs on the bot's own loop after every request it makes.
                new = fake.sent_since(seen[0])
                seen[0] += len(new)
                for c in new:
                    if c.method == "answerCallbackQuery" and c.ok:
                        got[c.params["callback_query_id"]] = c.at
                return all(q in got for q in pressed)

            await fake.wait_for(answered, timeout=600, what=f"round {r + 1} answers")
            latencies += [got[q] - t for q, t in pressed.items()]
            edits = fake.calls("editMessageText")
            polls = len(fake.calls("getUpdates"))
            span = edits[-1].at - edits[0].at if len(edits) > 1 else 0.0
            print(
                f"round {r + 1}: {n_users} taps answered; card edits so far {len(edits)} "
                f"({len(edits) / span if span else 0:.1f}/s); getUpdates calls {polls}",
                flush=True,
            )
        stop.set()
        await running
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        latencies = asyncio.run(measure(args.users, args.rounds, Path(tmp)))
    ms = [x * 1000 for x in latencies]
    print(
        f"{len(ms)} taps by {args.users} users: answer latency median "
        f"{statistics.median(ms):.0f} ms, p99 {percentile(ms, 0.99):.0f} ms, "
        f"max {max(ms):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
