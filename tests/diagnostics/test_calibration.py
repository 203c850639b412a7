"""Calibration cases on real networks (science.md §1): random initialisation, healthy training,
and genuinely collapsed training must get the verdicts they deserve.

A small ReLU MLP is trained on scikit-learn's digits with noise + masking augmentations:
- random initialisation: informative features (1-NN accuracy far above chance) with a large
  mean offset (mean cosine ≈ 0.8-0.97) — never "collapsed";
- healthy: a VICReg objective (written out here as the paper's formula) — healthy relative to
  initialisation;
- collapsed: SimSiam *without* stop-gradient until its loss is below −0.999 — collapsed
  relative to initialisation, and at least a warning from a snapshot alone.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapselab import CollapseMonitor, diagnose

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny: one thread is fastest and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data, dtype=torch.float32) / 16.0


def _networks(seed: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    projector = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    predictor = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    return backbone, projector, predictor


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    keep = (torch.rand(x.shape, generator=g) > 0.2).float()
    return x * keep + 0.1 * torch.randn(x.shape, generator=g)


def _vicreg(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    def variance(z: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(0)
        c = z.T @ z / (len(z) - 1)
        return (c.pow(2).sum() - c.diagonal().pow(2).sum()) / z.shape[1]

    return 25 * F.mse_loss(z1, z2) + 25 * (variance(z1) + variance(z2)) / 2 + covariance(z1) + covariance(z2)


def _train(x: torch.Tensor, objective: str, steps: int, monitor: CollapseMonitor) -> float:
    """Train with ``objective``; every 50 steps the monitor sees a fixed 600-image probe batch."""
    backbone, projector, predictor = _networks(seed=1)
    params = [*backbone.parameters(), *projector.parameters(), *predictor.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)

    probe_batch = x[::3]

    def probe(step: int) -> None:
        with torch.no_grad():
            r = backbone(probe_batch)
            e = projector(r)
        monitor.update(step, {"repr": r, "emb": e})
        monitor.final_embeddings = {"repr": r, "emb": e}  # test-side attribute

    probe(0)
    loss = torch.tensor(0.0)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (256,), generator=g)
        z1 = projector(backbone(_augment(x[idx], g)))
        z2 = projector(backbone(_augment(x[idx], g)))
        if objective == "simsiam_no_stop_gradient":
            p1, p2 = predictor(z1), predictor(z2)
            loss = -(F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean()) / 2
        else:
            loss = _vicreg(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            probe(step)
    return float(loss.detach())


def test_random_initialisation_is_informative_and_never_called_collapsed(digits: torch.Tensor) -> None:
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    labels = load_digits().target
    for seed in range(2):
        backbone, projector, _ = _networks(seed)
        with torch.no_grad():
            r = backbone(digits)
            e = projector(r)
        for z in (r, e):
            d = diagnose(z[::2])
            assert d.verdict["complete"] != "collapsed"
            assert d.verdict["dimensional"] != "collapsed"
        assert diagnose(r).metrics["mean_pairwise_cosine"] > 0.7  # raw cosines look collapsed ...
        knn = KNeighborsClassifier(1, metric="cosine").fit(r[::2].numpy(), labels[::2])
        assert knn.score(r[1::2].numpy(), labels[1::2]) > 0.8  # ... yet features are informative


def test_healthy_training_stays_healthy_relative_to_initialisation(digits: torch.Tensor) -> None:
    monitor = CollapseMonitor()
    _train(digits, "vicreg", steps=200, monitor=monitor)
    for name in ("repr", "emb"):
        assert monitor.levels[name]["complete"][-1] == "healthy", monitor.latest[name]
        assert monitor.levels[name]["dimensional"][-1] == "healthy", monitor.latest[name]
    assert not [a for a in monitor.alarms if a.level == "collapsed"]


def test_simsiam_without_stop_gradient_is_flagged_collapsed(digits: torch.Tensor) -> None:
    monitor = CollapseMonitor()
    final_loss = _train(digits, "simsiam_no_stop_gradient", steps=250, monitor=monitor)
    assert final_loss < -0.999  # the objective's trivial minimum is (almost) reached
    emb = monitor.latest["emb"]
    assert emb.verdict["complete"] == "collapsed", emb
    assert emb.verdict["dimensional"] == "collapsed", emb
    collapse_alarms = [a for a in monitor.alarms if a.name == "emb" and a.level == "collapsed"]
    assert collapse_alarms and collapse_alarms[0].step <= 100
    # from the final embeddings alone (no reference) the verdict is at least a warning
    snapshot = diagnose(monitor.final_embeddings["emb"])
    assert snapshot.worst in ("warning", "collapsed"), snapshot
