"""Sweeps: a grid of training runs, each in its own run folder, resumable, with one table.

A sweep is a CONFIG (a YAML file, a shipped recipe name or ``METHOD:DATASET``), the Cartesian
product of ``key=v1,v2,...`` lists (optionally times ``train.seed=0..S-1`` and a preset such
as ``mechanisms``) and fixed ``key=value`` overrides. Cell ``c`` of sweep ``NAME`` is the run
folder ``OUT/NAME/c`` (``run.out_dir=OUT/NAME run.name=c``), so a cell can be trained here
(in-process or by worker processes) or elsewhere from the printed ``collapselab train``
command, and read back the same way (:class:`~collapselab.runs.RunFolder`).

``OUT/NAME/`` holds ``sweep.json`` (the grid: what a rerun or ``--collect`` checks and reads),
``sweep.csv`` (one row per cell) and ``report.html`` (the finished cells side by side).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collapselab._validation import InputError
from collapselab.runs import RunFolder, write_atomic

SWEEP_FILE = "sweep.json"
CSV_FILE = "sweep.csv"
REPORT_FILE = "report.html"
LOG_FILE = "sweep.log"
SEED_KEY = "train.seed"
THREADS_KEY = "train.threads"
RESERVED_KEYS = ("run.out_dir", "run.name")
DISPLAY_KEYS = ("log.progress", "log.tensorboard", "log.wandb_project", "log.wandb_mode", "log.report")
"""Fixed keys that change how a run is shown (progress bar, TensorBoard/W&B mirrors of the logged
numbers, the HTML report), not what it trains or records in metrics.jsonl and summary.json: they
are left out of the grid's identity, so a rerun may change them. ``log.every`` is not one of them
(it sets which steps are recorded), nor ``train.threads`` (the thread count can change the order
of float sums)."""
PRESETS = ("mechanisms",)
MECHANISM_KEYS = ("method.predictor", "method.stop_gradient", "method.ema")
FINISHED = ("completed", "stopped")  # a run that ended on its own: a rerun skips it
EVAL_COLUMNS = ("knn_top1", "baseline_pixels_knn_top1", "baseline_random_knn_top1")
MAX_NAME = 100
_SAFE_VALUE = re.compile(r"[^A-Za-z0-9._+-]+")


# --------------------------------------------------------------------------- the grid (pure)


def split_values(text: str) -> list[str]:
    """``"0.1,0.3"`` → ``["0.1", "0.3"]``: split at the commas outside brackets, braces and
    quotes, so ``[0.2,1.0],[0.4,1.0]`` is two lists and ``'a,b'`` one string. Each value is kept
    as written and parsed later exactly like a ``collapselab train`` override."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    if quote or depth:
        raise InputError(f"unbalanced quotes or brackets in {text!r}")
    return values


def parse_grid(tokens: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``key=v1,v2`` tokens → (swept keys {key: [values]}, fixed ``key=value`` overrides).

    A key with one value is a fixed override of every cell; keys are canonical dotted keys
    (``lr`` → ``optim.lr``, as train reads them)."""
    axes: dict[str, list[str]] = {}
    fixed: dict[str, str] = {}
    for token in tokens:
        key, sep, text = token.partition("=")
        if not sep or not key:
            raise InputError(f"{token!r} is not of the form key=v1,v2,... (e.g. optim.lr=0.1,0.3)")
        key = canonical_key(key)
        if key in axes or key in fixed:
            raise InputError(f"{key} is given twice; list all its values once: {key}=v1,v2")
        if key in RESERVED_KEYS:
            raise InputError(f"{key} is set by the sweep for each cell (use --out and --name)")
        values = split_values(text)
        if any(not v.strip() for v in values):
            raise InputError(f"{token!r} has an empty value")
        if len(set(values)) != len(values):
            raise InputError(f"{token!r} lists a value twice")
        if len(values) == 1:
            fixed[key] = values[0]
        else:
            axes[key] = values
    return axes, [f"{k}={v}" for k, v in fixed.items()]


def canonical_key(key: str) -> str:
    """The dotted config key a train override names (``lr`` → ``optim.lr``)."""
    from collapselab.config import parse_overrides

    node: Any = parse_overrides([f"{key}=0"])
    parts = []
    while isinstance(node, dict) and len(node) == 1:
        name, node = next(iter(node.items()))
        parts.append(str(name))
    return ".".join(parts) or key


def expand_grid(axes: Mapping[str, Sequence[str]], seeds: int | None = None) -> list[dict[str, str]]:
    """The Cartesian product of ``axes`` (first key slowest), then seeds ``train.seed=0..S-1``
    fastest: one ``{key: value}`` per cell, in a fixed order."""
    axes = dict(axes)
    if seeds is not None:
        if seeds < 1:
            raise InputError(f"--seeds must be >= 1, got {seeds}")
        if SEED_KEY in axes:
            raise InputError(f"give the seeds either as --seeds or as {SEED_KEY}=..., not both")
        if seeds > 1:
            axes[SEED_KEY] = [str(s) for s in range(seeds)]
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]


def _labels(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last part, or the whole dotted key where two keys share their last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last, strict=True)}


def cell_name(values: Mapping[str, str]) -> str:
    """A cell's folder name: ``predictor=none,ema=off,seed=1`` (the last part of each key, the
    whole key where two share it; as Hydra names multirun folders). Characters other than
    letters, digits and ``._+-`` in a value become ``_``, and then (or past 100 characters) an
    8-hex hash of the exact values is appended, so distinct cells never share a folder.
    ``base`` for a grid of one cell."""
    if not values:
        return "base"
    labels = _labels(list(values))
    parts, lossy = [], False
    for key, value in values.items():
        slug = _SAFE_VALUE.sub("_", str(value)).strip("_") or "_"
        lossy |= slug != str(value)
        parts.append(f"{labels[key]}={slug}")
    name = ",".join(parts)
    if lossy or len(name) > MAX_NAME:
        digest = hashlib.sha1(json.dumps(list(values.items())).encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME]}-{digest}"
    return name


def default_name(config: str, preset: str | None = None) -> str:
    """A sweep's default folder name: the CONFIG's (a file's stem; ``/`` and ``:`` as ``-``),
    plus ``-<preset>``."""
    text = Path(config).stem if Path(config).is_file() else config.removesuffix(".yaml").replace("/", "-").replace(":", "-")
    return (_SAFE_VALUE.sub("_", text).strip("._") or "sweep") + (f"-{preset}" if preset else "")


# --------------------------------------------------------------------------- CONFIG


@dataclass(frozen=True)
class BaseConfig:
    """What a sweep's CONFIG means to ``collapselab train``: METHOD [DATASET], a ``--config``
    file and overrides (``run.recipe=...``)."""

    spec: str
    method: str | None = None
    dataset: str | None = None
    config_file: str | None = None
    overrides: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [n for n in (self.method, self.dataset if self.method else None) if n]

    def load(self, overrides: Sequence[str] = ()) -> Any:
        """The validated :class:`~collapselab.config.Config` of this base with ``overrides``."""
        from collapselab.config import load_config

        return load_config(self.method, self.dataset, config_file=self.config_file,
                           overrides=[*self.overrides, *overrides])


def _method_prefix(stem: str) -> tuple[str | None, str | None]:
    from collapselab.methods import METHODS

    for method in sorted(METHODS, key=len, reverse=True):
        if stem.startswith(method + "_"):
            return method, stem[len(method) + 1:]
    return (stem, None) if stem in METHODS else (None, None)


def resolve_config(spec: str) -> BaseConfig:
    """CONFIG → :class:`BaseConfig`. Tried in order: an existing file (a YAML config, layered
    as ``--config``; it may set method.name and data.dataset); ``METHOD:DATASET``; a shipped
    recipe name (``byol_digits`` → ``train byol digits``; ``small/simclr_16px``, a whole recipe,
    → ``train simclr run.recipe=small/simclr_16px``; ``batch1024/byol_cifar10``, a layer, →
    ``train byol cifar10 --config batch1024/byol_cifar10.yaml``)."""
    from collapselab.config import _read_yaml, recipe_dir
    from collapselab.data import list_datasets
    from collapselab.methods import method_class

    if Path(spec).is_file():
        return BaseConfig(spec, config_file=spec)
    if ":" in spec:
        method, _, dataset = spec.partition(":")
        method_class(method)  # unknown method: names the closest
        if dataset not in list_datasets():
            near = difflib.get_close_matches(dataset, list_datasets(), n=1)
            raise InputError(f"CONFIG {spec!r}: unknown dataset {dataset!r}"
                             f"{f'; did you mean {near[0]!r}?' if near else ''} (see `collapselab datasets`)")
        return BaseConfig(spec, method=method, dataset=dataset)
    name = spec.removesuffix(".yaml")
    shipped = sorted(str(p.relative_to(recipe_dir()).with_suffix("")) for p in recipe_dir().rglob("*.yaml"))
    if name not in shipped:
        near = difflib.get_close_matches(name, shipped, n=1)
        raise InputError(f"CONFIG {spec!r} is not a file, a shipped recipe or METHOD:DATASET"
                         f"{f'; did you mean {near[0]!r}?' if near else ''} (recipes: `collapselab methods`)")
    folder, _, stem = name.rpartition("/")
    method, dataset = _method_prefix(stem)
    if method is None and folder:
        method, dataset = _method_prefix(folder.rsplit("/", 1)[-1])
    if method is None:
        raise InputError(f"CONFIG {spec!r}: cannot tell its method from the name; pass the recipe "
                         "file's path (with method.name set) or METHOD:DATASET")
    if not folder:
        return BaseConfig(spec, method=method, dataset=dataset)
    if "model" in _read_yaml(recipe_dir() / f"{name}.yaml"):  # a whole recipe (small/...)
        return BaseConfig(spec, method=method, overrides=(f"run.recipe={name}",))
    return BaseConfig(spec, method=method, dataset=dataset, config_file=f"{name}.yaml")  # a layer


def mechanisms_axes(base: BaseConfig) -> dict[str, list[str]]:
    """The ``mechanisms`` preset: predictor ∈ {the CONFIG's, none} × stop_gradient ∈ {true,
    false} × ema ∈ {the CONFIG's (0.99 when off), off} (``mlp`` stands in for a default of
    ``none``). An error for a method without these switches."""
    from dataclasses import fields

    from collapselab.methods import METHODS
    from collapselab.methods.base import ema_base

    config = base.load()
    method = config.method
    have = {f.name for f in fields(method)}
    if not {k.split(".")[1] for k in MECHANISM_KEYS} <= have:
        able = [name for name, cls in METHODS.items()
                if {k.split(".")[1] for k in MECHANISM_KEYS} <= {f.name for f in fields(cls.config_class)}]
        raise InputError(f"--preset mechanisms sweeps method.predictor, stop_gradient and ema, which "
                         f"{method.name} does not have (methods that do: {', '.join(able)})")
    predictor = str(method.predictor)
    momentum = ema_base(method.ema)
    return {
        "method.predictor": [predictor, "none"] if predictor != "none" else ["none", "mlp"],
        "method.stop_gradient": ["true", "false"],
        "method.ema": [str(momentum if momentum is not None else 0.99), "off"],
    }


# --------------------------------------------------------------------------- the sweep


@dataclass
class Cell:
    """One grid point: its folder name, swept values, train overrides and, for an invalid
    combination, why."""

    name: str
    values: dict[str, str]
    overrides: list[str]
    dir: Path
    invalid: str | None = None
    seed: int | None = None


@dataclass
class CellResult:
    """What became of a cell: ``status`` (completed, stopped, failed, interrupted, invalid,
    missing, incomplete), ``action`` this time (ran, resumed, skipped, none) and its scores."""

    cell: Cell
    status: str
    action: str = "none"
    error: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    """A grid of runs of CONFIG (see the module docstring).

    ``axes``: swept keys and their values as written; ``fixed``: ``key=value`` overrides of
    every cell; ``seeds``: add ``train.seed=0..seeds-1``; ``preset``: add a preset's axes;
    ``out``/``name``: the sweep lives in ``out/name`` (default name: the CONFIG and preset)."""

    config: str
    axes: dict[str, list[str]] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    seeds: int | None = None
    preset: str | None = None
    out: str = "runs"
    name: str | None = None
    base: BaseConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            near = difflib.get_close_matches(self.preset, PRESETS, n=1)
            raise InputError(f"unknown preset {self.preset!r}{f'; did you mean {near[0]!r}?' if near else ''} "
                             f"(presets: {', '.join(PRESETS)})")
        if self.seeds is not None and any(f.startswith(SEED_KEY + "=") for f in self.fixed):
            raise InputError(f"give the seeds either as --seeds or as {SEED_KEY}=..., not both")
        if self.name is None:
            self.name = default_name(self.config, self.preset)
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise InputError(f"--name must be a folder name, got {self.name!r}")
        self.base = resolve_config(self.config)

    @property
    def dir(self) -> Path:
        return Path(self.out) / str(self.name)

    def definition(self) -> dict[str, Any]:
        """The grid as ``sweep.json`` records it; a rerun in the same folder must match it."""
        return {"config": self.config, "axes": self.axes, "fixed": self.fixed, "seeds": self.seeds,
                "preset": self.preset}

    def all_axes(self) -> dict[str, list[str]]:
        axes = dict(self.axes)
        if self.preset == "mechanisms":
            clash = [k for k in (*MECHANISM_KEYS, "method.name") if k in axes or any(f.startswith(k + "=") for f in self.fixed)]
            if clash:
                raise InputError(f"--preset mechanisms sets {', '.join(MECHANISM_KEYS)} on the CONFIG's method; "
                                 f"drop {', '.join(clash)}")
            axes.update(mechanisms_axes(self.base))
        return axes

    def cells(self) -> list[Cell]:
        """Every cell, each config checked: an unknown key, unknown method or dataset is an
        :class:`InputError` (nothing should run); a combination the config refuses makes that
        cell ``invalid`` with the one-line reason."""
        from collapselab.config import Config, check_keys, parse_overrides
        from collapselab.data import list_datasets
        from collapselab.methods import method_class

        try:
            base = self.base.load()
            base_method, base_seed = base.method.name, base.train.seed
        except InputError as err:
            raise InputError(f"CONFIG {self.config!r}: {err}") from err
        cells = []
        for values in expand_grid(self.all_axes(), self.seeds):
            name = cell_name(values)
            overrides = [f"{k}={v}" for k, v in values.items()]
            layer = parse_overrides([*self.fixed, *overrides])
            method = str((layer.get("method") or {}).get("name") or base_method)
            check_keys(layer, Config(method=method_class(method).config_class()), "the sweep")
            cell = Cell(name, values, overrides, self.dir / name, seed=int(values.get(SEED_KEY, base_seed)))
            try:
                config = self.base.load([*self.fixed, *overrides, *self.run_overrides(cell)])
            except InputError as err:
                cell.invalid = str(err).splitlines()[0]
            else:
                if config.data.dataset not in list_datasets():
                    near = difflib.get_close_matches(config.data.dataset, list_datasets(), n=1)
                    raise InputError(f"unknown dataset {config.data.dataset!r}"
                                     f"{f'; did you mean {near[0]!r}?' if near else ''} (see `collapselab datasets`)")
                cell.seed = config.train.seed
            cells.append(cell)
        return cells

    def run_overrides(self, cell: Cell) -> list[str]:
        return [f"run.out_dir={self.dir}", f"run.name={cell.name}"]

    def train_args(self, cell: Cell, extra: Sequence[str] = ()) -> list[str]:
        """``collapselab train`` arguments that train ``cell`` into its folder."""
        args = [*self.base.names(), *self.base.overrides, *self.fixed, *cell.overrides, *extra,
                *self.run_overrides(cell)]
        return args + (["--config", self.base.config_file] if self.base.config_file else [])

    def command(self, cell: Cell, program: str = "collapselab") -> str:
        """The shell command that trains ``cell`` (each argument quoted with :func:`shlex.quote`);
        ``--auto-resume`` makes a requeued job continue its cell (or leave a finished one)."""
        args = [*program.split(), "train", *self.train_args(cell), "--auto-resume"]
        return " ".join(shlex.quote(a) for a in args)

    # ---- sweep.json ------------------------------------------------------------------------

    def write_definition(self, cells: Sequence[Cell]) -> Path:
        """Write ``sweep.json``; an error when the folder already holds a different grid."""
        self.check_definition()
        record = {**self.definition(), "name": self.name, "out": self.out,
                  "cells": [{"name": c.name, "values": c.values, "invalid": c.invalid} for c in cells]}
        return write_atomic(self.dir / SWEEP_FILE, json.dumps(record, indent=2) + "\n")

    def check_definition(self) -> None:
        """An ``InputError`` when the folder holds another grid (:func:`grid_identity`)."""
        saved = read_definition(self.dir)
        if saved is None:
            return
        if grid_identity(saved) != grid_identity(self.definition()):
            raise InputError(f"{self.dir} holds another sweep ({SWEEP_FILE}: {describe(saved)}); "
                             "rerun that grid, or give this one another --name")

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> Sweep:
        """The sweep recorded in ``path/sweep.json``."""
        path = Path(path)
        saved = read_definition(path)
        if saved is None:
            raise InputError(f"{path}: no {SWEEP_FILE} (run the sweep or --print-commands first)")
        return cls(saved["config"], axes={k: list(v) for k, v in saved["axes"].items()}, fixed=list(saved["fixed"]),
                   seeds=saved["seeds"], preset=saved["preset"], out=str(path.parent), name=path.name)


def read_definition(path: str | os.PathLike) -> dict[str, Any] | None:
    """``path/sweep.json`` as a dict (None when absent)."""
    file = Path(path) / SWEEP_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or "config" not in data or "axes" not in data:
        raise InputError(f"{file}: not a sweep definition")
    return data


def grid_identity(definition: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two sweep definitions the same grid: the config, the axes in their order (it
    names the cells), seeds, preset and the fixed overrides in their order, less those of
    :data:`DISPLAY_KEYS`."""
    fixed = [f for f in definition.get("fixed") or [] if canonical_key(str(f).partition("=")[0]) not in DISPLAY_KEYS]
    axes = [(k, list(v)) for k, v in (definition.get("axes") or {}).items()]  # their order names the cells
    return {"config": definition.get("config"), "axes": axes, "fixed": fixed,
            "seeds": definition.get("seeds"), "preset": definition.get("preset")}


def describe(definition: Mapping[str, Any]) -> str:
    parts = [str(definition.get("config")), *(f"{k}={','.join(v)}" for k, v in (definition.get("axes") or {}).items()),
             *(definition.get("fixed") or [])]
    if definition.get("seeds"):
        parts.append(f"--seeds {definition['seeds']}")
    if definition.get("preset"):
        parts.append(f"--preset {definition['preset']}")
    return " ".join(parts)


# --------------------------------------------------------------------------- reading cells


def cell_state(cell: Cell) -> CellResult:
    """A cell as its folder stands: invalid, missing, incomplete (a folder without summary)
    or the summary's status, with the scores for ``sweep.csv``."""
    if cell.invalid is not None:
        return CellResult(cell, "invalid", error=cell.invalid)
    folder = RunFolder(cell.dir)
    if not cell.dir.is_dir() or not any((cell.dir / f).exists() for f in ("summary.json", "config.yaml", "checkpoints")):
        return CellResult(cell, "missing")
    try:
        summary = folder.summary()
    except InputError as err:
        return CellResult(cell, "incomplete", error=str(err).splitlines()[0])
    if not summary:
        return CellResult(cell, "incomplete")
    status = str(summary.get("status", "incomplete"))
    error = summary.get("error") if status not in FINISHED else None  # a stale one from an earlier try
    return CellResult(cell, status,
                      error=str(error).splitlines()[0] if error else None, scores=scores(folder, summary))


def scores(folder: RunFolder, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers ``sweep.csv`` shows for a run: kNN and its baselines, final loss (the last
    epoch's mean, else the last logged step's), worst verdict, steps, training time."""
    evaluation = summary.get("eval") or {}
    out: dict[str, Any] = {key: evaluation.get(key) for key in EVAL_COLUMNS}
    rows = folder.rows("epoch") or folder.rows("train")
    out["final_loss"] = rows[-1].get("loss") if rows else None
    for key in ("worst_verdict", "steps", "train_time_s"):
        out[key] = summary.get(key)
    return out


def csv_columns(sweep_keys: Sequence[str]) -> list[str]:
    return ["cell", *sweep_keys, "seed", "status", "error", *EVAL_COLUMNS, "final_loss", "worst_verdict",
            "steps", "train_time_s"]


def write_csv(path: str | os.PathLike, results: Sequence[CellResult], sweep_keys: Sequence[str]) -> Path:
    """``sweep.csv``: one row per cell (atomic)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(sweep_keys), lineterminator="\n")
    writer.writeheader()
    for r in results:
        row = {"cell": r.cell.name, "seed": r.cell.seed, "status": r.status, "error": r.error or "",
               **{k: r.cell.values.get(k, "") for k in sweep_keys}, **r.scores}
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return write_atomic(path, buffer.getvalue())


def write_sweep_report(sweep: Sweep, results: Sequence[CellResult], warn: Callable[[str], None]) -> Path | None:
    """``report.html`` of the finished cells; a missing report module or a failing report costs
    a warning, never the sweep."""
    finished = [r.cell.dir for r in results if r.status in FINISHED]
    if not finished:
        return None
    try:
        from collapselab.report import write_report

        return Path(write_report(finished, out=sweep.dir / REPORT_FILE, title=f"sweep {sweep.name}: {describe(sweep.definition())}"))
    except Exception as err:  # the sweep's runs and table are on disk whatever the report does
        warn(f"warning: {sweep.dir / REPORT_FILE} not written ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        return None


# --------------------------------------------------------------------------- running


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run_in_process(sweep: Sweep, cell: Cell, resume: bool, warn: Callable[[str], None]) -> str | None:
    """Train ``cell`` here (``collapselab.engine.trainer.train``); the error's first line, or None.
    Writes the cell's own ``report.html`` (``log.report``), failed training included, as
    ``collapselab train`` does in a worker; a failing report costs a warning, not the cell."""
    from collapselab.engine.trainer import TrainingError, train

    try:
        if resume:
            run = train(resume=cell.dir)
        else:
            base = sweep.base
            run = train(base.method, base.dataset, config=base.config_file,
                        overrides=[*base.overrides, *sweep.fixed, *cell.overrides, *sweep.run_overrides(cell)])
    except Exception as err:
        if isinstance(err, TrainingError):  # its summary is written: report it, as a worker does
            from collapselab.report import write_unfinished_report

            write_unfinished_report(cell.dir, warn)
        return _first_line(err)
    if run.config.log.report:
        from collapselab.report import write_run_report

        write_run_report(run.dir, warn)
    return None


def worker_command(sweep: Sweep, cell: Cell, resume: bool, threads: int | None) -> list[str]:
    """``python -m collapselab train ...`` for a worker process."""
    extra = [f"{THREADS_KEY}={threads}"] if threads is not None else []
    prefix = [sys.executable, "-m", "collapselab", "train"]
    if resume:
        return [*prefix, *extra, "--resume", str(cell.dir)]
    return [*prefix, *sweep.train_args(cell, extra)]


def run_in_worker(sweep: Sweep, cell: Cell, resume: bool, threads: int | None) -> str | None:
    """Train ``cell`` in a worker process, its output in ``<cell>/sweep.log``; None when it exits 0."""
    command = worker_command(sweep, cell, resume, threads)
    cell.dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        with open(cell.dir / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    except OSError as err:
        return f"cannot start the worker: {_first_line(err)}"
    if code == 0:
        return None
    lines = (cell.dir / LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    said = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(("error:", "training failed:"))]
    return said[-1] if said else f"worker exited with code {code} (see {cell.dir / LOG_FILE})"


def worker_threads(sweep: Sweep, parallel: int, cpus: int | None = None) -> int | None:
    """``train.threads`` for each of ``parallel`` workers: the CPUs shared out (at least 1),
    or None when the command line sets train.threads."""
    if THREADS_KEY in sweep.axes or any(f.startswith(THREADS_KEY + "=") for f in sweep.fixed):
        return None
    if cpus is None:
        from collapselab.engine.threads import available_cpus

        cpus = available_cpus()
    return max(1, cpus // parallel)


def run_sweep(
    sweep: Sweep,
    parallel: int = 1,
    *,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    cpus: int | None = None,
) -> list[CellResult]:
    """Run every cell of ``sweep`` not yet finished and write ``sweep.json``, ``sweep.csv`` and
    ``report.html``. A finished cell (completed or stopped) is skipped, one with a checkpoint
    resumed, any other started; a cell that fails is recorded and the others go on.
    ``parallel`` > 1 trains in that many worker processes."""
    if parallel < 1:
        raise InputError(f"--parallel must be >= 1, got {parallel}")
    cells = sweep.cells()
    if all(c.invalid for c in cells):
        raise InputError(f"every cell of the sweep is invalid, e.g. {cells[0].name}: {cells[0].invalid}")
    sweep.write_definition(cells)
    results: dict[str, CellResult] = {}
    todo: list[tuple[Cell, bool]] = []
    for cell in cells:
        state = cell_state(cell)
        if state.status in ("invalid", *FINISHED):
            state.action = "skipped" if state.status in FINISHED else "none"
            results[cell.name] = state
        else:
            todo.append((cell, RunFolder(cell.dir).has_checkpoint()))
    threads = worker_threads(sweep, parallel, cpus) if parallel > 1 else None
    lock = threading.Lock()
    counter = itertools.count(1)

    def one(cell: Cell, resume: bool) -> None:
        with lock:
            log(f"[{next(counter)}/{len(todo)}] {'resuming' if resume else 'training'} {cell.name}")
        start = time.perf_counter()
        error = (run_in_worker(sweep, cell, resume, threads) if parallel > 1
                 else run_in_process(sweep, cell, resume, warn))
        result = cell_state(cell)
        result.action = "resumed" if resume else "ran"
        if error is not None and result.status in (*FINISHED, "missing", "incomplete"):
            result.status = "failed"
        if error is not None:
            result.error = result.error or error
        with lock:
            results[cell.name] = result
            log(f"    {cell.name}: {result.status} in {time.perf_counter() - start:.1f} s"
                + (f" ({result.error})" if result.status == "failed" and result.error else ""))

    try:
        if parallel > 1:
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                for future in [pool.submit(one, cell, resume) for cell, resume in todo]:
                    future.result()
        else:
            for cell, resume in todo:
                one(cell, resume)
    finally:
        ordered = [results.get(c.name) or cell_state(c) for c in cells]
        write_csv(sweep.dir / CSV_FILE, ordered, sweep_keys(sweep))
    write_sweep_report(sweep, ordered, warn)
    return ordered


def collect(sweep: Sweep, *, warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[CellResult]:
    """Read the cells' folders (trained anywhere) into ``sweep.csv`` and ``report.html``; runs nothing."""
    results = [cell_state(c) for c in sweep.cells()]
    write_csv(sweep.dir / CSV_FILE, results, sweep_keys(sweep))
    write_sweep_report(sweep, results, warn)
    return results


def sweep_keys(sweep: Sweep) -> list[str]:
    """The swept keys that get a column of their own (``train.seed`` is the ``seed`` column)."""
    return [k for k in sweep.all_axes() if k != SEED_KEY]


def print_commands(sweep: Sweep, program: str = "collapselab") -> list[str]:
    """One ``collapselab train`` command per valid cell (invalid ones as ``#`` comments);
    writes ``sweep.json`` so that ``--collect`` knows the grid."""
    cells = sweep.cells()
    sweep.write_definition(cells)
    return [f"# {c.name}: invalid: {c.invalid}" if c.invalid else sweep.command(c, program) for c in cells]


def counts(results: Iterable[CellResult]) -> dict[str, int]:
    """How many cells have each status, plus ``skipped`` (finished before this invocation)."""
    out: dict[str, int] = {}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
        if r.action == "skipped":
            out["skipped"] = out.get("skipped", 0) + 1
    return out


def table(results: Sequence[CellResult]) -> str:
    """The final text table: cell, status, kNN, final loss, worst verdict, error."""
    def pct(v: Any) -> str:
        return f"{100 * v:.1f}" if isinstance(v, int | float) else "-"

    def num(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, int | float) else "-"

    width = max([4, *(len(r.cell.name) for r in results)])
    lines = [f"{'cell':<{width}}  {'status':<10}  {'kNN %':>6}  {'loss':>8}  verdict"]
    for r in results:
        s = r.scores
        status = r.status + ("*" if r.action == "skipped" else "")
        line = (f"{r.cell.name:<{width}}  {status:<10}  {pct(s.get('knn_top1')):>6}  {num(s.get('final_loss')):>8}  "
                f"{s.get('worst_verdict') or '-'}")
        if r.error and r.status in ("failed", "invalid", "interrupted", "incomplete"):
            line += f"  ({r.error})"
        lines.append(line)
    if any(r.action == "skipped" for r in results):
        lines.append("* finished before this run: skipped")
    return "\n".join(lines)


def run_overview(results: Sequence[CellResult]) -> str:
    n = counts(results)
    order = ("completed", "stopped", "failed", "interrupted", "incomplete", "invalid", "missing")
    parts = [f"{n[k]} {k}" for k in order if n.get(k)] + [f"{n[k]} {k}" for k in n if k not in (*order, "skipped")]
    return f"{len(results)} cells: " + ", ".join(parts) + (f" ({n['skipped']} skipped: already finished)"
                                                          if n.get("skipped") else "")


__all__ = [
    "BaseConfig", "Cell", "CellResult", "Sweep", "cell_name", "collect", "expand_grid", "mechanisms_axes",
    "parse_grid", "print_commands", "read_definition", "resolve_config", "run_sweep", "split_values",
    "write_csv",
]
