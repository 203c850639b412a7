"""Speed of the theory lab: a phase map of >= 100,000 eigenmode configurations integrated to convergence.

Grid (100,000 configurations): η ∈ 20 values in [0.005, 0.3] × α_p ∈ {0.5, 1, 2, 4, 8} ×
β ∈ 5 values (EMA only; stop-gradient ignores β) × σ² ∈ {0, 0.25, 0.5, 1} × p(0) ∈ 50 values in
[−0.2, 1.2], every mode started on the invariant manifold s(0) = p(0)²/α_p. Each configuration is
integrated by the batched Dormand–Prince 5(4) integrator until it converges (to p*₊ or into a
proven collapse region); none may be left undecided. The target is < 2 s on 2 CPU cores.

    python benchmarks/theory_speed.py                 # stop-gradient and EMA, 2 threads, best of 3
    python benchmarks/theory_speed.py --threads 1 --targets stopgrad
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from collapselab.theory.eigenmodes import phase_map


def grid(target: str) -> dict:
    betas = [0.1, 0.5, 1.0, 2.0, 5.0] if target == "ema" else [1.0, 2.0, 3.0, 4.0, 5.0]
    return dict(
        eta=np.linspace(0.005, 0.3, 20),
        alpha_p=[0.5, 1.0, 2.0, 4.0, 8.0],
        beta=betas,
        sigma2=[0.0, 0.25, 0.5, 1.0],
        p0=np.linspace(-0.2, 1.2, 50),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repetitions; the best is reported"
    )
    parser.add_argument(
        "--targets", default="stopgrad,ema", help="comma list of stopgrad, ema, direct"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    phase_map(eta=[0.1], p0=[0.5])  # warm-up: imports and first-call overheads
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for target in args.targets.split(","):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            pm = phase_map(**grid(target), target=target)
            times.append(time.perf_counter() - start)
        best = min(times)
        counts = pm.counts()
        print(
            f"{target:8s} {pm.size} configurations: best {best:.3f} s (runs: "
            f"{', '.join(f'{t:.3f}' for t in times)}), {pm.size / best:,.0f} configurations/s, "
            f"{pm.extra['steps']} steps; {counts['collapsed']} collapsed, {counts['non-collapsed']} non-collapsed, "
            f"{counts['undecided']} undecided; agreement with fixed-τ theory {pm.agreement():.4f}; "
            f"target < 2 s: {'met' if best < 2.0 and counts['undecided'] == 0 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
