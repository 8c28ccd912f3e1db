"""The example config documents every setting at its default, and bad configs name the key."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from pathlib import Path

import pytest

from bot.__main__ import main
from bot.config import (
    AccessSettings,
    DatabaseSettings,
    DataSettings,
    GpuSettings,
    LimitSettings,
    ServiceSettings,
    Settings,
    TelegramSettings,
    WorkerSettings,
    load_settings,
    summary,
)
from bot.gpu import consumer_devices, visible_cuda_devices
from generator.config import (
    AutoSettings,
    ConfigError,
    EncodeSettings,
    EnginesSettings,
    ImageSettings,
    LtxSettings,
    SvdSettings,
    VeoSettings,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
TOKEN = "123456:AAAA-secret-token"

SECTIONS = {
    "telegram": TelegramSettings,
    "access": AccessSettings,
    "limits": LimitSettings,
    "worker": WorkerSettings,
    "gpu": GpuSettings,
    "data": DataSettings,
    "database": DatabaseSettings,
    "service": ServiceSettings,
    "image": ImageSettings,
    "svd": SvdSettings,
    "ltx": LtxSettings,
    "engines": EnginesSettings,
    "veo": VeoSettings,
    "auto": AutoSettings,
    "encode": EncodeSettings,
}
SECRET_FIELDS = {"token", "webhook_secret"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_to_the_defaults() -> None:
    settings = load_settings(EXAMPLE, {"TELEGRAM_BOT_TOKEN": TOKEN})

    plain = dataclasses.replace(settings, telegram=TelegramSettings(), veo=Settings().veo)
    # The one derived value: compiled kernels are cached in the data folder by default.
    assert plain.generator.svd.cache_dir == str(Path("data") / "inductor-cache")
    svd = dataclasses.replace(plain.generator.svd, cache_dir="")
    plain = dataclasses.replace(plain, generator=dataclasses.replace(plain.generator, svd=svd))
    assert plain == Settings()
    assert not settings.veo.configured
    assert dataclasses.replace(settings.telegram, token="") == TelegramSettings()
    assert settings.telegram.token == TOKEN


def test_example_config_shows_every_key_of_every_section() -> None:
    tables = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    text = EXAMPLE.read_text(encoding="utf-8")

    for name, cls in SECTIONS.items():
        assert name in tables, f"[{name}] missing"
        for f in dataclasses.fields(cls):
            if f.name in SECRET_FIELDS:
                continue
            # token_file has no safe default, so it is shown commented out.
            shown = f.name in tables[name] or f"# {f.name} = " in text
            assert shown, f"{name}.{f.name} is not in config.example.toml"


def test_unknown_key_is_rejected_with_its_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_queud_per_user = 2\n")

    with pytest.raises(ConfigError, match=r"limits\.max_queud_per_user: unknown key"):
        load_settings(path, {})


def test_unknown_table_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"limit: unknown table"):
        load_settings(write(tmp_path, "[limit]\nx = 1\n"), {})


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[limits]\ndaily_jobs_per_user = "many"', r"limits\.daily_jobs_per_user"),
        ("[worker]\nmax_attempts = 0", r"worker\.max_attempts"),
        ("[worker]\nmax_crashes = 0", r"worker\.max_crashes"),
        ('[telegram]\nmode = "carrier-pigeon"', r"telegram\.mode"),
        ('[access]\nadmins = ["alice"]', r"access\.admins\[0\]"),
        ("[svd]\nsteps = 0", r"svd\.steps"),
        ('[gpu]\nsplit = "sometimes"', r"gpu\.split"),
        ("[gpu]\nsplit_timeout_s = 0", r"gpu\.split_timeout_s"),
    ],
)
def test_bad_value_is_rejected_with_its_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings(write(tmp_path, toml + "\n"), {})


def test_token_in_the_config_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f'[telegram]\ntoken = "{TOKEN}"\n')

    with pytest.raises(ConfigError, match=r"telegram\.token: set it in TELEGRAM_BOT_TOKEN") as e:
        load_settings(path, {})
    assert TOKEN not in str(e.value)


def test_token_file_is_read_and_a_loose_mode_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o644)
    path = write(tmp_path, f'[telegram]\ntoken_file = "{token_file}"\n')

    with caplog.at_level(logging.WARNING, logger="bot.config"):
        settings = load_settings(path, {})

    assert settings.telegram.token == TOKEN
    assert "readable by group or others" in caplog.text

    caplog.clear()
    token_file.chmod(0o600)
    load_settings(path, {})
    assert "readable" not in caplog.text


def test_environment_token_wins_over_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file", encoding="utf-8")
    path = write(tmp_path, f'[telegram]\ntoken_file = "{token_file}"\n')

    assert load_settings(path, {"TELEGRAM_BOT_TOKEN": TOKEN}).telegram.token == TOKEN


def test_webhook_mode_needs_a_secret_token(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[telegram]\nmode = "webhook"\nwebhook_url = "https://bot.example.org/tg"\n'
    )

    with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_SECRET"):
        load_settings(path, {"TELEGRAM_BOT_TOKEN": TOKEN})
    settings = load_settings(path, {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": "s3"})
    assert settings.telegram.webhook_secret == "s3"


def test_secrets_stay_out_of_reprs_and_the_summary() -> None:
    settings = load_settings(EXAMPLE, {"TELEGRAM_BOT_TOKEN": TOKEN, "GEMINI_API_KEY": "gk-123"})

    assert settings.veo.configured
    for text in (repr(settings), summary(settings)):
        assert TOKEN not in text
        assert "gk-123" not in text
    assert "token=set" in summary(settings)
    assert "token=MISSING" in summary(load_settings(EXAMPLE, {}))


def test_check_config_prints_a_summary_without_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    config = write(tmp_path, f'[access]\nadmins = [1]\n\n[data]\ndir = "{tmp_path / "state"}"\n')

    assert main(["--config", str(config), "--check-config"]) == 0

    out = capsys.readouterr()
    assert "token=set" in out.out and "private" in out.out
    assert TOKEN not in out.out + out.err


def test_check_config_fails_on_a_bad_key_or_a_missing_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    bad = write(tmp_path, "[worker]\ngrace = 3\n")
    assert main(["--config", str(bad), "--check-config"]) == 2
    assert "worker.grace: unknown key" in capsys.readouterr().err

    assert main(["--config", str(EXAMPLE), "--check-config"]) == 2
    assert "no bot token" in capsys.readouterr().err


def test_token_file_may_point_into_systemds_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "bot").write_text(TOKEN + "\n")
    config = write(tmp_path, '[telegram]\ntoken_file = "${CREDENTIALS_DIRECTORY}/bot"\n')

    settings = load_settings(config, {"CREDENTIALS_DIRECTORY": str(credentials)})

    assert settings.telegram.token == TOKEN
    with pytest.raises(ConfigError, match=r"telegram.token_file: \$\{CREDENTIALS_DIRECTORY\}"):
        load_settings(config, {})


def test_a_systemd_credential_named_telegram_token_is_the_token(tmp_path: Path) -> None:
    (tmp_path / "telegram-token").write_text(TOKEN)

    settings = load_settings(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})

    assert settings.telegram.token == TOKEN


DATABASE_URL = "postgresql://animate:db-pass-w0rd@db.example:5432/animate"


def test_the_database_is_sqlite_in_the_data_folder_unless_a_postgresql_url_is_given(
    tmp_path: Path,
) -> None:
    assert load_settings(EXAMPLE, {}).database == Path("data") / "bot.sqlite3"
    (tmp_path / "url").write_text(DATABASE_URL + "\n")
    (tmp_path / "database-url").write_text(DATABASE_URL.replace("db.example", "cred.example"))
    from_file = write(tmp_path, f'[database]\nurl_file = "{tmp_path / "url"}"\n')

    assert load_settings(None, {"ANIMATE_DATABASE_URL": DATABASE_URL}).database == DATABASE_URL
    assert load_settings(from_file, {}).database == DATABASE_URL
    by_credential = load_settings(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert by_credential.database_url == DATABASE_URL.replace("db.example", "cred.example")


def test_a_database_url_in_the_config_file_or_not_postgresql_is_refused(tmp_path: Path) -> None:
    in_file = write(tmp_path, f'[database]\nurl = "{DATABASE_URL}"\n')
    with pytest.raises(ConfigError, match=r"database\.url: set it in ANIMATE_DATABASE_URL") as err:
        load_settings(in_file, {})
    assert "db-pass-w0rd" not in str(err.value)
    with pytest.raises(ConfigError, match="must be a postgresql:// URL"):
        load_settings(None, {"ANIMATE_DATABASE_URL": "mysql://x@y/z"})


def test_the_database_password_stays_out_of_reprs_and_the_summary() -> None:
    settings = load_settings(EXAMPLE, {"ANIMATE_DATABASE_URL": DATABASE_URL})

    for text in (repr(settings), summary(settings)):
        assert "db-pass-w0rd" not in text and "animate:" not in text
    assert "database: PostgreSQL db.example/animate; role all" in summary(settings)


def test_the_role_is_one_of_all_frontend_and_consumer(tmp_path: Path) -> None:
    consumer = load_settings(write(tmp_path, '[service]\nrole = "consumer"\n'), {})
    assert consumer.service.role == "consumer"
    with pytest.raises(ConfigError, match=r"service\.role: must be one of all, frontend, consumer"):
        load_settings(write(tmp_path, '[service]\nrole = "gpu"\n'), {})


def test_gpu_devices_are_one_consumer_each_and_each_device_once(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[gpu]\ndevices = ["0", "1"]\n'), {})
    assert consumer_devices(settings.gpu.devices, visible=[]) == ["0", "1"]
    # Left empty: every visible CUDA device, or one consumer where there is no CUDA.
    assert consumer_devices((), visible=["0", "1", "2"]) == ["0", "1", "2"]
    assert consumer_devices((), visible=[]) == [None]
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []

    with pytest.raises(ConfigError, match=r"gpu\.devices: each device once"):
        load_settings(write(tmp_path, '[gpu]\ndevices = ["0", "0"]\n'), {})
    with pytest.raises(ConfigError, match=r"gpu\.devices\[0\]: one device per entry"):
        load_settings(write(tmp_path, '[gpu]\ndevices = ["0,1"]\n'), {})
