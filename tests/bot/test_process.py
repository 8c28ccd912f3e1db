"""The ``animate-bot`` command as users run it: a real process, the GPU work in its own child
process, killed mid-clip and started again on the same database."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot import texts
from generator.encode import probe_video
from tests.support.fake_botapi import TOKEN, FakeBotApi, FakeUser
from tests.support.images import photo_bytes
from tests.support.tiny_svd import tiny_config_toml

ROOT = Path(__file__).resolve().parents[2]
ANN = FakeUser(4242, "Ann")
SLOW = 60.0  # two Python processes importing torch on a shared 2-core machine


@pytest.fixture
def config(tmp_path: Path, tiny_svd_dir: Path, fake_botapi: FakeBotApi) -> Path:
    return write_config(tmp_path, tiny_svd_dir, fake_botapi)


def write_config(tmp_path: Path, tiny_svd_dir: Path, fake: FakeBotApi, worker: str = "") -> Path:
    """The bot's config file: the loopback Bot API, Ann allowed, the tiny model in a GPU
    process; ``worker`` adds lines to the ``[worker]`` table."""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[telegram]
base_url = "{fake.base_url}"
base_file_url = "{fake.base_file_url}"

[access]
allowed_users = [{ANN.id}]

[worker]
progress_edit_interval_s = 0.01
gpu_process = true
{worker}

[data]
dir = "{tmp_path / "data"}"
"""
        # Many tiny steps: the clip takes a few seconds, long enough to be killed in the middle.
        + tiny_config_toml(tiny_svd_dir, frames=2, steps=60)
    )
    return path


def start_bot(config: Path, log: Path, **extra_env: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
    env["TELEGRAM_BOT_TOKEN"] = TOKEN
    env.update(extra_env)
    env["OMP_NUM_THREADS"] = "1"  # the GPU child on CPU: one thread each, no oversubscription
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killing it takes the GPU child too
    )


def counts(db: Path) -> list[tuple[str, int, int, int]]:
    """Each job's status, runs, own failures and crashes under it."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, attempts, failures, crashes FROM jobs").fetchall()


def gpu_process(bot: subprocess.Popen) -> int | None:
    """The pid of the bot's GPU child (spawned by multiprocessing; not its resource tracker)."""
    # Any of the bot's threads may have started it (the spawn runs off the event loop).
    children = [
        pid
        for task in Path(f"/proc/{bot.pid}/task").iterdir()
        for pid in _read(task / "children").split()
    ]
    for pid in children:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                return int(pid)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # a thread that ended while we looked
        return ""


async def animate(fake: FakeBotApi) -> int:
    """Ann sends a photo and presses Animate; returns her photo's message id."""
    photo = fake.send_photo(ANN, photo_bytes((96, 64)))
    card = await fake.wait_for(
        lambda: next(
            (
                m.message_id
                for m in fake.messages(ANN.id).values()
                if m.reply_to_message_id == photo.message_id and "Animate" in str(m.buttons)
            ),
            None,
        ),
        timeout=SLOW,
        what="settings card",
    )
    fake.press_button(ANN, card, "Animate")
    return photo.message_id


async def progress_shown(fake: FakeBotApi, after: int) -> None:
    """Wait for a progress edit ("step n/m") after the first ``after`` calls."""
    await fake.wait_for(
        lambda: any(
            "step" in str(c.params.get("text")) for c in fake.calls("editMessageText")[after:]
        ),
        timeout=SLOW * 2,
        what="SVD progress",
    )


async def test_killed_mid_clip_more_times_than_max_attempts_still_delivers_the_clip_once(
    tmp_path, tiny_svd_dir, fake_botapi
):
    fake = fake_botapi
    # One try allowed for the photo's own failures: any restart spent from it would fail it.
    config = write_config(tmp_path, tiny_svd_dir, fake, "max_attempts = 1\nmax_crashes = 10")
    db = tmp_path / "data" / "bot.sqlite3"
    log = tmp_path / "bot.log"
    bot = start_bot(config, log)
    try:
        photo_id = await animate(fake)
        seen = 0
        for restart in (1, 2):
            await progress_shown(fake, after=seen)  # this life is making the clip
            os.killpg(bot.pid, signal.SIGKILL)  # power cut: no grace, no cleanup; twice
            bot.wait(timeout=30)
            assert fake.videos(ANN.id) == []
            assert counts(db) == [("running", restart, 0, restart - 1)]
            seen = len(fake.calls())
            bot = start_bot(config, log)

        video = await fake.wait_for_video(ANN.id, timeout=SLOW * 2)
        out = tmp_path / "got.mp4"
        out.write_bytes(video.data)
        assert probe_video(out).frames == 2
        assert video.reply_to_message_id == photo_id

        # A clean stop (SIGTERM, as systemd sends) exits 0 and sends nothing twice.
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=SLOW) == 0, log.read_text()[-3000:]
        assert len(fake.videos(ANN.id)) == 1
        assert counts(db) == [("done", 3, 0, 2)]  # three runs, two crashes, no failure
        assert TOKEN not in log.read_text()
    finally:
        print(log.read_text()[-4000:])  # shown by pytest when the test fails
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()


async def test_a_job_that_crashes_the_gpu_process_every_time_fails_after_the_crash_cap(
    tmp_path, tiny_svd_dir, fake_botapi
):
    fake = fake_botapi
    config = write_config(tmp_path, tiny_svd_dir, fake, "max_crashes = 2")
    db = tmp_path / "data" / "bot.sqlite3"
    log = tmp_path / "bot.log"
    bot = start_bot(config, log)
    try:
        await animate(fake)
        seen = 0
        for _ in range(2):
            # Every time this photo's clip starts, the GPU process dies (a segfault, say).
            await progress_shown(fake, after=seen)
            gpu = gpu_process(bot)
            assert gpu is not None
            seen = len(fake.calls())
            os.kill(gpu, signal.SIGKILL)

        told = await fake.wait_for_text(ANN.id, texts.given_up(), timeout=SLOW)
        assert told.content == texts.given_up()
        assert counts(db) == [("failed", 2, 0, 2)]
        assert bot.poll() is None  # the bot itself is still serving
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=SLOW) == 0, log.read_text()[-3000:]
        assert fake.videos(ANN.id) == []
    finally:
        print(log.read_text()[-4000:])
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()


def test_unreachable_telegram_is_one_clear_line_and_a_failure_exit(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[telegram]\nbase_url = "http://127.0.0.1:{port}/bot"\n\n[data]\ndir = "{tmp_path}"\n'
    )
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
    env["TELEGRAM_BOT_TOKEN"] = TOKEN
    result = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SLOW,
    )
    assert result.returncode == 1
    assert "animate-bot: cannot reach Telegram (http://127.0.0.1:" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


async def test_webhook_mode_answers_telegrams_posts_and_refuses_unsigned_ones(
    tmp_path, fake_botapi
):
    import json
    import socket
    import urllib.error
    import urllib.request

    fake = fake_botapi
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = "https://bot.example.org/telegram"  # public, behind a TLS proxy
    local = f"http://127.0.0.1:{port}/telegram"
    fake.webhook_proxy_to = local
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[telegram]
base_url = "{fake.base_url}"
base_file_url = "{fake.base_file_url}"
mode = "webhook"
webhook_url = "{url}"
webhook_listen = "127.0.0.1"
webhook_port = {port}
webhook_path = "telegram"

[access]
allowed_users = [{ANN.id}]

[data]
dir = "{tmp_path / "data"}"
"""
    )
    log = tmp_path / "bot.log"
    bot = start_bot(config, log, TELEGRAM_WEBHOOK_SECRET="s3cret-header-value")
    try:
        registered = await fake.wait_for(lambda: fake.webhook, timeout=SLOW, what="setWebhook")
        assert registered == (url, "s3cret-header-value")

        # Telegram's delivery carries the secret: the bot answers /start.
        fake.send_command(ANN, "/start")
        await fake.wait_for_text(ANN.id, "Animate", timeout=SLOW)

        # Anyone else posting a forged update is refused and nothing is sent.
        forged = {
            "update_id": 1,
            "message": {
                "message_id": 1,
                "date": 0,
                "chat": {"id": ANN.id, "type": "private"},
                "from": {"id": ANN.id, "is_bot": False, "first_name": "Ann"},
                "text": "/help",
                "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
            },
        }
        request = urllib.request.Request(
            local, data=json.dumps(forged).encode(), headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)  # noqa: ASYNC210 (a test's one request)
        assert refused.value.code == 403
        sent = len(fake.calls("sendMessage"))

        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=SLOW) == 0, log.read_text()[-3000:]
        assert len(fake.calls("sendMessage")) == sent
    finally:
        print(log.read_text()[-4000:])
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()
