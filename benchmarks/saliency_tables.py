"""Markdown tables of a ``bench_saliency.py`` JSON (for the model card).

python benchmarks/saliency_tables.py benchmarks/results/saliency_demo.json
"""

from __future__ import annotations

import argparse
import json

ROWS = [
    ("laterality_effusion_peak_on_side", "(a) peak on the effusion's side, detected one-sided effusions"),
    ("laterality_peak_on_lesion_side", "(a) peak on the lesion's side, all detected one-sided findings"),
    ("laterality_share_on_lesion_side", "(a) share of the lateral map on the lesion's side"),
    ("counterfactual_peak_in_lesion", "(b) counterfactual: peak within 20 mm of the lesion, all pairs"),
    ("counterfactual_peak_in_lesion_detected", "(b) the same, pairs the model detects"),
    ("deletion_auc_twin", "(b) deletion AUC, tokens replaced by the normal twin (lower is better)"),
    ("deletion_auc_random_order", "(b) the same cases, random order"),
    ("own_mask_hit", "(c) peak hits its own patient's mask"),
    ("other_patients_mask_hit", "(c) the same peak hits other patients' masks"),
    ("pointing_true_positives", "(d) pointing game, true positives"),
    ("pointing_all_positives", "(d) pointing game, all positives"),
    ("pointing_focal_all_positives", "(d) pointing game, focal findings"),
    ("pointing_nonfocal_all_positives", "(d) pointing game, non-focal findings"),
    ("energy_in_mask_vs_uniform_median", "(d) energy in mask / uniform, median"),
    ("sanity_spearman_randomised_hypernetwork", "Spearman vs randomised hypernetwork"),
    ("sanity_spearman_permuted_task_embeddings", "Spearman vs permuted task embeddings"),
    ("seconds_per_scan", "seconds per scan (these findings, 2 CPU cores, shared)"),
]


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def main(path: str) -> None:
    d = json.load(open(path))
    methods = list(d["per_method"])
    print("| measure | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for key, label in ROWS:
        vals = [d["per_method"][m].get(key) for m in methods]
        if all(v is None for v in vals):
            continue
        print(f"| {label} | " + " | ".join(fmt(v) for v in vals) + " |")
    print()
    print("Counterfactual peak within 20 mm of the lesion, per finding (pairs / detected):")
    print()
    print("| finding | pairs | detected | " + " | ".join(methods) + " |")
    print("|---|---:|---:|" + "---:|" * len(methods))
    for fid, v in d["per_finding"].items():
        c = v["cases"]
        if not c["counterfactual"]:
            continue
        vals = [v.get(m, {}).get("counterfactual_peak_in_lesion") for m in methods]
        print(
            f"| {fid} | {c['counterfactual']} | {c['counterfactual_detected']} | "
            + " | ".join(fmt(x) for x in vals)
            + " |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", help="a bench_saliency.py JSON")
    main(parser.parse_args().result)
