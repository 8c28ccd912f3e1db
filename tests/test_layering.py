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


def _module_name(path: Path, base: Path = ROOT) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _local_imports(path: Path, modules: set[str], base: Path = ROOT) -> set[str]:
    """Every project module ``path`` imports, wherever the import stands: at the top, under
    ``TYPE_CHECKING``, or inside a function (``ast.walk`` sees them all)."""
    import ast

    this = _module_name(path, base)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from bot import texts`` imports the module bot.texts, not just the package.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def find_import_cycle(
    roots: tuple[str, ...] = ("bot", "generator"), base: Path = ROOT
) -> list[str] | None:
    """One circle of imports among the modules of the packages ``roots``, or ``None``."""
    paths = {
        _module_name(path, base): path for root in roots for path in (base / root).rglob("*.py")
    }
    modules = set(paths)
    graph = {name: _local_imports(path, modules, base) for name, path in paths.items()}
    # A package's __init__ is imported by each of its modules: not an edge worth a circle.
    graph = {
        name: {dep for dep in deps if not name.startswith(dep + ".")}
        for name, deps in graph.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)) is not None:
            return cycle
    return None


def test_no_module_in_bot_or_generator_imports_one_that_imports_it_back():
    cycle = find_import_cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_imports_under_type_checking_and_in_functions(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n"
    )
    (package / "b.py").write_text("def f():\n    from pkg import a\n    return a\n")
    (package / "c.py").write_text("from . import b\n")  # relative, and no circle

    assert find_import_cycle(("pkg",), tmp_path) == ["pkg.a", "pkg.b", "pkg.a"]
    (package / "b.py").write_text("B = 1\n")
    assert find_import_cycle(("pkg",), tmp_path) is None
