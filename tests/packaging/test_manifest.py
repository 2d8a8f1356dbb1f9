"""The napari manifest: every python_name imports without a display, npe2 reads it from the installed
distribution, and the reader's patterns, the reader's suffix list and the engine's supported suffixes
are one list (each suffix opened by the engine and offered to the reader by npe2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import hyperct
from hyperct.io import SUPPORTED_SUFFIXES

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "napari.yaml"


def _manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def _python_names() -> list[str]:
    return [c["python_name"] for c in _manifest()["contributions"]["commands"]]


def _reader_patterns() -> list[str]:
    (reader,) = _manifest()["contributions"]["readers"]
    return reader["filename_patterns"]


IMPORT_ALL = """
import importlib, json, sys
names = json.loads(sys.argv[1])
found = {}
for name in names:
    module, _, attr = name.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    found[name] = callable(obj)
print(json.dumps(found))
"""


@pytest.mark.slow  # a fresh interpreter imports napari and Qt (~10 s)
def test_every_python_name_imports_without_a_display():
    names = _python_names()
    assert "hyperct_viewer.reader:napari_get_reader" in names and all(":" in n for n in names)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, json.dumps(names)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {n: True for n in names}


def test_npe2_reads_the_manifest_of_the_installed_distribution():
    from npe2 import PluginManifest

    installed = PluginManifest.from_distribution("hyperct-viewer")
    assert installed.contributions == PluginManifest.from_file(MANIFEST).contributions
    assert installed.package_version == hyperct.__version__
    assert [r.command for r in installed.contributions.readers] == ["hyperct-viewer.get_reader"]
    assert [s.key for s in installed.contributions.sample_data] == ["synthetic_chest_ct"]
    widgets = [w.display_name for w in installed.contributions.widgets]
    assert {"Findings", "Task Embeddings"} <= set(widgets)


def test_reader_patterns_reader_suffixes_and_engine_suffixes_are_one_list():
    from hyperct_viewer.reader import EXTENSIONS

    patterns = _reader_patterns()
    assert len(set(patterns)) == len(patterns)
    suffix_patterns = [p[1:] for p in patterns if p.startswith("*.")]
    assert [p for p in patterns if not p.startswith("*.")] == ["DICOMDIR"]
    assert sorted(suffix_patterns) == sorted(EXTENSIONS) == sorted(SUPPORTED_SUFFIXES)
    assert len(set(EXTENSIONS)) == len(EXTENSIONS)
    assert len(set(SUPPORTED_SUFFIXES)) == len(SUPPORTED_SUFFIXES)


def _write(suffix: str, folder: Path) -> list[Path]:
    """One small CT in the format of ``suffix`` (a DICOM series for .dcm)."""
    hu = np.full((20, 32, 32), -1000, np.int16)
    hu[:, 8:24, 8:24] = 40
    if suffix == ".dcm":
        from hyperct.phantom import write_dicom_series
        from hyperct.volume import CTVolume

        vol = CTVolume(hu=hu.astype(np.float32), spacing=(2.5, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
        return write_dicom_series(vol, folder)
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((1.0, 1.0, 2.5))
    path = folder / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    return [path]


@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_each_supported_suffix_opens_and_is_offered_to_the_reader(suffix, tmp_path):
    from npe2 import PluginManager, PluginManifest

    from hyperct.io import read_ct
    from hyperct_viewer.reader import napari_get_reader, read_ct_layers

    files = _write(suffix, tmp_path)
    assert files[0].name.endswith(suffix)
    volume = read_ct([str(f) for f in files] if len(files) > 1 else str(files[0]))
    assert volume.hu.shape == (20, 32, 32)
    for name in (files[0], files[0].with_name(files[0].name.upper())):
        assert napari_get_reader(str(name)) is read_ct_layers
        pm = PluginManager()
        pm.register(PluginManifest.from_file(MANIFEST))
        assert [r.command for r in pm.iter_compatible_readers([str(name)])] == ["hyperct-viewer.get_reader"]
