"""Heads: MLP shapes and BN switches, presets, the settable linear predictor, FALCON, prototypes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from collapselab._validation import InputError
from collapselab.models import (
    FALCONProjector,
    LinearPredictor,
    MLPHead,
    Prototypes,
    head_presets,
    mlp_head_preset,
)

BATCHNORM = nn.modules.batchnorm._BatchNorm


def count_bn(module: nn.Module) -> int:
    return sum(isinstance(m, BATCHNORM) for m in module.modules())


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_mlp_head_depth_widths_and_output_shape():
    head = MLPHead(16, hidden_dim=32, out_dim=8, num_layers=3)
    assert [(m.in_features, m.out_features) for m in linears(head)] == [(16, 32), (32, 32), (32, 8)]
    assert head(torch.randn(4, 16)).shape == (4, 8)
    assert count_bn(head) == 2
    assert len(linears(MLPHead(16, out_dim=8, num_layers=1))) == 1


def test_bn_false_removes_every_batchnorm_from_a_head():
    for name in head_presets():
        head = mlp_head_preset(name, 16, size="small", bn=False)
        assert count_bn(head) == 0, name
        assert head(torch.randn(3, 16)).shape[0] == 3


def test_last_bn_adds_output_batchnorm_and_drops_last_bias():
    head = MLPHead(16, 32, 8, num_layers=3, last_bn=True, last_bn_affine=False)
    assert isinstance(head.net[-1], nn.BatchNorm1d) and not head.net[-1].affine
    assert linears(head)[-1].bias is None
    z = head.train()(torch.randn(64, 16))
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-5, rtol=0)


def test_last_bn_without_bn_is_refused():
    with pytest.raises(InputError, match="last_bn"):
        MLPHead(16, bn=False, last_bn=True)


@pytest.mark.parametrize(
    ("name", "widths", "n_bn", "ends_with_bn"),
    [
        ("simclr", [(2048, 2048), (2048, 128)], 0, False),
        ("byol_projector", [(2048, 4096), (4096, 256)], 1, False),
        ("simsiam_projector", [(2048, 2048), (2048, 2048), (2048, 2048)], 3, True),
        ("barlow_twins", [(2048, 8192), (8192, 8192), (8192, 8192)], 2, False),
        ("vicreg", [(2048, 8192), (8192, 8192), (8192, 8192)], 2, False),
    ],
)
def test_paper_presets_have_published_layer_widths(name, widths, n_bn, ends_with_bn, monkeypatch):
    # Check the layout on the meta device: no memory for the 8192-wide layers.
    with torch.device("meta"):
        head = mlp_head_preset(name, 2048)
    assert [(m.in_features, m.out_features) for m in linears(head)] == widths
    assert count_bn(head) == n_bn
    assert isinstance(head.net[-1], nn.BatchNorm1d) == ends_with_bn


def test_predictor_presets_are_bottleneck_and_projector_shaped():
    with torch.device("meta"):
        simsiam = mlp_head_preset("simsiam_predictor", 2048)
        byol = mlp_head_preset("byol_predictor", 256)
    assert [(m.in_features, m.out_features) for m in linears(simsiam)] == [(2048, 512), (512, 2048)]
    assert [(m.in_features, m.out_features) for m in linears(byol)] == [(256, 4096), (4096, 256)]


def test_unknown_preset_suggests_nearest():
    with pytest.raises(InputError, match="byol_projector"):
        mlp_head_preset("byol_projektor", 16)


def test_linear_predictor_starts_at_identity_and_takes_an_external_weight():
    pred = LinearPredictor(4, trainable=False)
    x = torch.randn(3, 4)
    torch.testing.assert_close(pred(x), x)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    w = q @ torch.diag(torch.tensor([1.0, 0.5, 0.2, 0.01])) @ q.T
    pred.set_weight(w)
    torch.testing.assert_close(pred(x), x @ w.T)
    assert not pred.weight.requires_grad
    with pytest.raises(InputError, match="shape"):
        pred.set_weight(torch.eye(3))


def test_falcon_tanh_projector_output_lies_in_minus_one_one():
    proj = FALCONProjector(16, 32, variant="tanh")
    h = proj(torch.randn(50, 16) * 100)
    assert h.shape == (50, 32)
    assert bool((h.abs() <= 1).all())


def test_falcon_l2_projector_rows_have_norm_sqrt_f_over_n():
    f, n = 32, 20
    h = FALCONProjector(16, f, variant="l2")(torch.randn(n, 16))
    torch.testing.assert_close(h.norm(dim=1), torch.full((n,), math.sqrt(f / n)))
    # Σ_b ‖h_b‖² = f = tr(I_f), the trace of the decorrelated target HᵀH = I.
    torch.testing.assert_close((h.T @ h).trace(), torch.tensor(float(f)))
    fixed = FALCONProjector(16, f, variant="l2", batch_size=80)(torch.randn(n, 16))
    torch.testing.assert_close(fixed.norm(dim=1), torch.full((n,), math.sqrt(f / 80)))


def test_falcon_projector_is_linear_bn_then_tanh():
    proj = FALCONProjector(8, 4).train()
    x = torch.randn(10, 8)
    a = proj.linear(x)
    expected = torch.tanh((a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + 1e-5))
    torch.testing.assert_close(proj(x), expected)


def test_prototypes_normalize_puts_every_prototype_on_unit_sphere():
    protos = Prototypes(8, 5)
    with torch.no_grad():
        protos.weight.mul_(torch.arange(1.0, 6.0)[:, None])
    protos.normalize_()
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(5))
    scores = protos(torch.randn(7, 8) * 10)
    assert scores.shape == (7, 5)
    assert bool((scores.abs() <= 1 + 1e-6).all())


def test_prototypes_weight_norm_scores_are_cosines_with_unnormalised_weights():
    protos = Prototypes(8, 5, weight_norm=True)
    with torch.no_grad():
        protos.weight.mul_(3.0)
    x = torch.randn(7, 8)
    expected = nn.functional.normalize(x, dim=1) @ nn.functional.normalize(protos.weight, dim=1).T
    torch.testing.assert_close(protos(x), expected)


def test_heads_refuse_wrong_input_width():
    for head in (MLPHead(16), LinearPredictor(16), FALCONProjector(16, 8), Prototypes(16, 4)):
        with pytest.raises(InputError, match=r"\(B, 16\)"):
            head(torch.randn(4, 15))
