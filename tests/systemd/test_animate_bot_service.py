"""The systemd units as an operator installs them: each parses, is hardened, and its install
steps give files the service's own unprivileged user can start from (one host: animate-bot;
several hosts: animate-bot-frontend and animate-bot-consumer, which also read the database
URL).

Without PID-1 systemd we do what systemd would do at start (copy the credential, create the
state directory) and run the unit's command as an unprivileged user with ``setpriv``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "animate-bot.service"
UNITS = {path.name: path for path in sorted((ROOT / "systemd").glob("*.service"))}
DATABASE_URL = "postgresql://animate:db-pass-w0rd@db.example/animate"
INSTALL_DIR = "/opt/animate-bot"
TOKEN = "123456:ABCdef-service-token"
ADMIN = 4242
SERVICE_UID = 65534  # nobody: stands in for DynamicUser's throwaway user
MAX_EXPOSURE = 2.0  # systemd-analyze security's score for the unit (0 best, 10 worst)


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        # scripts/test installs Debian's systemd package when it can (root, apt-get).
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    return found


def directives(text: str) -> dict[str, list[str]]:
    """The unit's ``Key=value`` lines, every value of each key in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def install_steps(text: str) -> list[str]:
    """The shell commands of the unit's install comment that lay out files (not git or pip)."""
    steps = []
    for line in text.splitlines():
        command = line.removeprefix("#").strip()
        for prefix in ("sudo install ", "sudo sh -c 'umask 077 && cat > /etc/"):
            if command.startswith(prefix):
                steps.append(command.removeprefix("sudo "))
    return steps


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder the service user can enter, standing in for ``/`` (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="animate-bot-root-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def relocate(value: str, world: Path) -> str:
    """A path in the unit, moved under ``world``; the install dir is this checkout."""
    value = value.replace(f"{INSTALL_DIR}/.venv/bin/", f"{Path(sys.prefix) / 'bin'}/")
    return re.sub(r"(?<![\w.])/(etc|var|run)/", lambda m: f"{world}/{m.group(1)}/", value)


class Installed:
    """The files the unit's install steps make, and a way to start the unit's command."""

    def __init__(self, world: Path, unit: Path = UNIT) -> None:
        self.world = world
        self.unit = directives(unit.read_text(encoding="utf-8"))
        (world / "etc" / "systemd" / "system").mkdir(parents=True)
        for step in install_steps(unit.read_text(encoding="utf-8")):
            command = relocate(step, world)  # run in this checkout, as in /opt/animate-bot
            pasted = DATABASE_URL if "database-url" in step else TOKEN
            subprocess.run(command, shell=True, cwd=ROOT, input=pasted, text=True, check=True)
        self.config_dir = world / "etc" / "animate-bot"
        self.config = self.config_dir / "config.toml"
        # The one edit the steps ask for: who may use the bot.
        text = self.config.read_text(encoding="utf-8")
        self.config.write_text(text.replace("admins = []", f"admins = [{ADMIN}]"))

    def systemd_start(self) -> dict[str, str]:
        """What systemd does before ExecStart=: credentials, directories, environment."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        credentials = self.world / "run" / "credentials" / "animate-bot.service"
        credentials.mkdir(parents=True)
        for spec in self.unit.get("LoadCredential", []):
            name, _, source = spec.partition(":")
            copy = credentials / name
            shutil.copyfile(relocate(source, self.world), copy)
            os.chown(copy, SERVICE_UID, SERVICE_UID)
            copy.chmod(0o400)
        os.chown(credentials, SERVICE_UID, SERVICE_UID)
        credentials.chmod(0o500)
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
        for key, base in (("StateDirectory", "var/lib"), ("CacheDirectory", "var/cache")):
            for name in self.unit.get(key, []):
                folder = self.world / base / name
                folder.mkdir(parents=True)
                os.chown(folder, SERVICE_UID, SERVICE_UID)
                folder.chmod(0o700)
        for assignment in self.unit.get("Environment", []):
            key, _, value = assignment.partition("=")
            env[key] = relocate(value, self.world)
        return env

    def run_as_service(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """The unit's ExecStart= (plus ``extra`` arguments) as the unprivileged service user."""
        env = self.systemd_start()
        (command,) = self.unit["ExecStart"]
        argv = [relocate(arg, self.world) for arg in shlex.split(command)]
        setpriv = ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_UID}", "--clear-groups"]
        (workdir,) = self.unit["WorkingDirectory"]
        return subprocess.run(
            [*setpriv, *argv, *extra],
            cwd=relocate(workdir, self.world),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to the service's user needs root (CI runs as root)")


@pytest.fixture
def installed(world: Path) -> Installed:
    need_root()
    return Installed(world)


@pytest.fixture(params=sorted(UNITS))
def unit(request: pytest.FixtureRequest) -> Path:
    return UNITS[request.param]


def test_the_unit_parses_without_a_warning(world: Path, unit: Path) -> None:
    # verify checks that ExecStart= exists: point the install dir at this checkout's venv.
    (world / ".venv" / "bin").mkdir(parents=True)
    (world / ".venv" / "bin" / "animate-bot").symlink_to(Path(sys.prefix) / "bin" / "animate-bot")
    copy = world / unit.name
    copy.write_text(unit.read_text(encoding="utf-8").replace(INSTALL_DIR, str(world)))

    result = subprocess.run(
        [systemd_analyze(), "verify", str(copy)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # unknown keys are only warnings


def test_the_unit_is_hardened(unit: Path) -> None:
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            f"--threshold={MAX_EXPOSURE * 10:.0f}",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE
    assert result.returncode == 0


def test_a_config_error_does_not_restart_the_service(unit: Path) -> None:
    keys = directives(unit.read_text(encoding="utf-8"))

    from bot.__main__ import EXIT_CONFIG

    assert keys["Restart"] == ["on-failure"]
    assert str(EXIT_CONFIG) in keys["RestartPreventExitStatus"][0].split()
    # systemd ignores ExecStartPre='s status for RestartPreventExitStatus=: no check there.
    assert "ExecStartPre" not in keys


def test_the_installed_service_passes_its_config_check_as_its_own_user(
    world: Path, unit: Path
) -> None:
    need_root()
    installed = Installed(world, unit)

    result = installed.run_as_service("--check-config")

    assert result.returncode == 0, result.stderr
    assert "token=set" in result.stdout
    assert "1 admins" in result.stdout
    assert result.stderr == ""
    assert TOKEN not in result.stdout
    assert "db-pass-w0rd" not in result.stdout
    role = unit.stem.removeprefix("animate-bot").removeprefix("-") or "all"
    # A role's unit runs that role on the shared database it reads from its credential.
    where = "PostgreSQL db.example/animate" if role != "all" else "SQLite data/bot.sqlite3"
    assert f"database: {where}; role {role}" in result.stdout


def test_a_root_only_token_file_is_refused_with_one_clear_line(installed: Installed) -> None:
    # The mistake the unit's steps avoid: pointing token_file at the root-only original.
    token = installed.config_dir / "telegram-token"
    text = installed.config.read_text(encoding="utf-8")
    installed.config.write_text(text.replace("# token_file = ", f'token_file = "{token}"\n# '))

    result = installed.run_as_service("--check-config")

    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "telegram.token_file" in line
    assert "permission denied" in line
    assert "LoadCredential=" in line


def test_a_root_only_config_is_refused_with_one_clear_line(installed: Installed) -> None:
    installed.config.chmod(0o600)  # what the old steps (a 750 root folder) amounted to

    result = installed.run_as_service("--check-config")

    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert str(installed.config) in line
    assert "permission denied" in line and "chmod 644" in line


def test_a_config_error_stops_the_service_itself_with_one_line(installed: Installed) -> None:
    text = installed.config.read_text(encoding="utf-8")
    installed.config.write_text(text.replace("max_queued_per_user", "max_queued"))

    result = installed.run_as_service()  # the service's own start, no --check-config

    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "limits.max_queued: unknown key" in line
