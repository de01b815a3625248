"""engine/ never imports Qt or app/ (DESIGN.md, house style rule 2); audio I/O is the app's.

sounddevice is the app's too; the one exception is `demixer doctor`, which lists the audio
devices with a lazy import inside the command.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "sounddevice", "app")


def test_no_forbidden_import_statement_in_engine() -> None:
    offenders = []
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    allowed = {"cli.py: app.launch",  # `demixer FILE...` opens the window, lazily, at run time
               "cli_models.py: sounddevice"}  # `demixer doctor` lists devices, lazily
    assert set(offenders) <= allowed, offenders


def test_importing_every_engine_module_loads_no_qt() -> None:
    modules = [f"engine.{p.stem}" for p in sorted(ENGINE.glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
