"""``collapselab verify``: run the claims ledger and print predicted vs measured values.

Exit status: 0 when every claim passes, 1 when one fails, 2 for an unknown claim id.
By default only the fast ``theory`` claims run; ``--training`` runs the ``training`` claims
(:mod:`collapselab.theory.training_claims`), which train models on digits.
"""

from __future__ import annotations

import argparse
import json
import sys

from collapselab._validation import InputError
from collapselab.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify",
        help="check published claims about collapse numerically (the claims ledger)",
        description="Run every registered claim (or those named with --claim): each computes the "
        "theory's prediction and an independent measurement and compares them within a tolerance. "
        "Exit 0 if all pass, 1 if any fails, 2 on bad input. By default only the fast theory "
        "claims run; --training runs the training-level claims (each trains small models on "
        "digits, one CPU thread, in a temporary folder: minutes).",
    )
    parser.add_argument(
        "--claim", action="append", metavar="ID", help="run only this claim (repeatable)"
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list claim ids, kinds, sources and statements (all kinds; with --training only "
        "the training claims), run nothing",
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="run (or with --list, list) the training-level claims instead of the theory claims",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import collapselab.theory.training_claims  # noqa: F401  (registers the training claims)
    from collapselab.theory.claims import all_claims, format_table, verify

    kind = "training" if args.training else "theory"
    if args.list:
        for c in all_claims("training" if args.training else None):
            print(f"{c.id}  [{c.kind}]\n    source: {c.source}\n    {c.statement}")
        return EXIT_OK
    try:
        results = verify(args.claim, kind=kind)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(
            json.dumps(
                {
                    "passed": all(r.passed for r in results),
                    "claims": [r.to_dict() for r in results],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(format_table(results))
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAIL
