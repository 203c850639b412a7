"""What the report and ``compare`` read from a run folder, read once through :class:`RunFolder`.

Every file is optional: a file that is missing or unreadable becomes a note (``RunData.notes``),
never an exception, so a failed or interrupted run still gets a report. A file that is there but
damaged (not readable, garbage lines, a section of the wrong type) is also listed in
``RunData.damaged``: the commands print one warning line per such file (:func:`damage_warnings`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from collapselab.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    SPECTRA_FILE,
    SUMMARY_FILE,
    RunFolder,
    open_runs,
)

RunLike = str | os.PathLike | RunFolder
# the monitor's modes, in the order the report lists them ("band" only where a run had a band)
MODES = ("complete", "dimensional", "cluster", "intracluster", "band")


@dataclass
class RunData:
    """One run's files, parsed: config, summary, metric rows by kind, checks and spectra."""

    folder: RunFolder
    config: dict[str, Any] | None = None
    config_text: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    train: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    alarm_rows: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    spectra: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # file name → what is wrong with it
    damaged: dict[str, str] = field(default_factory=dict)  # file name → the damage, for a warning

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def embeddings(self) -> list[str]:
        """Watched embeddings, "emb" (projector output) first, then "repr", then the others."""
        names = set(self.checks) | set(self.spectra)
        order = {"emb": 0, "repr": 1}
        return sorted(names, key=lambda n: (order.get(n, 2), n))

    @property
    def alarms(self) -> list[dict[str, Any]]:
        """The alarms of summary.json, or the "alarm" rows of metrics.jsonl when it has none."""
        listed = self.summary.get("alarms")
        if isinstance(listed, list) and listed:
            return [a for a in listed if isinstance(a, Mapping)]
        return self.alarm_rows

    @property
    def final_loss(self) -> float | None:
        """The last logged training loss (a train row, else an epoch row)."""
        for rows in (self.train, self.epochs):
            values = [r["loss"] for r in rows if is_number(r.get("loss"))]
            if values:
                return float(values[-1])
        return None

    @property
    def eval(self) -> dict[str, Any]:
        ev = self.summary.get("eval")
        return ev if isinstance(ev, dict) else {}

    def series(self, embedding: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one checked metric; missing or non-numeric values are NaN."""
        checks = self.checks.get(embedding) or {}
        steps, values = checks.get("step") or [], list(checks.get(metric) or [])[: len(checks.get("step") or [])]
        return as_floats(steps), as_floats(values + [None] * (len(steps) - len(values)))

    def has_metric(self, metric: str) -> bool:
        return any(np.isfinite(self.series(name, metric)[1]).any() for name in self.embeddings)

    def final_metric(self, embedding: str, metric: str) -> float | None:
        """The last finite value of a checked metric (the summary's diagnosis when no checks)."""
        values = self.series(embedding, metric)[1]
        finite = values[np.isfinite(values)]
        if finite.size:
            return float(finite[-1])
        value = ((self.summary.get("diagnosis") or {}).get(embedding) or {}).get("metrics", {}).get(metric)
        return float(value) if is_number(value) and math.isfinite(value) else None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def as_floats(values: Iterable[Any]) -> np.ndarray:
    """Numbers as a float array; None, strings and other values become NaN."""
    return np.array([float(v) if is_number(v) else math.nan for v in values], dtype=float)


def load_run(run: RunLike | RunData) -> RunData:
    """Read one run folder (``RunFolder.open`` checks it is one); missing files become notes."""
    if isinstance(run, RunData):
        return run
    folder = run if isinstance(run, RunFolder) else RunFolder.open(run)
    data = RunData(folder)
    data.config = _attempt(data, CONFIG_FILE, folder.config_dict, present=folder.config_path.is_file())
    if data.config is not None:
        data.config_text = folder.config_path.read_text(encoding="utf-8", errors="replace")
    data.summary = _attempt(data, SUMMARY_FILE, folder.summary, present=folder.summary_path.is_file()) or {}
    bad_sections = folder.summary_problems(data.summary)
    if bad_sections:  # left out, so every reader sees a sound summary
        for key in bad_sections:
            data.summary.pop(key)
        _damage(data, SUMMARY_FILE, "; ".join(bad_sections.values()) + "; ignored")
    skipped: list[str] = []
    history = _attempt(data, METRICS_FILE, lambda: folder.history(skipped),
                       present=folder.metrics_path.is_file()) or []
    if skipped:
        more = f", and {len(skipped) - 1} more damaged line{'s' if len(skipped) > 2 else ''}" if len(skipped) > 1 else ""
        _damage(data, METRICS_FILE, f"{skipped[0]}; skipped{more}")
    for row in history:
        kind = row.get("kind")
        {"train": data.train, "epoch": data.epochs, "alarm": data.alarm_rows}.get(kind, []).append(row)
    if history:
        data.checks = _attempt(data, METRICS_FILE, lambda: folder.checks(history), present=True) or {}
    data.spectra = _attempt(data, SPECTRA_FILE, folder.spectra, present=folder.spectra_path.is_file()) or {}
    return data


def load_runs(runs: Sequence[RunLike | RunData]) -> list[RunData]:
    """Open and read several runs; an error (``InputError``) when a path is not a run folder."""
    runs = list(runs)
    paths = [r for r in runs if not isinstance(r, RunData | RunFolder)]
    opened = iter(open_runs(paths) if paths or not runs else [])  # open_runs([]) says none were given
    return [load_run(r if isinstance(r, RunData | RunFolder) else next(opened)) for r in runs]


def _attempt(data: RunData, file: str, read: Any, *, present: bool) -> Any:
    """``read()``, or None with a note on ``data`` when the file is absent or unreadable."""
    if not present:
        data.notes.setdefault(file, f"{file} is missing")
        return None
    try:
        return read()
    except (ValueError, OSError, KeyError, TypeError) as err:  # InputError is a ValueError
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        prefix = f"{data.folder.path / file}: "
        text = text[len(prefix):] if text.startswith(prefix) else text
        data.notes[file] = f"{file} could not be read: {text}"
        data.damaged.setdefault(file, f"could not be read ({text}); ignored")
        return None


def _damage(data: RunData, file: str, what: str) -> None:
    """Record that ``file`` is damaged (``what``): a note in the report and a warning line."""
    data.damaged.setdefault(file, what)
    data.notes.setdefault(file, f"{file}: {what}")


def damage_warnings(runs: Iterable[RunData]) -> list[str]:
    """One ``warning: RUN/FILE: what is wrong`` line per damaged file of each run."""
    lines = (f"warning: {run.path / file}: {what}" for run in runs for file, what in run.damaged.items())
    return list(dict.fromkeys(lines))  # a run given twice warns once
