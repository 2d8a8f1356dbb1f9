"""``hyperct info``: the model card of a checkpoint (default: the embedded demo) and the device."""

from __future__ import annotations

import argparse
import json

from hyperct.cli.common import UsageError, add_model_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="print the model card (names, parameter counts, manifest, device)",
        description="Print the model card of a HyperCT checkpoint (default: the embedded demo model).",
    )
    add_model_args(p)
    p.add_argument(
        "--config",
        choices=["demo", "vitb16"],
        help="describe an untrained architecture instead of a checkpoint",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--embeddings",
        metavar="OUT_DIR",
        help="also write the task-embedding figures and matrices to OUT_DIR",
    )
    return p


def _fmt_count(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)"


def card(args: argparse.Namespace, loaded=None) -> dict:
    import torch

    from hyperct.device import resolve_device
    from hyperct.loading import load_model
    from hyperct.network import HyperCT, HyperCTConfig

    device = resolve_device(args.device)
    if args.config:
        from hyperct.network.backbone import config_to_dict

        model = HyperCT(HyperCTConfig(backbone=args.config))
        arch = dict(model.config.to_dict(), backbone=config_to_dict(model.backbone.config))
        return {
            "model_name": f"HyperCT ({args.config} architecture, untrained)",
            "architecture": arch,
            "backbone": {
                "weights": "random initialisation",
                "source": f"named configuration '{args.config}'",
                "trained": False,
            },
            "parameters": model.parameter_counts(),
            "device": str(device),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        }
    loaded = loaded or load_model(args.model, backbone_dir=args.backbone, device=device)
    raw = loaded.manifest.raw
    return {
        "model_name": loaded.name,
        "model_version": loaded.version,
        "demo": loaded.is_demo,
        "directory": str(loaded.directory),
        "weights_sha256": loaded.weights_sha256,
        "backbone": raw.get("backbone"),
        "architecture": raw.get("architecture"),
        "parameters": loaded.model.parameter_counts(),
        "findings": len(raw["findings"]),
        "thresholds": raw.get("thresholds"),
        "threshold_method": raw.get("threshold_method"),
        "training": raw.get("training"),
        "training_data": raw.get("training_data"),
        "metrics": raw.get("metrics"),
        "intended_use": raw.get("intended_use"),
        "created": raw.get("created"),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def run(args: argparse.Namespace) -> int:
    loaded = None
    if args.embeddings:
        if args.config:
            raise UsageError("--embeddings needs a trained checkpoint, not --config")
        from hyperct.loading import load_model

        loaded = load_model(args.model, backbone_dir=args.backbone, device=args.device)
    info = card(args, loaded)
    if args.embeddings:
        from hyperct.embeddings import write_embedding_report

        written = write_embedding_report(loaded, args.embeddings)
        info["embeddings_written"] = [str(p) for p in written]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    counts = info["parameters"]
    arch = info.get("architecture") or {}
    bb = arch.get("backbone")
    lines = [
        f"Model:        {info['model_name']}"
        + (f"  v{info['model_version']}" if info.get("model_version") else "")
    ]
    if info.get("demo"):
        lines.append(
            "              DEMO model trained on synthetic phantoms: no clinical validity, not a medical device."
        )
    if info.get("directory"):
        lines.append(f"Checkpoint:   {info['directory']}")
        lines.append(f"Weights:      sha256 {info['weights_sha256']}")
    if isinstance(bb, dict):
        lines.append(
            f"Backbone:     DINOv3 ViT  D={bb['hidden_size']}  layers={bb['num_hidden_layers']}  heads={bb['num_attention_heads']}"
            f"  MLP={bb['intermediate_size']}  patch={bb['patch_size']}  registers={bb['num_register_tokens']}"
        )
        if bb.get("hu_windows"):
            shown = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in bb["hu_windows"])
            lines.append(f"              HU windows before the patch embedding: {shown} HU")
        if bb.get("conv_stem"):
            lines.append(f"              conv stem beside the patch embedding: width {bb['conv_stem']}")
    else:
        lines.append(f"Backbone:     DINOv3 ViT configuration '{bb}'")
    if info.get("backbone"):
        b = info["backbone"]
        lines.append(
            f"              weights {b.get('weights')} ({b.get('source')}); trained: {b.get('trained')}"
        )
    lines.append(
        f"Hypernetwork: task embeddings {arch.get('n_tasks')} x {arch.get('task_dim')}, module indicator {arch.get('pos_dim')}, "
        f"3-layer MLP d_h={arch.get('hyper_hidden')}, LoRA r={arch.get('rank')} alpha={arch.get('alpha')} on {', '.join(arch.get('targets', []))}"
    )
    lines.append("Parameters:")
    for key in ("backbone", "hypernetwork", "head", "trainable", "total"):
        lines.append(f"  {key:<14}{_fmt_count(counts[key])}")
    for key, label in (
        ("training_data", "Training data"),
        ("threshold_method", "Thresholds"),
        ("intended_use", "Intended use"),
        ("created", "Created"),
    ):
        if info.get(key):
            lines.append(f"{label + ':':<14}{info[key]}")
    if info.get("metrics"):
        lines.append("Metrics:      " + json.dumps(info["metrics"].get("summary", info["metrics"]))[:400])
    lines.append(f"Device:       {info['device']}" + (f" ({info['cuda']})" if info.get("cuda") else ""))
    print("\n".join(lines))
    return 0
