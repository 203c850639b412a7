"""Training throughput: collapselab's whole training loop vs a minimal plain-PyTorch loop.

Both sides train the same network (the backbone and heads of ``build_method``), with the same
loss function from :mod:`collapselab.losses`, the same optimiser (``build_optimizer("lars")``,
the trainer's default) and the same batched augmentation (``build_augment(<method's recipe>)``
with the data's mean/std) on the same synthetic uint8 32x32 RGB images, so the ratio measures
the loop's overhead only:

* ``plain``: shuffle indices, index the uint8 tensor, augment, forward, loss, backward, step
  (and BYOL's EMA update with ``torch._foreach_lerp_``); nothing else.
* ``collapselab``: ``collapselab.train(...)`` on the same images written as an ``npz`` dataset,
  with the monitor and evaluation off and everything else as a user gets it (LR schedule, loss
  checks, metrics.jsonl / TensorBoard logging, checkpoint at the end of the epoch outside the
  timed steps). Its rate comes from its own timings in metrics.jsonl: the images of the steps
  after the ``--warmup`` steps over the time they took.

Measurements alternate (plain, collapselab, plain, collapselab, ...) and the table shows
medians of ``--repeats``; the overhead ratio is plain img/s / collapselab img/s (target <= 1.10).
On a machine whose load drifts (shared CPUs) whole runs are noisy, so the table also shows a
"step overhead": ``Trainer._step`` (a trainer built on the same data) and the plain step
timed alternately step by step on the same batches, median over median.

CPU (default: about 3 minutes on 2 idle cores, more on a shared machine; more steps and
repeats, e.g. ``--steps 8 --repeats 3``, give steadier numbers)::

    python benchmarks/train_throughput.py

CUDA: seconds per epoch of ResNet-18 (full width) on 50,000 synthetic CIFAR-10-sized images::

    python benchmarks/train_throughput.py --device cuda

The epoch mode runs on the CPU with tiny sizes too (to check the code path)::

    python benchmarks/train_throughput.py --epoch --images 512 --batch-size 64 \\
        --backbones resnet18_quarter --methods simclr --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import collapselab
from collapselab.config import load_config
from collapselab.data import build_augment
from collapselab.data.augment import channel_stats
from collapselab.engine.optim import build_optimizer
from collapselab.engine.trainer import Trainer
from collapselab.losses import negative_cosine, nt_xent
from collapselab.methods import build_method, method_class
from collapselab.models import build_backbone

BACKBONES = {
    # name: (collapselab backbone name, backbone arguments besides in_channels)
    "small_cnn": ("small_cnn", {}),
    "resnet18_quarter": ("resnet18", {"stem": "cifar", "width": 0.25}),
    "resnet18": ("resnet18", {"stem": "cifar", "width": 1.0}),
}
OPTIM = {"name": "lars", "lr": 0.3, "weight_decay": 1e-6, "momentum": 0.9, "eta": 0.001}


def synthetic_images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random uint8 RGB 32x32 images, (n, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def write_npz(images: torch.Tensor, folder: Path) -> None:
    labels = np.zeros(len(images), dtype=np.int64)
    np.savez(folder / "train.npz", x=images.permute(0, 2, 3, 1).numpy(), y=labels)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, amp: str):
    """The trainer's AMP choice (``train.amp``): auto = bf16 on CUDA, off on CPU."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------- plain PyTorch


def plain_loss(method: torch.nn.Module, name: str, views: list[torch.Tensor]) -> torch.Tensor:
    """The forward and loss written out by hand on the method's modules."""
    if name == "simclr":
        z1 = method.projector(method.backbone(views[0]))
        z2 = method.projector(method.backbone(views[1]))
        return nt_xent(z1, z2, temperature=method.config.temperature)
    if name == "byol":
        online, target = [], []
        for x in views[:2]:
            online.append(method.predictor(method.projector(method.backbone(x))))
            with torch.no_grad():
                target.append(method.target.net(x))
        return (2 + 2 * negative_cosine(online[0], target[1])) + (
            2 + 2 * negative_cosine(online[1], target[0])
        )
    raise SystemExit(f"no plain loop for method {name!r} (choose byol or simclr)")


def make_plain_step(args, name: str, backbone_key: str, images: torch.Tensor):
    """(step(batch), batches(count), images on the device) of the plain loop."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone_name, kwargs = BACKBONES[backbone_key]
    method = build_method(
        method_class(name).config_class(), build_backbone(backbone_name, in_channels=3, **kwargs)
    ).to(device)
    method.train()
    data = images.to(device)
    mean, std = channel_stats(data)
    augment = build_augment({"recipe": method_class(name).default_augment, "mean": mean, "std": std})
    optimizer = build_optimizer(
        OPTIM["name"], method, lr=OPTIM["lr"] * args.batch_size / 256,
        weight_decay=OPTIM["weight_decay"], momentum=OPTIM["momentum"], eta=OPTIM["eta"],
    )
    generator = torch.Generator(device=device).manual_seed(1)
    online = list(method.backbone.parameters()) + list(method.projector.parameters())
    target = list(method.target.net.parameters()) if name == "byol" else []
    online_buffers = list(method.backbone.buffers()) + list(method.projector.buffers())

    def step(batch: torch.Tensor) -> None:
        views = augment(batch, generator)
        with autocast_for(device, args.amp):
            loss = plain_loss(method, name, views)
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
        if target:
            with torch.no_grad():
                torch._foreach_lerp_(target, [p.detach() for p in online], 1 - 0.99)
                for t, o in zip(method.target.net.buffers(), online_buffers, strict=True):
                    t.copy_(o)

    def batches(count: int):
        order = torch.randperm(len(data), device=device, generator=generator)
        for i in range(min(count, len(data) // args.batch_size)):  # full batches of one epoch
            yield data[order[i * args.batch_size : (i + 1) * args.batch_size]]

    return step, batches, data


def plain_run(args, name: str, backbone_key: str, images: torch.Tensor) -> tuple[float, float]:
    """(images/s, seconds per measured epoch or nan) of the plain loop."""
    device = torch.device(args.device)
    step, batches, data = make_plain_step(args, name, backbone_key, images)
    per_epoch = len(data) // args.batch_size
    if args.epoch:
        for batch in batches(per_epoch):  # warm-up epoch
            step(batch)
        synchronize(device)
        start = time.perf_counter()
        for batch in batches(per_epoch):
            step(batch)
        synchronize(device)
        seconds = time.perf_counter() - start
        return per_epoch * args.batch_size / seconds, seconds
    it = batches(min(per_epoch, args.warmup + args.steps))
    for _ in range(args.warmup):
        step(next(it))
    synchronize(device)
    start = time.perf_counter()
    done = 0
    for batch in it:
        step(batch)
        done += 1
    synchronize(device)
    return done * args.batch_size / (time.perf_counter() - start), math.nan


# --------------------------------------------------------------------------- collapselab


def library_overrides(args, backbone_key: str, data_dir: Path, out_dir: Path, tag: str, steps: int):
    backbone_name, kwargs = BACKBONES[backbone_key]
    return {
        "model": {"backbone": backbone_name, "backbone_args": dict(kwargs)},
        "data": {"dataset": "npz", "data_dir": str(data_dir), "batch_size": args.batch_size,
                 "knn_split": None},
        "optim": dict(OPTIM),
        "train": {"epochs": 2 if args.epoch else 1, "device": args.device, "amp": args.amp,
                  "threads": args.threads, "seed": 0,
                  "max_steps_per_epoch": None if args.epoch else steps},
        # the record at step == warmup gives the time of the warm-up steps (default every: 10)
        "log": {"progress": False, "every": 10 if args.epoch or args.warmup <= 1 else args.warmup},
        "monitor": {"enabled": False},
        "eval": {"final": False, "knn_every": 0},
        "run": {"name": tag, "out_dir": str(out_dir)},
    }


def library_run(args, name: str, backbone_key: str, data_dir: Path, out_dir: Path, tag: str):
    """(images/s, seconds per measured epoch or nan) of ``collapselab.train``."""
    per_epoch = len(np.load(data_dir / "train.npz")["y"]) // args.batch_size
    steps = min(per_epoch, args.warmup + args.steps)
    overrides = library_overrides(args, backbone_key, data_dir, out_dir, tag, steps)
    run = collapselab.train(name, "npz", **overrides)
    records = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if args.epoch:
        last = epochs[-1]
        return last["img_per_s"], last["epoch_time_s"]
    batch = args.batch_size * run.summary["world_size"]
    warm = [r for r in records if r.get("kind") == "train" and r["step"] == args.warmup]
    warm_seconds = args.warmup * batch / warm[0]["img_per_s"] if args.warmup else 0.0
    total_seconds = epochs[-1]["epoch_time_s"]
    return (steps - args.warmup) * batch / (total_seconds - warm_seconds), math.nan


def interleaved_step_ratio(args, name: str, backbone_key: str, images: torch.Tensor,
                           data_dir: Path, out_dir: Path) -> float:
    """Median time of ``Trainer._step`` over that of the plain step, alternating step by step on
    the same batches (robust to a machine whose load drifts; the loop around the step excluded)."""
    config = load_config(name, "npz", **library_overrides(args, backbone_key, data_dir, out_dir,
                                                           f"{name}_{backbone_key}_steps", 1))
    trainer = Trainer(config, out_dir / f"{name}_{backbone_key}_steps")
    trainer.setup()
    trainer.method.train()
    plain_step, batches, _ = make_plain_step(args, name, backbone_key, images)
    device = torch.device(args.device)

    def library_step(batch: torch.Tensor) -> None:
        trainer._step(batch)
        trainer.global_step += 1

    plain_times, library_times = [], []
    for i, batch in enumerate(batches(args.warmup + args.steps)):
        order = ((plain_step, plain_times), (library_step, library_times))
        for fn, times in order if i % 2 == 0 else order[::-1]:
            synchronize(device)
            start = time.perf_counter()
            fn(batch)
            synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    trainer.logger.close()
    return statistics.median(library_times) / statistics.median(plain_times)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--methods", nargs="+", default=["byol", "simclr"], choices=("byol", "simclr"))
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES),
                        help="default: small_cnn resnet18_quarter (cpu), resnet18 (cuda)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None,
                        help="measured steps (default: 4 small_cnn, 2 for ResNets)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before measuring")
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements per side")
    parser.add_argument("--images", type=int, default=None,
                        help="synthetic images (default: 2048 cpu, 50000 cuda)")
    parser.add_argument("--epoch", action="store_true",
                        help="time whole epochs (seconds per epoch; default with --device cuda)")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-step-check", action="store_true",
                        help="skip the step-by-step interleaved Trainer._step vs plain step timing")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    cuda = args.device == "cuda"
    args.epoch = args.epoch or cuda
    args.images = args.images or (50_000 if cuda else 2048)
    backbones = args.backbones or (["resnet18"] if cuda else ["small_cnn", "resnet18_quarter"])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    steps_arg = args.steps

    images = synthetic_images(args.images)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch_size} "
          f"images={args.images} load(1 min)={load:.2f} torch={torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, out_dir = Path(tmp) / "data", Path(tmp) / "runs"
        data_dir.mkdir()
        write_npz(images, data_dir)
        for backbone in backbones:
            args.steps = steps_arg or (4 if backbone == "small_cnn" else 2)
            for name in args.methods:
                plain, lib, plain_s, lib_s = [], [], [], []
                for rep in range(args.repeats):
                    rate, seconds = plain_run(args, name, backbone, images)
                    plain.append(rate)
                    plain_s.append(seconds)
                    rate, seconds = library_run(args, name, backbone, data_dir, out_dir,
                                                f"{name}_{backbone}_{rep}")
                    lib.append(rate)
                    lib_s.append(seconds)
                step_ratio = math.nan if args.no_step_check else interleaved_step_ratio(
                    args, name, backbone, images, data_dir, out_dir)
                p, c = statistics.median(plain), statistics.median(lib)
                rows.append((name, backbone, p, c, p / c, step_ratio, statistics.median(plain_s),
                             statistics.median(lib_s)))
                print(f"  {name} {backbone}: plain {[round(x) for x in plain]} "
                      f"collapselab {[round(x) for x in lib]} img/s; step ratio {step_ratio:.3f}",
                      flush=True)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    header = (f"{'method':8} {'backbone':18} {'plain img/s':>12} {'collapselab img/s':>18} "
              f"{'overhead':>9} {'step overhead':>14}")
    if args.epoch:
        header += f" {'plain s/epoch':>14} {'collapselab s/epoch':>20}"
    print()
    print(header)
    for name, backbone, p, c, ratio, step_ratio, ps, cs in rows:
        line = f"{name:8} {backbone:18} {p:12.0f} {c:18.0f} {ratio:9.3f} {step_ratio:14.3f}"
        if args.epoch:
            line += f" {ps:14.2f} {cs:20.2f}"
        print(line)
    print(f"\noverhead = plain img/s / collapselab img/s of whole runs (target <= 1.10), medians "
          f"of {args.repeats} alternating runs; step overhead = median Trainer._step time / median "
          f"plain step time, alternating step by step; load(1 min) at the end {load_end:.2f}")


if __name__ == "__main__":
    main()
