"""The band head: positive widths of the right shape, its initial width, gradcheck in float64, and
config errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from collapselab._validation import InputError
from collapselab.models.band import BandHead, inverse_positive


@pytest.mark.parametrize("param", ["softplus", "exp"])
@pytest.mark.parametrize("width", [1e-3, 0.5, 1.0, 30.0])
def test_inverse_positive_inverts_the_parametrisation(param: str, width: float) -> None:
    a = torch.tensor(inverse_positive(width, param), dtype=torch.float64)
    value = torch.exp(a) if param == "exp" else F.softplus(a)
    assert float(value) == pytest.approx(width, rel=1e-12)


@pytest.mark.parametrize("param", ["softplus", "exp"])
@pytest.mark.parametrize("shape, columns", [("diagonal", 6), ("scalar", 1)])
def test_an_input_with_zero_hidden_features_starts_at_the_initial_width(param: str, shape: str, columns: int) -> None:
    torch.manual_seed(0)
    head = BandHead(5, 6, shape=shape, param=param, hidden_dim=8, init_width=0.7).eval()
    sigma = head(torch.zeros(3, 5))  # BatchNorm at its initial statistics maps 0 to 0, so a = b₂
    assert sigma.shape == (3, columns) and head.out_dim == columns
    assert torch.allclose(sigma, torch.full_like(sigma, 0.7), rtol=1e-6)
    # a random batch: widths are positive and centred on the initial width (W₂ is small at init)
    spread = head.train()(torch.randn(64, 5)).detach()
    assert bool((spread > 0).all()) and abs(float(spread.log().median()) - math.log(0.7)) < 0.5


def test_widths_stay_positive_for_extreme_features() -> None:
    torch.manual_seed(1)
    for param in ("softplus", "exp"):
        head = BandHead(4, 3, param=param, hidden_dim=8).double().eval()
        with torch.no_grad():
            head.out.bias.fill_(-30.0)
        sigma = head(torch.randn(16, 4, dtype=torch.float64) * 1e3)
        assert bool((sigma > 0).all()) and bool(torch.isfinite(sigma).all())


@pytest.mark.parametrize("param", ["softplus", "exp"])
@pytest.mark.parametrize("shape", ["diagonal", "scalar"])
def test_band_head_passes_gradcheck_in_float64(param: str, shape: str) -> None:
    torch.manual_seed(2)
    head = BandHead(4, 3, shape=shape, param=param, hidden_dim=6).double()
    features = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(p for p in head.parameters())

    def widths(x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, dict(zip([n for n, _ in head.named_parameters()], weights, strict=True)), (x,))

    for mode in (head.train, head.eval):
        mode()
        assert torch.autograd.gradcheck(widths, (features, *params), eps=1e-6, atol=1e-6)


def test_band_head_rejects_bad_settings_and_inputs() -> None:
    with pytest.raises(InputError, match="shape must be one of"):
        BandHead(4, 3, shape="full")
    with pytest.raises(InputError, match="param must be one of"):
        BandHead(4, 3, param="relu")
    with pytest.raises(InputError, match="hidden_dim"):
        BandHead(4, 3, hidden_dim=0)
    with pytest.raises(InputError, match="positive finite"):
        BandHead(4, 3, init_width=0.0)
    with pytest.raises(InputError, match=r"shape \(B, 4\)"):
        BandHead(4, 3)(torch.randn(2, 5))
