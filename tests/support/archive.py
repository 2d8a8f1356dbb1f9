"""Test archive of phantom studies for ``hyperct screen`` (48 x 48 phantoms, 40 slices: fast).

Layout (``build_archive(root)``)::

    archive/site1/p1/   study A: thin series (IM, 2.5 mm), thick series (TH, 5+ mm), a localizer
    archive/site1/p2/   study B: the same three, plus a contrast-enhanced copy of the thin series
                        (SeriesNumber 1: it would win the tie without the non-contrast rule)
    archive/site2/x/y/  study C: thin + localizer, one thin slice cut short (the study fails)
    archive/site2/dup/  a second copy of study A (same UIDs)
    archive/mr/         study D: an MR series (not CT: skipped in the index)
    archive/nifti/e.nii.gz  study E: a NIfTI volume
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.support.cli import run_cli


def series_uids(folder: Path) -> dict[str, str]:
    """File-name prefix (IM, TH, SCOUT, CE) -> SeriesInstanceUID; each prefix holds one series (a file
    cut short, whose header does not reach the UID, is passed over)."""
    found: dict[str, set[str]] = {}
    for f in sorted(folder.glob("*.dcm")):
        prefix = f.name.removesuffix(".dcm").rstrip("0123456789")
        uid = pydicom.dcmread(f, stop_before_pixels=True).get("SeriesInstanceUID")
        if uid is not None:
            found.setdefault(prefix, set()).add(uid)
    assert all(len(uids) == 1 for uids in found.values()), (
        f"several series under one prefix in {folder}: {found}"
    )
    return {prefix: uids.pop() for prefix, uids in found.items()}


def study_uid(folder: Path) -> str:
    return pydicom.dcmread(next(folder.glob("IM*.dcm")), stop_before_pixels=True).StudyInstanceUID


def sample_study(root: Path, seed: int, *extra: str) -> Path:
    """``hyperct sample`` of a normal phantom (48 x 48, 40 slices) into ``root/s<seed>``; returns that folder."""
    out = root / f"s{seed}"
    argv = ["sample", "--out", str(out), "--seed", str(seed), "--matrix", "48", "--slices", "40", *extra]
    rc, _, err = run_cli(argv + ["--findings", "none"])
    assert rc == 0, err
    return out


def build_archive(root: Path) -> Path:
    work = root / "samples"
    arch = root / "archive"
    a = sample_study(work, 1, "--second-series", "--localizer")
    b = sample_study(work, 2, "--second-series", "--localizer")
    c = sample_study(work, 3, "--localizer")
    d = sample_study(work, 4)
    e = sample_study(work, 5, "--format", "nifti")
    shutil.copytree(a / "ct", arch / "site1" / "p1")
    shutil.copytree(b / "ct", arch / "site1" / "p2")
    shutil.copytree(c / "ct", arch / "site2" / "x" / "y")
    shutil.copytree(a / "ct", arch / "site2" / "dup")
    # contrast-enhanced copy of B's thin series, SeriesNumber 1
    ce_uid = generate_uid()
    for f in sorted((arch / "site1" / "p2").glob("IM*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = ce_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesNumber = 1
        ds.ContrastBolusAgent = "IOPAMIDOL"
        ds.SeriesDescription = "Chest CE"
        ds.save_as(arch / "site1" / "p2" / f.name.replace("IM", "CE"))
    # C: one slice cut short
    victim = sorted((arch / "site2" / "x" / "y").glob("IM*.dcm"))[20]
    victim.write_bytes(victim.read_bytes()[:600])
    # D: MR
    (arch / "mr").mkdir(parents=True)
    mr_study = generate_uid()
    for f in sorted((d / "ct").glob("IM*.dcm")):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.StudyInstanceUID = mr_study
        ds.save_as(arch / "mr" / f.name)
    (arch / "nifti").mkdir()
    shutil.copy(e / "ct.nii.gz", arch / "nifti" / "e.nii.gz")
    (arch / "README.txt").write_text("not an image\n")
    return arch
