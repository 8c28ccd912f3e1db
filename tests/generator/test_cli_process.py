"""The command-line tool under Ctrl-C, on a terminal, and resuming a paid Veo clip: a real
process of the CLI, driven through its pipes, a signal and a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import queue
import re
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from generator.encode import probe_video
from tests.generator.test_cli import ROOT, cli_env, run_cli
from tests.support.images import write_photo
from tests.support.tiny_svd import tiny_config_toml

#: Seconds to wait for a line or an exit before calling the run hung (never slept).
PATIENCE_S = 120.0


class CliProcess:
    """``python -m generator ARGS`` running in the background; its stderr read line by line."""

    def __init__(self, *args: str | Path, env_extra: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "generator", *map(str, args)],
            cwd=ROOT,
            env=cli_env(env_extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, wanted: Callable[[str], bool]) -> str:
        """The first stderr line for which ``wanted`` is true (blocks on the pipe)."""
        deadline = time.monotonic() + PATIENCE_S
        while True:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("the CLI ended first:\n" + "".join(self.seen))
            self.seen.append(line)
            if wanted(line):
                return line

    def finish(self) -> tuple[int, str]:
        """Its exit code and all of its stderr, once it has exited."""
        code = self.proc.wait(timeout=PATIENCE_S)
        while (line := self._lines.get(timeout=PATIENCE_S)) is not None:
            self.seen.append(line)
        return code, "".join(self.seen)


def denoising_steps(stderr: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"^denoising .* (\d+)/(\d+)$", stderr, re.M)]


def test_first_ctrl_c_stops_a_local_clip_at_the_next_step(tmp_path, tiny_svd_dir):
    config = tmp_path / "config.toml"
    config.write_text(tiny_config_toml(tiny_svd_dir, frames=3, steps=50, fps=6))
    photo = write_photo(tmp_path / "cat.jpg", size=(80, 120))
    out = tmp_path / "cat.mp4"
    cli = CliProcess(photo, "--backend", "svd", "--output", out, "--config", config)

    cli.wait_for(lambda line: line.startswith("denoising"))
    pressed = time.monotonic()
    cli.proc.send_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
    code, stderr = cli.finish()
    took = time.monotonic() - pressed

    assert code == 130, stderr
    steps = denoising_steps(stderr)
    # It stopped at the next step, not at the end: the engine's cancel callback fired.
    assert steps and steps[-1][0] <= steps[0][0] + 2 and steps[-1][1] == 50, steps
    assert "animate-photo: interrupted" in stderr
    assert "did not stop" not in stderr  # the engine stopped itself, no forced exit
    assert took < 10, took  # interpreter shutdown included; the step itself is ~0.3 s
    assert not out.exists()
    assert "Traceback" not in stderr


def veo_config(path: Path, base_url: str, *, timeout_s: float = 600.0) -> Path:
    path.write_text(
        f'[veo]\nbase_url = "{base_url}"\npoll_interval_s = 0.05\ntimeout_s = {timeout_s}\n'
    )
    return path


VEO_ENV = {"GEMINI_API_KEY": "test-key-not-real"}


@pytest.mark.parametrize("how", ["ctrl-c", "timeout"])
def test_a_paid_veo_clip_is_resumed_with_the_printed_command_not_paid_twice(
    tmp_path, fake_veo, how
):
    fake_veo.script(outcome="never")  # Veo keeps working on it
    timeout_s = 0.3 if how == "timeout" else 600.0
    config = veo_config(tmp_path / "config.toml", fake_veo.base_url, timeout_s=timeout_s)
    photo = write_photo(tmp_path / "beach.jpg", size=(120, 80))
    out = tmp_path / "beach.mp4"
    args = (photo, "--backend", "veo", "--duration", "4", "-o", out, "--config", config)
    cli = CliProcess(*args, env_extra=VEO_ENV)
    if how == "ctrl-c":
        cli.wait_for(lambda line: line.startswith("polling"))
        cli.proc.send_signal(signal.SIGINT)
    code, stderr = cli.finish()

    assert code == (130 if how == "ctrl-c" else 4), stderr
    assert len(fake_veo.submits) == 1
    operation = re.search(r"Veo operation (\S+)", stderr)
    assert operation, stderr
    name = operation.group(1)
    command = next(line for line in stderr.splitlines() if "--resume" in line)
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "generator"]
    assert words[words.index("--resume") + 1] == name
    assert not out.exists()

    fake_veo.script(outcome="file")  # later, Veo has finished
    result = run_cli(*words[3:], env_extra=VEO_ENV)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert probe_video(out).frames > 0
    assert len(fake_veo.submits) == 1  # paid once
    assert fake_veo.polls[-1].resource == name


def test_on_a_terminal_progress_is_a_bar_with_rate_and_time_left(tmp_path, tiny_svd_dir):
    config = tmp_path / "config.toml"
    config.write_text(tiny_config_toml(tiny_svd_dir, frames=3, steps=4, fps=6))
    photo = write_photo(tmp_path / "dog.jpg", size=(80, 120))
    terminal, stderr_end = os.openpty()
    # A new pseudo-terminal is 0 columns wide; a real one has a size.
    fcntl.ioctl(stderr_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator", str(photo), "--backend", "svd", "--config", config],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=stderr_end,
    )
    os.close(stderr_end)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the process closed its end of the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert proc.wait(timeout=PATIENCE_S) == 0, shown.decode(errors="replace")

    text = shown.decode(errors="replace")
    # tqdm's bar: steps done, time spent < time left, and the rate.
    assert re.search(r"denoising.*\| ?4/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/step|step/s)\]", text)
    assert "####" not in text  # not the plain lines meant for logs


def test_when_auto_falls_back_after_paying_the_veo_clip_can_still_be_fetched(
    tmp_path, fake_veo, tiny_svd_dir
):
    fake_veo.script(outcome="never")  # Veo is slow today
    config = tmp_path / "config.toml"
    config.write_text(
        tiny_config_toml(tiny_svd_dir, frames=3, steps=2, fps=6)
        + veo_config(tmp_path / "veo.toml", fake_veo.base_url, timeout_s=0.3).read_text()
    )
    photo = write_photo(tmp_path / "beach.jpg", size=(120, 80))
    out = tmp_path / "beach.mp4"
    result = run_cli(photo, "-o", out, "--config", config, env_extra=VEO_ENV)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)  # the local engine's clip
    command = next(line for line in result.stderr.splitlines() if "--resume" in line)
    words = shlex.split(command)
    assert words[words.index("--output") + 1] == str(tmp_path / "beach-veo.mp4")

    fake_veo.script(outcome="file")
    resumed = run_cli(*words[3:], env_extra=VEO_ENV)

    assert resumed.returncode == 0, resumed.stderr
    assert probe_video(tmp_path / "beach-veo.mp4").frames > 0
    assert probe_video(out).frames == 3  # the local clip is left as it was
    assert len(fake_veo.submits) == 1
