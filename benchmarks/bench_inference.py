"""Inference speed: all 25 findings for one scan in one batched pass vs. a per-task loop.

    python benchmarks/bench_inference.py --device cpu --config demo
    python benchmarks/bench_inference.py --device cuda --config vitb16 [--compile] [--out benchmarks/results/x.json]

Prints JSON: ms per scan (batched and per-task loop, the way the authors' research code runs: the
hypernetwork generates one task's LoRA and the backbone runs once per task), the speed-up, peak
memory, and on CUDA the achieved TFLOP/s and the fraction of the GPU's dense bf16 peak.
The model is randomly initialised with non-zero LoRA (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from hyperct.inference import autocast_for, default_task_chunk  # noqa: E402
from hyperct.model import HyperCT, HyperCTConfig  # noqa: E402

# Dense bf16 peak (TFLOP/s, no sparsity) by device name fragment.
BF16_PEAK = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "A10": 125.0,
}


def flops_per_scan(model: HyperCT, n_tasks: int, n_images: int = 55, tokens: int = 86) -> dict:
    cfg = model.backbone.config
    d, m, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    r = model.config.rank
    dense = 2 * tokens * (4 * d * d + 2 * d * m) + 2 * 2 * tokens * tokens * d  # projections + attention
    lora = 2 * tokens * r * (4 * 2 * d + 2 * (d + m))
    per_image = L * (dense + lora)
    return {
        "base": L * dense * n_images * n_tasks,
        "lora": L * lora * n_images * n_tasks,
        "total": per_image * n_images * n_tasks,
    }


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(dev)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--config", default="demo", choices=["demo", "vitb16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loop-repeats", type=int, default=2)
    ap.add_argument("--task-chunk", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone blocks (CUDA)")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = HyperCT(HyperCTConfig(backbone=args.config))
    with torch.no_grad():
        for kind, head in model.hypernet.heads.items():
            n_a = model.hypernet.rank * model.hypernet.dims[kind][0]
            head.weight[n_a:].normal_(0, 0.01)
    model = model.to(dev).eval()
    if args.compile:
        model._blocks = torch.compile(model._blocks, dynamic=False)
    px = torch.randn(1, 55, 3, 144, 144, device=dev)
    chunk = args.task_chunk or default_task_chunk(dev, model)
    all_tasks = torch.arange(25, device=dev)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def batched():
        with torch.inference_mode(), autocast_for(dev):
            return model(px, all_tasks, task_chunk=chunk)

    def per_task_loop():
        # The research code's way: for each task, the hypernetwork generates that task's LoRA and the
        # backbone runs once with it (no factor cache, one task per pass).
        outs = []
        with torch.inference_mode(), autocast_for(dev):
            for k in range(25):
                model.clear_factor_cache()
                outs.append(model(px, all_tasks[k : k + 1]))
        return outs

    warm = 3 if dev.type == "cuda" else 1
    ms_batched = timed(batched, dev, args.repeats, warm)
    peak_gpu = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    rss_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ms_loop = None if args.skip_loop else timed(per_task_loop, dev, args.loop_repeats, 1)

    fl = flops_per_scan(model, 25)
    med = statistics.median(ms_batched)
    result = {
        "benchmark": "inference_25_findings_one_scan",
        "config": args.config,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": "bf16 autocast" if dev.type == "cuda" else "fp32",
        "compiled": args.compile,
        "task_chunk": chunk,
        "images_per_scan": 55,
        "tokens_per_image": 86,
        "ms_per_scan_batched": round(med, 2),
        "ms_per_scan_batched_all": [round(x, 2) for x in ms_batched],
        "ms_per_scan_per_task_loop": round(statistics.median(ms_loop), 2) if ms_loop else None,
        "speedup_vs_per_task_loop": round(statistics.median(ms_loop) / med, 2) if ms_loop else None,
        "tflop_per_scan": round(fl["total"] / 1e12, 3),
        "lora_flop_fraction": round(fl["lora"] / fl["total"], 4),
        "peak_gpu_memory_mb": round(peak_gpu, 1) if peak_gpu is not None else None,
        "peak_rss_mb": round(rss_peak_mb, 1),
        "rss_before_mb": round(rss0 / 1024, 1),
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        tflops = fl["total"] / (med / 1000) / 1e12
        name = result["device_name"]
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        result["achieved_tflops"] = round(tflops, 1)
        result["bf16_dense_peak_tflops"] = peak
        result["fraction_of_bf16_peak"] = round(tflops / peak, 3) if peak else None
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
