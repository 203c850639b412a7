"""``collapselab eval``: kNN, linear probe and clustering scores of a run, a checkpoint or frozen features."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from collapselab._validation import InputError
from collapselab.cli import EXIT_OK, EXIT_USAGE

LABELS = {
    "knn_top1": "kNN top-1",
    "knn_top5": "kNN top-5",
    "linear_top1": "linear top-1",
    "linear_train_top1": "linear train top-1",
    "nmi": "k-means NMI",
    "ari": "k-means ARI",
    "acc": "k-means ACC",
    "codes_nmi": "codes NMI",
    "codes_ari": "codes ARI",
    "codes_acc": "codes ACC",
}
COLUMNS = (
    ("", "features"),
    ("baseline_pixels_", "raw pixels"),
    ("baseline_random_", "random init"),
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from collapselab.evaluation import BASELINES, PROTOCOLS
    from collapselab.evaluation.clustering import DEFAULT_N_INIT
    from collapselab.evaluation.knn import DEFAULT_K, DEFAULT_TEMPERATURE
    from collapselab.evaluation.linear import DEFAULT_L2

    parser = subparsers.add_parser(
        "eval",
        help="kNN, linear probe and clustering scores of a run, a checkpoint or frozen features",
        description=(
            "Score a frozen representation by weighted kNN (top-1/top-5), a linear probe (top-1) and "
            "k-means clustering (NMI, ARI, Hungarian ACC), with the raw-pixel baseline beside it "
            "(and the random-init baseline for a run or checkpoint). For a run folder the scores "
            "are also merged into its summary.json under 'eval'. Accuracies are fractions. "
            "Exit 0 when done, 2 on bad input, an unreadable checkpoint, or scores that could "
            "not be merged into summary.json (they are printed first)."
        ),
    )
    parser.add_argument(
        "source",
        nargs="?",
        metavar="RUN_DIR|CHECKPOINT",
        help="a run folder (runs/<name>, read from checkpoints/last.pt) or a .pt checkpoint "
        "(a features file goes with --features)",
    )
    parser.add_argument(
        "--features",
        metavar="FILE",
        help=".npz or .pt with train_features, train_labels, test_features, test_labels [, test_codes]",
    )
    parser.add_argument(
        "--dataset",
        help="dataset the features came from (enables the raw-pixel baseline); "
        "for a run or checkpoint, default the run's dataset",
    )
    parser.add_argument("--data-dir", help="where the dataset files live")
    parser.add_argument(
        "--protocol",
        action="append",
        choices=PROTOCOLS,
        dest="protocols",
        help="run only this protocol (repeatable; default: all)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    parser.add_argument(
        "--k", type=int, default=None,
        help=f"kNN neighbours (default: a run's own eval.knn_k, so the score compares with the "
        f"trainer's; {DEFAULT_K} for features)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"kNN vote temperature (default: a run's own eval.knn_temperature; "
        f"{DEFAULT_TEMPERATURE} for features)",
    )
    parser.add_argument(
        "--l2",
        type=_floats,
        default=[DEFAULT_L2],
        metavar="L2[,L2...]",
        help=f"probe weight decay λ; comma-separated values pick one on a validation split "
        f"(default {DEFAULT_L2})",
    )
    parser.add_argument(
        "--n-init",
        type=int,
        default=DEFAULT_N_INIT,
        help=f"k-means restarts (default {DEFAULT_N_INIT})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for k-means and the probe's validation split"
    )
    parser.add_argument("--device", help="compute device, e.g. cuda (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run, baselines=BASELINES)
    return parser


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from err


def run(args: argparse.Namespace) -> int:
    from collapselab.engine.checkpoint import CheckpointError
    from collapselab.evaluation import load_features
    from collapselab.evaluation.api import SummaryNotWrittenWarning, load_checkpoint_source

    if args.source and args.features:
        print("error: give either RUN_DIR|CHECKPOINT or --features FILE, not both", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.features:
            source = load_features(args.features)
        elif args.source:
            source = load_checkpoint_source(args.source)
        else:
            print(
                "error: give RUN_DIR|CHECKPOINT or --features FILE (train/test features and labels)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = _evaluate(source, args)
    except (InputError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    # Scores that could not be merged into summary.json are still printed, then the error.
    not_merged = [w for w in caught if issubclass(w.category, SummaryNotWrittenWarning)]
    for warning in caught:
        if warning not in not_merged:
            print(f"note: {warning.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
        if "knn_k" in results:
            print(f"kNN: k={results['knn_k']} neighbours, vote temperature τ={results['knn_temperature']}",
                  file=sys.stderr)
    if not_merged:
        sys.stdout.flush()  # the scores first, then why they were not recorded
        print(f"error: {not_merged[0].message}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = getattr(source, "run_dir", None)
    if run_dir is not None:
        where = sys.stderr if args.json else sys.stdout  # keep --json output parseable
        section = getattr(source, "summary_section", "eval")
        entry = f"{section}.{source.checkpoint}" if section != "eval" else section
        print(f"scores merged into {run_dir / 'summary.json'} under '{entry}'", file=where)
    return EXIT_OK


def _evaluate(source: Any, args: argparse.Namespace) -> dict[str, float]:
    from collapselab.evaluation import PROTOCOLS, evaluate

    return evaluate(
            source,
            args.dataset,
            protocols=tuple(args.protocols) if args.protocols else PROTOCOLS,
            baselines=() if args.no_baselines else args.baselines,
            k=args.k,
            temperature=args.temperature,
            l2=args.l2[0] if len(args.l2) == 1 else args.l2,
            n_init=args.n_init,
            seed=args.seed,
            device=args.device,
            data_dir=args.data_dir,
        )


def format_table(results: dict[str, float]) -> str:
    """Metrics as rows, the representation and its baselines as columns."""
    columns = [COLUMNS[0]] + [
        (prefix, title)
        for prefix, title in COLUMNS[1:]
        if any(key.startswith(prefix) for key in results)
    ]
    lines = [f"{'':<20}" + "".join(f"{title:>13}" for _, title in columns)]
    for key, label in LABELS.items():
        if key not in results:
            continue
        cells = []
        for prefix, _ in columns:
            value = results.get(prefix + key)
            cells.append(f"{value:>13.4f}" if value is not None else f"{'-':>13}")
        lines.append(f"{label:<20}" + "".join(cells))
    return "\n".join(lines)
