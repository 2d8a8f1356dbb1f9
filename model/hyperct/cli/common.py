"""What the ``hyperct`` commands (and ``hyperct-viewer``) share: exit codes, the error-to-exit-code
mapping, the arguments several commands take (one flag, one help text), argument types, and the
manifest and finding-list readers of ``predict`` and ``screen``.

Exit codes (all sub-commands; README "Command line"):

* 0 ``EXIT_OK``: success;
* 1 ``EXIT_PARTIAL``: the work ran but some inputs failed (e.g. ``predict`` on many scans, one
  unreadable, or an output that exists without ``--overwrite``);
* 2 ``EXIT_USAGE``: usage error (``UsageError``: bad arguments; ``ConfigError``: an invalid or
  missing configuration/option file; a command may name more, see ``run_command``);
* 3 ``EXIT_ERROR``: an input or model error (``HyperCTError``) that stopped the whole command;
* 130 ``EXIT_INTERRUPTED``: interrupted (Ctrl-C).

Importing this module is cheap (argparse and ``hyperct.errors``): ``hyperct --help`` and the
viewer's launcher use it.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyperct.errors import ConfigError, HyperCTError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """Bad arguments (or an unreadable option file): the command stops with exit status 2."""


# --- errors -> exit codes ------------------------------------------------------------------------


def run_command(
    name: str,
    run: Callable[[argparse.Namespace], int | None],
    args: argparse.Namespace,
    *,
    usage_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run one sub-command and map what it raises to an exit code, with one line on stderr
    (``hyperct <name>: error: <cause> (<file>) -> <what to do>``).

    ``UsageError`` and ``ConfigError`` (and the command's ``usage_errors``) exit 2, any other
    ``HyperCTError`` 3, Ctrl-C 130. Anything else is a bug and keeps its traceback.
    """
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"hyperct {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError, *usage_errors) as exc:
        print(f"hyperct {name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HyperCTError as exc:
        print(f"hyperct {name}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


# --- argument types ------------------------------------------------------------------------------


def whole_number(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(
                f"must be {least} or more, got {n}" if least == 0 else f"must be at least {least}, got {n}"
            )
        return n

    parse.__name__ = "whole number"  # argparse names the type in its messages
    return parse


# --- shared arguments ------------------------------------------------------------------------------

MODEL_HELP = "checkpoint folder (default: the embedded demo model)"
BACKBONE_HELP = "DINOv3 backbone folder, for checkpoints with external backbone weights"
DEVICE_HELP = "auto (default), cuda, cuda:N or cpu"
DTYPE_HELP = (
    "backbone weights for inference: fp32 (default) or bf16 (CPUs only: faster on CPUs with bf16 "
    "matmuls, e.g. AVX-512 BF16/AMX, probabilities within ~0.04 of fp32, so a call near its threshold can "
    "differ; recorded in the reports as model.weights_dtype). On a GPU the pass already runs under bf16 "
    "autocast: bf16 with --device cuda is refused, with --device auto on a GPU it is ignored (a note says "
    "so). The CPU time estimate printed before a long run is the fp32 one"
)


def add_model_args(
    p: argparse.ArgumentParser,
    *,
    device_default: str | None = "auto",
    device_help: str = DEVICE_HELP,
    device_choices: list[str] | None = None,
    dtype: bool = False,
) -> None:
    """``--model DIR``, ``--backbone DIR`` and ``--device``: which checkpoint runs, and where; with
    ``dtype``, also ``--dtype {fp32,bf16}`` (the backbone's weights; check it with ``weights_dtype``)."""
    p.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    p.add_argument("--backbone", metavar="DIR", help=BACKBONE_HELP)
    p.add_argument("--device", default=device_default, choices=device_choices, help=device_help)
    if dtype:
        p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=DTYPE_HELP)


def weights_dtype(args: argparse.Namespace) -> str:
    """``args.dtype`` ("fp32" without a ``--dtype`` argument); ``UsageError`` for bf16 with an
    explicit CUDA ``--device`` (the GPU pass already runs under bf16 autocast)."""
    dtype = getattr(args, "dtype", None) or "fp32"
    device = str(getattr(args, "device", None) or "auto").lower()
    if dtype == "bf16" and device.startswith("cuda"):
        raise UsageError(
            f"--dtype bf16 is for CPUs; on a GPU ({device}) the pass already runs under bf16 autocast "
            "-> drop --dtype bf16, or use --device cpu"
        )
    return dtype


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "existing output files") -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_input_args(p: argparse.ArgumentParser) -> None:
    """How ``predict`` and ``screen`` read their inputs: ``--manifest``, ``--min-slices``,
    ``--resample-tilt``."""
    p.add_argument(
        "--manifest", metavar="CSV", help="CSV listing inputs (column 'path'; optional 'series_uid', 'id')"
    )
    p.add_argument(
        "--min-slices",
        type=whole_number(2),
        default=16,
        metavar="N",
        help="fewest slices accepted as a chest CT volume (default 16)",
    )
    p.add_argument(
        "--resample-tilt",
        action="store_true",
        help="resample a gantry-tilted DICOM series onto an orthogonal grid (QC warning in the outputs) "
        "instead of refusing it",
    )


def add_scoring_args(p: argparse.ArgumentParser, *, describe_methods: bool = True) -> None:
    """What ``predict`` and ``screen`` score and how they write it: ``--findings``, ``--mode``,
    ``--saliency-method``."""
    from hyperct.saliency.registry import DEFAULT_METHOD, METHODS

    p.add_argument("--findings", metavar="A,B", help="score only these finding ids (others: not assessed)")
    p.add_argument(
        "--mode",
        choices=["shareable", "clinical"],
        default="shareable",
        help="export mode (default shareable)",
    )
    help_text = f"saliency method (default {DEFAULT_METHOD})"
    if describe_methods:
        help_text += ": " + "; ".join(f"{m.id}: {m.description}" for m in METHODS.values())
    p.add_argument("--saliency-method", choices=list(METHODS), default=DEFAULT_METHOD, help=help_text)


def add_report_args(p: argparse.ArgumentParser, *, folder: str = "", each: str = "") -> None:
    """``--pdf``, ``--sr``, ``--fhir``, ``--saliency``: files of the export set (``hyperct.report.export``)
    that ``predict`` writes per scan and ``screen`` per study (``folder``: where, ``each``: per what)."""
    p.add_argument("--pdf", action="store_true", help=f"write {folder}<stem>.hyperct.pdf{each}")
    p.add_argument(
        "--sr", action="store_true", help=f"write {folder}<stem>.hyperct.sr.dcm{each} (DICOM input only)"
    )
    p.add_argument(
        "--fhir",
        action="store_true",
        help=f"write {folder}<stem>.hyperct.fhir.json{each} (FHIR R4 Bundle: DiagnosticReport + one "
        "Observation per assessed finding)",
    )
    p.add_argument(
        "--saliency", action="store_true", help="write saliency maps (NIfTI) of the positive findings"
    )


# --- what predict and screen read ------------------------------------------------------------------


def finding_ids(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` (None for no text); an unknown id is a ``UsageError``."""
    if not text:
        return None
    ids = [t.strip() for t in text.split(",") if t.strip()]
    check_finding_ids(ids)
    return ids


def check_finding_ids(ids) -> None:
    """``UsageError`` naming the unknown ids among ``ids`` and listing the known ones."""
    from hyperct.findings import FINDING_IDS

    unknown = [f for f in ids if f not in FINDING_IDS]
    if unknown:
        raise UsageError(
            f"unknown finding id(s) {', '.join(map(repr, unknown))}; known ids: {', '.join(FINDING_IDS)}"
        )


@dataclass
class ManifestRow:
    """One input of a manifest CSV: ``path`` (relative to the CSV's folder), optional series and id."""

    path: str
    series_uid: str | None = None
    id: str | None = None


def read_manifest(path: str) -> list[ManifestRow]:
    """The rows of a manifest CSV (header row; column 'path', optional 'series_uid' and 'id')."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise UsageError(f"cannot read the manifest ({exc}) ({p})") from exc
    except csv.Error as exc:
        raise UsageError(f"not a valid CSV ({exc}) ({p})") from exc
    if not rows or "path" not in rows[0]:
        raise UsageError(f"the manifest needs a header row with a 'path' column and at least one row ({p})")
    out = []
    for n, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise UsageError(f"empty 'path' on line {n} ({p})")
        src = raw if os.path.isabs(raw) else str(p.parent / raw)
        out.append(
            ManifestRow(
                src, (row.get("series_uid") or "").strip() or None, (row.get("id") or "").strip() or None
            )
        )
    return out
