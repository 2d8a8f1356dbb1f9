"""``EmbeddingAnalysis``: cosine, PCA and clustering of one representation of the tasks, with the
group statistics (Conventional / Opportunistic) the views and the report show."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperct.embeddings.representations import (
    REPRESENTATIONS,
    ModuleGrams,
    delta_w_module_grams,
    task_embedding_vectors,
)
from hyperct.embeddings.statistics import (
    MAX_CLUSTERS,
    Clustering,
    PCAResult,
    adjusted_rand_index,
    cluster_tasks,
    cosine_distance,
    cosine_from_gram,
    pca_from_gram,
    pca_from_vectors,
    silhouette_score,
)
from hyperct.errors import ModelError
from hyperct.findings import catalogue


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
