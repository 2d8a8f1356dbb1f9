"""``hyperct predict``: score CT scans for the 25 findings; print a table or write JSON/PDF/SR/maps.

Each input is read (``hyperct.io.read_ct``), scored (``hyperct.inference.analyze``) and, with
output flags, written by ``hyperct.report.export`` (the function the viewer's Export buttons call).
A bad input is reported on stderr with its path and the reason, and the others go on; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

EPILOG = """\
inputs:
  A DICOM folder (searched recursively), DICOM file(s), a DICOMDIR, or a .nii/.nii.gz/.nrrd/.mha
  file. Globs are expanded (quote them to let hyperct expand them). --manifest CSV takes a CSV
  with a header row: column 'path' (required; relative to the CSV's folder), optional 'series_uid'
  and 'id' (used as the output file stem instead of the input's name).

outputs (per input, in --out, default: the current folder):
  <stem>.hyperct.json          --json      report document (schema: hyperct/assets/report.schema.json)
  <stem>.hyperct.pdf           --pdf       PDF report with key images
  <stem>.hyperct.sr.dcm        --sr        DICOM SR (TID 1500); DICOM inputs only, skipped otherwise
  <stem>.saliency.<id>.nii.gz  --saliency  saliency maps in the input's own geometry
  Without output flags a table of the 25 findings is printed; '--json -' prints the JSON document
  to stdout instead (one document per line when there are several inputs).
  Existing files are never replaced without --overwrite.

export modes:
  shareable (default): no name, birth date, patient ID or accession number; IDs become link IDs
  (HMAC-SHA256). Key: $HYPERCT_LINK_KEY (use one key per site so exports link up), else a per-user
  key file made once: $HYPERCT_CONFIG_DIR/link.key if set, else $XDG_CONFIG_HOME/hyperct/link.key
  (default ~/.config/hyperct/link.key; macOS ~/Library/Application Support/hyperct/link.key;
  Windows %APPDATA%\\hyperct\\link.key).
  clinical: identifiers kept.

exit status:
  0  every input was scored (and written)
  1  some inputs failed: missing, unreadable or not CT, or an output file exists without --overwrite
     (each reported on stderr with its file and the reason); the other inputs were done
  2  usage error (bad arguments, no inputs, unreadable manifest)
  3  the whole command failed (e.g. the model cannot be loaded)
  130 interrupted

AI output, not a diagnosis. The embedded demo model is trained on synthetic phantoms."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="score CT scans for the 25 findings (table, JSON, PDF, DICOM SR, saliency maps)",
        description="Score chest CT scans for the 25 HyperCT findings with one batched model pass per scan.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="DICOM folder/files, DICOMDIR, NIfTI/NRRD/MHA, or a glob"
    )
    p.add_argument(
        "--manifest", metavar="CSV", help="CSV listing inputs (column 'path'; optional 'series_uid', 'id')"
    )
    p.add_argument(
        "--series", metavar="UID", help="SeriesInstanceUID to analyse when an input holds several series"
    )
    p.add_argument(
        "--resample-tilt",
        action="store_true",
        help="resample a gantry-tilted DICOM series onto an orthogonal grid (QC warning in the outputs) "
        "instead of refusing it",
    )
    p.add_argument(
        "--min-slices",
        type=_min_slices,
        default=16,
        metavar="N",
        help="fewest slices accepted as a chest CT volume (default 16)",
    )
    p.add_argument("--model", metavar="DIR", help="checkpoint folder (default: the embedded demo model)")
    p.add_argument(
        "--backbone", metavar="DIR", help="DINOv3 backbone folder for checkpoints with external weights"
    )
    p.add_argument("--device", default="auto", help="auto (default), cuda, cuda:N or cpu")
    p.add_argument("--findings", metavar="A,B", help="score only these finding ids (others: not assessed)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: current folder)")
    p.add_argument(
        "--json",
        nargs="?",
        const=True,
        default=False,
        metavar="-",
        help="write <stem>.hyperct.json ('--json -': print the JSON to stdout)",
    )
    p.add_argument("--pdf", action="store_true", help="write <stem>.hyperct.pdf")
    p.add_argument("--sr", action="store_true", help="write <stem>.hyperct.sr.dcm (DICOM input only)")
    p.add_argument(
        "--saliency", action="store_true", help="write saliency maps (NIfTI) of the positive findings"
    )
    p.add_argument(
        "--saliency-findings",
        metavar="A,B|all",
        help="write saliency maps of these findings (or all assessed ones) instead of the positives",
    )
    p.add_argument(
        "--saliency-method",
        choices=["gradcam", "integrated_gradients"],
        default="gradcam",
        help="saliency method (default gradcam; integrated gradients is much slower)",
    )
    p.add_argument("--mode", choices=["shareable", "clinical"], default="shareable", help="export mode")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def _min_slices(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {n}")
    return n


@dataclass
class Item:
    source: str | list[str]
    label: str
    series_uid: str | None = None
    stem: str | None = None


class UsageError(Exception):
    pass


def report_identity(result) -> tuple[str | None, str | None]:
    """(report id, created) of the files written for ``result``; None = the result's own.

    Exists so tests can make the CLI's files reproducible and compare them with the viewer's.
    """
    return None, None


def _expand(inputs: list[str]) -> list[Item]:
    items = []
    for arg in inputs:
        if os.path.exists(arg) or not glob.has_magic(arg):
            items.append(Item(arg, arg))
            continue
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            items.append(Item(arg, arg))  # reported as a failed input: no such file
        items += [Item(m, m) for m in matches]
    return items


def _read_manifest(path: str) -> list[Item]:
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise UsageError(f"cannot read the manifest {p}: {exc}") from exc
    except csv.Error as exc:
        raise UsageError(f"{p}: not a valid CSV ({exc})") from exc
    if not rows or "path" not in (rows[0].keys() if rows else []):
        raise UsageError(f"{p}: the manifest needs a header row with a 'path' column (and at least one row)")
    items = []
    for n, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise UsageError(f"{p}, line {n}: empty 'path'")
        src = raw if os.path.isabs(raw) else str(p.parent / raw)
        items.append(
            Item(
                src, src, (row.get("series_uid") or "").strip() or None, (row.get("id") or "").strip() or None
            )
        )
    return items


def _finding_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    from hyperct.findings import catalogue

    ids = [t.strip() for t in text.split(",") if t.strip()]
    cat = catalogue()
    for fid in ids:
        if fid not in cat.ids:
            raise UsageError(f"unknown finding id {fid!r}; known ids: {', '.join(cat.ids)}")
    return ids


def _table(result, label: str) -> str:
    from hyperct import DISCLAIMER
    from hyperct.findings import GROUP_LABELS

    m = result.model
    demo = " [DEMO model: synthetic training data, no clinical validity]" if m.is_demo else ""
    lines = [f"{label}", f"  {m.name} v{m.version} on {result.device}{demo}. {DISCLAIMER}"]
    lines.append(f"  {'Finding':<40} {'Group':<14} {'Prob.':>7} {'Thr.':>6}  Call")
    for f in result.findings:
        p = f"{f.probability:.3f}" if f.probability is not None else "-"
        mark = "*" if f.call == "present" else " "
        lines.append(f"{mark} {f.name:<40} {GROUP_LABELS[f.group]:<14} {p:>7} {f.threshold:>6.2f}  {f.call}")
    for w in result.warnings:
        lines.append(f"  QC {w.code}: {w.message}")
    return "\n".join(lines)


def _err(label: str, exc: BaseException) -> None:
    text = str(exc)
    if label not in text:
        text = f"{label}: {text}"
    print(f"hyperct predict: error: {text}", file=sys.stderr)


def _unique_stem(stem: str, used: set[str]) -> str:
    out, n = stem, 2
    while out in used:
        out = f"{stem}-{n}"
        n += 1
    used.add(out)
    return out


def run(args: argparse.Namespace) -> int:
    from hyperct.cli.main import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE

    inputs = list(args.inputs)
    json_stdout = args.json == "-"
    if isinstance(args.json, str) and not json_stdout:  # '--json scan.nii': the word is an input
        inputs.insert(0, args.json)
    want_json = bool(args.json) and not json_stdout
    formats = [f for f, on in (("json", want_json), ("pdf", args.pdf), ("sr", args.sr)) if on]
    maps_wanted = bool(args.saliency or args.saliency_findings)
    try:
        items = _expand(inputs)
        if args.manifest:
            items += _read_manifest(args.manifest)
        if not items:
            raise UsageError("no inputs: give INPUT paths/globs or --manifest CSV")
        findings = _finding_list(args.findings)
        if args.saliency_findings and args.saliency_findings != "all":
            _finding_list(args.saliency_findings)
    except UsageError as exc:
        print(f"hyperct predict: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from tqdm import tqdm

    from hyperct.errors import HyperCTError
    from hyperct.loading import load_model

    loaded = load_model(args.model, backbone_dir=args.backbone, device=args.device)  # errors: exit 3
    print(f"hyperct predict: {loaded.describe()}", file=sys.stderr)
    out_dir = Path(args.out) if args.out else Path.cwd()
    used: set[str] = set()
    failed: list[str] = []
    show = not os.environ.get("HYPERCT_NO_PROGRESS") and sys.stderr.isatty()
    bar = tqdm(items, desc="predict", unit="scan", disable=not show, file=sys.stderr)
    for item in bar:
        bar.set_postfix_str(Path(item.label).name[-30:])
        try:
            _process(
                item,
                loaded,
                args,
                formats=formats,
                findings=findings,
                maps_wanted=maps_wanted,
                json_stdout=json_stdout,
                many=len(items) > 1,
                out_dir=out_dir,
                used=used,
            )
        except KeyboardInterrupt:
            raise
        except HyperCTError as exc:
            failed.append(item.label)
            bar.clear()
            _err(item.label, exc)
        except Exception as exc:  # noqa: BLE001 - keep going past an unexpected failure, but say what it was
            failed.append(item.label)
            bar.clear()
            _err(item.label, RuntimeError(f"unexpected {type(exc).__name__}: {exc}"))
    bar.close()
    if failed:
        print(
            f"hyperct predict: {len(items) - len(failed)} of {len(items)} input(s) done; "
            f"{len(failed)} failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def _process(
    item: Item, loaded, args, *, formats, findings, maps_wanted, json_stdout, many, out_dir, used
) -> None:
    """Read, score and write one input (raises on failure; the caller reports it and goes on)."""
    from hyperct.inference import analyze
    from hyperct.io import read_ct
    from hyperct.report.atomic import check_targets
    from hyperct.report.document import format_name
    from hyperct.report.export import (
        check_formats,
        derived_stem,
        export,
        output_paths,
        render,
        saliency_for_export,
        saliency_targets,
    )

    volume = read_ct(
        item.source,
        series_uid=item.series_uid or args.series,
        resample_tilt=args.resample_tilt,
        min_slices=args.min_slices,
    )
    fmts = list(formats)
    if "sr" in fmts and not volume.is_dicom:
        fmts.remove("sr")
        print(
            f"hyperct predict: {item.label}: DICOM SR skipped: the input is {format_name(volume.source_format)}, "
            "not DICOM (an SR must reference DICOM images)",
            file=sys.stderr,
        )
    check_formats(fmts, volume)
    writes = bool(fmts) or maps_wanted
    stem = None
    if writes:
        stem = _unique_stem(item.stem or derived_stem(item.source, volume, args.mode), used)
        check_targets(output_paths(out_dir, stem, fmts).values(), overwrite=args.overwrite)  # before scoring

    result = analyze(loaded, volume, findings=findings)
    report_id, created = report_identity(result)

    if not writes and not json_stdout:
        print(_table(result, item.label))
        print()
        return

    map_ids: list[str] = []
    if maps_wanted:
        map_ids = saliency_targets(result, args.saliency_findings or "positive")
        if not map_ids:
            print(
                f"hyperct predict: {item.label}: no positive finding, so no saliency map was written",
                file=sys.stderr,
            )
    saliency = saliency_for_export(loaded, volume, result, method=args.saliency_method, extra=map_ids)

    if json_stdout:
        doc = render(result, volume, saliency, (), mode=args.mode, report_id=report_id, created=created)[
            "doc"
        ]
        print(json.dumps(doc, ensure_ascii=False) if many else json.dumps(doc, indent=2, ensure_ascii=False))
    if fmts or map_ids:
        written = export(
            result,
            volume,
            saliency,
            out_dir,
            fmts,
            mode=args.mode,
            overwrite=args.overwrite,
            stem=stem,
            saliency_findings=map_ids or None,
            report_id=report_id,
            created=created,
        )
        for path in written.values():
            print(f"hyperct predict: wrote {path}", file=sys.stderr)
