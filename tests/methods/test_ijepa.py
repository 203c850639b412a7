"""I-JEPA: the loss against a float64 loop, the predictor's positions, the linear EMA, no gradient
into the target encoder, host-drawn masks (disjoint, sized, resumable, no device reads), the
collapse value, and the EMA-off/no-stop-gradient ablation collapsing where the method does not."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.data.masks import MaskConfig, sample_block_masks_numpy
from collapselab.methods import build_method, method_class
from collapselab.methods import ijepa as ijepa_module
from collapselab.models import build_backbone

torch.set_num_threads(1)

# a 4x4 grid (8x8 images, patch 2): 3x3 context block, two targets of 1-2 patches
MASKS = {"num_targets": 2, "target_scale": [0.1, 0.15], "min_keep": 4}


def make(seed: int = 0, depth: int = 1, **overrides: Any):
    torch.manual_seed(seed)
    config = method_class("ijepa").config_class(**{"masks": MASKS, "predictor_depth": 1, "mask_seed": 7, **overrides})
    backbone = build_backbone("vit_tiny", img_size=8, patch_size=2, in_channels=1, depth=depth, pos_embed="learned")
    return build_method(config, backbone)


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def recorded_masks(method) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record the (context, targets) indices each forward draws."""
    drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = method.draw_masks

    def draw(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        out = original(batch_size, device)
        drawn.append(out)
        return out

    method.draw_masks = draw
    try:
        yield drawn
    finally:
        del method.draw_masks


def layer_norm_loop(tokens: torch.Tensor) -> torch.Tensor:
    """(x − mean) / √(var + 1e-5) over the last axis, written out (no affine)."""
    mean = tokens.mean(-1, keepdim=True)
    var = ((tokens - mean) ** 2).mean(-1, keepdim=True)
    return (tokens - mean) / torch.sqrt(var + 1e-5)


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("loss", ["l2", "smooth_l1"])
def test_loss_and_gradients_equal_a_float64_loop_over_samples_blocks_patches(loss: str) -> None:
    """Reference: the ViT's own ``keep_indices`` forward for the context, ``ViTPredictor.forward``
    for the predictions, the target ViT on the full image, layer norm written out, and
    Σ_b Σ_m Σ_k Σ_d ℓ(ŝ − s) / count as a loop; values and every gradient agree in float64."""
    method = make(loss=loss).double()
    x = images().double()
    with recorded_masks(method) as drawn:
        out = method([x])
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}
    method.zero_grad()

    context_idx, target_idx = drawn[0]
    assert context_idx.shape[1] == 1
    ctx = method.backbone(x, keep_indices=context_idx[:, 0], return_tokens=True)
    pred = method.predictor(ctx, context_idx[:, 0], target_idx)  # (B, M, K_t, D)
    with torch.no_grad():
        full = layer_norm_loop(method.target.net[0](x, return_tokens=True))
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(x.shape[0]):
        for m in range(target_idx.shape[1]):
            for k in range(target_idx.shape[2]):
                diff = pred[b, m, k] - full[b, int(target_idx[b, m, k])]
                if loss == "l2":
                    total = total + (diff**2).sum()
                else:
                    a = diff.abs()
                    total = total + torch.where(a < 1.0, 0.5 * a**2, a - 0.5).sum()
                count += diff.numel()
    reference = total / count
    reference.backward()
    assert float(out.loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-10)
    for name, param in method.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(got[name], param.grad, rtol=1e-8, atol=1e-12, msg=name)


def test_prediction_loss_is_latent_prediction_when_the_target_is_detached() -> None:
    from collapselab.losses import latent_prediction

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 2, 4, 8, generator=g), 2 * torch.randn(3, 2, 4, 8, generator=g)
    for kind in ("l2", "smooth_l1"):
        torch.testing.assert_close(ijepa_module.prediction_loss(pred, target, kind),
                                   latent_prediction(pred, target, loss=kind))  # type: ignore[arg-type]


def test_the_predictor_gets_the_target_positions_and_is_compared_with_the_target_tokens_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask tokens entering the predictor's first block are mask_token + pos[target index]
    and the context tokens embed(context) + pos[context index]; the loss compares the predictions
    with LN(target encoder tokens) at exactly the target indices."""
    method = make()
    x = images()
    seen: dict[str, torch.Tensor] = {}
    method.predictor.blocks[0].register_forward_pre_hook(lambda _m, args: seen.__setitem__("tokens", args[0].detach()))
    compared: dict[str, torch.Tensor] = {}

    def spy(predictions: torch.Tensor, targets: torch.Tensor, loss: str = "l2") -> torch.Tensor:
        compared["pred"], compared["target"] = predictions.detach(), targets.detach()
        return ((predictions - targets) ** 2).mean()

    monkeypatch.setattr(ijepa_module, "prediction_loss", spy)
    with recorded_masks(method) as drawn:
        method([x])
    context_idx, target_idx = drawn[0]
    b, m, k_t = target_idx.shape
    k_c = context_idx.shape[-1]
    pos = method.predictor.pos_embed
    tokens = seen["tokens"].reshape(b, m, k_c + k_t, -1)  # one sequence per (sample, target block)
    with torch.no_grad():
        ctx = method.backbone(x, keep_indices=context_idx[:, 0], return_tokens=True)
        full = torch.nn.functional.layer_norm(method.target.net[0](x, return_tokens=True), (192,))
        embedded = method.predictor.embed(ctx)
    for i in range(b):
        for j in range(m):
            torch.testing.assert_close(tokens[i, j, k_c:] - method.predictor.mask_token[0].detach(),
                                       pos[target_idx[i, j]])
            torch.testing.assert_close(tokens[i, j, :k_c] - embedded[i], pos[context_idx[i, 0]])
            for k in range(k_t):
                assert torch.equal(compared["target"][i, j, k], full[i, int(target_idx[i, j, k])])
    with torch.no_grad():
        torch.testing.assert_close(compared["pred"], method.predictor(ctx, context_idx[:, 0], target_idx))


# --------------------------------------------------------------------------- the target encoder


def test_after_step_is_the_linear_ema_and_the_target_gets_no_gradient() -> None:
    """ξ ← τ_k ξ + (1 − τ_k) θ with τ_k = τ_0 + k(τ_1 − τ_0)/K (the official linear schedule);
    the target's parameters have requires_grad False and no .grad after a backward."""
    method = make(ema=0.9, ema_final=1.0)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    out = method([images()])
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in method.target.parameters())
    optimizer.step()
    before = [p.detach().clone() for p in method.target.net[0].parameters()]
    online = [p.detach().clone() for p in method.backbone.parameters()]
    step, total = 3, 10
    tau = 0.9 + step * (1.0 - 0.9) / total
    assert method.after_step(step, total)["ema_momentum"] == pytest.approx(tau)
    for old, theta, new in zip(before, online, method.target.net[0].parameters(), strict=True):
        torch.testing.assert_close(new, tau * old + (1 - tau) * theta)
    assert method.target.momentum(total, total) == pytest.approx(1.0)
    assert make(ema=0.9, ema_final=None).target.momentum(5, 10) == pytest.approx(0.9)


@pytest.mark.parametrize(("ema", "stop_gradient", "grad_through_target"),
                         [(0.99, True, False), ("off", True, False), ("off", False, True)])
def test_gradient_reaches_the_target_branch_only_without_ema_and_stop_gradient(
        ema: Any, stop_gradient: bool, grad_through_target: bool) -> None:
    """The gradient of the loss w.r.t. the input reaching it through the target branch: zero (no
    graph at all) with an EMA or stop-gradient target, non-zero with ema=off, stop_gradient=false."""
    method = make(ema=ema, stop_gradient=stop_gradient)
    x = images().requires_grad_(True)
    targets = method.target_tokens(x)
    assert targets.requires_grad is grad_through_target
    if grad_through_target:
        (grad,) = torch.autograd.grad(targets.square().sum(), x)
        assert grad.abs().sum() > 0


# --------------------------------------------------------------------------- masks


def test_numpy_masks_are_disjoint_rectangles_of_the_configured_sizes() -> None:
    cfg = MaskConfig(num_targets=4, min_keep=4)  # the CIFAR recipe's masks, 8x8 grid
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = sample_block_masks_numpy(16, 8, cfg, rng)
        h, w = m.target_size
        assert m.targets.shape == (16, 4, h * w) and m.targets.dtype == torch.int64
        assert 0.15 * 64 - (h + w) / 2 - 1 <= h * w <= 0.2 * 64 + (h + w) / 2 + 1
        for b in range(16):
            for t in range(4):
                rows, cols = m.targets[b, t] // 8, m.targets[b, t] % 8
                assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == (h, w)
            context = set(m.context[b, 0].tolist())
            assert not context & set(m.targets[b].flatten().tolist())
            assert len(context) == m.context.shape[-1] >= 4
        assert torch.equal(m.context_mask.sum(-1), torch.full((16, 1), m.context.shape[-1]))


def test_mask_draws_resume_from_the_saved_state_and_differ_between_draws() -> None:
    a = make()
    first = a.draw_masks(8, torch.device("cpu"))
    state = {k: v.clone() for k, v in a.state_dict().items()}
    second = a.draw_masks(8, torch.device("cpu"))
    assert not (torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]))
    b = make(seed=5, mask_seed=123)  # another seed: the loaded state decides
    b.load_state_dict(state)
    again = b.draw_masks(8, torch.device("cpu"))
    assert torch.equal(again[0], second[0]) and torch.equal(again[1], second[1])
    cls = method_class("ijepa")
    torch.manual_seed(41)
    unseeded = build_method(cls.config_class(masks=MASKS), build_backbone("vit_tiny", img_size=8, patch_size=2,
                                                                             in_channels=1, depth=1))
    assert unseeded.mask_seed == 41  # mask_seed: null → torch.initial_seed()


_READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy")


def test_a_step_reads_no_tensor_value_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward (mask draw included), backward and the EMA update with every Python-level read of a
    tensor's value made to raise (as tests/engine/test_fastpath.py)."""
    method = make()
    x = images()
    reads: list[str] = []

    def forbid(name: str):
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            raise AssertionError(f"host read: Tensor.{name}")
        return read

    with monkeypatch.context() as patch:
        for name in _READS:
            patch.setattr(torch.Tensor, name, forbid(name))
        out = method([x])
        out.loss.backward()
        method.after_step(0, 10)
    assert reads == []


# --------------------------------------------------------------------------- interface


def _moved_online(method):
    """The method with its online encoder moved away from the target (a copy at build time)."""
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return method


def test_repr_is_the_target_encoders_mean_token_as_the_paper_evaluates() -> None:
    """App. A.1 of the paper: "We use the target-encoder for evaluation and average pool its
    output". ``repr`` (embed and the live forward) is the target ViT's mean token of the full
    image, not the online encoder's; ``emb`` is the mean of its layer-normalised tokens."""
    method = _moved_online(make())
    x = images()
    with torch.no_grad():
        target_tokens = method.target.net[0](x, return_tokens=True)
        out = method.embed(x)
        torch.testing.assert_close(out["repr"], target_tokens.mean(1))
        torch.testing.assert_close(out["emb"], layer_norm_loop(target_tokens).mean(1))
        assert not torch.allclose(out["repr"], method.backbone(x), atol=1e-3)
        torch.testing.assert_close(method([x]).tensors["repr"], target_tokens.mean(1))
    assert method.eval_backbone is method.target.net[0]
    assert method.eval_backbone_prefix == "target.net.0."
    assert out["emb"].shape[1] == method.projector.out_dim == 192


@pytest.mark.parametrize("overrides", [{"eval_encoder": "context"}, {"ema": "off"}])
def test_repr_is_the_online_encoder_for_eval_encoder_context_or_without_ema(overrides: dict[str, Any]) -> None:
    method = _moved_online(make(**overrides))
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(method.embed(x)["repr"], method.backbone(x))
    assert method.eval_backbone is method.backbone and method.eval_backbone_prefix == "backbone."


def test_collapse_loss_is_reached_by_a_constant_target_and_a_constant_predictor() -> None:
    """A ViT whose every token is the same vector (zero patch embedding and positions) and a
    predictor that outputs that vector's layer norm (zero output weights, bias = LN(t)): loss 0."""
    method = make(ema="off", stop_gradient=True).double()
    with torch.no_grad():
        for p in (method.backbone.patch_embed.weight, method.backbone.patch_embed.bias, method.backbone.pos_embed):
            p.zero_()
        token = method.backbone(images().double(), return_tokens=True)[0, 0]
        method.predictor.proj.weight.zero_()
        method.predictor.proj.bias.copy_(torch.nn.functional.layer_norm(token, (192,)))
    loss = float(method([images().double()]).loss.detach())
    assert loss == pytest.approx(method.collapse_loss(256), abs=1e-20) and method.collapse_loss(256) == 0.0


def test_bad_settings_are_one_line_errors_and_the_hint_names_the_ablation() -> None:
    config = method_class("ijepa").config_class()
    with pytest.raises(InputError, match=r"model\.backbone=vit_tiny") as err:
        build_method(config, build_backbone("small_cnn", in_channels=1, width=4))
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"needs method\.ema=off"):
        make(stop_gradient=False)
    with pytest.raises(InputError, match=r"method\.loss"):
        make(loss="l1")
    with pytest.raises(InputError, match=r"method\.eval_encoder must be one of target, context"):
        make(eval_encoder="online")
    with pytest.raises(InputError, match="unknown key"):
        make(masks={"pred_mask_scale": [0.1, 0.2]})
    with pytest.raises(InputError, match="no projector"):
        make(projector_out_dim=64)
    with pytest.raises(InputError, match="predictor_heads"):
        make(predictor_heads=5)
    assert make().collapse_hints() == [] and make(ema="off").collapse_hints() == []
    assert any("stop_gradient=false" in h for h in make(ema="off", stop_gradient=False).collapse_hints())


# --------------------------------------------------------------------------- training runs


def tiny_run(tmp_path, name: str, steps: int, **sections: Any):
    settings: dict[str, Any] = {
        "run": {"name": name, "out_dir": str(tmp_path)},
        "train": {"epochs": 1, "steps": steps, "threads": 1, "adapt_threads": False, "device": "cpu"},
        "model": {"backbone_args": {"patch_size": 2, "depth": 1, "pos_embed": "learned"}},
        "data": {"batch_size": 64},
        "log": {"progress": False, "tensorboard": False, "report": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 256, "every": 10, "warmup_epochs": 0},
    }
    for key, value in sections.items():
        settings[key] = {**settings.get(key, {}), **value}
    return collapselab.train("ijepa", "digits", **settings)


def test_a_few_digits_steps_are_finite(tmp_path) -> None:
    run = tiny_run(tmp_path, "few", 4)
    losses = [r["loss"] for r in run.history if r["kind"] == "train"]
    assert run.summary["steps"] == 4 and losses and all(math.isfinite(v) for v in losses)


def test_the_run_evaluates_and_exports_the_target_encoder(tmp_path) -> None:
    """After training, the checkpoint's exported backbone (what `collapselab eval` loads) and
    ``Run.backbone`` hold the EMA target's weights, which differ from the online encoder's."""
    run = tiny_run(tmp_path, "export", 6, optim={"lr": 1e-3}, method={"ema": 0.5})
    target, online = run.method.target.net[0].state_dict(), run.method.backbone.state_dict()
    exported = run.folder.backbone().state_dict()
    assert run.backbone is run.method.target.net[0]
    assert any(not torch.equal(target[k], online[k]) for k in target)
    for key, value in target.items():
        torch.testing.assert_close(exported[key], value.cpu())


def test_without_ema_and_stop_gradient_the_target_collapses_and_with_them_it_does_not(tmp_path) -> None:
    """60 steps on digits at a raised rate (1e-3, to make the ablation quick; depth-1 ViT): with
    ema=off and stop_gradient=false the target embedding collapses completely (the monitor's
    complete and dimensional verdicts reach "collapsed", the spread falls by > 100×); the
    recipe's EMA target at the same settings keeps its spread and a healthy complete verdict."""
    kept = tiny_run(tmp_path, "ema", 60, optim={"lr": 1e-3})
    ablated = tiny_run(tmp_path, "ablated", 60, optim={"lr": 1e-3}, method={"ema": "off", "stop_gradient": False})

    def checks(run) -> list[dict[str, Any]]:
        return [r for r in run.history if r["kind"] == "check"]

    start, end = checks(ablated)[0], checks(ablated)[-1]
    assert end["emb/verdict/complete"] == "collapsed" and end["emb/spread"] < start["emb/spread"] / 100
    alarms = {(r["name"], r["mode"], r["level"]) for r in ablated.history if r["kind"] == "alarm"}
    assert ("emb", "complete", "collapsed") in alarms
    healthy = checks(kept)[-1]
    assert healthy["emb/verdict/complete"] == "healthy"
    assert healthy["emb/spread"] > 0.5 * checks(kept)[0]["emb/spread"]
    assert not any(r["kind"] == "alarm" and r["mode"] == "complete" for r in kept.history)
