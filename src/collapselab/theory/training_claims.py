"""Training-level claims: published collapse results checked by training a real model on digits.

Each check trains with :func:`collapselab.train` on scikit-learn's digits (the shipped digits
recipe, ``train.threads=1``, ``train.seed=0``, into a temporary directory, not ``./runs``) and
compares the live monitor's verdicts with the paper's prediction: the worst alarm level of a
collapse mode on any watched embedding (backbone ``repr`` or projector ``emb``; 0 healthy,
1 warning, 2 collapsed) and the step of the first ``collapsed`` alarm; the final diagnosis of
``emb``, kNN and effective rank are shown beside them. Runs that collapse stop at the first
``collapsed`` alarm (``monitor.policy=stop``): the prediction is settled there.
The counterfactual trains the *same* recipe with the mechanism switched back on (predictor,
slow EMA, variance/covariance terms, a small β): the prediction is kept, so the check must fail.

The two band claims (``predictor-delays-band-shrinkage``, ``predictor-shapes-rank-trajectory``)
compare trajectories instead of alarms: composite recipe (e) (``configs/composite/e_band.yaml``)
with and without a predictor, the band width and effective rank of ``emb`` at every check. Their
counterfactual keeps the runs and perturbs the prediction into the source's strong reading: the
predictor holds the band for the whole run (it never halves), or the predictor changes only the
path, so both runs end at the same effective rank. Both are false on our runs, so the check must fail.

These claims have ``kind="training"``: ``collapselab verify`` skips them,
``collapselab verify --training`` runs them (about half a minute to a minute per run on one CPU
thread; a claim and its counterfactual train two models).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import tempfile
from pathlib import Path
from typing import Any

from collapselab.theory.claims import Comparison, claim

LEVELS = {"healthy": 0, "warning": 1, "collapsed": 2}
SEED = 0


QUIET = ("log.progress=false", "log.report=false", "log.tensorboard=false")
"""A claim's training run writes no progress bar, report or TensorBoard events: verify prints
the claims; what the runs measured is in each claim's rows."""


@contextlib.contextmanager
def quiet() -> Any:
    """The training runs' own lines (epochs, alarms, the diagnosis) stay out of verify's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def train_summary(
    method: str, overrides: list[str], config_file: str | Path | None = None
) -> dict[str, Any]:
    """Train ``method`` on digits (one thread, fixed seed, temporary folder); return summary.json."""
    import collapselab

    with tempfile.TemporaryDirectory(prefix="collapselab-verify-") as out, quiet():
        run = collapselab.train(
            method,
            "digits",
            config=config_file,
            overrides=[
                "train.threads=1",
                f"train.seed={SEED}",
                "train.device=cpu",
                f"run.out_dir={out}",
                *QUIET,
                *overrides,
            ],
        )
        summary = dict(run.summary)
        summary["_n_codes"] = getattr(run.config.method, "n_codes", None)
    return summary


def worst_alarm(
    summary: dict, modes: tuple[str, ...], names: tuple[str, ...] | None = None
) -> tuple[int, float]:
    """Worst alarm level (0/1/2) of ``modes`` on the watched embeddings ``names`` (all when None)
    and the step of the first ``collapsed`` alarm among them (nan when none)."""
    alarms = [
        a for a in summary["alarms"] if a["mode"] in modes and (names is None or a["name"] in names)
    ]
    level = max((LEVELS.get(a["level"], 0) for a in alarms), default=0)
    steps = [a["step"] for a in alarms if a["level"] == "collapsed"]
    return level, float(min(steps)) if steps else float("nan")


def context(summary: dict, name: str = "emb") -> str:
    """Final verdicts, kNN and effective rank of a run, for the table."""
    diag = summary["diagnosis"][name]
    verdict = ", ".join(f"{m} {v}" for m, v in diag["verdict"].items() if v != "n/a")
    knn = summary.get("eval", {}).get("knn_top1", float("nan"))
    erank = diag["metrics"]["effective_rank"]
    alarms = "; ".join(
        f"{a['name']} {a['mode']} {a['level']}@{a['step']}" for a in summary["alarms"]
    )
    return (
        f"[{summary['status']} after {summary['steps']} steps; alarms: {alarms or 'none'}; final {name}: "
        f"{verdict}; erank {erank:.1f}; kNN {knn:.1%}]"
    )


def collapse_rows(summary: dict, modes: tuple[str, ...], label: str) -> list[Comparison]:
    """Rows for "this run raises a ``collapsed`` alarm on ``modes``"."""
    level, step = worst_alarm(summary, modes)
    return [
        Comparison(
            f"{label}: worst {'/'.join(modes)} alarm level (2 = collapsed) {context(summary)}",
            2.0,
            float(level),
            0.0,
        ),
        Comparison(
            f"{label}: step of the first collapsed alarm < steps trained",
            float(summary["steps"]) + 0.5,
            step,
            relation="<",
        ),
    ]


def healthy_rows(summary: dict, modes: tuple[str, ...], label: str) -> list[Comparison]:
    """Rows for "this run raises no ``collapsed`` alarm on ``modes``"."""
    level, _ = worst_alarm(summary, modes)
    return [
        Comparison(
            f"{label}: worst {'/'.join(modes)} alarm level < 2 {context(summary)}",
            2.0,
            float(level),
            relation="<",
        )
    ]


STOP = "monitor.policy=stop"


@claim(
    "simsiam-no-predictor-collapses",
    source="Chen & He 2021 (arXiv 2011.10566), Table 1 / §4; docs/training.md",
    statement="SimSiam without its predictor collapses: on digits, method.predictor=none raises a "
    "dimensional 'collapsed' alarm (measured steps: docs/training.md).",
    counterfactual="the same run with the predictor (the recipe) raises no collapsed alarm",
    slow=True,
    kind="training",
)
def _check_simsiam_no_predictor(counterfactual: bool) -> list[Comparison]:
    overrides = [STOP] if counterfactual else ["method.predictor=none", STOP]
    label = "simsiam (recipe, with predictor)" if counterfactual else "simsiam predictor=none"
    return collapse_rows(train_summary("simsiam", overrides), ("dimensional",), label)


@claim(
    "byol-no-predictor-fast-ema-collapses",
    source="Grill et al. 2020 (arXiv 2006.07733), Table 5b; docs/training.md",
    statement="BYOL without a predictor and with a fast target (τ = 0.9) collapses: on digits "
    "method.predictor=none method.ema=0.9 raises a dimensional 'collapsed' alarm "
    "(measured step: docs/training.md).",
    counterfactual="the same run with the predictor (method.ema=0.9) raises no collapsed alarm",
    slow=True,
    kind="training",
)
def _check_byol_no_predictor(counterfactual: bool) -> list[Comparison]:
    overrides = ["method.ema=0.9", STOP]
    if not counterfactual:
        overrides.insert(0, "method.predictor=none")
    label = "byol ema=0.9 (with predictor)" if counterfactual else "byol predictor=none ema=0.9"
    return collapse_rows(train_summary("byol", overrides), ("dimensional",), label)


def _composite_config(name: str) -> Path:
    import collapselab

    return Path(collapselab.__file__).parent / "configs" / "composite" / f"{name}.yaml"


def _methods() -> set[str]:
    from collapselab.methods import METHODS

    return set(METHODS)


if "composite" in _methods():

    @claim(
        "alignment-alone-collapses",
        source="the naive objective is minimised by a constant (docs/theory.md); Bardes et al. 2022 "
        "(VICReg) §4.3; docs/methods.md (composite ablation)",
        statement="The alignment term alone collapses: composite config (a) raises a 'collapsed' "
        "alarm (complete or dimensional, backbone or embedding); adding variance and covariance (b) "
        "prevents it.",
        counterfactual="config (b), alignment + variance + covariance, raises no collapsed alarm",
        slow=True,
        kind="training",
    )
    def _check_alignment_alone(counterfactual: bool) -> list[Comparison]:
        name = "b_vic" if counterfactual else "a_alignment"
        summary = train_summary("composite", [STOP], config_file=_composite_config(name))
        return collapse_rows(summary, ("complete", "dimensional"), f"composite ({name})")


if "falcon" in _methods():

    @claim(
        "falcon-uses-all-codes",
        source="Sansone, Lebailly & Tuytelaars 2025 (FALCON/CPLearn, arXiv 2410.04959), code-usage "
        "guarantee (§3–4); configs/falcon_digits.yaml",
        statement="FALCON's prior-matching term keeps the codebook in use: the digits recipe "
        "(c = 32, β = 0.25) ends with ≥ 90 % of its codes used on the probe and no cluster alarm.",
        counterfactual="the same recipe with β = 1 (the paper's default weight, too strong for "
        "digits) ends with fewer than 90 % of the codes used",
        slow=True,
        kind="training",
    )
    def _check_falcon_codes(counterfactual: bool) -> list[Comparison]:
        overrides = ["method.beta=1.0"] if counterfactual else []
        summary = train_summary("falcon", overrides)
        used = [
            (name, d["metrics"]["code_used"])
            for name, d in summary["diagnosis"].items()
            if "code_used" in d["metrics"]
        ]
        if not used:
            raise RuntimeError("the falcon run's final diagnosis reports no code_used")
        name, count = used[0]
        metrics = summary["diagnosis"][name]["metrics"]
        codes = float(summary["_n_codes"] or metrics.get("code_max_perplexity", count))
        cluster = [a for a in summary["alarms"] if a["mode"] == "cluster"]
        level = max((LEVELS.get(a["level"], 0) for a in cluster), default=0)
        label = "falcon β=1" if counterfactual else "falcon recipe β=0.25"
        perplexity = metrics.get("code_perplexity", float("nan"))
        return [
            Comparison(
                f"{label}: fraction of the {codes:.0f} codes used on the probe ≥ 0.9 "
                f"[{count:.0f} used, perplexity {perplexity:.1f}] {context(summary, name)}",
                0.9 - 1e-9,
                count / codes,
                relation=">",
            ),
            Comparison(f"{label}: worst cluster alarm level (0 = none)", 0.0, float(level), 0.0),
        ]


# --------------------------------------------------------------------------- the uncertainty band


@functools.lru_cache(maxsize=8)
def band_run(predictor: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    """Train composite recipe (e), ``configs/composite/e_band.yaml``, with ``method.predictor`` and
    ``overrides``; summary.json with the projector output's checks under ``"_checks"`` (one run
    per setting and process: a claim and its counterfactual share them)."""
    import collapselab
    from collapselab.runs import RunFolder

    with tempfile.TemporaryDirectory(prefix="collapselab-verify-") as out, quiet():
        run = collapselab.train(
            "composite", "digits", config=_composite_config("e_band"),
            overrides=["train.threads=1", f"train.seed={SEED}", "train.device=cpu", f"run.out_dir={out}",
                       *QUIET, f"method.predictor={predictor}", *overrides],
        )
        summary = dict(run.summary)
        folder = RunFolder(run.dir)
        history = folder.history()
        summary["_checks"] = folder.checks(history).get("emb", {})
        summary["_check_losses"] = [r.get("loss") for r in history if r.get("kind") == "check"]
    return summary


def halving_step(checks: dict[str, list[Any]], metric: str = "band_width") -> float:
    """The first checked step at which ``metric`` is below half its value at the first check
    (inf when it never is)."""
    values = checks[metric]
    return next((float(s) for s, v in zip(checks["step"], values, strict=True) if v < 0.5 * values[0]), math.inf)


def _series(summary: dict[str, Any], metric: str) -> dict[int, float]:
    checks = summary["_checks"]
    return {int(s): float(v) for s, v in zip(checks["step"], checks[metric], strict=True)}


def _trajectory(summary: dict[str, Any], metric: str, steps: tuple[int, ...]) -> str:
    series = _series(summary, metric)
    return ", ".join(f"{s}: {series[s]:.3g}" for s in steps if s in series)


BAND_UNPROTECTED = ("method.band_prior_weight=0", "train.epochs=8", "monitor.every=1")
"""Recipe (e) without the band's prior, 40 steps, a check at every step: nothing but the
likelihood acts on the band."""

if "composite" in _methods():

    @claim(
        "predictor-delays-band-shrinkage",
        source="the predictor's role in the dynamics: Grill et al. 2020 (BYOL), Tian, Chen & Ganguli 2021 "
        "(arXiv 2102.06810); applied to a band trained by a Gaussian likelihood (Kendall & Gal 2017; "
        "Oh et al. 2019); docs/methods.md \"The uncertainty band\"",
        statement="With the band unprotected (composite recipe (e) without its prior: the band's "
        "Gaussian likelihood, variance and covariance terms), the run with an MLP predictor keeps "
        "its band wider for longer than the same objective aligned directly: its mean band falls "
        "below half its initial width later, and stays wider after the direct run's band has halved.",
        counterfactual="the strong reading, the predictor holds the band: with the predictor the band "
        "never falls below half its start within the run (a delay of at least the rest of the run)",
        slow=True,
        kind="training",
    )
    def _check_predictor_delays_band(counterfactual: bool) -> list[Comparison]:
        direct, other = band_run("none", BAND_UNPROTECTED), band_run("mlp", BAND_UNPROTECTED)
        label = "mlp predictor"
        # a band that never halves counts as halving one step after the last check (finite rows)
        last = max(int(s) for s in other["_checks"]["step"])
        h_direct = min(halving_step(direct["_checks"]), last + 1.0)
        h_other = min(halving_step(other["_checks"]), last + 1.0)
        # the counterfactual's prediction: the predictor's band never halves before the last check
        delay = last - h_direct if counterfactual else 0.0
        w_direct, w_other = _series(direct, "band_width"), _series(other, "band_width")
        after = [s for s in w_direct if s >= h_direct and s in w_other]
        log_ratio = sum(math.log(w_other[s] / w_direct[s]) for s in after) / max(len(after), 1)
        steps = (0, 10, 20, 25, 30, 40)
        return [
            Comparison(
                f"step at which the mean band falls below half its start, {label} minus direct"
                f"{' (predicted: beyond the last check)' if counterfactual else ''} "
                f"[direct {h_direct:g}, {label} {h_other:g}; band widths direct {{{_trajectory(direct, 'band_width', steps)}}}, "
                f"{label} {{{_trajectory(other, 'band_width', steps)}}}]",
                delay, h_other - h_direct, relation=">",
            ),
            Comparison(
                f"geometric mean of {label}'s band / direct's over the {len(after)} checks after the direct "
                f"band halved [effective rank direct {{{_trajectory(direct, 'effective_rank', steps)}}}, "
                f"{label} {{{_trajectory(other, 'effective_rank', steps)}}}; {context(other)}]",
                1.0, math.exp(log_ratio), relation=">",
            ),
        ]

    @claim(
        "predictor-shapes-rank-trajectory",
        source="Tian, Chen & Ganguli 2021 (arXiv 2102.06810): the predictor changes the dynamics, not "
        "the objective's minimisers; docs/methods.md \"The uncertainty band\"",
        statement="The same objective (composite recipe (e): band likelihood, KL prior, variance and "
        "covariance), minimised with and without an MLP predictor on digits, ends at the same loss "
        "(within 5 %) while the embedding's effective rank follows a different path: higher with the "
        "predictor at more than nine checks in ten after the monitor's warm-up.",
        counterfactual="the strong reading of 'objectives shape geometry': the predictor changes only "
        "the path, so both runs end at the same effective rank (within 5 %) instead of a higher one",
        slow=True,
        kind="training",
    )
    def _check_predictor_shapes_rank(counterfactual: bool) -> list[Comparison]:
        direct, other = band_run("none", ()), band_run("mlp", ())
        label = "mlp predictor"
        e_direct, e_other = _series(direct, "effective_rank"), _series(other, "effective_rank")
        warm = int(direct["_checks"]["step"][0]) + 20  # the recipe's monitor.warmup_epochs = 4 (20 steps)
        after = [s for s in e_direct if s >= warm and s in e_other]
        higher = sum(e_other[s] > e_direct[s] for s in after) / max(len(after), 1)
        final_direct, final_other = _final_loss(direct), _final_loss(other)
        steps = (0, 10, 20, 30, 50, 100)
        if counterfactual:  # the same geometry at the end: the final effective ranks agree within 5 %
            final = max(e_direct)
            rank_row = Comparison(
                f"relative difference of the final effective ranks, {label} vs direct (predicted: the "
                f"same geometry) [direct {e_direct[final]:.3g}, {label} {e_other.get(final, math.nan):.3g}]",
                0.05, abs(e_other.get(final, math.nan) - e_direct[final]) / e_direct[final], relation="<",
            )
        else:
            rank_row = Comparison(
                f"fraction of the {len(after)} checks from step {warm} at which {label}'s effective rank "
                f"is the higher [direct {{{_trajectory(direct, 'effective_rank', steps)}}}, {label} "
                f"{{{_trajectory(other, 'effective_rank', steps)}}}]",
                0.9, higher, relation=">",
            )
        return [
            Comparison(
                f"relative difference of the final losses, {label} vs direct [direct {final_direct:.4g}, "
                f"{label} {final_other:.4g}]",
                0.05, abs(final_other - final_direct) / abs(final_direct), relation="<",
            ),
            rank_row,
        ]


def _final_loss(summary: dict[str, Any]) -> float:
    """The training loss of the last check (the mean since the check before it)."""
    losses = [v for v in summary["_check_losses"] if isinstance(v, float) and math.isfinite(v)]
    if not losses:
        raise RuntimeError("the run recorded no training loss at its checks")
    return float(losses[-1])
