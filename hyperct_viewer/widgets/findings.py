"""The "HyperCT Findings" dock widget: analyse a CT, browse the 25 findings, overlay saliency, export.

All imaging and model work is done by the ``hyperct`` engine; this widget only wires it to napari
layers, Qt controls and background workers (the GUI never blocks: analysis and saliency run in
napari thread workers with progress and cancel).
"""

from __future__ import annotations

from pathlib import Path

from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QRectF, Qt, Signal
from qtpy.QtGui import QBrush, QColor, QPainter
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSlider,
    QStyledItemDelegate,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from hyperct import DISCLAIMER
from hyperct.findings import GROUP_LABELS, catalogue
from hyperct.results import CALL_PRESENT
from hyperct.saliency import DEFAULT_METHOD, METHODS
from hyperct_viewer.layers import (
    SALIENCY_KEY,
    WINDOW_PRESETS,
    saliency_layer_kwargs,
    volume_of,
    window_limits,
)
from hyperct_viewer.session import session_for

ROLE_VALUE = Qt.UserRole + 1  # numeric value for sorting / bars
ROLE_ID = Qt.UserRole + 2  # finding id
ROLE_CALL = Qt.UserRole + 3

COL_NAME, COL_PROB, COL_THRESH, COL_CALL = range(4)
SALIENCY_METHODS = {m.name: m.id for m in METHODS.values()}  # combo text -> method id
DEVICES = {"Auto": "auto", "CUDA": "cuda", "CPU": "cpu"}


class _FindingItem(QTreeWidgetItem):
    """Sorts numeric columns by value, text columns by text."""

    def __lt__(self, other):
        col = self.treeWidget().sortColumn() if self.treeWidget() else 0
        a, b = self.data(col, ROLE_VALUE), other.data(col, ROLE_VALUE)
        if a is not None and b is not None:
            return float(a) < float(b)
        return self.text(col) < other.text(col)


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


class FindingsWidget(QWidget):
    """Dock widget: CT + model + device -> Analyze -> findings table -> saliency overlay -> export."""

    analysis_finished = Signal(object)  # AnalysisResult
    saliency_shown = Signal(str)  # finding id

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._model_dir: str | None = None
        self._backbone_dir: str | None = None
        self._worker = None
        self._saliency_worker = None
        self._pending_saliency: str | None = None
        self._maps: dict[str, object] = {}  # method -> SaliencyMaps of the current volume/model
        self._body_cache = None  # (volume, its body mask): where the overlay may be drawn
        self._saliency_layer = None
        self._updating_selection = False
        self._build_ui()
        self._connect()
        self._refresh_layers()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.setMinimumWidth(470)  # room for the finding names next to the bars
        root = QVBoxLayout(self)

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet(
            "background:#7a5b00;color:white;padding:6px;border-radius:4px;font-weight:bold;"
        )
        root.addWidget(self.banner)

        ct_box = QGroupBox("CT")
        ct_form = QFormLayout(ct_box)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("CT layer opened with the HyperCT reader or sample")
        ct_form.addRow("Layer", self.layer_combo)
        presets = QHBoxLayout()
        self.window_buttons = {}
        for name in WINDOW_PRESETS:
            b = QPushButton(name.capitalize())
            lvl, wid = WINDOW_PRESETS[name]
            b.setToolTip(f"Window level {lvl:g} HU, width {wid:g} HU")
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
        for b in (self.checkpoint_button, self.backbone_button, self.demo_button):
            mbuttons.addWidget(b)
        mform.addRow(mbuttons)
        drow = QHBoxLayout()
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self._disable_cuda_if_missing()
        self.device_label = QLabel("")
        drow.addWidget(self.device_combo)
        drow.addWidget(self.device_label, 1)
        mform.addRow("Device", drow)
        root.addWidget(model_box)

        run_row = QHBoxLayout()
        self.analyze_button = QPushButton("Analyze")
        self.analyze_button.setStyleSheet("font-weight:bold;")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        run_row.addWidget(self.analyze_button, 2)
        run_row.addWidget(self.cancel_button, 1)
        root.addLayout(run_row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        root.addWidget(self.progress)
        self.status = QLabel(
            "Open a chest CT (drag a DICOM folder or NIfTI in) or File > Open Sample > HyperCT."
        )
        self.status.setWordWrap(True)
        root.addWidget(self.status)

        self.table = QTreeWidget()
        self.table.setColumnCount(4)
        self.table.setHeaderLabels(["Finding", "Probability", "Threshold", "Call"])
        self.table.setItemDelegateForColumn(COL_PROB, ProbabilityBarDelegate(self.table))
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setSortingEnabled(True)
        self.table.setRootIsDecorated(True)
        self.table.setUniformRowHeights(True)
        header = self.table.header()
        header.setSectionResizeMode(COL_NAME, QHeaderView.Stretch)
        for col, width in ((COL_PROB, 100), (COL_THRESH, 66), (COL_CALL, 66)):
            header.setSectionResizeMode(col, QHeaderView.Fixed)
            self.table.setColumnWidth(col, width)
        self.table.setMinimumHeight(320)
        self._group_items: dict[str, QTreeWidgetItem] = {}
        self._items: dict[str, _FindingItem] = {}
        self._populate_table()
        root.addWidget(self.table, 1)

        sal_box = QGroupBox("Saliency")
        sform = QFormLayout(sal_box)
        self.method_combo = QComboBox()
        for i, m in enumerate(METHODS.values()):
            self.method_combo.addItem(m.name)
            self.method_combo.setItemData(i, m.description, Qt.ToolTipRole)
        self.method_combo.setCurrentText(METHODS[DEFAULT_METHOD].name)
        self.method_help = QLabel()
        self.method_help.setWordWrap(True)
        self.method_help.setStyleSheet("color: gray; font-size: 11px;")
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
        root.addWidget(sal_box)

        exp_box = QGroupBox("Export")
        eform = QFormLayout(exp_box)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["Shareable (no patient identifiers)", "Clinical (identifiers kept)"])
        eform.addRow("Mode", self.mode_combo)
        orow2 = QHBoxLayout()
        self.out_edit = QLineEdit(str(Path.home() / "hyperct-reports"))
        self.out_button = QPushButton("…")
        self.out_button.setFixedWidth(30)
        orow2.addWidget(self.out_edit, 1)
        orow2.addWidget(self.out_button)
        eform.addRow("Folder", orow2)
        brow = QHBoxLayout()
        self.export_buttons = {}
        for fmt, label in (("json", "JSON"), ("pdf", "PDF"), ("sr", "DICOM SR")):
            b = QPushButton(label)
            b.clicked.connect(lambda _=False, f=fmt: self.export_clicked((f,)))
            brow.addWidget(b)
            self.export_buttons[fmt] = b
        eform.addRow(brow)
        root.addWidget(exp_box)
        self._set_results_enabled(False)
        self._update_banner()

    def _disable_cuda_if_missing(self) -> None:
        import torch

        if not torch.cuda.is_available():
            item = self.device_combo.model().item(1)
            item.setEnabled(False)
            item.setToolTip("No CUDA GPU visible to PyTorch")

    def _populate_table(self) -> None:
        self.table.clear()
        self._group_items.clear()
        self._items.clear()
        for group, label in GROUP_LABELS.items():
            g = QTreeWidgetItem(self.table, [label])
            g.setFirstColumnSpanned(False)
            g.setFlags(g.flags() & ~Qt.ItemIsSelectable)
            font = g.font(0)
            font.setBold(True)
            g.setFont(0, font)
            g.setExpanded(True)
            self._group_items[group] = g
        for f in catalogue():
            item = _FindingItem(self._group_items[f.group], [f.name, "", "", ""])
            item.setData(COL_NAME, ROLE_ID, f.id)
            item.setData(COL_NAME, ROLE_VALUE, None)
            for col in range(4):
                item.setToolTip(col, f.tooltip)
            self._items[f.id] = item
        for g in self._group_items.values():
            g.setExpanded(True)

    def _connect(self) -> None:
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
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
        self.out_button.clicked.connect(self._choose_out_dir)
        self.session.finding_selected.connect(self._on_finding_selected)
        self.session.model_changed.connect(lambda _m: self._update_banner())

    # ------------------------------------------------------------------ helpers
    @property
    def device_spec(self) -> str:
        return DEVICES[self.device_combo.currentText()]

    @property
    def saliency_method(self) -> str:
        return SALIENCY_METHODS[self.method_combo.currentText()]

    @property
    def export_mode(self) -> str:
        return "clinical" if self.mode_combo.currentIndex() == 1 else "shareable"

    def ct_layers(self) -> list:
        return [layer for layer in self.viewer.layers if volume_of(layer) is not None]

    @property
    def ct_layer(self):
        name = self.layer_combo.currentText()
        for layer in self.ct_layers():
            if layer.name == name:
                return layer
        return None

    def _update_banner(self) -> None:
        model = self.session.model
        demo = model is None or model.is_demo
        text = f"⚠ {DISCLAIMER}"
        if demo:
            text += " Demo model trained on synthetic phantoms: no clinical validity, not a medical device."
        self.banner.setText(text)
        if model is not None:
            self.model_label.setText(f"{model.name} v{model.version}\nsha256 {model.weights_sha256[:16]}…")
            self.device_label.setText(f"running on {model.device}")

    def _set_results_enabled(self, on: bool) -> None:
        self.all_button.setEnabled(on)
        for b in self.export_buttons.values():
            b.setEnabled(on)

    def _busy(self, on: bool) -> None:
        self.analyze_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)
        for b in (self.checkpoint_button, self.backbone_button, self.demo_button):
            b.setEnabled(not on)
        self.device_combo.setEnabled(not on)

    # ------------------------------------------------------------------ CT layer
    def _refresh_layers(self, *_):
        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.ct_layers()]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        elif names:
            self.layer_combo.setCurrentIndex(len(names) - 1)
        self.layer_combo.blockSignals(False)
        if self._saliency_layer is not None and self._saliency_layer not in self.viewer.layers:
            self._saliency_layer = None
        layer = self.ct_layer
        if layer is not self.session.ct_layer:
            self._on_layer_changed()

    def _on_layer_changed(self, *_):
        layer = self.ct_layer
        volume = volume_of(layer) if layer is not None else None
        if volume is self.session.volume:
            return
        self._maps.clear()
        self.session.set_volume(volume, layer)
        self._clear_results()
        if volume is None:
            self.qc_label.hide()
            return
        if volume.warnings:
            self.qc_label.setText("QC: " + " | ".join(w.message for w in volume.warnings))
            self.qc_label.show()
        else:
            self.qc_label.hide()
        self.status.setText(f"{volume.describe()}\nPress Analyze to score the 25 findings.")

    def set_window(self, preset: str) -> None:
        layer = self.ct_layer
        if layer is not None:
            layer.contrast_limits = window_limits(preset)

    # ------------------------------------------------------------------ model
    def set_model_dirs(self, model_dir: str | None, backbone_dir: str | None = None) -> None:
        self._model_dir, self._backbone_dir = model_dir, backbone_dir
        self.session.model = None
        self._maps.clear()
        self.model_label.setText(model_dir or "Embedded demo model")
        self._clear_results()

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
        self._maps.clear()
        self.device_label.setText("")

    def _choose_out_dir(self):
        d = QFileDialog.getExistingDirectory(self, "Export folder", self.out_edit.text())
        if d:
            self.out_edit.setText(d)

    # ------------------------------------------------------------------ analysis
    def analyze(self):
        """Start the analysis of the selected CT layer in a background worker."""
        volume = self.session.volume
        if volume is None:
            show_warning(
                "No CT to analyse: open a DICOM folder or NIfTI with the HyperCT reader, or the sample."
            )
            return None
        if self._worker is not None:
            return self._worker
        self._clear_results()
        self._busy(True)
        self.progress.setRange(0, 0)
        self.status.setText("Loading model…" if self.session.model is None else "Analysing…")
        worker = _analysis_worker(
            self.session.model, self._model_dir, self._backbone_dir, self.device_spec, volume
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_analysis_done)
        worker.errored.connect(self._on_worker_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        worker.start()
        return worker

    def cancel(self):
        if self._worker is not None:
            self.status.setText("Cancelling…")
            self._worker.quit()

    def _on_progress(self, step):
        if hasattr(step, "total"):
            self.progress.setRange(0, step.total)
            self.progress.setValue(step.done)
            self.status.setText(step.message)
        elif hasattr(step, "describe"):  # the model was loaded in the worker
            self.session.set_model(step)
            self._update_banner()

    def _on_analysis_done(self, result):
        self.session.set_result(result)
        self._show_result(result)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        n_pos = len(result.positives)
        self.status.setText(
            f"Scored {len(result.findings)} findings in {result.seconds:.1f} s on {result.device}: "
            f"{n_pos} above threshold. Select a finding to see its saliency map."
        )
        self._set_results_enabled(True)
        self.analysis_finished.emit(result)
        if not self.session.selected:
            top = max(result.findings, key=lambda f: f.probability or 0.0)
            self.select_finding(top.id)
        else:
            self._request_saliency(self.session.selected)

    def _on_worker_error(self, exc):
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText(f"Error: {exc}")
        show_error(f"HyperCT: {exc}")

    def _on_aborted(self):
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText("Analysis cancelled.")

    def _on_worker_finished(self):
        self._worker = None
        self._busy(False)
        if self._pending_saliency and self.session.result is not None:
            fid, self._pending_saliency = self._pending_saliency, None
            self._request_saliency(fid)

    def _clear_results(self):
        self.session.set_result(None)
        for item in self._items.values():
            for col in (COL_PROB, COL_THRESH, COL_CALL):
                item.setText(col, "")
                item.setData(col, ROLE_VALUE, None)
            item.setData(COL_PROB, ROLE_CALL, None)
        self._set_results_enabled(False)
        self._remove_saliency_layer()

    def _show_result(self, result):
        if result is None:
            return
        self.table.setSortingEnabled(False)
        for f in result.findings:
            item = self._items[f.id]
            if f.probability is None:
                item.setText(COL_CALL, "not assessed")
                continue
            item.setData(COL_PROB, ROLE_VALUE, f.probability)
            item.setData(COL_PROB, ROLE_CALL, f.call)
            item.setData(COL_THRESH, ROLE_VALUE, f.threshold)
            item.setText(COL_THRESH, f"{f.threshold:.2f}")
            item.setText(COL_CALL, f.call)
            item.setData(COL_CALL, ROLE_VALUE, 1.0 if f.call == CALL_PRESENT else 0.0)
            color = QColor(239, 120, 100) if f.call == CALL_PRESENT else QColor(180, 180, 180)
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
        if fid and self.session.result is not None:
            self._request_saliency(fid)

    def _describe_method(self) -> None:
        m = METHODS[self.saliency_method]
        self.method_help.setText(m.description)
        self.method_combo.setToolTip(m.description)

    def _on_method_changed(self, *_):
        self._describe_method()
        if self.session.selected and self.session.result is not None:
            self._request_saliency(self.session.selected)

    def _request_saliency(self, fid: str) -> None:
        maps = self._maps.get(self.saliency_method)
        if maps is not None and fid in maps:
            self._show_saliency(fid)
            return
        self._start_saliency([fid])

    def compute_all_saliency(self):
        """All 25 findings in one batched backward, cached for instant switching (a method that needs
        one pass per finding is switched to the default method first)."""
        if not METHODS[self.saliency_method].batched:
            self.method_combo.setCurrentText(METHODS[DEFAULT_METHOD].name)
        return self._start_saliency(None)

    def _start_saliency(self, findings):
        if self.session.model is None or self.session.volume is None:
            return None
        if self._worker is not None or self._saliency_worker is not None:
            self._pending_saliency = findings[0] if findings else self.session.selected
            return None
        method = self.saliency_method
        what = "all findings" if findings is None else catalogue()[findings[0]].name
        self.status.setText(f"Computing {METHODS[method].name} saliency for {what}…")
        self.progress.setRange(0, 0)
        worker = _saliency_worker(self.session.model, self.session.volume, findings, method)
        worker.returned.connect(lambda maps, m=method: self._on_saliency_done(m, maps))
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_saliency_finished)
        self._saliency_worker = worker
        worker.start()
        return worker

    def _on_saliency_done(self, method, maps):
        if method in self._maps:
            self._maps[method].update(maps)
        else:
            self._maps[method] = maps
        self.session.set_saliency(self._maps[method])
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        fid = self.session.selected
        if fid and fid in self._maps[method]:
            self._show_saliency(fid)

    def _on_saliency_finished(self):
        self._saliency_worker = None
        if self._pending_saliency:
            fid, self._pending_saliency = self._pending_saliency, None
            self._request_saliency(fid)

    def _body_of(self, volume):
        """The body outline of ``volume`` (cached per volume): the overlay is not drawn in the air."""
        from hyperct.saliency import body_mask

        if self._body_cache is None or self._body_cache[0] is not volume:
            self._body_cache = (volume, body_mask(volume))
        return self._body_cache[1]

    def _show_saliency(self, fid: str) -> None:
        maps = self._maps[self.saliency_method]
        ct = self.session.ct_layer
        volume = self.session.volume
        if ct is None or volume is None:
            return
        data = maps.volume_map(fid, within=self._body_of(volume))
        finding = catalogue()[fid]
        kwargs = saliency_layer_kwargs(ct, finding.name, maps.method)
        kwargs["opacity"] = self.opacity_slider.value() / 100.0
        kwargs["visible"] = self.show_saliency.isChecked()
        layer = self._saliency_layer
        if layer is not None and layer in self.viewer.layers:
            layer.data = data
            layer.name = kwargs["name"]
            layer.metadata = kwargs["metadata"]
            layer.contrast_limits = (0.0, 1.0)
        else:
            layer = self._saliency_layer = self.viewer.add_image(data, **kwargs)
        peak = maps.peak_index(fid)  # the one peak the reports and the benchmark use too
        for axis, idx in enumerate(peak):
            self.viewer.dims.set_point(axis, ct.translate[axis] + idx * ct.scale[axis])
        summary = maps.summary(fid, volume)
        res = self.session.result[fid] if self.session.result is not None else None
        if res is not None:
            res.saliency = summary
        prob = (
            f"p = {res.probability:.2f} ({res.call})"
            if res is not None and res.probability is not None
            else ""
        )
        self.status.setText(
            f"{finding.name} {prob}: {METHODS[maps.method].name} saliency peaks on slice "
            f"{peak[0] + 1}/{volume.shape[0]} "
            f"at LPS ({', '.join(f'{v:.0f}' for v in summary.peak_lps_mm)}) mm."
        )
        self.saliency_shown.emit(fid)

    def _remove_saliency_layer(self):
        layer = self._saliency_layer
        self._saliency_layer = None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        for layer in [ly for ly in self.viewer.layers if SALIENCY_KEY in (ly.metadata or {})]:
            self.viewer.layers.remove(layer)

    def _on_opacity(self, value: int):
        if self._saliency_layer is not None:
            self._saliency_layer.opacity = value / 100.0

    def _on_show_toggled(self, on: bool):
        if self._saliency_layer is not None:
            self._saliency_layer.visible = on

    # ------------------------------------------------------------------ export
    def _export_stem(self, mode: str) -> str | None:
        """The same stem ``hyperct predict`` derives from the path the user opened (pseudonymous in
        shareable mode when the path carries patient identifiers)."""
        from hyperct.report import derived_stem

        layer = self.session.ct_layer
        source = getattr(getattr(layer, "source", None), "path", None)
        return derived_stem(source, self.session.volume, mode) if source else None

    def _export_saliency(self):
        """Default-method maps of every assessed finding, as the CLI computes for its exports (reuses the cache)."""
        from hyperct.report import saliency_for_export
        from hyperct.results import CALL_NOT_ASSESSED

        result = self.session.result
        cached = self._maps.get(DEFAULT_METHOD)
        assessed = [f.id for f in result.findings if f.call != CALL_NOT_ASSESSED]
        if cached is not None and all(fid in cached for fid in assessed):
            return cached
        maps = saliency_for_export(self.session.model, self.session.volume, result, method=DEFAULT_METHOD)
        if maps is not None:
            if cached is not None:
                cached.update(maps)
            else:
                self._maps[DEFAULT_METHOD] = maps
        return self._maps.get(DEFAULT_METHOD)

    def export_files(self, formats, out_dir, *, mode: str | None = None, overwrite: bool = False, **kwargs):
        """Write the reports of the current result with the same code and inputs as ``hyperct predict``."""
        from hyperct.report import export

        result, volume = self.session.result, self.session.volume
        if result is None or volume is None:
            raise RuntimeError("no analysis result to export: press Analyze first")
        mode = mode or self.export_mode
        kwargs.setdefault("stem", self._export_stem(mode))
        return export(
            result,
            volume,
            self._export_saliency(),
            out_dir,
            formats=tuple(formats),
            mode=mode,
            overwrite=overwrite,
            **kwargs,
        )

    def export_clicked(self, formats, overwrite: bool = False):
        """Export in a background worker (saliency of all findings may need computing first)."""
        fmts = tuple(formats)
        if "sr" in fmts and self.session.volume is not None and not self.session.volume.is_dicom:
            show_warning("DICOM SR needs a DICOM input; this CT was not read from DICOM.")
            return None
        if self._worker is not None or self._saliency_worker is not None:
            show_warning("Wait for the running analysis to finish before exporting.")
            return None
        out = Path(self.out_edit.text()).expanduser()
        self.status.setText(f"Exporting {', '.join(fmts)} ({self.export_mode})…")
        worker = _call_worker(lambda: self.export_files(fmts, out, overwrite=overwrite))
        worker.returned.connect(self._on_exported)
        worker.errored.connect(lambda exc: self._on_export_error(exc, fmts))
        worker.start()
        return worker

    def _on_exported(self, written):
        paths = ", ".join(str(p) for p in written.values())
        show_info(f"Exported {paths}")
        self.status.setText(f"Exported ({self.export_mode}): {paths}")

    def _on_export_error(self, exc, fmts):
        from hyperct.errors import ExportError

        if isinstance(exc, ExportError) and "exists" in str(exc):
            if (
                QMessageBox.question(self, "Overwrite?", f"{exc}\n\nOverwrite?")
                == QMessageBox.StandardButton.Yes
            ):
                self.export_clicked(fmts, overwrite=True)
                return
        self.status.setText(f"Export failed: {exc}")
        show_error(f"Export failed: {exc}")


@thread_worker
def _call_worker(fn):
    return fn()


@thread_worker
def _analysis_worker(model, model_dir, backbone_dir, device, volume):
    """Load the model if needed (yielding it), then run the engine's analysis steps."""
    from hyperct.inference import analysis_steps
    from hyperct.loading import load_model

    if model is None:
        model = load_model(model_dir, backbone_dir=backbone_dir, device=device)
        yield model
    gen = analysis_steps(model, volume)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        yield step


@thread_worker
def _saliency_worker(model, volume, findings, method):
    from hyperct.saliency import compute_saliency

    return compute_saliency(model, volume, findings, method=method)
