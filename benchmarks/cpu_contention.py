"""Training speed on a CPU shared with one busy process: quiet vs busy, thread policies side by side.

The main job (``collapselab train``: BYOL on the built-in digits) runs for ``--epochs`` epochs in a
fresh Python process per measurement, once on a quiet machine and once while one competing
CPU-bound process (``--hog``) runs, under each thread policy:

* ``adaptive`` — the default: ``train.threads`` = the CPUs this process may use, lowered while
  other processes keep a core busy (``train.adapt_threads=true``, see docs/performance.md);
* ``fixed`` — ``train.adapt_threads=false``: always every available CPU (PyTorch's default);
* ``passive`` — fixed threads with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP workers sleep
  instead of spinning);
* ``one-thread`` — ``train.threads=1``.

Each run reports the median training steps/s over its epochs after the first (the first holds
the warm-up); the table shows quiet and busy steps/s and the slowdown quiet / busy, the number
the target "falls by at most 2.5x" is about. Measurements alternate quiet and busy per policy so
drift hits both. On a 2-core machine (about 2-3 minutes)::

    python benchmarks/cpu_contention.py
    python benchmarks/cpu_contention.py --hog torch --policies adaptive fixed

``--hog spin`` is a pure-Python ``while True`` loop; ``--hog torch`` a single-threaded PyTorch
matrix-multiply loop (a process that also uses the floating-point units and caches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

POLICIES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "adaptive": ({"adapt_threads": True}, {}),
    "fixed": ({"adapt_threads": False}, {}),
    "passive": ({"adapt_threads": False}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "one-thread": ({"adapt_threads": False, "threads": 1}, {}),
}

HOGS = {
    "spin": "while True:\n    pass\n",
    "torch": (
        "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\n"
        "while True:\n    a = torch.tanh(a @ a.T / 16)\n"
    ),
}


def worker(args: argparse.Namespace) -> None:
    """Run the main job once in this process and print one JSON line with its epoch timings."""
    import collapselab

    train = {"epochs": args.epochs, **json.loads(args.train_overrides)}
    with tempfile.TemporaryDirectory() as out:
        run = collapselab.train(
            args.method, args.dataset,
            run={"name": "contention", "out_dir": out},
            train=train,
            log={"progress": False, "tensorboard": False},
            eval={"final": False},
        )
        epochs = [r for r in run.history if r["kind"] == "epoch"]
        batch = run.config.data.batch_size
        rates = [r["img_per_s"] / batch for r in epochs[1:]] or [r["img_per_s"] / batch for r in epochs]
        threads = [r.get("threads") for r in epochs]
    print(json.dumps({
        "steps_per_s": statistics.median(rates),
        "epoch_time_s": statistics.median(r["epoch_time_s"] for r in epochs[1:] or epochs),
        "threads_per_epoch": threads,
    }))


def measure(args: argparse.Namespace, policy: str) -> dict[str, Any]:
    train, env = POLICIES[policy]
    cmd = [sys.executable, __file__, "--worker", "--method", args.method, "--dataset", args.dataset,
           "--epochs", str(args.epochs), "--train-overrides", json.dumps(train)]
    result = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"worker for policy {policy!r} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="byol")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--policies", nargs="+", choices=sorted(POLICIES), default=list(POLICIES))
    parser.add_argument("--hog", choices=sorted(HOGS), default="spin")
    parser.add_argument("--repeats", type=int, default=1, help="quiet/busy pairs per policy (median)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train-overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.method} on {args.dataset}, {args.epochs} epochs per run, {cpus} CPUs, "
          f"hog: {args.hog}, repeats: {args.repeats}")
    results: dict[str, dict[str, Any]] = {}
    for policy in args.policies:
        quiet, busy = [], []
        for _ in range(args.repeats):
            quiet.append(measure(args, policy))
            hog = subprocess.Popen([sys.executable, "-c", HOGS[args.hog]])
            try:
                time.sleep(1.0)  # let the hog reach full speed before the run starts
                busy.append(measure(args, policy))
            finally:
                hog.kill()
                hog.wait()
        q = statistics.median(r["steps_per_s"] for r in quiet)
        b = statistics.median(r["steps_per_s"] for r in busy)
        results[policy] = {"quiet_steps_per_s": q, "busy_steps_per_s": b, "slowdown": q / b,
                           "busy_threads_per_epoch": busy[-1]["threads_per_epoch"],
                           "quiet_epoch_time_s": statistics.median(r["epoch_time_s"] for r in quiet),
                           "busy_epoch_time_s": statistics.median(r["epoch_time_s"] for r in busy)}

    print(f"\n{'policy':<12} {'quiet steps/s':>14} {'busy steps/s':>13} {'slowdown':>9}  "
          f"{'quiet s/epoch':>13} {'busy s/epoch':>12}")
    for policy, r in results.items():
        print(f"{policy:<12} {r['quiet_steps_per_s']:>14.1f} {r['busy_steps_per_s']:>13.1f} "
              f"{r['slowdown']:>8.2f}x  {r['quiet_epoch_time_s']:>13.3f} {r['busy_epoch_time_s']:>12.3f}")
    if "adaptive" in results:
        verdict = "meets" if results["adaptive"]["slowdown"] <= 2.5 else "MISSES"
        print(f"\ndefault (adaptive) slowdown {results['adaptive']['slowdown']:.2f}x {verdict} "
              "the target of <= 2.5x")
    if args.out:
        args.out.write_text(json.dumps({"cpus": cpus, "hog": args.hog, "results": results}, indent=2))


if __name__ == "__main__":
    main()
