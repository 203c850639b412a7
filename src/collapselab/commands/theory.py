"""``collapselab theory``: fixed points, phase maps and simulations of linear SSL dynamics.

Each subcommand prints a short summary and writes its numbers (CSV/JSON) and figures (PNG) to
``--out`` (default ``theory-out/``). See docs/theory.md for the equations.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collapselab._validation import InputError
from collapselab.cli import EXIT_OK, EXIT_USAGE


def parse_grid(text: str) -> list[float]:
    """``"0.1"`` → [0.1]; ``"0,0.5,1"`` → list; ``"start:stop:num"`` → num evenly spaced values."""
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
            if num < 1:
                raise ValueError
            if num == 1:
                return [start]
            return [start + (stop - start) * i / (num - 1) for i in range(num)]
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(
            f"cannot read grid {text!r}: give a number, a comma list (0,0.5,1) or start:stop:num (0:1:50)"
        ) from None


SIGNED_VALUE = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)
"""A value that starts with a minus: -0.2:1.2:80, -1e-3, -1,0,1, -inf (argparse takes it for an
option unless it is a plain negative number such as -0.5)."""

class SignedValueParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose one-value options take a value starting with a minus and a
    digit as written: ``--p0 -0.2:1.2:80`` is read as ``--p0=-0.2:1.2:80``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.value_options: set[str] = set()

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.nargs in (None, 1):
            self.value_options.update(action.option_strings)
        return action

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        return super().parse_known_args(self.join_signed_values(sys.argv[1:] if args is None else args), namespace)

    def join_signed_values(self, args: Sequence[str]) -> list[str]:
        """``[--p0, -0.2:1.2:80]`` → ``[--p0=-0.2:1.2:80]`` for the options that take one value
        (a long option may be abbreviated, as argparse allows); nothing after ``--``."""
        out: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":
                return out + list(args[i:])
            option = self._value_option(token)
            if option and i + 1 < len(args) and SIGNED_VALUE.match(args[i + 1]) and args[i + 1] not in self.value_options:
                out.append(f"{option}={args[i + 1]}")
                i += 2
                continue
            out.append(token)
            i += 1
        return out

    def _value_option(self, token: str) -> str | None:
        if token in self.value_options:
            return token
        if token.startswith("--") and "=" not in token and len(token) > 2:
            matches = [o for o in self.value_options if o.startswith(token)]
            return matches[0] if len(matches) == 1 else None
        return None


def check_numbers(option: str, values: float | Sequence[float], low: float | None = None,
                  strict: bool = False) -> None:
    """Raise ``InputError`` naming ``option`` unless every value is finite and >= ``low``
    (> ``low`` when ``strict``): the CLI's own words before the theory API's checks."""
    for value in [values] if isinstance(values, int | float) else values:
        if not (math.isfinite(value) and (low is None or (value > low if strict else value >= low))):
            bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
            raise InputError(f"{option}: must be a finite number{bound}, got {value:g}")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "theory",
        help="fixed points, phase maps and simulations of linear SSL dynamics",
        description="The theory lab: eigenmode fixed points and stability (Tian, Chen & Ganguli 2021), "
        "phase maps of where modes collapse, and simulations of the full linear model.",
    )
    sub = parser.add_subparsers(dest="theory_command", metavar="SUBCOMMAND", parser_class=SignedValueParser)

    fp = sub.add_parser("fixed-points", help="p*±, s*±, existence threshold and Jacobian stability")
    fp.add_argument("--eta", type=float, default=0.05, help="weight decay η (default 0.05)")
    fp.add_argument(
        "--sigma2", type=float, default=0.0, help="augmentation variance σ² (default 0)"
    )
    fp.add_argument(
        "--tau", type=float, default=1.0, help="target ratio τ > 0 (default 1: stop-gradient)"
    )
    fp.add_argument(
        "--alpha-p", type=float, default=1.0, help="predictor rate ratio α_p (default 1)"
    )
    fp.add_argument("--json", action="store_true", help="print JSON")
    fp.set_defaults(theory_func=run_fixed_points)

    pm = sub.add_parser(
        "phase-map", help="integrate a grid of eigenmodes and map where they collapse"
    )
    pm.add_argument("--target", choices=("stopgrad", "ema", "direct"), default="stopgrad")
    pm.add_argument("--no-predictor", action="store_true", help="p ≡ 1 (no predictor)")
    pm.add_argument(
        "--eta", default="0.005:0.3:60", help="weight-decay grid (default 0.005:0.3:60)"
    )
    pm.add_argument("--alpha-p", default="1", help="α_p grid (default 1)")
    pm.add_argument("--beta", default="1", help="EMA rate grid (default 1; EMA only)")
    pm.add_argument("--sigma2", default="0", help="σ² grid (default 0)")
    pm.add_argument("--p0", default="-0.2:1.2:80", help="initial p grid (default -0.2:1.2:80)")
    pm.add_argument(
        "--s0",
        type=float,
        default=None,
        help="initial s for all (default p0²/α_p, the invariant manifold)",
    )
    pm.add_argument("--x", default="p0", help="figure x axis (default p0)")
    pm.add_argument("--y", default="eta", help="figure y axis (default eta)")
    pm.add_argument(
        "--t-max", type=float, default=1e5, help="time limit per configuration (default 1e5)"
    )
    pm.add_argument("--out", default="theory-out", help="output folder (default theory-out)")
    pm.set_defaults(theory_func=run_phase_map)

    sim = sub.add_parser("simulate", help="simulate the full linear model and classify each mode")
    sim.add_argument("--target", choices=("direct", "stopgrad", "ema"), default="stopgrad")
    sim.add_argument("--no-predictor", action="store_true")
    sim.add_argument("--n", type=int, default=8, help="input dimension (default 8)")
    sim.add_argument("--d", type=int, default=4, help="output dimension (default 4)")
    sim.add_argument("--sigma2", type=float, default=0.5, help="X′ = σ²I (default 0.5)")
    sim.add_argument("--eta", type=float, default=0.05, help="weight decay η (default 0.05)")
    sim.add_argument("--alpha-p", type=float, default=1.0)
    sim.add_argument("--beta", type=float, default=1.0)
    sim.add_argument("--configs", type=int, default=1, help="number of random initialisations")
    sim.add_argument("--init-scale", type=float, default=1.0)
    sim.add_argument("--t-end", type=float, default=60.0)
    sim.add_argument("--dt", type=float, default=0.05, help="RK4 step or SGD learning rate")
    sim.add_argument("--integrator", choices=("rk4", "adaptive", "sgd"), default="rk4")
    sim.add_argument("--batch-size", type=int, default=256, help="sampled pairs per SGD step")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--out", default="theory-out")
    sim.set_defaults(theory_func=run_simulate)

    def dispatch(args: argparse.Namespace) -> int:
        chosen = getattr(args, "theory_func", None)
        if chosen is None:
            parser.print_usage(sys.stderr)
            print("error: give a subcommand: fixed-points, phase-map or simulate "
                  "(collapselab theory --help)", file=sys.stderr)
            return EXIT_USAGE
        return chosen(args)

    parser.set_defaults(func=dispatch)
    return parser


def _error(err: Exception | str) -> int:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USAGE


def run_fixed_points(args: argparse.Namespace) -> int:
    from collapselab.theory.eigenmodes import existence_threshold, fixed_points, stability

    try:
        check_numbers("--eta", args.eta, 0)
        check_numbers("--sigma2", args.sigma2, 0)
        check_numbers("--alpha-p", args.alpha_p, 0, strict=True)
        check_numbers("--tau", args.tau, 0, strict=True)  # the target ratio W_a = τW
        fp = fixed_points(args.eta, args.sigma2, args.tau, args.alpha_p)
        params = dict(eta=args.eta, alpha_p=args.alpha_p, sigma2=args.sigma2, target="stopgrad")
        out = {
            "eta": args.eta,
            "sigma2": args.sigma2,
            "tau": args.tau,
            "alpha_p": args.alpha_p,
            "threshold_eta": float(existence_threshold(args.tau, args.sigma2)),
            "exists": bool(fp["exists"]),
            "origin_max_real": float(stability(0.0, 0.0, args.tau, **params)["max_real"]),
        }
        if out["exists"]:
            for tag in ("plus", "minus"):
                p, s = float(fp[f"p_{tag}"]), float(fp[f"s_{tag}"])
                st = stability(p, s, args.tau, **params)
                out[f"p_{tag}"], out[f"s_{tag}"] = p, s
                out[f"max_real_{tag}"] = float(st["max_real"])
    except InputError as err:
        return _error(err)
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    print(f"η = {args.eta:g}, σ² = {args.sigma2:g}, τ = {args.tau:g}, α_p = {args.alpha_p:g}")
    print(f"existence threshold η_c = τ²/(4(1+σ²)) = {out['threshold_eta']:.6g}")
    if out["exists"]:
        for tag, sign in (("plus", "₊"), ("minus", "₋")):
            kind = "stable" if out[f"max_real_{tag}"] < 0 else "unstable"
            print(
                f"p*{sign} = {out[f'p_{tag}']:.6g}, s*{sign} = {out[f's_{tag}']:.6g}: "
                f"max Re λ(J) = {out[f'max_real_{tag}']:.4g} ({kind})"
            )
    else:
        print("no non-trivial fixed point: every mode collapses")
    print(f"origin: max Re λ(J) = {out['origin_max_real']:.4g}")
    return EXIT_OK


def run_phase_map(args: argparse.Namespace) -> int:
    from collapselab.theory.eigenmodes import PHASE_AXES, phase_map

    try:
        for option, axis in (("--x", args.x), ("--y", args.y)):
            if axis not in PHASE_AXES:
                raise InputError(f"{option} {axis!r}: give one of {', '.join(PHASE_AXES)}")
        if args.x == args.y:
            raise InputError(f"--x and --y must be different axes, both are {args.x!r}")
        grids = {
            name: parse_grid(getattr(args, name))
            for name in ("eta", "alpha_p", "beta", "sigma2", "p0")
        }
        check_numbers("--eta", grids["eta"], 0)
        check_numbers("--alpha-p", grids["alpha_p"], 0, strict=True)
        try:
            check_numbers("--beta", grids["beta"], 0 if args.target == "ema" else None, strict=True)
        except InputError as err:
            raise InputError(f"{err} (β → ∞ is the stop-gradient target: --target stopgrad)") from None
        check_numbers("--sigma2", grids["sigma2"], 0)
        check_numbers("--p0", grids["p0"])
        if args.s0 is not None:
            check_numbers("--s0", args.s0, 0)
        check_numbers("--t-max", args.t_max, 0, strict=True)
        result = phase_map(
            **grids,
            s0=args.s0,
            target=args.target,
            predictor=not args.no_predictor,
            t_max=args.t_max,
        )
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        png, csv_path, json_path = (
            out / "phase_map.png",
            out / "phase_map.csv",
            out / "phase_map.json",
        )
        result.plot(png, x=args.x, y=args.y)
    except InputError as err:
        return _error(err)
    result.write_csv(csv_path)
    result.write_json(json_path)
    counts = result.counts()
    print(
        f"{result.size} configurations ({args.target}) integrated in {result.seconds:.2f} s: "
        f"{counts['collapsed']} collapsed, {counts['non-collapsed']} non-collapsed, {counts['undecided']} undecided"
    )
    print(f"agreement with the fixed-τ theory (collapse iff p0 < p*₋): {result.agreement():.4f}")
    print(f"wrote {png}, {csv_path}, {json_path}")
    return EXIT_OK


SIMULATE_OPTIONS = {"dt": "--dt", "weight_decay": "--eta", "sigma2": "--sigma2",
                    "init_scale": "--init-scale"}
"""How a divergence message names the parameters to lower: the options of ``theory simulate``."""


def run_simulate(args: argparse.Namespace) -> int:
    from collapselab.theory.linear import DivergenceError, simulate

    try:
        for option, value in (("--n", args.n), ("--d", args.d), ("--configs", args.configs),
                              ("--batch-size", args.batch_size)):
            if value < 1:
                raise InputError(f"{option}: must be >= 1, got {value}")
        check_numbers("--eta", args.eta, 0)
        check_numbers("--sigma2", args.sigma2, 0)
        check_numbers("--alpha-p", args.alpha_p, 0, strict=True)
        check_numbers("--beta", args.beta, 0, strict=True)
        check_numbers("--init-scale", args.init_scale)  # a std: its sign only flips W
        check_numbers("--t-end", args.t_end, 0, strict=True)
        check_numbers("--dt", args.dt, 0, strict=True)
        res = simulate(
            args.target,
            predictor=not args.no_predictor,
            n=args.n,
            d=args.d,
            sigma2=args.sigma2,
            weight_decay=args.eta,
            alpha_p=args.alpha_p,
            beta=args.beta,
            num_configs=args.configs,
            init_scale=args.init_scale,
            t_end=args.t_end,
            dt=args.dt,
            integrator=args.integrator,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except DivergenceError as err:
        return _error(err.describe(SIMULATE_OPTIONS))
    except InputError as err:
        return _error(err)
    csv_path, json_path, png = (
        out / "trajectories.csv",
        out / "summary.json",
        out / "trajectories.png",
    )
    from collapselab.runs import write_atomic

    with io.StringIO(newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", "config", "mode", "singular_value", "s", "p", "tau", "loss"])
        for k, t in enumerate(res.times.tolist()):
            for b in range(res.s.shape[1]):
                for j in range(res.s.shape[2]):
                    writer.writerow(
                        [
                            t,
                            b,
                            j,
                            float(res.singular_values[k, b, j]),
                            float(res.s[k, b, j]),
                            float(res.p[k, b, j]),
                            float(res.tau[k, b, j]),
                            float(res.loss[k, b]),
                        ]
                    )
        write_atomic(csv_path, handle.getvalue())
    summary = {
        "target": args.target,
        "predictor": not args.no_predictor,
        "integrator": args.integrator,
        **res.summary(),
    }
    write_atomic(json_path, json.dumps(summary, indent=2))
    _plot_simulation(res, png, f"{args.target}{'' if not args.no_predictor else ', no predictor'}")
    for b, modes in enumerate(res.outcome):
        if not bool(res.converged[b]):
            print(f"config {b}: not yet at an equilibrium at t = {args.t_end:g} (raise --t-end)")
        limits = ", ".join(
            f"{o} (s={float(res.limit['s'][b, j]):.3g})" for j, o in enumerate(modes)
        )
        print(f"config {b}: {limits}")
    print(f"wrote {png}, {csv_path}, {json_path}")
    return EXIT_OK


def _plot_simulation(res, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = res.times.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.4), dpi=100)
    for j in range(res.s.shape[2]):
        axes[0].semilogy(
            t, res.singular_values[:, 0, j].clamp_min(1e-16).numpy(), label=f"mode {j}"
        )
        axes[1].plot(t, res.p[:, 0, j].numpy())
    axes[0].set_xlabel("t")
    axes[0].set_ylabel("singular values of W")
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("p_j (predictor along mode)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
