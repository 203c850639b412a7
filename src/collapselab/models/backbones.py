"""Backbones: ResNet-18/34/50 (CIFAR or ImageNet stem), a small CNN, an MLP, and adapters.

Every backbone maps a batch to features of shape (B, ``out_dim``): global-average-pooled, with
no classifier head, so a projector can be stacked on ``backbone.out_dim`` directly.

Sources and conventions:

- ResNet: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (Table 1), in the
  torchvision layout ("ResNet v1.5": the stride of a bottleneck block sits on its 3×3 conv;
  1×1 conv + BN projection shortcuts only where the shape changes; convolutions without bias;
  Kaiming-normal fan-out init). Parameter counts without ``fc`` equal torchvision's:
  ResNet-18 11,176,512, ResNet-34 21,284,672, ResNet-50 23,508,032 (ImageNet stem, 3 channels).
- CIFAR stem (solo-learn and lightly convention for 32×32 images): the 7×7 stride-2 conv and the
  max-pool are replaced by a 3×3 stride-1 conv, so a 32×32 input stays 32×32 through the stem.
- ``zero_init_residual``: the last BN γ of every residual block starts at 0, so each block starts
  as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1).
- Width multiplier: every stage's channel count is ``max(1, round(base · width))``; a
  quarter-width ResNet-18 has stages of 16, 32, 64, 128 channels and ``out_dim`` 128.

Randomness: parameters are initialised from the global torch RNG; build under
``torch.manual_seed(seed)`` for reproducible weights.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from collapselab._validation import InputError

Stem = Literal["cifar", "imagenet"]

# --------------------------------------------------------------------------- helpers


def _check_positive_int(value: object, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def _check_width(width: object, where: str) -> float:
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise InputError(
            f"{where}: width must be a positive number (e.g. 0.25, 1, 2), got {width!r}"
        )
    return float(width)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _check_images(x: torch.Tensor, in_channels: int, where: str) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise InputError(
            f"{where}: expected images of shape (B, {in_channels}, H, W), got {tuple(x.shape)}"
            + ("; set in_channels to match the data" if x.ndim == 4 else "")
        )


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN and ReLU, plus a shortcut (ResNet-18/34). (B, C_in, H, W) → (B, C, H/s, W/s)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride here, v1.5) → 1×1 ×4 convs with BN, plus a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet feature extractor: stem → 4 stages → global average pool → (B, out_dim).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        in_channels: image channels (3 for CIFAR, 1 for digits).
        stem: ``"cifar"`` (3×3 stride-1 conv, no max-pool; keeps H×W) or ``"imagenet"``
            (7×7 stride-2 conv + 3×3 stride-2 max-pool; H/4 × W/4).
        width: channel multiplier applied to 64, 128, 256, 512 (and the stem).
        zero_init_residual: start each block's last BN γ at 0 (block = identity at init).

    Shapes: (B, in_channels, H, W) → (B, out_dim), out_dim = round(512·width)·expansion.
    Works for any H, W ≥ 1 (an 8×8 digit reaches 1×1 at the last stage with the CIFAR stem).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        in_channels: int = 3,
        stem: Stem = "cifar",
        width: float = 1.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        where = "ResNet"
        _check_positive_int(in_channels, "in_channels", where)
        width = _check_width(width, where)
        if stem not in ("cifar", "imagenet"):
            raise InputError(f"{where}: stem must be 'cifar' or 'imagenet', got {stem!r}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise InputError(
                f"{where}: layers must be 4 positive block counts, got {tuple(layers)}"
            )
        self.in_channels = in_channels
        self.stem_type = stem
        self.width = width
        stem_channels = _scaled(64, width)
        if stem == "cifar":
            conv = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
            pool: nn.Module = nn.Identity()
        else:
            conv = nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=False)
            pool = nn.MaxPool2d(3, 2, 1)
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True), pool)
        stages: list[nn.Module] = []
        channels_in = stem_channels
        for i, n_blocks in enumerate(layers):
            channels = _scaled(64 * 2**i, width)
            blocks: list[nn.Module] = []
            for j in range(int(n_blocks)):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(channels_in, channels, stride))
                channels_in = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim: int = channels_in
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature maps, (B, out_dim, H', W'), before pooling."""
        _check_images(x, self.in_channels, type(self).__name__)
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → (B, out_dim) globally average-pooled features."""
        return self.pool(self.forward_maps(x)).flatten(1)


def resnet18(
    in_channels: int = 3, stem: Stem = "cifar", width: float = 1.0, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2); out_dim 512·width. He et al. 2016, Table 1."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, stem, width, zero_init_residual)


def resnet34(
    in_channels: int = 3, stem: Stem = "cifar", width: float = 1.0, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3); out_dim 512·width. He et al. 2016, Table 1."""
    return ResNet(BasicBlock, (3, 4, 6, 3), in_channels, stem, width, zero_init_residual)


def resnet50(
    in_channels: int = 3, stem: Stem = "cifar", width: float = 1.0, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3); out_dim 2048·width. He et al. 2016, Table 1."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, stem, width, zero_init_residual)


# --------------------------------------------------------------------------- small CNN and MLP


class SmallCNN(nn.Module):
    """A three-conv network for tiny images (8×8 digits, 32×32 CIFAR), fast on a CPU.

    conv3×3(C→w) → [BN] → ReLU → conv3×3 stride 2 (w→2w) → [BN] → ReLU →
    conv3×3 stride 2 (2w→4w) → [BN] → ReLU → global average pool.

    Shapes: (B, in_channels, H, W) → (B, out_dim = 4·width); 8×8 inputs end at 2×2 maps,
    32×32 at 8×8. ``bn=False`` removes every BatchNorm (convs then carry a bias).
    """

    def __init__(self, in_channels: int = 3, width: int = 32, bn: bool = True) -> None:
        super().__init__()
        _check_positive_int(in_channels, "in_channels", "SmallCNN")
        _check_positive_int(width, "width", "SmallCNN")
        self.in_channels = in_channels
        chans = [in_channels, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(3):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, 1 if i == 0 else 2, 1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(chans[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim: int = chans[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → (B, out_dim)."""
        _check_images(x, self.in_channels, "SmallCNN")
        return self.pool(self.features(x)).flatten(1)


class MLPBackbone(nn.Module):
    """Fully connected backbone for flat inputs: [Linear → [BN] → ReLU] per hidden layer.

    Any input (B, ...) is flattened to (B, input_dim) first, so digits (B, 1, 8, 8) work with
    ``input_dim=64``. Shapes: (B, input_dim) → (B, out_dim = hidden_dims[-1]).
    """

    def __init__(
        self, input_dim: int = 64, hidden_dims: Sequence[int] = (256, 256), bn: bool = True
    ) -> None:
        super().__init__()
        _check_positive_int(input_dim, "input_dim", "MLPBackbone")
        hidden_dims = tuple(hidden_dims)
        if not hidden_dims:
            raise InputError("MLPBackbone: hidden_dims must name at least one layer width")
        for h in hidden_dims:
            _check_positive_int(h, "each of hidden_dims", "MLPBackbone")
        self.input_dim = input_dim
        layers: list[nn.Module] = []
        dims = (input_dim, *hidden_dims)
        for a, b in itertools.pairwise(dims):
            layers.append(nn.Linear(a, b, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        self.out_dim: int = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) with prod(...) = input_dim → (B, out_dim)."""
        flat = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
        if flat.ndim != 2 or flat.shape[1] != self.input_dim:
            raise InputError(
                f"MLPBackbone: expected {self.input_dim} features per sample, got input of shape "
                f"{tuple(x.shape)}; set input_dim to the flattened size"
            )
        return self.net(flat)


# --------------------------------------------------------------------------- adapters


def _import_optional(module: str, pip_name: str, spec: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise InputError(
            f"build_backbone({spec!r}) needs the optional package {pip_name!r}, which is not "
            f"installed; install it with `pip install {pip_name}` or use a built-in backbone "
            f"({', '.join(available_backbones())})"
        ) from err


class _AdapterBackbone(nn.Module):
    """Wraps a third-party model whose classifier was removed; returns (B, out_dim) features."""

    def __init__(self, model: nn.Module, out_dim: int, source: str) -> None:
        super().__init__()
        self.model = model
        self.out_dim: int = int(out_dim)
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y.flatten(1) if y.ndim > 2 else y


def torchvision_backbone(name: str, stem: Stem = "imagenet", **kwargs: object) -> nn.Module:
    """A randomly initialised torchvision model with its classifier replaced by the identity.

    ``torchvision.models.get_model(name, weights=None, **kwargs)``; the classifier module (``fc``
    for ResNets, else ``classifier``, ``heads`` or ``head``) becomes ``nn.Identity`` and
    ``out_dim`` is the input width of its first Linear. ``stem="cifar"`` swaps a ResNet's
    ``conv1`` for a 3×3 stride-1 conv and drops ``maxpool`` (solo-learn's convention). Raises
    :class:`InputError` naming ``pip install torchvision`` when torchvision is missing, and the
    nearest model names for an unknown one.
    """
    spec = f"torchvision:{name}"
    if stem not in ("cifar", "imagenet"):
        raise InputError(
            f"build_backbone({spec!r}): stem must be 'cifar' or 'imagenet', got {stem!r}"
        )
    tv = _import_optional("torchvision", "torchvision", spec)
    listed = sorted(tv.models.list_models())  # type: ignore[attr-defined]
    if name not in listed:
        near = difflib.get_close_matches(name, listed, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise InputError(f"build_backbone({spec!r}): torchvision has no model {name!r}{hint}")
    model = tv.models.get_model(name, weights=None, **kwargs)  # type: ignore[attr-defined]
    out_dim = None
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        linears = (
            [m for m in head.modules() if isinstance(m, nn.Linear)]
            if isinstance(head, nn.Module)
            else []
        )
        if linears:
            out_dim = linears[0].in_features
            setattr(model, attr, nn.Identity())
            break
    if out_dim is None:
        raise InputError(
            f"build_backbone({spec!r}): cannot find the classifier (fc/classifier/heads) to remove"
        )
    if stem == "cifar":
        conv1 = getattr(model, "conv1", None)
        if not isinstance(conv1, nn.Conv2d) or not hasattr(model, "maxpool"):
            raise InputError(
                f"build_backbone({spec!r}): stem='cifar' applies to ResNet-style models only"
            )
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return _AdapterBackbone(model, out_dim, spec)


def timm_backbone(name: str, **kwargs: object) -> nn.Module:
    """A randomly initialised timm model without classifier: ``timm.create_model(name,
    pretrained=False, num_classes=0, **kwargs)``; ``out_dim = model.num_features``.
    Raises :class:`InputError` naming ``pip install timm`` when timm is missing.
    """
    spec = f"timm:{name}"
    timm = _import_optional("timm", "timm", spec)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)  # type: ignore[attr-defined]
    except RuntimeError as err:  # timm raises RuntimeError("Unknown model ...")
        raise InputError(f"build_backbone({spec!r}): {err}") from err
    return _AdapterBackbone(model, int(model.num_features), spec)


# --------------------------------------------------------------------------- registry

BackboneFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, BackboneFactory] = {}
_ADAPTERS: dict[str, BackboneFactory] = {"torchvision": torchvision_backbone, "timm": timm_backbone}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a factory ``(**kwargs) -> nn.Module`` (with ``.out_dim``) to the registry."""

    def add(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY or ":" in name:
            raise InputError(f"register_backbone: name {name!r} is taken or contains ':'")
        _REGISTRY[name] = factory
        return factory

    return add


def available_backbones() -> list[str]:
    """Registered backbone names (adapters ``torchvision:NAME`` / ``timm:NAME`` come on top)."""
    return sorted(_REGISTRY)


def backbone_arguments(name: str) -> set[str]:
    """Keyword arguments a registered backbone's factory accepts (empty for unknown names and
    ``torchvision:``/``timm:`` adapters), e.g. to tell it ``in_channels`` or ``input_dim``."""
    factory = _REGISTRY.get(name)
    return set(inspect.signature(factory).parameters) if factory is not None else set()


def check_backbone_name(name: object) -> None:
    """Raise :class:`InputError` unless ``name`` is a registered backbone or an adapter spelling
    (``"torchvision:NAME"``, ``"timm:NAME"``); an unknown name gets the nearest registered one.
    The adapter's model name is checked when it is built."""
    if not isinstance(name, str):
        raise InputError(f"build_backbone: name must be a string, got {type(name).__name__}")
    if ":" in name:
        prefix, _, model_name = name.partition(":")
        if prefix not in _ADAPTERS or not model_name:
            raise InputError(
                f"build_backbone: unknown adapter {name!r}; use 'torchvision:NAME' or 'timm:NAME'"
            )
    elif name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise InputError(
            f"build_backbone: unknown backbone {name!r}; {hint}available: "
            f"{', '.join(available_backbones())} (or 'torchvision:NAME' / 'timm:NAME')"
        )


def build_backbone(name: str, **kwargs: object) -> nn.Module:
    """Build a backbone by name: a registered one (``"resnet18"``, ``"small_cnn"``, ...) or an
    adapter (``"torchvision:resnet18"``, ``"timm:vit_small_patch16_224"``).

    ``kwargs`` go to the factory (e.g. ``in_channels=1, stem="cifar", width=0.25``).
    Raises :class:`InputError` for an unknown name (with the nearest names), an unknown keyword
    (with the accepted ones), or a missing optional package (with the pip command).
    """
    check_backbone_name(name)
    if ":" in name:
        prefix, _, model_name = name.partition(":")
        return _ADAPTERS[prefix](model_name, **kwargs)
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            hints = []
            for key in unknown:
                near = difflib.get_close_matches(key, list(params), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            raise InputError(
                f"build_backbone({name!r}): unknown argument(s) {', '.join(hints)}; accepted: "
                f"{', '.join(params)}"
            )
    return factory(**kwargs)


register_backbone("resnet18")(resnet18)
register_backbone("resnet34")(resnet34)
register_backbone("resnet50")(resnet50)
register_backbone("small_cnn")(SmallCNN)
register_backbone("mlp")(MLPBackbone)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "MLPBackbone",
    "ResNet",
    "SmallCNN",
    "available_backbones",
    "backbone_arguments",
    "build_backbone",
    "check_backbone_name",
    "register_backbone",
    "resnet18",
    "resnet34",
    "resnet50",
    "timm_backbone",
    "torchvision_backbone",
]
