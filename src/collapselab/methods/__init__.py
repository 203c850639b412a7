"""SSL methods as thin compositions of a backbone, heads and a loss from :mod:`collapselab.losses`.

``collapselab methods`` lists them with their switches; build one with
:func:`build_method` from its config, or let :func:`collapselab.train` do it.
"""

from __future__ import annotations

from collapselab.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from collapselab.methods.base import (
    METHODS,
    PREDICTORS,
    EMATarget,
    MethodConfig,
    MethodOutput,
    SiameseConfig,
    SiameseMethod,
    SSLMethod,
    StepSchedule,
    available_methods,
    build_method,
    describe_methods,
    ema_base,
    method_class,
    register_method,
)
from collapselab.methods.byol import BYOL, BYOLConfig
from collapselab.methods.composite import Composite, CompositeConfig
from collapselab.methods.dino import DINO, DINOConfig
from collapselab.methods.directpred import DirectPred, DirectPredConfig
from collapselab.methods.falcon import FALCON, FALCONConfig
from collapselab.methods.ijepa import IJEPA, IJEPAConfig
from collapselab.methods.moco import MoCo, MoCoConfig
from collapselab.methods.simclr import SimCLR, SimCLRConfig
from collapselab.methods.simsiam import SimSiam, SimSiamConfig
from collapselab.methods.swav import SwAV, SwAVConfig
from collapselab.methods.vicreg import VICReg, VICRegConfig

__all__ = [
    "BYOL",
    "DINO",
    "FALCON",
    "IJEPA",
    "METHODS",
    "PREDICTORS",
    "BYOLConfig",
    "BarlowTwins",
    "BarlowTwinsConfig",
    "Composite",
    "CompositeConfig",
    "DINOConfig",
    "DirectPred",
    "DirectPredConfig",
    "EMATarget",
    "FALCONConfig",
    "IJEPAConfig",
    "MethodConfig",
    "MethodOutput",
    "MoCo",
    "MoCoConfig",
    "SSLMethod",
    "SiameseConfig",
    "SiameseMethod",
    "SimCLR",
    "SimCLRConfig",
    "SimSiam",
    "SimSiamConfig",
    "StepSchedule",
    "SwAV",
    "SwAVConfig",
    "VICReg",
    "VICRegConfig",
    "available_methods",
    "build_method",
    "describe_methods",
    "ema_base",
    "method_class",
    "register_method",
]
