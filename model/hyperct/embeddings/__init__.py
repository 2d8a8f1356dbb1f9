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

Modules: ``representations`` (the three representations), ``statistics`` (PCA, cosine, silhouette,
clustering), ``analysis`` (``EmbeddingAnalysis`` of one representation), ``plots`` (the three
views) and ``report`` (CSV and figure exports, ``write_embedding_report``). Everything is
importable from ``hyperct.embeddings``.
"""

from hyperct.embeddings.analysis import (
    EmbeddingAnalysis,
    analyze_delta_w,
    analyze_gram,
    analyze_scan_features,
    analyze_task_embeddings,
    analyze_vectors,
)
from hyperct.embeddings.plots import (
    CLUSTER_COLORS,
    CLUSTER_MARKERS,
    FIGSIZES,
    GROUP_COLORS,
    HIGHLIGHT_COLOR,
    PLOTS,
    VIEWS,
    DendrogramPlot,
    EmbeddingPlot,
    HeatmapPlot,
    PCAPlot,
    draw_view,
    make_figure,
    save_figure,
)
from hyperct.embeddings.report import (
    delta_w_breakdown,
    export_csvs,
    export_figures,
    write_embedding_report,
    write_matrix_csv,
    write_vectors_csv,
)
from hyperct.embeddings.representations import (
    MODULE_GROUPS,
    REPRESENTATIONS,
    ModuleGrams,
    delta_w_gram,
    delta_w_module_grams,
    describe_selection,
    resolve_kinds,
    resolve_layers,
    scan_feature_steps,
    scan_feature_vectors,
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
    silhouette_samples,
    silhouette_score,
)

__all__ = [
    "CLUSTER_COLORS",
    "CLUSTER_MARKERS",
    "Clustering",
    "DendrogramPlot",
    "EmbeddingAnalysis",
    "EmbeddingPlot",
    "FIGSIZES",
    "GROUP_COLORS",
    "HIGHLIGHT_COLOR",
    "HeatmapPlot",
    "MAX_CLUSTERS",
    "MODULE_GROUPS",
    "ModuleGrams",
    "PCAPlot",
    "PCAResult",
    "PLOTS",
    "REPRESENTATIONS",
    "VIEWS",
    "adjusted_rand_index",
    "analyze_delta_w",
    "analyze_gram",
    "analyze_scan_features",
    "analyze_task_embeddings",
    "analyze_vectors",
    "cluster_tasks",
    "cosine_distance",
    "cosine_from_gram",
    "delta_w_breakdown",
    "delta_w_gram",
    "delta_w_module_grams",
    "describe_selection",
    "draw_view",
    "export_csvs",
    "export_figures",
    "make_figure",
    "pca_from_gram",
    "pca_from_vectors",
    "resolve_kinds",
    "resolve_layers",
    "save_figure",
    "scan_feature_steps",
    "scan_feature_vectors",
    "silhouette_samples",
    "silhouette_score",
    "task_embedding_vectors",
    "write_embedding_report",
    "write_matrix_csv",
    "write_vectors_csv",
]
