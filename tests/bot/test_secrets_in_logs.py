"""Secrets never reach a log: the real ``animate-bot`` at DEBUG against a Bot API that refuses
the token (401), one reached through a mistyped address (404), and one that works.

Also the first-run story: an unreachable Telegram is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.fake_botapi import FakeBotApi, FakeUser

ROOT = Path(__file__).resolve().parents[2]
ANIMATE_BOT = Path(sys.executable).parent / "animate-bot"
# Recognisable, and shaped like a real token so shape-based masking is not what saves us.
SECRET = "7654321:SECRET-token-that-must-never-be-logged"
HF_SECRET = "hf_SECRETSECRETSECRETSECRETSECRET123456"
PASSWORD = "pa55word-in-base-url"
ANN = FakeUser(4242, "Ann")
SLOW = 60.0  # a Python process importing PTB and torch on a shared 2-core machine


def write_config(tmp_path: Path, base_url: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[telegram]\nbase_url = "{base_url}"\n\n[access]\nallowed_users = [{ANN.id}]\n\n'
        f'[data]\ndir = "{tmp_path / "data"}"\n'
    )
    return config


def bot_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
    env.update(TELEGRAM_BOT_TOKEN=SECRET, HF_TOKEN=HF_SECRET, OMP_NUM_THREADS="1")
    return env


def at_debug(config: Path, log: Path) -> list[str]:
    logging = ["--log-level", "DEBUG", "--log-file", str(log)]
    return [str(ANIMATE_BOT), "--config", str(config), *logging]


def run_bot(config: Path, log: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        at_debug(config, log), cwd=ROOT, env=bot_env(), capture_output=True, timeout=SLOW
    )


def start_bot(config: Path, log: Path, out: Path, err: Path) -> subprocess.Popen:
    return subprocess.Popen(
        at_debug(config, log),
        cwd=ROOT,
        env=bot_env(),
        stdout=out.open("wb"),
        stderr=err.open("wb"),
        start_new_session=True,  # its own process group: a kill takes the GPU child too
    )


def gpu_process_environment(log: Path) -> list[bytes]:
    """The environment the bot's GPU process was started with (its pid is in the log)."""
    (pid,) = re.findall(rb"GPU process (\d+) started", log.read_bytes())
    return Path(f"/proc/{int(pid)}/environ").read_bytes().split(b"\0")


def assert_no_secret(*outputs: bytes) -> None:
    for output in outputs:
        for secret in (SECRET, HF_SECRET, PASSWORD):
            assert secret.encode() not in output
            assert secret.split(":")[-1].encode() not in output


def test_a_refused_token_and_a_wrong_address_say_different_things_and_never_the_token(
    tmp_path: Path, fake_botapi: FakeBotApi
) -> None:
    log = tmp_path / "bot.log"
    fake_botapi.token = "1111111:the-token-the-server-expects"  # ours is refused: 401

    refused = run_bot(write_config(tmp_path, fake_botapi.base_url), log)

    fake_botapi.token = SECRET
    wrong = fake_botapi.base_url.replace("http://", f"http://ann:{PASSWORD}@")
    wrong = wrong.replace("/bot", "/telegram/bot")  # a mistyped self-hosted address: 404
    missing = run_bot(write_config(tmp_path, wrong), log)

    assert refused.returncode == missing.returncode == 2  # systemd: no restart loop
    refused_line = refused.stderr.decode().splitlines()[-1]
    missing_line = missing.stderr.decode().splitlines()[-1]
    assert "refused the bot token (401 Unauthorized)" in refused_line
    assert "404 Not Found" in missing_line and "telegram.base_url" in missing_line
    assert "refused the bot token" not in missing_line
    # DEBUG shows the details (PTB's "The token `...` was rejected"), masked.
    assert b"was rejected" in log.read_bytes()
    assert b"Traceback" in refused.stderr
    assert_no_secret(refused.stdout, refused.stderr, missing.stdout, missing.stderr)
    assert_no_secret(log.read_bytes())


async def test_a_working_bot_at_debug_logs_no_secret_and_its_gpu_process_never_sees_the_token(
    tmp_path: Path, fake_botapi: FakeBotApi
) -> None:
    fake_botapi.token = SECRET
    log, out, err = tmp_path / "bot.log", tmp_path / "stdout", tmp_path / "stderr"
    config = write_config(tmp_path, fake_botapi.base_url)
    bot = start_bot(config, log, out, err)
    try:
        fake_botapi.send_command(ANN, "/start")
        await fake_botapi.wait_for_text(ANN.id, "Animate", timeout=SLOW)

        # The GPU process started before polling did; it has what model loads need, only.
        environ = gpu_process_environment(log)
        assert f"HF_TOKEN={HF_SECRET}".encode() in environ
        assert not [v for v in environ if v.startswith(b"TELEGRAM_BOT_TOKEN=")]
        assert SECRET.encode() not in b"\0".join(environ)

        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=SLOW) == 0
    finally:
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()
    assert b"Set Bot API URL" in log.read_bytes()  # DEBUG really was on
    assert_no_secret(out.read_bytes(), err.read_bytes(), log.read_bytes())


def test_unreachable_telegram_is_exactly_one_line_and_a_failure_exit(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, f"http://127.0.0.1:{port}/bot")

    result = subprocess.run(
        [str(ANIMATE_BOT), "--config", str(config)],
        cwd=ROOT,
        env=bot_env(),
        capture_output=True,
        text=True,
        timeout=SLOW,
    )

    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"animate-bot: cannot reach Telegram (http://127.0.0.1:{port}/bot)")
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing started before Telegram answered
