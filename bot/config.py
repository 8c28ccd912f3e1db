"""The bot's typed settings, read from one TOML file plus secrets from the environment.

Example::

    >>> settings = load_settings(Path("config.toml"), {"TELEGRAM_BOT_TOKEN": "123:abc"})
    >>> settings.limits.max_queued_per_user
    3

Each table maps onto a frozen dataclass through ``generator.config.load_section``, so an
unknown key or a bad value raises ``ConfigError`` naming the key. Secrets (the bot token,
the webhook secret, the Gemini key) never come from the TOML file and never appear in a repr.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.split import SplitMode
from generator.config import (
    ConfigError,
    GeneratorSettings,
    VeoCredentials,
    choice,
    load_generator_settings,
    load_section,
    number,
    numbers,
    path,
    url,
    veo_credentials,
)

log = logging.getLogger(__name__)

MODES = ("polling", "webhook")
#: What one process does (``[service] role``, ``--role``): everything (one host), the Telegram
#: front end only (updates, enqueue, buttons; no GPU), or GPU consumers only (claim, make,
#: deliver), which share the queue through PostgreSQL.
ROLES = ("all", "frontend", "consumer")
#: The environment variable that holds ``[database]``'s URL (it may hold a password).
DATABASE_URL_VARIABLE = "ANIMATE_DATABASE_URL"
#: The systemd credential that holds the database URL, when neither of the above is set.
DATABASE_URL_CREDENTIAL = "database-url"
TELEGRAM_ID_MAX = 2**53  # Telegram user ids fit in 52 bits
DAY_S = 86400.0


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class TelegramSettings:
    """How to reach Telegram. ``token`` is filled from the environment or ``token_file``."""

    # a file holding only the token, readable by the service
    token_file: Path | None = path(None, "file")
    base_url: str = url()  # a local Bot API server, e.g. "http://127.0.0.1:8081/bot"
    base_file_url: str = url()  # its file URL, e.g. "http://127.0.0.1:8081/file/bot"
    mode: str = choice("polling", *MODES)
    webhook_url: str = url()  # public HTTPS URL Telegram posts to (webhook mode)
    webhook_listen: str = "127.0.0.1"  # address the webhook server binds (behind a proxy)
    webhook_port: int = number(8443, 1, 65535)
    webhook_path: str = "telegram"  # URL path the webhook server answers on
    # updates handled at once; the GPU queue is separate
    concurrent_updates: int = number(16, 1, 1024)
    token: str = field(default="", repr=False)
    webhook_secret: str = field(default="", repr=False)

    def validate(self, name: str) -> None:
        if self.mode == "webhook":
            _check(
                self.webhook_url.startswith("https://"),
                f"{name}.webhook_url",
                "webhook mode needs an https:// URL",
            )


@dataclass(frozen=True)
class AccessSettings:
    """Who may use the bot. Private unless ``public``; admins are always allowed."""

    allowed_users: frozenset[int] = numbers(1, TELEGRAM_ID_MAX)
    admins: frozenset[int] = numbers(1, TELEGRAM_ID_MAX)
    public: bool = False

    @property
    def nobody(self) -> bool:
        """Whether no one at all may use the bot."""
        return not (self.public or self.allowed_users or self.admins)


@dataclass(frozen=True)
class LimitSettings:
    """Per-user and overall limits. 0 turns a limit off."""

    max_queued_per_user: int = number(3, 0, 1000)
    daily_jobs_per_user: int = number(20, 0, 100_000)
    veo_user_daily_usd: float = number(4.0, 0.0, 100_000.0)  # one 8 s clip at $0.40/s
    veo_month_usd: float = number(40.0, 0.0, 1_000_000.0)
    queue_ttl_s: float = number(21600.0, 0.0, 30 * DAY_S)
    max_photo_bytes: int = number(20 * 1024 * 1024, 0, 2**31)
    # Photos decoded at once at intake: each decode holds the whole bitmap in memory.
    max_concurrent_decodes: int = number(2, 1, 64)


@dataclass(frozen=True)
class WorkerSettings:
    """The GPU consumer."""

    heartbeat_s: float = number(5.0, 0.0, 3600.0, above=0.0)
    stale_after_s: float = number(120.0, 0.0, DAY_S, above=0.0)
    shutdown_grace_s: float = number(30.0, 0.0, 3600.0)
    progress_edit_interval_s: float = number(3.0, 0.0, 3600.0, above=0.0)
    gpu_process: bool = True
    max_attempts: int = number(3, 1, 100)
    max_crashes: int = number(10, 1, 1000)

    def validate(self, name: str) -> None:
        _check(
            self.stale_after_s > self.heartbeat_s,
            f"{name}.stale_after_s",
            "must be longer than heartbeat_s",
        )


@dataclass(frozen=True)
class GpuSettings:
    """Which GPUs make clips: one GPU process, one consumer of the queue, per device."""

    # CUDA device indices (as CUDA_VISIBLE_DEVICES names them); empty: every visible CUDA
    # device, or one consumer on a machine without CUDA (CPU, Apple MPS)
    devices: tuple[str, ...] = ()
    # "auto": one clip shares its guidance passes with an idle GPU of this process when no
    # other job waits (bot.split); "off" (the default until it has run on two GPUs with
    # NCCL): one clip per GPU
    split: str = choice(SplitMode.OFF.value, *(mode.value for mode in SplitMode))
    # How long one GPU of a shared clip waits for the other (to join, and each exchange)
    # before the clip goes on alone
    split_timeout_s: float = number(300.0, 1.0, 3600.0)

    def validate(self, name: str) -> None:
        for n, device in enumerate(self.devices):
            _check(
                bool(device.strip()) and "," not in device,
                f"{name}.devices[{n}]",
                f'one device per entry (an index like "0"), got {device!r}',
            )
        _check(
            len(set(self.devices)) == len(self.devices),
            f"{name}.devices",
            "each device once (two processes on one GPU would fight over its memory)",
        )


@dataclass(frozen=True)
class DataSettings:
    """Where the database, photos and clips live."""

    dir: Path = path(Path("data"), "dir")
    # then photos of finished jobs are deleted (0 = keep forever)
    keep_photos_days: int = number(30, 0, 36500)
    # the most the folder may use; new photos are refused beyond it (0 = no limit)
    max_disk_mb: int = number(4096, 0, 2**31)


@dataclass(frozen=True)
class DatabaseSettings:
    """Where the store and the queue live: SQLite in the data folder, or the PostgreSQL URL
    in ``ANIMATE_DATABASE_URL`` or ``url_file`` (``Settings.database_url``). A URL may hold
    a password, so it never comes from the config file."""

    # a file holding only the URL, readable by the service (may start ${CREDENTIALS_DIRECTORY})
    url_file: Path | None = path(None, "file")


@dataclass(frozen=True)
class ServiceSettings:
    """What this process does."""

    role: str = choice("all", *ROLES)
    # Names this process's consumers in the jobs table (<name>/gpu0...) when the database is
    # shared; "" = the host name. Each process sharing one database needs its own; a
    # restarted process takes back the running jobs of its own name at once.
    name: str = ""

    def consumer_name(self, shared: bool) -> str:
        """The prefix of this process's consumer ids: none on a database of its own."""
        if not shared:
            return ""
        return self.name or socket.gethostname()


@dataclass(frozen=True)
class Settings:
    """Everything the bot needs."""

    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    data_dir: Path = Path("data")
    veo: VeoCredentials = field(default_factory=VeoCredentials)
    keep_photos_days: int = 30
    max_disk_mb: int = 4096
    database_url: str = field(default="", repr=False)  # "" = SQLite at db_path
    service: ServiceSettings = field(default_factory=ServiceSettings)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "bot.sqlite3"

    @property
    def database(self) -> str | Path:
        """What ``bot.db.open_database`` opens: the PostgreSQL URL, else the SQLite file."""
        return self.database_url or self.db_path

    @property
    def photos_dir(self) -> Path:
        return self.data_dir / "photos"

    @property
    def videos_dir(self) -> Path:
        return self.data_dir / "videos"

    def is_admin(self, user_id: int) -> bool:
        return user_id in self.access.admins


BOT_TABLES = ("telegram", "access", "limits", "worker", "gpu", "data", "database", "service")
GENERATOR_TABLES = ("image", "svd", "ltx", "wan", "engines", "veo", "auto", "encode")


# The name systemd's LoadCredential= gives the token in $CREDENTIALS_DIRECTORY (see the unit).
TOKEN_CREDENTIAL = "telegram-token"
CREDENTIALS_VARIABLES = ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY")


def read_token_file(path: Path, key: str = "telegram.token_file") -> str:
    """The token in ``path``; warns when the file is readable by group or others."""
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except PermissionError:
        raise ConfigError(
            f"{key}: cannot read {path}: permission denied for this user; under systemd keep "
            "the file root-only and hand it over with LoadCredential= (see the unit's comments)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by group or others; chmod 600 it", path)
    return token


def token_path(
    token_file: Path | None,
    env: Mapping[str, str],
    *,
    credential: str = TOKEN_CREDENTIAL,
    key: str = "telegram.token_file",
) -> Path | None:
    """Where the bot token is read from when ``TELEGRAM_BOT_TOKEN`` is not set.

    ``token_file`` may start with ``${CREDENTIALS_DIRECTORY}``; without ``token_file``, a
    systemd credential named ``telegram-token`` is used when the service has one. The
    database URL is found the same way (``credential``, ``key``).
    """
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    if token_file is None:
        found = Path(credentials) / credential if credentials else None
        return found if found is not None and found.exists() else None
    text = str(token_file)
    for variable in CREDENTIALS_VARIABLES:
        if text.startswith(variable):
            if not credentials:
                raise ConfigError(
                    f"{key}: {variable} is not set; systemd sets it for a "
                    "service with LoadCredential="
                )
            return Path(credentials + text.removeprefix(variable))
    return token_file


def database_url(table: Any, env: Mapping[str, str]) -> str:
    """``[database]``'s URL: ``ANIMATE_DATABASE_URL``, else ``url_file``, else the systemd
    credential ``database-url``, else "" (SQLite in the data folder)."""
    table = dict(table or {})
    if "url" in table:
        raise ConfigError(
            f"database.url: set it in {DATABASE_URL_VARIABLE} or database.url_file, not in the "
            "config file (a URL may hold a password)"
        )
    settings = load_section(DatabaseSettings, table, "database")
    found = env.get(DATABASE_URL_VARIABLE, "").strip()
    source = (
        None
        if found
        else token_path(
            settings.url_file, env, credential=DATABASE_URL_CREDENTIAL, key="database.url_file"
        )
    )
    if source is not None:
        key = "database.url_file" if settings.url_file else f"credential {DATABASE_URL_CREDENTIAL}"
        found = read_token_file(source, key)
    if found and not found.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{DATABASE_URL_VARIABLE}: must be a postgresql:// URL (leave it unset for SQLite)"
        )
    return found


def parse_settings(data: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Build ``Settings`` from parsed TOML ``data`` and the environment ``env``."""
    unknown = sorted(set(data) - set(BOT_TABLES) - set(GENERATOR_TABLES))
    if unknown:
        known = ", ".join(BOT_TABLES + GENERATOR_TABLES)
        raise ConfigError(f"{unknown[0]}: unknown table (known: {known})")
    telegram_table = dict(data.get("telegram") or {})
    secret_sources = {
        "token": "TELEGRAM_BOT_TOKEN or token_file",
        "webhook_secret": "TELEGRAM_WEBHOOK_SECRET",
    }
    for secret, source in secret_sources.items():
        # Secrets stay out of a file that gets copied around and checked in.
        if secret in telegram_table:
            raise ConfigError(f"telegram.{secret}: set it in {source}, not in the config file")
    telegram = load_section(TelegramSettings, telegram_table, "telegram")
    token = env.get("TELEGRAM_BOT_TOKEN", "").strip()
    source = None if token else token_path(telegram.token_file, env)
    if source is not None:
        key = "telegram.token_file" if telegram.token_file else f"credential {TOKEN_CREDENTIAL}"
        token = read_token_file(source, key)
    telegram = replace(
        telegram, token=token, webhook_secret=env.get("TELEGRAM_WEBHOOK_SECRET", "").strip()
    )
    if telegram.mode == "webhook":
        _check(
            bool(telegram.webhook_secret),
            "TELEGRAM_WEBHOOK_SECRET",
            "webhook mode needs a secret token so only Telegram can post updates",
        )
    generator = load_generator_settings({k: data.get(k) for k in GENERATOR_TABLES})
    data_settings = load_section(DataSettings, data.get("data"), "data")
    data_dir = data_settings.dir
    if not generator.svd.cache_dir and not env.get("TORCHINDUCTOR_CACHE_DIR"):
        # Compiled kernels in the data folder survive restarts (torch's default is in /tmp).
        svd = replace(generator.svd, cache_dir=str(data_dir / "inductor-cache"))
        generator = replace(generator, svd=svd)
    return Settings(
        telegram=telegram,
        access=load_section(AccessSettings, data.get("access"), "access"),
        limits=load_section(LimitSettings, data.get("limits"), "limits"),
        worker=load_section(WorkerSettings, data.get("worker"), "worker"),
        gpu=load_section(GpuSettings, data.get("gpu"), "gpu"),
        generator=generator,
        data_dir=data_dir,
        veo=veo_credentials(generator.veo, env),
        keep_photos_days=data_settings.keep_photos_days,
        max_disk_mb=data_settings.max_disk_mb,
        database_url=database_url(data.get("database"), env),
        service=load_section(ServiceSettings, data.get("service"), "service"),
    )


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (TOML; ``None`` for all defaults) and secrets from ``env``.

    Raises ``ConfigError`` naming the key for an unknown key, a bad value, or a file that is
    not valid TOML. A missing token is not an error here: ``--check-config`` reports it.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except PermissionError:
            raise ConfigError(
                f"{path}: cannot read: permission denied for this user; the config holds no "
                "secrets, so make it readable (chmod 644, its folder 755)"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_settings(data, env)


def summary(settings: Settings) -> str:
    """A readable summary for ``--check-config``: no secrets, only whether they are set."""
    t, a, lim, w = settings.telegram, settings.access, settings.limits, settings.worker
    g = settings.generator
    lines = [
        f"telegram: mode={t.mode} token={'set' if t.token else 'MISSING'}"
        + (f" base_url={t.base_url}" if t.base_url else "")
        + (f" webhook_url={t.webhook_url}" if t.mode == "webhook" else ""),
        f"access: {'public' if a.public else 'private'}, {len(a.allowed_users)} allowed, "
        f"{len(a.admins)} admins",
        f"limits: {lim.max_queued_per_user} queued/user, {lim.daily_jobs_per_user} jobs/day/user, "
        f"Veo ${lim.veo_user_daily_usd:.2f}/user/day, ${lim.veo_month_usd:.2f}/month",
        f"worker: {'GPU process' if w.gpu_process else 'inline'}, grace {w.shutdown_grace_s:g} s, "
        f"{w.max_attempts} attempts",
        f"gpu: devices {', '.join(settings.gpu.devices) or 'every visible CUDA device'}, "
        f"split {settings.gpu.split}",
        f"data: {settings.data_dir}",
        f"database: {database_summary(settings)}; role {settings.service.role}",
        f"svd: {g.svd.model} ({g.svd.frames} frames, {g.svd.steps} steps, {g.svd.fps} fps)",
        f"ltx: {g.ltx.model if g.ltx.enabled else 'disabled'}"
        + (f" + {g.ltx.transformer}" if g.ltx.enabled and g.ltx.transformer else ""),
        f"wan: {g.wan.model if g.wan.enabled else 'disabled'}",
        f"auto: {' > '.join(g.auto.chain)}",
        f"veo: {'configured' if settings.veo.configured else 'not configured'} ({g.veo.model})",
    ]
    return "\n".join(lines)


def database_summary(settings: Settings) -> str:
    """Which database, without the URL's user, password or query: its host and name."""
    if not settings.database_url:
        return f"SQLite {settings.db_path}"
    parts = urlsplit(settings.database_url)
    return f"PostgreSQL {parts.hostname or 'local socket'}{parts.path or ''}"
