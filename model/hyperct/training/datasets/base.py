"""What every dataset is: ``VolumeDataset`` (labels, names, pixels through the preprocessing
cache) and the label parsing and file reading that the file datasets share."""

from __future__ import annotations

import csv
from pathlib import Path

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


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, non-empty rows) of a CSV file; errors name the file."""
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


def read_hu_file(path: Path, *, rescale=None, series_uid=None, source: str) -> np.ndarray:
    """The HU volume of a CT file or DICOM folder; a reader error becomes a ``DatasetError``."""
    from hyperct.io import read_ct

    try:
        vol = read_ct(path, rescale=rescale, series_uid=series_uid)
    except InputError as exc:
        raise DatasetError(f"volume cannot be read: {exc}", path=source) from exc
    return vol.hu


class IndexedPixels(torch.utils.data.Dataset):
    """Items ``(pixel values, index)`` of the volumes ``indices`` of ``data`` (default: all), for
    scoring in batches (the index says where each row of logits belongs)."""

    def __init__(self, data: VolumeDataset, indices: list[int] | None = None):
        self.data = data
        self.indices = list(range(len(data))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = self.indices[i]
        return self.data.pixel_values(idx), torch.tensor(idx)
