"""collapselab.distributed on a single process: identities, environment checks, rank-0 printing.

The multi-process behaviour (gradients summed over ranks, rank order, shape checks) is tested
with two gloo processes in tests/distributed/test_loss_gradients_ddp.py.
"""

from __future__ import annotations

import pytest
import torch

from collapselab import distributed
from collapselab._validation import InputError

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for key in TORCHRUN_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_plain_process_is_rank_zero_of_one(clean_env):
    assert distributed.init_from_env() is False
    assert not distributed.is_distributed()
    assert (distributed.get_rank(), distributed.get_world_size()) == (0, 1)
    assert distributed.is_main_process()
    assert distributed.global_batch_size(7) == 7
    distributed.barrier()  # no-op, must not block


def test_world_size_one_does_not_start_a_process_group(clean_env):
    clean_env.setenv("WORLD_SIZE", "1")
    clean_env.setenv("RANK", "0")
    assert distributed.init_from_env() is False
    assert not torch.distributed.is_initialized()


def test_missing_master_address_is_a_clear_error(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "0")
    with pytest.raises(InputError, match=r"MASTER_ADDR, MASTER_PORT is not set.*torchrun"):
        distributed.init_from_env()


def test_rank_outside_world_and_non_integer_env_are_clear_errors(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "5")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "29500")
    with pytest.raises(InputError, match=r"RANK=5 is outside \[0, WORLD_SIZE=2\)"):
        distributed.init_from_env()
    clean_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="must be integers"):
        distributed.init_from_env()


def test_local_rank_comes_from_torchrun(clean_env):
    assert distributed.get_local_rank() == 0
    clean_env.setenv("LOCAL_RANK", "3")
    assert distributed.get_local_rank() == 3


def test_gather_and_all_reduce_are_identities_that_keep_gradients():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 3, dtype=torch.float64)
    for out in (
        distributed.gather(x),
        distributed.all_reduce(x),
        distributed.all_reduce(x, "mean"),
    ):
        torch.testing.assert_close(out, x)
        (grad,) = torch.autograd.grad((out * weights).sum(), [x])
        torch.testing.assert_close(grad, weights)


def test_all_reduce_max_is_detached_and_unknown_ops_are_rejected():
    x = torch.randn(3, requires_grad=True)
    out = distributed.all_reduce(x, op="max")
    assert not out.requires_grad
    torch.testing.assert_close(out, x.detach())
    with pytest.raises(InputError, match="'sum', 'mean' or 'max'"):
        distributed.all_reduce(x, op="product")  # type: ignore[arg-type]


def test_print0_prints_on_the_main_process(capsys):
    distributed.print0("step", 3, sep="=")
    assert capsys.readouterr().out == "step=3\n"


def test_local_only_restores_the_previous_mode_even_after_an_error():
    assert not distributed._LOCAL_ONLY
    with pytest.raises(RuntimeError), distributed.local_only():
        assert distributed._LOCAL_ONLY
        raise RuntimeError("boom")
    assert not distributed._LOCAL_ONLY
