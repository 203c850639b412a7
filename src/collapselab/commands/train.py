"""``collapselab train``: train a method, watch collapse live, print the diagnosis and kNN."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from collapselab._validation import InputError
from collapselab.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train an SSL method (default: BYOL on digits, under a minute on a CPU)",
        description=(
            "Train a method on a dataset with the shipped recipe configs/<method>_<dataset>.yaml, "
            "a YAML file (--config) and dotted overrides (optim.lr=0.1 method.predictor=none). "
            "Writes runs/<name>/ (config.yaml, metrics.jsonl, checkpoints/, summary.json) and "
            "prints the collapse diagnosis and the kNN accuracy beside its baselines. Exit 0 when "
            "done, 1 when training failed or --fail-on was reached, 2 on a bad config."
        ),
    )
    parser.add_argument("args", nargs="*", metavar="[METHOD [DATASET]] [KEY=VALUE ...]",
                        help="method and dataset names (default byol digits), then overrides such as train.epochs=5")
    parser.add_argument("--config", metavar="FILE", help="YAML config layered over the recipe")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoints/last.pt")
    parser.add_argument("--name", help="run folder name (run.name)")
    parser.add_argument("--auto-resume", action="store_true",
                        help="if run.out_dir/run.name already holds a checkpoint, resume it (a completed "
                             "run of the same length is left as it is); else start it: for job schedulers "
                             "that requeue (SLURM arrays, collapselab sweep --print-commands)")
    parser.add_argument("--fail-on", choices=("warning", "collapsed"),
                        help="exit with status 1 if the final diagnosis reaches this level")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run)
    return parser


def split_args(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Positional names (before any KEY=VALUE) and overrides."""
    names = [t for t in tokens if "=" not in t]
    overrides = [t for t in tokens if "=" in t]
    if len(names) > 2:
        raise InputError(f"expected at most METHOD and DATASET before the overrides, got {names}")
    return names, overrides


def run(args: argparse.Namespace) -> int:
    from collapselab.config import check_buildable, load_config, to_yaml
    from collapselab.engine.checkpoint import CheckpointError
    from collapselab.engine.trainer import TrainingError, resumed_config, train

    try:
        names, overrides = split_args(args.args)
        method = names[0] if names else None
        dataset = names[1] if len(names) > 1 else None
        if args.name:
            overrides.append(f"run.name={args.name}")
        if args.resume and names:
            raise InputError("--resume continues the saved run's method and dataset; drop METHOD/DATASET")
        if args.print_config:
            cfg = (resumed_config(args.resume, args.config, overrides)[0] if args.resume
                   else load_config(method, dataset, config_file=args.config, overrides=overrides))
            check_buildable(cfg)  # the names a run checks only when it builds them: refuse them here too
            print(to_yaml(cfg), end="")
            return EXIT_OK
        if args.resume and args.auto_resume:
            raise InputError("give --resume RUN_DIR or --auto-resume, not both")
        resume = args.resume
        if args.auto_resume:
            resume = existing_run(load_config(method, dataset, config_file=args.config, overrides=overrides))
            if resume == "done":
                return EXIT_OK
        if resume is not None:
            method = dataset = None
        try:
            result = train(method, dataset, config=args.config, overrides=overrides, resume=resume)
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: report, then cli.main's `interrupted`
            try:
                report_unfinished(err)
            except KeyboardInterrupt:  # a second one while writing it: the first decides the exit
                pass
            raise
    except (InputError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as err:
        print(f"training failed: {err}", file=sys.stderr)
        report_unfinished(err)
        return EXIT_FAIL
    from collapselab import distributed

    if distributed.get_rank() == 0:
        from collapselab.report import write_run_report

        html = write_run_report(result.dir) if result.config.log.report else None
        print(report(result.summary, str(result.dir), html))
    if args.fail_on:
        from collapselab.diagnostics import LEVELS

        if LEVELS.index(result.summary["worst_verdict"]) >= LEVELS.index(args.fail_on):
            return EXIT_FAIL
    return EXIT_OK


def report_unfinished(err: BaseException) -> Path | None:
    """``report.html`` of a run that failed or was interrupted, its path printed as after a
    finished run. The folder is ``err.run_dir`` (set by ``Trainer.fit``; None on ranks other than
    0); :func:`collapselab.report.write_unfinished_report` decides whether to write and turns a
    failing report into a one-line warning, never the run's own error or exit status."""
    run_dir = getattr(err, "run_dir", None)
    if run_dir is None:
        return None
    from collapselab.report import write_unfinished_report

    html = write_unfinished_report(run_dir)
    if html is not None:
        print(f"report: {html}")
    return html


def existing_run(config: Any) -> Any:
    """``--auto-resume``: the run folder to resume, ``"done"`` for a completed run of the same
    length (nothing to do), or None to start a new run."""
    from collapselab.config import check_same_run
    from collapselab.runs import RunFolder

    if not config.run.name:
        raise InputError("--auto-resume needs a run name (--name or run.name) to find the run again")
    folder = RunFolder(Path(config.run.out_dir) / config.run.name)
    if not folder.has_checkpoint():
        return None
    check_same_run(folder.config_dict(), config.method.name, config.data.dataset, folder.path, how="--auto-resume")
    saved = folder.config_dict().get("train", {})
    same_length = all(saved.get(key) == getattr(config.train, key) for key in ("epochs", "time_budget")) and (
        config.train.steps is None or saved.get("steps") == config.train.steps)
    if folder.summary().get("status") == "completed" and same_length:
        print(f"{folder.path}: already completed; nothing to do (--auto-resume)")
        return "done"
    return folder.path


def report(summary: dict[str, Any], run_dir: str, html: Any = None) -> str:
    """The end-of-run text: diagnosis per watched embedding, kNN beside the baselines, where files are."""
    from collapselab.diagnostics import Diagnosis

    lines = [f"\n{summary['method']} on {summary['dataset']}: {summary['status']} after "
             f"{summary['epochs_completed']} epochs, {summary['steps']} steps, {summary['wall_time_s']:.1f} s"
             + (f" ({summary['throughput_img_per_s']:.0f} img/s)" if summary.get("throughput_img_per_s") else "")]
    final = summary.get("final_verdict") or {}
    for name, d in summary["diagnosis"].items():
        metrics = {k: (float("nan") if v is None else v) for k, v in d["metrics"].items()}
        verdict, reasons = dict(d["verdict"]), dict(d["reasons"])
        for mode, v in (final.get(name) or {}).items():  # the end-of-run verdict, not only the last check's
            verdict[mode] = v["level"]
            reasons[mode] = (f"since step {v['since']}: " if v.get("since") is not None else "") + v["reason"]
        lines += ["", f"== '{name}' ({'backbone features' if name == 'repr' else 'projector output' if name == 'emb' else name})",
                  str(Diagnosis(metrics, verdict, reasons))]
    alarms = summary.get("alarms") or []
    lines.append("")
    lines.append(f"alarms: {len(alarms)}")
    for a in alarms:
        lines.append(f"  step {a['step']}: {a['mode']} {a['level']} in '{a['name']}': {a['reason']}")
    if alarms and summary.get("collapse_hints"):
        lines.append("  hints: " + "; ".join(summary["collapse_hints"]))
    ev = summary.get("eval") or {}
    if "knn_top1" in ev:
        lines += ["", f"kNN top-1 on the held-out split of {summary['dataset']}:"]
        for label, key in (("trained backbone", "knn_top1"), ("raw pixels", "baseline_pixels_knn_top1"),
                           ("untrained backbone", "baseline_random_knn_top1")):
            if key in ev:
                lines.append(f"  {label:<20} {100 * ev[key]:5.1f} %")
    files = [name for name in ("config.yaml", "metrics.jsonl", "spectra.npz", "checkpoints/last.pt", "summary.json",
                               "report.html") if (Path(run_dir) / name).exists()]
    lines += ["", f"run written to {run_dir}/ ({', '.join(files)})"]
    if html is not None:
        lines.append(f"report: {html}")
    return "\n".join(lines)
