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


@pytest.mark.parametrize(
    "extra",
    [["--p0", "-0.2:1.2:3"], ["--p0", "-0.2,0.5"], ["--p", "-.2:1.2:3"], ["--p0", "-1e-1:1:3"]],
)
def test_phase_map_reads_a_range_that_starts_with_a_minus(tmp_path, capsys, extra):
    code = main(["theory", "phase-map", *extra, "--eta", "0.1", "--t-max", "1e3", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "phase_map.csv") as handle:
        assert min(float(r["p0"]) for r in csv.DictReader(handle)) < 0


def test_theory_options_take_negative_values_and_name_the_option(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    for argv, says in (
        (["fixed-points", "--tau", "-1e-3"], "--tau: must be a finite number > 0, got -0.001"),
        (["phase-map", "--eta", "-1e-3", *out], "--eta: must be a finite number >= 0, got -0.001"),
        (["phase-map", "--s0", "-inf", *out], "--s0: must be a finite number >= 0"),
        (["phase-map", "--t-max", "-1", *out], "--t-max: must be a finite number > 0"),
        (["phase-map", "--x", "foo", *out], "--x 'foo': give one of eta, alpha_p"),
        (["simulate", "--eta", "-1e-3", *out], "--eta: must be a finite number >= 0"),
        (["simulate", "--alpha-p", "-1", *out], "--alpha-p: must be a finite number > 0"),
        (["fixed-points", "--tau", "nan"], "--tau: must be a finite number"),
    ):
        assert main(["theory", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and "weight_decay" not in err


def test_beta_error_gives_cli_advice_in_the_cli_and_both_in_the_api(tmp_path, capsys):
    from collapselab._validation import InputError
    from collapselab.theory.eigenmodes import phase_map

    argv = ["theory", "phase-map", "--target", "ema", "--beta", "0,0.5", "--p0", "0.5", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--target stopgrad" in err and "target='stopgrad'" not in err
    with pytest.raises(InputError, match="target='stopgrad'"):
        phase_map(target="ema", beta=[0.0, 0.5])


def test_theory_outputs_are_written_atomically(tmp_path, capsys, monkeypatch):
    """A failure at the final rename of a rewrite leaves the earlier CSV/JSON whole and no
    temporary file behind (phase-map and simulate both write through collapselab.runs.write_atomic)."""
    import collapselab.runs as runs

    argv = ["theory", "phase-map", "--eta", "0.05", "--p0=0:1:3", "--out", str(tmp_path)]
    assert main(argv) == 0
    before = {name: (tmp_path / name).read_text() for name in ("phase_map.csv", "phase_map.json")}

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", failing_replace)
    assert main(["theory", "phase-map", "--eta", "0.1,0.2", "--p0=0:1:3", "--out", str(tmp_path)]) != 0
    assert "disk full" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_text() for name in before} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    sim = tmp_path / "sim"
    assert main(["theory", "simulate", "--n", "2", "--d", "2", "--t-end", "2", "--dt", "0.1", "--out", str(sim)]) != 0
    assert "disk full" in capsys.readouterr().err
    assert not [p.name for p in sim.iterdir() if p.name.endswith((".tmp", ".csv", ".json"))]


def test_a_failed_atomic_rename_names_the_target_not_the_temporary(tmp_path, capsys, monkeypatch):
    import collapselab.runs as runs

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(runs.os, "replace", failing_replace)
    assert main(["theory", "phase-map", "--eta", "0.05", "--p0=0:1:3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No space left on device (") and ".tmp" not in err
    assert str(tmp_path / "phase_map") in err


def test_theory_without_a_subcommand_is_a_usage_error(capsys):
    assert main(["theory"]) == 2
    err = capsys.readouterr().err
    assert "usage: collapselab theory" in err and "error: give a subcommand" in err


@pytest.mark.parametrize("tau", ["-1", "0"])
def test_fixed_points_needs_a_positive_target_ratio(capsys, tau):
    assert main(["theory", "fixed-points", f"--tau={tau}"]) == 2
    assert "--tau: must be a finite number > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, where",
    [
        (["--eta", "1e6"], "at step 1 of 40 (t = 0.05)"),
        (["--init-scale", "1e6"], "at step 1 of 40"),
        (["--sigma2", "1e30"], "at step 1 of 40"),
        (["--dt", "100"], "at step 1 of 1 (t = 2)"),
        (["--integrator", "sgd", "--dt", "1e5"], "at step 1 of 1 (t = 2)"),
        (["--integrator", "adaptive", "--eta", "1e6"], "at t = 0"),
    ],
)
def test_simulate_stops_with_one_line_when_the_integration_diverges(tmp_path, capsys, extra, where):
    argv = ["theory", "simulate", "--n", "3", "--d", "2", "--t-end", "2", "--out", str(tmp_path), *extra]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: the simulation diverged ") and err.count("\n") == 1, err
    assert where in err and "smaller --eta, --sigma2 or --init-scale" in err, err
    assert "weight_decay" not in err and "collapsed" not in captured.out
    assert not (tmp_path / "summary.json").exists()


def test_simulate_api_raises_a_divergence_error_and_never_classifies():
    from collapselab._validation import InputError
    from collapselab.theory.linear import DivergenceError, simulate

    with pytest.raises(DivergenceError, match=r"at step 1 of 1 \(t = 2\).*lower dt \(now 100, a step of 2 here\)") as info:
        simulate("stopgrad", n=3, d=2, sigma2=0.5, weight_decay=0.05, t_end=2, dt=100)
    assert isinstance(info.value, InputError) and (info.value.step, info.value.config) == (1, 0)
    res = simulate("stopgrad", n=3, d=2, sigma2=0.5, weight_decay=0.05, t_end=2, dt=0.05)
    assert len(res.outcome[0]) == 2  # an ordinary run is unaffected
