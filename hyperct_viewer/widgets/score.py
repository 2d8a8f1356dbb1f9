"""``Score a CT layer``: a magicgui ``magic_factory`` widget that napari users dock or script.

Docked (Plugins > HyperCT > Score a CT layer), it is a one-line form: CT layer, model folder (empty:
the embedded demo model), device, saliency method (``hyperct.saliency.METHODS``) and the finding
whose map is overlaid (default: the most probable one). Scripted, it is a function::

    from hyperct_viewer.widgets.score import score_layer

    widget = score_layer()
    viewer.window.add_dock_widget(widget)
    worker = widget(image=viewer.layers["Synthetic chest CT"], saliency_method="attention")
    worker.returned.connect(lambda scored: print(scored.result.positives, scored.layers))

Scoring is long, so it runs as a job of ``hyperct_viewer.jobs`` (one per viewer: one at a time,
Cancel, a result for a closed or replaced scan is dropped, errors told cause first); the call
returns the job's worker (None while another scoring job runs) and the layers are added when the
job ends. Progress shows in napari's activity dock. The 25 scores ride with the overlay layer
(``metadata["hyperct_result"]``, an ``AnalysisResult``); the Findings dock keeps its own results.
"""

# no ``from __future__ import annotations``: magicgui reads score_layer's annotations as objects
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
from magicgui import magic_factory
from magicgui.widgets import PushButton

from hyperct.findings import catalogue
from hyperct.progress import Progress
from hyperct.results import SCORED_CALLS
from hyperct.saliency import DEFAULT_METHOD, METHODS
from hyperct_viewer.layers import saliency_layer_kwargs, volume_of

if TYPE_CHECKING:  # pragma: no cover
    from hyperct.loading import LoadedModel
    from hyperct.results import AnalysisResult
    from hyperct.saliency import SaliencyMaps
    from hyperct.volume import CTVolume

RESULT_KEY = "hyperct_result"  # overlay metadata: the AnalysisResult of the scan it belongs to
SOURCE_KEY = "hyperct_scored_layer"  # overlay metadata: the CT layer it was computed for
DEVICE_CHOICES = [("Auto", "auto"), ("CUDA", "cuda"), ("CPU", "cpu")]
METHOD_CHOICES = [(m.name, m.id) for m in METHODS.values()]
MOST_PROBABLE = ""
FINDING_CHOICES = [("Most probable finding", MOST_PROBABLE)] + [(f.name, f.id) for f in catalogue()]


@dataclass
class Scored:
    """What a scoring job returns: the model, the 25 scores, the overlaid finding and its map."""

    model: "LoadedModel"
    result: "AnalysisResult"
    finding: str | None  # the finding whose map was computed (None: no finding was scored)
    maps: "SaliencyMaps | None"
    body: Any = None  # the scan's body outline (the overlay is drawn inside it)
    layers: list = field(default_factory=list)  # the layers added for it (filled when shown)


def score_steps(loaded, model_dir, device: str, volume: "CTVolume", method: str, finding: str, result=None):
    """The scoring job: load the model (unless given), score the 25 findings (unless ``result``
    holds them already), compute the map of ``finding`` (default: the most probable scored one).
    A generator of ``Progress`` steps."""
    from hyperct.inference import analysis_steps
    from hyperct.loading import load_model
    from hyperct.saliency import body_mask, compute_saliency

    if loaded is None:
        yield Progress(0, 1, "model", "loading the model")
        loaded = load_model(model_dir, device=device)
    if result is None:
        result = yield from analysis_steps(loaded, volume)
    scored = [f for f in result.findings if f.call in SCORED_CALLS]
    if finding == MOST_PROBABLE:
        finding = max(scored, key=lambda f: f.probability).id if scored else None
    if finding is None or result[finding].call not in SCORED_CALLS:
        return Scored(loaded, result, finding, None)
    yield Progress(0, 1, "saliency", f"{METHODS[method].name} saliency of {catalogue()[finding].name}")
    maps = compute_saliency(loaded, volume, [finding], method=method)
    return Scored(loaded, result, finding, maps, body_mask(volume))


class Scorer:
    """The scoring jobs of one viewer (whatever number of Score widgets it docks) and their model."""

    def __init__(self) -> None:
        from hyperct_viewer.jobs import Jobs

        self.jobs = Jobs()
        self.jobs.busy_changed.connect(self._on_busy_changed)
        self.model = None  # the last loaded model, reused while folder and device stay the same
        self.model_key: tuple[str | None, str] | None = None
        self._scores = None  # (weak reference to a volume, model key, its AnalysisResult)
        self.progress = None  # napari progress bar in the activity dock

    def start(self, viewer, layer, volume, model_folder, device: str, method: str, finding: str):
        from napari.utils import progress

        key = (str(model_folder) if model_folder else None, device)
        loaded = self.model if key == self.model_key else None
        result = None  # the scores of this scan by this model are kept: another map needs no rescoring
        if self._scores is not None and self._scores[0]() is volume and self._scores[1] == key:
            result = self._scores[2]
        self._close_progress()
        self.progress = progress(total=0, desc=f"HyperCT: scoring {layer.name}")
        return self.jobs.start(
            "score",
            score_steps,
            loaded,
            key[0],
            device,
            volume,
            method,
            finding,
            result,
            on_progress=partial(self._on_progress, layer.name),
            on_done=partial(self._on_done, viewer, layer, volume, key),
        )

    def _on_progress(self, name: str, step: Progress) -> None:
        if self.progress is not None:
            self.progress.total = step.total
            self.progress.n = step.done
            self.progress.set_description(f"HyperCT {name}: {step.message}")

    def _on_busy_changed(self, busy: bool) -> None:
        if not busy:
            self._close_progress()

    def _close_progress(self) -> None:
        pbar, self.progress = self.progress, None
        if pbar is not None:
            pbar.close()

    def _on_done(self, viewer, layer, volume, key, scored: Scored) -> None:
        from napari.utils.notifications import show_info

        self.model, self.model_key = scored.model, key
        self._scores = (weakref.ref(volume), key, scored.result)
        if layer not in viewer.layers or volume_of(layer) is not volume:
            return  # the scan was closed or replaced meanwhile: its scores belong to nothing shown
        result = scored.result
        top = sorted(result.positives, key=lambda f: -f.probability)
        said = ", ".join(f"{f.name} {f.probability:.2f}" for f in top[:3]) or "none"
        text = f"{layer.name}: {len(top)} of {len(result.findings)} findings above threshold ({said})"
        if scored.maps is not None:
            scored.layers.append(_show_overlay(viewer, layer, scored))
            text += f"; overlay: {scored.layers[0].name}"
        show_info(text)


def _show_overlay(viewer, layer, scored: Scored):
    """Add (or update, when this CT already has one of the same name) the saliency layer."""
    fid, maps = scored.finding, scored.maps
    finding = scored.result[fid]
    kwargs = saliency_layer_kwargs(layer, finding.name, maps.method)
    kwargs["name"] = f"{kwargs['name']} ({METHODS[maps.method].name})"
    kwargs["metadata"].update(
        {RESULT_KEY: scored.result, SOURCE_KEY: layer, "finding": fid, "probability": finding.probability}
    )
    data = maps.volume_map(fid, within=scored.body)
    overlay = next(
        (
            ly
            for ly in viewer.layers
            if ly.name == kwargs["name"] and (ly.metadata or {}).get(SOURCE_KEY) is layer
        ),
        None,
    )
    if overlay is not None:
        overlay.data = data
        overlay.metadata = kwargs["metadata"]
    else:
        overlay = viewer.add_image(data, **kwargs)
        src, dst = viewer.layers.index(overlay), viewer.layers.index(layer) + 1
        if src != dst:  # right above its CT, so another CT never covers it
            viewer.layers.move(src, dst)
    for axis, idx in enumerate(maps.peak_index(fid)):  # show the slice the map peaks on
        viewer.dims.set_point(axis, layer.translate[axis] + idx * layer.scale[axis])
    return overlay


_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def scorer_for(viewer) -> Scorer:
    """The scoring jobs of ``viewer`` (created on first use, dropped with the viewer)."""
    viewer = _unwrap(viewer)
    if viewer not in _SCORERS:
        _SCORERS[viewer] = Scorer()
    return _SCORERS[viewer]


def _unwrap(obj):
    return getattr(obj, "__wrapped__", obj)


def _init_widget(widget) -> None:
    """The empty model folder says what it means; a Cancel button under Score stops this viewer's
    scoring job (nothing of it is kept)."""
    line = widget.model_folder.line_edit.native
    if hasattr(line, "setPlaceholderText"):  # Qt
        line.setPlaceholderText("embedded demo model")
    cancel = PushButton(text="Cancel", gui_only=True, tooltip="Stop the running scoring job")
    cancel.changed.connect(lambda *_: scorer_for(widget.viewer.value).jobs.cancel())
    widget.append(cancel)


@magic_factory(
    call_button="Score",
    widget_init=_init_widget,
    image={
        "label": "CT layer",
        "tooltip": "A CT layer opened with the HyperCT reader or sample (HU values, mm geometry)",
    },
    model_folder={
        "label": "Model",
        "mode": "d",
        "tooltip": "A HyperCT checkpoint folder (manifest.json + model.safetensors); "
        "empty: the embedded demo model",
    },
    device={
        "label": "Device",
        "choices": DEVICE_CHOICES,
        "tooltip": "Where the model runs (Auto: a CUDA GPU if PyTorch sees one)",
    },
    saliency_method={
        "label": "Saliency",
        "choices": METHOD_CHOICES,
        "tooltip": "\n".join(f"{m.name}: {m.description}" for m in METHODS.values()),
    },
    finding={"label": "Overlay of", "choices": FINDING_CHOICES},
)
def score_layer(
    viewer: napari.Viewer,
    image: napari.layers.Image,
    model_folder: Path | None = None,
    device: str = "auto",
    saliency_method: str = DEFAULT_METHOD,
    finding: str = MOST_PROBABLE,
):
    """Score the 25 findings of a CT layer and overlay one finding's saliency map.

    Returns the job's worker (its ``returned`` signal carries a ``Scored``), or None while another
    scoring job of this viewer runs."""
    from napari.utils.notifications import show_warning

    layer = _unwrap(image)
    volume = volume_of(layer)
    if layer is None:
        raise ValueError(
            "No CT layer to score -> open a scan with File > Open (HyperCT reader) or "
            "File > Open Sample > HyperCT, then choose it as the CT layer"
        )
    if volume is None:
        name = getattr(layer, "name", layer)
        raise ValueError(
            f"Not a HyperCT CT layer: {name!r} was not opened with the HyperCT reader or sample, so "
            "its HU values and millimetre geometry are unknown -> open the scan with File > Open "
            "(HyperCT reader) or File > Open Sample > HyperCT"
        )
    scorer = scorer_for(viewer)
    if scorer.jobs.busy:
        show_warning("HyperCT is scoring a layer already: wait for it to finish, or press Cancel.")
        return None
    return scorer.start(_unwrap(viewer), layer, volume, model_folder, device, saliency_method, finding)
