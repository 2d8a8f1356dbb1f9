"""``hyperct predict`` on folders holding several studies and series (issue 14), an anonymised copy
without UIDs, out-of-scope and constant inputs, non-finite model output (issue 15), progress lines
and compact saliency maps. Phantoms are written by ``hyperct sample`` (48 x 48, 40 slices: fast)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pypdf import PdfReader

from hyperct.report.document import validate_document
from tests.support.archive import sample_study, series_uids
from tests.support.cli import predict_options, run_cli, site_settings
from tests.support.models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    save_tiny_checkpoint(root / "ckpt", model_version="0.0.7")
    archive = root / "archive"
    for seed, name in ((1, "a"), (2, "b")):
        shutil.copytree(sample_study(root, seed, "--second-series", "--localizer") / "ct", archive / name)
    # an anonymised copy of study a's thin series: no Study/Series Instance UIDs, no names
    anon = root / "anon"
    anon.mkdir()
    for f in sorted((archive / "a").glob("IM*.dcm")):
        ds = pydicom.dcmread(f)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "PatientName", "PatientID", "PatientBirthDate"):
            if kw in ds:
                delattr(ds, kw)
        ds.save_as(anon / f.name)
    with site_settings(root, "studies-test-key"):
        yield root


@pytest.fixture(scope="module")
def archive_run(env):
    out = env / "out"
    rc, stdout, stderr = run_cli(
        ["predict", str(env / "archive"), *predict_options(env), "--out", str(out), "--json", "--pdf", "--sr"]
    )
    return rc, stderr, out


def test_one_report_per_study_of_its_thinnest_axial_series(archive_run, env):
    rc, stderr, out = archive_run
    assert rc == 0, stderr
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("*.hyperct.json"))]
    assert (
        len(docs) == 2 and len(list(out.glob("*.hyperct.pdf"))) == 2 and len(list(out.glob("*.sr.dcm"))) == 2
    )
    thin = {series_uids(env / "archive" / n)["IM"] for n in ("a", "b")}
    assert {d["input"]["SeriesInstanceUID"] for d in docs} == thin
    assert len({d["input"]["StudyInstanceUID"] for d in docs}) == 2
    # file names: a pseudonym per series (shareable mode: never the input's name), one set per study
    stems = {p.name.split(".")[0] for p in out.iterdir() if not p.name.startswith(".")}
    assert len(stems) == 2 and all(s.startswith("scan-") and len(s) == len("scan-") + 12 for s in stems)
    for d in docs:
        validate_document(d)


def test_skipped_series_are_listed_in_the_report_and_on_the_console(archive_run, env):
    rc, stderr, out = archive_run
    assert "archive: 2 studies, 2 reports" in stderr
    for name in ("a", "b"):
        uids = series_uids(env / "archive" / name)
        for prefix, why in (("TH", "slices thicker than 5 mm"), ("SCOUT", "localizer")):
            uid = uids[prefix]
            (line,) = [ln for ln in stderr.splitlines() if "skipped" in ln and uid in ln]
            assert why in line
    for p in out.glob("*.hyperct.json"):
        sel = json.loads(p.read_text())["input"]["series_selection"]
        reasons = sorted(s["reason"] for s in sel["skipped"])
        assert (
            len(reasons) == 2
            and reasons[0] == "localizer/scout"
            and reasons[1].startswith("slices thicker than 5 mm")
        )
        assert "thinnest slices" in sel["rule"]
        assert "Chest" not in json.dumps(sel)  # no series description in a shareable report
    page1 = PdfReader(next(out.glob("*.hyperct.pdf"))).pages[0].extract_text()
    assert "Skipped series (2)" in page1 and "localizer/scout" in page1


def test_all_series_and_series_override(env, tmp_path):
    rc, _, stderr = run_cli(
        [
            "predict",
            str(env / "archive"),
            *predict_options(env),
            "--all-series",
            "--json",
            "--out",
            str(tmp_path / "all"),
        ]
    )
    assert rc == 0, stderr
    series = {
        json.loads(p.read_text())["input"]["SeriesInstanceUID"] for p in (tmp_path / "all").glob("*.json")
    }
    expected = set()
    for n in ("a", "b"):
        u = series_uids(env / "archive" / n)
        expected |= {u["IM"], u["TH"]}
    assert series == expected  # thin and thick series of both studies; never the localizer
    thick = series_uids(env / "archive" / "b")["TH"]
    rc, _, stderr = run_cli(
        [
            "predict",
            str(env / "archive"),
            *predict_options(env),
            "--series",
            thick,
            "--json",
            "--out",
            str(tmp_path / "one"),
        ]
    )
    assert rc == 0, stderr
    (doc,) = [json.loads(p.read_text()) for p in (tmp_path / "one").glob("*.json")]
    assert doc["input"]["SeriesInstanceUID"] == thick
    assert all(
        s["reason"] in ("not requested (--series)", "localizer/scout")
        for s in doc["input"]["series_selection"]["skipped"]
    )
    rc, _, stderr = run_cli(
        ["predict", str(env / "archive"), *predict_options(env), "--series", thick, "--all-series"]
    )
    assert rc == 2 and "exclude each other" in stderr


def test_anonymised_series_without_uids_writes_json_and_pdf_and_skips_the_sr(env, tmp_path):
    rc, _, stderr = run_cli(
        [
            "predict",
            str(env / "anon"),
            *predict_options(env),
            "--json",
            "--pdf",
            "--sr",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0, stderr
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    stem = names[0].split(".")[0]  # no UIDs: a keyed pseudonym of the folder's name
    assert stem.startswith("scan-") and names == [f"{stem}.hyperct.json", f"{stem}.hyperct.pdf"]
    (warn,) = [ln for ln in stderr.splitlines() if "SR skipped" in ln]
    assert "no StudyInstanceUID and no SeriesInstanceUID" in warn and "anonymised" in warn
    assert "the JSON and PDF are written" in warn
    assert "read_ct" not in stderr and "hyperct.io" not in stderr  # no Python function in the hint
    doc = json.loads((tmp_path / f"{stem}.hyperct.json").read_text())
    assert doc["input"]["StudyInstanceUID"] is None and doc["input"]["slices"] == 40


def _no_lung_dicom(folder: Path) -> None:
    from tests.support.dicom import chest_like_phantom, write_series

    write_series(chest_like_phantom(shape=(20, 48, 48), spacing=(4.0, 6.0, 6.0), lungs=False), folder)


def test_out_of_scope_warning_on_the_console_on_pdf_page_1_and_in_the_sr(env, tmp_path):
    _no_lung_dicom(tmp_path / "abdomen")
    rc, _, stderr = run_cli(
        [
            "predict",
            str(tmp_path / "abdomen"),
            *predict_options(env),
            "--json",
            "--pdf",
            "--sr",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0, stderr
    assert "warning: input out of scope: not_chest: little or no lung air" in stderr
    page1 = PdfReader(next((tmp_path / "o").glob("*.hyperct.pdf"))).pages[0].extract_text()
    assert "Input out of scope" in page1 and "not_chest" in page1 and "Findings" in page1
    sr = pydicom.dcmread(next((tmp_path / "o").glob("*.hyperct.sr.dcm")))
    (qc,) = [
        c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    ]
    texts = [item.TextValue for item in qc.ContentSequence]
    assert texts[0].startswith("Input out of scope") and texts[1].startswith(
        "not_chest: little or no lung air"
    )


def test_a_constant_volume_is_refused(env, tmp_path):
    nib.save(
        nib.Nifti1Image(np.full((24, 24, 20), 40, np.int16), np.diag([8.0, 8.0, 5.0, 1.0])),
        tmp_path / "c.nii.gz",
    )
    rc, _, stderr = run_cli(
        ["predict", str(tmp_path / "c.nii.gz"), *predict_options(env), "--json", "--out", str(tmp_path / "o")]
    )
    assert rc == 1
    (err,) = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert (
        err.startswith("hyperct predict: error: constant volume (every voxel is 40 HU)") and "c.nii.gz" in err
    )
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_non_finite_model_output_is_a_failure_not_not_assessed(env, tmp_path, monkeypatch):
    import hyperct.inference as inference

    real = inference.score_pixels
    nan_for: set[int] = set()

    def broken(loaded, pixels, tasks, **kw):
        out = real(loaded, pixels, tasks, **kw)
        for n, t in enumerate(tasks):
            if t in nan_for:
                out[:, n] = np.nan
        return out

    monkeypatch.setattr(inference, "score_pixels", broken)
    src = env / "anon"
    from hyperct.findings import catalogue

    cat = catalogue()
    nan_for.update({cat["cardiomegaly"].index, cat["emphysema"].index})
    rc, stdout, stderr = run_cli(
        ["predict", str(src), *predict_options(env), "--json", "--out", str(tmp_path / "all")]
    )
    assert rc == 1
    assert (
        "no valid score (non-finite output) for any of the 2 finding(s)" in stderr
        and "nothing was written" in stderr
    )
    assert not (tmp_path / "all").exists() or not list((tmp_path / "all").iterdir())

    nan_for.discard(cat["cardiomegaly"].index)  # only emphysema broken: outputs written, still a failure
    rc, _, stderr = run_cli(
        ["predict", str(src), *predict_options(env), "--json", "--out", str(tmp_path / "part")]
    )
    assert rc == 1 and "no valid score (non-finite output) for 1 of 2 finding(s): emphysema" in stderr
    doc = json.loads(next((tmp_path / "part").glob("*.hyperct.json")).read_text())
    calls = {f["id"]: f["call"] for f in doc["findings"]}
    assert calls["emphysema"] == "no valid score" and calls["cardiomegaly"] in ("present", "absent")
    assert calls["lung_nodule"] == "not assessed"  # excluded by --findings: a different word
    assert doc["summary"] == {**doc["summary"], "assessed": 1, "no_valid_score": ["emphysema"]}


def test_progress_lines_per_input_and_step_when_not_a_terminal(env, tmp_path, monkeypatch):
    monkeypatch.delenv("HYPERCT_NO_PROGRESS", raising=False)
    rc, _, stderr = run_cli(
        ["predict", str(env / "anon"), *predict_options(env), "--json", "--out", str(tmp_path)]
    )
    assert rc == 0, stderr
    steps = [ln.split(": ", 2)[-1] for ln in stderr.splitlines() if "[1/1]" in ln]
    assert steps[0] == "listing series" and "reading" in steps and "preprocessing" in steps
    assert "scoring 2 findings" in steps and "writing" in steps
    assert steps.index("reading") < steps.index("preprocessing") < steps.index("scoring 2 findings")
    assert steps[-1].startswith("finished in")
    rc, _, stderr = run_cli(
        [
            "predict",
            str(env / "anon"),
            *predict_options(env),
            "--json",
            "--overwrite",
            "-q",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0 and "[1/1]" not in stderr


def test_saliency_maps_are_compact_and_their_total_size_is_printed(env, tmp_path):
    rc, _, stderr = run_cli(
        [
            "predict",
            str(env / "anon"),
            *predict_options(env),
            "--saliency-findings",
            "all",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0, stderr
    maps = sorted(tmp_path.glob("*.saliency.*.nii.gz"))
    assert len(maps) == 2
    total = sum(p.stat().st_size for p in maps)
    (line,) = [ln for ln in stderr.splitlines() if "saliency map(s)" in ln]
    assert (
        line.startswith("hyperct predict: 2 saliency map(s), ") and f"{total / 1024:.1f} KB in total" in line
    )
    img = nib.load(str(maps[0]))
    assert img.get_data_dtype() == np.uint8 and img.dataobj.slope == pytest.approx(1 / 255)
    assert img.get_fdata().max() == pytest.approx(1.0)
