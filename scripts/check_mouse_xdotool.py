#!/usr/bin/env python
"""Drive the HyperCT viewer with real X input events (xdotool on Xvfb) and check window/level.

    python scripts/check_mouse_xdotool.py [--out DIR] [--analyze] [--display 57]

What it does, as a user would:

1. starts Xvfb on a free display, then the viewer exactly as ``hyperct-viewer --sample --no-analyze
   --size 1600x1000`` builds it (``hyperct_viewer.app.main``), with one addition: a QTimer that writes
   the CT layer's contrast limits, the camera and the keyboard focus to a JSON file every 0.25 s;
2. finds the window (``xdotool search --name``), and with xdotool: a right click without drag on the
   image, a right drag on the image, Shift+M / Shift+B / Shift+L on the canvas, a left drag (napari's
   pan), a right drag on the canvas outside the image, a right drag on the dock (not the canvas), and
   Shift+M after the focus moved to the dock;
3. reads the state after each action, takes X screenshots (``xwd`` + ImageMagick ``convert``) before
   and after the right drag, and prints a JSON verdict: the contrast limits and camera before and
   after each action, what was expected, and whether it happened. Exit status 0 when every check
   passed, 1 when one failed, 2 when a tool is missing or the viewer did not start.

Needs: Xvfb and xdotool (``apt-get install -y xvfb xdotool``); x11-apps and imagemagick for the
screenshots (skipped without them). The child process (``--child``) is the viewer; it is started by
this script, not by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = (1600, 1000)
TICK_MS = 250  # how often the viewer writes its state


# ---------------------------------------------------------------------------------------------- child
def child(state_path: str) -> int:
    """The viewer, as ``hyperct-viewer --sample --no-analyze --size 1600x1000`` builds it, plus a state
    writer. Runs under the display the parent started."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    import hyperct_viewer.layers as hl
    import hyperct_viewer.widgets.findings as fw

    # count what reaches the window/level drag callback (the real one runs unchanged)
    seen = {"drag_presses": [], "drag_moves": 0}
    original_drag = fw.window_level_drag

    def counting_drag(layer, event):
        seen["drag_presses"].append(getattr(event, "button", None))
        gen = original_drag(layer, event)
        try:
            value = next(gen)
        except StopIteration:
            return
        while True:
            yield value
            if event.type == "mouse_move":
                seen["drag_moves"] += 1
            try:
                value = gen.send(None)
            except StopIteration:
                return

    fw.window_level_drag = counting_drag

    errors: list[str] = []
    previous_hook = sys.excepthook

    def hook(kind, value, tb):
        errors.append(f"{kind.__name__}: {value}")
        previous_hook(kind, value, tb)

    sys.excepthook = hook
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(
        lambda n: (
            errors.append(f"{n.severity}: {n.message}") if str(n.severity) in ("error", "warning") else None
        )
    )

    def rect(widget) -> list[int] | None:
        if widget is None or not widget.isVisible():
            return None
        p = widget.mapToGlobal(widget.rect().topLeft())
        return [p.x(), p.y(), widget.width(), widget.height()]

    timers = []
    seq = {"n": 0}
    last = {"changed": None}

    def write_state() -> None:
        viewer = napari.current_viewer()
        if viewer is None:
            return
        findings = next((w for w in QApplication.allWidgets() if isinstance(w, fw.FindingsWidget)), None)
        ct = findings.ct_layer if findings is not None else None
        qt_viewer = viewer.window._qt_viewer
        canvas = qt_viewer.canvas
        image_box = None
        origin = rect(canvas.native)
        if ct is not None and origin is not None and viewer.dims.ndisplay == 2:
            # world -> screen: (world - camera centre) * zoom + half the canvas, on the displayed axes
            (y0, x0), (y1, x1) = (ct.extent.world[i][list(viewer.dims.displayed)] for i in (0, 1))
            cy, cx = viewer.camera.center[-2:]
            z = viewer.camera.zoom
            left, top = origin[0] + (x0 - cx) * z + origin[2] / 2, origin[1] + (y0 - cy) * z + origin[3] / 2
            image_box = [float(left), float(top), float((x1 - x0) * z), float((y1 - y0) * z)]
        focus = QApplication.focusWidget()
        seq["n"] += 1
        state = {
            "seq": seq["n"],
            "time": time.time(),
            "ct_layer": None if ct is None else ct.name,
            "contrast_limits": None if ct is None else [float(v) for v in ct.contrast_limits],
            "active_layer": None
            if viewer.layers.selection.active is None
            else viewer.layers.selection.active.name,
            "layers": [layer.name for layer in viewer.layers],
            "camera_zoom": float(viewer.camera.zoom),
            "camera_center": [float(v) for v in viewer.camera.center],
            "ndisplay": viewer.dims.ndisplay,
            "busy": None if findings is None else bool(findings.jobs.busy),
            "scored": None if findings is None else findings.result is not None,
            "focus": None if focus is None else f"{type(focus).__name__}:{focus.objectName()}",
            "canvas": rect(canvas.native),
            "image": image_box,
            "window": rect(viewer.window._qt_window),
            "layer_list": rect(qt_viewer.layers),
            "wl_hu_per_pixel": hl.WL_HU_PER_PIXEL,
            "window_keys": dict(fw.WINDOW_KEYS),
            "presets": {p: [float(v) for v in hl.window_limits(p)] for p in fw.WINDOW_KEYS},
            "drag_presses": list(seen["drag_presses"]),
            "drag_moves": seen["drag_moves"],
            "errors": list(errors),
        }
        changed = {
            k: state[k] for k in ("contrast_limits", "camera_zoom", "camera_center", "focus", "errors")
        }
        if changed != last["changed"]:  # the history, one line per change
            last["changed"] = changed
            with open(state_path + "l", "a") as f:
                f.write(json.dumps({"seq": state["seq"], "time": state["time"], **changed}) + "\n")
        tmp = state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, state_path)

    original_run = napari.run

    def run(*args, **kwargs):
        timer = QTimer()
        timer.timeout.connect(write_state)
        timer.start(TICK_MS)
        timers.append(timer)
        return original_run(*args, **kwargs)

    napari.run = run
    from hyperct_viewer import app

    argv = ["--sample", "--size", f"{SIZE[0]}x{SIZE[1]}"]
    if os.environ.get("HYPERCT_CHECK_ANALYZE") != "1":
        argv.append("--no-analyze")
    return app.main(argv)


# --------------------------------------------------------------------------------------------- parent
class Failed(RuntimeError):
    pass


def free_display(start: int) -> int:
    for n in range(start, start + 100):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise Failed(f"no free X display between :{start} and :{start + 99}")


class Session:
    def __init__(self, display: int, state_path: Path, log_path: Path):
        self.env = dict(os.environ, DISPLAY=f":{display}")
        self.state_path = state_path
        self.log_path = log_path

    def xdo(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env=self.env, check=True, capture_output=True, timeout=30)

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def settle(self, ticks: int = 3, timeout: float = 20.0) -> dict:
        """The state once the viewer wrote it ``ticks`` more times (it processed the queued X events)."""
        start = self.state().get("seq", 0)
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.state()
            if s.get("seq", 0) >= start + ticks:
                return s
            time.sleep(0.05)
        raise Failed(f"the viewer stopped writing its state ({self.state_path}); its log: {self.log_path}")

    def screenshot(self, path: Path) -> Path | None:
        if not (shutil.which("xwd") and shutil.which("convert")):
            return None
        xwd = path.with_suffix(".xwd")
        subprocess.run(["xwd", "-root", "-silent", "-out", str(xwd)], env=self.env, check=True, timeout=30)
        subprocess.run(["convert", f"xwd:{xwd}", str(path)], check=True, timeout=60)
        xwd.unlink()
        return path

    def drag(self, button: int, x: int, y: int, dx: int, dy: int, steps: int = 5) -> None:
        self.xdo("mousemove", "--sync", str(x), str(y))
        time.sleep(0.2)
        self.xdo("mousedown", str(button))
        time.sleep(0.1)
        for i in range(1, steps + 1):
            self.xdo("mousemove", "--sync", str(x + dx * i // steps), str(y + dy * i // steps))
            time.sleep(0.05)
        self.xdo("mouseup", str(button))

    def click(self, button: int, x: int, y: int) -> None:
        self.xdo("mousemove", "--sync", str(x), str(y))
        time.sleep(0.2)
        self.xdo("click", str(button))

    def key(self, keys: str, x: int | None = None, y: int | None = None) -> None:
        if x is not None:
            self.xdo("mousemove", "--sync", str(x), str(y))
        time.sleep(0.1)
        self.xdo("key", keys)


def close(a, b, tol=0.5) -> bool:
    return (
        a is not None and b is not None and len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))
    )


def region_mean(png: Path | None, box) -> float | None:
    """Mean grey level of a screen rectangle in a screenshot (to see the change on screen, not only in
    the layer)."""
    if png is None or box is None:
        return None
    import imageio.v3 as iio

    x, y, w, h = (int(round(v)) for v in box)
    return round(float(iio.imread(png)[y : y + h, x : x + w, :3].mean()), 2)


def side_by_side(
    before: Path | None, after: Path | None, box, path: Path, captions, scale=0.5
) -> Path | None:
    """The canvas of the two screenshots side by side, half size, each with a caption."""
    if before is None or after is None:
        return None
    from PIL import Image, ImageDraw

    x, y, w, h = box
    tiles = [Image.open(p).convert("RGB").crop((x, y, x + w, y + h)) for p in (before, after)]
    tw, th = int(w * scale), int(h * scale)
    pad, cap = 8, 18
    sheet = Image.new("RGB", (2 * tw + 3 * pad, th + cap + 2 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, text) in enumerate(zip(tiles, captions)):
        left = pad + i * (tw + pad)
        sheet.paste(tile.resize((tw, th), Image.LANCZOS), (left, pad + cap))
        draw.text((left, pad), text, fill="black")
    sheet.save(path)
    return path


def scenario(s: Session, out: Path) -> dict:
    checks: list[dict] = []

    def check(name, action, before, after, expect, ok, **extra):
        checks.append(
            {
                "name": name,
                "action": action,
                "limits_before": before.get("contrast_limits"),
                "limits_after": after.get("contrast_limits"),
                "zoom_before": round(before.get("camera_zoom", 0.0), 4),
                "zoom_after": round(after.get("camera_zoom", 0.0), 4),
                "center_before": [round(v, 2) for v in before.get("camera_center", [])],
                "center_after": [round(v, 2) for v in after.get("camera_center", [])],
                "focus_after": after.get("focus"),
                "new_drag_presses": after.get("drag_presses", [])[len(before.get("drag_presses", [])) :],
                "new_errors": after.get("errors", [])[len(before.get("errors", [])) :],
                "expect": expect,
                "ok": bool(ok) and not after.get("errors", [])[len(before.get("errors", [])) :],
                **extra,
            }
        )

    st = s.settle()
    canvas, image = st["canvas"], st["image"]
    cx, cy = int(image[0] + image[2] / 2), int(image[1] + image[3] / 2)
    k = st["wl_hu_per_pixel"]
    presets = st["presets"]
    xkeys = {p: key.lower().replace("-", "+") for p, key in st["window_keys"].items()}  # Shift-L -> shift+l
    shots = {"before": s.screenshot(out / "before_right_drag.png")}

    # 1. right click, no drag, on the image
    b = s.settle(1)
    s.click(3, cx, cy)
    a = s.settle()
    check(
        "right_click_no_drag",
        f"xdotool click 3 at ({cx},{cy})",
        b,
        a,
        "contrast limits and zoom unchanged",
        close(a["contrast_limits"], b["contrast_limits"])
        and close([a["camera_zoom"]], [b["camera_zoom"]], 1e-6),
    )

    # 2. right drag on the image: 100 px right (width + 100 k HU), 50 px down (level - 50 k HU)
    b = a
    dx, dy = 100, 50
    s.drag(3, cx - 50, cy - 25, dx, dy)
    a = s.settle()
    lo, hi = b["contrast_limits"]
    width, level = hi - lo + k * dx, (lo + hi) / 2 - k * dy
    expected = [level - width / 2, level + width / 2]
    zoom_kept = close([a["camera_zoom"]], [b["camera_zoom"]], 1e-6)
    centre_kept = close(a["camera_center"], b["camera_center"], 1e-3)
    check(
        "right_drag_on_image",
        f"xdotool mousedown 3 at ({cx - 50},{cy - 25}), 5 moves to (+{dx},+{dy}), mouseup 3",
        b,
        a,
        f"contrast limits {expected} (width +{k * dx:g} HU, level -{k * dy:g} HU); camera zoom and centre unchanged",
        close(a["contrast_limits"], expected) and zoom_kept and centre_kept,
        move_px=[dx, dy],
        expected_limits=expected,
        limits_ok=close(a["contrast_limits"], expected),
        zoom_unchanged=zoom_kept,
        centre_unchanged=centre_kept,
    )
    shots["after"] = s.screenshot(out / "after_right_drag.png")
    after_drag = a

    # 3. presets from the keyboard, the mouse on the canvas (the canvas has the focus after the clicks)
    for preset in ("mediastinum", "bone", "lung"):  # each one changes the window
        keys = xkeys[preset]
        b = a
        s.key(keys, cx, cy)
        a = s.settle()
        check(
            f"key_{preset}",
            f"xdotool key {keys}, mouse on the image",
            b,
            a,
            f"{preset} window {presets[preset]}",
            close(a["contrast_limits"], presets[preset]),
            preset=preset,
        )

    # 4. left drag on the image: napari pans, the window stays
    b = a
    s.drag(1, cx, cy, 80, 40)
    a = s.settle()
    moved = not close(a["camera_center"], b["camera_center"], 1e-3)
    check(
        "left_drag_pans",
        f"xdotool mousedown 1 at ({cx},{cy}), moves to (+80,+40), mouseup 1",
        b,
        a,
        "camera centre moves, contrast limits unchanged",
        moved and close(a["contrast_limits"], b["contrast_limits"]),
        camera_moved=moved,
    )

    # 5. right drag on the canvas outside the image (the black margin)
    b = a
    image = a["image"] or image
    ox = int(canvas[0] + 15)
    oy = int(canvas[1] + 15)
    inside_image = image[0] <= ox <= image[0] + image[2] and image[1] <= oy <= image[1] + image[3]
    s.drag(3, ox, oy, 60, 0)
    a = s.settle()
    lo, hi = b["contrast_limits"]
    expected_out = [lo - k * 60 / 2, hi + k * 60 / 2]
    check(
        "right_drag_outside_image",
        f"xdotool right drag at ({ox},{oy}) (canvas corner, outside the image: {not inside_image}) +60 px",
        b,
        a,
        "no error; the window follows the drag (the callback is on the whole canvas by design)",
        close(a["contrast_limits"], expected_out),
        move_px=[60, 0],
        expected_limits=expected_out,
        outside_image=not inside_image,
    )

    # 6. right drag on the dock (not the canvas): nothing changes
    b = a
    win = a["window"]  # the docks are right of the canvas
    tx, ty = int((canvas[0] + canvas[2] + win[0] + win[2]) / 2), int(canvas[1] + canvas[3] * 0.4)
    s.drag(3, tx, ty, 60, 30)
    a = s.settle()
    check(
        "right_drag_on_dock",
        f"xdotool right drag at ({tx},{ty}) on the dock, +60,+30",
        b,
        a,
        "contrast limits unchanged",
        close(a["contrast_limits"], b["contrast_limits"]),
    )

    # 7. the focus on the dock (a left click on the layer list's empty part), then Shift+M over the canvas
    b = a
    ll = a["layer_list"]
    s.click(1, int(ll[0] + ll[2] / 2), int(ll[1] + ll[3] - 10))
    s.settle(1)
    focus_then = s.state().get("focus")
    s.key(xkeys["mediastinum"], cx, cy)
    a = s.settle()
    check(
        "key_mediastinum_focus_on_layer_list",
        f"left click on the layer list's empty part, mouse back on the canvas, xdotool key {xkeys['mediastinum']}",
        b,
        a,
        f"mediastinum window {presets['mediastinum']} (napari's own shortcuts work from there)",
        close(a["contrast_limits"], presets["mediastinum"]),
        preset="mediastinum",
        focus_before_key=focus_then,
    )

    # screenshots: what the drag did on screen
    pair = side_by_side(
        shots["before"],
        shots["after"],
        st["canvas"],
        out / "window_level_drag.png",
        [
            f"before: window {st['contrast_limits'][0]:g} .. {st['contrast_limits'][1]:g} HU, zoom {st['camera_zoom']:.2f}",
            f"after right drag +{dx},+{dy} px: window {after_drag['contrast_limits'][0]:g} .. "
            f"{after_drag['contrast_limits'][1]:g} HU, zoom {after_drag['camera_zoom']:.2f}",
        ],
    )
    means = {  # the same screen rectangle (where the image was at the start) in both
        "before": region_mean(shots["before"], st["image"]),
        "after": region_mean(shots["after"], st["image"]),
    }
    return {
        "checks": checks,
        "screenshots": {k: None if v is None else str(v) for k, v in {**shots, "pair": pair}.items()},
        "image_mean_grey": means,
        "initial": {
            "ct_layer": st["ct_layer"],
            "active_layer": st["active_layer"],
            "contrast_limits": st["contrast_limits"],
            "canvas": canvas,
            "image": st["image"],
            "window_keys": st["window_keys"],
        },
    }


def parent(args) -> int:
    missing = [t for t in ("Xvfb", "xdotool") if shutil.which(t) is None]
    if missing:
        print(
            json.dumps(
                {"ok": False, "error": f"missing: {', '.join(missing)} (apt-get install -y xvfb xdotool)"}
            )
        )
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="hyperct-xdotool-"))
    out.mkdir(parents=True, exist_ok=True)
    display = args.display if args.display is not None else free_display(57)
    state_path, log_path = out / "state.json", out / "viewer.log"
    state_path.unlink(missing_ok=True)
    Path(str(state_path) + "l").unlink(missing_ok=True)
    procs: list[subprocess.Popen] = []
    result: dict = {"display": f":{display}", "out": str(out)}
    try:
        xvfb = subprocess.Popen(
            ["Xvfb", f":{display}", "-screen", "0", f"{SIZE[0]}x{SIZE[1]}x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(xvfb)
        s = Session(display, state_path, log_path)
        deadline = time.time() + 20
        while not Path(f"/tmp/.X11-unix/X{display}").exists():
            if xvfb.poll() is not None or time.time() > deadline:
                raise Failed(f"Xvfb :{display} did not start")
            time.sleep(0.1)
        env = dict(s.env, HYPERCT_CHECK_ANALYZE="1" if args.analyze else "0", QT_QPA_PLATFORM="xcb")
        with open(log_path, "w") as log:
            viewer = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(state_path)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(viewer)
        t0 = time.time()
        while True:  # the viewer is up when its state names a CT layer shown on the canvas
            st = s.state()
            if st.get("image") and st.get("contrast_limits") and (not args.analyze or st.get("scored")):
                if not st.get("busy"):
                    break
            if viewer.poll() is not None:
                raise Failed(f"the viewer exited with {viewer.returncode}; its log: {log_path}")
            if time.time() - t0 > args.timeout:
                raise Failed(f"the viewer did not show the CT within {args.timeout} s; its log: {log_path}")
            time.sleep(0.25)
        time.sleep(1)
        found = subprocess.run(
            ["xdotool", "search", "--onlyvisible", "--name", "HyperCT Viewer"],
            env=s.env,
            capture_output=True,
            text=True,
        ).stdout.split()
        if not found:
            raise Failed("xdotool search --name 'HyperCT Viewer' found no window")
        result["window_ids"] = found
        result["load_seconds"] = round(time.time() - t0, 1)
        result.update(scenario(s, out))
        result["ok"] = all(c["ok"] for c in result["checks"])
        status = 0 if result["ok"] else 1
    except (Failed, subprocess.SubprocessError, KeyError, TypeError) as exc:
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        status = 2
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    print(json.dumps(result, indent=1))
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", metavar="STATE_JSON", help=argparse.SUPPRESS)
    p.add_argument(
        "--out", help="folder for the screenshots, the viewer's log and state (default: a temp folder)"
    )
    p.add_argument("--display", type=int, help="X display number (default: the first free one from :57)")
    p.add_argument(
        "--analyze", action="store_true", help="run the analysis first (the overlay shown; slower)"
    )
    p.add_argument(
        "--timeout", type=float, default=240.0, help="seconds to wait for the viewer (default 240)"
    )
    args = p.parse_args(argv)
    if args.child:
        return child(args.child)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
