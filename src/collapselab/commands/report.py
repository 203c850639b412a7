"""``collapselab report``: write the HTML report of one run, or of several runs overlaid."""

from __future__ import annotations

import argparse
import sys

from collapselab._validation import InputError
from collapselab.cli import EXIT_OK, EXIT_USAGE

DEFAULT_COMPARISON_OUT = "report.html"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="write a run's report.html (curves, spectra, alarms, verdicts); several runs overlaid",
        description=(
            "Write a self-contained HTML report (inline SVG figures, no JavaScript, nothing fetched) "
            "of a run folder: summary and verdicts, alarm timeline, loss, online kNN, effective and "
            "stable rank, spread, eigenvalue spectra, alignment/uniformity, code usage, config. "
            "One run: written to RUN_DIR/report.html. Several runs: overlaid with a comparison "
            f"table, written to ./{DEFAULT_COMPARISON_OUT}. --out a folder (an existing one, or a "
            f"path ending in /) writes {DEFAULT_COMPARISON_OUT} inside it. Prints the path written. "
            "A damaged file of a run (unreadable, garbage lines) costs one warning line on stderr and a "
            "note in the report, which shows what could be read. Exit 0 when done, 2 on bad input."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (runs/<name>)")
    parser.add_argument("--out", metavar="PATH",
                        help=f"the report's file, or a folder to write {DEFAULT_COMPARISON_OUT} in (default: see above)")
    parser.add_argument("--title", help="the page title (default: the run names)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from collapselab.report import write_report
    from collapselab.report.data import damage_warnings, load_runs

    out = args.out or (DEFAULT_COMPARISON_OUT if len(args.runs) > 1 else None)
    try:
        runs = load_runs(args.runs)
        for line in damage_warnings(runs):  # the report is still written, from what could be read
            print(line, file=sys.stderr)
        path = write_report(runs, out, title=args.title)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK
