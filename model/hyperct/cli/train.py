"""``hyperct train``: train HyperCT from a YAML configuration (the paper's protocol by default).

Examples::

    hyperct train --config configs/paper.yaml --out runs/paper
    hyperct train --config configs/demo.yaml --out runs/demo --set optim.lr=3e-4 --set train.epochs=2
    hyperct train --resume runs/demo                      # continue after the last finished epoch
    torchrun --nproc_per_node=4 -m hyperct.cli.main train --config configs/paper.yaml --out runs/p4

The run folder gets ``config.yaml``, ``log.jsonl``, ``best/`` (checkpoint) and ``last/`` (resume
state). Fields and defaults: ``hyperct train --print-config``; documentation in
``hyperct.training.config``.
"""

from __future__ import annotations

import argparse
import sys

from hyperct.cli.common import add_overwrite_arg


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train HyperCT on labelled CTs or phantoms (YAML config)",
        description="Train HyperCT. Defaults follow the paper (AdamW 1e-5, 20 epochs, batch 8, StepLR 15 x0.1, "
        "one random available task per volume, best epoch by validation mean AUC, frozen backbone).",
    )
    p.add_argument(
        "--config", metavar="FILE", help="YAML configuration (fields not given keep the paper's defaults)"
    )
    p.add_argument("--out", metavar="DIR", help="run folder (overrides output_dir)")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="FIELD=VALUE",
        action="append",
        default=[],
        help="override one field, e.g. --set optim.lr=3e-4 (repeatable; values are YAML)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last finished epoch (uses RUN_DIR/config.yaml plus --set overrides)",
    )
    add_overwrite_arg(p, "an existing run folder")
    p.add_argument("--device", help="auto, cuda, cuda:N or cpu (overrides train.device)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="only read/generate the datasets into the preprocessing cache (data.prepare_workers processes) and exit",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hyperct.errors import ConfigError
    from hyperct.training.config import dump_config, load_config, read_yaml, resolve

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError("cannot resume: config.yaml is missing", path=run_dir)
        if args.config:
            raise ConfigError(
                "--resume uses the run's own config.yaml; pass changes with --set, not --config"
            )
        cfg = resolve(read_yaml(saved), overrides, source=str(saved))
        source = str(saved)
    else:
        if args.out:
            overrides.append(f"output_dir={args.out}")
        cfg = load_config(args.config, overrides)
        source = args.config
        run_dir = Path(cfg["output_dir"]) if cfg["output_dir"] else None
    if args.print_config:
        sys.stdout.write(dump_config(cfg))
        return 0
    if args.prepare_only:
        return _prepare_only(cfg, source)
    if run_dir is None:
        raise ConfigError(
            "no run folder: pass --out DIR (or set output_dir in the configuration)", path=source
        )

    from hyperct.training.trainer import train

    result = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite, config_source=source)
    best = f"{result.best_metric:.4f}" if result.best_metric is not None else "n/a"
    print(f"done: {result.epochs_done} epochs; best epoch {result.best_epoch} (validation mean AUC {best})")
    print(f"checkpoint: {result.run_dir / 'best'}")
    return 0


def _prepare_only(cfg: dict, source: str | None) -> int:
    """Fill the preprocessing cache with the configured datasets (no run folder, no training)."""
    from hyperct.errors import ConfigError
    from hyperct.training.cache import PreprocessCache
    from hyperct.training.datasets import build_dataset

    if not cfg["data"]["cache_dir"]:
        raise ConfigError("--prepare-only needs data.cache_dir (where the prepared volumes go)", path=source)
    cache = PreprocessCache(cfg["data"]["cache_dir"], cfg["data"]["cache_dtype"])
    for key in ("train", "valid"):
        spec = cfg["data"][key]
        if not spec:
            continue
        ds = build_dataset(
            spec,
            cache=cache,
            field=f"data.{key}",
            source=source,
            progress=True,
            workers=max(1, int(cfg["data"]["prepare_workers"])),
        )
        print(f"data.{key}: {len(ds)} volumes ready in {cache.directory} ({ds.summary()})")
    return 0
