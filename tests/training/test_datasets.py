"""Datasets: manifest CSV, the CT-RATE layout (with rescale), the preprocessing cache, phantoms."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from hyperct.errors import ConfigError, DatasetError
from hyperct.findings import catalogue
from hyperct.preprocess import IMAGE_SIZE, N_SLICES
from hyperct.training.cache import UINT8_STEP_HU, PreprocessCache, decode, encode
from hyperct.training.datasets import (
    CTRateDataset,
    ManifestDataset,
    build_dataset,
    ct_rate_volume_path,
    parse_data_spec,
)

sitk = pytest.importorskip("SimpleITK")

CAT = catalogue()


def write_nifti(path, raw: np.ndarray, spacing=(2.0, 2.0, 4.0)):
    """``raw`` (k, j, i) stored values, int16 (no scaling in the header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(raw.astype(np.int16))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def small_volume(value: int, shape=(16, 20, 18)) -> np.ndarray:
    rng = np.random.default_rng(abs(value))
    return (value + rng.integers(-5, 6, size=shape)).astype(np.int16)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_reads_paths_and_labels(tmp_path):
    write_nifti(tmp_path / "vols" / "a.nii.gz", small_volume(0))
    write_nifti(tmp_path / "vols" / "b.nii.gz", small_volume(-500))
    csv_path = write_csv(
        tmp_path / "train.csv",
        ["path", "pleural_effusion", "Cardiomegaly", "Lung nodule", "reduced_lv_systolic_function"],
        [["vols/a.nii.gz", "1", "0", "", "-1"], ["vols/b.nii.gz", "0", "1.0", "1", "0"]],
    )
    ds = ManifestDataset(csv_path)
    assert len(ds) == 2 and ds.paths[0] == tmp_path / "vols" / "a.nii.gz"
    pe, cm, ln, lv = (
        CAT.index(f)
        for f in ("pleural_effusion", "cardiomegaly", "lung_nodule", "reduced_lv_systolic_function")
    )
    assert ds.labels[0, [pe, cm, ln, lv]].tolist() == [1, 0, -1, -1]
    assert ds.labels[1, [pe, cm, ln, lv]].tolist() == [0, 1, 1, 0]
    assert (ds.labels[:, CAT.index("emphysema")] == -1).all()  # no column: missing
    pixels, labels = ds[1]
    assert tuple(pixels.shape) == (55, 3, IMAGE_SIZE, IMAGE_SIZE) and labels.tolist() == ds.labels[1].tolist()
    assert ds.describe()["labels"]["cardiomegaly"] == {"positives": 1, "negatives": 1}


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["file_name", "pleural_effusion"], [["a.nii.gz", "1"]], "no volume path column"),
        (
            ["path", "pleural_efusion"],
            [["a.nii.gz", "1"]],
            "unknown finding column 'pleural_efusion'.*pleural_effusion",
        ),
        (["path", "patient_age"], [["a.nii.gz", "1"]], "unknown finding column 'patient_age'"),
        (["path"], [["a.nii.gz"]], "no finding columns"),
        (["path", "emphysema"], [["a.nii.gz", ""]], "no labels at all"),
        (["path", "emphysema"], [["a.nii.gz", "maybe"]], "line 2, column 'emphysema'.*'maybe'"),
        (
            ["path", "emphysema"],
            [["a.nii.gz", "1"], ["missing/b.nii.gz", "0"]],
            "1 volume path.*line 3: missing/b.nii.gz",
        ),
        (["path", "emphysema", "Emphysema"], [["a.nii.gz", "1", "1"]], "two columns"),
    ],
)
def test_manifest_errors_name_the_file_and_the_problem(tmp_path, header, rows, message):
    write_nifti(tmp_path / "a.nii.gz", small_volume(0))
    csv_path = write_csv(tmp_path / "m.csv", header, rows)
    with pytest.raises(DatasetError, match=message) as info:
        ManifestDataset(csv_path)
    assert str(csv_path) in str(info.value)


def test_manifest_extra_columns_can_be_ignored(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", small_volume(0))
    csv_path = write_csv(tmp_path / "m.csv", ["path", "patient_age", "emphysema"], [["a.nii.gz", "61", "1"]])
    ds = ManifestDataset(csv_path, ignore_columns=["patient_age"])
    assert ds.labels[0, CAT.index("emphysema")] == 1


def test_build_dataset_errors_name_config_file_and_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^(?=.*cfg\.yaml).*data.train.csv: required"):
        build_dataset({"type": "manifest"}, field="data.train", source=str(tmp_path / "cfg.yaml"))
    with pytest.raises(ConfigError, match=r"data.valid.type: expected manifest, ct-rate or phantom"):
        build_dataset({"type": "dicom"}, field="data.valid", source="cfg.yaml")
    with pytest.raises(ConfigError, match=r"data.train.seeds: unknown field"):
        build_dataset({"type": "phantom", "count": 2, "seeds": 3}, field="data.train", source="cfg.yaml")
    with pytest.raises(DatasetError, match=r"data.train \(cfg.yaml\).*CSV file does not exist"):
        build_dataset(
            {"type": "manifest", "csv": str(tmp_path / "nope.csv")}, field="data.train", source="cfg.yaml"
        )


def test_parse_data_spec():
    assert parse_data_spec("x/y.csv") == {"type": "manifest", "csv": "x/y.csv"}
    assert parse_data_spec("ct-rate:/d/CT-RATE:valid", labels="l.csv") == {
        "type": "ct-rate",
        "root": "/d/CT-RATE",
        "split": "valid",
        "labels": "l.csv",
    }
    spec = parse_data_spec("phantom:5:100", matrix=64)
    assert (spec["count"], spec["first_seed"], spec["matrix"]) == (5, 100, 64)
    for bad in ("phantom:x:1", "phantom:0:1", "ct-rate:/d:test"):
        with pytest.raises(ConfigError):
            parse_data_spec(bad)


# --- CT-RATE ----------------------------------------------------------------------------------

CT_RATE_COLUMNS = [f.ct_rate_column for f in CAT if f.ct_rate_column]


def make_ct_rate(root, *, drop_column=None):
    """A miniature CT-RATE release: 3 volumes, stored values + slope/intercept in the metadata."""
    vols = {
        "train_1_a_1.nii.gz": (small_volume(1024), 1.0, -1024.0),  # HU about 0
        "train_1_a_2.nii.gz": (small_volume(300), 2.0, -1000.0),  # HU about -400
        "train_2_b_1.nii.gz": (small_volume(24), 1.0, -1024.0),  # HU about -1000
    }
    for name, (raw, _, _) in vols.items():
        write_nifti(ct_rate_volume_path(root, "train", name), raw)
    cols = [c for c in CT_RATE_COLUMNS if c != drop_column]
    rows = []
    for i, name in enumerate(vols):
        rows.append([name] + [str((i + j) % 2) for j in range(len(cols))])
    (root / "multi_abnormality_labels").mkdir(parents=True)
    write_csv(root / "multi_abnormality_labels" / "train_predicted_labels.csv", ["VolumeName"] + cols, rows)
    (root / "metadata").mkdir()
    write_csv(
        root / "metadata" / "train_metadata.csv",
        ["VolumeName", "Manufacturer", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"],
        [[n, "X", s, b, "[0.75, 0.75]", "1.5"] for n, (_, s, b) in vols.items()],
    )
    return vols


def test_ct_rate_layout_labels_and_rescale(tmp_path):
    root = tmp_path / "dataset"
    vols = make_ct_rate(root)
    assert (
        ct_rate_volume_path(root, "train", "train_1_a_2.nii.gz")
        == root / "train" / "train_1" / "train_1_a" / "train_1_a_2.nii.gz"
    )
    ds = CTRateDataset(root, "train")
    assert ds.names == list(vols)
    # labels: CT-RATE columns mapped to the catalogue; the 7 opportunistic findings missing
    for f in CAT:
        if f.ct_rate_column:
            j = CT_RATE_COLUMNS.index(f.ct_rate_column)
            assert ds.labels[:, f.index].tolist() == [(i + j) % 2 for i in range(3)]
        else:
            assert (ds.labels[:, f.index] == -1).all()
    # HU = stored * slope + intercept
    for i, (raw, slope, intercept) in enumerate(vols.values()):
        hu = ds.read_hu(i)
        expected = raw.astype(np.float64) * slope + intercept
        assert hu.shape == raw.shape
        assert hu.mean() == pytest.approx(expected.mean(), abs=1e-3)
        assert (hu.min(), hu.max()) == (expected.min(), expected.max())
    model_hu = ds.model_hu(1)
    assert model_hu.shape == (N_SLICES, IMAGE_SIZE, IMAGE_SIZE)
    assert model_hu.mean() == pytest.approx(2 * 300 - 1000, abs=6)


def test_ct_rate_finds_its_csvs_in_the_release_folders_or_the_root(tmp_path):
    root = tmp_path / "dataset"
    make_ct_rate(root)
    (root / "metadata" / "train_metadata.csv").rename(root / "train_metadata.csv")
    assert CTRateDataset(root, "train").metadata_csv == root / "train_metadata.csv"
    (root / "train_metadata.csv").unlink()
    with pytest.raises(DatasetError, match="no CT-RATE metadata CSV found for split 'train'"):
        CTRateDataset(root, "train")
    (root / "multi_abnormality_labels" / "train_predicted_labels.csv").unlink()
    with pytest.raises(DatasetError, match="no CT-RATE labels CSV found.*--labels"):
        CTRateDataset(root, "train")


def test_ct_rate_errors(tmp_path):
    root = tmp_path / "dataset"
    make_ct_rate(root, drop_column="Lung nodule")
    with pytest.raises(DatasetError, match="lacks the CT-RATE column.*'Lung nodule'"):
        CTRateDataset(root, "train")
    root2 = tmp_path / "d2"
    make_ct_rate(root2)
    os.remove(ct_rate_volume_path(root2, "train", "train_2_b_1.nii.gz"))
    with pytest.raises(DatasetError, match="1 volume.*not under.*train_2_b_1.nii.gz"):
        CTRateDataset(root2, "train")
    assert len(CTRateDataset(root2, "train", skip_missing=True)) == 2
    with pytest.raises(DatasetError, match="no CT-RATE labels CSV found"):
        CTRateDataset(root2, "valid")


# --- cache ------------------------------------------------------------------------------------


def test_uint8_quantisation_is_within_half_a_step():
    hu = np.linspace(-1200, 1200, 10_000, dtype=np.float32)
    back = decode(encode(hu, "uint8"))
    clipped = np.clip(hu, -1000, 1000)
    assert np.abs(back - clipped).max() <= UINT8_STEP_HU / 2 + 1e-3
    assert UINT8_STEP_HU == pytest.approx(7.843, abs=1e-3)
    assert np.abs(decode(encode(hu, "float16")) - clipped).max() <= 0.5
    assert decode(encode(np.array([-1000.0, 1000.0]), "uint8")).tolist() == [-1000.0, 1000.0]


def test_cache_is_used_and_invalidated_when_the_file_changes(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "a.nii.gz", small_volume(100))
    csv_path = write_csv(tmp_path / "m.csv", ["path", "emphysema"], [["a.nii.gz", "1"]])
    cache = PreprocessCache(tmp_path / "cache", "uint8")
    first = ManifestDataset(csv_path, cache=cache).model_hu(0)
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    npy = next((tmp_path / "cache").rglob("*.npy"))
    assert np.load(npy, allow_pickle=False).dtype == np.uint8

    import hyperct.io

    monkeypatch.setattr(
        hyperct.io, "read_ct", lambda *a, **k: pytest.fail("cache miss: the file was read again")
    )
    again = ManifestDataset(csv_path, cache=cache).model_hu(0)
    assert np.array_equal(first, again)
    monkeypatch.undo()
    write_nifti(path, small_volume(200))  # replaced file: new identity, new entry
    changed = ManifestDataset(csv_path, cache=cache).model_hu(0)
    assert changed.mean() == pytest.approx(first.mean() + 100, abs=5)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2


# --- phantoms ---------------------------------------------------------------------------------


def test_phantom_dataset_labels_prevalence_and_cache(tmp_path, monkeypatch):
    pytest.importorskip("hyperct.phantom")
    from hyperct.training.datasets import PhantomDataset

    cache = PreprocessCache(tmp_path / "cache")
    kw = dict(matrix=32, n_slices=16, findings={"pleural_effusion": 0.5}, cache=cache)
    ds = PhantomDataset(4, 200, **kw)
    pe = CAT.index("pleural_effusion")
    on = ["pleural_effusion" in ds.findings_for(i) for i in range(4)]
    assert 0 < sum(on) < 4  # both classes among these seeds
    assert ds.labels[:, pe].tolist() == [int(x) for x in on]
    assert ((ds.labels == 0) | (ds.labels == 1)).all()  # explicit findings: every label known
    import hyperct.phantom

    monkeypatch.setattr(
        hyperct.phantom, "generate", lambda *a, **k: pytest.fail("cached phantom regenerated")
    )
    again = PhantomDataset(4, 200, **kw)
    assert np.array_equal(again.labels, ds.labels)
    assert np.array_equal(again.model_hu(2), ds.model_hu(2))


def test_phantom_prevalence_and_severity_draws():
    pytest.importorskip("hyperct.phantom")
    from hyperct.training.datasets import PhantomDataset

    ds = PhantomDataset(
        2000, 0, findings={"emphysema": 0.3, "cardiomegaly": 1.0}, severity=[0.6, 0.9], prepare=False
    )
    draws = [ds.findings_for(i) for i in range(2000)]
    assert all(d["cardiomegaly"] is not None and 0.6 <= d["cardiomegaly"] <= 0.9 for d in draws)
    assert np.mean(["emphysema" in d for d in draws]) == pytest.approx(0.3, abs=0.04)
    assert draws[:5] == [ds.findings_for(i) for i in range(5)]  # seeded
    with pytest.raises(DatasetError, match="did you mean 'emphysema'"):
        PhantomDataset(2, 0, findings={"emphysma": 0.5}, prepare=False)


def test_phantoms_prepared_by_two_worker_processes_equal_serial_preparation(tmp_path):
    from hyperct.training.cache import PreprocessCache
    from hyperct.training.datasets import PhantomDataset

    kw = dict(matrix=48, n_slices=20, findings={"pleural_effusion": 0.5, "cardiomegaly": 0.5})
    serial = PhantomDataset(3, 500, cache=PreprocessCache(tmp_path / "a"), **kw)
    parallel = PhantomDataset(3, 500, cache=PreprocessCache(tmp_path / "b"), workers=2, **kw)
    assert (serial.labels == parallel.labels).all()
    for i in range(3):
        assert (serial.model_hu(i) == parallel.model_hu(i)).all()


def test_a_worker_job_for_a_phantom_another_process_has_cached_reads_it_instead_of_generating(
    tmp_path, monkeypatch
):
    """Two runs prefetching the same block (the A/B arms): a job whose phantom the other run has
    written meanwhile takes its labels from the cache; one without token labels is made again."""
    from hyperct.training.cache import PreprocessCache
    from hyperct.training.datasets import PhantomDataset
    from hyperct.training.datasets.phantoms import _fill_in_worker
    from hyperct.training.token_labels import TOKEN_LABELS

    kw = dict(matrix=48, n_slices=20, findings={"pleural_effusion": 0.5})
    first = PhantomDataset(2, 700, cache=PreprocessCache(tmp_path), **kw)  # generated and cached
    second = PhantomDataset(2, 700, cache=PreprocessCache(tmp_path), prepare=False, **kw)
    assert second.cached_labels(0) is not None

    def no_generation(self, i):
        raise AssertionError("a cached phantom was generated again")

    monkeypatch.setattr(PhantomDataset, "generate", no_generation)
    i, labels = _fill_in_worker((second.worker_state(), 1))
    assert i == 1 and (labels == first.labels[1]).all()

    key = second._key(1)
    (path,) = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN_LABELS in p.name and key in str(p)]
    path.unlink()  # an older entry without the finest token labels
    assert second.cached_labels(1) is None
    with pytest.raises(AssertionError, match="generated again"):
        _fill_in_worker((second.worker_state(), 1))


def test_build_dataset_can_leave_phantoms_ungenerated():
    ds = build_dataset({"type": "phantom", "count": 2, "first_seed": 5, "matrix": 64}, prepare=False)
    assert len(ds) == 2 and (ds.labels == -1).all()
    assert not any(ds.cache.contains(ds._key(i)) for i in range(2))  # nothing generated yet


def test_phantom_preparation_survives_a_worker_that_dies(tmp_path, monkeypatch):
    """A worker process dies in the middle (killed, out of memory): preparation finishes the
    phantoms in this process instead of waiting forever, with a warning, and the result is the
    same as a serial preparation."""
    import concurrent.futures

    from hyperct.training.cache import PreprocessCache
    from hyperct.training.datasets import PhantomDataset
    from tests.support.dying_worker import die

    real = concurrent.futures.ProcessPoolExecutor

    class OneJobDies(real):
        calls = 0

        def submit(self, fn, *args, **kwargs):
            OneJobDies.calls += 1
            return super().submit(die if OneJobDies.calls == 2 else fn, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", OneJobDies)
    kw = dict(matrix=48, n_slices=20, findings={"pleural_effusion": 0.5, "cardiomegaly": 0.5})
    with pytest.warns(RuntimeWarning, match="worker process died"):
        parallel = PhantomDataset(4, 500, cache=PreprocessCache(tmp_path / "b"), workers=2, **kw)
    assert OneJobDies.calls == 4
    serial = PhantomDataset(4, 500, cache=PreprocessCache(tmp_path / "a"), **kw)
    assert (serial.labels == parallel.labels).all()
    for i in range(4):
        assert (serial.model_hu(i) == parallel.model_hu(i)).all()


@pytest.mark.parametrize("when", ["busy", "starting"])
def test_phantom_workers_leave_when_the_process_that_started_them_dies(when):
    """A training run killed with SIGTERM must not leave orphan workers generating phantoms, whether
    it dies while a worker runs a job or while the worker is still starting up."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.orphan_pool", when],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    worker = int(out.stdout.split()[0])

    def alive(pid: int) -> bool:  # an exited process not reaped yet (a zombie) counts as gone
        if Path("/proc/self").exists():
            try:
                state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0]
            except (FileNotFoundError, IndexError, ProcessLookupError):
                return False
            return "Z" not in state
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.time() + 30  # (a worker still starting imports torch first)
    while alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    gone = not alive(worker)
    if not gone:
        os.kill(worker, 9)
    assert gone, "the worker outlived its parent"
