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


def test_parameter_groups_give_the_predictor_groups_of_its_own() -> None:
    """predictor_prefix: the parameters named under it, and only they, go to predictor groups
    with the same decay rule; without it the groups are the two of before."""
    net = nn.ModuleDict({"backbone": _Net(), "predictor": nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))})
    groups = parameter_groups(net, weight_decay=1e-4, predictor_prefix="predictor.")
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay", "predictor_decay", "predictor_no_decay"}
    pred = net["predictor"]
    assert {id(p) for p in by_name["predictor_decay"]["params"]} == {id(pred[0].weight)}
    assert {id(p) for p in by_name["predictor_no_decay"]["params"]} == {id(pred[0].bias), id(pred[1].weight), id(pred[1].bias)}
    assert all(g.get("predictor", False) == g["name"].startswith("predictor") for g in groups)
    assert by_name["predictor_decay"]["weight_decay"] == 1e-4 and by_name["predictor_no_decay"]["lars_exclude"]
    assert not {id(p) for p in pred.parameters()} & {id(p) for g in groups[:2] for p in g["params"]}
    assert [g["name"] for g in parameter_groups(net, 1e-4)] == ["decay", "no_decay"]


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


# --- the vectorised (foreach) LARS step against the old per-parameter loop -------------------


class _ReferenceLARS(torch.optim.Optimizer):
    """The pre-foreach LARS step, kept verbatim as a reference: one parameter at a time."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = DEFAULT_ETA) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            exclude = bool(group["lars_exclude"])
            wd, eta, mu, lr = group["weight_decay"], group["eta"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not exclude:
                    if wd != 0:
                        g = g.add(p, alpha=wd)
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    g = g.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(mu).add_(g)
                p.add_(buf, alpha=-lr)


# name: (shape, group, kind); kinds: "rand", "zero_weight", "zero_grad", "none_grad" (no gradient
# until step 3), groups: "decay" (wd 0.05), "nowd" (LARS with wd 0), "excluded" (plain momentum)
_CASE = {
    "conv": ((4, 3, 3, 3), "decay", "rand"),
    "fc": ((5, 4), "decay", "rand"),
    "vec": ((6,), "decay", "rand"),
    "zero_w": ((3, 2), "decay", "zero_weight"),
    "zero_g": ((3,), "decay", "zero_grad"),
    "late": ((2, 2), "decay", "none_grad"),
    "nowd": ((7, 2), "nowd", "rand"),
    "nowd_zero_g": ((2, 3), "nowd", "zero_grad"),
    "nowd_zero_w": ((4,), "nowd", "zero_weight"),
    "bias": ((5,), "excluded", "rand"),
    "norm": ((4,), "excluded", "rand"),
}
_HP = {"lr": 0.3, "momentum": 0.9, "eta": 0.02}


def _case_params(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    out = {}
    for name, (shape, _, kind) in _CASE.items():
        w = torch.randn(shape, generator=gen, dtype=dtype)
        out[name] = nn.Parameter(torch.zeros_like(w) if kind == "zero_weight" else w)
    return out


def _case_groups(params: dict[str, torch.Tensor]) -> list[dict]:
    def pick(group: str) -> list[torch.Tensor]:
        return [p for name, p in params.items() if _CASE[name][1] == group]

    return [
        {"params": pick("decay"), "weight_decay": 0.05},
        {"params": pick("nowd"), "weight_decay": 0.0},
        {"params": pick("excluded"), "weight_decay": 0.0, "lars_exclude": True},
    ]


def _case_grads(step: int, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(100 + step)
    grads: dict[str, torch.Tensor | None] = {}
    for name, (shape, _, kind) in _CASE.items():
        g = torch.randn(shape, generator=gen, dtype=dtype)
        if kind == "zero_grad":
            g = torch.zeros(shape, dtype=dtype)
        elif kind == "none_grad" and step < 3:
            g = None
        grads[name] = g
    return grads


def _set_grads(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor | None]) -> None:
    for name, p in params.items():
        g = grads[name]
        p.grad = None if g is None else g.clone()


@pytest.fixture(params=["per_tensor", "flat"])
def scaling_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with both ways of applying the trust ratios (CPU default and accelerator one)."""
    from collapselab.engine import optim

    flat = request.param == "flat"
    monkeypatch.setattr(optim, "_flat_trust_scaling", lambda device: flat)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_lars_matches_the_per_parameter_loop_on_every_corner_case(
    scaling_path: str, dtype: torch.dtype
) -> None:
    ours, ref = _case_params(dtype), _case_params(dtype)
    opt, ref_opt = LARS(_case_groups(ours), **_HP), _ReferenceLARS(_case_groups(ref), **_HP)
    start = {name: p.detach().clone() for name, p in ours.items()}
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0, "atol": 1e-12}
    for step in range(6):
        grads = _case_grads(step, dtype)
        _set_grads(ours, grads)
        _set_grads(ref, grads)
        opt.step()
        ref_opt.step()
        for name in _CASE:
            torch.testing.assert_close(ours[name].detach(), ref[name].detach(), **tol, msg=name)
            # p.grad is left untouched
            assert ours[name].grad is None or torch.equal(ours[name].grad, grads[name])
            if ref[name] in ref_opt.state:
                torch.testing.assert_close(
                    opt.state[ours[name]]["momentum_buffer"],
                    ref_opt.state[ref[name]]["momentum_buffer"], **tol, msg=name,
                )
            else:  # a parameter never given a gradient has no state and has not moved
                assert ours[name] not in opt.state
                assert torch.equal(ours[name].detach(), start[name])
    for name in _CASE:  # every parameter moved, including the zero ones and the late one ...
        if name != "nowd_zero_g":
            assert not torch.equal(ours[name].detach(), start[name]), name
    # ... except a zero gradient without weight decay: d = 0, so buf and w stay put
    assert torch.equal(ours["nowd_zero_g"].detach(), start["nowd_zero_g"])
    assert not opt.state[ours["nowd_zero_g"]]["momentum_buffer"].any()


def test_foreach_lars_matches_the_elementwise_formula_in_float64(scaling_path: str) -> None:
    params = _case_params(torch.float64)
    opt = LARS(_case_groups(params), **_HP)
    ref = {name: p.detach().clone() for name, p in params.items()}
    bufs = {name: torch.zeros_like(p) for name, p in ref.items()}
    wd = {"decay": 0.05, "nowd": 0.0, "excluded": 0.0}
    for step in range(4):
        grads = _case_grads(step, torch.float64)
        _set_grads(params, grads)
        opt.step()
        for name, (_, group, _) in _CASE.items():
            if grads[name] is not None:
                _naive_lars_step([ref[name]], [grads[name]], [bufs[name]], wd=wd[group],
                                 exclude=group == "excluded", **_HP)
        for name, p in params.items():
            torch.testing.assert_close(p.detach(), ref[name], rtol=0, atol=1e-10, msg=name)


def test_lars_buckets_mixed_dtypes_in_one_group(scaling_path: str) -> None:
    gen = torch.Generator().manual_seed(5)
    shapes_dtypes = [((3, 4), torch.float32), ((5,), torch.float64), ((2, 2), torch.float32)]
    ours = [nn.Parameter(torch.randn(s, generator=gen, dtype=d)) for s, d in shapes_dtypes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = LARS(ours, lr=0.5, weight_decay=0.01, eta=0.05)
    ref_opt = _ReferenceLARS(ref, lr=0.5, weight_decay=0.01, eta=0.05)
    for _ in range(3):
        for a, b in zip(ours, ref, strict=True):
            a.grad = torch.randn(a.shape, generator=gen, dtype=a.dtype)
            b.grad = a.grad.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("direction", ["reference_to_foreach", "foreach_to_reference"])
def test_lars_state_dict_is_compatible_with_the_per_parameter_loop(direction: str) -> None:
    """A checkpoint of the old loop loads into the foreach LARS (and back) and continues alike."""
    first, second = (_ReferenceLARS, LARS)
    if direction == "foreach_to_reference":
        first, second = second, first
    params = _case_params(torch.float64)
    opt = first(_case_groups(params), **_HP)
    for step in range(3):
        _set_grads(params, _case_grads(step, torch.float64))
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert {"momentum_buffer"} == {k for s in saved["state"].values() for k in s}
    resumed = {name: nn.Parameter(p.detach().clone()) for name, p in params.items()}
    opt_resumed = second(_case_groups(resumed), **_HP)
    opt_resumed.load_state_dict(saved)
    for step in range(3, 7):
        grads = _case_grads(step, torch.float64)
        _set_grads(params, grads)
        _set_grads(resumed, grads)
        opt.step()
        opt_resumed.step()
    for name in _CASE:
        torch.testing.assert_close(
            resumed[name].detach(), params[name].detach(), rtol=0, atol=1e-12
        )
        torch.testing.assert_close(
            opt_resumed.state[resumed[name]]["momentum_buffer"],
            opt.state[params[name]]["momentum_buffer"], rtol=0, atol=1e-12,
        )


def test_lars_step_never_reads_a_tensor_on_the_host(
    scaling_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _case_params(torch.float32)
    opt = LARS(_case_groups(params), **_HP)
    _set_grads(params, _case_grads(5, torch.float32))
    before = {name: p.detach().clone() for name, p in params.items()}

    def host_read(*args, **kwargs):
        raise AssertionError("LARS.step read a tensor on the host (a GPU synchronisation)")

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, host_read)
    opt.step()
    opt.step()
    monkeypatch.undo()
    assert not torch.equal(params["conv"].detach(), before["conv"])


def test_lars_sparse_gradient_is_refused_before_any_update() -> None:
    dense = nn.Parameter(torch.ones(3))
    table = nn.Parameter(torch.ones(4, 2))
    dense.grad = torch.ones(3)
    table.grad = torch.sparse_coo_tensor([[0, 2]], torch.ones(2, 2), (4, 2), check_invariants=True)
    opt = LARS([{"params": [dense]}, {"params": [table], "lars_exclude": True}], lr=0.1)
    with pytest.raises(InputError, match="sparse"):
        opt.step()
    assert torch.equal(dense.detach(), torch.ones(3)) and not opt.state


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_build_optimizer_uses_foreach_with_the_maths_of_the_default_path(name: str) -> None:
    torch.manual_seed(1)
    net = _Net()
    net_default = copy.deepcopy(net)
    start = [p.detach().clone() for p in net.parameters()]
    opt = build_optimizer(name, net, lr=0.05, weight_decay=1e-3)
    assert all(g["foreach"] is True for g in opt.param_groups)
    assert all(not g.get("fused") for g in opt.param_groups)
    groups = parameter_groups(net_default, 1e-3)
    cls = type(opt)
    extra = {"momentum": 0.9} if name == "sgd" else {}
    opt_default = cls(groups, lr=0.05, weight_decay=1e-3, foreach=False, **extra)
    for i in range(4):
        x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(i))
        for model, optimizer in ((net, opt), (net_default, opt_default)):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(net.parameters(), net_default.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for p, p0 in zip(net.parameters(), start, strict=True):  # trained ones moved, frozen ones not
        if p is net.conv.bias:  # a bias before BatchNorm has zero gradient: its 1e-9 steps may round away
            continue
        assert torch.equal(p.detach(), p0) != p.requires_grad


def test_foreach_keyword_is_only_passed_where_the_constructor_takes_it() -> None:
    from collapselab.engine.optim import _foreach_kwargs

    class Plain(torch.optim.Optimizer):
        def __init__(self, params, lr: float) -> None:
            super().__init__(params, {"lr": lr})

    assert _foreach_kwargs(torch.optim.SGD) == {"foreach": True}
    assert _foreach_kwargs(torch.optim.AdamW) == {"foreach": True}
    assert _foreach_kwargs(Plain) == {}
