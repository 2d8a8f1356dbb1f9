"""Numerical tools of the analysis (numpy and scipy only): PCA of vectors or of a Gram matrix (kernel
PCA), cosine similarity and distance, silhouettes, the adjusted Rand index, and the hierarchical
clustering with k chosen by the mean silhouette."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage, optimal_leaf_ordering
from scipy.spatial.distance import squareform

MAX_CLUSTERS = 8


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
