"""Methods: losses against independent formulas, the anti-collapse switches, EMA, registry."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from collapselab._validation import InputError
from collapselab.methods import (
    METHODS,
    EMATarget,
    build_method,
    ema_base,
    method_class,
)
from collapselab.models import LinearPredictor, build_backbone

torch.set_num_threads(1)


def make(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls = method_class(name)
    if name == "ijepa":  # a ViT on 8x8 images (patch 2: a 4x4 grid) and masks that fit that grid
        masks = {"num_targets": 2, "target_scale": [0.1, 0.15], "min_keep": 4}
        config = cls.config_class(**{"masks": masks, **overrides})
        return build_method(config, build_backbone("vit_tiny", img_size=8, in_channels=1, patch_size=2, depth=1))
    config = cls.config_class(**overrides)
    return build_method(config, build_backbone("small_cnn", in_channels=1, width=4))


def views(n: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 8, 8, generator=g) for _ in range(2)]


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a / a.norm(dim=1, keepdim=True) * b / b.norm(dim=1, keepdim=True)).sum(1).mean()


def test_registry_has_the_six_core_methods_and_unknown_names_list_them() -> None:
    assert {"simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg"} <= set(METHODS)
    with pytest.raises(InputError, match=r"did you mean 'simsiam'.*available: barlow_twins"):
        method_class("simsam")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_a_finite_loss_gradients_and_named_tensors(name: str) -> None:
    method = make(name)
    out = method(views())
    assert out.loss.ndim == 0 and math.isfinite(float(out.loss.detach()))
    out.loss.backward()
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable), "every trainable parameter takes part"
    assert {"repr", "emb"} <= set(out.tensors)
    assert not any(t.requires_grad for t in out.tensors.values())
    emb = method.embed(views()[0])
    assert emb["repr"].shape[1] == method.backbone.out_dim and emb["emb"].shape[1] == method.projector.out_dim


def test_byol_loss_is_the_symmetrised_2_minus_2_cosine_and_its_target_starts_as_the_online_copy() -> None:
    method = make("byol")
    v1, v2 = views()
    out = method([v1, v2])
    with torch.no_grad():
        z1, z2 = method.projector(method.backbone(v1)), method.projector(method.backbone(v2))
        p1, p2 = method.predictor(z1), method.predictor(z2)
    expected = (2 - 2 * cos(p1, z2)) + (2 - 2 * cos(p2, z1))
    assert float(out.loss.detach()) == pytest.approx(float(expected), abs=1e-5)


def test_byol_multicrop_loss_equals_a_float64_loop_over_global_targets_and_other_views() -> None:
    """Two 8x8 global and three 4x4 local views: L = 2/P Σ_{i ∈ globals} Σ_{j ≠ i} mean_b
    (2 − 2 cos(p_j, ξ_i)) over the P = 2·(V − 1) pairs, written as a per-sample loop in float64;
    values and gradients agree, and the target network sees only the two global views."""
    method = make("byol", ema=0.5).double()
    g = torch.Generator().manual_seed(3)
    crops = [torch.randn(6, 1, s, s, generator=g, dtype=torch.float64) for s in (8, 8, 4, 4, 4)]
    seen: list[tuple[int, ...]] = []
    hook = method.target.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    out = method(crops)
    hook.remove()
    assert seen == [(6, 1, 8, 8), (6, 1, 8, 8)]
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}
    method.zero_grad()

    preds = [method.predictor(method.projector(method.backbone(x))) for x in crops]
    with torch.no_grad():
        targets = [method.target.net(x) for x in crops[:2]]
    total, pairs = 0.0, 0
    for i in range(2):
        for j in range(len(crops)):
            if j == i:
                continue
            pairs += 1
            per_sample = [2 - 2 * torch.dot(preds[j][b], targets[i][b]) / (preds[j][b].norm() * targets[i][b].norm())
                          for b in range(6)]
            total = total + sum(per_sample) / 6
    expected = total * 2 / pairs
    assert pairs == 8
    torch.testing.assert_close(out.loss.detach(), expected.detach(), atol=1e-12, rtol=0)
    expected.backward()
    for name, grad in got.items():
        torch.testing.assert_close(grad, dict(method.named_parameters())[name].grad, atol=1e-10, rtol=1e-8)


def test_simsiam_loss_is_half_the_sum_of_negative_cosines() -> None:
    method = make("simsiam")
    v1, v2 = views()
    out = method([v1, v2])
    with torch.no_grad():
        z1, z2 = method.projector(method.backbone(v1)), method.projector(method.backbone(v2))
        p1, p2 = method.predictor(z1), method.predictor(z2)
    expected = -0.5 * cos(p1, z2) - 0.5 * cos(p2, z1)
    assert float(out.loss.detach()) == pytest.approx(float(expected), abs=1e-5)


def test_predictor_switch_builds_mlp_linear_or_nothing() -> None:
    assert make("byol", predictor="none").predictor is None
    linear = make("byol", predictor="linear").predictor
    assert isinstance(linear, LinearPredictor)
    assert torch.equal(linear.weight, torch.eye(linear.weight.shape[0]))
    out = make("simsiam", predictor="none")(views())
    assert torch.equal(out.tensors["pred"], out.tensors["emb"])
    with pytest.raises(InputError, match="did you mean 'linear'"):
        make("byol", predictor="lineer")


def test_stop_gradient_switch_lets_gradient_through_the_target_branch() -> None:
    """Same weights, same views: the projector's gradient differs exactly by the target-path term."""
    grads = {}
    for stop in (True, False):
        method = make("simsiam", stop_gradient=stop)
        method(views()).loss.backward()
        grads[stop] = method.projector.net[0].weight.grad.clone()
    assert not torch.allclose(grads[True], grads[False])
    # with stop-gradient, the gradient is that of the loss with explicitly detached targets
    method = make("simsiam", stop_gradient=True)
    v1, v2 = views()
    z1, z2 = method.projector(method.backbone(v1)), method.projector(method.backbone(v2))
    p1, p2 = method.predictor(z1), method.predictor(z2)
    loss = -0.5 * F.cosine_similarity(p1, z2.detach()).mean() - 0.5 * F.cosine_similarity(p2, z1.detach()).mean()
    loss.backward()
    assert torch.allclose(method.projector.net[0].weight.grad, grads[True], atol=1e-6)


def test_stop_gradient_false_with_an_ema_target_is_refused() -> None:
    with pytest.raises(InputError, match=r"needs method\.ema=off"):
        make("byol", stop_gradient=False)
    make("byol", stop_gradient=False, ema="off")  # the SimSiam-without-stop-gradient setting


def test_ema_values_off_false_none_mean_no_target_and_bad_values_are_refused() -> None:
    for off in ("off", False, None, "none"):
        assert ema_base(off) is None
    assert ema_base("0.996") == pytest.approx(0.996)
    for bad in (1.0, -0.1, "fast"):
        with pytest.raises(InputError, match=r"method\.ema"):
            ema_base(bad)
    assert make("byol", ema="off").target is None


def test_ema_update_is_the_convex_combination_with_the_byol_cosine_schedule() -> None:
    online = torch.nn.Linear(3, 2)
    target = EMATarget(online, base_momentum=0.9, final_momentum=1.0)
    before = target.net.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    tau = target.update(online, step=0, total_steps=10)
    assert tau == pytest.approx(0.9)
    assert torch.allclose(target.net.weight, 0.9 * before + 0.1 * online.weight)
    assert target.momentum(5, 10) == pytest.approx(1 - 0.1 * (math.cos(math.pi * 5 / 10) + 1) / 2)
    assert target.momentum(10, 10) == pytest.approx(1.0)
    assert EMATarget(online, 0.99, None).momentum(7, 10) == pytest.approx(0.99)
    assert not any(p.requires_grad for p in target.parameters())


def test_byol_after_step_moves_the_target_and_reports_the_momentum() -> None:
    """ξ ← τ·ξ + (1 − τ)·θ for every parameter, buffers copied, with τ the value reported for
    the step and equal to BYOL's schedule τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2."""
    method = make("byol")
    online = torch.nn.Sequential(method.backbone, method.projector)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move the online network away from its copy: θ ≠ ξ everywhere
        for p in online.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        for b in online.buffers():
            if b.is_floating_point():
                b.add_(torch.rand(b.shape, generator=g) + 0.5)
    target_before = {n: p.detach().clone() for n, p in method.target.net.named_parameters()}
    online_now = {n: p.detach().clone() for n, p in online.named_parameters()}
    assert set(target_before) == set(online_now)
    assert all(not torch.allclose(target_before[n], online_now[n]) for n in online_now)
    step, total = 30, 100
    scalars = method.after_step(step, total)
    tau = scalars["ema_momentum"]
    expected_tau = 1 - (1 - 0.99) * (math.cos(math.pi * step / total) + 1) / 2
    assert tau == pytest.approx(expected_tau, rel=0, abs=1e-12)
    assert 0.99 < tau < 1.0  # k = 30 of 100: strictly between the base and the final momentum
    for name, p in method.target.net.named_parameters():
        expected = tau * target_before[name] + (1 - tau) * online_now[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-6, msg=name)
        assert not p.requires_grad
    for (name, b), (_, ob) in zip(method.target.net.named_buffers(), online.named_buffers(), strict=True):
        assert torch.equal(b, ob), f"buffer {name} is copied, not averaged"
    # the online network itself is untouched by the update
    for name, p in online.named_parameters():
        assert torch.equal(p.detach(), online_now[name]), name


def test_moco_loss_is_info_nce_against_the_queue_and_enqueues_the_keys() -> None:
    method = make("moco", queue_size=64)
    v1, v2 = views()
    queue_before = method.queue.queue.clone()
    out = method([v1, v2])
    with torch.no_grad():
        q = F.normalize(method.projector(method.backbone(v1)), dim=1)
        k = F.normalize(method.target(v2), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue_before.T], 1) / 0.2
    expected = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
    assert float(out.loss.detach()) == pytest.approx(float(expected), abs=1e-5)
    assert torch.allclose(method.queue.queue[: len(k)], k, atol=1e-6)
    assert int(method.queue.pointer) == len(k)


def test_simclr_loss_equals_a_loop_over_the_2n_anchors() -> None:
    method = make("simclr", temperature=0.5)
    v1, v2 = views(n=6)
    out = method([v1, v2])
    with torch.no_grad():
        u = torch.cat([method.projector(method.backbone(v1)), method.projector(method.backbone(v2))])
    u = F.normalize(u, dim=1)
    n, total = 6, 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(float(u[i] @ u[k]) / 0.5) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(u[i] @ u[pos]) / 0.5) / denom)
    assert float(out.loss.detach()) == pytest.approx(total / (2 * n), abs=1e-4)


def test_barlow_and_vicreg_log_their_unweighted_terms_and_weights_are_switches() -> None:
    out = make("barlow_twins")(views())
    assert {"on_diagonal", "off_diagonal"} <= set(out.scalars)
    no_redundancy = make("barlow_twins", lambda_offdiag=0.0)(views())
    assert float(no_redundancy.loss.detach()) == pytest.approx(float(no_redundancy.scalars["on_diagonal"]), rel=1e-6)
    out = make("vicreg", variance_weight=0.0, covariance_weight=0.0)(views())
    assert float(out.loss.detach()) == pytest.approx(25.0 * float(out.scalars["invariance"]), rel=1e-6)
    assert any("variance_weight=0" in h for h in make("vicreg", variance_weight=0.0).collapse_hints())


def test_projector_bn_switch_removes_every_batchnorm_from_the_projector() -> None:
    for name in ("byol", "simsiam", "vicreg"):
        method = make(name, projector_bn=False)
        assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in method.projector.modules())
        assert any("projector_bn=false" in h for h in method.collapse_hints())


def test_collapse_hints_name_the_switch_that_is_off() -> None:
    assert make("byol").collapse_hints() == []
    assert any("predictor=none" in h for h in make("byol", predictor="none").collapse_hints())
    assert any("stop_gradient=false" in h for h in make("simsiam", stop_gradient=False).collapse_hints())


def test_methods_need_two_views() -> None:
    with pytest.raises(InputError, match="two views"):
        make("simclr")([torch.randn(4, 1, 8, 8)])


# --- EMATarget.update against a naive loop -----------------------------------------------------


def _tau(step: int, total: int, base: float) -> float:
    """BYOL's schedule to 1, written out: τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


class _Online:
    """Two modules the online network is built from afresh at each update (as SiameseMethod)."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        nn = torch.nn
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2, affine=False))

    def module(self) -> torch.nn.Module:
        return torch.nn.Sequential(self.body, self.head)

    def train_step(self, seed: int) -> None:
        """Change every parameter and the BatchNorm running statistics (and counters)."""
        g = torch.Generator().manual_seed(seed)
        net = self.module()
        dtype = next(net.parameters()).dtype
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=dtype))
            net.train()(torch.randn(8, 3, generator=g, dtype=dtype) * 3 + 1)


def _naive_ema(reference: dict[str, torch.Tensor], online: torch.nn.Module, tau: float) -> None:
    for name, theta in online.named_parameters():
        reference[name] = tau * reference[name] + (1 - tau) * theta.detach()


def _assert_target_follows(
    target: EMATarget, reference: dict[str, torch.Tensor], online: torch.nn.Module, atol: float
) -> None:
    for name, xi in target.net.named_parameters():
        torch.testing.assert_close(xi, reference[name], rtol=0, atol=atol, msg=name)
        assert not torch.equal(xi, dict(online.named_parameters())[name]), f"{name} was copied"
    online_buffers = dict(online.named_buffers())
    assert len(online_buffers) == 6  # running_mean, running_var, num_batches_tracked, twice
    for name, buffer in target.net.named_buffers():
        assert buffer.dtype == online_buffers[name].dtype
        assert torch.equal(buffer, online_buffers[name]), name


def test_ema_update_equals_the_naive_loop_over_steps_and_copies_buffers() -> None:
    online = _Online()
    target = EMATarget(online.module(), base_momentum=0.9, final_momentum=1.0)
    reference = {n: p.detach().clone() for n, p in target.net.named_parameters()}
    total = 10
    for k in range(6):
        online.train_step(seed=k)
        tau = target.update(online.module(), k, total)  # a fresh Sequential every time
        assert tau == pytest.approx(_tau(k, total, 0.9))
        _naive_ema(reference, online.module(), _tau(k, total, 0.9))
        _assert_target_follows(target, reference, online.module(), atol=1e-6)
    assert int(target.net[0][1].num_batches_tracked) == 6
    assert not any(p.requires_grad for p in target.parameters())


def test_ema_update_follows_the_live_tensors_after_to_float64() -> None:
    online = _Online()
    target = EMATarget(online.module(), base_momentum=0.8, final_momentum=None)
    model = torch.nn.ModuleDict({"body": online.body, "head": online.head, "target": target})
    reference = {n: p.detach().clone() for n, p in target.net.named_parameters()}
    for k in range(2):  # builds the cached lists in float32
        online.train_step(seed=k)
        target.update(online.module(), k, 10)
        _naive_ema(reference, online.module(), 0.8)
    model.to(torch.float64)  # replaces every buffer, keeps the Parameter objects
    reference = {n: r.double() for n, r in reference.items()}
    for k in range(2, 6):
        online.train_step(seed=k)
        target.update(online.module(), k, 10)
        _naive_ema(reference, online.module(), 0.8)
        assert all(t.dtype == torch.float64 for t in target.net.parameters())
        _assert_target_follows(target, reference, online.module(), atol=1e-6)


def test_ema_update_follows_a_different_online_module_or_a_replaced_parameter() -> None:
    online = _Online(seed=0)
    target = EMATarget(online.module(), base_momentum=0.5, final_momentum=None)
    target.update(online.module(), 0, 10)
    other = _Online(seed=1)  # same architecture, other tensors
    other.train_step(seed=7)
    reference = {n: p.detach().clone() for n, p in target.net.named_parameters()}
    target.update(other.module(), 1, 10)
    _naive_ema(reference, other.module(), 0.5)
    _assert_target_follows(target, reference, other.module(), atol=1e-6)
    other.head[0].weight = torch.nn.Parameter(torch.full((2, 4), 3.0))  # a new tensor object
    target.update(other.module(), 2, 10)
    _naive_ema(reference, other.module(), 0.5)
    _assert_target_follows(target, reference, other.module(), atol=1e-6)


def test_ema_target_copies_and_state_dicts_carry_no_cache_and_stay_live() -> None:
    online = _Online()
    target = EMATarget(online.module(), base_momentum=0.7, final_momentum=None)
    online.train_step(seed=0)
    target.update(online.module(), 0, 10)
    assert all(key.startswith("net.") for key in target.state_dict())
    reference = {n: p.detach().clone() for n, p in target.net.named_parameters()}

    # a deep copy (with its own online copy) moves independently of the original
    twin_online = copy.deepcopy(online)
    twin = copy.deepcopy(target)
    assert target._plan is not None and twin._plan is None  # no copies of the cached online tensors
    twin_online.train_step(seed=1)
    twin.update(twin_online.module(), 1, 10)
    for name, xi in target.net.named_parameters():
        assert torch.equal(xi, reference[name]), "updating the copy changed the original"
    twin_reference = dict(reference)
    _naive_ema(twin_reference, twin_online.module(), 0.7)
    _assert_target_follows(twin, twin_reference, twin_online.module(), atol=1e-6)

    # load_state_dict, in place and with assign=True, then keep updating
    for assign in (False, True):
        saved = copy.deepcopy(target.state_dict())
        fresh = EMATarget(online.module(), base_momentum=0.7, final_momentum=None)
        fresh.update(online.module(), 0, 10)  # a cache built, for this very online, before the load
        fresh.load_state_dict(saved, assign=assign)
        ref = {n: r.clone() for n, r in reference.items()}
        for k in range(2, 4):
            online.train_step(seed=k)
            fresh.update(online.module(), k, 10)
            _naive_ema(ref, online.module(), 0.7)
        _assert_target_follows(fresh, ref, online.module(), atol=1e-6)


def test_ema_update_copies_buffers_without_foreach_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "_foreach_copy_", raising=False)
    online = _Online()
    target = EMATarget(online.module(), base_momentum=0.9, final_momentum=None)
    reference = {n: p.detach().clone() for n, p in target.net.named_parameters()}
    for k in range(3):
        online.train_step(seed=k)
        target.update(online.module(), k, 10)
        _naive_ema(reference, online.module(), 0.9)
    _assert_target_follows(target, reference, online.module(), atol=1e-6)


def test_ema_update_never_reads_a_tensor_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    online = _Online()
    target = EMATarget(online.module(), base_momentum=0.9, final_momentum=None)
    online.train_step(seed=0)
    before = target.net[0][0].weight.detach().clone()

    def host_read(*args, **kwargs):
        raise AssertionError("EMATarget.update read a tensor on the host (a GPU synchronisation)")

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, host_read)
    target.update(online.module(), 0, 10)
    target.update(online.module(), 1, 10)
    monkeypatch.undo()
    assert not torch.equal(target.net[0][0].weight, before)


def test_byol_after_step_is_the_naive_ema_before_and_after_to_float64() -> None:
    method = make("byol", ema=0.9)
    reference = {n: p.detach().clone() for n, p in method.target.net.named_parameters()}
    online = torch.nn.Sequential(method.backbone, method.projector)

    def train_and_step(k: int) -> None:
        g = torch.Generator().manual_seed(k)
        dtype = next(method.parameters()).dtype
        with torch.no_grad():
            for p in online.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=dtype))
            method.train().embed(views(seed=k)[0].to(dtype))  # moves the BatchNorm statistics
        assert method.after_step(k, 20)["ema_momentum"] == pytest.approx(_tau(k, 20, 0.9))
        _naive_ema(reference, online, _tau(k, 20, 0.9))
        for name, xi in method.target.net.named_parameters():
            torch.testing.assert_close(xi, reference[name], rtol=0, atol=1e-6, msg=name)
        target_buffers = method.target.net.named_buffers()
        for (name, buffer), live in zip(target_buffers, online.buffers(), strict=True):
            assert torch.equal(buffer, live), name

    for k in range(3):
        train_and_step(k)
    method.to(torch.float64)
    reference = {n: r.double() for n, r in reference.items()}
    for k in range(3, 6):
        train_and_step(k)
    assert method.target.net[0].parameters().__next__().dtype == torch.float64


def test_ema_update_follows_target_parameters_replaced_by_a_conversion() -> None:
    """With torch's overwrite-on-conversion flag, ``target.double()`` gives the target new
    Parameter objects with new storage, while ``online.double()`` (flag off) keeps the online
    Parameter objects, so only the target side of the cached lists goes stale."""
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    target = EMATarget(online, base_momentum=0.6, final_momentum=None)
    target.update(online, 0, 10)
    old_params = list(target.net.parameters())
    online.double()
    flag = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        target.double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(flag)
    assert not any(a is b for a, b in zip(old_params, target.net.parameters(), strict=True))
    reference = {n: p.detach().clone() for n, p in target.net.named_parameters()}
    for k in range(1, 4):
        with torch.no_grad():
            for p in online.parameters():
                g = torch.Generator().manual_seed(k)
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        target.update(online, k, 10)
        _naive_ema(reference, online, 0.6)
    for name, xi in target.net.named_parameters():
        assert xi.dtype == torch.float64
        torch.testing.assert_close(xi, reference[name], rtol=0, atol=1e-12, msg=name)
