"""Benchmark: ``hyperct screen`` throughput (studies/hour) on an archive of phantom studies.

Builds an archive of ``--studies`` DICOM studies from a few phantoms (each study its own
Study/Series UIDs and patient): a thin axial series in every study, a 5 mm series in every second,
a localizer in every third, a slice cut short in every tenth (the study fails, as a row), plus
``--mr`` MR studies (skipped by the index). Then runs ``hyperct.screening.screen`` in-process with
the given model (default: the embedded demo) and reports:

* ``studies_per_hour``: completed studies (scored + failed) per hour of the scoring phase, and
  ``studies_per_hour_incl_index`` over the whole run (index pass included);
* ``reading``: worker time reading and preprocessing (``read_s``, summed over workers), the time the
  model waited for data (``wait_s``: reading not hidden behind scoring), ``score_s``, and the share
  of reading in read + score;
* run conditions (CPU, threads, load average, device).

With ``--device cuda`` (when a GPU is present) the same is measured on the GPU (bf16 autocast).

    python benchmarks/bench_screen.py [--studies 24] [--matrix 128] [--slices 80] [--workers 1]
        [--batch-size 2] [--device cpu] [--out benchmarks/results/screen_cpu_demo.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import emit_json  # noqa: E402


def build_archive(root: Path, n: int, n_mr: int, matrix: int, slices: int, phantoms: int = 3) -> dict:
    import pydicom
    from pydicom.uid import generate_uid

    from hyperct.phantom import generate, write_dicom_series

    vols = [generate(seed, None, matrix=matrix, n_slices=slices).volume for seed in range(1, phantoms + 1)]
    counts = {"studies": n, "broken": 0, "thick": 0, "localizer": 0, "mr": n_mr}
    for i in range(n + n_mr):
        v = vols[i % len(vols)]
        md = dict(v.metadata)
        md.update(
            StudyInstanceUID=generate_uid(),
            SeriesInstanceUID=generate_uid(),
            FrameOfReferenceUID=generate_uid(),
            PatientID=f"BENCH-{i:05d}",
            AccessionNumber=f"ACC{i:06d}",
        )
        vol = dataclasses.replace(v, metadata=md)
        folder = root / f"site{i % 3}" / f"patient{i:05d}" / "study"
        mr = i >= n
        files = write_dicom_series(
            vol, folder, localizer=(i % 3 == 0) and not mr, second_series=(i % 2 == 0) and not mr, seed=i
        )
        if mr:
            for f in files:
                ds = pydicom.dcmread(f)
                ds.Modality = "MR"
                ds.save_as(f)
            continue
        counts["thick"] += i % 2 == 0
        counts["localizer"] += i % 3 == 0
        if i % 10 == 9:
            victim = sorted(folder.glob("IM*.dcm"))[len(list(folder.glob("IM*.dcm"))) // 2]
            victim.write_bytes(victim.read_bytes()[:600])
            counts["broken"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--mr", type=int, default=2, help="MR studies added (skipped by the index)")
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--slices", type=int, default=80)
    ap.add_argument("--workers", type=int, default=1, help="reader processes (DataLoader workers)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the scoring process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the embedded demo)")
    ap.add_argument("--keep", default=None, help="build the archive here and keep it")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    from hyperct.loading import load_model
    from hyperct.screening import ScreenOptions, Source, screen

    threads = args.threads or max(1, (os.cpu_count() or 1) - max(0, args.workers))
    torch.set_num_threads(threads)
    os.environ.setdefault("HYPERCT_LINK_KEY", "bench")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_screen_"))
    try:
        t0 = time.perf_counter()
        arch = tmp / "archive"
        if arch.exists():
            shutil.rmtree(arch)
        counts = build_archive(arch, args.studies, args.mr, args.matrix, args.slices)
        build_s = time.perf_counter() - t0
        loaded = load_model(args.model, device=args.device)
        opts = ScreenOptions(
            out=tmp / "results",
            workers=args.workers,
            batch_size=args.batch_size,
            quiet=True,
            force=True,
            reindex=True,
        )
        t1 = time.perf_counter()
        outcome = screen(Source(str(arch)), opts, loaded=loaded)
        wall = time.perf_counter() - t1
        st = outcome.stats
        done = outcome.scored_now + outcome.failed_now
        read, score, wait = st["read_s"], st["score_s"], st["wait_s"]
        n_files = sum(1 for _ in arch.rglob("*") if _.is_file())
        result = {
            "benchmark": "bench_screen",
            "model": f"{loaded.name} v{loaded.version}" + (" (demo)" if loaded.is_demo else ""),
            "device": str(loaded.device),
            "archive": {**counts, "files": n_files, "matrix": args.matrix, "slices": args.slices},
            "scored": outcome.scored_now,
            "failed": outcome.failed_now,
            "skipped_in_index": sum(1 for e in outcome.entries if e.status == "skipped"),
            "studies_per_hour": round(done / st["seconds"] * 3600, 1),
            "studies_per_hour_incl_index": round(done / wall * 3600, 1),
            "seconds": {
                "build_archive": round(build_s, 2),
                "index": round(st["index_s"], 2),
                "scoring_phase": round(st["seconds"], 2),
                "total": round(wall, 2),
            },
            "reading": {
                "read_s_in_workers": round(read, 2),
                "score_s": round(score, 2),
                "wait_for_data_s": round(wait, 2),
                "share_of_reading_in_read_plus_score": round(read / (read + score), 3)
                if read + score
                else None,
                "reading_hidden_behind_scoring": round(1 - wait / read, 3) if read else None,
                "per_study_read_s": round(read / max(done, 1), 3),
                "per_study_score_s": round(score / max(outcome.scored_now, 1), 3),
            },
            "settings": {"workers": args.workers, "batch_size": st["batch_size"], "torch_threads": threads},
            "conditions": {
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
        }
        emit_json(result, args.out)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
