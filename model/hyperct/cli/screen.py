"""``hyperct screen``: score every chest CT study of an archive into one table; resumable; torchrun."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hyperct.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    UsageError,
    add_input_args,
    add_model_args,
    add_report_args,
    add_scoring_args,
    finding_ids,
    read_manifest,
    weights_dtype,
    whole_number,
)

EPILOG = """\
archive:
  A folder tree of DICOM files (any depth, any file names, DICOMDIRs followed), NIfTI/NRRD/MHA
  files (one study each), or --manifest CSV (header row; column 'path', relative to the CSV's folder;
  optional 'series_uid' to force a series and 'id' to name the study's report files).

index (headers only, no pixel data):
  Files are grouped into studies (StudyInstanceUID; files without one: one study per folder); a
  second copy of an instance (same SOPInstanceUID) is left out. Per study one series is chosen by the
  rules of 'hyperct predict' (CT images only, no localizer; readable as one regular volume; axial;
  thinnest slices up to 5 mm first; most slices; lowest SeriesNumber), and a non-contrast series
  first where the header says so (ContrastBolusAgent). RESULTS/index.parquet|csv lists every study
  and series, the one chosen and why the others were skipped. A study without a CT series to score
  (MR, only a localizer) is listed there and not scored. The index is kept in RESULTS/.state and
  reused by a rerun (--reindex builds it again, e.g. after files were added).

outputs (in RESULTS):
  results.parquet, results.csv  one row per study with a CT series: status (scored/failed), the 25
                                probabilities (p_<finding>) and calls (call_<finding>), QC codes, model
                                name/version/sha256, identifiers per --mode; a failed study has its
                                error (cause, file, what to do)
  index.parquet, index.csv      studies and series, chosen, skipped + reason
  summary.json, summary.txt     findings present/absent/not assessed, failures by reason, QC codes
  reports/study-<hash>.*        with --json/--pdf/--sr/--fhir/--saliency, per study, one export set as
                                'predict' writes it (<stem>.hyperct.json, .pdf, .sr.dcm, .fhir.json)
  .state/                       the index and one part file per completed study (holds file paths:
                                do not share)

resuming:
  Each completed study is recorded atomically. Run the same command again after an interruption (or
  a crash) to continue: completed studies are skipped, failed ones too unless --retry-failed; --force
  scores everything again.

several GPUs or machines (one process per GPU, RESULTS on a shared folder):
  torchrun --nproc_per_node 4 -m hyperct.cli.main screen ARCHIVE --out RESULTS
  torchrun --nnodes 2 --node_rank R --nproc_per_node 4 --master_addr HOST --master_port 29500 \\
      -m hyperct.cli.main screen ARCHIVE --out RESULTS
  The header reads and the studies are shared out by rank (deterministically); each rank writes its
  own part files; rank 0 merges them into the tables. HYPERCT_DIST_TIMEOUT_S (default 600) bounds
  waits on a rank that does not arrive.

export modes:
  shareable (default): no names, patient IDs, accession numbers or paths; link IDs (keyed hashes,
  see 'hyperct predict --help') instead. clinical: identifiers and source folders kept.

exit status:
  0 every study scored; 1 some studies failed (rows with their error); 2 usage error; 3 the run could
  not start (model, archive); 130 interrupted (what was done is kept: run again to continue)

AI output, not a diagnosis. The embedded demo model is trained on synthetic phantoms."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "screen",
        help="score every chest CT study of an archive into one results table (resumable, torchrun)",
        description="Index an archive (headers only), choose one CT series per study, score all studies "
        "in batches while worker processes read the next ones, and write one results table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("archive", nargs="?", metavar="ARCHIVE", help="folder tree, DICOMDIR or image file")
    add_input_args(p)
    p.add_argument(
        "--out", required=True, metavar="RESULTS", help="results folder (created; reused to resume)"
    )
    add_model_args(
        p, device_help="auto (default; cuda:LOCAL_RANK under torchrun), cuda, cuda:N or cpu", dtype=True
    )
    add_scoring_args(p, describe_methods=False)
    p.add_argument(
        "--batch-size",
        type=whole_number(1),
        metavar="N",
        help="volumes per model pass (default 8 on a GPU, 2 on a CPU)",
    )
    p.add_argument(
        "--workers",
        type=whole_number(0),
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="reader processes per rank (default min(4, CPUs); 0 reads in the main process)",
    )
    p.add_argument(
        "--index-workers",
        type=whole_number(0),
        default=0,
        metavar="N",
        help="processes for the header reads of the index (default 0: in the main process)",
    )
    p.add_argument("--json", action="store_true", help="write reports/<stem>.hyperct.json per study")
    add_report_args(p, folder="reports/", each=" per study")
    p.add_argument("--force", action="store_true", help="score every study again, even those already done")
    p.add_argument(
        "--retry-failed", action="store_true", help="score the studies that failed in an earlier run again"
    )
    p.add_argument("--reindex", action="store_true", help="build the index again (files added or changed)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines and no summary on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from hyperct.screening import ScreenInterrupted, ScreenOptions, Source, screen

    if bool(args.archive) == bool(args.manifest):
        raise UsageError("give either ARCHIVE or --manifest CSV (one of them)")
    if args.archive and not os.path.exists(args.archive):
        raise UsageError(
            f"the archive does not exist ({args.archive}) -> give a folder, DICOMDIR or image file"
        )
    findings = finding_ids(args.findings)
    dtype = weights_dtype(args)  # what became of it (slow CPU, ignored on a GPU): the engine says
    if args.archive:
        source = Source(args.archive, None)
    else:
        source = Source("", [(r.path, r.series_uid, r.id) for r in read_manifest(args.manifest)])
    formats = [f for f in ("json", "pdf", "sr", "fhir") if getattr(args, f)]
    opts = ScreenOptions(
        out=Path(args.out),
        mode=args.mode,
        findings=findings,
        batch_size=args.batch_size,
        workers=args.workers,
        index_workers=args.index_workers,
        min_slices=args.min_slices,
        resample_tilt=args.resample_tilt,
        formats=formats,
        saliency="positive" if args.saliency else None,
        saliency_method=args.saliency_method,
        force=args.force,
        retry_failed=args.retry_failed,
        reindex=args.reindex,
        quiet=args.quiet,
    )
    try:
        outcome = screen(
            source, opts, model_dir=args.model, backbone_dir=args.backbone, device=args.device, dtype=dtype
        )
    except ScreenInterrupted as exc:
        o = exc.outcome
        print(
            f"hyperct screen: interrupted after {o.scored_now + o.failed_now} studies in this run; they are "
            f"recorded: run the same command again to continue ({args.out})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if outcome.summary is not None and not args.quiet:
        print(f"hyperct screen: wrote {', '.join(str(p) for p in outcome.written)}", file=sys.stderr)
    failed = (
        any(r["status"] == "failed" for r in outcome.rows)
        if outcome.summary is not None
        else outcome.failed_now > 0
    )
    return EXIT_PARTIAL if failed else EXIT_OK
