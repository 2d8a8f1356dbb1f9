"""Evaluate a HyperCT checkpoint on labelled data: per-finding AUC with bootstrap CI, ROC and
decision curves, operating thresholds; optionally write the thresholds into the checkpoint.

Outputs (in ``out_dir``): ``metrics.csv`` and ``metrics.md`` (finding, group, n, positives, AUC,
95 % CI, threshold, sensitivity, specificity), ``metrics.json`` (everything, incl. macro AUC
overall and per group, both operating points per finding, the bootstrap settings),
``predictions.csv`` (per volume: label and probability per finding), ``roc_<group>.png`` and
``dca_<group>.png``.

Operating thresholds: Youden's J on the evaluated data (``threshold_source="youden"``, the
default) or the checkpoint's own thresholds (``"model"``). Youden thresholds are meant to be
chosen on *validation* data and then written into the checkpoint (``write_thresholds``), so that
a later evaluation on test data reports sensitivity/specificity at thresholds it did not choose.
What ``write_thresholds`` writes is ``EvaluationReport.operating_thresholds``: Youden's J where the
data show the model detecting the finding, and for a finding they do not (its AUC below 0.70, or its
95 % CI not above 0.5: ``metrics.discriminates``) the lowest threshold with specificity >= 0.99
instead, so that a finding the model cannot tell is rarely called rather than called on many scans.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hyperct.errors import ConfigError, DatasetError
from hyperct.findings import GROUP_LABELS, catalogue
from hyperct.jsonable import jsonable
from hyperct.training.datasets import IndexedPixels, VolumeDataset
from hyperct.training.metrics import (
    HIGH_SPECIFICITY,
    MIN_CI_PER_CLASS,
    MIN_USEFUL_AUC,
    FindingMetrics,
    discriminates,
    finding_metrics,
    labelled,
    macro_auc,
    not_detected,
    sens_spec,
    specificity_threshold,
)
from hyperct.training.progress import progress_bar

OUTPUT_FILES = ("metrics.csv", "metrics.md", "metrics.json", "predictions.csv")


@dataclass
class EvaluationReport:
    findings: list[FindingMetrics]
    macro_auc: dict[str, float]
    youden_thresholds: dict[str, float]
    # what write_thresholds writes: Youden's J, or a high-specificity threshold for the findings in
    # ``high_specificity`` (the data do not show the model detecting them)
    operating_thresholds: dict[str, float] = field(default_factory=dict)
    high_specificity: list[str] = field(default_factory=list)
    # the AUC below which a finding is not called at Youden's J (``metrics.discriminates``)
    min_auc: float = MIN_USEFUL_AUC
    files: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def by_id(self, finding_id: str) -> FindingMetrics:
        return next(m for m in self.findings if m.finding == finding_id)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def predict(
    loaded,
    data: VolumeDataset,
    tasks: list[int],
    *,
    batch_size: int = 4,
    task_chunk: int | None = None,
    workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Probabilities (len(data), 25); NaN for the findings not in ``tasks``."""
    from hyperct.inference import score_pixels

    out = np.full((len(data), len(catalogue())), np.nan)
    if not tasks:
        return out
    loader = torch.utils.data.DataLoader(
        IndexedPixels(data), batch_size=batch_size, shuffle=False, num_workers=workers
    )
    total = math.ceil(len(data) / batch_size)
    for pixels, idx in progress_bar(loader, desc="score", total=total, unit="batch", enabled=progress):
        logits = score_pixels(loaded, pixels, tasks, task_chunk=task_chunk)
        out[np.asarray(idx)[:, None], np.asarray(tasks)[None, :]] = _sigmoid(logits)
    return out


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


TABLE_COLUMNS = (
    "finding",
    "name",
    "group",
    "n",
    "positives",
    "auc",
    "ci_low",
    "ci_high",
    "threshold",
    "threshold_source",
    "sensitivity",
    "specificity",
    "ci_note",
)


def _rows(report: EvaluationReport) -> list[dict]:
    cat = catalogue()
    rows = []
    for m in report.findings:
        rows.append(
            {
                "finding": m.finding,
                "name": cat[m.finding].name,
                "group": m.group,
                "n": m.n,
                "positives": m.positives,
                "auc": m.auc,
                "ci_low": m.ci_low,
                "ci_high": m.ci_high,
                "threshold": m.threshold,
                "threshold_source": m.threshold_source,
                "sensitivity": m.sensitivity,
                "specificity": m.specificity,
                "ci_note": m.ci_note,
            }
        )
    return rows


def metrics_csv(report: EvaluationReport) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in _rows(report):
        w.writerow({k: ("" if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()})
    return buf.getvalue()


def metrics_markdown(report: EvaluationReport, *, title: str, notes: list[str]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        "",
        "| Finding | Group | n | Positives | AUC | 95 % CI | Threshold | Sensitivity | Specificity |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in _rows(report):
        ci = (
            f"{_fmt(r['ci_low'])}-{_fmt(r['ci_high'])}" if np.isfinite(r["ci_low"]) else r["ci_note"] or "n/a"
        )
        lines.append(
            f"| {r['name']} | {GROUP_LABELS.get(r['group'], r['group'])} | {r['n']} | {r['positives']} | "
            f"{_fmt(r['auc'])} | {ci} | {_fmt(r['threshold'])} | {_fmt(r['sensitivity'])} | {_fmt(r['specificity'])} |"
        )
    lines += ["", "| Macro AUC | Value |", "|---|---:|"]
    for k, v in report.macro_auc.items():
        lines.append(f"| {GROUP_LABELS.get(k, k.capitalize())} | {_fmt(v)} |")
    return "\n".join(lines) + "\n"


def compute_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold_source: str = "youden",
    model_thresholds: dict[str, float] | None = None,
    min_auc: float = MIN_USEFUL_AUC,
) -> EvaluationReport:
    """Per-finding metrics for every finding with at least one label and a score; ``min_auc``: the
    AUC a finding needs for its Youden threshold (``metrics.discriminates``), 0.5 to 1."""
    if threshold_source not in ("youden", "model"):
        raise ConfigError(f"threshold source {threshold_source!r}: use youden or model")
    check_min_auc(min_auc)
    results, youden, extra, operating, high_spec = [], {}, {}, {}, []
    for f in catalogue():
        y = labels[:, f.index]
        p = probs[:, f.index]
        keep = ((y == 0) | (y == 1)) & np.isfinite(p)
        if not keep.any():
            continue
        given = None
        if threshold_source == "model":
            given = float((model_thresholds or {}).get(f.id, 0.5))
        m = finding_metrics(
            f.id, f.group, y[keep], p[keep], threshold=given, n_boot=n_boot, seed=seed, level=level
        )
        results.append(m)
        yl, pl = labelled(y[keep], p[keep])
        thr_j, j = m.youden_threshold, m.youden_j
        if np.isfinite(thr_j):
            youden[f.id] = thr_j
        spec_thr = specificity_threshold(yl, pl)
        if np.isfinite(thr_j) and discriminates(m.auc, m.ci_low, min_auc):
            operating[f.id] = thr_j
        elif np.isfinite(thr_j) and np.isfinite(spec_thr):  # both classes, detection not shown
            operating[f.id] = spec_thr
            high_spec.append(f.id)
        hs, hsp = sens_spec(yl, pl, spec_thr) if np.isfinite(spec_thr) else (float("nan"), float("nan"))
        model_thr = float((model_thresholds or {}).get(f.id, 0.5))
        ms, msp = sens_spec(yl, pl, model_thr)
        ys, ysp = sens_spec(yl, pl, thr_j) if np.isfinite(thr_j) else (float("nan"), float("nan"))
        extra[f.id] = {
            "youden": {"threshold": thr_j, "j": j, "sensitivity": ys, "specificity": ysp},
            "model": {"threshold": model_thr, "sensitivity": ms, "specificity": msp},
            f"specificity_{HIGH_SPECIFICITY:g}": {
                "threshold": spec_thr,
                "sensitivity": hs,
                "specificity": hsp,
            },
        }
    macro = {"overall": macro_auc([m.auc for m in results])}
    for group in catalogue().groups:
        macro[group] = macro_auc([m.auc for m in results if m.group == group])
    return EvaluationReport(
        findings=results,
        macro_auc=macro,
        youden_thresholds=youden,
        operating_thresholds=operating,
        high_specificity=high_spec,
        min_auc=min_auc,
        summary={"operating_points": extra},
    )


def evaluate(
    loaded,
    data: VolumeDataset,
    out_dir: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold_source: str = "youden",
    batch_size: int = 4,
    task_chunk: int | None = None,
    workers: int = 0,
    findings: list[str] | None = None,
    data_label: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    min_auc: float = MIN_USEFUL_AUC,
) -> EvaluationReport:
    """Score ``data`` with ``loaded`` (a ``hyperct.loading.LoadedModel``) and write the report."""
    out_dir = Path(out_dir)
    if (out_dir / "metrics.json").exists() and not overwrite:
        raise ConfigError(
            "the output folder already holds an evaluation (metrics.json)",
            path=out_dir,
            hint="choose another --out folder or pass --overwrite",
        )
    cat = catalogue()
    wanted = set(cat.indices(findings)) if findings else set(range(len(cat)))
    tasks = [k for k in sorted(wanted) if ((data.labels[:, k] == 0) | (data.labels[:, k] == 1)).any()]
    if not tasks:
        raise DatasetError("no labels for the findings to evaluate", path=data.source)
    probs = predict(
        loaded, data, tasks, batch_size=batch_size, task_chunk=task_chunk, workers=workers, progress=progress
    )
    report = compute_metrics(
        data.labels,
        probs,
        n_boot=n_boot,
        seed=seed,
        level=level,
        threshold_source=threshold_source,
        model_thresholds=loaded.manifest.thresholds,
        min_auc=min_auc,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    label = data_label or data.source
    files = []

    def write(name: str, text: str) -> None:
        (out_dir / name).write_text(text, encoding="utf-8")
        files.append(out_dir / name)

    thr_note = (
        "Thresholds: Youden's J (max sensitivity + specificity - 1) chosen on these data; optimistic on "
        "test data: choose them on validation data (hyperct evaluate --write-thresholds) and report test "
        "data with --thresholds model."
        if threshold_source == "youden"
        else "Thresholds: the checkpoint's own (manifest.json), not tuned on these data."
    )
    notes = [
        f"Model: {loaded.name} v{loaded.version} (weights sha256 {loaded.weights_sha256[:12]}...)"
        + (" - DEMO model trained on synthetic phantoms" if loaded.is_demo else ""),
        f"Data: {label} ({len(data)} volumes)",
        f"AUC 95 % CI: stratified percentile bootstrap, {n_boot} resamples, seed {seed}; not estimable "
        f"(not given) for findings with fewer than {MIN_CI_PER_CLASS} positives or {MIN_CI_PER_CLASS} negatives.",
        thr_note,
    ]
    if report.high_specificity:
        notes.append(
            f"Not shown detected on these data ({not_detected(report.min_auc)}): "
            f"{', '.join(report.high_specificity)}; --write-thresholds gives them the lowest threshold with "
            f"specificity >= {HIGH_SPECIFICITY:g} here instead of Youden's J."
        )
    notes.append("AI output, not a diagnosis.")
    write("metrics.csv", metrics_csv(report))
    write("metrics.md", metrics_markdown(report, title="HyperCT evaluation", notes=notes))

    # predictions
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    ids = [cat[k].id for k in tasks]
    w.writerow(["volume"] + [f"label_{i}" for i in ids] + [f"prob_{i}" for i in ids])
    for n in range(len(data)):
        w.writerow(
            [data.names[n]] + [int(data.labels[n, k]) for k in tasks] + [f"{probs[n, k]:.6f}" for k in tasks]
        )
    write("predictions.csv", buf.getvalue())

    from hyperct.training.plots import dca_grid, roc_grid

    for group in catalogue().groups:
        panels = [
            (
                cat[m.finding].short_name,
                m,
                data.labels[:, cat.index(m.finding)],
                probs[:, cat.index(m.finding)],
            )
            for m in report.findings
            if m.group == group
        ]
        if not panels:
            continue
        glabel = GROUP_LABELS.get(group, group)
        files.append(roc_grid(panels, f"ROC: {glabel} findings ({label})", out_dir / f"roc_{group}.png"))
        files.append(
            dca_grid(panels, f"Decision curves: {glabel} findings ({label})", out_dir / f"dca_{group}.png")
        )

    summary = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": loaded.name,
            "version": loaded.version,
            "weights_sha256": loaded.weights_sha256,
            "directory": str(loaded.directory),
            "demo": loaded.is_demo,
        },
        "data": {"label": label, "n": len(data), "description": data.describe()},
        "bootstrap": {
            "resamples": n_boot,
            "seed": seed,
            "level": level,
            "method": "stratified percentile",
            "min_positives_and_negatives": MIN_CI_PER_CLASS,
        },
        "threshold_source": threshold_source,
        "threshold_method": "Youden's J on the evaluated data"
        if threshold_source == "youden"
        else "checkpoint",
        "macro_auc": report.macro_auc,
        "findings": {
            m.finding: dict(
                asdict(m), ci_note=m.ci_note, operating_points=report.summary["operating_points"][m.finding]
            )
            for m in report.findings
        },
        "youden_thresholds": report.youden_thresholds,
        "operating_thresholds": report.operating_thresholds,
        "high_specificity": _high_specificity_block(report.high_specificity, "these data", report.min_auc),
        "files": [p.name for p in files] + ["metrics.json"],
    }
    report.summary = dict(report.summary, **summary)
    (out_dir / "metrics.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n", encoding="utf-8")
    files.append(out_dir / "metrics.json")
    report.files = files
    return report


def _high_specificity_block(findings: list[str], data: str, min_auc: float) -> dict:
    """Which findings got the high-specificity threshold and why (metrics.json, the manifest)."""
    return {
        "findings": findings,
        "specificity": HIGH_SPECIFICITY,
        "why": f"{not_detected(min_auc)} on {data}",
    }


def check_min_auc(min_auc: float) -> None:
    """``min_auc`` must lie in [0.5, 1): below 0.5 it would pass scores worse than chance."""
    if not (isinstance(min_auc, (int, float)) and 0.5 <= min_auc < 1.0):
        raise ConfigError(
            f"the minimum AUC for a Youden threshold is {min_auc!r}",
            hint="give a value from 0.5 (only the CI above chance) to below 1 (default 0.70)",
        )


def write_thresholds(model_dir: str | Path, report: EvaluationReport, *, data_label: str) -> dict:
    """Put the operating thresholds of ``report`` into the checkpoint's manifest (atomic rewrite):
    Youden's J, and for the findings the data do not show the model detecting
    (``report.high_specificity``) the lowest threshold with specificity >= 0.99 there.

    Findings without both classes in the evaluated data keep their current threshold. The
    weights (and their sha256) are untouched. ``threshold_calibration.high_specificity`` lists the
    findings that got the high-specificity threshold (a reader of the manifest can flag them).
    """
    from hyperct.checkpoint import read_manifest, update_manifest

    manifest = read_manifest(model_dir)
    current = manifest.thresholds
    operating = report.operating_thresholds
    new = {fid: float(operating.get(fid, current.get(fid, 0.5))) for fid in catalogue().ids}
    n = {m.finding: m.n for m in report.findings}
    tuned = sorted(operating)
    hs = sorted(report.high_specificity)
    method = (
        f"Youden's J (max sensitivity + specificity - 1) on {data_label} "
        f"({max(n.values()) if n else 0} volumes; {len(tuned)} of {len(new)} findings tuned, "
        f"the others keep their previous threshold)"
        + (
            f"; not shown detected there ({not_detected(report.min_auc)}), so set for specificity "
            f">= {HIGH_SPECIFICITY:g} instead: {', '.join(hs)}"
            if hs
            else ""
        )
        + f", {_dt.date.today().isoformat()}"
    )
    return update_manifest(
        model_dir,
        thresholds=new,
        threshold_method=method,
        threshold_calibration={
            "method": "youden",
            "data": data_label,
            "tuned_findings": tuned,
            "high_specificity": _high_specificity_block(hs, data_label, report.min_auc),
            "n": n,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
