"""``hyperct predict`` end to end on a tiny checkpoint: several inputs with one bad one, outputs,
saliency maps in the input's geometry, overwrite protection, exit codes, and CLI == export()."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pypdf import PdfReader

from hyperct.cli import predict
from hyperct.cli.main import build_parser, main
from hyperct.report.document import validate_document
from tests.support.cli import FEW_FINDINGS, predict_options, run_cli, site_settings
from tests.support.models import save_tiny_checkpoint
from tests.support.scan_files import oblique_order_nifti, write_dicom_series
from tests.support.volumes import PHI_SEARCH

RID = "6f1c4c7e-9d1a-4c55-8a8e-2f6d3b1b2a90"
CREATED = "2024-02-03T04:05:06+00:00"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    save_tiny_checkpoint(root / "ckpt", model_version="0.0.7")
    write_dicom_series(root / "dicom")
    oblique_order_nifti(root / "oblique.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    with site_settings(root, "cli-test-key"):
        yield root


@pytest.fixture(scope="module")
def batch(env):
    out = env / "out"
    argv = ["predict", str(env / "dicom"), str(env / "broken.nii.gz"), str(env / "oblique.nii.gz")]
    argv += predict_options(env) + [
        "--out",
        str(out),
        "--json",
        "--pdf",
        "--sr",
        "--saliency-findings",
        "cardiomegaly",
    ]
    rc, stdout, stderr = run_cli(argv)
    return rc, stdout, stderr, out


@pytest.fixture(scope="module")
def S(env):
    """The shareable file stems of the two inputs: pseudonyms, never the input's name."""
    from hyperct.io import read_ct
    from hyperct.report import derived_stem

    out = {}
    for name, path in (("dicom", env / "dicom"), ("oblique", env / "oblique.nii.gz")):
        out[name] = derived_stem(path, read_ct(path), "shareable")
        assert out[name].startswith("scan-") and name not in out[name]
    return out


def _visible(folder: Path) -> list[str]:
    """File names in ``folder`` without the hidden set record (``.<stem>.hyperct.set``)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_bad_input_is_reported_and_the_others_are_written(batch, env, S):
    rc, _, stderr, out = batch
    assert rc == 1
    bad = [line for line in stderr.splitlines() if "error:" in line]
    assert len(bad) == 1 and str(env / "broken.nii.gz") in bad[0] and "not a readable NIfTI" in bad[0]
    assert "2 of 3 input(s) done; 1 failed" in stderr
    names = _visible(out)
    assert names == sorted(
        [
            f"{S['dicom']}.hyperct.json",
            f"{S['dicom']}.hyperct.pdf",
            f"{S['dicom']}.hyperct.sr.dcm",
            f"{S['dicom']}.saliency.cardiomegaly.nii.gz",
            f"{S['oblique']}.hyperct.json",
            f"{S['oblique']}.hyperct.pdf",
            f"{S['oblique']}.saliency.cardiomegaly.nii.gz",
        ]
    )
    (skip,) = [line for line in stderr.splitlines() if "DICOM SR skipped" in line]
    assert skip.startswith("hyperct predict: warning: DICOM SR skipped: a DICOM SR needs DICOM input")
    assert (
        "the input is NIfTI" in skip and "oblique.nii.gz" in skip and "the JSON and PDF are written" in skip
    )


def test_written_json_validates_and_scores_only_the_asked_findings(batch, S):
    out = batch[3]
    for name in (f"{S['dicom']}.hyperct.json", f"{S['oblique']}.hyperct.json"):
        doc = json.loads((out / name).read_text())
        validate_document(doc)
        assessed = {f["id"] for f in doc["findings"] if f["call"] != "not assessed"}
        assert assessed == set(FEW_FINDINGS.split(","))
        assert doc["model"]["name"] == "HyperCT-tiny" and doc["model"]["version"] == "0.0.7"
        assert all(f["saliency"] is not None for f in doc["findings"] if f["id"] in assessed)
    assert json.loads((out / f"{S['dicom']}.hyperct.json").read_text())["input"]["type"] == "dicom"


def test_shareable_outputs_of_the_dicom_input_carry_no_identifiers(batch, S):
    out = batch[3]
    texts = [
        (out / f"{S['dicom']}.hyperct.json").read_text(),
        " ".join(p.extract_text() for p in PdfReader(out / f"{S['dicom']}.hyperct.pdf").pages),
        (out / f"{S['dicom']}.hyperct.sr.dcm").read_bytes().decode("latin-1"),
    ]
    for text in texts:
        for needle in PHI_SEARCH:
            assert needle not in text


def test_saliency_map_has_the_input_geometry(batch, env, S):
    out = batch[3]
    src = nib.load(str(env / "oblique.nii.gz"))
    sal = nib.load(str(out / f"{S['oblique']}.saliency.cardiomegaly.nii.gz"))
    assert sal.shape == src.shape
    np.testing.assert_allclose(sal.affine, src.affine, atol=1e-5)
    data = np.asarray(sal.dataobj)
    assert data.min() >= 0 and data.max() == pytest.approx(1.0)
    dcm_map = nib.load(str(out / f"{S['dicom']}.saliency.cardiomegaly.nii.gz"))
    assert dcm_map.shape == (40, 40, 24)  # columns, rows, slices of the written series


def test_existing_outputs_are_not_overwritten_without_the_flag(batch, env, S):
    out = batch[3]
    before = (out / f"{S['dicom']}.hyperct.json").read_bytes()
    argv = ["predict", str(env / "dicom")] + predict_options(env) + ["--out", str(out), "--json"]
    rc, _, stderr = run_cli(argv)
    assert rc == 1
    assert str(out / f"{S['dicom']}.hyperct.json") in stderr and "--overwrite" in stderr
    assert (out / f"{S['dicom']}.hyperct.json").read_bytes() == before
    rc, _, stderr = run_cli(argv + ["--overwrite"])
    assert rc == 0, stderr
    assert (out / f"{S['dicom']}.hyperct.json").read_bytes() != before  # a new report id and time


def test_without_output_flags_a_table_is_printed(env):
    rc, stdout, _ = run_cli(["predict", str(env / "oblique.nii.gz")] + predict_options(env))
    assert rc == 0
    from hyperct.findings import catalogue

    for f in catalogue():
        assert f.name in stdout
    assert stdout.count("not assessed") == 23
    assert "AI output, not a diagnosis." in stdout


def test_json_dash_prints_the_document_to_stdout(env, tmp_path):
    rc, stdout, _ = run_cli(["predict", "--json", "-", str(env / "oblique.nii.gz")] + predict_options(env))
    assert rc == 0
    doc = json.loads(stdout)
    validate_document(doc)
    assert len(doc["findings"]) == 25


def test_manifest_rows_give_inputs_and_stems(env, tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text(f"path,id\n{env / 'oblique.nii.gz'},case-A\n", encoding="utf-8")
    rc, _, stderr = run_cli(
        ["predict", "--manifest", str(csv)] + predict_options(env) + ["--out", str(tmp_path), "--json"]
    )
    assert rc == 0, stderr
    assert (tmp_path / "case-A.hyperct.json").is_file()


@pytest.mark.slow  # two full pipelines (CLI + the viewer's calls): ~5-10 s on 2 cores
def test_cli_files_equal_the_export_function_files(env, tmp_path, monkeypatch):
    """What the viewer's Export buttons do (read, analyze, saliency_for_export, export) gives the CLI's bytes."""
    from hyperct.inference import analyze
    from hyperct.io import read_ct
    from hyperct.loading import load_model
    from hyperct.report import derived_stem, export, saliency_for_export

    monkeypatch.setattr(predict, "report_identity", lambda result: (RID, CREATED))
    cli_out = tmp_path / "cli"
    argv = (
        ["predict", str(env / "dicom")]
        + predict_options(env)
        + ["--out", str(cli_out), "--json", "--pdf", "--sr"]
    )
    rc, _, stderr = run_cli(argv)
    assert rc == 0, stderr

    loaded = load_model(env / "ckpt", device="cpu")
    volume = read_ct(env / "dicom")
    result = analyze(loaded, volume, findings=FEW_FINDINGS.split(","))
    saliency = saliency_for_export(loaded, volume, result)
    paths = export(
        result,
        volume,
        saliency,
        tmp_path / "viewer",
        stem=derived_stem(env / "dicom", volume, "shareable"),
        report_id=RID,
        created=CREATED,
    )
    assert _visible(cli_out) == sorted(p.name for p in paths.values())
    for fmt, path in paths.items():
        assert (cli_out / path.name).read_bytes() == path.read_bytes(), fmt


def test_exit_codes_for_usage_and_model_errors(env, tmp_path):
    rc, _, stderr = run_cli(["predict"])
    assert rc == 2 and "no inputs" in stderr
    rc, _, stderr = run_cli(["predict", str(env / "oblique.nii.gz"), "--findings", "heart"])
    assert rc == 2 and "unknown finding id(s) 'heart'" in stderr
    rc, _, stderr = run_cli(["predict", str(env / "oblique.nii.gz"), "--model", str(tmp_path / "nope")])
    assert rc == 3 and "checkpoint folder does not exist" in stderr


def test_help_documents_exit_codes_and_outputs():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["predict"].format_help()
    for needle in (
        "exit status:",
        "1  some inputs failed",
        "3  the whole command failed",
        ".hyperct.sr.dcm",
        "HYPERCT_LINK_KEY",
    ):
        assert needle in text
    from hyperct.cli import common  # the exit codes of every command, documented once

    assert all(f"* {code} ``EXIT_" in common.__doc__ for code in (0, 1, 2, 3, 130))


def test_folder_named_after_the_patient_gives_pseudonymous_file_names(env, tmp_path):
    import shutil

    named = tmp_path / "in" / "QUIXOTE^ALONSO"
    shutil.copytree(env / "dicom", named)
    rc, _, stderr = run_cli(
        ["predict", str(named)] + predict_options(env) + ["--out", str(tmp_path / "share"), "--json"]
    )
    assert rc == 0, stderr
    (written,) = _visible(tmp_path / "share")
    assert written.startswith("scan-") and "QUIXOTE" not in written.upper()
    rc, _, stderr = run_cli(
        ["predict", str(named)]
        + predict_options(env)
        + ["--out", str(tmp_path / "clin"), "--json", "--mode", "clinical"]
    )
    assert rc == 0, stderr
    assert _visible(tmp_path / "clin") == ["QUIXOTE^ALONSO.hyperct.json"]


def test_tilted_series_is_refused_unless_resample_tilt_is_given(env, tmp_path):
    from tests.support.dicom import asymmetric_phantom, write_series

    ph = asymmetric_phantom(shape=(16, 24, 20), spacing=(2.0, 0.8, 0.7), seed=11)
    write_series(ph, tmp_path / "tilted", shear_px=(1, 0), tags={"GantryDetectorTilt": 21.8})
    rc, _, stderr = run_cli(
        ["predict", str(tmp_path / "tilted"), *predict_options(env), "--out", str(tmp_path / "a")]
    )
    # the error names the option that is really there
    assert rc == 1 and "gantry tilt of 21.8 degrees" in stderr and "hyperct predict --resample-tilt" in stderr
    rc, _, stderr = run_cli(
        [
            "predict",
            str(tmp_path / "tilted"),
            *predict_options(env),
            "--resample-tilt",
            "--json",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert rc == 0, stderr
    (path,) = (tmp_path / "b").glob("scan-*.hyperct.json")  # shareable: a pseudonymous name
    doc = json.loads(path.read_text())
    assert "gantry_tilt_resampled" in [w["code"] for w in doc["input"]["qc_warnings"]]


def test_min_slices_lowers_the_short_volume_limit(env, tmp_path):
    arr = np.full((24, 24, 10), -800, np.int16)
    arr[8:16, 8:16] = 40  # not constant (a constant volume is refused)
    img = nib.Nifti1Image(arr, np.diag([8.0, 8.0, 5.0, 1.0]))
    nib.save(img, tmp_path / "short.nii.gz")
    rc, _, stderr = run_cli(
        ["predict", str(tmp_path / "short.nii.gz"), *predict_options(env), "--out", str(tmp_path / "a")]
    )
    assert rc == 1 and "only 10 slice(s)" in stderr and "hyperct predict --min-slices N" in stderr
    rc, _, stderr = run_cli(
        [
            "predict",
            str(tmp_path / "short.nii.gz"),
            *predict_options(env),
            "--min-slices",
            "8",
            "--json",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert rc == 0, stderr
    (path,) = (tmp_path / "b").glob("scan-*.hyperct.json")
    assert json.loads(path.read_text())["input"]["slices"] == 10
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["predict", str(tmp_path / "short.nii.gz"), "--min-slices", "1"])
    assert exc.value.code == 2 and "must be at least 2" in err.getvalue()


def test_json_dash_never_prints_nan(env, monkeypatch):
    """NaN/inf header values are null in the JSON; a NaN spacing is a typed error, not 'NaN' text."""
    from hyperct import inference

    real = inference.describe_input

    def odd(volume, nan_spacing=False):
        out = real(volume)
        out["kvp"], out["slice_thickness_mm"] = float("inf"), float("nan")
        if odd.spacing:
            out["spacing_mm"]["slice"] = float("nan")
        return out

    odd.spacing = False
    monkeypatch.setattr(inference, "describe_input", odd)
    rc, stdout, stderr = run_cli(
        ["predict", "--json", "-", str(env / "oblique.nii.gz")] + predict_options(env)
    )
    assert rc == 0, stderr
    assert "NaN" not in stdout and "Infinity" not in stdout
    doc = json.loads(stdout)
    assert doc["input"]["kvp"] is None and doc["input"]["slice_thickness_mm"] is None
    odd.spacing = True
    rc, stdout, stderr = run_cli(
        ["predict", "--json", "-", str(env / "oblique.nii.gz")] + predict_options(env)
    )
    assert rc == 1 and stdout == "" and "NaN" not in stdout
    assert "spacing is nan, not a finite number" in stderr and "unexpected" not in stderr


def test_the_cli_names_the_files_it_wrote_when_a_later_one_fails(env, tmp_path, monkeypatch):
    import importlib

    export_mod = importlib.import_module("hyperct.report.export")
    from hyperct.errors import ExportError

    real, n = export_mod.place, [0]

    def failing(tmp, path, *, overwrite):
        n[0] += 1
        if n[0] == 2:
            raise ExportError("writing failed ([Errno 28] No space left on device)", path=path)
        real(tmp, path, overwrite=overwrite)

    monkeypatch.setattr(export_mod, "place", failing)
    out = tmp_path / "o"
    argv = [
        "predict",
        str(env / "dicom"),
        *predict_options(env),
        "--out",
        str(out),
        "--json",
        "--pdf",
        "--sr",
    ]
    rc, _, stderr = run_cli(argv)
    assert rc == 1
    (wrote,) = [ln for ln in stderr.splitlines() if "wrote" in ln]
    assert wrote.endswith(".hyperct.sr.dcm (its set is incomplete)")
    (err,) = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert err.index("No space left") < err.index(str(out))  # the cause first, then the file
    assert "not written" in err and "without --overwrite" in err
    monkeypatch.setattr(export_mod, "place", real)
    rc, _, stderr = run_cli(argv)  # the retry is not refused: the earlier set was incomplete
    assert rc == 0, stderr
    assert len(_visible(out)) == 3 and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_fhir_bundle_is_written_beside_the_json_with_the_same_values(env, tmp_path):
    from hyperct.report.fhir import parse_bundle

    rc, _, err = run_cli(
        [
            "predict",
            str(env / "oblique.nii.gz"),
            *predict_options(env),
            "--json",
            "--fhir",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0, err
    (fhir_file,) = tmp_path.glob("*.hyperct.fhir.json")
    doc = json.loads(fhir_file.with_name(fhir_file.name.replace(".fhir.json", ".json")).read_text())
    bundle = parse_bundle(fhir_file.read_text())
    obs = [e.resource for e in bundle.entry if e.resource.__resource_type__ == "Observation"]
    assessed = {f["id"]: f["probability"] for f in doc["findings"] if f["probability"] is not None}
    assert len(obs) == len(assessed) == 2
    values = sorted(round(float(o.valueQuantity.value), 6) for o in obs)
    assert values == sorted(round(p, 6) for p in assessed.values())
    assert f"wrote {fhir_file}" in err
