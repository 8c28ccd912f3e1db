"""Several hosts on one PostgreSQL, as real processes: a Telegram front end and two GPU
consumers, each with its own data folder (no shared disk), against the loopback Bot API.
A consumer killed mid-clip loses nothing: the other takes its job back and delivers it once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.bot.test_process import ANN, ROOT, SLOW, animate, progress_shown
from tests.support.fake_botapi import TOKEN, FakeBotApi
from tests.support.tiny_svd import tiny_config_toml


def host_config(tmp_path: Path, host: str, tiny_svd_dir: Path, fake: FakeBotApi) -> Path:
    """One host's config: the loopback Bot API, the tiny model made in the consumer's own
    process, heartbeats fast (a dead consumer's lease soon goes stale), and the data folder
    "data" relative to the host's own working folder, as under systemd: a photo path the
    front end stores names nothing on the consumers' hosts."""
    (tmp_path / host).mkdir()
    path = tmp_path / host / "config.toml"
    path.write_text(
        f"""
[telegram]
base_url = "{fake.base_url}"
base_file_url = "{fake.base_file_url}"

[access]
allowed_users = [{ANN.id}]

[worker]
progress_edit_interval_s = 0.01
gpu_process = false
heartbeat_s = 0.5
stale_after_s = 10.0

[service]
name = "{host}"

[data]
dir = "data"
"""
        # Many tiny steps: the clip takes a few seconds, long enough to be killed in the middle.
        + tiny_config_toml(tiny_svd_dir, frames=2, steps=60)
    )
    return path


def running_on(url: str) -> list[str | None]:
    """The consumer (``<host>/gpu0``) of each running job."""
    with psycopg.connect(url) as conn:
        return [
            row[0] for row in conn.execute("SELECT worker_id FROM jobs WHERE status = 'running'")
        ]


def jobs(url: str) -> list[tuple[str, int, int]]:
    """Each job's status, runs and crashes under it."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT status, attempts, crashes FROM jobs").fetchall()


async def test_a_consumer_killed_mid_clip_on_one_host_is_replaced_by_another(
    tmp_path: Path, tiny_svd_dir: Path, fake_botapi: FakeBotApi, postgres_url: str
) -> None:
    fake = fake_botapi
    hosts = {
        name: (host_config(tmp_path, name, tiny_svd_dir, fake), tmp_path / name / "bot.log")
        for name in ("front", "gpu-a", "gpu-b")
    }
    procs = {
        name: start_host(config, log, "frontend" if name == "front" else "consumer", postgres_url)
        for name, (config, log) in hosts.items()
    }
    try:
        photo_id = await animate(fake)
        await progress_shown(fake, after=0)  # one consumer is making the clip
        [worker] = running_on(postgres_url)
        assert worker is not None
        doomed, survivor = ("gpu-a", "gpu-b") if worker.startswith("gpu-a/") else ("gpu-b", "gpu-a")
        os.killpg(procs[doomed].pid, signal.SIGKILL)  # power cut on that host
        procs[doomed].wait(timeout=30)

        video = await fake.wait_for_video(ANN.id, timeout=SLOW * 2)
        assert video.reply_to_message_id == photo_id
        # Two runs, one crash under it; ``done`` is written as soon as sendVideo answers.
        await fake.wait_for(
            lambda: jobs(postgres_url) == [("done", 2, 1)], timeout=SLOW, what="job done"
        )
        # The survivor had no copy of the photo: it fetched it by its Telegram file id.
        assert f"{survivor}/gpu0" in hosts[survivor][1].read_text()
        assert "photo fetched from Telegram" in hosts[survivor][1].read_text()

        for name in ("front", survivor):
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(timeout=SLOW) == 0, hosts[name][1].read_text()[-3000:]
        assert len(fake.videos(ANN.id)) == 1  # delivered exactly once
        for _, log in hosts.values():
            assert TOKEN not in log.read_text()
    finally:
        for name, proc in procs.items():
            print(f"--- {name}\n{hosts[name][1].read_text()[-3000:]}")  # shown when it fails
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start_host(config: Path, log: Path, role: str, database_url: str) -> subprocess.Popen:
    """``python -m bot --role <role>`` in the config's folder (the host's own disk), with
    the database URL in its environment."""
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
    env.update(TELEGRAM_BOT_TOKEN=TOKEN, ANIMATE_DATABASE_URL=database_url, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, from another working folder
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "--config", str(config), "--role", role],
        cwd=config.parent,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, killed whole
    )
