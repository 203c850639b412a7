"""The composite geometric objective: each term against a naive float64 formula, a zero weight
removes exactly its term (value, gradient, not computed), the asymmetry switches, config checks,
the layered ablation configs, and (a) collapses on digits while (b) does not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.config import load_config, recipe_dir
from collapselab.losses import vicreg
from collapselab.losses.geometric import (
    cosine_alignment,
    covariance_penalty,
    uniformity,
    variance_hinge,
)
from collapselab.methods import Composite, CompositeConfig, build_method
from collapselab.methods import composite as composite_module
from collapselab.models import build_backbone

torch.set_num_threads(1)

TERMS = ("alignment", "variance", "covariance", "uniformity")
WEIGHTS = {"alignment_weight": 2.0, "variance_weight": 3.0, "covariance_weight": 0.5, "uniformity_weight": 1.5}
SMALL = {"projector_hidden_dim": 8, "projector_out_dim": 6, "predictor_hidden_dim": 8}
CONFIGS = recipe_dir() / "composite"
ABLATION = ("a_alignment", "b_vic", "c_vic_uniformity", "d_vic_uniformity_predictor")


def make(seed: int = 0, **overrides) -> Composite:
    torch.manual_seed(seed)
    method = build_method(CompositeConfig(**{**SMALL, **overrides}), build_backbone("small_cnn", in_channels=1, width=4))
    return method.double()  # type: ignore[return-value]


def views(n: int = 10, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]


# --------------------------------------------------------------------------- naive reference


def naive_alignment(p: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    n, d = p.shape
    total = p.new_zeros(())
    for b in range(n):
        if kind == "mse":
            total = total + sum((p[b, j] - t[b, j]) ** 2 for j in range(d)) / d
        else:
            dot = sum(p[b, j] * t[b, j] for j in range(d))
            norms = torch.sqrt(sum(p[b, j] ** 2 for j in range(d))) * torch.sqrt(sum(t[b, j] ** 2 for j in range(d)))
            total = total + 2 - 2 * dot / norms
    return total / n


def naive_covariance_matrix(z: torch.Tensor) -> list[list[torch.Tensor]]:
    n, d = z.shape
    mean = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
    return [[sum((z[b, i] - mean[i]) * (z[b, j] - mean[j]) for b in range(n)) / (n - 1) for j in range(d)] for i in range(d)]


def naive_variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    cov = naive_covariance_matrix(z)
    d = z.shape[1]
    return sum(torch.clamp(gamma - torch.sqrt(cov[j][j] + eps), min=0.0) for j in range(d)) / d


def naive_covariance(z: torch.Tensor) -> torch.Tensor:
    cov = naive_covariance_matrix(z)
    d = z.shape[1]
    return sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d


def naive_uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    n, d = z.shape
    unit = [z[b] / torch.sqrt(sum(z[b, j] ** 2 for j in range(d))) for b in range(n)]
    kernels = [torch.exp(-t * sum((unit[i][j] - unit[k][j]) ** 2 for j in range(d))) for i in range(n) for k in range(i + 1, n)]
    return torch.log(sum(kernels) / len(kernels))


def naive_loss(method: Composite, pair: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The docstring's formula with explicit sums, on freshly computed (graph-carrying) branches."""
    c = method.config
    z = [method.projector(method.backbone(x)) for x in pair]
    p = [method.predictor(zi) if method.predictor is not None else zi for zi in z]
    if method.target is not None:
        t = [method.target(x) for x in pair]
    else:
        t = [zi.detach() if c.stop_gradient else zi for zi in z]
    terms = {
        "alignment": (naive_alignment(p[0], t[1], c.alignment) + naive_alignment(p[1], t[0], c.alignment)) / 2,
        "variance": (naive_variance(z[0]) + naive_variance(z[1])) / 2,
        "covariance": naive_covariance(z[0]) + naive_covariance(z[1]),
        "uniformity": (naive_uniformity(z[0], c.uniformity_t) + naive_uniformity(z[1], c.uniformity_t)) / 2,
    }
    active = {name: term for name, term in terms.items() if getattr(c, f"{name}_weight") > 0}
    return sum(getattr(c, f"{name}_weight") * term for name, term in active.items()), active  # type: ignore[return-value]


def grads(method: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.clone() for name, p in method.named_parameters()}


def assert_same_grads(a: dict[str, torch.Tensor | None], b: dict[str, torch.Tensor | None]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if a[name] is None or b[name] is None:
            assert a[name] is None and b[name] is None, name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-12, msg=name)


def value_and_grads(method: Composite, pair: list[torch.Tensor], naive: bool):
    method.zero_grad(set_to_none=True)
    if naive:
        loss, terms = naive_loss(method, pair)
    else:
        out = method(pair)
        loss, terms = out.loss, out.scalars
    loss.backward()
    return float(loss.detach()), {k: float(v.detach()) for k, v in terms.items()}, grads(method)


# --------------------------------------------------------------------------- the formula


@pytest.mark.parametrize("alignment", ["mse", "cosine"])
@pytest.mark.parametrize("predictor", ["none", "mlp"])
def test_composite_loss_and_gradient_equal_the_naive_float64_formula(alignment: str, predictor: str) -> None:
    method = make(alignment=alignment, predictor=predictor, **WEIGHTS)
    pair = views()
    loss, terms, g = value_and_grads(method, pair, naive=False)
    naive, naive_terms, naive_g = value_and_grads(method, pair, naive=True)
    assert loss == pytest.approx(naive, rel=1e-10)
    assert terms == pytest.approx(naive_terms, rel=1e-10)
    assert set(terms) == set(TERMS), "every term is logged"
    assert_same_grads(g, naive_g)


@pytest.mark.parametrize("removed", TERMS)
def test_a_zero_weight_removes_exactly_that_term_value_and_gradient(removed: str, monkeypatch) -> None:
    full = make(**WEIGHTS)
    pair = views()
    _, full_terms, _ = value_and_grads(full, pair, naive=False)
    method = make(**{**WEIGHTS, f"{removed}_weight": 0.0})
    # not even computed: the term's function must not be called
    function = {"variance": "variance_hinge", "covariance": "covariance_penalty", "uniformity": "uniformity",
                "alignment": "mse_alignment"}[removed]

    def forbidden(*args, **kwargs):
        raise AssertionError(f"{function} was computed with weight 0")

    monkeypatch.setattr(composite_module, function, forbidden)
    loss, terms, g = value_and_grads(method, pair, naive=False)
    monkeypatch.undo()
    naive, _, naive_g = value_and_grads(method, pair, naive=True)
    assert removed not in terms and set(terms) == set(TERMS) - {removed}
    expected = sum(WEIGHTS[f"{name}_weight"] * full_terms[name] for name in TERMS if name != removed)
    assert loss == pytest.approx(expected, rel=1e-10)  # the other terms are unchanged
    assert loss == pytest.approx(naive, rel=1e-10)
    assert_same_grads(g, naive_g)


def test_default_composite_is_vicregs_objective() -> None:
    method = make()
    pair = views()
    out = method(pair)
    with torch.no_grad():
        z1, z2 = (method.projector(method.backbone(x)) for x in pair)
    assert float(out.loss.detach()) == pytest.approx(float(vicreg(z1, z2, 25.0, 25.0, 1.0)), rel=1e-10)
    assert set(out.scalars) == {"alignment", "variance", "covariance"}


def test_terms_at_complete_collapse_take_their_known_values() -> None:
    z = torch.ones(8, 5, dtype=torch.float64)
    assert float(variance_hinge(z)) == pytest.approx(1 - math.sqrt(1e-4))
    assert float(covariance_penalty(z)) == 0.0
    assert float(uniformity(z)) == pytest.approx(0.0, abs=1e-12)
    assert float(cosine_alignment(z, 3 * z)) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- the switches


def test_stop_gradient_blocks_the_gradient_into_the_target_branch() -> None:
    pair = views()
    on = make(stop_gradient=True, **WEIGHTS)
    _, _, g_on = value_and_grads(on, pair, naive=False)
    _, _, naive_on = value_and_grads(on, pair, naive=True)  # naive: targets explicitly detached
    assert_same_grads(g_on, naive_on)
    off = make(stop_gradient=False, **WEIGHTS)
    _, _, g_off = value_and_grads(off, pair, naive=False)
    weight = "projector.net.0.weight"
    assert not torch.allclose(g_on[weight], g_off[weight])
    # with only the alignment term, the gradient is that of A(p1, sg z2) + A(p2, sg z1) alone:
    # halving it from the full (both-sides) gradient shows the target side contributes nothing
    only_align = {"variance_weight": 0.0, "covariance_weight": 0.0, "uniformity_weight": 0.0}
    sg = make(stop_gradient=True, **only_align)
    _, _, g_sg = value_and_grads(sg, pair, naive=False)
    full = make(stop_gradient=False, **only_align)
    _, _, g_full = value_and_grads(full, pair, naive=False)
    torch.testing.assert_close(g_sg[weight], g_full[weight] / 2, rtol=1e-9, atol=1e-12)


def test_ema_target_gets_no_gradient_and_only_moves_by_the_ema_update() -> None:
    method = make(predictor="mlp", stop_gradient=True, ema=0.9, ema_final=None, **WEIGHTS)
    pair = views()
    _, _, g = value_and_grads(method, pair, naive=False)
    _, _, naive_g = value_and_grads(method, pair, naive=True)
    assert_same_grads(g, naive_g)
    assert all(g[name] is None for name in g if name.startswith("target.")), "the target is not trained"
    before = {name: p.detach().clone() for name, p in method.target.net.named_parameters()}
    method.zero_grad()
    method(pair).loss.backward()
    torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5).step()
    for name, p in method.target.net.named_parameters():
        assert torch.equal(p, before[name]), "an optimiser step leaves the target alone"
    assert method.after_step(0, 10)["ema_momentum"] == pytest.approx(0.9)
    online = dict(torch.nn.Sequential(method.backbone, method.projector).named_parameters())
    for name, p in method.target.net.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * online[name])


def test_alignment_weight_zero_builds_no_branch_state_and_needs_no_target() -> None:
    method = make(alignment_weight=0.0)
    out = method(views())
    assert set(out.scalars) == {"variance", "covariance"} and method.target is None


def test_collapse_hints_name_the_missing_regulariser() -> None:
    plain = make(variance_weight=0.0, covariance_weight=0.0, uniformity_weight=0.0).collapse_hints()
    assert any("variance_weight=0 and uniformity_weight=0" in h for h in plain)
    assert any("predictor=none" in h for h in plain) and any("stop_gradient=false" in h for h in plain)
    assert make().collapse_hints() == []
    assert make(uniformity_weight=1.0, predictor="mlp").collapse_hints() == []
    assert any("dimensional collapse" in h for h in make(covariance_weight=0.0).collapse_hints())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"alignment": "l1"}, r"method\.alignment must be one of mse, cosine"),
        ({"variance_weight": -1.0}, r"method\.variance_weight must be a finite number >= 0"),
        ({"uniformity_weight": float("nan")}, r"method\.uniformity_weight"),
        ({"alignment_weight": 0.0, "variance_weight": 0.0, "covariance_weight": 0.0}, "every weight is 0"),
        ({"uniformity_t": 0.0}, r"method\.uniformity_t must be a positive"),
        ({"eps": -1e-4}, r"method\.eps"),
        ({"gamma": 0.0}, r"method\.gamma"),
        ({"alignment_weight": 0.0, "predictor": "mlp"}, "act only through the alignment term"),
        ({"predictor": "mpl"}, "did you mean 'mlp'"),
        ({"ema": 0.9}, r"needs method\.ema=off"),  # stop_gradient defaults to false here
    ],
)
def test_bad_config_values_raise_input_error_naming_the_key(overrides: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make(**overrides)


# --------------------------------------------------------------------------- configs and training


def test_the_recipe_is_config_b_and_the_layered_configs_add_one_thing_each() -> None:
    method = lambda name: load_config("composite", "digits", config_file=CONFIGS / f"{name}.yaml").method  # noqa: E731
    recipe = load_config("composite", "digits").method
    a, b, c, d = (method(name) for name in ABLATION)
    assert recipe == b
    assert (a.variance_weight, a.covariance_weight, a.uniformity_weight) == (0.0, 0.0, 0.0)
    assert (b.variance_weight, b.covariance_weight, b.uniformity_weight) == (25.0, 1.0, 0.0)
    assert c.uniformity_weight > 0 and {**vars(c), "uniformity_weight": 0.0} == vars(b)
    assert {**vars(d), "predictor": "none"} == vars(c) and d.predictor == "mlp"
    for config in (a, b, c, d):
        assert config.alignment_weight == 25.0 and not config.stop_gradient and config.ema in ("off", False, None)


def train(tmp_path: Path, name: str, epochs: int, policy: str = "warn") -> dict:
    run = collapselab.train(
        "composite", "digits", config=CONFIGS / f"{name}.yaml", monitor={"policy": policy},
        log={"progress": False}, eval={"final": False, "knn_every": 0},
        train={"threads": 1, "epochs": epochs}, run={"name": name, "out_dir": str(tmp_path)},
    )
    return json.loads((run.dir / "summary.json").read_text())


def collapse_alarms(summary: dict) -> list[dict]:
    return [a for a in summary["alarms"] if a["mode"] in ("complete", "dimensional")]


def test_alignment_only_raises_a_collapse_alarm_with_its_hint(tmp_path: Path) -> None:
    # policy=stop: the run ends at the first collapsed alarm (epoch 4 of 10 when measured)
    summary = train(tmp_path, "a_alignment", epochs=10, policy="stop")
    assert summary["status"] == "stopped" and summary["epochs_completed"] < 10
    assert any(a["level"] == "collapsed" for a in collapse_alarms(summary)), summary["alarms"]
    assert any("variance_weight=0" in h for h in summary["collapse_hints"])


def test_variance_covariance_config_raises_no_alarm(tmp_path: Path) -> None:
    summary = train(tmp_path, "b_vic", epochs=10)
    assert summary["status"] == "completed" and summary["alarms"] == []
