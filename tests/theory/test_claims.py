"""The claims ledger: every claim passes, every counterfactual prediction fails, the registry behaves."""

from __future__ import annotations

import re

import pytest

from collapselab._validation import InputError
from collapselab.theory.claims import (
    Claim,
    Comparison,
    all_claims,
    format_table,
    get_claim,
    register_claim,
    unregister_claim,
    verify,
)

CORE_CLAIMS = [
    "naive-alignment-closed-form",
    "eigenmode-reduction",
    "fixed-points-and-stability",
    "direct-minimisation-collapses",
    "stopgrad-ema-stable-equilibria",
    "no-predictor-collapse-stable",
    "optimal-linear-predictor",
    "stable-rank-scale-invariant",
    "nt-xent-collapse-and-simplex",
    "batchnorm-jacobian-inverse-spread",
    "rademacher-quasi-orthogonality",
]
# claims on the diagnostics themselves registered after the eleven core ones
DIAGNOSTIC_CLAIMS = ["uniformity-zero-at-collapse"]
THEORY_CLAIMS = CORE_CLAIMS + DIAGNOSTIC_CLAIMS


def test_ledger_holds_the_claims_of_the_issues_in_order():
    ids = [c.id for c in all_claims()]
    assert ids[: len(THEORY_CLAIMS)] == THEORY_CLAIMS
    for c in all_claims():
        assert c.source and c.statement and c.counterfactual


@pytest.fixture(scope="module")
def runs():
    """Each theory claim run once as published and once with its counterfactual."""
    return {i: (get_claim(i).run(), get_claim(i).run(counterfactual=True)) for i in THEORY_CLAIMS}


@pytest.mark.parametrize("claim_id", THEORY_CLAIMS)
def test_claim_passes_with_its_published_prediction(claim_id, runs):
    result = runs[claim_id][0]
    assert result.error is None, result.error
    assert result.passed, format_table([result])


@pytest.mark.parametrize("claim_id", THEORY_CLAIMS)
def test_claim_fails_with_a_deliberately_wrong_prediction(claim_id, runs):
    result = runs[claim_id][1]
    assert result.error is None, result.error
    assert not result.passed
    assert any(not c.passed for c in result.comparisons)


@pytest.mark.parametrize("claim_id", THEORY_CLAIMS)
def test_counterfactual_reruns_the_same_check(claim_id, runs):
    """The counterfactual perturbs the prediction or the model, never the check: the same rows,
    with the same relations and tolerances, so it cannot fail merely by negating a relation."""
    real, wrong = runs[claim_id]
    shape = [(c.name, c.relation, c.tolerance, c.relative) for c in real.comparisons]
    assert shape == [(c.name, c.relation, c.tolerance, c.relative) for c in wrong.comparisons]


# the rows (regular expressions on the row name) each counterfactual must break: for a perturbed
# model, the rows measuring the mechanism; for a perturbed prediction, the rows it predicts
MUST_FAIL = {
    "direct-minimisation-collapses": ["^with predictor: max", "^without predictor: max", "< 0$"],
    "stopgrad-ema-stable-equilibria": ["smallest singular value", "‖∇J‖ of the original objective"],
    "no-predictor-collapse-stable": [
        r"stopgrad: max Re λ\(J\) at W = 0$",
        r"ema: max Re λ\(J\) at W = 0$",
    ],
    "stable-rank-scale-invariant": [r"srank\(1000·Z\)", r"srank\(0\.001·Z\)", r"λ = \(1, 1e-06"],
    "nt-xent-collapse-and-simplex": [
        "nt_xent at collapse",
        "SimCLR.collapse_loss",
        "SimCLR forward",
    ],
    "batchnorm-jacobian-inverse-spread": ["at σ = 0.03", "log-log slope"],
    "rademacher-quasi-orthogonality": [r"E\[cos²\]"],
    "uniformity-zero-at-collapse": ["uniformity at collapse", "near collapse", "at the simplex"],
}


@pytest.mark.parametrize("claim_id", sorted(MUST_FAIL))
def test_counterfactual_breaks_the_rows_it_targets(claim_id, runs):
    real, wrong = runs[claim_id]
    for fragment in MUST_FAIL[claim_id]:
        targeted = [c for c in wrong.comparisons if re.search(fragment, c.name)]
        assert targeted, fragment
        assert not any(c.passed for c in targeted), format_table([wrong])
        assert all(c.passed for c in real.comparisons if re.search(fragment, c.name))


@pytest.mark.parametrize(
    "row, expected",
    [
        (Comparison("x", 1.0, 1.05, 0.1), True),
        (Comparison("x", 1.0, 1.2, 0.1), False),
        (Comparison("x", 100.0, 104.0, 0.05, relative=True), True),
        (Comparison("x", 100.0, 106.0, 0.05, relative=True), False),
        (Comparison("x", 0.0, -1.0, relation="<"), True),
        (Comparison("x", 0.0, 1.0, relation="<"), False),
        (Comparison("x", 0.0, 1.0, relation=">"), True),
        (Comparison("x", 0.0, float("nan"), 1e9), False),
    ],
)
def test_comparison_relations(row, expected):
    assert row.passed is expected


def test_registered_claim_runs_in_verify_and_a_broken_check_fails_without_crashing():
    def good(counterfactual: bool):
        return [Comparison("two", 3.0 if counterfactual else 2.0, 1.0 + 1.0, 1e-12)]

    def broken(counterfactual: bool):
        raise RuntimeError("boom")

    register_claim(Claim("test-good", "test", "1 + 1 = 2", good, "1 + 1 = 3"))
    register_claim(Claim("test-broken", "test", "never runs", broken, "n/a"))
    try:
        good_res, broken_res = verify(["test-good", "test-broken"])
        assert good_res.passed and not verify(["test-good"], counterfactual=True)[0].passed
        assert not broken_res.passed and "boom" in broken_res.error
        assert "FAIL" in format_table([broken_res]) and broken_res.to_dict()["passed"] is False
        with pytest.raises(InputError, match="already registered"):
            register_claim(Claim("test-good", "test", "again", good, ""))
    finally:
        unregister_claim("test-good")
        unregister_claim("test-broken")
    assert "test-good" not in [c.id for c in all_claims()]


def test_unknown_claim_id_suggests_the_closest_one():
    with pytest.raises(InputError, match="did you mean 'eigenmode-reduction'"):
        get_claim("eigenmode-reductoin")


def test_comparison_rejects_unknown_relation():
    with pytest.raises(InputError, match="relation"):
        Comparison("x", 0.0, 0.0, relation="<=")
