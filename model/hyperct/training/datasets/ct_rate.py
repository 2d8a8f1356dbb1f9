"""``{type: ct-rate, root: DIR, split: train|valid}``: the CT-RATE release layout with its
multi-abnormality labels and metadata (rescale) CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hyperct.errors import DatasetError
from hyperct.findings import catalogue
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets.base import (
    MISSING,
    N_FINDINGS,
    VolumeDataset,
    parse_label,
    read_csv,
    read_hu_file,
)

CT_RATE_SPLITS = {"train": "train", "valid": "valid", "validation": "valid"}


def _release_csv(root: Path, folder: str, names: tuple[str, ...]) -> Path | None:
    """The first of ``root/folder/NAME``, then ``root/NAME``, that exists (the release's CSVs)."""
    candidates = [root / folder / n for n in names] + [root / n for n in names]
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
        found: dict[str, Path] = {}
        for what, given, folder, names, hint in (
            (
                "labels",
                labels,
                "multi_abnormality_labels",
                (f"{split}_predicted_labels.csv", f"{long}_predicted_labels.csv"),
                "pass labels=<multi_abnormality_labels/..._predicted_labels.csv> (CLI: --labels)",
            ),
            (
                "metadata",
                metadata,
                "metadata",
                (f"{long}_metadata.csv", f"{split}_metadata.csv"),
                "pass metadata=<metadata/..._metadata.csv> (CLI: --metadata): its RescaleSlope/Intercept are needed",
            ),
        ):
            path = Path(given) if given else _release_csv(root, folder, names)
            if path is None:
                raise DatasetError(f"no CT-RATE {what} CSV found for split {split!r}", path=root, hint=hint)
            found[what] = path
        labels_path, meta_path = found["labels"], found["metadata"]
        self.labels_csv, self.metadata_csv = labels_path, meta_path
        self.source = f"CT-RATE {root} split={split} labels={labels_path.name} metadata={meta_path.name}"

        header, rows = read_csv(labels_path)
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
        meta_header, meta_rows = read_csv(meta_path)
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
        return read_hu_file(self.paths[i], rescale=self.rescale[i], source=str(self.paths[i]))
