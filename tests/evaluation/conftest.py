"""Fixtures for the evaluation tests: one thread (small ops on a shared machine) and seeded data."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Small matrix ops are faster and steadier on one thread when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_blobs(
    n_per_class: int, n_classes: int, dim: int, spread: float, seed: int, centre_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes around unit-norm centres: (n·C, D) float64 features, (n·C,) labels.

    The centres depend only on ``centre_seed``, so calls with different ``seed`` draw train and
    test samples of the same classes.
    """
    centre_generator = torch.Generator().manual_seed(centre_seed)
    centres = torch.randn(n_classes, dim, generator=centre_generator, dtype=torch.float64)
    centres = torch.nn.functional.normalize(centres, dim=1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(
        len(labels), dim, generator=g, dtype=torch.float64
    )
    order = torch.randperm(len(labels), generator=g)
    return features[order], labels[order]
