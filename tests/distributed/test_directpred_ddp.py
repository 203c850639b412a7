"""DirectPred under DistributedDataParallel: two gloo ranks set the same predictor, equal to the
single-process one on the whole batch (F̂ is all-reduced over ranks).

Launched like ``test_trainer_ddp.py``: the parent starts this file as two ranks; each takes half
of fixed batches for two plain SGD steps (with the after-step hook that sets W_p) and saves its
state. BatchNorm is removed (backbone and projector) so that the single-process full-batch step is
the exact reference without SyncBatchNorm (which torch refuses on CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.distributed

WORLD = 2
N = 8  # rows per rank
STEPS = 2
LR = 0.1
TIMEOUT_S = 30.0
PREDICTOR_KEYS = ("correlation", "weight", "correlation_updates", "correlation_eigenvalues", "predictor_eigenvalues")


def fixed_batches() -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(WORLD * N, 1, 8, 8, generator=g) for _ in range(2)] for _ in range(STEPS)]


def build() -> nn.Module:
    from collapselab.methods import build_method
    from collapselab.methods.directpred import DirectPredConfig
    from collapselab.models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", in_channels=1, width=8, bn=False)
    return build_method(DirectPredConfig(projector_bn=False), backbone)


def run_steps(model: nn.Module, method: nn.Module, batches: list[list[torch.Tensor]]) -> dict:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=LR)
    method.train()
    for step, views in enumerate(batches):
        out = model(views)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        method.after_step(step, 10)
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def worker(out_dir: Path) -> None:
    from collapselab import distributed

    torch.set_num_threads(1)
    assert distributed.init_from_env(timeout_s=TIMEOUT_S)
    rank = distributed.get_rank()
    local = [[v[rank * N : (rank + 1) * N] for v in views] for views in fixed_batches()]
    method = build()
    state = run_steps(nn.parallel.DistributedDataParallel(method), method, local)
    torch.save(state, out_dir / f"rank{rank}.pt")
    distributed.barrier()
    distributed.cleanup()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, launch) -> list[dict[str, torch.Tensor]]:
    out_dir = tmp_path_factory.mktemp("directpred_ddp")
    for rank, (code, _, stderr) in enumerate(launch(__file__, [str(out_dir)], WORLD, TIMEOUT_S)):
        if code != 0:
            pytest.fail(f"rank {rank} exited with {code}:\n{stderr[-4000:]}")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_both_ranks_set_the_same_predictor(ranks) -> None:
    for key in PREDICTOR_KEYS:
        assert torch.equal(ranks[0][f"predictor.{key}"], ranks[1][f"predictor.{key}"]), key


def test_ddp_predictor_equals_the_single_process_full_batch_predictor(ranks) -> None:
    method = build()
    expected = run_steps(method, method, fixed_batches())
    half = build()
    half_state = run_steps(half, half, [[v[:N] for v in views] for views in fixed_batches()])
    gap = (half_state["predictor.correlation"] - expected["predictor.correlation"]).abs().max()
    assert gap > 1e-3, "vacuous: one rank's half batch gives the full-batch correlation"
    for r in range(WORLD):
        assert ranks[r].keys() == expected.keys()
        for key, value in expected.items():  # the predictor's buffers, and the step's parameters
            # W_p and p take √ of tiny trailing eigenvalues, which amplifies float32 round-off
            atol = 1e-4 if key in ("predictor.weight", "predictor.predictor_eigenvalues") else 1e-5
            torch.testing.assert_close(
                ranks[r][key].double(), value.double(), atol=atol, rtol=1e-4,
                msg=lambda m, key=key, r=r: f"rank {r}, {key}: {m}",
            )

if __name__ == "__main__":
    worker(Path(sys.argv[1]))
