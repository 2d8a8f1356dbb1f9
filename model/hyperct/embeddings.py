"""How the model relates the 25 findings: the task-embedding analysis of the paper (Sec. 5, Fig. 2).

Three representations of the 25 tasks can be compared:

* ``task_embeddings``: the learned task embeddings e_k (25 x 512) of the hypernetwork;
* ``delta_w``: the generated weight updates delta W_k = (alpha/r) B_k A_k of every adapted module,
  flattened and concatenated (optionally restricted to some layers and/or module types). They are
  compared through their Gram matrix, never materialised: per module,
  <dW_i, dW_j>_F = tr((B_i A_i)^T B_j A_j) = tr((B_i^T B_j)(A_j A_i^T)), i.e. the element-wise
  product of the (T r x T r) Gram matrices of the stacked B columns and A rows, summed over the
  r x r blocks. Summing the per-module Grams over a selection of modules gives the Gram of the
  concatenated flattened updates of that selection. The result does not depend on how a
  delta W is factorised into A and B;
* ``scan_features``: the 25 task-conditioned feature vectors (mean CLS) of one scan.

For each: cosine similarities; a 2-D PCA (of the centred vectors, or for a Gram by double centring,
i.e. kernel PCA with a linear kernel, which equals the PCA of the vectors behind the Gram);
hierarchical clustering (cosine distance, complete linkage, optimal leaf order) with the number of
clusters chosen by the mean silhouette (computed here from the distance matrix, numpy only).

Figures are drawn with matplotlib's object API (no pyplot, no GUI backend): the ``*Plot`` classes
draw on any ``Axes`` (the viewer's Qt canvas or an export figure), update a highlighted finding in
place and map pick/click events back to finding ids. ``write_embedding_report`` writes everything
for a checkpoint (``hyperct info --embeddings OUT_DIR``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage, optimal_leaf_ordering
from scipy.spatial.distance import squareform

from hyperct.errors import ExportError, ModelError
from hyperct.findings import GROUP_LABELS, catalogue
from hyperct.inference import Progress, autocast_for, default_task_chunk

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from hyperct.loading import LoadedModel
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
VIEWS: tuple[str, ...] = ("pca", "heatmap", "dendrogram")
# As in the paper's Fig. 2: conventional findings orange, opportunistic (cardiac) findings blue.
GROUP_COLORS: dict[str, str] = {"conventional": "#ff7f0e", "opportunistic": "#1f77b4"}
CLUSTER_COLORS: tuple[str, ...] = (
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
CLUSTER_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
HIGHLIGHT_COLOR = "#ffd700"
MAX_CLUSTERS = 8


def _model_of(model_or_loaded: Any) -> tuple[HyperCT, torch.device]:
    model = getattr(model_or_loaded, "model", model_or_loaded)
    device = getattr(model_or_loaded, "device", None) or next(model.parameters()).device
    return model, torch.device(device)


# -- representations ----------------------------------------------------------------------------
def task_embedding_vectors(model_or_loaded: Any) -> np.ndarray:
    """The learned task embeddings e_k as a (25, task_dim) float64 array (catalogue order)."""
    model, _ = _model_of(model_or_loaded)
    return model.hypernet.task_embeddings.detach().to("cpu", torch.float64).numpy().copy()


def _as_tuple(value: Iterable | None) -> tuple:
    return () if value is None else tuple(value)


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
    n_chunks = -(-n_tasks // chunk)
    total = 1 + n_chunks
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
    for ci in range(n_chunks):
        tasks = torch.arange(ci * chunk, min(n_tasks, (ci + 1) * chunk), device=device)
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
    gen = scan_feature_steps(model_or_loaded, scan, task_chunk=task_chunk)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress:
            progress(step)


# -- analysis -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PCAResult:
    coords: np.ndarray  # (T, n_components)
    explained: np.ndarray  # (n_components,) fraction of the total variance


def _fix_signs(coords: np.ndarray) -> np.ndarray:
    """Deterministic orientation: in each component the largest-magnitude coordinate is positive."""
    coords = coords.copy()
    for c in range(coords.shape[1]):
        i = int(np.argmax(np.abs(coords[:, c])))
        if coords[i, c] < 0:
            coords[:, c] *= -1
    return coords


def pca_from_vectors(vectors: np.ndarray, n_components: int = 2) -> PCAResult:
    """PCA of the rows of ``vectors`` (centred, not scaled)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    var = s**2
    total = var.sum()
    n = min(n_components, len(s))
    coords = u[:, :n] * s[:n]
    explained = var[:n] / total if total > 0 else np.zeros(n)
    return _pad_pca(PCAResult(_fix_signs(coords), explained), n_components)


def pca_from_gram(gram: np.ndarray, n_components: int = 2) -> PCAResult:
    """Kernel PCA with a linear kernel: the PCA of the (unseen) vectors whose Gram is ``gram``.

    Double centring K = H G H (H = I - 11^T/T) is the Gram of the centred vectors; its top
    eigenvectors scaled by sqrt(eigenvalue) are the principal-component scores, and each eigenvalue
    over the trace is that component's fraction of the total variance.
    """
    g = np.asarray(gram, dtype=np.float64)
    t = g.shape[0]
    h = np.eye(t) - 1.0 / t
    k = h @ g @ h
    k = 0.5 * (k + k.T)
    vals, vecs = np.linalg.eigh(k)
    idx = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[idx], 0.0, None), vecs[:, idx]
    n = min(n_components, t)
    coords = vecs[:, :n] * np.sqrt(vals[:n])
    total = vals.sum()
    explained = vals[:n] / total if total > 0 else np.zeros(n)
    return _pad_pca(PCAResult(_fix_signs(coords), explained), n_components)


def _pad_pca(p: PCAResult, n: int) -> PCAResult:
    if p.coords.shape[1] >= n:
        return p
    pad = n - p.coords.shape[1]
    return PCAResult(np.pad(p.coords, ((0, 0), (0, pad))), np.pad(p.explained, (0, pad)))


def cosine_from_gram(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity (T, T) from inner products, and a mask of the zero-norm rows.

    A zero vector has no direction: its cosine with every other vector is reported as 0.
    """
    g = np.asarray(gram, dtype=np.float64)
    d = np.diag(g).copy()
    scale = max(float(np.abs(d).max()), np.finfo(float).tiny)
    zero = d <= scale * 1e-12
    norms = np.sqrt(np.where(zero, 1.0, d))
    cos = g / np.outer(norms, norms)
    cos[zero, :] = 0.0
    cos[:, zero] = 0.0
    cos = np.clip(0.5 * (cos + cos.T), -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    return cos, zero


def cosine_distance(cos: np.ndarray) -> np.ndarray:
    d = np.clip(1.0 - np.asarray(cos, dtype=np.float64), 0.0, 2.0)
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    return d


def silhouette_samples(distance: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Per-sample silhouette from a precomputed distance matrix (numpy; sklearn's definition).

    s(i) = (b - a) / max(a, b), a = mean distance to the other members of i's cluster, b = smallest
    mean distance to another cluster; 0 for members of singleton clusters.
    """
    d = np.asarray(distance, dtype=np.float64)
    labels = np.asarray(labels)
    uniq, own = np.unique(labels, return_inverse=True)
    n = len(labels)
    if not 2 <= len(uniq) <= n - 1:
        raise ValueError(f"the silhouette needs 2 to n-1 clusters, got {len(uniq)} for {n} samples")
    onehot = np.zeros((n, len(uniq)))
    onehot[np.arange(n), own] = 1.0
    counts = onehot.sum(axis=0)
    sums = d @ onehot  # (n, k): summed distance of i to each cluster
    own_count = counts[own]
    a = sums[np.arange(n), own] / np.maximum(own_count - 1, 1)
    mean_other = sums / counts
    mean_other[np.arange(n), own] = np.inf
    b = mean_other.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    s[own_count == 1] = 0.0
    return s


def silhouette_score(distance: np.ndarray, labels: Sequence[int]) -> float:
    return float(silhouette_samples(distance, labels).mean())


def adjusted_rand_index(labels_a: Sequence, labels_b: Sequence) -> float:
    """Adjusted Rand index of two partitions (1 = identical up to renaming, ~0 = chance)."""
    _, a = np.unique(np.asarray(labels_a), return_inverse=True)
    _, b = np.unique(np.asarray(labels_b), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    comb = lambda x: x * (x - 1) / 2.0  # noqa: E731
    n = len(a)
    index = comb(table).sum()
    sa, sb = comb(table.sum(axis=1)).sum(), comb(table.sum(axis=0)).sum()
    expected = sa * sb / comb(n)
    maximum = 0.5 * (sa + sb)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


@dataclass(frozen=True)
class Clustering:
    """Complete-linkage clustering on cosine distance, k chosen by the mean silhouette."""

    linkage: np.ndarray  # scipy linkage matrix (T-1, 4), optimal leaf order
    order: np.ndarray  # (T,) task indices in dendrogram leaf order
    labels: np.ndarray  # (T,) cluster 1..k, numbered in leaf order
    k: int
    silhouettes: dict[int, float]  # candidate k -> mean silhouette
    sample_silhouette: np.ndarray  # (T,) for the chosen k
    cut_height: float  # a cosine distance that cuts the tree into k clusters

    @property
    def silhouette(self) -> float:
        return self.silhouettes[self.k]


def cluster_tasks(distance: np.ndarray, *, max_clusters: int = MAX_CLUSTERS) -> Clustering:
    """Hierarchical clustering (complete linkage) of a distance matrix; k in 2..max by silhouette."""
    d = np.asarray(distance, dtype=np.float64)
    n = d.shape[0]
    if n < 3:
        raise ValueError(f"clustering needs at least 3 items, got {n}")
    condensed = squareform(d, checks=False)
    z = optimal_leaf_ordering(linkage(condensed, method="complete"), condensed)
    order = leaves_list(z)
    silhouettes: dict[int, float] = {}
    best_k, best_s, best_labels = None, -np.inf, None
    for k in range(2, min(max_clusters, n - 1) + 1):
        labels = fcluster(z, k, criterion="maxclust")
        k_eff = len(np.unique(labels))
        if k_eff < 2 or k_eff in silhouettes:
            continue
        s = silhouette_score(d, labels)
        silhouettes[k_eff] = s
        if s > best_s + 1e-12:
            best_k, best_s, best_labels = k_eff, s, labels
    if best_labels is None:  # all distances equal: one undivided group
        best_k, best_labels = 1, np.ones(n, dtype=int)
        silhouettes[1] = 0.0
    # renumber clusters in leaf order (cluster 1 = first from the top of the dendrogram)
    first_seen: dict[int, int] = {}
    for i in order:
        first_seen.setdefault(int(best_labels[i]), len(first_seen) + 1)
    labels = np.array([first_seen[int(v)] for v in best_labels])
    heights = np.sort(z[:, 2])
    if best_k <= 1:
        cut = float(heights[-1]) * 1.01 + 1e-12
    else:
        lo, hi = heights[n - best_k - 1], heights[n - best_k]
        cut = float(0.5 * (lo + hi))
    sample = silhouette_samples(d, labels) if best_k >= 2 else np.zeros(n)
    return Clustering(z, order, labels, best_k, silhouettes, sample, cut)


@dataclass
class EmbeddingAnalysis:
    """Everything the three views and the exports show for one representation of the tasks."""

    representation: str  # a key of REPRESENTATIONS
    title: str
    ids: tuple[str, ...]
    gram: np.ndarray  # (T, T) inner products of the representation vectors
    vectors: np.ndarray | None  # (T, D) when the vectors exist (not for delta W)
    cosine: np.ndarray
    distance: np.ndarray
    pca: PCAResult
    clustering: Clustering
    notes: list[str] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)  # delta W: layers and module types

    @property
    def short_names(self) -> list[str]:
        cat = catalogue()
        return [cat[i].short_name for i in self.ids]

    @property
    def names(self) -> list[str]:
        cat = catalogue()
        return [cat[i].name for i in self.ids]

    @property
    def groups(self) -> list[str]:
        cat = catalogue()
        return [cat[i].group for i in self.ids]

    def index(self, finding_id: str) -> int:
        return self.ids.index(finding_id)

    @property
    def group_silhouette(self) -> float | None:
        """Mean silhouette of the Conventional / Opportunistic split in this representation."""
        groups = self.groups
        if len(set(groups)) < 2:
            return None
        return silhouette_score(self.distance, groups)

    @property
    def group_agreement(self) -> float:
        """Adjusted Rand index between the clusters and the two groups."""
        return adjusted_rand_index(self.clustering.labels, self.groups)

    def cluster_members(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for i in self.clustering.order:
            out.setdefault(int(self.clustering.labels[i]), []).append(self.ids[i])
        return out

    def summary(self) -> dict[str, Any]:
        cat = catalogue()
        clusters = []
        for c, members in sorted(self.cluster_members().items()):
            groups = [cat[m].group for m in members]
            clusters.append(
                {
                    "cluster": c,
                    "size": len(members),
                    "conventional": groups.count("conventional"),
                    "opportunistic": groups.count("opportunistic"),
                    "members": [cat[m].short_name for m in members],
                }
            )
        gs = self.group_silhouette
        return {
            "representation": self.representation,
            "title": self.title,
            "dimension": None if self.vectors is None else int(self.vectors.shape[1]),
            "selection": self.selection,
            "pca_explained_variance": [float(v) for v in self.pca.explained],
            "k": int(self.clustering.k),
            "silhouette": float(self.clustering.silhouette),
            "silhouettes_by_k": {str(k): float(v) for k, v in self.clustering.silhouettes.items()},
            "clusters": clusters,
            "group_silhouette": None if gs is None else float(gs),
            "clusters_vs_groups_adjusted_rand": float(self.group_agreement),
            "mean_cosine": _mean_cosines(self),
            "notes": list(self.notes),
        }


def _mean_cosines(a: EmbeddingAnalysis) -> dict[str, float | None]:
    g = np.array(a.groups)
    off = ~np.eye(len(g), dtype=bool)
    out = {}
    for name, mask in (
        ("within_conventional", np.outer(g == "conventional", g == "conventional")),
        ("within_opportunistic", np.outer(g == "opportunistic", g == "opportunistic")),
        ("between_groups", np.outer(g == "conventional", g == "opportunistic")),
    ):
        m = mask & off
        out[name] = float(a.cosine[m].mean()) if m.any() else None
    return out


def _check_ids(ids: Sequence[str] | None, n: int) -> tuple[str, ...]:
    ids = tuple(ids) if ids is not None else tuple(catalogue().ids)
    if len(ids) != n:
        raise ValueError(f"{n} representation rows but {len(ids)} finding ids")
    for i in ids:
        catalogue()[i]  # KeyError with the list of known ids
    return ids


def analyze_vectors(
    vectors: np.ndarray,
    *,
    representation: str = "task_embeddings",
    title: str | None = None,
    ids: Sequence[str] | None = None,
    max_clusters: int = MAX_CLUSTERS,
    centered: bool = False,
) -> EmbeddingAnalysis:
    """Cosine, PCA and clustering of one vector per task (rows in catalogue order unless ``ids``).

    ``centered``: subtract the mean vector over the tasks first, so that the cosine and the
    clustering compare what is specific to each task rather than a component they all share
    (the PCA is the same either way).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a (tasks, dimensions) array, got shape {x.shape}")
    ids = _check_ids(ids, x.shape[0])
    if centered:
        x = x - x.mean(axis=0, keepdims=True)
    gram = x @ x.T
    sel = {"centered": bool(centered)}
    return _analyze(gram, x, pca_from_vectors(x), representation, title, ids, max_clusters, sel)


def analyze_gram(
    gram: np.ndarray,
    *,
    representation: str = "delta_w",
    title: str | None = None,
    ids: Sequence[str] | None = None,
    max_clusters: int = MAX_CLUSTERS,
    selection: dict[str, Any] | None = None,
    centered: bool = False,
) -> EmbeddingAnalysis:
    """Cosine, kernel PCA and clustering from the tasks' Gram matrix.

    ``centered``: use the double-centred Gram H G H, the Gram of the vectors minus their mean.
    """
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"expected a square Gram matrix, got shape {g.shape}")
    ids = _check_ids(ids, g.shape[0])
    g = 0.5 * (g + g.T)
    if centered:
        h = np.eye(len(g)) - 1.0 / len(g)
        g = h @ g @ h
        g = 0.5 * (g + g.T)
    sel = dict(selection or {}, centered=bool(centered))
    return _analyze(g, None, pca_from_gram(g), representation, title, ids, max_clusters, sel)


def _analyze(gram, vectors, pca, representation, title, ids, max_clusters, selection) -> EmbeddingAnalysis:
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; one of {', '.join(REPRESENTATIONS)}")
    cos, zero = cosine_from_gram(gram)
    notes = []
    if selection.get("centered"):
        title = (title or REPRESENTATIONS[representation]) + ", mean over findings removed"
    if zero.all():
        raise ModelError(
            f"{REPRESENTATIONS[representation]}: every task's vector is zero, so there is nothing to compare",
            hint="an untrained hypernetwork generates zero updates (B starts at zero): load a trained model, "
            "or compare the task embeddings instead",
        )
    if zero.any():
        names = ", ".join(catalogue()[ids[i]].short_name for i in np.flatnonzero(zero))
        notes.append(f"zero vector (no direction; cosine set to 0) for: {names}")
    dist = cosine_distance(cos)
    clustering = cluster_tasks(dist, max_clusters=max_clusters)
    return EmbeddingAnalysis(
        representation=representation,
        title=title or REPRESENTATIONS[representation],
        ids=ids,
        gram=gram,
        vectors=vectors,
        cosine=cos,
        distance=dist,
        pca=pca,
        clustering=clustering,
        notes=notes,
        selection=dict(selection),
    )


def analyze_task_embeddings(model_or_loaded: Any, *, centered: bool = False) -> EmbeddingAnalysis:
    return analyze_vectors(
        task_embedding_vectors(model_or_loaded), representation="task_embeddings", centered=centered
    )


def analyze_delta_w(
    grams: ModuleGrams | Any,
    *,
    layers: Iterable[int] | None = None,
    kinds: str | Iterable[str] | None = None,
    centered: bool = False,
) -> EmbeddingAnalysis:
    """The delta-W analysis of a module selection (``grams``: a ``ModuleGrams`` or a model)."""
    if not isinstance(grams, ModuleGrams):
        grams = delta_w_module_grams(grams)
    lay, kin = grams.selection(layers=layers, kinds=kinds)
    return analyze_gram(
        grams.gram(layers=lay, kinds=kin),
        representation="delta_w",
        title=f"{REPRESENTATIONS['delta_w']} ({grams.describe(layers=lay, kinds=kin)})",
        selection={"layers": [i + 1 for i in lay], "module_types": list(kin)},
        centered=centered,
    )


def analyze_scan_features(
    features: np.ndarray, *, scan_label: str | None = None, centered: bool = False
) -> EmbeddingAnalysis:
    title = REPRESENTATIONS["scan_features"] + (f" ({scan_label})" if scan_label else "")
    return analyze_vectors(features, representation="scan_features", title=title, centered=centered)


# -- figures ------------------------------------------------------------------------------------
def _label_style(text, group: str, selected: bool) -> None:
    """Group colour; the selected finding: bold black on a highlight box edged in the group colour."""
    color = GROUP_COLORS.get(group, "black")
    text.set_color("black" if selected else color)
    text.set_fontweight("bold" if selected else "normal")
    if selected:
        text.set_bbox(
            {"boxstyle": "round,pad=0.2", "facecolor": HIGHLIGHT_COLOR, "edgecolor": color, "lw": 1.5}
        )
    else:
        text.set_bbox(None)


def _group_legend_handles():
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], marker="o", ls="", color=c, mec="black", mew=0.5, label=GROUP_LABELS[g])
        for g, c in GROUP_COLORS.items()
    ]


class EmbeddingPlot:
    """Base: one view of an ``EmbeddingAnalysis`` drawn on an ``Axes``."""

    view = ""

    def __init__(self, ax: Axes, analysis: EmbeddingAnalysis, *, highlight: str | None = None):
        self.ax = ax
        self.analysis = analysis
        self.highlighted: str | None = None
        self._draw()
        self.set_highlight(highlight)

    def _draw(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_highlight(self, finding_id: str | None) -> None:
        """Highlight one finding (``None`` or "" clears); redraw the canvas afterwards."""
        fid = finding_id or None
        if fid is not None and fid not in self.analysis.ids:
            fid = None
        self.highlighted = fid
        self._update_highlight()

    def _update_highlight(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def id_from_pick(self, event) -> str | None:
        """The finding of a matplotlib ``pick_event`` on this view's artists, else None."""
        return None

    def id_from_click(self, event) -> str | None:
        """The finding under a ``button_press_event`` in this view's axes, else None."""
        return None

    def describe_at(self, event) -> str | None:
        """Hover text for a ``motion_notify_event`` in this view, else None."""
        fid = self.id_from_click(event)
        return _describe_finding(self.analysis, fid) if fid else None


def _describe_finding(a: EmbeddingAnalysis, fid: str) -> str:
    f = catalogue()[fid]
    i = a.index(fid)
    return f"{f.name} ({f.group_label}), cluster {a.clustering.labels[i]}"


class PCAPlot(EmbeddingPlot):
    """2-D PCA scatter: colour = group, marker = cluster, labels = short names."""

    view = "pca"

    def _draw(self) -> None:
        a, ax = self.analysis, self.ax
        xy = a.pca.coords[:, :2]
        groups = a.groups
        colors = [GROUP_COLORS.get(g, "grey") for g in groups]
        self.points = []  # one PathCollection per cluster (markers differ), with their task indices
        self._point_tasks: dict[Any, np.ndarray] = {}
        for c in range(1, a.clustering.k + 1):
            idx = np.flatnonzero(a.clustering.labels == c)
            pc = ax.scatter(
                xy[idx, 0],
                xy[idx, 1],
                c=[colors[i] for i in idx],
                marker=CLUSTER_MARKERS[(c - 1) % len(CLUSTER_MARKERS)],
                s=46,
                edgecolors="black",
                linewidths=0.5,
                zorder=3,
                picker=True,
                pickradius=6,
                label=f"cluster {c}",
            )
            self.points.append(pc)
            self._point_tasks[pc] = idx
        self.labels = []
        for i, name in enumerate(a.short_names):
            t = ax.annotate(
                name,
                xy[i],
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                zorder=4,
                picker=True,
            )
            t.set_gid(a.ids[i])
            self.labels.append(t)
        (self._ring,) = ax.plot(
            [], [], "o", ms=17, mfc="none", mec="black", mew=1.8, zorder=5, label="_selection"
        )
        (self._ring_inner,) = ax.plot([], [], "o", ms=14, mfc="none", mec=HIGHLIGHT_COLOR, mew=1.8, zorder=5)
        ev = a.pca.explained
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% of variance)")
        ax.set_title(f"{a.title}: PCA", fontsize=9)
        ax.axhline(0, color="0.85", lw=0.6, zorder=0)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)
        handles = _group_legend_handles()
        if a.clustering.k > 1:
            from matplotlib.lines import Line2D

            handles += [
                Line2D(
                    [],
                    [],
                    marker=CLUSTER_MARKERS[(c - 1) % len(CLUSTER_MARKERS)],
                    ls="",
                    color="white",
                    mec="black",
                    label=f"cluster {c}",
                )
                for c in range(1, a.clustering.k + 1)
            ]
        ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)
        ax.margins(0.12)

    def _update_highlight(self) -> None:
        fid = self.highlighted
        for t, g in zip(self.labels, self.analysis.groups):
            _label_style(t, g, t.get_gid() == fid)
        if fid is None:
            self._ring.set_data([], [])
            self._ring_inner.set_data([], [])
        else:
            x, y = self.analysis.pca.coords[self.analysis.index(fid), :2]
            self._ring.set_data([x], [y])
            self._ring_inner.set_data([x], [y])

    def id_from_pick(self, event) -> str | None:
        artist = event.artist
        if artist in self._point_tasks:
            ind = getattr(event, "ind", None)
            if ind is None or len(ind) == 0:
                return None
            idx = self._point_tasks[artist]
            # several points under the cursor: the nearest one
            me = event.mouseevent
            pts = self.ax.transData.transform(self.analysis.pca.coords[idx[ind], :2])
            best = int(np.argmin(np.hypot(pts[:, 0] - me.x, pts[:, 1] - me.y)))
            return self.analysis.ids[int(idx[ind[best]])]
        if artist in self.labels:
            return artist.get_gid()
        return None

    def id_from_click(self, event) -> str | None:
        if event.inaxes is not self.ax or event.x is None:
            return None
        pts = self.ax.transData.transform(self.analysis.pca.coords[:, :2])
        d = np.hypot(pts[:, 0] - event.x, pts[:, 1] - event.y)
        i = int(np.argmin(d))
        return self.analysis.ids[i] if d[i] <= 10 * self.ax.figure.dpi / 72 else None


class HeatmapPlot(EmbeddingPlot):
    """Cosine-similarity heatmap, rows and columns in dendrogram leaf order, cluster blocks outlined."""

    view = "heatmap"

    def _draw(self) -> None:
        from matplotlib.patches import Rectangle

        a, ax = self.analysis, self.ax
        order = a.clustering.order
        m = a.cosine[np.ix_(order, order)]
        off = m[~np.eye(len(m), dtype=bool)]
        if off.size and off.min() >= 0:
            vmin, vmax, cmap = float(np.floor(off.min() * 20) / 20), 1.0, "viridis"
        else:
            lim = float(np.ceil(np.abs(off).max() * 20) / 20) if off.size else 1.0
            vmin, vmax, cmap = -max(lim, 0.05), max(lim, 0.05), "RdBu_r"
        self.image = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        self.colorbar = ax.figure.colorbar(self.image, ax=ax, fraction=0.046, pad=0.02)
        self.colorbar.set_label("cosine similarity", fontsize=8)
        self.colorbar.ax.tick_params(labelsize=7)
        n = len(order)
        names = [a.short_names[i] for i in order]
        ax.set_xticks(range(n), names, rotation=90, fontsize=6.5)
        ax.set_yticks(range(n), names, fontsize=6.5)
        ax.tick_params(length=0)
        self.row_labels = list(ax.get_yticklabels())
        self.col_labels = list(ax.get_xticklabels())
        for pos, i in enumerate(order):
            for t in (self.row_labels[pos], self.col_labels[pos]):
                t.set_gid(a.ids[i])
                t.set_picker(True)
        # cluster blocks along the diagonal
        labels = a.clustering.labels[order]
        start = 0
        for pos in range(1, n + 1):
            if pos == n or labels[pos] != labels[start]:
                c = int(labels[start])
                ax.add_patch(
                    Rectangle(
                        (start - 0.5, start - 0.5),
                        pos - start,
                        pos - start,
                        fill=False,
                        ec=CLUSTER_COLORS[(c - 1) % len(CLUSTER_COLORS)],
                        lw=1.6,
                        zorder=3,
                    )
                )
                start = pos
        self._row_box = Rectangle((-0.5, 0), n, 1, fill=False, ec="black", lw=1.4, zorder=4, visible=False)
        self._col_box = Rectangle((0, -0.5), 1, n, fill=False, ec="black", lw=1.4, zorder=4, visible=False)
        ax.add_patch(self._row_box)
        ax.add_patch(self._col_box)
        ax.set_title(f"{a.title}: cosine similarity", fontsize=9)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(n - 0.5, -0.5)
        self._pos = {a.ids[i]: pos for pos, i in enumerate(order)}

    def _update_highlight(self) -> None:
        fid = self.highlighted
        groups = self.analysis.groups
        for t in self.row_labels + self.col_labels:
            _label_style(t, groups[self.analysis.index(t.get_gid())], t.get_gid() == fid)
        if fid is None:
            self._row_box.set_visible(False)
            self._col_box.set_visible(False)
            return
        p = self._pos[fid]
        self._row_box.set_y(p - 0.5)
        self._col_box.set_x(p - 0.5)
        self._row_box.set_visible(True)
        self._col_box.set_visible(True)

    def id_from_pick(self, event) -> str | None:
        if event.artist in self.row_labels or event.artist in self.col_labels:
            return event.artist.get_gid()
        return None

    def cell_at(self, event) -> tuple[str, str] | None:
        """(row finding, column finding) of the heatmap cell under a mouse event."""
        if event.inaxes is not self.ax or event.xdata is None:
            return None
        n = len(self.analysis.ids)
        r, c = int(round(event.ydata)), int(round(event.xdata))
        if not (0 <= r < n and 0 <= c < n):
            return None
        order = self.analysis.clustering.order
        return self.analysis.ids[order[r]], self.analysis.ids[order[c]]

    def id_from_click(self, event) -> str | None:
        cell = self.cell_at(event)
        return cell[0] if cell else None  # a click on a cell selects its row

    def describe_at(self, event) -> str | None:
        cell = self.cell_at(event)
        if not cell:
            return None
        a, cat = self.analysis, catalogue()
        cos = a.cosine[a.index(cell[0]), a.index(cell[1])]
        return f"{cat[cell[0]].short_name} vs {cat[cell[1]].short_name}: cosine {cos:+.3f}"


class DendrogramPlot(EmbeddingPlot):
    """Complete-linkage dendrogram (cosine distance), branches coloured by cluster, cut line shown."""

    view = "dendrogram"

    def _draw(self) -> None:
        from scipy.cluster.hierarchy import dendrogram

        a, ax = self.analysis, self.ax
        cl = a.clustering
        n = len(a.ids)
        # colour of each merge: its cluster's colour when below the cut, grey above
        leaves_under: dict[int, list[int]] = {i: [i] for i in range(n)}
        for j, row in enumerate(cl.linkage):
            leaves_under[n + j] = leaves_under[int(row[0])] + leaves_under[int(row[1])]

        def link_color(node: int) -> str:
            members = leaves_under[node]
            labs = {int(cl.labels[m]) for m in members}
            if len(labs) == 1 and cl.k > 1:
                c = labs.pop()
                return CLUSTER_COLORS[(c - 1) % len(CLUSTER_COLORS)]
            return "0.45"

        self.tree = dendrogram(
            cl.linkage,
            orientation="left",
            labels=a.short_names,
            ax=ax,
            link_color_func=link_color,
            leaf_font_size=7,
        )
        ax.invert_yaxis()  # first leaf at the top, like the heatmap rows
        self.leaf_order = [int(i) for i in self.tree["leaves"]]
        self.leaf_labels = list(ax.get_yticklabels())
        for t, i in zip(self.leaf_labels, self.leaf_order):
            t.set_gid(a.ids[i])
            t.set_picker(True)
        if cl.k > 1:
            ax.axvline(cl.cut_height, color="black", ls="--", lw=0.8)
        ax.set_xlabel("cosine distance (complete linkage)")
        pick = (
            f"k = {cl.k} clusters (best mean silhouette {cl.silhouette:.2f})" if cl.k > 1 else "one cluster"
        )
        ax.set_title(f"{a.title}: dendrogram\n{pick}", fontsize=9)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)

    def _update_highlight(self) -> None:
        fid = self.highlighted
        for t in self.leaf_labels:
            _label_style(t, self.analysis.groups[self.analysis.index(t.get_gid())], t.get_gid() == fid)

    def id_from_pick(self, event) -> str | None:
        if event.artist in self.leaf_labels:
            return event.artist.get_gid()
        return None

    def id_from_click(self, event) -> str | None:
        if event.inaxes is not self.ax or event.ydata is None:
            return None
        pos = int(round((event.ydata - 5.0) / 10.0))  # scipy puts leaf p at 5 + 10 p
        if 0 <= pos < len(self.leaf_order):
            return self.analysis.ids[self.leaf_order[pos]]
        return None


PLOTS: dict[str, type[EmbeddingPlot]] = {"pca": PCAPlot, "heatmap": HeatmapPlot, "dendrogram": DendrogramPlot}
FIGSIZES: dict[str, tuple[float, float]] = {
    "pca": (7.5, 6.0),
    "heatmap": (8.0, 7.0),
    "dendrogram": (6.5, 7.5),
}


def draw_view(ax: Axes, view: str, analysis: EmbeddingAnalysis, *, highlight: str | None = None):
    """Draw one view ("pca", "heatmap", "dendrogram") on ``ax``; returns the ``EmbeddingPlot``."""
    try:
        cls = PLOTS[view]
    except KeyError:
        raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}") from None
    return cls(ax, analysis, highlight=highlight)


def make_figure(
    view: str,
    analysis: EmbeddingAnalysis,
    *,
    highlight: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A stand-alone matplotlib figure of one view (no pyplot, no GUI backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize or FIGSIZES.get(view, (7, 6)), layout="constrained", dpi=100)
    draw_view(fig.add_subplot(), view, analysis, highlight=highlight)
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Save as PNG or SVG (by the file suffix)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ExportError(
            f"cannot save a figure as {path.suffix or 'a file without suffix'!r}",
            path=path,
            hint="use a .png or .svg file name",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from matplotlib import rc_context

        with rc_context({"svg.fonttype": "none"}):  # SVG text stays text (editable, small)
            fig.savefig(path, format=fmt, dpi=dpi, metadata={"Software": None} if fmt == "png" else None)
    except OSError as exc:
        raise ExportError(f"cannot write the figure ({exc.strerror or exc})", path=path) from exc
    return path


# -- CSV ----------------------------------------------------------------------------------------
def _write_csv(path: Path, header: list[str], rows: Iterable[list]) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in rows:
                w.writerow([_fmt(v) for v in row])
    except OSError as exc:
        raise ExportError(f"cannot write {path.name} ({exc.strerror or exc})", path=path) from exc
    return path


def _fmt(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return repr(float(v))
    return v


def write_matrix_csv(path: str | Path, matrix: np.ndarray, ids: Sequence[str]) -> Path:
    """A square matrix with the finding ids as header row and first column."""
    m = np.asarray(matrix)
    return _write_csv(Path(path), ["id", *ids], ([fid, *m[i]] for i, fid in enumerate(ids)))


def write_vectors_csv(path: str | Path, vectors: np.ndarray, ids: Sequence[str]) -> Path:
    """One row per finding: id, short name, group, then the vector's components."""
    cat = catalogue()
    v = np.asarray(vectors)
    header = ["id", "short_name", "group", *[f"d{j}" for j in range(v.shape[1])]]
    return _write_csv(
        Path(path), header, ([fid, cat[fid].short_name, cat[fid].group, *v[i]] for i, fid in enumerate(ids))
    )


def export_csvs(analysis: EmbeddingAnalysis, out_dir: str | Path, *, prefix: str | None = None) -> list[Path]:
    """The matrices of one analysis: vectors (or Gram), cosine, PCA coordinates, clusters."""
    out = Path(out_dir)
    p = prefix if prefix is not None else analysis.representation
    a = analysis
    cat = catalogue()
    written = []
    if a.vectors is not None:
        written.append(write_vectors_csv(out / f"{p}_vectors.csv", a.vectors, a.ids))
    else:
        written.append(write_matrix_csv(out / f"{p}_gram.csv", a.gram, a.ids))
    written.append(write_matrix_csv(out / f"{p}_cosine.csv", a.cosine, a.ids))
    written.append(
        _write_csv(
            out / f"{p}_pca.csv",
            ["id", "short_name", "group", "pc1", "pc2"],
            ([fid, cat[fid].short_name, cat[fid].group, *a.pca.coords[i, :2]] for i, fid in enumerate(a.ids)),
        )
    )
    leaf_pos = np.empty(len(a.ids), dtype=int)
    leaf_pos[a.clustering.order] = np.arange(len(a.ids))
    written.append(
        _write_csv(
            out / f"{p}_clusters.csv",
            ["id", "short_name", "group", "cluster", "leaf_position", "silhouette"],
            (
                [
                    fid,
                    cat[fid].short_name,
                    cat[fid].group,
                    int(a.clustering.labels[i]),
                    int(leaf_pos[i]),
                    a.clustering.sample_silhouette[i],
                ]
                for i, fid in enumerate(a.ids)
            ),
        )
    )
    return written


def export_figures(
    analysis: EmbeddingAnalysis,
    out_dir: str | Path,
    *,
    prefix: str | None = None,
    formats: Sequence[str] = ("png", "svg"),
    highlight: str | None = None,
) -> list[Path]:
    out = Path(out_dir)
    p = prefix if prefix is not None else analysis.representation
    written = []
    for view in VIEWS:
        fig = make_figure(view, analysis, highlight=highlight)
        for fmt in formats:
            written.append(save_figure(fig, out / f"{p}_{view}.{fmt}"))
    return written


# -- report -------------------------------------------------------------------------------------
def delta_w_breakdown(grams: ModuleGrams) -> dict[str, Any]:
    """How the group structure of delta W depends on the module type and the layer (for the card)."""
    out: dict[str, Any] = {"by_module_type": {}, "by_layer": {}}
    selections: list[tuple[str, str, Any, Any]] = [
        ("by_module_type", name, None, name) for name in (*MODULE_GROUPS, *grams.kinds)
    ]
    selections += [("by_layer", str(layer + 1), [layer], None) for layer in range(grams.n_layers)]
    for section, key, layers, kinds in selections:
        try:
            kin = resolve_kinds(kinds, grams.kinds)
            a = analyze_delta_w(grams, layers=layers, kinds=kin)
        except (ModelError, ValueError) as exc:
            out[section][key] = {"error": str(exc)}
            continue
        out[section][key] = _brief(a)
    return out


def _brief(a: EmbeddingAnalysis) -> dict[str, Any]:
    gs = a.group_silhouette
    return {
        "k": int(a.clustering.k),
        "silhouette": round(float(a.clustering.silhouette), 4),
        "group_silhouette": None if gs is None else round(float(gs), 4),
        "clusters_vs_groups_adjusted_rand": round(float(a.group_agreement), 4),
        "pca_explained_variance": [round(float(v), 4) for v in a.pca.explained],
    }


def write_embedding_report(
    model_dir: str | Path | LoadedModel | None,
    out_dir: str | Path,
    *,
    backbone_dir: str | Path | None = None,
    device: str | torch.device | None = "auto",
    scan: CTVolume | None = None,
) -> list[Path]:
    """Figures (PCA, heatmap, dendrogram; PNG + SVG) and CSVs for the task embeddings and delta W
    of a checkpoint (default: the embedded demo; a ``LoadedModel`` is used as is), plus
    ``embeddings_summary.json`` (clusters, silhouettes, explained variance, group separation per
    module type and per layer). With ``scan``, the same for that scan's task-conditioned features.
    Returns the written paths.
    """
    from hyperct.loading import LoadedModel, load_model

    if isinstance(model_dir, LoadedModel):
        loaded = model_dir
    else:
        loaded = load_model(model_dir, backbone_dir=backbone_dir, device=device)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the output folder ({exc.strerror or exc})", path=out) from exc
    written: list[Path] = []
    summary: dict[str, Any] = {
        "model": {
            "name": loaded.name,
            "version": loaded.version,
            "weights_sha256": loaded.weights_sha256,
            "demo": loaded.is_demo,
        },
        "method": {
            "cosine": "cosine similarity of the representation vectors; delta W through Gram matrices "
            "computed from the LoRA factors (trace identity), never materialised",
            "pca": "PCA of the centred vectors; delta W: kernel PCA of the double-centred Gram "
            "(identical to PCA of the flattened updates)",
            "clustering": f"complete linkage on cosine distance, optimal leaf order; k in 2..{MAX_CLUSTERS} "
            "by mean silhouette",
        },
        "representations": {},
    }
    vectors = {"task_embeddings": task_embedding_vectors(loaded)}
    if scan is not None:
        vectors["scan_features"] = scan_feature_vectors(loaded, scan)
    analyses: dict[str, Callable[[bool], EmbeddingAnalysis]] = {
        rep: (lambda centered, rep=rep: analyze_vectors(vectors[rep], representation=rep, centered=centered))
        for rep in vectors
    }
    grams = delta_w_module_grams(loaded)
    analyses["delta_w"] = lambda centered: analyze_delta_w(grams, centered=centered)
    for rep in REPRESENTATIONS:
        if rep not in analyses:
            continue
        try:
            a = analyses[rep](False)
        except ModelError as exc:  # e.g. an untrained hypernetwork: every delta W is zero
            summary["representations"][rep] = {"error": str(exc)}
            continue
        written += export_figures(a, out)
        written += export_csvs(a, out)
        summary["representations"][rep] = a.summary()
        try:
            summary["representations"][rep]["mean_removed"] = _brief(analyses[rep](True))
        except ModelError as exc:
            summary["representations"][rep]["mean_removed"] = {"error": str(exc)}
        if rep == "delta_w":
            summary["delta_w_breakdown"] = delta_w_breakdown(grams)
    path = out / "embeddings_summary.json"
    try:
        path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write {path.name} ({exc.strerror or exc})", path=path) from exc
    written.append(path)
    return written


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
