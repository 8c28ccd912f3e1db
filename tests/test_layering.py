"""Layering: the generator knows nothing of Telegram, and engines are reached through their
interface (``generator.engines`` and its catalog), never by importing an engine module."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generator_imports_nothing_from_the_bot_side():
    code = (
        "import sys, importlib, pkgutil, generator\n"
        "for m in pkgutil.walk_packages(generator.__path__, 'generator.'):\n"
        "    if m.name != 'generator.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "roots = ('telegram', 'aiosqlite', 'bot')\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in roots)\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_source_file_in_generator_mentions_the_bot_packages():
    for path in (ROOT / "generator").rglob("*.py"):
        text = path.read_text()
        for name in ("import telegram", "from telegram", "import aiosqlite", "from bot"):
            assert name not in text, f"{path.name} contains {name!r}"


def test_only_the_engine_catalog_names_an_engine_module():
    engine_modules = ("generator.engines.svd", "generator.engines.ltx")
    for root in ("generator", "bot"):
        for path in (ROOT / root).rglob("*.py"):
            if path.parent.name == "engines":
                continue  # the engines themselves and their catalog
            text = path.read_text()
            for name in engine_modules:
                assert f"{name} import" not in text and f"import {name}" not in text, (
                    f"{path.relative_to(ROOT)} imports {name}: go through generator.engines"
                )
