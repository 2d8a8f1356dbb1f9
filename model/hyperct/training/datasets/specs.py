"""Datasets from their descriptions: the mappings of ``data.train`` / ``data.valid`` in a training
configuration (``build_dataset``) and the CLI's short forms (``parse_data_spec``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hyperct.errors import DatasetError
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets.base import VolumeDataset
from hyperct.training.datasets.ct_rate import CT_RATE_SPLITS, CTRateDataset
from hyperct.training.datasets.manifest import ManifestDataset
from hyperct.training.datasets.phantoms import PAIRS, PhantomDataset

_TYPES = {"manifest": ("csv",), "ct-rate": ("root",), "phantom": ("count",)}
_ALLOWED = {
    "manifest": {"type", "csv", "ignore_columns", "unknown_columns"},
    "ct-rate": {"type", "root", "split", "labels", "metadata", "skip_missing", "limit"},
    "phantom": {"type", "count", "first_seed", "matrix", "n_slices", "findings", "severity", "pair"},
}


def _resolve_path(value: str, base: Path | None) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() or base is None else base / p


def build_dataset(
    spec: dict,
    *,
    cache: PreprocessCache | None = None,
    field: str = "data",
    source: str | None = None,
    base_dir: str | Path | None = None,
    rank: int = 0,
    world: int = 1,
    barrier=None,
    progress: bool = False,
    workers: int = 1,
    prepare: bool = True,
) -> VolumeDataset:
    """A dataset from its description; errors name ``source`` (the config file) and ``field``.

    ``prepare=False`` leaves a phantom dataset's phantoms ungenerated (``PhantomDataset.prepare``).
    """
    from hyperct.errors import ConfigError

    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(
            f"{field}: expected a mapping with a 'type' (manifest, ct-rate, phantom)", path=source
        )
    kind = spec["type"]
    if kind not in _TYPES:
        raise ConfigError(f"{field}.type: expected manifest, ct-rate or phantom, got {kind!r}", path=source)
    unknown = sorted(set(spec) - _ALLOWED[kind])
    if unknown:
        raise ConfigError(
            f"{field}.{unknown[0]}: unknown field for a {kind} dataset (allowed: {', '.join(sorted(_ALLOWED[kind]))})",
            path=source,
        )
    for req in _TYPES[kind]:
        if spec.get(req) in (None, ""):
            raise ConfigError(f"{field}.{req}: required for a {kind} dataset", path=source)
    base = Path(base_dir) if base_dir is not None else None
    try:
        if kind == "manifest":
            return ManifestDataset(
                _resolve_path(spec["csv"], base),
                cache=cache,
                ignore_columns=spec.get("ignore_columns") or (),
                unknown_columns=spec.get("unknown_columns", "error"),
            )
        if kind == "ct-rate":
            return CTRateDataset(
                _resolve_path(spec["root"], base),
                spec.get("split", "train"),
                labels=_resolve_path(spec["labels"], base) if spec.get("labels") else None,
                metadata=_resolve_path(spec["metadata"], base) if spec.get("metadata") else None,
                cache=cache,
                skip_missing=bool(spec.get("skip_missing", False)),
                limit=spec.get("limit"),
            )
        for key, default, low in (
            ("count", 1, 1),
            ("first_seed", 0, 0),
            ("matrix", 256, 32),
            ("n_slices", None, 8),
        ):
            v = spec.get(key, default)
            if v is None and default is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"{field}.{key}: expected an integer >= {low}, got {v!r}", path=source)
        sev = spec.get("severity")
        if sev is not None and not (
            isinstance(sev, list | tuple)
            and len(sev) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in sev)
            and 0 < sev[0] <= sev[1] <= 1
        ):
            raise ConfigError(
                f"{field}.severity: expected null or [low, high] with 0 < low <= high <= 1, got {sev!r}",
                path=source,
            )
        if spec.get("pair") not in PAIRS:
            raise ConfigError(
                f"{field}.pair: expected null, normal, variant or drop_one, got {spec.get('pair')!r}",
                path=source,
            )
        return PhantomDataset(
            spec["count"],
            spec.get("first_seed", 0),
            matrix=spec.get("matrix", 256),
            n_slices=spec.get("n_slices"),
            findings=spec.get("findings"),
            severity=sev,
            cache=cache,
            rank=rank,
            world=world,
            barrier=barrier,
            progress=progress,
            workers=workers,
            pair=spec.get("pair"),
            prepare=prepare,
        )
    except DatasetError as exc:
        if source and field:
            raise DatasetError(f"{field} ({source}): {exc}") from exc
        raise


def parse_data_spec(
    text: str,
    *,
    labels: str | None = None,
    metadata: str | None = None,
    matrix: int = 256,
    findings: Any = None,
) -> dict:
    """``FILE.csv`` | ``ct-rate:ROOT:SPLIT`` | ``phantom:N:SEED`` -> a dataset description."""
    from hyperct.errors import ConfigError

    if text.startswith("ct-rate:"):
        rest = text[len("ct-rate:") :]
        root, sep, split = rest.rpartition(":")
        if not sep or not root or split not in CT_RATE_SPLITS:
            raise ConfigError(f"data spec {text!r}: expected ct-rate:ROOT:SPLIT with SPLIT train or valid")
        spec = {"type": "ct-rate", "root": root, "split": split}
        if labels:
            spec["labels"] = labels
        if metadata:
            spec["metadata"] = metadata
        return spec
    if text.startswith("phantom:"):
        parts = text.split(":")[1:]
        try:
            n, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"data spec {text!r}: expected phantom:N:SEED with integers") from exc
        if n < 1 or seed < 0 or len(parts) > 2:
            raise ConfigError(f"data spec {text!r}: expected phantom:N:SEED with N >= 1, SEED >= 0")
        return {"type": "phantom", "count": n, "first_seed": seed, "matrix": matrix, "findings": findings}
    return {"type": "manifest", "csv": text}
