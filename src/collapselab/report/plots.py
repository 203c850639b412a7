"""The report's figures, as inline SVG strings (matplotlib ``Figure`` objects, no pyplot state).

Each function takes a list of runs (:class:`~collapselab.report.data.RunData`), overlays them
(one colour per run, a legend with the run names) and returns an ``<svg>`` element, or None when
none of the runs recorded what the figure shows. Text stays text (``svg.fonttype: none``) and is
XML-escaped by matplotlib; ids are made unique per figure so many figures share one page.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from collapselab.report.data import RunData, as_floats

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
LEVEL_COLOURS = {"warning": "#e69f00", "collapsed": "#d62728", "healthy": "#2ca02c"}
RANK_METRICS = (("effective_rank", "effective rank"), ("stable_rank", "stable rank"),
                ("spread", "spread"))
CODE_METRICS = (("code_used_fraction", "fraction of codes used"), ("code_perplexity", "code perplexity"))
MAX_SPECTRA = 6
MAX_POINTS = 1500  # per curve
PANEL = (4.2, 3.0)  # inches per panel
RC = {"svg.fonttype": "none", "svg.hashsalt": "collapselab", "font.size": 9, "axes.titlesize": 10,
      "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 72}
_counter = itertools.count()


# --------------------------------------------------------------------------- helpers


def label(text: str) -> str:
    """A run or embedding name safe as a matplotlib label: ``$`` is not mathtext, and a leading
    ``_`` (which hides a legend entry) is kept visible."""
    text = str(text).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def thin(steps: np.ndarray, values: np.ndarray, most: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``most`` evenly spaced points of a long curve (the last one kept): a figure of a
    200-epoch run stays a few hundred kB."""
    if steps.size <= most:
        return steps, values
    keep = np.unique(np.linspace(0, steps.size - 1, most).round().astype(int))
    return steps[keep], values[keep]


def colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def new_figure(panels: int = 1, *, columns: int = 3, rows: int | None = None) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes laid out in rows of at most ``columns``."""
    columns = max(1, min(columns, panels))
    rows = rows or -(-panels // columns)
    fig = Figure(figsize=(PANEL[0] * columns, PANEL[1] * rows), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel())
    for extra in axes[panels:]:
        extra.set_visible(False)
    return fig, axes[:panels]


def to_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element: no XML declaration, DOCTYPE or metadata block, ids
    prefixed so that several figures on one page never share one."""
    buffer = io.StringIO()
    with mpl.rc_context(RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    prefix = f"f{next(_counter)}-"
    text = re.sub(r'(\bid="|url\(#|href="#)', rf"\g<1>{prefix}", text)
    return text.strip()


def _render(draw: Callable[[Sequence[RunData]], Figure | None], runs: Sequence[RunData]) -> str | None:
    """Run ``draw(runs) -> Figure | None`` under the report's rc settings and serialise it."""
    with mpl.rc_context(RC):
        fig = draw(runs)
        return None if fig is None else to_svg(fig)


def _finish(ax: Axes, *, xlabel: str = "step", ylabel: str = "", title: str = "", legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", frameon=False)


def _line_style(runs: Sequence[RunData], run_index: int, emb_index: int) -> dict[str, str]:
    """One colour per run; with one run, one colour per embedding. Line style per embedding."""
    index = run_index if len(runs) > 1 else emb_index
    return {"color": colour(index), "linestyle": LINESTYLES[emb_index % len(LINESTYLES)]}


def _name(runs: Sequence[RunData], run: RunData, embedding: str | None = None) -> str:
    parts = ([run.name] if len(runs) > 1 else []) + ([embedding] if embedding else [])
    return label(" · ".join(parts)) if parts else label(run.name)


# --------------------------------------------------------------------------- figures


def loss_figure(runs: Sequence[RunData]) -> str | None:
    """Training loss over steps (train rows; epoch means when a run has no train rows)."""

    def draw(runs: Sequence[RunData]) -> Figure | None:
        curves = []
        for i, run in enumerate(runs):
            rows = run.train or run.epochs
            steps, loss = as_floats(r.get("step") for r in rows), as_floats(r.get("loss") for r in rows)
            if np.isfinite(loss).any():
                curves.append((i, run, *thin(steps, loss)))
        if not curves:
            return None
        fig, (ax,) = new_figure()
        fig.set_size_inches(7.0, 3.2)
        for i, run, steps, loss in curves:
            ax.plot(steps, loss, color=colour(i), lw=1.4, label=label(run.name))
        _finish(ax, ylabel="loss", title="training loss", legend=len(runs) > 1)
        return fig

    return _render(draw, runs)


def knn_figure(runs: Sequence[RunData]) -> str | None:
    """Online kNN top-1 (%) over steps, with the final pixel and random-backbone baselines as
    dashed lines when there is one run."""

    def draw(runs: Sequence[RunData]) -> Figure | None:
        curves = []
        for i, run in enumerate(runs):
            rows = [r for r in run.epochs if r.get("knn_top1") is not None]
            steps, knn = as_floats(r.get("step") for r in rows), 100 * as_floats(r.get("knn_top1") for r in rows)
            final = as_floats([run.eval.get("knn_top1")])[0]
            if np.isfinite(knn).any() or np.isfinite(final):
                curves.append((i, run, steps, knn, final))
        if not curves:
            return None
        fig, (ax,) = new_figure()
        fig.set_size_inches(7.0, 3.2)
        for i, run, steps, knn, final in curves:
            ax.plot(steps, knn, color=colour(i), lw=1.4, marker="o", ms=3, label=label(run.name))
            if np.isfinite(final):
                at = as_floats([run.summary.get("steps")])[0]
                at = at if np.isfinite(at) else (steps[-1] if steps.size else 0.0)
                ax.plot([at], [100 * final], color=colour(i), marker="*", ms=11, ls="none",
                        label=label(f"{run.name}: final ({100 * final:.1f} %)") if len(runs) > 1 else
                        label(f"final ({100 * final:.1f} %)"))
        if len(runs) == 1:
            for key, text, style in (("baseline_pixels_knn_top1", "raw pixels", "--"),
                                     ("baseline_random_knn_top1", "untrained backbone", ":")):
                value = as_floats([runs[0].eval.get(key)])[0]
                if np.isfinite(value):
                    ax.axhline(100 * value, color="#555555", ls=style, lw=1.2, label=f"{text} ({100 * value:.1f} %)")
        _finish(ax, ylabel="kNN top-1 (%)", title="kNN top-1 on the held-out split")
        return fig

    return _render(draw, runs)


def _distinct_series(run: RunData, metric: str) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """(embeddings, steps, values) of one metric, embeddings with identical series merged (code
    metrics are the same for every embedding of a run: one line, labelled "emb = repr")."""
    out: list[tuple[list[str], np.ndarray, np.ndarray]] = []
    for emb in run.embeddings:
        steps, values = thin(*run.series(emb, metric))
        if not np.isfinite(values).any():
            continue
        same = next((entry for entry in out if np.array_equal(entry[1], steps)
                     and np.array_equal(entry[2], values, equal_nan=True)), None)
        if same is None:
            out.append(([emb], steps, values))
        else:
            same[0].append(emb)
    return out


def _metric_panels(runs: Sequence[RunData], metrics: Sequence[tuple[str, str]], title: str) -> Figure | None:
    """One panel per metric (only those recorded), a line per embedding × run."""
    present = [(m, text) for m, text in metrics if any(run.has_metric(m) for run in runs)]
    if not present:
        return None
    fig, axes = new_figure(len(present))
    for ax, (metric, text) in zip(axes, present, strict=True):
        for i, run in enumerate(runs):
            for j, (names, steps, values) in enumerate(_distinct_series(run, metric)):
                ax.plot(steps, values, lw=1.4, marker=".", ms=4, label=_name(runs, run, " = ".join(names)),
                        **_line_style(runs, i, j))
        _finish(ax, ylabel=text, title=text.split(" (")[0])
    fig.suptitle(title)
    return fig


def rank_figure(runs: Sequence[RunData]) -> str | None:
    """Effective rank, stable rank and spread of each watched embedding over steps."""
    return _render(lambda r: _metric_panels(r, RANK_METRICS, "how much of the space each embedding uses"), runs)


def code_usage_figure(runs: Sequence[RunData]) -> str | None:
    """Code usage (fraction of codes used, perplexity) over steps; None when no run has codes."""
    return _render(lambda r: _metric_panels(r, CODE_METRICS, "code usage"), runs)


def spectrum_steps(count: int, most: int = MAX_SPECTRA) -> list[int]:
    """Indices of up to ``most`` checks spread evenly over ``count`` (first and last included)."""
    if count <= 0:
        return []
    return sorted({round(float(x)) for x in np.linspace(0, count - 1, min(most, count))})


def spectrum_figure(runs: Sequence[RunData]) -> str | None:
    """Eigenvalue spectra (log scale) at up to six checks, early → late as a colour gradient; a
    panel per embedding, a row per run."""

    def draw(runs: Sequence[RunData]) -> Figure | None:
        grid = [(run, [e for e in run.embeddings if e in run.spectra]) for run in runs]
        grid = [(run, names) for run, names in grid if names]
        if not grid:
            return None
        columns = max(len(names) for _, names in grid)
        fig, axes = new_figure(columns * len(grid), columns=columns, rows=len(grid))
        cmap = mpl.colormaps["viridis"]
        for r, (run, names) in enumerate(grid):
            for c in range(columns):
                ax = axes[r * columns + c]
                if c >= len(names):
                    ax.set_visible(False)
                    continue
                steps, values = run.spectra[names[c]]
                chosen = spectrum_steps(len(steps))
                for k, index in enumerate(chosen):
                    eig = np.asarray(values[index], dtype=float)
                    eig = np.where(eig > 0, eig, np.nan)
                    shade = cmap(0.9 * k / max(len(chosen) - 1, 1))
                    ax.plot(np.arange(1, eig.size + 1), eig, color=shade, lw=1.3, label=f"step {int(steps[index])}")
                ax.set_yscale("log")
                _floor(ax, values)
                _finish(ax, xlabel="eigenvalue index (largest first)", ylabel="eigenvalue",
                        title=label(f"{run.name} · {names[c]}" if len(runs) > 1 else names[c]))
        fig.suptitle("covariance eigenvalue spectrum (early = purple, late = yellow)")
        return fig

    return _render(draw, runs)


def _floor(ax: Axes, values: np.ndarray, decades: float = 12.0) -> None:
    """Show at most ``decades`` below the largest eigenvalue (float noise lies further down)."""
    positive = values[values > 0]
    if positive.size:
        top = float(positive.max())
        ax.set_ylim(bottom=max(float(positive.min()) / 2, top * 10.0**-decades), top=top * 3)


def alignment_uniformity_figure(runs: Sequence[RunData]) -> str | None:
    """Alignment against uniformity over the run, points coloured by step (both lower = better);
    None when alignment was never measured."""

    def draw(runs: Sequence[RunData]) -> Figure | None:
        tracks = []
        for i, run in enumerate(runs):
            for j, emb in enumerate(run.embeddings):
                steps, alignment = run.series(emb, "alignment")
                uniformity = run.series(emb, "uniformity")[1]
                keep = np.isfinite(alignment) & np.isfinite(uniformity)
                if keep.any():
                    tracks.append((i, j, run, emb, steps[keep], uniformity[keep], alignment[keep]))
        if not tracks:
            return None
        fig, (ax,) = new_figure()
        fig.set_size_inches(6.0, 4.0)
        top = max(float(t[4].max()) for t in tracks) or 1.0
        points = None
        for i, j, run, emb, steps, uniformity, alignment in tracks:
            index = i * 3 + j
            ax.plot(uniformity, alignment, color="#999999", lw=0.8, zorder=1)
            points = ax.scatter(uniformity, alignment, c=steps, cmap="viridis", vmin=0, vmax=top, s=22,
                                marker=MARKERS[index % len(MARKERS)], zorder=2, label=_name(runs, run, emb))
        if points is not None:
            bar = fig.colorbar(points, ax=ax, label="step")
            bar.solids.set_rasterized(False)  # vector, not an embedded PNG
        _finish(ax, xlabel="uniformity (lower = more uniform)", ylabel="alignment (lower = views closer)",
                title="alignment against uniformity")
        return fig

    return _render(draw, runs)


def alarm_figure(runs: Sequence[RunData]) -> str | None:
    """Alarms on the step axis, one lane per run × embedding × mode, coloured by level."""

    def draw(runs: Sequence[RunData]) -> Figure | None:
        lanes: dict[str, list[tuple[float, str]]] = {}
        for run in runs:
            for alarm in run.alarms:
                lane = " · ".join(str(p) for p in ([run.name] if len(runs) > 1 else []) +
                                  [alarm.get("name", "?"), alarm.get("mode", "?")])
                lanes.setdefault(lane, []).append((as_floats([alarm.get("step")])[0], str(alarm.get("level"))))
        if not lanes:
            return None
        fig, (ax,) = new_figure()
        label_in = 0.075 * max((len(lane) for lane in lanes), default=0)  # long run names need room
        fig.set_size_inches(7.0 + label_in, 0.9 + 0.35 * len(lanes))
        for y, events in enumerate(lanes.values()):
            for step, level in events:
                ax.scatter([step], [y], s=60, color=LEVEL_COLOURS.get(level, "#7f7f7f"), zorder=2,
                           marker="v" if level == "collapsed" else "o")
        ax.set_yticks(range(len(lanes)), [label(lane) for lane in lanes])
        ax.set_ylim(-0.7, len(lanes) - 0.3)
        ends = as_floats([run.summary.get("steps") for run in runs] + [s for events in lanes.values() for s, _ in events])
        end = float(np.nanmax(ends)) if np.isfinite(ends).any() else 1.0
        ax.set_xlim(0, max(end, 1) * 1.03)
        for level in ("warning", "collapsed"):
            ax.scatter([], [], color=LEVEL_COLOURS[level], marker="v" if level == "collapsed" else "o", label=level)
        _finish(ax, title="alarms")
        return fig

    return _render(draw, runs)


FIGURES = {
    "loss": loss_figure,
    "knn": knn_figure,
    "ranks": rank_figure,
    "spectrum": spectrum_figure,
    "alignment-uniformity": alignment_uniformity_figure,
    "codes": code_usage_figure,
}
