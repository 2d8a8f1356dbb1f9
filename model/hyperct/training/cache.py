"""Preprocessing cache: the 165 x 144 x 144 model-grid HU volume of each scan, stored once as ``.npy``.

Epochs then read one small array instead of re-reading DICOM/NIfTI and resampling. Entries are
keyed by sha256 of (source identity, preprocessing id, storage dtype):

* files: the resolved path, size and modification time (for a DICOM folder: of every file in
  it) and the rescale (slope, intercept) applied on reading, so an edited or replaced file is
  read again;
* phantoms: the generator version, seed and generator parameters.

Storage (``np.save`` / ``np.load(allow_pickle=False)``; never pickle):

* ``uint8`` (default, 3.4 MB per scan): HU clipped to the model window [-1000, 1000] and
  quantised to 256 levels, step 2000 / 255 = 7.84 HU (max error 3.9 HU). The model sees
  HU / 2000 on a [0, 1] scale, so this is a 0.39 % intensity step: below CT noise (typically
  10-30 HU in soft tissue), but it does merge e.g. fat at -100 and -95 HU.
* ``float16`` (6.8 MB per scan): clipped HU, resolution 0.5 HU near +-1000 and finer closer to 0.

``compress=True`` writes new entries as zlib (level 1) compressed ``.npy`` bytes (``KEY.npy.z``):
a uint8 phantom volume shrinks from 3.4 MB to about 1.4 MB for ~0.04 s per write and ~0.01 s per
read (whole volume; no memory map). Reads accept both forms whatever the flag, and the key does
not depend on it, so compressed and plain caches can share a folder. ``delete(key)`` removes an
entry and its extra arrays (stage-1 pretraining on fresh phantoms drops each block after use).

Writes are atomic (temporary file + rename), so several processes (DataLoader workers, torchrun
ranks) may fill the same cache. Each entry has a small ``.json`` sidecar with the source
description (and, for phantoms, the labels).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hyperct import __version__
from hyperct.atomic import replace_file
from hyperct.preprocess import HU_MAX, HU_MIN, IMAGE_SIZE, N_SLICES

# Bump the suffix when hyperct.preprocess.resample_hu changes its output.
PREPROCESS_ID = f"resample_hu-v1:{N_SLICES}x{IMAGE_SIZE}x{IMAGE_SIZE}:hyperct-{__version__}"
MODEL_GRID = (N_SLICES, IMAGE_SIZE, IMAGE_SIZE)
UINT8_STEP_HU = (HU_MAX - HU_MIN) / 255.0  # 7.843 HU
DTYPES = ("uint8", "float16")


def encode(hu: np.ndarray, dtype: str) -> np.ndarray:
    """Model-grid HU -> stored array (window-clipped)."""
    clipped = np.clip(np.asarray(hu, dtype=np.float32), HU_MIN, HU_MAX)
    if dtype == "uint8":
        return np.rint((clipped - HU_MIN) / UINT8_STEP_HU).astype(np.uint8)
    if dtype == "float16":
        return clipped.astype(np.float16)
    raise ValueError(f"unknown cache dtype {dtype!r}; use one of {DTYPES}")


def decode(stored: np.ndarray) -> np.ndarray:
    """Stored array -> float32 HU in [-1000, 1000]."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) * np.float32(UINT8_STEP_HU) + np.float32(HU_MIN)
    return stored.astype(np.float32)


def file_identity(path: str | Path) -> dict:
    """Resolved path + size + mtime of a file, or of every file under a folder (sorted)."""
    p = Path(path).resolve()
    if p.is_dir():
        h = hashlib.sha256()
        n = 0
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                fp = Path(root) / name
                try:
                    st = fp.stat()
                except OSError:
                    continue
                h.update(f"{fp.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                n += 1
        return {"path": str(p), "files": n, "listing_sha256": h.hexdigest()}
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(identity: dict, dtype: str) -> str:
    blob = json.dumps({"source": identity, "preprocess": PREPROCESS_ID, "dtype": dtype}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class PreprocessCache:
    """Model-grid HU volumes on disk (``directory``) or in memory (``directory=None``)."""

    def __init__(self, directory: str | Path | None, dtype: str = "uint8", *, compress: bool = False):
        if dtype not in DTYPES:
            raise ValueError(f"unknown cache dtype {dtype!r}; use one of {DTYPES}")
        self.directory = Path(directory) if directory is not None else None
        self.dtype = dtype
        self.compress = bool(compress)
        self._memory: dict[str, tuple[np.ndarray, dict]] = {}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def describe(self) -> dict:
        return {
            "directory": str(self.directory) if self.directory else None,
            "dtype": self.dtype,
            "compress": self.compress,
            "preprocess": PREPROCESS_ID,
        }

    def key(self, identity: dict) -> str:
        return cache_key(identity, self.dtype)

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.directory is not None
        sub = self.directory / key[:2]
        return sub / f"{key}.npy", sub / f"{key}.json"

    def _load_volume(self, key: str, mmap: bool = False) -> np.ndarray:
        """The stored array of ``key`` from ``KEY.npy`` or ``KEY.npy.z`` (OSError/ValueError if neither)."""
        npy = self._paths(key)[0]
        if npy.is_file():
            return np.load(npy, allow_pickle=False, mmap_mode="r" if mmap else None)
        try:
            blob = zlib.decompress(_zpath(npy).read_bytes())
        except zlib.error as exc:
            raise ValueError(f"corrupt compressed cache entry ({exc})") from exc
        return np.load(io.BytesIO(blob), allow_pickle=False)

    def contains(self, key: str) -> bool:
        if self.directory is None:
            return key in self._memory
        npy, meta = self._paths(key)
        return (npy.is_file() or _zpath(npy).is_file()) and meta.is_file()

    def delete(self, key: str) -> None:
        """Remove entry ``key`` (volume, sidecar and extra arrays); absent entries are fine."""
        if self.directory is None:
            for k in [k for k in self._memory if k == key or k.startswith(f"{key}.")]:
                del self._memory[k]
            return
        npy, meta = self._paths(key)
        for path in [meta, npy, _zpath(npy), *npy.parent.glob(f"{key}.*.npy")]:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def get(self, key: str) -> tuple[np.ndarray, dict] | None:
        """(float32 HU on the model grid, sidecar dict) or None when absent/unreadable."""
        if self.directory is None:
            hit = self._memory.get(key)
            return (decode(hit[0]), dict(hit[1])) if hit else None
        meta = self._paths(key)[1]
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            stored = self._load_volume(key)
        except (OSError, ValueError):
            return None
        if stored.shape != MODEL_GRID:
            return None
        return decode(stored), info

    def get_info(self, key: str) -> dict | None:
        if self.directory is None:
            hit = self._memory.get(key)
            return dict(hit[1]) if hit else None
        try:
            return json.loads(self._paths(key)[1].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put_array(self, key: str, name: str, array: np.ndarray) -> None:
        """Store an extra array beside entry ``key`` (e.g. token labels for backbone pretraining)."""
        if self.directory is None:
            self._memory[f"{key}.{name}"] = (np.asarray(array), {})
            return
        path = self._paths(key)[0].with_name(f"{key}.{name}.npy")
        replace_file(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False), fsync=False)

    def get_array(self, key: str, name: str, mmap: bool = False) -> np.ndarray | None:
        if self.directory is None:
            hit = self._memory.get(f"{key}.{name}")
            return None if hit is None else hit[0]
        path = self._paths(key)[0].with_name(f"{key}.{name}.npy")
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (OSError, ValueError):
            return None

    def stored(self, key: str, mmap: bool = True) -> np.ndarray | None:
        """The stored (encoded) model-grid array, memory-mapped (plain entries): cheap access to a few slices."""
        if self.directory is None:
            hit = self._memory.get(key)
            return None if hit is None else hit[0]
        try:
            return self._load_volume(key, mmap=mmap)
        except (OSError, ValueError):
            return None

    def put(self, key: str, hu: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """Store ``hu``; returns what a later ``get`` gives (the decoded stored array), so the
        first epoch sees exactly what the cached epochs see."""
        if tuple(hu.shape) != MODEL_GRID:
            raise ValueError(f"cache entries are {MODEL_GRID} model-grid volumes, got {tuple(hu.shape)}")
        stored = encode(hu, self.dtype)
        info = dict(info, preprocess=PREPROCESS_ID, dtype=self.dtype)
        if self.directory is None:
            self._memory[key] = (stored, info)
            return decode(stored)
        npy, meta = self._paths(key)
        if self.compress:
            buf = io.BytesIO()
            np.save(buf, stored, allow_pickle=False)
            blob = zlib.compress(buf.getbuffer(), 1)
            replace_file(_zpath(npy), lambda f: f.write(blob), fsync=False)
        else:
            replace_file(npy, lambda f: np.save(f, stored, allow_pickle=False), fsync=False)
        text = json.dumps(info, indent=1, default=str).encode("utf-8")
        replace_file(meta, lambda f: f.write(text), fsync=False)  # sidecar last: it marks the entry complete
        return decode(stored)


def _zpath(npy: Path) -> Path:
    return npy.with_name(npy.name + ".z")
