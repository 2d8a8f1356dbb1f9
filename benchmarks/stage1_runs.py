"""Compare stage-1 runs epoch by epoch from their own logs (the A/B arms of issue 18).

    python benchmarks/stage1_runs.py runs/demo-backbone-v1 runs/demo-backbone-v1-whole ... \
        [--from-epoch 12] [--out benchmarks/results/stage1_v1_arms.json]

Reads each ``hyperct pretrain`` run folder's ``log.jsonl`` (one line per epoch) and
``pretrain_config.yaml`` (with the ``pretrain_config.before-epoch-N.yaml`` files a resume with new
settings keeps), and prints JSON: per run, what changed at which epoch (the settings that differ
from the earlier ones), and per epoch the block of seeds, the training losses, seconds, and the
validation means (image, token, volume token-max, bag AUC); for the last epoch also the per-finding
AUCs. The validation phantoms are the same for every run (seeds 200000.., ``valid.phantoms`` of them), so
the rows compare directly; the bag AUC is the run's own bag head on the mean CLS of all 55 images
of a phantom (what the probe gate measures with a refitted head).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from _output import emit_json  # noqa: E402

from hyperct.training.pretrain_config import PretrainConfig  # noqa: E402

EPOCH_FIELDS = (
    "block",
    "lr",
    "loss",
    "token_loss",
    "image_loss",
    "token_max_loss",
    "bag_loss",
    "pair_loss",
    "heart_loss",
    "seconds",
)
MEANS = ("mean_image_auc", "mean_token_auc", "mean_volume_token_max_auc", "mean_bag_auc", "mean_heart_r2")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("train", "valid"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def settings_history(run: Path) -> list[dict]:
    """[{"from_epoch": N, "changed": {field: [old, new]}}] for every resume that changed settings."""
    kept = sorted(
        run.glob("pretrain_config.before-epoch-*.yaml"),
        key=lambda p: int(p.stem.rsplit("-", 1)[1]),
    )
    versions = [(int(p.stem.rsplit("-", 1)[1]), p) for p in kept] + [(None, run / "pretrain_config.yaml")]
    out = []
    for (epoch, path), (_, nxt) in zip(versions, versions[1:], strict=False):
        # read as the run read them: fields added to the configuration since take their defaults
        a = _flatten(PretrainConfig.load(path).to_dict())
        b = _flatten(PretrainConfig.load(nxt).to_dict())
        changed = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        if changed:  # (a file rewritten only because fields were added since changes nothing)
            out.append({"from_epoch": epoch, "changed": changed})
    return out


def summarise(run: Path, from_epoch: int = 1) -> dict:
    log = run / "log.jsonl"
    if not log.is_file():
        raise SystemExit(f"no log.jsonl in {run}: not a `hyperct pretrain` run folder")
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["epoch"] >= from_epoch]
    epochs = []
    for r in rows:
        e = {"epoch": r["epoch"], **{k: r[k] for k in EPOCH_FIELDS if k in r}}
        e.update({k: r.get("valid", {}).get(k) for k in MEANS})
        epochs.append(e)
    last = rows[-1].get("valid", {}) if rows else {}
    return {
        "run": str(run),
        "settings_changed": settings_history(run),
        "epochs": epochs,
        "last_epoch_per_finding": {
            k: last[k]
            for k in ("image_auc", "token_auc", "volume_token_max_auc", "bag_auc", "heart_r2")
            if k in last
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="hyperct pretrain run folders")
    ap.add_argument("--from-epoch", type=int, default=1, help="leave out the epochs before this one")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    emit_json(
        {"benchmark": "stage1_runs", "runs": [summarise(r, args.from_epoch) for r in args.runs]},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
