"""Training-level claims: registered as kind "training", skipped by default, each passes and its
counterfactual (the same run with the mechanism switched back on) fails. The slow tests train."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import collapselab
import collapselab.theory.training_claims as training_claims
from collapselab.cli import main
from collapselab.methods import METHODS
from collapselab.theory import claims as ledger
from collapselab.theory.claims import Claim, Comparison, all_claims, format_table, get_claim

TRAINING_CLAIMS = [
    "simsiam-no-predictor-collapses",
    "byol-no-predictor-fast-ema-collapses",
    *(["alignment-alone-collapses"] if "composite" in METHODS else []),
    *(["falcon-uses-all-codes"] if "falcon" in METHODS else []),
    *(["predictor-delays-band-shrinkage", "predictor-shapes-rank-trajectory"] if "composite" in METHODS else []),
]


def _summary(alarms, steps=100, status="completed"):
    diag = {
        "metrics": {"effective_rank": 3.0},
        "verdict": {"complete": "healthy", "dimensional": "collapsed", "cluster": "n/a"},
    }
    return {
        "status": status,
        "steps": steps,
        "alarms": alarms,
        "diagnosis": {"emb": diag},
        "eval": {"knn_top1": 0.94},
    }


def _alarm(step, level, mode="dimensional", name="emb"):
    return {"step": step, "name": name, "mode": mode, "level": level}


def test_training_claims_are_registered_with_kind_training_after_the_theory_claims():
    assert [c.id for c in all_claims("training")] == TRAINING_CLAIMS
    for c in all_claims("training"):
        assert c.kind == "training" and c.slow
        assert c.source and c.statement and c.counterfactual
    theory = all_claims("theory")
    assert len(theory) >= 11 and all(c.kind == "theory" for c in theory)
    assert not set(TRAINING_CLAIMS) & {c.id for c in theory}


def test_collapse_rows_pass_on_a_collapsed_alarm_and_fail_without_one():
    collapsed = _summary([_alarm(35, "warning"), _alarm(70, "collapsed")])
    rows = training_claims.collapse_rows(collapsed, ("dimensional",), "run")
    assert all(r.passed for r in rows)
    assert rows[1].measured == 70.0
    warning_only = _summary([_alarm(35, "warning"), _alarm(40, "collapsed", mode="complete")])
    assert not all(
        r.passed for r in training_claims.collapse_rows(warning_only, ("dimensional",), "run")
    )
    assert all(
        r.passed for r in training_claims.healthy_rows(warning_only, ("dimensional",), "run")
    )
    other_embedding = _summary([_alarm(70, "collapsed", name="repr")])
    assert training_claims.worst_alarm(other_embedding, ("dimensional",), ("emb",))[0] == 0
    assert training_claims.worst_alarm(other_embedding, ("dimensional",)) == (2, 70.0)


def test_training_runs_use_one_thread_a_fixed_seed_and_a_temporary_folder(monkeypatch, tmp_path):
    seen = {}

    def fake_train(method, dataset, *, config=None, overrides=()):
        seen.update(method=method, dataset=dataset, config=config, overrides=list(overrides))
        return SimpleNamespace(
            summary=_summary([]), config=SimpleNamespace(method=SimpleNamespace())
        )

    monkeypatch.setattr(collapselab, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    summary = training_claims.train_summary("simsiam", ["method.predictor=none"])
    assert summary["status"] == "completed"
    assert (seen["method"], seen["dataset"]) == ("simsiam", "digits")
    assert "train.threads=1" in seen["overrides"] and "train.seed=0" in seen["overrides"]
    assert seen["overrides"][-1] == "method.predictor=none"
    out_dir = next(o for o in seen["overrides"] if o.startswith("run.out_dir="))
    assert "collapselab-verify-" in out_dir and not (tmp_path / "runs").exists()


@pytest.fixture
def fake_ledger(monkeypatch):
    """A registry with one cheap theory claim and one training claim that records it ran."""
    ran = []

    def check(name):
        def run(counterfactual: bool) -> list[Comparison]:
            ran.append(name)
            return [Comparison("one", 1.0, 1.0, 0.0)]

        return run

    registry = {
        "fake-theory": Claim("fake-theory", "t", "s", check("fake-theory"), "cf"),
        "fake-training": Claim(
            "fake-training", "t", "s", check("fake-training"), "cf", slow=True, kind="training"
        ),
    }
    monkeypatch.setattr(ledger, "_REGISTRY", registry)
    return ran


def test_default_verify_runs_no_training_claim(fake_ledger, capsys):
    assert main(["verify"]) == 0
    assert fake_ledger == ["fake-theory"]
    assert [r.claim_id for r in ledger.verify()] == ["fake-theory"]


def test_verify_training_runs_only_the_training_claims(fake_ledger, capsys):
    assert main(["verify", "--training", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(c["id"], c["kind"]) for c in out["claims"]] == [("fake-training", "training")]
    assert fake_ledger == ["fake-training"]


def test_verify_claim_id_runs_a_training_claim_without_the_flag(fake_ledger, capsys):
    assert main(["verify", "--claim", "fake-training"]) == 0
    assert "[PASS] fake-training [training]" in capsys.readouterr().out
    assert fake_ledger == ["fake-training"]


def test_verify_list_shows_the_kind_and_training_filters(capsys):
    assert main(["verify", "--list"]) == 0
    out = capsys.readouterr().out
    assert "stable-rank-scale-invariant  [theory]" in out
    assert "simsiam-no-predictor-collapses  [training]" in out
    assert main(["verify", "--list", "--training"]) == 0
    out = capsys.readouterr().out
    assert "[theory]" not in out
    assert all(f"{cid}  [training]" in out for cid in TRAINING_CLAIMS)


@pytest.mark.slow
@pytest.mark.parametrize("claim_id", TRAINING_CLAIMS)
def test_training_claim_passes_and_its_counterfactual_run_fails(claim_id):
    result = get_claim(claim_id).run()
    assert result.error is None, result.error
    assert result.passed, format_table([result])
    flipped = get_claim(claim_id).run(counterfactual=True)
    assert flipped.error is None, flipped.error
    assert not flipped.passed, format_table([flipped])


def _band_summary(steps, band, erank, loss):
    """A fake ``band_run`` result: checks of ``emb`` at ``steps`` with these band widths and ranks."""
    summary = _summary([], steps=steps[-1])
    summary["_checks"] = {"step": list(steps), "band_width": list(band), "effective_rank": list(erank)}
    summary["_check_losses"] = [loss] * len(steps)
    return summary


def _fake_band_runs(monkeypatch, mlp_halves_at, mlp_final_rank):
    """Direct runs: the band halves at step 23, rank 8 throughout. MLP runs: the band halves at
    ``mlp_halves_at`` (None: never), rank 20 until the last check, then ``mlp_final_rank``."""
    steps = list(range(0, 101))

    def band(halves_at):
        return [1.0 if halves_at is None or s < halves_at else 0.3 for s in steps]

    def fake(predictor, overrides, *args):
        if predictor == "none":
            return _band_summary(steps, band(23), [8.0] * len(steps), 9.20)
        return _band_summary(steps, band(mlp_halves_at), [20.0] * (len(steps) - 1) + [mlp_final_rank], 9.22)

    monkeypatch.setattr(training_claims, "band_run", fake)


@pytest.mark.skipif("composite" not in METHODS, reason="the band claims need the composite method")
def test_band_claims_counterfactuals_perturb_the_prediction_and_can_pass(monkeypatch):
    """The counterfactuals use the same runs and a different prediction: on runs like ours (the
    predictor halves its band 6 steps later and ends at a higher rank) the claims pass and their
    counterfactuals fail; where the strong reading is true (the band never halves; the final ranks
    agree) the counterfactual rows pass, so they are predictions, not rows built to fail."""
    delays, shapes = get_claim("predictor-delays-band-shrinkage"), get_claim("predictor-shapes-rank-trajectory")
    _fake_band_runs(monkeypatch, mlp_halves_at=29, mlp_final_rank=20.0)
    assert delays.run().passed and shapes.run().passed
    assert not delays.run(counterfactual=True).passed
    assert not shapes.run(counterfactual=True).passed
    _fake_band_runs(monkeypatch, mlp_halves_at=None, mlp_final_rank=8.2)
    assert delays.run(counterfactual=True).passed
    assert [c.passed for c in shapes.run(counterfactual=True).comparisons] == [True, True]
    _fake_band_runs(monkeypatch, mlp_halves_at=23, mlp_final_rank=20.0)  # no delay: the claim fails
    assert not delays.run().passed
