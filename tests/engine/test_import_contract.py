"""The layers (DESIGN.md, house style rule 2): `engine/` never imports Qt, sounddevice or
`app/`, not even lazily inside a function, and no `engine` module loads them at import. The
launcher (`app.launch.main`) sits above both and hands the app's parts of `demixer doctor`
and `--self-test` down (`engine.cli.Host`); audio I/O is the app's.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "sounddevice", "app")


def _modules() -> list[str]:
    """Every module of the engine package, subpackages included (dotted names); not the
    `__main__`s, which run a command."""
    names = []
    for path in sorted(ENGINE.rglob("*.py")):
        if path.stem == "__main__":
            continue
        parts = path.relative_to(ENGINE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imported(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)):
            names.append(str(node.args[0].value))
    return names


def test_the_walk_sees_the_subpackages() -> None:
    modules = _modules()
    assert {"engine", "engine.cli", "engine.cli.separate", "engine.coreml.convert"} <= set(
        modules)


def test_no_forbidden_import_statement_in_engine() -> None:
    """No whitelist: not at module level, not inside a function."""
    offenders = []
    for path in sorted(ENGINE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        offenders += [f"{path.relative_to(ENGINE)}: {name}" for name in _imported(tree)
                      if name.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_no_engine_module_names_the_app_package() -> None:
    """Nor a child process of it (`python -m app`) or a module path given as text."""
    offenders = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value == "app" or node.value.startswith("app.")):
                offenders.append(f"{path.relative_to(ENGINE)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_importing_every_engine_module_loads_no_qt() -> None:
    modules = _modules()
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
