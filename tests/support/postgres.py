"""A throwaway PostgreSQL server for the tests: one cluster per test session, one database each.

The server is Debian's (``scripts/test`` installs it when missing); its binaries are found
under ``/usr/lib/postgresql/<version>/bin`` or on ``PATH``. The cluster lives in a temporary
folder, listens only on a unix socket there (no TCP port to collide on), trusts local
connections, and runs with durability off (``fsync``): a crash loses only test data.
PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` user (made by
Debian's package) or ``nobody``.

Under ``CI=true`` a server that cannot start fails every test that needs it; only a local
run without the binaries skips, saying why.

Example::

    async def test_something(postgres_url: str) -> None:
        db = await open_database(postgres_url)  # a fresh, empty database
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

#: The superuser initdb creates; trust authentication, so no password.
SUPERUSER = "postgres"


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway cluster: where its socket is and how to reach a database."""

    socket_dir: Path

    def url(self, dbname: str) -> str:
        """A ``postgresql://`` URL for ``dbname`` over the unix socket."""
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}"

    def admin(self) -> psycopg.Connection:
        """An autocommit connection to the ``postgres`` database (CREATE/DROP DATABASE)."""
        return psycopg.connect(self.url("postgres"), autocommit=True)


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding a server, else the one on ``PATH``."""
    found = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/postgres")
        if path.parent.parent.name.isdigit()
    ]
    if found:
        return max(found, key=lambda path: int(path.parent.name))
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_server_user(argv: list[str]) -> list[str]:
    """Run ``argv`` as an unprivileged user when we are root (the server refuses root)."""
    if os.geteuid() != 0:
        return argv
    # util-linux puts it in /usr/sbin, which a minimal PATH (env -i, some CI runners) lacks.
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    return [runuser or "runuser", "-u", _server_user(), "--", *argv]


def _server_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        name = Path(argv[0]).name
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")


def start_server(root: Path, bin_dir: Path) -> PostgresServer:
    """initdb a cluster under ``root`` and start it on a unix socket in ``root``."""
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        user = pwd.getpwnam(_server_user())
        os.chown(root, user.pw_uid, user.pw_gid)
    _run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
    )
    options = (
        f"-k {root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off -c max_connections=200"
    )
    try:
        pg_ctl = str(bin_dir / "pg_ctl")
        _run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"])
    except RuntimeError as exc:
        server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{exc}\n{server_log}") from None
    return PostgresServer(socket_dir=root)


def stop_server(root: Path, bin_dir: Path) -> None:
    """Stop the cluster at once (its data is thrown away next)."""
    _run([str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL cluster, started on first use and stopped at the end."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        reason = "no PostgreSQL server (scripts/test installs Debian's postgresql as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs PostgreSQL: {reason}")
        pytest.skip(reason)
    # Not pytest's tmp_path: its folders are root-only, and the server runs as another user.
    # A short path, too: a unix socket's path must fit in about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="pgtest-"))
    try:
        server = start_server(root, bin_dir)
    except Exception as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc}")
    try:
        yield server
    finally:
        stop_server(root, bin_dir)
        shutil.rmtree(root, ignore_errors=True)


_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's cluster, dropped after the test."""
    name = f"test_{os.getpid()}_{next(_numbers)}"
    with postgres_server.admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.url(name)
    finally:
        with postgres_server.admin() as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
