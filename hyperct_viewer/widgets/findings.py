"""The "HyperCT Findings" dock widget: analyse a CT, browse the 25 findings, overlay saliency, export.

All imaging and model work is done by the ``hyperct`` engine; this widget only wires it to napari
layers, Qt controls and background jobs (``hyperct_viewer.jobs``: one job at a time, stale results
dropped, cancel, errors to the user). Results belong to the CT layer they were computed for
(``hyperct_viewer.session.scan_results``): the widget follows the selected CT layer and shows that
layer's scores, overlay and export, whatever runs in the background.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QRectF, Qt, Signal
from qtpy.QtGui import QBrush, QColor, QFont, QPainter
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSplitter,
    QStyledItemDelegate,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from hyperct import DISCLAIMER
from hyperct.findings import GROUP_LABELS, catalogue
from hyperct.results import (
    CALL_NO_SCORE,
    CALL_NOT_ASSESSED,
    CALL_PRESENT,
    HIGH_SPECIFICITY_NOTE,
    SCORED_CALLS,
)
from hyperct.saliency import DEFAULT_METHOD, METHODS
from hyperct_viewer.jobs import Jobs
from hyperct_viewer.layers import (
    SALIENCY_KEY,
    WINDOW_PRESETS,
    saliency_layer_kwargs,
    volume_of,
    window_level_drag,
    window_limits,
)
from hyperct_viewer.session import ScanResults, scan_results, session_for
from hyperct_viewer.widgets.export_form import ExportForm

ROLE_VALUE = Qt.UserRole + 1  # numeric value for sorting / bars
ROLE_ID = Qt.UserRole + 2  # finding id
ROLE_CALL = Qt.UserRole + 3
ROLE_ORDER = Qt.UserRole + 4  # catalogue / group order

COL_NAME, COL_PROB, COL_THRESH, COL_CALL = range(4)
SALIENCY_METHODS = {m.name: m.id for m in METHODS.values()}  # combo text -> method id
DEVICES = {"Auto": "auto", "CUDA": "cuda", "CPU": "cpu"}
# window preset -> keyboard shortcut (napari key names); image layers use 1/2 for their modes
WINDOW_KEYS = {"lung": "Shift-L", "mediastinum": "Shift-M", "bone": "Shift-B"}
CALL_TIPS = {
    CALL_NO_SCORE: "The model's output for this finding was not a finite number (NaN or infinity): "
    "a failure, not a result. No saliency map is computed for it.",
    CALL_NOT_ASSESSED: "This finding was not scored (not asked for).",
}
NO_SCORE_COLOR = QColor(255, 167, 38)


class _FindingItem(QTreeWidgetItem):
    """Sorts numeric columns by value, text columns by text; unscored rows last."""

    def __lt__(self, other):
        col = self.treeWidget().sortColumn() if self.treeWidget() else 0
        a, b = self.data(col, ROLE_VALUE), other.data(col, ROLE_VALUE)
        if a is not None and b is not None:
            return float(a) < float(b)
        if a is None and b is None:
            return self.text(col) < other.text(col)
        descending = self.treeWidget().header().sortIndicatorOrder() == Qt.DescendingOrder
        return (a is None) == descending  # rows without a value stay at the bottom either way


class _GroupItem(QTreeWidgetItem):
    """Group rows keep the catalogue order (Conventional, then Opportunistic) whatever the sort."""

    def __lt__(self, other):
        a, b = self.data(COL_NAME, ROLE_ORDER), other.data(COL_NAME, ROLE_ORDER)
        if a is None or b is None:
            return super().__lt__(other)
        tree = self.treeWidget()
        descending = tree is not None and tree.header().sortIndicatorOrder() == Qt.DescendingOrder
        return (a > b) if descending else (a < b)


class ProbabilityBarDelegate(QStyledItemDelegate):
    """Draws the probability as a horizontal bar with the value on top."""

    def paint(self, painter: QPainter, option, index):
        value = index.data(ROLE_VALUE)
        if value is None:
            return super().paint(painter, option, index)
        painter.save()
        rect = option.rect.adjusted(2, 3, -2, -3)
        painter.fillRect(rect, QColor(60, 60, 60))
        present = index.data(ROLE_CALL) == CALL_PRESENT
        bar = QRectF(rect.x(), rect.y(), rect.width() * max(0.0, min(1.0, float(value))), rect.height())
        painter.fillRect(bar, QBrush(QColor(214, 96, 77) if present else QColor(90, 140, 200)))
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(rect, Qt.AlignCenter, f"{float(value):.2f}")
        painter.restore()


def scan_source(volume) -> str:
    """Where a scan came from, as a user names it: the folder of a DICOM series, else the file."""
    paths = [str(p) for p in (volume.source_paths or [])]
    if not paths:
        return "an array in memory"
    if volume.source_format == "dicom":
        try:
            return os.path.commonpath([str(Path(p).parent) for p in paths])
        except ValueError:  # different drives
            return str(Path(paths[0]).parent)
    return paths[0]


def describe_scan(volume) -> str:
    z, y, x = volume.shape
    sz, sy, sx = volume.spacing
    return f"{x} x {y} pixels, {z} slices, {sx:.2f} x {sy:.2f} x {sz:.2f} mm; from {scan_source(volume)}"


class FindingsWidget(QWidget):
    """Dock widget: CT + model + device -> Analyze -> findings table -> saliency overlay -> export."""

    analysis_finished = Signal(object)  # AnalysisResult of the selected scan
    saliency_shown = Signal(str)  # finding id
    job_failed = Signal(str)  # the message shown to the user

    def __init__(self, napari_viewer):
        super().__init__()
        # napari hands plugin widgets a PublicOnlyProxy that wraps every layer in a new proxy on each
        # access; results are keyed by the layer itself, so the widget works on the real viewer.
        self.viewer = _unwrap(napari_viewer)
        self.session = session_for(napari_viewer)
        self._model_dir: str | None = None
        self._backbone_dir: str | None = None
        self.jobs = Jobs(self)
        self.jobs.busy_changed.connect(self._on_busy_changed)
        self.jobs.failed.connect(self.job_failed.emit)
        self._pending_saliency: str | list[str] | None = None  # asked while a job ran
        self._updating_selection = False
        self._slow_note = ""  # the CPU time estimate of a slow analysis, shown with its progress
        self.viewer.mouse_drag_callbacks.append(self._window_level_drag)  # right-drag: window/level
        self._following = False
        self._build_ui()
        self._connect()
        self._bind_keys()
        self._refresh_layers()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.setMinimumWidth(420)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        # always there: a bar that appears after the content was laid out would cover its right edge
        self.scroll.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOn)
        outer.addWidget(self.scroll)
        content = QWidget()
        self.scroll.setWidget(content)
        root = QVBoxLayout(content)
        root.setContentsMargins(6, 6, 6, 6)
        root.setSpacing(6)

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet(
            "background:#7a5b00;color:white;padding:4px;border-radius:4px;font-weight:bold;"
        )
        root.addWidget(self.banner)

        ct_box = QGroupBox("CT")
        ct_form = QFormLayout(ct_box)
        ct_form.setRowWrapPolicy(QFormLayout.DontWrapRows)
        self.layer_combo = QComboBox()
        self.layer_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.layer_combo.setMinimumContentsLength(12)
        self.layer_combo.setToolTip(
            "CT layer opened with the HyperCT reader or sample. The table, overlay and export belong "
            "to the scan selected here (selecting a CT layer in the layer list selects it here too)."
        )
        ct_form.addRow("Scan", self.layer_combo)
        presets = QHBoxLayout()
        self.window_buttons = {}
        for name in WINDOW_PRESETS:
            b = QPushButton(name.capitalize())
            lvl, wid = WINDOW_PRESETS[name]
            b.setToolTip(
                f"Window level {lvl:g} HU, width {wid:g} HU (shortcut {WINDOW_KEYS[name]}); "
                "right-drag on the image: width left-right, level up-down"
            )
            b.clicked.connect(lambda _=False, n=name: self.set_window(n))
            presets.addWidget(b)
            self.window_buttons[name] = b
        ct_form.addRow("Window", presets)
        self.qc_label = QLabel()
        self.qc_label.setWordWrap(True)
        self.qc_label.setStyleSheet("color:#ffb74d;")
        self.qc_label.hide()
        ct_form.addRow(self.qc_label)
        root.addWidget(ct_box)

        model_box = QGroupBox("Model")
        mform = QFormLayout(model_box)
        self.model_label = QLabel("Embedded demo model")
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.model_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        mform.addRow("Weights", self.model_label)
        mbuttons = QHBoxLayout()
        self.checkpoint_button = QPushButton("Checkpoint…")
        self.checkpoint_button.setToolTip(
            "Choose a HyperCT checkpoint folder (manifest.json + model.safetensors)"
        )
        self.backbone_button = QPushButton("Backbone…")
        self.backbone_button.setToolTip(
            "Choose a local DINOv3 folder (config.json + model.safetensors) for checkpoints with external backbone weights"
        )
        self.demo_button = QPushButton("Use demo")
        self.demo_button.setToolTip("Use the embedded demo model (trained on synthetic phantoms)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setToolTip("Where the model runs")
        self._disable_cuda_if_missing()
        for b in (self.checkpoint_button, self.backbone_button, self.demo_button):
            mbuttons.addWidget(b)
        mform.addRow(mbuttons)
        drow = QHBoxLayout()
        self.device_label = QLabel("")
        drow.addWidget(self.device_combo)
        drow.addWidget(self.device_label, 1)
        mform.addRow("Device", drow)
        root.addWidget(model_box)

        run_row = QHBoxLayout()
        self.analyze_button = QPushButton("Analyze")
        self.analyze_button.setStyleSheet("font-weight:bold;")
        self.analyze_button.setToolTip("Score the 25 findings of the selected scan")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        run_row.addWidget(self.analyze_button)
        run_row.addWidget(self.progress, 1)
        run_row.addWidget(self.cancel_button)
        root.addLayout(run_row)
        self.status = QLabel(
            "Open a chest CT (drag a DICOM folder or NIfTI in) or File > Open Sample > HyperCT."
        )
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Minimum)
        root.addWidget(self.status)

        self.table = QTreeWidget()
        self.table.setColumnCount(4)
        self.table.setHeaderLabels(["Finding", "Probability", "Threshold", "Call"])
        self.table.setItemDelegateForColumn(COL_PROB, ProbabilityBarDelegate(self.table))
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setRootIsDecorated(True)
        self.table.setUniformRowHeights(True)
        self.table.setTextElideMode(Qt.ElideRight)
        self.table.setIndentation(12)
        header = self.table.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(COL_NAME, QHeaderView.Stretch)
        for col, width in ((COL_PROB, 92), (COL_THRESH, 64), (COL_CALL, 96)):
            header.setSectionResizeMode(col, QHeaderView.Fixed)
            self.table.setColumnWidth(col, width)
        self.table.headerItem().setToolTip(COL_THRESH, "A probability at or above it is called present")
        self.table.setMinimumHeight(150)
        self._group_items: dict[str, QTreeWidgetItem] = {}
        self._items: dict[str, _FindingItem] = {}
        self._populate_table()

        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        sal_box = QGroupBox("Saliency")
        sform = QFormLayout(sal_box)
        self.method_combo = QComboBox()
        for i, m in enumerate(METHODS.values()):
            self.method_combo.addItem(m.name)
            self.method_combo.setItemData(i, m.description, Qt.ToolTipRole)
        self.method_combo.setCurrentText(METHODS[DEFAULT_METHOD].name)
        self.method_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.method_help = QLabel()
        self.method_help.setWordWrap(True)
        self.method_help.setStyleSheet("color: gray; font-size: 11px;")
        self.method_help.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Minimum)
        self.all_button = QPushButton("All findings")
        self.all_button.setToolTip(
            "Compute the maps of all 25 findings in one batched backward pass (methods that allow it; "
            f"otherwise {METHODS[DEFAULT_METHOD].name})"
        )
        mrow = QHBoxLayout()
        mrow.addWidget(self.method_combo, 1)
        mrow.addWidget(self.all_button)
        sform.addRow("Method", mrow)
        sform.addRow(self.method_help)
        self._describe_method()
        self.show_saliency = QCheckBox("Show overlay")
        self.show_saliency.setChecked(True)
        self.opacity_slider = QSlider(Qt.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(60)
        orow = QHBoxLayout()
        orow.addWidget(self.show_saliency)
        orow.addWidget(QLabel("Opacity"))
        orow.addWidget(self.opacity_slider, 1)
        sform.addRow(orow)
        lower_layout.addWidget(sal_box)

        exp_box = QGroupBox("Export")
        ebox = QVBoxLayout(exp_box)
        self.export_form = ExportForm()  # magicgui: mode, folder, file types, overwrite, Export
        ebox.addWidget(self.export_form.native)
        self.out_edit = self.export_form.folder.line_edit.native  # the folder's text field
        self.export_button = self.export_form.export_button.native
        self.export_buttons = {"export": self.export_button}
        lower_layout.addWidget(exp_box)
        lower_layout.addStretch(1)

        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(lower)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        root.addWidget(self.splitter, 1)
        self._sync_controls()
        self._update_banner()

    def _disable_cuda_if_missing(self) -> None:
        import torch

        if not torch.cuda.is_available():
            item = self.device_combo.model().item(1)
            item.setEnabled(False)
            item.setToolTip("No CUDA GPU visible to PyTorch")

    def _populate_table(self) -> None:
        """The 25 findings in catalogue order, grouped (Conventional above Opportunistic), unsorted."""
        self.table.setSortingEnabled(False)
        self.table.clear()
        self._group_items.clear()
        self._items.clear()
        for order, (group, label) in enumerate(GROUP_LABELS.items()):
            g = _GroupItem(self.table, [label])
            g.setData(COL_NAME, ROLE_ORDER, order)
            g.setFlags(g.flags() & ~Qt.ItemIsSelectable)
            font = g.font(0)
            font.setBold(True)
            g.setFont(0, font)
            self._group_items[group] = g
        for f in catalogue():
            item = _FindingItem(self._group_items[f.group], [f.name, "", "", ""])
            item.setData(COL_NAME, ROLE_ID, f.id)
            item.setData(COL_NAME, ROLE_ORDER, f.index)
            for col in range(4):
                item.setToolTip(col, f.tooltip)  # starts with the full name (names are elided)
            self._items[f.id] = item
        for g in self._group_items.values():
            g.setExpanded(True)

    def _connect(self) -> None:
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.analyze_button.clicked.connect(self.analyze)
        self.cancel_button.clicked.connect(self.cancel)
        self.checkpoint_button.clicked.connect(self._choose_checkpoint)
        self.backbone_button.clicked.connect(self._choose_backbone)
        self.demo_button.clicked.connect(lambda: self.set_model_dirs(None, None))
        self.device_combo.currentIndexChanged.connect(self._on_device_changed)
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.all_button.clicked.connect(self.compute_all_saliency)
        self.opacity_slider.valueChanged.connect(self._on_opacity)
        self.show_saliency.toggled.connect(self._on_show_toggled)
        self.export_form.export_button.changed.connect(self.export_from_form)
        self.session.finding_selected.connect(self._on_finding_selected)
        self.session.model_changed.connect(lambda _m: self._update_banner())

    def _bind_keys(self) -> None:
        """Shift+L / Shift+M / Shift+B: lung, mediastinum and bone windows on the selected scan."""
        for preset, key in WINDOW_KEYS.items():
            # napari's key handler reads __name__ of every bound callable: a bare partial has none and
            # broke every key press on the canvas (seen with real X events, scripts/check_mouse_xdotool.py)
            apply = partial(_apply_window, self, preset)
            apply.__name__ = f"hyperct_{preset}_window"
            self.viewer.bind_key(key, apply, overwrite=True)

    # ------------------------------------------------------------------ state
    @property
    def device_spec(self) -> str:
        return DEVICES[self.device_combo.currentText()]

    @property
    def saliency_method(self) -> str:
        return SALIENCY_METHODS[self.method_combo.currentText()]

    @property
    def export_mode(self) -> str:
        return self.export_form.mode.value

    def ct_layers(self) -> list:
        return [layer for layer in self.viewer.layers if volume_of(layer) is not None]

    @property
    def ct_layer(self):
        """The selected scan's CT layer."""
        layer = self.layer_combo.currentData()
        return layer if layer is not None and layer in self.ct_layers() else None

    def results_of(self, layer=None) -> ScanResults | None:
        """The results store of ``layer`` (default: the selected scan)."""
        layer = _unwrap(layer) if layer is not None else self.ct_layer
        return scan_results(layer, volume_of(layer)) if layer is not None else None

    @property
    def result(self):
        """The analysis result of the selected scan (None before Analyze)."""
        store = self.results_of()
        return store.result if store is not None else None

    def _update_banner(self) -> None:
        model = self.session.model
        demo = model is None or model.is_demo
        text = f"⚠ {DISCLAIMER}"
        if demo:
            text += " Demo model (synthetic phantoms): no clinical validity, not a medical device."
        self.banner.setText(text)
        if model is not None:
            self.model_label.setText(f"{model.name} v{model.version}\nsha256 {model.weights_sha256[:16]}…")
            self.model_label.setToolTip(f"{model.name} v{model.version}\nsha256 {model.weights_sha256}")
            self.device_label.setText(f"running on {model.device}")

    def _sync_controls(self) -> None:
        busy = self.jobs.busy
        has_result = self.result is not None
        self.analyze_button.setEnabled(not busy and self.ct_layer is not None)
        self.cancel_button.setEnabled(busy)
        for b in (self.checkpoint_button, self.backbone_button, self.demo_button):
            b.setEnabled(not busy)
        self.device_combo.setEnabled(not busy)
        self.all_button.setEnabled(has_result and not busy)
        for b in self.export_buttons.values():
            b.setEnabled(has_result and not busy)

    def _on_busy_changed(self, busy: bool) -> None:
        self.progress.setTextVisible(busy)
        if not busy:  # an empty bar when idle (not a stale "0 %")
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        self._sync_controls()
        if not busy and self._pending_saliency:
            pending, self._pending_saliency = self._pending_saliency, None
            if self.result is None:
                return
            if isinstance(pending, list):
                self._start_saliency(self.ct_layer, pending)
            else:
                self._request_saliency(pending)

    def _set_progress(self, layer, step) -> None:
        if hasattr(step, "total"):
            self.progress.setRange(0, step.total)
            self.progress.setValue(step.done)
            where = "" if layer is self.ct_layer else f"{layer.name}: "
            self.status.setText(f"{where}{step.message}{self._slow_note}")

    # ------------------------------------------------------------------ CT layer
    def _window_level_drag(self, _viewer, event):
        """Right-drag anywhere on the canvas sets the selected scan's window and level."""
        layer = self.ct_layer
        if layer is not None:
            yield from window_level_drag(layer, event)

    def _refresh_layers(self, *_):
        current = self.ct_layer
        layers = self.ct_layers()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for layer in layers:
            self.layer_combo.addItem(layer.name, layer)
            self.layer_combo.setItemData(self.layer_combo.count() - 1, layer.name, Qt.ToolTipRole)
            layer.events.name.connect(self._rename_layers)  # napari ignores a repeated connection
        if current in layers:
            self.layer_combo.setCurrentIndex(layers.index(current))
        elif layers:
            active = self.viewer.layers.selection.active
            self.layer_combo.setCurrentIndex(layers.index(active) if active in layers else len(layers) - 1)
        self.layer_combo.blockSignals(False)
        if self.ct_layer is not self.session.ct_layer or self.ct_layer is None:
            self._on_layer_changed()

    def _rename_layers(self, *_):
        for i in range(self.layer_combo.count()):
            layer = self.layer_combo.itemData(i)
            if layer is not None:
                self.layer_combo.setItemText(i, layer.name)

    def _on_active_layer(self, event=None):
        """Follow the layer selected in napari's layer list (a CT layer or one scan's overlay)."""
        if self._following:
            return
        layer = event.value if event is not None else self.viewer.layers.selection.active
        target = None
        if volume_of(layer) is not None:
            target = layer
        elif layer is not None and SALIENCY_KEY in (layer.metadata or {}):
            target = next((ct for ct in self.ct_layers() if self.results_of(ct).overlay is layer), None)
        if target is not None and target is not self.ct_layer:
            i = self.layer_combo.findData(target)
            if i >= 0:
                self.layer_combo.setCurrentIndex(i)

    def select_scan(self, layer) -> None:
        """Make ``layer`` (a CT layer) the selected scan, as choosing it in the Scan box does."""
        layer = _unwrap(layer)
        i = self.layer_combo.findData(layer)
        if i < 0:
            raise ValueError(f"{getattr(layer, 'name', layer)!r} is not a CT layer of this viewer")
        self.layer_combo.setCurrentIndex(i)

    def _on_layer_changed(self, *_):
        layer = self.ct_layer
        volume = volume_of(layer) if layer is not None else None
        store = self.results_of(layer)
        self._pending_saliency = None
        if layer is not self.session.ct_layer or volume is not self.session.volume:
            self.session.set_volume(volume, layer, store.result if store is not None else None)
        self._show_scan_layers(layer)
        self._show_result(store.result if store is not None else None)
        self._sync_controls()
        if volume is None:
            self.qc_label.hide()
            self.status.setText(
                "Open a chest CT (drag a DICOM folder or NIfTI in) or File > Open Sample > HyperCT."
            )
            return
        self.export_form.allow_sr(volume.is_dicom)
        if volume.warnings:
            self.qc_label.setText("QC: " + " | ".join(w.message for w in volume.warnings))
            self.qc_label.show()
        else:
            self.qc_label.hide()
        if store.result is None:
            self.status.setText(f"{describe_scan(volume)}\nPress Analyze to score the 25 findings.")
        else:
            self._say_scored(store.result)
            if self.session.selected:
                self._request_saliency(self.session.selected)

    def _show_scan_layers(self, layer) -> None:
        """Show the selected scan's CT and overlay; hide the other scans' (no overlay under another CT)."""
        self._following = True
        try:
            for ct in self.ct_layers():
                mine = ct is layer
                ct.visible = mine
                overlay = self.results_of(ct).overlay
                if overlay is not None and overlay in self.viewer.layers:
                    overlay.visible = mine and self.show_saliency.isChecked()
            if layer is not None and self.viewer.layers.selection.active is not layer:
                active = self.viewer.layers.selection.active
                if active is None or volume_of(active) is not None or SALIENCY_KEY in (active.metadata or {}):
                    self.viewer.layers.selection.active = layer
        finally:
            self._following = False

    def set_window(self, preset: str) -> None:
        layer = self.ct_layer
        if layer is not None:
            layer.contrast_limits = window_limits(preset)

    # ------------------------------------------------------------------ model
    def _forget_results(self) -> None:
        """The model changed: every scan's scores and maps came from the old one."""
        self.jobs.invalidate()
        self._pending_saliency = None
        for ct in self.ct_layers():
            store = self.results_of(ct)
            self._remove_overlay(store)
            store.clear()
        self.session.set_result(None)
        self._show_result(None)
        self._sync_controls()

    def set_model_dirs(self, model_dir: str | None, backbone_dir: str | None = None) -> None:
        self._model_dir, self._backbone_dir = model_dir, backbone_dir
        self.session.model = None
        self.model_label.setText(model_dir or "Embedded demo model")
        self.model_label.setToolTip(model_dir or "Embedded demo model")
        self._forget_results()

    def _choose_checkpoint(self):
        d = QFileDialog.getExistingDirectory(self, "HyperCT checkpoint folder")
        if d:
            self.set_model_dirs(d, self._backbone_dir)

    def _choose_backbone(self):
        d = QFileDialog.getExistingDirectory(self, "DINOv3 backbone folder (config.json + model.safetensors)")
        if d:
            self.set_model_dirs(self._model_dir, d)

    def _on_device_changed(self, *_):
        self.session.model = None
        self.device_label.setText("")
        self._forget_results()

    def load_model(self, then=None):
        """Load the chosen model as its own job; ``then()`` runs when it is the session's model."""
        from hyperct.loading import load_model

        self.progress.setRange(0, 0)
        self.status.setText("Loading the model…")

        def done(model):
            self.session.set_model(model)
            self._update_banner()
            if then is not None:
                then()

        func = partial(load_model, self._model_dir, backbone_dir=self._backbone_dir, device=self.device_spec)
        return self.jobs.start(
            "model", func, on_done=done, on_error=self._status_error("Could not load the model")
        )

    def _status_error(self, prefix: str):
        """A job's error handler: the status line says it (the job runner also shows a notification)."""

        def handler(exc) -> None:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.status.setText(f"{prefix}: {exc}")

        return handler

    # ------------------------------------------------------------------ analysis
    def analyze(self):
        """Analyse the selected scan in the background (the model is loaded first when needed).

        Returns the job's worker (the running one if a job already runs), or None without a scan."""
        layer = self.ct_layer
        if layer is None:
            show_warning(
                "No CT to analyse: open a DICOM folder or NIfTI with the HyperCT reader, or the sample."
            )
            return None
        if self.jobs.busy:
            return self.jobs.worker
        store = self.results_of(layer)
        self._remove_overlay(store)
        store.clear()
        self.session.set_result(None)
        self._show_result(None)
        if self.session.model is None:
            return self.load_model(then=lambda: self._start_analysis(layer))
        return self._start_analysis(layer)

    def _start_analysis(self, layer):
        from hyperct.inference import analysis_steps, estimated_cpu_seconds

        if layer not in self.viewer.layers:
            return None
        volume = volume_of(layer)
        self.progress.setRange(0, 0)
        eta = estimated_cpu_seconds(self.session.model)
        self._slow_note = (  # shown with every progress step of this analysis
            f" (this model on the CPU: about {eta / 60:.0f} min per scan, estimated; a CUDA GPU takes seconds)"
            if eta is not None and eta > 60
            else ""
        )
        self.status.setText(f"Analysing {layer.name}…{self._slow_note}")
        return self.jobs.start(
            "analysis",
            analysis_steps,
            self.session.model,
            volume,
            on_progress=partial(self._set_progress, layer),
            on_done=partial(self._on_analysis_done, layer, volume),
            on_error=self._status_error("Analysis failed"),
            on_aborted=lambda: self.status.setText("Analysis cancelled."),
            queue=True,
        )

    def cancel(self):
        if self.jobs.busy:
            self.jobs.cancel()
            self._pending_saliency = None
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.status.setText("Cancelled: nothing of the stopped job is kept.")

    def _on_analysis_done(self, layer, volume, result):
        if layer not in self.viewer.layers or volume_of(layer) is not volume:
            return  # the scan was closed or replaced meanwhile
        store = self.results_of(layer)
        store.result = result
        self.progress.setValue(self.progress.maximum())
        if layer is not self.ct_layer:
            self.status.setText(f"{layer.name} is analysed: select it in the Scan box to see its findings.")
            return
        self.session.set_result(result)
        self._show_result(result)
        self._say_scored(result)
        self._sync_controls()
        self.analysis_finished.emit(result)
        scored = [f for f in result.findings if f.call in SCORED_CALLS]
        if not scored:
            return
        selected = self.session.selected
        if not selected:
            self.select_finding(max(scored, key=lambda f: f.probability).id)
        else:
            self._request_saliency(selected)  # starts when this job has finished

    def _say_scored(self, result) -> None:
        n_pos = len(result.positives)
        n_fail = sum(f.call == CALL_NO_SCORE for f in result.findings)
        text = (
            f"Scored {len(result.findings)} findings in {result.seconds:.1f} s on {result.device}: "
            f"{n_pos} above threshold. Select a finding to see its saliency map."
        )
        if n_fail:
            text += f" {n_fail} finding(s) got no valid score (non-finite model output)."
        self.status.setText(text)

    def _show_result(self, result) -> None:
        """Fill the table with ``result`` (sorted by probability), or reset it to catalogue order."""
        if result is None:
            self._populate_table()
            return
        self.table.setSortingEnabled(False)
        for f in result.findings:
            item = self._items[f.id]
            item.setData(COL_THRESH, ROLE_VALUE, f.threshold)
            item.setText(COL_THRESH, f"{f.threshold:.2f}" + (" *" if f.high_specificity_threshold else ""))
            item.setText(COL_CALL, f.call)
            item.setData(COL_PROB, ROLE_CALL, f.call)
            font = QFont(item.font(COL_CALL))
            if f.probability is None:
                item.setData(COL_PROB, ROLE_VALUE, None)
                item.setText(COL_PROB, "—")
                item.setTextAlignment(COL_PROB, Qt.AlignCenter)
                item.setData(COL_CALL, ROLE_VALUE, -1.0 if f.call == CALL_NO_SCORE else -2.0)
                color = NO_SCORE_COLOR if f.call == CALL_NO_SCORE else QColor(140, 140, 140)
                font.setItalic(True)
                font.setBold(f.call == CALL_NO_SCORE)
                tip = CALL_TIPS.get(f.call, "")
                for col in (COL_PROB, COL_CALL):
                    item.setToolTip(col, f"{f.name}: {f.call}\n{tip}")
            else:
                item.setData(COL_PROB, ROLE_VALUE, f.probability)
                item.setData(COL_CALL, ROLE_VALUE, 1.0 if f.call == CALL_PRESENT else 0.0)
                color = QColor(239, 120, 100) if f.call == CALL_PRESENT else QColor(180, 180, 180)
                tip = f"{f.name}: p = {f.probability:.3f}, threshold {f.threshold:.2f}, {f.call}"
                if f.high_specificity_threshold:
                    tip += "\n" + HIGH_SPECIFICITY_NOTE
                for col in (COL_PROB, COL_CALL, COL_THRESH):
                    item.setToolTip(col, tip)
            item.setFont(COL_CALL, font)
            item.setForeground(COL_CALL, QBrush(color))
        self.table.setSortingEnabled(True)
        self.table.sortItems(COL_PROB, Qt.DescendingOrder)

    # ------------------------------------------------------------------ selection + saliency
    def select_finding(self, finding_id: str) -> None:
        """Select a finding (as a click in the table would): shows its saliency map."""
        self.session.select_finding(finding_id)

    def _on_table_selection(self):
        if self._updating_selection:
            return
        items = self.table.selectedItems()
        fid = items[0].data(COL_NAME, ROLE_ID) if items else None
        if fid:
            self.session.select_finding(fid)

    def _on_finding_selected(self, fid: str):
        self._updating_selection = True
        try:
            self.table.clearSelection()
            if fid in self._items:
                self._items[fid].setSelected(True)
                self.table.scrollToItem(self._items[fid])
        finally:
            self._updating_selection = False
        if fid and self.result is not None:
            self._request_saliency(fid)

    def _describe_method(self) -> None:
        m = METHODS[self.saliency_method]
        self.method_help.setText(m.description)
        self.method_combo.setToolTip(m.description)

    def _on_method_changed(self, *_):
        self._describe_method()
        if self.session.selected and self.result is not None:
            self._request_saliency(self.session.selected)

    def _request_saliency(self, fid: str) -> None:
        layer, result = self.ct_layer, self.result
        if layer is None or result is None:
            return
        finding = result[fid]
        if finding is None or finding.call not in SCORED_CALLS:
            self._remove_overlay(self.results_of(layer))
            what = finding.call if finding is not None else "not scored"
            self.status.setText(f"{catalogue()[fid].name}: {what}, so there is no saliency map to show.")
            return
        maps = self.results_of(layer).maps.get(self.saliency_method)
        if maps is not None and fid in maps:
            self._show_saliency(layer, fid)
            return
        self._start_saliency(layer, [fid])

    def compute_all_saliency(self):
        """All scored findings in one batched backward, cached for instant switching (a method that
        needs one pass per finding is switched to the default method first)."""
        if not METHODS[self.saliency_method].batched:
            self.method_combo.setCurrentText(METHODS[DEFAULT_METHOD].name)
        layer, result = self.ct_layer, self.result
        if layer is None or result is None:
            return None
        return self._start_saliency(layer, [f.id for f in result.findings if f.call in SCORED_CALLS])

    def _start_saliency(self, layer, findings: list[str]):
        from hyperct.saliency import compute_saliency

        if self.session.model is None or not findings:
            return None
        if self.jobs.busy:  # run when the job has finished; a pending "all" covers one finding
            if len(findings) > 1 or not isinstance(self._pending_saliency, list):
                self._pending_saliency = findings[0] if len(findings) == 1 else list(findings)
            return None
        method = self.saliency_method
        what = "all findings" if len(findings) > 1 else catalogue()[findings[0]].name
        self.status.setText(f"Computing {METHODS[method].name} saliency for {what}…")
        self.progress.setRange(0, 0)
        volume = volume_of(layer)
        return self.jobs.start(
            "saliency",
            partial(compute_saliency, self.session.model, volume, findings, method=method),
            on_done=partial(self._on_saliency_done, layer, volume),
            on_error=self._status_error("Saliency failed"),
        )

    def _on_saliency_done(self, layer, volume, maps):
        if layer not in self.viewer.layers or volume_of(layer) is not volume:
            return
        store = self.results_of(layer)
        merged = store.add_maps(maps)
        self.progress.setValue(self.progress.maximum())
        fid = self.session.selected
        if layer is self.ct_layer and fid and fid in merged and merged.method == self.saliency_method:
            self._show_saliency(layer, fid)
        elif layer is not self.ct_layer:
            self.status.setText(f"Saliency of {layer.name} is ready: select it in the Scan box to see it.")

    def _body_of(self, store: ScanResults):
        """The body outline of the scan (cached with it): the overlay is not drawn in the air."""
        from hyperct.saliency import body_mask

        if store.body is None:
            store.body = body_mask(store.volume)
        return store.body

    def _show_saliency(self, layer, fid: str) -> None:
        store = self.results_of(layer)
        maps = store.maps[self.saliency_method]
        volume = store.volume
        data = maps.volume_map(fid, within=self._body_of(store))
        finding = catalogue()[fid]
        kwargs = saliency_layer_kwargs(layer, finding.name, maps.method)
        kwargs["opacity"] = self.opacity_slider.value() / 100.0
        kwargs["visible"] = self.show_saliency.isChecked()
        overlay = store.overlay
        self._following = True
        try:
            if overlay is not None and overlay in self.viewer.layers:
                overlay.data = data
                overlay.name = kwargs["name"]
                overlay.metadata = kwargs["metadata"]
                overlay.contrast_limits = (0.0, 1.0)
                overlay.visible = kwargs["visible"]
            else:
                overlay = store.overlay = self.viewer.add_image(data, **kwargs)
                # right above its own CT, so another scan's CT never covers it
                src, dst = self.viewer.layers.index(overlay), self.viewer.layers.index(layer) + 1
                if src != dst:
                    self.viewer.layers.move(src, dst)
                self.viewer.layers.selection.active = layer
        finally:
            self._following = False
        peak = maps.peak_index(fid)  # the one peak the reports and the benchmark use too
        for axis, idx in enumerate(peak):
            self.viewer.dims.set_point(axis, layer.translate[axis] + idx * layer.scale[axis])
        self.session.set_saliency(maps)
        summary = maps.summary(fid, volume)
        res = self.result[fid] if self.result is not None else None
        prob = (
            f"p = {res.probability:.2f} ({res.call})"
            if res is not None and res.probability is not None
            else ""
        )
        k = peak[0]
        self.status.setText(
            f"{finding.name} {prob}: {METHODS[maps.method].name} saliency peaks on slice "
            f"{k + 1} of {volume.shape[0]} (napari's slider counts from 0: {k}) "
            f"at LPS ({', '.join(f'{v:.0f}' for v in summary.peak_lps_mm)}) mm."
        )
        self.saliency_shown.emit(fid)

    def _remove_overlay(self, store: ScanResults | None) -> None:
        if store is None:
            return
        layer, store.overlay = store.overlay, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    @property
    def overlay(self):
        """The selected scan's saliency layer (None when none is shown)."""
        store = self.results_of()
        layer = store.overlay if store is not None else None
        return layer if layer is not None and layer in self.viewer.layers else None

    def _on_opacity(self, value: int):
        if self.overlay is not None:
            self.overlay.opacity = value / 100.0

    def _on_show_toggled(self, on: bool):
        if self.overlay is not None:
            self.overlay.visible = on

    # ------------------------------------------------------------------ export
    def _export_stem(self, layer, mode: str) -> str:
        """The same stem ``hyperct predict`` derives from the path the user opened (pseudonymous in
        shareable mode when the path carries patient identifiers)."""
        from hyperct.report import derived_stem

        source = getattr(getattr(layer, "source", None), "path", None)
        return derived_stem(source, volume_of(layer), mode)

    def _export_request(self, mode: str | None = None) -> dict:
        """What an export of the selected scan needs, taken now (a later switch changes nothing):
        the mode (default: the form's) and the findings whose saliency maps are written (the
        positives when the form's Maps box is ticked, as ``hyperct predict --saliency``)."""
        from hyperct.report.export import saliency_targets

        layer = self.ct_layer
        store = self.results_of(layer)
        if store is None or store.result is None:
            raise RuntimeError("no analysis result to export: press Analyze first")
        mode = mode or self.export_mode
        maps_of = saliency_targets(store.result, "positive") if self.export_form.maps.value else []
        return {
            "layer": layer,
            "result": store.result,
            "volume": store.volume,
            "maps": store.maps.get(DEFAULT_METHOD),
            "model": self.session.model,
            "mode": mode,
            "stem": self._export_stem(layer, mode),
            "saliency_findings": maps_of,
        }

    def export_files(self, formats, out_dir, *, mode: str | None = None, overwrite: bool = False, **kwargs):
        """Write the reports of the selected scan with the same code and inputs as ``hyperct predict``."""
        req = self._export_request(mode)
        written, maps = _export_job(req, tuple(formats), out_dir, overwrite, kwargs)
        if maps is not None:
            self.results_of(req["layer"]).add_maps(maps)
        return written

    def export_targets(self, formats, out_dir, mode: str | None = None) -> list[Path]:
        """The files an export of the selected scan would write (their names do not depend on maps)."""
        from hyperct.report.export import output_paths

        req = self._export_request(mode)
        paths = output_paths(Path(out_dir), req["stem"], tuple(formats), req["saliency_findings"])
        return list(paths.values())

    def export_from_form(self, *_):
        """The Export button: write what the export form says (a background job, see export_clicked)."""
        settings = self.export_form.settings()
        if settings.empty:
            show_warning("Nothing to export: tick at least one file type (JSON, PDF, DICOM SR, FHIR, Maps).")
            return None
        if not settings.formats and self.result is not None and not self.result.positives:
            show_warning("No positive finding, so there is no saliency map to write: tick a report format.")
            return None
        self.out_edit.setText(str(settings.folder))
        return self.export_clicked(settings.formats, overwrite=settings.overwrite)

    def export_clicked(self, formats, overwrite: bool = False):
        """Export in a background job (saliency of all findings may need computing first). Files that
        exist are only replaced after the user says so."""
        fmts = tuple(formats)
        store = self.results_of()
        if store is None or store.result is None:
            show_warning("Nothing to export: press Analyze first.")
            return None
        if "sr" in fmts and not store.volume.is_dicom:
            show_warning("DICOM SR needs a DICOM input; this CT was not read from DICOM.")
            return None
        if self.jobs.busy:
            show_warning("Wait for the running job to finish (or cancel it) before exporting.")
            return None
        out = Path(self.out_edit.text()).expanduser()
        existing = [p for p in self.export_targets(fmts, out) if p.exists()]
        if existing and not overwrite:
            if not self._replace_confirmed([p.name for p in existing], out):
                return None
            overwrite = True
        return self._start_export(self._export_request(), fmts, out, overwrite)

    def _start_export(self, req, fmts, out, overwrite: bool, *, queue: bool = False):
        self.status.setText(f"Exporting {', '.join(fmts)} ({req['mode']})…")
        self.progress.setRange(0, 0)
        return self.jobs.start(
            "export",
            partial(_export_job, req, fmts, out, overwrite, {}),
            on_done=partial(self._on_exported, req),
            on_error=partial(self._on_export_error, req, fmts, out, overwrite),
            queue=queue,
        )

    def _replace_confirmed(self, names, out: Path) -> bool:
        listed = "\n".join(f"  {n}" for n in names)
        answer = QMessageBox.question(
            self,
            "Replace existing report?",
            f"This folder already holds a report with the same name:\n{listed}\nin {out}\n\n"
            "Replace it with the report of the selected scan?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            self.status.setText("Export cancelled: the existing files were kept.")
            return False
        return True

    def _on_export_error(self, req, fmts, out: Path, overwrite: bool, exc) -> bool | None:
        """An output that exists (``OutputExistsError``: written since the check, or files of another
        report under this scan's name) is the user's to replace: asked, then the same export is run
        again with overwrite. Other errors go to the status line (and a notification)."""
        from hyperct.errors import OutputExistsError

        self._status_error("Export failed")(exc)
        if overwrite or not isinstance(exc, OutputExistsError):
            return None
        if self._replace_confirmed([Path(exc.path).name], out):
            self._start_export(req, fmts, out, True, queue=True)  # runs when the failed job has ended
        return True

    def _on_exported(self, req, value):
        written, maps = value
        if maps is not None and req["layer"] in self.viewer.layers:
            self.results_of(req["layer"]).add_maps(maps)
        paths = ", ".join(str(p) for p in written.values())
        show_info(f"Exported {paths}")
        self.status.setText(f"Exported ({req['mode']}): {paths}")

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.jobs.invalidate()
        self.session.finding_selected.disconnect(self._on_finding_selected, missing_ok=True)
        super().closeEvent(event)


def _unwrap(obj):
    return getattr(obj, "__wrapped__", obj)


def _apply_window(widget: FindingsWidget, preset: str, _viewer=None) -> None:
    widget.set_window(preset)


def _export_job(req: dict, formats, out_dir, overwrite: bool, kwargs: dict):
    """Write one scan's report (a thread may run it): the default-method maps of every scored
    finding, reusing those already computed. Returns (written paths, newly computed maps or None)."""
    from hyperct.report import export, saliency_for_export
    from hyperct.saliency import SaliencyMaps

    result, volume, cached = req["result"], req["volume"], req["maps"]
    map_ids = list(req.get("saliency_findings") or ())
    scored = [f.id for f in result.findings if f.call in SCORED_CALLS]
    new = None
    maps = cached
    if scored and (cached is None or not all(fid in cached for fid in scored)):
        new = saliency_for_export(req["model"], volume, result, method=DEFAULT_METHOD, extra=map_ids)
        if new is not None and cached is not None:
            maps = SaliencyMaps(cached.method, cached.source_shape, dict(cached.model_maps))
            maps.update(new)
        else:
            maps = new
    kwargs = dict(kwargs)
    kwargs.setdefault("stem", req["stem"])
    if map_ids:
        kwargs.setdefault("saliency_findings", map_ids)
    written = export(
        result, volume, maps, out_dir, formats=tuple(formats), mode=req["mode"], overwrite=overwrite, **kwargs
    )
    return written, new
