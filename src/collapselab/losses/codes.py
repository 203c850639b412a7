"""Code-assignment objectives: FALCON/CPLearn, DINO, SwAV (with Sinkhorn–Knopp)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from collapselab import distributed
from collapselab._validation import InputError
from collapselab.losses._common import (
    check_positive,
    check_tensor,
    semantics,
    stack_views,
)

__all__ = [
    "DINOLoss",
    "FALCONLoss",
    "SwAVLoss",
    "dino",
    "dino_center_update",
    "falcon",
    "falcon_temperature",
    "rademacher_dictionary",
    "sinkhorn_knopp",
    "swav",
    "swav_assignments",
]

Terms = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- FALCON / CPLearn


def falcon_temperature(f: int, c: int, n: int, eps: float = 1e-8) -> float:
    """FALCON/CPLearn temperature τ = f / (√n · log((1 − ε(c − 1)) / ε)).

    ``f`` = projector width (rows of the dictionary), ``c`` = number of codes, ``n`` = batch
    size over which the code marginal is taken (the global batch), ε = 1e-8. This is the
    official code's τ, paired with its projector h = tanh(BN(Linear(z))) ∈ [−1, 1]^f: a saturated
    h equal to a code word w_j has h·w_j = f, so its logit is f/τ = √n·log((1 − ε(c−1))/ε).
    The paper writes τ = √(f/n)·log(...) for the projector √(f/n)·L2-norm(BN(Linear(z))); we do
    not implement that pair.
    """
    for value, name in ((f, "f"), (c, "c"), (n, "n")):
        if int(value) != value or value < 1:
            raise InputError(
                f"falcon_temperature: {name} must be a positive integer, got {value!r}"
            )
    if c < 2:
        raise InputError(f"falcon_temperature: need at least 2 codes, got c={c}")
    check_positive(eps, "eps")
    margin = 1.0 - eps * (c - 1)
    if margin <= 0:
        raise InputError(
            f"falcon_temperature: eps·(c − 1) must be < 1, got eps={eps}, c={c}; lower eps"
        )
    return f / (math.sqrt(n) * math.log(margin / eps))


def rademacher_dictionary(
    f: int, c: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A fixed random dictionary W ∈ {−1, +1}^{f×c} (entries ±1 with probability ½)."""
    if f < 1 or c < 2:
        raise InputError(f"rademacher_dictionary: need f ≥ 1 and c ≥ 2, got f={f}, c={c}")
    bits = torch.randint(0, 2, (f, c), generator=generator)
    return (2 * bits - 1).to(dtype)


def _global_log_marginal(log_p: torch.Tensor, n_global: int) -> torch.Tensor:
    """log p̄_j = log (1/N) Σ_b p_bj over the global batch, in log space (no underflow)."""
    local = torch.logsumexp(log_p, dim=0, keepdim=True)  # (1, c)
    return torch.logsumexp(distributed.gather(local), dim=0) - math.log(n_global)


def _check_falcon_settings(beta: float, prior_kl: str) -> None:
    if prior_kl not in ("reverse", "forward"):
        raise InputError(f"falcon: prior_kl must be 'reverse' or 'forward', got {prior_kl!r}")
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta >= 0):
        raise InputError(f"falcon: beta must be a finite number ≥ 0, got {beta!r}")


@semantics("all_reduce")
def falcon(
    h1: torch.Tensor,
    h2: torch.Tensor,
    dictionary: torch.Tensor,
    beta: float = 1.0,
    prior_kl: Literal["reverse", "forward"] = "reverse",
    temperature: float | None = None,
    eps: float = 1e-8,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """FALCON / CPLearn: prior matching on code usage + β·cross-view invariance.

    Formula, with logits = h W / τ, p = softmax(view-2 logits), q = softmax(view-1 logits),
    p̄ the batch marginal and u uniform over the c codes::

        L = ½[KL_prior(p̄₂) + β·mean_b CE(p₂_b, q₁_b)] + ½[KL_prior(p̄₁) + β·mean_b CE(p₁_b, q₂_b)]
        CE(a, b) = −Σ_j a_j log b_j
        reverse (default): KL_prior(p̄) = KL(p̄ ‖ u) = Σ_j p̄_j log(c·p̄_j)
        forward:           KL_prior(p̄) = KL(u ‖ p̄) = −(1/c) Σ_j log p̄_j − log c

    No stop-gradient, no EMA. Source: Sansone, Lebailly & Tuytelaars, "Collapse-Proof
    Non-Contrastive Self-Supervised Learning", ICML 2025 (arXiv 2410.04959), and the official
    code (github emsansone/CPLearn, ``solo/losses/cplearn.py``).

    Default ``prior_kl="reverse"``: it is what the official code optimises (so its released
    recipes, e.g. β = 1 on CIFAR, apply) and the form the authors switched to when codes went
    unused on ImageNet-100; it is also bounded (≤ log c). ``"forward"`` is the paper's prior term −Σ_j u_j log p̄_j
    minus the constant H(u) = log c (same gradient); it grows without bound as a code's usage
    goes to 0. Both are 0 exactly when every code is used equally often.

    Temperature: ``None`` uses :func:`falcon_temperature` (f, c, N = global batch, ε), the
    official code's τ paired with h = tanh(BN(Linear(z))); pass h from that projector.
    β default 1.0 (the official CIFAR recipe).

    Shapes: ``h1``, ``h2`` (n, f); ``dictionary`` (f, c), fixed ±1 entries, never trained
    (it is detached here). Returns a scalar, or ``(loss, {"prior", "invariance"})`` (each
    averaged over the two views, unweighted) with ``return_terms=True``.

    Distributed (``all_reduce``): the code marginal p̄ is reduced over ranks with gradient (the
    official code uses the per-GPU marginal); N in τ is the global batch, so W ranks of batch n
    reproduce one process with batch W·n. The cross-entropy is a local mean.
    """
    _check_falcon_settings(beta, prior_kl)
    h1 = check_tensor(h1, "h1")
    h2 = check_tensor(h2, "h2")
    if h1.shape != h2.shape:
        raise InputError(
            f"h2 must have the same shape as h1: got {tuple(h2.shape)} vs {tuple(h1.shape)}"
        )
    dictionary = check_tensor(dictionary, "dictionary")
    if dictionary.shape[0] != h1.shape[1]:
        raise InputError(
            f"dictionary: expected {h1.shape[1]} rows (the width of h1), got shape "
            f"{tuple(dictionary.shape)}"
        )
    f, c = dictionary.shape
    if c < 2:
        raise InputError(f"dictionary: need at least 2 codes (columns), got {c}")
    n_global = distributed.global_batch_size(h1.shape[0], h1.device)
    if temperature is None:
        temperature = falcon_temperature(f, c, n_global, eps)
    temperature = check_positive(temperature, "temperature")
    w = dictionary.detach().to(h1.dtype)
    return falcon_from_logits(
        h1 @ w / temperature, h2 @ w / temperature, beta, prior_kl, return_terms=return_terms
    )


@semantics("all_reduce")
def falcon_from_logits(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    beta: float = 1.0,
    prior_kl: Literal["reverse", "forward"] = "reverse",
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """The FALCON loss of :func:`falcon` from the code logits hW/τ of the two views, (n, c) each.

    For dictionaries too large to hold densely (the method computes hW blockwise from packed
    bits, :class:`collapselab.models.RademacherDictionary`). Same formula, defaults and
    distributed semantics (p̄ all-reduced over ranks) as :func:`falcon`.
    """
    _check_falcon_settings(beta, prior_kl)
    logits1 = check_tensor(logits1, "logits1")
    logits2 = check_tensor(logits2, "logits2")
    if logits1.ndim != 2 or logits1.shape != logits2.shape or logits1.shape[1] < 2:
        raise InputError(
            f"falcon: logits must be two (n, c) tensors of equal shape with c >= 2, got "
            f"{tuple(logits1.shape)} and {tuple(logits2.shape)}"
        )
    c = logits1.shape[1]
    n_global = distributed.global_batch_size(logits1.shape[0], logits1.device)
    log_q1 = F.log_softmax(logits1, dim=1)
    log_q2 = F.log_softmax(logits2, dim=1)

    def prior(log_p: torch.Tensor) -> torch.Tensor:
        log_marginal = _global_log_marginal(log_p, n_global)
        if prior_kl == "reverse":
            return (log_marginal.exp() * (log_marginal + math.log(c))).sum()
        return -log_marginal.mean() - math.log(c)

    def cross_entropy(log_target: torch.Tensor, log_pred: torch.Tensor) -> torch.Tensor:
        return -(log_target.exp() * log_pred).sum(dim=1).mean()

    prior_term = (prior(log_q2) + prior(log_q1)) / 2
    invariance = (cross_entropy(log_q2, log_q1) + cross_entropy(log_q1, log_q2)) / 2
    loss = prior_term + beta * invariance
    if return_terms:
        return loss, {"prior": prior_term.detach(), "invariance": invariance.detach()}
    return loss


class FALCONLoss(nn.Module):
    """:func:`falcon` with its fixed Rademacher dictionary held as a buffer (never trained)."""

    dictionary: torch.Tensor

    def __init__(
        self,
        embed_dim: int,
        n_codes: int,
        beta: float = 1.0,
        prior_kl: Literal["reverse", "forward"] = "reverse",
        eps: float = 1e-8,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.beta, self.prior_kl, self.eps = beta, prior_kl, eps
        self.register_buffer("dictionary", rademacher_dictionary(embed_dim, n_codes, generator))

    def forward(
        self, h1: torch.Tensor, h2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return falcon(
            h1,
            h2,
            self.dictionary,
            self.beta,
            self.prior_kl,
            eps=self.eps,
            return_terms=return_terms,
        )


# --------------------------------------------------------------------------- DINO


@semantics("local")
def dino(
    student_logits: torch.Tensor | Sequence[torch.Tensor],
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """DINO self-distillation: cross-entropy from the centred, sharpened teacher to the student.

    Formula, over teacher crops t and student crops s ≠ t (the student's first crops are the
    teacher's global crops, in the same order)::

        P_t = sg(softmax((g_t − c)/τ_t)),   log P_s = log_softmax(g_s/τ_s)
        L   = mean over pairs (t, s≠t) of mean_b −Σ_k P_t[b,k] log P_s[b,k]

    Source: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
    ICCV 2021, eq. (2)–(4), Algorithm 1 and the official code (facebookresearch/dino);
    τ_s = 0.1, τ_t = 0.04 (warmed up to 0.07 by the caller's schedule). With a uniform teacher
    and a uniform student L = log K (uniform collapse).

    Shapes: ``student_logits`` (V_s, n, K) or a list of V_s tensors (n, K); ``teacher_logits``
    (V_t, n, K) or a list, V_t ≤ V_s; ``center`` (K,) or (1, K). Returns a scalar, or
    ``(loss, {"teacher_entropy", "kl"})`` with ``return_terms=True`` (loss = entropy + KL).
    DINO's own collapse read-out: KL → 0 signals collapse; teacher entropy → log K is the
    uniform form, → 0 the one-dominant-dimension form.

    Distributed (``local``): the loss is a per-rank mean; the centre is updated from the
    all-reduced teacher batch mean by :func:`dino_center_update`.
    """
    student_temperature = check_positive(student_temperature, "student_temperature")
    teacher_temperature = check_positive(teacher_temperature, "teacher_temperature")
    students = stack_views(student_logits, "student_logits")
    teachers = stack_views(teacher_logits, "teacher_logits")
    if students[0].shape != teachers[0].shape:
        raise InputError(
            f"dino: student and teacher crops must have the same (n, K) shape, got "
            f"{tuple(students[0].shape)} and {tuple(teachers[0].shape)}"
        )
    if len(teachers) > len(students) or len(students) < 2:
        raise InputError(
            f"dino: need at least 2 student crops and no more teacher crops than student crops "
            f"(got {len(students)} student, {len(teachers)} teacher)"
        )
    center = check_tensor(center.reshape(1, -1), "center")
    if center.shape[1] != students[0].shape[1]:
        raise InputError(f"center: expected {students[0].shape[1]} entries, got {center.shape[1]}")
    center = center.detach()
    log_students = [F.log_softmax(s / student_temperature, dim=1) for s in students]
    log_teachers = [
        F.log_softmax((t.detach() - center) / teacher_temperature, dim=1) for t in teachers
    ]
    total, entropy, pairs = 0.0, 0.0, 0
    for ti, log_t in enumerate(log_teachers):
        p_t = log_t.exp()
        entropy = entropy - (p_t * log_t).sum(dim=1).mean()
        for si, log_s in enumerate(log_students):
            if si == ti:
                continue
            total = total - (p_t * log_s).sum(dim=1).mean()
            pairs += 1
    loss = total / pairs
    if return_terms:
        teacher_entropy = (entropy / len(log_teachers)).detach()
        return loss, {"teacher_entropy": teacher_entropy, "kl": loss.detach() - teacher_entropy}
    return loss


@torch.no_grad()
def dino_center_update(
    center: torch.Tensor,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    momentum: float = 0.9,
) -> torch.Tensor:
    """New DINO centre c ← m·c + (1 − m)·mean of the teacher logits over crops and the global batch.

    Source: Caron et al. (2021), eq. (4), m = 0.9. Distributed (``all_reduce``): the batch mean
    is summed over ranks. Returns a new (1, K) tensor; ``center`` is not modified.
    """
    if not 0.0 <= momentum <= 1.0:
        raise InputError(f"dino_center_update: momentum must be in [0, 1], got {momentum}")
    teachers = torch.cat(stack_views(teacher_logits, "teacher_logits"))
    count = distributed.global_batch_size(teachers.shape[0], teachers.device)
    batch_center = distributed.all_reduce(teachers.sum(dim=0, keepdim=True)) / count
    return momentum * center.reshape(1, -1) + (1.0 - momentum) * batch_center


class DINOLoss(nn.Module):
    """:func:`dino` holding the centre as a buffer; the centre is updated after each loss."""

    center: torch.Tensor

    def __init__(
        self, out_dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_logits: torch.Tensor | Sequence[torch.Tensor],
        teacher_logits: torch.Tensor | Sequence[torch.Tensor],
        teacher_temperature: float = 0.04,
        *,
        return_terms: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        out = dino(
            student_logits,
            teacher_logits,
            self.center,
            self.student_temperature,
            teacher_temperature,
            return_terms=return_terms,
        )
        new_center = dino_center_update(self.center, teacher_logits, self.center_momentum)
        self.center.copy_(new_center)
        return out


# --------------------------------------------------------------------------- SwAV


def _global_logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log Σ exp(x) along ``dim`` over the rows of every rank (no gradient), kept dim."""
    shift = distributed.all_reduce(x.amax(dim=dim, keepdim=True), op="max")
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return shift + torch.log(
        distributed.all_reduce(torch.exp(x - shift).sum(dim=dim, keepdim=True))
    )


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft codes Q for a batch of prototype scores (Sinkhorn–Knopp).

    Q ∝ exp(scores/ε), then ``iterations`` rounds of: rows (prototypes) rescaled to total mass
    1/K, columns (samples) to 1/B; finally multiplied by B so each sample's code sums to 1.
    Source: Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (SwAV), NeurIPS 2020, Sec. 3.1 and the official ``distributed_sinkhorn``;
    ε = 0.05, 3 iterations. Computed in log space (same result; no overflow or 0/0 when scores
    span more than ~80·ε, where the official code returns NaN), in at least float32.

    Shapes: ``scores`` (n, K) -> codes (n, K), no gradient.
    Distributed (``all_reduce``): the prototype sums run over the global batch B.
    """
    check_positive(eps, "eps")
    if iterations < 0:
        raise InputError(f"sinkhorn_knopp: iterations must be ≥ 0, got {iterations}")
    scores = check_tensor(scores, "scores")
    log_q = scores.detach().to(torch.promote_types(scores.dtype, torch.float32)).T / eps  # (K, n)
    n_prototypes = log_q.shape[0]
    batch = distributed.global_batch_size(log_q.shape[1], log_q.device)
    log_q = log_q - torch.logsumexp(_global_logsumexp(log_q, dim=1), dim=0, keepdim=True)
    for _ in range(iterations):
        log_q = log_q - _global_logsumexp(log_q, dim=1) - math.log(n_prototypes)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(batch)
    return torch.exp(log_q + math.log(batch)).T.to(scores.dtype)


@torch.no_grad()
def swav_assignments(
    scores: torch.Tensor,
    sinkhorn_eps: float = 0.05,
    sinkhorn_iterations: int = 3,
    *,
    equipartition: bool = True,
    queue_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """SwAV's codes q for the crop whose prototype scores are ``scores`` (no gradient).

    ``equipartition=True`` (SwAV)::

        q = SinkhornKnopp([x_queue; x])[-n:]     (ε, iterations; see :func:`sinkhorn_knopp`)

    the Sinkhorn input being the queue's scores (m, K) stacked before the batch's (n, K) and
    only the batch's n rows kept (the official code's ``use_the_queue`` branch: the queue only
    enlarges the set over which every prototype must receive an equal share). Without a queue
    it is Sinkhorn on the batch. ``equipartition=False`` (an ablation, not in the paper)::

        q = softmax(x / ε)                       (row-wise; the queue changes nothing)

    the same sharpening without the equal-partition constraint, which leaves the trivial
    solution (every sample on one prototype) open.

    Source: Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (SwAV), NeurIPS 2020, Sec. 3.1 and the official ``main_swav.py``
    (``distributed_sinkhorn``, the feature queue). Shapes: ``scores`` (n, K), ``queue_scores``
    (m, K) or None → (n, K), in the dtype of ``scores``. Distributed (``all_reduce``): Sinkhorn's
    prototype sums run over the rows of every rank (each rank's batch and its own queue).
    """
    scores = check_tensor(scores, "scores")
    check_positive(sinkhorn_eps, "sinkhorn_eps")
    if not equipartition:
        return F.softmax(scores.detach().to(torch.promote_types(scores.dtype, torch.float32)) / sinkhorn_eps,
                         dim=1).to(scores.dtype)
    if queue_scores is None:
        return sinkhorn_knopp(scores, sinkhorn_eps, sinkhorn_iterations)
    queue_scores = check_tensor(queue_scores, "queue_scores")
    if queue_scores.shape[1] != scores.shape[1]:
        raise InputError(
            f"queue_scores: expected {scores.shape[1]} prototypes (columns), got shape "
            f"{tuple(queue_scores.shape)}"
        )
    dtype = torch.promote_types(scores.dtype, queue_scores.dtype)
    rows = torch.cat([queue_scores.detach().to(dtype), scores.detach().to(dtype)])
    codes = sinkhorn_knopp(rows, sinkhorn_eps, sinkhorn_iterations)
    return codes[-scores.shape[0]:].to(scores.dtype)


@semantics("all_reduce")
def swav(
    scores: torch.Tensor | Sequence[torch.Tensor],
    temperature: float = 0.1,
    sinkhorn_eps: float = 0.05,
    sinkhorn_iterations: int = 3,
    assign_views: Sequence[int] = (0, 1),
    *,
    queue_scores: Sequence[torch.Tensor | None] | None = None,
    equipartition: bool = True,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """SwAV swapped prediction: predict the Sinkhorn code of one view from the scores of another.

    Formula, with scores x_v = ẑ_v·Ĉ (L2-normalised embeddings and prototypes)::

        q_a = SinkhornKnopp(sg(x_a)),  a ∈ assign_views
        L   = (1/|A|) Σ_a (1/(V − 1)) Σ_{v≠a} mean_b −Σ_k q_a[b,k] log softmax(x_v[b]/τ)_k

    Source: Caron et al. (SwAV), NeurIPS 2020, eq. (1)–(3) and the official code
    (facebookresearch/swav ``main_swav.py``); τ = 0.1, Sinkhorn ε = 0.05, 3 iterations.

    ``queue_scores``: the official feature queue, one (m, K) tensor (or None) per entry of
    ``assign_views``: the scores of stored embeddings of earlier batches, added to that crop's
    Sinkhorn input; only the batch rows of the codes enter the loss (:func:`swav_assignments`).
    ``equipartition=False`` replaces the Sinkhorn codes by softmax(x_a/ε) (an ablation).

    Shapes: ``scores`` (V, n, K) or a list of V tensors (n, K) (all crops, global crops first).
    Returns a scalar, or ``(loss, {"code_entropy", "prototypes_used"})`` with
    ``return_terms=True``: the mean entropy −Σ_k q log q of the codes over the assignment crops
    and samples, and the number of distinct prototypes that are the argmax of some code
    (over every assignment crop's rows of this rank), as 0-d tensors (no host read).

    Distributed (``all_reduce``): Sinkhorn normalises over the global batch (and every rank's
    queue); the cross-entropy and the logged terms are local.
    """
    temperature = check_positive(temperature, "temperature")
    views = stack_views(scores, "scores")
    if len(views) < 2:
        raise InputError(f"swav: need at least 2 views, got {len(views)}")
    if not assign_views or any(not 0 <= a < len(views) for a in assign_views):
        raise InputError(
            f"swav: assign_views {tuple(assign_views)} must index the {len(views)} views"
        )
    if queue_scores is not None and len(queue_scores) != len(assign_views):
        raise InputError(
            f"swav: queue_scores needs one entry per assignment view ({len(assign_views)}), "
            f"got {len(queue_scores)}"
        )
    log_probs = [F.log_softmax(v / temperature, dim=1) for v in views]
    loss = 0.0
    all_codes = []
    for i, a in enumerate(assign_views):
        queue = queue_scores[i] if queue_scores is not None else None
        codes = swav_assignments(
            views[a], sinkhorn_eps, sinkhorn_iterations, equipartition=equipartition, queue_scores=queue
        )
        all_codes.append(codes)
        sub = sum(-(codes * log_probs[v]).sum(dim=1).mean() for v in range(len(views)) if v != a)
        loss = loss + sub / (len(views) - 1)
    loss = loss / len(assign_views)
    if not return_terms:
        return loss
    codes = torch.cat(all_codes).float()
    entropy = -(codes * codes.clamp_min(1e-30).log()).sum(dim=1).mean()
    hit = torch.zeros(codes.shape[1], device=codes.device).index_fill_(0, codes.argmax(dim=1), 1.0)
    return loss, {"code_entropy": entropy, "prototypes_used": hit.sum()}


class SwAVLoss(nn.Module):
    """:func:`swav` with its trainable prototypes (K, D), L2-normalised at every forward."""

    def __init__(
        self,
        dim: int,
        n_prototypes: int = 3000,
        temperature: float = 0.1,
        sinkhorn_eps: float = 0.05,
        sinkhorn_iterations: int = 3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        start = (torch.rand(n_prototypes, dim, generator=generator) * 2 - 1) * bound
        self.prototypes = nn.Parameter(start)
        self.temperature = temperature
        self.sinkhorn_eps = sinkhorn_eps
        self.sinkhorn_iterations = sinkhorn_iterations

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Project the prototypes back onto the unit sphere (done before every forward)."""
        self.prototypes.copy_(F.normalize(self.prototypes, dim=1))

    def forward(self, embeddings: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """``embeddings``: (V, n, D) or a list of (n, D); returns the scalar SwAV loss."""
        self.normalize_prototypes()
        views = stack_views(embeddings, "embeddings")
        scores = [F.normalize(v, dim=1) @ self.prototypes.T for v in views]
        return swav(scores, self.temperature, self.sinkhorn_eps, self.sinkhorn_iterations)
