"""Model zoo: backbones (ResNet, small CNN, MLP, ViT, torchvision/timm adapters) and heads.

Every backbone maps a batch to (B, ``out_dim``) features; every head maps (B, in_dim) to
(B, out_dim). Build backbones by name with :func:`build_backbone`::

    from collapselab.models import build_backbone, mlp_head_preset
    backbone = build_backbone("resnet18", in_channels=3, stem="cifar", width=0.25)
    projector = mlp_head_preset("byol_projector", backbone.out_dim, size="small")

See ``docs/models.md`` for the catalogue, conventions and sources.
"""

from __future__ import annotations

from collapselab.models.backbones import (
    BasicBlock,
    Bottleneck,
    MLPBackbone,
    ResNet,
    SmallCNN,
    available_backbones,
    backbone_arguments,
    build_backbone,
    register_backbone,
    resnet18,
    resnet34,
    resnet50,
    timm_backbone,
    torchvision_backbone,
)
from collapselab.models.dictionary import RademacherDictionary
from collapselab.models.heads import (
    DINOBottleneck,
    DINOHead,
    FALCONProjector,
    LinearPredictor,
    MLPHead,
    Prototypes,
    head_presets,
    mlp_head_preset,
)
from collapselab.models.vit import (
    VIT_CONFIGS,
    VisionTransformer,
    ViTPredictor,
    sincos_pos_embed_2d,
    vit_small,
    vit_tiny,
)

register_backbone("vit_tiny")(vit_tiny)
register_backbone("vit_small")(vit_small)

__all__ = [
    "VIT_CONFIGS",
    "BasicBlock",
    "Bottleneck",
    "DINOBottleneck",
    "DINOHead",
    "FALCONProjector",
    "LinearPredictor",
    "MLPBackbone",
    "MLPHead",
    "Prototypes",
    "RademacherDictionary",
    "ResNet",
    "SmallCNN",
    "ViTPredictor",
    "VisionTransformer",
    "available_backbones",
    "backbone_arguments",
    "build_backbone",
    "head_presets",
    "mlp_head_preset",
    "register_backbone",
    "resnet18",
    "resnet34",
    "resnet50",
    "sincos_pos_embed_2d",
    "timm_backbone",
    "torchvision_backbone",
    "vit_small",
    "vit_tiny",
]
