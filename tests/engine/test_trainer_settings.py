"""Trainer settings against independent computations: ``optim.grad_clip``,
``optim.lr_scaling``, ``optim.min_lr_ratio``, ``train.amp=bf16`` on the CPU, and MoCo's
``method.symmetric``. Each test recomputes what the setting must do (closed form, naive loop) and
fails if the setting were ignored."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import collapselab
from collapselab._validation import InputError
from collapselab.config import load_config
from collapselab.engine.trainer import Trainer
from collapselab.methods import build_method
from collapselab.models import build_backbone

torch.set_num_threads(1)

STEPS_PER_EPOCH = 2
BATCH = 64


def tiny(out_dir: Path, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for a run of a second or two on digits (2 steps per epoch, width-8 CNN,
    every step logged)."""
    settings: dict[str, Any] = {
        "run": {"name": name, "out_dir": str(out_dir)},
        "train": {"epochs": 4, "threads": 1, "max_steps_per_epoch": STEPS_PER_EPOCH},
        "data": {"batch_size": BATCH},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "every": 1, "tensorboard": False, "report": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 64},
    }
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return settings


def train_records(run: collapselab.Run) -> list[dict[str, Any]]:
    records = [r for r in run.history if r.get("kind") == "train"]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "every step is logged"
    return records


def schedule(step: int, total: int, warmup: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 then cosine to ``final`` at ``total``, written out independently."""
    if step < warmup:
        return peak * step / warmup
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# --------------------------------------------------------------------------- optim.grad_clip


def test_grad_clip_scales_the_applied_gradient_to_the_clip_norm_and_logs_the_norm_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain SGD (no momentum, no weight decay, no warm-up): Δθ = −lr·g_clipped with
    g_clipped = g·clip/‖g‖, so ‖Δθ‖/lr = clip and Δθ ∥ −g; the logged grad_norm is ‖g‖."""
    clip = 0.05
    seen: dict[str, Any] = {}
    original_step = Trainer._step
    original_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        seen["grads"] = [p.grad.detach().clone() for p in parameters if p.grad is not None]
        seen["max_norm"] = max_norm
        return original_clip(parameters, max_norm, *args, **kwargs)

    def recording_step(self: Trainer, images: torch.Tensor) -> None:
        params = [p for p in self.method.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        original_step(self, images)
        seen["lr"] = self.optimizer.param_groups[0]["lr"]
        seen["delta"] = [p.detach() - b for p, b in zip(params, before, strict=True)]
        seen["grads_after"] = [p.grad.detach().clone() for p in params]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    monkeypatch.setattr(Trainer, "_step", recording_step)
    run = collapselab.train("simclr", "digits", **tiny(
        tmp_path, "clip", train={"epochs": 1, "max_steps_per_epoch": 1},
        optim={"name": "sgd", "momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 0,
               "lr": 0.4, "grad_clip": clip}))

    assert seen["max_norm"] == clip
    lr = seen["lr"]
    assert lr == pytest.approx(0.4 * BATCH / 256)  # no warm-up: step 0 runs at the scaled rate
    grads = seen["grads"]
    assert len(grads) == len(seen["delta"]), "every trainable parameter had a gradient"
    pre_norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    assert pre_norm > 5 * clip, "the clip must bind for the test to mean anything"
    applied = math.sqrt(sum(float(d.double().pow(2).sum()) for d in seen["delta"])) / lr
    assert applied == pytest.approx(clip, rel=1e-3)
    for delta, g in zip(seen["delta"], grads, strict=True):  # the direction is the raw gradient's
        # atol: θ_new − θ_old in float32 carries the rounding of θ (|θ| ≲ 1, ulp 6e-8)
        torch.testing.assert_close(delta, -lr * clip / pre_norm * g, rtol=1e-3, atol=2e-7)
    after = math.sqrt(sum(float(g.double().pow(2).sum()) for g in seen["grads_after"]))
    assert after == pytest.approx(clip, rel=1e-4)
    (record,) = train_records(run)
    assert record["grad_norm"] == pytest.approx(pre_norm, rel=1e-5)


# --------------------------------------------------------------------------- learning rate


@pytest.mark.parametrize(("rule", "factor"), [
    ("linear", BATCH / 256), ("sqrt", math.sqrt(BATCH / 256)), ("none", 1.0)])
def test_lr_scaling_rule_sets_the_peak_of_the_warmup_cosine_schedule(
    tmp_path: Path, rule: str, factor: float
) -> None:
    """lr(s) = warm-up from 0 to base·f over W steps, then cosine to 0 at T, with f = B/256,
    √(B/256) or 1; checked at every step, the step right after the warm-up (the peak) included."""
    base, epochs, warmup_epochs = 0.4, 4, 1
    run = collapselab.train("simclr", "digits", **tiny(
        tmp_path, rule, train={"epochs": epochs},
        optim={"lr": base, "lr_scaling": rule, "warmup_epochs": warmup_epochs, "min_lr_ratio": 0.0}))
    total, warmup = epochs * STEPS_PER_EPOCH, warmup_epochs * STEPS_PER_EPOCH
    peak = base * factor
    logged = [r["lr"] for r in train_records(run)]
    assert len(logged) == total
    assert logged[warmup] == pytest.approx(peak, rel=1e-12)  # record of step index W
    assert logged == pytest.approx([schedule(s, total, warmup, peak, 0.0) for s in range(total)],
                                   rel=1e-12, abs=1e-15)


def test_min_lr_ratio_sets_the_end_of_the_cosine(tmp_path: Path) -> None:
    """The cosine decays to min_lr_ratio·(scaled lr) at T instead of 0: every step after the
    warm-up, the last one (index T − 1) included, follows the closed form with that floor."""
    base, ratio, epochs, warmup_epochs = 0.4, 0.5, 4, 1
    run = collapselab.train("simclr", "digits", **tiny(
        tmp_path, "min_lr", train={"epochs": epochs},
        optim={"lr": base, "warmup_epochs": warmup_epochs, "min_lr_ratio": ratio}))
    total, warmup = epochs * STEPS_PER_EPOCH, warmup_epochs * STEPS_PER_EPOCH
    peak = base * BATCH / 256
    logged = [r["lr"] for r in train_records(run)]
    expected = [schedule(s, total, warmup, peak, ratio * peak) for s in range(total)]
    assert logged == pytest.approx(expected, rel=1e-12)
    # the last step is one short of T: lr = floor + (peak − floor)·(1 + cos(π(T−1−W)/(T−W)))/2
    cosine = (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup))) / 2
    last = ratio * peak + (1 - ratio) * peak * cosine
    assert logged[-1] == pytest.approx(last, rel=1e-12)
    without_floor = peak * cosine
    assert logged[-1] - without_floor == pytest.approx(ratio * (peak - without_floor), rel=1e-9)
    assert min(logged[warmup:]) > ratio * peak  # never below the floor


@pytest.mark.parametrize(("ratio", "rule"), [(3.0, "constant"), (0.5, "cosine")])
def test_predictor_rate_is_its_own_multiple_of_the_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ratio: float, rule: str
) -> None:
    """optim.predictor_lr_ratio r and predictor_lr_schedule: the predictor's groups run at r·base
    from the first step (constant: SimSiam's fixed predictor rate) or at r·lr(s) (cosine), the
    rest at lr(s); read from the optimiser at every step, and the predictor's parameters (and only
    they) are in those groups."""
    base, epochs, warmup_epochs = 0.4, 3, 1
    rates: list[tuple[float, float]] = []
    original_step = Trainer._step

    def recording_step(self: Trainer, images: torch.Tensor) -> None:
        original_step(self, images)
        own = {g.get("predictor", False): g["lr"] for g in self.optimizer.param_groups}
        rates.append((own[False], own[True]))
        pred = {id(p) for p in self.method.predictor.parameters()}
        for g in self.optimizer.param_groups:
            assert all((id(p) in pred) == bool(g.get("predictor")) for p in g["params"])

    monkeypatch.setattr(Trainer, "_step", recording_step)
    collapselab.train("simsiam", "digits", **tiny(
        tmp_path, f"pred_{rule}", train={"epochs": epochs},
        optim={"lr": base, "lr_scaling": "none", "warmup_epochs": warmup_epochs,
               "predictor_lr_ratio": ratio, "predictor_lr_schedule": rule}))
    total, warmup = epochs * STEPS_PER_EPOCH, warmup_epochs * STEPS_PER_EPOCH
    expected = [schedule(s, total, warmup, base, 0.0) for s in range(total)]
    assert [r[0] for r in rates] == pytest.approx(expected, rel=1e-12)
    own = [ratio * base] * total if rule == "constant" else [ratio * e for e in expected]
    assert [r[1] for r in rates] == pytest.approx(own, rel=1e-12)


@pytest.mark.parametrize(("method", "extra"), [("simclr", {}), ("byol", {"predictor": "none"}), ("directpred", {})])
def test_predictor_rate_without_a_trained_predictor_is_refused(tmp_path: Path, method: str, extra: dict) -> None:
    with pytest.raises(InputError, match="has no trained predictor"):
        collapselab.train(method, "digits", **tiny(tmp_path, method, method=extra, optim={"predictor_lr_ratio": 3.0}))


def test_predictor_rate_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="predictor_lr_schedule must be one of"):
        collapselab.train("byol", "digits", **tiny(tmp_path, "bad", optim={"predictor_lr_schedule": "fixed"}))
    with pytest.raises(InputError, match="predictor_lr_ratio"):
        collapselab.train("byol", "digits", **tiny(tmp_path, "bad2", optim={"predictor_lr_ratio": 0}))


# --------------------------------------------------------------------------- train.amp


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("off", torch.float32)])
def test_amp_bf16_runs_the_training_forward_under_bfloat16_autocast_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: str, dtype: torch.dtype
) -> None:
    """A hook on the backbone's first convolution sees bfloat16 outputs in every training step
    with train.amp=bf16 (float32 inputs: autocast, not a cast of the data) and float32 with off."""
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    original_step = Trainer._step

    def hooked_step(self: Trainer, images: torch.Tensor) -> None:
        conv = next(m for m in self.method.backbone.modules() if isinstance(m, nn.Conv2d))
        handle = conv.register_forward_hook(
            lambda _m, inputs, output: seen.append((inputs[0].dtype, output.dtype)))
        try:
            original_step(self, images)
        finally:
            handle.remove()

    monkeypatch.setattr(Trainer, "_step", hooked_step)
    run = collapselab.train("byol", "digits", **tiny(
        tmp_path, amp, train={"epochs": 2, "amp": amp, "device": "cpu"}))
    assert run.summary["status"] == "completed"
    assert run.summary["fast_path"]["amp"] == ("bfloat16" if amp == "bf16" else "off")
    losses = [r["loss"] for r in train_records(run)]
    assert len(losses) == 2 * STEPS_PER_EPOCH and all(math.isfinite(v) for v in losses)
    assert len(seen) == 2 * 2 * STEPS_PER_EPOCH  # two views per step
    assert {inp for inp, _ in seen} == {torch.float32}
    assert {out for _, out in seen} == {dtype}
    # the parameters stay float32 (autocast, not a model cast)
    assert {p.dtype for p in run.method.parameters()} == {torch.float32}


# --------------------------------------------------------------------------- MoCo symmetric


def moco(symmetric: bool):
    cfg = load_config("moco", "digits", method={"symmetric": symmetric, "queue_size": 48})
    assert cfg.method.symmetric is symmetric  # the key reaches the method's config
    torch.manual_seed(0)
    return build_method(cfg.method, build_backbone("small_cnn", in_channels=1, width=4))


def directional_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    """−log softmax of the positive among [positive, K negatives], as a loop over the batch."""
    q, k, queue = (F.normalize(t, dim=1).double() for t in (q, k, queue))
    total = 0.0
    for b in range(q.shape[0]):
        pos = math.exp(float(q[b] @ k[b]) / tau)
        neg = sum(math.exp(float(q[b] @ queue[i]) / tau) for i in range(queue.shape[0]))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_moco_symmetric_loss_is_the_mean_of_both_directions_and_enqueues_both_key_sets() -> None:
    g = torch.Generator().manual_seed(5)
    v1, v2 = (torch.randn(12, 1, 8, 8, generator=g) for _ in range(2))
    method = moco(symmetric=True)
    tau = method.config.temperature
    queue_before = method.queue.queue.clone()
    with torch.no_grad():
        q1, q2 = (method.projector(method.backbone(v)) for v in (v1, v2))
        k1, k2 = method.target(v1), method.target(v2)
    out = method([v1, v2])
    l12 = directional_info_nce(q1, k2, queue_before, tau)
    l21 = directional_info_nce(q2, k1, queue_before, tau)
    assert abs(l12 - l21) > 1e-3, "the two directions must differ for the test to mean anything"
    assert float(out.loss.detach()) == pytest.approx((l12 + l21) / 2, abs=1e-5)
    # both key sets were enqueued, view 2's first
    n = len(v1)
    torch.testing.assert_close(method.queue.queue[:n], F.normalize(k2, dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(method.queue.queue[n:2 * n], F.normalize(k1, dim=1), atol=1e-6, rtol=0)
    assert int(method.queue.pointer) == 2 * n
    # the one-directional method (same weights, same queue) gives l12 alone and enqueues k2 only
    single = moco(symmetric=False)
    torch.testing.assert_close(single.queue.queue, queue_before)
    out_single = single([v1, v2])
    assert float(out_single.loss.detach()) == pytest.approx(l12, abs=1e-5)
    assert float(out.loss.detach()) != pytest.approx(float(out_single.loss.detach()), abs=1e-4)
    assert int(single.queue.pointer) == n
