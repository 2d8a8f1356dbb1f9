"""Scoring an indexed archive: worker processes read, the model scores batches, each study is recorded.

Reading (DICOM decode, reorientation, resampling to the model grid) runs in ``torch.utils.data``
worker processes; the main process stacks what they deliver into batches of volumes and scores
all findings in one batched pass per batch (``hyperct.inference.score_pixels``), so the model is
not idle while the next volumes are read.

Each completed study (scored or failed) is written as one small JSON part file
(``.state/parts/<hash>.json``, written to a temporary name, fsync'ed, then renamed): a killed run
loses at most the studies in flight, and a rerun skips every study that has a part (unless
``force``; failed ones too unless ``retry_failed``). After the last study (and a barrier, under
``torchrun``) rank 0 merges the parts of the studies in the index into the results table.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyperct.atomic import replace_file
from hyperct.errors import naming
from hyperct.report import deid
from hyperct.screening import index as idx
from hyperct.screening import tables

STATE_DIR = ".state"
INDEX_FILE = "index.json"
STOP_AFTER_ENV = "HYPERCT_SCREEN_STOP_AFTER"  # test hook: behave as if Ctrl-C came after k studies
INDEX_VERSION = 1


@dataclass
class ScreenOptions:
    out: Path
    mode: str = deid.SHAREABLE
    findings: list[str] | None = None
    batch_size: int | None = None  # None: 8 on a GPU, 2 on a CPU
    workers: int = 2
    index_workers: int = 0
    min_slices: int = 16
    resample_tilt: bool = False
    formats: list[str] = field(default_factory=list)  # json, pdf, sr, fhir (per study, via report.export)
    saliency: str | None = None  # None, "positive", "all" or "a,b"
    saliency_method: str | None = None
    force: bool = False
    retry_failed: bool = False
    reindex: bool = False
    quiet: bool = False
    progress_interval_s: float = 2.0


@dataclass
class ScreenOutcome:
    entries: list[idx.StudyEntry]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    written: list[Path]
    scored_now: int
    failed_now: int
    skipped_done: int
    interrupted: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


def _say(text: str, rank: int = 0, world: int = 1) -> None:
    tag = f" [rank {rank}]" if world > 1 else ""
    print(f"hyperct screen{tag}: {text}", file=sys.stderr, flush=True)


# --- state files -------------------------------------------------------------------------------------


def _write_json_atomic(path: Path, obj: Any) -> None:
    replace_file(path, json.dumps(obj, ensure_ascii=False))


def part_path(out: Path, key: str) -> Path:
    return out / STATE_DIR / "parts" / (hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".json")


def read_parts(out: Path) -> dict[str, dict[str, Any]]:
    """Completed studies: key -> part (unreadable or half-written files are ignored: not completed)."""
    folder = out / STATE_DIR / "parts"
    done: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return done
    for p in sorted(folder.glob("*.json")):
        try:
            part = json.loads(p.read_text(encoding="utf-8"))
            done[part["key"]] = part
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return done


def _source_signature(source: idx.Source, opts: ScreenOptions) -> dict[str, Any]:
    return {
        "version": INDEX_VERSION,
        "root": os.path.abspath(source.root) if source.root else None,
        "rows": [list(r) for r in source.rows] if source.rows is not None else None,
        "min_slices": opts.min_slices,
        "resample_tilt": opts.resample_tilt,
    }


# --- the index ------------------------------------------------------------------------------------


def build_index(
    source: idx.Source, opts: ScreenOptions, dist=None
) -> tuple[list[idx.StudyEntry], list[dict]]:
    """The index (studies and loose files), reused from ``.state/index.json`` unless ``reindex``."""
    from hyperct.training.distributed import DistInfo, broadcast_object, gather_objects

    dist = dist or DistInfo()
    state = opts.out / STATE_DIR / INDEX_FILE
    sig = _source_signature(source, opts)
    cached = None
    if dist.is_main and not opts.reindex and state.is_file():
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
            if data.get("signature") == sig:
                cached = data
        except (OSError, ValueError):
            cached = None
    cached = broadcast_object(dist, cached)
    if cached is not None:
        entries = [idx.StudyEntry.from_dict(d) for d in cached["studies"]]
        if dist.is_main:  # the export mode may differ from the run that built it
            _write_index_tables(entries, cached["loose"], opts)
        return entries, list(cached["loose"])

    def shard(xs: list) -> list:
        return xs[dist.rank :: dist.world]

    def gather(part: list) -> list:
        out: list = []
        for p in gather_objects(dist, part):
            out += p
        return out

    groups, loose = idx.index_groups(source, workers=opts.index_workers, shard=shard, gather=gather)
    mine = idx.plan_studies(
        shard(groups),
        min_slices=opts.min_slices,
        resample_tilt=opts.resample_tilt,
        workers=opts.index_workers,
    )
    entries = sorted(gather(mine), key=lambda e: e.key)
    if dist.is_main:
        _write_json_atomic(
            state, {"signature": sig, "studies": [e.to_dict() for e in entries], "loose": loose}
        )
        _write_index_tables(entries, loose, opts)
    return entries, loose


def _write_index_tables(entries: list[idx.StudyEntry], loose: list[dict], opts: ScreenOptions) -> list[Path]:
    rows = tables.index_rows(entries, loose, opts.mode)
    return tables.write_table(rows, tables.index_columns(opts.mode), opts.out, tables.INDEX_STEM)


# --- reading (worker processes) ---------------------------------------------------------------------


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _collate(items: list) -> list:
    return items


class StudyReads(torch.utils.data.Dataset):
    """Item i: the chosen series of study i read, checked and preprocessed (or the error)."""

    def __init__(
        self, entries: list[idx.StudyEntry], *, min_slices: int, resample_tilt: bool, keep_volume: bool
    ):
        self.entries = entries
        self.min_slices, self.resample_tilt, self.keep_volume = min_slices, resample_tilt, keep_volume

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from hyperct.errors import HyperCTError
        from hyperct.inference import describe_input
        from hyperct.io import read_ct
        from hyperct.io.quality import check_scorable
        from hyperct.preprocess import preprocess

        e = self.entries[i]
        t0 = time.perf_counter()
        item: dict[str, Any] = {"key": e.key, "ok": False}
        try:
            source = e.files[0] if e.kind == "file" else e.files
            vol = read_ct(
                source,
                series_uid=(e.series_uid if e.pass_uid else None),
                resample_tilt=self.resample_tilt,
                min_slices=self.min_slices,
            )
            check_scorable(vol, e.label)
            pre = preprocess(vol)
            item.update(
                ok=True,
                pixels=pre.pixel_values,
                source_shape=list(pre.source_shape),
                input=describe_input(vol),
                warnings=[(w.code, w.message) for w in vol.warnings],
                volume=vol if self.keep_volume else None,
            )
        except HyperCTError as exc:
            item.update(error_code=type(exc).__name__, error=naming(e.label, exc))
        except Exception as exc:  # noqa: BLE001 - one study's unexpected failure must not stop the archive
            item.update(
                error_code=f"unexpected {type(exc).__name__}",
                error=f"unexpected {type(exc).__name__}: {exc} ({e.label}) -> please report this",
            )
        item["read_s"] = time.perf_counter() - t0
        return item


def shareable_text(text: str, entry: idx.StudyEntry, roots: list[str]) -> str:
    """An error message without file paths (they may name the patient): paths become '<path>'."""
    out = text
    prefixes = sorted(
        {str(r) for r in roots if r} | {os.path.dirname(f) for f in entry.files} | {entry.label}, key=len
    )
    for p in reversed(prefixes):
        if p and p not in ("/", "."):
            out = re.sub(re.escape(p) + r"[^\s'\"()]*", "<path>", out)
    return out


# --- scoring -----------------------------------------------------------------------------------------


def _result(loaded, logits: np.ndarray, tasks: list[int], item: dict[str, Any], seconds: float):
    """An ``AnalysisResult`` from one row of batched logits (the same rules as ``inference.analysis_steps``)."""
    from hyperct.findings import catalogue
    from hyperct.inference import PREPROCESSING, finding_results, model_info
    from hyperct.results import AnalysisResult
    from hyperct.volume import QCWarning

    full = np.full(len(catalogue()), np.nan)
    full[tasks] = logits
    findings = finding_results(loaded, full, tasks)
    return AnalysisResult(
        findings=findings,
        model=model_info(loaded),
        device=str(loaded.device),
        seconds=seconds,
        input=dict(item["input"]),
        preprocessing=dict(PREPROCESSING, source_shape=list(item["source_shape"])),
        warnings=[QCWarning(c, m) for c, m in item["warnings"]],
    )


def _identity_row(entry: idx.StudyEntry, mode: str, key: bytes | None) -> dict[str, Any]:
    ident = entry.identity
    if mode == deid.CLINICAL:
        return {
            "patient_id": ident.get("PatientID") or None,
            "patient_name": ident.get("PatientName") or None,
            "accession_number": ident.get("AccessionNumber") or None,
            "study_date": ident.get("StudyDate") or None,
            "source": entry.label,
        }
    links = deid.link_ids(ident, key) if key else {}
    return {
        "patient_link_id": links.get("PatientID"),
        "accession_link_id": links.get("AccessionNumber"),
        "study_date": ident.get("StudyDate") or None,
    }


def _base_row(entry: idx.StudyEntry, loaded, mode: str, key: bytes | None) -> dict[str, Any]:
    row: dict[str, Any] = {"study": entry.study, "series_uid": entry.series_uid}
    row.update(_identity_row(entry, mode, key))
    row.update(
        model_name=loaded.name,
        model_version=loaded.version,
        model_sha256=loaded.weights_sha256,
        device=str(loaded.device),
    )
    return row


def _scored_row(base: dict[str, Any], result, problem) -> dict[str, Any]:
    from hyperct.io.quality import out_of_scope

    row = dict(base, status="scored", error_code=None, error=None)
    if problem is not None:
        row.update(error_code=type(problem).__name__, error=str(problem))
    row["qc_codes"] = ";".join(w.code for w in result.warnings) or None
    row["out_of_scope"] = bool(out_of_scope(result.warnings))
    pos = [f.id for f in result.findings if f.call == "present"]
    row["n_present"], row["present"] = len(pos), ";".join(pos) or None
    for f in result.findings:
        row[f"p_{f.id}"] = f.probability
        row[f"call_{f.id}"] = f.call
    return row


def _stem(entry: idx.StudyEntry) -> str:
    if entry.out_id:
        from hyperct.report.export import _clean

        return _clean(entry.out_id)
    return "study-" + hashlib.sha256(entry.key.encode("utf-8")).hexdigest()[:12]


def _selection(entry: idx.StudyEntry) -> dict[str, Any]:
    return {
        "rule": entry.rule,
        "skipped": [
            {
                "StudyInstanceUID": entry.study if entry.kind == "dicom" else None,
                "SeriesInstanceUID": s.get("series_uid"),
                "SeriesNumber": s.get("series_number"),
                "modality": s.get("modality"),
                "slices": s.get("slices"),
                "slice_thickness_mm": s.get("slice_thickness_mm"),
                "reason": s.get("reason"),
                "category": s.get("category"),
            }
            for s in entry.series
            if not s.get("chosen")
        ],
    }


def _exports(loaded, entry, result, volume, opts: ScreenOptions) -> list[Path]:
    """Per-study JSON/PDF/SR/FHIR/maps in ``out/reports``: one export set per study, written by
    ``report.export`` as ``hyperct predict`` writes it (SR left out for a non-DICOM study)."""
    from hyperct.report.export import export, saliency_for_export, saliency_targets

    if entry.series:
        result.input["series_selection"] = _selection(entry)
    formats = list(opts.formats)
    if "sr" in formats:
        from hyperct.report.sr import sr_skip_reason

        if sr_skip_reason(volume):
            formats.remove("sr")
    maps = saliency_targets(result, opts.saliency) if opts.saliency else []
    if not formats and not maps:
        return []
    sal = (
        saliency_for_export(loaded, volume, result, method=opts.saliency_method, extra=maps)
        if (maps or "pdf" in formats)
        else None
    )
    written = export(
        result,
        volume,
        sal,
        opts.out / "reports",
        formats,
        mode=opts.mode,
        overwrite=True,
        stem=_stem(entry),
        saliency_findings=maps or None,
    )
    return list(written.values())


class _Progress:
    def __init__(self, total: int, already: int, dist, quiet: bool, interval: float):
        self.total, self.already, self.dist, self.quiet, self.interval = total, already, dist, quiet, interval
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, failed: bool, force: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        now = time.perf_counter()
        if self.quiet or (not force and now - self.last < self.interval and self.done < self.total):
            return
        self.last = now
        el = now - self.t0
        rate = self.done / el if el > 0 else 0.0
        left = self.total - self.done
        eta = f"{left / rate / 60:.1f} min" if rate > 0 and left else "0 min"
        _say(
            f"{self.done}/{self.total} studies done ({self.failed} failed), {rate * 3600:.0f} studies/h, "
            f"ETA {eta}" + (f"; {self.already} done before" if self.already else ""),
            self.dist.rank,
            self.dist.world,
        )


def _device(spec: str) -> str:
    from hyperct.training.distributed import env_world

    if env_world() > 1 and spec in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return spec


def screen(
    source: idx.Source,
    opts: ScreenOptions,
    *,
    model_dir: str | None = None,
    backbone_dir: str | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    loaded=None,
) -> ScreenOutcome:
    """Index, score and tabulate an archive (see the package docstring). Under ``torchrun`` every rank
    calls this; rank 0 writes the tables."""
    from hyperct.device import resolve_device
    from hyperct.findings import catalogue
    from hyperct.inference import score_pixels
    from hyperct.loading import dtype_note, load_model
    from hyperct.results import check_scores
    from hyperct.training.distributed import (
        barrier,
        broadcast_object,
        gather_objects,
        init_distributed,
        shutdown,
    )

    opts.out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(_device(device)) if loaded is None else loaded.device
    dist = init_distributed(dev.type)
    try:
        if loaded is None:
            loaded = load_model(model_dir, backbone_dir=backbone_dir, device=dev, dtype=dtype)
        note = dtype_note(dtype, loaded)
        if note and dist.is_main:
            _say(note)
        if dist.is_main and not opts.quiet:
            _say(f"{loaded.describe()}; indexing {source.root or 'the manifest'}")
        t_index = time.perf_counter()
        entries, loose = build_index(source, opts, dist)
        t_index = time.perf_counter() - t_index
        done = broadcast_object(dist, read_parts(opts.out) if dist.is_main else None)
        todo_all = [e for e in entries if e.status == "score"]

        config = {"mode": opts.mode, "model_sha256": loaded.weights_sha256, "findings": opts.findings}
        if loaded.weights_dtype != "fp32":  # a bf16 run rescores fp32 parts and the reverse (old parts: fp32)
            config["weights_dtype"] = loaded.weights_dtype

        def needs(e: idx.StudyEntry) -> bool:
            part = done.get(e.key)
            if opts.force or part is None or part.get("config") != config:
                return True  # not done, or done with another model, export mode or set of findings
            return opts.retry_failed and part["row"]["status"] == "failed"

        todo = [e for e in todo_all if needs(e)]
        mine = todo[dist.rank :: dist.world]
        if dist.is_main and not opts.quiet:
            n_skip = sum(1 for e in entries if e.status == "skipped")
            _say(
                f"index: {len(entries)} studies ({len(todo_all)} to score, {n_skip} without a CT series to score, "
                f"{len(loose)} files outside studies) in {t_index:.1f} s; {len(todo_all) - len(todo)} already done"
                + (
                    f"; {len(todo)} to do on {dist.world} processes"
                    if dist.world > 1
                    else f"; {len(todo)} to do"
                )
            )
        link = deid.link_key() if opts.mode == deid.SHAREABLE else None
        keep_volume = bool(opts.formats or opts.saliency)
        cat = catalogue()
        tasks = [int(t) for t in cat.indices(list(opts.findings) if opts.findings else None)]
        batch = opts.batch_size or (8 if dev.type == "cuda" else 2)
        roots = [source.root] + [r[0] for r in (source.rows or [])]
        run_id = str(uuid.uuid4())
        stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
        by_key = {e.key: e for e in mine}
        progress = _Progress(len(mine), len(todo_all) - len(todo), dist, opts.quiet, opts.progress_interval_s)
        stats = {"read_s": 0.0, "wait_s": 0.0, "score_s": 0.0, "export_s": 0.0, "index_s": t_index}
        new_parts: list[dict[str, Any]] = []
        interrupted = False
        t_run = time.perf_counter()
        loader = torch.utils.data.DataLoader(
            StudyReads(
                mine, min_slices=opts.min_slices, resample_tilt=opts.resample_tilt, keep_volume=keep_volume
            ),
            batch_size=batch,
            shuffle=False,
            num_workers=max(0, int(opts.workers)),
            collate_fn=_collate,
            worker_init_fn=_worker_init if opts.workers > 0 else None,
            prefetch_factor=2 if opts.workers > 0 else None,
        )

        def record(entry: idx.StudyEntry, row: dict[str, Any], seconds: dict[str, float]) -> None:
            part = {
                "key": entry.key,
                "row": row,
                "run_id": run_id,
                "config": config,
                "rank": dist.rank,
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "seconds": seconds,
            }
            _write_json_atomic(part_path(opts.out, entry.key), part)
            new_parts.append(part)
            progress.update(row["status"] == "failed")
            if stop_after and len(new_parts) >= stop_after:
                raise KeyboardInterrupt

        try:
            it = iter(loader)
            while True:
                t0 = time.perf_counter()
                try:
                    items = next(it)
                except StopIteration:
                    break
                stats["wait_s"] += time.perf_counter() - t0
                stats["read_s"] += sum(i["read_s"] for i in items)
                ok = [i for i in items if i["ok"]]
                logits = None
                score_s = 0.0
                if ok:
                    t1 = time.perf_counter()
                    pixels = torch.stack([i["pixels"] for i in ok])
                    logits = score_pixels(loaded, pixels, tasks)
                    score_s = time.perf_counter() - t1
                    stats["score_s"] += score_s
                k = 0
                for item in items:
                    entry = by_key[item["key"]]
                    base = _base_row(entry, loaded, opts.mode, link.key if link else None)
                    secs = {"read": round(item["read_s"], 4)}
                    if not item["ok"]:
                        err = item["error"]
                        if opts.mode == deid.SHAREABLE:
                            err = shareable_text(err, entry, roots)
                        row = dict(base, status="failed", error_code=item["error_code"], error=err)
                        if not opts.quiet:
                            _say(f"failed: {item['error']}", dist.rank, dist.world)
                        record(entry, row, secs)
                        continue
                    result = _result(loaded, logits[k], tasks, item, score_s / len(ok))
                    k += 1
                    secs["score"] = round(score_s / len(ok), 4)
                    try:
                        problem = check_scores(result, entry.label)
                        t2 = time.perf_counter()
                        if keep_volume:
                            _exports(loaded, entry, result, item.get("volume"), opts)
                        stats["export_s"] += time.perf_counter() - t2
                        row = _scored_row(base, result, problem)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:  # noqa: BLE001 - a study's failure is a row, not the end of the run
                        msg = naming(entry.label, exc)
                        if opts.mode == deid.SHAREABLE:
                            msg = shareable_text(msg, entry, roots)
                        row = dict(base, status="failed", error_code=type(exc).__name__, error=msg)
                        if not opts.quiet:
                            _say(f"failed: {naming(entry.label, exc)}", dist.rank, dist.world)
                    record(entry, row, secs)
        except KeyboardInterrupt:
            interrupted = True
            if dist.world > 1:
                raise
        finally:
            del loader
        elapsed = time.perf_counter() - t_run
        stats.update(
            seconds=round(elapsed, 3),
            scored_now=len(new_parts),
            rate_per_hour=(len(new_parts) / elapsed * 3600) if elapsed > 0 and new_parts else None,
            processes=dist.world,
            batch_size=batch,
            workers=opts.workers,
        )
        # parts written on other machines reach rank 0 even without a shared folder
        all_new = gather_objects(dist, new_parts)
        all_stats = gather_objects(dist, stats)
        barrier(dist)
        rows: list[dict[str, Any]] = []
        summary = None
        written: list[Path] = []
        if dist.is_main:
            parts = read_parts(opts.out)
            for plist in all_new:
                for p in plist:
                    if p["key"] not in parts or parts[p["key"]].get("finished", "") <= p["finished"]:
                        if not part_path(opts.out, p["key"]).is_file():
                            _write_json_atomic(part_path(opts.out, p["key"]), p)
                        parts[p["key"]] = p
            current = {k: p for k, p in parts.items() if p.get("config") == config}
            rows = [current[e.key]["row"] for e in todo_all if e.key in current]
            not_done = sum(1 for e in todo_all if e.key not in current)
            run_stats = dict(stats)
            if dist.world > 1:
                for k2 in ("read_s", "wait_s", "score_s", "export_s", "scored_now"):
                    run_stats[k2] = sum(s[k2] for s in all_stats)
                run_stats["rate_per_hour"] = (
                    run_stats["scored_now"] / elapsed * 3600
                    if elapsed > 0 and run_stats["scored_now"]
                    else None
                )
            summary = tables.summarise(
                rows,
                entries,
                loose,
                not_done=not_done,
                stats=run_stats,
                high_specificity=loaded.manifest.high_specificity_findings,
            )
            written += tables.write_table(
                rows, tables.result_columns(opts.mode), opts.out, tables.RESULTS_STEM
            )
            written += tables.write_summary(summary, opts.out)
            if not opts.quiet or interrupted:
                print(
                    tables.summary_text(summary), file=sys.stderr if interrupted else sys.stdout, flush=True
                )
        barrier(dist)
        n_failed = sum(1 for p in new_parts if p["row"]["status"] == "failed")
        outcome = ScreenOutcome(
            entries,
            rows,
            summary,
            written,
            scored_now=len(new_parts) - n_failed,
            failed_now=n_failed,
            skipped_done=len(todo_all) - len(todo),
            interrupted=interrupted,
            stats=stats,
        )
        if interrupted:
            raise ScreenInterrupted(outcome)
        return outcome
    finally:
        shutdown(dist)


class ScreenInterrupted(KeyboardInterrupt):
    """Ctrl-C (or the test hook): the studies recorded so far are kept and the tables written."""

    def __init__(self, outcome: ScreenOutcome):
        super().__init__("interrupted")
        self.outcome = outcome
