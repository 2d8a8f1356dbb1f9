"""Training speed: samples/s of one optimisation step (forward + backward of 55 images per volume,
AdamW update) for a configuration, with the data already in memory (as from the cache).

    python benchmarks/bench_training.py --config configs/demo.yaml [--micro 8 4 2 1] [--steps 4]
    python benchmarks/bench_training.py --config configs/paper.yaml --set model.backbone_weights=null --device cuda

Prints JSON: per micro-batch size, the median step time and samples/s, and the threads used.
The model is built from the configuration with random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from hyperct.device import (
    autocast_for,  # noqa: E402
    resolve_device,  # noqa: E402
)
from hyperct.training.config import load_config  # noqa: E402
from hyperct.training.trainer import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--device", default=None)
    ap.add_argument("--micro", type=int, nargs="+", default=None, help="micro-batch sizes to compare")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per setting (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    dev = resolve_device(args.device or cfg["train"]["device"])
    model = build_model(cfg).to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["optim"]["lr"], foreach=False)
    bs = cfg["train"]["batch_size"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 55, 3, 144, 144, generator=g)
    tasks = torch.randint(0, 25, (bs,), generator=g)
    y = (torch.rand(bs, generator=g) < 0.5).float()
    results = []
    for micro in args.micro or [cfg["train"]["micro_batch"] or bs]:
        times = []
        for step in range(args.steps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            for s in range(0, bs, micro):
                with autocast_for(dev, cfg["train"]["amp"]):
                    logits = model(x[s : s + micro].to(dev), tasks[s : s + micro].to(dev), paired=True)
                loss = F.binary_cross_entropy_with_logits(
                    logits.float(), y[s : s + micro].to(dev), reduction="sum"
                )
                (loss / bs).backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        results.append(
            {
                "micro_batch": micro,
                "step_s_median": round(med, 3),
                "step_s_min": round(min(times), 3),
                "samples_per_s": round(bs / med, 3),
                "samples_per_s_best": round(bs / min(times), 3),
            }
        )
    counts = model.parameter_counts()
    print(
        json.dumps(
            {
                "benchmark": "training step (forward + backward + AdamW), 55 images of 144x144 per volume",
                "config": args.config,
                "overrides": args.overrides,
                "backbone": cfg["model"]["backbone"]
                if isinstance(cfg["model"]["backbone"], str)
                else "custom",
                "train_backbone": cfg["model"]["train_backbone"],
                "trainable_parameters": counts["trainable"],
                "batch_size": bs,
                "device": str(dev),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
