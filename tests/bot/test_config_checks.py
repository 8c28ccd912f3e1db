"""``--check-config`` refuses every config that cannot work, and the error names the key."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from bot.__main__ import main
from tests.bot.test_config import SECTIONS, TOKEN

ADMIN = 4242


def write_config(tmp_path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """A config that works, with ``tables``' keys put over it."""
    merged: dict[str, dict[str, Any]] = {
        "access": {"admins": [ADMIN]},
        "data": {"dir": str(tmp_path / "data")},
    }
    for table, keys in tables.items():
        merged.setdefault(table, {}).update(keys)
    lines = []
    for table, keys in merged.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check(tmp_path: Path, tables: dict[str, dict[str, Any]], capsys) -> tuple[int, str]:
    code = main(["--config", str(write_config(tmp_path, tables)), "--check-config"])
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)


def test_a_config_that_works_passes(tmp_path: Path, capsys) -> None:
    assert check(tmp_path, {}, capsys) == (0, "")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image.max_pixels", -1),
        ("image.max_file_bytes", 0),
        ("image.square", "stretch"),
        ("encode.preset", "warp-speed"),
        ("encode.crf", 60),
        ("encode.thumbnail_px", 0),
        ("encode.max_bytes", 10),
        ("veo.max_transient_retries", -1),
        ("veo.poll_interval_s", 0),
        ("veo.timeout_s", -5.0),
        ("veo.price_per_second_usd", -0.4),
        ("veo.person_generation", "everyone"),
        ("veo.model", ""),
        ("veo.base_url", "generativelanguage.googleapis.com"),
        ("auto.breaker_failures", 0),
        ("auto.breaker_cooldown_s", -1.0),
        ("svd.dtype", "float8"),
        ("svd.device", "tpu"),
        ("svd.fps", 0),
        ("svd.frames", 1),
        ("svd.steps", 500),
        ("svd.model", " "),
        ("svd.decode_chunk_size", 0),
        ("svd.noise_aug_strength", -0.1),
        ("svd.low_vram_threshold_gib", -1.0),
        ("telegram.webhook_port", 0),
        ("telegram.concurrent_updates", 0),
        ("telegram.mode", "push"),
        ("telegram.base_url", "api.telegram.org/bot"),
        ("access.admins", [-5]),
        ("access.allowed_users", [0]),
        ("limits.max_queued_per_user", -1),
        ("limits.daily_jobs_per_user", -1),
        ("limits.veo_month_usd", -1.0),
        ("limits.queue_ttl_s", -1.0),
        ("limits.max_photo_bytes", -1),
        ("worker.max_attempts", 0),
        ("worker.heartbeat_s", 0),
        ("worker.shutdown_grace_s", -1.0),
        ("data.keep_photos_days", -1),
    ],
)
def test_a_value_out_of_its_range_or_set_is_refused_by_name(
    tmp_path: Path, capsys, key: str, value: Any
) -> None:
    table, name = key.split(".")

    code, err = check(tmp_path, {table: {name: value}}, capsys)

    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"animate-bot: config error: {key}: ")


def test_rules_between_keys_name_the_key_to_change(tmp_path: Path, capsys) -> None:
    guidance = {"svd": {"min_guidance_scale": 5.0, "max_guidance_scale": 1.0}}
    assert "svd.max_guidance_scale:" in check(tmp_path, guidance, capsys)[1]
    beats = {"worker": {"heartbeat_s": 60.0, "stale_after_s": 30.0}}
    assert "worker.stale_after_s:" in check(tmp_path, beats, capsys)[1]


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "data.txt"
    afile.write_text("not a folder")

    code, err = check(tmp_path, {"data": {"dir": str(afile)}}, capsys)

    assert code == 2
    assert f"data.dir: {afile} is a file, not a folder" in err


def test_a_token_file_that_is_a_folder_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN")

    code, err = check(tmp_path, {"telegram": {"token_file": str(tmp_path)}}, capsys)

    assert code == 2
    assert "telegram.token_file:" in err and "is a folder" in err


def test_a_bot_nobody_may_use_is_refused_by_the_check(tmp_path: Path, capsys) -> None:
    code, err = check(tmp_path, {"access": {"admins": []}}, capsys)

    assert code == 2
    assert "access: nobody may use the bot" in err and "access.admins" in err
    assert check(tmp_path, {"access": {"admins": [], "public": True}}, capsys)[0] == 0


def _kind(annotation: Any) -> Any:
    """The annotation without ``| None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def test_every_number_has_a_range_and_every_path_a_kind() -> None:
    # The rule for new keys: declare their limits where the field is (generator/config.py).
    for table, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            kind = _kind(hints[field.name])
            key = f"{table}.{field.name}"
            if kind in (int, float) or kind == frozenset[int]:
                assert "range" in field.metadata, f"{key}: declare it with number(...)"
            if kind is Path:
                assert "path" in field.metadata, f"{key}: declare it with path(...)"
