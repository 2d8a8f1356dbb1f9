"""Fixtures for the report tests: a small synthetic chest CT, a hand-made result and saliency maps
(built by ``tests.support.volumes`` and ``tests.support.results``).

No model is needed for the document/PDF/SR tests: the result's probabilities and the saliency
maps are set there, so the tests know which findings are positive and where the maps peak.
"""

from __future__ import annotations

import pytest

from tests.support.results import make_result, make_saliency
from tests.support.volumes import make_volume


@pytest.fixture(autouse=True)
def _private_config_dir(monkeypatch, tmp_path):
    """No test writes a link key into the real user's config folder."""
    monkeypatch.setenv("HYPERCT_CONFIG_DIR", str(tmp_path / "config-autouse"))


@pytest.fixture
def link_env(monkeypatch, tmp_path):
    """A known link key and a private config folder (no key file is written into the real home)."""
    monkeypatch.setenv("HYPERCT_LINK_KEY", "test-site-key")
    monkeypatch.setenv("HYPERCT_CONFIG_DIR", str(tmp_path / "config"))
    return b"test-site-key"


@pytest.fixture
def volume():
    return make_volume()


@pytest.fixture
def result(volume):
    return make_result(volume)


@pytest.fixture
def saliency(volume):
    return make_saliency(volume)
