"""FALCON: clustering quality and code usage as a function of the dictionary size c.

The shape of Sansone, Lebailly & Tuytelaars (ICML 2025)'s "larger dictionaries help" result, on a
budget this machine can run: for each c, FALCON is trained with the shipped recipe
(``configs/falcon_<dataset>.yaml``, only ``method.n_codes`` changes) and scored on the held-out
split:

* argmax-code clustering: NMI and Hungarian ACC of the codes against the labels (the paper's
  clustering protocol for FALCON), and code usage (codes used, perplexity, perplexity relative to
  min(c, N));
* k-means (k = number of classes) NMI/ACC and kNN top-1 of the backbone representation.

Barlow Twins trained with its own recipe on the same dataset and number of epochs is the
baseline row (k-means and kNN only: it has no codes). Every number is measured in this run.

CPU, digits (about 1 minute per row on 2 cores)::

    python benchmarks/falcon_dictionary.py
    python benchmarks/falcon_dictionary.py --codes 16 64 256 --epochs 40
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import torch

import collapselab
from collapselab.data import channel_stats, get_dataset
from collapselab.diagnostics import code_usage
from collapselab.engine.trainer import Normalizer
from collapselab.evaluation.clustering import code_clustering, kmeans_clustering


@torch.no_grad()
def score(run: collapselab.Run, dataset: str, train_images: torch.Tensor) -> dict[str, float]:
    method = run.method
    assert method is not None
    method.eval()
    test = get_dataset(dataset, "test")
    mean, std = channel_stats(train_images)
    out = method.embed(Normalizer(mean, std)(test.images))
    row = {f"kmeans_{k}": v for k, v in kmeans_clustering(out["repr"], test.labels).items() if k in ("nmi", "acc")}
    row["knn"] = float(run.summary.get("eval", {}).get("knn_top1", float("nan")))
    if "codes" in out:
        usage = code_usage(out["codes"])
        row.update(codes_used=usage["code_used"], perplexity=usage["code_perplexity"],
                   perplexity_ratio=usage["code_perplexity_ratio"])
        row.update({k: v for k, v in code_clustering(out["codes"], test.labels).items() if k in ("codes_nmi", "codes_acc")})
    row["alarms"] = len(run.summary.get("alarms", []))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--codes", type=int, nargs="+", default=[16, 64, 256, 1024, 4096, 16384])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true", help="skip the Barlow Twins row")
    args = parser.parse_args()

    common = ["log.progress=false", f"train.epochs={args.epochs}", f"train.seed={args.seed}", f"train.threads={args.threads}"]
    train_images = get_dataset(args.dataset, "train").images
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = f"run.out_dir={Path(tmp)}"
        for c in args.codes:
            with contextlib.redirect_stdout(io.StringIO()):
                run = collapselab.train("falcon", args.dataset, overrides=[*common, out_dir, f"method.n_codes={c}"])
            rows.append((f"falcon c={c}", score(run, args.dataset, train_images)))
            print(f"done: falcon c={c}", flush=True)
        if not args.no_baseline:
            with contextlib.redirect_stdout(io.StringIO()):
                run = collapselab.train("barlow_twins", args.dataset, overrides=[*common, out_dir])
            rows.append(("barlow_twins", score(run, args.dataset, train_images)))

    cols = ["codes_nmi", "codes_acc", "codes_used", "perplexity", "perplexity_ratio", "kmeans_nmi", "kmeans_acc",
            "knn", "alarms"]
    print(f"\n{args.dataset}, {args.epochs} epochs, seed {args.seed}; scores on the held-out split\n")
    print("| run | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in rows:
        cells = []
        for col in cols:
            v = row.get(col)
            cells.append("–" if v is None else (f"{v:.0f}" if col in ("codes_used", "alarms") else f"{v:.3f}"))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
