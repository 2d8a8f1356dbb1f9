"""Inference speed side by side: the authors'-style method, merged weights per task, the batched pass.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_inference.py --config demo --device cpu
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_inference.py --config vitb16 --images 6 --tasks 3
    python benchmarks/bench_inference.py --config vitb16 --device cuda [--compile]
    (--patch 8: the backbone at patch 8; --hu-windows: with the demo's HU windows (issue 18);
    --hu-windows --conv-stem 16: with a conv stem of width 16 beside the windowed patch embedding;
    --demo-model-backbone: the embedded demo model's backbone architecture, from its manifest;
    --dtype fp32: without the bf16-weights arm; --bf16-check-scans 8: also the demo checkpoint's
    probabilities with bf16 vs fp32 weights on the viewer's sample scan and 7 random phantoms)

Three ways to compute the same logits, from the same weights (a random HyperCT whose LoRA B is
non-zero, so every task differs):

* ``authors_style``: ``hyperct.network.reference.AuthorsStyleHyperCT``: the paper's method as
  described there (not the authors' code): forward hooks on every target ``nn.Linear`` add the
  task's LoRA term, the hypernetwork generates each module's factors inside its hook, a host
  sync per module (CUDA), one forward per task, fp32.
* ``merged``: ``MergedPerTask``: factors generated once, W + (alpha/r) B A written into a plain
  backbone per task, one ordinary forward per task (no hooks).
* ``batched``: ``HyperCT.forward``: factors generated once and cached, all tasks in one backbone
  pass per task chunk (base GEMM shared, low-rank terms as batched matmuls). Reported twice:
  with the product's default chunk (what ``hyperct predict`` runs; on a CPU that is a few tasks
  per pass) and with every task in one pass.
* ``batched_bf16_weights`` (``--dtype bf16``, the default): the batched pass (default chunk) of a
  copy whose backbone weights are bf16 (``HyperCT.to_inference_dtype``: no autocast, no per-op
  casts; hypernetwork, head and RoPE frequencies fp32). Not part of the fp32 equivalence check: its
  logit and probability differences from fp32 are reported against ``BF16_PROB_TOL``.

First every variant's logits are compared with the batched pass (fp32; tolerance in the JSON),
then the arms are timed interleaved (min and median over ``--repeats``). Also measured: a large
matmul's throughput on this device (the practical peak: the best of a measurement in every timing
round and one at the end), GFLOP/s of each arm and its fraction of that peak, peak memory per arm
(sampled RSS above the arm's starting RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU),
and the run conditions (CPU model, threads, OMP_WAIT_POLICY, load average). On CUDA the batched
pass is also timed under bf16 autocast, with its logit error against fp32.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from hyperct.device import default_task_chunk  # noqa: E402
from hyperct.network import HyperCT, HyperCTConfig  # noqa: E402
from hyperct.network.reference import AuthorsStyleHyperCT, MergedPerTask  # noqa: E402
from hyperct.network.windows import DEMO_WINDOWS  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4  # fp32 logits: |a - b| <= ATOL + RTOL * |b|
BF16_PROB_TOL = 0.01  # bf16 weights: |sigmoid(bf16 logit) - sigmoid(fp32 logit)| <= this


# --- measurement helpers ----------------------------------------------------------------------


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory an arm adds: sampled RSS (CPU) or max_memory_allocated (CUDA), above the start."""

    def __init__(self, dev: torch.device):
        self.dev = dev

    def __enter__(self):
        if self.dev.type == "cuda":
            sync(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.start = torch.cuda.memory_allocated(self.dev)
        else:
            self.start = self.peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            sync(self.dev)
            self.peak = torch.cuda.max_memory_allocated(self.dev)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
        self.delta_mb = (self.peak - self.start) / 2**20


def matmul_peak_gflops(dev: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best throughput of an n x n x n matmul (the device's practical peak for that dtype)."""
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops(model: HyperCT, n_tasks: int, n_images: int, tokens: int) -> dict:
    """FLOPs of the backbone blocks for ``n_tasks`` x ``n_images`` (patch embedding and head excluded)."""
    cfg = model.backbone.config
    d, m, L, r = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, model.config.rank
    dense = 2 * tokens * (4 * d * d + 2 * d * m) + 2 * 2 * tokens * tokens * d  # projections + attention
    dims = {
        "q_proj": (d, d),
        "k_proj": (d, d),
        "v_proj": (d, d),
        "o_proj": (d, d),
        "up_proj": (d, m),
        "down_proj": (m, d),
    }
    lora = sum(2 * tokens * r * (dims[k][0] + dims[k][1]) for k in model.config.targets)
    n = L * n_images * n_tasks
    return {"base": dense * n, "lora": lora * n, "total": (dense + lora) * n}


def run_conditions(dev: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def choose_chunk(dev: torch.device, model: HyperCT, n_images: int, n_tasks: int) -> int:
    """Tasks per backbone pass. CPU: the rule of ``hyperct.device.default_task_chunk`` (largest
    activation ~16 MB) for this image count; CUDA: from free memory (~12 live MLP-wide fp32 activations)."""
    cfg = model.backbone.config
    tokens = 1 + cfg.num_register_tokens + (144 // cfg.patch_size) ** 2
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        per_task = n_images * tokens * max(cfg.intermediate_size, 3 * cfg.hidden_size) * 4 * 12
        return max(1, min(n_tasks, int(0.6 * free // per_task)))
    if n_images == 55:
        return min(n_tasks, default_task_chunk(dev, model, batch=1))
    per_task = n_images * tokens * cfg.intermediate_size * 4
    return max(1, min(n_tasks, int(16e6 // per_task)))


def bf16_demo_check(dev: torch.device, n_scans: int) -> dict:
    """The embedded demo checkpoint with fp32 vs bf16 backbone weights (``to_inference_dtype``) on the
    viewer's sample scan and ``n_scans - 1`` random phantoms (seeds 0.., matrix 256): the largest
    logit and probability differences, and calls (probability >= the model's threshold) that flip."""
    from hyperct.loading import load_model
    from hyperct.phantom import generate, sample_phantom
    from hyperct.preprocess import preprocess

    loaded = load_model(device=dev)
    fp32 = loaded.model.eval()
    low = copy.deepcopy(fp32).to_inference_dtype(torch.bfloat16)
    th = torch.as_tensor(loaded.thresholds)
    chunk = default_task_chunk(dev, fp32)
    scans = [("sample", sample_phantom)]
    scans += [(f"phantom_{s}", lambda s=s: generate(s, matrix=256)) for s in range(n_scans - 1)]
    per_scan, near = {}, []
    for name, make in scans:
        px = preprocess(make().volume).pixel_values[None].to(dev)
        with torch.inference_mode():
            a = fp32(px, task_chunk=chunk)[0].double().cpu()
            b = low(px, task_chunk=chunk)[0].double().cpu()
        pa, pb = torch.sigmoid(a), torch.sigmoid(b)
        flips = torch.nonzero((pa >= th) != (pb >= th)).flatten().tolist()
        near.append((pa - th).abs())
        per_scan[name] = {
            "max_abs_logit_diff": round((a - b).abs().max().item(), 5),
            "max_abs_prob_diff": round((pa - pb).abs().max().item(), 5),
            "call_flips": len(flips),
            "flipped_fp32_prob_minus_threshold": [round((pa[i] - th[i]).item(), 6) for i in flips],
        }
    near = torch.cat(near)
    return {
        "model": f"{loaded.name} v{loaded.version} (embedded demo checkpoint)",
        "scans": len(scans),
        "task_chunk": chunk,
        "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in per_scan.values()),
        "max_abs_prob_diff": max(r["max_abs_prob_diff"] for r in per_scan.values()),
        "call_flips": sum(r["call_flips"] for r in per_scan.values()),
        "calls": int(near.numel()),
        "fp32_probs_within_0.01_of_threshold": int((near < 0.01).sum()),
        "within_tolerance": max(r["max_abs_prob_diff"] for r in per_scan.values()) <= BF16_PROB_TOL,
        "per_scan": per_scan,
    }


# --- the benchmark ------------------------------------------------------------------------------


def demo_model_backbone() -> dict:
    """The embedded demo model's backbone configuration, read from its manifest (no weights loaded)."""
    from hyperct.checkpoint import read_manifest
    from hyperct.loading import demo_model_dir

    return dict(read_manifest(demo_model_dir()).architecture.backbone)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--config", default="demo", choices=["demo", "vitb16"])
    ap.add_argument("--images", type=int, default=55, help="images per scan (55 = 165 slices)")
    ap.add_argument("--tasks", type=int, default=25, help="findings scored (first K)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (after one warm-up)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the batched pass's blocks (CUDA)")
    ap.add_argument(
        "--dtype",
        default="bf16",
        choices=["fp32", "bf16"],
        help="bf16 (default): also time the batched pass with bf16 backbone weights; fp32: fp32 arms only",
    )
    ap.add_argument(
        "--bf16-check-scans",
        type=int,
        default=0,
        metavar="N",
        help="with --dtype bf16: also compare bf16 vs fp32 weights of the demo checkpoint on N scans "
        "(the viewer's sample + N-1 phantoms)",
    )
    ap.add_argument("--patch", type=int, help="the backbone's patch size instead of the configuration's (8)")
    ap.add_argument(
        "--hu-windows",
        action="store_true",
        help="the backbone with the demo's HU windows (hyperct.network.windows.DEMO_WINDOWS)",
    )
    ap.add_argument(
        "--demo-model-backbone",
        action="store_true",
        help="the embedded demo model's backbone architecture, read from its manifest (its HU windows "
        "and conv stem; random weights like the other arms)",
    )
    ap.add_argument(
        "--conv-stem",
        type=int,
        metavar="WIDTH",
        help="with --hu-windows: a conv stem of this width beside the patch embedding (hyperct.network.conv_stem)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_inference: --device cuda but PyTorch sees no CUDA GPU")
    if args.conv_stem and not args.hu_windows:
        sys.exit("bench_inference: --conv-stem reads the HU windows: add --hu-windows")
    if args.demo_model_backbone and (
        args.hu_windows or args.conv_stem or args.patch or args.config != "demo"
    ):
        sys.exit(
            "bench_inference: --demo-model-backbone is the whole demo backbone: drop --hu-windows, "
            "--conv-stem, --patch and --config"
        )

    dev = torch.device(args.device)
    load_before = os.getloadavg()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the equivalence check
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)
    backbone = {"base": args.config}
    if args.patch:
        backbone["patch_size"] = args.patch
    if args.hu_windows:
        backbone["hu_windows"] = [list(w) for w in DEMO_WINDOWS]
    if args.demo_model_backbone:
        backbone = demo_model_backbone()
    if args.conv_stem:
        backbone["conv_stem"] = args.conv_stem
    model = HyperCT(HyperCTConfig(backbone=backbone if len(backbone) > 1 else args.config))
    with torch.no_grad():  # non-zero B: every task gets its own, clearly visible update
        for kind, head in model.hypernet.heads.items():
            n_a = model.hypernet.rank * model.hypernet.dims[kind][0]
            head.weight[n_a:].normal_(0, 0.05)
            head.bias[n_a:].normal_(0, 0.05)
    model = model.to(dev).eval()
    bf16_model = copy.deepcopy(model).to_inference_dtype(torch.bfloat16) if args.dtype == "bf16" else None
    authors = AuthorsStyleHyperCT(model)
    merged = MergedPerTask(model)
    cfg = model.backbone.config
    tokens = 1 + cfg.num_register_tokens + (144 // cfg.patch_size) ** 2
    K, N = args.tasks, args.images
    tasks = torch.arange(K, device=dev)
    task_list = list(range(K))
    px = torch.randn(1, N, 3, 144, 144, generator=torch.Generator().manual_seed(1)).to(dev)
    chunk = choose_chunk(dev, model, N, K)
    blocks = model._blocks
    if args.compile:
        model._blocks = torch.compile(blocks, dynamic=False)
        if bf16_model is not None:
            bf16_model._blocks = torch.compile(bf16_model._blocks, dynamic=False)

    def t_generation():  # what every per-task arm pays once per task in authors' style
        with torch.no_grad():
            model.lora_factors(tasks)

    arms = {
        "authors_style": lambda: authors(px, task_list),
        "merged": lambda: merged(px, task_list),  # generates all tasks' factors once, then merges per task
        "batched": lambda: model(px, tasks, task_chunk=chunk),  # product default chunk, cached factors
        "batched_one_pass": lambda: model(px, tasks, task_chunk=K),
    }
    if bf16_model is not None:
        arms["batched_bf16_weights"] = lambda: bf16_model(px, tasks, task_chunk=chunk)
    if dev.type == "cuda":

        def batched_bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(px, tasks, task_chunk=chunk)

        arms["batched_bf16"] = batched_bf16

    # 1. equivalence (also the warm-up round)
    logits, peak_mb, first_ms = {}, {}, {}
    with torch.inference_mode():
        for name, fn in arms.items():
            with PeakMemory(dev) as mem:
                t = time.perf_counter()
                logits[name] = fn().float()
                sync(dev)
                first_ms[name] = (time.perf_counter() - t) * 1000
            peak_mb[name] = round(mem.delta_mb, 1)
        plain = model.backbone_only_logits(px).float()
    ref = logits["batched"]
    equivalence = {"tolerance": f"|x - batched| <= {ATOL} + {RTOL} * |batched| (fp32)"}
    ok = True
    for name, val in logits.items():
        if name in ("batched", "batched_bf16", "batched_bf16_weights"):
            continue
        diff = (val - ref).abs().max().item()
        passed = bool(torch.all((val - ref).abs() <= ATOL + RTOL * ref.abs()).item())
        equivalence[f"{name}_max_abs_diff"] = diff
        ok &= passed
    equivalence["lora_effect_min_abs"] = (ref - plain[:, None]).abs().min().item()  # > tolerance: not vacuous
    equivalence["passed"] = ok
    if "batched_bf16" in logits:
        equivalence["batched_bf16_max_abs_diff_vs_fp32"] = (logits["batched_bf16"] - ref).abs().max().item()
    if "batched_bf16_weights" in logits:
        low = logits["batched_bf16_weights"]
        dp = (torch.sigmoid(low.double()) - torch.sigmoid(ref.double())).abs().max().item()
        equivalence["bf16_weights_tolerance"] = f"|p_bf16 - p_fp32| <= {BF16_PROB_TOL} (p = sigmoid(logit))"
        equivalence["batched_bf16_weights_max_abs_diff_vs_fp32"] = (low - ref).abs().max().item()
        equivalence["batched_bf16_weights_max_abs_prob_diff_vs_fp32"] = dp
        equivalence["bf16_weights_within_tolerance"] = dp <= BF16_PROB_TOL
    if not ok:
        emit_json({"error": "variants disagree", "equivalence": equivalence}, args.out)
        sys.exit(1)

    # 2. interleaved timing (arm order shuffled every round)
    times: dict[str, list[float]] = {name: [] for name in arms}
    rng = random.Random(args.seed)
    n_peak = 8192 if dev.type == "cuda" else 2048
    peak_fp32 = peak_bf16 = 0.0
    with torch.inference_mode():
        for _ in range(args.repeats):
            # the practical peak, measured every round too (on a shared machine the load varies)
            peak_fp32 = max(peak_fp32, matmul_peak_gflops(dev, torch.float32, n_peak, repeats=2))
            peak_bf16 = max(peak_bf16, matmul_peak_gflops(dev, torch.bfloat16, n_peak, repeats=2))
            order = list(arms)
            rng.shuffle(order)
            for name in order:
                with PeakMemory(dev) as mem:
                    t = time.perf_counter()
                    arms[name]()
                    sync(dev)
                    times[name].append((time.perf_counter() - t) * 1000)
                peak_mb[name] = max(peak_mb[name], round(mem.delta_mb, 1))
        gen_ms = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            t_generation()
            sync(dev)
            gen_ms.append((time.perf_counter() - t) * 1000)
        authors_gen_ms = []
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            for k in task_list:
                for li, kind in authors.targets:
                    authors.module_factors(k, li, kind)
            sync(dev)
            authors_gen_ms.append((time.perf_counter() - t) * 1000)
        emb_ms = []  # the embedding (and the conv stem, if any): once per scan, shared by every task
        flat = px.reshape(N, *px.shape[2:])
        for _ in range(max(3, args.repeats)):
            t = time.perf_counter()
            model.backbone.embeddings(flat)
            sync(dev)
            emb_ms.append((time.perf_counter() - t) * 1000)

    demo_check = (
        bf16_demo_check(dev, args.bf16_check_scans)
        if bf16_model is not None and args.bf16_check_scans
        else None
    )
    fl = flops(model, K, N, tokens)
    peak_fp32 = max(peak_fp32, matmul_peak_gflops(dev, torch.float32, n_peak))
    peak_bf16 = max(peak_bf16, matmul_peak_gflops(dev, torch.bfloat16, n_peak))
    load_after = os.getloadavg()

    def summary(name):
        ms = times[name]
        best = min(ms)
        peak = peak_bf16 if name in ("batched_bf16", "batched_bf16_weights") else peak_fp32
        gflops = fl["total"] / (best / 1000) / 1e9
        return {
            "min_ms": round(best, 1),
            "median_ms": round(statistics.median(ms), 1),
            "all_ms": [round(x, 1) for x in ms],
            "first_call_ms": round(first_ms[name], 1),
            "gflops": round(gflops, 1),
            "fraction_of_matmul_peak": round(gflops / peak, 3),
            "peak_memory_delta_mb": peak_mb[name],
        }

    arms_out = {name: summary(name) for name in arms}
    a, m, b, b1 = (arms_out[k]["min_ms"] for k in ("authors_style", "merged", "batched", "batched_one_pass"))
    result = {
        "benchmark": "inference_side_by_side",
        "config": args.config,
        "patch_size": int(model.patch_size),
        "hu_windows": getattr(model.backbone.config, "hu_windows", None),
        "conv_stem": getattr(model.backbone.config, "conv_stem", None),
        "device": str(dev),
        "images_per_scan": N,
        "tasks": K,
        "tokens_per_image": tokens,
        "task_chunk": chunk,
        "backbone_passes_batched": -(-K // chunk),
        "task_chunk_rule": "CUDA: from free memory; CPU: hyperct.device.default_task_chunk's rule "
        "(largest activation ~16 MB) for this image count",
        "dtype": "fp32"
        + (" (batched_bf16: bf16 autocast)" if dev.type == "cuda" else "")
        + (" (batched_bf16_weights: bf16 backbone weights)" if bf16_model is not None else ""),
        "compiled": args.compile,
        "repeats": args.repeats,
        "authors_style_ms": a,
        "merged_ms": m,
        "batched_ms": b,
        "batched_one_pass_ms": b1,
        "batched_bf16_ms": arms_out.get("batched_bf16", {}).get("min_ms"),
        "batched_bf16_weights_ms": arms_out.get("batched_bf16_weights", {}).get("min_ms"),
        "speedup_batched_vs_authors_style": round(a / b, 2),
        "speedup_batched_vs_merged": round(m / b, 2),
        "speedup_merged_vs_authors_style": round(a / m, 2),
        "speedup_one_pass_vs_default_chunk": round(b / b1, 2),
        "speedup_bf16_weights_vs_batched": (
            round(b / arms_out["batched_bf16_weights"]["min_ms"], 2) if bf16_model is not None else None
        ),
        "timing": "min over interleaved repeats (medians in arms)",
        "arms": arms_out,
        "lora_generation_all_tasks_batched_ms": round(min(gen_ms), 2),
        "lora_generation_all_tasks_per_module_ms": round(min(authors_gen_ms), 1),
        "embeddings_per_scan_ms": round(min(emb_ms), 1),  # patch embedding (+ conv stem): once per scan
        "gflop_per_scan": round(fl["total"] / 1e9, 2),
        "lora_flop_fraction": round(fl["lora"] / fl["total"], 4),
        "matmul_peak_gflops": round(peak_fp32, 1),
        "matmul_peak_bf16_gflops": round(peak_bf16, 1),
        "equivalence": equivalence,
        "bf16_weights_demo_checkpoint": demo_check,
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "conditions": {
            **run_conditions(dev),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
    }
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
