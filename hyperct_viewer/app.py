"""``hyperct-viewer``: napari with the HyperCT widgets docked.

    hyperct-viewer                      # empty viewer, drag a DICOM folder / NIfTI in
    hyperct-viewer PATH                 # open a CT and analyse it
    hyperct-viewer --sample             # the bundled synthetic chest CT, analysed with the demo model
    hyperct-viewer --sample --screenshot docs/viewer.png --quit    # for docs and smoke tests
    hyperct-viewer CT --size 1366x768 --screenshot shot.png --quit   # a given window size

On a machine without a display use the headless CLI instead: ``hyperct predict``.
"""

from __future__ import annotations

import argparse
import os
import sys

from hyperct.cli.common import add_model_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hyperct-viewer",
        description="Open napari with the HyperCT Findings and Task Embeddings widgets. "
        "AI output, not a diagnosis; the embedded demo model is trained on synthetic phantoms.",
    )
    p.add_argument("path", nargs="?", help="CT to open: DICOM folder or file, NIfTI, NRRD or MHA")
    p.add_argument("--sample", action="store_true", help="open the bundled synthetic chest CT and analyse it")
    add_model_args(
        p, device_choices=["auto", "cuda", "cpu"], device_help="where the model runs (default: auto)"
    )
    p.add_argument("--no-analyze", action="store_true", help="open the CT without starting the analysis")
    p.add_argument(
        "--select",
        metavar="FINDING_ID",
        help="finding to select after the analysis (default: the most probable)",
    )
    p.add_argument(
        "--all-saliency",
        action="store_true",
        help="also compute every finding's saliency map after the analysis",
    )
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        help="save a screenshot of the window when the analysis (and saliency) is done",
    )
    p.add_argument(
        "--front",
        choices=["findings", "embeddings"],
        default="findings",
        help="which of the two tabbed widgets is in front (default: findings)",
    )
    p.add_argument(
        "--size",
        metavar="WxH",
        type=_size,
        help="window size in pixels, e.g. 1366x768 (default: napari's; under xvfb-run set the screen too)",
    )
    p.add_argument("--quit", action="store_true", help="quit after the screenshot (or after the analysis)")
    return p


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1366x768, got {text!r}") from None
    if not (320 <= w <= 10000 and 240 <= h <= 10000):
        raise argparse.ArgumentTypeError(f"window size {w}x{h} is out of range")
    return w, h


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32")
    ):
        print(
            "hyperct-viewer: no display found. Run it under a desktop session (or `xvfb-run -a hyperct-viewer ...`), "
            "or use the headless CLI: `hyperct sample --out ct && hyperct predict ct --pdf --out reports`.",
            file=sys.stderr,
        )
        return 2
    import napari

    from hyperct_viewer.widgets.embeddings import TaskEmbeddingsWidget
    from hyperct_viewer.widgets.findings import FindingsWidget

    viewer = napari.Viewer(title="HyperCT Viewer")
    if args.size:
        qt_window = viewer.window._qt_window
        qt_window.showNormal()
        qt_window.resize(*args.size)
    findings = FindingsWidget(viewer)
    docks = {"findings": viewer.window.add_dock_widget(findings, name="HyperCT Findings", area="right")}
    embeddings = TaskEmbeddingsWidget(viewer)
    docks["embeddings"] = viewer.window.add_dock_widget(
        embeddings, name="HyperCT Task Embeddings", area="right", tabify=True
    )
    docks[args.front].raise_()  # tabified docks: the one raised last is the visible tab
    findings.device_combo.setCurrentText({"auto": "Auto", "cuda": "CUDA", "cpu": "CPU"}[args.device])
    if args.model or args.backbone:
        findings.set_model_dirs(args.model, args.backbone)

    if args.sample:
        viewer.open_sample("hyperct-viewer", "synthetic_chest_ct")
    elif args.path:
        viewer.open(args.path, plugin="hyperct-viewer")

    state = {"done": False}

    def finish(*_):
        if state["done"]:
            return
        state["done"] = True
        if args.screenshot:
            from qtpy.QtCore import QTimer

            def shoot():
                docks[args.front].raise_()
                viewer.screenshot(args.screenshot, canvas_only=False)
                print(f"screenshot written to {args.screenshot}")
                if args.quit:
                    viewer.close()

            QTimer.singleShot(800, shoot)
        elif args.quit:
            viewer.close()

    def after_analysis(result):
        if args.select:
            findings.select_finding(args.select)
        if args.all_saliency:
            findings.compute_all_saliency()

    if (args.sample or args.path) and not args.no_analyze:
        findings.analysis_finished.connect(after_analysis)
        findings.saliency_shown.connect(finish)
        findings.job_failed.connect(lambda msg: (print(f"hyperct-viewer: {msg}", file=sys.stderr), finish()))
        if findings.analyze() is None:  # nothing opened (the reader said why)
            finish()
    elif args.screenshot or args.quit:
        finish()
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
