"""``collapselab compare``: runs side by side, deltas against the first, config keys that differ."""

from __future__ import annotations

import argparse
import sys

from collapselab._validation import InputError
from collapselab.cli import EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="compare runs: final loss, kNN beside baselines, verdicts, ranks, config differences",
        description=(
            "Print one column per run (status, steps, final loss, kNN top-1 beside the raw-pixel and "
            "untrained-backbone baselines, linear/NMI when recorded, worst verdict, final effective "
            "rank of each embedding, training time) with the difference against the first run, then "
            "the config keys whose values differ. A damaged file of a run (unreadable, garbage lines) "
            "costs one warning line on stderr. Exit 0 when done, 2 on bad input."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders; the first is the reference")
    parser.add_argument("--csv", metavar="FILE", help="also write the comparison as CSV to FILE, not a folder ('-': CSV to stdout, no table)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from collapselab.report import comparison, format_table, to_csv
    from collapselab.report.compare import check_file_path
    from collapselab.report.data import damage_warnings, load_runs

    try:
        if args.csv and args.csv != "-":
            check_file_path(args.csv, "--csv")  # before the work, not after the table
        runs = load_runs(args.runs)
        for line in damage_warnings(runs):  # compared all the same, from what could be read
            print(line, file=sys.stderr)
        result = comparison(runs)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.csv == "-":
        to_csv(result, sys.stdout)
        return EXIT_OK
    print(format_table(result))
    if args.csv:
        to_csv(result, args.csv)
        print(f"\ncsv written to {args.csv}")
    return EXIT_OK
