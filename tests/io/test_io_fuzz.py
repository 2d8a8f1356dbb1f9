"""Property: whatever is done to a valid series' headers or bytes, the reader returns a sane volume or
raises one of its own typed errors (``hyperct.errors.InputError``), never anything else."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperct.errors import InputError
from hyperct.io import read_ct
from hyperct.volume import CTVolume
from tests.support.dicom import asymmetric_phantom, write_series
from tests.support.dicom_fuzz import HEADER_KEYWORDS, set_tag

N_SLICES = 20

values = st.one_of(
    st.none(),  # delete the element
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-70000, max_value=70000),
    st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=7),
    st.sampled_from(["CT", "MR", "SR", "1.2.3", "LOCALIZER", "0\\1\\0\\0\\0\\1", "1A", "-0", ""]),
)
header_mutation = st.tuples(
    st.just("header"), st.integers(0, N_SLICES - 1), st.sampled_from(HEADER_KEYWORDS), values
)
byte_mutation = st.tuples(
    st.just("bytes"), st.integers(0, N_SLICES - 1), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=8)
)
cut_mutation = st.tuples(st.just("cut"), st.integers(0, N_SLICES - 1), st.floats(0.0, 1.0), st.just(b""))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_template")
    ph = asymmetric_phantom(shape=(N_SLICES, 32, 32), spacing=(1.5, 0.7, 0.7), seed=21)
    write_series(ph, folder, order="shuffled", padding=(-2000, None))
    return folder


def _apply(folder: Path, mutation) -> None:
    kind, index, where, payload = mutation
    path = sorted(folder.iterdir())[index]
    if kind == "header":
        set_tag(path, where, payload)
    else:
        data = bytearray(path.read_bytes())
        pos = min(int(where * len(data)), len(data) - 1)
        if kind == "cut":
            del data[pos:]
        else:
            data[pos : pos + len(payload)] = payload
        path.write_bytes(bytes(data))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(mutations=st.lists(st.one_of(header_mutation, byte_mutation, cut_mutation), min_size=1, max_size=3))
def test_mutated_series_gives_a_volume_or_a_typed_error(template, mutations):
    work = Path(tempfile.mkdtemp(prefix="hyperct_fuzz_"))
    try:
        folder = work / "series"
        shutil.copytree(template, folder)
        for m in mutations:
            _apply(folder, m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid values we wrote
            try:
                vol = read_ct(folder)
            except InputError as exc:
                assert str(exc)  # a message, naming the file or series (tested in test_io_error_messages)
                return
        assert isinstance(vol, CTVolume)
        assert vol.hu.dtype == np.float32 and vol.hu.ndim == 3 and min(vol.shape) >= 1
        assert np.all(np.isfinite(vol.spacing)) and all(s > 0 for s in vol.spacing)
        assert np.all(np.isfinite(vol.origin))
    finally:
        shutil.rmtree(work, ignore_errors=True)
