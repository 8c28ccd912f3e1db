"""Product code checks with ``if`` and ``raise``: ``python -O`` strips every ``assert``, so an
``assert`` that guards anything guards nothing in an optimised run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_assert_statements_in_bot_or_generator() -> None:
    found = []
    for package in ("bot", "generator"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Assert)
            ]
    assert found == [], "use `if ...: raise ...` instead of assert in product code"
