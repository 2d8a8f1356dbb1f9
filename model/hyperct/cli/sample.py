"""``hyperct sample``: write a synthetic chest CT phantom (DICOM series or NIfTI) with its ground truth.

Output layout in ``--out DIR``::

    DIR/ct/            the DICOM series (one file per slice)      [--format dicom, default]
    DIR/ct.nii.gz      the CT in HU                                [--format nifti]
    DIR/masks/<finding>.nii.gz   one mask per present finding (same grid)
    DIR/labels.json    seed, labels (1/0/-1 per finding), severities, cardiac state, spec

Exit codes: 0 written; 2 usage error (unknown finding, bad severity, output exists without --force).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperct.cli.common import EXIT_OK, UsageError, check_finding_ids
from hyperct.errors import OutputExistsError

USAGE_ERRORS = (OutputExistsError,)  # an existing output without --force: the user's to decide


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sample",
        help="write a synthetic chest CT phantom (DICOM or NIfTI) with finding masks and labels",
        description="Write a procedural non-contrast chest CT phantom with known findings: the series, "
        "one NIfTI mask per finding present, and labels.json. Synthetic data, not a patient.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--format", choices=("dicom", "nifti"), default="dicom", help="CT format (default: dicom)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default: 0)")
    p.add_argument(
        "--findings",
        default="random",
        help="'random' (drawn with realistic prevalence, default), 'none' (normal CT), or a comma list "
        "of finding ids, each optionally with a severity: e.g. 'lung_nodule:0.8,emphysema'",
    )
    p.add_argument("--matrix", type=int, default=512, help="in-plane matrix size (default: 512)")
    p.add_argument(
        "--slices", type=int, default=None, help="number of slices (default: from a clinical thickness)"
    )
    p.add_argument("--orientation", choices=("axial", "coronal", "sagittal"), default="axial")
    p.add_argument("--slice-order", choices=("ascending", "descending", "shuffled"), default="ascending")
    p.add_argument("--transfer-syntax", choices=("explicit", "rle", "jpeg2000", "jpegls"), default="explicit")
    p.add_argument("--localizer", action="store_true", help="add a scout (localizer) image")
    p.add_argument("--second-series", action="store_true", help="add a 5 mm thick-slice series")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    return p


def parse_findings(text: str):
    """'random' -> None, 'none' -> {}, 'a,b:0.5' -> {'a': None, 'b': 0.5} (None: severity from the seed)."""
    t = text.strip()
    if t.lower() in ("", "random"):
        return None
    if t.lower() in ("none", "normal"):
        return {}
    out: dict[str, float | None] = {}
    for item in t.split(","):
        item = item.strip()
        if not item:
            continue
        if ":" in item:
            fid, sev = item.split(":", 1)
            try:
                out[fid.strip()] = float(sev)
            except ValueError:
                raise ValueError(f"severity of {fid.strip()!r} is not a number: {sev!r}") from None
        else:
            out[item] = None
    return out


def run(args) -> int:
    try:
        requested = parse_findings(args.findings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if requested:
        check_finding_ids(requested)
    out: Path = args.out
    ct_path = out / ("ct" if args.format == "dicom" else "ct.nii.gz")
    if (ct_path.exists() or (out / "labels.json").exists()) and not args.force:
        raise OutputExistsError(
            f"{ct_path.name} or labels.json already exists", path=out, hint="use --force to overwrite"
        )

    from hyperct.jsonable import jsonable
    from hyperct.phantom import generate, write_dicom_series, write_nifti
    from hyperct.phantom._rng import stream

    if requested is not None:
        # severities left open are drawn from the seed, like generate(seed, [ids])
        requested = {
            k: (
                v
                if v is not None
                else round(0.3 + 0.7 * float(stream(args.seed, "severity/" + k).random()), 4)
            )
            for k, v in requested.items()
        }
    try:
        ph = generate(args.seed, requested, matrix=args.matrix, n_slices=args.slices)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if ct_path.exists() and args.format == "dicom":
        for f in ct_path.glob("*.dcm"):
            f.unlink()
    written: list[Path] = []
    if args.format == "dicom":
        files = write_dicom_series(
            ph.volume,
            ct_path,
            orientation=args.orientation,
            slice_order=args.slice_order,
            transfer_syntax=args.transfer_syntax,
            localizer=args.localizer,
            second_series=args.second_series,
            seed=args.seed,
        )
        print(f"wrote {len(files)} DICOM files ({args.transfer_syntax}, {args.orientation}) to {ct_path}")
        written.append(ct_path)
    else:
        write_nifti(ph.volume, ct_path)
        print(f"wrote {ct_path}")
        written.append(ct_path)
    mask_dir = out / "masks"
    if mask_dir.exists():
        for f in mask_dir.glob("*.nii.gz"):
            f.unlink()
    mask_files = {}
    for fid, m in ph.masks.items():
        p = write_nifti(m, mask_dir / f"{fid}.nii.gz", like=ph.volume)
        mask_files[fid] = str(p.relative_to(out))
        print(f"wrote {p}")
    labels = {
        "generator": "hyperct.phantom",
        "seed": ph.seed,
        "synthetic": True,
        "format": args.format,
        "ct": str(ct_path.relative_to(out)),
        "shape_kji": list(ph.volume.shape),
        "spacing_mm_kji": list(ph.volume.spacing),
        "origin_lps_mm": list(ph.volume.origin),
        "labels": ph.label_dict,
        "severities": ph.severities,
        "masks": mask_files,
        "cardiac": ph.cardiac,
        "findings_info": ph.info,
        "spec": ph.spec,
    }
    lp = out / "labels.json"
    lp.write_text(json.dumps(jsonable(labels), indent=2))
    print(f"wrote {lp}")
    z, y, x = ph.volume.shape
    sz, sy, sx = ph.volume.spacing
    present = ", ".join(f"{k} ({v:.2f})" for k, v in ph.severities.items()) or "none (normal CT)"
    print(f"phantom seed {ph.seed}: {x}x{y}x{z} voxels, {sx:.2f}x{sy:.2f}x{sz:.2f} mm; findings: {present}")
    return EXIT_OK
