"""Seconds per 50,000-image epoch on one device: collapselab's trainer, the plain PyTorch step it
runs, and a per-image torchvision pipeline (BYOL and SimCLR, ResNet-18 CIFAR stem).

For each method (``--methods``) and batch size (``--batch-sizes``), in one run on one device:

(a) ``trainer``: ``collapselab.train(method, "npz", config=<method>_cifar10.yaml, ...)`` on the
    images written as an ``npz`` dataset: the shipped CIFAR-10 recipe (network, heads,
    augmentation, optimiser) and everything as a user gets it (the collapse monitor once per
    epoch, logging, a checkpoint per epoch), except the online kNN (``--knn-every``, default off)
    and the final evaluation (``--final-eval``, default off). ``--compile`` / ``--channels-last``
    are passed as ``train.compile`` / ``train.channels_last`` (when this collapselab has them).
    Epochs are cut to ``--trainer-steps`` steps with ``train.max_steps_per_epoch``; after one
    warm-up epoch the trainer's own ``epoch_time_s`` of the last epoch (metrics.jsonl) is scaled:
    s/epoch = epoch_time_s x 50,000 / (steps x batch). The per-epoch extras ``monitor_time_s``
    and ``knn_time_s`` (metrics.jsonl, timed by the trainer outside ``epoch_time_s``) are shown
    as a share of that s/epoch.
(b) ``plain``: the step written out in plain PyTorch on the same network (``build_method`` on the
    recipe's config), the same loss function (``collapselab.losses``), the same optimiser and
    BYOL's EMA update (``torch._foreach_lerp_``), on views made once on the device before timing
    with the recipe's own augmentation, so a step is forward + loss + backward + optimiser + EMA
    only. Variants: fp32, bf16 autocast, bf16 + channels_last, and with ``--plain-compile``
    bf16 + channels_last + ``torch.compile`` of forward + loss (its compile time, the first
    step's time, is shown apart). ``--warmup`` untimed steps, then ``--steps`` timed steps,
    extrapolated: s/epoch = seconds per step x 50,000 / batch.
(c) ``torchvision``: ``torch.utils.data.DataLoader`` over a Dataset that makes two views of each
    uint8 HWC image as PIL with ``torchvision.transforms`` (v2 when present): RandomResizedCrop
    (32, scale=(0.08, 1)), RandomHorizontalFlip, RandomApply(ColorJitter(0.4, 0.4, 0.2, 0.1),
    p=0.8), RandomGrayscale(0.2), ToImage + ToDtype (ToTensor on v1), Normalize; ``--workers``
    worker processes, pin_memory on CUDA, feeding the bf16 plain step. Timed after a warm-up of
    one batch per worker (worker start-up and the first wave), over at least two batches per
    worker, within one epoch. Skipped when torchvision is not installed.
(d) ``augment share``: a ``Trainer`` on the same data and config, ``setup()``, then
    ``trainer.augment(batch, trainer.generator)`` alone vs ``trainer._step(batch)`` (which
    includes the augmentation) on a device-resident uint8 batch, each timed over ``--steps``
    calls after ``--warmup`` steps.

How the sides are made comparable: one network, loss, optimiser and augmentation recipe, all
from the same loaded config (``optim.name`` = LARS, the recipes' optimiser, unless
``--optim sgd``: momentum-SGD 0.9 at lr 0.1 x batch/256 everywhere); cuDNN autotuning on (the
trainer turns it on on CUDA); every timed region starts and ends with
``torch.cuda.synchronize`` on CUDA; every s/epoch is seconds x 50,000 / images actually used.

Ratios and their targets: collapselab / best plain step at the same batch (<= 1.15),
per-image pipeline / collapselab (>= 3), collapselab s/epoch at batch 1024 (<= 2.5 s on an
H100/H200-class GPU; the targets are for CUDA, on the CPU the table only proves the code paths).

Commands::

    # CPU smoke check (a minute or two; prints the table, numbers are noisy)
    python benchmarks/gpu_speed.py --device cpu --images 1024 --batch-sizes 64 --width 0.25

    # GPU: defaults (50,000 synthetic images, batches 256 and 1024, BYOL and SimCLR, no compiling;
    # estimated 2-3 minutes on an H200, not yet measured there)
    python benchmarks/gpu_speed.py --device cuda --out gpu_speed.json
    # real CIFAR-10 (45,000 train images, 5,000 as test.npz), torch.compile on both sides: each
    # compiling configuration costs about a minute more (ResNet-18 BYOL took 76 s on 2 CPU
    # cores), so keep it to one batch size to stay within ~5 minutes
    python decode_cifar10_jpeg.py /tmp/cifar10   # the decoder shipped with the CIFAR-10 pack
    python benchmarks/gpu_speed.py --data /tmp/cifar10 --batch-sizes 1024 --compile on --plain-compile

The output's ``seconds`` per part tell where the time went; ``--parts`` runs a subset.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import collapselab
from collapselab.config import Config, TrainConfig, load_config, recipe_path
from collapselab.data import build_augment, get_dataset
from collapselab.data.augment import channel_stats
from collapselab.engine.optim import build_optimizer
from collapselab.engine.trainer import Trainer, build_backbone_for
from collapselab.losses import negative_cosine, nt_xent
from collapselab.methods import build_method, method_class

try:  # newer collapselab: loss-input checks that read values (a host sync) can be switched off
    from collapselab._validation import value_checks
except ImportError:  # pragma: no cover - older collapselab
    value_checks = None

EPOCH_IMAGES = 50_000
SGD_LR = 0.1  # base lr (batch 256) for --optim sgd; the recipes' LARS rates diverge under SGD
VIEW_POOL = 4  # distinct pre-made view batches the plain step cycles through
BF16 = torch.bfloat16
# plain-step variant: (autocast dtype, channels_last, torch.compile)
VARIANTS: dict[str, tuple[torch.dtype | None, bool, bool]] = {
    "fp32": (None, False, False),
    "bf16": (BF16, False, False),
    "bf16+cl": (BF16, True, False),
    "bf16+cl+compile": (BF16, True, True),
}


# --------------------------------------------------------------------------- small helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """A timestamp after the device has finished all queued work."""
    synchronize(device)
    return time.perf_counter()


def per_epoch(seconds: float, images: int) -> float:
    """Seconds for 50,000 images from ``seconds`` for ``images`` images."""
    return seconds * EPOCH_IMAGES / images


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_compiler() -> None:
    """Forget compiled graphs (each config compiles afresh; keeps dynamo's cache limit away)."""
    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is not None:
        dynamo.reset()


def no_value_checks() -> contextlib.AbstractContextManager:
    return value_checks(False) if value_checks is not None else contextlib.nullcontext()


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def quiet(enabled: bool) -> contextlib.AbstractContextManager:
    """Swallow the trainer's epoch lines (stdout) unless ``--verbose``."""
    return contextlib.redirect_stdout(io.StringIO()) if enabled else contextlib.nullcontext()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(),
        "collapselab": collapselab.__version__, "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    with contextlib.suppress(ImportError):
        import torchvision

        info["torchvision"] = torchvision.__version__
    return info


# --------------------------------------------------------------------------- data and config


@dataclasses.dataclass
class Images:
    """uint8 (N, 3, H, W) CPU tensors and int64 labels; ``test`` for the kNN / final evaluation."""

    train: torch.Tensor
    labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    source: str


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=g)


def load_images(data: str | None, n: int) -> Images:
    """``n`` images of ``data``/train.npz (and its test.npz), else synthetic ones."""
    if data is None:
        train, labels = synthetic(n, seed=0)
        test, test_labels = synthetic(min(10_000, max(n // 5, 64)), seed=1)
        return Images(train, labels, test, test_labels, f"synthetic uint8 32x32 RGB ({n} images)")
    folder = Path(data)
    if not (folder / "train.npz").is_file():
        raise SystemExit(f"--data {folder}: no train.npz there (write one with "
                         "the CIFAR-10 pack's decode_cifar10_jpeg.py OUT_DIR; layout in docs/data.md)")
    full = get_dataset("npz", "train", data_dir=str(folder))
    n = min(n, len(full.images))
    if (folder / "test.npz").is_file():
        held_out = get_dataset("npz", "test", data_dir=str(folder))
        test, test_labels = held_out.images, held_out.labels
    else:
        test, test_labels = synthetic(min(10_000, max(n // 5, 64)), seed=1)
    # a seeded random subset: a file may be sorted by class (the decoded CIFAR-10 pack is)
    keep = torch.randperm(len(full.images), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return Images(full.images[keep], full.labels[keep], test, test_labels,
                  f"{folder}/train.npz ({n} of {len(full.images)} images)")


def write_npz(images: Images, folder: Path) -> None:
    """The npz dataset layout ``dataset=npz`` reads: x (N, H, W, C) uint8, y."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=images.train.permute(0, 2, 3, 1).numpy(), y=images.labels.numpy())
    np.savez(folder / "test.npz", x=images.test.permute(0, 2, 3, 1).numpy(), y=images.test_labels.numpy())


def trainer_switches(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """``train.compile`` / ``train.channels_last`` overrides this collapselab accepts, and notes."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    switches, notes = {}, []
    for key, value in (("compile", args.compile), ("channels_last", args.channels_last)):
        if key in known:
            switches[key] = value
        else:
            notes.append(f"collapselab.config.TrainConfig has no '{key}': train.{key} not passed "
                         f"(--{key.replace('_', '-')} {value} ignored)")
    return switches, notes


def overrides(args: argparse.Namespace, batch: int, data_dir: Path, out_dir: Path, tag: str,
              switches: Mapping[str, str]) -> dict[str, Any]:
    """Keyword overrides over the ``<method>_cifar10.yaml`` recipe, shared by (a) to (d)."""
    backbone_args: dict[str, Any] = {"stem": "cifar"}
    if args.width != 1.0:
        backbone_args["width"] = args.width
    evaluates = args.knn_every > 0 or args.final_eval
    result: dict[str, Any] = {
        "model": {"backbone": args.backbone, "backbone_args": backbone_args},
        "data": {"data_dir": str(data_dir), "batch_size": batch, "knn_split": "test" if evaluates else None},
        "train": {"epochs": 2, "device": args.device, "seed": 0,
                  "max_steps_per_epoch": args.trainer_steps or None, **switches},
        "log": {"progress": False},
        "eval": {"knn_every": args.knn_every, "final": args.final_eval},
        "run": {"name": tag, "out_dir": str(out_dir)},
    }
    if args.optim == "sgd":
        result["optim"] = {"name": "sgd", "lr": SGD_LR}
    return result


def recipe(name: str) -> Path:
    path = recipe_path(name, "cifar10")
    if path is None:
        raise SystemExit(f"no shipped recipe {name}_cifar10.yaml")
    return path


def load_run_config(name: str, settings: Mapping[str, Any]) -> Config:
    return load_config(name, "npz", config_file=recipe(name), **settings)


# --------------------------------------------------------------------------- (a) the trainer


def trainer_epoch(args: argparse.Namespace, name: str, settings: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """collapselab.train for two (cut) epochs; the last epoch's own timings, scaled to 50,000."""
    threads = torch.get_num_threads()
    start = time.perf_counter()
    with quiet(not args.verbose):
        run = collapselab.train(name, "npz", config=recipe(name), **settings)
    wall = time.perf_counter() - start
    torch.set_num_threads(threads)  # the trainer's thread governor may have changed it (CPU)
    epochs = [r for r in read_jsonl(run.dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    last, summary = epochs[-1], run.summary
    steps = summary["steps"] // max(summary["epochs_completed"], 1)
    s_epoch = per_epoch(last["epoch_time_s"], steps * batch * summary.get("world_size", 1))
    result: dict[str, Any] = {"steps": steps, "epoch_time_s": last["epoch_time_s"], "s_epoch": s_epoch,
                              "img_per_s": last.get("img_per_s"), "run_wall_s": wall}
    for key in ("monitor_time_s", "knn_time_s"):
        if key in last:
            result[key] = last[key]
            result[key.replace("_time_s", "_share")] = last[key] / s_epoch
    compile_s = epochs[0].get("compile_time_s")
    if compile_s is not None:
        result["compile_time_s"] = compile_s
    if "fast_path" in summary:
        result["fast_path"] = summary["fast_path"]
    if summary.get("eval"):
        result["final_eval"] = summary["eval"]
    return result


# --------------------------------------------------------------------------- (b) plain PyTorch


def make_augment(config: Config, mean: list[float], std: list[float]):
    """The trainer's augmentation for ``config`` (recipe, its settings, the data's mean/std)."""
    spec = config.data.augment
    cfg = dict(spec) if isinstance(spec, Mapping) else {"recipe": spec}
    if cfg.get("recipe") is None and cfg.get("name") is None:
        cfg["recipe"] = method_class(config.method.name).default_augment
    cfg.setdefault("backend", config.data.augment_backend)
    if config.data.normalize and "mean" not in cfg:
        cfg["mean"], cfg["std"] = mean, std
    return build_augment(cfg)


def premade_views(config: Config, data: torch.Tensor, batch: int) -> list[list[torch.Tensor]]:
    """``VIEW_POOL`` batches of two views, made once on the device with the recipe's augmentation."""
    mean, std = channel_stats(data)
    augment = make_augment(config, mean, std)
    generator = torch.Generator(device=data.device).manual_seed(1)
    pool = []
    for _ in range(VIEW_POOL):
        index = torch.randint(0, len(data), (batch,), device=data.device, generator=generator)
        pool.append(augment(data[index], generator)[:2])
    return pool


def plain_loss(method: torch.nn.Module, name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Forward + loss of two views written out on the method's modules."""
    if name == "simclr":
        temperature = method.config.temperature

        def simclr(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
            z1 = method.projector(method.backbone(v1))
            z2 = method.projector(method.backbone(v2))
            return nt_xent(z1, z2, temperature=temperature)

        return simclr
    if name == "byol":
        target = method.target.net

        def online(x: torch.Tensor) -> torch.Tensor:
            return method.predictor(method.projector(method.backbone(x)))

        def byol(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
            p1, p2 = online(v1), online(v2)
            with torch.no_grad():
                t1, t2 = target(v1), target(v2)
            return (2 + 2 * negative_cosine(p1, t2)) + (2 + 2 * negative_cosine(p2, t1))

        return byol
    raise SystemExit(f"no plain step for method {name!r} (choose byol or simclr)")


def ema_update(method: torch.nn.Module, tau: float = 0.99) -> Callable[[], None] | None:
    """BYOL's target update: lerp of the parameters, copy of the buffers (None without a target)."""
    if getattr(method, "target", None) is None:
        return None
    online = list(method.backbone.parameters()) + list(method.projector.parameters())
    target = list(method.target.net.parameters())
    online_buffers = list(method.backbone.buffers()) + list(method.projector.buffers())
    target_buffers = list(method.target.net.buffers())

    @torch.no_grad()
    def update() -> None:
        torch._foreach_lerp_(target, online, 1.0 - tau)
        if hasattr(torch, "_foreach_copy_"):
            torch._foreach_copy_(target_buffers, online_buffers)
        else:  # pragma: no cover - old torch
            for t, o in zip(target_buffers, online_buffers, strict=True):
                t.copy_(o)

    return update


def plain_step(config: Config, batch: int, device: torch.device, variant: str):
    """step(v1, v2) of one variant on a freshly built network (same seed every time)."""
    dtype, channels_last, compiled = VARIANTS[variant]
    torch.manual_seed(0)
    method = build_method(config.method, build_backbone_for(config, 3, 32, 32)).to(device).train()
    if channels_last:
        method.to(memory_format=torch.channels_last)
    o = config.optim
    lr = o.lr * (batch / 256 if o.lr_scaling == "linear" else (batch / 256) ** 0.5 if o.lr_scaling == "sqrt" else 1.0)
    optimizer = build_optimizer(o.name, method, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                betas=tuple(o.betas), eta=o.eta, exclude_bias_and_norm=o.exclude_bias_and_norm)
    loss_fn = plain_loss(method, config.method.name)
    if compiled:
        reset_compiler()
        loss_fn = torch.compile(loss_fn, dynamic=False)
    ema = ema_update(method)

    def step(v1: torch.Tensor, v2: torch.Tensor) -> None:
        with autocast(device, dtype), no_value_checks():
            loss = loss_fn(v1, v2)
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
        if ema is not None:
            ema()

    return step


def time_plain(args: argparse.Namespace, config: Config, batch: int, pool: list[list[torch.Tensor]],
               variant: str) -> dict[str, Any]:
    device = pool[0][0].device
    channels_last = VARIANTS[variant][1]
    if channels_last:
        pool = [[v.contiguous(memory_format=torch.channels_last) for v in views] for views in pool]
    step = plain_step(config, batch, device, variant)
    start = clock(device)
    step(*pool[0])
    first_s = clock(device) - start
    for i in range(1, max(args.warmup, 1)):
        step(*pool[i % len(pool)])
    start = clock(device)
    for i in range(args.steps):
        step(*pool[i % len(pool)])
    step_s = (clock(device) - start) / args.steps
    result = {"step_s": step_s, "s_epoch": per_epoch(step_s, batch)}
    if VARIANTS[variant][2]:
        result["compile_s"] = first_s  # the first step: tracing + compiling forward and backward
    return result


# --------------------------------------------------------------------------- (c) torchvision


class TwoViews(torch.utils.data.Dataset):
    """Two torchvision views of each uint8 (H, W, C) image, made per image as PIL."""

    def __init__(self, images: np.ndarray, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def torchvision_transform(mean: list[float], std: list[float]) -> tuple[Callable, str]:
    """The per-image SimCLR/BYOL-style CIFAR pipeline, and which transforms API built it."""
    try:
        from torchvision.transforms import v2 as T

        tail, api = [T.ToImage(), T.ToDtype(torch.float32, scale=True)], "torchvision.transforms.v2"
    except ImportError:
        from torchvision import transforms as T

        tail, api = [T.ToTensor()], "torchvision.transforms (v1)"
    ops = [
        T.RandomResizedCrop(32, scale=(0.08, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        *tail,
        T.Normalize(mean, std),
    ]
    return T.Compose(ops), api


def time_torchvision(args: argparse.Namespace, config: Config, batch: int, images_hwc: np.ndarray,
                     mean: list[float], std: list[float], device: torch.device) -> dict[str, Any]:
    transform, api = torchvision_transform(mean, std)
    workers = args.workers
    fork = workers > 0 and sys.platform.startswith("linux")
    loader = torch.utils.data.DataLoader(
        TwoViews(images_hwc, transform), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda",
        multiprocessing_context="fork" if fork else None,
    )
    if len(loader) < 2:
        raise RuntimeError(f"{len(images_hwc)} images make fewer than 2 batches of {batch}")
    warmup = min(max(args.warmup, workers), len(loader) - 1)
    timed = min(max(args.steps, 2 * workers), len(loader) - warmup)
    step = plain_step(config, batch, device, "bf16")
    batches = iter(loader)
    for i, (v1, v2) in enumerate(batches):
        if i == warmup:
            start = clock(device)
        step(v1.to(device, non_blocking=True), v2.to(device, non_blocking=True))
        if i + 1 == warmup + timed:
            break
    seconds = clock(device) - start
    del batches  # shuts the workers down
    return {"s_epoch": per_epoch(seconds, timed * batch), "batches_timed": timed, "warmup": warmup,
            "workers": workers, "api": api}


# --------------------------------------------------------------------------- (d) augment share


def augment_share(args: argparse.Namespace, name: str, settings: Mapping[str, Any], batch: int,
                  run_dir: Path) -> dict[str, Any]:
    """trainer.augment alone vs trainer._step (augment included) on one device-resident batch."""
    threads = torch.get_num_threads()
    trainer = Trainer(load_run_config(name, settings), run_dir)
    with quiet(not args.verbose):
        trainer.setup()
    try:
        trainer.method.train()
        device = trainer.device
        images = trainer.train_set.images[:batch].contiguous()

        def step() -> None:
            trainer._step(images)
            trainer.global_step = (trainer.global_step + 1) % max(trainer.total_steps, 1)

        for _ in range(max(args.warmup, 1)):
            step()
        start = clock(device)
        for _ in range(args.steps):
            trainer.augment(images, trainer.generator)
        augment_s = (clock(device) - start) / args.steps
        start = clock(device)
        for _ in range(args.steps):
            step()
        step_s = (clock(device) - start) / args.steps
    finally:
        compiled = getattr(trainer, "compiled", None)
        if compiled is not None:
            compiled.disable()
        trainer.logger.close()
        torch.set_num_threads(threads)
    return {"augment_ms": 1e3 * augment_s, "step_ms": 1e3 * step_s, "share": augment_s / step_s,
            "augment_s_epoch": per_epoch(augment_s, batch), "backend": trainer.augment_backend}


# --------------------------------------------------------------------------- one configuration


def attempt(row: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """row[key] = fn(), or the error (one failing part must not lose a whole GPU session)."""
    start = time.perf_counter()
    try:
        row[key] = fn()
    except Exception as err:  # reported in the table and the JSON, then the run continues
        row[key] = {"error": f"{type(err).__name__}: {err}"}
        traceback.print_exc()
    row.setdefault("seconds", {})[key] = round(time.perf_counter() - start, 2)


def measure(args: argparse.Namespace, name: str, batch: int, images: Images, data_dir: Path,
            work: Path, switches: Mapping[str, str], device: torch.device) -> dict[str, Any]:
    tag = f"{name}_b{batch}"
    settings = overrides(args, batch, data_dir, work / "runs", tag, switches)
    config = load_run_config(name, settings)
    row: dict[str, Any] = {"method": name, "batch": batch}
    if "a" in args.parts:
        reset_compiler()
        attempt(row, "trainer", lambda: trainer_epoch(args, name, settings, batch))
        free_memory(device)
    data = images.train.to(device)
    mean, std = channel_stats(data)
    if "b" in args.parts:
        pool = premade_views(config, data, batch)
        variants = [v for v in VARIANTS if args.plain_compile or not VARIANTS[v][2]]
        row["plain"] = {}
        for variant in variants:
            attempt(row["plain"], variant, lambda v=variant: time_plain(args, config, batch, pool, v))
            free_memory(device)
        row.setdefault("seconds", {})["plain"] = round(sum(row["plain"].pop("seconds").values()), 2)
        del pool
    del data
    free_memory(device)
    if "c" in args.parts:
        if args.torchvision_missing:
            row["torchvision"] = {"skipped": "torchvision not installed"}
        else:
            hwc = np.ascontiguousarray(images.train.permute(0, 2, 3, 1).numpy())
            attempt(row, "torchvision", lambda: time_torchvision(args, config, batch, hwc, mean, std, device))
            free_memory(device)
    if "d" in args.parts:
        reset_compiler()
        attempt(row, "augment", lambda: augment_share(args, name, settings, batch, work / "runs" / f"{tag}_steps"))
        free_memory(device)
    add_ratios(row)
    return row


def value(part: Any, key: str = "s_epoch") -> float | None:
    return part.get(key) if isinstance(part, dict) else None


def matching_variant(trainer: Any) -> str | None:
    """The plain variant with the trainer's own precision, memory layout and compile choice."""
    fast = trainer.get("fast_path") if isinstance(trainer, dict) else None
    if not fast:
        return None
    if fast.get("amp") == "off":
        return "fp32"
    name = "bf16+cl" if fast.get("channels_last") else "bf16"
    return name + "+compile" if fast.get("compile") and name == "bf16+cl" else name


def add_ratios(row: dict[str, Any]) -> None:
    lib = value(row.get("trainer"))
    plain = [value(p) for p in (row.get("plain") or {}).values()]
    plain = [p for p in plain if p is not None]
    tv = value(row.get("torchvision"))
    row["best_plain_s_epoch"] = min(plain) if plain else None
    row["lib_over_plain"] = lib / min(plain) if lib and plain else None
    same = value((row.get("plain") or {}).get(matching_variant(row.get("trainer"))))
    row["lib_over_same_plain"] = lib / same if lib and same else None
    row["torchvision_over_lib"] = tv / lib if tv and lib else None


# --------------------------------------------------------------------------- report


def fmt(x: float | None, spec: str = "8.2f") -> str:
    width = int(spec.split(".")[0]) if spec[0].isdigit() else 8
    return format(x, spec) if x is not None else "-".rjust(width)


def verdict(x: float | None, ok: bool) -> str:
    return "-" if x is None else ("ok" if ok else "MISS")


def print_table(rows: list[dict[str, Any]], variants: list[str]) -> None:
    head = f"{'method':7} {'batch':>5} {'trainer':>8}" + "".join(f" {v:>15}" for v in variants)
    head += f" {'torchvision':>11} {'lib/plain':>9} {'tv/lib':>7} {'aug share':>9}"
    print("\ns/epoch (50,000 images) and ratios")
    print(head)
    for row in rows:
        line = f"{row['method']:7} {row['batch']:5d} {fmt(value(row.get('trainer')))}"
        line += "".join(f" {fmt(value((row.get('plain') or {}).get(v)), '15.2f')}" for v in variants)
        line += f" {fmt(value(row.get('torchvision')), '11.2f')} {fmt(row['lib_over_plain'], '9.3f')}"
        line += f" {fmt(row['torchvision_over_lib'], '7.2f')}"
        share = value(row.get("augment"), "share")
        line += f" {fmt(None if share is None else 100 * share, '8.1f')}{'%' if share is not None else ''}"
        print(line)


def print_details(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        where = f"{row['method']} batch {row['batch']}"
        t = row.get("trainer") or {}
        if "error" in t:
            print(f"  {where}: (a) trainer failed: {t['error']}")
        elif t:
            extras = ", ".join(f"{k.replace('_time_s', '')} {t[k]:.3f} s ({100 * t[k.replace('_time_s', '_share')]:.1f}% of the epoch)"
                               for k in ("monitor_time_s", "knn_time_s") if k in t) or "no monitor/knn timings in metrics.jsonl"
            fast = t.get("fast_path")
            fast = (f"amp {fast.get('amp')}, channels_last {fast.get('channels_last')}, compile "
                    f"{fast.get('compile')} ({fast.get('compile_reason')})") if fast else "not reported"
            comp = f", compile {t['compile_time_s']:.1f} s (first epoch)" if "compile_time_s" in t else ""
            print(f"  {where}: (a) {t['steps']} steps: epoch_time_s {t['epoch_time_s']:.3f} -> "
                  f"{t['s_epoch']:.2f} s/epoch; per epoch also {extras}; {fast}{comp}")
        for variant, p in (row.get("plain") or {}).items():
            if "error" in p:
                print(f"  {where}: (b) {variant} failed: {p['error']}")
            elif "compile_s" in p:
                print(f"  {where}: (b) {variant}: compile (first step) {p['compile_s']:.1f} s, "
                      f"then {1e3 * p['step_s']:.1f} ms/step")
        tv = row.get("torchvision") or {}
        if "error" in tv or "skipped" in tv:
            print(f"  {where}: (c) {tv.get('error') or 'skipped: ' + tv['skipped']}")
        elif tv:
            print(f"  {where}: (c) {tv['api']}, {tv['workers']} workers, {tv['batches_timed']} batches "
                  f"timed after {tv['warmup']}")
        aug = row.get("augment") or {}
        if "error" in aug:
            print(f"  {where}: (d) failed: {aug['error']}")
        elif aug:
            print(f"  {where}: (d) augment ({aug['backend']}) {aug['augment_ms']:.2f} ms of a "
                  f"{aug['step_ms']:.2f} ms trainer step = {100 * aug['share']:.1f}%")


def print_targets(rows: list[dict[str, Any]], device: torch.device) -> None:
    print("\ntargets" + ("" if device.type == "cuda" else " (stated for CUDA; on the CPU only informative)"))
    for row in rows:
        where = f"{row['method']} batch {row['batch']}"
        r = row["lib_over_plain"]
        same = row["lib_over_same_plain"]
        print(f"  {where}: collapselab / best plain = {fmt(r, '.3f')} (<= 1.15: {verdict(r, r is not None and r <= 1.15)})"
              f" [/ plain {matching_variant(row.get('trainer'))}, the trainer's settings: {fmt(same, '.3f')}]"
              f"; per-image / collapselab = {fmt(row['torchvision_over_lib'], '.2f')} (>= 3: "
              f"{verdict(row['torchvision_over_lib'], (row['torchvision_over_lib'] or 0) >= 3)})")
        if row["batch"] == 1024:
            s = value(row.get("trainer"))
            print(f"  {where}: collapselab s/epoch = {fmt(s, '.2f')} (<= 2.5 s on H100/H200: {verdict(s, s is not None and s <= 2.5)})")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--methods", nargs="+", choices=("byol", "simclr"), default=["byol", "simclr"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="default: 256 1024 (cuda), 64 (cpu)")
    parser.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50"), default="resnet18",
                        help="ResNet with the CIFAR stem (backbone_args {stem: cifar})")
    parser.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier (0.25 for CPU smoke runs)")
    parser.add_argument("--data", help="folder with train.npz (and test.npz), e.g. decoded CIFAR-10; default synthetic")
    parser.add_argument("--images", type=int, help="images used (default: 50,000 on cuda, 1024 on cpu)")
    parser.add_argument("--steps", type=int, help="timed steps per measurement of (b), (c), (d) (default 30 cuda, 3 cpu)")
    parser.add_argument("--warmup", type=int, help="untimed steps before (default 5 cuda, 1 cpu)")
    parser.add_argument("--trainer-steps", type=int,
                        help="(a) steps per epoch, train.max_steps_per_epoch (default 50 cuda, 3 cpu; 0 = whole epochs)")
    parser.add_argument("--optim", choices=("lars", "sgd"), default="lars",
                        help="lars: the recipes' LARS (collapselab's); sgd: momentum SGD, lr 0.1 x batch/256")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="(a)/(d) train.compile")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="(a)/(d) train.channels_last")
    parser.add_argument("--plain-compile", action="store_true", help="(b) also time bf16 + channels_last + torch.compile")
    parser.add_argument("--knn-every", type=int, default=0, help="(a) eval.knn_every (default 0: no online kNN)")
    parser.add_argument("--final-eval", action="store_true", help="(a) eval.final (after the timed epochs)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="(c) DataLoader workers")
    parser.add_argument("--parts", default="abcd", help="which of (a) (b) (c) (d) to run, e.g. 'ab'")
    parser.add_argument("--out", help="write the whole result as JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="show the trainer's own output")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    cuda = args.device == "cuda"
    args.batch_sizes = args.batch_sizes or ([256, 1024] if cuda else [64])
    args.images = args.images or (EPOCH_IMAGES if cuda else 1024)
    args.steps = args.steps or (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.trainer_steps = args.trainer_steps if args.trainer_steps is not None else (50 if cuda else 3)
    try:
        import torchvision  # noqa: F401

        args.torchvision_missing = False
    except ImportError:
        args.torchvision_missing = True
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer sets it on CUDA: fixed shapes every step
    switches, notes = trainer_switches(args)
    if value_checks is None:
        notes.append("collapselab has no value_checks: the plain step's loss checks read values (a host sync)")
    images = load_images(args.data, args.images)
    if args.data is None or len(images.train) < EPOCH_IMAGES:
        notes.append(f"{len(images.train)} images; every s/epoch is scaled to 50,000 images")
    info = hardware(device)
    print(f"hardware: {info.get('gpu', 'no GPU')} | {info['cpu']} x{info['cpu_count']} | torch {info['torch']}"
          f"{' | torchvision ' + info['torchvision'] if 'torchvision' in info else ''} | device {device}")
    print(f"data: {images.source}; backbone {args.backbone} (CIFAR stem, width {args.width}); optimiser "
          f"{'LARS (the recipes, collapselab.engine.optim)' if args.optim == 'lars' else 'momentum SGD 0.9'} "
          f"in every part; batches {args.batch_sizes}")
    print(f"(a) trainer epochs cut to {args.trainer_steps or 'all'} steps (train.max_steps_per_epoch): s/epoch = "
          f"epoch_time_s x 50,000 / (steps x batch), the 2nd epoch; train overrides {switches or 'none'}; "
          f"knn_every {args.knn_every}, final eval {args.final_eval}")
    print(f"(b)/(d) {args.warmup} warm-up + {args.steps} timed steps; (c) {args.workers} workers")
    for note in notes:
        print(f"note: {note}")
    if "c" in args.parts and args.torchvision_missing:
        print("(c) skipped: torchvision not installed")
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_speed_") as tmp:
        work = Path(tmp)
        write_npz(images, work / "data")
        for name in args.methods:
            for batch in args.batch_sizes:
                if batch > len(images.train):
                    print(f"skip {name} batch {batch}: more than the {len(images.train)} images")
                    continue
                row = measure(args, name, batch, images, work / "data", work, switches, device)
                rows.append(row)
                print(f"  {name} batch {batch} done: {row.get('seconds')} s per part", flush=True)
    variants = [v for v in VARIANTS if args.plain_compile or not VARIANTS[v][2]] if "b" in args.parts else []
    print_table(rows, variants)
    print_details(rows)
    print_targets(rows, device)
    total = time.perf_counter() - start
    print(f"\ntotal {total:.0f} s; cudnn.benchmark={torch.backends.cudnn.benchmark}")
    result = {"hardware": info, "settings": {k: v for k, v in vars(args).items()}, "notes": notes,
              "rows": rows, "total_s": total}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
