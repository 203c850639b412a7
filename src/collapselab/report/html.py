"""``report.html``: one self-contained page per run (or per set of runs, overlaid).

Inline CSS and inline SVG only: no JavaScript, no fonts, scripts or images fetched from anywhere,
so the file opens offline and can be mailed or attached. Every string that comes from a run (its
name, config values, verdict reasons) is HTML-escaped. A run with only some of its files still
gets a page: each section says what is missing.
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from collapselab._validation import InputError
from collapselab.report import plots
from collapselab.report.compare import Comparison, comparison, format_delta, format_value
from collapselab.report.data import MODES, RunData, RunLike, as_floats, load_runs
from collapselab.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    REPORT_FILE,
    SPECTRA_FILE,
    SUMMARY_FILE,
    RunFolder,
    write_atomic,
)

OPTIONAL_SCORES = (("linear_top1", "linear probe top-1"), ("nmi", "k-means NMI"))
LEVELS = ("healthy", "warning", "collapsed", "n/a")
EMBEDDING_NAMES = {"emb": "projector output", "repr": "backbone features"}

CSS = """
:root { --fg: #1d2733; --muted: #5b6776; --line: #d9dee4; --bg: #ffffff; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 1240px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 22px; margin: 4px 0 2px; }
h2 { font-size: 17px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 14px 0 6px; }
.sub, .note, figcaption { color: var(--muted); }
.note { font-style: italic; }
nav { margin: 10px 0 18px; font-size: 13px; }
nav a { margin-right: 12px; color: #1f5fa8; text-decoration: none; }
section { margin: 0 0 26px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { border: 1px solid var(--line); padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.delta { color: var(--muted); font-size: 12px; }
.level { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; font-weight: 600; }
.level-healthy { background: #dff3e4; color: #1e6b34; }
.level-warning { background: #fdf0d5; color: #8a5a00; }
.level-collapsed { background: #fbdcdc; color: #a11d1d; }
.level-na { background: #eceff2; color: #5b6776; }
figure { margin: 8px 0 4px; }
figure svg { max-width: 100%; height: auto; }
pre { background: var(--panel); border: 1px solid var(--line); padding: 10px; font-size: 12px;
      overflow-x: auto; max-height: 560px; }
details { margin: 6px 0; }
summary { cursor: pointer; font-weight: 600; }
"""

SECTIONS = (  # id, heading; the figure sections take their figure from plots.FIGURES
    ("summary", "Summary"),
    ("comparison", "Comparison"),
    ("alarms", "Alarm timeline"),
    ("loss", "Training loss"),
    ("knn", "Online kNN accuracy"),
    ("ranks", "Effective rank, stable rank and spread"),
    ("spectrum", "Eigenvalue spectrum"),
    ("alignment-uniformity", "Alignment and uniformity"),
    ("codes", "Code usage"),
    ("band", "Uncertainty band"),
    ("config", "Config"),
)
BAND_METRICS = (("band_width_ratio", "band width / spread of the embedding"),
                ("band_below_floor", "fraction of inputs below the floor"))

CAPTIONS = {
    "loss": "The training loss logged every log.every steps. A loss that falls to the value a "
            "constant embedding would reach is a sign of collapse, not of learning.",
    "knn": "Weighted kNN top-1 of the backbone features on the held-out split, measured each epoch. "
           "The dashed lines are the final baselines: raw pixels and the same backbone untrained; a "
           "useful representation ends above them.",
    "ranks": "Measured by the collapse monitor on a fixed probe batch at each check. Effective rank "
             "and stable rank count the directions an embedding uses (dimensional collapse: they fall "
             "towards 1); spread falls towards 0 when all points move to one point or one ray "
             "(complete collapse).",
    "spectrum": "The eigenvalues of each embedding's covariance, largest first, on a log scale, at up to "
                "six checks from early (purple) to late (yellow). A healthy embedding keeps a slowly "
                "decaying curve; dimensional collapse shows as a cliff after the first few eigenvalues "
                "that moves left over the run; complete collapse lowers the whole curve.",
    "alignment-uniformity": "Each point is one check (colour = step). Alignment (lower = two views of an "
                            "image closer) against uniformity (lower = points spread more evenly on the "
                            "sphere). Alignment pairs each probe image with one augmented view of it. "
                            "Complete collapse ends in the bottom-right corner: views agree perfectly "
                            "(alignment 0) because every point is the same (uniformity 0).",
    "codes": "For code-based methods: the fraction of codes in use and the perplexity of the code "
             "distribution (the effective number of codes). Both fall when codes collapse onto few.",
    "band": "For embeddings with an uncertainty band (composite method.band=scalar|diagonal): the mean "
            "band width against the spread of the embedding (warning below 0.1, collapsed below 0.01), "
            "and the fraction of probe inputs whose band is under 0.01 of the spread. A band that "
            "falls to 0 while the loss stays finite is a silent collapse: every input is a point again.",
}


def esc(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- entry points


def write_report(runs: RunLike | Sequence[RunLike | RunData], out: str | os.PathLike | None = None, *,
                 title: str | None = None) -> Path:
    """Write the HTML report of one run (default ``<run>/report.html``) or of several runs
    overlaid (``out`` required). ``out`` is a file, or a folder (an existing one, or a path
    ending in ``/``) that gets ``report.html``. Atomic; returns the path written.

    Raises ``InputError`` when a path is not a run folder; missing or unreadable files of a run
    become notes in the page."""
    single = isinstance(runs, str | os.PathLike | RunFolder | RunData)
    target = None if out is None else report_target(out)
    data = load_runs([runs] if single else runs)  # type: ignore[list-item]
    if target is None:
        if len(data) > 1:
            raise InputError(f"{len(data)} runs: say where the report goes (out=...)")
        target = data[0].folder.report_path
    return write_atomic(target, render_report(data, title=title))


def report_target(out: str | os.PathLike) -> Path:
    """The file a report for ``out`` goes to: ``out/report.html`` when ``out`` is a folder (an
    existing one, or a path ending in a separator), else ``out``."""
    text = os.fspath(out)
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        return Path(text) / REPORT_FILE
    return Path(text)


def write_run_report(run_dir: str | os.PathLike, warn: Callable[[str], None] | None = None) -> Path | None:
    """:func:`write_report` of one run for a caller that has just trained it: a report that
    fails costs a warning (``warn``, default: stderr), never the run. The path, or None."""
    try:
        return write_report(run_dir)
    except Exception as err:  # the run is on disk whatever the report does
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        message = (f"warning: {Path(run_dir) / 'report.html'} not written ({type(err).__name__}: {first}); "
                   f"retry with `collapselab report {run_dir}`")
        if warn is None:
            print(message, file=sys.stderr)
        else:
            warn(message)
        return None



def write_unfinished_report(run_dir: str | os.PathLike, warn: Callable[[str], None] | None = None) -> Path | None:
    """:func:`write_run_report` of a run whose training failed or was interrupted: only once its
    ``summary.json`` is written and unless its ``config.yaml`` says ``log.report: false`` (None
    then, and when the config cannot be read)."""
    folder = RunFolder(run_dir)
    if not folder.summary_path.is_file():  # it stopped before writing its summary
        return None
    try:
        wanted = (folder.config_dict().get("log") or {}).get("report", True)
    except InputError:  # no readable config.yaml: the report would have no config to show either
        return None
    return write_run_report(folder.path, warn) if wanted else None

def render_report(runs: Sequence[RunLike | RunData], *, title: str | None = None) -> str:
    """The report page as an HTML string (see :func:`write_report`)."""
    data = load_runs(runs)
    if title is None:
        title = ("collapselab report: " + data[0].name if len(data) == 1
                 else "collapselab comparison: " + ", ".join(run.name for run in data))
    sections = [(sid, heading, body) for sid, heading in SECTIONS
                if (body := _safe_section_body(sid, data)) is not None]
    nav = " ".join(f'<a href="#{sid}">{esc(heading)}</a>' for sid, heading, _ in sections)
    where = "; ".join(esc(run.path) for run in data)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", "<main>",
        f"<header><h1>{esc(title)}</h1><p class=\"sub\">{where}</p></header>", f"<nav>{nav}</nav>",
        *(f'<section id="{sid}">\n<h2>{esc(heading)}</h2>\n{body}\n</section>' for sid, heading, body in sections),
        "</main>", "</body>", "</html>",
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- sections


def _section_body(sid: str, runs: Sequence[RunData]) -> str | None:
    """A section's HTML, or None when the section does not apply (comparison of one run, code
    usage of runs without codes)."""
    if sid == "summary":
        return _summary(runs)
    if sid == "comparison":
        return _comparison(comparison(runs)) if len(runs) > 1 else None
    if sid == "alarms":
        return _alarms(runs)
    if sid == "config":
        return _config(runs)
    if sid == "codes" and not any(run.has_metric(m) for run in runs for m, _ in plots.CODE_METRICS):
        return None
    if sid == "band":
        if not any(run.has_metric(m) for run in runs for m, _ in BAND_METRICS):
            return None
        figure = plots._render(lambda r: plots._metric_panels(r, BAND_METRICS, "uncertainty band"), runs)
        return _figure(figure, CAPTIONS["band"], _not_recorded(sid, runs))
    caption = CAPTIONS.get(sid, "")
    if sid == "knn" and len(runs) > 1:  # the baselines are drawn for a single run only
        caption = caption.split(" The dashed lines")[0] + " Each run's final kNN is its star; the baselines " \
            "are in the comparison table."
    return _figure(plots.FIGURES[sid](runs), caption, _not_recorded(sid, runs))


def _safe_section_body(sid: str, runs: Sequence[RunData]) -> str | None:
    """:func:`_section_body`, or a note when odd values (a hand-edited file) break it: one
    section lost, never the report."""
    try:
        return _section_body(sid, runs)
    except Exception as err:
        return f'<p class="note">This section could not be drawn ({esc(type(err).__name__)}: {esc(err)}).</p>'


def _figure(svg: str | None, caption: str, missing: str) -> str:
    if svg is None:
        return f'<p class="note">{esc(missing)}</p>'
    return f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def _not_recorded(sid: str, runs: Sequence[RunData]) -> str:
    where = "this run" if len(runs) == 1 else "these runs"
    source = {"loss": METRICS_FILE, "knn": METRICS_FILE, "ranks": METRICS_FILE, "spectrum": SPECTRA_FILE,
              "alignment-uniformity": METRICS_FILE, "codes": METRICS_FILE, "band": METRICS_FILE}.get(sid, "")
    problems = sorted({run.notes[source] for run in runs if source in run.notes})
    extra = {"alignment-uniformity": " (alignment needs monitor.views=true, the default since this version)"}.get(sid, "")
    return f"Not recorded in {where}{extra}." + (f" {'; '.join(problems)}." if problems else "")


def _level(level: Any) -> str:
    text = str(level) if level is not None else "n/a"
    css = text if text in LEVELS[:3] else "na"
    return f'<span class="level level-{css}">{esc(text)}</span>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table from already-escaped cells; ``numeric`` column indices are right-aligned."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "\n".join("<tr>" + "".join(f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
                                      for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _percent(value: Any) -> str:
    number = as_floats([value])[0]
    return "-" if number != number else f"{100 * number:.1f} %"


def _seconds(value: Any) -> str:
    number = as_floats([value])[0]
    return "-" if number != number else f"{number:.1f} s"


def _setting(run: RunData, section: str, key: str) -> Any:
    """``config[section][key]`` of a run, None when absent."""
    value = (run.config or {}).get(section)
    return value.get(key) if isinstance(value, Mapping) else None


def _status(run: RunData) -> str:
    s = run.summary
    extra = "".join(f"<br><small>{esc(k.replace('_', ' '))}: {esc(s[k])}</small>"
                    for k in ("stop_reason", "error") if s.get(k))
    return esc(s.get("status", f"unknown (no {SUMMARY_FILE})")) + extra


def _summary_cells(run: RunData) -> dict[str, str]:
    """The summary table's cells of one run (escaped HTML), by row label."""
    s, ev = run.summary, run.eval
    throughput = s.get("throughput_img_per_s")
    return {
        "status": _status(run),
        "method": esc(s.get("method") or _setting(run, "method", "name") or "-"),
        "dataset": esc(s.get("dataset") or _setting(run, "data", "dataset") or "-"),
        "backbone": esc(s.get("backbone") or _setting(run, "model", "backbone") or "-"),
        "recipe": esc(s.get("recipe") or _setting(run, "run", "recipe") or "-"),
        "epochs": esc(f"{s.get('epochs_completed', '-')} of {s.get('epochs', _setting(run, 'train', 'epochs') or '-')}"),
        "steps": esc(f"{s.get('steps', '-')} of {s.get('total_steps', '-')}"),
        "final loss": esc(format_value(run.final_loss)),
        "kNN top-1, trained backbone": _percent(ev.get("knn_top1")),
        "kNN top-1, raw pixels": _percent(ev.get("baseline_pixels_knn_top1")),
        "kNN top-1, untrained backbone": _percent(ev.get("baseline_random_knn_top1")),
        **{text: _percent(ev.get(key)) if key.endswith("top1") else esc(format_value(ev.get(key)))
           for key, text in OPTIONAL_SCORES if key in ev},
        "worst verdict": _level(s.get("worst_verdict")),
        "alarms": esc(len(run.alarms)),
        "training time": _seconds(s.get("train_time_s")),
        "wall time": _seconds(s.get("wall_time_s")),
        "throughput": esc(f"{throughput:.0f} img/s") if isinstance(throughput, int | float) else "-",
    }




def _summary(runs: Sequence[RunData]) -> str:
    cells = [_summary_cells(run) for run in runs]
    labels = list(dict.fromkeys(label for c in cells for label in c))  # a score one run lacks: "-"
    rows = [[esc(label), *(c.get(label, "-") for c in cells)] for label in labels]
    parts = [_table(["", *(esc(run.name) for run in runs)], rows)]
    for run in runs:
        heading = "Verdicts at the end of the run" + (f" — {esc(run.name)}" if len(runs) > 1 else "")
        parts.append(f"<h3>{heading}</h3>\n{_verdicts(run)}")
        if run.notes:
            items = "".join(f"<li>{esc(note)}</li>" for note in run.notes.values())
            parts.append(f'<p class="note">Some files of {esc(run.name)} could not be used:</p><ul class="note">{items}</ul>')
    return "\n".join(parts)


def _final_verdict(run: RunData) -> dict[str, dict[str, Mapping[str, Any]]]:
    """{embedding: {mode: {"level", "since", "reason"}}}: summary.json's final_verdict, or its
    last diagnosis, or the last check row."""
    final = run.summary.get("final_verdict")
    if isinstance(final, Mapping) and final:
        return {str(e): {str(m): v for m, v in modes.items() if isinstance(v, Mapping)}
                for e, modes in final.items() if isinstance(modes, Mapping)}
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for emb, d in (run.summary.get("diagnosis") or {}).items():
        if isinstance(d, Mapping):
            reasons = d.get("reasons") or {}
            out[str(emb)] = {m: {"level": lv, "reason": reasons.get(m, "")} for m, lv in (d.get("verdict") or {}).items()}
    for emb in run.embeddings:
        if emb not in out:
            checks = run.checks.get(emb, {})
            out[emb] = {m: {"level": checks[f"verdict/{m}"][-1], "reason": ""} for m in MODES
                        if checks.get(f"verdict/{m}")}
    return out


def _verdicts(run: RunData) -> str:
    """Each embedding's end-of-run level per mode, in words."""
    final = _final_verdict(run)
    if not final:
        return '<p class="note">No verdict recorded in this run (no monitor checks in metrics.jsonl or summary.json).</p>'
    rows = []
    for emb in sorted(final, key=lambda n: (n != "emb", n != "repr", n)):
        what = EMBEDDING_NAMES.get(emb)
        emb_text = esc(emb) + (f"<br><small>{esc(what)}</small>" if what else "")
        ordered = sorted(final[emb].items(), key=lambda kv: MODES.index(kv[0]) if kv[0] in MODES else len(MODES))
        for i, (mode, v) in enumerate(ordered):
            since = v.get("since")
            words = (f"since step {since}: " if since is not None else "") + str(v.get("reason") or "")
            rows.append([emb_text if i == 0 else "", esc(mode), _level(v.get("level")), esc(words)])
    return _table(["embedding", "collapse mode", "level", "in words"], rows)


def _comparison(c: Comparison) -> str:
    numeric = set(c.numeric_columns)
    rows = []
    for column in c.columns[1:]:
        cells = [esc(column)]
        for i, row in enumerate(c.rows):
            delta = c.deltas[i].get(column) if column in numeric and i > 0 else None
            cells.append(esc(format_value(row.get(column)))
                         + (f' <span class="delta">({esc(format_delta(delta))})</span>' if delta is not None else ""))
        rows.append(cells)
    parts = ["<p>Each run beside the first; the differences against the first run in brackets.</p>",
             _table(["", *(esc(row.get("name")) for row in c.rows)], rows, numeric=range(1, len(c.rows) + 1))]
    if c.config_differences:
        parts.append("<h3>Config keys that differ</h3>")
        parts.append(_table(["key", *(esc(row.get("name")) for row in c.rows)],
                            ([esc(key), *(esc(format_value(v)) for v in values)]
                             for key, values in c.config_differences.items())))
    else:
        parts.append('<p class="note">The configs do not differ (run.name aside).</p>')
    return "\n".join(parts)


def _alarms(runs: Sequence[RunData]) -> str:
    several = len(runs) > 1
    rows = [[*([esc(run.name)] if several else []), esc(a.get("step", "-")), esc(a.get("name", "-")),
             esc(a.get("mode", "-")), _level(a.get("level")), esc(a.get("reason", ""))]
            for run in runs for a in run.alarms]
    if not rows:
        checked = any(run.checks or run.summary.get("final_verdict") for run in runs)
        text = ("No alarms: no collapse mode of a watched embedding got worse during the run." if checked
                else f"Not recorded in {'this run' if not several else 'these runs'} (no monitor checks).")
        return f'<p class="note">{esc(text)}</p>'
    header = [*(["run"] if several else []), "step", "embedding", "mode", "level", "reason"]
    figure = _figure(plots.alarm_figure(runs), "Each alarm at its step: orange = warning, red = collapsed.", "")
    return figure + "\n" + _table(header, rows, numeric=[1 if several else 0])


def _config(runs: Sequence[RunData]) -> str:
    parts = []
    for run in runs:
        if run.config_text is None:
            body = f'<p class="note">{esc(run.notes.get(CONFIG_FILE, CONFIG_FILE + " is missing"))}.</p>'
        else:
            body = f"<pre>{esc(run.config_text)}</pre>"
        if len(runs) > 1:
            parts.append(f"<details><summary>{esc(run.name)}: {CONFIG_FILE}</summary>\n{body}\n</details>")
        else:
            parts.append(body)
    if len(runs) > 1:
        parts.insert(0, '<p>The keys that differ are listed under <a href="#comparison">Comparison</a>; '
                        "each run's full config:</p>")
    return "\n".join(parts)

