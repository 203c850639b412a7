"""Speed and memory of the evaluation protocols: weighted kNN and the linear probe.

Usage: python benchmarks/eval_speed.py [--train 50000] [--test 10000] [--dim 512] [--classes 10]
                                       [--k 200] [--device cpu] [--skip-probe]

Features are synthetic, seeded and class-structured (Gaussian classes around random centres, so
accuracies are neither 0 nor 1). Prints, all measured in this run on this machine:

- kNN wall time, and its ratio to the bare similarity products alone (test @ trainᵀ in the same
  row blocks, nothing else) — the cost of normalising, top-k and voting;
- kNN peak memory above the resident features (Linux ``ru_maxrss`` on CPU,
  ``torch.cuda.max_memory_allocated`` on GPU), beside the 4·N_train·N_test bytes an unchunked
  similarity matrix would need;
- linear-probe (L-BFGS, float64) wall time, iterations and peak memory on the same features.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

# Idle OpenMP threads sleep instead of spinning (as in tests/conftest.py): on a shared machine
# spinning threads make BLAS calls several times slower. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from collapselab.evaluation import fit_linear_probe, knn_accuracy
from collapselab.evaluation.knn import DEFAULT_BLOCK_ELEMENTS

NOISE = 8.0  # noise norm relative to the unit-norm class centres: accuracies well below 1


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_features(
    n: int, dim: int, n_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class centres (norm 1) plus isotropic noise, filled in chunks to keep the peak low."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=1)
    g.manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    features = torch.empty(n, dim)
    for start in range(0, n, 4096):
        block = features[start : start + 4096]
        block.normal_(generator=g).mul_(NOISE / dim**0.5).add_(
            centres[labels[start : start + 4096]]
        )
    return features, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-probe", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)

    train, train_labels = synthetic_features(args.train, args.dim, args.classes, seed=1)
    test, test_labels = synthetic_features(args.test, args.dim, args.classes, seed=2)
    # warm up imports and thread pools (the first L-BFGS call pays a one-off import of ~3 s)
    knn_accuracy(train[:2000], train_labels[:2000], test[:100], test_labels[:100], k=args.k)
    fit_linear_probe(train[:500], train_labels[:500])
    if device.type == "cuda":
        train, train_labels, test, test_labels = (
            t.to(device) for t in (train, train_labels, test, test_labels)
        )
        torch.cuda.synchronize()

    load = os.getloadavg()[0]
    print(
        f"kNN: {args.train} train x {args.test} test, D={args.dim}, {args.classes} classes, k={args.k}, "
        f"float32 on {device}, torch threads={torch.get_num_threads()}, load average {load:.2f}"
    )
    features_mib = (train.numel() + test.numel()) * 4 / 2**20
    unchunked_mib = args.train * args.test * 4 / 2**20
    block_rows = max(1, DEFAULT_BLOCK_ELEMENTS // args.train)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    before = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    start = time.perf_counter()
    result = knn_accuracy(train, train_labels, test, test_labels, k=args.k)
    sync()
    knn_s = time.perf_counter() - start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
        where = "GPU memory above the features"
    else:
        peak = rss_mib() - before
        where = "peak RSS growth above the features"

    start = time.perf_counter()
    for first in range(0, args.test, block_rows):
        (test[first : first + block_rows] @ train.T).sum()
    sync()
    matmul_s = time.perf_counter() - start
    print(
        f"  knn_accuracy             {knn_s:8.2f} s   top1={result['knn_top1']:.4f} top5={result['knn_top5']:.4f}"
    )
    print(
        f"  blocked test @ train.T   {matmul_s:8.2f} s   (ratio kNN / products: {knn_s / matmul_s:.2f})"
    )
    print(
        f"  memory: features {features_mib:.0f} MiB; chunk of {block_rows} test rows -> "
        f"{block_rows * args.train * 4 / 2**20:.0f} MiB similarity block; unchunked matrix would be "
        f"{unchunked_mib:.0f} MiB"
    )
    print(f"  kNN {where}: {peak:.0f} MiB")

    if args.skip_probe:
        return
    before = rss_mib()
    start = time.perf_counter()
    probe = fit_linear_probe(train, train_labels)
    sync()
    probe_s = time.perf_counter() - start
    top1 = float((probe.predict(test) == test_labels.to(probe.weight.device)).double().mean())
    print(
        f"linear probe (L-BFGS, float64, l2={probe.l2}) on the same features: {probe_s:.2f} s, "
        f"{probe.iterations} iterations, converged={probe.converged}, test top1={top1:.4f}, "
        f"peak RSS growth {rss_mib() - before:.0f} MiB"
    )


if __name__ == "__main__":
    main()
