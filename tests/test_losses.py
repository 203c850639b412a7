"""collapselab.losses against independent naive implementations, known values, gradcheck, bad input.

Every ``naive_*`` function below re-derives a loss from its paper formula with explicit Python
loops over samples, pairs and dimensions in float64; the library's vectorised version must
match it in value and gradient to 1e-6.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from collapselab import losses
from collapselab._validation import InputError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "losses.md"
TOL = {"atol": 1e-6, "rtol": 1e-6}


def rand(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).requires_grad_()


def assert_matches_reference(
    loss_fn: Callable[..., torch.Tensor],
    reference_fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int] | None = None,
) -> None:
    """Values and gradients (w.r.t. inputs[i] for i in wrt) of loss_fn and reference_fn agree."""
    wrt = range(len(inputs)) if wrt is None else wrt
    value = loss_fn(*inputs)
    expected = reference_fn(*inputs)
    assert value.ndim == 0
    torch.testing.assert_close(value, expected, **TOL)
    targets = [inputs[i] for i in wrt]
    grads = torch.autograd.grad(value, targets, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, targets, allow_unused=True)
    for i, g, e in zip(wrt, grads, expected_grads, strict=True):
        g = torch.zeros_like(inputs[i]) if g is None else g
        e = torch.zeros_like(inputs[i]) if e is None else e
        torch.testing.assert_close(g, e, **TOL, msg=lambda m, i=i: f"gradient wrt input {i}: {m}")


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[k] * b[k] for k in range(a.shape[0]))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return dot(a, b) / torch.sqrt(dot(a, a) * dot(b, b))


def softmax_row(x: torch.Tensor) -> list[torch.Tensor]:
    exps = [torch.exp(x[k]) for k in range(x.shape[0])]
    total = sum(exps)
    return [e / total for e in exps]


# --------------------------------------------------------------------------- naive references


def naive_nt_xent(z1, z2, tau):
    n = z1.shape[0]
    views = [z1[i] for i in range(n)] + [z2[i] for i in range(n)]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = torch.exp(cosine(views[i], views[positive]) / tau)
        denominator = sum(
            torch.exp(cosine(views[i], views[k]) / tau) for k in range(2 * n) if k != i
        )
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


def naive_info_nce(query, key, queue, tau):
    total = 0.0
    for b in range(query.shape[0]):
        q, k = query[b], key[b].detach()
        positive = torch.exp(cosine(q, k) / tau)
        negatives = sum(
            torch.exp(cosine(q, queue[i].detach()) / tau) for i in range(queue.shape[0])
        )
        total = total - torch.log(positive / (positive + negatives))
    return total / query.shape[0]


def naive_negative_cosine(p, z):
    return -sum(cosine(p[b], z[b].detach()) for b in range(p.shape[0])) / p.shape[0]


def naive_barlow(z1, z2, lam, eps=1e-5):
    n, d = z1.shape

    def standardise(z):
        columns = []
        for j in range(d):
            mean = sum(z[b, j] for b in range(n)) / n
            var = sum((z[b, j] - mean) ** 2 for b in range(n)) / n
            columns.append([(z[b, j] - mean) / torch.sqrt(var + eps) for b in range(n)])
        return columns  # columns[j][b]

    a, b2 = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][b] * b2[j][b] for b in range(n)) / n
            loss = loss + ((1 - c_ij) ** 2 if i == j else lam * c_ij**2)
    return loss


def naive_vicreg_parts(z1, z2, gamma=1.0, eps=1e-4):
    n, d = z1.shape
    invariance = sum((z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def var_cov(z):
        means = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
        cov = [
            [
                sum((z[b, i] - means[i]) * (z[b, j] - means[j]) for b in range(n)) / (n - 1)
                for j in range(d)
            ]
            for i in range(d)
        ]
        v = sum(torch.relu(gamma - torch.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    return invariance, (v1 + v2) / 2, c1 + c2


def naive_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0):
    s, v, c = naive_vicreg_parts(z1, z2)
    return lam * s + mu * v + nu * c


def naive_falcon(h1, h2, w, beta, prior_kl, tau):
    n, c = h1.shape[0], w.shape[1]

    def probabilities(h):
        return [softmax_row(sum(h[b, k] * w[k] for k in range(w.shape[0])) / tau) for b in range(n)]

    p1, p2 = probabilities(h1), probabilities(h2)

    def prior(p):
        marginal = [sum(p[b][j] for b in range(n)) / n for j in range(c)]
        if prior_kl == "reverse":
            return sum(m * torch.log(m / (1.0 / c)) for m in marginal)
        return sum((1.0 / c) * torch.log((1.0 / c) / m) for m in marginal)

    def cross_entropy(target, pred):
        return sum(-target[b][j] * torch.log(pred[b][j]) for b in range(n) for j in range(c)) / n

    return 0.5 * (prior(p2) + beta * cross_entropy(p2, p1)) + 0.5 * (
        prior(p1) + beta * cross_entropy(p1, p2)
    )


def naive_dino(student, teacher, center, tau_s, tau_t):
    total, pairs = 0.0, 0
    n, k_dim = student[0].shape
    for t in range(len(teacher)):
        for s in range(len(student)):
            if s == t:
                continue
            for b in range(n):
                p_t = softmax_row((teacher[t][b].detach() - center) / tau_t)
                p_s = softmax_row(student[s][b] / tau_s)
                total = total - sum(p_t[k] * torch.log(p_s[k]) for k in range(k_dim)) / n
            pairs += 1
    return total / pairs


def naive_sinkhorn(scores, eps, iterations):
    n, k_dim = scores.shape
    q = [[math.exp(float(scores[b, k]) / eps) for b in range(n)] for k in range(k_dim)]  # K x n
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        q = [[x / sum(row) / k_dim for x in row] for row in q]
        column_sums = [sum(q[k][b] for k in range(k_dim)) for b in range(n)]
        q = [[q[k][b] / column_sums[b] / n for b in range(n)] for k in range(k_dim)]
    return torch.tensor(
        [[q[k][b] * n for k in range(k_dim)] for b in range(n)], dtype=torch.float64
    )


def naive_swav(views, tau, eps=0.05, iterations=3, assign=(0, 1)):
    n, k_dim = views[0].shape
    loss = 0.0
    for a in assign:
        codes = naive_sinkhorn(views[a].detach(), eps, iterations)
        sub = 0.0
        for v in range(len(views)):
            if v == a:
                continue
            for b in range(n):
                p = softmax_row(views[v][b] / tau)
                sub = sub - sum(codes[b, k] * torch.log(p[k]) for k in range(k_dim)) / n
        loss = loss + sub / (len(views) - 1)
    return loss / len(assign)


def naive_alignment_uniformity(z1, z2, alpha=2.0, t=2.0, weight=1.0):
    n = z1.shape[0]
    x = [z1[b] / torch.sqrt(dot(z1[b], z1[b])) for b in range(n)]
    y = [z2[b] / torch.sqrt(dot(z2[b], z2[b])) for b in range(n)]
    alignment = sum(dot(x[b] - y[b], x[b] - y[b]) ** (alpha / 2) for b in range(n)) / n

    def uniformity(u):
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        return torch.log(
            sum(torch.exp(-t * dot(u[i] - u[j], u[i] - u[j])) for i, j in pairs) / len(pairs)
        )

    return alignment + weight * (uniformity(x) + uniformity(y)) / 2


def naive_latent_prediction(predictions, targets, kind, beta=1.0):
    total, count = 0.0, 0
    for pred, target in zip(predictions, targets, strict=True):
        for p, t in zip(pred.flatten(), target.detach().flatten(), strict=True):
            diff = abs(p - t)
            if kind == "l2":
                total = total + diff**2
            else:
                total = total + (0.5 * diff**2 / beta if diff < beta else diff - 0.5 * beta)
            count += 1
    return total / count


# --------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_naive_loop(generator, temperature):
    inputs = [rand(generator, 5, 4), rand(generator, 5, 4)]
    assert_matches_reference(
        lambda a, b: losses.nt_xent(a, b, temperature=temperature),
        lambda a, b: naive_nt_xent(a, b, temperature),
        inputs,
    )


def test_nt_xent_accepts_positional_temperature(generator):
    z1, z2 = rand(generator, 4, 3), rand(generator, 4, 3)
    torch.testing.assert_close(losses.nt_xent(z1, z2, 0.3), naive_nt_xent(z1, z2, 0.3), **TOL)


def test_info_nce_matches_naive_loop_and_ignores_key_gradient(generator):
    query, key, queue = rand(generator, 4, 3), rand(generator, 4, 3), rand(generator, 6, 3)
    assert_matches_reference(
        lambda q, k, m: losses.info_nce(q, k, m, temperature=0.2),
        lambda q, k, m: naive_info_nce(q, k, m, 0.2),
        [query, key, queue],
        wrt=[0],
    )
    grads = torch.autograd.grad(losses.info_nce(query, key, queue), [key, queue], allow_unused=True)
    assert all(g is None for g in grads)


def test_moco_queue_is_fifo_and_wraps_around(generator):
    queue = losses.MoCoQueue(dim=3, size=5, generator=generator).double()
    start = queue.queue.clone()
    keys = [torch.randn(2, 3, generator=generator, dtype=torch.float64) for _ in range(3)]
    for k in keys:
        queue.enqueue(k)
    unit = [torch.nn.functional.normalize(k, dim=1) for k in keys]
    expected = torch.stack([unit[2][1], unit[0][1], unit[1][0], unit[1][1], unit[2][0]])
    torch.testing.assert_close(queue.queue, expected)
    assert int(queue.pointer) == 1
    assert not torch.equal(start, queue.queue)


def test_moco_queue_forward_uses_the_queue_before_adding_the_keys(generator):
    module = losses.MoCoQueue(dim=3, size=4, temperature=0.2, generator=generator).double()
    query, key = rand(generator, 2, 3), rand(generator, 2, 3)
    before = module.queue.clone()
    loss = module(query, key)
    torch.testing.assert_close(loss, naive_info_nce(query, key, before, 0.2), **TOL)
    torch.testing.assert_close(module.queue[:2], torch.nn.functional.normalize(key.detach(), dim=1))
    loss.backward()  # the in-place enqueue must not break the graph
    assert query.grad is not None


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_negative_cosine_matches_naive_loop(generator, stop_gradient):
    p, z = rand(generator, 5, 4), rand(generator, 5, 4)
    value = losses.negative_cosine(p, z, stop_gradient=stop_gradient)
    torch.testing.assert_close(value, naive_negative_cosine(p, z), **TOL)
    (grad_p,) = torch.autograd.grad(value, [p], retain_graph=True)
    (expected_p,) = torch.autograd.grad(naive_negative_cosine(p, z), [p])
    torch.testing.assert_close(grad_p, expected_p, **TOL)
    (grad_z,) = torch.autograd.grad(value, [z], allow_unused=True)
    if stop_gradient:
        assert grad_z is None
    else:  # without stop-gradient z gets the mirror-image gradient of the cosine
        (expected_z,) = torch.autograd.grad(naive_negative_cosine(z, p), [z])
        torch.testing.assert_close(grad_z, expected_z, **TOL)


def test_symmetric_negative_cosine_is_the_average_of_both_directions(generator):
    p1, p2, z1, z2 = (rand(generator, 4, 3) for _ in range(4))
    assert_matches_reference(
        losses.symmetric_negative_cosine,
        lambda a, b, c, d: 0.5 * naive_negative_cosine(a, d) + 0.5 * naive_negative_cosine(b, c),
        [p1, p2, z1, z2],
    )


def test_barlow_twins_matches_naive_loop_with_biased_batchnorm_variance(generator):
    inputs = [rand(generator, 6, 4, scale=2.0), rand(generator, 6, 4)]
    assert_matches_reference(
        lambda a, b: losses.barlow_twins(a, b, lambda_offdiag=5e-3),
        lambda a, b: naive_barlow(a, b, 5e-3),
        inputs,
    )


def test_barlow_twins_terms_add_up(generator):
    z1, z2 = rand(generator, 6, 4), rand(generator, 6, 4)
    loss, terms = losses.barlow_twins(z1, z2, lambda_offdiag=0.1, return_terms=True)
    torch.testing.assert_close(loss.detach(), terms["on_diagonal"] + 0.1 * terms["off_diagonal"])
    torch.testing.assert_close(
        terms["on_diagonal"] + 0.1 * terms["off_diagonal"], naive_barlow(z1, z2, 0.1).detach()
    )


def test_vicreg_matches_naive_loop_with_official_variance_average(generator):
    # scale 0.5 puts some dimensions below γ = 1 so the hinge is active
    inputs = [rand(generator, 6, 4, scale=0.5), rand(generator, 6, 4, scale=1.5)]
    assert_matches_reference(losses.vicreg, naive_vicreg, inputs)


def test_vicreg_returns_its_three_unweighted_terms(generator):
    z1, z2 = rand(generator, 6, 4, scale=0.5), rand(generator, 6, 4)
    loss, terms = losses.vicreg(z1, z2, return_terms=True)
    s, v, c = naive_vicreg_parts(z1, z2)
    torch.testing.assert_close(terms["invariance"], s.detach(), **TOL)
    torch.testing.assert_close(terms["variance"], v.detach(), **TOL)
    torch.testing.assert_close(terms["covariance"], c.detach(), **TOL)
    torch.testing.assert_close(loss.detach(), 25 * s.detach() + 25 * v.detach() + c.detach(), **TOL)


@pytest.mark.parametrize("prior_kl", ["reverse", "forward"])
def test_falcon_matches_naive_loop(generator, prior_kl):
    f, c, n = 6, 5, 4
    dictionary = losses.rademacher_dictionary(f, c, generator, dtype=torch.float64)
    h1, h2 = rand(generator, n, f), rand(generator, n, f)
    tau = losses.falcon_temperature(f, c, n)
    assert_matches_reference(
        lambda a, b: losses.falcon(
            torch.tanh(a), torch.tanh(b), dictionary, beta=0.7, prior_kl=prior_kl
        ),
        lambda a, b: naive_falcon(torch.tanh(a), torch.tanh(b), dictionary, 0.7, prior_kl, tau),
        [h1, h2],
    )


def test_falcon_temperature_follows_the_official_formula():
    f, c, n, eps = 2048, 16384, 64, 1e-8
    expected = f / (math.sqrt(n) * math.log((1 - eps * (c - 1)) / eps))
    assert losses.falcon_temperature(f, c, n, eps) == pytest.approx(expected, rel=1e-12)
    assert losses.falcon_temperature(f, c, n) == pytest.approx(2048 / (8 * 18.4206), rel=1e-4)


def test_falcon_module_holds_a_fixed_rademacher_dictionary(generator):
    module = losses.FALCONLoss(embed_dim=8, n_codes=6, generator=generator)
    assert set(module.dictionary.unique().tolist()) == {-1.0, 1.0}
    assert "dictionary" in dict(module.named_buffers()) and not list(module.parameters())
    h1, h2 = (
        torch.tanh(torch.randn(5, 8, generator=generator)),
        torch.tanh(torch.randn(5, 8, generator=generator)),
    )
    torch.testing.assert_close(module(h1, h2), losses.falcon(h1, h2, module.dictionary))


def test_dino_matches_naive_loop_with_multicrop(generator):
    n, k = 3, 5
    student = [rand(generator, n, k) for _ in range(3)]
    teacher = [rand(generator, n, k) for _ in range(2)]
    center = torch.randn(k, generator=generator, dtype=torch.float64)
    assert_matches_reference(
        lambda *s: losses.dino(
            list(s), teacher, center, student_temperature=0.1, teacher_temperature=0.04
        ),
        lambda *s: naive_dino(list(s), teacher, center, 0.1, 0.04),
        student,
    )
    assert all(
        g is None
        for g in torch.autograd.grad(
            losses.dino(student, teacher, center), teacher, allow_unused=True
        )
    )


def test_dino_terms_split_cross_entropy_into_teacher_entropy_and_kl(generator):
    student, teacher = rand(generator, 2, 4, 6), rand(generator, 2, 4, 6)
    loss, terms = losses.dino(
        student, teacher, torch.zeros(6, dtype=torch.float64), return_terms=True
    )
    p_t = torch.softmax(teacher.detach() / 0.04, dim=-1)
    entropy = -(p_t * torch.log(p_t)).sum(-1).mean()
    torch.testing.assert_close(terms["teacher_entropy"], entropy, **TOL)
    torch.testing.assert_close(terms["kl"] + terms["teacher_entropy"], loss.detach(), **TOL)


def test_dino_center_update_is_an_ema_of_the_teacher_batch_mean(generator):
    teacher = torch.randn(2, 4, 6, generator=generator, dtype=torch.float64)
    center = torch.randn(1, 6, generator=generator, dtype=torch.float64)
    new = losses.dino_center_update(center, teacher, momentum=0.9)
    expected = 0.9 * center + 0.1 * teacher.reshape(-1, 6).mean(0, keepdim=True)
    torch.testing.assert_close(new, expected, **TOL)


def test_dino_module_uses_the_old_center_then_updates_it(generator):
    module = losses.DINOLoss(out_dim=6, center_momentum=0.8).double()
    student, teacher = (
        torch.randn(3, 4, 6, generator=generator, dtype=torch.float64),
        torch.randn(2, 4, 6, generator=generator, dtype=torch.float64),
    )
    expected = losses.dino(student, teacher, torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(module(student, teacher), expected)
    torch.testing.assert_close(module.center, 0.2 * teacher.reshape(-1, 6).mean(0, keepdim=True))


def test_sinkhorn_knopp_matches_naive_loop_and_rows_sum_to_one(generator):
    scores = torch.rand(6, 4, generator=generator, dtype=torch.float64) * 2 - 1
    codes = losses.sinkhorn_knopp(scores, eps=0.05, iterations=3)
    torch.testing.assert_close(codes, naive_sinkhorn(scores, 0.05, 3), **TOL)
    torch.testing.assert_close(codes.sum(1), torch.ones(6, dtype=torch.float64), **TOL)


def test_sinkhorn_knopp_equipartitions_prototypes_when_run_to_convergence(generator):
    scores = torch.rand(8, 4, generator=generator, dtype=torch.float64) * 2 - 1
    codes = losses.sinkhorn_knopp(scores, eps=0.5, iterations=200)
    torch.testing.assert_close(
        codes.sum(0), torch.full((4,), 2.0, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_swav_matches_naive_loop(generator):
    views = [rand(generator, 4, 5, scale=0.5) for _ in range(3)]
    assert_matches_reference(
        lambda *v: losses.swav(list(v), temperature=0.1),
        lambda *v: naive_swav(list(v), 0.1),
        views,
    )


def test_swav_module_normalises_prototypes_and_embeddings(generator):
    module = losses.SwAVLoss(dim=4, n_prototypes=5, generator=generator).double()
    views = torch.randn(2, 6, 4, generator=generator, dtype=torch.float64)
    loss = module(views)
    prototypes = module.prototypes.detach()
    torch.testing.assert_close(prototypes.norm(dim=1), torch.ones(5, dtype=torch.float64))
    scores = [torch.nn.functional.normalize(v, dim=1) @ prototypes.T for v in views]
    torch.testing.assert_close(loss, naive_swav(scores, 0.1), **TOL)


def test_alignment_uniformity_matches_naive_loop(generator):
    inputs = [rand(generator, 5, 3), rand(generator, 5, 3)]
    assert_matches_reference(losses.alignment_uniformity, naive_alignment_uniformity, inputs)


@pytest.mark.parametrize("kind", ["l2", "smooth_l1"])
def test_latent_prediction_matches_naive_loop_over_unequal_blocks(generator, kind):
    predictions = [rand(generator, 2, 3, 4), rand(generator, 2, 2, 4, scale=3.0)]
    targets = [rand(generator, 2, 3, 4), rand(generator, 2, 2, 4)]
    assert_matches_reference(
        lambda a, b: losses.latent_prediction([a, b], targets, loss=kind),
        lambda a, b: naive_latent_prediction([a, b], targets, kind),
        predictions,
    )
    grads = torch.autograd.grad(
        losses.latent_prediction(predictions, targets), targets, allow_unused=True
    )
    assert all(g is None for g in grads)


def test_losses_accept_numpy_arrays_at_the_public_edge(generator):
    z1, z2 = rand(generator, 4, 3).detach(), rand(generator, 4, 3).detach()
    value = losses.nt_xent(z1.numpy(), z2.numpy(), temperature=0.5)
    torch.testing.assert_close(value, naive_nt_xent(z1, z2, 0.5), **TOL)


def test_sinkhorn_knopp_stays_finite_for_large_float32_scores(generator):
    scores = torch.randn(16, 8, generator=generator) * 100.0  # exp(score/0.05) overflows unshifted
    codes = losses.sinkhorn_knopp(scores)
    assert codes.dtype == torch.float32 and bool(torch.isfinite(codes).all())
    torch.testing.assert_close(codes.sum(1), torch.ones(16))


def test_falcon_stays_finite_with_saturated_float32_codes(generator):
    f, c, n = 64, 2048, 32
    dictionary = losses.rademacher_dictionary(f, c, generator)
    h1 = dictionary[:, torch.randint(0, c, (n,), generator=generator)].T.clone().requires_grad_()
    h2 = torch.tanh(10 * torch.randn(n, f, generator=generator)).requires_grad_()
    for prior_kl in ("reverse", "forward"):
        loss = losses.falcon(h1, h2, dictionary, prior_kl=prior_kl)
        grads = torch.autograd.grad(loss, [h1, h2])
        assert bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)


# --------------------------------------------------------------------------- known values


def collapsed(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(1, d, generator=generator, dtype=torch.float64).expand(n, d).clone()


@pytest.mark.parametrize("n", [2, 7, 32])
def test_nt_xent_equals_log_2n_minus_1_at_collapse(generator, n):
    z = collapsed(n, 5, generator)
    assert float(losses.nt_xent(z, 3.0 * z)) == pytest.approx(math.log(2 * n - 1), abs=1e-10)


@pytest.mark.parametrize("k", [1, 16, 100])
def test_info_nce_equals_log_k_plus_1_at_collapse(generator, k):
    z = collapsed(4, 5, generator)
    queue = z[:1].expand(k, 5) * 2.0
    assert float(losses.info_nce(z, z, queue)) == pytest.approx(math.log(k + 1), abs=1e-10)


def test_uniformity_term_is_zero_at_collapse_and_negative_otherwise(generator):
    z = collapsed(6, 4, generator)
    _, terms = losses.alignment_uniformity(z, z, return_terms=True)
    assert abs(float(terms["uniformity"])) < 1e-12
    assert abs(float(terms["alignment"])) < 1e-12
    spread = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    assert (
        float(losses.alignment_uniformity(spread, spread, return_terms=True)[1]["uniformity"])
        < -0.5
    )


def test_vicreg_variance_part_equals_mu_times_gamma_minus_sqrt_eps_at_collapse(generator):
    z = collapsed(8, 6, generator)
    loss, terms = losses.vicreg(z, z, return_terms=True)
    assert 25.0 * float(terms["variance"]) == pytest.approx(
        25.0 * (1.0 - math.sqrt(1e-4)), abs=1e-12
    )
    assert float(terms["covariance"]) == 0.0 and float(terms["invariance"]) == 0.0
    assert float(loss) == pytest.approx(24.75, abs=1e-12)


def test_negative_cosine_is_minus_one_when_prediction_equals_target(generator):
    z = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    assert float(losses.negative_cosine(2.0 * z, z)) == pytest.approx(-1.0, abs=1e-12)
    assert float(losses.negative_cosine(-z, z)) == pytest.approx(1.0, abs=1e-12)


def test_dino_equals_log_k_with_a_uniform_teacher_and_student(generator):
    k = 10
    teacher = collapsed(4, k, generator)
    center = teacher[0]  # centring removes the collapsed vector: uniform teacher
    student = torch.zeros(3, 4, k, dtype=torch.float64)
    loss = losses.dino(student, teacher.unsqueeze(0), center)
    assert float(loss) == pytest.approx(math.log(k), abs=1e-12)
    # with a uniform teacher any student pays at least log K
    other = torch.randn(3, 4, k, generator=generator, dtype=torch.float64)
    assert float(losses.dino(other, teacher.unsqueeze(0), center)) > math.log(k)


def whitened(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """Rows with zero column means and biased covariance exactly I."""
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.cat([torch.ones(n, 1, dtype=torch.float64), x], dim=1))
    return q[:, 1:] * math.sqrt(n)


def test_barlow_twins_is_zero_on_identical_exactly_whitened_views(generator):
    eps = 1e-5
    z = whitened(16, 4, generator)
    expected = 4 * (eps / (1 + eps)) ** 2  # BatchNorm's ε keeps C_ii = 1/(1+ε)
    value = float(losses.barlow_twins(z, z, eps=eps))
    assert value == pytest.approx(expected, rel=1e-6)
    assert value < 1e-8
    assert float(losses.barlow_twins(z, z, eps=1e-300)) == pytest.approx(0.0, abs=1e-20)


def test_falcon_equals_beta_log_c_with_uniform_codes(generator):
    c = 7
    h = torch.zeros(5, 4, dtype=torch.float64)  # every logit 0: p = q = u
    dictionary = losses.rademacher_dictionary(4, c, generator, dtype=torch.float64)
    for prior_kl in ("reverse", "forward"):
        loss, terms = losses.falcon(
            h, h, dictionary, beta=0.5, prior_kl=prior_kl, return_terms=True
        )
        assert float(terms["prior"]) == pytest.approx(0.0, abs=1e-12)
        assert float(loss) == pytest.approx(0.5 * math.log(c), abs=1e-12)


def test_falcon_reverse_prior_reaches_log_c_when_all_samples_collapse_onto_one_code(generator):
    f, c = 32, 8
    dictionary = losses.rademacher_dictionary(f, c, generator, dtype=torch.float64)
    h = dictionary[:, 2].expand(16, f).clone()  # saturated tanh output equal to code word 2
    _, terms = losses.falcon(h, h, dictionary, prior_kl="reverse", return_terms=True)
    assert float(terms["prior"]) == pytest.approx(math.log(c), abs=1e-6)
    _, terms = losses.falcon(h, h, dictionary, prior_kl="forward", return_terms=True)
    assert float(terms["prior"]) > 10 * math.log(c)  # unbounded direction


def test_swav_codes_are_uniform_when_every_sample_has_the_same_scores(generator):
    scores = collapsed(6, 5, generator)
    codes = losses.sinkhorn_knopp(scores)
    torch.testing.assert_close(codes, torch.full((6, 5), 0.2, dtype=torch.float64), **TOL)
    assert float(losses.swav(torch.zeros(2, 6, 5, dtype=torch.float64))) == pytest.approx(
        math.log(5), abs=1e-12
    )


# --------------------------------------------------------------------------- gradcheck


GRADCHECK_CASES = {
    "nt_xent": (lambda a, b: losses.nt_xent(a, b, 0.5), [(4, 3), (4, 3)]),
    "info_nce": (lambda q: losses.info_nce(q, QUEUE_KEY[:3], QUEUE_KEY[3:]), [(3, 3)]),
    "negative_cosine": (
        lambda p, z: losses.negative_cosine(p, z, stop_gradient=False),
        [(3, 4), (3, 4)],
    ),
    "barlow_twins": (losses.barlow_twins, [(5, 3), (5, 3)]),
    "vicreg": (lambda a, b: losses.vicreg(a, b), [(5, 3), (5, 3)]),
    "falcon": (
        lambda a, b: losses.falcon(torch.tanh(a), torch.tanh(b), FALCON_W),
        [(4, 4), (4, 4)],
    ),
    "falcon_forward": (
        lambda a, b: losses.falcon(torch.tanh(a), torch.tanh(b), FALCON_W, prior_kl="forward"),
        [(4, 4), (4, 4)],
    ),
    "dino": (
        lambda s: losses.dino(s, QUEUE_KEY[:2].reshape(2, 3, 1).expand(2, 3, 2), torch.zeros(2)),
        [(3, 3, 2)],
    ),
    # codes are stop-gradient: keep the assigned view fixed so finite differences cannot move them
    "swav": (lambda v: losses.swav([QUEUE_KEY[:2].T, *v], assign_views=(0,)), [(2, 3, 2)]),
    "alignment_uniformity": (losses.alignment_uniformity, [(4, 3), (4, 3)]),
    "latent_prediction": (
        lambda p: losses.latent_prediction(p, QUEUE_KEY[:2], loss="smooth_l1"),
        [(2, 3)],
    ),
}
QUEUE_KEY = torch.randn(9, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
FALCON_W = losses.rademacher_dictionary(4, 5, torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck_float64(name):
    fn, shapes = GRADCHECK_CASES[name]
    generator = torch.Generator().manual_seed(3)
    inputs = tuple(
        torch.randn(*s, generator=generator, dtype=torch.float64, requires_grad=True)
        for s in shapes
    )
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_every_loss_has_a_gradcheck_case():
    covered = {name.removesuffix("_forward") for name in GRADCHECK_CASES}
    assert set(losses.LOSSES) - {"symmetric_negative_cosine"} <= covered


# --------------------------------------------------------------------------- bad input


TWO_VIEW_LOSSES = ["nt_xent", "negative_cosine", "barlow_twins", "vicreg", "alignment_uniformity"]


@pytest.mark.parametrize("name", TWO_VIEW_LOSSES)
def test_two_view_losses_reject_mismatched_shapes(name):
    with pytest.raises(InputError, match="same shape"):
        losses.LOSSES[name](torch.randn(4, 3), torch.randn(4, 5))


@pytest.mark.parametrize("name", TWO_VIEW_LOSSES)
def test_two_view_losses_reject_non_finite_inputs_and_say_where(name):
    z = torch.randn(4, 3)
    z[2, 1] = float("nan")
    with pytest.raises(InputError, match=r"1 non-finite value\(s\) \(1 NaN, 0 Inf\).*\(2, 1\)"):
        losses.LOSSES[name](z, torch.randn(4, 3))


@pytest.mark.parametrize("name", TWO_VIEW_LOSSES)
def test_two_view_losses_reject_wrong_rank_and_integer_dtype(name):
    with pytest.raises(InputError, match="2-D"):
        losses.LOSSES[name](torch.randn(4), torch.randn(4))
    with pytest.raises(InputError, match="floating-point"):
        losses.LOSSES[name](torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long))


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "alignment_uniformity"])
def test_batch_statistics_losses_reject_a_single_sample(name):
    with pytest.raises(InputError, match="at least 2"):
        losses.LOSSES[name](torch.randn(1, 3), torch.randn(1, 3))


def test_other_losses_reject_inconsistent_inputs():
    with pytest.raises(InputError, match="width of query"):
        losses.info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(10, 5))
    with pytest.raises(InputError, match="rows"):
        losses.falcon(torch.randn(4, 3), torch.randn(4, 3), torch.ones(5, 6))
    with pytest.raises(InputError, match="prior_kl"):
        losses.falcon(torch.randn(4, 3), torch.randn(4, 3), torch.ones(3, 6), prior_kl="both")
    with pytest.raises(InputError, match="beta"):
        losses.falcon(torch.randn(4, 3), torch.randn(4, 3), torch.ones(3, 6), beta=-1.0)
    with pytest.raises(InputError, match="eps"):
        losses.falcon_temperature(8, 10**9, 4, eps=1e-8)
    with pytest.raises(InputError, match="center"):
        losses.dino(torch.randn(2, 4, 6), torch.randn(2, 4, 6), torch.zeros(5))
    with pytest.raises(InputError, match="same"):
        losses.dino([torch.randn(4, 6), torch.randn(3, 6)], torch.randn(1, 4, 6), torch.zeros(6))
    with pytest.raises(InputError, match="at least 2 views"):
        losses.swav(torch.randn(1, 4, 6))
    with pytest.raises(InputError, match="temperature"):
        losses.nt_xent(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)
    with pytest.raises(InputError, match="one target per prediction"):
        losses.latent_prediction([torch.randn(2, 3)], [])
    with pytest.raises(InputError, match="Inf"):
        losses.latent_prediction(torch.full((2, 3), float("inf")), torch.zeros(2, 3))


# --------------------------------------------------------------------------- registry and docs


def test_every_loss_declares_one_of_the_three_distributed_semantics():
    assert set(losses.DISTRIBUTED_SEMANTICS) == set(losses.LOSSES)
    assert set(losses.DISTRIBUTED_SEMANTICS.values()) == {"local", "gather", "all_reduce"}
    for name, fn in losses.LOSSES.items():
        doc = fn.__doc__ or ""
        assert "Source" in doc or name == "symmetric_negative_cosine", name
        assert f"``{fn.distributed_semantics}``" in doc, name


def docs_table_rows() -> dict[str, str]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\|\s*`(\w+)`\s*\|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def test_docs_table_lists_every_loss_with_its_semantics():
    rows = docs_table_rows()
    assert set(rows) == set(losses.LOSSES)
    for name, line in rows.items():
        assert f"`{losses.DISTRIBUTED_SEMANTICS[name]}`" in line, name


def test_docs_example_runs_and_trains():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert blocks, "docs/losses.md must contain a python example"
    namespace: dict[str, object] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only contend with other processes
    try:
        exec(compile(blocks[0], str(DOCS), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    history = namespace["history"]
    assert isinstance(history, list) and history[-1] < history[0]
