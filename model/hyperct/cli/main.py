"""``hyperct``: the headless command line.

Sub-commands live in their own modules (``hyperct.cli.<name>``), each with ``add_parser(sub)``
and ``run(args) -> int``; they are imported lazily so ``hyperct --help`` stays fast.

Exit codes (all sub-commands):

* 0: success;
* 1: the work ran but some inputs failed (e.g. ``predict`` on many scans, one unreadable or missing);
* 2: usage error (bad arguments, invalid or missing config/option file);
* 3: input or model error that stopped the whole command (message on stderr);
* 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hyperct import __version__
from hyperct.errors import HyperCTError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

COMMANDS = ("predict", "screen", "sample", "pretrain", "train", "evaluate", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperct",
        description="HyperCT: score a chest CT for 25 findings with a low-rank hypernetwork (headless). "
        "The embedded demo model is trained on synthetic phantoms; AI output, not a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"hyperct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"hyperct.cli.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name == f"hyperct.cli.{name}":
                continue
            raise
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args._run(args) or 0)
    except HyperCTError as exc:
        print(f"hyperct {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"hyperct {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
