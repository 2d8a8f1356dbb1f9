"""Labelled CT datasets for training and evaluation.

Every dataset is a ``VolumeDataset``: ``labels`` is an int8 (N, 25) array in catalogue order with
1 (present), 0 (absent) or -1 (not labelled); ``dataset[i]`` gives ``(pixel_values, labels)`` with
pixel values (55, 3, 144, 144) ready for the model, through the preprocessing cache when one is set.

Sources (``build_dataset(spec)`` with a mapping, ``parse_data_spec(text)`` for the CLI):

* ``{type: manifest, csv: FILE}``: a CSV with a ``path`` (or ``volume``) column and one column
  per finding (the finding id, its name or its CT-RATE column name, case-insensitive) holding
  1 / 0 / -1 or empty (= not labelled). Relative paths resolve against the CSV's folder; a path
  may be a NIfTI/NRRD/MHA file or a DICOM folder. Optional columns: ``id``, ``series_uid``,
  ``rescale_slope`` + ``rescale_intercept``. Other columns are an error unless listed in
  ``ignore_columns`` (or ``unknown_columns: ignore``).
* ``{type: ct-rate, root: DIR, split: train|valid, labels: CSV, metadata: CSV}``: the CT-RATE
  layout ``<root>/<split>/<patient>/<scan>/<volume>.nii.gz`` (e.g.
  ``train/train_1/train_1_a/train_1_a_1.nii.gz``), the ``multi_abnormality_labels`` CSV
  (``VolumeName`` + the 18 finding columns) and the metadata CSV whose ``RescaleSlope`` /
  ``RescaleIntercept`` are applied to the stored values. ``labels``/``metadata`` default to the
  files of the CT-RATE release under ``root`` when present. The 7 opportunistic findings are -1.
  ``skip_missing: true`` drops listed volumes that are not on disk (default: error).
* ``{type: phantom, count: N, first_seed: S, matrix: 256, n_slices: null, findings: null,
  severity: null}``: N synthetic phantoms from ``hyperct.phantom.generate`` with seeds
  S .. S+N-1 (see ``PhantomDataset``), generated once, then cached by generator version, seed
  and parameters; without a cache folder they are kept in memory (3.4 MB each).
  ``pair: normal`` (or ``variant``) makes it 2N volumes in pairs that share the anatomy: item 2j
  is seed S+j as drawn, item 2j+1 its twin, the same patient without any finding (``normal``) or
  with every finding redrawn elsewhere (``variant``, ``lesion_variant=1``); the two differ only
  inside the findings' masks. ``pair: drop_one`` renders the seed's own random draw explicitly
  (same findings and severities) and a twin with ONE conventional finding removed (chosen from the
  seed; not cardiomegaly, whose heart shape moves its surroundings): the two differ only inside that
  finding's mask, and their labels only in that finding.

CLI specs: ``FILE.csv``, ``ct-rate:ROOT:SPLIT``, ``phantom:N:SEED``.
"""

from __future__ import annotations

import csv
import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyperct.errors import DatasetError, InputError
from hyperct.findings import catalogue
from hyperct.preprocess import normalise, resample_hu
from hyperct.training.cache import PreprocessCache

N_FINDINGS = len(catalogue())
MISSING = -1

_TRUE = {"1", "1.0", "true", "yes", "y", "present", "positive"}
_FALSE = {"0", "0.0", "false", "no", "n", "absent", "negative"}
_NA = {"", "-1", "-1.0", "na", "n/a", "nan", "none", "null", "missing", "?"}


def parse_label(text: str) -> int | None:
    t = str(text).strip().lower()
    if t in _TRUE:
        return 1
    if t in _FALSE:
        return 0
    if t in _NA:
        return MISSING
    return None


class VolumeDataset(torch.utils.data.Dataset):
    """Base class: subclasses set ``labels``, ``names`` and implement ``identity`` and ``read_hu``."""

    kind = "volumes"

    def __init__(self, *, source: str, cache: PreprocessCache | None = None):
        self.source = source
        self.cache = cache
        self.labels = np.zeros((0, N_FINDINGS), dtype=np.int8)
        self.names: list[str] = []
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    # -- to implement -----------------------------------------------------------------------
    def identity(self, i: int) -> dict:
        raise NotImplementedError

    def read_hu(self, i: int) -> np.ndarray:
        """The canonical HU volume (k, j, i) of item ``i`` (any size)."""
        raise NotImplementedError

    # -- common -----------------------------------------------------------------------------
    def _key(self, i: int) -> str:
        if i not in self._keys:
            self._keys[i] = self.cache.key(self.identity(i))
        return self._keys[i]

    def cache_info(self, i: int) -> dict:
        return {"name": self.names[i], "source": self.identity(i)}

    def model_hu(self, i: int) -> np.ndarray:
        """(165, 144, 144) float32 HU on the model grid (clipped to the window when cached)."""
        if self.cache is not None:
            key = self._key(i)
            hit = self.cache.get(key)
            if hit is not None:
                return hit[0]
        hu = resample_hu(self.read_hu(i)).numpy()
        if self.cache is not None:
            return self.cache.put(key, hu, self.cache_info(i))
        return hu

    def pixel_values(self, i: int) -> torch.Tensor:
        return normalise(torch.from_numpy(np.ascontiguousarray(self.model_hu(i))))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pixel_values(int(i)), torch.from_numpy(self.labels[int(i)].copy())

    def counts(self) -> dict[str, dict[str, int]]:
        ids = catalogue().ids
        return {
            fid: {
                "positives": int((self.labels[:, k] == 1).sum()),
                "negatives": int((self.labels[:, k] == 0).sum()),
            }
            for k, fid in enumerate(ids)
        }

    def describe(self) -> dict:
        return {"type": self.kind, "source": self.source, "n": len(self), "labels": self.counts()}

    def summary(self) -> str:
        labelled = int(((self.labels == 0) | (self.labels == 1)).any(axis=0).sum())
        return f"{self.kind} {self.source}: {len(self)} volumes, {labelled} findings labelled"

    def check_has_labels(self) -> None:
        if len(self) == 0:
            raise DatasetError("the dataset holds no volumes", path=self.source)
        if not ((self.labels == 0) | (self.labels == 1)).any():
            raise DatasetError(
                "no labels at all: every finding is -1/empty for every volume",
                path=self.source,
                hint="fill the finding columns with 1 (present) or 0 (absent)",
            )


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise DatasetError("CSV file does not exist", path=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read the CSV ({exc})", path=path) from exc
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DatasetError("the CSV is empty (no header)", path=path)
    header = [h.strip() for h in rows[0]]
    return header, rows[1:]


def _finding_aliases() -> dict[str, int]:
    aliases: dict[str, int] = {}
    for f in catalogue():
        for name in (f.id, f.name, f.short_name, f.ct_rate_column):
            if name:
                aliases[name.strip().lower()] = f.index
    return aliases


def _read_ct(path: Path, *, rescale=None, series_uid=None, source: str) -> np.ndarray:
    from hyperct.io import read_ct

    try:
        vol = read_ct(path, rescale=rescale, series_uid=series_uid)
    except InputError as exc:
        raise DatasetError(f"volume cannot be read: {exc}", path=source) from exc
    return vol.hu


class ManifestDataset(VolumeDataset):
    """A CSV of volume paths and per-finding labels."""

    kind = "manifest"
    PATH_COLUMNS = ("path", "volume", "file")
    OPTIONAL = ("id", "series_uid", "rescale_slope", "rescale_intercept")

    def __init__(
        self,
        csv_path: str | Path,
        *,
        cache: PreprocessCache | None = None,
        ignore_columns: list[str] | tuple[str, ...] = (),
        unknown_columns: str = "error",
    ):
        csv_path = Path(csv_path)
        super().__init__(source=str(csv_path), cache=cache)
        header, rows = _read_csv(csv_path)
        lower = [h.lower() for h in header]
        path_col = next((lower.index(c) for c in self.PATH_COLUMNS if c in lower), None)
        if path_col is None:
            raise DatasetError(
                f"no volume path column (expected one named {' or '.join(self.PATH_COLUMNS)}); columns: {', '.join(header)}",
                path=csv_path,
            )
        aliases = _finding_aliases()
        ignore = {c.strip().lower() for c in ignore_columns}
        finding_cols: dict[int, int] = {}
        optional: dict[str, int] = {}
        for j, name in enumerate(lower):
            if j == path_col or name in ignore:
                continue
            if name in self.OPTIONAL:
                optional[name] = j
                continue
            if name in aliases:
                k = aliases[name]
                if k in finding_cols.values():
                    raise DatasetError(
                        f"two columns give labels for the finding {catalogue()[k].id!r} ({header[j]!r})",
                        path=csv_path,
                    )
                finding_cols[j] = k
                continue
            if unknown_columns == "ignore":
                continue
            near = difflib.get_close_matches(name, list(aliases), n=1, cutoff=0.6)
            raise DatasetError(
                f"unknown finding column {header[j]!r}"
                + (f" (did you mean {catalogue()[aliases[near[0]]].id!r}?)" if near else ""),
                path=csv_path,
                hint="use finding ids from `hyperct info` / assets/findings.yaml, or list the column in ignore_columns",
            )
        if not finding_cols:
            raise DatasetError(
                "the CSV has no finding columns",
                path=csv_path,
                hint=f"add one column per finding id, e.g. {', '.join(catalogue().ids[:3])}",
            )
        if ("rescale_slope" in optional) != ("rescale_intercept" in optional):
            raise DatasetError("rescale_slope and rescale_intercept must be given together", path=csv_path)
        labels = np.full((len(rows), N_FINDINGS), MISSING, dtype=np.int8)
        self.paths: list[Path] = []
        self.rescale: list[tuple[float, float] | None] = []
        self.series_uid: list[str | None] = []
        missing: list[str] = []
        for r, row in enumerate(rows):
            line = r + 2
            row = row + [""] * (len(header) - len(row))
            raw_path = row[path_col].strip()
            if not raw_path:
                raise DatasetError(f"line {line}: the volume path is empty", path=csv_path)
            p = Path(raw_path).expanduser()
            if not p.is_absolute():
                p = csv_path.parent / p
            if not p.exists():
                missing.append(f"line {line}: {raw_path}")
            self.paths.append(p)
            for j, k in finding_cols.items():
                v = parse_label(row[j])
                if v is None:
                    raise DatasetError(
                        f"line {line}, column {header[j]!r}: label {row[j]!r} is not 1, 0, -1 or empty",
                        path=csv_path,
                    )
                labels[r, k] = v
            if "rescale_slope" in optional:
                try:
                    slope = float(row[optional["rescale_slope"]])
                    intercept = float(row[optional["rescale_intercept"]])
                except ValueError as exc:
                    raise DatasetError(
                        f"line {line}: rescale_slope/intercept are not numbers", path=csv_path
                    ) from exc
                self.rescale.append((slope, intercept))
            else:
                self.rescale.append(None)
            uid = row[optional["series_uid"]].strip() if "series_uid" in optional else ""
            self.series_uid.append(uid or None)
            name = row[optional["id"]].strip() if "id" in optional else ""
            self.names.append(name or raw_path)
        if missing:
            raise DatasetError(
                f"{len(missing)} volume path(s) do not exist, e.g. {'; '.join(missing[:3])}",
                path=csv_path,
                hint="relative paths resolve against the CSV's folder",
            )
        self.labels = labels
        self.check_has_labels()

    def identity(self, i: int) -> dict:
        from hyperct.training.cache import file_identity

        ident = file_identity(self.paths[i])
        if self.rescale[i] is not None:
            ident["rescale"] = list(self.rescale[i])
        if self.series_uid[i]:
            ident["series_uid"] = self.series_uid[i]
        return ident

    def read_hu(self, i: int) -> np.ndarray:
        return _read_ct(
            self.paths[i], rescale=self.rescale[i], series_uid=self.series_uid[i], source=str(self.paths[i])
        )


# --- CT-RATE ----------------------------------------------------------------------------------

CT_RATE_SPLITS = {"train": "train", "valid": "valid", "validation": "valid"}


def _first_file(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def ct_rate_volume_path(root: Path, split: str, volume_name: str) -> Path:
    """``train_1_a_1.nii.gz`` -> ``root/train/train_1/train_1_a/train_1_a_1.nii.gz``."""
    stem = volume_name.split(".")[0]
    parts = stem.split("_")
    if len(parts) < 4:
        raise DatasetError(
            f"VolumeName {volume_name!r} does not follow CT-RATE's <split>_<patient>_<scan>_<recon> pattern"
        )
    patient, scan = "_".join(parts[:2]), "_".join(parts[:3])
    for base in (root / split, root):
        p = base / patient / scan / volume_name
        if p.exists():
            return p
    return root / split / patient / scan / volume_name


class CTRateDataset(VolumeDataset):
    """The CT-RATE release layout with its multi-abnormality labels and metadata CSVs."""

    kind = "ct-rate"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        labels: str | Path | None = None,
        metadata: str | Path | None = None,
        cache: PreprocessCache | None = None,
        skip_missing: bool = False,
        limit: int | None = None,
    ):
        root = Path(root)
        if split not in CT_RATE_SPLITS:
            raise DatasetError(f"CT-RATE split {split!r} is not train or valid", path=root)
        split = CT_RATE_SPLITS[split]
        super().__init__(source=f"{root} ({split})", cache=cache)
        if not root.is_dir():
            raise DatasetError("CT-RATE root folder does not exist", path=root)
        long = "validation" if split == "valid" else split
        labels_path = (
            Path(labels)
            if labels
            else _first_file(
                [
                    root / "multi_abnormality_labels" / f"{split}_predicted_labels.csv",
                    root / "multi_abnormality_labels" / f"{long}_predicted_labels.csv",
                    root / f"{split}_predicted_labels.csv",
                ]
            )
        )
        meta_path = (
            Path(metadata)
            if metadata
            else _first_file(
                [
                    root / "metadata" / f"{long}_metadata.csv",
                    root / "metadata" / f"{split}_metadata.csv",
                    root / f"{long}_metadata.csv",
                    root / f"{split}_metadata.csv",
                ]
            )
        )
        if labels_path is None:
            raise DatasetError(
                f"no CT-RATE labels CSV found for split {split!r}",
                path=root,
                hint="pass labels=<multi_abnormality_labels/..._predicted_labels.csv> (CLI: --labels)",
            )
        if meta_path is None:
            raise DatasetError(
                f"no CT-RATE metadata CSV found for split {split!r}",
                path=root,
                hint="pass metadata=<metadata/..._metadata.csv> (CLI: --metadata): its RescaleSlope/Intercept are needed",
            )
        self.labels_csv, self.metadata_csv = labels_path, meta_path
        self.source = f"CT-RATE {root} split={split} labels={labels_path.name} metadata={meta_path.name}"

        header, rows = _read_csv(labels_path)
        if header[0] != "VolumeName" and "VolumeName" not in header:
            raise DatasetError("the labels CSV has no VolumeName column", path=labels_path)
        name_col = header.index("VolumeName")
        col_of: dict[int, int] = {}
        absent = []
        for f in catalogue():
            if f.ct_rate_column is None:
                continue
            if f.ct_rate_column in header:
                col_of[f.index] = header.index(f.ct_rate_column)
            else:
                absent.append(f.ct_rate_column)
        if absent:
            raise DatasetError(
                f"the labels CSV lacks the CT-RATE column(s) {', '.join(repr(a) for a in absent)}",
                path=labels_path,
                hint="use CT-RATE's multi_abnormality_labels CSV (VolumeName + 18 finding columns)",
            )
        meta_header, meta_rows = _read_csv(meta_path)
        need = ["VolumeName", "RescaleSlope", "RescaleIntercept"]
        lacking = [c for c in need if c not in meta_header]
        if lacking:
            raise DatasetError(f"the metadata CSV lacks the column(s) {', '.join(lacking)}", path=meta_path)
        mi = {c: meta_header.index(c) for c in need}
        rescale_of: dict[str, tuple[float, float]] = {}
        for r, row in enumerate(meta_rows):
            try:
                rescale_of[row[mi["VolumeName"]].strip()] = (
                    float(row[mi["RescaleSlope"]]),
                    float(row[mi["RescaleIntercept"]]),
                )
            except (ValueError, IndexError) as exc:
                raise DatasetError(
                    f"line {r + 2}: RescaleSlope/RescaleIntercept are not numbers", path=meta_path
                ) from exc

        out_labels, missing, no_meta = [], [], []
        self.paths, self.rescale = [], []
        for r, row in enumerate(rows):
            name = row[name_col].strip()
            if not name:
                continue
            path = ct_rate_volume_path(root, split, name)
            if not path.exists():
                missing.append(name)
                continue
            if name not in rescale_of:
                no_meta.append(name)
                continue
            lab = np.full(N_FINDINGS, MISSING, dtype=np.int8)
            for k, j in col_of.items():
                v = parse_label(row[j]) if j < len(row) else MISSING
                if v is None:
                    raise DatasetError(
                        f"line {r + 2}, column {header[j]!r}: label {row[j]!r} is not 1, 0 or empty",
                        path=labels_path,
                    )
                lab[k] = v
            out_labels.append(lab)
            self.paths.append(path)
            self.rescale.append(rescale_of[name])
            self.names.append(name)
            if limit is not None and len(self.names) >= limit:
                break
        if no_meta:
            raise DatasetError(
                f"{len(no_meta)} volume(s) have no RescaleSlope/RescaleIntercept in the metadata CSV, e.g. {no_meta[0]}",
                path=meta_path,
            )
        if missing and (not skip_missing or not self.paths):
            raise DatasetError(
                f"{len(missing)} volume(s) listed in the labels CSV are not under {root / split}, e.g. {missing[0]} "
                f"(expected {ct_rate_volume_path(root, split, missing[0])})",
                path=labels_path,
                hint="download them, or set skip_missing: true to use the volumes present",
            )
        self.skipped = missing
        self.labels = np.stack(out_labels) if out_labels else np.zeros((0, N_FINDINGS), np.int8)
        self.check_has_labels()

    def identity(self, i: int) -> dict:
        from hyperct.training.cache import file_identity

        return dict(file_identity(self.paths[i]), rescale=list(self.rescale[i]))

    def read_hu(self, i: int) -> np.ndarray:
        return _read_ct(self.paths[i], rescale=self.rescale[i], source=str(self.paths[i]))


# --- phantoms ---------------------------------------------------------------------------------


def _phantom_module():
    try:
        import hyperct.phantom as phantom
    except ImportError as exc:  # pragma: no cover - the phantom package ships with the engine
        raise DatasetError("the phantom generator (hyperct.phantom) is not available") from exc
    return phantom


def phantom_version() -> str:
    ph = _phantom_module()
    for attr in ("GENERATOR_VERSION", "__version__", "VERSION"):
        if hasattr(ph, attr):
            return str(getattr(ph, attr))
    from hyperct import __version__

    return f"hyperct-{__version__}"


class PhantomDataset(VolumeDataset):
    """``count`` synthetic phantoms with seeds ``first_seed`` .. ``first_seed + count - 1``.

    ``findings``: None = the generator's own draw (realistic prevalence, some labels missing);
    a mapping ``{finding_id: prevalence}`` = each listed finding is switched on independently
    with that probability (drawn from the seed), every other finding is absent, so all 25 labels
    are known; a list = those findings in every phantom. ``severity: [lo, hi]`` draws the
    severity of switched-on findings uniformly in that range (default: the generator's draw).
    ``n_slices`` fixes the slice count (default: the generator's clinical slice spacing).
    """

    kind = "phantom"

    def __init__(
        self,
        count: int,
        first_seed: int = 0,
        *,
        matrix: int = 256,
        n_slices: int | None = None,
        findings: Any = None,
        severity: list[float] | tuple[float, float] | None = None,
        cache: PreprocessCache | None = None,
        prepare: bool = True,
        rank: int = 0,
        world: int = 1,
        barrier: Callable[[], None] | None = None,
        progress: bool = False,
        workers: int = 1,
        pair: str | None = None,
    ):
        if int(count) < 1:
            raise DatasetError(f"phantom count must be >= 1, got {count}")
        if pair not in PAIRS:
            raise DatasetError(f"phantom pair must be null, 'normal', 'variant' or 'drop_one', got {pair!r}")
        last = int(first_seed) + int(count) - 1
        source = f"phantoms seeds {first_seed}..{last} matrix {matrix}"
        super().__init__(source=source + (f" in pairs ({pair} twin)" if pair else ""), cache=cache)
        self.pair = pair
        seeds = list(range(int(first_seed), int(first_seed) + int(count)))
        # item i: seed self.seeds[i]; twin[i]: 0 = as drawn, 1 = the pair's twin
        self.seeds = [s for s in seeds for _ in range(2)] if pair else seeds
        self.twin = [i % 2 for i in range(len(self.seeds))] if pair else [0] * len(self.seeds)
        self.matrix = int(matrix)
        self.n_slices = None if n_slices is None else int(n_slices)
        self.findings = _check_phantom_findings(findings)
        self.severity = None if severity is None else [float(severity[0]), float(severity[1])]
        self.cache = cache if cache is not None else PreprocessCache(None)
        self.names = [f"phantom-{s}" + (f"-{pair}" if t else "") for s, t in zip(self.seeds, self.twin)]
        self.labels = np.full((len(self.seeds), N_FINDINGS), MISSING, dtype=np.int8)
        self._version = phantom_version()
        if prepare:
            self.prepare(rank=rank, world=world, barrier=barrier, progress=progress, workers=workers)

    def identity(self, i: int) -> dict:
        ident = {
            "phantom": self._version,
            "seed": self.seeds[i],
            "matrix": self.matrix,
            "n_slices": self.n_slices,
            "findings": self.findings,
            "severity": self.severity,
        }
        if self.twin[i]:  # (the drawn item keeps the key of an unpaired dataset's phantom)
            ident["twin"] = self.pair
        elif self.pair == "drop_one":  # rendered from its explicit draw: not the random-mode phantom
            ident["explicit_draw"] = True
        return ident

    def pair_of(self, i: int) -> int:
        """The index of item ``i``'s twin (``pair`` datasets only)."""
        if not self.pair:
            raise ValueError("this phantom dataset has no pairs (pair: null)")
        return i ^ 1

    def findings_for(self, i: int):
        """What ``generate`` is asked for phantom ``i`` (None = the generator's random draw)."""
        if self.twin[i] and self.pair == "normal":
            return {}
        if self.pair == "drop_one":
            base = drawn_severities(self.seeds[i]) if self.findings is None else self._requested(i)
            if isinstance(base, list):
                base = dict.fromkeys(base)  # severities drawn from the seed
            if not self.twin[i]:
                return dict(base)
            k = dropped_finding(self.seeds[i], base)
            return {f: v for f, v in base.items() if f != k} if k else {}
        return self._requested(i)

    def _requested(self, i: int):
        if not isinstance(self.findings, dict):
            return self.findings
        rng = np.random.default_rng([self.seeds[i], 0xF1D5])
        chosen = {}
        for fid in catalogue().ids:  # catalogue order: independent of the mapping's order
            if fid not in self.findings:
                continue
            on = rng.random() < float(self.findings[fid])
            sev = float(rng.uniform(*self.severity)) if self.severity else None
            if on:
                chosen[fid] = sev
        return chosen

    def generate(self, i: int):
        ph = _phantom_module()
        kwargs: dict[str, Any] = {"matrix": self.matrix}
        if self.n_slices is not None:
            kwargs["n_slices"] = self.n_slices
        if self.twin[i] and self.pair == "variant":
            kwargs["lesion_variant"] = 1
        request = self.findings_for(i)
        return ph.generate(self.seeds[i], request, **kwargs)

    def read_hu(self, i: int) -> np.ndarray:
        return self.generate(i).volume.hu

    def _fill(self, i: int) -> np.ndarray:
        from hyperct.training.token_labels import TOKEN_LABELS, token_labels

        out = self.generate(i)
        labels = np.asarray(out.labels, dtype=np.int8).reshape(-1)
        if labels.size != N_FINDINGS:
            raise DatasetError(f"phantom {self.seeds[i]}: {labels.size} labels, expected {N_FINDINGS}")
        hu = resample_hu(out.volume.hu).numpy()
        # where each finding is, per model token (for backbone pretraining): beside the volume
        self.cache.put_array(
            self._key(i), TOKEN_LABELS, np.packbits(token_labels(out.masks, out.volume.shape))
        )
        self.cache.put(self._key(i), hu, dict(self.cache_info(i), labels=labels.tolist()))
        return labels

    def token_labels(self, i: int) -> np.ndarray:
        """(55, 9, 9, 25) bool: finding masks per model token (the generator's ground truth)."""
        from hyperct.training.token_labels import TOKEN_LABELS, TOKEN_SHAPE

        packed = self.cache.get_array(self._key(i), TOKEN_LABELS)
        if packed is None:
            self._fill(i)
            packed = self.cache.get_array(self._key(i), TOKEN_LABELS)
        n = int(np.prod(TOKEN_SHAPE))
        return np.unpackbits(np.asarray(packed))[:n].reshape(TOKEN_SHAPE).astype(bool)

    def prepare(
        self, *, rank: int = 0, world: int = 1, barrier=None, progress: bool = False, workers: int = 1
    ) -> None:
        """Generate every phantom not in the cache yet (shared between ranks, and between ``workers``
        processes when the cache is on disk), then read the labels."""
        from hyperct.training.token_labels import TOKEN_LABELS

        def missing(i: int) -> bool:
            key = self._key(i)
            return not self.cache.contains(key) or self.cache.get_array(key, TOKEN_LABELS) is None

        todo = [i for i in range(len(self)) if missing(i)]
        mine = todo if self.cache.directory is None else todo[rank::world]
        bar = None
        if progress and mine:
            from hyperct.training.progress import progress_bar

            bar = progress_bar(total=len(mine), desc=f"phantoms ({self.source})", unit="vol")
        if workers > 1 and self.cache.directory is not None and len(mine) > 1:
            import multiprocessing as mp

            state = self.worker_state()
            with mp.get_context("spawn").Pool(min(workers, len(mine)), initializer=_quiet_worker) as pool:
                for i, labels in pool.imap_unordered(_fill_in_worker, [(state, i) for i in mine]):
                    self.labels[i] = labels
                    if bar is not None:
                        bar.update(1)
        else:
            for i in mine:
                self.labels[i] = self._fill(i)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        if barrier is not None and world > 1:
            barrier()
        for i in range(len(self)):
            info = self.cache.get_info(self._key(i))
            if info is None or "labels" not in info:
                self.labels[i] = self._fill(i)
            else:
                self.labels[i] = np.asarray(info["labels"], dtype=np.int8)
        self.check_has_labels()

    def worker_state(self) -> tuple:
        """What a worker process needs to rebuild this dataset (``_fill_in_worker``)."""
        first, count = self.seeds[0], len(self.seeds) // (2 if self.pair else 1)
        return (
            first,
            count,
            self.matrix,
            self.n_slices,
            self.findings,
            self.severity,
            str(self.cache.directory),
            self.cache.dtype,
            self.cache.compress,
            self.pair,
        )


def _quiet_worker() -> None:
    torch.set_num_threads(1)


def _fill_in_worker(job) -> tuple[int, np.ndarray]:
    """Generate and cache one phantom in a worker process (``PhantomDataset.prepare(workers=N)``)."""
    (first, count, matrix, n_slices, findings, severity, directory, dtype, compress, pair), i = job
    ds = PhantomDataset(
        count,
        first,
        matrix=matrix,
        n_slices=n_slices,
        findings=findings,
        severity=severity,
        cache=PreprocessCache(directory, dtype, compress=compress),
        prepare=False,
        pair=pair,
    )
    return i, ds._fill(i)


PAIRS = (None, "normal", "variant", "drop_one")
# findings whose removal changes a phantom only inside their own mask (cardiomegaly reshapes the heart
# and moves its surroundings; the opportunistic findings share the cardiac state)
DROPPABLE = tuple(f.id for f in catalogue() if f.group == "conventional" and f.id != "cardiomegaly")


def drawn_severities(seed: int) -> dict[str, float]:
    """The findings and severities ``hyperct.phantom.generate(seed, None)`` draws (its spec's
    ``severities``), without rendering: the generator's own draw, step by step (tested against it)."""
    from hyperct.phantom import cardiac, sampling
    from hyperct.phantom._rng import stream
    from hyperct.phantom.params import sample_habitus

    hab = sample_habitus(int(seed))
    echo, latent = cardiac.sample_population(stream(int(seed), "cardiac"), hab.sex)
    conv = sampling.conventional(stream(int(seed), "findings"), hab, latent)
    return {**conv, **cardiac.severities(echo, hab.sex)}


def dropped_finding(seed: int, severities: dict) -> str | None:
    """The finding a ``drop_one`` twin of ``seed`` lacks (None when none of its findings can be dropped)."""
    options = [f for f in DROPPABLE if f in severities]
    if not options:
        return None
    return options[int(np.random.default_rng([int(seed), 0xD1]).integers(len(options)))]


def _check_phantom_findings(findings: Any) -> Any:
    if findings is None:
        return None
    ids = catalogue().ids
    names = list(findings) if isinstance(findings, dict | list | tuple) else None
    if names is None:
        raise DatasetError(
            f"phantom findings must be null, a list of ids or a mapping id -> prevalence, got {findings!r}"
        )
    bad = [f for f in names if f not in ids]
    if bad:
        near = difflib.get_close_matches(str(bad[0]), ids, n=1)
        raise DatasetError(
            f"unknown finding id {bad[0]!r} in the phantom findings"
            + (f" (did you mean {near[0]!r}?)" if near else "")
        )
    if isinstance(findings, dict):
        for f, p in findings.items():
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
                raise DatasetError(f"phantom prevalence of {f!r} must be a number in [0, 1], got {p!r}")
        return {f: float(findings[f]) for f in ids if f in findings}
    return [f for f in ids if f in names]


# --- construction from a description ----------------------------------------------------------

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
) -> VolumeDataset:
    """A dataset from its description; errors name ``source`` (the config file) and ``field``."""
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
