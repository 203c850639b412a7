"""Two gloo processes on CPU reproduce the single-process full-batch loss and gradient.

The parent (pytest) launches this file twice as a script with a torchrun-style environment
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Each rank takes its slice of a fixed global batch,
computes every loss, backpropagates and saves its loss and input gradients; the parent compares
them with the same loss computed in one process on the whole batch.

What must hold, for every loss: DDP averages gradients over the W ranks, so the gradient a rank
sees for its own inputs, divided by W, must equal the matching slice of the full-batch gradient;
and the mean of the rank losses must equal the full-batch loss.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from collapselab import distributed, losses
from collapselab._validation import InputError
from collapselab.losses import geometric

pytestmark = pytest.mark.distributed

WORLD = 2
N = 6  # global batch; 3 rows per rank
TIMEOUT_S = 25.0

# name -> (loss of the inputs, inputs, batch dimension of each input or None if shared)
Case = tuple[Callable[..., torch.Tensor], list[torch.Tensor], list[int | None]]


def make_cases() -> dict[str, Case]:
    g = torch.Generator().manual_seed(0)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    dictionary = losses.rademacher_dictionary(5, 7, g, dtype=torch.float64)
    center = r(5)
    teacher = r(2, N, 5)
    queue = r(5, 4)
    return {
        "nt_xent": (lambda a, b: losses.nt_xent(a, b, 0.5), [r(N, 4), r(N, 4)], [0, 0]),
        "info_nce": (lambda q, k: losses.info_nce(q, k, queue), [r(N, 4), r(N, 4)], [0, 0]),
        "negative_cosine": (losses.negative_cosine, [r(N, 4), r(N, 4)], [0, 0]),
        "symmetric_negative_cosine": (
            losses.symmetric_negative_cosine,
            [r(N, 4) for _ in range(4)],
            [0, 0, 0, 0],
        ),
        "barlow_twins": (losses.barlow_twins, [r(N, 4, scale=2.0), r(N, 4)], [0, 0]),
        "vicreg": (losses.vicreg, [r(N, 4, scale=0.5), r(N, 4, scale=1.5)], [0, 0]),
        "falcon": (
            lambda a, b: losses.falcon(torch.tanh(a), torch.tanh(b), dictionary),
            [r(N, 5), r(N, 5)],
            [0, 0],
        ),
        "falcon_forward": (
            lambda a, b: losses.falcon(
                torch.tanh(a), torch.tanh(b), dictionary, prior_kl="forward"
            ),
            [r(N, 5), r(N, 5)],
            [0, 0],
        ),
        "dino": (lambda s, t: losses.dino(s, t, center), [r(3, N, 5), teacher], [1, 1]),
        "swav": (losses.swav, [r(3, N, 5, scale=0.5)], [1]),
        "alignment_uniformity": (losses.alignment_uniformity, [r(N, 4), r(N, 4)], [0, 0]),
        "latent_prediction": (
            lambda a, b, ta, tb: losses.latent_prediction([a, b], [ta, tb]),
            [r(N, 2, 4), r(N, 3, 4), r(N, 2, 4), r(N, 3, 4)],
            [0, 0, 0, 0],
        ),
        # the geometric terms of the composite objective (collapselab.losses.geometric)
        "geometric.mse_alignment": (geometric.mse_alignment, [r(N, 4), r(N, 4)], [0, 0]),
        "geometric.cosine_alignment": (geometric.cosine_alignment, [r(N, 4), r(N, 4)], [0, 0]),
        # scale 0.5: every dimension's std is below γ = 1, so the hinge is active (non-zero grad)
        "geometric.variance_hinge": (geometric.variance_hinge, [r(N, 4, scale=0.5)], [0]),
        "geometric.covariance_penalty": (geometric.covariance_penalty, [r(N, 4)], [0]),
        "geometric.uniformity": (geometric.uniformity, [r(N, 4)], [0]),
        "geometric.uniformity_raw": (
            lambda z: geometric.uniformity(z, t=0.5, normalize=False),
            [r(N, 4, scale=0.5)],
            [0],
        ),
    }


def rank_slice(x: torch.Tensor, dim: int | None, rank: int) -> torch.Tensor:
    if dim is None:
        return x
    rows = x.shape[dim] // WORLD
    return x.narrow(dim, rank * rows, rows)


def loss_and_grads(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss = fn(*leaves)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.detach(), [
        torch.zeros_like(x) if gr is None else gr for x, gr in zip(leaves, grads, strict=True)
    ]


# --------------------------------------------------------------------------- worker (one rank)


def worker(out_dir: Path) -> None:
    torch.set_num_threads(1)
    assert distributed.init_from_env(timeout_s=TIMEOUT_S)
    rank = distributed.get_rank()
    assert distributed.get_world_size() == WORLD
    distributed.print0(f"hello from rank {rank}")
    results: dict[str, object] = {}

    for name, (fn, inputs, dims) in make_cases().items():
        local = [rank_slice(x, d, rank) for x, d in zip(inputs, dims, strict=True)]
        results[name] = loss_and_grads(fn, local)

    # the collectives themselves
    x = torch.arange(6.0, dtype=torch.float64).reshape(3, 2) + 10 * rank
    weights = torch.arange(12.0, dtype=torch.float64).reshape(6, 2)
    leaf = x.clone().requires_grad_()
    gathered = distributed.gather(leaf)
    (grad_gather,) = torch.autograd.grad((gathered * weights).sum(), [leaf])
    results["gather"] = (gathered.detach(), grad_gather)
    for op in ("sum", "mean"):
        leaf = x.clone().requires_grad_()
        reduced = distributed.all_reduce(leaf, op=op)
        (grad,) = torch.autograd.grad((reduced * weights[:3]).sum(), [leaf])
        results[f"all_reduce_{op}"] = (reduced.detach(), grad)
    results["all_reduce_max"] = distributed.all_reduce(x, op="max")
    try:
        distributed.gather(torch.zeros(2 + rank, 3))
        results["mismatch"] = "no error"
    except InputError as err:
        results["mismatch"] = str(err)

    # state that must stay identical to a single process
    queue = losses.MoCoQueue(dim=4, size=8, generator=torch.Generator().manual_seed(1)).double()
    queue.enqueue(rank_slice(make_cases()["info_nce"][1][1], 0, rank))
    results["moco_queue"] = (queue.queue.clone(), int(queue.pointer))
    teacher = make_cases()["dino"][1][1]
    results["dino_center"] = losses.dino_center_update(
        torch.zeros(1, 5, dtype=torch.float64), rank_slice(teacher, 1, rank)
    )
    scores = make_cases()["swav"][1][0][0]
    results["sinkhorn"] = losses.sinkhorn_knopp(rank_slice(scores, 0, rank))
    results["sinkhorn0"] = losses.sinkhorn_knopp(rank_slice(scores, 0, rank), iterations=0)
    with distributed.local_only():
        z1, z2 = (rank_slice(x, 0, rank) for x in make_cases()["nt_xent"][1])
        results["local_only"] = losses.nt_xent(z1, z2)

    torch.save(results, out_dir / f"rank{rank}.pt")
    distributed.barrier()
    distributed.cleanup()


# --------------------------------------------------------------------------- parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, launch) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    results = launch(__file__, [str(out_dir)], WORLD, TIMEOUT_S)
    outputs = [(out, err) for _, out, err in results]
    for rank, (code, _, stderr) in enumerate(results):
        if code != 0:
            pytest.fail(f"rank {rank} exited with {code}:\n{stderr[-4000:]}")
    assert "hello from rank 0" in outputs[0][0]
    assert "hello" not in outputs[1][0], "print0 printed on rank 1"
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", sorted(make_cases()))
def test_rank_gradient_over_world_size_equals_full_batch_gradient_slice(ranks, name):
    fn, inputs, dims = make_cases()[name]
    full_loss, full_grads = loss_and_grads(fn, inputs)
    rank_losses = [ranks[r][name][0] for r in range(WORLD)]
    torch.testing.assert_close(sum(rank_losses) / WORLD, full_loss, atol=1e-10, rtol=1e-10)
    for r in range(WORLD):
        for i, (dim, full_grad) in enumerate(zip(dims, full_grads, strict=True)):
            if dim is None:
                continue
            rank_grad = ranks[r][name][1][i]
            torch.testing.assert_close(
                rank_grad / WORLD,
                rank_slice(full_grad, dim, r),
                atol=1e-10,
                rtol=1e-8,
                msg=lambda m, r=r, i=i: f"{name}, rank {r}, input {i}: {m}",
            )


def test_every_loss_is_covered_by_the_distributed_check():
    assert set(losses.LOSSES) <= set(make_cases())


GEOMETRIC = sorted(name for name in make_cases() if name.startswith("geometric."))


def test_every_geometric_term_is_covered_with_its_documented_semantics():
    """The semantics the tests below assume are the ones the functions declare."""
    assert {f"geometric.{name}" for name in geometric.__all__} <= set(GEOMETRIC)
    declared = {name: getattr(geometric, name).distributed_semantics for name in geometric.__all__}
    assert declared == {
        "mse_alignment": "local",
        "cosine_alignment": "local",
        "variance_hinge": "all_reduce",
        "covariance_penalty": "all_reduce",
        "uniformity": "gather",
    }


def _semantics(name: str) -> str:
    return getattr(
        geometric, name.removeprefix("geometric.").removesuffix("_raw")
    ).distributed_semantics


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_term_on_each_rank_follows_its_documented_semantics(ranks, name):
    """``all_reduce``/``gather`` terms: *every* rank holds the full-batch value (not just the mean
    over ranks, which the gradient test checks), and the gradient is not trivially zero.
    ``local`` terms (the alignments): each rank's value is the term of its own rows only, which
    differs from the full-batch value (so a stray gather would show)."""
    fn, inputs, dims = make_cases()[name]
    full_loss, full_grads = loss_and_grads(fn, inputs)
    assert all(bool(g.abs().max() > 1e-3) for g in full_grads), "vacuous: zero gradient"
    for r in range(WORLD):
        rank_loss = ranks[r][name][0]
        if _semantics(name) == "local":
            local = [rank_slice(x, d, r) for x, d in zip(inputs, dims, strict=True)]
            torch.testing.assert_close(rank_loss, fn(*local), atol=1e-12, rtol=1e-12)
            assert not torch.allclose(rank_loss, full_loss, atol=1e-6), "local equals global"
        else:
            torch.testing.assert_close(rank_loss, full_loss, atol=1e-12, rtol=1e-10)


def test_gather_concatenates_in_rank_order_and_sums_gradients_over_ranks(ranks):
    x = [torch.arange(6.0, dtype=torch.float64).reshape(3, 2) + 10 * r for r in range(WORLD)]
    weights = torch.arange(12.0, dtype=torch.float64).reshape(6, 2)
    for r in range(WORLD):
        gathered, grad = ranks[r]["gather"]
        torch.testing.assert_close(gathered, torch.cat(x))
        torch.testing.assert_close(grad, WORLD * weights[3 * r : 3 * r + 3])


def test_all_reduce_sums_values_and_gradients_and_mean_divides_both(ranks):
    total = sum(torch.arange(6.0, dtype=torch.float64).reshape(3, 2) + 10 * r for r in range(WORLD))
    weights = torch.arange(6.0, dtype=torch.float64).reshape(3, 2)
    for r in range(WORLD):
        value, grad = ranks[r]["all_reduce_sum"]
        torch.testing.assert_close(value, total)
        torch.testing.assert_close(grad, WORLD * weights)
        value, grad = ranks[r]["all_reduce_mean"]
        torch.testing.assert_close(value, total / WORLD)
        torch.testing.assert_close(grad, weights)
        torch.testing.assert_close(
            ranks[r]["all_reduce_max"], torch.arange(6.0, dtype=torch.float64).reshape(3, 2) + 10
        )


def test_gather_with_unequal_batches_raises_on_every_rank_instead_of_hanging(ranks):
    for r in range(WORLD):
        assert "same shape" in ranks[r]["mismatch"] and "drop_last" in ranks[r]["mismatch"]


def test_moco_queue_dino_center_and_sinkhorn_match_one_process(ranks):
    cases = make_cases()
    queue = losses.MoCoQueue(dim=4, size=8, generator=torch.Generator().manual_seed(1)).double()
    queue.enqueue(cases["info_nce"][1][1])
    center = losses.dino_center_update(torch.zeros(1, 5, dtype=torch.float64), cases["dino"][1][1])
    scores = cases["swav"][1][0][0]
    codes = losses.sinkhorn_knopp(scores)
    unnormalised = losses.sinkhorn_knopp(scores, iterations=0)
    for r in range(WORLD):
        torch.testing.assert_close(ranks[r]["moco_queue"][0], queue.queue)
        assert ranks[r]["moco_queue"][1] == int(queue.pointer) == 6
        torch.testing.assert_close(ranks[r]["dino_center"], center)
        torch.testing.assert_close(
            ranks[r]["sinkhorn"], rank_slice(codes, 0, r), atol=1e-12, rtol=1e-10
        )
        torch.testing.assert_close(
            ranks[r]["sinkhorn0"], rank_slice(unnormalised, 0, r), atol=1e-12, rtol=1e-10
        )


def test_local_only_computes_the_loss_on_this_ranks_rows(ranks):
    z1, z2 = make_cases()["nt_xent"][1]
    for r in range(WORLD):
        expected = losses.nt_xent(rank_slice(z1, 0, r), rank_slice(z2, 0, r))
        torch.testing.assert_close(ranks[r]["local_only"], expected)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
