"""``hyperct pretrain``: pretrain a DINOv3-structured backbone on phantom slices (stage 1 of the demo).

    hyperct pretrain --config configs/demo_backbone.yaml --out runs/demo-backbone
    hyperct pretrain --config configs/demo_backbone_volume.yaml --init runs/demo-backbone --out runs/demo-backbone-v
    hyperct pretrain --config configs/demo_backbone_v1.yaml --out runs/demo-backbone-v1
    hyperct pretrain --resume runs/demo-backbone-v1 [--epochs 120]   # continue on new seeds
    hyperct pretrain --resume runs/demo-backbone-v1 --until 60       # ... and stop after epoch 60
    hyperct pretrain --resume runs/X --add-hu-window -15 105         # ... with one more HU window
    hyperct pretrain --resume runs/X --add-conv-stem 16              # ... with a conv stem

Writes a backbone folder in the Hugging Face layout (``config.json`` + ``model.safetensors``), which
``hyperct train`` then uses through ``model.backbone_weights``. See ``hyperct.training.pretrain``.
"""

from __future__ import annotations

import argparse

from hyperct.cli.common import UsageError, add_overwrite_arg
from hyperct.errors import HyperCTError

# Config, dataset and init-backbone problems are all the user's to fix before a run: exit 2.
USAGE_ERRORS = (HyperCTError,)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone on phantom slices (stage 1 of the demo model)",
        description="Pretrain a DINOv3-structured backbone on synthetic phantom slices with token-level "
        "finding masks, and write it as a Hugging Face DINOv3 folder for `hyperct train`.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML configuration (fields: hyperct.training.pretrain_config); not with --resume",
    )
    p.add_argument("--out", metavar="DIR", help="backbone folder to write")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR with its saved configuration (fresh-seed runs go on with new seeds)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="total epochs (overrides optim.epochs; e.g. to extend a resumed run)",
    )
    p.add_argument(
        "--until",
        type=int,
        metavar="EPOCH",
        help="stop after this epoch (counted from the run's start; the schedule stays planned for "
        "--epochs), e.g. to run a long schedule in chunks; continue with --resume",
    )
    p.add_argument(
        "--init",
        metavar="DIR",
        help="start from this backbone folder (overrides the config's 'init', e.g. to continue a stage-1 backbone)",
    )
    p.add_argument(
        "--add-hu-window",
        nargs=2,
        type=float,
        action="append",
        default=[],
        metavar=("LO", "HI"),
        help="with --resume: add this HU window to the run's windowed backbone before going on (it "
        "starts at zero weight, so the backbone first computes what it did; hyperct.training.run_windows)",
    )
    p.add_argument(
        "--add-conv-stem",
        type=int,
        metavar="WIDTH",
        help="with --resume: give the run's windowed patch embedding a conv stem of this width (e.g. 16) "
        "before going on (its output starts at zero, so the backbone first computes what it did; "
        "hyperct.network.conv_stem, hyperct.training.run_stem)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a configuration field (YAML value), e.g. --set data.prepare_workers=12 --set device=cuda",
    )
    add_overwrite_arg(p, "an existing output folder")
    return p


def run(args: argparse.Namespace) -> int:
    from hyperct.training.pretrain import PretrainConfig, pretrain_backbone, resume_config

    if bool(args.resume) == bool(args.config) or (args.resume and (args.out or args.init)):
        raise UsageError("give --config FILE --out DIR (a new run) or --resume DIR (continue one)")
    if args.config and not args.out:
        raise UsageError("--out DIR is required with --config")
    if args.add_hu_window and not args.resume:
        raise UsageError("--add-hu-window goes with --resume DIR (a new run takes init_hu_windows)")
    if args.add_conv_stem is not None and not args.resume:
        raise UsageError("--add-conv-stem goes with --resume DIR (a new run takes backbone.conv_stem)")
    if args.resume:
        _check_surgery(args)
        cfg = resume_config(args.resume, args.epochs, args.set)  # (checked before the run is changed)
        if args.add_hu_window:
            from hyperct.training.run_windows import add_windows_to_run

            added = add_windows_to_run(args.resume, args.add_hu_window)
            print(f"HU windows of {args.resume} now: {added}")
        if args.add_conv_stem is not None:
            from hyperct.training.run_stem import add_conv_stem_to_run

            add_conv_stem_to_run(args.resume, args.add_conv_stem)
            print(f"{args.resume}'s patch embedding now has a conv stem of width {args.add_conv_stem}")
        out = pretrain_backbone(cfg, args.resume, resume=True, source=args.resume, until=args.until)
    else:
        over: dict = {"init": args.init} if args.init else {}
        if args.epochs:
            over["optim"] = {"epochs": args.epochs}
        cfg = PretrainConfig.load(args.config, over or None, args.set)
        out = pretrain_backbone(cfg, args.out, overwrite=args.overwrite, source=args.config, until=args.until)
    print(f"backbone written to {out} (config.json + model.safetensors; report in pretrain.json)")
    return 0


def _check_surgery(args: argparse.Namespace) -> None:
    """--add-hu-window / --add-conv-stem values checked before the run folder is read or changed."""
    from hyperct.network.conv_stem import STEM_PATCH, check_stem_width
    from hyperct.network.windows import check_windows

    try:
        if args.add_hu_window:
            check_windows(args.add_hu_window)
    except ValueError as exc:  # a window outside -1000..1000 HU, or lo >= hi
        raise UsageError(f"--add-hu-window: {exc}") from exc
    try:
        if args.add_conv_stem is not None:
            check_stem_width(args.add_conv_stem, STEM_PATCH)
    except ValueError as exc:
        raise UsageError(f"--add-conv-stem: {exc}") from exc
