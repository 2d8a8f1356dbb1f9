"""Exports of the analysis: CSVs of one representation's matrices, the figures of its three views,
and ``write_embedding_report`` (everything for a checkpoint: ``hyperct info --embeddings OUT_DIR``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hyperct.embeddings.analysis import EmbeddingAnalysis, analyze_delta_w, analyze_vectors
from hyperct.embeddings.plots import VIEWS, make_figure, save_figure
from hyperct.embeddings.representations import (
    MODULE_GROUPS,
    REPRESENTATIONS,
    ModuleGrams,
    delta_w_module_grams,
    resolve_kinds,
    scan_feature_vectors,
    task_embedding_vectors,
)
from hyperct.embeddings.statistics import MAX_CLUSTERS
from hyperct.errors import ExportError, ModelError
from hyperct.findings import catalogue

if TYPE_CHECKING:  # pragma: no cover
    from hyperct.loading import LoadedModel
    from hyperct.volume import CTVolume


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
