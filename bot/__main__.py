"""The ``animate-bot`` command: check the config, or run the Telegram bot until SIGTERM.

Example::

    animate-bot --config /etc/animate-bot/config.toml --check-config
    animate-bot --config /etc/animate-bot/config.toml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.config import Settings, load_settings, summary
from generator.config import ConfigError

log = logging.getLogger("bot")

EXIT_OK = 0
EXIT_NETWORK = 1
EXIT_CONFIG = 2


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
        "--cpu-inline",
        action="store_true",
        help="make clips inside the bot process instead of a separate GPU process",
    )
    return parser.parse_args(argv)


def problems(settings: Settings) -> list[str]:
    """What stops the bot from running with ``settings`` (beyond what loading checks)."""
    found = []
    if not settings.telegram.token:
        found.append(
            "no bot token: set TELEGRAM_BOT_TOKEN, telegram.token_file or the systemd "
            "credential telegram-token"
        )
    parent = settings.data_dir if settings.data_dir.exists() else settings.data_dir.parent
    if not os.access(parent, os.W_OK):
        found.append(f"data.dir: {settings.data_dir} is not writable")
    return found


def load(path: Path | None, env: Mapping[str, str]) -> Settings | None:
    """Settings, or ``None`` after printing why not (the key that is wrong)."""
    try:
        return load_settings(path, env)
    except ConfigError as exc:
        print(f"animate-bot: config error: {exc}", file=sys.stderr)
        return None


def check_config(path: Path | None, env: Mapping[str, str]) -> int:
    """``--check-config``: print a summary and any problems; 0 when the bot could start."""
    settings = load(path, env)
    if settings is None:
        return EXIT_CONFIG
    print(summary(settings))
    found = problems(settings)
    for problem in found:
        print(f"problem: {problem}", file=sys.stderr)
    return EXIT_CONFIG if found else EXIT_OK


def run(settings: Settings, *, cpu_inline: bool) -> None:
    """Open the store, build the worker and the app, and serve until a stop signal."""
    # Imported here so --check-config stays quick and needs neither torch nor a network.
    from bot.app import build_app
    from bot.gpu import InlineRunner, ProcessRunner
    from bot.store import Store
    from bot.worker import Worker

    settings.photos_dir.mkdir(parents=True, exist_ok=True)
    # PTB runs on the thread's current loop; open the store on that same loop first.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    store = loop.run_until_complete(Store.open(settings.db_path))
    if cpu_inline or not settings.worker.gpu_process:
        from generator.router import Generator

        runner = InlineRunner(Generator(settings.generator, credentials=settings.veo))
    else:
        runner = ProcessRunner(settings.generator, warm_up=True)
    worker = Worker(store=store, settings=settings, runner=runner)
    app = build_app(settings, store, worker)
    telegram = settings.telegram
    log.info("starting in %s mode; %s", telegram.mode, summary(settings).replace("\n", "; "))
    # Until SIGTERM/SIGINT; each update is confirmed to Telegram only once handled, and
    # post_stop then gives the running job its grace.
    from bot.intake import run as serve_updates

    serve_updates(app, telegram)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs request URLs at INFO, and Bot API URLs hold the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    if args.check_config:
        return check_config(args.config, os.environ)
    settings = load(args.config, os.environ)
    if settings is None:
        return EXIT_CONFIG
    found = problems(settings)
    if found:
        for problem in found:
            print(f"animate-bot: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    from telegram.error import InvalidToken, NetworkError

    try:
        run(settings, cpu_inline=args.cpu_inline)
    except InvalidToken:
        print(
            "animate-bot: Telegram refused the bot token; check TELEGRAM_BOT_TOKEN", file=sys.stderr
        )
        return EXIT_CONFIG
    except NetworkError as exc:
        # Not a traceback: under systemd, Restart=on-failure tries again shortly.
        where = settings.telegram.base_url or "api.telegram.org"
        print(f"animate-bot: cannot reach Telegram ({where}): {exc.message}", file=sys.stderr)
        return EXIT_NETWORK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
