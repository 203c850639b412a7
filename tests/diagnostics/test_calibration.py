"""Calibration cases on real networks: random initialisation, healthy training,
and genuinely collapsed training must get the verdicts they deserve.

The networks, augmentations and objectives are those of ``benchmarks/diagnostics_calibration.py``
(whose printed numbers are quoted in docs/diagnostics.md), loaded from there so the two cannot
drift: a small ReLU MLP on scikit-learn's digits with noise + masking augmentations.
- random initialisation: informative features (1-NN accuracy far above chance) with a large
  mean offset (mean cosine ≈ 0.8-0.97) — never "collapsed";
- healthy: VICReg — healthy relative to initialisation;
- collapsed: SimSiam *without* stop-gradient until its loss is below −0.999 — collapsed
  relative to initialisation, and at least a warning from a snapshot alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from collapselab import CollapseMonitor, diagnose

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnostics_calibration.py"
_spec = importlib.util.spec_from_file_location("diagnostics_calibration", SCRIPT)
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)


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


def _monitored_training(x: torch.Tensor, objective: str, steps: int) -> tuple[CollapseMonitor, torch.Tensor, float]:
    """Train on all digits; every 50 steps the monitor sees a fixed 600-image probe batch."""
    monitor = CollapseMonitor(warmup_steps=50)
    _, final, loss = calibration.train(
        x, objective, steps, probe=lambda step, emb: monitor.update(step, {"emb": emb}), probe_x=x[::3]
    )
    return monitor, final, loss


def test_random_initialisation_is_informative_and_never_called_collapsed(digits: torch.Tensor) -> None:
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    labels = load_digits().target
    for seed in range(2):
        backbone, projector, _ = calibration.networks(seed)
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
    monitor, _, _ = _monitored_training(digits, "vicreg", steps=200)
    assert monitor.levels["emb"]["complete"][-1] == "healthy", monitor.latest["emb"]
    assert monitor.levels["emb"]["dimensional"][-1] == "healthy", monitor.latest["emb"]
    # after the warm-up, at most a passing warning while the early rank dip recovers
    assert not [a for a in monitor.alarms if a.level == "collapsed"]
    ranks = monitor.history["emb"]["effective_rank"]
    assert ranks[-1] > ranks[1]  # recovering, not falling


def test_simsiam_without_stop_gradient_is_flagged_collapsed(digits: torch.Tensor) -> None:
    monitor, final, loss = _monitored_training(digits, "simsiam_no_stop_gradient", steps=250)
    assert loss < -0.999  # the objective's trivial minimum is (almost) reached
    emb = monitor.latest["emb"]
    assert emb.verdict["complete"] == "collapsed", emb
    assert emb.verdict["dimensional"] == "collapsed", emb
    collapse_alarms = [a for a in monitor.alarms if a.level == "collapsed"]
    assert collapse_alarms and collapse_alarms[0].step <= 150
    # from the final embeddings alone (no reference) the verdict is at least a warning
    assert diagnose(final).worst in ("warning", "collapsed")
