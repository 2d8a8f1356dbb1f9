"""The engine (``hyperct``) must never pull in napari, Qt or magicgui."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import hyperct

GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def _all_engine_modules() -> list[str]:
    root = Path(hyperct.__file__).parent
    names = ["hyperct"]
    for info in pkgutil.walk_packages([str(root)], prefix="hyperct."):
        names.append(info.name)
    return names


def test_engine_and_cli_import_no_gui_modules():
    modules = _all_engine_modules()
    assert "hyperct.cli.main" in modules and "hyperct.findings" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from hyperct.cli.main import build_parser\n"
        "build_parser()\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"GUI modules imported by the engine: {out.stdout.strip()}"


def test_engine_sources_have_no_gui_imports():
    root = Path(hyperct.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")) and s.split()[1].split(".")[0] in GUI_MODULES:
                offenders.append(f"{path.name}: {s}")
    assert offenders == []
