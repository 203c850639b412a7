"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator so every test draws the same numbers."""
    return torch.Generator().manual_seed(0)
