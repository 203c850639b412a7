"""The span (numerical rank) of an embedding, its dimensional rule, and a head over a healthy backbone."""

from __future__ import annotations

import torch

from collapselab.diagnostics import CollapseMonitor, diagnose, span
from collapselab.diagnostics.spectrum import SPAN_RTOL, span_from_spectrum


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_span_counts_the_eigenvalues_above_the_tolerance_like_a_loop() -> None:
    g = _gen(0)
    for _ in range(20):
        lam = torch.sort(10 ** (-12 * torch.rand(40, generator=g, dtype=torch.float64)), descending=True).values
        lam[torch.rand(40, generator=g) < 0.2] = 0.0
        lam = torch.sort(lam, descending=True).values
        for rtol in (SPAN_RTOL, 1e-3, 1e-9):
            naive = 0
            for value in lam.tolist():
                if value > rtol * lam[0].item():
                    naive += 1
            assert span_from_spectrum(lam, rtol) == naive
    assert span_from_spectrum(torch.zeros(5)) == 0.0


def test_three_directions_of_256_are_collapsed_by_their_span_not_their_effective_rank() -> None:
    """The zoo's synthetic case: rank 3 plus 1e-3 noise. Its effective rank is 1.2 % of the 256
    directions, above the 1 % occupancy line; every other direction holds ~1e-8 of the top
    variance, so it spans 3."""
    g = _gen(1)
    z = torch.randn(512, 3, generator=g) @ torch.randn(3, 256, generator=g) + 1e-3 * torch.randn(512, 256, generator=g)
    d = diagnose(z, reference=diagnose(z))
    assert span(z) == 3 and d.metrics["span"] == 3
    assert d.metrics["effective_rank_ratio"] > 0.01
    assert d.verdict["dimensional"] == "collapsed"
    assert "it spans only 3 of them" in d.reasons["dimensional"]
    # the same three directions over noise at 1e-1 of their scale span every direction: healthy
    # by span; the effective rank (now above 1 %) decides
    wide = z + 0.1 * torch.randn(512, 256, generator=g)
    assert diagnose(wide).metrics["span_ratio"] > 0.9


def _head(concentrated: bool, seed: int) -> torch.Tensor:
    """(512, 128): 30 equal directions at the start; later 3 over a floor at 1e-4 of their variance."""
    g = _gen(seed)
    scale = torch.full((128,), 0.1)
    scale[:30] = 1.0
    if concentrated:
        scale = torch.full((128,), 1e-2)
        scale[:3] = 1.0
    return torch.randn(512, 128, generator=g) * scale


def _run(backbone_collapses: bool, backbone: str | None = "repr") -> CollapseMonitor:
    monitor = CollapseMonitor(backbone=backbone)
    for step in range(6):
        late = step >= 2
        g = _gen(100 + step)
        rep = torch.randn(512, 64, generator=g)
        if backbone_collapses and late:
            rep = rep[:, :1] @ torch.randn(1, 64, generator=g) + 1e-4 * rep
        monitor.update(step, {"emb": _head(late, step), "repr": rep})
    return monitor


def test_a_head_that_collapses_over_a_healthy_backbone_keeps_its_level_and_says_where_it_is() -> None:
    head_only = _run(backbone_collapses=False)
    final = head_only.final_verdict()
    assert head_only.latest["emb"].metrics["effective_rank_vs_reference"] < 0.15
    assert head_only.latest["emb"].metrics["span_ratio"] > 0.9
    assert final["repr"]["dimensional"]["level"] == "healthy"
    assert final["emb"]["dimensional"]["level"] == "collapsed"
    assert "so far only in this head: the backbone ('repr') is healthy" in final["emb"]["dimensional"]["reason"]
    assert any(a.name == "emb" and a.mode == "dimensional" for a in head_only.alarms)
    # without a named backbone, or over a backbone that collapses too, no such clause
    alone = _run(backbone_collapses=False, backbone=None).final_verdict()["emb"]["dimensional"]
    both = _run(backbone_collapses=True).final_verdict()
    assert alone["level"] == "collapsed" and "only in this head" not in alone["reason"]
    assert both["repr"]["dimensional"]["level"] == "collapsed"
    assert "only in this head" not in both["emb"]["dimensional"]["reason"]
