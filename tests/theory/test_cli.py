"""`collapselab theory ...` and `collapselab verify` write what they say and exit with the right status."""

from __future__ import annotations

import csv
import json

import pytest

from collapselab.cli import main
from collapselab.commands.theory import parse_grid
from collapselab.theory.claims import Claim, Comparison, register_claim, unregister_claim


def test_parse_grid_forms():
    assert parse_grid("0.5") == [0.5]
    assert parse_grid("0,1,2") == [0.0, 1.0, 2.0]
    assert parse_grid("0:1:5") == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_theory_fixed_points_json_reports_p_plus_and_stability(capsys):
    assert main(["theory", "fixed-points", "--eta", "0.05", "--sigma2", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exists"] is True
    assert out["p_plus"] == pytest.approx((1 + (1 - 4 * 0.05 * 1.5) ** 0.5) / 3, abs=1e-12)
    assert out["max_real_plus"] < 0 < out["max_real_minus"]
    assert out["threshold_eta"] == pytest.approx(1 / 6)


def test_theory_phase_map_writes_png_csv_json(tmp_path, capsys):
    code = main(
        [
            "theory",
            "phase-map",
            "--eta",
            "0.05,0.3",
            "--p0=-0.1:1:6",
            "--target",
            "ema",
            "--beta",
            "0.5",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "phase_map.csv")))
    assert len(rows) == 12
    assert {r["outcome"] for r in rows if float(r["eta"]) == 0.3} == {"collapsed"}
    summary = json.loads((tmp_path / "phase_map.json").read_text())
    assert summary["configurations"] == 12 and summary["target"] == "ema"
    assert (tmp_path / "phase_map.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


def test_theory_simulate_writes_trajectories(tmp_path, capsys):
    code = main(
        [
            "theory",
            "simulate",
            "--no-predictor",
            "--n",
            "3",
            "--d",
            "2",
            "--t-end",
            "20",
            "--dt",
            "0.1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [m["outcome"] for m in summary["configurations"][0]["modes"]] == [
        "collapsed",
        "collapsed",
    ]
    assert (tmp_path / "trajectories.png").exists() and (tmp_path / "trajectories.csv").exists()


def test_theory_rejects_a_bad_grid_with_exit_2(tmp_path, capsys):
    assert main(["theory", "phase-map", "--eta", "1:2", "--out", str(tmp_path)]) == 2
    assert "start:stop:num" in capsys.readouterr().err


def test_verify_json_lists_selected_claims_and_exits_0(capsys):
    code = main(
        [
            "verify",
            "--json",
            "--claim",
            "stable-rank-scale-invariant",
            "--claim",
            "rademacher-quasi-orthogonality",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is True and [c["id"] for c in out["claims"]] == [
        "stable-rank-scale-invariant",
        "rademacher-quasi-orthogonality",
    ]


def test_verify_exits_1_when_a_claim_fails(capsys):
    register_claim(
        Claim(
            "test-false", "test", "2 + 2 = 5", lambda cf: [Comparison("sum", 5.0, 4.0, 0.1)], "n/a"
        )
    )
    try:
        assert main(["verify", "--claim", "test-false"]) == 1
        assert "[FAIL] test-false" in capsys.readouterr().out
    finally:
        unregister_claim("test-false")


def test_verify_unknown_claim_exits_2(capsys):
    assert main(["verify", "--claim", "no-such-claim"]) == 2
