"""``collapselab sweep``: train a grid of runs (here, in workers, or on a cluster) and tabulate them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from collapselab._validation import InputError
from collapselab.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from collapselab.sweep import Sweep

DESCRIPTION = """\
Train every cell of a grid: the Cartesian product of KEY=V1,V2,... lists (times train.seed=0..S-1
with --seeds S), each cell a run folder OUT/NAME/<cell>. Writes OUT/NAME/sweep.json (the grid),
sweep.csv (one row per cell: swept values, seed, status, kNN and baselines, final loss, worst
verdict, steps, time) and report.html (the finished cells compared).

CONFIG, tried in order: an existing YAML file (layered like train --config; it may set
method.name and data.dataset); METHOD:DATASET (e.g. simsiam:digits); a shipped recipe name
(byol_digits, small/simclr_16px, batch1024/byol_cifar10; see `collapselab methods`).

Values: split at commas outside brackets and quotes, each parsed like a train override:
optim.lr=0.1,0.3 (two values), data.augment.crop_scale=[0.2,1.0],[0.4,1.0] (two lists),
'key="a,b"' (one string; the outer quotes are the shell's). A key with one value is fixed for
every cell. Cells are named
by the swept values, e.g. predictor=none,ema=off,seed=1 (a hash is appended when a value has
characters other than letters, digits and ._+-). Every cell's config is checked before any runs:
an unknown key is an error (exit 2); a combination the config refuses is recorded as invalid.

Resumable: rerunning the same command skips finished cells (completed or stopped), resumes cells
with a checkpoint and starts the rest; another grid in the same folder is an error (give --name).
Display-only keys (log.progress, log.tensorboard, log.wandb_project, log.wandb_mode, log.report)
are not part of the grid: a rerun may change them.
Exit 0 when no cell failed, 1 when one did, 2 on bad input."""

EPILOG = """\
examples:
  collapselab sweep byol_digits method.predictor=mlp,none --seeds 3
  collapselab sweep simsiam:digits --preset mechanisms --parallel 2 train.epochs=5
  collapselab sweep byol_digits optim.lr=0.3,1.0 --print-commands > cells.txt   # one line per cell (SLURM array)
  collapselab sweep byol_digits optim.lr=0.3,1.0 --collect                      # after the cells ran elsewhere"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sweep",
        help="train a grid of runs (KEY=V1,V2 lists, seeds, presets) and tabulate them",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs="*", metavar="CONFIG [KEY=V1,V2,... ...]",
                        help="the config (see above), then swept or fixed overrides")
    parser.add_argument("--seeds", type=int, metavar="S", help="also sweep train.seed=0..S-1")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="train N cells at a time in worker processes (default 1: in this process); each "
                             "worker gets train.threads=max(1, CPUs // N) unless you set train.threads")
    parser.add_argument("--preset", metavar="NAME",
                        help="add a preset grid: mechanisms = method.predictor {the config's, none} x "
                             "method.stop_gradient {true, false} x method.ema {the config's (0.99 if off), off}")
    parser.add_argument("--print-commands", action="store_true",
                        help="print one `collapselab train` command per cell and run nothing (writes sweep.json)")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: read the cells' folders into sweep.csv and report.html (CONFIG "
                             "and the grid may be left out when --name finds a sweep.json)")
    parser.add_argument("--out", default="runs", metavar="DIR", help="parent folder of the sweep (default runs)")
    parser.add_argument("--name", help="the sweep's folder name (default: the CONFIG's, plus the preset)")
    parser.set_defaults(func=run)
    return parser


def build(args: argparse.Namespace) -> Sweep:
    """The :class:`~collapselab.sweep.Sweep` the command line describes."""
    from collapselab.sweep import Sweep, parse_grid

    names = [t for t in args.args if "=" not in t]
    tokens = [t for t in args.args if "=" in t]
    if len(names) > 1:
        raise InputError(f"expected one CONFIG before the KEY=V1,V2 lists, got {names}")
    if not names:
        if args.collect and args.name and not tokens:
            return Sweep.from_folder(Path(args.out) / args.name)
        raise InputError("give a CONFIG (a YAML file, a recipe such as byol_digits, or METHOD:DATASET)"
                         + ("; or --name of a sweep to collect" if args.collect else ""))
    axes, fixed = parse_grid(tokens)
    return Sweep(names[0], axes=axes, fixed=fixed, seeds=args.seeds, preset=args.preset, out=args.out, name=args.name)


def run(args: argparse.Namespace) -> int:
    from collapselab.sweep import (
        CSV_FILE,
        collect,
        counts,
        print_commands,
        run_overview,
        run_sweep,
        table,
    )

    def warn(line: str) -> None:
        print(line, file=sys.stderr)

    try:
        if args.print_commands and args.collect:
            raise InputError("--print-commands and --collect do not go together: print, run the cells, then collect")
        sweep = build(args)
        if args.print_commands:
            for line in print_commands(sweep):
                # stdout: one runnable line per valid cell (line N = a SLURM array's task N); the
                # invalid cells' comments go to stderr
                print(line, file=sys.stderr if line.startswith("#") else sys.stdout)
            print(f"sweep.json written to {sweep.dir}/ (then: same command with --collect)", file=sys.stderr)
            return EXIT_OK
        if args.collect:
            sweep.check_definition()
            results = collect(sweep, warn=warn)
        else:
            results = run_sweep(sweep, args.parallel, warn=warn)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print("\n" + table(results))
    print(f"\n{run_overview(results)}")
    print(f"table: {sweep.dir / CSV_FILE}")
    report = sweep.dir / "report.html"
    if report.is_file():
        print(f"report: {report}")
    return EXIT_FAIL if counts(results).get("failed") else EXIT_OK
