"""Backbones: shapes, published parameter counts, stems, width, init options, registry errors."""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from torch import nn

from collapselab._validation import InputError
from collapselab.models import (
    MLPBackbone,
    SmallCNN,
    available_backbones,
    build_backbone,
    resnet18,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------- independent parameter formula
# Written out from He et al. 2016 (Table 1) in the torchvision layout, without the fc layer:
# conv k×k from a to b channels has a·b·k² weights (no bias); BatchNorm(b) has 2b (γ, β).


def conv(a: int, b: int, k: int) -> int:
    return a * b * k * k


def bn(b: int) -> int:
    return 2 * b


def basic_block(cin: int, c: int, stride: int) -> int:
    total = conv(cin, c, 3) + bn(c) + conv(c, c, 3) + bn(c)
    if stride != 1 or cin != c:
        total += conv(cin, c, 1) + bn(c)
    return total


def bottleneck_block(cin: int, c: int, stride: int) -> int:
    total = conv(cin, c, 1) + bn(c) + conv(c, c, 3) + bn(c) + conv(c, 4 * c, 1) + bn(4 * c)
    if stride != 1 or cin != 4 * c:
        total += conv(cin, 4 * c, 1) + bn(4 * c)
    return total


def resnet_formula(
    layers, bottleneck: bool, in_ch: int = 3, stem_k: int = 7, base: int = 64
) -> int:
    total = conv(in_ch, base, stem_k) + bn(base)
    cin = base
    for i, n in enumerate(layers):
        c = base * 2**i
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            if bottleneck:
                total += bottleneck_block(cin, c, stride)
                cin = 4 * c
            else:
                total += basic_block(cin, c, stride)
                cin = c
    return total


def test_parameter_formula_reproduces_published_torchvision_counts_without_fc():
    # torchvision: resnet18 11,689,512, resnet34 21,797,672, resnet50 25,557,032 parameters,
    # minus fc (512·1000 + 1000 = 513,000; 2048·1000 + 1000 = 2,049,000).
    assert resnet_formula((2, 2, 2, 2), False) == 11_689_512 - 513_000 == 11_176_512
    assert resnet_formula((3, 4, 6, 3), False) == 21_797_672 - 513_000 == 21_284_672
    assert resnet_formula((3, 4, 6, 3), True) == 25_557_032 - 2_049_000 == 23_508_032


@pytest.mark.parametrize(
    ("name", "layers", "bottleneck", "published"),
    [
        ("resnet18", (2, 2, 2, 2), False, 11_176_512),
        ("resnet34", (3, 4, 6, 3), False, 21_284_672),
        ("resnet50", (3, 4, 6, 3), True, 23_508_032),
    ],
)
def test_resnet_imagenet_stem_parameter_count_matches_published(
    name, layers, bottleneck, published
):
    model = build_backbone(name, stem="imagenet")
    assert n_params(model) == published == resnet_formula(layers, bottleneck)


def test_resnet18_cifar_stem_parameter_count_is_3x3_stem_formula():
    model = build_backbone("resnet18", stem="cifar")
    assert n_params(model) == resnet_formula((2, 2, 2, 2), False, stem_k=3) == 11_168_832


def test_resnet18_one_channel_parameter_count_follows_formula():
    model = build_backbone("resnet18", in_channels=1, stem="cifar")
    assert n_params(model) == resnet_formula((2, 2, 2, 2), False, in_ch=1, stem_k=3)


def test_width_multiplier_scales_every_stage_and_out_dim():
    model = resnet18(width=0.25)
    assert model.out_dim == 128
    assert model.stem[0].out_channels == 16
    assert [
        s[0].conv1.out_channels for s in (model.layer1, model.layer2, model.layer3, model.layer4)
    ] == [
        16,
        32,
        64,
        128,
    ]
    assert n_params(model) == resnet_formula((2, 2, 2, 2), False, stem_k=3, base=16)
    assert build_backbone("resnet50", width=0.5).out_dim == 1024
    assert resnet18(width=0.5).out_dim == 256


def test_cifar_stem_keeps_32x32_resolution_imagenet_stem_divides_by_4():
    x = torch.randn(2, 3, 32, 32)
    assert resnet18(stem="cifar", width=0.25).stem(x).shape[-2:] == (32, 32)
    assert resnet18(stem="imagenet", width=0.25).stem(x).shape[-2:] == (8, 8)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize(
    ("name", "out_dim"), [("resnet18", 128), ("resnet34", 128), ("resnet50", 512)]
)
def test_resnet_features_are_batch_by_out_dim_on_cifar_and_digit_shapes(name, out_dim, stem):
    for shape in ((2, 3, 32, 32), (2, 1, 8, 8)):
        model = build_backbone(name, in_channels=shape[1], stem=stem, width=0.25)
        assert model.out_dim == out_dim
        assert model(torch.randn(shape)).shape == (2, out_dim)


def test_small_cnn_and_mlp_features_are_batch_by_out_dim():
    for shape in ((2, 3, 32, 32), (2, 1, 8, 8)):
        model = SmallCNN(in_channels=shape[1], width=8)
        assert model.out_dim == 32
        assert model(torch.randn(shape)).shape == (2, 32)
    mlp = MLPBackbone(input_dim=64, hidden_dims=(32, 16))
    assert mlp.out_dim == 16
    assert mlp(torch.randn(2, 1, 8, 8)).shape == (2, 16)
    assert build_backbone("mlp", input_dim=3 * 32 * 32)(torch.randn(2, 3, 32, 32)).shape == (2, 256)


def test_bn_false_removes_every_batchnorm_from_small_cnn_and_mlp():
    for model in (SmallCNN(bn=False), MLPBackbone(bn=False)):
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_zero_init_residual_zeroes_last_bn_gamma_of_every_block_only():
    model = build_backbone("resnet50", width=0.125, zero_init_residual=True)
    blocks = [
        b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage
    ]
    assert len(blocks) == 16
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    plain = build_backbone("resnet18", width=0.125)
    assert all(torch.all(b.bn2.weight == 1) for b in plain.layer1)


def test_zero_init_residual_block_starts_as_identity_after_relu():
    model = resnet18(width=0.125, zero_init_residual=True).eval()
    block = model.layer1[0]
    x = torch.rand(2, 8, 6, 6)
    torch.testing.assert_close(block(x), x)


def test_same_seed_gives_identical_weights_and_features():
    x = torch.randn(2, 3, 32, 32)
    outs, states = [], []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_backbone("resnet18", width=0.125)
        states.append(model.state_dict())
        outs.append(model(x))
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert torch.equal(outs[0], outs[1])


def test_unknown_backbone_suggests_nearest_name():
    with pytest.raises(InputError, match=r"did you mean 'resnet18'\?"):
        build_backbone("resnet81")
    with pytest.raises(InputError, match=r"did you mean 'small_cnn'\?"):
        build_backbone("smallcnn")


def test_unknown_keyword_names_accepted_ones_and_nearest():
    with pytest.raises(InputError, match=r"'widht' \(did you mean 'width'\?\).*accepted"):
        build_backbone("resnet18", widht=0.5)


@pytest.mark.parametrize(
    "bad", [{"width": 0}, {"width": -1.0}, {"stem": "tiny"}, {"in_channels": 0}]
)
def test_invalid_resnet_arguments_raise_input_error(bad):
    with pytest.raises(InputError):
        build_backbone("resnet18", **bad)


def test_wrong_input_channels_raise_input_error_with_hint():
    with pytest.raises(InputError, match="in_channels"):
        resnet18(in_channels=3, width=0.125)(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize(
    ("spec", "package"), [("torchvision:resnet18", "torchvision"), ("timm:resnet18", "timm")]
)
def test_missing_optional_package_gives_pip_hint(monkeypatch, spec, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(InputError, match=rf"pip install {package}"):
        build_backbone(spec)


def _fake_torchvision() -> types.ModuleType:
    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.maxpool(self.conv1(x)).mean((2, 3)))

    def get_model(name, weights=None, **kwargs):
        if name != "tinynet":
            raise ValueError(f"Unknown model {name}")
        return TinyNet()

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(get_model=get_model, list_models=lambda: ["tinynet"])
    return tv


def test_torchvision_adapter_removes_classifier_and_reports_out_dim(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", _fake_torchvision())
    model = build_backbone("torchvision:tinynet")
    assert model.out_dim == 4
    assert isinstance(model.model.fc, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    cifar = build_backbone("torchvision:tinynet", stem="cifar")
    assert cifar.model.conv1.kernel_size == (3, 3) and isinstance(cifar.model.maxpool, nn.Identity)
    with pytest.raises(InputError, match="did you mean tinynet"):
        build_backbone("torchvision:tinynt")


def test_timm_adapter_uses_num_classes_zero_and_num_features(monkeypatch):
    calls = {}

    def create_model(name, pretrained=False, num_classes=1000, **kwargs):
        calls.update(name=name, pretrained=pretrained, num_classes=num_classes)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
        model.num_features = 5
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = build_backbone("timm:fake")
    assert calls == {"name": "fake", "pretrained": False, "num_classes": 0}
    assert model.out_dim == 5 and model(torch.randn(2, 3, 2, 2)).shape == (2, 5)


def test_registry_lists_builtin_backbones():
    assert {"resnet18", "resnet34", "resnet50", "small_cnn", "mlp", "vit_tiny", "vit_small"} <= set(
        available_backbones()
    )


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {"width": 0.125, "in_channels": 1}),
        ("small_cnn", {"in_channels": 1, "width": 4}),
        ("mlp", {"hidden_dims": (8,)}),
        ("vit_tiny", {"img_size": 8, "patch_size": 2, "in_channels": 1, "depth": 1}),
    ],
)
def test_deep_copy_for_a_target_network_gives_identical_features(name, kwargs):
    model = build_backbone(name, **kwargs).eval()
    target = copy.deepcopy(model)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(target(x), model(x), rtol=0, atol=0)
