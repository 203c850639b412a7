"""The training loop: data on the device, batched views, method step, schedules, AMP, clipping,
live collapse monitor, online kNN, atomic checkpoints with exact resume, DDP.

The trainer owns the loop; the method owns the maths; the monitor only reads the probe
embeddings it is handed (design.md). Entry point: :func:`train` (also ``collapselab.train``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from collapselab import distributed
from collapselab._device import resolve_device as _resolve_device
from collapselab._validation import InputError, value_checks
from collapselab.config import (
    Config,
    check_same_run,
    config_from_dict,
    load_config,
    parse_duration,
    pick_recipe,
    recipe_adaptation,
    to_dict,
    to_yaml,
)
from collapselab.data import DeviceLoader, build_augment, get_dataset
from collapselab.data.augment import channel_stats, use_native
from collapselab.data.datasets import missing_split_hint
from collapselab.diagnostics import CollapseMonitor
from collapselab.diagnostics.monitor import Alarm
from collapselab.diagnostics.spectrum import eigenspectrum
from collapselab.diagnostics.verdict import worst_level
from collapselab.engine.budget import overrun_note, plan_steps
from collapselab.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from collapselab.engine.fastpath import (
    CompiledNetworks,
    compile_decision,
    compile_failed_warning,
    compile_targets,
    to_channels_last,
    use_channels_last,
)
from collapselab.engine.logging import RunLogger, format_epoch_line, progress_bar, read_metrics
from collapselab.engine.optim import build_optimizer, own_predictor_rate, predictor_rate
from collapselab.engine.readback import StepValues, first_nonfinite
from collapselab.engine.schedules import warmup_cosine
from collapselab.engine.threads import ThreadGovernor, available_cpus
from collapselab.evaluation.features import extract_features
from collapselab.evaluation.knn import knn_accuracy
from collapselab.methods import SSLMethod, build_method, method_class
from collapselab.runs import (
    LAST,
    Normalizer,
    RunFolder,
    SpectraRecorder,
    build_backbone_for,
    write_atomic,
)

__all__ = ["LAST", "Normalizer", "Run", "Trainer", "TrainingError", "build_backbone_for", "train"]


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on (non-finite loss, monitor stop)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit, ``kill``) during training: handled like Ctrl-C — the run
    ends with status "interrupted", its summary written and its last checkpoint kept."""

    signum = int(signal.SIGTERM)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While training, SIGTERM raises :class:`Terminated` (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Run:
    """A finished (or stopped) run: its folder, config, logged history and summary.

    ``method`` is the trained model (backbone at ``method.backbone``); :attr:`backbone` is the
    encoder the run evaluates (``method.eval_backbone``: I-JEPA's target encoder).
    """

    dir: Path
    config: Config
    summary: dict[str, Any]
    method: SSLMethod | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def folder(self) -> RunFolder:
        """The run folder on disk (config, history, checks, spectra, checkpoints)."""
        return RunFolder(self.dir)

    @property
    def backbone(self) -> nn.Module:
        if self.method is None:
            raise InputError("this Run holds no model")
        return self.method.eval_backbone


# --------------------------------------------------------------------------- building blocks


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` → this process's CUDA device when there is one, else the CPU;
    ``cuda`` → ``cuda:K`` (K = ``LOCAL_RANK`` under torchrun, else the current device); one-line
    errors for devices this machine lacks (:func:`collapselab._device.resolve_device`)."""
    return _resolve_device(name, "train.device")


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = full precision).

    fp16 needs CUDA (its loss scaler and fast kernels exist there only; on the CPU it runs
    5-150× slower), so it is refused elsewhere."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode in ("auto", "bf16"):
        return torch.bfloat16
    if device.type != "cuda":
        raise InputError(f"train.amp=fp16 needs CUDA (this run is on {device}); use train.amp=bf16 or off")
    return torch.float16


def lr_scale(rule: str, global_batch: int) -> float:
    """The factor ``optim.lr`` is multiplied by for a global batch (``optim.lr_scaling``):
    B/256 (linear, Goyal et al. 2017), √(B/256) (sqrt), or 1 (none)."""
    if rule == "linear":
        return global_batch / 256
    if rule == "sqrt":
        return math.sqrt(global_batch / 256)
    return 1.0


def _capture_rng(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng(state: Mapping[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _float(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _nonfinite_terms(scalars: Mapping[str, Any]) -> list[str]:
    return [f"{key}={_float(value)}" for key, value in scalars.items() if not math.isfinite(_float(value))]


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Runs one configured training job in ``run_dir`` (see :func:`train`)."""

    def __init__(self, config: Config, run_dir: Path, *, resume: bool = False) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.folder = RunFolder(self.run_dir)
        self.spectra = SpectraRecorder()

    # ---- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        c = self.config
        backend = None if c.distributed.backend == "auto" else c.distributed.backend
        self.is_distributed = distributed.init_from_env(backend)
        self.rank, self.world = distributed.get_rank(), distributed.get_world_size()
        self.main = self.rank == 0
        if self.is_distributed:  # rank 0's run name everywhere (default names carry a timestamp)
            shared = [self.run_dir.name]
            torch.distributed.broadcast_object_list(shared, src=0)
            self.run_dir = self.run_dir.parent / shared[0]
            self.checkpoint_dir = self.run_dir / "checkpoints"
            self.folder = RunFolder(self.run_dir)
        self._check_summary()
        self.device = resolve_device(c.train.device)
        self.amp = amp_dtype(c.train.amp, self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # fixed shapes every step: let cuDNN pick the fastest convolution algorithms
            torch.backends.cudnn.benchmark = not c.train.deterministic
        self._setup_threads()
        if c.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(c.train.seed)

        self.train_set = get_dataset(c.data.dataset, "train", data_dir=c.data.data_dir, download=c.data.download)
        self.eval_set = None
        self.unlabelled = bool((self.train_set.labels < 0).all())
        if c.data.knn_split and (c.eval.knn_every or c.eval.final):
            add_split = missing_split_hint(c.data.dataset, c.data.knn_split, c.data.data_dir)
            if add_split is not None:  # own data with a train split only: train, monitor and report
                if self.rank == 0:
                    print(f"note: {c.data.dataset} data {c.data.data_dir} has no {c.data.knn_split!r} split, so the "
                          f"online kNN and the final evaluation are skipped; to evaluate, {add_split}",
                          file=sys.stderr)
            else:
                self.eval_set = get_dataset(c.data.dataset, c.data.knn_split, data_dir=c.data.data_dir,
                                            download=c.data.download)
                self.unlabelled = self.unlabelled or bool((self.eval_set.labels < 0).all())
        if self.unlabelled and self.eval_set is not None:
            self.eval_set = None  # kNN needs labels: train, monitor and report without it
            if self.rank == 0:
                print(f"note: {c.data.dataset} has no labels, so the online kNN and the final evaluation "
                      "are skipped (the collapse monitor needs none)", file=sys.stderr)
        if self.eval_set is not None:
            self._check_eval_split(self.eval_set)
        n_train = len(self.train_set)
        per_rank = n_train // self.world
        if c.data.batch_size > per_rank:
            raise InputError(
                f"data.batch_size={c.data.batch_size} is larger than the {per_rank} training images "
                f"per process of {c.data.dataset!r} ({n_train} in all); lower data.batch_size"
            )
        self.train_set = self.train_set.to(self.device)
        channels, height, width = self.train_set.images.shape[1:]
        mean, std = channel_stats(self.train_set.images) if c.data.normalize else (None, None)
        self.normalizer = Normalizer(mean, std)
        recipe: Any = c.data.augment
        augment_cfg = dict(recipe) if isinstance(recipe, Mapping) else {"recipe": recipe}
        if augment_cfg.get("recipe") is None and augment_cfg.get("name") is None:
            augment_cfg["recipe"] = method_class(c.method.name).default_augment
        augment_cfg.setdefault("backend", c.data.augment_backend)
        if c.data.normalize and "mean" not in augment_cfg:
            augment_cfg["mean"], augment_cfg["std"] = mean, std
        self.augment = build_augment(augment_cfg)
        # what actually makes the views (auto resolves to native or torch on this device)
        on_device = torch.empty(0, device=self.device)
        self.augment_backend = "native" if use_native(self.augment.backend, on_device) else "torch"
        self.loader = DeviceLoader(self.train_set, c.data.batch_size, shuffle=True, seed=c.train.seed,
                                   drop_last=True, num_replicas=self.world, rank=self.rank, device=self.device)
        self.steps_per_epoch = len(self.loader)
        if c.train.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, c.train.max_steps_per_epoch)
        self.budget_s = parse_duration(c.train.time_budget) if c.train.time_budget is not None else None
        # a budget fixes train.steps after timing (fit -> _plan_budget); a given train.steps wins
        self.plan_budget = self.budget_s is not None and c.train.steps is None
        self.budget: dict[str, Any] | None = None
        self._set_length(c.train.steps if c.train.steps is not None else self.steps_per_epoch * c.train.epochs)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self._stream_seed())

        backbone = build_backbone_for(c, channels, height, width)
        self.method = build_method(c.method, backbone).to(self.device)
        if self.is_distributed and c.distributed.sync_bn:
            if self.device.type != "cuda":
                raise InputError("distributed.sync_bn=true needs CUDA: torch's SyncBatchNorm refuses CPU "
                                 "modules; set distributed.sync_bn=false on CPU")
            self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self.channels_last = use_channels_last(c.train.channels_last, self.device, self.method.backbone)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        compile_now, self.compile_reason = compile_decision(
            c.train.compile, self.device, None if self.plan_budget else self.total_steps, self.budget_s)
        self.compiled = CompiledNetworks(compile_targets(self.method)) if compile_now else None
        self.compile_time_s: float | None = None
        self.model: nn.Module = self.method
        if self.is_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.method, device_ids=ids)
        global_batch = c.data.batch_size * self.world
        self.base_lr = c.optim.lr * lr_scale(c.optim.lr_scaling, global_batch)
        own_rate = own_predictor_rate(c.optim)
        self.optimizer = build_optimizer(
            c.optim.name, self.method, lr=self.base_lr, weight_decay=c.optim.weight_decay,
            momentum=c.optim.momentum, betas=tuple(c.optim.betas), eta=c.optim.eta,
            exclude_bias_and_norm=c.optim.exclude_bias_and_norm,
            predictor_prefix="predictor." if own_rate else None,
        )
        if own_rate and not any(g.get("predictor") for g in self.optimizer.param_groups):
            raise InputError(
                f"optim.predictor_lr_ratio / optim.predictor_lr_schedule set, but this {c.method.name} run has no "
                "trained predictor (none, or one set in closed form as DirectPred's); drop them")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)

        probe_g = torch.Generator().manual_seed(c.train.seed)
        probe_n = min(c.monitor.probe_size, n_train)
        probe_idx = torch.randperm(n_train, generator=probe_g)[:probe_n].to(self.device)
        self.probe_images = self.train_set.images[probe_idx]
        self.probe_labels = self.train_set.labels[probe_idx.to(self.train_set.labels.device)]
        self.last_probe: dict[str, torch.Tensor] = {}
        self.knn_bank = None
        if c.eval.knn_bank is not None and c.eval.knn_bank < n_train:
            bank_g = torch.Generator().manual_seed(c.train.seed + 1)
            self.knn_bank = torch.randperm(n_train, generator=bank_g)[:c.eval.knn_bank].sort().values
        self.values = StepValues()
        self.epoch_losses: list[float] = []
        self.monitor = CollapseMonitor(
            every=max(c.monitor.every, 1),
            warmup_steps=round(c.monitor.warmup_epochs * self.steps_per_epoch),
            collapse_loss=self.method.collapse_loss(c.data.batch_size * self.world),
        )
        self.hints = self.method.collapse_hints()
        self.epoch, self.global_step = 0, 0
        self.images_seen, self.train_time = 0, 0.0
        self.stop_reason: str | None = None
        if self.resume:
            self._load(self.checkpoint_dir / LAST)
            self.spectra.load(self.folder.spectra_path, up_to_step=self.global_step)
        self.logger = RunLogger(
            self.run_dir, enabled=self.main, tensorboard=c.log.tensorboard,
            wandb={"project": c.log.wandb_project, "mode": c.log.wandb_mode, "name": self.run_dir.name}
            if c.log.wandb_project else None,
            # lines at the checkpoint's own step were written before it was saved: keep them
            resume_step=self.global_step + 1 if self.resume else None, config=to_dict(c),
        )
        if self.main and c.log.tensorboard == "auto":  # say once whether TensorBoard is written
            self._write(f"TensorBoard: writing events to {self.run_dir}" if self.logger.tensorboard
                        else "TensorBoard: not installed, so log.tensorboard=auto writes metrics.jsonl only "
                             "(pip install tensorboard to get events)")

    def _check_summary(self) -> None:
        """An existing ``summary.json`` (a resumed run's) must be readable now: the run merges its
        summary into it at the end, and finding it corrupt only then would waste the training."""
        try:
            self.folder.summary()
        except InputError as err:
            raise InputError(f"{err}; this run writes its summary there when it ends: repair the file or "
                             "move it aside, then run again (nothing was trained)") from None

    def _check_eval_split(self, eval_set: Any) -> None:
        """Before any step: the held-out split the online kNN / final evaluation use must have the
        training images' shape (one network embeds both), and the training labels (the kNN's
        bank) at least two classes; otherwise a one-line error, not a failure after training."""
        c = self.config
        off = " ".join(k for k, on in (("eval.final=false", c.eval.final), ("eval.knn_every=0", c.eval.knn_every)) if on)
        train_shape = tuple(int(v) for v in self.train_set.images.shape[1:])
        eval_shape = tuple(int(v) for v in eval_set.images.shape[1:])
        if eval_shape != train_shape:
            shown = "×".join
            raise InputError(
                f"{c.data.dataset}: the {eval_set.split!r} split's images are {shown(map(str, eval_shape))} "
                f"(C×H×W) but the train split's are {shown(map(str, train_shape))}; one network embeds both for "
                f"the online kNN and the final evaluation, so give the {eval_set.split!r} split images of the "
                f"training channels and size, or train without evaluation: {off}")
        classes = torch.unique(self.train_set.labels)
        if classes.numel() < 2:
            raise InputError(
                f"{c.data.dataset}: the train split's labels hold a single class ({int(classes[0])}); the online "
                f"kNN and the final evaluation need at least 2 classes: check the labels (y), or train "
                f"without evaluation: {off}")

    def _set_length(self, total_steps: int) -> None:
        """The run's length in steps, and what follows from it (epochs, LR warm-up)."""
        self.total_steps = int(total_steps)
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.warmup_steps = min(self.total_steps,
                                round(self.config.optim.warmup_epochs * self.steps_per_epoch))

    def _setup_threads(self) -> None:
        """torch's CPU threads: ``train.threads`` (default: the CPUs this process may use), lowered
        while other processes keep cores busy when ``train.adapt_threads`` (CPU runs only)."""
        c = self.config
        cpus = available_cpus()
        self.threads_before = torch.get_num_threads()
        self.max_threads = c.train.threads or max(1, min(torch.get_num_threads(), cpus))
        torch.set_num_threads(self.max_threads)
        adapt = c.train.adapt_threads and not c.train.deterministic and self.device.type == "cpu"
        self.threads_fixed_reason = (
            None if adapt else "train.adapt_threads=false" if not c.train.adapt_threads
            else "train.deterministic=true (thread count changes float summation order)"
            if c.train.deterministic else f"device {self.device.type} (threads only feed the data path)")
        self.governor = ThreadGovernor(self.max_threads, enabled=adapt) if adapt else None
        if self.governor is not None:
            self.governor.start()

    def _poll_threads(self, force: bool = False) -> None:
        if self.governor is None:
            return
        changed = self.governor.poll(force=force)
        if changed is not None:
            change = self.governor.changes[-1]
            self.logger.log(self.global_step, {"threads": changed, "others_busy": change.get("others_busy")},
                            kind="threads")

    # ---- checkpoints ---------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "images_seen": self.images_seen,
            "train_time": self.train_time,
            "rng": _capture_rng(self.generator),
            "monitor": self.monitor.state_dict(),
            "config": to_dict(self.config),
            "backbone_prefix": self.method.eval_backbone_prefix,
            "input_shape": list(self.train_set.images.shape[1:]),
            "normalization": {"mean": self.normalizer.mean, "std": self.normalizer.std},
            "augment_backend": self.augment_backend,
        }

    def _stream_seed(self, step: int = 0) -> int:
        """Seed of this rank's augmentation stream (distinct per rank; ``step`` > 0: a fresh stream
        started at that step, for a resume on another number of processes)."""
        return self.config.train.seed * 1000 + self.rank + 1 + 1_000_003 * step

    def _per_rank_buffers(self) -> set[str]:
        """Buffers each rank keeps its own of, by design (those the method tells DDP to leave
        alone, e.g. SwAV's feature queue): never broadcast, saved and restored per rank."""
        return set(getattr(self.method, "_ddp_params_and_buffers_to_ignore", ()))

    def _sync_buffers(self) -> None:
        """Rank 0's buffers (BN running statistics, EMA target's) on every rank: DDP only
        broadcasts them at the start of a forward, so after an epoch each rank holds its own.
        Per-rank buffers (:meth:`_per_rank_buffers`) are left as they are."""
        if self.is_distributed:
            own = self._per_rank_buffers()
            for name, buffer in self.method.named_buffers():
                if name not in own:
                    torch.distributed.broadcast(buffer, src=0)

    def _gather_rank_states(self) -> list[dict[str, Any]] | None:
        """Every rank's random streams and per-rank buffers, on every rank (a collective: all
        ranks call it), so that a resumed multi-rank run continues each rank exactly; None in a
        single process (the checkpoint's ``rng`` and ``model`` already hold everything)."""
        if not self.is_distributed:
            return None
        own = self._per_rank_buffers()
        mine = {"rng": _capture_rng(self.generator),
                "buffers": {n: b.detach().cpu().clone() for n, b in self.method.named_buffers() if n in own}}
        states: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(states, mine)
        return states

    def _save(self) -> None:
        self._sync_buffers()
        ranks = self._gather_rank_states()
        if not self.main:
            return
        state = self._state()
        if ranks is not None:
            state["ranks"] = ranks
        self.spectra.save(self.folder.spectra_path)  # before last.pt: a resume trims it to its step
        if self.resume and not self.resume_config_written:  # see _fit: with the first new checkpoint
            write_atomic(self.run_dir / "config.yaml", to_yaml(self.config))
            self.resume_config_written = True
        save_checkpoint(self.checkpoint_dir / LAST, state)
        if self.epoch in self._kept_epochs():
            save_checkpoint(self.checkpoint_dir / f"epoch_{self.epoch:04d}.pt", state)

    def _kept_epochs(self) -> set[int]:
        """Epochs whose state is kept as ``epoch_NNNN.pt``: every ``checkpoint.every``-th, and
        ``checkpoint.keep`` epochs spread evenly over the run (round(i·E/K), i = 1..K)."""
        c, epochs = self.config.checkpoint, self.num_epochs
        kept = set(range(c.every, epochs + 1, c.every)) if c.every else set()
        if c.keep:
            kept |= {max(1, round(i * epochs / c.keep)) for i in range(1, min(c.keep, epochs) + 1)}
        return kept

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        saved = state.get("config") or {}
        edited = fixed_key_differences(saved, self.config)
        if edited:
            raise CheckpointError(
                f"{path}: {'; '.join(edited)} (checkpoint -> this run's config): the run's config.yaml differs "
                "from the config its checkpoint was written with in what a resume cannot change; restore "
                "those values in config.yaml, or start a new run")
        model, per_rank = dict(state["model"]), self._per_rank_buffers() & state["model"].keys()
        # a single process's checkpoint: its model and rng are that one rank's
        ranks = state.get("ranks") or [{"rng": state["rng"], "buffers": {n: model[n] for n in per_rank}}]
        mine = ranks[self.rank] if len(ranks) == self.world else None
        for name in per_rank:
            # this rank's own (a checkpoint of another world size has none: start it empty)
            model[name] = mine["buffers"][name] if mine is not None else torch.zeros_like(model[name])
        try:
            self.method.load_state_dict(model)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            was = (f"method {saved.get('method', {}).get('name')!r}, backbone "
                   f"{saved.get('model', {}).get('backbone')!r}")
            now = f"method {self.config.method.name!r}, backbone {self.config.model.backbone!r}"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"{path}: the checkpoint's model ({was}) does not fit this run's config ({now}): {first}; "
                "resume with the run's own config.yaml, or start a new run") from err
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        if self.global_step > self.total_steps:
            raise InputError(
                f"this run has done {self.global_step} steps ({self.epoch} epochs) but the config asks for "
                f"{self.total_steps} ({self.num_epochs} epochs); a resumed run can only go on: raise "
                "train.epochs (or train.steps)")
        self.images_seen, self.train_time = int(state["images_seen"]), float(state["train_time"])
        _restore_rng({k: v.cpu() for k, v in (mine or ranks[0])["rng"].items()}, self.generator)
        if mine is None:  # another world size: each rank past rank 0 starts a fresh random stream
            if self.rank:
                self.generator.manual_seed(self._stream_seed(self.global_step))
            if self.main:
                print(f"warning: {path} was written by {len(ranks)} process(es) and is resumed by {self.world}; "
                      "the run continues, but not bit-identically to an uninterrupted run (each rank's random "
                      "stream and per-rank buffers restart)", file=sys.stderr)
        self.monitor.load_state_dict(state["monitor"])
        saved = state.get("augment_backend")
        if saved is not None and saved != self.augment_backend and self.main:
            print(f"warning: this run's views were made by the {saved!r} augmentation backend and now by "
                  f"{self.augment_backend!r}; it continues, but not bit-identically to an uninterrupted run "
                  f"(resume with data.augment_backend={saved} for that)", file=sys.stderr)

    # ---- monitoring ----------------------------------------------------------------------

    @torch.no_grad()
    def _embed_for_monitor(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``method.embed`` in eval mode, eager and in full precision (the spectra's small
        eigenvalues matter), the training mode restored after."""
        was_training = self.method.training
        self.method.eval()
        try:
            with self._eager():
                out = self.method.embed(images)
        finally:
            self.method.train(was_training)
        return {k: v.float() for k, v in out.items()}

    def probe_embeddings(self) -> dict[str, torch.Tensor]:
        out = self._embed_for_monitor(self._eval_transform(self.probe_images))
        self.last_probe = out
        wanted = self.config.monitor.embeddings
        missing = [k for k in wanted if k not in out]
        if missing:
            raise InputError(f"monitor.embeddings: {missing} not produced by {self.method.name} (has {sorted(out)})")
        named = {k: out[k] for k in wanted}
        if "codes" in out:  # code-producing methods: cluster-collapse verdicts from code usage
            named["codes"] = out["codes"]
        return named

    @torch.no_grad()
    def probe_views(self) -> dict[str, torch.Tensor]:
        """The watched embeddings of one augmented view of the probe images (the run's own
        augmentation, drawn from a generator seeded by the seed and the step, so a resumed run
        draws the same views): the monitor's ``alignment`` pairs each probe image with its view."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.config.train.seed * 1_000_003 + self.global_step)
        view = self.augment(self.probe_images, generator)[0]
        if self.channels_last and view.ndim == 4:
            view = view.contiguous(memory_format=torch.channels_last)
        out = self._embed_for_monitor(view)
        return {k: out[k] for k in self.config.monitor.embeddings if k in out}

    def check_collapse(self) -> list[Alarm]:
        if not self.config.monitor.enabled:
            return []
        if not self.main:
            self._sync_stop()
            return []
        probe = self.probe_embeddings()
        # a method with an uncertainty band (composite band=...) gives the width of each row of emb
        band = self.last_probe.get("band") if "emb" in probe else None
        self._check_finite(probe if band is None else {**probe, "band": band})
        codes = probe.pop("codes", None)
        every = self.config.monitor.every
        recent = self.epoch_losses[-every:] if every else self.epoch_losses
        loss = sum(recent) / len(recent) if recent else None  # the training loss since the last check
        views = self.probe_views() if self.config.monitor.views else None
        alarms = self.monitor.update(self.global_step, probe, codes=codes, loss=loss, views=views,
                                     bands=None if band is None else {"emb": band})
        self._record_check(probe, loss)
        for alarm in alarms:
            hint = f"\n    hint: {'; '.join(self.hints)}" if self.hints else ""
            self._write(f"ALARM {alarm}{hint}")
            self.logger.log(self.global_step, {"mode": alarm.mode, "level": alarm.level, "name": alarm.name,
                                               "reason": alarm.reason}, kind="alarm")
        if self.config.monitor.policy == "stop" and any(a.level == "collapsed" for a in alarms):
            self.stop_reason = f"monitor.policy=stop: collapse alarm at step {self.global_step}"
        self._sync_stop()
        return alarms

    def _record_check(self, probe: Mapping[str, torch.Tensor], loss: float | None) -> None:
        """One "check" row in metrics.jsonl (every monitor metric and verdict, named by
        embedding) and each embedding's covariance spectrum for spectra.npz."""
        row: dict[str, Any] = {} if loss is None else {"loss": loss}
        for name, diag in self.monitor.latest.items():
            if name not in probe:
                continue
            row.update({f"{name}/{key}": value for key, value in diag.metrics.items()})
            row.update({f"{name}/verdict/{mode}": level for mode, level in diag.verdict.items()})
            z = probe[name]
            self.spectra.add(self.global_step, name, eigenspectrum(z), n_samples=z.shape[0])
        self.logger.log(self.global_step, row, kind="check")

    def _sync_stop(self) -> None:
        """Every rank learns whether rank 0's monitor stopped the run (so no rank waits alone)."""
        if not self.is_distributed:
            return
        flag = torch.tensor([1.0 if self.stop_reason else 0.0], device=self.device)
        torch.distributed.broadcast(flag, src=0)
        if flag.item() and self.stop_reason is None:
            self.stop_reason = "monitor.policy=stop on rank 0"

    def online_knn(self) -> dict[str, float]:
        """kNN top-1 of the current backbone: a bank of ``eval.knn_bank`` training images, the
        held-out split as queries (eager modules, the run's autocast and memory layout)."""
        c = self.config
        if self.eval_set is None or not self.main:
            return {}
        images, labels = self.train_set.images, self.train_set.labels
        if self.knn_bank is not None:
            images = images[self.knn_bank.to(images.device)]
            labels = labels[self.knn_bank.to(labels.device)]
        batch = 1024 if self.device.type == "cuda" else 512
        with self._eager(), self._autocast():
            encoder = self.method.eval_backbone
            train_feats = extract_features(encoder, images, transform=self._eval_transform, batch_size=batch)
            test_feats = extract_features(encoder, self.eval_set.images, transform=self._eval_transform,
                                          batch_size=batch)
        return knn_accuracy(train_feats, labels.cpu(), test_feats, self.eval_set.labels,
                            k=c.eval.knn_k, temperature=c.eval.knn_temperature)

    def _eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def _eager(self) -> contextlib.AbstractContextManager:
        return self.compiled.eager() if self.compiled is not None else contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    # ---- the loop ------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        if self.main:
            tqdm.write(text)

    def _step(self, images: torch.Tensor) -> None:
        """One optimiser step. Nothing is read back to the host: the loss and the logged terms go
        to ``self.values``, read every ``log.every`` steps by :meth:`_read_back`."""
        c = self.config
        lr = warmup_cosine(self.global_step, self.total_steps, self.base_lr, self.warmup_steps,
                           final_value=c.optim.min_lr_ratio * self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = predictor_rate(c.optim, lr, self.base_lr) if group.get("predictor") else lr
        self.method.start_step(self.global_step, self.total_steps, self.steps_per_epoch)
        views = self.augment(images, self.generator)
        if self.channels_last:
            views = to_channels_last(views)
        with self._autocast(), value_checks(False):
            out = self.model(views)
        loss = out.loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        tensors: dict[str, torch.Tensor] = {"loss": loss.detach()}
        numbers: dict[str, float] = {"lr": lr}
        if c.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            tensors["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.method.parameters(), c.optim.grad_clip)
        self.method.before_optimizer_step()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for key, value in out.scalars.items():
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach()
            else:
                numbers[key] = float(value)
        numbers.update(self.method.after_step(self.global_step, self.total_steps))
        self.values.add(self.global_step + 1, tensors, numbers)

    def _first_step(self, images: torch.Tensor) -> None:
        """The run's first step here: timed when it compiles; with ``train.compile=auto`` a failed
        compilation falls back to eager and redoes the step from the same random state."""
        if self.compiled is None or self.compile_time_s is not None:
            self._step(images)
            return
        rng = self.generator.get_state()
        start = time.perf_counter()
        try:
            self._step(images)
        except Exception as err:
            if self.config.train.compile != "auto":
                raise
            compile_failed_warning(err)
            self.compiled.disable()
            self.compiled = None
            self.compile_reason = f"auto: compiling failed ({type(err).__name__}); eager"
            self.generator.set_state(rng)
            self.values = StepValues()
            self._step(images)
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_time_s = time.perf_counter() - start
        self._write(f"train.compile: the first step, which compiles {len(self.compiled.modules)} "
                    f"backbone(s), took {self.compile_time_s:.1f} s")

    def _read_back(self) -> list[dict[str, Any]]:
        """Read the window of per-step values (one transfer; under DDP their mean over ranks),
        stop at the first non-finite loss, log the rows due, and return them."""
        if not len(self.values):
            return []
        reduce = (lambda m: distributed.all_reduce(m, op="mean")) if self.is_distributed else None
        records = self.values.read(reduce)
        bad = first_nonfinite(records)
        if bad is not None:
            raise self._divergence(bad)
        now = time.perf_counter()
        steps_done = records[-1]["step"] - self.epoch_first_step + 1
        rate = steps_done * self.config.data.batch_size * self.world / max(now - self.epoch_start, 1e-9)
        every = self.config.log.every
        for record in records:
            self.epoch_losses.append(record["loss"])
            if record["step"] % every == 0 or record["step"] == self.epoch_first_step:
                fields = {k: v for k, v in record.items() if k != "step"}
                self.logger.log(record["step"], {**fields, "epoch": self.epoch + 1, "img_per_s": rate})
        self.last_rate, self.last_loss = rate, records[-1]["loss"]
        return records

    def _divergence(self, record: Mapping[str, Any]) -> TrainingError:
        step = int(record["step"])  # counted from 1, as metrics.jsonl and the progress bar count
        terms = {k: v for k, v in record.items() if k not in ("step", "loss", "lr")}
        bad = [f"{k}={v}" for k, v in terms.items() if isinstance(v, float) and not math.isfinite(v)]
        where = (f"non-finite terms: {', '.join(bad)}" if bad
                 else f"terms: {', '.join(f'{k}={v:.4g}' for k, v in terms.items()) or 'none logged'}")
        return TrainingError(
            f"loss is {record['loss']} at step {step} (epoch {self.epoch + 1}, {self.method.name}); "
            f"{where}; training stopped and {self._kept_checkpoint()}. Try a lower optim.lr, optim.grad_clip, "
            "or train.amp=off"
        )

    def _kept_checkpoint(self) -> str:
        last = self.checkpoint_dir / LAST
        return f"the last good checkpoint is {last} (epoch {self.epoch})" if last.exists() else "no checkpoint was written yet"

    def _check_finite(self, probe: Mapping[str, torch.Tensor]) -> None:
        """Weights that went non-finite while the logged loss still was finite (the optimiser
        step after the last loss) are a divergence, reported as one, not as bad monitor input."""
        bad = [name for name, z in probe.items() if not bool(torch.isfinite(z).all())]
        if bad:
            raise self._diverged_weights(f"the probe's {', '.join(bad)} embeddings are non-finite")

    def _diverged_weights(self, what: str) -> TrainingError:
        return TrainingError(
            f"the network diverged by step {self.global_step} (epoch {self.epoch + 1}, {self.method.name}): {what}; "
            f"training stopped and {self._kept_checkpoint()}. Try a lower optim.lr, optim.grad_clip, or train.amp=off")

    def _raise_if_diverged(self, err: BaseException) -> None:
        """After an error inside a step: if the loss had already gone non-finite, that is the
        cause to report (NaN weights make later operations fail in obscure ways)."""
        try:
            self._read_back()
        except TrainingError as diverged:
            raise diverged from err
        except Exception:  # the window cannot be read: report the original error
            return
        bad = sum(int((~torch.isfinite(p)).sum()) for p in self.method.parameters())
        if bad:
            raise self._diverged_weights(f"{bad} weights are non-finite") from err

    # ---- time budget ---------------------------------------------------------------------

    def _plan_budget(self) -> None:
        """``train.time_budget``: time throw-away steps and the per-epoch extras, fix
        ``train.steps`` (:func:`~collapselab.engine.budget.plan_steps`), restore the state from
        before the timing and record the plan (``config.yaml``, ``summary.json``)."""
        c = self.config
        budget = float(self.budget_s)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        snapshot = {
            "model": {k: v.detach().clone() for k, v in self.method.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": copy.deepcopy(self.scaler.state_dict()),
            "rng": {k: v.clone() for k, v in _capture_rng(self.generator).items()},
        }
        # at most 2 % of the budget (>= 3 timed steps, <= 20 s) after one untimed step, which
        # builds the augmentation kernel, compiles, and lets cuDNN choose its algorithms
        target = min(max(0.02 * budget, 0.05), 20.0)
        batches = iter(self.loader)

        def next_batch() -> torch.Tensor:
            nonlocal batches
            try:
                return next(batches)[0]
            except StopIteration:
                batches = iter(self.loader)
                return next(batches)[0]

        self._first_step(next_batch())
        self._sync()
        # each step timed alone (a sync per step is fine here, not in training); the median is
        # robust to a transient slowdown, e.g. another process finishing while we measure
        times: list[float] = []
        t_steps = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - t_steps < target and len(times) < 10_000):
            t_step = time.perf_counter()
            self._step(next_batch())
            self._sync()
            times.append(time.perf_counter() - t_step)
        timed = len(times)
        step_s = statistics.median(times)
        self.values = StepValues()  # the throw-away steps are not logged

        monitor_s = 0.0
        if c.monitor.enabled:
            checks = self.steps_per_epoch / c.monitor.every if c.monitor.every else 1.0
            check_s = self.monitor_check_s  # the reference check, which also paid first-call costs
            if self.main:  # two more checks on copies of the monitor: the steady cost, no record
                spent = []
                for _ in range(2):
                    scratch = copy.deepcopy(self.monitor)  # copying is not part of a check's cost
                    t_check = time.perf_counter()
                    probe = self.probe_embeddings()
                    codes = probe.pop("codes", None)
                    scratch.update(self.global_step + 1, probe, codes=codes)
                    spent.append(time.perf_counter() - t_check)
                check_s = statistics.mean(spent)
            monitor_s = check_s * checks
        knn_s = save_s = 0.0
        if self.main:
            if c.eval.knn_every and self.eval_set is not None:
                t_knn = time.perf_counter()
                self.online_knn()
                knn_s = (time.perf_counter() - t_knn) / c.eval.knn_every
            probe, saves = self.checkpoint_dir / ".budget_probe.pt", []
            for _ in range(2):  # the faster of two writes: a single fsync can stall
                t_save = time.perf_counter()
                save_checkpoint(probe, self._state())
                saves.append(time.perf_counter() - t_save)
            probe.unlink(missing_ok=True)
            save_s = min(saves)
        overhead_s = monitor_s + knn_s + save_s

        self.method.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.scaler.load_state_dict(snapshot["scaler"])
        _restore_rng(snapshot["rng"], self.generator)
        self.method.train()

        elapsed = time.perf_counter() - self.t_start
        steps = plan_steps(budget - elapsed, step_s, self.steps_per_epoch, overhead_s)
        if self.is_distributed:  # one plan for every rank: rank 0's
            shared = [steps]
            torch.distributed.broadcast_object_list(shared, src=0)
            steps = int(shared[0])
        self._set_length(steps)
        c.train.steps = steps
        self.budget = {
            "time_budget_s": budget,
            "steps": steps,
            "epochs": self.num_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "measured_steps": timed,
            "step_s": step_s,
            "epoch_overhead_s": {"monitor": monitor_s, "knn": knn_s, "checkpoint": save_s},
            "planning_s": time.perf_counter() - t0,
            "setup_s": t0 - self.t_start,
        }
        if self.main:
            write_atomic(self.run_dir / "config.yaml", to_yaml(c))
        self._write(
            f"train.time_budget={c.train.time_budget}: {step_s * 1000:.1f} ms/step and {overhead_s:.2f} s "
            f"per epoch (monitor, kNN, checkpoint) -> {steps} steps ({self.num_epochs} epochs of "
            f"{self.steps_per_epoch}); train.steps={steps} repeats this run exactly"
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fit(self) -> Run:
        """Train to the end. A failure (:class:`TrainingError`) or an interrupt leaves with
        ``err.run_dir``: the folder this rank wrote its summary to (None on the other ranks), so
        callers can report on the unfinished run."""
        with terminate_as_interrupt():
            try:
                return self._fit()
            except (TrainingError, KeyboardInterrupt) as err:
                err.run_dir = self.run_dir if self.main else None  # type: ignore[attr-defined]
                raise

    def _fit(self) -> Run:
        self.t_start = time.perf_counter()  # a time budget counts from here, setup included
        self.setup()
        c = self.config
        start_wall = time.perf_counter()
        status = "completed"
        # config.yaml is the config of the run's latest checkpoint. A new run writes it now; a
        # resume only with its first new checkpoint (_save), so a resume that trains nothing (a
        # completed run) or fails before its first epoch ends (an override that diverges) leaves
        # the config that last.pt was trained with, and a plain --resume starts from that again
        self.resume_config_written = False
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                write_atomic(self.run_dir / "config.yaml", to_yaml(c))  # a crash leaves the old one whole
        try:
            self.monitor_check_s = 0.0
            if self.global_step == 0 and c.monitor.enabled:
                t_check = time.perf_counter()
                self.check_collapse()  # the reference: the network at initialisation
                self.monitor_check_s = time.perf_counter() - t_check
            self.method.train()
            self._poll_threads(force=True)
            if self.plan_budget and self.global_step == 0:
                self._plan_budget()
            while self.epoch < self.num_epochs and self.stop_reason is None:
                self._train_epoch()
            if self.budget is not None:
                used = self.budget["time_used_s"] = time.perf_counter() - self.t_start
                b = self.budget
                note = overrun_note(b["time_budget_s"], used, b["setup_s"] + b["planning_s"], b["steps"], b["step_s"])
                if note is not None:
                    self._write(note)
        except KeyboardInterrupt as err:
            self._finish()
            self._record_interrupt(err, start_wall)
            raise
        except Exception as err:
            self._finish()
            self._write_summary("failed", time.perf_counter() - start_wall, None, error=str(err) if isinstance(err, TrainingError) else f"{type(err).__name__}: {err}")
            self.logger.close()
            raise
        self._finish()
        if self.stop_reason is not None:
            status = "stopped"
            self._write(f"stopped: {self.stop_reason}")
        try:
            final = self.final_evaluation() if c.eval.final and self.main else {}
        except KeyboardInterrupt as err:  # a time limit during the final evaluation: training is done and kept
            self._record_interrupt(err, start_wall)
            raise
        summary = self._write_summary(status, time.perf_counter() - start_wall, final)
        self.logger.close()
        history = read_metrics(self.run_dir / "metrics.jsonl") if self.main else []
        if self.is_distributed:
            distributed.barrier()
        return Run(self.run_dir, c, summary, self.method, history)

    def _record_interrupt(self, err: KeyboardInterrupt, start_wall: float) -> None:
        """Write the ``interrupted`` summary naming the signal, and close the log."""
        self.stop_reason = "SIGTERM" if isinstance(err, Terminated) else "SIGINT (Ctrl-C)"
        self._write_summary("interrupted", time.perf_counter() - start_wall, None)
        self.logger.close()

    def _finish(self) -> None:
        """Hand back eager modules (the final evaluation and the caller get plain networks) and
        the caller's torch thread count (the governor may have lowered it)."""
        if self.compiled is not None:
            self.compiled.disable()
        torch.set_num_threads(self.threads_before)
        if self.main:
            self.spectra.save(self.folder.spectra_path)

    def _train_epoch(self) -> None:
        c = self.config
        self.loader.set_epoch(self.epoch)
        steps_now = min(self.steps_per_epoch, self.total_steps - self.global_step)
        bar = progress_bar(steps_now, desc=f"epoch {self.epoch + 1}/{self.num_epochs}",
                           enabled=self.main and c.log.progress)
        self.epoch_losses = []
        self.epoch_first_step = self.global_step + 1
        self.epoch_start = t0 = time.perf_counter()
        first_of_run = self.global_step == 0 or (
            self.compile_time_s is None and self.compiled is not None)
        for i, (images, _) in enumerate(self.loader):
            if i >= steps_now:
                break
            self._poll_threads()
            try:
                if i == 0 and first_of_run:
                    self._first_step(images)
                else:
                    self._step(images)
            except TrainingError:
                raise
            except Exception as err:
                self._raise_if_diverged(err)
                raise
            self.global_step += 1
            self.images_seen += images.shape[0] * self.world
            bar.update(1)
            if self.global_step % c.log.every == 0 or i == 0:
                self._read_back()
                bar.set_postfix(loss=f"{self.last_loss:.4f}", img_s=f"{self.last_rate:.0f}")
            if c.monitor.every and self.global_step % c.monitor.every == 0:
                self._read_back()  # a diverged network is reported as such, not probed
                self.check_collapse()
                if self.stop_reason is not None:
                    break
        self._read_back()
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        epoch_time = time.perf_counter() - t0
        self.train_time += epoch_time
        self.epoch += 1
        steps = len(self.epoch_losses)
        epoch_metrics: dict[str, Any] = {
            "loss": sum(self.epoch_losses) / max(steps, 1),
            "img_per_s": steps * c.data.batch_size * self.world / max(epoch_time, 1e-9),
            "epoch_time_s": epoch_time,
        }
        if self.compile_time_s is not None and self.epoch_first_step == 1:
            epoch_metrics["compile_time_s"] = self.compile_time_s
        if self.governor is not None:
            epoch_metrics["threads"] = self.governor.threads
        if c.monitor.enabled and not c.monitor.every:
            t_monitor = time.perf_counter()
            self.check_collapse()
            epoch_metrics["monitor_time_s"] = time.perf_counter() - t_monitor
        if c.eval.knn_every and self.epoch % c.eval.knn_every == 0 and self.eval_set is not None and self.main:
            t_knn = time.perf_counter()
            epoch_metrics.update(self.online_knn())
            epoch_metrics["knn_time_s"] = time.perf_counter() - t_knn
        if self.main and self.last_probe:
            epoch_metrics.update(self.method.probe_metrics(self.last_probe, self.probe_labels))
        for name in ("emb", "repr"):
            if name in self.monitor.latest:
                d = self.monitor.latest[name]
                epoch_metrics.update(stable_rank=d.metrics.get("stable_rank"), effective_rank=d.metrics.get("effective_rank"),
                                     verdict=d.worst)
                break
        self.logger.log(self.global_step, {"epoch": self.epoch, **{k: v for k, v in epoch_metrics.items() if v is not None}}, kind="epoch")
        self._write(format_epoch_line(self.epoch, self.num_epochs, epoch_metrics))
        self._save()

    # ---- the end -------------------------------------------------------------------------

    def final_evaluation(self) -> dict[str, float]:
        """kNN of the trained backbone, raw pixels and the untrained backbone (same k, τ)."""
        from collapselab.evaluation import evaluate

        if self.eval_set is None:
            return {}
        c = self.config
        scores = evaluate(self.method.eval_backbone, c.data.dataset, protocols=("knn",), baselines=("pixels", "random"),
                          k=c.eval.knn_k, temperature=c.eval.knn_temperature, seed=c.train.seed,
                          transform=self.normalizer, data_dir=c.data.data_dir, download=c.data.download)
        return {**scores, "knn_k": c.eval.knn_k, "knn_temperature": c.eval.knn_temperature}

    def _write_summary(self, status: str, wall: float, final: dict[str, float] | None, error: str | None = None) -> dict[str, Any]:
        c = self.config
        final_verdict = self.monitor.final_verdict()
        summary: dict[str, Any] = {
            "status": status,
            "method": c.method.name,
            "dataset": c.data.dataset,
            "backbone": c.model.backbone,
            "recipe": c.run.recipe,
            "epochs_completed": self.epoch,
            "epochs": self.num_epochs,
            "total_steps": self.total_steps,
            "budget": self.budget,
            "steps": self.global_step,
            "global_batch_size": c.data.batch_size * self.world,
            "world_size": self.world,
            "device": str(self.device),
            "augment": {"recipe": self.augment.name, "backend": self.augment_backend},
            "fast_path": {
                "amp": str(self.amp).replace("torch.", "") if self.amp is not None else "off",
                "channels_last": self.channels_last,
                "compile": self.compiled is not None or self.compile_time_s is not None,
                "compile_reason": self.compile_reason,
                "compile_time_s": self.compile_time_s,
            },
            "threads": self.governor.state() if self.governor is not None else {
                "enabled": False, "reason": self.threads_fixed_reason, "max_threads": self.max_threads,
                "threads": self.max_threads},
            "wall_time_s": wall,
            "train_time_s": self.train_time,
            "throughput_img_per_s": self.images_seen / self.train_time if self.train_time > 0 else None,
            "diagnosis": {name: d.to_dict() for name, d in self.monitor.latest.items()},
            "alarms": [a.__dict__ for a in self.monitor.alarms],
            "first_unhealthy": {k: dict(v) for k, v in self.monitor.first_unhealthy.items()},
            "final_verdict": final_verdict,
            "collapse_loss": self.monitor.collapse_loss,
            "collapse_hints": self.hints,
            "worst_verdict": worst_level(v["level"] for modes in final_verdict.values() for v in modes.values()),
            "eval": {**(final or {}), "step": self.global_step},  # the weights these scores are of
        }
        if self.stop_reason:
            summary["stop_reason"] = self.stop_reason
        if error:
            summary["error"] = error
        if self.main:  # keeps what other commands recorded (collapselab eval's scores)
            folder = RunFolder(self.run_dir)
            summary = folder.write_summary(summary, drop=self._stale_ending(folder, summary))
        return summary

    @staticmethod
    def _stale_ending(folder: RunFolder, summary: dict[str, Any]) -> list[str]:
        """An earlier try's ``error`` / ``stop_reason`` (a resumed run that failed or was stopped
        before) must not survive in a summary that does not set them (the merge keeps keys it
        is not given): they move to ``summary["earlier_ends"]`` (status, steps and the reason of
        each); returns the keys for :meth:`RunFolder.write_summary` to drop."""
        previous = folder.summary()
        stale = [k for k in ("error", "stop_reason") if k in previous and k not in summary]
        if stale:
            summary["earlier_ends"] = [
                *(previous.get("earlier_ends") or []),
                {"status": previous.get("status"), "steps": previous.get("steps"), **{k: previous[k] for k in stale}},
            ]
        return stale


# --------------------------------------------------------------------------- entry point


def auto_recipe(config: Config) -> tuple[str | None, dict[str, Any], str]:
    """(recipe, adaptation, why) for ``config``'s dataset, which has no recipe of its own: by the
    training images' size and the device (:func:`~collapselab.config.pick_recipe`), adapted to
    their channels (:func:`~collapselab.config.recipe_adaptation`)."""
    d = config.data
    images = get_dataset(d.dataset, "train", data_dir=d.data_dir, download=d.download).images
    side = int(max(images.shape[-2:]))
    device = _resolve_device(config.train.device, "train.device")
    picked, why = pick_recipe(config.method.name, side, device.type)
    adapt, adapt_why = recipe_adaptation(int(images.shape[1]))
    if adapt_why is not None and picked is not None:
        why = f"{why}; {adapt_why}"
    return picked, adapt, f"{d.dataset} has no {config.method.name} recipe; {why}"


# keys a resumed run cannot change: the data order, LR scaling, model shape or objective depend on them
FIXED_ON_RESUME = ("method", "model", "data.dataset", "data.batch_size", "data.augment", "data.normalize",
                   "optim.name", "optim.lr_scaling", "optim.predictor_lr_ratio", "optim.predictor_lr_schedule",
                   "train.seed")
LENGTH_KEYS = ("train.epochs", "train.steps", "train.time_budget")


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def fixed_key_differences(saved: dict[str, Any], config: Config) -> list[str]:
    """``key a -> b`` for each leaf under :data:`FIXED_ON_RESUME` where ``saved`` (the config
    dict stored in a checkpoint) and ``config`` differ; empty when ``saved`` is empty or not a
    valid config (a checkpoint of an older version: nothing to compare)."""
    if not saved:
        return []
    try:
        was = config_from_dict(saved)
    except InputError:
        return []
    if was.method.name != config.method.name:  # another method: its other settings differ anyway
        return [f"method.name {was.method.name!r} -> {config.method.name!r}"]
    out = []
    for key in FIXED_ON_RESUME:
        a, b = _flat(_dotted(was, key), key), _flat(_dotted(config, key), key)
        out += [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return out if len(out) <= 4 else [*out[:3], f"and {len(out) - 3} more"]


def _dotted(config: Config, key: str) -> Any:
    value: Any = to_dict(config)
    for part in key.split("."):
        value = value[part]
    return value


def check_resume_changes(saved: Config, new: Config, run_dir: Path) -> None:
    """A resumed run may extend its length and change logging, evaluation or monitoring; a change
    of what defines the run (method, model, data, batch size, seed, optimiser) is an error, and a
    new length says that the LR and EMA schedules are re-planned over it from the current step."""
    moved = [key for key in ("run.out_dir", "run.name") if _dotted(saved, key) != _dotted(new, key)]
    if moved:
        raise InputError(
            f"--resume {run_dir}: {' and '.join(moved)} cannot change on resume (a resumed run stays in "
            f"its folder); drop --name / {', '.join(moved)}, or copy the folder to resume it elsewhere")
    changed = [key for key in FIXED_ON_RESUME if _dotted(saved, key) != _dotted(new, key)]
    if changed:
        raise InputError(
            f"--resume {run_dir}: {', '.join(changed)} cannot change on resume (the checkpoint, the data "
            "order and the schedules were made with the saved values); start a new run for that")
    lengths = [f"{key} {_dotted(saved, key)} -> {_dotted(new, key)}" for key in LENGTH_KEYS
               if _dotted(saved, key) != _dotted(new, key)]
    if lengths and os.environ.get("RANK", "0") == "0":
        print(f"note: {', '.join(lengths)}: the LR and EMA schedules are re-planned over the new length "
              "from the current step, so the run differs from one planned with it from the start",
              file=sys.stderr)


def default_run_name(config: Config) -> str:
    return f"{config.method.name}_{config.data.dataset}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def resumed_config(resume: str | os.PathLike, config: str | os.PathLike | Mapping[str, Any] | None = None,
                   overrides: Iterable[str] | str = (), **kwargs: Any) -> tuple[Config, Path]:
    """The config a ``--resume`` of run folder ``resume`` trains with (its ``config.yaml``, with
    ``config`` / ``overrides`` / ``kwargs`` layered over it and checked by
    :func:`check_resume_changes`) and the run folder."""
    folder = RunFolder(resume)
    run_dir = folder.path
    if not folder.config_path.is_file():
        raise InputError(f"--resume {run_dir}: no config.yaml there (is it a run folder?)")
    if not folder.has_checkpoint():
        raise CheckpointError(f"--resume {run_dir}: no checkpoints/{LAST} to resume from")
    try:
        cfg = config_from_dict(folder.config_dict())
    except InputError as err:
        raise InputError(f"--resume {run_dir}: {err}") from err
    overrides = list(overrides)
    if config is not None or overrides or kwargs:
        saved = cfg
        cfg = load_config(cfg.method.name, cfg.data.dataset, config_file=config, overrides=overrides,
                          base=to_dict(cfg), **kwargs)
        check_resume_changes(saved, cfg, run_dir)
    return cfg, run_dir


def train(
    method: str | None = None,
    dataset: str | None = None,
    /,
    *,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    overrides: Iterable[str] | str = (),
    resume: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Run:
    """Train a method on a dataset and return the :class:`Run`.

    ``config``: a YAML file (or a mapping of sections, ``{"optim": {"lr": 0.1}}``) layered over
    the shipped recipe; ``overrides``: dotted strings (``"optim.lr=0.1"``; one string is one
    override); ``kwargs``: shorthands (``epochs=20``, ``optim__lr=0.1``,
    ``method={"predictor": "none"}``; NumPy scalars are taken as Python numbers). ``resume``: a
    run folder to continue from its ``checkpoints/last.pt`` with its saved config (overrides may
    change e.g. ``train.epochs``); a ``method`` or ``dataset`` named with it must be the run's.
    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` and ``summary.json`` under
    ``run.out_dir/run.name``.
    """
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    # train(method="byol", dataset="digits") names them; method={...} is the method section
    if isinstance(kwargs.get("method"), str):
        method = kwargs.pop("method")
    if isinstance(kwargs.get("dataset"), str):
        dataset = kwargs.pop("dataset")
    if resume is not None:
        cfg, run_dir = resumed_config(resume, config, overrides, **kwargs)
        check_same_run(to_dict(cfg), method, dataset, run_dir, how="resume")
        return Trainer(cfg, run_dir, resume=True).fit()
    cfg = load_config(method, dataset, config_file=config, overrides=overrides, **kwargs)
    if cfg.run.recipe is None:  # a dataset without a recipe: pick one by image size and device
        picked, adapt, why = auto_recipe(cfg)
        if picked is not None:
            cfg = load_config(method, dataset, config_file=config, overrides=overrides, recipe=picked,
                              recipe_layer=adapt, **kwargs)
        if os.environ.get("RANK", "0") == "0":
            print(f"recipe: {picked} ({why}; choose with run.recipe=...)" if picked is not None
                  else f"recipe: none ({why}); the schema defaults apply")
    name = cfg.run.name or default_run_name(cfg)
    run_dir = Path(cfg.run.out_dir) / name
    if (run_dir / "checkpoints" / LAST).exists():
        raise InputError(f"{run_dir} already holds a run; continue it with --resume {run_dir} (Python: "
                         f"resume={str(run_dir)!r}) or choose another run name (--name, run.name)")
    return Trainer(cfg, run_dir).fit()
