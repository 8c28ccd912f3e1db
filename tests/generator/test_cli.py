"""The command-line tool, run as a subprocess on real files, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator.cli import EXIT_FAILED
from generator.encode import probe_video
from tests.support.images import write_photo
from tests.support.tiny_ltx import tiny_ltx_toml
from tests.support.tiny_svd import tiny_config_toml
from tests.support.tiny_wan import tiny_wan_toml

ROOT = Path(__file__).resolve().parents[2]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a user would have, without our Veo credentials unless ``extra`` adds
    them; torch on one thread, as in-process tests run it (tiny models on busy cores)."""
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k and "GOOGLE" not in k}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def run_cli(*args: str | Path, env_extra: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "generator", *map(str, args)],
        cwd=ROOT,
        env=cli_env(env_extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def config(tmp_path: Path, tiny_svd_dir: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(tiny_config_toml(tiny_svd_dir, frames=3, steps=2, fps=6))
    return path


def test_svd_clip_is_written_and_its_path_printed_last(tmp_path, config):
    photo = write_photo(tmp_path / "dog.jpg", size=(80, 120))
    out = tmp_path / "clip.mp4"
    result = run_cli(
        photo,
        "--backend",
        "svd",
        "--photo-type",
        "pet",
        "--intensity",
        "dramatic",
        "--seed",
        "5",
        "--output",
        out,
        "--config",
        config,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    probe = probe_video(out)
    assert (probe.width, probe.height, probe.frames) == (32, 64, 3)  # portrait photo
    assert probe.fps == pytest.approx(6)
    assert "seed 5" in result.stderr


def test_default_output_sits_beside_the_photo(tmp_path, config):
    photo = write_photo(tmp_path / "beach.png", size=(120, 80), fmt="PNG")
    result = run_cli(photo, "--backend", "auto", "--config", config, "--quiet")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "beach.mp4"
    assert (tmp_path / "beach.mp4").exists()


def test_not_an_image_exits_2_with_a_readable_message(tmp_path, config):
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("shopping list: milk, eggs")
    result = run_cli(bogus, "--backend", "svd", "--config", config)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "notes.mp4").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--backend", "veo", "--duration", "5"),
        ("--backend", "svd", "--duration", "8"),
        ("--motion", "300"),
    ],
)
def test_invalid_combinations_exit_2_before_any_work(tmp_path, args):
    photo = write_photo(tmp_path / "p.jpg")
    result = run_cli(photo, *args)
    assert result.returncode == 2
    assert "animate-photo:" in result.stderr


def test_veo_without_credentials_exits_3(tmp_path):
    photo = write_photo(tmp_path / "p.jpg")
    result = run_cli(photo, "--backend", "veo")
    assert result.returncode == 3
    assert "GEMINI_API_KEY" in result.stderr


def test_missing_model_folder_exits_3(tmp_path, config):
    photo = write_photo(tmp_path / "p.jpg")
    result = run_cli(
        photo, "--backend", "svd", "--config", config, "--model", str(tmp_path / "no-such-model")
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_key_exits_2_naming_the_key(tmp_path):
    photo = write_photo(tmp_path / "p.jpg")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[svd]\nstepz = 3\n")
    result = run_cli(photo, "--config", cfg)
    assert result.returncode == 2
    assert "svd.stepz" in result.stderr


def test_a_failed_veo_clip_is_told_in_a_sentence_not_a_class_name(tmp_path, fake_veo):
    fake_veo.script(submit_errors=[503])
    photo = write_photo(tmp_path / "p.jpg")
    config = tmp_path / "veo.toml"
    config.write_text(
        f'[veo]\nbase_url = "{fake_veo.base_url}"\nmax_transient_retries = 0\n'
        "poll_interval_s = 0.01\n"
    )

    result = run_cli(
        photo, "--backend", "veo", "--duration", "4", "--config", config,
        env_extra={"GEMINI_API_KEY": "test-key"},
    )  # fmt: skip

    assert result.returncode == EXIT_FAILED, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "animate-photo: The video service had a temporary problem."
    assert "Error" not in result.stderr  # no class name, ours or a library's
    assert "503" in result.stderr  # the detail is in the log line above


@pytest.mark.parametrize(
    "order",
    [
        ("--custom-elements", "snow falling", "a red kite", "{photo}"),
        ("{photo}", "--custom-elements", "snow falling", "a red kite"),
        ("--custom-elements", "snow falling", "--custom-elements", "a red kite", "{photo}"),
    ],
)
def test_custom_elements_before_or_after_the_photo_reach_veos_prompt(tmp_path, fake_veo, order):
    fake_veo.script(outcome="inline")
    photo = write_photo(tmp_path / "park.jpg", size=(120, 80))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[veo]\nbase_url = "{fake_veo.base_url}"\npoll_interval_s = 0.05\n')
    args = [str(photo) if a == "{photo}" else a for a in order]
    result = run_cli(
        *args, "--backend", "veo", "--config", cfg, env_extra={"GEMINI_API_KEY": "test-key"}
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "park.mp4"
    (submit,) = fake_veo.submits
    prompt = submit.body["instances"][0]["prompt"]
    assert "snow falling" in prompt and "a red kite" in prompt
    assert "park.jpg" not in prompt


def test_unknown_table_exits_2_naming_it_and_the_file(tmp_path):
    photo = write_photo(tmp_path / "p.jpg")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[svdd]\nsteps = 3\n")
    # --backend veo without credentials would exit 3 at once if the table were ignored.
    result = run_cli(photo, "--backend", "veo", "--config", cfg)
    assert result.returncode == 2, result.stderr
    assert f"{cfg}: svdd: unknown table" in result.stderr


def test_a_key_outside_any_table_exits_2_naming_it(tmp_path):
    photo = write_photo(tmp_path / "p.jpg")
    cfg = tmp_path / "c.toml"
    cfg.write_text("steps = 3\n")
    result = run_cli(photo, "--backend", "veo", "--config", cfg)
    assert result.returncode == 2, result.stderr
    assert f"{cfg}: steps: unknown key outside a table" in result.stderr


def test_toml_syntax_error_names_the_file_and_line(tmp_path):
    photo = write_photo(tmp_path / "p.jpg")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[svd]\nsteps = 3\nmodel = "unclosed\n')
    result = run_cli(photo, "--config", cfg)
    assert result.returncode == 2
    assert str(cfg) in result.stderr and "line 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_bots_tables_in_a_shared_config_are_accepted(tmp_path, config):
    from bot.config import BOT_TABLES
    from generator.cli import BOT_TABLES as CLI_BOT_TABLES
    from generator.cli import load_settings

    assert set(CLI_BOT_TABLES) == set(BOT_TABLES)
    shared = tmp_path / "shared.toml"
    shared.write_text(
        '[telegram]\nmode = "polling"\n[access]\npublic = true\n' + config.read_text()
    )
    assert load_settings(shared).svd.steps == 2


@pytest.fixture
def both_engines(tmp_path: Path, tiny_svd_dir: Path, tiny_ltx_dir: Path) -> Path:
    """A config with the tiny SVD (3 frames at 6 fps) and the tiny LTX-Video (8 fps, 1-2 s)."""
    path = tmp_path / "engines.toml"
    path.write_text(
        tiny_config_toml(tiny_svd_dir, frames=3, steps=2, fps=6) + tiny_ltx_toml(tiny_ltx_dir)
    )
    return path


def test_ltx_clip_says_its_exact_length_first_and_keeps_the_photo_aspect(tmp_path, both_engines):
    photo = write_photo(tmp_path / "tall.jpg", size=(80, 120))
    out = tmp_path / "ltx.mp4"

    result = run_cli(
        photo,
        "--backend",
        "ltx",
        "--duration",
        "2",
        "--seed",
        "3",
        "-o",
        out,
        "--config",
        both_engines,
    )

    assert result.returncode == 0, result.stderr
    assert "LTX-Video makes 17 frames at 8 fps = 2.12 s" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    probe = probe_video(out)
    assert (probe.width, probe.height, probe.frames) == (32, 64, 17)  # upright, 8k+1 frames
    assert probe.fps == pytest.approx(8)


def test_auto_without_veo_uses_the_local_engines_length_rules(tmp_path, both_engines):
    photo = write_photo(tmp_path / "p.jpg", size=(96, 64))

    # Veo's rule (4, 6 or 8 s) no longer refuses a length the local engine can make ...
    short = run_cli(photo, "--duration", "1", "-o", tmp_path / "a.mp4", "--config", both_engines)
    # ... and a length it cannot make is refused before any work, saying what it makes.
    long = run_cli(photo, "--duration", "4", "-o", tmp_path / "b.mp4", "--config", both_engines)

    assert short.returncode == 0, short.stderr
    assert "LTX-Video makes 9 frames at 8 fps = 1.12 s" in short.stderr
    assert probe_video(tmp_path / "a.mp4").frames == 9
    assert long.returncode == 2
    assert "LTX-Video makes clips of 1.1 to 2.1 s at 8 fps, not 4 s" in long.stderr
    assert not (tmp_path / "b.mp4").exists()


def test_wan_clip_says_its_exact_length_first_and_keeps_the_photo_aspect(
    tmp_path, tiny_wan_dir, tiny_svd_dir
):
    config = tmp_path / "wan.toml"
    config.write_text(
        tiny_config_toml(tiny_svd_dir, frames=3, steps=2, fps=6) + tiny_wan_toml(tiny_wan_dir)
    )
    photo = write_photo(tmp_path / "tall.jpg", size=(80, 120))
    out = tmp_path / "wan.mp4"

    result = run_cli(
        photo, "--backend", "wan", "--duration", "2", "--seed", "3", "-o", out, "--config", config
    )

    assert result.returncode == 0, result.stderr
    assert "Wan 2.2 makes 17 frames at 8 fps = 2.12 s" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    probe = probe_video(out)
    assert (probe.width, probe.height, probe.frames) == (32, 64, 17)  # upright, 4k+1 frames
    assert probe.fps == pytest.approx(8)
