"""Calibration cases for the collapse verdicts: real networks on scikit-learn's digits.

Usage: python benchmarks/diagnostics_calibration.py [--steps 300] [--collapse-steps 1500]

Trains a small ReLU MLP (backbone 64-256-256, projector 256-128-64, predictor 64-64-64) with
noise + masking augmentations and prints, for the 64-d projector output on all 1,797 images:
spread (min of relative and directional variance), effective rank, mean pairwise cosine, and the
verdicts without and with the initialisation as reference. The numbers in docs/diagnostics.md
come from this script.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from collapselab import diagnose
from collapselab.diagnostics import effective_rank


def networks(seed: int, bn: bool = False) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    projector = nn.Sequential(
        nn.Linear(256, 128), nn.BatchNorm1d(128) if bn else nn.Identity(), nn.ReLU(), nn.Linear(128, 64)
    )
    predictor = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    return backbone, projector, predictor


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x * (torch.rand(x.shape, generator=g) > 0.2).float() + 0.1 * torch.randn(x.shape, generator=g)


def vicreg(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    def variance(z: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(0)
        c = z.T @ z / (len(z) - 1)
        return (c.pow(2).sum() - c.diagonal().pow(2).sum()) / z.shape[1]

    return 25 * F.mse_loss(z1, z2) + 25 * (variance(z1) + variance(z2)) / 2 + covariance(z1) + covariance(z2)


def embed(x: torch.Tensor, backbone: nn.Module, projector: nn.Module) -> torch.Tensor:
    projector.eval()
    with torch.no_grad():
        out = projector(backbone(x))
    projector.train()
    return out


def train(
    x: torch.Tensor,
    objective: str,
    steps: int,
    bn: bool = False,
    probe: Callable[[int, torch.Tensor], None] | None = None,
    probe_every: int = 50,
    probe_x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Train on ``x`` with ``objective`` ("vicreg", "simsiam", "simsiam_no_stop_gradient").

    Returns (embeddings of ``probe_x`` (default ``x``) at initialisation, at the end, final
    loss); ``probe(step, emb)`` gets the embeddings of ``probe_x`` at step 0 and every
    ``probe_every`` steps.
    """
    probe_x = x if probe_x is None else probe_x
    backbone, projector, predictor = networks(1, bn)
    start = embed(probe_x, backbone, projector)
    if probe is not None:
        probe(0, start)
    params = [*backbone.parameters(), *projector.parameters(), *predictor.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.0)
    for step in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=g)
        z1, z2 = projector(backbone(augment(x[idx], g))), projector(backbone(augment(x[idx], g)))
        if objective == "vicreg":
            loss = vicreg(z1, z2)
        else:
            target1, target2 = (z2, z1) if objective == "simsiam_no_stop_gradient" else (z2.detach(), z1.detach())
            p1, p2 = predictor(z1), predictor(z2)
            loss = -(F.cosine_similarity(p1, target1).mean() + F.cosine_similarity(p2, target2).mean()) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if probe is not None and (step + 1) % probe_every == 0:
            probe(step + 1, embed(probe_x, backbone, projector))
    return start, embed(probe_x, backbone, projector), float(loss.detach())


def row(name: str, z: torch.Tensor, reference: torch.Tensor | None, loss: float | None = None) -> None:
    snap = diagnose(z)
    m = snap.metrics
    rel = diagnose(z, reference=diagnose(reference)) if reference is not None else None
    loss_text = f"{loss:.5f}" if loss is not None else "-"
    verdicts = f"{snap.verdict['complete']}/{snap.verdict['dimensional']}"
    if rel is not None:
        verdicts += f" | vs init: {rel.verdict['complete']}/{rel.verdict['dimensional']}"
    print(
        f"{name:<34} loss {loss_text:>9}  spread {m['spread']:.2e}  erank {m['effective_rank']:6.2f}  "
        f"cos {m['mean_pairwise_cosine']:.3f}  complete/dimensional: {verdicts}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--collapse-steps", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0

    for seed in range(3):
        backbone, projector, _ = networks(seed)
        row(f"random init (seed {seed})", embed(x, backbone, projector), None)
    torch.manual_seed(0)
    deep = nn.Sequential(*[m for i in range(12) for m in (nn.Linear(64 if i == 0 else 256, 256), nn.ReLU())])
    with torch.no_grad():
        row("random 12-layer ReLU MLP", deep(x), None)
    trajectory: list[str] = []
    train(x, "vicreg", args.steps, probe_every=10,
          probe=lambda step, emb: trajectory.append(f"{step}:{effective_rank(emb):.1f}"))
    print("VICReg effective rank every 10 steps (step:erank):", " ".join(trajectory))
    for objective, steps, bn in (
        ("vicreg", args.steps, False),
        ("simsiam", args.steps, False),
        ("simsiam_no_stop_gradient", args.collapse_steps, False),
        ("simsiam_no_stop_gradient", args.collapse_steps, True),
    ):
        start, end, loss = train(x, objective, steps, bn)
        row(f"{objective}{' +BN' if bn else ''} ({steps} steps)", end, start, loss)


if __name__ == "__main__":
    main()
