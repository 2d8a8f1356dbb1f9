"""``hyperct predict``: score CT scans for the 25 findings; print a table or write JSON/PDF/SR/maps.

Each input is read (``hyperct.io.read_ct``), scored (``hyperct.inference.analyze``) and, with
output flags, written by ``hyperct.report.export`` (the function the viewer's Export buttons call).
A bad input is reported on stderr with its path and the reason, and the others go on; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hyperct.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    UsageError,
    add_input_args,
    add_model_args,
    add_overwrite_arg,
    add_report_args,
    add_scoring_args,
    finding_ids,
    read_manifest,
    weights_dtype,
)
from hyperct.errors import naming

EPILOG = """\
inputs:
  A DICOM folder (searched recursively), DICOM file(s), a DICOMDIR, or a .nii/.nii.gz/.nrrd/.mha
  file. Globs are expanded (quote them to let hyperct expand them). --manifest CSV takes a CSV
  with a header row: column 'path' (required; relative to the CSV's folder), optional 'series_uid'
  and 'id' (used as the output file stem instead of the input's name).

studies and series:
  An input may hold several studies and series. One report is made per study (StudyInstanceUID),
  of the series chosen by these rules: CT images only (no localizer/scout, non-CT or non-image
  series); readable as one regular volume with at least --min-slices slices; axial; thinnest
  slices within the chest range (slice thickness up to 5 mm first); most slices; then the lowest
  SeriesNumber. --series UID scores that series only; --all-series scores every usable CT series.
  What was skipped, and why, is printed and recorded in each report (JSON input.series_selection,
  a line on the PDF's first page). A study with CT series of which none can be read is a failed
  input; a study without CT images (MR, only a localizer, only an SR) is listed as skipped.
  With several reports from one input in clinical mode (or with a manifest 'id'), each file stem
  gets a tag: <stem>-<12 hex> (a hash of the SeriesInstanceUID). Shareable stems are per series.

outputs (per report, in --out, default: the current folder):
  <stem>.hyperct.json          --json      report document (schema: hyperct/assets/report.schema.json)
  <stem>.hyperct.pdf           --pdf       PDF report with key images
  <stem>.hyperct.sr.dcm        --sr        DICOM SR (TID 1500); skipped with a warning (the other files
                                           are written) for NIfTI/NRRD/MHA inputs and for DICOM series
                                           without Study/Series Instance UIDs (anonymised exports)
  <stem>.hyperct.fhir.json     --fhir      FHIR R4 Bundle: a DiagnosticReport and one Observation per
                                           assessed finding (same identifier rules as the other files)
  <stem>.saliency.<id>.nii.gz  --saliency  saliency maps in the input's own geometry: uint8, gzip-
                                           compressed, value = stored x scl_slope (1/255), 1 = the
                                           map's maximum; the total size is printed
  Without output flags a table of the 25 findings is printed; '--json -' prints the JSON document
  to stdout instead (one document per line when there are several inputs).
  Shareable mode names the files scan-<12 hex> (a hash of the SeriesInstanceUID; without UIDs a
  keyed hash of the input's name), never the input's file or folder name; clinical mode keeps the
  name. A manifest 'id' is used as given, and refused in shareable mode if it holds an identifier.
  Existing files are never replaced without --overwrite. One scan's files are a set: all are written
  to temporary files first and then moved into place together (the JSON last), under a lock, so two
  runs into one folder take turns; a run killed meanwhile leaves a record that lets the next run
  replace the incomplete set without --overwrite, and its temporary files are removed then. With
  --overwrite, files of the scan's earlier report that this run does not write are removed.
  A warning that the input is out of scope (not a chest CT, contrast, implausible HU values) is
  printed, shown on the PDF's first page and written into the SR; a constant volume is refused.

progress:
  Per input and step on stderr: a progress bar on a terminal, plain lines otherwise (-q or
  HYPERCT_NO_PROGRESS=1 turns them off).

export modes:
  shareable (default): DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile with
  the Retain UIDs, Retain Full Dates and Retain Patient Characteristics (sex, age) options: no name,
  birth date, IDs, accession number, physician, study/series descriptions, file or folder names;
  free text (QC warnings) in HyperCT's own words only; IDs become link IDs (HMAC-SHA256). Key: $HYPERCT_LINK_KEY (use one key per site so exports link up), else a per-user
  key file made once: $HYPERCT_CONFIG_DIR/link.key if set, else $XDG_CONFIG_HOME/hyperct/link.key
  (default ~/.config/hyperct/link.key; macOS ~/Library/Application Support/hyperct/link.key;
  Windows %APPDATA%\\hyperct\\link.key).
  clinical: identifiers kept.

exit status:
  0  every input was scored (and written)
  1  some inputs failed: missing, unreadable or not CT, a constant volume, no valid model score
     (non-finite output), or an output file exists without --overwrite (each reported on stderr:
     the cause, the file, what to do); the other inputs were done
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
    add_input_args(p)
    p.add_argument(
        "--series",
        metavar="UID",
        help="score only this SeriesInstanceUID (default: one series per study, chosen by the rules below)",
    )
    p.add_argument(
        "--all-series",
        action="store_true",
        help="score every usable CT series of every study (one report each) instead of one per study",
    )
    add_model_args(p, dtype=True)
    add_scoring_args(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default: current folder)")
    p.add_argument(
        "--json",
        nargs="?",
        const=True,
        default=False,
        metavar="-",
        help="write <stem>.hyperct.json ('--json -': print the JSON to stdout)",
    )
    add_report_args(p)
    p.add_argument(
        "--saliency-findings",
        metavar="A,B|all",
        help="write saliency maps of these findings (or all assessed ones) instead of the positives",
    )
    add_overwrite_arg(p)
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress lines (errors, warnings and skipped series still print)",
    )
    return p


@dataclass
class Item:
    source: str | list[str]
    label: str
    series_uid: str | None = None
    stem: str | None = None


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


def _table(result, label: str) -> str:
    from hyperct import DISCLAIMER
    from hyperct.findings import GROUP_LABELS

    m = result.model
    demo = " [DEMO model: synthetic training data, no clinical validity]" if m.is_demo else ""
    weights = ", bf16 backbone weights" if m.weights_dtype == "bf16" else ""
    lines = [f"{label}", f"  {m.name} v{m.version} on {result.device}{weights}{demo}. {DISCLAIMER}"]
    lines.append(f"  {'Finding':<40} {'Group':<14} {'Prob.':>7} {'Thr.':>6}  Call")
    for f in result.findings:
        p = (
            f"{f.probability:.3f}" if f.probability is not None else "-"
        )  # None: not assessed / no valid score
        mark = "*" if f.call == "present" else " "
        lines.append(f"{mark} {f.name:<40} {GROUP_LABELS[f.group]:<14} {p:>7} {f.threshold:>6.2f}  {f.call}")
    from hyperct.io.quality import out_of_scope

    scope = out_of_scope(result.warnings)
    if scope:
        lines.insert(
            2,
            "  WARNING: input out of scope, the scores may be meaningless: "
            + "; ".join(w.message for w in scope),
        )
    for w in result.warnings:
        lines.append(f"  QC {w.code}: {w.message}")
    return "\n".join(lines)


def _unique_stem(stem: str, used: set[str]) -> str:
    out, n = stem, 2
    while out in used:
        out = f"{stem}-{n}"
        n += 1
    used.add(out)
    return out


class _Progress:
    """Progress per input and step on stderr: a tqdm bar on a terminal, plain lines otherwise.

    ``mode``: "bar", "lines" or "off" (``--quiet`` or ``HYPERCT_NO_PROGRESS``). Messages go through
    ``say`` so they do not break the bar.
    """

    def __init__(self, total: int, mode: str):
        self.total, self.mode = total, mode
        self.index, self.label, self.t0, self.sub = 0, "", 0.0, ""
        self._last = ""
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="predict", unit="input", file=sys.stderr, dynamic_ncols=True)

    def begin(self, label: str) -> None:
        import time

        self.index += 1
        self.label, self.t0, self._last, self.sub = label, time.perf_counter(), "", ""

    def step(self, text: str) -> None:
        if (self.sub, text) == self._last:
            return
        self._last = (self.sub, text)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{Path(self.label).name[-30:]}{self.sub}: {text}", refresh=True)
        elif self.mode == "lines":
            print(
                f"hyperct predict: [{self.index}/{self.total}] {self.label}: {text}",
                file=sys.stderr,
                flush=True,
            )

    def end(self) -> None:
        import time

        if self.mode == "lines":
            print(
                f"hyperct predict: [{self.index}/{self.total}] {self.label}: finished in "
                f"{time.perf_counter() - self.t0:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        if self.bar is not None:
            self.bar.update(1)

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_mode(args) -> str:
    from hyperct.progress import progress_enabled

    if getattr(args, "quiet", False) or not progress_enabled():
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


def _say_plan(progress: _Progress, label: str, plan) -> None:
    """What an input holds, what is scored and what is skipped (always printed: it is a result)."""
    if plan.choices and plan.choices[0].info is None and not plan.skipped:
        return  # a single image file: nothing was chosen
    n = len(plan.choices)
    if n == 1 and not plan.skipped:
        return
    studies = "1 study" if plan.n_studies == 1 else f"{plan.n_studies} studies"
    progress.say(
        f"hyperct predict: {label}: {studies}, {n} report{'s' if n != 1 else ''} "
        f"(series chosen by: {plan.choices[0].rule})"
    )
    for c in plan.choices:
        if c.info is not None:
            progress.say(f"  scoring {c.describe()} of study {c.study_uid or '(no StudyInstanceUID)'}")
    for s in plan.skipped:
        study = f", study {s.study_uid}" if s.study_uid else ""
        progress.say(f"  skipped {s.label()}{study}: {s.reason}")


def run(args: argparse.Namespace) -> int:
    inputs = list(args.inputs)
    json_stdout = args.json == "-"
    if isinstance(args.json, str) and not json_stdout:  # '--json scan.nii': the word is an input
        inputs.insert(0, args.json)
    want_json = bool(args.json) and not json_stdout
    formats = [
        f for f, on in (("json", want_json), ("pdf", args.pdf), ("sr", args.sr), ("fhir", args.fhir)) if on
    ]
    maps_wanted = bool(args.saliency or args.saliency_findings)
    items = _expand(inputs)
    if args.manifest:
        items += [Item(r.path, r.path, r.series_uid, r.id) for r in read_manifest(args.manifest)]
    if not items:
        raise UsageError("no inputs: give INPUT paths/globs or --manifest CSV")
    if args.all_series and args.series:
        raise UsageError("--series and --all-series exclude each other: give one of them")
    findings = finding_ids(args.findings)
    if args.saliency_findings and args.saliency_findings != "all":
        finding_ids(args.saliency_findings)
    dtype = weights_dtype(args)

    from hyperct.errors import HyperCTError
    from hyperct.io.selection import plan_input
    from hyperct.loading import dtype_note, load_model

    # errors: exit 3
    loaded = load_model(args.model, backbone_dir=args.backbone, device=args.device, dtype=dtype)
    print(f"hyperct predict: {loaded.describe()}", file=sys.stderr)
    note = dtype_note(dtype, loaded)
    if note:
        print(f"hyperct predict: {note}", file=sys.stderr)
    from hyperct.inference import estimated_cpu_seconds

    n_tasks = len(args.findings.split(",")) if args.findings else 25
    eta = estimated_cpu_seconds(loaded, n_tasks)
    if eta is not None and eta > 60:  # e.g. the real ViT-B on a laptop: say so before it looks hung
        print(
            f"hyperct predict: this model on the CPU takes about {eta / 60:.0f} min per scan (estimate"
            + (", fp32: less with these bf16 weights" if loaded.weights_dtype == "bf16" else "")
            + "); "
            "a CUDA GPU takes seconds (--device cuda)",
            file=sys.stderr,
        )
    out_dir = Path(args.out) if args.out else Path.cwd()
    used: set[str] = set()
    failed: list[str] = []
    units = 0
    progress = _Progress(len(items), _progress_mode(args))
    state = {"map_bytes": 0, "maps": 0, "reports": 0}
    json_lines = len(items) > 1
    try:
        for item in items:
            progress.begin(item.label)
            progress.step("listing series")
            try:
                plan = plan_input(
                    item.source,
                    min_slices=args.min_slices,
                    resample_tilt=args.resample_tilt,
                    series_uid=item.series_uid or args.series,
                    all_series=args.all_series,
                )
            except KeyboardInterrupt:
                raise
            except HyperCTError as exc:
                units += 1
                failed.append(item.label)
                progress.say(f"hyperct predict: error: {naming(item.label, exc)}")
                progress.end()
                continue
            _say_plan(progress, item.label, plan)
            json_lines = json_lines or len(plan.choices) > 1
            for k, choice in enumerate(plan.choices):
                units += 1
                label = (
                    item.label if len(plan.choices) == 1 else f"{item.label} [{k + 1}/{len(plan.choices)}]"
                )
                try:
                    _process(
                        item,
                        choice,
                        plan,
                        loaded,
                        args,
                        formats=formats,
                        findings=findings,
                        maps_wanted=maps_wanted,
                        json_stdout=json_stdout,
                        many=json_lines,
                        out_dir=out_dir,
                        used=used,
                        label=label,
                        progress=progress,
                        state=state,
                    )
                except KeyboardInterrupt:
                    raise
                except HyperCTError as exc:
                    failed.append(label)
                    progress.say(f"hyperct predict: error: {naming(label, exc)}")
                except Exception as exc:  # noqa: BLE001 - keep going past an unexpected failure, but say what it was
                    failed.append(label)
                    progress.say(
                        f"hyperct predict: error: unexpected {type(exc).__name__}: {exc} ({label}) -> "
                        "please report this with the command line"
                    )
            progress.end()
    finally:
        progress.close()
    if state["maps"]:
        print(
            f"hyperct predict: {state['maps']} saliency map(s), {_size(state['map_bytes'])} in total",
            file=sys.stderr,
        )
    if failed:
        what = "input(s)" if units == len(items) else "scan(s)"
        print(
            f"hyperct predict: {units - len(failed)} of {units} {what} done; "
            f"{len(failed)} failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def _size(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def _series_tag(volume, choice, base: str, k: int) -> str:
    """A short tag telling apart the reports of one input (a hash of the series UID: shareable)."""
    from hyperct.report.export import pseudonymous_stem

    md = dict(volume.metadata)
    if not md.get("SeriesInstanceUID"):
        md = {"SeriesInstanceUID": f"{base}#{choice.study_uid}#{k}"}
    return pseudonymous_stem(md, base)[len("scan-") :]


def _process(
    item: Item,
    choice,
    plan,
    loaded,
    args,
    *,
    formats,
    findings,
    maps_wanted,
    json_stdout,
    many,
    out_dir,
    used,
    label,
    progress,
    state,
) -> None:
    """Read, score and write one report of an input (raises on failure; the caller reports it)."""
    from hyperct.errors import ExportError
    from hyperct.inference import analyze
    from hyperct.io import read_ct
    from hyperct.io.quality import check_scorable, out_of_scope
    from hyperct.report.document import to_json
    from hyperct.report.export import (
        check_formats,
        derived_stem,
        export,
        output_paths,
        preflight,
        render,
        saliency_for_export,
        saliency_targets,
    )
    from hyperct.report.sr import sr_skip_reason
    from hyperct.results import check_scores

    progress.sub = label[len(item.label) :]
    progress.step("reading")
    volume = read_ct(
        item.source,
        series_uid=choice.series_uid if choice.pass_uid else (item.series_uid or args.series),
        resample_tilt=args.resample_tilt,
        min_slices=args.min_slices,
    )
    check_scorable(volume, label)  # a constant volume is refused, not scored
    fmts = list(formats)
    if "sr" in fmts:
        why = sr_skip_reason(volume)
        if why:
            fmts.remove("sr")
            others = " and ".join(f.upper() for f in fmts)
            progress.say(
                f"hyperct predict: warning: DICOM SR skipped: {why} ({label})"
                + (f"; the {others} are written" if others else "")
            )
    check_formats(fmts, volume)
    writes = bool(fmts) or maps_wanted
    stem = None
    if writes:
        base = item.stem or derived_stem(item.source, volume, args.mode)
        pseudonym = not item.stem and args.mode == "shareable"  # already one per series
        if len(plan.choices) > 1 and not pseudonym:
            base = f"{base}-{_series_tag(volume, choice, base, plan.choices.index(choice))}"
        stem = _unique_stem(base, used)
        preflight(out_dir, stem, output_paths(out_dir, stem, fmts).values(), overwrite=args.overwrite)

    def on_step(p) -> None:
        if p.stage == "score":  # the bar shows each chunk; plain lines say it once
            n = len(findings) if findings else 25
            progress.step(p.message if progress.bar is not None else f"scoring {n} findings")
        elif p.stage == "preprocess":
            progress.step("preprocessing")
        else:
            progress.step(f"scored ({p.message.split(' in ')[-1]})" if p.stage == "done" else p.stage)

    result = analyze(loaded, volume, findings=findings, progress=on_step)
    if choice.skipped or len(plan.choices) > 1:  # a single-series input reports as the viewer does
        result.input["series_selection"] = {
            "rule": choice.rule,
            "skipped": [dict(s.to_dict(shareable=False), category=s.category) for s in choice.skipped],
        }
    problem = check_scores(result, label)  # raises when no finding has a valid score
    report_id, created = report_identity(result)

    if not writes and not json_stdout:
        print(_table(result, label))
        print()
        if problem:
            raise problem
        return

    scope = out_of_scope(result.warnings)
    for w in scope:
        progress.say(f"hyperct predict: warning: input out of scope: {w.code}: {w.message} ({label})")

    map_ids: list[str] = []
    if maps_wanted:
        map_ids = saliency_targets(result, args.saliency_findings or "positive")
        if not map_ids:
            progress.say(f"hyperct predict: {label}: no positive finding, so no saliency map was written")
    progress.step("saliency")
    saliency = saliency_for_export(loaded, volume, result, method=args.saliency_method, extra=map_ids)

    if json_stdout:
        doc = render(result, volume, saliency, (), mode=args.mode, report_id=report_id, created=created)[
            "doc"
        ]
        # never NaN/Infinity on stdout: a non-finite value is a typed error (to_json)
        sys.stdout.write(to_json(doc, indent=None) + "\n" if many else to_json(doc, indent=2))
        sys.stdout.flush()
    if fmts or map_ids:
        progress.step("writing")
        try:
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
        except ExportError as exc:
            for path in (getattr(exc, "written", None) or {}).values():  # in place before the failure
                progress.say(f"hyperct predict: wrote {path} (its set is incomplete)")
            raise
        for key, path in written.items():
            if key.startswith("saliency:"):
                state["maps"] += 1
                state["map_bytes"] += path.stat().st_size
            progress.say(f"hyperct predict: wrote {path}")
    if problem:
        raise problem
