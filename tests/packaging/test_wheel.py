"""Build a wheel, install it outside the editable install, and use it: the engine finds its assets
(demo model, findings catalogue, report schema, fonts) and npe2 finds the plugin manifest, all from the
installed files (the layout has no links; the build places assets/ and napari.yaml in the packages)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "napari.yaml", "assets", "model", "hyperct_viewer")

# Runs under `python -S` (no site: the editable install's .pth finder is never loaded), with
# PYTHONPATH = the --target folder, then the venv's site-packages for the dependencies.
USE_INSTALLED = """
import json, sys
from importlib import metadata, resources, util

import hyperct, hyperct_viewer

res = {
    "files": [hyperct.__file__, hyperct_viewer.__file__],
    "editable_finders": [repr(f) for f in sys.meta_path if "editable" in repr(f).lower()],
    "version": hyperct.__version__,
    "dist_version": metadata.version("hyperct-viewer"),
    "dist_at": str(metadata.distribution("hyperct-viewer").locate_file("")),
}

from hyperct.loading import load_model
loaded = load_model(device="cpu")
res["demo"] = {"dir": str(loaded.directory), "is_demo": loaded.is_demo, "tasks": len(loaded.thresholds)}

from hyperct.findings import catalogue
from hyperct.report.document import schema
from hyperct.report.pdf import register_fonts
register_fonts()
res["findings"] = len(catalogue().ids)
res["schema_title"] = schema().get("title")
assets = resources.files("hyperct.assets")
res["files"] += [str(assets.joinpath(n)) for n in ("findings.yaml", "report.schema.json", "fonts/DejaVuSans.ttf")]

from npe2 import PluginManifest
pm = PluginManifest.from_distribution("hyperct-viewer")
res["manifest_dirs"] = list(util.find_spec("hyperct_viewer_manifest").submodule_search_locations)
res["readers"] = [(r.command, sorted(r.filename_patterns)) for r in pm.contributions.readers]
res["samples"] = [s.key for s in pm.contributions.sample_data]
res["widgets"] = [w.display_name for w in pm.contributions.widgets]
import importlib
for c in pm.contributions.commands:
    module, _, attr = c.python_name.partition(":")
    mod = importlib.import_module(module)
    assert callable(getattr(mod, attr)), c.python_name
    res["files"].append(mod.__file__)
print(json.dumps(res))
"""


def _inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.mark.slow  # builds a wheel, installs it, loads the demo model and napari in a fresh interpreter
def test_wheel_installs_with_its_assets_and_manifest(tmp_path):
    src = tmp_path / "src"
    for name in SOURCES:  # build from a copy: never write build/ or *.egg-info into the shared checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("hyperct_viewer-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    for sub, package in (("model/hyperct", "hyperct"), ("hyperct_viewer", "hyperct_viewer")):
        for py in (ROOT / sub).rglob("*.py"):
            if "__pycache__" not in py.parts:
                assert f"{package}/{py.relative_to(ROOT / sub).as_posix()}" in names, f"{py} not in the wheel"
    for asset in (
        "findings.yaml",
        "report.schema.json",
        "demo_model/manifest.json",
        "demo_model/model.safetensors",
    ):
        assert f"hyperct/assets/{asset}" in names
    assert {n for n in names if n.startswith("hyperct_viewer_manifest/")} == {
        "hyperct_viewer_manifest/napari.yaml"
    }

    target = tmp_path / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (target / "hyperct_viewer_manifest" / "napari.yaml").read_bytes() == (
        ROOT / "napari.yaml"
    ).read_bytes()

    run_env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH")}
    run_env["PYTHONPATH"] = os.pathsep.join([str(target), *site.getsitepackages()])
    run_env["QT_QPA_PLATFORM"] = "offscreen"
    out = subprocess.run(
        [sys.executable, "-S", "-c", USE_INSTALLED],
        capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])

    assert res["editable_finders"] == []
    outside = [
        f for f in res["files"] + [res["demo"]["dir"], *res["manifest_dirs"]] if not _inside(f, target)
    ]
    assert outside == [], "imported from outside the installed wheel"
    assert _inside(res["dist_at"], target)
    assert res["version"] == res["dist_version"] == metadata.version("hyperct-viewer")
    assert res["demo"]["is_demo"] is True and res["demo"]["tasks"] == 25
    assert res["findings"] == 25 and res["schema_title"]
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text(encoding="utf-8"))["contributions"]
    assert res["readers"] == [
        ["hyperct-viewer.get_reader", sorted(manifest["readers"][0]["filename_patterns"])]
    ]
    assert res["samples"] == [s["key"] for s in manifest["sample_data"]] == ["synthetic_chest_ct"]
    assert res["widgets"] == [w["display_name"] for w in manifest["widgets"]]
    assert {"Findings", "Task Embeddings"} <= set(res["widgets"])
