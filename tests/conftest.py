"""Shared pytest fixtures."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads make
# small linear-algebra calls 10-20x slower. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator so every test draws the same numbers."""
    return torch.Generator().manual_seed(0)
