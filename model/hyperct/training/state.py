"""Resume state of a training run (``RUN_DIR/last/``): safetensors + JSON only, never pickle.

* ``model.safetensors``: the model's trained tensors (hypernetwork, head, and the backbone when it
  is trained; a frozen backbone is rebuilt from its weights folder or seed on resume);
* ``optimizer.safetensors``: every AdamW state tensor, as ``<parameter name>::<state key>``;
* ``rng.safetensors``: the torch CPU (and CUDA) generator states;
* ``state.json``: completed epochs, global step, optimizer hyperparameters, scheduler state, best
  epoch so far, Python and NumPy generator states, world size.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hyperct.atomic import replacing_folder
from hyperct.errors import CheckpointError

STATE_FORMAT = "hyperct-train-state"
STATE_VERSION = 1


def trained_tensor_names(model: torch.nn.Module, *, include_backbone: bool) -> list[str]:
    names = []
    for name in model.state_dict():
        if name.endswith("inv_freq"):
            continue
        if name.startswith("backbone.") and not include_backbone:
            continue
        names.append(name)
    return names


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path.name} cannot be read ({exc})", path=path) from exc


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state other code may use
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))  # noqa: NPY002


def split_optimizer_state(
    optimizer_state: dict, names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """An optimizer's ``state_dict()["state"]`` by parameter name: its tensors as
    ``{"<name>::<key>": tensor}`` (for safetensors) and its other values as ``{name: {key: value}}``
    (for JSON). ``names[i]`` is the name of parameter ``i``."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in optimizer_state.items():
        name = names[idx]
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{name}::{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(name, {})[key] = value
    return tensors, scalars


def join_optimizer_state(
    tensors: dict[str, torch.Tensor], scalars: dict[str, dict], names: list[str]
) -> dict[int, dict]:
    """The inverse of ``split_optimizer_state``: ``{parameter index: state}`` for
    ``optimizer.load_state_dict``; parameters without any saved state are left out."""
    state: dict[int, dict] = {}
    for idx, name in enumerate(names):
        st = {key.split("::", 1)[1]: v for key, v in tensors.items() if key.split("::", 1)[0] == name}
        st.update(scalars.get(name, {}))
        if st:
            state[idx] = st
    return state


def save_state(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    param_names: list[str],
    *,
    include_backbone: bool,
    state: dict,
) -> Path:
    """Write the resume state atomically (temporary folder, then rename)."""
    directory = Path(directory)
    with replacing_folder(directory) as tmp:
        sd = model.state_dict()
        tensors = {
            k: sd[k].detach().contiguous().cpu()
            for k in trained_tensor_names(model, include_backbone=include_backbone)
        }
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})

        opt = optimizer.state_dict()
        opt_tensors, opt_scalars = split_optimizer_state(opt["state"], param_names)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})

        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"), metadata={"format": "pt"})

        groups = [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]
        doc = dict(
            state,
            format=STATE_FORMAT,
            format_version=STATE_VERSION,
            param_names=param_names,
            param_groups=groups,
            optimizer_scalars=opt_scalars,
            rng=rng_meta,
        )
        (tmp / "state.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return directory


def read_state(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / "state.json"
    if not path.is_file():
        raise CheckpointError(
            "no resume state (last/state.json) in the run folder",
            path=directory,
            hint="resume needs a run folder written by `hyperct train` after at least one epoch",
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"state.json is not valid JSON ({exc})", path=path) from exc
    if doc.get("format") != STATE_FORMAT or int(doc.get("format_version", 99)) > STATE_VERSION:
        raise CheckpointError("state.json is not a HyperCT training state this version can read", path=path)
    return doc


def load_state(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    param_names: list[str],
    *,
    include_backbone: bool,
    restore_rng: bool = True,
) -> dict:
    """Load model + optimizer (+ RNG) state written by ``save_state``; returns ``state.json``."""
    directory = Path(directory)
    doc = read_state(directory)
    if doc["param_names"] != param_names:
        raise CheckpointError(
            "the saved optimizer state does not match the model's trainable parameters "
            f"({len(doc['param_names'])} saved, {len(param_names)} now)",
            path=directory,
            hint="resume with the configuration the run was started with (model.* and train_backbone unchanged)",
        )
    tensors = _read_tensors(directory / "model.safetensors")
    expected = trained_tensor_names(model, include_backbone=include_backbone)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(
            f"model.safetensors lacks {len(missing)} tensor(s), e.g. {missing[0]}", path=directory
        )
    sd = model.state_dict()
    for k in expected:
        if tuple(tensors[k].shape) != tuple(sd[k].shape):
            raise CheckpointError(
                f"tensor {k} has shape {tuple(tensors[k].shape)}, the model needs {tuple(sd[k].shape)}",
                path=directory,
            )
    model.load_state_dict({k: tensors[k] for k in expected}, strict=False)

    opt_tensors = _read_tensors(directory / "optimizer.safetensors")
    state = join_optimizer_state(opt_tensors, doc.get("optimizer_scalars", {}), param_names)
    groups = [dict(g, params=list(range(len(param_names)))) for g in doc["param_groups"]]
    if len(groups) != 1:
        raise CheckpointError("unexpected optimizer parameter groups in state.json", path=directory)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if restore_rng:
        set_rng_state(_read_tensors(directory / "rng.safetensors"), doc["rng"])
    return doc
