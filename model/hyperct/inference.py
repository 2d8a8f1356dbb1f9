"""Score a CT volume for the 25 findings: preprocessing + one batched HyperCT pass.

``analysis_steps`` is a generator yielding ``Progress`` and returning the ``AnalysisResult`` (the
viewer runs it in a napari generator worker, so the GUI shows progress and can cancel between
steps); ``analyze`` drives it (``hyperct.progress.run_steps``) for scripts and the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence

import numpy as np
import torch

from hyperct import INTENDED_USE
from hyperct.device import autocast_for, default_task_chunk, task_chunks
from hyperct.findings import catalogue
from hyperct.loading import LoadedModel
from hyperct.preprocess import HU_MAX, HU_MIN, IMAGE_SIZE, N_IMAGES, N_SLICES, Preprocessed, preprocess
from hyperct.progress import Progress, run_steps
from hyperct.results import (
    CALL_ABSENT,
    CALL_NO_SCORE,
    CALL_NOT_ASSESSED,
    CALL_PRESENT,
    AnalysisResult,
    FindingResult,
    ModelInfo,
)
from hyperct.volume import PHI_KEYS, CTVolume


@torch.inference_mode()
def score_pixels(
    loaded: LoadedModel, pixel_values: torch.Tensor, tasks: Sequence[int], *, task_chunk: int | None = None
) -> np.ndarray:
    """Logits (B, len(tasks)) for a batch of preprocessed volumes (B, 55, 3, 144, 144)."""
    model = loaded.model
    chunk = task_chunk or default_task_chunk(loaded.device, model, pixel_values.shape[0])
    with autocast_for(loaded.device):
        logits = model(pixel_values.to(loaded.device), torch.as_tensor(list(tasks)), task_chunk=chunk)
    return logits.float().cpu().numpy()


def describe_input(volume: CTVolume) -> dict:
    """The input block of a result: what was analysed (identifiers kept apart for de-identification)."""
    md = volume.metadata
    z, y, x = volume.shape
    return {
        "type": volume.source_format,
        "source_paths": [str(p) for p in volume.source_paths[:1]]
        + ([f"... {len(volume.source_paths) - 1} more"] if len(volume.source_paths) > 1 else []),
        "StudyInstanceUID": md.get("StudyInstanceUID"),
        "SeriesInstanceUID": md.get("SeriesInstanceUID"),
        "FrameOfReferenceUID": md.get("FrameOfReferenceUID"),
        "StudyDate": md.get("StudyDate"),
        "SeriesDescription": md.get("SeriesDescription"),
        "slices": z,
        "matrix": [y, x],
        "spacing_mm": {"slice": volume.spacing[0], "row": volume.spacing[1], "column": volume.spacing[2]},
        "slice_thickness_mm": md.get("SliceThickness"),
        "orientation": "canonical axial (rows A->P, columns R->L, slices S->I)",
        "direction": [[float(v) for v in row] for row in volume.direction],
        "manufacturer": md.get("Manufacturer"),
        "model": md.get("ManufacturerModelName"),
        "kernel": md.get("ConvolutionKernel"),
        "kvp": md.get("KVP"),
        "identifiers": {k: str(md[k]) for k in PHI_KEYS if md.get(k) not in (None, "")},
        "qc_warnings": [w.to_dict() for w in volume.warnings],
    }


PREPROCESSING = {
    "target_shape": [N_SLICES, IMAGE_SIZE, IMAGE_SIZE],
    "resampling": "bilinear in-plane, linear through-plane, anti-aliased when shrinking, half-pixel aligned",
    "hu_window": [HU_MIN, HU_MAX],
    "scaling": "HU clipped to [-1000, 1000] then mapped to [0, 1]",
    "images": f"{N_IMAGES} non-overlapping triplets of consecutive slices as RGB",
    "normalisation": "ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)",
}


def model_info(loaded: LoadedModel) -> ModelInfo:
    raw = loaded.manifest.raw
    bb = raw.get("backbone", {})
    return ModelInfo(
        name=loaded.name,
        version=loaded.version,
        weights_sha256=loaded.weights_sha256,
        backbone=f"{bb.get('config_name', '?')} ({bb.get('source', '')})",
        is_demo=loaded.is_demo,
        intended_use=raw.get("intended_use", INTENDED_USE),
        threshold_method=raw.get("threshold_method", ""),
        directory=str(loaded.directory),
        weights_dtype=loaded.weights_dtype,
    )


def scan_gflop(model, n_tasks: int, n_images: int = N_IMAGES) -> float:
    """Forward GFLOP of scoring ``n_tasks`` findings of one scan (the backbone's matmuls, as counted in
    DESIGN.md section 4: ~15 GFLOP per ViT-B image at 86 tokens; LoRA adds ~3 %)."""
    cfg = model.backbone.config
    d, mlp, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    tokens = 1 + cfg.num_register_tokens + (IMAGE_SIZE // cfg.patch_size) ** 2
    per_layer = 2 * tokens * (4 * d * d + 2 * d * mlp) + 4 * tokens * tokens * d
    return n_tasks * n_images * layers * per_layer / 1e9


def estimated_cpu_seconds(loaded: LoadedModel, n_tasks: int = 25) -> float | None:
    """A rough time for one scan on this CPU (None on a GPU): the scan's GFLOP over a short fp32
    matmul's measured rate, at the ~0.6 of it the batched pass reaches on a CPU. Always the fp32
    figure: with bf16 backbone weights (``--dtype bf16``) a scan takes less (1.6-5x less measured)."""
    if loaded.device.type != "cpu":
        return None
    a = torch.randn(512, 512)
    a @ a  # warm up
    t = time.perf_counter()
    for _ in range(4):
        a @ a
    rate = 4 * 2 * 512**3 / max(time.perf_counter() - t, 1e-6) / 1e9
    return scan_gflop(loaded.model, n_tasks) / (0.6 * rate)


def finding_results(loaded: LoadedModel, logits: np.ndarray, tasks: Sequence[int]) -> list[FindingResult]:
    """The 25 findings from logits indexed by finding (``logits[k]`` for task k; others ignored):
    probability and call at the model's threshold; not asked -> "not assessed"; asked but NaN/inf
    from the model -> "no valid score" (a failure)."""
    thresholds = loaded.thresholds
    high_spec = set(loaded.manifest.high_specificity_findings)
    asked = set(int(t) for t in tasks)
    results = []
    for f in catalogue():
        lg = logits[f.index]
        th = float(thresholds[f.index])
        if f.index not in asked or not np.isfinite(lg):
            p = logit = None
            call = CALL_NOT_ASSESSED if f.index not in asked else CALL_NO_SCORE
        else:
            p, logit = float(1.0 / (1.0 + np.exp(-lg))), float(lg)
            call = CALL_PRESENT if p >= th else CALL_ABSENT
        flag = f.id in high_spec
        results.append(
            FindingResult(f.index, f.id, f.name, f.group, p, logit, th, call, high_specificity_threshold=flag)
        )
    return results


def analysis_steps(
    loaded: LoadedModel,
    volume: CTVolume,
    *,
    findings: Sequence[str] | None = None,
    task_chunk: int | None = None,
    preprocessed: Preprocessed | None = None,
) -> Generator[Progress, None, AnalysisResult]:
    cat = catalogue()
    tasks = cat.indices(list(findings) if findings is not None else None)
    chunk = task_chunk or default_task_chunk(loaded.device, loaded.model)
    chunks = task_chunks(tasks, chunk)
    total = 1 + len(chunks)
    start = time.perf_counter()
    yield Progress(0, total, "preprocess", "resampling to 165 x 144 x 144")
    pre = preprocessed or preprocess(volume)
    pixels = pre.pixel_values[None]
    logits = np.full(len(cat), np.nan)
    first = 1
    for ci, sub in enumerate(chunks):
        yield Progress(
            1 + ci,
            total,
            "score",
            f"scoring findings {first}-{first + len(sub) - 1} of {len(tasks)}",
        )
        logits[sub] = score_pixels(loaded, pixels, sub, task_chunk=chunk)[0]
        first += len(sub)
    results = finding_results(loaded, logits, tasks)
    seconds = time.perf_counter() - start
    yield Progress(total, total, "done", f"scored {len(tasks)} findings in {seconds:.1f} s")
    return AnalysisResult(
        findings=results,
        model=model_info(loaded),
        device=str(loaded.device),
        seconds=seconds,
        input=describe_input(volume),
        preprocessing=dict(PREPROCESSING, source_shape=list(pre.source_shape)),
        warnings=list(volume.warnings),
    )


def analyze(
    loaded: LoadedModel,
    volume: CTVolume,
    *,
    findings: Sequence[str] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    task_chunk: int | None = None,
) -> AnalysisResult:
    """Run ``analysis_steps`` to completion (``cancel()`` returning True stops between steps and
    raises ``hyperct.progress.Cancelled``)."""
    steps = analysis_steps(loaded, volume, findings=findings, task_chunk=task_chunk)
    return run_steps(steps, progress=progress, cancel=cancel, what="analysis")
