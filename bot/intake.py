"""Feed Telegram updates to the Application and confirm each one only after its handlers ran.

PTB's ``Updater`` confirms an update on its next ``getUpdates`` (and its webhook server answers
200) as soon as the update is queued, before any handler has run: a kill in that window loses
the update. Here ``getUpdates`` is driven by hand, each update goes through
``Application.update_processor`` (so ``concurrent_updates`` still bounds the work) and the
offset only moves past an update once its handling finished; in webhook mode the 200 is
written at that same point. Handlers must therefore be safe to run twice: after a kill, an
update whose handler had started comes again.

Example::

    app = build_app(settings, store, workers, queue=queue, cards=workers.cards)
    run(app, settings.telegram)  # until SIGTERM/SIGINT, with PTB's whole lifecycle
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from telegram import Update
from telegram.error import Conflict, InvalidToken, NetworkError, RetryAfter, TimedOut
from telegram.ext import Application
from telegram.warnings import PTBUserWarning

from bot.config import TelegramSettings

log = logging.getLogger(__name__)
# getUpdates goes through do_api_request to get raw JSON; PTB would point at get_updates.
warnings.filterwarnings("ignore", "Please use 'Bot.getUpdates'", PTBUserWarning)

#: Long-poll length of one ``getUpdates`` while nothing is being handled.
POLL_TIMEOUT_S = 30
#: While an update is unconfirmed, Telegram answers ``getUpdates`` at once with it: between
#: polls that bring nothing new, wait for a handler to finish or this long, never spin.
BUSY_POLL_S = 0.1
#: While handlers run, polls are at least this far apart: each one brings back the whole
#: unconfirmed window (up to 100 updates) to decode again, and under a burst of taps polling
#: after every finished handler cost more than the handlers (bench/taps.py). Taps arriving
#: meanwhile wait at most this long to be fetched.
MIN_BUSY_GAP_S = 0.02
#: Telegram's most updates in one ``getUpdates`` answer.
WINDOW = 100
#: A handler running this long stops holding the offset back (it keeps running), so one hung
#: download cannot stall every later update behind ``getUpdates``' 100-update window.
STUCK_AFTER_S = 120.0
#: How long a stop waits for running handlers before cancelling them; a cancelled update is
#: not confirmed, so the next start handles it again.
HANDLER_GRACE_S = 10.0
#: Read timeout of a poll beyond its long-poll length.
READ_MARGIN_S = 10.0
#: Longest pause between polls after network errors (doubling from one second).
MAX_BACKOFF_S = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGABRT)


def confirm_offset(running: Mapping[int, float], next_new: int, now: float) -> int:
    """The ``getUpdates`` offset that confirms exactly the updates whose handling finished.

    ``running`` maps each update being handled to when it started; ``next_new`` is one past
    the newest update seen (0 before any). Updates that run longer than ``STUCK_AFTER_S`` no
    longer hold it back.

    >>> confirm_offset({}, 12, now=0.0)
    12
    >>> confirm_offset({9: 0.0, 11: 0.0}, 12, now=1.0)
    9
    """
    holding = [uid for uid, started in running.items() if now - started < STUCK_AFTER_S]
    return min(holding) if holding else next_new


class Intake:
    """Runs each update through the application once and remembers which ones finished.

    Args:
        app: an initialized ``Application``; its ``update_processor`` bounds the concurrency.
        clock: monotonic seconds, for ``STUCK_AFTER_S``.
    """

    def __init__(self, app: Application, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self._clock = clock
        self._running: dict[int, asyncio.Task[None]] = {}
        self._started: dict[int, float] = {}
        # Finished at or above the offset (a lower one still runs): Telegram sends them again.
        self._finished: set[int] = set()
        self._next_new = 0
        self.offset_moved = asyncio.Event()

    @property
    def offset(self) -> int:
        return confirm_offset(self._started, self._next_new, self._clock())

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def is_new(self, update_id: int) -> bool:
        """Neither handled nor being handled (Telegram sends unconfirmed updates again)."""
        return not (
            update_id in self._running or update_id in self._finished or update_id < self.offset
        )

    def submit(self, update: Update) -> asyncio.Task[None] | None:
        """Start handling ``update``; the running task if it already runs; ``None`` if done."""
        uid = update.update_id
        if uid in self._running:
            return self._running[uid]
        if uid in self._finished or uid < self.offset:
            return None
        self._next_new = max(self._next_new, uid + 1)
        task = asyncio.create_task(self._handle(update), name=f"update-{uid}")
        self._running[uid] = task
        self._started[uid] = self._clock()
        task.add_done_callback(lambda t, uid=uid: self._done(uid, t))
        return task

    async def _handle(self, update: Update) -> None:
        app = self.app
        handling = app.process_update(update)
        try:
            # process_update sends handler errors to the error handler and returns normally.
            await app.update_processor.process_update(update, handling)
        except asyncio.CancelledError:
            handling.close()  # cancelled while waiting for a slot: it never started
            raise
        except Exception:
            # Not retried: an update that breaks PTB itself would break it again on every start.
            log.exception("update %s could not be processed", update.update_id)

    def _done(self, uid: int, task: asyncio.Task[None]) -> None:
        before = self.offset
        del self._running[uid]
        del self._started[uid]
        if not task.cancelled():
            self._finished.add(uid)
        offset = self.offset
        self._finished = {u for u in self._finished if u >= offset}
        # Only a moved offset is news for Telegram; waking on every finish would poll (and
        # parse the whole unconfirmed window) once per update under load.
        if offset != before:
            self.offset_moved.set()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for running handlers, then cancel the rest."""
        tasks = list(self._running.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            log.warning("stop: %d update(s) cancelled, handled again on next start", len(late))
            await asyncio.wait(late)


async def _until(awaitable: Awaitable[Any], stop: asyncio.Event) -> tuple[bool, Any]:
    """``(True, result)`` if ``awaitable`` finished first, ``(False, None)`` if ``stop`` did."""
    work = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if work.done():
        return True, work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    return False, None


async def _offset_moved(intake: Intake, within: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await intake.offset_moved.wait()


async def _next_busy_poll(intake: Intake, *, fresh: bool, full: bool) -> None:
    """Wait before polling again while handlers run (Telegram would answer at once).

    A full window can only move on when the offset does; a partial one with fresh updates
    may have more arriving behind it; one that brought nothing new waits for the offset or
    ``BUSY_POLL_S``. Never sooner than ``MIN_BUSY_GAP_S``, so a burst of finishing handlers
    makes one poll, not one each.
    """
    await asyncio.sleep(MIN_BUSY_GAP_S)
    if full or not fresh:
        await _offset_moved(intake, BUSY_POLL_S)


async def poll(intake: Intake, stop: asyncio.Event, *, long_poll_s: int = POLL_TIMEOUT_S) -> None:
    """Long-poll ``getUpdates`` until ``stop``, confirming only handled updates."""
    bot = intake.app.bot
    await bot.delete_webhook(drop_pending_updates=False)
    backoff = 0.0
    while not stop.is_set():
        intake.offset_moved.clear()
        offset = intake.offset
        try:
            wait = 0 if intake.busy else long_poll_s  # Telegram answers at once while busy
            finished, raw = await _until(
                # Raw JSON: Telegram sends every unconfirmed update again, and parsing the
                # whole window on each poll cost more than handling it (bench/taps.py).
                bot.do_api_request(
                    "getUpdates",
                    api_kwargs={
                        "offset": offset,
                        "timeout": wait,
                        "allowed_updates": list(Update.ALL_TYPES),
                    },
                    read_timeout=wait + READ_MARGIN_S,
                ),
                stop,
            )
        except InvalidToken:
            raise
        except TimedOut:
            continue  # a long poll outlived the read timeout: ask again
        except RetryAfter as exc:
            # Private, but the one form PTB 22 keeps without a deprecation warning.
            backoff = exc._retry_after.total_seconds()
            log.warning("getUpdates: Telegram asks to wait %.0f s", backoff)
        except (Conflict, NetworkError) as exc:
            backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
            log.warning("getUpdates failed (%s); trying again in %.0f s", exc.message, backoff)
        else:
            if not finished:
                break
            backoff = 0.0
            raw = raw or []
            fresh = [u for u in raw if intake.is_new(u["update_id"])]
            for data in fresh:
                intake.submit(Update.de_json(data, bot))
            if intake.busy:
                await _until(
                    _next_busy_poll(intake, fresh=bool(fresh), full=len(raw) >= WINDOW), stop
                )
            continue
        await _until(asyncio.sleep(backoff), stop)


async def confirm(intake: Intake) -> None:
    """Tell Telegram about every finished update before exiting (one short ``getUpdates``)."""
    with contextlib.suppress(NetworkError):
        await intake.app.bot.get_updates(offset=intake.offset, limit=1, timeout=0)


def webhook_app(intake: Intake, telegram: TelegramSettings, stop: asyncio.Event) -> Any:
    """The tornado application that answers Telegram's POST only once the update is handled."""
    import tornado.web

    secret = telegram.webhook_secret.encode()

    class UpdateHandler(tornado.web.RequestHandler):
        SUPPORTED_METHODS = ("POST",)  # type: ignore[assignment]

        async def post(self) -> None:
            if self.request.headers.get("Content-Type") != "application/json":
                raise tornado.web.HTTPError(HTTPStatus.FORBIDDEN)
            given = self.request.headers.get("X-Telegram-Bot-Api-Secret-Token", "").encode()
            # compare_digest: the time taken says nothing about how much of the secret matched.
            if secret and not hmac.compare_digest(given, secret):
                raise tornado.web.HTTPError(HTTPStatus.FORBIDDEN)
            try:
                update = Update.de_json(json.loads(self.request.body), intake.app.bot)
            except Exception as exc:
                raise tornado.web.HTTPError(HTTPStatus.BAD_REQUEST) from exc
            if stop.is_set():
                # Not handled: Telegram delivers it again after the restart.
                raise tornado.web.HTTPError(HTTPStatus.SERVICE_UNAVAILABLE)
            task = intake.submit(update)
            if task is not None:
                await asyncio.wait({task})
                if task.cancelled():
                    raise tornado.web.HTTPError(HTTPStatus.SERVICE_UNAVAILABLE)
            self.set_status(HTTPStatus.OK)

        def log_exception(self, *args: Any) -> None:
            pass  # a refused post is one access decision, not a traceback

    class WebApp(tornado.web.Application):
        def log_request(self, handler: Any) -> None:
            pass  # request lines would repeat every update; handlers log what matters

    path = "/" + telegram.webhook_path.strip("/")
    return WebApp([(rf"{path}/?", UpdateHandler)])


async def serve_webhook(intake: Intake, telegram: TelegramSettings, stop: asyncio.Event) -> None:
    """Listen for Telegram's POSTs and register the webhook; return when ``stop`` is set."""
    from tornado.httpserver import HTTPServer

    server = HTTPServer(webhook_app(intake, telegram, stop))
    server.listen(telegram.webhook_port, address=telegram.webhook_listen)
    try:
        await intake.app.bot.set_webhook(
            url=telegram.webhook_url,
            allowed_updates=Update.ALL_TYPES,
            secret_token=telegram.webhook_secret or None,
            drop_pending_updates=False,
        )
        await stop.wait()
    finally:
        server.stop()  # no new connections; posts in flight finish in drain()
        await intake.drain(HANDLER_GRACE_S)
        await server.close_all_connections()


async def serve(
    app: Application, telegram: TelegramSettings, stop: asyncio.Event, *, updates: bool = True
) -> None:
    """PTB's lifecycle around our intake: initialize, post_init, start, take updates until
    ``stop``, then stop, post_stop, shutdown, post_shutdown (as ``run_polling`` does).

    Without ``updates`` (a consumer host) nothing is taken from Telegram: the app only runs
    its consumers and sends through its bot until ``stop``.
    """
    try:
        await app.initialize()
        if app.post_init:
            await app.post_init(app)
        await app.start()
        intake = Intake(app)
        if not updates:
            await stop.wait()
        elif telegram.mode == "webhook":
            await serve_webhook(intake, telegram, stop)
        else:
            try:
                await poll(intake, stop)
            finally:
                await intake.drain(HANDLER_GRACE_S)
                await confirm(intake)
    finally:
        if app.running:
            await app.stop()
            if app.post_stop:
                await app.post_stop(app)
        await app.shutdown()
        if app.post_shutdown:
            await app.post_shutdown(app)


def run(app: Application, telegram: TelegramSettings, *, updates: bool = True) -> None:
    """Serve on the current event loop until SIGINT/SIGTERM/SIGABRT, then close the loop."""
    loop = asyncio.get_event_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(serve(app, telegram, stop, updates=updates))
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        loop.close()
