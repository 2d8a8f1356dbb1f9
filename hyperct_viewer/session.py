"""Per-viewer state shared by the HyperCT widgets, and the signals that link them.

One ``Session`` per napari viewer (``session_for(viewer)``). The Findings widget and the Task
Embeddings widget never talk to each other directly: they read the session and connect to its
signals. Selecting a finding anywhere calls ``session.select_finding(fid)``; every widget that
shows findings listens to ``session.finding_selected`` and updates itself (without re-emitting).

What was computed for a scan (scores, saliency maps) belongs to its CT layer: it is kept in the
layer's metadata (``scan_results(layer)``), so it follows the layer whatever is selected, and the
session only points at the selected layer's results.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psygnal import Signal

if TYPE_CHECKING:  # pragma: no cover
    from hyperct.loading import LoadedModel
    from hyperct.results import AnalysisResult
    from hyperct.saliency import SaliencyMaps
    from hyperct.volume import CTVolume


RESULTS_KEY = "hyperct_results"


@dataclass
class ScanResults:
    """What was computed for one CT layer's volume (kept in that layer's metadata)."""

    volume: CTVolume
    result: AnalysisResult | None = None
    maps: dict[str, SaliencyMaps] = field(default_factory=dict)  # method -> maps of this volume
    overlay: Any = None  # this scan's saliency layer
    body: Any = None  # its body mask (where an overlay may be drawn)

    def add_maps(self, maps: SaliencyMaps) -> SaliencyMaps:
        """Merge ``maps`` (of this volume) into the cache of its method; return the merged maps."""
        have = self.maps.get(maps.method)
        if have is None:
            self.maps[maps.method] = maps
            return maps
        have.update(maps)  # refuses maps of another volume shape
        return have

    def clear(self) -> None:
        self.result = None
        self.maps = {}


def scan_results(layer: Any, volume: CTVolume | None = None) -> ScanResults | None:
    """The results store of a CT layer (created for ``volume`` when missing or for another volume)."""
    if layer is None:
        return None
    md = layer.metadata
    store = md.get(RESULTS_KEY)
    if isinstance(store, ScanResults) and (volume is None or store.volume is volume):
        return store
    if volume is None:
        return None
    store = md[RESULTS_KEY] = ScanResults(volume)
    return store


class Session:
    """What the HyperCT widgets of one viewer share."""

    volume_changed = Signal(object)  # CTVolume | None: a new CT became the analysed one
    model_changed = Signal(object)  # LoadedModel
    result_changed = Signal(object)  # AnalysisResult | None
    saliency_changed = Signal(object)  # SaliencyMaps | None
    finding_selected = Signal(str)  # finding id ("" = none)

    def __init__(self) -> None:
        self.volume: CTVolume | None = None
        self.ct_layer: Any = None
        self.model: LoadedModel | None = None
        self.result: AnalysisResult | None = None
        self.saliency: SaliencyMaps | None = None
        self.selected: str = ""

    def set_volume(
        self, volume: CTVolume | None, layer: Any = None, result: AnalysisResult | None = None
    ) -> None:
        """Point the session at a CT layer (and the result already computed for it, if any)."""
        self.volume, self.ct_layer = volume, layer
        self.result = result
        self.saliency = None
        self.volume_changed.emit(volume)
        self.result_changed.emit(result)
        self.saliency_changed.emit(None)

    def set_model(self, model: LoadedModel) -> None:
        self.model = model
        self.result = None
        self.saliency = None
        self.model_changed.emit(model)
        self.result_changed.emit(None)
        self.saliency_changed.emit(None)

    def set_result(self, result: AnalysisResult | None) -> None:
        self.result = result
        self.result_changed.emit(result)

    def set_saliency(self, saliency: SaliencyMaps | None) -> None:
        self.saliency = saliency
        self.saliency_changed.emit(saliency)

    def select_finding(self, finding_id: str) -> None:
        if finding_id != self.selected:
            self.selected = finding_id
            self.finding_selected.emit(finding_id)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The session of ``viewer`` (created on first use, dropped with the viewer).

    napari hands each plugin widget its own ``PublicOnlyProxy`` of the viewer; the session is keyed
    on the real viewer behind it, so every widget of one viewer shares one session.
    """
    key = getattr(viewer, "__wrapped__", viewer)
    try:
        return _SESSIONS[key]
    except KeyError:
        s = _SESSIONS[key] = Session()
        return s
