"""DINOv3 ViT backbone: named configurations, and loading users' weights from a local HF folder.

Weights are only ever read from a local directory holding ``config.json`` + ``model.safetensors``
(the layout of the official DINOv3 ViT-B/16 release). Nothing is downloaded. The loader checks
every tensor's presence and shape and names what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from hyperct.errors import BackboneWeightsError
from hyperct.filemodes import set_default_modes
from hyperct.network.conv_stem import check_stem_width
from hyperct.network.windows import check_windows, install_windows

# The paper's backbone: DINOv3 ViT-B/16 (D=768, 12 layers, 12 heads, MLP 3072, 4 registers).
# image_size only sets the reference grid of the RoPE embedding; inputs are 144x144 (9x9 patches).
_VITB16 = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_register_tokens=4,
    patch_size=16,
    image_size=224,
    num_channels=3,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    layerscale_value=1.0,
    rope_theta=100.0,
    query_bias=True,
    key_bias=False,
    value_bias=True,
    proj_bias=True,
    mlp_bias=True,
    use_gated_mlp=False,
    drop_path_rate=0.0,
)

# Same structure, small enough to score 25 findings x 55 images on a laptop CPU.
_DEMO = dict(_VITB16, hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=3)

BACKBONE_CONFIGS: dict[str, dict] = {"vitb16": _VITB16, "demo": _DEMO}

INPUT_SIZE = 144  # pixels; 144 / 16 = 9 x 9 patches


def backbone_config(name_or_dict: str | dict) -> DINOv3ViTConfig:
    """A ``DINOv3ViTConfig`` from a named configuration or a config dict. A dict may name a
    ``base`` configuration that its other fields change (``{base: demo, hidden_size: 192,
    intermediate_size: 768}``: the demo backbone twice as wide); without one, the fields it leaves
    out take transformers' DINOv3 defaults."""
    if isinstance(name_or_dict, str):
        name_or_dict = {"base": name_or_dict}
    values = {k: v for k, v in name_or_dict.items() if not k.startswith("_")}
    if "base" in values:
        base = values.pop("base")
        if not isinstance(base, str) or base not in BACKBONE_CONFIGS:
            raise BackboneWeightsError(
                f"unknown backbone configuration {base!r}",
                hint=f"use one of {', '.join(BACKBONE_CONFIGS)} or a folder with config.json",
            )
        values = dict(BACKBONE_CONFIGS[base], **values)
    values.pop("model_type", None)
    values.pop("architectures", None)
    values.pop("transformers_version", None)
    values.pop("torch_dtype", None)
    values.pop("dtype", None)
    if values.get("hu_windows"):
        try:
            values["hu_windows"] = [list(w) for w in check_windows(values["hu_windows"])]
        except ValueError as exc:
            raise BackboneWeightsError(str(exc), hint="hu_windows: a list of [lo, hi] HU pairs") from None
    else:
        values.pop("hu_windows", None)
    if values.get("conv_stem") is not None:
        try:
            check_stem_width(values["conv_stem"], int(values.get("patch_size", _VITB16["patch_size"])))
        except (TypeError, ValueError) as exc:
            raise BackboneWeightsError(str(exc), hint="conv_stem: the stem's first width, e.g. 16") from None
        if not values.get("hu_windows"):
            raise BackboneWeightsError(
                "conv_stem needs hu_windows (the stem reads the windowed input)",
                hint="give the backbone hu_windows, or drop conv_stem",
            )
    else:
        values.pop("conv_stem", None)
    cfg = DINOv3ViTConfig(**values)
    cfg._attn_implementation = "sdpa"
    return cfg


def config_to_dict(cfg: DINOv3ViTConfig) -> dict:
    """The structural fields of a backbone config (what the checkpoint manifest records); with
    ``hu_windows`` only where the backbone has them (``hyperct.network.windows``)."""
    out = {k: getattr(cfg, k) for k in _VITB16}
    if getattr(cfg, "hu_windows", None):
        out["hu_windows"] = [list(w) for w in cfg.hu_windows]
    if getattr(cfg, "conv_stem", None):
        out["conv_stem"] = int(cfg.conv_stem)
    return out


def build_backbone(config: str | dict | DINOv3ViTConfig, *, seed: int | None = None) -> DINOv3ViTModel:
    """A randomly initialised backbone (deterministic when ``seed`` is given)."""
    cfg = config if isinstance(config, DINOv3ViTConfig) else backbone_config(config)
    cfg._attn_implementation = "sdpa"
    windows = getattr(cfg, "hu_windows", None)

    def build() -> DINOv3ViTModel:
        model = DINOv3ViTModel(cfg)
        if windows:
            install_windows(model, windows, getattr(cfg, "conv_stem", None))
        return model

    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build()
    else:
        model = build()
    return model.eval()


def deepen_backbone(
    backbone: DINOv3ViTModel, extra_layers: int, *, seed: int | None = None
) -> DINOv3ViTModel:
    """A copy of ``backbone`` with ``extra_layers`` more transformer blocks after its last one, each
    starting as the identity (both layer scales 0), so the deeper network computes exactly what the
    trained one does and training goes on from there (the new blocks' other weights are initialised
    as ``build_backbone`` does, deterministically when ``seed`` is given)."""
    if extra_layers < 1:
        raise ValueError(f"extra_layers must be >= 1, got {extra_layers}")
    values = config_to_dict(backbone.config)
    n = int(values["num_hidden_layers"])
    deeper = build_backbone(dict(values, num_hidden_layers=n + extra_layers), seed=seed)
    missing, unexpected = deeper.load_state_dict(backbone.state_dict(), strict=False)
    old = [k for k in missing if not (k.startswith("model.layer.") and int(k.split(".")[2]) >= n)]
    if unexpected or old:
        raise ValueError(f"cannot deepen this backbone: unexpected {unexpected}, missing {old}")
    with torch.no_grad():
        for layer in list(encoder_layers(deeper))[n:]:
            layer.layer_scale1.lambda1.zero_()
            layer.layer_scale2.lambda1.zero_()
    return deeper.train(backbone.training)


def repatch_backbone(backbone: DINOv3ViTModel, patch_size: int) -> DINOv3ViTModel:
    """A copy of ``backbone`` with a smaller patch (``patch_size`` dividing its own) that starts as the
    trained one looking at the image magnified by ``patch / patch_size``: every new kernel weight is
    the sum of the block of old weights it covers, so a patch-8 token of an image is exactly the
    patch-16 token of that image upsampled 2x (nearest); the RoPE positions are relative to the
    token grid, so the whole network computes on the image what the old one computed on the
    upsampled image. Small findings then cover 4x as many pixels of a token (issue 18,
    ``benchmarks/finding_contrast.py``: a calcification's mean change per token 3-4 HU at patch 16,
    7-9 at patch 8; medical material 14 -> 33)."""
    values = config_to_dict(backbone.config)
    old = int(values["patch_size"])
    if patch_size < 1 or patch_size >= old or old % patch_size:
        raise ValueError(f"patch size {patch_size}: must be smaller than {old} and divide it")
    f = old // patch_size
    smaller = build_backbone(dict(values, patch_size=patch_size))
    state = {k: v for k, v in backbone.state_dict().items() if not k.endswith("inv_freq")}
    key = next(k for k in state if k.endswith("patch_embeddings.weight"))
    w = state[key]  # (D, C, old, old)
    state[key] = w.reshape(*w.shape[:2], patch_size, f, patch_size, f).sum(dim=(3, 5))
    missing, unexpected = smaller.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("inv_freq")]:
        raise ValueError(f"cannot repatch this backbone: unexpected {unexpected}, missing {missing}")
    return smaller.train(backbone.training)


def encoder_layers(backbone: DINOv3ViTModel) -> torch.nn.ModuleList:
    """The transformer blocks (``model.layer`` in transformers >= 5, ``layer`` before)."""
    inner = getattr(backbone, "model", None)
    if inner is not None and hasattr(inner, "layer"):
        return inner.layer
    return backbone.layer


def _canonical_key(key: str) -> str:
    """Map a tensor name from any DINOv3 HF export to our module's own name."""
    for prefix in ("dinov3.", "backbone.", "vit."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    if key.startswith("layer."):
        key = "model." + key
    return key


def _official_key(key: str) -> str:
    """Our module name -> the tensor name used in the official DINOv3 HF files."""
    return key[len("model.") :] if key.startswith("model.layer.") else key


def backbone_state_for_saving(model: DINOv3ViTModel) -> dict[str, torch.Tensor]:
    return {
        _official_key(k): v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not k.endswith("inv_freq")
    }


def save_backbone(model: DINOv3ViTModel, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the official DINOv3 HF layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(config_to_dict(model.config))
    cfg.update({"model_type": "dinov3_vit", "architectures": ["DINOv3ViTModel"]})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file(
        backbone_state_for_saving(model), str(directory / "model.safetensors"), metadata={"format": "pt"}
    )
    set_default_modes(directory / "model.safetensors")  # safetensors writes 0600
    return directory


def load_backbone_state(model: DINOv3ViTModel, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy ``tensors`` (official or our names) into ``model``, checking completeness and shapes."""
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
    given = {_canonical_key(k): v for k, v in tensors.items()}
    missing = sorted(set(expected) - set(given))
    if missing:
        shown = ", ".join(_official_key(m) for m in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise BackboneWeightsError(
            f"backbone weights are missing {len(missing)} tensor(s): {shown}{more}",
            path=source,
            hint="use the complete model.safetensors of a DINOv3 ViT release matching config.json",
        )
    for name, ref in expected.items():
        if tuple(given[name].shape) != tuple(ref.shape):
            raise BackboneWeightsError(
                f"tensor {_official_key(name)} has shape {tuple(given[name].shape)}, "
                f"config.json implies {tuple(ref.shape)}",
                path=source,
                hint="config.json and model.safetensors come from different models",
            )
    with torch.no_grad():
        model.load_state_dict({k: given[k] for k in expected}, strict=False)


def load_backbone(directory: str | Path) -> DINOv3ViTModel:
    """Load a DINOv3 ViT from a local HF-format folder (``config.json`` + ``model.safetensors``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BackboneWeightsError(
            "backbone folder does not exist",
            path=directory,
            hint="pass the local folder of a DINOv3 ViT (config.json + model.safetensors); nothing is downloaded",
        )
    cfg_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise BackboneWeightsError(
                f"{p.name} is missing from the backbone folder",
                path=directory,
                hint="a DINOv3 backbone folder holds config.json and model.safetensors (Hugging Face layout)",
            )
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BackboneWeightsError(f"config.json is not valid JSON ({exc})", path=cfg_path) from exc
    if raw.get("model_type", "dinov3_vit") != "dinov3_vit":
        raise BackboneWeightsError(
            f"config.json describes a {raw.get('model_type')!r} model, not a DINOv3 ViT ('dinov3_vit')",
            path=cfg_path,
        )
    try:
        cfg = backbone_config(raw)
    except BackboneWeightsError as exc:
        raise BackboneWeightsError(exc.cause, path=cfg_path, hint=exc.hint) from None
    except (TypeError, ValueError) as exc:
        raise BackboneWeightsError(f"config.json cannot be used: {exc}", path=cfg_path) from exc
    model = build_backbone(cfg)
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise BackboneWeightsError(
            f"model.safetensors cannot be read ({exc})", path=weights_path, hint="re-copy the file"
        ) from exc
    load_backbone_state(model, tensors, source=str(weights_path))
    return model.eval()


def count_parameters(module: torch.nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
