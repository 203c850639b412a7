"""The ``collapselab`` command: a thin dispatcher over the Python API.

Each subcommand lives in ``collapselab/commands/<name>.py`` and exposes
``register(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func`` (a callable taking
the parsed namespace and returning an exit code). Add a command by listing its module below.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from collapselab import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "collapselab.commands.train",
    "collapselab.commands.methods",
    "collapselab.commands.diagnose",
    "collapselab.commands.datasets",
    "collapselab.commands.eval",
    "collapselab.commands.theory",
    "collapselab.commands.verify",
)

# Exit codes shared by every subcommand.
EXIT_OK = 0
EXIT_FAIL = 1  # the command ran and found what it checks for (a collapse past --fail-on, a failed claim)
EXIT_USAGE = 2  # bad input: unreadable file, wrong shape, unknown name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collapselab",
        description="Self-supervised learning with representation collapse measured, explained, prevented.",
    )
    parser.add_argument("--version", action="version", version=f"collapselab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
