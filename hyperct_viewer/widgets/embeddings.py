"""The "HyperCT Task Embeddings" dock widget: how the model relates the 25 findings.

Three linked views (PCA scatter, cosine-similarity heatmap, dendrogram) of one representation of
the tasks: the learned task embeddings, the generated LoRA updates delta W (optionally for some
layers / module types) or the task-conditioned features of the loaded scan. All the analysis and
the drawing is ``hyperct.embeddings``; this module only wires it to Qt, napari workers and the
viewer's session. Clicking a finding in any view calls ``session.select_finding``; a finding selected
anywhere (e.g. in the Findings widget) is highlighted in every view.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from hyperct import embeddings as emb
from hyperct.errors import HyperCTError
from hyperct_viewer.jobs import Jobs
from hyperct_viewer.session import session_for

VIEW_TITLES = {"pca": "PCA", "heatmap": "Similarity", "dendrogram": "Dendrogram"}
MODULE_CHOICES = [
    ("All modules", None),
    ("Attention (q, k, v, o)", "attention"),
    ("MLP (up, down)", "mlp"),
]
NO_MODEL_TEXT = (
    "No model loaded. Load one in the HyperCT Findings widget, or press 'Load demo model'. "
    "(AI output, not a diagnosis.)"
)


class TaskEmbeddingsWidget(QWidget):
    """Dock widget "HyperCT Task Embeddings" (paper Sec. 5, Fig. 2, made interactive)."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.analysis: emb.EmbeddingAnalysis | None = None
        self.plots: dict[str, emb.EmbeddingPlot] = {}
        self.highlighted: str | None = None
        self._grams: emb.ModuleGrams | None = None
        self._features: Any = None  # (25, D) array for the current model + volume
        # one job at a time; its generation is bumped when the model or volume changes (stale
        # results are dropped). Errors are shown in the views, not as notifications.
        self.jobs = Jobs(self, notify=False)
        self.jobs.busy_changed.connect(self._on_busy_changed)
        self._pending: str | None = None  # what the job computes
        self._last_pick = None  # the mouse event a pick already handled (no double selection)
        self._build_ui()
        self.session.model_changed.connect(self._on_model_changed)
        self.session.volume_changed.connect(self._on_volume_changed)
        self.session.finding_selected.connect(self._on_finding_selected)
        self.highlighted = self.session.selected or None
        self._sync_model_controls()
        self._sync_scan_item()
        self.recompute()

    # -- UI ------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.model_label = QLabel(NO_MODEL_TEXT)
        self.model_label.setWordWrap(True)
        self.load_button = QPushButton("Load demo model")
        self.load_button.setToolTip("Load the embedded demo checkpoint into this viewer's HyperCT session")
        self.load_button.clicked.connect(self.load_demo_model)
        top.addWidget(self.model_label, 1)
        top.addWidget(self.load_button)
        layout.addLayout(top)

        form = QFormLayout()
        self.rep_combo = QComboBox()
        for key, label in emb.REPRESENTATIONS.items():
            self.rep_combo.addItem(label, key)
        self.rep_combo.setItemData(
            0, "the learned 512-d task embedding of each finding (hypernetwork input)", Qt.ToolTipRole
        )
        self.rep_combo.setItemData(
            1,
            "the generated weight updates (alpha/r) B_k A_k, compared without materialising them",
            Qt.ToolTipRole,
        )
        self.rep_combo.setItemData(
            2, "the 25 task-conditioned features (mean CLS) of the loaded scan", Qt.ToolTipRole
        )
        self.rep_combo.currentIndexChanged.connect(lambda _i: self.recompute())
        form.addRow("Representation", self.rep_combo)

        self.module_combo = QComboBox()
        self.module_combo.currentIndexChanged.connect(lambda _i: self._selection_changed())
        form.addRow("Modules", self.module_combo)
        layers = QHBoxLayout()
        self.layer_first = QSpinBox()
        self.layer_last = QSpinBox()
        for sb in (self.layer_first, self.layer_last):
            sb.setRange(1, 1)
            sb.valueChanged.connect(lambda _v: self._selection_changed())
        layers.addWidget(self.layer_first)
        layers.addWidget(QLabel("to"))
        layers.addWidget(self.layer_last)
        layers.addStretch(1)
        self.layer_row = QWidget()
        self.layer_row.setLayout(layers)
        layers.setContentsMargins(0, 0, 0, 0)
        form.addRow("Layers", self.layer_row)
        self.center_check = QCheckBox("Remove the mean over findings")
        self.center_check.setToolTip(
            "compare what is specific to each finding: subtract the mean vector over the 25 findings "
            "before the cosine similarity and the clustering (the PCA does not change)"
        )
        self.center_check.toggled.connect(lambda _c: self.recompute())
        form.addRow("", self.center_check)
        layout.addLayout(form)

        self.tabs = QTabWidget()
        self.figures: dict[str, Figure] = {}
        self.canvases: dict[str, FigureCanvasQTAgg] = {}
        for view in emb.VIEWS:
            fig = Figure(figsize=(5, 4.5), layout="constrained", dpi=90)
            canvas = FigureCanvasQTAgg(fig)
            canvas.setMinimumSize(280, 280)
            canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
            canvas.mpl_connect("pick_event", partial(self._on_pick, view))
            canvas.mpl_connect("button_press_event", partial(self._on_click, view))
            canvas.mpl_connect("motion_notify_event", partial(self._on_hover, view))
            self.figures[view] = fig
            self.canvases[view] = canvas
            self.tabs.addTab(canvas, VIEW_TITLES[view])
        layout.addWidget(self.tabs, 1)

        self.hover_label = QLabel("")
        self.hover_label.setWordWrap(True)
        layout.addWidget(self.hover_label)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.status_label)
        prog = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        prog.addWidget(self.progress, 1)
        prog.addWidget(self.cancel_button)
        layout.addLayout(prog)

        buttons = QHBoxLayout()
        self.export_view_button = QPushButton("Export view…")
        self.export_view_button.setToolTip("save the current view as PNG or SVG")
        self.export_view_button.clicked.connect(self._export_view_dialog)
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_csv_button.setToolTip(
            "write the vectors (or Gram matrix), the cosine matrix, the PCA coordinates and the clusters"
        )
        self.export_csv_button.clicked.connect(self._export_csv_dialog)
        buttons.addWidget(self.export_view_button)
        buttons.addWidget(self.export_csv_button)
        layout.addLayout(buttons)
        self._set_export_enabled(False)

    def _set_export_enabled(self, enabled: bool) -> None:
        self.export_view_button.setEnabled(enabled)
        self.export_csv_button.setEnabled(enabled)

    # -- state ---------------------------------------------------------------------------------
    @property
    def representation(self) -> str:
        return self.rep_combo.currentData()

    def set_representation(self, key: str) -> None:
        i = self.rep_combo.findData(key)
        if i < 0:
            raise ValueError(f"unknown representation {key!r}; one of {', '.join(emb.REPRESENTATIONS)}")
        self.rep_combo.setCurrentIndex(i)

    @property
    def current_view(self) -> str:
        return emb.VIEWS[self.tabs.currentIndex()]

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def module_selection(self) -> tuple[Any, range]:
        """(module types for ``ModuleGrams.gram``, 0-based layer range) chosen in the controls."""
        first, last = self.layer_first.value(), self.layer_last.value()
        return self.module_combo.currentData(), range(min(first, last) - 1, max(first, last))

    def set_module_selection(self, kinds: Any = None, layers: range | None = None) -> None:
        """Select a module choice (None, "attention", "mlp" or a module type) and a 0-based layer range."""
        i = self.module_combo.findData(kinds)
        if i < 0:
            raise ValueError(f"unknown module choice {kinds!r}")
        blockers = [self.module_combo, self.layer_first, self.layer_last]
        for w in blockers:
            w.blockSignals(True)
        try:
            self.module_combo.setCurrentIndex(i)
            if layers is not None:
                self.layer_first.setValue(layers[0] + 1)
                self.layer_last.setValue(layers[-1] + 1)
        finally:
            for w in blockers:
                w.blockSignals(False)
        self._selection_changed()

    def _model(self):
        loaded = self.session.model
        return None if loaded is None else loaded.model

    def _sync_model_controls(self) -> None:
        loaded = self.session.model
        self.load_button.setVisible(loaded is None)
        self.model_label.setText(NO_MODEL_TEXT if loaded is None else f"Model: {_describe(loaded)}")
        blockers = [self.module_combo, self.layer_first, self.layer_last]
        for w in blockers:
            w.blockSignals(True)
        try:
            current = self.module_combo.currentData()
            self.module_combo.clear()
            for label, data in MODULE_CHOICES:
                self.module_combo.addItem(label, data)
            n_layers = 1
            if loaded is not None:
                hn = loaded.model.hypernet
                for kind in hn.kinds:
                    self.module_combo.addItem(kind, kind)
                n_layers = hn.n_layers
            i = self.module_combo.findData(current)
            self.module_combo.setCurrentIndex(max(i, 0))
            for sb in (self.layer_first, self.layer_last):
                sb.setRange(1, n_layers)
            self.layer_first.setValue(1)
            self.layer_last.setValue(n_layers)
        finally:
            for w in blockers:
                w.blockSignals(False)
        self._sync_delta_w_controls()

    def _sync_delta_w_controls(self) -> None:
        on = self.representation == "delta_w" and self.session.model is not None
        for w in (self.module_combo, self.layer_first, self.layer_last):
            w.setEnabled(on)

    def _sync_scan_item(self) -> None:
        item = self.rep_combo.model().item(self.rep_combo.findData("scan_features"))
        has_volume = self.session.volume is not None
        item.setEnabled(has_volume)
        item.setToolTip(
            "the 25 task-conditioned features (mean CLS) of the loaded scan"
            if has_volume
            else "load a CT (and a model) first"
        )

    # -- session signals -----------------------------------------------------------------------
    def _on_model_changed(self, _loaded: Any = None) -> None:
        self._grams = None
        self._features = None
        self._quit_workers()
        self._sync_model_controls()
        self.recompute()

    def _on_volume_changed(self, _volume: Any = None) -> None:
        self._features = None
        self._sync_scan_item()
        if self.representation == "scan_features":
            self._quit_workers()
            if self.session.volume is None:
                self.set_representation("task_embeddings")
            else:
                self.recompute()

    def _on_finding_selected(self, finding_id: str) -> None:
        """A finding was selected somewhere: highlight it in every view (never re-emits)."""
        self.highlighted = finding_id or None
        for view, plot in self.plots.items():
            plot.set_highlight(self.highlighted)
            self.canvases[view].draw_idle()

    def select(self, finding_id: str) -> None:
        """Select a finding for the whole viewer (what a click in any view does)."""
        self.session.select_finding(finding_id)

    # -- computing -----------------------------------------------------------------------------
    def _selection_changed(self) -> None:
        if self.representation == "delta_w":
            self.recompute()

    def recompute(self) -> None:
        """Show the current representation (starts a worker when something heavy is missing)."""
        self._sync_delta_w_controls()
        rep = self.representation
        loaded = self.session.model
        if loaded is None:
            self._show_message(NO_MODEL_TEXT)
            return
        centered = self.center_check.isChecked()
        try:
            if rep == "task_embeddings":
                self._show(emb.analyze_task_embeddings(loaded, centered=centered))
            elif rep == "delta_w":
                if self._grams is None:
                    self._start_grams()
                    return
                kinds, layers = self.module_selection()
                self._show(emb.analyze_delta_w(self._grams, layers=layers, kinds=kinds, centered=centered))
            elif rep == "scan_features":
                if self.session.volume is None:
                    self._show_message("No CT loaded: open a scan to compare its task-conditioned features.")
                    return
                if self._features is None:
                    self._start_features()
                    return
                self._show(emb.analyze_scan_features(self._features, centered=centered))
        except (HyperCTError, ValueError) as exc:
            self._show_message(str(exc))

    def _start_worker(self, what: str, func, *args, generator: bool = False) -> None:
        if self._pending == what:
            return
        self._quit_workers()  # a stale job may still be finishing: this one starts after it
        self.jobs.start(
            what,
            func,
            *args,
            on_done=partial(self._worker_returned, what),
            on_error=partial(self._worker_errored, what),
            on_progress=self._worker_progress if generator else None,
            queue=True,
        )
        self._pending = what
        self._clear_views()
        self.status_label.setText(
            {
                "grams": "Computing the Gram matrices of the generated updates…",
                "features": "Computing the scan's task-conditioned features…",
                "model": "Loading the demo model…",
            }[what]
        )
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.cancel_button.setVisible(generator)

    def _start_grams(self) -> None:
        self._start_worker("grams", emb.delta_w_module_grams, self.session.model)

    def _start_features(self) -> None:
        self._start_worker(
            "features", emb.scan_feature_steps, self.session.model, self.session.volume, generator=True
        )

    def load_demo_model(self) -> None:
        """Load the embedded demo checkpoint in a worker; on success it becomes the session's model."""
        from hyperct.loading import load_model

        self._start_worker("model", load_model)

    def _worker_progress(self, step: Any) -> None:
        self.progress.setRange(0, step.total)
        self.progress.setValue(step.done)
        self.status_label.setText(step.message)

    def _worker_returned(self, what: str, value: Any) -> None:
        self._end_pending()
        if what == "model":
            self.session.set_model(value)  # -> model_changed -> recompute
            return
        if what == "grams":
            self._grams = value
        elif what == "features":
            self._features = value
        self.recompute()

    def _worker_errored(self, what: str, exc: BaseException) -> bool:
        self._end_pending()
        prefix = {"model": "Could not load the demo model", "grams": "Delta W", "features": "Scan features"}
        self._show_message(f"{prefix[what]}: {exc}")
        if what == "model":
            self._sync_model_controls()
        return True  # shown in the views

    def _on_busy_changed(self, busy: bool) -> None:
        if not busy and self._pending is not None:
            self._end_pending()  # the job ended without a result (cancelled)

    def _end_pending(self) -> None:
        self._pending = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)

    def _quit_workers(self) -> None:
        """Whatever runs is stale: its result is dropped (generators stop at their next step)."""
        self.jobs.invalidate()
        self._end_pending()

    def cancel(self) -> None:
        """Stop the running computation (scan features stop between task chunks)."""
        self._quit_workers()
        self._show_message("Cancelled.")

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self._quit_workers()
        for sig, slot in (
            (self.session.model_changed, self._on_model_changed),
            (self.session.volume_changed, self._on_volume_changed),
            (self.session.finding_selected, self._on_finding_selected),
        ):
            sig.disconnect(slot, missing_ok=True)
        super().closeEvent(event)

    # -- drawing -------------------------------------------------------------------------------
    def _clear_views(self) -> None:
        self.analysis = None
        self.plots = {}
        for view, fig in self.figures.items():
            fig.clear()
            self.canvases[view].draw_idle()
        self._set_export_enabled(False)
        self.hover_label.setText("")

    def _show_message(self, text: str) -> None:
        self._clear_views()
        for view, fig in self.figures.items():
            fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, color="0.3")
            self.canvases[view].draw_idle()
        self.status_label.setText(text)

    def _show(self, analysis: emb.EmbeddingAnalysis) -> None:
        self._clear_views()
        self.analysis = analysis
        for view, fig in self.figures.items():
            self.plots[view] = emb.draw_view(fig.add_subplot(), view, analysis, highlight=self.highlighted)
            self.canvases[view].draw_idle()
        self.status_label.setText(_status_text(analysis))
        self._set_export_enabled(True)

    # -- mouse -----------------------------------------------------------------------------------
    def _on_pick(self, view: str, event) -> None:
        plot = self.plots.get(view)
        if plot is None or getattr(event.mouseevent, "button", None) != 1:
            return
        fid = plot.id_from_pick(event)
        if fid:
            self._last_pick = event.mouseevent
            self.select(fid)

    def _on_click(self, view: str, event) -> None:
        plot = self.plots.get(view)
        if plot is None or event.button != 1 or event is self._last_pick:
            return
        fid = plot.id_from_click(event)
        if fid:
            self.select(fid)

    def _on_hover(self, view: str, event) -> None:
        plot = self.plots.get(view)
        text = plot.describe_at(event) if plot is not None else None
        self.hover_label.setText(text or "")

    # -- export ----------------------------------------------------------------------------------
    def export_view(self, path: str | Path, view: str | None = None) -> Path:
        """Save a view (default: the current tab) as PNG/SVG, as the CLI draws it (with the highlight)."""
        if self.analysis is None:
            raise RuntimeError("nothing to export yet")
        fig = emb.make_figure(view or self.current_view, self.analysis, highlight=self.highlighted)
        return emb.save_figure(fig, path)

    def export_csv(self, folder: str | Path) -> list[Path]:
        """Write the current representation's matrices as CSV files into ``folder``."""
        if self.analysis is None:
            raise RuntimeError("nothing to export yet")
        return emb.export_csvs(self.analysis, folder)

    def _export_view_dialog(self) -> None:
        if self.analysis is None:
            return
        default = f"{self.analysis.representation}_{self.current_view}.png"
        path, chosen = QFileDialog.getSaveFileName(
            self, "Export view", default, "PNG image (*.png);;SVG image (*.svg)"
        )
        if not path:
            return
        if not Path(path).suffix:
            path += ".svg" if "svg" in (chosen or "").lower() else ".png"
        try:
            written = self.export_view(path)
        except HyperCTError as exc:
            self.status_label.setText(f"Export failed: {exc}")
            return
        self.status_label.setText(f"Saved {written}")

    def _export_csv_dialog(self) -> None:
        if self.analysis is None:
            return
        folder = QFileDialog.getExistingDirectory(self, "Export CSV files into folder")
        if not folder:
            return
        try:
            written = self.export_csv(folder)
        except HyperCTError as exc:
            self.status_label.setText(f"Export failed: {exc}")
            return
        self.status_label.setText(f"Wrote {len(written)} CSV files to {folder}")


def _describe(loaded: Any) -> str:
    try:
        return loaded.describe()
    except Exception:  # a model without a manifest (tests, scripts)
        return type(loaded.model).__name__


def _status_text(a: emb.EmbeddingAnalysis) -> str:
    cl = a.clustering
    parts = [
        f"{cl.k} clusters (best mean silhouette {cl.silhouette:.2f})" if cl.k > 1 else "one cluster",
        f"PC1 + PC2: {100 * float(a.pca.explained[:2].sum()):.0f}% of variance",
        f"clusters vs groups: adjusted Rand {a.group_agreement:.2f}",
    ]
    gs = a.group_silhouette
    if gs is not None:
        parts.append(f"Conventional/Opportunistic silhouette {gs:.2f}")
    text = "; ".join(parts) + "."
    if a.notes:
        text += " " + " ".join(a.notes)
    return text
