"""The run folder: one reader and writer for what a training run leaves on disk.

A run folder (``runs/<name>/``) holds::

    config.yaml        the resolved config (the trainer writes it before the first step)
    metrics.jsonl      one JSON object per line: {"step", "kind", ...}; kinds are
                       "train" (loss, lr, terms every log.every steps), "epoch" (epoch means,
                       online kNN, timings), "check" (every monitor metric of every watched
                       embedding, named "<embedding>/<metric>", and each mode's level as
                       "<embedding>/verdict/<mode>"), "alarm" and "threads"
    spectra.npz        the covariance eigenvalue spectrum of each watched embedding at each
                       check: "<embedding>/steps" (C,) int64 and "<embedding>/eigenvalues"
                       (C, K) float32, descending, K = min(probe size, dimension)
    summary.json       what the run ended with (status, verdicts, final kNN, ...); other
                       commands (``collapselab eval``) merge their scores into it
    checkpoints/       last.pt (every epoch), epoch_NNNN.pt (checkpoint.every / checkpoint.keep)
    report.html        ``collapselab report`` (``collapselab train`` writes it at the end)

The trainer, ``collapselab eval``, ``--resume``, the report, ``compare`` and ``sweep`` all read
and write a run through :class:`RunFolder`, so each reads it the same way and a rewrite of
``summary.json`` keeps what another command recorded (:meth:`RunFolder.write_summary`).

This module sits below the engine and the evaluation: it imports the config, the data
transforms, the models and the checkpoint format, never the trainer, the evaluation or the report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from collapselab._validation import InputError
from collapselab.config import Config, config_from_dict
from collapselab.data.augment import normalize, to_float_images
from collapselab.engine.checkpoint import CheckpointError, load_checkpoint
from collapselab.engine.logging import METRICS_FILE, read_metrics
from collapselab.models import backbone_arguments, build_backbone

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
SPECTRA_FILE = "spectra.npz"
REPORT_FILE = "report.html"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
EPOCH_CHECKPOINT = re.compile(r"^epoch_(\d+)\.pt$")
# summary sections that other commands add to: a rewrite merges them instead of replacing
MERGED_SECTIONS = ("eval",)


# --------------------------------------------------------------------------- model pieces


class Normalizer(nn.Module):
    """uint8 or [0, 1] images → standardised float images (per-channel mean/std)."""

    def __init__(self, mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float_images(images)
        return normalize(x, self.mean, self.std) if self.mean is not None and self.std is not None else x


def build_backbone_for(config: Config, channels: int, height: int, width: int) -> nn.Module:
    """The configured backbone, told the input channels (or flattened size for MLPs)."""
    kwargs = dict(config.model.backbone_args)
    params = backbone_arguments(config.model.backbone)
    if "in_channels" in params:
        kwargs.setdefault("in_channels", channels)
    elif "input_dim" in params:
        kwargs.setdefault("input_dim", channels * height * width)
    if "img_size" in params:  # ViTs: the positional table is made for the training images' size
        kwargs.setdefault("img_size", (height, width))
    return build_backbone(config.model.backbone, **kwargs)


# --------------------------------------------------------------------------- atomic writes


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    crash leaves either the old or the new file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a run's files are as readable as any other
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for what runs record: tensors, NumPy scalars and arrays."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _finite_json(value: Any) -> Any:
    """NaN and ±inf as the strings "nan", "inf", "-inf" (summary.json stays strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


# --------------------------------------------------------------------------- spectra


class SpectraRecorder:
    """Collects the eigenvalue spectrum of each watched embedding at each check and writes them
    to ``spectra.npz`` (:meth:`save`, atomic). Spectra are stored descending, truncated to
    ``min(N, D)`` values (the rest of a covariance spectrum of N < D samples is exactly 0), as
    float32."""

    def __init__(self) -> None:
        self.steps: dict[str, list[int]] = {}
        self.values: dict[str, list[np.ndarray]] = {}

    def add(self, step: int, name: str, eigenvalues: torch.Tensor | np.ndarray, n_samples: int) -> None:
        vals = eigenvalues.detach().cpu().numpy() if isinstance(eigenvalues, torch.Tensor) else np.asarray(eigenvalues)
        vals = np.asarray(vals, dtype=np.float32)[: max(1, min(int(n_samples), vals.shape[0]))]
        self.steps.setdefault(name, []).append(int(step))
        self.values.setdefault(name, []).append(vals)

    def load(self, path: str | os.PathLike, *, up_to_step: int | None = None) -> None:
        """Continue from a saved file (a resumed run): keep its checks at steps ≤ ``up_to_step``."""
        for name, (steps, values) in read_spectra(path).items():
            keep = [i for i, s in enumerate(steps) if up_to_step is None or s <= up_to_step]
            self.steps[name] = [int(steps[i]) for i in keep]
            self.values[name] = [values[i] for i in keep]

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, steps in self.steps.items():
            width = max(v.shape[0] for v in self.values[name])
            table = np.zeros((len(steps), width), dtype=np.float32)
            for i, v in enumerate(self.values[name]):
                table[i, : v.shape[0]] = v
            out[f"{name}/steps"] = np.asarray(steps, dtype=np.int64)
            out[f"{name}/eigenvalues"] = table
        return out

    def save(self, path: str | os.PathLike) -> Path | None:
        if not self.steps:
            return None
        import io

        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.arrays())
        return write_atomic(path, buffer.getvalue())


def read_spectra(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``spectra.npz`` → {embedding: (steps (C,), eigenvalues (C, K))}; {} when absent.

    Read with ``allow_pickle=False`` (numbers only; a file holding objects is refused)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except Exception as err:  # zip or format errors, object arrays
        raise InputError(f"{path}: cannot be read as a spectra file ({type(err).__name__}: {err})") from err
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, steps in arrays.items():
        if not key.endswith("/steps"):
            continue
        name = key[: -len("/steps")]
        values = arrays.get(f"{name}/eigenvalues")
        if values is None or values.ndim != 2 or values.shape[0] != steps.shape[0]:
            raise InputError(f"{path}: {name!r} has {steps.shape[0]} steps but eigenvalues of shape "
                             f"{None if values is None else values.shape}")
        out[name] = (steps.astype(np.int64), values.astype(np.float64))
    return out


SUMMARY_SECTION_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "eval": ((dict,), "an object of scores"),
    "diagnosis": ((dict,), "an object (embedding → diagnosis)"),
    "final_verdict": ((dict,), "an object (embedding → mode → verdict)"),
    "alarms": ((list,), "a list"),
    "steps": ((int, float), "a number"),
    "status": ((str,), "a string"),
}
"""The ``summary.json`` sections readers rely on, with their JSON types."""


def _a(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


# --------------------------------------------------------------------------- the folder


class RunFolder:
    """One run folder on disk (see the module docstring for its files).

    Construct with :meth:`open` for an existing run (checks that it is one) or directly for a
    folder the trainer is about to fill.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunFolder:
        """An existing run folder; a clear error when ``path`` is missing or is not one."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such run folder")
        if not path.is_dir():
            raise InputError(f"{path}: not a folder (pass runs/<name>)")
        if not any((path / name).exists() for name in (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, CHECKPOINT_DIR)):
            raise InputError(f"{path}: not a run folder (no {CONFIG_FILE}, {SUMMARY_FILE}, {METRICS_FILE} "
                             f"or {CHECKPOINT_DIR}/)")
        return cls(path)

    @property
    def name(self) -> str:
        return self.path.name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- paths -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def spectra_path(self) -> Path:
        return self.path / SPECTRA_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / LAST

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file()

    def epoch_checkpoints(self) -> dict[int, Path]:
        """{epoch: path} of the kept ``epoch_NNNN.pt`` files, in epoch order."""
        if not self.checkpoint_dir.is_dir():
            return {}
        found = {}
        for p in self.checkpoint_dir.iterdir():
            m = EPOCH_CHECKPOINT.match(p.name)
            if m and p.is_file():
                found[int(m.group(1))] = p
        return dict(sorted(found.items()))

    def checkpoint(self, which: str | int | None = None) -> Path:
        """A checkpoint file: ``None``/``"last"`` → last.pt, an int → epoch_NNNN.pt, a name or
        path → that file (inside ``checkpoints/`` when relative)."""
        if which is None or which == "last":
            path = self.last_checkpoint
        elif isinstance(which, int):
            path = self.checkpoint_dir / f"epoch_{which:04d}.pt"
        else:
            path = Path(which) if Path(which).is_absolute() else self.checkpoint_dir / str(which)
        if not path.is_file():
            kept = ", ".join(f"epoch {e}" for e in self.epoch_checkpoints()) or "none"
            raise InputError(f"{self.path}: no checkpoint {path.name} (kept epochs: {kept}; the trainer "
                             f"writes {CHECKPOINT_DIR}/{LAST} after each epoch)")
        return path

    # ---- config ----------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """``config.yaml`` as a plain dict; an error when it is missing, empty or not a mapping."""
        from omegaconf import OmegaConf

        if not self.config_path.is_file():
            raise InputError(f"{self.path}: no {CONFIG_FILE} (is it a run folder?)")
        try:
            data = OmegaConf.to_container(OmegaConf.load(self.config_path))
        except Exception as err:
            raise InputError(f"{self.config_path}: not readable YAML ({type(err).__name__}: {err})") from err
        if not isinstance(data, dict) or not data:
            raise InputError(f"{self.config_path}: empty or not a mapping; the run's config is lost "
                             "(restore the file; the checkpoint also holds it)")
        return data  # type: ignore[return-value]

    def config(self) -> Config:
        """The run's config, validated against the schema."""
        return config_from_dict(self.config_dict())

    # ---- history ---------------------------------------------------------------------------

    def history(self, skipped: list[str] | None = None) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl`` ([] when the file is absent); the lines skipped as
        damaged are listed in ``skipped`` when given (:func:`~collapselab.engine.read_metrics`)."""
        return read_metrics(self.metrics_path, skipped) if self.metrics_path.is_file() else []

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.history() if r.get("kind") == kind]

    def checks(self, history: Sequence[Mapping[str, Any]] | None = None) -> dict[str, dict[str, list[Any]]]:
        """The monitor's checks per embedding: {embedding: {"step": [...], metric: [...],
        "verdict/<mode>": [...]}}, read from the "check" rows of ``metrics.jsonl`` (or of
        ``history``, rows already read)."""
        out: dict[str, dict[str, list[Any]]] = {}
        rows = self.rows("check") if history is None else [r for r in history if r.get("kind") == "check"]
        for row in rows:
            names = {key.split("/", 1)[0] for key in row if "/" in key}
            for name in names:
                series = out.setdefault(name, {"step": []})
                count = len(series["step"])
                series["step"].append(row["step"])
                for key, value in row.items():
                    if key.startswith(name + "/"):
                        metric = key[len(name) + 1:]
                        series.setdefault(metric, [None] * count).append(value)
                for values in series.values():
                    if len(values) < count + 1:
                        values.append(None)
        return out

    def spectra(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{embedding: (steps, eigenvalues (checks × K))} from ``spectra.npz`` ({} when absent)."""
        return read_spectra(self.spectra_path)

    # ---- summary ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """``summary.json`` ({} when absent); a clear error when it is not a JSON object."""
        if not self.summary_path.is_file():
            return {}
        try:
            data = json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{self.summary_path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise InputError(f"{self.summary_path}: expected a JSON object, found {type(data).__name__}")
        return data

    def summary_problems(self, summary: Mapping[str, Any]) -> dict[str, str]:
        """The sections of a read ``summary`` whose type is wrong (:data:`SUMMARY_SECTION_TYPES`),
        section → ``"'eval' is a str, expected an object of scores"``; {} when all are sound."""
        problems = {}
        for key, (kinds, expected) in SUMMARY_SECTION_TYPES.items():
            value = summary.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                problems[key] = f"{key!r} is {_a(type(value).__name__)}, expected {expected}"
        return problems

    def write_summary(self, summary: Mapping[str, Any], drop: Iterable[str] = ()) -> dict[str, Any]:
        """Replace the keys ``summary`` sets and keep the others: keys only another command
        recorded survive, and the sections in ``MERGED_SECTIONS`` (``eval``) are merged key by
        key (the new value wins) when both are of the same training ``step`` (or either has
        none). Scores of an earlier step are not shown beside newer ones: the old section moves
        whole to ``<section>_earlier[str(step)]`` and the new one replaces it, so a resumed run
        never reports a probe of its old weights as current, and nothing is dropped unless named
        in ``drop`` (keys removed in the same write). Atomic. Returns what was written."""
        merged = self.summary() if self.summary_path.is_file() else {}
        for key in drop:
            merged.pop(key, None)
        for key, value in summary.items():
            old = merged.get(key)
            if key in MERGED_SECTIONS and isinstance(old, dict) and isinstance(value, Mapping):
                if old.get("step") is not None and value.get("step") is not None and old["step"] != value["step"]:
                    earlier = dict(merged.get(f"{key}_earlier") or {})
                    earlier[str(old["step"])] = {**(earlier.get(str(old["step"])) or {}), **old}
                    merged[f"{key}_earlier"] = earlier
                    merged[key] = dict(value)
                else:
                    merged[key] = {**old, **value}
            else:
                merged[key] = value
        text = json.dumps(_finite_json(merged), indent=2, default=json_default)
        write_atomic(self.summary_path, text + "\n")
        return merged

    def update_summary(self, section: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into ``summary[section]`` (e.g. ``eval`` scores), keeping the rest. A
        section in ``MERGED_SECTIONS`` is merged by :meth:`write_summary`, which keeps scores of
        another training ``step`` apart (merging here first would label them with the new step)."""
        if section in MERGED_SECTIONS:
            return self.write_summary({section: dict(values)})
        return self.write_summary({section: {**(self.summary().get(section) or {}), **values}})

    # ---- checkpoints and the model ---------------------------------------------------------

    def load_state(self, which: str | int | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """A verified checkpoint state (:func:`~collapselab.engine.checkpoint.load_checkpoint`)."""
        return load_checkpoint(self.checkpoint(which), map_location=map_location)

    def normalizer(self, state: Mapping[str, Any] | None = None) -> Normalizer:
        """The run's input normalisation (from a checkpoint state; last.pt when not given)."""
        state = self.load_state() if state is None else state
        norm = state.get("normalization") or {}
        return Normalizer(norm.get("mean"), norm.get("std"))

    def backbone(self, which: str | int | None = None, state: Mapping[str, Any] | None = None) -> nn.Module:
        """The trained backbone of a checkpoint, rebuilt from its saved config and input shape,
        loaded strictly, in eval mode on the CPU."""
        path = self.checkpoint(which) if state is None else None
        state = load_checkpoint(path) if state is None else state  # type: ignore[arg-type]
        return backbone_from_state(state, where=str(path or self.path))


def backbone_from_state(state: Mapping[str, Any], where: str = "checkpoint") -> nn.Module:
    """Rebuild the backbone of a trainer checkpoint state (config + input shape + weights)."""
    missing = [key for key in ("config", "model") if key not in state]
    if missing:
        raise CheckpointError(
            f"{where}: no {' or '.join(repr(key) for key in missing)} entry; only checkpoints written "
            "by collapselab.train can be rebuilt into a backbone"
        )
    try:
        config = config_from_dict(state["config"])
    except InputError as err:
        raise CheckpointError(f"{where}: its saved config cannot be rebuilt: {err}") from err
    prefix = state.get("backbone_prefix", "backbone.")
    weights = {key[len(prefix):]: value for key, value in state["model"].items() if key.startswith(prefix)}
    shape = state.get("input_shape")
    if not weights or shape is None or len(shape) != 3:
        raise CheckpointError(
            f"{where}: no {prefix!r} weights or no input_shape [C, H, W]; it was not written by collapselab.train"
        )
    channels, height, width = (int(size) for size in shape)
    backbone = build_backbone_for(config, channels, height, width)
    try:
        backbone.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{where}: the saved weights do not fit the configured backbone {config.model.backbone!r} ({first})"
        ) from err
    return backbone.eval()


def open_runs(paths: Sequence[str | os.PathLike]) -> list[RunFolder]:
    """Open several run folders (each must exist and be one); duplicates are kept in order."""
    if not paths:
        raise InputError("no run folders given (pass one or more runs/<name>)")
    return [RunFolder.open(p) for p in paths]
