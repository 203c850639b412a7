"""Contrastive objectives: NT-Xent (SimCLR), InfoNCE with a queue (MoCo v2), alignment/uniformity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from collapselab import distributed
from collapselab._validation import InputError
from collapselab.losses._common import check_positive, check_same_shape, check_tensor, semantics

__all__ = ["MoCoQueue", "alignment_uniformity", "info_nce", "nt_xent"]


@semantics("gather")
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy), the SimCLR loss.

    Formula, over the 2N views u = [z1; z2] (u_{i+N} is the positive of u_i)::

        ℓ_i = −log  exp(sim(u_i, u_pos(i))/τ) / Σ_{k≠i} exp(sim(u_i, u_k)/τ)
        L   = (1/2N) Σ_i ℓ_i,          sim = cosine similarity

    Source: Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020, eq. (1) and Algorithm 1 (loss averaged over all 2N anchors).
    At complete collapse (all u_i parallel) L = log(2N − 1).

    Shapes: ``z1``, ``z2`` (n, D), row b of both from the same image. Returns a scalar.
    Default τ = 0.5 (SimCLR's CIFAR setting).

    Distributed (``gather``): embeddings are gathered with gradient so each rank's anchors
    (its own 2n rows) see all 2N rows as candidates; the rank loss averages over its anchors,
    so the mean rank loss is the full-batch loss.
    """
    temperature = check_positive(temperature, "temperature")
    z1 = check_tensor(z1, "z1")
    z2 = check_tensor(z2, "z2")
    check_same_shape(z1, z2, "z1", "z2")
    n = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]), dim=1)  # (2n, D): this rank's views
    candidates = distributed.gather(anchors)  # (2N, D): each rank's [z1; z2] block in rank order
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    rows = torch.arange(2 * n, device=z1.device)
    offset = distributed.get_rank() * 2 * n
    self_index = rows + offset
    positive_index = (rows + n) % (2 * n) + offset
    positives = logits[rows, positive_index]
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_index] = True
    masked = logits.masked_fill(is_self, float("-inf"))
    return (torch.logsumexp(masked, dim=1) - positives).mean()


@semantics("local")
def info_nce(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """InfoNCE with an explicit queue of negatives, the MoCo (v2) loss.

    Formula, with q, k₊ and the queue rows k_1..k_K L2-normalised and sg = stop-gradient::

        L = mean_b −log  exp(q_b·sg(k₊_b)/τ) / (exp(q_b·sg(k₊_b)/τ) + Σ_{i=1..K} exp(q_b·sg(k_i)/τ))

    Source: He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
    CVPR 2020, eq. (1) and Algorithm 1; τ = 0.2 from Chen et al., "Improved Baselines with
    Momentum Contrastive Learning" (MoCo v2), 2020. At complete collapse L = log(K + 1).

    Shapes: ``query`` (n, D) from the online encoder, ``key`` (n, D) from the EMA encoder,
    ``queue`` (K, D). Returns a scalar. Keys and queue never receive gradient.

    Distributed (``local``): each rank uses its own positives and the shared queue; the queue
    itself is refilled with keys gathered from every rank (:meth:`MoCoQueue.enqueue`).
    """
    temperature = check_positive(temperature, "temperature")
    query = check_tensor(query, "query")
    key = check_tensor(key, "key")
    check_same_shape(query, key, "query", "key")
    queue = check_tensor(queue, "queue", min_rows=0)
    if queue.shape[1] != query.shape[1]:
        raise InputError(
            f"queue: rows must have the embedding width of query ({query.shape[1]}), "
            f"got shape {tuple(queue.shape)}"
        )
    q = F.normalize(query, dim=1)
    k = F.normalize(key.detach(), dim=1)
    negatives = F.normalize(queue.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ negatives.T], dim=1) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


class MoCoQueue(nn.Module):
    """A FIFO queue of K negative keys for :func:`info_nce` (MoCo's dictionary).

    The queue is a buffer of shape (K, D) holding L2-normalised keys, initialised with random
    unit vectors as in the official code. ``forward(query, key)`` computes the loss against the
    current queue and then enqueues the keys, the order of Algorithm 1 of He et al. (2020).

    Distributed: :meth:`enqueue` gathers the keys of every rank first (rank order), so all
    ranks keep identical queues.
    """

    queue: torch.Tensor
    pointer: torch.Tensor

    def __init__(
        self,
        dim: int,
        size: int = 65536,
        temperature: float = 0.2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise InputError(
                f"MoCoQueue: dim and size must be positive, got dim={dim}, size={size}"
            )
        self.temperature = check_positive(temperature, "temperature")
        start = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.register_buffer("queue", start)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write the (gathered, normalised) keys after the newest entries, wrapping around."""
        keys = check_tensor(keys, "keys")
        keys = F.normalize(distributed.gather(keys.detach()), dim=1).to(self.queue.dtype)
        size = self.queue.shape[0]
        if keys.shape[0] > size:
            keys = keys[-size:]
        index = (torch.arange(keys.shape[0], device=keys.device) + self.pointer) % size
        self.queue[index] = keys
        self.pointer.copy_((self.pointer + keys.shape[0]) % size)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        loss = info_nce(query, key, self.queue.clone(), self.temperature)
        self.enqueue(key)
        return loss


def _log_mean_gaussian_kernel(x: torch.Tensor, t: float) -> torch.Tensor:
    """log mean_{i<j} exp(−t‖x_i − x_j‖²) over the rows of x (needs at least 2 rows)."""
    n = x.shape[0]
    squared_norms = (x * x).sum(dim=1)
    distances = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    upper = torch.triu_indices(n, n, offset=1, device=x.device)
    pairs = distances[upper[0], upper[1]]
    return torch.logsumexp(-t * pairs, dim=0) - math.log(pairs.numel())


@semantics("gather")
def alignment_uniformity(
    z1: torch.Tensor,
    z2: torch.Tensor,
    alpha: float = 2.0,
    t: float = 2.0,
    uniformity_weight: float = 1.0,
    normalize: bool = True,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Alignment + uniformity on the hypersphere, used as a training loss.

    Formula, for L2-normalised f (``normalize=True``)::

        align   = mean_b ‖f(x_b) − f(x⁺_b)‖₂^α
        unif(Z) = log mean_{i<j} exp(−t‖z_i − z_j‖²)         (pairs i<j, diagonal excluded)
        L       = align + w·[unif(Z1) + unif(Z2)]/2

    Source: Wang & Isola, "Understanding Contrastive Representation Learning through Alignment
    and Uniformity on the Hypersphere", ICML 2020, Sec. 4.1 (L_align, L_uniform) and their reference
    code (which averages the two uniformity terms). Defaults α = 2, t = 2, w = 1. unif = 0 at
    complete collapse and is more negative the more uniform the embedding.

    Shapes: ``z1``, ``z2`` (n, D). Returns a scalar, or ``(loss, {"alignment", "uniformity"})``
    with ``return_terms=True`` (unweighted terms; ``uniformity`` is the average of the two).

    Distributed (``gather``): uniformity is computed over the gathered global batch (all
    pairs across ranks, identical on every rank); alignment is a local mean.
    """
    check_positive(t, "t")
    check_positive(alpha, "alpha")
    z1 = check_tensor(z1, "z1")
    z2 = check_tensor(z2, "z2")
    check_same_shape(z1, z2, "z1", "z2")
    if normalize:
        z1 = F.normalize(z1, dim=1)
        z2 = F.normalize(z2, dim=1)
    alignment = (z1 - z2).pow(2).sum(dim=1).pow(alpha / 2).mean()
    both = distributed.gather(torch.stack([z1, z2], dim=1))  # (N, 2, D), one collective
    all1, all2 = both[:, 0], both[:, 1]
    if all1.shape[0] < 2:
        raise InputError("alignment_uniformity: uniformity needs at least 2 samples in the batch")
    uniformity = (_log_mean_gaussian_kernel(all1, t) + _log_mean_gaussian_kernel(all2, t)) / 2
    loss = alignment + uniformity_weight * uniformity
    if return_terms:
        return loss, {"alignment": alignment.detach(), "uniformity": uniformity.detach()}
    return loss
