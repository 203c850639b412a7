"""Each method's closed-form loss at complete collapse (``SSLMethod.collapse_loss``) against the
method's own loss evaluated on identical embeddings: a backbone that maps every image to the
same vector makes every branch (online, target, predictor-free) output one point."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from collapselab.methods import METHODS, build_method, method_class

torch.set_num_threads(1)


class ConstantBackbone(nn.Module):
    """Every image → the same feature vector (a collapsed backbone)."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.out_dim = dim
        self.feature = nn.Parameter(torch.linspace(-1.0, 2.0, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


# predictor-free variants: a collapsed prediction then points at the collapsed target (and SimSiam
# without the projector's output BatchNorm, which maps a constant batch to the zero vector)
CASES = {
    "simclr": {}, "moco": {"queue_size": 48}, "byol": {"predictor": "none"}, "simsiam": {"predictor": "none", "projector_bn": False},
    "directpred": {}, "barlow_twins": {}, "vicreg": {}, "composite": {}, "falcon": {"n_codes": 16, "beta": 1.0},
    # centre momentum 0: the centre equals the constant teacher output, so the teacher is uniform;
    # a huge student temperature makes the student uniform too: L = log K
    "dino": {"center_momentum": 0.0, "student_temp": 1e6, "out_dim": 16},
}
# no single value: SwAV's collapsed loss depends on the prototypes (tests/methods/test_swav.py has
# its closed form); I-JEPA needs a ViT backbone (tests/methods/test_ijepa.py checks its value)
NO_SINGLE_VALUE = {"swav"}
OWN_TEST = {"ijepa"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_collapse_loss_equals_the_loss_of_identical_embeddings(name: str) -> None:
    torch.manual_seed(0)
    cls = method_class(name)
    config = cls.config_class(**CASES[name], projector_out_dim=8)
    method = build_method(config, ConstantBackbone()).double()
    n = 16
    views = [torch.randn(n, 1, 4, 4, dtype=torch.float64) for _ in range(2)]
    for _ in range(4):  # MoCo: fill its queue with collapsed keys first
        loss = float(method(views).loss.detach())
    expected = method.collapse_loss(n)
    assert expected is not None
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_every_method_states_its_collapse_value_or_none() -> None:
    assert set(CASES) | NO_SINGLE_VALUE | OWN_TEST == set(METHODS)
    for name in NO_SINGLE_VALUE & set(METHODS):
        assert build_method(method_class(name).config_class(), ConstantBackbone()).collapse_loss(16) is None


def test_nt_xent_collapse_value_is_log_of_2n_minus_1_and_vicreg_follows_its_variance_weight() -> None:
    simclr = build_method(method_class("simclr").config_class(), ConstantBackbone())
    assert simclr.collapse_loss(256) == pytest.approx(math.log(511))
    vicreg = build_method(method_class("vicreg").config_class(variance_weight=0.0), ConstantBackbone())
    assert vicreg.collapse_loss(256) == 0.0
    falcon = build_method(method_class("falcon").config_class(n_codes=16, beta=0.5), ConstantBackbone())
    assert falcon.collapse_loss(256) is None  # depends on the collapsed code distribution
