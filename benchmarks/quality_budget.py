"""Representation quality at a fixed wall-clock budget: collapselab vs a plain lightly-style loop.

For each method (SimCLR and BYOL by default; ``--methods`` takes any of collapselab's), in one
process, one run after the other (never at once):

* **collapselab**: ``collapselab.train(method, "npz", ...)`` with ``train.time_budget`` set to
  ``--budget`` and the recipe collapselab picks for the data and device (no backbone is passed
  unless ``--backbone`` is); ``--config`` / ``--set`` pass through.
* **plain** (SimCLR and BYOL only; the other methods' rows show collapselab beside the floors):
  about a hundred lines of plain PyTorch + torchvision written after lightly's CIFAR-10
  benchmark (``docs/source/getting_started/benchmarks/cifar10_benchmark.py``): per-image
  torchvision augmentation in a ``DataLoader`` (``--workers`` processes), SGD lr 0.06·B/128,
  momentum 0.9, weight decay 5e-4, cosine LR to 0 over the planned steps, no warm-up.
  SimCLR: head in→512→128 (BN + ReLU hidden, lightly's ``SimCLRProjectionHead``), NT-Xent τ 0.5.
  BYOL: projector in→1024→256 and predictor 256→1024→256 (BN + ReLU hidden), negative cosine
  symmetrised, EMA target with momentum 0.99 → 1 on a cosine (lightly's benchmark used a fixed
  0.99 up to 2022, a cosine schedule since). Views: RandomResizedCrop(size, scale (0.08, 1)),
  flip 0.5, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 (lightly's cj_strength 0.5 × (0.8, 0.8,
  0.8, 0.2)), grayscale 0.2, no blur (lightly drops it at CIFAR sizes), normalised. On CUDA it
  uses bf16 autocast and cuDNN autotuning (one line each, so the plain side is not handicapped).
* **raw pixels** and the **untrained** backbone (the same network, freshly initialised under the
  same seed) as floors. Raw pixels are the images flattened and scaled to ``[0, 1]``, what
  ``collapselab eval`` reports as ``baseline_pixels`` and what the targets are stated against;
  the same kNN on per-channel standardised pixels, a stronger floor (the cosine then compares
  deviations from the mean image), is printed beside them as ``std pixels``.

How it is made fair. Both sides train on the same derived dataset and the same network: the plain
side builds the backbone that collapselab's resolved config names, with collapselab's own factory
(``build_backbone_for``), initialised under the same seed. Both get the same budget, counted from
the start of training, setup included (collapselab: ``Trainer.fit``; plain: building the heads,
optimiser and loader), to the last step; preparing the data and scoring are not counted. Both
plan their step count from a short timing and run their schedules over that plan (the plain side
times the steps after two untimed ones, at least 5 and 2 % of the budget (at most 20 s), as
collapselab does, plans the steps that fit in what is left, and stops at the plan or the budget,
whichever comes first). Both are scored by the same code, on the same images: weighted
kNN (Wu et al. 2018, the InstDisc protocol that lightly and solo-learn report; cosine, k = 200,
τ = 0.1, :func:`collapselab.evaluation.knn_accuracy`) on the backbone's features
(:func:`collapselab.evaluation.extract_features`) of un-augmented images normalised with the
training images' per-channel mean and std; bank = the training images, queries = the validation
images. Raw pixels: the same kNN on the flattened pixels in ``[0, 1]``; std pixels: on the
flattened normalised pixels.

Data. ``--data DIR`` is a folder in the layout ``dataset=npz`` reads: ``train.npz`` and
``test.npz``, each with ``x`` (N, H, W, C) uint8, ``y`` and optionally ``classes``. The CIFAR-10
image pack (docs/data.md) ships its decoder, which writes exactly that (45,000
training images and a stratified 5,000-image validation split as test.npz)::

    python decode_cifar10_jpeg.py /tmp/cifar10

From it the benchmark writes, once, into a temporary folder: a class-balanced seeded subset of
``--train-images`` training images and of ``--queries`` validation images (0 = all), resized to
``--size`` with antialiased bilinear downsampling done once (float, then rounded back to uint8).

Targets (checked and printed): CPU, 2 cores, 120 s, the recipe's small CNN at 16x16, 5,000
training and 2,000 validation images: collapselab ≥ raw pixels + 12 points and ≥ plain + 5 points,
for SimCLR and BYOL; on any data, on a CPU, collapselab above the untrained network and raw
pixels. GPU (H100/H200 class), 120 s, ResNet-18 at 32x32 on all 45,000 / 5,000
images: collapselab ≥ 75 % and ≥ plain + 10 points.

CPU (the default; about 2 × (budget + 20 s) per method and repeat, ~9 minutes at 120 s)::

    python benchmarks/quality_budget.py --data /tmp/cifar10

GPU::

    python benchmarks/quality_budget.py --data /tmp/cifar10 --device cuda --size 32 \\
        --train-images 0 --queries 0 --backbone resnet18

``--workers`` defaults to 2 on the CPU (on a 2-core machine, SimCLR, small CNN, 16x16, batch 256,
20-s runs: 0, 1 and 2 workers gave about 220, 870 and 1,460 img/s) and to every CPU this process
may use on CUDA, where per-image augmentation feeds the GPU (lightly's benchmark uses 8).

The table shows, per side, kNN top-1 (%) and the steps, epochs, img/s (images over the time used)
and seconds used; the JSON (``--out``) holds every number, the budget plan included. Record the
numbers in docs/performance.md (with the card, the CPU count and how busy the machine was).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning (as in tests/conftest.py): on a shared machine
# spinning threads slow the other side's work. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import collapselab
from collapselab.config import parse_overrides
from collapselab.data import get_dataset
from collapselab.data.augment import channel_stats
from collapselab.engine.threads import available_cpus
from collapselab.engine.trainer import Normalizer, build_backbone_for, resolve_device
from collapselab.evaluation import extract_features, knn_accuracy
from collapselab.methods import available_methods

METHODS = ("simclr", "byol")  # the default rows: the methods with a plain loop and a margin target
ALL_METHODS = tuple(available_methods())
KNN_K, KNN_TEMPERATURE = 200, 0.1
PLAIN_WARMUP_STEPS, PLAIN_PROBE_STEPS = 2, 5
TARGETS = {  # points of kNN top-1; None = not part of that target
    "cpu": {"min_top1": None, "over_raw": 12.0, "over_plain": 5.0},
    "cuda": {"min_top1": 75.0, "over_raw": None, "over_plain": 10.0},
}
TARGET_SETTINGS = {
    "cpu": {"size": 16, "train_images": 5000, "queries": 2000, "budget": 120.0},
    "cuda": {"size": 32, "train_images": 0, "queries": 0, "budget": 120.0, "backbone": "resnet18"},
}


# --------------------------------------------------------------------------- data


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n // C`` images of each of the C classes in ``labels``, drawn without
    replacement under ``seed``; ``n = 0`` → every index."""
    if n == 0:
        return np.arange(len(labels))
    classes = np.unique(labels)
    per_class = n // len(classes)
    if per_class < 1:
        raise ValueError(f"{n} images cannot hold one image of each of {len(classes)} classes")
    rng = np.random.default_rng(seed)
    picks = []
    for label in classes:
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(f"class {label} has {len(members)} images; {per_class} are needed")
        picks.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picks))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 → (N, C, size, size) uint8 by antialiased bilinear interpolation
    (``F.interpolate(..., antialias=True)`` on floats, rounded and clamped back to 0..255)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images.clone()
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def prepare_data(source: Path, dest: Path, *, train_images: int, queries: int, size: int,
                 seed: int) -> dict[str, Any]:
    """Write ``dest/train.npz`` and ``dest/test.npz`` (x (N, size, size, C) uint8, y, classes):
    class-balanced subsets of ``source``'s train and test splits, resized once."""
    dest.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    for split, n in (("train", train_images), ("test", queries)):
        data = get_dataset("npz", split, data_dir=source)
        labels = data.labels.numpy()
        index = balanced_subset(labels, n, seed)
        images = resize_images(data.images[torch.from_numpy(index)], size)
        np.savez(dest / f"{split}.npz", x=images.permute(0, 2, 3, 1).numpy(), y=labels[index],
                 classes=np.array(data.classes))
        info[split] = {"images": len(index), "source_images": len(labels),
                       "per_class": np.bincount(labels[index]).tolist(),
                       "shape": list(images.shape[1:])}
    return info


# --------------------------------------------------------------------------- evaluation


def knn_top1(model: nn.Module, bank: Any, queries: Any, transform: nn.Module,
             device: torch.device) -> float:
    """kNN top-1 (in points) of ``model``'s features of un-augmented, normalised images."""
    batch = 1024 if device.type == "cuda" else 512
    feats = [extract_features(model, split.images, transform=transform, batch_size=batch,
                              device=device) for split in (bank, queries)]
    scores = knn_accuracy(feats[0], bank.labels, feats[1], queries.labels, k=KNN_K,
                          temperature=KNN_TEMPERATURE)
    return 100.0 * scores["knn_top1"]


def fresh_backbone(config: Any, shape: tuple[int, int, int], seed: int) -> nn.Module:
    """The backbone ``config`` names, built by collapselab's factory under ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone_for(config, *shape)


# --------------------------------------------------------------------------- (a) collapselab


def run_collapselab(method: str, data_dir: Path, out_dir: Path, args: argparse.Namespace,
                    seed: int, n_train: int) -> tuple[Any, dict[str, Any]]:
    """Train with collapselab for ``args.budget`` seconds; returns the Run and what it used."""
    sections: dict[str, Any] = {
        "run": {"out_dir": str(out_dir), "name": f"{method}_seed{seed}"},
        "data": {"data_dir": str(data_dir)},
        "train": {"device": args.device, "seed": seed},
        "log": {"progress": False, "tensorboard": False},
        "eval": {"final": False},
    }
    if args.backbone:
        sections["model"] = {"backbone": args.backbone, "backbone_args": args.backbone_args}
    common = {"config": args.config, "overrides": args.set}
    sections["train"]["time_budget"] = f"{args.budget:g}s"
    how = "train.time_budget"
    run = collapselab.train(method, "npz", **common, **sections)
    s = run.summary
    budget = s.get("budget") or {}
    time_used = budget.get("time_used_s", s["wall_time_s"])
    images = s["steps"] * s["global_batch_size"]
    used = {
        "how": how,
        "steps": s["steps"],
        "epochs": images / n_train,
        "time_used_s": time_used,
        "img_per_s": images / time_used,  # as the plain side's: images over the time used
        "train_time_s": s["train_time_s"],  # the steps alone (no monitor, kNN, checkpoints)
        "train_img_per_s": s["throughput_img_per_s"],
        "batch_size": s["global_batch_size"],
        "budget": budget or None,
    }
    return run, used


def describe_recipe(run: Any) -> str:
    """What collapselab trained with: its recipe (``run.recipe``, when this version records it)
    and the backbone, optimiser and batch of the resolved config."""
    c, s = run.config, run.summary
    label = getattr(c.run, "recipe", None) or s.get("recipe")
    args = json.dumps(dict(c.model.backbone_args), sort_keys=True) if c.model.backbone_args else ""
    parts = [f"{c.model.backbone}{args}", f"{c.optim.name} lr {c.optim.lr:g}",
             f"batch {c.data.batch_size}", f"augment {s.get('augment', {}).get('recipe')}"]
    return (f"{label}: " if label else "") + ", ".join(parts)


# --------------------------------------------------------------------------- (b) plain loop


def plain_transform(size: int, mean: list[float], std: list[float]) -> Any:
    """lightly's SimCLR view for CIFAR sizes, per image (torchvision v2 when present)."""
    try:
        from torchvision.transforms import v2 as T

        tail = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    except ImportError:
        import torchvision.transforms as T

        tail = [T.ToTensor()]
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
        *tail, T.Normalize(mean, std)])


class TwoViews(torch.utils.data.Dataset):
    """Two independently augmented views of each (H, W, C) uint8 image, as PIL images."""

    def __init__(self, images: np.ndarray, transform: Any) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        array = self.images[i]
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)  # 1 channel: "L"
        return self.transform(image), self.transform(image)


def mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Chen et al. 2020 eq. 1: cross-entropy of each of the 2N views against the 2N − 1 others."""
    z = F.normalize(torch.cat([z0, z1]).float(), dim=1)
    n = z0.shape[0]
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, target)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def plain_train(method: str, backbone: nn.Module, images: np.ndarray, mean: list[float],
                std: list[float], *, budget_s: float, batch: int, workers: int,
                device: torch.device, seed: int) -> dict[str, Any]:
    """Train ``backbone`` (in place) lightly-style for ``budget_s`` seconds; returns what it used."""
    start = time.perf_counter()  # the budget counts from here, setup included (as collapselab's)
    torch.manual_seed(seed)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    dim = backbone.out_dim
    projector = mlp(dim, 512, 128) if method == "simclr" else mlp(dim, 1024, 256)
    online = nn.Sequential(backbone, projector).to(device)
    predictor = mlp(256, 1024, 256).to(device) if method == "byol" else None
    target = copy.deepcopy(online).requires_grad_(False) if method == "byol" else None
    params = list(online.parameters()) + (list(predictor.parameters()) if predictor else [])
    base_lr = 0.06 * batch / 128
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(
        TwoViews(images, plain_transform(images.shape[1], mean, std)), batch_size=batch,
        shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=cuda, generator=torch.Generator().manual_seed(seed))
    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", torch.bfloat16) if cuda else contextlib.nullcontext()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    plan, step, loss = None, 0, torch.zeros(())
    while plan is None or step < plan:
        for v0, v1 in loader:
            if (plan is not None and step >= plan) or time.perf_counter() - start >= budget_s:
                plan = step
                break
            cosine = 0.5 * (1 + math.cos(math.pi * step / plan)) if plan else 1.0
            for group in optimizer.param_groups:
                group["lr"] = base_lr * cosine
            v0, v1 = v0.to(device, non_blocking=True), v1.to(device, non_blocking=True)
            with autocast():
                if predictor is None:
                    loss = nt_xent(online(v0), online(v1))
                else:
                    momentum = 1 - 0.01 * cosine  # 0.99 → 1
                    with torch.no_grad():
                        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()),
                                             1 - momentum)
                        z0, z1 = target(v0), target(v1)
                    loss = 0.5 * (negative_cosine(predictor(online(v0)), z1)
                                  + negative_cosine(predictor(online(v1)), z0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == PLAIN_WARMUP_STEPS:
                sync()
                probe_start = time.perf_counter()
            elif plan is None and step >= PLAIN_WARMUP_STEPS + PLAIN_PROBE_STEPS:
                sync()  # (a sync per step while timing: a few steps only)
                now = time.perf_counter()
                if now - probe_start >= min(0.02 * budget_s, 20.0):
                    step_time = (now - probe_start) / (step - PLAIN_WARMUP_STEPS)
                    plan = step + int((budget_s - (now - start)) / step_time)
    sync()
    used = time.perf_counter() - start
    final_loss = loss.item()
    if not math.isfinite(final_loss):
        raise RuntimeError(f"plain {method}: the loss is {final_loss} at step {step}")
    return {"steps": step, "epochs": step * batch / len(images), "time_used_s": used,
            "img_per_s": step * batch / used, "batch_size": batch, "workers": workers,
            "final_loss": final_loss, "planned_steps": plan}


def torchvision_missing() -> str | None:
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # ImportError, or a build that does not match torch
        return f"torchvision cannot be imported ({type(err).__name__}: {str(err)[:120]})"
    return None


# --------------------------------------------------------------------------- report


def check_target(device: str, lib: float, raw: float, plain: float | None,
                 untrained: float | None = None, *, full: bool = True) -> dict[str, Any]:
    """The quality target for ``device`` on one row: each check True/False (None = not run).

    ``raw`` is the ``[0, 1]``-pixel kNN. On a CPU the row must beat the untrained network and raw
    pixels on any data (a trained network must, on every small real image set); the margins (``TARGETS``)
    apply only at the target's settings (``full``)."""
    t = TARGETS["cuda" if device == "cuda" else "cpu"]
    checks: dict[str, bool | None] = {}
    if device != "cuda" and untrained is not None:
        checks["> untrained, raw"] = lib > max(untrained, raw)
    if not full:
        t = {key: None for key in t}
    if t["min_top1"] is not None:
        checks[f">= {t['min_top1']:g} %"] = lib >= t["min_top1"]
    if t["over_raw"] is not None:
        checks[f"raw + {t['over_raw']:g}"] = lib - raw >= t["over_raw"]
    if t["over_plain"] is not None:
        checks[f"plain + {t['over_plain']:g}"] = None if plain is None else lib - plain >= t["over_plain"]
    done = [v for v in checks.values() if v is not None]
    if not checks:  # nothing applies (a GPU run away from the target's settings)
        return {"checks": checks, "met": None}
    met = all(done) if None not in checks.values() else (False if not all(done) else None)
    return {"checks": checks, "met": met}


def format_table(result: dict[str, Any]) -> str:
    header = ["method", "rep", "collapselab kNN (steps, epochs, img/s, s used)",
              "plain kNN (steps, epochs, img/s, s used)", "raw pixels", "std pixels", "untrained",
              "lib - raw", "lib - std", "lib - plain", "target met?"]

    def cell(side: dict[str, Any]) -> str:
        return (f"{side['knn_top1']:.1f} ({side['steps']}, {side['epochs']:.1f}, "
                f"{side['img_per_s']:.0f}, {side['time_used_s']:.0f})")

    lines = []
    for row in result["rows"]:
        lib, plain = row["collapselab"], row["plain"]
        lib_cell, plain_cell = cell(lib), "—" if plain.get("skipped") else cell(plain)
        gap = row["lib_minus_plain"]
        met = {True: "yes", False: "no", None: "partial (plain not run)" if row["target"]["checks"]
               else "— (no target at these settings)"}[row["target"]["met"]]
        lines.append([row["method"], str(row["repeat"]), lib_cell, plain_cell,
                      f"{row['raw_pixels']:.1f}", f"{row['std_pixels']:.1f}",
                      f"{row['untrained']:.1f}", f"{row['lib_minus_raw']:+.1f}",
                      f"{row['lib_minus_std']:+.1f}", "—" if gap is None else f"{gap:+.1f}", met])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = " | ".join(f"{{:{w}}}" for w in widths)
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule, *(fmt.format(*r) for r in lines)])


def settings_differ(args: argparse.Namespace, device: str, backbone: str) -> list[str]:
    want = TARGET_SETTINGS["cuda" if device == "cuda" else "cpu"]
    have = {"size": args.size, "train_images": args.train_images, "queries": args.queries,
            "budget": args.budget, "backbone": backbone}
    return [f"{k}={have[k]} (target: {v})" for k, v in want.items() if have[k] != v]


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="folder with train.npz and test.npz (see the module docstring)")
    p.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(METHODS),
                   help="any collapselab method; only SimCLR and BYOL have a plain side and margins")
    p.add_argument("--budget", type=float, default=120.0, help="seconds of training per side")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--size", type=int, default=16, help="image side after resizing")
    p.add_argument("--train-images", type=int, default=5000, help="0 = all")
    p.add_argument("--queries", type=int, default=2000, help="validation images; 0 = all")
    p.add_argument("--backbone", default=None, help="both sides (default: collapselab's choice)")
    p.add_argument("--backbone-args", type=json.loads, default={},
                   help='JSON, e.g. \'{"stem": "cifar", "width": 0.5}\'')
    p.add_argument("--seed", type=int, default=0, help="data subsets; repeat r trains with seed+r")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--plain-batch", type=int, default=256, help="plain side's batch size")
    p.add_argument("--workers", type=int, default=None,
                   help="plain side's DataLoader workers (default: 2 on CPU, every CPU on CUDA)")
    p.add_argument("--config", default=None, help="YAML layered over collapselab's recipe")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="collapselab overrides (e.g. data.batch_size=128)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    parse_overrides(args.set)  # a malformed override fails now, not after the data is written
    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else (
        available_cpus() if device.type == "cuda" else 2)
    threads = torch.get_num_threads()
    plain_skip = "--skip-plain" if args.skip_plain else torchvision_missing()
    if plain_skip:
        print(f"plain side skipped: {plain_skip}")
    result: dict[str, Any] = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "device": str(device), "workers": workers, "torch_threads": threads,
                     "cpus": available_cpus()},
        "knn": {"k": KNN_K, "temperature": KNN_TEMPERATURE, "metric": "cosine, weighted vote"},
        "targets": TARGETS, "plain_skipped": plain_skip, "rows": []}
    with tempfile.TemporaryDirectory(prefix="quality_budget_") as tmp:
        data_dir = Path(tmp) / "data"
        result["data"] = prepare_data(args.data, data_dir, train_images=args.train_images,
                                      queries=args.queries, size=args.size, seed=args.seed)
        bank, queries = (get_dataset("npz", s, data_dir=data_dir) for s in ("train", "test"))
        mean, std = channel_stats(bank.images)
        normalizer = Normalizer(mean, std)
        info = result["data"]
        print(f"data: {info['train']['images']} training images (bank), "
              f"{info['test']['images']} queries, {'x'.join(map(str, info['train']['shape']))}; "
              f"device {device}, {threads} torch threads, plain workers {workers}")
        cpu = torch.device("cpu")
        raw = knn_top1(nn.Flatten(), bank, queries, Normalizer(None, None), cpu)  # [0, 1]
        std_pixels = knn_top1(nn.Flatten(), bank, queries, normalizer, cpu)
        result["raw_pixels"], result["std_pixels"] = raw, std_pixels
        bank_images = bank.images.permute(0, 2, 3, 1).contiguous().numpy()
        untrained_cache: dict[tuple[str, str, int], float] = {}
        for repeat in range(args.repeats):
            seed = args.seed + repeat
            for method in args.methods:
                run, lib = run_collapselab(method, data_dir, Path(tmp) / "runs", args, seed,
                                           len(bank))
                torch.set_num_threads(threads)  # the run's thread governor may have lowered it
                config = run.config
                lib["recipe"] = describe_recipe(run)
                lib["backbone"] = {"name": config.model.backbone,
                                   "args": dict(config.model.backbone_args)}
                normalize = normalizer if config.data.normalize else Normalizer(None, None)
                lib["knn_top1"] = knn_top1(run.backbone, bank, queries, normalize, device)
                print(f"{method} seed {seed}: collapselab {lib['knn_top1']:.1f} % kNN, "
                      f"{lib['steps']} steps, {lib['time_used_s']:.0f} s ({lib['how']}); "
                      f"recipe {lib['recipe']}")
                del run
                key = (config.model.backbone, json.dumps(lib["backbone"]["args"]), seed)
                if key not in untrained_cache:
                    net = fresh_backbone(config, bank.resolution, seed).to(device)
                    untrained_cache[key] = knn_top1(net, bank, queries, normalizer, device)
                untrained = untrained_cache[key]
                skip = plain_skip or (None if method in METHODS else f"no plain loop for {method}")
                plain: dict[str, Any] = {"skipped": skip} if skip else {}
                if not skip:
                    net = fresh_backbone(config, bank.resolution, seed)
                    plain = plain_train(method, net, bank_images, mean, std,
                                        budget_s=args.budget, batch=args.plain_batch,
                                        workers=workers, device=device, seed=seed)
                    torch.set_num_threads(threads)
                    plain["knn_top1"] = knn_top1(net, bank, queries, normalizer, device)
                    print(f"{method} seed {seed}: plain {plain['knn_top1']:.1f} % kNN, "
                          f"{plain['steps']} steps, {plain['time_used_s']:.0f} s")
                plain_top1 = plain.get("knn_top1")
                differ = settings_differ(args, device.type, config.model.backbone)
                result["rows"].append({
                    "method": method, "repeat": repeat, "seed": seed, "collapselab": lib,
                    "plain": plain, "raw_pixels": raw, "std_pixels": std_pixels,
                    "untrained": untrained, "lib_minus_raw": lib["knn_top1"] - raw,
                    "lib_minus_std": lib["knn_top1"] - std_pixels,
                    "lib_minus_plain": None if plain_top1 is None else lib["knn_top1"] - plain_top1,
                    "target": check_target(device.type, lib["knn_top1"], raw, plain_top1,
                                           untrained, full=not differ and method in METHODS),
                    "settings_differ_from_target": differ})
    print()
    print(f"kNN top-1 in % (cosine, k={KNN_K}, τ={KNN_TEMPERATURE}) after {args.budget:g} s "
          f"of training each, on {device}:")
    print(format_table(result))
    t = TARGETS["cuda" if device.type == "cuda" else "cpu"]
    margins = ", ".join(s for s in (
        f">= {t['min_top1']:g} %" if t["min_top1"] else "",
        f">= raw pixels + {t['over_raw']:g} points" if t["over_raw"] else "",
        f">= plain + {t['over_plain']:g} points") if s)
    cpu_floor = "" if device.type == "cuda" else "above the untrained network and raw pixels; "
    print(f"target ({'GPU' if device.type == 'cuda' else 'CPU'}): collapselab {cpu_floor}"
          f"at the target's settings, for {' and '.join(METHODS)}, {margins} (raw pixels: [0, 1], "
          f"as `collapselab eval`)")
    differ = result["rows"][0]["settings_differ_from_target"] if result["rows"] else []
    if differ:
        what = "nothing is checked" if device.type == "cuda" else "only the floors are checked"
        print(f"note: these settings differ from the target's, so {what}: " + ", ".join(differ))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
