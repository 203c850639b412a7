"""The ``band`` collapse mode: its measurements against float64 loops, verdicts on constructed
bands (wide, shrinking, collapsed, partly collapsed), the monitor's history rules (trend, silent,
shrinking with the embedding), n/a without a band, replay; and entropy is not geometry: codes
hashed from a rank-1 embedding use every code while the embedding is collapsed."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

import collapselab as cl
from collapselab import CollapseMonitor, diagnose
from collapselab._validation import InputError
from collapselab.diagnostics import band as bd
from collapselab.diagnostics import replay
from collapselab.diagnostics import verdict as vd


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _z(n: int = 400, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)


def _spread(z: torch.Tensor) -> float:
    return float(z.var(dim=0, unbiased=False).mean().sqrt())


# --------------------------------------------------------------------------- measurements


@pytest.mark.parametrize("columns", [16, 1])
def test_band_metrics_equal_the_float64_loop(columns: int) -> None:
    z = _z(60, 16) * torch.linspace(0.1, 3.0, 16, dtype=torch.float64)
    sigma = torch.rand(60, columns, generator=_gen(1), dtype=torch.float64) * 0.3
    sigma[:7] *= 1e-4  # a few inputs below the floor
    n, d = z.shape
    means = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
    spread = math.sqrt(sum((float(z[i, j]) - means[j]) ** 2 for i in range(n) for j in range(d)) / (n * d))
    widths = [math.sqrt(sum(float(sigma[i, j]) ** 2 for j in range(columns)) / columns) for i in range(n)]
    m = diagnose(z, band=sigma).metrics
    assert m["band_spread"] == pytest.approx(spread, rel=1e-12)
    assert m["band_width"] == pytest.approx(sum(widths) / n, rel=1e-12)
    assert m["band_width_ratio"] == pytest.approx(sum(widths) / n / spread, rel=1e-12)
    assert m["band_below_floor"] == sum(w / spread < bd.BAND_FLOOR_RATIO for w in widths) / n == 7 / 60
    assert m["band_dims"] == columns


def test_a_band_given_as_one_width_per_input_equals_the_same_widths_as_a_column() -> None:
    z, sigma = _z(), torch.rand(400, generator=_gen(2), dtype=torch.float64)
    assert diagnose(z, band=sigma).metrics == diagnose(z, band=sigma[:, None]).metrics


def test_band_metrics_are_scale_free_and_given_back_in_the_inputs_units() -> None:
    z, sigma = _z(), torch.full((400, 16), 0.3, dtype=torch.float64)
    base = diagnose(z, band=sigma).metrics
    for scale in (1e-3, 1e60, 1e-60):  # the last two are rescaled inside diagnose
        m = diagnose(z * scale, band=sigma * scale).metrics
        assert m["band_width_ratio"] == pytest.approx(base["band_width_ratio"], rel=1e-12)
        assert m["band_width"] == pytest.approx(0.3 * scale, rel=1e-12)
        assert m["band_spread"] == pytest.approx(base["band_spread"] * scale, rel=1e-12)


def test_means_without_spread_make_any_positive_band_infinitely_wide() -> None:
    z = torch.ones(50, 4, dtype=torch.float64)
    assert diagnose(z, band=torch.full((50, 4), 0.1)).metrics["band_width_ratio"] == math.inf
    zero = diagnose(z, band=torch.zeros(50, 4)).metrics
    assert zero["band_width_ratio"] == 0.0 and zero["band_below_floor"] == 1.0


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    "relative, level",
    [(1.0, "healthy"), (0.5, "healthy"), (0.12, "healthy"), (0.08, "warning"), (0.02, "warning"),
     (0.005, "collapsed"), (1e-6, "collapsed")],
)
def test_band_verdict_follows_the_width_against_the_spread(relative: float, level: str) -> None:
    z = _z()
    d = diagnose(z, band=torch.full((400, 16), relative * _spread(z), dtype=torch.float64))
    assert d.verdict["band"] == level
    assert d.metrics["band_width_ratio"] == pytest.approx(relative, rel=1e-9)


@pytest.mark.parametrize("fraction, level", [(0.05, "healthy"), (0.2, "warning"), (0.6, "collapsed")])
def test_a_band_collapsed_for_part_of_the_inputs_is_judged_by_that_fraction(fraction: float, level: str) -> None:
    z = _z()
    sigma = torch.full((400, 16), _spread(z), dtype=torch.float64)  # the mean stays far above 0.1
    sigma[: int(fraction * 400)] = 1e-4 * _spread(z)
    d = diagnose(z, band=sigma)
    assert d.metrics["band_width_ratio"] > 0.3
    assert d.verdict["band"] == level and f"{fraction:.0%} of the inputs" in d.reasons["band"]


def test_a_band_wider_than_the_spread_is_healthy_and_said_to_hedge() -> None:
    z = _z()
    d = diagnose(z, band=torch.full((400, 1), 50.0))
    assert d.verdict["band"] == "healthy" and "hedges over every input" in d.reasons["band"]


def test_with_a_reference_a_band_shrinking_with_its_embedding_is_caught() -> None:
    # the ratio to the spread stays 0.5; only the fall from the reference's width shows it
    z, sigma = _z(), torch.full((400, 16), 0.5, dtype=torch.float64)
    start = diagnose(z, band=sigma)
    for factor, level in ((0.5, "healthy"), (0.05, "warning"), (0.005, "collapsed")):
        d = diagnose(z * factor, band=sigma * factor, reference=start)
        assert d.metrics["band_width_ratio"] == pytest.approx(start.metrics["band_width_ratio"], rel=1e-9)
        assert d.metrics["band_width_vs_reference"] == pytest.approx(factor, rel=1e-9)
        assert d.verdict["band"] == level, factor


def test_without_a_band_the_mode_is_absent_and_every_other_verdict_unchanged() -> None:
    z = _z()
    plain, banded = diagnose(z), diagnose(z, band=torch.full((400, 16), 0.5))
    assert "band" not in plain.verdict and "band" not in plain.reasons
    assert not any(k.startswith("band") for k in plain.metrics)
    assert {k: v for k, v in banded.verdict.items() if k != "band"} == plain.verdict
    assert {k: v for k, v in banded.metrics.items() if not k.startswith("band")} == plain.metrics
    line = next(line for line in str(plain).splitlines() if line.strip().startswith("band"))
    assert line.split()[:2] == ["band", "n/a"] and "no band given" in line
    assert "band_width_ratio" in str(banded) and json.loads(banded.to_json())["verdict"]["band"] == "healthy"
    assert vd.MODES[-1] == "band" and "band" in cl.diagnostics.MODES


@pytest.mark.parametrize(
    "band, match",
    [(torch.ones(400, 3), r"shape \(400,\), \(400, 1\) or \(400, 16\)"), (torch.ones(399, 16), "shape"),
     (-torch.ones(400, 16), ">= 0"), (torch.full((400, 16), math.nan), "non-finite"),
     (torch.ones(400, 16, dtype=torch.bool), "real numbers")],
)
def test_a_bad_band_is_a_one_line_error(band: torch.Tensor, match: str) -> None:
    with pytest.raises(InputError, match=match):
        diagnose(_z(), band=band)


# --------------------------------------------------------------------------- the monitor


def _shrinking(monitor: CollapseMonitor, factors, *, loss: float | None = 2.0, shrink_z: bool = False):
    z = _z()
    alarms = []
    for step, factor in enumerate(factors):
        sigma = torch.full((400, 16), 0.5 * factor, dtype=torch.float64)
        alarms += monitor.update(step, {"emb": z * (factor if shrink_z else 1.0)}, bands={"emb": sigma},
                                 loss=None if step == 0 else loss)
    return alarms


def test_a_shrinking_band_raises_a_warning_then_a_collapsed_alarm_that_says_it_is_silent() -> None:
    monitor = CollapseMonitor()
    alarms = _shrinking(monitor, [1.0, 1.0, 0.5, 0.3, 0.1, 0.01])  # 0.5× the spread at the start
    band = [a for a in alarms if a.mode == "band"]
    assert [(a.step, a.level) for a in band] == [(4, "warning"), (5, "collapsed")]
    assert all("silent: the training loss is finite (2)" in a.reason for a in band)
    assert monitor.first_unhealthy["emb"]["band"] == 4
    assert monitor.final_verdict()["emb"]["band"]["level"] == "collapsed"
    assert [a for a in alarms if a.mode != "band"] == []  # nothing else in the embedding changed


def test_a_steady_band_and_a_band_settling_from_above_the_spread_raise_nothing() -> None:
    assert _shrinking(CollapseMonitor(), [1.0] * 8) == []
    # from 100× the spread down to 0.6×, falling at every check: fitting the band, not collapsing
    factors = [1.0, 0.5, 0.2, 0.1, 0.05, 0.03, 0.02, 0.02]
    monitor = CollapseMonitor(use_reference=False)
    z = _z()
    spread = _spread(z)
    for step, f in enumerate(factors):
        assert monitor.update(step, {"emb": z}, bands={"emb": torch.full((400, 1), 30 * spread * f)}) == []


def test_a_steady_fall_that_would_reach_the_collapse_line_within_the_window_warns_early() -> None:
    monitor = CollapseMonitor(use_reference=False)
    z = _z()
    spread = _spread(z)
    levels = []
    for step, ratio in enumerate([4.8, 2.4, 1.2, 0.6, 0.3, 0.15]):  # halving at every check
        monitor.update(step, {"emb": z}, bands={"emb": torch.full((400, 1), ratio * spread, dtype=torch.float64)})
        levels.append(monitor.levels["emb"]["band"][-1])
    # the last value is healthy on its own (0.15 > 0.1); halving, it reaches 0.01 within 3.9 checks
    assert levels == ["healthy"] * 5 + ["warning"]
    assert "reaches 0.01 within" in monitor.latest["emb"].reasons["band"]
    assert monitor.history["emb"]["band_checks_to_floor"][-1] == pytest.approx(
        math.log(0.15 / 0.01) / math.log(2), rel=1e-9)


def test_a_band_that_shrinks_with_its_embedding_alarms_through_its_reference() -> None:
    alarms = _shrinking(CollapseMonitor(), [1.0, 0.5, 0.2, 0.05, 0.005], loss=None, shrink_z=True)
    band = [(a.step, a.level) for a in alarms if a.mode == "band"]
    assert band == [(3, "warning"), (4, "collapsed")]
    assert all("silent" not in a.reason for a in alarms)  # no loss was given


def test_names_without_a_band_have_no_band_verdict_and_old_states_still_load() -> None:
    monitor = CollapseMonitor()
    monitor.update(0, {"emb": _z(), "repr": _z(seed=1)}, bands={"emb": torch.full((400, 16), 0.5)})
    monitor.update(1, {"emb": _z(), "repr": _z(seed=1)}, bands={"emb": torch.full((400, 16), 0.5)})
    final = monitor.final_verdict()
    assert "band" in final["emb"] and "band" not in final["repr"]
    assert monitor.levels["repr"]["band"] == ["n/a", "n/a"]
    # a state saved before the band mode existed
    state = monitor.state_dict()
    for name in state["levels"]:
        state["levels"][name].pop("band")
    old = CollapseMonitor()
    old.load_state_dict(state)
    assert "band" not in old.final_verdict()["repr"]
    old.update(2, {"emb": _z(), "repr": _z(seed=1)}, bands={"emb": torch.full((400, 16), 0.5)})
    assert old.levels["emb"]["band"] == ["n/a", "n/a", "healthy"]


def test_replay_of_recorded_band_checks_gives_the_live_verdicts() -> None:
    live = CollapseMonitor(warmup_steps=1)
    _shrinking(live, [1.0, 0.9, 0.6, 0.4, 0.25, 0.15, 0.1, 0.01])
    state = live.state_dict()
    record = {name: {"steps": state["steps"][name], "metrics": state["history"][name]} for name in state["steps"]}
    again = replay(record, losses=[(s, 2.0) for s in range(1, 8)], warmup_steps=1)
    assert again.levels == live.levels
    assert [(a.step, a.mode, a.level, a.reason) for a in again.alarms] == [
        (a.step, a.mode, a.level, a.reason) for a in live.alarms]
    assert again.final_verdict() == live.final_verdict()
    assert any(a.mode == "band" for a in live.alarms)


# --------------------------------------------------------------------------- entropy is not geometry


def hashed_codes(values: torch.Tensor, n_codes: int) -> torch.Tensor:
    """Codes from a hash of each row's bytes: uniform over the codes, unrelated to distances."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest(), "little")
                         % n_codes for row in values])


def rank_one_with_hashed_codes(n: int = 2000, d: int = 32, n_codes: int = 32, seed: int = 0):
    g = _gen(seed)
    coordinate = torch.randn(n, 1, generator=g, dtype=torch.float64)
    direction = torch.randn(1, d, generator=g, dtype=torch.float64)
    return coordinate @ direction, hashed_codes(coordinate, n_codes)


def test_codes_hashed_from_a_rank_one_embedding_have_maximal_entropy_while_the_geometry_is_collapsed() -> None:
    z, codes = rank_one_with_hashed_codes()
    d = diagnose(z, codes=codes)
    assert d.metrics["code_entropy"] / math.log(32) > 0.995
    assert d.metrics["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert d.verdict["cluster"] == "healthy" and d.verdict["dimensional"] == "collapsed"
    assert d.verdict["complete"] == "healthy"  # a line through the origin: spread, not a point
    assert "not of the geometry" in d.reasons["cluster"]


def test_the_report_explains_why_even_code_usage_says_nothing_of_the_geometry(tmp_path) -> None:
    """The run report's verdict table carries the entropy-is-not-geometry sentence beside a healthy
    cluster verdict and a collapsed dimensional one (a run folder holding only its summary)."""
    from collapselab.report import render_report
    from collapselab.runs import RunFolder

    z, codes = rank_one_with_hashed_codes()
    d = diagnose(z, codes=codes)
    folder = RunFolder(tmp_path / "hashed")
    folder.path.mkdir()
    folder.write_summary({"status": "completed", "method": "falcon", "dataset": "synthetic",
                          "diagnosis": {"emb": d.to_dict()}})
    page = render_report([folder.path])
    rows = [r for r in page.split("<tr>") if "cluster" in r or "dimensional" in r]
    cluster = next(r for r in rows if ">cluster<" in r)
    dimensional = next(r for r in rows if ">dimensional<" in r)
    assert "healthy" in cluster and "not of the geometry" in cluster
    assert "collapsed" in dimensional

def test_the_entropy_note_is_absent_when_the_geometry_is_not_collapsed() -> None:
    z = _z(2000, 32)
    d = diagnose(z, codes=hashed_codes(z, 32))
    assert d.verdict["cluster"] == "healthy" and d.verdict["dimensional"] == "healthy"
    assert "geometry" not in d.reasons["cluster"]


def test_the_entropy_is_not_geometry_claim_passes_and_its_counterfactual_fails() -> None:
    from collapselab.theory.claims import get_claim

    claim = get_claim("entropy-is-not-geometry")
    assert claim.kind == "theory"
    real, wrong = claim.run(), claim.run(counterfactual=True)
    assert real.error is None and real.passed, real
    assert wrong.error is None and not wrong.passed
    assert [(c.name, c.relation, c.tolerance) for c in real.comparisons] == [
        (c.name, c.relation, c.tolerance) for c in wrong.comparisons]


def test_the_docs_band_example_gives_what_it_says() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "diagnostics.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    block = next(b for b in blocks if "band=" in b)
    namespace: dict = {}
    exec(compile(block, "docs/diagnostics.md:band", "exec"), namespace)
    assert (namespace["wide"].verdict["band"], namespace["narrow"].verdict["band"]) == ("healthy", "collapsed")
    assert "# ('healthy', 'collapsed')" in block and "# 'n/a': no band given" in block
    assert namespace["cl"].diagnose(namespace["mu"]).verdict.get("band", "n/a") == "n/a"
