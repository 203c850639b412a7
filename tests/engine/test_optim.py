"""Optimisers: LARS against a naive reference loop, parameter grouping, builder errors, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from collapselab._validation import InputError
from collapselab.engine.optim import (
    DEFAULT_ETA,
    LARS,
    OPTIMIZERS,
    build_optimizer,
    parameter_groups,
)

torch.set_num_threads(1)


def _naive_lars_step(
    params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor],
    *, lr: float, momentum: float, wd: float, eta: float, exclude: bool,
) -> None:
    """Reference: one LARS step written element by element from the formula, in float64."""
    for w, g, buf in zip(params, grads, bufs, strict=True):
        d = g.clone() if exclude else g + wd * w
        if not exclude:
            w_norm = float(sum(float(x) ** 2 for x in w.flatten()) ** 0.5)
            d_norm = float(sum(float(x) ** 2 for x in d.flatten()) ** 0.5)
            if w_norm > 0 and d_norm > 0:
                d = d * (eta * w_norm / d_norm)
        buf.copy_(momentum * buf + d)
        w.copy_(w - lr * buf)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.ln = nn.LayerNorm(5)
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x)).mean(dim=(2, 3))
        return self.head(self.frozen(self.ln(self.fc(h))))


def test_lars_matches_naive_loop_over_steps_with_excluded_group() -> None:
    gen = torch.Generator().manual_seed(0)
    decayed = [torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)]
    excluded = [torch.randn(5, generator=gen, dtype=torch.float64)]
    ps = [p.clone().requires_grad_(True) for p in decayed + excluded]
    hp = {"lr": 0.7, "momentum": 0.9, "eta": 0.02}
    opt = LARS(
        [{"params": ps[:2], "weight_decay": 0.05}, {"params": ps[2:], "weight_decay": 0.0, "lars_exclude": True}],
        **hp,
    )
    ref = [p.detach().clone() for p in ps]
    bufs = [torch.zeros_like(p) for p in ref]
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        _naive_lars_step(ref[:2], grads[:2], bufs[:2], wd=0.05, exclude=False, **hp)
        _naive_lars_step(ref[2:], grads[2:], bufs[2:], wd=0.0, exclude=True, **hp)
        for p, r in zip(ps, ref, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=0, atol=1e-12)


def test_lars_trust_ratio_makes_first_step_invariant_to_gradient_scale() -> None:
    w0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    g = torch.tensor([[0.3, 0.1], [-0.2, 0.4]], dtype=torch.float64)
    results = []
    for scale in (1.0, 10.0):
        p = w0.clone().requires_grad_(True)
        p.grad = g * scale
        LARS([p], lr=0.5, weight_decay=0.0).step()
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-12)
    # and the step has length lr·η·‖w‖ exactly
    assert float((results[0] - w0).norm()) == pytest.approx(0.5 * DEFAULT_ETA * float(w0.norm()), rel=1e-12)


def test_lars_zero_weight_or_zero_grad_falls_back_to_plain_momentum() -> None:
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    LARS([p], lr=0.1).step()  # ‖w‖ = 0: trust ratio 1
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, -0.2, -0.3], dtype=torch.float64))


def test_parameter_groups_split_bias_and_norm_from_weights() -> None:
    net = _Net()
    groups = parameter_groups(net, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay"}
    decay_ids = {id(p) for p in by_name["decay"]["params"]}
    no_decay_ids = {id(p) for p in by_name["no_decay"]["params"]}
    assert decay_ids == {id(net.conv.weight), id(net.fc.weight), id(net.head.weight)}
    assert no_decay_ids == {id(p) for p in (net.conv.bias, net.bn.weight, net.bn.bias, net.fc.bias, net.ln.weight, net.ln.bias)}
    assert by_name["decay"]["weight_decay"] == 1e-4 and by_name["decay"]["lars_exclude"] is False
    assert by_name["no_decay"]["weight_decay"] == 0.0 and by_name["no_decay"]["lars_exclude"] is True
    # every trainable parameter exactly once, frozen ones absent
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids))
    assert set(all_ids) == {id(p) for p in net.parameters() if p.requires_grad}
    assert not {id(p) for p in net.frozen.parameters()} & set(all_ids)


def test_parameter_groups_without_exclusion_and_shared_parameters() -> None:
    shared = nn.Linear(3, 3)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    groups = parameter_groups(net, weight_decay=0.1, exclude_bias_and_norm=False)
    assert [g["name"] for g in groups] == ["decay"]
    assert len(groups[0]["params"]) == 2  # weight and bias of the shared layer, once each
    only_weights = parameter_groups(nn.Linear(3, 3, bias=False), weight_decay=0.1)
    assert [g["name"] for g in only_weights] == ["decay"]  # empty no_decay group dropped


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_build_optimizer_groups_and_types(name: str) -> None:
    net = _Net()
    opt = build_optimizer(name.upper(), net, lr=0.1, weight_decay=1e-4)
    expected = {"sgd": torch.optim.SGD, "lars": LARS, "adamw": torch.optim.AdamW}[name]
    assert type(opt) is expected
    wds = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert wds == {"decay": 1e-4, "no_decay": 0.0}
    net(torch.randn(2, 3, 5, 5)).sum().backward()
    opt.step()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "lasr"}, "did you mean 'lars'"),
        ({"name": "rmsprop"}, "sgd, lars, adamw"),
        ({"lr": 0.0}, "lr must be .* got 0.0"),
        ({"lr": -1.0}, "got -1.0"),
        ({"weight_decay": -0.1}, "weight_decay .* got -0.1"),
        ({"momentum": 1.0}, r"momentum must lie in \[0, 1\), got 1.0"),
        ({"momentum": -0.5}, "got -0.5"),
        ({"eta": 0.0}, "eta"),
        ({"betas": (0.9, 1.5)}, "betas"),
    ],
)
def test_build_optimizer_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"name": "lars", "lr": 0.1} | kwargs
    name = args.pop("name")
    with pytest.raises(InputError, match=match):
        build_optimizer(name, nn.Linear(2, 2), **args)


def test_build_optimizer_rejects_module_without_trainable_parameters() -> None:
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(InputError, match="no trainable parameters"):
        build_optimizer("sgd", frozen, lr=0.1)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    torch.manual_seed(0)
    net_a = _Net()
    net_b = copy.deepcopy(net_a)
    opt_a = build_optimizer(name, net_a, lr=0.05, weight_decay=1e-3)
    opt_b = build_optimizer(name, net_b, lr=0.05, weight_decay=1e-3)
    data = [torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(i)) for i in range(6)]

    def train(net: nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor]) -> None:
        for x in batches:
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()

    train(net_a, opt_a, data[:3])
    train(net_b, opt_b, data[:3])
    # net_b "crashes": rebuild model and optimiser from state dicts, then continue
    saved_model, saved_opt = copy.deepcopy(net_b.state_dict()), copy.deepcopy(opt_b.state_dict())
    net_b = _Net()
    net_b.load_state_dict(saved_model)
    opt_b = build_optimizer(name, net_b, lr=0.05, weight_decay=1e-3)
    opt_b.load_state_dict(saved_opt)
    train(net_a, opt_a, data[3:])
    train(net_b, opt_b, data[3:])
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
