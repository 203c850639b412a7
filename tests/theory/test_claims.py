"""The claims ledger: every claim passes, every counterfactual prediction fails, the registry behaves."""

from __future__ import annotations

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

ISSUE_CLAIMS = [
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


def test_ledger_holds_the_eleven_claims_of_the_issue_in_order():
    ids = [c.id for c in all_claims()]
    assert ids[: len(ISSUE_CLAIMS)] == ISSUE_CLAIMS
    for c in all_claims():
        assert c.source and c.statement and c.counterfactual


@pytest.mark.parametrize("claim_id", ISSUE_CLAIMS)
def test_claim_passes_with_its_published_prediction(claim_id):
    result = get_claim(claim_id).run()
    assert result.error is None, result.error
    assert result.passed, format_table([result])


@pytest.mark.parametrize("claim_id", ISSUE_CLAIMS)
def test_claim_fails_with_a_deliberately_wrong_prediction(claim_id):
    result = get_claim(claim_id).run(counterfactual=True)
    assert result.error is None, result.error
    assert not result.passed
    assert any(not c.passed for c in result.comparisons)


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
