"""CollapseMonitor on synthetic trajectories: history, first-unhealthy steps, alarms, trends."""

from __future__ import annotations

import json

import pytest
import torch

from collapselab import CollapseMonitor
from collapselab._validation import InputError
from collapselab.diagnostics.monitor import falling_trend


def _rank_decay_trajectory(steps: int, n: int = 400, d: int = 32, seed: int = 0):
    """Embeddings whose variance outside the first r(t) directions fades: rank decays over steps."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    for t in range(steps):
        scale = torch.ones(d)
        scale[2:] = 0.5 ** (t * 0.75)  # all but 2 directions shrink geometrically
        yield t * 10, base * scale


def test_monitor_records_history_and_raises_alarm_when_rank_decays() -> None:
    monitor = CollapseMonitor()
    alarms = []
    for step, z in _rank_decay_trajectory(8):
        alarms += monitor.update(step, {"emb": z})
    hist = monitor.history["emb"]
    assert monitor.steps["emb"] == [0, 10, 20, 30, 40, 50, 60, 70]
    assert len(hist["effective_rank"]) == 8
    assert hist["effective_rank"][0] == pytest.approx(32, rel=0.1)
    assert hist["effective_rank"][-1] < 3
    dims = [a for a in alarms if a.mode == "dimensional"]
    assert [a.level for a in dims] == ["warning", "collapsed"]  # each level announced once
    first = monitor.first_unhealthy["emb"]["dimensional"]
    assert dims[0].step == first and dims[1].first_unhealthy_step == first
    assert monitor.levels["emb"]["dimensional"][0] == "healthy"
    assert monitor.worst == "collapsed"
    assert "dimensional collapse" in str(dims[-1]) and "'emb'" in str(dims[-1])


def test_monitor_stays_quiet_on_a_stationary_healthy_trajectory() -> None:
    monitor = CollapseMonitor()
    g = torch.Generator().manual_seed(1)
    for step in range(10):
        assert monitor.update(step, {"repr": torch.randn(300, 16, generator=g) + 3.0}) == []
    assert monitor.first_unhealthy["repr"] == {}
    assert monitor.worst == "healthy"


def test_monitor_tracks_several_names_independently() -> None:
    monitor = CollapseMonitor()
    g = torch.Generator().manual_seed(2)
    healthy = torch.randn(200, 8, generator=g)
    monitor.update(0, {"repr": healthy, "emb": healthy})
    alarms = monitor.update(1, {"repr": healthy * 1.01, "emb": torch.ones(200, 8)})
    assert {(a.name, a.mode) for a in alarms} >= {("emb", "complete")}
    assert all(a.name == "emb" for a in alarms)
    assert monitor.first_unhealthy["repr"] == {}


def test_shrinking_embedding_alarms_through_reference_although_ranks_stay() -> None:
    monitor = CollapseMonitor()
    z = torch.randn(300, 16, generator=torch.Generator().manual_seed(3))
    for step, scale in enumerate([1.0, 0.3, 0.05, 1e-3, 1e-5]):
        monitor.update(step, {"emb": z * scale})
    assert monitor.history["emb"]["effective_rank"][-1] == pytest.approx(
        monitor.history["emb"]["effective_rank"][0]
    )
    assert monitor.levels["emb"]["complete"][-1] == "collapsed"
    assert monitor.first_unhealthy["emb"]["complete"] <= 3


def test_falling_trend_raises_warning_before_threshold() -> None:
    monitor = CollapseMonitor(trend_window=4, trend_drop=0.3)
    g = torch.Generator().manual_seed(4)
    base = torch.randn(500, 64, generator=g)
    for step in range(6):
        scale = torch.ones(64)
        scale[32:] = 0.7**step  # effective rank falls steadily but stays above 30 % of start
        monitor.update(step, {"emb": base * scale})
    ranks = monitor.history["emb"]["effective_rank"]
    assert ranks[-1] > 0.3 * ranks[0]
    assert monitor.levels["emb"]["dimensional"][-1] == "warning"
    assert "fell at each of the last" in monitor.latest["emb"].reasons["dimensional"]


def test_falling_trend_rule() -> None:
    assert falling_trend([10, 9, 8, 6, 4], window=4, drop=0.5)
    assert not falling_trend([10, 9, 8, 9, 4], window=4, drop=0.5)  # not steady
    assert not falling_trend([10, 9.9, 9.8, 9.7, 9.6], window=4, drop=0.5)  # too small
    assert not falling_trend([10, 9, 4], window=4, drop=0.5)  # too short


def test_monitor_summary_is_json_able_and_steps_must_increase() -> None:
    monitor = CollapseMonitor(every=5)
    assert monitor.should_run(10) and not monitor.should_run(11)
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(5))
    monitor.update(0, {"emb": z})
    monitor.update(5, {"emb": torch.zeros(50, 4) + 1.0})
    summary = json.loads(json.dumps(monitor.summary()))
    assert summary["worst"] == "collapsed"
    assert summary["alarms"][0]["step"] == 5
    with pytest.raises(InputError, match="not after"):
        monitor.update(5, {"emb": z})
    with pytest.raises(InputError, match="no embeddings"):
        monitor.update(6, {})


def test_monitor_with_codes_pads_history_of_late_metrics() -> None:
    monitor = CollapseMonitor()
    z = torch.randn(100, 4, generator=torch.Generator().manual_seed(6))
    monitor.update(0, {"emb": z})
    monitor.update(1, {"emb": z}, codes=torch.nn.functional.one_hot(torch.zeros(100, dtype=torch.long), 10))
    perplexity = monitor.history["emb"]["code_perplexity"]
    assert len(perplexity) == 2 and perplexity[1] == pytest.approx(1.0)
    assert monitor.levels["emb"]["cluster"] == ["n/a", "collapsed"]


def test_warmup_records_levels_but_raises_no_alarm_until_it_ends() -> None:
    monitor = CollapseMonitor(warmup_steps=20)
    g = torch.Generator().manual_seed(7)
    healthy = torch.randn(200, 16, generator=g)
    collapsed = torch.ones(200, 16)
    assert monitor.update(0, {"emb": healthy}) == []
    assert monitor.update(10, {"emb": collapsed}) == []  # a dip during warm-up: recorded, silent
    assert monitor.levels["emb"]["complete"] == ["healthy", "collapsed"]
    assert monitor.first_unhealthy["emb"] == {}
    alarms = monitor.update(20, {"emb": collapsed})  # still collapsed after warm-up: announced
    assert [(a.mode, a.level, a.previous) for a in alarms if a.mode == "complete"] == [
        ("complete", "collapsed", "healthy")
    ]
    assert monitor.first_unhealthy["emb"]["complete"] == 20
