"""Evaluation figures (matplotlib, Agg canvas; never touches pyplot's global state).

* ``roc_grid``: one ROC panel per finding of a group (curve, chance diagonal, AUC with 95 % CI,
  the operating point at the reported threshold).
* ``dca_grid``: one decision-curve panel per finding: net benefit of the model against threshold
  probability, with treat-all and treat-none references (as in the paper's figures).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hyperct.training.metrics import (
    FindingMetrics,
    labelled,
    net_benefit,
    net_benefit_treat_all,
    roc_curve,
)

DCA_THRESHOLDS = np.linspace(0.01, 0.99, 99)


def _figure(n_panels: int, title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(5, max(1, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    fig = Figure(figsize=(3.1 * cols, 3.0 * rows + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    fig.suptitle(title, fontsize=12)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def roc_grid(
    panels: list[tuple[str, FindingMetrics, np.ndarray, np.ndarray]], title: str, path: str | Path
) -> Path:
    """``panels``: (label, metrics, y, prob) per finding."""
    fig, axes = _figure(len(panels), title)
    for ax, (label, m, y, prob) in zip(axes, panels):
        y, prob = labelled(y, prob)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        if m.evaluable:
            fpr, tpr, _ = roc_curve(y, prob)
            ax.plot(fpr, tpr, color="C0", lw=1.5)
            if np.isfinite(m.threshold):
                ax.plot([1 - m.specificity], [m.sensitivity], "o", color="C3", ms=4)
            ci = f" [{m.ci_low:.2f}, {m.ci_high:.2f}]" if np.isfinite(m.ci_low) else ""
            ax.set_title(f"{label}\nAUC {m.auc:.3f}{ci}", fontsize=8)
        else:
            ax.text(0.5, 0.5, "not evaluable\n(one class only)", ha="center", va="center", fontsize=8)
            ax.set_title(label, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("1 - specificity", fontsize=7)
        ax.set_ylabel("sensitivity", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_aspect("equal")
        ax.text(
            0.97,
            0.03,
            f"n={m.n}, pos={m.positives}",
            ha="right",
            va="bottom",
            fontsize=6,
            transform=ax.transAxes,
        )
    return _save(fig, Path(path))


def dca_grid(
    panels: list[tuple[str, FindingMetrics, np.ndarray, np.ndarray]],
    title: str,
    path: str | Path,
    thresholds: np.ndarray = DCA_THRESHOLDS,
) -> Path:
    fig, axes = _figure(len(panels), title)
    for ax, (label, _m, y, prob) in zip(axes, panels):
        y, prob = labelled(y, prob)
        ax.axhline(0.0, color="0.3", lw=0.8, label="treat none")
        if y.size:
            prev = float((y == 1).mean())
            ax.plot(
                thresholds,
                net_benefit_treat_all(y, thresholds),
                color="0.6",
                lw=1.0,
                ls="--",
                label="treat all",
            )
            ax.plot(thresholds, net_benefit(y, prob, thresholds), color="C0", lw=1.5, label="model")
            ax.set_ylim(-0.05 - 0.1 * prev, max(prev, 0.02) * 1.15)
        ax.set_xlim(0, 1)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("threshold probability", fontsize=7)
        ax.set_ylabel("net benefit", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6, loc="upper right")
    return _save(fig, Path(path))
