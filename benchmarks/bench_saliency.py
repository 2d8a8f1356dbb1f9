"""Does a saliency method show where THIS scan's evidence is? Measured on fresh phantoms whose finding
masks are known, for every method of ``hyperct.saliency`` beside two maps that ignore the scan.

    python benchmarks/bench_saliency.py [--model DIR] [--seed 9100000] [--random 40] [--pairs 4]
        [--laterality 8] [--methods attention,token_gradient,gradcam,input_x_gradient]
        [--reference-methods integrated_gradients,occlusion] [--reference-cases 25]
        [--out benchmarks/results/saliency_demo.json]

Baselines that ignore the scan: ``mask_prior`` (the finding's average mask position over the OTHER
cases of this run, in the model's 55 x 9 x 9 token frame: where the finding usually is) and
``random`` (a random token map). A method that does not beat them is not showing the model's
evidence. All peaks are ``hyperct.saliency.maps.peak_index`` (token centres), as in the viewer.

(a) laterality: one-sided findings (pleural effusion, consolidation, atelectasis, nodule, opacity),
    each drawn on one side (``lesion_variant``), scored where the model detects them (probability >=
    its threshold): the peak is on the lesion's side; share of the map on that side.
(b) counterfactual: the same patient rendered with one finding and without it (the generator's normal
    twin, ``generate(seed, {})``; the two differ only inside the finding's mask): the lesion scan's
    peak lies within ``--dilate-mm`` of the mask; deletion replaces tokens, most salient first, by the
    normal twin's content (not a blur): the probability falls faster than for a random order (area
    under the curve, lower is better).
(c) own mask vs other patients' masks: the peak of one case tested against the masks of other cases
    of the same finding (in the token frame); a map that follows the scan hits its own mask more often.
(d) pointing game and energy in the mask per finding, on random phantoms, for true positives and for
    all positives; focal findings (nodule, calcifications, lymph nodes, material, hernia) apart.

Prints JSON (summary, per method, per finding) and writes it to ``--out``.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from _output import emit_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from hyperct.findings import catalogue  # noqa: E402
from hyperct.loading import load_model  # noqa: E402
from hyperct.phantom import generate  # noqa: E402
from hyperct.preprocess import preprocess  # noqa: E402
from hyperct.saliency import METHODS, method_maps  # noqa: E402
from hyperct.saliency.evaluation import (  # noqa: E402
    grid_shape,
    hit_table,
    lateral_share,
    lesion_side,
    side_columns,
    token_fraction,
)
from hyperct.saliency.maps import peak_token, token_grid  # noqa: E402

ONE_SIDED = ["pleural_effusion", "consolidation", "atelectasis", "lung_nodule", "lung_opacity"]
FOCAL = {
    "lung_nodule",
    "arterial_wall_calcification",
    "coronary_artery_wall_calcification",
    "lymphadenopathy",
    "medical_material",
    "hiatal_hernia",
}
BASELINES = ("mask_prior", "random")
# Variants of a product method, for comparison (name -> method, keyword arguments)
VARIANTS = {
    "gradcam_per_image_input": ("gradcam", {"site": "input", "per_volume": False}),  # before this change
    "gradcam_input": ("gradcam", {"site": "input"}),
}


def all_maps(model, px, tasks, methods) -> dict[str, np.ndarray]:
    """method -> (len(tasks), 55, G, G) token maps (pixel maps pooled to the model's tokens)."""
    out = {}
    for m in methods:
        base, kwargs = VARIANTS.get(m, (m, {}))
        raw = method_maps(model, px, tasks, base, **kwargs)
        out[m] = np.stack([token_grid(r, model.patch_size) for r in raw])
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


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


@torch.no_grad()
def deletion_auc(model, px, twin_px, task: int, order: np.ndarray, steps: int = 10) -> float:
    """Area under the probability curve while tokens (flat indices into the model's 55 x G x G) take
    the normal twin's content in ``order``, 0..100 % in ``steps`` steps, all steps as one batch."""
    p = int(model.patch_size)
    grid = grid_shape(p)
    xs = []
    for s in range(steps + 1):
        x = px[0].clone()
        for flat in order[: int(round(order.size * s / steps))]:
            img, r, c = np.unravel_index(int(flat), grid)
            rows, cols = slice(p * r, p * r + p), slice(p * c, p * c + p)
            x[img, :, rows, cols] = twin_px[0, img, :, rows, cols]
        xs.append(x)
    batch = torch.stack(xs)
    probs = torch.sigmoid(model(batch, torch.full((len(xs),), task), paired=True).float()).numpy()
    return float(np.trapezoid(probs, dx=1 / steps))


# ----------------------------------------------------------------------------------- cases
class Case:
    """One (scan, finding) with its ground truth in the token frame and each method's map."""

    def __init__(self, kind, seed, fid, prob, threshold, hits, frac, maps, side=None, columns=None):
        self.kind, self.seed, self.fid = kind, seed, fid
        self.prob, self.detected = float(prob), bool(prob >= threshold)
        self.hits, self.frac, self.maps = hits, frac, maps
        self.side, self.columns = side, columns
        self.deletion: dict[str, float] = {}
        self.px = self.twin_px = None  # kept until the prior baseline's deletion curve is drawn


def summarise(values) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), 3) if v else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder (default: embedded demo)")
    ap.add_argument("--seed", type=int, default=9_100_000, help="first seed (never used in training)")
    ap.add_argument("--random", type=int, default=40, help="random phantoms for (c) and (d)")
    ap.add_argument("--pairs", type=int, default=4, help="counterfactual pairs per finding for (b)")
    ap.add_argument("--laterality", type=int, default=8, help="one-sided cases per finding for (a)")
    ap.add_argument("--matrix", type=int, default=192)
    ap.add_argument("--dilate-mm", type=float, default=20.0)
    ap.add_argument("--methods", default="attention,token_gradient,gradcam,input_x_gradient")
    ap.add_argument("--reference-methods", default="integrated_gradients,occlusion")
    ap.add_argument(
        "--reference-cases",
        type=int,
        default=25,
        help="counterfactual cases that also get the reference methods",
    )
    ap.add_argument(
        "--deletion-per-finding",
        type=int,
        default=2,
        help="counterfactual cases per finding with deletion curves",
    )
    ap.add_argument("--sanity-cases", type=int, default=20)
    ap.add_argument("--findings", help="comma-separated finding ids for (a) and (b) (default: all)")
    ap.add_argument(
        "--deletion-methods",
        default="attention,token_gradient,gradcam",
        help="methods whose deletion curves are drawn (besides the random order and the mask prior)",
    )
    ap.add_argument("--out")
    args = ap.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    loaded = load_model(args.model, device="cpu")
    model = loaded.model
    patch = int(model.patch_size)
    thresholds = loaded.thresholds
    cat = catalogue()
    methods = [m for m in args.methods.split(",") if m]
    ref_methods = [m for m in args.reference_methods.split(",") if m]
    for m in methods + ref_methods:
        if m not in METHODS and m not in VARIANTS:
            sys.exit(f"unknown method {m!r}; choose from {', '.join([*METHODS, *VARIANTS])}")
    t0 = time.time()
    seconds = defaultdict(float)
    calls = defaultdict(int)
    cases: list[Case] = []
    seed = args.seed

    def log(msg):
        print(f"[{time.time() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    def timed_maps(px, tasks, meths):
        out = {}
        for m in meths:
            t = time.perf_counter()
            out.update(all_maps(model, px, tasks, [m]))
            seconds[m] += time.perf_counter() - t
            calls[m] += 1
        return out

    def probs_of(px, tasks):
        with torch.no_grad():
            return torch.sigmoid(model(px, torch.tensor(tasks)).float()).numpy()[0]

    # (b) counterfactual pairs: every finding, same patient with / without it
    n_ref = 0
    deletion_done = defaultdict(int)
    chosen = [f for f in args.findings.split(",") if f] if args.findings else cat.ids
    deletion_methods = [m for m in args.deletion_methods.split(",") if m]
    for fid in chosen:
        task = cat.index(fid)
        for p in range(args.pairs):
            s = seed
            seed += 1
            les = generate(s, [fid], matrix=args.matrix)
            if fid not in les.masks or not les.masks[fid].any():
                continue
            twin = generate(s, {}, matrix=args.matrix)
            px = preprocess(les.volume).pixel_values[None]
            prob = probs_of(px, [task])[0]
            meths = methods + (ref_methods if n_ref < args.reference_cases and p == 0 else [])
            n_ref += int(len(meths) > len(methods))
            maps = {m: v[0] for m, v in timed_maps(px, [task], meths).items()}
            mask = les.masks[fid]
            c = Case(
                "pair",
                s,
                fid,
                prob,
                thresholds[task],
                hit_table(mask, les.volume.spacing, args.dilate_mm, patch),
                token_fraction(mask, patch),
                maps,
            )
            if deletion_done[fid] < args.deletion_per_finding:
                deletion_done[fid] += 1
                twin_px = preprocess(twin.volume).pixel_values[None]
                for m in deletion_methods:
                    if m in maps:
                        order = np.argsort(-maps[m].ravel(), kind="stable")
                        c.deletion[m] = deletion_auc(model, px, twin_px, task, order)
                c.deletion["random"] = deletion_auc(
                    model, px, twin_px, task, rng.permutation(int(np.prod(grid_shape(patch))))
                )
                c.px, c.twin_px = px, twin_px
            cases.append(c)
        log(f"counterfactual {fid}: {sum(1 for c in cases if c.fid == fid)} pairs")

    # (a) laterality: one-sided draws of the one-sided findings
    for fid in [f for f in ONE_SIDED if f in chosen]:
        task = cat.index(fid)
        got = 0
        tries = 0
        while got < args.laterality and tries < args.laterality * 3:
            tries += 1
            s = seed
            seed += 1
            for variant in range(3):
                ph = generate(s, [fid], matrix=args.matrix, lesion_variant=variant)
                side = lesion_side(ph.masks[fid], ph.volume)
                drawn = ph.info.get(fid, {}).get("sides")
                if side is not None and drawn is not None and len(drawn) == 1 and [side] != drawn:
                    sys.exit(f"orientation bug: the generator drew {drawn}, the benchmark measured {side}")
                if side is not None:
                    break
            if side is None:
                continue
            px = preprocess(ph.volume).pixel_values[None]
            prob = probs_of(px, [task])[0]
            maps = {m: v[0] for m, v in timed_maps(px, [task], methods).items()}
            mask = ph.masks[fid]
            cases.append(
                Case(
                    "side",
                    s,
                    fid,
                    prob,
                    thresholds[task],
                    hit_table(mask, ph.volume.spacing, args.dilate_mm, patch),
                    token_fraction(mask, patch),
                    maps,
                    side=side,
                    columns=side_columns(ph.volume, patch),
                )
            )
            got += 1
        log(f"laterality {fid}: {got} one-sided cases")

    # (c, d) random phantoms: every present finding
    sanity = defaultdict(lambda: defaultdict(list))
    rand_model = randomised_hypernet(model, 1)
    perm_model = permuted_tasks(model, 2)
    for n in range(args.random):
        s = seed
        seed += 1
        ph = generate(s, matrix=args.matrix)
        present = [fid for fid in ph.present if fid in ph.masks and ph.masks[fid].any()]
        if not present:
            continue
        px = preprocess(ph.volume).pixel_values[None]
        tasks = cat.indices(present)
        probs = probs_of(px, tasks)
        maps = timed_maps(px, tasks, methods)
        for idx, (fid, task) in enumerate(zip(present, tasks)):
            mask = ph.masks[fid]
            cases.append(
                Case(
                    "random",
                    s,
                    fid,
                    probs[idx],
                    thresholds[task],
                    hit_table(mask, ph.volume.spacing, args.dilate_mm, patch),
                    token_fraction(mask, patch),
                    {m: v[idx] for m, v in maps.items()},
                )
            )
        if n < args.sanity_cases:
            for m in methods:
                mr = all_maps(rand_model, px, tasks, [m])[m]
                mp = all_maps(perm_model, px, tasks, [m])[m]
                for idx in range(len(tasks)):
                    if maps[m][idx].max() > 0:
                        sanity[m]["randomised_hypernetwork"].append(spearman(maps[m][idx], mr[idx]))
                        sanity[m]["permuted_task_embeddings"].append(spearman(maps[m][idx], mp[idx]))
        log(f"random phantom {n + 1}/{args.random}: {len(present)} findings")

    # scan-ignoring baselines: the finding's mean token mask over the OTHER cases; a random map
    by_fid = defaultdict(list)
    for c in cases:
        by_fid[c.fid].append(c)
    for fid, cs in by_fid.items():
        total = sum(c.frac for c in cs)
        for c in cs:
            prior = (total - c.frac) / max(1, len(cs) - 1)
            c.maps["mask_prior"] = prior
            c.maps["random"] = rng.random(grid_shape(patch)).astype(np.float32)
            if c.twin_px is not None:
                order = np.argsort(-prior.ravel(), kind="stable")
                c.deletion["mask_prior"] = deletion_auc(model, c.px, c.twin_px, cat.index(fid), order)
                c.px = c.twin_px = None

    all_methods = methods + ref_methods + list(BASELINES)

    def hit(c, m):
        return bool(c.hits[peak_token(c.maps[m])]) if m in c.maps else None

    def energy(c, m):
        if m not in c.maps:
            return None
        mp = np.maximum(c.maps[m], 0)
        if mp.sum() <= 0 or c.frac.mean() <= 0:
            return None
        return float((mp * c.frac).sum() / mp.sum() / c.frac.mean())

    def other_hit(c, m):
        others = [o for o in by_fid[c.fid] if o is not c and o.seed != c.seed][:10]
        if m not in c.maps or not others:
            return None
        tok = peak_token(c.maps[m])
        return float(np.mean([o.hits[tok] for o in others]))

    def side_ok(c, m):  # a peak in the midline column is not on the lesion's side
        return c.columns[peak_token(c.maps[m])[2]] == c.side

    def side_share(c, m):  # of the map's energy left or right of the midline, the lesion side's share
        return lateral_share(c.maps[m], c.columns, c.side)

    per_method = {}
    per_finding = defaultdict(dict)
    for m in all_methods:
        pair = [c for c in cases if c.kind == "pair" and m in c.maps]
        side = [c for c in cases if c.kind == "side" and c.detected and m in c.maps]
        side_eff = [c for c in side if c.fid == "pleural_effusion"]
        rnd = [c for c in cases if c.kind == "random" and m in c.maps]
        own_other = [(hit(c, m), other_hit(c, m)) for c in rnd + pair]
        own_other = [(a, b) for a, b in own_other if b is not None]
        dele = [(c.deletion[m], c.deletion["random"]) for c in pair if m in c.deletion]
        per_method[m] = {
            "counterfactual_peak_in_lesion": summarise(hit(c, m) for c in pair),
            "counterfactual_cases": len(pair),
            "counterfactual_peak_in_lesion_detected": summarise(hit(c, m) for c in pair if c.detected),
            "counterfactual_detected_cases": sum(c.detected for c in pair),
            "laterality_peak_on_lesion_side": summarise(side_ok(c, m) for c in side),
            "laterality_share_on_lesion_side": summarise(side_share(c, m) for c in side),
            "laterality_detected_cases": len(side),
            "laterality_effusion_peak_on_side": summarise(side_ok(c, m) for c in side_eff),
            "laterality_effusion_cases": len(side_eff),
            "own_mask_hit": summarise(a for a, _ in own_other),
            "other_patients_mask_hit": summarise(b for _, b in own_other),
            "deletion_auc_twin": summarise(a for a, _ in dele),
            "deletion_auc_random_order": summarise(b for _, b in dele),
            "deletion_below_random_fraction": summarise(a < b for a, b in dele),
            "deletion_cases": len(dele),
            "pointing_true_positives": summarise(hit(c, m) for c in rnd if c.detected),
            "pointing_all_positives": summarise(hit(c, m) for c in rnd),
            "pointing_focal_all_positives": summarise(hit(c, m) for c in rnd if c.fid in FOCAL),
            "pointing_nonfocal_all_positives": summarise(hit(c, m) for c in rnd if c.fid not in FOCAL),
            "energy_in_mask_vs_uniform_median": round(
                float(np.median([e for e in (energy(c, m) for c in rnd) if e is not None])), 2
            )
            if rnd
            else None,
            "seconds_per_scan": round(seconds[m] / calls[m], 3) if calls[m] else None,
        }
        if m in sanity:
            per_method[m]["sanity_spearman_randomised_hypernetwork"] = summarise(
                sanity[m]["randomised_hypernetwork"]
            )
            per_method[m]["sanity_spearman_permuted_task_embeddings"] = summarise(
                sanity[m]["permuted_task_embeddings"]
            )
        for fid, cs in by_fid.items():
            pc = [c for c in cs if c.kind == "pair" and m in c.maps]
            rc = [c for c in cs if c.kind == "random" and m in c.maps]
            sc = [c for c in cs if c.kind == "side" and c.detected and m in c.maps]
            per_finding[fid][m] = {
                "counterfactual_peak_in_lesion": summarise(hit(c, m) for c in pc),
                "pointing_true_positives": summarise(hit(c, m) for c in rc if c.detected),
                "pointing_all_positives": summarise(hit(c, m) for c in rc),
                **({"laterality_peak_on_lesion_side": summarise(side_ok(c, m) for c in sc)} if sc else {}),
            }
    for fid, cs in by_fid.items():
        per_finding[fid]["cases"] = {
            "counterfactual": sum(c.kind == "pair" for c in cs),
            "counterfactual_detected": sum(c.kind == "pair" and c.detected for c in cs),
            "random_positives": sum(c.kind == "random" for c in cs),
            "random_true_positives": sum(c.kind == "random" and c.detected for c in cs),
            "laterality_detected": sum(c.kind == "side" and c.detected for c in cs),
            "mean_probability_counterfactual": summarise(c.prob for c in cs if c.kind == "pair"),
            "focal": fid in FOCAL,
        }

    result = {
        "benchmark": "saliency_quality",
        "model": f"{loaded.name} v{loaded.version}",
        "weights_sha256": loaded.weights_sha256,
        "first_seed": args.seed,
        "last_seed": seed - 1,
        "matrix": args.matrix,
        "dilate_mm": args.dilate_mm,
        "methods": methods,
        "reference_methods": ref_methods,
        "baselines": list(BASELINES),
        "cases": {k: sum(c.kind == k for c in cases) for k in ("pair", "side", "random")},
        "seconds": round(time.time() - t0, 1),
        "per_method": per_method,
        "per_finding": {fid: per_finding[fid] for fid in cat.ids if fid in per_finding},
    }
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
