"""``collapselab diagnose``: diagnose saved embeddings (or the synthetic demo sets)."""

from __future__ import annotations

import argparse
import json
import sys

from collapselab._validation import InputError
from collapselab.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "diagnose",
        help="measure collapse of saved embeddings (.npy, .npz, .pt, .csv)",
        description=(
            "Measure complete, dimensional, cluster and intracluster collapse of an (N, D) "
            "embedding matrix and print a verdict per mode. Exit 0 when done, 1 when "
            "--fail-on is reached, 2 on bad input."
        ),
    )
    parser.add_argument("file", nargs="?", help="embeddings: .npy, .npz, .pt/.pth or .csv/.txt, shape (N, D)")
    parser.add_argument("--key", help="array name inside an .npz or a .pt dict")
    parser.add_argument("--views", metavar="FILE", help="a second view of the same N inputs (alignment)")
    parser.add_argument("--codes", metavar="FILE", help="(N,) code assignments or (N, c) code probabilities")
    parser.add_argument("--labels", metavar="FILE", help="(N,) labels defining clusters (intracluster mode)")
    parser.add_argument("--reference", metavar="FILE", help="embeddings of a reference state, e.g. at initialisation")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--fail-on", choices=("warning", "collapsed"), help="exit with status 1 if any mode reaches this level"
    )
    parser.add_argument("--demo", action="store_true", help="diagnose four synthetic sets: healthy and three collapses")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from collapselab.diagnostics import LEVELS, diagnose
    from collapselab.diagnostics.io import load_array

    try:
        if args.demo:
            results = _demo()
        else:
            if not args.file:
                print("error: give an embeddings FILE, or --demo", file=sys.stderr)
                return EXIT_USAGE
            z = load_array(args.file, args.key)
            optional = {
                name: load_array(path)
                for name, path in (("views", args.views), ("codes", args.codes), ("labels", args.labels))
                if path
            }
            if args.reference:
                optional["reference"] = diagnose(load_array(args.reference, args.key))
            results = {args.file: diagnose(z, **optional)}
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE

    if args.json:
        payload = {name: d.to_dict() for name, d in results.items()}
        print(json.dumps(payload if len(payload) > 1 else next(iter(payload.values())), indent=2))
    else:
        for name, d in results.items():
            print(f"== {name}\n{d}\n")
        if args.demo:
            print("verdicts (complete / dimensional / cluster / intracluster):")
            for name, d in results.items():
                print(f"  {name:<12} " + " / ".join(d.verdict[m] for m in d.verdict))
    if args.fail_on:
        threshold = LEVELS.index(args.fail_on)
        if any(LEVELS.index(d.worst) >= threshold for d in results.values()):
            return EXIT_FAIL
    return EXIT_OK


def _demo() -> dict:
    from collapselab.diagnostics import diagnose
    from collapselab.diagnostics.demo import demo_sets

    return {name: diagnose(s["z"], codes=s["codes"], labels=s["labels"]) for name, s in demo_sets().items()}
