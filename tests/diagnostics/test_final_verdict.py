"""The monitor's history rules: loss at its collapse value, the fall from the run's peak, the
warm-up that delays but never erases, recovery, the end-of-run verdict and its plain words, and
replay of recorded checks."""

from __future__ import annotations

import math

import pytest
import torch

from collapselab import CollapseMonitor, diagnose
from collapselab.diagnostics import replay
from collapselab.diagnostics.monitor import loss_at_collapse


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def healthy(seed: int, n: int = 400, d: int = 32) -> torch.Tensor:
    return torch.randn(n, d, generator=_gen(seed))


def squeezed(seed: int, keep: int, n: int = 400, d: int = 32, factor: float = 1e-4) -> torch.Tensor:
    z = healthy(seed, n, d)
    return torch.cat([z[:, :keep], factor * z[:, keep:]], dim=1)


def test_loss_at_collapse_is_the_share_of_the_way_covered() -> None:
    assert loss_at_collapse([(0, 5.0), (1, 0.04)], 0.0)  # 0.8 % of the distance left
    assert not loss_at_collapse([(0, 5.0), (1, 0.06)], 0.0)  # 1.2 % left
    assert loss_at_collapse([(0, -0.2), (1, -0.995)], -1.0)
    assert not loss_at_collapse([(0, -0.2), (1, -0.98)], -1.0)
    assert not loss_at_collapse([(0, 5.0)], 0.0)  # one loss says nothing about a trend
    assert not loss_at_collapse([(0, 0.0), (1, 0.0)], 0.0)  # started there: no distance to cover


def test_a_loss_that_reaches_its_collapse_value_warns_in_the_complete_mode() -> None:
    monitor = CollapseMonitor(collapse_loss=0.0)
    z = healthy(0)
    monitor.update(0, {"emb": z})
    monitor.update(1, {"emb": z}, loss=5.0)
    assert monitor.levels["emb"]["complete"][-1] == "healthy"
    alarms = monitor.update(2, {"emb": z}, loss=0.04)
    assert [(a.mode, a.level) for a in alarms] == [("complete", "warning")]
    assert "reached the value a collapsed network scores" in alarms[0].reason
    # without the collapse value, the same losses say nothing
    quiet = CollapseMonitor()
    for step, loss in ((0, None), (1, 5.0), (2, 0.04)):
        quiet.update(step, {"emb": z}, loss=loss)
    assert quiet.alarms == []


def test_a_fall_far_below_the_runs_peak_warns_even_without_a_steady_trend() -> None:
    monitor = CollapseMonitor(trend_window=10)  # the steady-fall window cannot fire in 5 checks
    ranks = []
    for step, keep in enumerate((20, 32, 32, 2, 3)):
        monitor.update(step, {"emb": squeezed(step, keep, factor=0.02)})
        ranks.append(monitor.history["emb"]["effective_rank"][-1])
    assert ranks[-1] < 0.15 * max(ranks) and ranks[-1] < ranks[0]
    assert monitor.levels["emb"]["dimensional"][-1] in ("warning", "collapsed")


def test_the_warmup_delays_an_alarm_but_never_erases_it() -> None:
    monitor = CollapseMonitor(warmup_steps=3)
    monitor.update(0, {"emb": healthy(0)})
    for step in (1, 2):  # collapsed inside the warm-up: recorded, no alarm
        assert monitor.update(step, {"emb": squeezed(step, 1)}) == []
    assert monitor.levels["emb"]["dimensional"][1:] == ["collapsed", "collapsed"]
    alarms = monitor.update(3, {"emb": squeezed(3, 1)})  # still collapsed after it: reported now
    assert any(a.mode == "dimensional" and a.level == "collapsed" for a in alarms)
    final = monitor.final_verdict()["emb"]["dimensional"]
    assert final["level"] == "collapsed" and final["since"] == 1  # the stretch began inside the warm-up


def test_a_loss_most_of_the_way_to_its_collapse_value_ends_the_warmup_early() -> None:
    """The same collapsed geometry inside a 20-step warm-up: alarmed at once when the loss has
    covered 90 % of the way to its collapse value (8 % left), held back when it has not (40 %)."""
    def run(second_loss: float) -> CollapseMonitor:
        monitor = CollapseMonitor(warmup_steps=20, collapse_loss=0.0)
        monitor.update(0, {"emb": healthy(0)})
        monitor.update(5, {"emb": squeezed(5, 1)}, loss=5.0)
        monitor.update(10, {"emb": squeezed(10, 1)}, loss=second_loss)
        return monitor

    released = run(0.4)
    assert released.warmup_ended == 10 and released.warm_until == 10
    assert [(a.step, a.mode, a.level) for a in released.alarms] == [(10, "dimensional", "collapsed")]
    assert released.final_verdict()["emb"]["dimensional"]["since"] == 5  # the stretch began before
    held = run(2.0)
    assert held.warmup_ended is None and held.alarms == []
    # kept across a checkpoint, and replayed from recorded metrics and losses alike
    restored = CollapseMonitor(warmup_steps=20, collapse_loss=0.0)
    restored.load_state_dict(released.state_dict())
    assert restored.warm_until == 10
    record = {"emb": {"steps": released.steps["emb"], "metrics": released.history["emb"]}}
    again = replay(record, losses=released.losses, collapse_loss=0.0, warmup_steps=20)
    assert [(a.step, a.mode, a.level) for a in again.alarms] == [(10, "dimensional", "collapsed")]


def test_a_run_that_ends_inside_its_warmup_still_gets_its_true_final_verdict() -> None:
    monitor = CollapseMonitor(warmup_steps=100)
    monitor.update(0, {"emb": healthy(0)})
    monitor.update(1, {"emb": squeezed(1, 1)})
    assert monitor.alarms == []
    assert monitor.final_verdict()["emb"]["dimensional"]["level"] == "collapsed"


def test_final_verdict_needs_three_healthy_checks_to_call_a_run_recovered() -> None:
    monitor = CollapseMonitor()
    monitor.update(0, {"emb": healthy(0)})
    monitor.update(1, {"emb": squeezed(1, 1)})
    for step in (2, 3):
        monitor.update(step, {"emb": healthy(step)})
    final = monitor.final_verdict()["emb"]["dimensional"]
    assert final["level"] == "collapsed" and final["since"] == 1  # one bad check among the last three
    monitor.update(4, {"emb": healthy(4)})
    assert monitor.final_verdict()["emb"]["dimensional"] == {
        "level": "healthy", "since": None, "reason": monitor.verdict_history["emb"]["dimensional"][-1]}


def test_verdict_sentences_say_what_was_seen_in_plain_words() -> None:
    d = diagnose(squeezed(0, 2, d=64), reference=diagnose(healthy(1, d=64)))
    reason = d.reasons["dimensional"]
    assert reason.startswith("the embedding uses ") and "of 64 available directions" in reason
    assert "at the start it used" in reason
    codes = torch.arange(400) % 23
    assert d.verdict["dimensional"] == "collapsed"
    assert diagnose(healthy(0), codes=codes).reasons["cluster"].startswith("23 of 23 codes are in use")


def test_low_occupancy_is_dimensional_collapse_even_when_the_reference_was_as_low() -> None:
    """A projector that uses 4 of 512 directions from initialisation on: relative to the reference
    nothing changed, but under 1 % of the space is used."""
    g = _gen(5)
    mixing = torch.randn(4, 512, generator=g)

    def low(seed: int) -> torch.Tensor:
        gen = _gen(seed)
        return torch.randn(800, 4, generator=gen) @ mixing + 1e-3 * torch.randn(800, 512, generator=gen)

    end = diagnose(low(2), reference=diagnose(low(1)))
    assert 3.0 < end.metrics["effective_rank"] < 4.5
    assert end.metrics["effective_rank_vs_reference"] == pytest.approx(1.0, abs=0.2)
    assert end.metrics["effective_rank_ratio"] < 0.01
    assert end.verdict["dimensional"] == "collapsed"
    assert diagnose(low(1)).verdict["dimensional"] == "collapsed"
    # twice the directions, above 1 % and as many as at the start, over a noise floor that spans
    # nearly every direction (Marchenko-Pastur: its smallest variances are ~4e-7 of the top): healthy
    plane = torch.randn(800, 8, generator=_gen(7)) @ torch.randn(8, 512, generator=g)
    wide = plane + 0.1 * torch.randn(800, 512, generator=_gen(8))
    assert diagnose(wide).metrics["span_ratio"] > 0.9
    assert diagnose(wide, reference=diagnose(wide)).verdict["dimensional"] == "healthy"
    # without that floor the same 8 directions are all it spans (1.6 % of 512): collapsed
    exact = diagnose(plane, reference=diagnose(plane))
    assert exact.metrics["span"] == 8 and exact.verdict["dimensional"] == "collapsed"
    assert "it spans only 8 of them" in exact.reasons["dimensional"]


def test_code_usage_against_chance_matches_a_simulation_of_random_draws() -> None:
    from collapselab.diagnostics.clusters import code_usage

    c, n = 64, 100
    g = _gen(3)
    used = [len(torch.unique(torch.randint(0, c, (n,), generator=g))) for _ in range(2000)]
    expected = sum(used) / len(used)
    assert c * (1 - (1 - 1 / c) ** n) == pytest.approx(expected, rel=0.01)
    ratio = code_usage(torch.arange(23) % 23, n_codes=32)["code_used_vs_chance"]
    assert ratio == pytest.approx(23 / (32 * (1 - (31 / 32) ** 23)))


def test_codes_using_a_fraction_of_the_prototypes_warn_although_their_perplexity_is_fine() -> None:
    """FALCON with β = 1 on digits ends on 23 of 32 codes: perplexity ratio 0.7, usage 0.72."""
    z = healthy(0, n=512)
    d = diagnose(z, codes=torch.arange(512) % 23, )
    assert d.metrics["code_perplexity_ratio"] > 0.3
    assert d.verdict["cluster"] == "healthy"  # with c = 23 every code is used
    d = diagnose(z, codes=torch.nn.functional.one_hot(torch.arange(512) % 23, 32).double())
    assert d.metrics["code_perplexity_ratio"] > 0.3 and d.verdict["cluster"] == "warning"


def test_replay_of_recorded_checks_gives_the_live_verdicts() -> None:
    live = CollapseMonitor(warmup_steps=2, collapse_loss=-1.0)
    losses = []
    for step in range(8):
        keep = 32 if step < 3 else max(1, 32 >> step)
        loss = None if step == 0 else -1 + 0.9 ** (3 * step)
        if loss is not None:
            losses.append((step, loss))
        codes = torch.arange(400) % (10 if step < 5 else 3)
        live.update(step, {"repr": healthy(step), "emb": squeezed(step, keep, factor=0.01)}, codes=codes, loss=loss)
    state = live.state_dict()
    record = {name: {"steps": state["steps"][name], "metrics": state["history"][name]} for name in state["steps"]}
    again = replay(record, losses=losses, collapse_loss=-1.0, warmup_steps=2)
    assert again.levels == live.levels
    assert [(a.step, a.name, a.mode, a.level) for a in again.alarms] == [(a.step, a.name, a.mode, a.level) for a in live.alarms]
    assert again.final_verdict() == live.final_verdict()
    assert live.alarms, "the sequence does collapse"


def test_state_dict_round_trip_keeps_losses_and_verdict_history() -> None:
    monitor = CollapseMonitor(collapse_loss=0.0)
    monitor.update(0, {"emb": healthy(0)})
    monitor.update(1, {"emb": healthy(1)}, loss=3.0)
    other = CollapseMonitor()
    other.load_state_dict(monitor.state_dict())
    assert other.losses == monitor.losses and other.collapse_loss == 0.0
    assert other.final_verdict() == monitor.final_verdict()
    assert math.isfinite(other.losses[0][1])


def cone(seed: int, width: float, n: int = 400, d: int = 32) -> torch.Tensor:
    """Points around one direction: full rank, spread ≈ width² (for small widths)."""
    axis = torch.zeros(d)
    axis[0] = 1.0
    return axis + width * torch.randn(n, d, generator=_gen(seed))


@pytest.mark.parametrize(
    ("width", "last_loss", "expected"),
    [
        (0.55, -0.85, "warning"),  # spread ~0.3× its start, loss 83 % of the way to −1
        (0.55, -0.50, "healthy"),  # the same cone, the loss 44 % of the way: training may widen it again
        (0.85, -0.85, "healthy"),  # spread ~0.7× its start: not drawing together
    ],
)
def test_points_drawing_into_a_cone_while_the_loss_nears_its_collapse_value_warn(
    width: float, last_loss: float, expected: str
) -> None:
    """SimSiam without stop-gradient can regain its rank while every output points one way: the
    spread under half its start with the loss 75 % of the way to the collapse value is a
    complete-collapse warning; either alone is not."""
    monitor = CollapseMonitor(collapse_loss=-1.0)
    monitor.update(0, {"emb": cone(0, 0.1)}, loss=-0.1)
    monitor.update(1, {"emb": cone(1, 0.1 * width)}, loss=last_loss)
    ratio = monitor.history["emb"]["spread_vs_reference"][-1]
    assert ratio == pytest.approx(width**2, rel=0.25)
    assert monitor.latest["emb"].metrics["effective_rank"] > 20  # no dimensional collapse
    # the snapshot rule alone (spread against the reference) stays healthy at these ratios
    assert diagnose(cone(1, 0.1 * width), reference=cone(0, 0.1)).verdict["complete"] == "healthy"
    assert monitor.levels["emb"]["complete"][-1] == expected
    if expected == "warning":
        assert "of the way to the value a collapsed network scores" in monitor.latest["emb"].reasons["complete"]
