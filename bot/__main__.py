"""The ``animate-bot`` command: check the config, or run the Telegram bot until SIGTERM.

Example::

    animate-bot --config /etc/animate-bot/config.toml --check-config
    animate-bot --config /etc/animate-bot/config.toml
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bot.config import (
    DATABASE_URL_VARIABLE,
    ROLES,
    Settings,
    TelegramSettings,
    load_settings,
    summary,
)
from generator.config import ConfigError
from generator.logsafe import Redactor, install

log = logging.getLogger("bot")

EXIT_OK = 0
EXIT_NETWORK = 1
EXIT_CONFIG = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Secrets the bot process reads once into its settings; children (the GPU process, ffmpeg,
# compilers) never need them, so they leave the environment after loading.
BOT_ONLY_VARIABLES = ("TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET", DATABASE_URL_VARIABLE)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="animate-bot",
        description="Telegram bot that turns a photo into a short animated clip.",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML settings (see config.example.toml)"
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings, print a summary without secrets, exit 0 (ok) or 2",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="INFO",
        type=str.upper,
        help="least important messages logged (default INFO; DEBUG adds tracebacks)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="also append the log to this file (stderr always gets it; secrets are masked)",
    )
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=None,
        help="all: one host (default, or [service] role); frontend: take updates and enqueue, "
        "no GPU; consumer: make and deliver clips, take no updates (both share PostgreSQL)",
    )
    parser.add_argument(
        "--cpu-inline",
        action="store_true",
        help="make clips inside the bot process instead of a separate GPU process",
    )
    return parser.parse_args(argv)


NOBODY_ALLOWED = (
    "access: nobody may use the bot: put your Telegram id in access.admins (the bot tells "
    "strangers their id), users in access.allowed_users, or set access.public = true"
)


def problems(settings: Settings, *, strict: bool = False) -> list[str]:
    """What stops the bot from running with ``settings`` (beyond what loading checks).

    ``strict`` (``--check-config``) also refuses a bot nobody may use; a running bot only
    warns, because it is how a new operator learns their id.
    """
    found = []
    if strict and settings.access.nobody:
        found.append(NOBODY_ALLOWED)
    if not settings.telegram.token:
        found.append(
            "no bot token: set TELEGRAM_BOT_TOKEN, telegram.token_file or the systemd "
            "credential telegram-token"
        )
    parent = settings.data_dir if settings.data_dir.exists() else settings.data_dir.parent
    if not os.access(parent, os.W_OK):
        found.append(f"data.dir: {settings.data_dir} is not writable")
    return found


def say(line: str, redact: Redactor) -> None:
    """One line for the operator on stderr, secrets masked."""
    print(f"animate-bot: {redact(line)}", file=sys.stderr)


def load(
    path: Path | None, env: Mapping[str, str], redact: Redactor, role: str | None = None
) -> Settings | None:
    """Settings (``role`` from ``--role`` overriding ``[service] role``), or ``None`` after
    printing why not (the key that is wrong)."""
    try:
        settings = load_settings(path, env)
    except ConfigError as exc:
        log.debug("config error", exc_info=True)
        say(f"config error: {exc}", redact)
        return None
    if role is None:
        return settings
    return dataclasses.replace(settings, service=dataclasses.replace(settings.service, role=role))


def check_config(
    path: Path | None, env: Mapping[str, str], redact: Redactor, role: str | None = None
) -> int:
    """``--check-config``: print a summary and any problems; 0 when the bot could start."""
    settings = load(path, env, redact, role)
    if settings is None:
        return EXIT_CONFIG
    print(redact(summary(settings)))
    found = problems(settings, strict=True)
    for problem in found:
        print(f"problem: {redact(problem)}", file=sys.stderr)
    return EXIT_CONFIG if found else EXIT_OK


def bot_api_address(telegram: TelegramSettings) -> str:
    return telegram.base_url or "https://api.telegram.org/bot"


def refusal(exc: BaseException, telegram: TelegramSettings) -> str:
    """The one line for a Bot API 401 (token refused) or 404 (wrong address or token form).

    PTB raises ``InvalidToken`` for both; Telegram's description ("Unauthorized" or
    "Not Found") survives in the exception chain.
    """
    chain = []
    while exc is not None and len(chain) < 10:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = " ".join(chain)
    if "Not Found" in text or "(404)" in text:
        return (
            f"the Bot API at {bot_api_address(telegram)} answered 404 Not Found: check "
            "telegram.base_url (a Bot API address ends in /bot) and that the token has the "
            "form digits:letters that @BotFather gives"
        )
    return (
        "Telegram refused the bot token (401 Unauthorized): check TELEGRAM_BOT_TOKEN or the "
        "token file; @BotFather shows the bot's current token"
    )


async def reach_telegram(telegram: TelegramSettings) -> None:
    """Ask the Bot API who we are (getMe) before anything starts, so a refused token or an
    unreachable server is one line, not a GPU process and three chained tracebacks."""
    from telegram import Bot

    urls = {}
    if telegram.base_url:
        urls["base_url"] = telegram.base_url
    if telegram.base_file_url:
        urls["base_file_url"] = telegram.base_file_url
    async with Bot(telegram.token, **urls):
        pass


def setup_logging(level: str, log_file: Path | None) -> None:
    """Log to stderr (and ``log_file``) at ``level``, unless logging is set up already."""
    root = logging.getLogger()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not root.handlers:  # tests that call main() keep pytest's handlers and level
        stream = logging.StreamHandler()
        stream.setFormatter(formatter)
        root.addHandler(stream)
        root.setLevel(level)
    if log_file is not None:
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setFormatter(formatter)
        root.addHandler(file)
    # httpx logs request URLs at INFO, and Bot API URLs hold the token (masked all the same).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def run(settings: Settings, *, cpu_inline: bool) -> None:
    """Open the store, build the consumers and the app for this process's role, and serve
    until a stop signal."""
    # Imported here so --check-config stays quick and needs neither torch nor a network.
    from bot.app import build_app
    from bot.intake import run as serve_updates
    from bot.queue import SqlQueue
    from bot.roles import ListeningConsumers, RemoteConsumers
    from bot.store import Store
    from bot.upkeep import Upkeep

    settings.photos_dir.mkdir(parents=True, exist_ok=True)
    # PTB runs on the thread's current loop; open the store on that same loop first.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    store = loop.run_until_complete(Store.open(settings.database))
    queue = SqlQueue(store.db)
    role, telegram = settings.service.role, settings.telegram
    settled = summary(settings).replace("\n", "; ")
    log.info("starting as %s in %s mode; %s", role, telegram.mode, settled)
    if role == "frontend":
        consumers = RemoteConsumers(store, upkeep=Upkeep(store, queue, settings))
        app = build_app(settings, store, consumers, queue=queue)
        serve_updates(app, telegram)
        return
    workers = _workers(settings, store, queue, cpu_inline=cpu_inline)
    local: Any = workers
    if role == "consumer" or settings.database_url:
        # Other hosts enqueue, pause and resume: hear them through the database.
        local = ListeningConsumers(workers, store, poll_s=settings.worker.heartbeat_s)
    app = build_app(settings, store, local, queue=queue, cards=workers.cards)
    # Until SIGTERM/SIGINT; each update is confirmed to Telegram only once handled, and
    # post_stop then gives the running job its grace. A consumer takes no updates.
    serve_updates(app, telegram, updates=role == "all")


def _workers(settings: Settings, store: Any, queue: Any, *, cpu_inline: bool) -> Any:
    """This host's GPU consumers: one per device (or one making clips in this process)."""
    from bot.consumers import build_workers
    from bot.gpu import InlineRunner, ProcessRunner, consumer_devices, visible_cuda_devices

    if cpu_inline or not settings.worker.gpu_process:
        from generator.router import Generator

        runners = [InlineRunner(Generator(settings.generator, credentials=settings.veo))]
    else:
        # One GPU process per device, each a consumer of the same queue with its own models.
        devices = consumer_devices(settings.gpu.devices, visible_cuda_devices())
        runners = [
            ProcessRunner(settings.generator, warm_up=True, device=device) for device in devices
        ]
    name = settings.service.consumer_name(shared=bool(settings.database_url))
    return build_workers(settings, store, queue, runners, name=name)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point."""
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_file)
    redact = install()  # the environment's secrets now; the token file's once it is read
    if args.check_config:
        return check_config(args.config, os.environ, redact, args.role)
    settings = load(args.config, os.environ, redact, args.role)
    if settings is None:
        return EXIT_CONFIG
    redact = install(
        [settings.telegram.token, settings.telegram.webhook_secret, settings.database_url]
    )
    for name in BOT_ONLY_VARIABLES:
        os.environ.pop(name, None)
    found = problems(settings)
    if found:
        for problem in found:
            say(problem, redact)
        return EXIT_CONFIG
    from telegram.error import InvalidToken, NetworkError, TelegramError

    try:
        asyncio.run(reach_telegram(settings.telegram))
        if settings.access.nobody:
            log.warning("%s", NOBODY_ALLOWED)
        run(settings, cpu_inline=args.cpu_inline)
    except InvalidToken as exc:
        log.debug("Telegram refused the bot", exc_info=True)
        say(refusal(exc, settings.telegram), redact)
        return EXIT_CONFIG
    except NetworkError as exc:
        # Not a traceback: under systemd, Restart=on-failure tries again shortly.
        log.debug("cannot reach Telegram", exc_info=True)
        where = settings.telegram.base_url or "api.telegram.org"
        say(
            f"cannot reach Telegram ({where}): {exc.message}; check the network and "
            "telegram.base_url",
            redact,
        )
        return EXIT_NETWORK
    except TelegramError as exc:
        log.debug("Telegram error at start", exc_info=True)
        say(f"Telegram answered an error at start: {exc.message}", redact)
        return EXIT_NETWORK
    except Exception:
        # Through logging, so the redaction filter masks the traceback too.
        log.critical("animate-bot stopped by an unexpected error", exc_info=True)
        return EXIT_NETWORK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
