"""pyproject.toml declares what bot/ and generator/ import, and nothing else."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Declared though never imported by name: from_pretrained loads them for SVD (README says why);
# diffusers' Wan pipelines clean every prompt with ftfy.
LOADED_BY_DIFFUSERS = {"transformers", "accelerate", "ftfy"}
# Imported only inside a try, for an opt-in feature; not a dependency.
OPTIONAL = {"torchao"}


def imported_modules() -> set[str]:
    found = set()
    for package in ("bot", "generator"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"bot", "generator", "__future__"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonical(re.split(r"[\[<>=!~ ;]", dep)[0]) for dep in project["dependencies"]}


def test_every_import_is_declared_and_every_declaration_imported() -> None:
    distributions = importlib.metadata.packages_distributions()
    modules = imported_modules() - OPTIONAL
    assert modules <= set(distributions), "imported but not installed"
    # A namespace such as google is shared by several distributions: one of them will do.
    candidates = {m: {canonical(d) for d in distributions[m]} for m in modules}

    undeclared = sorted(m for m, dists in candidates.items() if not dists & declared())
    unused = declared() - set().union(*candidates.values()) - LOADED_BY_DIFFUSERS

    assert undeclared == [], "imported but not declared in pyproject.toml"
    assert unused == set(), "declared but never imported"
