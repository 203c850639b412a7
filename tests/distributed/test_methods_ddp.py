"""One optimiser step of VICReg, MoCo, FALCON, Composite, DINO, SwAV and I-JEPA under DistributedDataParallel
(two gloo ranks on CPU) against one process holding the global batch; with per-rank BatchNorm
also BYOL (two views, and multi-crop: two global and two local views), Barlow Twins, SimCLR and
SimSiam.

Launched like ``test_trainer_ddp.py`` (which covers BYOL, Barlow Twins and SimCLR without
BatchNorm and with SyncBatchNorm): the parent starts this file as two ranks; each takes its half
of a fixed float64 batch of fixed views, does one plain SGD step (no momentum, no weight decay:
the update is lr·grad, and DDP's gradient is the mean over ranks) followed by the method's
after-step hook (MoCo's EMA key encoder, DINO's EMA teacher, I-JEPA's EMA target encoder, BYOL's
EMA target), and saves its ``state_dict``. The parent replays the step in one process and
compares, to 1e-10 (float64).

The losses cover the three distributed semantics: VICReg (``all_reduce`` moments), FALCON
(``all_reduce`` code marginal, τ from the global batch), MoCo (``local`` InfoNCE, with the key
queue gathered over ranks) and Composite (``local`` alignment + ``all_reduce`` variance and
covariance + ``gather`` uniformity; uniformity is switched on here, its default weight is 0),
DINO (``local`` cross-entropy, ``all_reduce`` centre update, EMA teacher), SwAV
(``all_reduce`` Sinkhorn–Knopp over the global batch) and I-JEPA (``local`` latent prediction,
per-rank masks, EMA target encoder).

I-JEPA -- which reference is the right one. Its loss is ``local``: each rank's loss is the mean
over its own N images, its own masks (context and target blocks) and their patches, with no
communication. Its masks are drawn on the host from ``default_rng([mask_seed, rank, draws])``:
rank r draws its own masks for its rows (block sizes once per rank's batch, the context
truncated to the smallest in that batch), so the global batch with one draw is *not* the
reference. DDP averages the ranks' gradients (equal N), so the DDP step is exactly the
single-process step on the loss (1/W) Σ_r L_r, L_r the loss of rank r's rows with the masks rank
r draws (drawn here by the method's own ``draw_masks`` with the rank reported as r and the draw
count of rank r), followed by the EMA update ξ ← τ·ξ + (1 − τ)·θ. The checks: parameters,
target encoder and draw count (``_extra_state``) of both ranks equal that reference; each rank
drew one set of masks, the two ranks' masks differ, and the reference drew exactly rank r's for
rank r's rows; the one-draw global-batch step differs from the DDP step (so the per-rank masks
matter); the target moved by the EMA formula. A ViT has no BatchNorm: I-JEPA has no BN variant.

BatchNorm -- which reference is the right one. Without SyncBatchNorm (which torch refuses on CPU,
see ``test_trainer_ddp.py``) each rank's BatchNorm normalises with the mean and variance of *its
own* N rows, and updates its running statistics from them; so a DDP step with BatchNorm is *not*
the single-process step on the global batch (whose BatchNorm uses the statistics of all 2N rows).
It is exactly the single-process step on the global batch in which every BatchNorm normalises
rank r's rows separately (each rank's rows with their own batch statistics and their own copy of
the running statistics), everything else (the loss, with its gathers and all-reduces) seeing the
whole batch. Rank r's rows of one view are rows [rN, (r+1)N) of the global view; DINO and SwAV
run V views concatenated through one forward (a rank's BatchNorm sees V·N rows: its rows of
every view), so a BatchNorm input of V·WN rows is V blocks of WN, and rank r's rows are
[vWN + rN, vWN + (r+1)N) for every block v (V = 1: the plain halves). That is reference (a),
built by :func:`split_batchnorm`. Its parameters after the step are the same for both ranks;
its running statistics are those of rank r's rows, so the reference state for rank r takes the
running statistics of rank r (and MoCo's EMA target, which copies the online buffers in
``after_step``, copies those of rank r, as rank r does, and so does BYOL's; DINO's EMA teacher
keeps its own BatchNorm statistics, from its own per-rank forwards).

So the checks are:

- no BatchNorm anywhere (all but FALCON, whose projector BN is mandatory, and BYOL, Barlow
  Twins, SimCLR and SimSiam, checked here with BatchNorm only): the DDP step equals
  the plain single-process global-batch step (I-JEPA: with each rank's masks, see above);
- BatchNorm in the backbone and in the projector / head (all but I-JEPA): the DDP step equals reference (a),
  parameters and buffers, on both ranks; and (b), the documented difference: it does *not* equal
  the single-process step with full-batch BatchNorm (so the per-rank reference is not vacuous),
  and the two ranks end with different running statistics.
"""

from __future__ import annotations

import copy
import sys
import types
import unittest.mock
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytestmark = pytest.mark.distributed

WORLD = 2
N = 8  # rows per rank; the global batch has WORLD * N rows
LR = 0.1
TIMEOUT_S = 30.0
METHODS = (
    "vicreg", "moco", "falcon", "composite", "dino", "swav", "ijepa",
    "byol", "barlow_twins", "simclr", "simsiam", "byol_multicrop",
)
# FALCON refuses projector_bn=false; BYOL, Barlow Twins, SimCLR without BN: test_trainer_ddp.py
NO_BN_METHODS = ("vicreg", "moco", "composite", "dino", "swav", "ijepa")
BN_METHODS = (  # not I-JEPA: a ViT has no BatchNorm
    "vicreg", "moco", "falcon", "composite", "dino", "swav",
    "byol", "barlow_twins", "simclr", "simsiam", "byol_multicrop",
)
MULTICROP = {"byol_multicrop": "byol"}  # the method on two global and two 4x4 local views
PER_RANK_MASKS = ("ijepa",)  # masks drawn per rank (rank in the seed): the reference draws them per rank
IJEPA_MASKS = {"num_targets": 2, "target_scale": [0.1, 0.15], "min_keep": 4}  # 4x4 grid (8x8, patch 2)
IJEPA_EMA = 0.9  # τ at step 0 (linear schedule): a target move of (1 − τ)·lr·grad, far above 1e-10
ATOL = RTOL = 1e-10
HEADS = ("projector.", "head.")  # DINO registers its head (MLP + last layer) as ``head``


# --------------------------------------------------------------------------- shared pieces


def fixed_views() -> list[torch.Tensor]:
    """Two fixed views of the global batch (no augmentation), float64 (see test_trainer_ddp)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(WORLD * N, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]


def views_for(name: str) -> list[torch.Tensor]:
    """:func:`fixed_views`, plus two fixed 4x4 local views for the multi-crop cases."""
    if name not in MULTICROP:
        return fixed_views()
    g = torch.Generator().manual_seed(1)
    return fixed_views() + [torch.randn(WORLD * N, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]


def build(name: str, bn: bool) -> nn.Module:
    """The method with small heads on a small CNN, seeded; ``bn``: BatchNorm in the backbone and
    the projector (MoCo's default projector has none, so it is switched on), or none at all.
    I-JEPA: a one-block ViT-Tiny (patch 2 on the 8x8 views), a narrow one-block predictor, no
    projector and no BatchNorm."""
    from collapselab.methods import build_method, method_class
    from collapselab.models import build_backbone

    torch.manual_seed(0)
    name = MULTICROP.get(name, name)
    config = method_class(name).config_class()
    if name == "ijepa":
        assert not bn, "a ViT has no BatchNorm"
        config.masks, config.mask_seed = dict(IJEPA_MASKS), 7
        config.predictor_dim, config.predictor_depth = 24, 1
        config.ema = IJEPA_EMA
        vit = build_backbone("vit_tiny", img_size=8, patch_size=2, in_channels=1, depth=1, pos_embed="learned")
        return build_method(config, vit).to(torch.float64)
    config.projector_hidden_dim, config.projector_out_dim = 32, 16
    config.projector_bn = bn
    if name == "moco":
        config.queue_size = 64  # small, but larger than the global batch: old keys stay queued
    elif name == "falcon":
        config.n_codes = 64
    elif name == "composite":
        config.uniformity_weight = 1.0  # default 0: the gather term would not be exercised
    elif name == "dino":
        config.out_dim = 32  # K; the centre update all-reduces the teacher mean over ranks
    elif name == "swav":
        config.n_prototypes = 24  # Sinkhorn sums over the global batch (all-reduce)
    elif name in ("byol", "simsiam"):
        config.predictor_hidden_dim = 16  # the MLP predictor, with its BatchNorm (the default)
    backbone = build_backbone("small_cnn", in_channels=1, width=8, bn=bn)
    return build_method(config, backbone).to(torch.float64)


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def forward_step(model: nn.Module, method: nn.Module, views: Sequence[torch.Tensor]) -> None:
    """Forward, backward and one plain SGD step (update = lr·grad); no after-step hook."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=LR)
    method.train()
    out = model(list(views))
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()


def finish(method: nn.Module) -> dict[str, torch.Tensor]:
    method.after_step(0, 10)
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def record_masks(method: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The (context, targets) patch indices of every I-JEPA mask draw of ``method`` from now on
    (its ``draw_masks`` wrapped on the instance; ``del method.draw_masks`` unwraps it)."""
    drawn: list[dict[str, torch.Tensor]] = []
    original = method.draw_masks

    def draw(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        context, targets = original(batch_size, device)
        drawn.append({"context": context.clone(), "targets": targets.clone()})
        return context, targets

    method.draw_masks = draw
    return drawn


def per_rank_masks_step(method: nn.Module, views: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """I-JEPA's reference step (module doc): forward rank r's rows with the masks rank r draws --
    ``draw_masks`` with the rank reported as r and the draw count every rank has before the step
    -- then one plain SGD step on the mean of the W per-rank losses (DDP's gradient mean of a
    ``local`` loss). Leaves the draw count where every rank leaves it; returns the masks drawn
    for each rank's rows."""
    from collapselab import distributed

    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=LR)
    method.train()
    draws = method.mask_draws
    drawn = record_masks(method)
    losses = []
    try:
        for r in range(WORLD):
            method.mask_draws = draws
            with unittest.mock.patch.object(distributed, "get_rank", return_value=r):
                losses.append(method([v[r * N : (r + 1) * N] for v in views]).loss)
    finally:
        del method.draw_masks
    assert len(drawn) == WORLD and method.mask_draws == draws + 1
    optimizer.zero_grad(set_to_none=True)
    torch.stack(losses).mean().backward()
    optimizer.step()
    return drawn


# --------------------------------------------------------------------------- worker (one rank)


def worker(out_dir: Path) -> None:
    from collapselab import distributed

    torch.set_num_threads(1)
    assert distributed.init_from_env(timeout_s=TIMEOUT_S)
    rank = distributed.get_rank()
    results: dict[str, dict[str, torch.Tensor]] = {}
    for name in METHODS:
        local = [v[rank * N : (rank + 1) * N] for v in views_for(name)]
        for bn in (*((False,) if name in NO_BN_METHODS else ()), *((True,) if name in BN_METHODS else ())):
            method = build(name, bn)
            drawn = record_masks(method) if name in PER_RANK_MASKS else None
            forward_step(nn.parallel.DistributedDataParallel(method), method, local)
            if drawn is not None:
                del method.draw_masks
                assert len(drawn) == 1, f"{name}: {len(drawn)} mask draws in one step"
                results[f"{name}/masks"] = drawn[0]
            results[f"{name}/{'bn' if bn else 'no_bn'}"] = finish(method)
    torch.save(results, out_dir / f"rank{rank}.pt")
    distributed.barrier()
    distributed.cleanup()


# --------------------------------------------------------------------------- references


def _forward_by_rank(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm of each rank's rows with their own batch statistics and running statistics.

    ``x`` is V views of the global batch concatenated (V = 1 but for DINO's and SwAV's multi-crop
    forwards): (V·W·N, ...) seen as (V, W, N, ...), rank r's rows are [:, r], the V·N rows that
    rank r's own concatenated forward feeds this BatchNorm."""
    assert self.training and self.track_running_stats and self.momentum is not None
    assert x.shape[0] % (WORLD * N) == 0, f"{x.shape[0]} rows are not views of the global batch"
    blocks = x.unflatten(0, (-1, WORLD, N))  # (V, W, N, ...)
    out = []
    for r, stats in enumerate(self.per_rank_stats):
        stats["num_batches_tracked"].add_(1)
        out.append(
            F.batch_norm(
                blocks[:, r].flatten(0, 1),
                stats["running_mean"],
                stats["running_var"],
                self.weight,
                self.bias,
                True,
                self.momentum,
                self.eps,
            ).unflatten(0, (-1, N))
        )
    return torch.stack(out, dim=1).flatten(0, 2)  # back to (V·W·N, ...), the input's row order


def split_batchnorm(method: nn.Module) -> None:
    """Make every BatchNorm (online and EMA target) act as on W ranks without SyncBatchNorm."""
    for bn in batchnorms(method):
        bn.per_rank_stats = [
            {
                k: getattr(bn, k).clone()
                for k in ("running_mean", "running_var", "num_batches_tracked")
            }
            for _ in range(WORLD)
        ]
        bn.forward = types.MethodType(_forward_by_rank, bn)


def reference(
    name: str, bn: bool, per_rank_bn: bool, per_rank_masks: bool = True
) -> list[dict[str, torch.Tensor]]:
    """The single-process global-batch step; the state each rank should end with. I-JEPA (with
    ``per_rank_masks``): rank r's rows with rank r's masks (:func:`per_rank_masks_step`)."""
    method = build(name, bn)
    if per_rank_bn:
        split_batchnorm(method)
    if name in PER_RANK_MASKS and per_rank_masks:
        per_rank_masks_step(method, fixed_views())
    else:
        forward_step(method, method, views_for(name))
    states = []
    for r in range(WORLD):
        rank_method = copy.deepcopy(method)
        if per_rank_bn:
            for module in batchnorms(rank_method):  # rank r's running statistics are those of its rows
                for key, value in module.per_rank_stats[r].items():
                    getattr(module, key).copy_(value)
        states.append(finish(rank_method))  # MoCo's EMA target copies these buffers
    return states


# --------------------------------------------------------------------------- parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, launch) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("methods_ddp")
    for rank, (code, _, stderr) in enumerate(launch(__file__, [str(out_dir)], WORLD, TIMEOUT_S)):
        if code != 0:
            pytest.fail(f"rank {rank} exited with {code}:\n{stderr[-4000:]}")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def is_bn_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


def assert_close_states(got: dict, expected: dict, what: str) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(
            got[key], value, atol=ATOL, rtol=RTOL, msg=lambda m, key=key: f"{what}, {key}: {m}"
        )


def assert_step_moved(name: str, bn: bool, after: dict) -> None:
    before = build(name, bn).state_dict()
    moved = [k for k in after if not is_bn_buffer(k) and not torch.equal(after[k], before[k])]
    assert moved, f"vacuous: the step changed no parameter of {name}"
    if name == "moco":
        assert "queue.queue" in moved, "MoCo's queue did not receive the keys"
    if name == "ijepa":
        for part in ("backbone.", "predictor.", "target."):
            assert any(k.startswith(part) for k in moved), f"I-JEPA's step left {part[:-1]} unchanged"


@pytest.mark.parametrize("name", NO_BN_METHODS)
def test_ddp_step_without_batchnorm_equals_single_process_global_batch_step(ranks, name):
    expected = reference(name, bn=False, per_rank_bn=False)
    assert not any(is_bn_buffer(k) for k in expected[0]), "a BatchNorm is left"
    assert_step_moved(name, False, expected[0])
    for r in range(WORLD):
        assert_close_states(ranks[r][f"{name}/no_bn"], expected[r], f"{name} without BN, rank {r}")


def test_ijepa_ranks_draw_their_own_masks_the_reference_draws_them_and_the_target_is_the_ema(ranks):
    """I-JEPA (module doc): one draw per rank per step (equal draw counts), different masks on the
    two ranks (rank in the seed), the very masks the per-rank reference draws for rank r's rows;
    the one-draw global-batch step is not the DDP step; the target moved by ξ ← τ·ξ + (1 − τ)·θ."""
    got = [ranks[r]["ijepa/masks"] for r in range(WORLD)]
    assert not all(torch.equal(got[0][k], got[1][k]) for k in ("context", "targets")), (
        "both ranks drew the same masks: the per-rank reference would be vacuous"
    )
    method = build("ijepa", False)
    before = {k: v.detach().clone() for k, v in method.state_dict().items()}
    drawn = per_rank_masks_step(method, fixed_views())
    for r in range(WORLD):
        for k in ("context", "targets"):
            assert torch.equal(drawn[r][k], got[r][k]), f"the reference's masks for rank {r}'s rows are not rank {r}'s"
        assert ranks[r]["ijepa/no_bn"]["_extra_state"].tolist() == [7, 1], "mask seed / draw count"
    tau = method.after_step(0, 10)["ema_momentum"]
    assert tau == pytest.approx(IJEPA_EMA)
    after = method.state_dict()
    targets = [k for k in after if k.startswith("target.net.0.")]
    assert targets
    for k in targets:
        online = "backbone." + k.removeprefix("target.net.0.")
        torch.testing.assert_close(after[k], tau * before[k] + (1 - tau) * after[online], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(after[k], ranks[0]["ijepa/no_bn"][k], atol=ATOL, rtol=RTOL)
    assert not torch.allclose(after["target.net.0.patch_embed.weight"], before["target.net.0.patch_embed.weight"])
    one_draw = reference("ijepa", bn=False, per_rank_bn=False, per_rank_masks=False)[0]
    gap = max(float((ranks[0]["ijepa/no_bn"][k] - one_draw[k]).abs().max()) for k in one_draw
              if k.startswith(("backbone.", "predictor.")))
    assert gap > 1e-6, "the DDP step equals the step with one mask draw for the global batch"


@pytest.mark.parametrize("name", BN_METHODS)
def test_ddp_step_with_batchnorm_equals_global_batch_step_with_per_rank_batchnorm(ranks, name):
    """Reference (a) of the module doc: parameters equal on both ranks and to the single-process
    step whose BatchNorms normalise each rank's rows separately; running statistics per rank."""
    expected = reference(name, bn=True, per_rank_bn=True)
    assert any(k.startswith(HEADS) and is_bn_buffer(k) for k in expected[0]), (
        "no BN in the projector"
    )
    assert_step_moved(name, True, expected[0])
    for r in range(WORLD):
        assert_close_states(
            ranks[r][f"{name}/bn"], expected[r], f"{name} with per-rank BN, rank {r}"
        )


@pytest.mark.parametrize("name", BN_METHODS)
def test_ddp_step_with_batchnorm_differs_from_full_batch_batchnorm_step(ranks, name):
    """(b), the documented difference: without SyncBatchNorm, the DDP step is not the step with
    full-batch BatchNorm statistics, and each rank keeps the running statistics of its own rows
    (in every BatchNorm the running mean or the running variance differs between the ranks: the
    mean alone can agree, at 0, as in SimSiam's predictor, whose BatchNorm follows a bias-free
    Linear of the projector's affine-free output BatchNorm, zero-mean on every rank's rows)."""
    full = reference(name, bn=True, per_rank_bn=False)[0]
    got = [ranks[r][f"{name}/bn"] for r in range(WORLD)]
    params = [k for k in full if not is_bn_buffer(k) and k.startswith(("backbone.", *HEADS))]
    gap = max(float((got[0][k] - full[k]).abs().max()) for k in params)
    assert gap > 1e-6, f"{name}: the DDP step with BatchNorm equals the full-batch-BN step"
    bns = [k.removesuffix("running_mean") for k in full if k.endswith("running_mean")]
    stats = ("running_mean", "running_var")
    same = [bn for bn in bns if all(torch.allclose(got[0][bn + s], got[1][bn + s]) for s in stats)]
    assert bns and not same, f"ranks share running statistics (not their own rows'): {same}"
    for k in params:
        assert torch.equal(got[0][k], got[1][k]), f"{name}: ranks' parameters differ at {k}"


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
