"""Throughput of two-view SimCLR augmentation: collapselab's batched ops vs per-image pipelines.

Measures images per second (one image = its two augmented views, normalised float tensors)
for 32x32 RGB batches of 512 on the CPU:

* ``collapselab native``: ``build_augment("simclr", backend="native")`` on a uint8 batch (the
  fused C kernel of ``collapselab.data.native``, on torch's intra-op threads);
* ``collapselab torch``: the same recipe with ``backend="torch"`` (whole-batch tensor ops; the
  path a GPU runs);
* ``per-image PIL``: a torchvision-style per-image pipeline written here with PIL + NumPy
  (RandomResizedCrop, flip, ColorJitter in random order, RandomGrayscale, ToTensor, Normalize),
  run through ``torch.utils.data.DataLoader`` with ``--workers`` worker processes;
* ``kornia`` (only if installed): the equivalent ``kornia.augmentation`` pipeline.

Prints images/s for each and the ratios against the per-image pipeline. Run::

    python benchmarks/augment_throughput.py --batches 20
"""

from __future__ import annotations

import argparse
import math
import random
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance

from collapselab.data import native
from collapselab.data.augment import build_augment

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class PerImageSimCLR:
    """torchvision-style per-image SimCLR view (CIFAR setting), PIL + NumPy only."""

    def __init__(self, size: int = 32):
        self.size = size

    def crop_params(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * random.uniform(0.08, 1.0)
            aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        return 0, 0, height, width

    @staticmethod
    def hue(img: Image.Image, shift: float) -> Image.Image:
        h, s, v = img.convert("HSV").split()
        h = Image.fromarray((np.asarray(h, dtype=np.uint8) + np.uint8(round(shift * 255) % 256)).astype(np.uint8), "L")
        return Image.merge("HSV", (h, s, v)).convert("RGB")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        top, left, h, w = self.crop_params(*img.size)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if random.random() < 0.8:
            ops = [
                lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(0.6, 1.4)),
                lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(0.6, 1.4)),
                lambda im: ImageEnhance.Color(im).enhance(random.uniform(0.6, 1.4)),
                lambda im: self.hue(im, random.uniform(-0.1, 0.1)),
            ]
            random.shuffle(ops)
            for op in ops:
                img = op(img)
        if random.random() < 0.2:
            img = img.convert("L").convert("RGB")
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        return (x - mean) / std


class TwoViewDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray):
        self.images = [Image.fromarray(im) for im in images]
        self.view = PerImageSimCLR(images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        return self.view(img), self.view(img)


def bench_pil(images: np.ndarray, batch: int, batches: int, workers: int) -> float:
    ds = TwoViewDataset(images)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # start-up of the workers is not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def bench_ours(images: torch.Tensor, batch: int, batches: int, backend: str) -> float:
    aug = build_augment("simclr", mean=list(MEAN), std=list(STD), backend=backend)
    gen = torch.Generator().manual_seed(0)
    n = images.shape[0]
    aug(images[:batch], gen)  # warm-up (and, for native, the one-off compile)
    start = time.perf_counter()
    for _ in range(batches):
        idx = torch.randint(0, n, (batch,), generator=gen)
        aug(images.index_select(0, idx), gen)  # as DeviceLoader draws a batch
    return batches * batch / (time.perf_counter() - start)


def bench_kornia(images: torch.Tensor, batch: int, batches: int) -> float | None:
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    pipe = torch.nn.Sequential(
        K.RandomResizedCrop((32, 32), scale=(0.08, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.Normalize(torch.tensor(MEAN), torch.tensor(STD)),
    )
    n = images.shape[0]
    pipe(images[:batch].float() / 255)
    start = time.perf_counter()
    for _ in range(batches):
        x = images[torch.randint(0, n, (batch,))].float() / 255
        pipe(x), pipe(x)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the per-image pipeline")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for ours (default: torch's)")
    parser.add_argument("--images", type=int, default=10000,
                        help="size of the random uint8 dataset (raised to --batches + 1 batches)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n_images = max(args.images, (args.batches + 1) * args.batch)  # one DataLoader epoch suffices
    images = rng.integers(0, 256, size=(n_images, 32, 32, 3), dtype=np.uint8)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    have_native = native.available()
    ours = bench_ours(tensor, args.batch, args.batches, "native") if have_native else None
    ours_torch = bench_ours(tensor, args.batch, args.batches, "torch")
    pil = bench_pil(images, args.batch, args.batches, args.workers)
    kor = bench_kornia(tensor, args.batch, args.batches)
    print(f"two-view SimCLR, 32x32 RGB, batch {args.batch}, {args.batches} batches, "
          f"torch threads {torch.get_num_threads()}, native OpenMP {native.uses_openmp()}")
    print("collapselab native (fused C) : " + (f"{ours:10.0f} images/s" if ours else "unavailable (no C compiler)"))
    print(f"collapselab torch ops        : {ours_torch:10.0f} images/s")
    print(f"per-image PIL ({args.workers} workers)    : {pil:10.0f} images/s")
    print("kornia                       : " + (f"{kor:10.0f} images/s" if kor else "not installed (skipped)"))
    if ours:
        print(f"ratio native / per-image PIL: {ours / pil:.2f}x")
    print(f"ratio torch  / per-image PIL: {ours_torch / pil:.2f}x")
    if kor:
        print(f"ratio native / kornia       : {(ours or ours_torch) / kor:.2f}x")


if __name__ == "__main__":
    main()
