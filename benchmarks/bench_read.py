"""Benchmark: ``hyperct.io.read_ct`` on a 512x512xN CT series vs. a plain pydicom decode loop.

Writes a synthetic series (int16, RescaleIntercept -1024, shuffled file names, no extension) to a
temporary folder, then times (best of ``--repeat``):

* ``plain_decode_s``: ``[pydicom.dcmread(f).pixel_array for f in files]`` (no sorting, no HU, no checks);
* ``plain_decode_to_hu_s``: the same loop writing float32 HU into a preallocated volume (the least
  any reader returning float32 HU must do);
* ``list_series_s``: the header scan alone;
* ``read_ct_s``: the full reader (scan, checks, decode, per-slice rescale, reorientation, QC);
* ``assess_quality_s``: the QC part of it alone;

and the peak Python/NumPy allocation during one ``read_ct`` relative to the output volume size
(tracemalloc; 1.0 would mean no memory beyond the float32 result). Prints one JSON object.

    python benchmarks/bench_read.py [--slices 300] [--size 512] [--repeat 3] [--transfer-syntax rle]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from hyperct.io import assess_quality, list_series, read_ct

SYNTAXES = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless}


def write_series(folder: Path, n_slices: int, size: int, transfer_syntax: str, seed: int = 0) -> list[Path]:
    """A chest-like series: body ellipse, two lungs, noise; axial, 1 mm slices, shuffled names."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    body = (yy / 0.35) ** 2 + (xx / 0.45) ** 2 <= 1
    lungs = ((yy / 0.25) ** 2 + ((np.abs(xx) - 0.2) / 0.13) ** 2) <= 1
    base = np.where(body, 40.0, -1000.0)
    base[lungs & body] = -850.0
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    names = rng.permutation(n_slices)
    files = []
    for m in range(n_slices):
        hu = base + rng.normal(0.0, 15.0, base.shape)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = CTImageStorage
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Bench^Mark", "B1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 2, int(names[m]) + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-250.0, -250.0, -1.0 * m]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [500.0 / size, 500.0 / size]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.rint(hu + 1024).astype(np.int16).tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        path = folder / f"{int(names[m]):08X}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transfer-syntax", choices=sorted(SYNTAXES), default="explicit")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hyperct_bench_read_"))
    try:
        t0 = time.perf_counter()
        files = write_series(tmp, args.slices, args.size, SYNTAXES[args.transfer_syntax])
        write_s = time.perf_counter() - t0

        def plain() -> None:
            for f in files:
                pydicom.dcmread(f).pixel_array  # noqa: B018 - decoding is the point

        def plain_to_hu() -> None:
            hu = np.empty((len(files), args.size, args.size), dtype=np.float32)
            for k, f in enumerate(files):
                ds = pydicom.dcmread(f)
                np.multiply(ds.pixel_array, np.float32(ds.RescaleSlope), out=hu[k], casting="unsafe")
                hu[k] += np.float32(ds.RescaleIntercept)

        plain()  # warm the page cache and imports
        plain_s = best_of(args.repeat, plain)
        plain_hu_s = best_of(args.repeat, plain_to_hu)
        list_s = best_of(args.repeat, lambda: list_series(tmp))
        read_s = best_of(args.repeat, lambda: read_ct(tmp))

        tracemalloc.start()
        vol = read_ct(tmp)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        qc_s = best_of(args.repeat, lambda: assess_quality(vol))
        result = {
            "benchmark": "bench_read",
            "shape_kji": list(vol.shape),
            "files": len(files),
            "transfer_syntax": args.transfer_syntax,
            "write_s": round(write_s, 3),
            "plain_decode_s": round(plain_s, 3),
            "plain_decode_to_hu_s": round(plain_hu_s, 3),
            "list_series_s": round(list_s, 3),
            "read_ct_s": round(read_s, 3),
            "assess_quality_s": round(qc_s, 3),
            "read_over_plain": round(read_s / plain_s, 2),
            "read_over_plain_to_hu": round(read_s / plain_hu_s, 2),
            "volume_mb": round(vol.hu.nbytes / 2**20, 1),
            "peak_alloc_over_volume": round(peak / vol.hu.nbytes, 2),
            "qc_warnings": [w.code for w in vol.warnings],
            "repeat": args.repeat,
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
            "machine": platform.machine(),
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
