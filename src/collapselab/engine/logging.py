"""Run logging: ``metrics.jsonl`` (always), TensorBoard and W&B (optional), console lines.

``metrics.jsonl`` holds one JSON object per ``RunLogger.log`` call, ``{"step", "kind", **metrics}``,
flushed line by line so a crash loses nothing already logged. Non-finite floats are written as
the strings ``"nan"``, ``"inf"``, ``"-inf"`` (the file stays strict JSON); ``read_metrics`` turns
them back into floats. A resumed run (``resume_step=k``) keeps the lines with ``step < k`` and
appends, so its file equals the file of a run that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm import tqdm

from collapselab._validation import InputError

METRICS_FILE = "metrics.jsonl"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _import_summary_writer() -> type:
    """Import TensorBoard's SummaryWriter (raises ImportError when ``tensorboard`` is missing)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


def _import_wandb() -> Any:
    """Import the ``wandb`` module (raises ImportError when it is missing)."""
    import wandb

    return wandb


def _plain_value(key: str, value: Any) -> float | int | str | bool | None:
    """Turn a metric value into a JSON-able Python scalar (0-d tensors and NumPy scalars too)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # torch / NumPy scalar
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise InputError(
        f"metric {key!r}: expected a number or a string, got {type(value).__name__}; "
        "log scalars only (reduce tensors with .item() or log each element under its own key)"
    )


def _to_json(value: float | int | str | bool | None) -> float | int | str | bool | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _is_numeric(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_lines(text: str, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse JSONL text; lines that are not a JSON object with an integer ``step`` (a partial
    line written during a crash) are skipped, and said in ``skipped`` when given (``"line 7 is
    not JSON"``, ``"line 9 is not a JSON object"``, ``"line 12 has no integer step"``)."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            problem = "is not JSON"
        else:
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
                continue
            problem = "is not a JSON object" if not isinstance(record, dict) else "has no integer step"
        if skipped is not None:
            skipped.append(f"line {number} {problem}")
    return records


def read_metrics(path: str | Path, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (or a run folder holding one) into a list of dicts.

    The strings ``"nan"``, ``"inf"`` and ``"-inf"`` become floats again; a corrupt line (say, a
    trailing one from a crash mid-write) is skipped, and listed in ``skipped`` when given.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise InputError(f"no metrics file at {path}; pass a run folder or its {METRICS_FILE}")
    records = _parse_lines(path.read_text(encoding="utf-8"), skipped)
    for record in records:
        for key, value in record.items():
            if isinstance(value, str) and value in _NONFINITE and key != "kind":
                record[key] = _NONFINITE[value]
    return records


class RunLogger:
    """Write metrics of one run to ``run_dir/metrics.jsonl`` and, optionally, TensorBoard / W&B.

    Args:
        run_dir: the run folder (created if missing).
        enabled: ``False`` (non-zero DDP ranks) writes and opens nothing; ``log`` is a no-op.
        tensorboard: ``"auto"`` writes TensorBoard scalars ``"{kind}/{key}"`` when the
            ``tensorboard`` package imports, ``True`` requires it, ``False`` never writes them.
        wandb: keyword arguments for ``wandb.init`` (e.g. ``{"project": "x", "mode": "offline"}``);
            ``None`` disables W&B.
        resume_step: resume a run at step ``k``: keep the lines with ``step < k`` (rewritten
            atomically) and append after them; TensorBoard events from ``k`` on are purged.
            ``None`` starts a new ``metrics.jsonl`` (an existing one is replaced).
        config: the run configuration, handed to ``wandb.init(config=...)``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool | str = "auto",
        wandb: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if tensorboard not in (True, False, "auto"):
            raise InputError(f"tensorboard must be True, False or 'auto', got {tensorboard!r}")
        if resume_step is not None and (isinstance(resume_step, bool) or resume_step < 0):
            raise InputError(f"resume_step must be an integer >= 0 or None, got {resume_step!r}")
        if wandb is not None and not isinstance(wandb, Mapping):
            raise InputError(f"wandb must be a mapping of wandb.init arguments or None, got {type(wandb).__name__}")
        if wandb is not None and {"dir", "config"} & set(wandb):
            raise InputError("wandb: do not pass 'dir' or 'config'; the logger sets them from run_dir and config")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = bool(enabled)
        self._file: Any = None
        self._tb_writer: Any = None
        self._wandb_run: Any = None
        self._wandb: Any = None
        self._closed = False
        if not self.enabled:
            return
        summary_writer = self._resolve_tensorboard(tensorboard)
        wandb_module = self._resolve_wandb(wandb)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_to(resume_step)
        # a new run replaces the file, a resumed one appends after the kept lines; closed in close()
        self._file = open(self.path, "w" if resume_step is None else "a", encoding="utf-8")
        try:
            if summary_writer is not None:
                self._tb_writer = summary_writer(log_dir=str(self.run_dir), purge_step=resume_step)
            if wandb_module is not None:
                self._wandb = wandb_module
                self._wandb_run = wandb_module.init(
                    dir=str(self.run_dir), config=dict(config) if config is not None else None, **wandb
                )
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _resolve_tensorboard(tensorboard: bool | str) -> type | None:
        if tensorboard is False:
            return None
        try:
            return _import_summary_writer()
        except ImportError as err:
            if tensorboard is True:
                raise InputError(
                    "tensorboard=True but the tensorboard package is not installed "
                    f"({err}); install it with `pip install tensorboard` or pass tensorboard='auto'"
                ) from err
            return None

    @staticmethod
    def _resolve_wandb(wandb: Mapping[str, Any] | None) -> Any:
        if wandb is None:
            return None
        try:
            return _import_wandb()
        except ImportError as err:
            raise InputError(
                f"W&B logging was requested but wandb is not installed ({err}); install it with "
                "`pip install wandb` or leave the wandb settings empty"
            ) from err

    @property
    def tensorboard(self) -> bool:
        """Whether TensorBoard events are being written."""
        return self._tb_writer is not None

    def _truncate_to(self, resume_step: int) -> None:
        """Keep the complete lines with ``step < resume_step``; atomic rewrite (temp + replace)."""
        if not self.path.exists():
            return
        kept = [r for r in _parse_lines(self.path.read_text(encoding="utf-8")) if r["step"] < resume_step]
        fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".tmp", dir=self.run_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for record in kept:
                    f.write(json.dumps(record, allow_nan=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def log(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train") -> None:
        """Append ``{"step": step, "kind": kind, **metrics}`` to metrics.jsonl (flushed) and send
        the values to TensorBoard (numbers only, as ``"{kind}/{key}"``) and W&B."""
        if not self.enabled:
            return
        if self._closed:
            raise InputError(f"RunLogger for {self.run_dir} is closed; log before close()")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise InputError(f"step must be an integer >= 0, got {step!r}")
        step = int(step)
        clash = {"step", "kind"} & set(metrics)
        if clash:
            raise InputError(f"metric names {sorted(clash)} are reserved; rename them")
        values = {str(k): _plain_value(str(k), v) for k, v in metrics.items()}
        record = {"step": step, "kind": str(kind), **{k: _to_json(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb_writer is not None:
            for key, value in values.items():
                if _is_numeric(value):
                    self._tb_writer.add_scalar(f"{kind}/{key}", value, global_step=step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        """Flush and close every sink; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
        if self._tb_writer is not None:
            self._tb_writer.close()
        if self._wandb_run is not None and hasattr(self._wandb_run, "finish"):
            self._wandb_run.finish()
        elif self._wandb is not None and hasattr(self._wandb, "finish"):
            self._wandb.finish()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _format_verdict(verdict: object) -> str:
    """A verdict string as is; a per-mode mapping as "healthy" or the modes that are not."""
    if isinstance(verdict, Mapping):
        bad = [f"{mode}={state}" for mode, state in verdict.items() if state not in ("healthy", "n/a")]
        return ",".join(bad) if bad else "healthy"
    return str(verdict)


def _format_loss(loss: float) -> str:
    if math.isfinite(loss) and loss != 0 and not 1e-3 <= abs(loss) < 1e5:
        return f"{loss:.3e}"
    return f"{loss:.4f}"


def format_epoch_line(epoch: int, epochs: int, metrics: Mapping[str, object]) -> str:
    """One console line per epoch, e.g.
    ``epoch  3/20  loss 0.1234  knn 91.2%  srank 12.3  erank 20.1  verdict healthy  412 img/s  5.1 s``.

    Recognised (optional) keys: ``loss``, ``knn_top1`` (a fraction, shown as %), ``stable_rank``,
    ``effective_rank``, ``verdict`` (a string or a per-mode mapping), ``img_per_s``,
    ``epoch_time_s``; other keys are not printed.
    """
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}d}/{epochs}"]
    if metrics.get("loss") is not None:
        parts.append(f"loss {_format_loss(float(metrics['loss']))}")  # type: ignore[arg-type]
    if metrics.get("knn_top1") is not None:
        parts.append(f"knn {100 * float(metrics['knn_top1']):.1f}%")  # type: ignore[arg-type]
    if metrics.get("stable_rank") is not None:
        parts.append(f"srank {float(metrics['stable_rank']):.1f}")  # type: ignore[arg-type]
    if metrics.get("effective_rank") is not None:
        parts.append(f"erank {float(metrics['effective_rank']):.1f}")  # type: ignore[arg-type]
    if metrics.get("verdict") is not None:
        parts.append(f"verdict {_format_verdict(metrics['verdict'])}")
    if metrics.get("img_per_s") is not None:
        parts.append(f"{float(metrics['img_per_s']):.0f} img/s")  # type: ignore[arg-type]
    if metrics.get("epoch_time_s") is not None:
        parts.append(f"{float(metrics['epoch_time_s']):.1f} s")  # type: ignore[arg-type]
    return "  ".join(parts)


def progress_bar(total: int, *, desc: str, enabled: bool) -> tqdm:
    """A tqdm step bar (hidden when not ``enabled``, e.g. on non-zero ranks); the trainer calls
    ``bar.update()`` and ``bar.set_postfix(loss=..., img_s=...)``."""
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False, unit="step")
