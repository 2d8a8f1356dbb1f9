"""The three representations of the 25 tasks: the learned task embeddings e_k, the generated LoRA
updates delta W_k (as per-module Gram matrices, never materialised) and one scan's task-conditioned
features."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hyperct.device import autocast_for, default_task_chunk, task_chunks
from hyperct.progress import Progress, run_steps

if TYPE_CHECKING:  # pragma: no cover
    from hyperct.network.hyperct import HyperCT
    from hyperct.preprocess import Preprocessed
    from hyperct.volume import CTVolume

REPRESENTATIONS: dict[str, str] = {
    "task_embeddings": "Task embeddings e_k",
    "delta_w": "LoRA updates ΔW_k",
    "scan_features": "Scan features",
}
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("up_proj", "down_proj"),
}


def _model_of(model_or_loaded: Any) -> tuple[HyperCT, torch.device]:
    model = getattr(model_or_loaded, "model", model_or_loaded)
    device = getattr(model_or_loaded, "device", None) or next(model.parameters()).device
    return model, torch.device(device)


def task_embedding_vectors(model_or_loaded: Any) -> np.ndarray:
    """The learned task embeddings e_k as a (25, task_dim) float64 array (catalogue order)."""
    model, _ = _model_of(model_or_loaded)
    return model.hypernet.task_embeddings.detach().to("cpu", torch.float64).numpy().copy()


def resolve_kinds(kinds: str | Iterable[str] | None, available: Sequence[str]) -> tuple[str, ...]:
    """``None``/"all" -> every module type; "attention"/"mlp" -> that family; or explicit names."""
    if kinds is None or kinds == "all":
        return tuple(available)
    if isinstance(kinds, str):
        kinds = MODULE_GROUPS.get(kinds, (kinds,))
    out = []
    for k in kinds:
        if k not in available:
            raise ValueError(
                f"unknown module type {k!r}: the model adapts {', '.join(available)} "
                f"(or use 'all', {', '.join(repr(g) for g in MODULE_GROUPS)})"
            )
        if k not in out:
            out.append(k)
    if not out:
        raise ValueError("the module selection is empty: choose at least one module type")
    return tuple(k for k in available if k in out)


def resolve_layers(layers: Iterable[int] | None, n_layers: int) -> tuple[int, ...]:
    """``None`` -> every layer; otherwise 0-based layer indices (a ``range`` is fine)."""
    if layers is None:
        return tuple(range(n_layers))
    out = sorted({int(i) for i in layers})
    if not out:
        raise ValueError("the layer selection is empty: choose at least one layer")
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layer index {bad[0]} is out of range: the model has layers 0..{n_layers - 1}")
    return tuple(out)


def describe_selection(layers: Sequence[int], kinds: Sequence[str], n_layers: int, all_kinds: Sequence[str]):
    """Human-readable module selection, 1-based layers: "attention (q,k,v,o), layers 7-12"."""
    kinds = tuple(kinds)
    if kinds == tuple(all_kinds):
        kpart = "all modules"
    else:
        kpart = next((g for g, members in MODULE_GROUPS.items() if kinds == members), None)
        kpart = {"attention": "attention q/k/v/o", "mlp": "MLP up/down"}.get(kpart, "+".join(kinds))
    layers = tuple(layers)
    if layers == tuple(range(n_layers)):
        lpart = f"layers 1-{n_layers}"
    elif layers == tuple(range(layers[0], layers[-1] + 1)):
        lpart = f"layer {layers[0] + 1}" if len(layers) == 1 else f"layers {layers[0] + 1}-{layers[-1] + 1}"
    else:
        lpart = "layers " + ",".join(str(i + 1) for i in layers)
    return f"{kpart}, {lpart}"


@dataclass(frozen=True)
class ModuleGrams:
    """Frobenius inner products of the generated updates, per adapted module.

    ``grams[m, l, i, j] = <dW_i, dW_j>_F`` for module type ``kinds[m]`` in layer ``l`` (float64).
    """

    grams: np.ndarray  # (n_kinds, n_layers, T, T)
    kinds: tuple[str, ...]

    @property
    def n_layers(self) -> int:
        return int(self.grams.shape[1])

    def selection(
        self, *, layers: Iterable[int] | None = None, kinds: str | Iterable[str] | None = None
    ) -> tuple[tuple[int, ...], tuple[str, ...]]:
        return resolve_layers(layers, self.n_layers), resolve_kinds(kinds, self.kinds)

    def gram(
        self, *, layers: Iterable[int] | None = None, kinds: str | Iterable[str] | None = None
    ) -> np.ndarray:
        """Gram matrix (T, T) of the concatenated flattened updates of the selected modules."""
        lay, kin = self.selection(layers=layers, kinds=kinds)
        ki = [self.kinds.index(k) for k in kin]
        return self.grams[np.ix_(ki, lay)].sum(axis=(0, 1))

    def describe(
        self, *, layers: Iterable[int] | None = None, kinds: str | Iterable[str] | None = None
    ) -> str:
        lay, kin = self.selection(layers=layers, kinds=kinds)
        return describe_selection(lay, kin, self.n_layers, self.kinds)


@torch.no_grad()
def delta_w_module_grams(model_or_loaded: Any) -> ModuleGrams:
    """Per-module Gram matrices of the 25 tasks' generated updates, via the r x r factor products.

    Cost O(L (T r)^2 (d_in + d_out)) per module type instead of materialising T x L full
    d_out x d_in matrices (vitb16: 25 x 72 matrices of up to 768 x 3072).
    """
    model, device = _model_of(model_or_loaded)
    factors = model.lora_factors(None)
    work = torch.device("cpu") if device.type == "mps" else device  # no float64 on MPS
    s2 = float(factors.scale) ** 2
    kinds = tuple(factors.a)
    grams = []
    for kind in kinds:
        a = factors.a[kind].to(work, torch.float64)  # (T, L, r, d_in)
        b = factors.b[kind].to(work, torch.float64)  # (T, L, d_out, r)
        t, n_layers, r, d_in = a.shape
        a_rows = a.permute(1, 0, 2, 3).reshape(n_layers, t * r, d_in)  # rows (task, p) = A_task[p, :]
        b_cols = b.permute(1, 0, 3, 2).reshape(n_layers, t * r, -1)  # rows (task, p) = B_task[:, p]
        aa = a_rows @ a_rows.transpose(1, 2)  # [(i,p),(j,q)] = (A_i A_j^T)[p, q]
        bb = b_cols @ b_cols.transpose(1, 2)  # [(i,p),(j,q)] = (B_i^T B_j)[p, q]
        g = (aa * bb).reshape(n_layers, t, r, t, r).sum(dim=(2, 4)) * s2  # (L, T, T)
        grams.append(g.cpu().numpy())
        del a, b, a_rows, b_cols, aa, bb
    stacked = np.stack(grams)
    stacked = 0.5 * (stacked + np.swapaxes(stacked, -1, -2))  # exact symmetry
    return ModuleGrams(stacked, kinds)


def delta_w_gram(
    model_or_loaded: Any,
    *,
    layers: Iterable[int] | None = None,
    kinds: str | Iterable[str] | None = None,
) -> np.ndarray:
    """Gram (25, 25) of the flattened, concatenated updates of the selected modules."""
    return delta_w_module_grams(model_or_loaded).gram(layers=layers, kinds=kinds)


def scan_feature_steps(
    model_or_loaded: Any,
    scan: CTVolume | Preprocessed | torch.Tensor,
    *,
    task_chunk: int | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Task-conditioned features of one scan, (25, D) float64, as a generator of ``Progress``.

    ``scan``: a ``CTVolume`` (preprocessed here), a ``Preprocessed`` or its pixel tensor
    (55, 3, 144, 144). Stop early by closing the generator between steps.
    """
    from hyperct.preprocess import preprocess

    model, device = _model_of(model_or_loaded)
    n_tasks = model.config.n_tasks
    chunk = max(1, int(task_chunk or default_task_chunk(device, model)))
    chunks = task_chunks(range(n_tasks), chunk)
    total = 1 + len(chunks)
    yield Progress(0, total, "preprocess", "resampling to 165 x 144 x 144")
    if isinstance(scan, torch.Tensor):
        pixels = scan
    elif hasattr(scan, "pixel_values"):
        pixels = scan.pixel_values
    else:
        pixels = preprocess(scan).pixel_values
    if pixels.ndim == 4:
        pixels = pixels[None]
    if pixels.ndim != 5 or pixels.shape[0] != 1:
        raise ValueError(f"expected the pixels of one scan (55, 3, H, W), got {tuple(pixels.shape)}")
    pixels = pixels.to(device)
    feats = []
    for ci, part in enumerate(chunks):
        tasks = torch.arange(part.start, part.stop, device=device)
        yield Progress(
            1 + ci,
            total,
            "features",
            f"scan features for findings {int(tasks[0]) + 1}-{int(tasks[-1]) + 1} of {n_tasks}",
        )
        with torch.inference_mode(), autocast_for(device):
            f = model.pooled_features(pixels, tasks, task_chunk=chunk)  # (1, t, D)
        feats.append(f[0].to("cpu", torch.float64).numpy())
    yield Progress(total, total, "done", f"features of {n_tasks} findings")
    return np.concatenate(feats, axis=0)


def scan_feature_vectors(
    model_or_loaded: Any,
    scan: CTVolume | Preprocessed | torch.Tensor,
    *,
    task_chunk: int | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> np.ndarray:
    """Run ``scan_feature_steps`` to completion: (25, D)."""
    return run_steps(scan_feature_steps(model_or_loaded, scan, task_chunk=task_chunk), progress=progress)
