"""Compare runs side by side: one row per run, deltas against the first, the config keys that differ.

    >>> c = comparison(["runs/a", "runs/b"])
    >>> print(format_table(c))
    >>> to_csv(c, "compare.csv")
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from collapselab._validation import InputError
from collapselab.report.data import RunData, RunLike, is_number, load_runs

EXCLUDED_KEYS = ("run.name",)  # differs between any two runs by construction
MISSING = "<missing>"  # a config key one run has and another lacks
OPTIONAL_EVAL = ("knn_top5", "linear_top1", "nmi", "ari", "acc", "codes_nmi")


@dataclass
class Comparison:
    """Runs side by side.

    ``rows[i][column]`` is run i's value (None when not recorded); ``deltas[i][column]`` is
    ``rows[i][column] - rows[0][column]`` for the numeric columns (None when either is missing);
    ``config_differences`` maps each dotted config key whose value differs between the runs to
    the runs' values, in run order.
    """

    columns: list[str]
    rows: list[dict[str, Any]]
    deltas: list[dict[str, float | None]] = field(default_factory=list)
    config_differences: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def numeric_columns(self) -> list[str]:
        """Columns whose recorded values are all numbers (and at least one is recorded)."""
        out = []
        for column in self.columns:
            values = [row.get(column) for row in self.rows if row.get(column) is not None]
            if values and all(is_number(v) for v in values):
                out.append(column)
        return out


def comparison(runs: Sequence[RunLike | RunData]) -> Comparison:
    """Compare run folders (paths, ``RunFolder`` or loaded runs); the first is the reference."""
    data = load_runs(runs)
    embeddings = sorted({e for run in data for e in run.embeddings}, key=lambda n: (n != "emb", n != "repr", n))
    optional = [k for k in OPTIONAL_EVAL if any(run.eval.get(k) is not None for run in data)]
    columns = ["name", "method", "dataset", "status", "steps", "final_loss", "knn_top1",
               "baseline_pixels_knn_top1", "baseline_random_knn_top1", *optional, "worst_verdict",
               *(f"effective_rank/{e}" for e in embeddings), "train_time_s"]
    rows = [_row(run, optional, embeddings) for run in data]
    result = Comparison(columns, rows, config_differences=config_differences([run.config or {} for run in data]))
    numeric = result.numeric_columns
    result.deltas = [{c: _delta(row.get(c), rows[0].get(c)) for c in numeric} for row in rows]
    return result


def _row(run: RunData, optional: Sequence[str], embeddings: Sequence[str]) -> dict[str, Any]:
    s, ev = run.summary, run.eval
    row: dict[str, Any] = {
        "name": run.name,
        "method": s.get("method") or _section(run.config, "method").get("name"),
        "dataset": s.get("dataset") or _section(run.config, "data").get("dataset"),
        "status": s.get("status") or ("no summary" if not s else None),
        "steps": s.get("steps"),
        "final_loss": run.final_loss,
        **{key: _number(ev.get(key)) for key in ("knn_top1", "baseline_pixels_knn_top1",
                                                 "baseline_random_knn_top1", *optional)},
        "worst_verdict": s.get("worst_verdict"),
        **{f"effective_rank/{e}": run.final_metric(e, "effective_rank") for e in embeddings},
        "train_time_s": _number(s.get("train_time_s")),
    }
    if row["steps"] is None and (run.train or run.epochs):
        row["steps"] = max(int(r.get("step", 0)) for r in run.train + run.epochs)
    return row


def _section(config: Mapping[str, Any] | None, key: str) -> Mapping[str, Any]:
    value = (config or {}).get(key)
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    return float(value) if is_number(value) and math.isfinite(value) else None


def _delta(value: Any, reference: Any) -> float | None:
    if not (is_number(value) and is_number(reference)):
        return None
    return value - reference


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"optim.lr": 0.1, ...}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_differences(configs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The dotted keys whose values differ between the configs (``run.name`` excluded), with
    each config's value (``"<missing>"`` where a config lacks the key), keys sorted."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f} - set(EXCLUDED_KEYS))
    out = {}
    for key in keys:
        values = [f.get(key, MISSING) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


# --------------------------------------------------------------------------- output


def format_value(value: Any) -> str:
    """A cell for people: 4 significant digits, '-' when not recorded."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_delta(value: float | None) -> str:
    return "" if value is None else f"{value:+.4g}"


def format_table(comparison: Comparison) -> str:
    """The comparison for a terminal: a line per column, a column per run (with Δ against the
    first run), then the config keys that differ."""
    c = comparison
    numeric = set(c.numeric_columns)
    header = ["", *[str(row.get("name")) for row in c.rows]]
    body = []
    for column in c.columns[1:]:
        cells = [column]
        for i, row in enumerate(c.rows):
            cell = format_value(row.get(column))
            delta = c.deltas[i].get(column) if column in numeric and i > 0 and c.deltas else None
            cells.append(f"{cell} ({format_delta(delta)})" if delta is not None else cell)
        body.append(cells)
    lines = _align([header, *body])
    lines.append("")
    if c.config_differences:
        lines.append("config differences:")
        lines += _align([[f"  {key}", *[format_value(v) for v in values]]
                         for key, values in c.config_differences.items()])
    else:
        lines.append("config differences: none")
    return "\n".join(lines)


def _align(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(max(map(len, table)))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in table]


def csv_columns(comparison: Comparison) -> list[str]:
    """The CSV header: the columns, ``delta/<column>`` per numeric column, ``config.<key>`` per
    differing config key."""
    return [*comparison.columns, *(f"delta/{c}" for c in comparison.numeric_columns),
            *(f"config.{k}" for k in comparison.config_differences)]


def to_csv(comparison: Comparison, path_or_stream: str | os.PathLike | TextIO) -> None:
    """Write the comparison as CSV, one row per run (floats at full precision, '' = missing).
    A path is written atomically; a folder is an ``InputError``."""
    if isinstance(path_or_stream, str | os.PathLike):
        check_file_path(path_or_stream, "csv")
    c = comparison
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(c))
    for i, row in enumerate(c.rows):
        deltas = c.deltas[i] if c.deltas else {}
        writer.writerow([*(_csv_cell(row.get(col)) for col in c.columns),
                         *(_csv_cell(deltas.get(col)) for col in c.numeric_columns),
                         *(_csv_cell(values[i]) for values in c.config_differences.values())])
    if isinstance(path_or_stream, str | os.PathLike):
        from collapselab.runs import write_atomic

        write_atomic(Path(path_or_stream), buffer.getvalue())
    else:
        path_or_stream.write(buffer.getvalue())


def check_file_path(path: str | os.PathLike, what: str) -> None:
    """Raise ``InputError`` when ``path``, where a file is to be written, is a folder (an
    existing one, or a path ending in a separator); ``what`` names it in the message."""
    text = os.fspath(path)
    if Path(text).is_dir():
        raise InputError(f"{what} {text}: is a directory; give a file path")
    if text.endswith(("/", os.sep)):
        raise InputError(f"{what} {text}: ends in a separator, so names a directory; give a file path")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
