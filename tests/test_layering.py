"""The generator knows nothing of Telegram: it must import without bot, telegram or aiosqlite."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generator_imports_nothing_from_the_bot_side():
    code = (
        "import sys, importlib, pkgutil, generator\n"
        "for m in pkgutil.iter_modules(generator.__path__):\n"
        "    if m.name != '__main__':\n"
        "        importlib.import_module('generator.' + m.name)\n"
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
