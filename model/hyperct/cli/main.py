"""``hyperct``: the headless command line.

Sub-commands live in their own modules (``hyperct.cli.<name>``), each with ``add_parser(sub)``
and ``run(args) -> int`` (and, where more errors than ``UsageError``/``ConfigError`` mean a usage
error, ``USAGE_ERRORS``); they are imported lazily so ``hyperct --help`` stays fast. Exit codes
and the arguments several commands share: ``hyperct.cli.common``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hyperct import __version__
from hyperct.cli.common import EXIT_USAGE, run_command

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
        module = importlib.import_module(f"hyperct.cli.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run, _usage_errors=getattr(module, "USAGE_ERRORS", ()))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    return run_command(args.command, args._run, args, usage_errors=args._usage_errors)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
