"""``hyperct evaluate``: per-finding AUC (bootstrap 95 % CI), ROC and decision curves, thresholds.

DATA is a manifest CSV, ``ct-rate:ROOT:SPLIT`` (with --labels/--metadata when the CSVs are not in
the CT-RATE layout under ROOT) or ``phantom:N:SEED`` (N fresh phantoms, seeds SEED..SEED+N-1).

``--write-thresholds`` stores the per-finding Youden thresholds found on DATA in the checkpoint's
manifest.json (run it on validation data); the weights are not changed. A finding whose AUC on DATA is
below --min-auc (0.70) or whose 95 % CI is not above 0.5 (the model is not shown to detect it) gets the lowest
threshold with specificity >= 0.99 on DATA instead, and the manifest lists it (threshold_calibration).
"""

from __future__ import annotations

import argparse

from hyperct.cli.common import add_model_args, add_overwrite_arg
from hyperct.operating_points import MIN_USEFUL_AUC


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on labelled data (AUC + CI, ROC, decision curves, thresholds)",
        description="Evaluate a HyperCT checkpoint on labelled CTs or phantoms and write CSV/Markdown/JSON/PNG reports.",
    )
    add_model_args(p)
    p.add_argument(
        "--data", metavar="SPEC", required=True, help="manifest CSV | ct-rate:ROOT:SPLIT | phantom:N:SEED"
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder for the report")
    p.add_argument("--labels", metavar="CSV", help="CT-RATE multi_abnormality_labels CSV")
    p.add_argument("--metadata", metavar="CSV", help="CT-RATE metadata CSV (RescaleSlope/RescaleIntercept)")
    p.add_argument(
        "--phantom-matrix", type=int, default=256, metavar="N", help="phantom matrix size (default 256)"
    )
    p.add_argument("--cache", metavar="DIR", help="preprocessing cache folder (reused by later runs)")
    p.add_argument("--cache-dtype", choices=["uint8", "float16"], default="uint8")
    p.add_argument("--findings", nargs="+", metavar="ID", help="evaluate only these finding ids")
    p.add_argument("--batch-size", type=int, default=4, help="volumes per scoring batch (default 4)")
    p.add_argument("--workers", type=int, default=0, help="data loading worker processes (default 0)")
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--thresholds",
        choices=["youden", "model"],
        default="youden",
        help="operating point in the table: Youden's J on DATA (default) or the checkpoint's thresholds",
    )
    p.add_argument(
        "--write-thresholds",
        action="store_true",
        help="write the Youden thresholds found on DATA into the checkpoint manifest (use validation data; "
        "findings with an AUC below --min-auc or at chance on DATA get a 99 %% specificity threshold instead)",
    )
    p.add_argument(
        "--min-auc",
        type=float,
        default=MIN_USEFUL_AUC,
        metavar="X",
        help=f"the AUC on DATA a finding needs for a Youden threshold (default {MIN_USEFUL_AUC:.2f}: below it "
        "discrimination is poor and Youden's J calls many scans; 0.5 asks only for the CI above chance)",
    )
    add_overwrite_arg(p, "an existing report in --out")
    return p


def run(args: argparse.Namespace) -> int:
    from hyperct.errors import ConfigError
    from hyperct.findings import catalogue
    from hyperct.loading import load_model
    from hyperct.progress import progress_enabled
    from hyperct.training.cache import PreprocessCache
    from hyperct.training.datasets import build_dataset, parse_data_spec
    from hyperct.training.evaluate import check_min_auc, evaluate, write_thresholds
    from hyperct.training.metrics import HIGH_SPECIFICITY, not_detected

    if args.write_thresholds and not args.model:
        raise ConfigError("--write-thresholds needs --model DIR (the embedded demo model is read-only)")
    if args.bootstrap < 0 or args.batch_size < 1:
        raise ConfigError("--bootstrap must be >= 0 and --batch-size >= 1")
    check_min_auc(args.min_auc)
    if args.findings:
        for fid in args.findings:
            try:
                catalogue()[fid]
            except KeyError as exc:
                raise ConfigError(f"--findings: {exc.args[0]}") from exc
    spec = parse_data_spec(args.data, labels=args.labels, metadata=args.metadata, matrix=args.phantom_matrix)
    cache = PreprocessCache(args.cache, args.cache_dtype) if args.cache else None
    data = build_dataset(spec, cache=cache, field="--data", progress=progress_enabled())
    loaded = load_model(args.model, backbone_dir=args.backbone, device=args.device)
    report = evaluate(
        loaded,
        data,
        args.out,
        n_boot=args.bootstrap,
        seed=args.seed,
        threshold_source=args.thresholds,
        batch_size=args.batch_size,
        workers=args.workers,
        findings=args.findings,
        data_label=args.data,
        overwrite=args.overwrite,
        progress=progress_enabled(),
        min_auc=args.min_auc,
    )
    for k, v in report.macro_auc.items():
        print(f"macro AUC {k}: {'n/a' if v != v else f'{v:.4f}'}")
    print(f"report: {args.out} ({', '.join(p.name for p in report.files)})")
    if args.write_thresholds:
        write_thresholds(args.model, report, data_label=args.data)
        print(
            f"thresholds for {len(report.operating_thresholds)} findings written to {args.model}/manifest.json"
        )
        if report.high_specificity:
            print(
                f"not shown detected on these data ({not_detected(report.min_auc)}), threshold set for "
                f"specificity >= {HIGH_SPECIFICITY:g} instead of Youden's J: {', '.join(report.high_specificity)}"
            )
    return 0
