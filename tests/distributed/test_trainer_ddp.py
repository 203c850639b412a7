"""The trainer and the methods under DistributedDataParallel: two gloo processes on CPU.

Launched like ``test_loss_gradients_ddp.py``: the parent (pytest) starts this file twice as a
script with a torchrun-style environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT); each rank saves what it ends with and the parent compares.

What must hold:

- ``collapselab.train`` on 2 ranks finishes, the ranks end with identical parameters (DDP keeps
  them in step) and buffers, and only rank 0 writes files. Each rank gets its own ``run.out_dir``
  here, so a write by rank 1 (which must write nothing) shows up as a file under its folder.
- ``collapselab.train`` on 2 ranks with batch B each (VICReg without BatchNorm, views that use no
  random number) equals one process with batch 2B: final parameters and the loss of each step.
- One optimiser step of a method on 2 ranks, each taking half of a fixed batch of fixed views,
  equals one step in a single process on the whole batch, for the three distributed semantics of
  the losses: ``local`` (BYOL, with its EMA update after the step), ``all_reduce`` (Barlow
  Twins) and ``gather`` (SimCLR). With BatchNorm this needs SyncBatchNorm (batch statistics over
  all ranks); without BatchNorm plain DDP suffices.

SyncBatchNorm on CPU: torch 2.13 refuses it twice over: ``DistributedDataParallel`` of a CPU
module holding SyncBatchNorm raises ``ValueError: SyncBatchNorm layers only work with GPU
modules``, and ``SyncBatchNorm.forward`` in training mode on a CPU tensor raises ``ValueError:
SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone``. The SyncBatchNorm
step check therefore skips with torch's message when torch refuses (it runs by itself the day
torch does not), and the BatchNorm-free step check (BatchNorm removed from the backbone and the
projector; BYOL, whose MLP predictor always has BatchNorm, with its linear predictor) runs
always. The trainer with ``distributed.sync_bn=true`` on CPU must fail with a config error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.distributed

WORLD = 2
N = 8  # rows per rank; the full batch has WORLD * N rows
LR = 0.1
METHODS = ("byol", "barlow_twins", "simclr")
TIMEOUT_S = 30.0
# torch's two refusals: DDP.__init__ on a CPU module, SyncBatchNorm.forward on a CPU tensor
CPU_SYNC_BN_REFUSALS = (
    "SyncBatchNorm layers only work with GPU modules",
    "SyncBatchNorm expected input tensor to be on GPU",
)


# --------------------------------------------------------------------------- shared pieces


def fixed_views() -> list[torch.Tensor]:
    """Two fixed views of the full batch, the same on every process (no augmentation), in float64:
    the step checks compare a sum split over 2 ranks with the unsplit sum, and in float32 their
    rounding differs by ~1e-5 depending on the thread count (seen on a 16-core machine), which
    would hide a real error of that size. In float64 the rounding is ~1e-14."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(WORLD * N, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]


def build(name: str, bn: bool) -> nn.Module:
    """The method on a small CNN, seeded; ``bn=False`` removes every BatchNorm (BYOL's predictor
    always has BatchNorm, so BYOL then uses its linear predictor)."""
    from collapselab.methods import build_method, method_class
    from collapselab.models import build_backbone

    torch.manual_seed(0)
    config = method_class(name).config_class()
    if not bn:
        config.projector_bn = False
        if name == "byol":
            config.predictor = "linear"
    backbone = build_backbone("small_cnn", in_channels=1, width=8, bn=bn)
    return build_method(config, backbone).to(torch.float64)


def sgd_step(model: nn.Module, method: nn.Module, views: Sequence[torch.Tensor]) -> dict:
    """One plain SGD step (no momentum, no weight decay) then the method's after-step hook."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=LR)
    method.train()
    out = model(list(views))
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    method.after_step(0, 10)
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


# --------------------------------------------------------------------------- workers (one rank)


def train_on_rank(out_dir: Path, rank: int, sync_bn: bool, budget: str | None = None) -> dict[str, object]:
    """``collapselab.train`` (which initialises the process group from the environment);
    ``budget``: ``train.time_budget`` (each rank times its own steps; rank 0's plan must win)."""
    import collapselab

    length = {"epochs": 1} if budget is None else {"time_budget": budget, "adapt_threads": False}
    try:
        run = collapselab.train(
            "byol",
            "digits",
            train={**length, "threads": 1, "max_steps_per_epoch": 3, "device": "cpu"},
            data={"batch_size": 64},
            log={"progress": False, "tensorboard": False},
            eval={"final": False, "knn_every": 0},
            run={"name": "ddp", "out_dir": str(out_dir / f"rank{rank}")},
            distributed={"sync_bn": sync_bn},
        )
    except Exception as err:  # reported to the parent, which fails with it
        return {"error": f"{type(err).__name__}: {err}"}
    state = {k: v.detach().clone() for k, v in run.method.state_dict().items()}
    return {"state": state, "summary": json.dumps(run.summary, default=str)}


GLOBAL_BATCH_PER_RANK = 32  # B: each rank's batch; the single process takes WORLD * B
GLOBAL_BATCH_STEPS = 4
# views that use no random number: the whole 8x8 image (crop of area and aspect ratio 1, hence at
# offset 0), once as it is and once mirrored (flip probability 0 and 1), nothing else
FIXED_VIEWS = {
    "recipe": "custom",
    "crop_scale": [1.0, 1.0],
    "crop_ratio": [1.0, 1.0],
    "jitter_p": 0.0,
    "grayscale_p": 0.0,
    "blur_p": 0.0,
    "solarize_p": 0.0,
    "views": {"plain": {"flip_p": 0.0}, "mirrored": {"flip_p": 1.0}},
}


def global_batch_run(out_dir: Path, batch_size: int) -> dict[str, object]:
    """``collapselab.train`` of VICReg without any BatchNorm (backbone and projector) on fixed
    views, plain momentum SGD, float32, ``GLOBAL_BATCH_STEPS`` steps of ``batch_size`` images per
    process; the final ``state_dict`` and the logged loss of every step (rank 0's
    ``metrics.jsonl``: under DDP the mean of the ranks' losses)."""
    import collapselab

    try:
        run = collapselab.train(
            "vicreg",
            "digits",
            model={"backbone": "small_cnn", "backbone_args": {"width": 8, "bn": False}},
            method={"projector_bn": False, "projector_hidden_dim": 32, "projector_out_dim": 16},
            data={"batch_size": batch_size, "augment": FIXED_VIEWS},
            optim={"name": "sgd", "lr": 2.0, "warmup_epochs": 0},
            train={"steps": GLOBAL_BATCH_STEPS, "threads": 1, "adapt_threads": False,
                   "device": "cpu", "compile": "off", "amp": "off"},
            monitor={"enabled": False},
            log={"progress": False, "tensorboard": False, "every": 1, "report": False},
            eval={"final": False, "knn_every": 0},
            run={"name": "global_batch", "out_dir": str(out_dir)},
        )
    except Exception as err:  # reported to the parent, which fails with it
        return {"error": f"{type(err).__name__}: {err}"}
    metrics = out_dir / "global_batch" / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []  # rank 0 writes it
    losses = [r["loss"] for r in map(json.loads, lines) if r.get("kind") == "train"]
    state = {k: v.detach().clone() for k, v in run.method.state_dict().items()}
    return {"state": state, "losses": torch.tensor(losses, dtype=torch.float64),
            "world_size": run.summary["world_size"], "steps": run.summary["steps"]}


SWAV_QUEUE = 320  # rows over both ranks: 160 per rank = 5 batches of 32, so after 6 steps the
# oldest rows a rank holds come from the first epoch, before the end-of-epoch checkpoint


def swav_resume_on_rank(out_dir: Path) -> dict[str, object]:
    """SwAV with its per-rank feature queue on 2 ranks: 2 epochs straight, and 2 epochs
    interrupted after the first (as in test_trainer_resume.py) then resumed, in one run folder
    both ranks read (as on a shared filesystem)."""
    import collapselab
    from collapselab import distributed
    from collapselab.engine.trainer import Trainer

    save = Trainer._save

    def save_then_interrupt(self: Trainer) -> None:
        save(self)
        if self.epoch == 1:
            raise KeyboardInterrupt

    sections = dict(
        data={"batch_size": 32},
        log={"progress": False, "tensorboard": False},
        eval={"final": False, "knn_every": 0},
        method={"queue_length": SWAV_QUEUE, "queue_start_epoch": 0},
    )
    train = {"threads": 1, "max_steps_per_epoch": 3, "device": "cpu"}
    out: dict[str, object] = {}
    try:
        run = collapselab.train("swav", "digits", train={**train, "epochs": 2},
                                run={"name": "straight", "out_dir": str(out_dir)}, **sections)
        out["straight"] = {k: v.detach().clone() for k, v in run.method.state_dict().items()}
        Trainer._save = save_then_interrupt
        try:
            collapselab.train("swav", "digits", train={**train, "epochs": 2},
                              run={"name": "resumed", "out_dir": str(out_dir)}, **sections)
        except KeyboardInterrupt:
            pass
        finally:
            Trainer._save = save
        distributed.barrier()  # rank 0 has written the checkpoint the resume reads
        run = collapselab.train(resume=out_dir / "resumed")
        out["resumed"] = {k: v.detach().clone() for k, v in run.method.state_dict().items()}
    except Exception as err:  # reported to the parent, which fails with it
        return {"error": f"{type(err).__name__}: {err}"}
    return out


def ddp_steps_on_rank(rank: int) -> dict[str, object]:
    """One DDP step per method, without BatchNorm and with SyncBatchNorm."""
    local = [v[rank * N : (rank + 1) * N] for v in fixed_views()]
    results: dict[str, object] = {}
    for name in METHODS:
        method = build(name, bn=False)
        results[f"{name}/no_bn"] = sgd_step(
            nn.parallel.DistributedDataParallel(method), method, local
        )
        method = nn.SyncBatchNorm.convert_sync_batchnorm(build(name, bn=True))
        try:
            state = sgd_step(nn.parallel.DistributedDataParallel(method), method, local)
        except ValueError as err:  # torch refuses SyncBatchNorm on CPU (see the module doc)
            if not any(message in str(err) for message in CPU_SYNC_BN_REFUSALS):
                raise
            results[f"{name}/sync_bn"] = f"{type(err).__name__}: {err}"
        else:
            results[f"{name}/sync_bn"] = state
    return results


def worker(out_dir: Path) -> None:
    """Everything one rank does, in one process (starting a process costs seconds here)."""
    from collapselab import distributed

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    results = {
        "trainer": train_on_rank(out_dir / "plain", rank, sync_bn=False),
        "trainer_sync_bn": train_on_rank(out_dir / "sync_bn", rank, sync_bn=True),
        "trainer_budget": train_on_rank(out_dir / "budget", rank, sync_bn=False, budget="2s"),
    }
    results["global_batch"] = global_batch_run(
        out_dir / "global" / f"rank{rank}", GLOBAL_BATCH_PER_RANK
    )
    assert distributed.init_from_env(timeout_s=TIMEOUT_S)  # already up: train() started it
    results["swav_resume"] = swav_resume_on_rank(out_dir / "swav")
    results["steps"] = ddp_steps_on_rank(rank)
    torch.save(results, out_dir / f"rank{rank}.pt")
    distributed.barrier()
    distributed.cleanup()


# --------------------------------------------------------------------------- parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, launch) -> tuple[Path, list[dict]]:
    out_dir = tmp_path_factory.mktemp("trainer_ddp")
    for rank, (code, _, stderr) in enumerate(launch(__file__, [str(out_dir)], WORLD, TIMEOUT_S)):
        if code != 0:
            pytest.fail(f"rank {rank} exited with {code}:\n{stderr[-4000:]}")
    return out_dir, [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what} differ between rank 0 and rank 1: {differ}"


def is_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


def trained(ranks: list[dict], key: str = "trainer") -> list[dict]:
    for r, result in enumerate(ranks):
        assert "error" not in result[key], f"rank {r}: {result[key]['error']}"
    return [result[key] for result in ranks]


# --------------------------------------------------------------------------- trainer under DDP


def test_trainer_ddp_ranks_end_with_identical_parameters(ranks):
    results = trained(ranks[1])
    states = [{k: v for k, v in res["state"].items() if not is_buffer(k)} for res in results]
    assert any(k.startswith("target.") for k in states[0]), "expected BYOL's EMA target"
    assert_states_equal(states[0], states[1], "parameters")


def test_trainer_ddp_ranks_end_with_identical_buffers(ranks):
    results = trained(ranks[1])
    states = [{k: v for k, v in res["state"].items() if is_buffer(k)} for res in results]
    assert states[0]
    assert_states_equal(states[0], states[1], "BatchNorm buffers")


def test_trainer_ddp_time_budget_gives_every_rank_rank_0s_plan(ranks):
    results = trained(ranks[1], "trainer_budget")
    summaries = [json.loads(res["summary"]) for res in results]
    assert summaries[0]["budget"]["steps"] == summaries[0]["steps"] == summaries[1]["steps"] >= 1
    assert_states_equal(results[0]["state"], results[1]["state"], "parameters and buffers")


def test_trainer_ddp_only_rank_0_writes_files(ranks):
    out_dir, results = ranks
    trained(results)
    run_dir = out_dir / "plain" / "rank0" / "ddp"
    for name in ("config.yaml", "summary.json", "metrics.jsonl", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), f"rank 0 did not write {name}"
    written = sorted(str(p.relative_to(out_dir)) for p in (out_dir / "plain" / "rank1").rglob("*"))
    assert not written, f"rank 1 wrote {written}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["world_size"] == WORLD and summary["global_batch_size"] == WORLD * 64
    assert summary["throughput_img_per_s"] > 0


def test_trainer_ddp_with_sync_bn_on_cpu_fails_fast_with_a_config_error(ranks):
    """torch refuses SyncBatchNorm on CPU; the trainer must say so as an error naming
    ``distributed.sync_bn`` on every rank (not torch's ValueError from inside DDP)."""
    out_dir, results = ranks
    outcome = [res["trainer_sync_bn"] for res in results]
    if not any("error" in res for res in outcome):  # the day torch allows it: ranks agree
        assert_states_equal(outcome[0]["state"], outcome[1]["state"], "sync_bn states")
        return
    assert not (out_dir / "sync_bn" / "rank1").exists(), "rank 1 wrote files"
    for r, res in enumerate(outcome):
        error = res.get("error", "no error")
        assert error.startswith("InputError") and "distributed.sync_bn" in error, (
            f"rank {r}: {error}"
        )


def test_trainer_ddp_resume_continues_every_rank_exactly(ranks):
    """Each rank's random stream and its own SwAV queue are in the checkpoint: a run interrupted
    after epoch 1 and resumed ends with the same state, on each rank, as 2 epochs straight (the
    resume used to give every rank rank 0's random stream and queue)."""
    results = trained(ranks[1], "swav_resume")
    for r, res in enumerate(results):
        assert res["straight"]["queue"].shape[1] == SWAV_QUEUE // WORLD
        assert_states_equal(res["straight"], res["resumed"], f"rank {r}: straight and resumed states")


def test_trainer_ddp_keeps_each_ranks_swav_queue_its_own(ranks):
    """The queue is per rank (its own images' embeddings): the end-of-epoch buffer sync that gives
    every rank rank 0's BatchNorm statistics must leave it alone, so no row is shared."""
    results = trained(ranks[1], "swav_resume")
    queues = [res["straight"]["queue"] for res in results]
    assert int(results[0]["straight"]["queue_filled"]) == SWAV_QUEUE // WORLD  # full: no zero rows
    params = [{k: v for k, v in res["straight"].items() if not k.startswith("queue") and not is_buffer(k)}
              for res in results]
    assert_states_equal(params[0], params[1], "parameters")
    for crop in range(queues[0].shape[0]):
        shared = (queues[0][crop][:, None, :] == queues[1][crop][None, :, :]).all(-1).any(1)
        assert not shared.any(), f"crop {crop}: {int(shared.sum())} of rank 0's queue rows are also rank 1's"


def test_trainer_ddp_equals_one_process_with_the_global_batch(ranks, tmp_path):
    """``collapselab.train`` on 2 ranks with batch B each equals ``collapselab.train`` in one
    process with batch 2B: same final parameters on both ranks, same loss at every step.

    Why the two runs see the same global batches: the loader shards like ``DistributedSampler``
    (one permutation seeded by ``train.seed``; rank r takes every 2nd index from r), so step k's
    two rank batches together hold indices [2kB, 2(k+1)B) of that permutation, the one-process
    batch of step k; the views use no random number (``FIXED_VIEWS``), so each image gives the
    same two views on every process whatever its augmentation stream. Why the gradients match:
    no BatchNorm anywhere (per-rank statistics would differ), VICReg's variance and covariance
    come from moments all-reduced over the ranks and its invariance term is a per-row mean (equal
    B: DDP's mean of the ranks' gradients is the global one), the learning rate depends on the
    global batch only, and momentum SGD (weight decay included) is linear in the gradient.
    Tolerance: the trainer has no float64 mode, so these are float32 runs, and the two runs sum
    the same terms in a different order (two half-batch partial sums then the all-reduce,
    against one sum). Measured
    over the 4 steps: parameters within 4e-8 and losses (~24.7) within 1e-6, one float32 ulp;
    whereas rank-local VICReg moments (no all-reduce) move parameters by ~2e-3 and losses by
    ~7e-2, and training on B instead of 2B images per step moves parameters by ~8e-2. So
    atol = rtol = 1e-5: far above the rounding, far below any of those errors."""
    reference = global_batch_run(tmp_path, WORLD * GLOBAL_BATCH_PER_RANK)
    assert "error" not in reference, reference.get("error")
    assert reference["world_size"] == 1 and reference["steps"] == GLOBAL_BATCH_STEPS
    results = trained(ranks[1], "global_batch")
    assert results[0]["world_size"] == WORLD and results[0]["steps"] == GLOBAL_BATCH_STEPS
    expected = reference["state"]
    assert not any(is_buffer(k) for k in expected), "a BatchNorm is left"
    losses = reference["losses"]
    assert len(losses) == GLOBAL_BATCH_STEPS
    assert float((losses[0] - losses[-1]).abs()) > 1e-3, "vacuous: the loss did not move"
    torch.testing.assert_close(results[0]["losses"], losses, atol=1e-5, rtol=1e-5,
                               msg=lambda m: f"logged loss per step: {m}")
    for r, result in enumerate(results):
        assert result["state"].keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(
                result["state"][key], value, atol=1e-5, rtol=1e-5,
                msg=lambda m, key=key, r=r: f"rank {r}, {key}: {m}",
            )


# --------------------------------------------------------------------------- one step = full batch


def single_process_step(name: str, bn: bool) -> dict[str, torch.Tensor]:
    method = build(name, bn=bn)
    return sgd_step(method, method, fixed_views())


def assert_close_states(got: dict, expected: dict, what: str) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(
            got[key].double(),
            value.double(),
            atol=1e-10,
            rtol=1e-10,
            msg=lambda m, key=key: f"{what}, {key}: {m}",
        )


@pytest.mark.parametrize("name", METHODS)
def test_ddp_step_without_batchnorm_equals_single_process_full_batch_step(ranks, name):
    expected = single_process_step(name, bn=False)
    before = build(name, bn=False).state_dict()
    assert any(not torch.equal(expected[k], before[k]) for k in expected), "vacuous: no change"
    for r in range(WORLD):
        assert_close_states(ranks[1][r]["steps"][f"{name}/no_bn"], expected, f"{name}, rank {r}")


@pytest.mark.parametrize("name", METHODS)
def test_ddp_step_with_sync_batchnorm_equals_single_process_full_batch_step(ranks, name):
    got = [ranks[1][r]["steps"][f"{name}/sync_bn"] for r in range(WORLD)]
    if isinstance(got[0], str):
        pytest.skip(f"torch {torch.__version__} refuses SyncBatchNorm on CPU/gloo: {got[0]}")
    expected = single_process_step(name, bn=True)
    for r in range(WORLD):
        assert_close_states(got[r], expected, f"{name} with SyncBatchNorm, rank {r}")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
