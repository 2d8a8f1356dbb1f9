"""The engine on a CUDA GPU against the CPU, with the embedded demo model: scores, calls and
saliency maps on the same scans, and how long each takes.

    python benchmarks/gpu_check.py --out gpu_check.json            # needs a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --scans 2          # the script itself, on a CPU

Scans: the viewer's bundled sample and ``--scans - 1`` test-set phantoms (seeds 300000.., matrix
192, the card's held-out seeds). Scoring runs as ``hyperct predict`` does (``load_model`` with the
device, ``analyze``: bf16 autocast on CUDA, fp32 on the CPU); reported per scan: the largest and
mean |probability difference| to the CPU, the calls that differ (with the probability's distance
from its threshold), and the warm seconds on each device. Saliency: every method of
``hyperct.saliency.METHODS`` for the sample's pleural effusion (occlusion on the GPU only), the
Pearson correlation of the GPU map with the CPU map and whether their peak tokens agree.

Prints JSON (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402
from bench_inference import sync  # noqa: E402

from hyperct.device import resolve_device  # noqa: E402
from hyperct.inference import analyze  # noqa: E402
from hyperct.loading import load_model  # noqa: E402
from hyperct.phantom.bundled import sample_phantom  # noqa: E402
from hyperct.phantom.generator import generate  # noqa: E402
from hyperct.preprocess import preprocess  # noqa: E402
from hyperct.saliency import METHODS, compute_saliency, peak_token  # noqa: E402

CPU_SLOW = {"occlusion"}  # minutes per map on a CPU: timed on the GPU only


def _timed(dev: torch.device, fn):
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - t0


def _scores(result) -> dict[str, tuple[float, float, str]]:
    return {f.id: (float(f.probability), float(f.threshold), f.call) for f in result.findings}


def compare_scores(cpu, gpu, dev, volumes) -> list[dict]:
    rows = []
    analyze(gpu, volumes[0][1])  # warm-up (kernels, autotuning): every scan has the same model input shape
    for name, vol in volumes:
        rc, t_cpu = _timed(torch.device("cpu"), lambda v=vol: analyze(cpu, v))
        rg, t_gpu = _timed(dev, lambda v=vol: analyze(gpu, v))
        a, b = _scores(rc), _scores(rg)
        diff = {k: abs(a[k][0] - b[k][0]) for k in a}
        flips = [
            {"finding": k, "cpu": a[k][0], "gpu": b[k][0], "threshold": a[k][1]}
            for k in a
            if a[k][2] != b[k][2]
        ]
        rows.append(
            {
                "scan": name,
                "device_reported": rg.device,
                "max_abs_dp": max(diff.values()),
                "mean_abs_dp": float(np.mean(list(diff.values()))),
                "calls_differ": flips,
                "calls_present_cpu": sum(v[2] == "present" for v in a.values()),
                "seconds_cpu": round(t_cpu, 3),
                "seconds_gpu_warm": round(t_gpu, 3),
            }
        )
        print(
            f"[scores] {name}: max |dp| {rows[-1]['max_abs_dp']:.4f}, {len(flips)} calls differ",
            file=sys.stderr,
        )
    return rows


def compare_saliency(cpu, gpu, dev, volume, finding: str) -> list[dict]:
    pre = preprocess(volume)
    rows = []
    for method in METHODS:
        row: dict = {"method": method, "finding": finding}
        try:
            compute_saliency(gpu, pre, [finding], method=method)  # warm-up
            mg, t_gpu = _timed(dev, lambda m=method: compute_saliency(gpu, pre, [finding], method=m))
            g = mg.model_maps[finding]
            row.update(
                seconds_gpu_warm=round(t_gpu, 3), finite=bool(np.isfinite(g).all()), shape=list(g.shape)
            )
            if method not in CPU_SLOW:
                mc, t_cpu = _timed(
                    torch.device("cpu"), lambda m=method: compute_saliency(cpu, pre, [finding], method=m)
                )
                c = mc.model_maps[finding]
                r = np.corrcoef(c.ravel().astype(np.float64), g.ravel().astype(np.float64))[0, 1]
                row.update(
                    seconds_cpu=round(t_cpu, 3),
                    pearson_r_vs_cpu=float(r),
                    same_peak_token=peak_token(c, mg.patch) == peak_token(g, mg.patch),
                )
        except Exception as exc:  # a method that fails on the GPU is a finding of this check
            row["error"] = f"{type(exc).__name__}: {exc}"
        print(f"[saliency] {row}", file=sys.stderr)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scans", type=int, default=8, help="the sample + N-1 test phantoms")
    ap.add_argument("--finding", default="pleural_effusion", help="the finding whose saliency is compared")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    cpu = load_model(device="cpu")
    gpu = load_model(device=dev)
    sample = sample_phantom().volume
    volumes = [("sample", sample)]
    volumes += [
        (f"phantom-{300000 + i}", generate(300000 + i, matrix=192).volume) for i in range(args.scans - 1)
    ]
    result: dict = {
        "what": "the demo model on a GPU vs the CPU: scores, calls, saliency, seconds",
        "model": {"name": gpu.name, "version": gpu.version},
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
    result["scores"] = compare_scores(cpu, gpu, dev, volumes)
    result["scores_summary"] = {
        "max_abs_dp": max(r["max_abs_dp"] for r in result["scores"]),
        "calls_differ": sum(len(r["calls_differ"]) for r in result["scores"]),
        "calls": 25 * len(result["scores"]),
        "median_seconds_gpu_warm": float(np.median([r["seconds_gpu_warm"] for r in result["scores"]])),
        "median_seconds_cpu": float(np.median([r["seconds_cpu"] for r in result["scores"]])),
    }
    result["saliency"] = compare_saliency(cpu, gpu, dev, sample, args.finding)
    if dev.type == "cuda":
        result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
