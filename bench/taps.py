"""How long a button tap waits for its answer when many users tap at once (loopback Bot API).

The real bot (``build_app`` with Telegram's rate limiter, ``bot.intake`` polling, SQLite store,
the real worker, idle) runs against ``tests/support/fake_botapi.py``. Each of ``--users``
users has a settings card; in each of ``--rounds`` rounds every user taps a motion button on
their card at the same moment, and the tap's latency is the time from the tap reaching the
fake Telegram to the bot's ``answerCallbackQuery`` arriving there. Every tap changes the
card, so every tap also asks for a card edit, which Telegram's 30 messages/s limit throttles.

The fake Telegram runs in a process of its own (as the real one is not in the bot's process),
so its request parsing and checks do not take the bot's interpreter lock; ``--same-process``
runs it in the bot's process instead, as earlier versions of this benchmark did.

``--think S`` paces the users instead (what a chat sees): for ``--seconds``, each user taps,
waits for the answer, looks at the card for a random 0.5 S to 1.5 S, and taps again. With 200
users and S = 4 that is about 50 taps a second, each asking for a card edit, above Telegram's
30 messages a second: edits queue, and the measure is whether taps wait behind them.

Example::

    .venv/bin/python -m bench.taps --users 200 --rounds 3            # all at the same moment
    .venv/bin/python -m bench.taps --users 200 --think 4 --seconds 30  # paced users
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from telegram import Bot

from bot.app import build_app
from bot.config import AccessSettings, Settings, TelegramSettings
from bot.consumers import build_workers
from bot.gpu import InlineRunner
from bot.intake import serve
from bot.jobs import JobOptions
from bot.keyboards import CardOption, settings_keyboard
from bot.queue import SqlQueue
from bot.store import Card, Store
from generator.config import VeoCredentials
from generator.options import Intensity
from generator.router import Generator
from tests.support.fake_botapi import TOKEN, FakeBotApi, FakeUser

# Each round moves every card to the next intensity, so every tap changes the card.
ROUNDS = (Intensity.DRAMATIC, Intensity.SUBTLE, Intensity.MODERATE)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class FakeInProcess:
    """The loopback Bot API in the bot's own process (``--same-process``)."""

    def __init__(self) -> None:
        self.fake = FakeBotApi()

    def __enter__(self) -> FakeInProcess:
        self.fake.start()
        self.base_url, self.base_file_url = self.fake.base_url, self.fake.base_file_url
        return self

    def __exit__(self, *exc: object) -> None:
        self.fake.stop()

    async def polling(self) -> None:
        await self.fake.wait_for(lambda: self.fake.polling, timeout=60, what="the bot polling")

    async def press(self, taps: list[tuple[int, int, str]]) -> dict[str, float]:
        return _press(self.fake, taps)

    async def answers(self, ids: list[str]) -> tuple[dict[str, float], int, float]:
        return await _answers(self.fake, ids)

    async def paced(self, plan: Paced) -> tuple[list[float], int, float]:
        return await _paced(self.fake, plan)


def _press(fake: FakeBotApi, taps: list[tuple[int, int, str]]) -> dict[str, float]:
    pressed: dict[str, float] = {}
    for user_id, message_id, data in taps:
        push = fake.press(FakeUser(user_id, f"User{user_id}"), message_id, data, strict=False)
        pressed[push.callback_query_id or ""] = time.monotonic()
    return pressed


async def _answers(fake: FakeBotApi, ids: list[str]) -> tuple[dict[str, float], int, float]:
    """When each tap was answered; card edits so far and their rate."""
    got: dict[str, float] = {}
    seen = [0]

    def answered() -> bool:
        # Incremental: this runs after every request the bot makes.
        new = fake.sent_since(seen[0])
        seen[0] += len(new)
        for c in new:
            if c.method == "answerCallbackQuery" and c.ok:
                got[c.params["callback_query_id"]] = c.at
        return all(q in got for q in ids)

    await fake.wait_for(answered, timeout=600, what="answers")
    edits = fake.calls("editMessageText")
    span = edits[-1].at - edits[0].at if len(edits) > 1 else 0.0
    return got, len(edits), (len(edits) / span if span else 0.0)


@dataclasses.dataclass(frozen=True)
class Paced:
    """Paced taps: each user's card and the button values to cycle through."""

    cards: dict[int, int]
    values: tuple[str, ...]
    seconds: float
    think_s: float
    seed: int = 1


async def _paced(fake: FakeBotApi, plan: Paced) -> tuple[list[float], int, float]:
    """Run paced taps (see the module docstring): every answered tap's latency, the card
    edits sent and their rate."""
    rng = random.Random(plan.seed)
    start = time.monotonic()
    end = start + plan.seconds
    # Users start spread over one think time, as people do, not all in the first instant.
    due = {uid: start + rng.uniform(0, plan.think_s) for uid in plan.cards}
    taps = dict.fromkeys(plan.cards, 0)
    waiting: dict[str, tuple[int, float]] = {}
    latencies: list[float] = []
    seen = 0
    while due or waiting:
        now = time.monotonic()
        for uid in [u for u, at in due.items() if at <= now]:
            del due[uid]
            value = plan.values[taps[uid] % len(plan.values)]
            taps[uid] += 1
            push = fake.press(FakeUser(uid, f"User{uid}"), plan.cards[uid], value, strict=False)
            waiting[push.callback_query_id or ""] = (uid, time.monotonic())
        new = fake.sent_since(seen)
        seen += len(new)
        for call in new:
            if call.method != "answerCallbackQuery" or not call.ok:
                continue
            uid, pressed = waiting.pop(call.params["callback_query_id"])
            latencies.append(call.at - pressed)
            if call.at < end:
                due[uid] = call.at + rng.uniform(0.5, 1.5) * plan.think_s
        # The load generator's tick (it decides when users tap; latencies use the fake's own
        # timestamps, so the tick does not enter them).
        await asyncio.sleep(0.002)
    edits = fake.calls("editMessageText")
    span = edits[-1].at - edits[0].at if len(edits) > 1 else 0.0
    return latencies, len(edits), (len(edits) / span if span else 0.0)


def _fake_child(conn: Any) -> None:
    """Serve the loopback Bot API and obey the benchmark's commands until ``stop``."""
    with FakeBotApi() as fake:
        conn.send((fake.base_url, fake.base_file_url))
        while True:
            command, arg = conn.recv()
            if command == "stop":
                return
            if command == "polling":
                asyncio.run(fake.wait_for(lambda: fake.polling, timeout=60, what="polling"))
                conn.send(None)
            elif command == "press":
                conn.send(_press(fake, arg))
            elif command == "answers":
                conn.send(asyncio.run(_answers(fake, arg)))
            elif command == "paced":
                conn.send(asyncio.run(_paced(fake, arg)))


class FakeInOwnProcess:
    """The loopback Bot API in a child process, driven over a pipe (the default)."""

    def __enter__(self) -> FakeInOwnProcess:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_fake_child, args=(child,), daemon=True)
        self.process.start()
        self.base_url, self.base_file_url = self.conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.send(("stop", None))
        self.process.join(timeout=10)

    async def _ask(self, command: str, arg: Any = None) -> Any:
        self.conn.send((command, arg))
        return await asyncio.to_thread(self.conn.recv)

    async def polling(self) -> None:
        await self._ask("polling")

    async def press(self, taps: list[tuple[int, int, str]]) -> dict[str, float]:
        return await self._ask("press", taps)

    async def answers(self, ids: list[str]) -> tuple[dict[str, float], int, float]:
        return await self._ask("answers", ids)

    async def paced(self, plan: Paced) -> tuple[list[float], int, float]:
        return await self._ask("paced", plan)


async def make_cards(
    fake: FakeInProcess | FakeInOwnProcess, store: Store, users: list[FakeUser]
) -> dict[int, int]:
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


async def measure(
    n_users: int,
    rounds: int,
    data_dir: Path,
    *,
    same_process: bool = False,
    think_s: float = 0.0,
    seconds: float = 30.0,
) -> list[float]:
    users = [FakeUser(10_000 + i, f"User{i}") for i in range(n_users)]
    with FakeInProcess() if same_process else FakeInOwnProcess() as fake:
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
        queue = SqlQueue(store.db)
        workers = build_workers(settings, store, queue, [InlineRunner(generator)])
        # with the production rate limiter
        app = build_app(settings, store, workers, queue=queue, cards=workers.cards)
        cards = await make_cards(fake, store, users)
        stop = asyncio.Event()
        running = asyncio.create_task(serve(app, settings.telegram, stop))
        await fake.polling()
        latencies: list[float] = []
        if think_s:
            values = tuple(CardOption("i", i.value).pack() for i in ROUNDS)
            latencies, edits, rate = await fake.paced(Paced(cards, values, seconds, think_s))
            print(
                f"paced: {len(latencies)} taps in {seconds:.0f} s "
                f"({len(latencies) / seconds:.1f}/s); card edits {edits} ({rate:.1f}/s)",
                flush=True,
            )
            rounds = 0
        for r in range(rounds):
            value = ROUNDS[r % len(ROUNDS)].value
            data = CardOption("i", value).pack()
            pressed = await fake.press([(u.id, cards[u.id], data) for u in users])
            got, edits, rate = await fake.answers(list(pressed))
            latencies += [got[q] - t for q, t in pressed.items()]
            print(
                f"round {r + 1}: {n_users} taps answered; card edits so far {edits} ({rate:.1f}/s)",
                flush=True,
            )
        stop.set()
        await running
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--same-process", action="store_true", help="run the fake Telegram in the bot's process"
    )
    parser.add_argument("--think", type=float, default=0.0, help="paced: seconds between taps")
    parser.add_argument("--seconds", type=float, default=30.0, help="paced: how long")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        latencies = asyncio.run(
            measure(
                args.users,
                args.rounds,
                Path(tmp),
                same_process=args.same_process,
                think_s=args.think,
                seconds=args.seconds,
            )
        )
    ms = [x * 1000 for x in latencies]
    print(
        f"{len(ms)} taps by {args.users} users: answer latency median "
        f"{statistics.median(ms):.0f} ms, p99 {percentile(ms, 0.99):.0f} ms, "
        f"max {max(ms):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
