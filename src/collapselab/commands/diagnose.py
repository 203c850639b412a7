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
            "embedding matrix and print a verdict per mode; given --band (the uncertainty band "
            "sigma of each row), also band collapse: the band's width against the spread of the "
            "embedding. Exit 0 when done, 1 when --fail-on is reached, 2 on bad input."
        ),
    )
    parser.add_argument("file", nargs="?", help="embeddings: .npy, .npz, .pt/.pth or .csv/.txt, shape (N, D)")
    parser.add_argument("--key", help="array name inside an .npz or a .pt dict")
    parser.add_argument("--views", metavar="FILE", help="a second view of the same N inputs (alignment)")
    parser.add_argument("--codes", metavar="FILE", help="(N,) code assignments or (N, c) code probabilities")
    parser.add_argument("--labels", metavar="FILE",
                        help="(N,) integer labels defining clusters (intracluster mode); -1 = unlabelled, left out")
    parser.add_argument("--reference", metavar="FILE", help="embeddings of a reference state, e.g. at initialisation")
    parser.add_argument(
        "--band", metavar="FILE", help="(N,) or (N, D) uncertainty band widths sigma >= 0 of the N rows (band mode)"
    )
    parser.add_argument(
        "--reference-band", metavar="FILE",
        help="the band of the --reference embeddings: the band mode then also judges its fall from the reference",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--fail-on", choices=("warning", "collapsed"), help="exit with status 1 if any mode reaches this level"
    )
    parser.add_argument("--demo", action="store_true",
                        help="diagnose four synthetic sets: healthy and three collapses (takes no FILE)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from collapselab.diagnostics import LEVELS, MODES, diagnose
    from collapselab.diagnostics.io import load_array
    from collapselab.diagnostics.verdict import NOT_APPLICABLE

    try:
        if args.demo:
            given = [name for name, value in _inputs(args) if value]
            if given:
                print(f"error: --demo takes no {', '.join(given)}: it diagnoses its own synthetic sets; "
                      "give one or the other", file=sys.stderr)
                return EXIT_USAGE
            results = _demo()
        else:
            if not args.file:
                print("error: give an embeddings FILE, or --demo", file=sys.stderr)
                return EXIT_USAGE
            if args.reference_band and not args.reference:
                print("error: --reference-band needs --reference (the embeddings that band belongs to)", file=sys.stderr)
                return EXIT_USAGE
            z = load_array(args.file, args.key)
            optional = {
                name: load_array(path)
                for name, path in (
                    ("views", args.views), ("codes", args.codes), ("labels", args.labels), ("band", args.band)
                )
                if path
            }
            if args.reference:
                reference = load_array(args.reference, args.key)
                reference_band = load_array(args.reference_band) if args.reference_band else None
                try:
                    optional["reference"] = diagnose(reference, band=reference_band)
                except InputError as err:
                    raise InputError(f"reference: {err}") from err
            results = {args.file: diagnose(z, **optional)}
    except (InputError, FileNotFoundError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line
        return EXIT_USAGE

    if args.json:
        payload = {name: d.to_dict() for name, d in results.items()}
        print(json.dumps(payload if len(payload) > 1 else next(iter(payload.values())), indent=2))
    else:
        for name, d in results.items():
            print(f"== {name}\n{d}\n")
        if args.demo:
            modes = [m for m in MODES if any(m in d.verdict for d in results.values())]
            print(f"verdicts ({' / '.join(modes)}):")
            for name, d in results.items():
                print(f"  {name:<12} " + " / ".join(d.verdict.get(m, NOT_APPLICABLE) for m in modes))
    if args.fail_on:
        threshold = LEVELS.index(args.fail_on)
        if any(LEVELS.index(d.worst) >= threshold for d in results.values()):
            return EXIT_FAIL
    return EXIT_OK


def _inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The file arguments, named as the command line spells them."""
    return [(f"FILE ({args.file})" if args.file else "FILE", args.file), *(
        (f"--{name.replace('_', '-')}", getattr(args, name))
        for name in ("key", "views", "codes", "labels", "reference", "band", "reference_band")
    )]


def _demo() -> dict:
    from collapselab.diagnostics import diagnose
    from collapselab.diagnostics.demo import demo_sets

    return {name: diagnose(s["z"], codes=s["codes"], labels=s["labels"]) for name, s in demo_sets().items()}
