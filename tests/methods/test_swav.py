"""SwAV: loss and gradients vs a float64 loop, Sinkhorn marginals, prototype normalisation and
freezing, the feature queue (FIFO, batch rows only, resume), and the equipartition ablation."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import collapselab
from collapselab._validation import InputError
from collapselab.losses import sinkhorn_knopp, swav, swav_assignments
from collapselab.methods import build_method, method_class
from collapselab.models import build_backbone

torch.set_num_threads(1)


def make(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls = method_class("swav")
    settings = {"n_prototypes": 7, **overrides}
    return build_method(cls.config_class(**settings), build_backbone("small_cnn", in_channels=1, width=4))


def crops(n: int = 6, seed: int = 1, sizes: tuple[int, ...] = (8, 8, 4)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, s, s, generator=g) for s in sizes]


# ---- independent float64 reference (plain Python loops) --------------------------------------


def naive_sinkhorn(rows: list[list[float]], eps: float, iterations: int) -> list[list[float]]:
    """Caron et al. 2020 Sinkhorn–Knopp, as written in the paper: Q = exp(S/ε)ᵀ normalised to
    total 1, then per iteration prototypes (rows of Q) to 1/K and samples (columns) to 1/B; × B."""
    b, k = len(rows), len(rows[0])
    q = [[math.exp(rows[i][j] / eps) for i in range(b)] for j in range(k)]
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        q = [[x / sum(row) / k for x in row] for row in q]
        cols = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / cols[i] / b for i in range(b)] for j in range(k)]
    return [[q[j][i] * b for j in range(k)] for i in range(b)]


def naive_swav(z: torch.Tensor, c: torch.Tensor, tau: float, eps: float, iterations: int,
               assign: tuple[int, ...], queue: list[list[list[float]]] | None = None) -> torch.Tensor:
    """L from embeddings z (V, n, D) and unit prototypes c (K, D), element by element: ẑ, scores,
    softmax and the cross-entropy pairs by hand; queue rows (already scored) prepended."""
    v_count, n, d = z.shape
    k = c.shape[0]
    scores = []
    for v in range(v_count):
        per_view = []
        for b in range(n):
            norm = sum(z[v, b, i] ** 2 for i in range(d)) ** 0.5
            per_view.append([sum(z[v, b, i] / norm * c[j, i] for i in range(d)) for j in range(k)])
        scores.append(per_view)
    loss = 0.0
    for ai, a in enumerate(assign):
        rows = [[float(x.detach()) for x in row] for row in scores[a]]
        if queue is not None:
            rows = queue[ai] + rows
        codes = naive_sinkhorn(rows, eps, iterations)[-n:]
        sub = 0.0
        for v in range(v_count):
            if v == a:
                continue
            for b in range(n):
                denom = sum(torch.exp(scores[v][b][j] / tau) for j in range(k))
                sub = sub - sum(codes[b][j] * torch.log(torch.exp(scores[v][b][j] / tau) / denom)
                                for j in range(k)) / n
        loss = loss + sub / (v_count - 1)
    return loss / len(assign)


def test_loss_and_gradients_match_a_float64_loop() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    loss, terms = swav(list(F.normalize(z, dim=2) @ c.T), 0.1, 0.05, 3, (0, 1), return_terms=True)
    gz, gc = torch.autograd.grad(loss, (z, c))
    expected = naive_swav(z, c, 0.1, 0.05, 3, (0, 1))
    ez, ec = torch.autograd.grad(expected, (z, c))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    torch.testing.assert_close(gz, ez, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gc, ec, rtol=1e-8, atol=1e-10)
    # the logged terms: mean code entropy and the distinct argmax prototypes of both codes
    rows = [naive_sinkhorn((F.normalize(z[a], dim=1) @ c.T).tolist(), 0.05, 3) for a in (0, 1)]
    flat = [r for code in rows for r in code]
    entropy = sum(-sum(x * math.log(x) for x in r if x > 0) for r in flat) / len(flat)
    used = {max(range(6), key=r.__getitem__) for r in flat}
    assert float(terms["code_entropy"]) == pytest.approx(entropy, rel=1e-6)
    assert float(terms["prototypes_used"]) == len(used)


def test_the_method_scores_normalised_embeddings_against_unit_prototypes() -> None:
    method = make(n_prototypes=5, crops_for_assign=[1, 0]).double().eval()  # eval: BN uses running stats
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)  # off the sphere: the forward must renormalise first
    views = [v.double() for v in crops(n=4)]
    loss = method(views).loss
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(5, dtype=torch.float64))
    with torch.no_grad():
        z = torch.stack([method.projector(method.backbone(v)) for v in views])
    expected = naive_swav(z, method.prototypes.weight.detach(), 0.1, 0.05, 3, (1, 0))
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-9)


def test_same_size_crops_share_a_backbone_pass_and_all_crops_one_projector_pass() -> None:
    """Official src/resnet50.py: BatchNorm statistics in training mode span the crops of one size
    (backbone) and all crops (projector)."""
    method = make(n_prototypes=5).double()
    views = [v.double() for v in crops(n=4, sizes=(8, 8, 4, 4))]
    loss = method(views).loss
    with torch.no_grad():
        reprs = torch.cat([method.backbone(torch.cat(views[:2])), method.backbone(torch.cat(views[2:]))])
        z = method.projector(reprs).reshape(4, 4, -1)
    expected = naive_swav(z, method.prototypes.weight.detach(), 0.1, 0.05, 3, (0, 1))
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-9)


# ---- Sinkhorn --------------------------------------------------------------------------------


def test_sinkhorn_ends_on_samples_summing_to_one_and_approaches_equal_prototype_totals() -> None:
    """The official iteration ends with the sample (column) normalisation: every code sums to 1
    exactly after any number of iterations ≥ 1; the prototype totals only tend to B/K."""
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(64, 8, generator=g, dtype=torch.float64), dim=1) @ \
        F.normalize(torch.randn(16, 8, generator=g, dtype=torch.float64), dim=1).T
    errors = {}
    for iterations in (1, 3, 50):
        codes = sinkhorn_knopp(scores, eps=0.05, iterations=iterations)
        torch.testing.assert_close(codes.sum(1), torch.ones(64, dtype=torch.float64), rtol=0, atol=1e-12)
        errors[iterations] = float((codes.sum(0) / (64 / 16) - 1).abs().max())
    assert errors[50] < 1e-3 < errors[3] < errors[1]


def prototype_total_error(codes: torch.Tensor) -> float:
    """Largest relative deviation of a prototype's total code mass from the equal share B/K."""
    n, k = codes.shape
    return float((codes.sum(0) / (n / k) - 1).abs().max())


@pytest.mark.parametrize(
    ("n", "k", "dim", "seed"),
    [
        (n, k, dim, seed)
        for n, k, dim in ((256, 30, 16), (128, 30, 16), (256, 300, 32))
        for seed in range(3)
    ],
)
def test_sinkhorn_prototype_totals_shrink_with_the_iterations_and_three_are_only_approximate(
    n: int, k: int, dim: int, seed: int
) -> None:
    """A property over random score matrices (cosines of random unit vectors, ε = 0.05 as the
    paper): the prototype-total (column marginal) error never grows from one iteration count to
    the next, is below 1e-3 after 50 iterations, and after the configured 3 iterations is still
    above 1e-3 and far above the 50-iteration error. Equal partition after 3 iterations is
    approximate (Caron et al. 2020 use 3; Sec. 3.1), exact only in the limit. The embeddings are
    low-dimensional so the scores spread over [-1, 1] as a trained network's do; with 128-d random
    vectors the scores sit near 0 and 3 iterations can already reach 1e-3."""
    g = torch.Generator().manual_seed(seed)
    scores = (
        F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
        @ F.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1).T
    )
    counts = (1, 2, 3, 5, 10, 20, 50)
    errors = [
        prototype_total_error(sinkhorn_knopp(scores, eps=0.05, iterations=it)) for it in counts
    ]
    for fewer, more in itertools.pairwise(errors):
        assert more <= fewer * (1 + 1e-9) + 1e-14, errors
    by_count = dict(zip(counts, errors, strict=True))
    assert by_count[50] < 1e-3 < by_count[3], errors
    assert by_count[3] > 100 * by_count[50], errors


def test_the_queue_enlarges_the_sinkhorn_input_and_only_the_batch_rows_come_back() -> None:
    g = torch.Generator().manual_seed(2)
    batch = torch.rand(4, 5, generator=g, dtype=torch.float64) * 2 - 1
    queue = torch.rand(12, 5, generator=g, dtype=torch.float64) * 2 - 1
    codes = swav_assignments(batch, 0.05, 3, queue_scores=queue)
    expected = naive_sinkhorn(queue.tolist() + batch.tolist(), 0.05, 3)[-4:]
    torch.testing.assert_close(codes, torch.tensor(expected, dtype=torch.float64))
    assert not torch.allclose(codes, swav_assignments(batch, 0.05, 3))


def test_equipartition_off_is_the_plain_sharpened_softmax() -> None:
    scores = torch.tensor([[0.9, 0.1, -0.2], [0.8, 0.0, 0.3]], dtype=torch.float64)
    codes = swav_assignments(scores, 0.05, 3, equipartition=False)
    torch.testing.assert_close(codes, torch.softmax(scores / 0.05, dim=1))
    assert codes.argmax(1).tolist() == [0, 0]  # both samples may take the same prototype


# ---- prototypes ------------------------------------------------------------------------------


def test_prototypes_are_unit_norm_at_each_forward_frozen_then_trained() -> None:
    method = make(freeze_prototypes_steps=2)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    norms: list[torch.Tensor] = []
    method.prototypes.register_forward_pre_hook(lambda module, args: norms.append(module.weight.detach().norm(dim=1)))
    moved = []
    for step in range(4):
        method.start_step(step, 10, 5)
        optimizer.zero_grad()
        method(crops(seed=step)).loss.backward()
        assert method.prototypes.weight.grad is not None  # the loss does reach them...
        at_forward = method.prototypes.weight.detach().clone()
        method.before_optimizer_step()  # ...and the freeze drops it
        optimizer.step()
        moved.append(not torch.equal(method.prototypes.weight.detach(), at_forward))
    assert moved == [False, False, True, True]
    for n in norms:
        torch.testing.assert_close(n, torch.ones(7), rtol=0, atol=1e-6)


def test_embed_gives_prototype_probabilities_and_the_probe_metrics_read_them() -> None:
    method = make().eval()
    out = method.embed(crops()[0])
    assert set(out) == {"repr", "emb", "codes"}
    torch.testing.assert_close(out["emb"].norm(dim=1), torch.ones(6))
    torch.testing.assert_close(out["codes"].sum(1), torch.ones(6))
    scores = out["emb"] @ F.normalize(method.prototypes.weight, dim=1).T
    torch.testing.assert_close(out["codes"], torch.softmax(scores / 0.1, dim=1))
    metrics = method.probe_metrics(out, None)
    assert 0 < metrics["code_used_fraction"] <= 1 and metrics["code_perplexity"] >= 1


# ---- queue -----------------------------------------------------------------------------------


def test_queue_holds_the_previous_batches_newest_first_and_is_used_once_full() -> None:
    n = 4
    method = make(queue_length=3 * n, queue_start_epoch=0).double().eval()
    reference = copy.deepcopy(method)  # the same network without a queue
    reference.config.queue_length = 0
    history: list[torch.Tensor] = []  # ẑ of the two assignment crops, per step
    for step in range(5):
        views = [v.double() for v in crops(n=n, seed=10 + step)]
        queue_before = method.queue.clone()
        loss = float(method(views).loss.detach())
        with torch.no_grad():
            z = torch.stack([method.projector(method.backbone(v)) for v in views])
        if step < 3:  # filling: not used yet
            assert loss == pytest.approx(float(reference(views).loss.detach()), rel=1e-12)
        else:  # full: its (previous) rows join the Sinkhorn input, only the batch rows are predicted
            c = method.prototypes.weight.detach()
            queued = [(queue_before[i] @ c.T).tolist() for i in range(2)]
            expected = naive_swav(z, c, 0.1, 0.05, 3, (0, 1), queue=queued)
            assert loss == pytest.approx(float(expected), rel=1e-9)
            assert abs(loss - float(reference(views).loss.detach())) > 1e-6
        history.append(F.normalize(z[:2], dim=2))
        newest_first = torch.cat([history[t] for t in range(step, max(step - 3, -1), -1)], dim=1)
        torch.testing.assert_close(method.queue[:, : newest_first.shape[1]], newest_first)
        assert int(method.queue_filled) == min(3 * n, (step + 1) * n)


def test_queue_starts_at_its_epoch_and_must_hold_a_global_batch() -> None:
    method = make(queue_length=8, queue_start_epoch=1)
    for step in range(3):
        method.start_step(step, 10, 2)
        method(crops(n=4))
        assert method.queue.shape[1] == (0 if step < 2 else 8)
    with pytest.raises(InputError, match="queue_length=3 is shorter than the global batch 4"):
        make(queue_length=3, queue_start_epoch=0)(crops(n=4))


def test_a_state_dict_carries_the_queue_so_a_resumed_step_is_identical() -> None:
    n = 4
    method = make(queue_length=2 * n, queue_start_epoch=0).double().eval()
    for step in range(3):
        method([v.double() for v in crops(n=n, seed=step)])
    fresh = make(seed=5, queue_length=2 * n, queue_start_epoch=0).double().eval()
    assert fresh.queue.shape[1] == 0
    fresh.load_state_dict(method.state_dict())
    views = [v.double() for v in crops(n=n, seed=9)]
    assert float(fresh(views).loss.detach()) == float(method(views).loss.detach())
    assert torch.equal(fresh.queue, method.queue) and int(fresh.queue_filled) == 2 * n


# ---- collapse ----------------------------------------------------------------------------------


def test_identical_embeddings_give_uniform_codes_and_a_loss_that_depends_on_the_point() -> None:
    """Every row the same score vector s: Sinkhorn gives q = 1/K, so L = logsumexp(s/τ) − mean(s)/τ,
    ≥ log K with equality only when all scores are equal: no single collapse value."""
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(2):
        s = torch.rand(6, generator=g, dtype=torch.float64) * 2 - 1
        rows = s.expand(8, 6)
        codes = sinkhorn_knopp(rows)
        torch.testing.assert_close(codes, torch.full((8, 6), 1 / 6, dtype=torch.float64))
        loss = float(swav([rows, rows, rows]))
        assert loss == pytest.approx(float(torch.logsumexp(s / 0.1, 0) - s.mean() / 0.1), rel=1e-10)
        values.append(loss)
    assert min(values) > math.log(6) and abs(values[0] - values[1]) > 0.1
    assert float(swav(torch.zeros(2, 8, 6, dtype=torch.float64))) == pytest.approx(math.log(6))
    assert make().collapse_loss(256) is None


def test_hints_name_the_settings_without_equal_partition() -> None:
    assert make().collapse_hints() == []
    assert any("equipartition=false" in h for h in make(equipartition=False).collapse_hints())
    assert any("sinkhorn_iterations=0" in h for h in make(sinkhorn_iterations=0).collapse_hints())


@pytest.mark.parametrize("bad", [{"n_prototypes": 1}, {"sinkhorn_eps": 0.0}, {"temperature": -1.0},
                                 {"sinkhorn_iterations": -1}, {"crops_for_assign": [0, 0]},
                                 {"crops_for_assign": []}, {"queue_length": -8}, {"queue_start_epoch": -1}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(InputError, match="method\\."):
        make(**bad)


def test_assignment_crops_must_exist() -> None:
    with pytest.raises(InputError, match="crops_for_assign"):
        make(crops_for_assign=[0, 3])(crops())


# ---- digits ------------------------------------------------------------------------------------


def tiny_run(tmp_path: Path, name: str, **sections: dict) -> collapselab.Run:
    settings = {
        "run": {"name": name, "out_dir": str(tmp_path)},
        "train": {"threads": 1, "adapt_threads": False, "device": "cpu"},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "tensorboard": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"views": False},
    }
    for key, value in sections.items():
        settings[key] = {**settings.get(key, {}), **value}
    return collapselab.train("swav", "digits", **settings)


def test_digits_steps_with_the_queue_are_finite(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, "q", train={"epochs": 1, "max_steps_per_epoch": 4}, data={"batch_size": 64},
                   log={"every": 1}, method={"queue_length": 128, "queue_start_epoch": 0})
    rows = [r for r in run.history if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("loss", "code_entropy", "prototypes_used"))
    assert [r["queue_in_use"] for r in rows] == [0.0, 0.0, 1.0, 1.0]  # 128 rows = two batches


def test_without_equipartition_the_prototype_usage_alarm_fires_and_the_recipe_stays_quiet(tmp_path: Path) -> None:
    """12 epochs (60 steps) of the digits recipe at width 8 (~9 s each): equipartition=false puts
    every probe image on one prototype within 10 steps; the recipe's usage dips early (within
    its 8-epoch monitor warm-up) and ends spread over most of the 30 prototypes."""
    short = {"train": {"epochs": 12}}
    ablated = tiny_run(tmp_path, "off", method={"equipartition": False}, **short)
    recipe = tiny_run(tmp_path, "on", **short)
    cluster = [a for a in ablated.summary["alarms"] if a["mode"] == "cluster" and a["name"] == "emb"]
    assert cluster and cluster[0]["level"] == "collapsed"
    assert ablated.summary["diagnosis"]["emb"]["metrics"]["code_used"] <= 2
    assert not [a for a in recipe.summary["alarms"] if a["mode"] == "cluster"]
    assert recipe.summary["diagnosis"]["emb"]["metrics"]["code_used"] >= 15
