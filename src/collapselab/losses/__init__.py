"""Self-supervised objectives as pure functions, each with its formula, source and distributed semantics.

Every loss takes embeddings (tensors) and returns a scalar tensor; pass ``return_terms=True``
where offered to also get a dict of its unweighted terms for logging. Stateful pieces -- the
MoCo queue, the DINO centre, the FALCON dictionary, the SwAV prototypes -- live in thin
``nn.Module`` wrappers beside their function.

Distributed semantics (attribute ``distributed_semantics`` of each function, table in
:data:`DISTRIBUTED_SEMANTICS`), applied automatically whenever a process group with more than
one rank is initialised (see :mod:`collapselab.distributed`):

* ``local`` -- a per-rank mean; no communication.
* ``gather`` -- embeddings are all-gathered with gradient (e.g. SimCLR negatives from all ranks).
* ``all_reduce`` -- batch statistics are summed over ranks with gradient (Barlow/VICReg
  moments, FALCON code marginal, SwAV Sinkhorn; DINO's centre update).

In all cases W ranks with per-rank batch n compute the same step as one process with batch
W·n under DDP's gradient averaging (checked by ``tests/distributed``).
"""

from __future__ import annotations

from collections.abc import Callable

from collapselab.losses.band import band_floor, band_kl_prior, band_nll
from collapselab.losses.codes import (
    DINOLoss,
    FALCONLoss,
    SwAVLoss,
    dino,
    dino_center_update,
    falcon,
    falcon_from_logits,
    falcon_temperature,
    rademacher_dictionary,
    sinkhorn_knopp,
    swav,
    swav_assignments,
)
from collapselab.losses.contrastive import MoCoQueue, alignment_uniformity, info_nce, nt_xent
from collapselab.losses.noncontrastive import (
    barlow_twins,
    latent_prediction,
    negative_cosine,
    symmetric_negative_cosine,
    vicreg,
)

LOSSES: dict[str, Callable[..., object]] = {
    "nt_xent": nt_xent,
    "info_nce": info_nce,
    "negative_cosine": negative_cosine,
    "symmetric_negative_cosine": symmetric_negative_cosine,
    "barlow_twins": barlow_twins,
    "vicreg": vicreg,
    "falcon": falcon,
    "dino": dino,
    "swav": swav,
    "alignment_uniformity": alignment_uniformity,
    "latent_prediction": latent_prediction,
}
"""Every loss function by name."""

DISTRIBUTED_SEMANTICS: dict[str, str] = {
    name: fn.distributed_semantics  # type: ignore[attr-defined]
    for name, fn in LOSSES.items()
}
"""Name -> ``"local"``, ``"gather"`` or ``"all_reduce"``."""

__all__ = [
    "DISTRIBUTED_SEMANTICS",
    "LOSSES",
    "DINOLoss",
    "FALCONLoss",
    "MoCoQueue",
    "SwAVLoss",
    "alignment_uniformity",
    "band_floor",
    "band_kl_prior",
    "band_nll",
    "barlow_twins",
    "dino",
    "dino_center_update",
    "falcon",
    "falcon_from_logits",
    "falcon_temperature",
    "info_nce",
    "latent_prediction",
    "negative_cosine",
    "nt_xent",
    "rademacher_dictionary",
    "sinkhorn_knopp",
    "swav",
    "swav_assignments",
    "symmetric_negative_cosine",
    "vicreg",
]
