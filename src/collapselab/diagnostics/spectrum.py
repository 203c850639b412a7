"""Spectral measurements of dimensional collapse (docs/diagnostics.md, 'Spectral').

All functions take an (N, D) embedding matrix ``z`` (rows = samples) as a tensor or ndarray,
compute in float64 on the input's device, and return Python floats or float64 tensors.
Notation: z̄ the row mean, Σ = (1/N) Σ_b (z_b − z̄)(z_b − z̄)ᵀ the (biased) covariance,
λ_1 ≥ … ≥ λ_D ≥ 0 its eigenvalues. Natural logarithms throughout.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from collapselab._validation import ArrayLike, InputError, as_float64_matrix

RANKME_EPS = 1e-7
"""ε added to the normalised singular values in RankMe (Garrido et al. 2023, §3)."""

ALPHA_REQ_WINDOW = (11, 100)
"""Rank window of the α-ReQ fit (1-based, inclusive), as in the reference code of Agrawal et al."""

LOG_RATIO_FLOOR = 1e-12
"""λ_D is floored at this fraction of λ_1 in :func:`eigenvalue_log_ratio`, capping it at ≈ 27.6."""

SPAN_RTOL = 1e-6
"""A direction counts towards the span (:func:`span_from_spectrum`) when its variance exceeds this
fraction of the largest, i.e. its singular value exceeds 1e-3 of the top one: far above float32
round-off (about 1e-14 of λ_1 for the variance) and far below the smooth tails of trained
networks. Collapse zoo (docs/diagnostics.md, seed 0 re-run on 2026-12-07): the embeddings of
healthy runs spanned 52-100 % of their available directions at the end (one exception at 16 %,
inside the label's margin, over a collapsed backbone); known collapses 0.8-3.7 %."""


def centered(z: ArrayLike, name: str = "z") -> torch.Tensor:
    """Validated float64 copy of ``z`` with its row mean removed."""
    x = as_float64_matrix(z, name)
    return x - x.mean(dim=0, keepdim=True)


def gram_t(x: torch.Tensor) -> torch.Tensor:
    """xᵀx for a float64 (N, D) matrix, as a full symmetric (D, D) matrix.

    On CPU this calls BLAS ``dsyrk`` (through SciPy), which forms one triangle only: half the
    flops of a general matmul, and about 2x faster than ``x.T @ x`` on the 2-core CI machine.
    Elsewhere (CUDA) it is a plain matmul.
    """
    if x.device.type == "cpu" and x.dtype == torch.float64 and min(x.shape) >= 64:
        from scipy.linalg.blas import dsyrk

        arr = x.contiguous().numpy()
        upper = dsyrk(1.0, arr.T, trans=0)  # (D, D), upper triangle of arrᵀarr, rest zero
        upper = upper + np.triu(upper, 1).T
        return torch.from_numpy(np.ascontiguousarray(upper))
    return x.T @ x


def symmetric_eigenvalues(m: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of a symmetric float64 matrix.

    On CPU this calls LAPACK through SciPy: PyTorch's MKL ``eigvalsh`` with 2 threads is up to
    20x slower on small matrices (a 256×256 in 100 ms vs 5 ms, measured on the 2-core CI
    machine under load) and no faster on large ones.
    """
    if m.device.type == "cpu":
        from scipy.linalg import eigh

        vals = eigh(m.numpy(), eigvals_only=True, check_finite=False)
        return torch.from_numpy(np.ascontiguousarray(vals))
    return torch.linalg.eigvalsh(m)


def covariance(z: ArrayLike) -> torch.Tensor:
    """Biased sample covariance Σ = (1/N) Σ_b (z_b − z̄)(z_b − z̄)ᵀ, shape (D, D), float64."""
    zc = centered(z)
    return gram_t(zc) / zc.shape[0]


def _descending(vals: torch.Tensor, length: int) -> torch.Tensor:
    """Clip round-off negatives of a PSD spectrum to 0, sort descending, zero-pad to ``length``."""
    vals = vals.clamp_min(0.0).sort(descending=True).values
    if len(vals) < length:
        vals = torch.cat([vals, vals.new_zeros(length - len(vals))])
    return vals


def spectra(z: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Covariance eigenvalues (length D) and raw singular values of Z (length min(N, D)).

    Both descending. One product serves both: with C = Z_cᵀZ_c, Σ = C/N and
    ZᵀZ = C + N z̄z̄ᵀ, whose eigenvalues are σ_k(Z)². When N < D the N×N Gram matrices
    Z_cZ_cᵀ and ZZᵀ give the same non-zero eigenvalues more cheaply. Singular values obtained
    from ZᵀZ are accurate to about 1e-8·σ_1 (√ε of float64), far below RankMe's ε = 1e-7.
    """
    return spectra_of_validated(as_float64_matrix(z))


def spectra_of_validated(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spectra` of an already validated float64 (N, D) matrix."""
    n, d = x.shape
    mean = x.mean(dim=0, keepdim=True)
    zc = x - mean
    if n >= d:
        scatter = gram_t(zc)
        cov_eigs = symmetric_eigenvalues(scatter / n)
        raw_sq = symmetric_eigenvalues(scatter + n * (mean.T @ mean))
    else:
        cov_eigs = symmetric_eigenvalues(gram_t(zc.T) / n)
        raw_sq = symmetric_eigenvalues(gram_t(x.T))
    return _descending(cov_eigs, d), _descending(raw_sq, min(n, d)).sqrt()


def eigenspectrum(z: ArrayLike) -> torch.Tensor:
    """Eigenvalues λ_1 ≥ … ≥ λ_D ≥ 0 of the covariance Σ of ``z`` (float64, length D).

    Round-off negatives of a PSD matrix are clipped to 0. When N < D the N×N Gram matrix is
    decomposed instead (same non-zero eigenvalues); the other D − N eigenvalues are exactly 0.
    """
    zc = centered(z)
    n, d = zc.shape
    gram = gram_t(zc) / n if n >= d else gram_t(zc.T) / n
    return _descending(symmetric_eigenvalues(gram), d)


# --- functions of the spectrum -------------------------------------------------------------


def stable_rank_from_spectrum(eigenvalues: torch.Tensor) -> float:
    """srank = (Σ λ_i)² / Σ λ_i² = (tr Σ)² / ‖Σ‖_F² ∈ [1, D]; 0.0 when Σ = 0."""
    lam = eigenvalues.to(torch.float64)
    sq = float((lam * lam).sum())
    return 0.0 if sq == 0.0 else float(lam.sum()) ** 2 / sq


def stable_rank_from_covariance(cov: torch.Tensor) -> float:
    """(tr Σ)² / ‖Σ‖_F² straight from a covariance matrix: O(D²), no eigendecomposition."""
    cov = cov.to(torch.float64)
    frob_sq = float((cov * cov).sum())
    return 0.0 if frob_sq == 0.0 else float(torch.trace(cov)) ** 2 / frob_sq


def effective_rank_from_spectrum(eigenvalues: torch.Tensor) -> float:
    """erank = exp(−Σ p_i log p_i), p_i = λ_i / Σ_j λ_j (Roy & Vetterli 2007); 0.0 if Σλ = 0."""
    lam = eigenvalues.to(torch.float64).clamp_min(0.0)
    total = float(lam.sum())
    if total == 0.0:
        return 0.0
    p = lam / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def rankme_from_singular_values(singular_values: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe = exp(−Σ_k p_k log p_k), p_k = σ_k / ‖σ‖_1 + ε (Garrido et al., ICML 2023, Eq. 1)."""
    s = singular_values.to(torch.float64).clamp_min(0.0)
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s / total + eps
    return math.exp(float(-(p * p.log()).sum()))


def alpha_req_from_spectrum(
    eigenvalues: torch.Tensor, window: tuple[int, int] = ALPHA_REQ_WINDOW
) -> float:
    """α-ReQ: slope α of the weighted least-squares fit log λ_i ≈ −α log i + b (Agrawal et al. 2022).

    Weights 1/i; ranks ``window`` (1-based, inclusive) of the normalised spectrum λ/Σλ, limited to
    the strictly positive eigenvalues. When fewer than 3 positive eigenvalues fall in the window
    (small D), the fit uses every positive eigenvalue from rank 1 instead. Returns NaN when fewer
    than 2 positive eigenvalues exist (no slope is defined).
    """
    lam = eigenvalues.to(torch.float64)
    positive = int((lam > 0).sum())
    if positive < 2:
        return math.nan
    lo, hi = window
    if lo < 1 or hi < lo:
        raise InputError(f"alpha_req window must satisfy 1 <= lo <= hi, got {window}")
    hi = min(hi, positive)
    if hi - lo + 1 < 3:
        lo, hi = 1, positive
    ranks = torch.arange(lo, hi + 1, dtype=torch.float64, device=lam.device)
    y = (lam[lo - 1 : hi] / lam.sum()).log()
    x = ranks.log()
    w = 1.0 / ranks
    x_mean = (w * x).sum() / w.sum()
    y_mean = (w * y).sum() / w.sum()
    slope = (w * (x - x_mean) * (y - y_mean)).sum() / (w * (x - x_mean) ** 2).sum()
    return float(-slope)


def eigenvalue_log_ratio_from_spectrum(eigenvalues: torch.Tensor) -> float:
    """log(λ_1 / λ_D) with λ_D floored at ``LOG_RATIO_FLOOR``·λ_1; 0.0 when λ_1 = 0."""
    lam = eigenvalues.to(torch.float64)
    top = float(lam[0])
    if top <= 0.0:
        return 0.0
    bottom = max(float(lam[-1]), LOG_RATIO_FLOOR * top)
    return math.log(top / bottom)


def span_from_spectrum(eigenvalues: torch.Tensor, rtol: float = SPAN_RTOL) -> float:
    """The numerical rank of Σ: #{i : λ_i > rtol·λ_1}, the number of directions that carry any
    variance (0.0 when λ_1 = 0). Dimensional collapse in the sense of Jing et al. (ICLR 2022,
    "Understanding dimensional collapse in contrastive self-supervised learning"): singular values
    that vanish, not merely a variance concentrated in a few directions (the effective rank)."""
    lam = eigenvalues.to(torch.float64)
    top = float(lam[0]) if lam.numel() else 0.0
    if top <= 0.0:
        return 0.0
    return float(int((lam > rtol * top).sum()))


def explained_variance_from_spectrum(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Cumulative explained variance Σ_{i≤k} λ_i / Σ_i λ_i for k = 1..D (zeros if Σλ = 0)."""
    lam = eigenvalues.to(torch.float64)
    total = lam.sum()
    if float(total) == 0.0:
        return torch.zeros_like(lam)
    return (lam.cumsum(0) / total).clamp_max(1.0)


def components_for_variance(curve: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest k whose cumulative explained variance reaches ``fraction`` (0 if none does)."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    # tolerate round-off: a curve ending at 1 − 1e-15 still reaches 100 %
    reached = (curve >= fraction - 1e-12).nonzero()
    return int(reached[0]) + 1 if len(reached) else 0


# --- public functions of z -------------------------------------------------------------------


def stable_rank(z: ArrayLike) -> float:
    """Stable rank srank(Σ) = (tr Σ)² / ‖Σ‖_F² ∈ [1, D] (the participation ratio; Gao et al. 2017).

    Scale-invariant; equals D iff Σ = σ²I and tends to 1 as one eigenvalue dominates. Needs no
    eigendecomposition: tr Σ = ‖Z_c‖_F²/N and ‖Σ‖_F² = ‖Z_cᵀZ_c‖_F²/N², formed with the cheaper of
    the D×D covariance and the N×N Gram matrix (they have the same Frobenius norm).
    Returns 0.0 for constant embeddings (Σ = 0). Not the matrix-analysis ‖A‖_F²/‖A‖_2²; see
    :func:`spectral_stable_rank` for that.
    """
    zc = centered(z)
    gram = gram_t(zc.T) if zc.shape[0] < zc.shape[1] else gram_t(zc)
    frob_sq = float((gram * gram).sum())
    if frob_sq == 0.0:
        return 0.0
    return float((zc * zc).sum()) ** 2 / frob_sq


def spectral_stable_rank(z: ArrayLike) -> float:
    """Matrix-analysis stable rank ‖Z_c‖_F² / ‖Z_c‖_2² = Σ_i λ_i / λ_1 ∈ [1, rank]; 0.0 if Σ = 0."""
    lam = eigenspectrum(z)
    return 0.0 if float(lam[0]) == 0.0 else float(lam.sum() / lam[0])


def effective_rank(z: ArrayLike) -> float:
    """Effective rank exp(−Σ p_i log p_i), p_i = λ_i/Σλ (Roy & Vetterli 2007). 1 ≤ erank ≤ rank(Σ)."""
    return effective_rank_from_spectrum(eigenspectrum(z))


def span(z: ArrayLike, rtol: float = SPAN_RTOL) -> float:
    """The number of directions whose variance exceeds ``rtol`` × the largest (the numerical
    rank of Σ; :func:`span_from_spectrum`)."""
    return span_from_spectrum(eigenspectrum(z), rtol)


def rankme(z: ArrayLike, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al., ICML 2023): exp(−Σ_k p_k log p_k), p_k = σ_k(Z)/‖σ(Z)‖_1 + ε.

    σ_k are the singular values of the raw, *uncentred* Z, as in the paper. The paper evaluates up
    to 25,600 samples and compares runs of the same method only; so should you.
    """
    return rankme_from_singular_values(spectra(z)[1], eps)


def alpha_req(z: ArrayLike, window: tuple[int, int] = ALPHA_REQ_WINDOW) -> float:
    """α-ReQ decay coefficient of the covariance spectrum (see :func:`alpha_req_from_spectrum`)."""
    return alpha_req_from_spectrum(eigenspectrum(z), window)


def eigenvalue_log_ratio(z: ArrayLike) -> float:
    """log(λ_1/λ_D) of the covariance, λ_D floored at 1e-12·λ_1 (so at most ≈ 27.6)."""
    return eigenvalue_log_ratio_from_spectrum(eigenspectrum(z))


def explained_variance_curve(z: ArrayLike) -> torch.Tensor:
    """Cumulative explained variance Σ_{i≤k} λ_i / Σλ, k = 1..D (float64 tensor)."""
    return explained_variance_from_spectrum(eigenspectrum(z))


def components_for_90_percent(z: ArrayLike) -> int:
    """Number of principal components needed to explain 90 % of the variance."""
    return components_for_variance(explained_variance_curve(z), 0.9)


def normalized_singular_spectrum(z: ArrayLike) -> torch.Tensor:
    """log σ_k, descending, of the covariance of the L2-normalised, centred rows (Jing et al. 2022).

    This is the curve DirectCLR plots to show dimensional collapse; zero singular values give −inf.
    """
    x = as_float64_matrix(z)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return eigenspectrum(x).log()


def spectral_metrics(
    cov_eigenvalues: torch.Tensor, raw_singular_values: torch.Tensor
) -> dict[str, float]:
    """Every spectral measurement from the covariance spectrum and the raw singular values.

    Keys: ``stable_rank``, ``spectral_stable_rank``, ``effective_rank``, ``rankme``, ``alpha_req``,
    ``eigenvalue_log_ratio``, ``components_90`` (k reaching 90 % explained variance), ``span``
    (:func:`span_from_spectrum`), ``top_eigenvalue``.
    """
    lam = cov_eigenvalues
    top = float(lam[0])
    return {
        "stable_rank": stable_rank_from_spectrum(lam),
        "spectral_stable_rank": float(lam.sum()) / top if top > 0 else 0.0,
        "effective_rank": effective_rank_from_spectrum(lam),
        "rankme": rankme_from_singular_values(raw_singular_values),
        "alpha_req": alpha_req_from_spectrum(lam),
        "eigenvalue_log_ratio": eigenvalue_log_ratio_from_spectrum(lam),
        "components_90": float(components_for_variance(explained_variance_from_spectrum(lam), 0.9)),
        "span": span_from_spectrum(lam),
        "top_eigenvalue": top,
    }


class StreamingCovariance:
    """Mean and covariance accumulated over batches (and ranks) in float64.

    Keeps the count n, the mean z̄ and the scatter matrix M = Σ_b (z_b − z̄)(z_b − z̄)ᵀ, and
    combines two partial results (n_a, z̄_a, M_a), (n_b, z̄_b, M_b) with the pairwise update of
    Chan, Golub & LeVeque (1979): δ = z̄_b − z̄_a, n = n_a + n_b, z̄ = z̄_a + δ·n_b/n,
    M = M_a + M_b + δδᵀ·n_a·n_b/n. Unlike accumulating Σz and Σzzᵀ, this does not cancel
    catastrophically when the mean is large relative to the spread.

    >>> acc = StreamingCovariance()
    >>> for batch in batches: acc.update(batch)          # doctest: +SKIP
    >>> acc.all_reduce()  # under torch.distributed: every rank gets the global statistics
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None

    @property
    def dim(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    def _combine(
        self, count: int, mean: torch.Tensor, scatter: torch.Tensor
    ) -> StreamingCovariance:
        if count == 0:
            return self
        if self.mean is None or self.scatter is None:
            self.count, self.mean, self.scatter = count, mean.clone(), scatter.clone()
            return self
        if len(mean) != len(self.mean):
            raise InputError(
                f"StreamingCovariance: got dimension {len(mean)}, accumulated {len(self.mean)}"
            )
        mean = mean.to(self.mean.device)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.scatter = (
            self.scatter
            + scatter.to(self.scatter.device)
            + torch.outer(delta, delta) * (self.count * count / total)
        )
        self.count = total
        return self

    def update(self, z: ArrayLike) -> StreamingCovariance:
        """Add a batch of embeddings (B, D) (B ≥ 1)."""
        x = as_float64_matrix(z, "z", min_samples=1)
        mean = x.mean(dim=0)
        return self._combine(x.shape[0], mean, gram_t(x - mean))

    def merge(self, other: StreamingCovariance) -> StreamingCovariance:
        """Fold another accumulator (e.g. another rank's) into this one."""
        if other.mean is None or other.scatter is None:
            return self
        return self._combine(other.count, other.mean, other.scatter)

    def _require(self, minimum: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean is None or self.scatter is None or self.count < minimum:
            raise InputError(
                f"StreamingCovariance: need at least {minimum} sample(s), have {self.count}"
            )
        return self.mean, self.scatter

    def covariance(self) -> torch.Tensor:
        """Biased covariance M/n, (D, D) float64 — equal to :func:`covariance` of all batches."""
        _, scatter = self._require(1)
        return scatter / self.count

    def spectra(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(covariance eigenvalues, raw singular values of the stacked Z), as :func:`spectra`."""
        mean, scatter = self._require(2)
        d = len(mean)
        cov_eigs = _descending(symmetric_eigenvalues(scatter / self.count), d)
        raw_sq = symmetric_eigenvalues(scatter + self.count * torch.outer(mean, mean))
        raw = _descending(raw_sq, d)[: min(self.count, d)].sqrt()
        return cov_eigs, raw

    def metrics(self) -> dict[str, float]:
        """:func:`spectral_metrics` of everything accumulated, plus ``total_variance``."""
        cov_eigs, raw = self.spectra()
        out = spectral_metrics(cov_eigs, raw)
        out["total_variance"] = float(cov_eigs.sum())
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that restore the accumulator with :meth:`load_state_dict` (for checkpoints)."""
        mean, scatter = self._require(1)
        return {"count": torch.tensor(self.count), "mean": mean.clone(), "scatter": scatter.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> StreamingCovariance:
        self.count = int(state["count"])
        self.mean = state["mean"].to(torch.float64).clone()
        self.scatter = state["scatter"].to(torch.float64).clone()
        return self

    def all_reduce(self, group: object | None = None) -> StreamingCovariance:
        """Combine the accumulators of every rank in place (all ranks end identical).

        Semantics: ``all_gather`` of (n, z̄, M) from each rank, then the pairwise merge in rank
        order, so the result is deterministic and equals the single-process statistics of the
        concatenated data. No autograd (statistics only). A no-op without torch.distributed.
        Every rank must have seen at least one sample (dimension D is needed to gather).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        mean, scatter = self._require(1)
        world = dist.get_world_size(group)
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=mean.device)
        counts = [torch.empty_like(count) for _ in range(world)]
        means = [torch.empty_like(mean) for _ in range(world)]
        scatters = [torch.empty_like(scatter) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        dist.all_gather(means, mean.contiguous(), group=group)
        dist.all_gather(scatters, scatter.contiguous(), group=group)
        merged = StreamingCovariance()
        for c, m, s in zip(counts, means, scatters, strict=True):
            merged._combine(int(c.item()), m, s)
        self.count, self.mean, self.scatter = merged.count, merged.mean, merged.scatter
        return self
