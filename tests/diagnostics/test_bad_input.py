"""Bad input gives a clear exception naming what is wrong — never a silent number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collapselab import diagnose
from collapselab import diagnostics as dg
from collapselab._validation import InputError

FUNCTIONS = [
    dg.covariance,
    dg.eigenspectrum,
    dg.stable_rank,
    dg.effective_rank,
    dg.rankme,
    dg.alpha_req,
    dg.eigenvalue_log_ratio,
    dg.explained_variance_curve,
    dg.uniformity,
    dg.normalized_std,
    dg.mean_pairwise_cosine,
    dg.relative_variance,
    diagnose,
]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_nan_and_inf_are_counted_and_located(fn) -> None:
    z = torch.randn(10, 4)
    z[3, 2] = float("nan")
    z[7, 0] = float("inf")
    with pytest.raises(InputError) as err:
        fn(z)
    message = str(err.value)
    assert "2 non-finite" in message and "1 NaN, 1 Inf" in message and "(3, 2)" in message


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_fewer_than_two_samples_rejected(fn) -> None:
    with pytest.raises(InputError, match="at least 2 samples"):
        fn(torch.randn(1, 4))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_wrong_rank_rejected_with_shape_in_message(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match=r"2-D array of shape \(N, D\)"):
        diagnose(torch.zeros(shape))


def test_zero_width_and_non_numeric_rejected() -> None:
    with pytest.raises(InputError, match="zero dimensions"):
        diagnose(np.zeros((5, 0)))
    with pytest.raises(InputError, match="object arrays"):
        diagnose(np.array([[1, "a"], [2, "b"]], dtype=object))
    with pytest.raises(InputError, match="real numbers"):
        diagnose(torch.ones(4, 3, dtype=torch.bool))


def test_mismatched_views_and_codes_rejected() -> None:
    z = torch.randn(10, 4)
    with pytest.raises(InputError, match="same shape"):
        diagnose(z, views=torch.randn(9, 4))
    with pytest.raises(InputError, match="10 rows"):
        diagnose(z, codes=torch.arange(8))
    with pytest.raises(InputError, match="labels"):
        diagnose(z, labels=torch.arange(11))


@pytest.mark.parametrize("which", ["z", "labels", "codes"])
def test_text_arrays_are_a_one_line_error_naming_the_argument(which: str) -> None:
    """Class names given where numbers go: an InputError that names the argument and the fix,
    not torch's TypeError."""
    z = np.random.default_rng(0).normal(size=(40, 4))
    names = np.array(["cat", "dog"] * 20)
    kwargs = {"z": names.reshape(20, 2)} if which == "z" else {"z": z, which: names}
    with pytest.raises(InputError, match=rf"^{which}: holds text .*np.unique"):
        diagnose(**kwargs)
