"""Benchmark: seconds to generate one synthetic chest CT phantom (``hyperct.phantom.generate``).

Prints JSON. Single-threaded (BLAS threads pinned to 1) so the figure is "per core": thousands of
phantoms for training are made by running one generator per core. Random-mode phantoms (findings
drawn with realistic prevalence, as for training), timed after one warm-up call.

    python benchmarks/bench_phantom.py [--n 5] [--n-large 2]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def _time(seeds, **kw):
    from hyperct.phantom import generate

    wall, cpu, shapes, nfind = [], [], [], []
    for s in seeds:
        t0, c0 = time.perf_counter(), time.process_time()
        ph = generate(s, None, **kw)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        shapes.append(list(ph.volume.shape))
        nfind.append(len(ph.severities))
    return {
        "shape_kji": shapes[0] if len({tuple(x) for x in shapes}) == 1 else shapes,
        "n": len(seeds),
        "wall_s_mean": round(float(np.mean(wall)), 3),
        "wall_s_min": round(float(np.min(wall)), 3),
        "cpu_s_mean": round(float(np.mean(cpu)), 3),
        "cpu_s_min": round(float(np.min(cpu)), 3),
        "findings_per_phantom": round(float(np.mean(nfind)), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5, help="phantoms at 256x256x160")
    ap.add_argument("--n-large", type=int, default=2, help="phantoms at 512x512x250")
    args = ap.parse_args()
    from hyperct.phantom import generate

    generate(999, None, matrix=256, n_slices=160)  # warm-up (imports, caches)
    out = {
        "benchmark": "hyperct.phantom.generate",
        "threads": 1,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores_visible": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        },
        "256x256x160": _time(range(100, 100 + args.n), matrix=256, n_slices=160),
    }
    if args.n_large > 0:
        out["512x512x250"] = _time(range(200, 200 + args.n_large), matrix=512, n_slices=250)
    out["note"] = (
        "cpu_s is process CPU time (what one core spends); wall_s depends on machine load "
        "(other processes share the cores)"
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
