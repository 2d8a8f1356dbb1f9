"""``hyperct screen`` end to end on a small archive of phantom studies (issue 19): the index's series
choice, one results row per CT study equal to ``hyperct predict``, failures as rows, the summary,
resuming after an interruption, FHIR bundles, and a two-process ``torchrun`` run (gloo, loopback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from hyperct.screening.tables import read_table
from tests.support.archive import build_archive, series_uids, study_uid
from tests.support.cli import run_cli, site_settings
from tests.support.models import save_tiny_checkpoint

LINK_KEY = "screen-test-key"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen")
    save_tiny_checkpoint(root / "ckpt", model_version="0.0.9")
    build_archive(root)
    with site_settings(root, LINK_KEY) as mp:
        mp.delenv("HYPERCT_SCREEN_STOP_AFTER", raising=False)
        yield root


def _common(env: Path) -> list[str]:
    return ["--model", str(env / "ckpt"), "--device", "cpu", "--workers", "1"]


@pytest.fixture(scope="module")
def full_run(env):
    out = env / "full"
    rc, stdout, stderr = run_cli(
        ["screen", str(env / "archive"), "--out", str(out), *_common(env), "--json", "--fhir"]
    )
    return rc, stdout, stderr, out


def _by_study(rows):
    return {r["study"]: r for r in rows}


def test_index_chooses_the_expected_series(full_run, env):
    rc, stdout, stderr, out = full_run
    assert rc == 1, stderr  # one study fails (a slice cut short)
    arch = env / "archive"
    index = read_table(out / "index.parquet")
    by = {}
    for r in index:
        by.setdefault(r["study"], {})[r["series_uid"]] = r
    a, b, c = (study_uid(arch / p) for p in ("site1/p1", "site1/p2", "site2/x/y"))
    ua, ub, uc = (series_uids(arch / p) for p in ("site1/p1", "site1/p2", "site2/x/y"))
    assert by[a][ua["IM"]]["chosen"] and not by[a][ua["TH"]]["chosen"]
    assert by[a][ua["TH"]]["reason"].startswith("slices thicker than 5 mm")
    assert by[a][ua["SCOUT"]]["reason"] == "localizer/scout"
    assert {r["duplicate_files"] for r in by[a].values()} == {len(list((arch / "site1/p1").glob("*.dcm")))}
    # B: the contrast copy (SeriesNumber 1) would win the tie; the non-contrast series is chosen
    assert by[b][ub["IM"]]["chosen"] and not by[b][ub["CE"]]["chosen"]
    assert "contrast-enhanced" in by[b][ub["CE"]]["reason"]
    assert by[c][uc["IM"]]["chosen"] and by[c][uc["IM"]]["study_status"] == "score"
    mr = [r for r in index if r["modality"] == "MR"]
    assert len(mr) == 1 and mr[0]["study_status"] == "skipped" and mr[0]["reason"] == "not CT"
    nifti = [r for r in index if r["study"].startswith("file-")]
    assert len(nifti) == 1 and nifti[0]["chosen"]
    assert len({r["study"] for r in index}) == 5  # A (and its copy), B, C, MR, NIfTI


def test_one_row_per_ct_study_equal_to_predict(full_run, env):
    rc, stdout, stderr, out = full_run
    arch = env / "archive"
    rows = read_table(out / "results.parquet")
    assert len(rows) == 4  # A, B, C (failed), NIfTI; the MR study is not a row
    by = _by_study(rows)
    nifti = next(s for s in by if s.startswith("file-"))
    docs = []
    for argv in (
        [str(arch / "site1/p1"), str(arch / "nifti" / "e.nii.gz")],
        [str(arch / "site1/p2"), "--series", series_uids(arch / "site1/p2")["IM"]],
    ):
        rc2, js, err = run_cli(
            ["predict", *argv, "--model", str(env / "ckpt"), "--device", "cpu", "--json", "-"]
        )
        assert rc2 == 0, err
        try:  # one input: an indented document; several: one document per line
            docs.append(json.loads(js))
        except ValueError:
            docs += [json.loads(line) for line in js.splitlines() if line.strip()]
    studies = [study_uid(arch / "site1/p1"), nifti, study_uid(arch / "site1/p2")]
    assert len(docs) == 3
    for study, doc in zip(studies, docs, strict=True):
        row = by[study]
        assert row["status"] == "scored" and row["series_uid"] == doc["input"]["SeriesInstanceUID"]
        for f in doc["findings"]:
            assert row[f"p_{f['id']}"] == pytest.approx(f["probability"], abs=2e-6), f["id"]
            assert row[f"call_{f['id']}"] == f["call"]
        assert row["model_sha256"] == doc["model"]["weights_sha256"]
    failed = by[study_uid(arch / "site2/x/y")]
    assert failed["status"] == "failed" and failed["error_code"] == "CorruptFileError"
    assert "cut short" in failed["error"] and "-> " in failed["error"]
    assert failed["p_cardiomegaly"] is None


def test_shareable_tables_carry_no_identifiers(full_run, env):
    rc, stdout, stderr, out = full_run
    for name in ("results.csv", "index.csv", "summary.json"):
        text = (out / name).read_text()
        assert "PHANTOM" not in text and str(env) not in text, name
    rows = read_table(out / "results.parquet")
    assert all(len(r["patient_link_id"] or "x" * 32) == 32 for r in rows)
    assert "patient_id" not in rows[0] and "patient_name" not in rows[0]


def test_summary_counts_findings_failures_and_qc(full_run):
    rc, stdout, stderr, out = full_run
    s = json.loads((out / "summary.json").read_text())
    assert (s["scored"], s["failed"], s["studies_skipped"], s["not_done"]) == (3, 1, 1, 0)
    for counts in s["findings"].values():
        assert counts["present"] + counts["absent"] + counts["not_assessed"] == 3
    assert s["failures_by_reason"] == {"CorruptFileError": 1}
    rows = read_table(out / "results.parquet")
    n_qc = sum(len((r["qc_codes"] or "").split(";")) for r in rows if r["qc_codes"])
    assert sum(s["qc_warnings_by_code"].values()) == n_qc
    assert "failed studies by reason: CorruptFileError 1" in stdout
    assert (out / "summary.txt").read_text().strip() in stdout


def _parts(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / ".state" / "parts").glob("*.json"))]


def _probabilities(rows):
    return {
        r["study"]: {k: v for k, v in r.items() if k.startswith(("p_", "call_", "status", "series"))}
        for r in rows
    }


def test_resume_after_an_interruption_scores_each_study_once(full_run, env, monkeypatch):
    out = env / "resume"
    argv = ["screen", str(env / "archive"), "--out", str(out), *_common(env), "--batch-size", "1"]
    monkeypatch.setenv("HYPERCT_SCREEN_STOP_AFTER", "2")
    rc, _, stderr = run_cli(argv)
    assert rc == 130, stderr
    assert "run the same command again to continue" in stderr
    first = _parts(out)
    assert len(first) == 2 and len({p["run_id"] for p in first}) == 1
    assert json.loads((out / "summary.json").read_text())["not_done"] == 2
    monkeypatch.delenv("HYPERCT_SCREEN_STOP_AFTER")
    rc, _, stderr = run_cli(argv)
    assert rc == 1, stderr
    assert "2 already done" in stderr
    parts = _parts(out)
    assert len(parts) == 4
    again = [p for p in parts if p["run_id"] != first[0]["run_id"]]
    assert len(again) == 2 and {p["key"] for p in again}.isdisjoint({p["key"] for p in first})
    for p in first:  # the studies done before were not touched
        assert p in parts
    rows = read_table(out / "results.parquet")
    full = read_table(full_run[3] / "results.parquet")
    _close(rows, full)
    # a third run has nothing to do; another export mode (or model, or findings) scores everything again
    rc, _, stderr = run_cli(argv)
    assert "4 already done" in stderr and len({p["run_id"] for p in _parts(out)}) == 2
    rc, _, stderr = run_cli(argv + ["--mode", "clinical"])
    assert "0 already done" in stderr
    assert len({p["run_id"] for p in _parts(out)} - {p["run_id"] for p in parts}) == 1
    assert len(_parts(out)) == 4
    clinical = read_table(out / "results.parquet")
    ds = pydicom.dcmread(next((env / "archive" / "site1" / "p1").glob("IM*.dcm")), stop_before_pixels=True)
    assert ds.PatientID in {r["patient_id"] for r in clinical} and "patient_link_id" not in clinical[0]


def test_manifest_rows_name_studies_and_force_a_series(env, tmp_path):
    from hyperct.screening.index import Source, index_groups, plan_studies

    arch = env / "archive"
    ce = series_uids(arch / "site1" / "p2")["CE"]
    rows = [(str(arch / "site1" / "p2"), ce, "case-b"), (str(arch / "nifti" / "e.nii.gz"), None, "case-e")]
    groups, loose = index_groups(Source("", rows))
    entries = {e.key: e for e in plan_studies(groups, min_slices=16, resample_tilt=False)}
    assert sorted(entries) == ["id:case-b", "id:case-e"] and not loose
    assert entries["id:case-b"].series_uid == ce  # the manifest's series wins over non-contrast first
    assert entries["id:case-b"].out_id == "case-b" and entries["id:case-e"].kind == "file"


def _close(a, b, tol=2e-6) -> bool:
    pa, pb = _probabilities(a), _probabilities(b)
    assert pa.keys() == pb.keys()
    for study in pa:
        for k, v in pa[study].items():
            w = pb[study][k]
            if isinstance(v, float):
                assert w == pytest.approx(v, abs=tol), (study, k)
            else:
                assert v == w, (study, k)
    return True


def test_fhir_bundles_match_the_json_reports(full_run, env):
    from hyperct.report.export import read_set_record
    from hyperct.report.fhir import SNOMED_SYSTEM, bundle_json, parse_bundle

    rc, stdout, stderr, out = full_run
    bundles = sorted((out / "reports").glob("*.fhir.json"))
    assert len(bundles) == 3  # the scored studies
    for path in bundles:
        assert path.name.endswith(".hyperct.fhir.json")  # named as 'predict --fhir' names it
        json_path = path.with_name(path.name.replace(".hyperct.fhir.json", ".hyperct.json"))
        doc = json.loads(json_path.read_text())
        text = path.read_text()
        assert text == bundle_json(doc)  # one document for both files (same report id and time)
        rec = read_set_record(out / "reports", path.name.removesuffix(".hyperct.fhir.json"))
        assert rec["complete"] and {path.name, json_path.name} <= set(rec["files"])  # one export set
        bundle = parse_bundle(text)
        res = [e.resource for e in bundle.entry]
        kinds = [r.get_resource_type() for r in res]
        assert kinds[0] == "DiagnosticReport" and "Device" in kinds and "Patient" not in kinds
        obs = {r.code.text: r for r in res if r.get_resource_type() == "Observation"}
        assessed = [f for f in doc["findings"] if f["call"] in ("present", "absent")]
        assert len(obs) == len(assessed) == 25
        for f in assessed:
            o = obs[f["name"]]
            assert float(o.valueQuantity.value) == f["probability"]
            assert o.interpretation[0].text == f["call"]
            assert o.interpretation[0].coding[0].code == ("POS" if f["call"] == "present" else "NEG")
            sct = [c for c in f["codes"] if c["scheme"] == "SCT"]
            assert [c.code for c in o.code.coding if c.system == SNOMED_SYSTEM] == [c["value"] for c in sct]
            assert o.note[0].text == doc["disclaimer"]
        report = res[0]
        assert len(report.result) == 25 and doc["disclaimer"] in report.conclusion
        assert "PHANTOM" not in text and str(env) not in text  # shareable: no names, IDs, paths


def test_fhir_clinical_mode_keeps_identifiers_and_qc_notes(env):
    from hyperct.report.fhir import bundle_json, parse_bundle

    rc, js, err = run_cli(
        [
            "predict",
            str(env / "archive" / "nifti" / "e.nii.gz"),
            "--model",
            str(env / "ckpt"),
            "--device",
            "cpu",
        ]
        + ["--json", "-", "--findings", "cardiomegaly,emphysema"]
    )
    assert rc == 0, err
    doc = json.loads(js)
    bundle = parse_bundle(bundle_json(doc))
    obs = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "Observation"]
    assert sorted(o.code.text for o in obs) == ["Cardiomegaly", "Emphysema"]  # only the assessed ones
    codes = {w["code"] for w in doc["input"]["qc_warnings"]}
    assert codes and all(any(c in n.text for n in obs[0].note) for c in codes)
    rc, js, err = run_cli(
        ["predict", str(env / "archive" / "site1" / "p1"), "--model", str(env / "ckpt"), "--device", "cpu"]
        + ["--json", "-", "--mode", "clinical", "--findings", "emphysema"]
    )
    bundle = parse_bundle(bundle_json(json.loads(js)))
    (patient,) = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "Patient"]
    ds = pydicom.dcmread(next((env / "archive" / "site1" / "p1").glob("IM*.dcm")), stop_before_pixels=True)
    assert patient.identifier[0].value == ds.PatientID and patient.name[0].family == "PHANTOM"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_processes_give_the_single_process_table(full_run, env):
    out = env / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "hyperct.cli.main", "screen", str(env / "archive"), "--out", str(out),
        "--model", str(env / "ckpt"), "--device", "cpu", "--workers", "0", "--json", "--fhir", "-q",
    ]  # fmt: skip
    child_env = dict(
        os.environ,
        GLOO_SOCKET_IFNAME="lo",  # rendezvous and transport on the loopback device
        HYPERCT_DIST_TIMEOUT_S="120",
        OMP_NUM_THREADS="1",
        HYPERCT_LINK_KEY=LINK_KEY,
    )
    proc = subprocess.Popen(
        cmd,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks: the group this test started
        log, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within 300 s:\n{log[-3000:]}")
    assert proc.returncode == 1, log[-3000:]  # one failed study, as in the single-process run
    rows = read_table(out / "results.parquet")
    full = read_table(full_run[3] / "results.parquet")
    assert [r["study"] for r in rows] == [r["study"] for r in full]
    _close(rows, full)
    ids = ("patient_link_id", "accession_link_id", "study_date", "error_code", "qc_codes", "model_sha256")
    assert [[r[k] for k in ids] for r in rows] == [[r[k] for k in ids] for r in full]
    assert {p["rank"] for p in _parts(out)} == {0, 1}  # both ranks scored a share
    assert read_table(out / "index.parquet") == read_table(full_run[3] / "index.parquet")
    assert len(list((out / "reports").glob("*.fhir.json"))) == 3
