"""Saliency quality on fresh phantoms with known finding masks (DESIGN.md section 5).

    python benchmarks/bench_saliency.py --n 100 --seed 7000000 [--model DIR] [--block N] [--out benchmarks/results/saliency_demo.json]

For every finding present in a phantom (and scored by the model), with Grad-CAM maps of all present
findings from one batched backward:

* pointing game: the 3-D argmax of the map lies inside the finding's mask dilated by ``--dilate-mm``
  (default 20 mm: half a Grad-CAM token is about 19 mm in-plane on a 350 mm field of view);
* energy in mask relative to the uniform baseline: (sum of the map inside the mask / total) / (|mask| / |volume|);
* deletion AUC: the finding's probability while the most salient 16x16-pixel x 3-slice token blocks of
  the model input are replaced by a blurred copy, 0..100 % in 10 % steps, against a random order
  (lower is better: the model relies on what the map shows);
* model-randomisation sanity check: Spearman correlation of the token maps with the maps of the same
  model after its hypernetwork is re-initialised, and after the task embeddings are permuted (should
  fall below 0.5).

``--block N`` taps the input of backbone block N instead of the last block (the product's map), to
compare where the model's evidence sits. Prints JSON (per-finding and averaged over localisable findings).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from hyperct.findings import catalogue  # noqa: E402
from hyperct.loading import load_model  # noqa: E402
from hyperct.phantom import generate  # noqa: E402
from hyperct.preprocess import preprocess  # noqa: E402
from hyperct.saliency import SaliencyMaps, gradcam_token_maps  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def point_hits_mask(point, mask: np.ndarray, spacing, tol_mm: float) -> bool:
    """Is ``point`` (k, j, i) within ``tol_mm`` of a mask voxel?"""
    k, j, i = point
    if mask[k, j, i]:
        return True
    r = [int(np.ceil(tol_mm / s)) for s in spacing]
    lo = [max(0, c - rr) for c, rr in zip(point, r)]
    hi = [min(n, c + rr + 1) for c, rr, n in zip(point, r, mask.shape)]
    box = np.argwhere(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    if box.size == 0:
        return False
    d = (box + np.array(lo) - np.array(point)) * np.array(spacing)
    return bool((np.sqrt((d * d).sum(axis=1)) <= tol_mm).any())


def blurred(px: torch.Tensor) -> torch.Tensor:
    """Heavily blurred copy of the model input (the 'deleted' content)."""
    x = px.reshape(-1, 1, *px.shape[-2:])
    k = torch.exp(-0.5 * (torch.arange(-12, 13, dtype=px.dtype) / 6.0) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (12, 12, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, 12, 12), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(px.shape)


@torch.no_grad()
def deletion_curve(model, px: torch.Tensor, task: int, order: np.ndarray, steps: int = 10) -> list[float]:
    """Probability of ``task`` as token blocks are deleted in ``order`` (indices into 55 x 9 x 9)."""
    base = blurred(px)
    n = order.size
    probs = []
    for s in range(steps + 1):
        x = px.clone()
        idx = order[: int(round(n * s / steps))]
        for flat in idx:
            img, rest = divmod(int(flat), 81)
            r, c = divmod(rest, 9)
            x[0, img, :, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = base[
                0, img, :, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16
            ]
        probs.append(float(torch.sigmoid(model(x, torch.tensor([task]), task_chunk=1))[0, 0]))
    return probs


def randomised_hypernet(model, seed: int):
    other = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in other.hypernet.modules():
            if hasattr(m, "reset_parameters") and m is not other.hypernet:
                m.reset_parameters()
        other.hypernet.task_embeddings.normal_()
        for kind, head in other.hypernet.heads.items():
            n_a = other.hypernet.rank * other.hypernet.dims[kind][0]
            head.weight[n_a:].normal_(0, float(model.hypernet.heads[kind].weight[n_a:].std()) or 0.01)
    other.clear_factor_cache()
    return other.eval()


def permuted_tasks(model, seed: int):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(other.hypernet.task_embeddings.shape[0], generator=g)
    with torch.no_grad():
        other.hypernet.task_embeddings.copy_(other.hypernet.task_embeddings[perm])
    other.clear_factor_cache()
    return other.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="number of fresh phantoms")
    ap.add_argument("--seed", type=int, default=7_000_000, help="first phantom seed (never used in training)")
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--model", help="checkpoint folder (default: embedded demo)")
    ap.add_argument("--dilate-mm", type=float, default=20.0)
    ap.add_argument(
        "--deletion-cases", type=int, default=60, help="cases (finding x phantom) with a deletion curve"
    )
    ap.add_argument(
        "--min-probability", type=float, default=0.0, help="only findings the model scores at least this high"
    )
    ap.add_argument(
        "--block",
        type=int,
        help="Grad-CAM at the input of this backbone block (0-based; default the last, the product's map)",
    )
    ap.add_argument("--out")
    args = ap.parse_args()

    torch.manual_seed(0)
    loaded = load_model(args.model, device="cpu")
    model = loaded.model
    cat = catalogue()
    rand_model = randomised_hypernet(model, 1)
    perm_model = permuted_tasks(model, 2)
    rng = np.random.default_rng(0)

    per = defaultdict(lambda: defaultdict(list))
    deletion = {"saliency": [], "random": []}
    sanity = {"randomised_hypernetwork": [], "permuted_task_embeddings": []}
    t0 = time.time()
    for n in range(args.n):
        ph = generate(args.seed + n, matrix=args.matrix)
        present = [fid for fid in ph.masks if ph.masks[fid].any()]
        if not present:
            continue
        pre = preprocess(ph.volume)
        px = pre.pixel_values[None]
        tasks = cat.indices(present)
        with torch.no_grad():
            probs = torch.sigmoid(model(px, torch.tensor(tasks))).numpy()[0]
        keep = [(fid, t, p) for fid, t, p in zip(present, tasks, probs) if p >= args.min_probability]
        if not keep:
            continue
        tok = gradcam_token_maps(model, px, [t for _, t, _ in keep], block=args.block)
        maps = SaliencyMaps("gradcam", pre.source_shape, {fid: m for (fid, _, _), m in zip(keep, tok)})
        tok_r = gradcam_token_maps(rand_model, px, [t for _, t, _ in keep], block=args.block)
        tok_p = gradcam_token_maps(perm_model, px, [t for _, t, _ in keep], block=args.block)
        for idx, (fid, task, p) in enumerate(keep):
            mask = ph.masks[fid]
            vmap = maps.volume_map(fid)
            peak = np.unravel_index(int(np.argmax(vmap)), vmap.shape)
            per[fid]["pointing_hit"].append(point_hits_mask(peak, mask, ph.volume.spacing, args.dilate_mm))
            total = float(vmap.sum())
            if total > 0:
                frac = float(vmap[mask].sum()) / total
                per[fid]["energy_ratio"].append(frac / (mask.sum() / mask.size))
            per[fid]["probability"].append(float(p))
            if tok[idx].max() > 0:
                sanity["randomised_hypernetwork"].append(spearman(tok[idx], tok_r[idx]))
                sanity["permuted_task_embeddings"].append(spearman(tok[idx], tok_p[idx]))
            if len(deletion["saliency"]) < args.deletion_cases:
                order = np.argsort(-tok[idx].ravel(), kind="stable")
                rnd = rng.permutation(order.size)
                ds = deletion_curve(model, px, task, order)
                dr = deletion_curve(model, px, task, rnd)
                deletion["saliency"].append(float(np.trapezoid(ds, dx=1 / (len(ds) - 1))))
                deletion["random"].append(float(np.trapezoid(dr, dx=1 / (len(dr) - 1))))
        print(f"phantom {n + 1}/{args.n}: {len(keep)} findings, {time.time() - t0:.0f} s", file=sys.stderr)

    findings = {}
    for fid, d in per.items():
        findings[fid] = {
            "cases": len(d["pointing_hit"]),
            "pointing_game": round(float(np.mean(d["pointing_hit"])), 3),
            "energy_in_mask_vs_uniform": round(float(np.median(d["energy_ratio"])), 2)
            if d["energy_ratio"]
            else None,
            "mean_probability": round(float(np.mean(d["probability"])), 3),
        }
    localisable = {fid: v for fid, v in findings.items() if v["cases"] >= 3}
    result = {
        "benchmark": "saliency_quality_gradcam",
        "model": f"{loaded.name} v{loaded.version}",
        "weights_sha256": loaded.weights_sha256,
        "phantoms": args.n,
        "first_seed": args.seed,
        "matrix": args.matrix,
        "dilate_mm": args.dilate_mm,
        "gradcam_block": "last" if args.block is None else args.block,
        "localisable_findings": len(localisable),
        "pointing_game_mean_over_findings": round(
            float(np.mean([v["pointing_game"] for v in localisable.values()])), 3
        )
        if localisable
        else None,
        "energy_in_mask_vs_uniform_median_over_findings": round(
            float(
                np.median(
                    [
                        v["energy_in_mask_vs_uniform"]
                        for v in localisable.values()
                        if v["energy_in_mask_vs_uniform"]
                    ]
                )
            ),
            2,
        )
        if localisable
        else None,
        "deletion_auc_saliency_mean": round(float(np.mean(deletion["saliency"])), 4)
        if deletion["saliency"]
        else None,
        "deletion_auc_random_mean": round(float(np.mean(deletion["random"])), 4)
        if deletion["random"]
        else None,
        "deletion_saliency_below_random_fraction": round(
            float(np.mean(np.array(deletion["saliency"]) < np.array(deletion["random"]))), 3
        )
        if deletion["saliency"]
        else None,
        "deletion_cases": len(deletion["saliency"]),
        "sanity_spearman_randomised_hypernetwork_mean": round(
            float(np.mean(sanity["randomised_hypernetwork"])), 3
        )
        if sanity["randomised_hypernetwork"]
        else None,
        "sanity_spearman_permuted_task_embeddings_mean": round(
            float(np.mean(sanity["permuted_task_embeddings"])), 3
        )
        if sanity["permuted_task_embeddings"]
        else None,
        "seconds": round(time.time() - t0, 1),
        "per_finding": dict(sorted(findings.items(), key=lambda kv: cat.index(kv[0]))),
    }
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
