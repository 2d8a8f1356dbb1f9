"""Seeded mutation fuzz of the reader (issue 15): DICOM series, NIfTI (.nii, .nii.gz), MHA/MHD, NRRD/NHDR.

Every mutant is read in a worker subprocess (``fuzz_worker``) under a 2 GiB address-space limit and
a per-case timeout. The assertion, for every mutant: either success with the full slice count (the
template's shape; for DICOM, minus only files that by an independent pydicom read now declare
themselves outside the stack: another SeriesInstanceUID, a localizer ImageType, another orientation),
or a typed ``InputError`` that names a mutated file. Never an untyped exception (``MemoryError``
included), never a hang, never a non-finite volume.

Environment: ``HYPERCT_FUZZ_CASES`` (default 300), ``HYPERCT_FUZZ_SEED`` (default 15),
``HYPERCT_FUZZ_TIMEOUT`` (seconds per case, default 60), ``HYPERCT_FUZZ_MEMORY_GIB`` (default 2).
A failure prints the seed and case index; ``HYPERCT_FUZZ_ONLY=INDEX`` reruns one case.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import struct
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.support.dicom import asymmetric_phantom, write_nifti, write_series
from tests.support.dicom_fuzz import ALL_KEYWORDS, save_unvalidated, set_tag
from tests.support.fuzz_worker import Worker

CASES = int(os.environ.get("HYPERCT_FUZZ_CASES", "300"))
SEED = int(os.environ.get("HYPERCT_FUZZ_SEED", "15"))
TIMEOUT_S = float(os.environ.get("HYPERCT_FUZZ_TIMEOUT", "60"))
MEMORY_BYTES = int(float(os.environ.get("HYPERCT_FUZZ_MEMORY_GIB", "2")) * (1 << 30))
ONLY = os.environ.get("HYPERCT_FUZZ_ONLY")
N_SLICES = 20
SHAPE_KJI = (N_SLICES, 16, 16)  # slices, rows, columns of every template

HOSTILE = [
    None,  # delete
    "",
    "NaN",
    "inf",
    "-inf",
    "1e308",
    "-1e308",
    "1e39",
    0,
    -1,
    1,
    8192,
    65535,
    -32768,
    "0\\1\\0\\0\\0\\1",
    "1\\0\\0\\0\\0\\1",
    "nan\\nan",
    "1A",
    "CT",
    "SR",
    "MR",
    "LOCALIZER",
    "1.2.3",
    "1.2.840.10008.1.2.4.50",
]
# (offset, struct format) of NIfTI-1 header fields worth damaging
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "<i"),
    "dim0": (40, "<h"),
    "dim1": (42, "<h"),
    "dim2": (44, "<h"),
    "dim3": (46, "<h"),
    "dim4": (48, "<h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim1": (80, "<f"),
    "pixdim3": (88, "<f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"),
    "srow_x0": (280, "<f"),
    "srow_z3": (324, "<f"),
}
NIFTI_VALUES = [0, -1, 1, 2, 7, 16, 64, 348, 2000, 32767, -32768, 1e30, -1e30, float("nan"), float("inf")]
ITK_EDITS = {
    "DimSize": [
        "2000 2000 2000",
        "16 16 0",
        "-1 16 16",
        "16 16",
        "99999999 1 1",
        "16 16 20 1",
        "1024 1024 1024",
    ],
    "sizes": ["2000 2000 2000", "16 16 0", "-1 16 16", "16 16", "99999999 1 1", "1024 1024 1024"],
    "ElementType": ["MET_DOUBLE", "MET_UCHAR", "MET_JUNK", "MET_FLOAT"],
    "type": ["double", "uchar", "junk", "float"],
    "ElementSpacing": ["nan 1 1", "0 0 0", "inf 1 1", "-1 1 1", "1"],
    "space directions": ["(nan,0,0) (0,1,0) (0,0,1)", "(0,0,0) (0,1,0) (0,0,1)", "(1,0,0) (1,0,0) (0,0,1)"],
    "NDims": ["2", "4", "9", "0"],
    "dimension": ["2", "4", "9", "0"],
    "CompressedData": ["True"],
    "encoding": ["gzip", "bzip2", "ascii", "hex", "junk"],
    "HeaderSize": ["-1", "99999999"],
    "TransformMatrix": ["1 0 0 1 0 0 0 0 1", "nan 0 0 0 1 0 0 0 1", "0 0 0 0 0 0 0 0 0"],
    "data file": [
        "/dev/zero",
        "../outside.raw",
        "fifo.raw",
        "missing.raw",
        "%03d.raw 1 5 1",
        "LIST",
        "/etc/passwd",
    ],
    "ElementDataFile": ["/dev/zero", "../outside.raw", "fifo.raw", "missing.raw", "%03d.raw 1 5 1", "LIST"],
}


@dataclass
class Mutant:
    index: int
    kind: str  # template name
    path: Path  # what is given to read_ct
    touched: set[str] = field(default_factory=set)  # names of the mutated files
    ops: list[str] = field(default_factory=list)
    expected_slices: int = N_SLICES
    allowed_loss: int = 0


# --- templates ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("fuzz_templates")
    ph = asymmetric_phantom(shape=SHAPE_KJI, spacing=(1.5, 0.7, 0.7), seed=21)
    write_series(ph, root / "dicom", order="shuffled", padding=(-2000, None))
    X, Y, Z = np.eye(3)
    (root / "nii").mkdir()
    (root / "niigz").mkdir()
    write_nifti(ph, root / "nii" / "ct.nii", [X, Y, Z])
    write_nifti(ph, root / "niigz" / "ct.nii.gz", [-X, -Y, Z])
    img = sitk.GetImageFromArray(np.rint(ph.hu).astype(np.int16))
    img.SetSpacing((0.7, 0.7, 1.5))
    for name in ("mhd", "mha", "nrrd", "nhdr"):
        (root / name).mkdir()
        sitk.WriteImage(img, str(root / name / f"ct.{name}"))
    return {p.name: p for p in root.iterdir()}


def _target(folder: Path, kind: str) -> Path:
    return (
        folder
        if kind == "dicom"
        else folder / f"ct.{'nii' if kind == 'nii' else 'nii.gz' if kind == 'niigz' else kind}"
    )


# --- DICOM mutations ------------------------------------------------------------------------------


def _mutate_dicom(rng: random.Random, folder: Path, m: Mutant) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    # the first and last slices (by position) are where a loss would go unnoticed: favour them
    by_position = sorted(
        files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        path = rng.choice([by_position[0], by_position[-1], rng.choice(files)])
        op = rng.choice(
            ["tag", "tag", "tag", "flip", "cut", "cut", "append", "long_pixels", "rows", "no_rescale", "fifo"]
        )
        if op == "fifo":
            where = rng.choice([folder / "IM9999", folder / "sub" / "pipe", folder / "zz.dcm"])
            where.parent.mkdir(exist_ok=True)
            if not where.exists():
                os.mkfifo(where)
            m.ops.append(f"fifo {where.relative_to(folder)}")
            continue
        m.touched.add(path.name)
        if op == "tag":
            kw, value = rng.choice(ALL_KEYWORDS), rng.choice(HOSTILE)
            set_tag(path, kw, value)
            m.ops.append(f"{path.name}: {kw} = {value!r}")
        elif op == "no_rescale":
            set_tag(path, "RescaleSlope", None)
            set_tag(path, "RescaleIntercept", None)
            m.ops.append(f"{path.name}: no rescale")
        elif op == "rows":
            targets = files if rng.random() < 0.5 else [path]
            for f in targets:
                set_tag(f, "Rows", 8192)
                set_tag(f, "Columns", 8192)
                m.touched.add(f.name)
            m.ops.append(f"Rows=Columns=8192 in {len(targets)} file(s)")
        elif op == "long_pixels":
            try:
                ds = pydicom.dcmread(path)
                ds.PixelData = ds.PixelData + bytes(rng.choice((2, 32, 512, 4096)))
                save_unvalidated(ds, path)
            except Exception:  # noqa: BLE001
                pass
            m.ops.append(f"{path.name}: longer pixel data")
        else:
            data = bytearray(path.read_bytes())
            if op == "cut":
                pos = rng.choice([0, 0, 100, 132, 400, rng.randrange(max(len(data), 1))])
                del data[pos:]
                m.ops.append(f"{path.name}: cut at {pos}")
            elif op == "append":
                n = rng.choice((1, 2, 64, 4096))
                data += bytes(rng.getrandbits(8) for _ in range(n))
                m.ops.append(f"{path.name}: {n} bytes appended")
            else:
                pos = rng.randrange(max(len(data), 1))
                n = rng.randint(1, 8)
                data[pos : pos + n] = bytes(rng.getrandbits(8) for _ in range(n))
                m.ops.append(f"{path.name}: {n} bytes changed at {pos}")
            path.write_bytes(bytes(data))


def _membership_loss(template: Path, folder: Path, touched: set[str]) -> int:
    """Mutated files that, by an independent pydicom read, now declare themselves outside the stack."""
    lost = 0
    for name in touched:
        ref = pydicom.dcmread(template / name, stop_before_pixels=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(folder / name, stop_before_pixels=True, force=True)
                moved = (
                    str(ds.get("SeriesInstanceUID", "")) != str(ref.SeriesInstanceUID)
                    or any(
                        w in str(ds.get("ImageType", "")).upper() for w in ("LOCALIZER", "SCOUT", "TOPOGRAM")
                    )
                    or str(ds.get("ImageOrientationPatient", "")) != str(ref.ImageOrientationPatient)
                )
        except Exception:  # noqa: BLE001 - unreadable: it must be reported, not lost
            moved = False
        lost += int(moved)
    return lost


# --- NIfTI and ITK mutations ----------------------------------------------------------------------


def _mutate_nifti(rng: random.Random, path: Path, m: Mutant) -> None:
    gz = path.name.endswith(".gz")
    stored = path.read_bytes()
    raw = bytearray(gzip.decompress(stored) if gz else stored)
    ops = ["field", "field", "field", "flip", "cut", "append"] + (
        ["gz_flip", "gz_cut", "gz_append"] if gz else []
    )
    op = rng.choice(ops)
    m.touched.add(path.name)
    if op == "field":
        name = rng.choice(list(NIFTI_FIELDS))
        off, fmt = NIFTI_FIELDS[name]
        value = rng.choice(NIFTI_VALUES)
        if fmt.endswith(("h", "i")):
            value = int(max(-(2**15), min(2**15 - 1, value))) if np.isfinite(value) else 32767
        struct.pack_into(fmt, raw, off, value)
        m.ops.append(f"{name} = {value!r}")
    elif op == "flip":
        pos = rng.randrange(max(len(raw), 1))
        raw[pos] ^= 1 << rng.randrange(8)
        m.ops.append(f"bit flipped at {pos}")
    elif op == "cut":
        pos = rng.choice([0, 100, 348, rng.randrange(max(len(raw), 1))])
        del raw[pos:]
        m.ops.append(f"cut at {pos}")
    elif op == "append":
        raw += bytes(rng.choice((1, 2, 512)))
        m.ops.append("bytes appended")
    if op.startswith("gz_"):
        data = bytearray(stored)
        if op == "gz_flip":
            pos = rng.choice([len(data) - 8, len(data) - 3, rng.randrange(max(len(data), 1))])
            data[pos] ^= 0xFF
        elif op == "gz_cut":
            del data[rng.randrange(max(len(data), 1)) :]
        else:
            data += rng.choice([b"garbage!", gzip.compress(b"more")])
        m.ops.append(op)
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))


def _mutate_itk(rng: random.Random, path: Path, m: Mutant) -> None:
    folder = path.parent
    data = path.read_bytes()
    detached = path.suffix in (".mhd", ".nhdr")
    m.touched.add(path.name)
    op = rng.choice(["edit", "edit", "edit", "cut_data", "flip_data"])
    if op == "edit":
        text = data.decode("latin-1") if detached else None
        head_end = (
            len(data)
            if detached
            else (data.index(b"\n\n") + 1 if path.suffix == ".nrrd" else data.index(b"ElementDataFile"))
        )
        head = (text if detached else data[:head_end].decode("latin-1")).split("\n")
        sep = " = " if path.suffix in (".mhd", ".mha") else ": "
        keys = [k for k in ITK_EDITS if any(line.startswith(k + sep.rstrip()) for line in head)]
        if path.suffix == ".mha":
            keys = [k for k in keys if k != "ElementDataFile"]
        key = rng.choice(keys)
        value = rng.choice(ITK_EDITS[key])
        if value == "fifo.raw":
            os.mkfifo(folder / "fifo.raw")
        if value == "../outside.raw":
            (folder.parent / "outside.raw").write_bytes(bytes(16 * 16 * 20 * 2))
        if value.startswith("%03d"):
            for i in range(1, 6):
                (folder / f"{i:03d}.raw").write_bytes(bytes(100))
        head = [f"{key}{sep}{value}" if line.startswith(key + sep.rstrip()) else line for line in head]
        if value == "LIST":
            head.append(rng.choice(["../outside.raw", "/dev/zero", "ct.raw"]))
        new_head = "\n".join(head).encode("latin-1")
        path.write_bytes(new_head if detached else new_head + data[head_end:])
        m.ops.append(f"{key} = {value}")
        return
    target = folder / "ct.raw" if detached else path
    if not target.exists():
        target = path
    m.touched.add(target.name)
    buf = bytearray(target.read_bytes())
    if op == "cut_data":
        del buf[rng.randrange(len(buf) // 2, len(buf)) :]
    else:
        pos = rng.randrange(max(len(buf), 1))
        buf[pos] ^= 0xFF
    target.write_bytes(bytes(buf))
    m.ops.append(f"{op} in {target.name}")


# --- the worker -----------------------------------------------------------------------------------


def _judge(m: Mutant, reply: dict) -> str | None:
    """None if the outcome is acceptable, else what is wrong."""
    outcome = reply["outcome"]
    if outcome == "typed":
        msg = reply["message"]
        if not any(name in msg for name in m.touched):
            return (
                f"typed error {reply['type']} does not name a mutated file ({sorted(m.touched)}): {msg[:400]}"
            )
        return None
    if outcome != "ok":
        return f"{outcome}: {reply.get('type', '')} {reply.get('message', '')[:300]} {reply.get('traceback', '')[-1200:]}"
    shape = reply["source_shape"]
    if not (reply["finite"] and reply["spacing_ok"] and reply["origin_ok"]):
        return f"success with non-finite values or geometry: {reply}"
    if m.kind == "dicom":
        n = shape[0]
        if not (m.expected_slices - m.allowed_loss <= n <= m.expected_slices):
            return f"success with {n} slices, expected {m.expected_slices} (allowed loss {m.allowed_loss})"
    elif sorted(shape) != sorted(SHAPE_KJI):
        return f"success with shape {shape}, expected {SHAPE_KJI} in some axis order"
    return None


KIND_WEIGHTS = [("dicom", 12), ("niigz", 3), ("nii", 2), ("mhd", 1), ("mha", 1), ("nrrd", 1), ("nhdr", 1)]


def _make(rng: random.Random, index: int, templates: dict[str, Path], work: Path) -> Mutant:
    kind = rng.choices([k for k, _ in KIND_WEIGHTS], weights=[w for _, w in KIND_WEIGHTS])[0]
    folder = work / f"case{index:05d}" / kind
    shutil.copytree(templates[kind], folder)
    m = Mutant(index, kind, _target(folder, kind))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dicom":
            _mutate_dicom(rng, folder, m)
            m.allowed_loss = _membership_loss(templates[kind], folder, m.touched)
        elif kind in ("nii", "niigz"):
            _mutate_nifti(rng, m.path, m)
        else:
            _mutate_itk(rng, m.path, m)
    return m


def test_reader_mutation_fuzz(templates, tmp_path):
    """Every mutant: the full volume, or a typed error naming a mutated file; no hang, crash or memory bomb."""
    rng = random.Random(SEED)
    worker = Worker(memory_bytes=MEMORY_BYTES, timeout_s=TIMEOUT_S)
    failures: list[str] = []
    counts: dict[str, int] = {}
    started = time.monotonic()
    try:
        for index in range(CASES):
            case_rng = random.Random(rng.getrandbits(64))
            if ONLY is not None and index != int(ONLY):
                continue
            m = _make(case_rng, index, templates, tmp_path)
            reply = worker.ask(m.path, min_slices=16)
            counts[reply["outcome"]] = counts.get(reply["outcome"], 0) + 1
            problem = _judge(m, reply)
            if problem:
                failures.append(f"case {index} ({m.kind}; {'; '.join(m.ops)}): {problem}")
            shutil.rmtree(tmp_path / f"case{index:05d}", ignore_errors=True)
    finally:
        worker.stop()
    elapsed = time.monotonic() - started
    print(f"reader fuzz: {CASES} cases, seed {SEED}, {elapsed:.1f} s, outcomes {counts}")
    assert not failures, (
        f"{len(failures)} of {CASES} mutants (seed {SEED}; rerun one with HYPERCT_FUZZ_ONLY=INDEX):\n"
        + "\n".join(failures[:15])
    )
    if ONLY is None:  # the fuzz must exercise both sides of the property
        assert counts.get("ok", 0) > 0 and counts.get("typed", 0) > 0, counts
