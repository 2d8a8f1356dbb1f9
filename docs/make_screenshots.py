"""Retake the docs/ screenshots that show the default saliency overlay.

Each viewer shot is one ``hyperct-viewer ... --screenshot PNG --quit`` under Xvfb (the window, dock
included: napari's ``viewer.screenshot(canvas_only=False)``); the overlay is the default method
(``hyperct.saliency.DEFAULT_METHOD``) for the finding the viewer selects.

* ``viewer.png``: the bundled sample (``--sample``), 25 findings scored, the most probable selected;
  1600x1000.
* ``saliency_effusion.png``: ``hyperct sample --seed 4 --findings pleural_effusion:0.8`` (a right
  pleural effusion), pleural effusion selected; 1600x1000.
* ``viewer_1366x768.png``, ``viewer_1920x1080.png``: ``hyperct sample`` (seed 0) at those window
  sizes, the most probable finding selected.
* ``report_page1.png``: page 1 of the PDF of ``hyperct predict --pdf --saliency`` on ``hyperct sample``
  (seed 0), rendered by pdftoppm at 110 dpi (the key images are on page 2; ``--keep DIR`` keeps the
  PDF).

Needs xvfb-run (and pdftoppm for the report). Each viewer launch takes a minute or two on a busy
CPU; they run one after another.

    python docs/make_screenshots.py                  # all of them
    python docs/make_screenshots.py viewer effusion  # some of them
    python docs/make_screenshots.py --out /tmp/shots # elsewhere (to compare before replacing)
    python docs/make_screenshots.py report --keep /tmp/work   # keep the phantoms and the PDF
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREEN = "-screen 0 1920x1080x24"

# name -> (file, phantom: None for the viewer's bundled sample, else `hyperct sample` arguments,
#          window size, extra hyperct-viewer arguments)
SHOTS = {
    "viewer": ("viewer.png", None, "1600x1000", []),
    "effusion": (
        "saliency_effusion.png",
        ["--seed", "4", "--findings", "pleural_effusion:0.8"],
        "1600x1000",
        ["--select", "pleural_effusion"],
    ),
    "1366": ("viewer_1366x768.png", [], "1366x768", []),
    "1920": ("viewer_1920x1080.png", [], "1920x1080", []),
}
ALL = [*SHOTS, "report"]


def _run(cmd: list[str], timeout: float) -> None:
    print("+", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=timeout)
    print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)


def _phantom(args: list[str], work: Path, cache: dict) -> Path:
    key = tuple(args)
    if key not in cache:
        out = work / f"ct{len(cache)}"
        _run(["hyperct", "sample", "--force", "--out", str(out), *args], timeout=600)
        cache[key] = out
    return cache[key]


def _report(ct: Path, out: Path, png: Path) -> None:
    """Page 1 of the PDF report of ``ct`` (shareable mode names it ``scan-<hash>.hyperct.pdf``)."""
    _run(
        ["hyperct", "predict", str(ct), "--pdf", "--saliency", "--overwrite", "--out", str(out)], timeout=1200
    )
    pdfs = sorted(out.glob("*.hyperct.pdf"))
    if len(pdfs) != 1:
        raise SystemExit(
            f"expected one PDF report in {out}, found {len(pdfs)}: see hyperct predict's output above"
        )
    page1 = ["pdftoppm", "-r", "110", "-png", "-f", "1", "-l", "1", "-singlefile"]
    _run([*page1, str(pdfs[0]), str(png.with_suffix(""))], timeout=60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("which", nargs="*", help=f"shots to take: {', '.join(ALL)} (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default: docs/)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per viewer launch")
    p.add_argument(
        "--keep", type=Path, help="keep the phantoms and the report here (default: a temporary folder)"
    )
    args = p.parse_args(argv)
    which = args.which or ALL
    unknown = [w for w in which if w not in ALL]
    if unknown:
        p.error(f"unknown shot {unknown[0]!r}: choose from {', '.join(ALL)}")
    for tool in ["xvfb-run", "hyperct-viewer", "hyperct"] + (["pdftoppm"] if "report" in which else []):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install it (xvfb, poppler-utils) or activate the venv", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hyperct-shots-") as tmp:
        work, cache = args.keep or Path(tmp), {}
        work.mkdir(parents=True, exist_ok=True)
        for name in which:
            if name == "report":
                _report(_phantom([], work, cache), work / "report", args.out / "report_page1.png")
                continue
            file, phantom, size, extra = SHOTS[name]
            source = ["--sample"] if phantom is None else [str(_phantom(phantom, work, cache))]
            png = args.out / file
            _run(
                ["xvfb-run", "-a", "-s", SCREEN, "hyperct-viewer", *source, "--size", size, *extra]
                + ["--screenshot", str(png), "--quit"],
                timeout=args.timeout,
            )
            if not png.is_file():
                print(f"no screenshot was written for {name}: see the viewer's output above", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
