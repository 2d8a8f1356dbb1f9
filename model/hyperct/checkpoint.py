"""HyperCT checkpoints: a folder with ``model.safetensors`` + ``manifest.json``. Loading never unpickles.

``manifest.json`` (format_version 1) records: model name and version, the findings (task order),
the architecture (``HyperCTConfig`` incl. the backbone configuration), where the backbone weights
come from (``included`` in this folder's safetensors, or ``external``: a DINOv3 folder the user
passes, with its sha256 when known), training hyperparameters, per-finding thresholds, the
training-data description, metrics, intended use, and the sha256 of ``model.safetensors``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hyperct import INTENDED_USE, __version__
from hyperct.atomic import replace_file, replacing_folder
from hyperct.errors import BackboneWeightsError, CheckpointError
from hyperct.findings import NUM_FINDINGS, catalogue
from hyperct.network.backbone import (
    BACKBONE_CONFIGS,
    _canonical_key,
    backbone_config,
    build_backbone,
    config_to_dict,
    load_backbone,
    load_backbone_state,
)
from hyperct.network.hyperct import HyperCT, HyperCTConfig
from hyperct.network.lora import LORA_TARGETS

FORMAT = "hyperct-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    """The parsed ``manifest.json`` (``raw`` keeps every field, including unknown ones)."""

    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.raw.get("model_name", "HyperCT")

    @property
    def version(self) -> str:
        return str(self.raw.get("model_version", "0"))

    @property
    def findings(self) -> list[str]:
        return list(self.raw["findings"])

    @property
    def thresholds(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.raw.get("thresholds") or {}).items()}

    @property
    def high_specificity_findings(self) -> list[str]:
        """The findings whose threshold was set for high specificity because the calibration data did
        not show the model detecting them (``threshold_calibration.high_specificity.findings``,
        written by ``hyperct evaluate --write-thresholds``); only known finding ids, [] when absent
        or malformed (the manifest is untrusted input and this is advisory)."""
        cal = self.raw.get("threshold_calibration")
        block = cal.get("high_specificity") if isinstance(cal, dict) else None
        ids = block.get("findings") if isinstance(block, dict) else None
        if not isinstance(ids, list):
            return []
        known = set(catalogue().ids)
        return [x for x in ids if isinstance(x, str) and x in known]

    @property
    def weights_sha256(self) -> str:
        return self.raw["weights_sha256"]

    @property
    def architecture(self) -> HyperCTConfig:
        arch = dict(self.raw["architecture"])
        if isinstance(arch.get("backbone"), dict):  # 100 -> 100.0: transformers' config refuses ints
            arch["backbone"] = {
                k: float(v) if k in _FLOAT_FIELDS and isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in arch["backbone"].items()
            }
        return HyperCTConfig.from_dict(arch)

    @property
    def backbone(self) -> dict:
        return dict(self.raw.get("backbone") or {})


def build_manifest(
    model: HyperCT,
    *,
    model_name: str,
    model_version: str,
    backbone_weights: str,
    backbone_source: str,
    thresholds: dict[str, float] | None = None,
    threshold_method: str = "default 0.5 (not calibrated)",
    training: dict | None = None,
    training_data: str = "",
    metrics: dict | None = None,
    intended_use: str = INTENDED_USE,
    backbone_sha256: str | None = None,
    extra: dict | None = None,
) -> dict:
    ids = catalogue().ids
    arch = model.config.to_dict()
    arch["backbone"] = config_to_dict(model.backbone.config)
    backbone_name = model.config.backbone if isinstance(model.config.backbone, str) else None
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_version": model_version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {"name": "hyperct-viewer", "version": __version__},
        "findings": ids,
        "catalogue_version": catalogue().version,
        "architecture": arch,
        "backbone": {
            "config_name": backbone_name or _guess_config_name(arch["backbone"]),
            "weights": backbone_weights,
            "source": backbone_source,
            "trained": model.backbone_trainable,
            **({"sha256": backbone_sha256} if backbone_sha256 else {}),
        },
        "parameters": model.parameter_counts(),
        "thresholds": {k: float((thresholds or {}).get(k, 0.5)) for k in ids},
        "threshold_method": threshold_method,
        "training": training or {},
        "training_data": training_data,
        "metrics": metrics or {},
        "intended_use": intended_use,
        "weights_file": WEIGHTS,
    }
    if extra:
        manifest.update(extra)
    return manifest


def _guess_config_name(cfg: dict) -> str:
    from hyperct.network.backbone import BACKBONE_CONFIGS

    for name, values in BACKBONE_CONFIGS.items():
        if all(cfg.get(k) == v for k, v in values.items()):
            return name
    return "custom"


def model_tensors(model: HyperCT, *, include_backbone: bool) -> dict[str, torch.Tensor]:
    from hyperct.network.backbone import backbone_state_for_saving

    tensors = {f"hypernet.{k}": v for k, v in model.hypernet.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    if include_backbone:
        tensors.update({f"backbone.{k}": v for k, v in backbone_state_for_saving(model.backbone).items()})
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_checkpoint(
    model: HyperCT,
    directory: str | Path,
    manifest: dict,
    *,
    overwrite: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Write the checkpoint folder atomically (temp folder, then rename). Refuses to overwrite unless asked."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise CheckpointError(
            "the checkpoint folder already exists", path=directory, hint="pass overwrite=True (--overwrite)"
        )
    include_backbone = manifest["backbone"]["weights"] == "included"
    with replacing_folder(directory) as tmp:
        save_file(
            model_tensors(model, include_backbone=include_backbone),
            str(tmp / WEIGHTS),
            metadata={"format": "pt"},
        )
        manifest = dict(manifest, weights_sha256=sha256_file(tmp / WEIGHTS))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for name, content in (extra_files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp / name, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(content)
    return directory


# --- validation: a checkpoint folder is untrusted input ---------------------------------------
#
# Everything in manifest.json is checked for type and range, and the architecture against the
# shapes in the safetensors header, BEFORE anything is allocated from it: a damaged or hostile
# folder gives a CheckpointError (exit status 3), never a traceback, a hang or a memory bomb.

MAX_MANIFEST_BYTES = 8 << 20  # real manifests are ~20 KB
MAX_MANIFEST_DEPTH = 32  # nesting of JSON containers
MAX_TEXT = 20_000  # characters of a free-text field
# DINOv3ViTConfig fields typed float (a strict dataclass: an int there is refused).
_FLOAT_FIELDS = (
    "layer_norm_eps",
    "layerscale_value",
    "rope_theta",
    "initializer_range",
    "pos_embed_shift",
    "pos_embed_jitter",
    "pos_embed_rescale",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_RE_SAVE = "re-copy the checkpoint folder, or save it again with save_checkpoint"

# (min, max) of the integer architecture fields. Generous for the DINOv3 family (ViT-S .. 7B);
# what actually bounds memory is that the weights file must hold tensors of exactly these shapes.
_BACKBONE_INT_RANGES = {
    "hidden_size": (8, 8192),
    "intermediate_size": (8, 32768),
    "num_hidden_layers": (1, 64),
    "num_attention_heads": (1, 128),
    "num_register_tokens": (0, 64),
    "patch_size": (1, 144),
    "image_size": (16, 4096),
    "num_channels": (3, 3),
}
_BACKBONE_BOOLS = ("query_bias", "key_bias", "value_bias", "proj_bias", "mlp_bias", "use_gated_mlp")
_BACKBONE_REALS = {  # name: (low, high, low inclusive)
    "layer_norm_eps": (0.0, 0.1, False),
    "layerscale_value": (-1e3, 1e3, True),
    "rope_theta": (0.0, 1e9, False),
    "drop_path_rate": (0.0, 0.99, True),
}
# Keys a backbone dict may carry besides the structural ones (ignored or training-only).
_BACKBONE_IGNORED = {
    "model_type",
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "attention_dropout",
    "initializer_range",
    "pos_embed_shift",
    "pos_embed_jitter",
    "pos_embed_rescale",
}
_ARCH_INT_RANGES = {
    "n_tasks": (NUM_FINDINGS, NUM_FINDINGS),
    "task_dim": (1, 4096),
    "pos_dim": (2, 1024),
    "hyper_hidden": (1, 4096),
    "rank": (1, 256),
}


def _show(value: Any, limit: int = 40) -> str:
    """A short repr of a manifest value for messages (never a whole hostile payload)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad(field_name: str, problem: str, path: Path) -> CheckpointError:
    return CheckpointError(
        f"{MANIFEST}: {field_name} {problem}",
        path=path,
        hint=f"the manifest is damaged or was edited by hand; {_RE_SAVE}",
    )


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(d: dict, key: str, lo: int, hi: int, where: str, path: Path) -> int:
    if key not in d:
        raise _bad(f"{where}{key}", "is missing", path)
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(f"{where}{key}", f"must be an integer, got {_show(v)}", path)
    if not lo <= v <= hi:
        want = f"{lo}" if lo == hi else f"from {lo} to {hi}"
        raise _bad(f"{where}{key}", f"must be {want}, got {_show(v)}", path)
    return v


def _check_real(v: Any, name: str, lo: float, hi: float, lo_inclusive: bool, path: Path) -> float:
    if not _is_real(v) or not math.isfinite(float(v)):
        raise _bad(name, f"must be a finite number, got {_show(v)}", path)
    ok = (lo <= v if lo_inclusive else lo < v) and v <= hi
    if not ok:
        raise _bad(name, f"must be {'>=' if lo_inclusive else '>'} {lo} and <= {hi}, got {_show(v)}", path)
    return float(v)


def _check_text(raw: dict, key: str, path: Path, *, where: str = "") -> None:
    if key in raw and raw[key] is not None:
        v = raw[key]
        if not isinstance(v, str) or len(v) > MAX_TEXT:
            raise _bad(f"{where}{key}", f"must be text (at most {MAX_TEXT} characters), got {_show(v)}", path)


def _depth_ok(value: Any) -> bool:
    """True when no JSON container is nested deeper than MAX_MANIFEST_DEPTH (iterative)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_MANIFEST_DEPTH:
                return False
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _validate_backbone_arch(bb: Any, path: Path) -> dict:
    """The backbone part of ``architecture``: a named configuration or a dict of checked values."""
    if isinstance(bb, str):
        if bb not in BACKBONE_CONFIGS:
            raise _bad(
                "architecture.backbone",
                f"names an unknown configuration {_show(bb)} (known: {', '.join(BACKBONE_CONFIGS)})",
                path,
            )
        return dict(BACKBONE_CONFIGS[bb])
    if not isinstance(bb, dict):
        raise _bad(
            "architecture.backbone", f"must be a configuration name or an object, got {_show(bb)}", path
        )
    where = "architecture.backbone."
    unknown = sorted(
        k
        for k in bb
        if isinstance(k, str)
        and not k.startswith("_")
        and k not in _BACKBONE_INT_RANGES
        and k not in _BACKBONE_BOOLS
        and k not in _BACKBONE_REALS
        and k not in _BACKBONE_IGNORED
        and k not in ("hidden_act", "hu_windows", "conv_stem")
    )
    if unknown:
        raise _bad(where + _show(unknown[0]), "is not a backbone field this software knows", path)
    for key, (lo, hi) in _BACKBONE_INT_RANGES.items():
        _check_int(bb, key, lo, hi, where, path)
    heads, hidden = bb["num_attention_heads"], bb["hidden_size"]
    if hidden % heads or (hidden // heads) % 4:
        raise _bad(
            where + "hidden_size", f"({hidden}) must be a multiple of 4 x num_attention_heads ({heads})", path
        )
    for key in _BACKBONE_BOOLS:
        if key not in bb or not isinstance(bb[key], bool):
            raise _bad(where + key, f"must be true or false, got {_show(bb.get(key))}", path)
    for key, (lo, hi, inc) in _BACKBONE_REALS.items():
        if key not in bb:
            raise _bad(where + key, "is missing", path)
        _check_real(bb[key], where + key, lo, hi, inc, path)
    from transformers.activations import ACT2FN

    act = bb.get("hidden_act")
    if not isinstance(act, str) or act not in ACT2FN:
        raise _bad(where + "hidden_act", f"must name an activation (e.g. 'gelu'), got {_show(act)}", path)
    if bb.get("hu_windows") is not None:
        from hyperct.network.windows import check_windows

        try:
            check_windows(bb["hu_windows"])
        except ValueError as exc:
            raise _bad(where + "hu_windows", f"is not a list of [lo, hi] HU pairs ({exc})", path) from None
    if bb.get("conv_stem") is not None:
        from hyperct.network.conv_stem import check_stem_width

        try:
            check_stem_width(bb["conv_stem"], bb["patch_size"])
        except ValueError as exc:
            raise _bad(where + "conv_stem", str(exc), path) from None
        if not bb.get("hu_windows"):
            raise _bad(where + "conv_stem", "needs hu_windows (the stem reads the windowed input)", path)
    for key in (
        "attention_dropout",
        "initializer_range",
        "pos_embed_shift",
        "pos_embed_jitter",
        "pos_embed_rescale",
    ):
        if bb.get(key) is not None:
            _check_real(bb[key], where + key, 0.0, 10.0, True, path)
    return {k: v for k, v in bb.items() if k not in ("model_type", "architectures", "transformers_version")}


def _validate_architecture(arch: Any, path: Path) -> None:
    if not isinstance(arch, dict):
        raise _bad("architecture", f"must be an object, got {_show(arch)}", path)
    for key, (lo, hi) in _ARCH_INT_RANGES.items():
        _check_int(arch, key, lo, hi, "architecture.", path)
    if arch["pos_dim"] % 2:
        raise _bad("architecture.pos_dim", f"must be even, got {arch['pos_dim']}", path)
    _check_real(arch.get("alpha"), "architecture.alpha", 0.0, 1e4, False, path)
    targets = arch.get("targets")
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and t in LORA_TARGETS for t in targets)
        or len(set(targets)) != len(targets)
    ):
        raise _bad(
            "architecture.targets",
            f"must be a non-empty list of distinct names from "
            f"{', '.join(LORA_TARGETS)}, got {_show(targets)}",
            path,
        )
    _validate_backbone_arch(arch.get("backbone"), path)


def _validate_manifest(raw: Any, path: Path) -> None:
    """Types and ranges of every field the software uses (raises CheckpointError)."""
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{MANIFEST} is not a HyperCT manifest (a JSON {type(raw).__name__}, not an object)",
            path=path,
            hint=_RE_SAVE,
        )
    if not _depth_ok(raw):
        raise _bad("content", f"is nested deeper than {MAX_MANIFEST_DEPTH} levels", path)
    if raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{MANIFEST} is not a HyperCT manifest (format={_show(raw.get('format'))})",
            path=path,
            hint="a HyperCT checkpoint folder holds manifest.json and model.safetensors",
        )
    fv = raw.get("format_version")
    if not isinstance(fv, int) or isinstance(fv, bool) or fv < 1:
        raise _bad("format_version", f"must be a positive integer, got {_show(fv)}", path)
    if fv > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format_version {fv} is newer than this software supports ({FORMAT_VERSION})",
            path=path,
            hint="upgrade hyperct-viewer",
        )
    for key in ("findings", "architecture", "backbone", "weights_sha256"):
        if key not in raw:
            raise CheckpointError(f"{MANIFEST} lacks the field {key!r}", path=path, hint=_RE_SAVE)
    ids = catalogue().ids
    if raw["findings"] != ids:
        n = len(raw["findings"]) if isinstance(raw["findings"], list) else "not a list"
        raise CheckpointError(
            f"checkpoint findings ({n}) differ from this software's 25-finding catalogue",
            path=path,
            hint="use a checkpoint trained on the HyperCT findings catalogue, in catalogue order",
        )
    sha = raw["weights_sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise _bad("weights_sha256", f"must be 64 lowercase hex digits, got {_show(sha)}", path)
    _validate_architecture(raw["architecture"], path)
    bb = raw["backbone"]
    if not isinstance(bb, dict):
        raise _bad("backbone", f"must be an object, got {_show(bb)}", path)
    if bb.get("weights") not in ("included", "external"):
        raise _bad(
            "backbone.weights", f"must be 'included' or 'external', got {_show(bb.get('weights'))}", path
        )
    if bb.get("sha256") is not None and (
        not isinstance(bb["sha256"], str) or not _SHA256.fullmatch(bb["sha256"])
    ):
        raise _bad("backbone.sha256", f"must be 64 lowercase hex digits, got {_show(bb['sha256'])}", path)
    for key in ("source", "config_name"):
        _check_text(bb, key, path, where="backbone.")
    if "trained" in bb and not isinstance(bb["trained"], bool):
        raise _bad("backbone.trained", f"must be true or false, got {_show(bb['trained'])}", path)
    wf = raw.get("weights_file", WEIGHTS)
    if not isinstance(wf, str) or not wf or "\x00" in wf or len(wf) > 255:
        raise _bad("weights_file", f"must be a file name, got {_show(wf)}", path)
    th = raw.get("thresholds")
    if th is not None:
        if not isinstance(th, dict):
            raise _bad("thresholds", f"must be an object of finding: probability, got {_show(th)}", path)
        unknown = sorted(set(th) - set(ids))
        if unknown:
            raise _bad("thresholds", f"name unknown findings: {_show(unknown)}", path)
        for k, v in th.items():
            if not _is_real(v) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                raise _bad(f"thresholds.{k}", f"must be a probability in [0, 1], got {_show(v)}", path)
    for key in ("model_name", "intended_use", "threshold_method", "training_data", "created"):
        _check_text(raw, key, path)
    mv = raw.get("model_version")
    if (
        mv is not None
        and not (isinstance(mv, str) and len(mv) <= 200)
        and not (_is_real(mv) and math.isfinite(mv))
    ):
        raise _bad("model_version", f"must be text, got {_show(mv)}", path)
    if "demo" in raw and not isinstance(raw["demo"], bool):
        raise _bad("demo", f"must be true or false, got {_show(raw['demo'])}", path)


def _read_regular_file(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of a regular file (no FIFOs or devices: they could block or never end)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(f"{what} cannot be read ({exc.strerror})", path=path) from exc
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{what} is not a regular file", path=path, hint=_RE_SAVE)
    if st.st_size > limit:
        raise CheckpointError(
            f"{what} is {st.st_size} bytes, more than the {limit} a manifest may have",
            path=path,
            hint=_RE_SAVE,
        )
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise CheckpointError(f"{what} cannot be read ({exc.strerror})", path=path) from exc
    if len(data) > limit:
        raise CheckpointError(f"{what} is larger than {limit} bytes", path=path, hint=_RE_SAVE)
    return data


def _parse_json(data: bytes, path: Path, what: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{what} is not UTF-8 text (byte {exc.start})", path=path, hint=_RE_SAVE
        ) from exc
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise CheckpointError(
            f"{what} is nested too deeply to be a manifest", path=path, hint=_RE_SAVE
        ) from exc
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise CheckpointError(
            f"{what} is not valid JSON ({_show(str(exc), 120)})", path=path, hint=_RE_SAVE
        ) from exc


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` (types and ranges of every field the software uses)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            "checkpoint folder does not exist",
            path=directory,
            hint="pass a folder with manifest.json + model.safetensors",
        )
    path = directory / MANIFEST
    if not path.exists():
        raise CheckpointError(
            f"{MANIFEST} is missing",
            path=directory,
            hint="a HyperCT checkpoint folder holds manifest.json and model.safetensors",
        )
    raw = _parse_json(_read_regular_file(path, MAX_MANIFEST_BYTES, MANIFEST), path, MANIFEST)
    _validate_manifest(raw, path)
    return Manifest(raw)


def _confined_weights(directory: Path, manifest: Manifest) -> Path:
    """``weights_file`` as a regular file inside ``directory`` (no '..', absolute paths or links out)."""
    name = manifest.raw.get("weights_file", WEIGHTS)
    mpath = directory / MANIFEST
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.parts == (".",):
        raise CheckpointError(
            f"{MANIFEST}: weights_file {_show(name)} does not name a file inside the checkpoint folder",
            path=mpath,
            hint="weights_file must name a file inside the checkpoint folder (normally model.safetensors)",
        )
    try:
        root = directory.resolve(strict=True)
        target = (directory / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        raise CheckpointError(f"{name} is missing", path=directory, hint=_RE_SAVE) from None
    if target == root or root not in target.parents:
        raise CheckpointError(
            f"{MANIFEST}: weights_file {_show(name)} is a link to a file outside the checkpoint folder",
            path=mpath,
            hint="copy the weights into the checkpoint folder instead of linking to them",
        )
    try:
        st = os.stat(target)
    except OSError:
        raise CheckpointError(f"{name} is missing", path=directory, hint=_RE_SAVE) from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{name} is not a regular file", path=directory, hint=_RE_SAVE)
    return directory / rel


def _header(weights: Path, what: str, error=CheckpointError) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors header, without reading any tensor data."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (str(sl.get_dtype()), tuple(int(n) for n in sl.get_shape()))
            return out
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise error(
            f"{what} is not a readable safetensors file ({_show(str(exc), 160)})", path=weights, hint=_RE_SAVE
        ) from exc


def _skeleton(arch: HyperCTConfig, path: Path) -> HyperCT:
    """The model on the meta device: every parameter's name and shape, no memory, no init cost.

    Only called on a validated architecture (bounded sizes), so it takes milliseconds.
    """
    try:
        with torch.device("meta"):
            cfg = backbone_config(arch.backbone)
            return HyperCT(HyperCTConfig.from_dict(arch.to_dict()), backbone=build_backbone(cfg))
    except Exception as exc:  # noqa: BLE001 - transformers' strict config raises its own types
        raise _bad("architecture", f"cannot be built ({_show(str(exc), 160)})", path) from exc


def _check_tensors(
    header: dict[str, tuple[str, tuple[int, ...]]],
    expected: dict[str, tuple[int, ...]],
    weights: Path,
    *,
    error=CheckpointError,
    extra_ok: bool = False,
    hint: str = _RE_SAVE,
) -> None:
    """Names, dtypes and shapes in a safetensors header against what the architecture needs."""
    missing = sorted(set(expected) - set(header))
    unexpected = [] if extra_ok else sorted(set(header) - set(expected))
    if missing or unexpected:
        raise error(
            f"{weights.name}: the tensors do not match the architecture in {MANIFEST} "
            f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. "
            f"{[_show(u) for u in unexpected[:2]]})",
            path=weights,
            hint=hint,
        )
    for k, shape in expected.items():
        dtype, have = header[k]
        if dtype not in _FLOAT_DTYPES:
            raise error(
                f"{weights.name}: tensor {k} has dtype {dtype}; model weights must be floating point",
                path=weights,
                hint=hint,
            )
        if have != tuple(shape):
            raise error(
                f"{weights.name}: tensor {k} has shape {have}, the architecture in {MANIFEST} needs {tuple(shape)}",
                path=weights,
                hint=hint,
            )


def _check_finite(tensors: dict[str, torch.Tensor], weights: Path, error=CheckpointError) -> None:
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise error(
                f"{weights.name}: tensor {k} holds NaN or infinite values",
                path=weights,
                hint="the weights are broken (e.g. a diverged training run); use an earlier checkpoint",
            )


def _external_backbone_precheck(backbone_dir: Path, arch: HyperCTConfig, skeleton: HyperCT, bb: dict) -> None:
    """The user's backbone folder against the (validated) manifest, before anything is built from it."""
    backbone_dir = Path(backbone_dir)
    hint = f"use the backbone the checkpoint names: {bb.get('source', 'see manifest.json')}"
    cfg_path, wpath = backbone_dir / "config.json", backbone_dir / "model.safetensors"
    for p in (cfg_path, wpath):
        if not p.is_file():
            raise BackboneWeightsError(
                f"{p.name} is missing from the backbone folder (or is not a regular file)",
                path=backbone_dir,
                hint="a DINOv3 backbone folder holds config.json and model.safetensors (Hugging Face layout)",
            )
    try:
        raw = _parse_json(
            _read_regular_file(cfg_path, MAX_MANIFEST_BYTES, "config.json"), cfg_path, "config.json"
        )
    except CheckpointError as exc:
        raise BackboneWeightsError(str(exc.args[0])) from exc
    if not isinstance(raw, dict):
        raise BackboneWeightsError("config.json is not a JSON object", path=cfg_path, hint=hint)
    # The structural fields config.json sets (DINOv3ViTConfig's defaults for those it omits) must
    # pass the same checks as the manifest's and equal them: load_backbone builds from config.json.
    given = dict(config_to_dict(backbone_config({})))
    given.update({k: raw[k] for k in given if k in raw})
    try:
        _validate_backbone_arch(given, cfg_path)
        ints = [k for k in _FLOAT_FIELDS if isinstance(given.get(k, raw.get(k)), int)]
        if ints:
            raise _bad(
                f"architecture.backbone.{ints[0]}",
                "must be written as a decimal number (e.g. 100.0)",
                cfg_path,
            )
    except CheckpointError as exc:
        raise BackboneWeightsError(
            str(exc.args[0]).replace(f"{MANIFEST}: architecture.backbone.", "config.json: ")
        ) from None
    want = config_to_dict(backbone_config(arch.backbone))
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "patch_size",
        "num_register_tokens",
        "num_channels",
        "hidden_act",
        "use_gated_mlp",
        *_BACKBONE_BOOLS,
    ):
        if given[key] != want[key]:
            raise BackboneWeightsError(
                f"backbone {key}={_show(given[key])} but the checkpoint was trained with {_show(want[key])}",
                path=backbone_dir,
                hint=hint,
            )
    if bb.get("sha256"):
        digest = sha256_file(wpath)
        if digest != bb["sha256"]:
            raise BackboneWeightsError(
                f"backbone model.safetensors sha256 {digest[:12]}... differs from the one the checkpoint was "
                f"trained with ({bb['sha256'][:12]}...)",
                path=backbone_dir,
                hint=hint,
            )
    header = {
        _canonical_key(k): v for k, v in _header(wpath, "model.safetensors", BackboneWeightsError).items()
    }
    expected = {
        k: tuple(v.shape) for k, v in skeleton.backbone.state_dict().items() if not k.endswith("inv_freq")
    }
    _check_tensors(header, expected, wpath, error=BackboneWeightsError, extra_ok=True, hint=hint)


def load_checkpoint(
    directory: str | Path,
    *,
    backbone_dir: str | Path | None = None,
    map_location: str | torch.device = "cpu",
    verify_sha256: bool = True,
) -> tuple[HyperCT, Manifest]:
    """Rebuild a ``HyperCT`` from a checkpoint folder (safetensors only; nothing is unpickled).

    The folder is untrusted input: the manifest is validated field by field, ``weights_file`` must
    stay inside the folder, and every tensor's name, dtype and shape in the safetensors header is
    checked against the architecture before the model is built; weights must be finite.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = _confined_weights(directory, manifest)
    if verify_sha256:
        digest = sha256_file(weights)
        if digest != manifest.weights_sha256:
            raise CheckpointError(
                f"{weights.name} sha256 {digest[:12]}... does not match the manifest ({manifest.weights_sha256[:12]}...)",
                path=weights,
                hint="the weights file is corrupted or was replaced; re-copy the checkpoint folder",
            )
    arch = manifest.architecture
    bb = manifest.backbone
    included = bb.get("weights") == "included"
    if not included and backbone_dir is None:
        raise CheckpointError(
            f"this checkpoint uses external backbone weights ({_show(bb.get('source', 'DINOv3'), 200)})",
            path=directory,
            hint="pass the local DINOv3 folder with --backbone DIR (config.json + model.safetensors)",
        )
    # Shapes first: from the header and a meta-device skeleton; nothing is allocated yet.
    skeleton = _skeleton(arch, directory / MANIFEST)
    expected = {f"hypernet.{k}": tuple(v.shape) for k, v in skeleton.hypernet.state_dict().items()}
    expected.update({f"head.{k}": tuple(v.shape) for k, v in skeleton.head.state_dict().items()})
    if included:
        from hyperct.network.backbone import _official_key

        expected.update(
            {
                f"backbone.{_official_key(k)}": tuple(v.shape)
                for k, v in skeleton.backbone.state_dict().items()
                if not k.endswith("inv_freq")
            }
        )
    _check_tensors(_header(weights, weights.name), expected, weights)
    if not included:
        _external_backbone_precheck(Path(backbone_dir), arch, skeleton, bb)
    del skeleton
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in expected}
    except Exception as exc:
        raise CheckpointError(
            f"{weights.name} cannot be read ({_show(str(exc), 160)})", path=weights
        ) from exc
    _check_finite(tensors, weights)

    if included:
        backbone = build_backbone(backbone_config(arch.backbone))
        load_backbone_state(
            backbone,
            {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")},
            source=str(weights),
        )
    else:
        backbone = load_backbone(backbone_dir)
        _check_finite(
            {k: v for k, v in backbone.state_dict().items()},
            Path(backbone_dir) / "model.safetensors",
            error=BackboneWeightsError,
        )
    model = HyperCT(arch, backbone=backbone)
    model.config.backbone = arch.backbone
    for prefix, module in (("hypernet.", model.hypernet), ("head.", model.head)):
        part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(part)
    model.set_backbone_trainable(False)
    return model.to(map_location).eval(), manifest


# Fields that describe the weights themselves: never changed by ``update_manifest``.
_FROZEN_FIELDS = (
    "format",
    "format_version",
    "findings",
    "architecture",
    "backbone",
    "weights_sha256",
    "weights_file",
)


def update_manifest(directory: str | Path, **fields: Any) -> dict:
    """Rewrite ``manifest.json`` with ``fields`` changed (atomic: temp file + rename).

    For metadata such as thresholds, metrics or notes; the weights file is not touched, and the
    fields that describe it (architecture, backbone, findings, weights_sha256, ...) may not change.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    frozen = sorted(set(fields) & set(_FROZEN_FIELDS))
    if frozen:
        raise CheckpointError(
            f"update_manifest cannot change {', '.join(frozen)} (they describe the weights)",
            path=directory,
            hint="save a new checkpoint with save_checkpoint instead",
        )
    if "thresholds" in fields:
        ids = catalogue().ids
        given = fields["thresholds"]
        if not isinstance(given, dict) or not all(_is_real(v) and math.isfinite(v) for v in given.values()):
            raise CheckpointError(
                "thresholds must be a mapping of finding id to a probability in [0, 1]", path=directory
            )
        th = {k: float(v) for k, v in given.items()}
        unknown = sorted(set(th) - set(ids))
        if unknown:
            raise CheckpointError(f"thresholds for unknown findings: {', '.join(unknown)}", path=directory)
        bad = [k for k, v in th.items() if not 0.0 <= v <= 1.0]
        if bad:
            raise CheckpointError(
                f"thresholds must be probabilities in [0, 1] ({bad[0]}: {th[bad[0]]})", path=directory
            )
        fields["thresholds"] = {k: th.get(k, manifest.thresholds.get(k, 0.5)) for k in ids}
    raw = dict(manifest.raw, **fields)
    replace_file(directory / MANIFEST, json.dumps(raw, indent=2) + "\n")
    return raw
