"""Trainer step time on the CPU, NCHW vs channels-last (NHWC), for the shipped small-image recipes.

For each case, two :class:`~collapselab.engine.trainer.Trainer` objects are built from the same
config except ``train.channels_last`` (``off`` / ``on``), and their ``_step`` (augmentation,
forward, loss, backward, optimiser; the whole training step) is timed alternately on the same
uint8 batch: ``--rounds`` rounds of ``--steps`` steps each after 3 warm-up steps, median per
round. The ratio NCHW / NHWC is the speed-up of ``train.channels_last=auto`` on the CPU.

    python benchmarks/channels_last_cpu.py --data /tmp/c16 --data32 /tmp/c32   # npz folders
    python benchmarks/channels_last_cpu.py                                      # digits only

``--data`` / ``--data32``: ``npz`` folders of 16-px and 32-px RGB images (any; e.g. made by
``benchmarks/quality_budget.py``'s data preparation); without them only the digits cases run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

from collapselab.config import load_config
from collapselab.engine.trainer import Trainer


def step_ms(trainer: Trainer, images: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer._step(images)
    return (time.perf_counter() - start) / steps * 1000


def compare(method: str, dataset: str, threads: int, steps: int, rounds: int, **sections: Any) -> tuple[float, float]:
    trainers = {}
    for layout in ("off", "on"):
        config = load_config(method, dataset, train={"threads": threads, "adapt_threads": False, "epochs": 1,
                                                     "channels_last": layout},
                             log={"progress": False, "tensorboard": False}, **sections)
        trainer = Trainer(config, tempfile.mkdtemp(prefix="channels_last_"))
        trainer.setup()
        trainers[layout] = trainer
    images = next(iter(trainers["off"].loader))[0]
    for trainer in trainers.values():
        step_ms(trainer, images, 3)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for layout, trainer in trainers.items():
            times[layout].append(step_ms(trainer, images, steps))
    return statistics.median(times["off"]), statistics.median(times["on"])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="npz folder of 16-px images")
    parser.add_argument("--data32", help="npz folder of 32-px images")
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    cases: list[tuple[str, str, dict[str, Any]]] = [(m, "digits", {}) for m in args.methods]
    for folder, size in ((args.data, 16), (args.data32, 32)):
        if folder:
            cases += [(m, "npz", {"data": {"data_dir": folder}, "run": {"recipe": f"small/{m}_{size}px"}})
                      for m in args.methods]
    rows = []
    print(f"{'case':<34} {'NCHW ms/step':>13} {'NHWC ms/step':>13} {'NCHW/NHWC':>10}")
    for method, dataset, sections in cases:
        nchw, nhwc = compare(method, dataset, args.threads, args.steps, args.rounds, **sections)
        label = f"{method} {sections.get('run', {}).get('recipe', dataset)}"
        rows.append({"case": label, "nchw_ms": nchw, "nhwc_ms": nhwc, "ratio": nchw / nhwc})
        print(f"{label:<34} {nchw:>13.1f} {nhwc:>13.1f} {nchw / nhwc:>9.2f}x")
    return rows


if __name__ == "__main__":
    main()
