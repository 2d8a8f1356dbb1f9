"""The three views of an ``EmbeddingAnalysis`` (PCA scatter, cosine heatmap, dendrogram), drawn
with matplotlib's object API (no pyplot, no GUI backend) on any ``Axes``: the viewer's Qt canvas or
an export figure. Each view highlights one finding in place and maps pick/click events back to
finding ids."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hyperct.embeddings.analysis import EmbeddingAnalysis
from hyperct.errors import ExportError
from hyperct.findings import GROUP_LABELS, catalogue

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
