"""StreamingCovariance equals the one-shot covariance; merges across batches and ranks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from collapselab import diagnostics as dg
from collapselab._validation import InputError


def _data(n: int = 1000, d: int = 24, offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 5, d, dtype=torch.float64) + offset


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("batch", [1, 7, 128, 1000])
def test_streaming_covariance_equals_one_shot_to_1e_10(batch: int) -> None:
    z = _data()
    acc = dg.StreamingCovariance()
    for start in range(0, len(z), batch):
        acc.update(z[start : start + batch])
    assert acc.count == len(z)
    assert _rel_err(acc.covariance(), dg.covariance(z)) < 1e-10
    assert _rel_err(acc.mean, z.mean(0)) < 1e-12


def test_streaming_is_stable_when_the_mean_dwarfs_the_spread() -> None:
    # naive sum-of-squares accumulation loses most digits here: mean 1e7, std ~1, so E[z²] ~ 1e14
    # carries float64 rounding of ~1e-2 (at 1e6 the naive error, ~1e-4, moved across that bound
    # with the BLAS summation order, i.e. the thread count)
    z = _data(offset=1e7)
    acc = dg.StreamingCovariance()
    for chunk in z.split(64):
        acc.update(chunk)
    centred = z - z.mean(0)
    exact = centred.T @ centred / len(z)
    assert _rel_err(acc.covariance(), exact) < 1e-10
    naive = (z.T @ z) / len(z) - torch.outer(z.mean(0), z.mean(0))
    assert _rel_err(naive, exact) > 1e-4  # why the pairwise update matters


def test_merge_of_partial_accumulators_equals_whole_and_is_order_free() -> None:
    z = _data(n=600)
    parts = [dg.StreamingCovariance().update(c) for c in (z[:100], z[100:350], z[350:])]
    forward = dg.StreamingCovariance()
    for p in parts:
        forward.merge(p)
    backward = dg.StreamingCovariance()
    for p in reversed(parts):
        backward.merge(p)
    for acc in (forward, backward):
        assert _rel_err(acc.covariance(), dg.covariance(z)) < 1e-10
    assert forward.merge(dg.StreamingCovariance()).count == 600  # merging an empty one is a no-op


def test_streaming_metrics_equal_diagnose_spectral_metrics() -> None:
    z = _data(n=500, d=16, offset=3.0)
    acc = dg.StreamingCovariance()
    for chunk in z.split(50):
        acc.update(chunk)
    streamed = acc.metrics()
    direct = dg.diagnose(z).metrics
    for key in ("stable_rank", "effective_rank", "rankme", "alpha_req", "components_90", "total_variance"):
        assert streamed[key] == pytest.approx(direct[key], rel=1e-9), key


def test_state_dict_round_trip() -> None:
    acc = dg.StreamingCovariance().update(_data(n=50))
    clone = dg.StreamingCovariance().load_state_dict(acc.state_dict())
    clone.update(_data(n=50, seed=1))
    acc.update(_data(n=50, seed=1))
    assert torch.equal(clone.covariance(), acc.covariance())


def test_streaming_errors_are_clear() -> None:
    acc = dg.StreamingCovariance()
    with pytest.raises(InputError, match="at least 1 sample"):
        acc.covariance()
    acc.update(torch.randn(4, 3))
    with pytest.raises(InputError, match="dimension 5"):
        acc.update(torch.randn(4, 5))
    with pytest.raises(InputError, match="non-finite"):
        acc.update(torch.tensor([[1.0, float("nan"), 0.0]]))


WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from collapselab.diagnostics import StreamingCovariance
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1],
                            rank=int(sys.argv[2]), world_size=2)
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 12, generator=g, dtype=torch.float64) * 3 + 2
    mine = z[:100] if rank == 0 else z[100:]          # unequal shards
    acc = StreamingCovariance()
    for chunk in mine.split(33):
        acc.update(chunk)
    acc.all_reduce()
    torch.save({"count": acc.count, "cov": acc.covariance(), "mean": acc.mean}, sys.argv[3])
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_all_reduce_across_two_gloo_ranks_equals_single_process(tmp_path: Path) -> None:
    port = str(_free_port())
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, port, str(r), str(outs[r])], env=env)
        for r in range(2)
    ]
    try:
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 12, generator=g, dtype=torch.float64) * 3 + 2
    for out in outs:
        res = torch.load(out, weights_only=True)
        assert res["count"] == 300
        assert _rel_err(res["cov"], dg.covariance(z)) < 1e-10
        np.testing.assert_allclose(res["mean"].numpy(), z.mean(0).numpy(), rtol=1e-12)
