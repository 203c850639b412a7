"""Composite-objective ablation: configs (a)-(d) of ``configs/composite/`` on one budget.

(a) alignment only, (b) + variance + covariance, (c) + uniformity, (d) + MLP predictor; no
stop-gradient, no EMA. Prints the final stable / effective rank of ``emb`` and ``repr``, the
final kNN top-1, the first collapse alarm, and the per-epoch stable / effective rank of ``emb``
(from each run's metrics.jsonl). Usage::

    python benchmarks/composite_ablation.py --epochs 20 --dataset digits --seed 0 --out runs/composite_ablation
"""

from __future__ import annotations

import argparse

import torch

import collapselab
from collapselab.config import recipe_dir
from collapselab.engine.logging import read_metrics

CONFIGS = ("a_alignment", "b_vic", "c_vic_uniformity", "d_vic_uniformity_predictor")


def run_one(name: str, args: argparse.Namespace) -> dict:
    run = collapselab.train(
        "composite", args.dataset, config=recipe_dir() / "composite" / f"{name}.yaml",
        log={"progress": False}, train={"threads": 1, "epochs": args.epochs, "seed": args.seed},
        run={"name": name, "out_dir": args.out},
    )
    s = run.summary
    epochs = [r for r in read_metrics(run.dir) if r.get("kind") == "epoch"]
    alarms = [a for a in s["alarms"] if a["mode"] in ("complete", "dimensional")]
    first = min(alarms, key=lambda a: a["step"]) if alarms else None
    metric = lambda part, key: s["diagnosis"].get(part, {}).get("metrics", {}).get(key, float("nan"))  # noqa: E731
    return {
        "name": name,
        "emb_srank": metric("emb", "stable_rank"), "emb_erank": metric("emb", "effective_rank"),
        "repr_srank": metric("repr", "stable_rank"), "repr_erank": metric("repr", "effective_rank"),
        "knn": s["eval"].get("knn_top1", float("nan")),
        "alarm": "none" if first is None else f"step {first['step']}: {first['mode']} {first['level']} ({first['name']})",
        "n_alarms": len(alarms),
        "per_epoch": [(r.get("stable_rank", float("nan")), r.get("effective_rank", float("nan"))) for r in epochs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/composite_ablation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [run_one(name, args) for name in CONFIGS]
    print(f"\ncomposite ablation: {args.dataset}, {args.epochs} epochs, seed {args.seed}\n")
    print("| config | emb srank | emb erank | repr srank | repr erank | kNN top-1 | collapse alarms | first alarm |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['emb_srank']:.2f} | {r['emb_erank']:.2f} | {r['repr_srank']:.2f} | "
              f"{r['repr_erank']:.2f} | {r['knn']:.3f} | {r['n_alarms']} | {r['alarm']} |")
    print("\nper-epoch stable rank / effective rank of emb:\n")
    print("| epoch | " + " | ".join(r["name"] for r in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for e in range(max(len(r["per_epoch"]) for r in rows)):
        cells = [f"{r['per_epoch'][e][0]:.1f} / {r['per_epoch'][e][1]:.1f}" if e < len(r["per_epoch"]) else "" for r in rows]
        print(f"| {e + 1} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
