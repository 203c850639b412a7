"""The ``collapselab`` command: a thin dispatcher over the Python API.

Each subcommand lives in ``collapselab/commands/<name>.py`` and exposes
``register(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func`` (a callable taking
the parsed namespace and returning an exit code). Add a command by listing its module below.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    "collapselab.commands.report",
    "collapselab.commands.compare",
    "collapselab.commands.sweep",
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


def parse_intermixed(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse with options and positionals in any order: argparse hands a ``nargs="*"``
    positional (``train``'s KEY=VALUE list) the tokens before the first option only, so the
    positional tokens left after an option (``--name r log.progress=false``) join that list.
    (``parse_intermixed_args`` does not support subcommands.)"""
    args, extras = parser.parse_known_args(argv)
    if extras:
        positional = getattr(args, "args", None)
        if isinstance(positional, list) and not any(token.startswith("-") for token in extras):
            positional.extend(extras)
        else:
            parser.parse_args(argv)  # the usual one-line usage error, exit 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_intermixed(parser, argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_OK
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:  # `collapselab compare ... | head`: stop quietly, as Unix tools do
        _silence_stdout()
        return 128 + 13  # as if killed by SIGPIPE
    except OSError as err:  # an unreadable input or unwritable output (--out on a read-only disk)
        name = getattr(err, "filename", None)
        if getattr(err, "filename2", None) and str(name).endswith(".tmp"):  # an atomic write's rename:
            name = err.filename2  # name the file the user asked for, not our temporary
        where = f" ({name})" if name else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM during training (exit 128 + signal)
        signum = getattr(err, "signum", 2)
        print("interrupted" + (" (SIGTERM)" if signum == 15 else ""), file=sys.stderr)
        return 128 + signum


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass


if __name__ == "__main__":
    raise SystemExit(main())
