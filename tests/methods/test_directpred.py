"""DirectPred: the predictor rule against an independent eigendecomposition, the running
correlation against a naive reference, no predictor gradient, checkpoints, and a healthy run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.engine.optim import build_optimizer
from collapselab.engine.trainer import Run
from collapselab.methods import build_method
from collapselab.methods.directpred import DirectPred, DirectPredConfig, directpred_predictor
from collapselab.models import build_backbone

torch.set_num_threads(1)

RHO, EPS = 0.3, 0.01


def make(seed: int = 0, **overrides) -> DirectPred:
    torch.manual_seed(seed)
    method = build_method(DirectPredConfig(**overrides), build_backbone("small_cnn", in_channels=1, width=4))
    assert isinstance(method, DirectPred)
    return method


def batches(count: int, n: int = 16, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(n, 1, 8, 8, generator=g) for _ in range(2)] for _ in range(count)]


def psd_with_spectrum(spectrum: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Q diag(spectrum) Qᵀ for a random orthogonal Q (float64); returns (matrix, Q)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), generator=g, dtype=torch.float64))
    return (q * torch.tensor(spectrum, dtype=torch.float64)) @ q.T, q


def eigen_projectors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and the rank-one projectors u uᵀ (sign-free), float64."""
    values, vectors = torch.linalg.eigh(matrix.double())
    values, vectors = values.flip(0), vectors.flip(1)
    return values, torch.einsum("ik,jk->kij", vectors, vectors)


def sgd_step(method: DirectPred, optimizer: torch.optim.Optimizer, views, step: int) -> None:
    out = method(views)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    method.after_step(step, 100)


# --------------------------------------------------------------------------- the predictor rule


def test_predictor_has_the_eigenvectors_of_the_correlation_and_eigenvalues_sqrt_s_over_max_plus_eps() -> None:
    spectrum = [4.0, 2.5, 1.0, 0.3, 0.05, 0.0]
    correlation, _ = psd_with_spectrum(spectrum)
    weight, s, p = directpred_predictor(correlation.float(), EPS)
    assert weight.dtype == torch.float32 and torch.allclose(weight, weight.T, atol=1e-6)
    expected_p = [math.sqrt(v / 4.0) + EPS for v in spectrum]
    torch.testing.assert_close(s, torch.tensor(spectrum, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(p, torch.tensor(expected_p, dtype=torch.float64), atol=1e-5, rtol=0)
    # independently: eigh of W_p and of F, matched by position (both spectra strictly descending)
    p_values, p_projectors = eigen_projectors(weight)
    _, s_projectors = eigen_projectors(correlation)
    torch.testing.assert_close(p_values, torch.tensor(expected_p, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(p_projectors, s_projectors, atol=1e-4, rtol=0)


def test_negative_eigenvalues_are_clamped_to_zero_and_a_zero_correlation_gives_eps_identity() -> None:
    correlation, _ = psd_with_spectrum([1.0, 0.25, -1e-3])  # round-off can make F̂ slightly indefinite
    _, _, p = directpred_predictor(correlation, EPS)
    torch.testing.assert_close(p, torch.tensor([1 + EPS, 0.5 + EPS, EPS], dtype=torch.float64))
    weight, _, p = directpred_predictor(torch.zeros(3, 3), EPS)
    torch.testing.assert_close(weight, EPS * torch.eye(3))
    assert torch.isfinite(p).all()


# --------------------------------------------------------------------------- the method's state


def test_running_correlation_and_predictor_match_a_naive_reference_over_several_steps() -> None:
    method = make()
    optimizer = torch.optim.SGD([q for q in method.parameters() if q.requires_grad], lr=0.05)
    method.train()
    reference = None
    for step, views in enumerate(batches(4)):
        with torch.no_grad():  # training mode: BatchNorm uses the batch, as in the forward
            f = torch.cat([method.projector(method.backbone(x)) for x in views]).double()
        batch = sum(torch.outer(row, row) for row in f) / f.shape[0]
        reference = batch if reference is None else RHO * reference + (1 - RHO) * batch
        weight_before = method.predictor.weight.clone()
        sgd_step(method, optimizer, views, step)
        torch.testing.assert_close(method.predictor.correlation.double(), reference, atol=1e-4, rtol=1e-4)
        assert not torch.equal(method.predictor.weight, weight_before), "W_p is reset after every step"
        torch.testing.assert_close(method.predictor.weight, directpred_predictor(reference.float(), EPS)[0], atol=1e-4, rtol=1e-4)
    assert int(method.predictor.correlation_updates) == 4


def test_predictor_update_every_k_steps_while_the_correlation_updates_every_step() -> None:
    method = make(predictor_update_every=3)
    optimizer = torch.optim.SGD([q for q in method.parameters() if q.requires_grad], lr=0.05)
    method.train()
    changed = []
    for step, views in enumerate(batches(5)):
        before = method.predictor.weight.clone()
        sgd_step(method, optimizer, views, step)
        changed.append(not torch.equal(method.predictor.weight, before))
    assert changed == [True, False, False, True, False]
    assert int(method.predictor.correlation_updates) == 5


def test_eval_mode_forward_leaves_the_correlation_alone() -> None:
    method = make()
    method.eval()
    method(batches(1)[0])
    assert int(method.predictor.correlation_updates) == 0
    assert torch.equal(method.predictor.correlation, torch.zeros_like(method.predictor.correlation))


def test_predictor_is_buffers_only_gets_no_gradient_and_is_not_in_the_optimiser() -> None:
    method = make()
    assert not [name for name, _ in method.named_parameters() if name.startswith("predictor.")]
    buffers = {name for name, _ in method.named_buffers()}
    assert {"predictor.correlation", "predictor.weight"} <= buffers
    optimizer = build_optimizer("lars", method, lr=0.1)
    optimised = {id(q) for group in optimizer.param_groups for q in group["params"]}
    assert optimised == {id(q) for q in method.parameters() if q.requires_grad}
    method.train()
    sgd_step(method, optimizer, batches(1)[0], 0)
    out = method(batches(1, seed=2)[0])
    out.loss.backward()
    assert method.predictor.weight.grad is None and not method.predictor.weight.requires_grad
    # the gradient reaches the projector and backbone through the fixed W_p
    assert all(q.grad is not None for q in [*method.backbone.parameters(), *method.projector.parameters()])


def test_state_dict_round_trip_carries_the_running_correlation_and_the_predictor() -> None:
    method = make()
    optimizer = torch.optim.SGD([q for q in method.parameters() if q.requires_grad], lr=0.05)
    method.train()
    for step, views in enumerate(batches(3)):
        sgd_step(method, optimizer, views, step)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    for key in ("correlation", "weight", "correlation_updates", "correlation_eigenvalues", "predictor_eigenvalues"):
        assert f"predictor.{key}" in state
    restored = make(seed=5)
    restored.load_state_dict(state)
    for key in ("correlation", "weight", "correlation_updates"):
        assert torch.equal(getattr(restored.predictor, key), getattr(method.predictor, key)), key
    # the restored run continues exactly: one more forward folds in the same batch
    views = batches(1, seed=9)[0]
    method.train(), restored.train()
    method(views), restored(views)
    torch.testing.assert_close(restored.predictor.correlation, method.predictor.correlation)


def test_scalars_and_spectra_report_the_predictor_next_to_the_correlation() -> None:
    method = make()
    optimizer = torch.optim.SGD([q for q in method.parameters() if q.requires_grad], lr=0.05)
    method.train()
    sgd_step(method, optimizer, batches(1)[0], 0)
    spectra = method.spectra()
    s, p = spectra["correlation"], spectra["predictor"]
    assert s.shape == p.shape == (method.projector.out_dim,)
    torch.testing.assert_close(p, (s.clamp(min=0) / s[0]).sqrt() + EPS)
    out = method(batches(1, seed=3)[0])
    for i in range(4):
        assert float(out.scalars[f"corr_eig_{i + 1}"]) == pytest.approx(float(s[i] / s[0]), rel=1e-5)
        assert float(out.scalars[f"pred_eig_{i + 1}"]) == pytest.approx(float(p[i] / p[0]), rel=1e-5)
    assert "cosine" in out.scalars


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"predictor": "mlp"}, "method.predictor"),
        ({"predictor_hidden_dim": 64}, "method.predictor"),
        ({"correlation_momentum": 1.0}, "method.correlation_momentum"),
        ({"predictor_eps": float("nan")}, "method.predictor_eps"),
        ({"predictor_update_every": 0}, "method.predictor_update_every"),
    ],
)
def test_bad_settings_name_their_key(overrides: dict, key: str) -> None:
    with pytest.raises(InputError, match=key):
        make(**overrides)


# --------------------------------------------------------------------------- training on digits


# The digits recipe's measured claims are CPU claims (float32, one thread): on a GPU machine
# train.device=auto would pick CUDA and bf16 autocast, a different run.
QUIET = {"log": {"progress": False}, "train": {"threads": 1, "device": "cpu"}}


def train(tmp_path: Path, name: str, **sections) -> tuple[Run, dict]:
    settings = {**QUIET, **sections}
    settings["train"] = {**QUIET["train"], **sections.get("train", {})}
    settings["run"] = {"name": name, "out_dir": str(tmp_path)}
    run = collapselab.train("directpred", "digits", **settings)
    return run, json.loads((run.dir / "summary.json").read_text())


def test_short_digits_run_is_healthy_and_logs_both_spectra(tmp_path: Path) -> None:
    # 8 of the recipe's 20 epochs. Measured, seeds 0 / 1: kNN 95.5 / 96.4 %, untrained backbone
    # 95.8 / 95.3 %, emb erank 4.6 / 5.3, no alarms: 40 steps do not reliably beat the baseline.
    run, summary = train(tmp_path, "dp_short", train={"epochs": 8})
    assert summary["status"] == "completed" and summary["alarms"] == []
    for name in ("repr", "emb"):
        assert set(summary["diagnosis"][name]["verdict"].values()) <= {"healthy", "n/a"}, name
    ev = summary["eval"]
    assert ev["knn_top1"] > ev["baseline_random_knn_top1"] - 0.03
    last = [r for r in run.history if r["kind"] == "train"][-1]
    assert last["corr_eig_1"] == pytest.approx(1.0) and last["pred_eig_1"] == pytest.approx(1.0)
    assert 0 < last["corr_eig_4"] < last["pred_eig_4"] < 1  # p = √s + ε lifts the weaker modes
    spectra = run.method.spectra()
    s, p = spectra["correlation"], spectra["predictor"]
    torch.testing.assert_close(p, (s.clamp(min=0) / s[0]).sqrt() + EPS)


@pytest.mark.slow  # 33-55 s on 2 shared cores
def test_recipe_digits_run_beats_the_untrained_backbone_without_alarms(tmp_path: Path) -> None:
    # measured (docs/methods.md#directpred): kNN 97.2 %, untrained 95.8 %, emb erank 5.1, no alarms
    _, summary = train(tmp_path, "dp_recipe")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 20
    assert summary["alarms"] == []
    assert summary["eval"]["knn_top1"] > summary["eval"]["baseline_random_knn_top1"]
