"""The source layout and the installed layout agree: no links, every package listed, one version."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

import hyperct
import hyperct_viewer

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _source_packages() -> set[str]:
    """Every folder with an ``__init__.py`` under the three source roots, by its installed name."""
    names = set()
    for prefix, folder in (("hyperct", ROOT / "model" / "hyperct"), ("hyperct.assets", ROOT / "assets")):
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            names.add(".".join((prefix, *rel)))
    for init in (ROOT / "hyperct_viewer").rglob("__init__.py"):
        names.add(".".join(init.parent.relative_to(ROOT).parts))
    return {n for n in names if "__pycache__" not in n}


def test_no_symlinks_in_the_repository():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    links = [line.split("\t", 1)[1] for line in out if line.startswith("120000")]
    assert links == []
    assert not (ROOT / "model" / "hyperct" / "assets").exists()
    assert not (ROOT / "hyperct_viewer" / "napari.yaml").exists()


def test_every_source_package_is_in_the_build_list():
    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    assert listed - {"hyperct_viewer_manifest"} == _source_packages()
    assert cfg["package-dir"] == {
        "hyperct": "model/hyperct",
        "hyperct.assets": "assets",
        "hyperct_viewer_manifest": ".",
    }
    # the manifest's namespace package is the repository root: only napari.yaml may be shipped from it
    assert sorted(p.name for p in ROOT.glob("*.py")) == []
    assert cfg["package-data"]["hyperct_viewer_manifest"] == ["napari.yaml"]


def test_installed_packages_come_from_the_source_folders():
    """The editable install maps the import names onto the same folders the build uses."""
    from importlib import resources

    assert Path(hyperct.__file__).resolve() == ROOT / "model" / "hyperct" / "__init__.py"
    assert Path(hyperct_viewer.__file__).resolve() == ROOT / "hyperct_viewer" / "__init__.py"
    assets = resources.files("hyperct.assets")
    assert Path(str(assets.joinpath("findings.yaml"))).resolve() == ROOT / "assets" / "findings.yaml"


def test_one_version_number():
    version = _pyproject()["project"]["version"]
    assert metadata.version("hyperct-viewer") == version, "reinstall: pip install -e ."
    assert hyperct.__version__ == version
    assert hyperct_viewer.__version__ == version
    # no other hard-coded version in the sources or the manifest
    pattern = re.compile(r"""^\s*(__version__|VERSION)\s*=\s*["']\d+\.\d+""", re.M)
    sources = [*(ROOT / "model" / "hyperct").rglob("*.py"), *(ROOT / "hyperct_viewer").rglob("*.py")]
    assert [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text(encoding="utf-8"))] == []
    assert "version" not in (ROOT / "napari.yaml").read_text(encoding="utf-8")


def test_checkpoints_record_the_package_version():
    from hyperct.checkpoint import build_manifest
    from tests.support.models import tiny_model

    manifest = build_manifest(
        tiny_model(seed=3),
        model_name="t",
        model_version="0.0.1",
        backbone_weights="included",
        backbone_source="random",
    )
    assert manifest["software"] == {"name": "hyperct-viewer", "version": hyperct.__version__}
