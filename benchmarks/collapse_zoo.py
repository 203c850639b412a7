"""The collapse zoo: short runs that collapse or do not, labelled without the monitor, and how
often the monitor's end-of-run verdicts agree — calibrated on one half, reported on the other.

Cases (``CASES``):

- ``train``: ``collapselab.train`` runs of every method with and without its anti-collapse
  switches, on scikit-learn's digits (8×8) and on 16- and 32-px class-balanced subsets of the
  CIFAR-10 training images (``--cifar``: the folder the CIFAR-10 pack's decoder wrote; without it
  those cases are skipped and reported as such);
- ``plain``: a 40-line PyTorch loop (ReLU MLP on digits, SimSiam/VICReg objectives), which feeds
  its embeddings to a :class:`~collapselab.CollapseMonitor` through the public API — embeddings
  written by code that is not collapselab's trainer;
- ``synthetic``: embedding sequences of known construction (a point, a ray, a rank-k shrink, code
  concentration, clusters shrinking to points; and healthy ones: stationary, anisotropic,
  growing scale, rotating, an early dip that recovers).

Each case is labelled by an outcome defined **without the monitor** (``label``), fixed before
any verdict was looked at:

- collapsed (modes complete/dimensional) if the final kNN top-1 of the backbone is more than
  ``KNN_MARGIN`` points below *both* the untrained backbone and raw pixels (same kNN), or if the
  final loss sits at its closed-form complete-collapse value (within 1 % of the distance the
  first epoch's loss had from it);
- collapsed (mode cluster) for code methods whose codes, on the held-out images, use fewer than
  ``CODE_USAGE_LABEL`` of the codes available (``min(c, N)``);
- synthetic cases: by construction;
- healthy otherwise.

How precise is a kNN label? Each record also keeps the per-query difference between the
backbone's kNN hits and the lower floor's on the same queries (``floor_diff``) and its standard
error (``floor_se``; near the floor 1.0–1.4 points on digits' 359 queries, 1.3–1.9 on 1,000 CIFAR-10
queries).
A label resting on the kNN alone whose kNN is within ``LABEL_Z`` = 2 standard errors of the floor
is *undetermined*: the data cannot say on which side of the floor the run ended. The summary
adds recall and false alarms over the determined cases only, as an analysis beside the pre-set
rule's numbers, which stay the result.

The split is fixed by rule, not by outcome: within each data group (digits, c16, c32, plain,
synthetic) the cases sorted by name alternate between ``calibrate`` (even positions) and
``held-out`` (odd).

The verdicts come from :func:`collapselab.diagnostics.replay`: the recorded per-check metrics
and losses of each case replayed through the current rules, which is what the trainer prints
(``tests/diagnostics/test_replay.py`` checks the two agree). So the rules can be recalibrated
without re-running the cases.

Targets on the held-out half: recall ≥ 95 % (collapsed cases end ``warning`` or ``collapsed`` in
a mode of their label), false alarms ≤ 5 % (healthy cases end with no warning), lead ≥ 80 % (where
the online kNN falls below the baselines, the first alarm comes at or before that epoch).

    python benchmarks/collapse_zoo.py --out /tmp/zoo --cifar /tmp/cifar10      # ~20 min, 2 cores
    python benchmarks/collapse_zoo.py --out /tmp/zoo --score                    # re-score only
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from collapselab.diagnostics import CollapseMonitor, replay

HERE = Path(__file__).resolve().parent
KNN_MARGIN = 1.0
"""Points of kNN top-1 below both baselines that make a run collapsed (a healthy short run on
digits can land a fraction of a point under raw pixels by chance)."""
LOSS_AT_COLLAPSE = 0.01
"""|final loss − collapse value| ≤ this × |first-epoch loss − collapse value|: the loss is at its
complete-collapse value."""
CODE_USAGE_LABEL = 0.75
"""Code methods: fewer than this fraction of the available codes used on held-out images."""
LABEL_Z = 2.0
"""A label that rests on the kNN alone is *undetermined* when the kNN is within this many
standard errors of the floor (the paired difference over the same queries; ~95 % two-sided)."""
TRAIN_COMMON = ["train.threads=1", "train.adapt_threads=false", "log.progress=false", "eval.knn_every=1",
                "log.tensorboard=false"]
CIFAR_IMAGES, CIFAR_QUERIES = 2000, 1000


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # train | plain | synthetic
    group: str  # digits | c16 | c32 | plain | synthetic
    method: str = ""
    overrides: tuple[str, ...] = ()
    construction: str = ""
    expected: str = ""  # what the switch is known to do (documentation only; labels come from outcomes)
    extra: dict[str, Any] = field(default_factory=dict)


def _train_cases() -> list[Case]:
    cases = []
    digits = [
        ("simclr", (), "healthy"), ("simclr_seed1", ("train.seed=1",), "healthy"),
        ("simclr_tau5", ("method.temperature=5.0",), "weak negatives"),
        ("moco", (), "healthy"), ("byol", (), "healthy"), ("byol_seed1", ("train.seed=1",), "healthy"),
        ("byol_nopred_noema", ("method.predictor=none", "method.ema=off"), "collapse"),
        ("byol_nopred", ("method.predictor=none",), "collapse"),
        ("simsiam", (), "healthy"), ("simsiam_nosg", ("method.stop_gradient=false",), "collapse"),
        ("simsiam_nopred", ("method.predictor=none",), "collapse"),
        ("simsiam_nosg_seed1", ("method.stop_gradient=false", "train.seed=1"), "collapse"),
        ("vicreg", (), "healthy"), ("vicreg_novar", ("method.variance_weight=0", "train.epochs=5"), "collapse"),
        ("vicreg_novar_long", ("method.variance_weight=0",), "collapse"),
        ("vicreg_novar_nocov", ("method.variance_weight=0", "method.covariance_weight=0"), "collapse"),
        ("barlow_twins", (), "healthy"), ("barlow_twins_nooffdiag", ("method.lambda_offdiag=0",), "redundant"),
        ("falcon", (), "healthy"), ("falcon_beta1", ("method.beta=1",), "cluster"),
        ("falcon_beta0", ("method.beta=0",), "cluster collapse"),
        ("directpred", (), "healthy"), ("composite", (), "healthy"),
        ("composite_align_only", ("method.variance_weight=0", "method.covariance_weight=0"), "collapse"),
    ]
    for name, overrides, expected in digits:
        method = name.split("_")[0] if not name.startswith("barlow") else "barlow_twins"
        cases.append(Case(f"digits/{name}", "train", "digits", method, overrides, expected=expected))
    small = [
        ("simclr", (), "healthy"), ("byol", (), "healthy"), ("simsiam", (), "healthy"),
        ("simsiam_nosg", ("method.stop_gradient=false",), "collapse"),
        ("vicreg", (), "healthy"), ("vicreg_novar", ("method.variance_weight=0",), "collapse"),
        ("barlow_twins", (), "healthy"), ("byol_nopred_noema", ("method.predictor=none", "method.ema=off"), "collapse"),
        ("falcon", (), "healthy"), ("falcon_beta0", ("method.beta=0",), "cluster collapse"),
        ("moco", (), "healthy"), ("composite_align_only", ("method.variance_weight=0", "method.covariance_weight=0"),
                                  "collapse"),
    ]
    for name, overrides, expected in small:
        method = name.split("_")[0] if not name.startswith("barlow") else "barlow_twins"
        cases.append(Case(f"c16/{name}", "train", "c16", method, (*overrides, "train.epochs=30"), expected=expected))
    for name, overrides, expected in small[:6]:
        method = name.split("_")[0]
        cases.append(Case(f"c32/{name}", "train", "c32", method, (*overrides, "train.epochs=12"), expected=expected))
    return cases


SYNTHETIC = [
    ("stationary", "healthy"), ("anisotropic", "healthy"), ("growing_scale", "healthy"), ("rotating", "healthy"),
    ("dip_and_recover", "healthy"), ("clusters_uniform_codes", "healthy"),
    ("point", "complete"), ("ray", "complete"), ("rank_shrink", "dimensional"), ("low_rank_throughout", "dimensional"),
    ("codes_concentrate", "cluster"), ("codes_partial", "cluster"), ("clusters_shrink", "intracluster"),
]
PLAIN = [("vicreg", "vicreg"), ("simsiam", "simsiam"), ("simsiam_nosg", "simsiam_no_stop_gradient"),
         ("simsiam_nosg_bn", "simsiam_no_stop_gradient")]
CASES = [
    *_train_cases(),
    *(Case(f"synthetic/{n}", "synthetic", "synthetic", construction=n, expected=e) for n, e in SYNTHETIC),
    *(Case(f"plain/{n}", "plain", "plain", method=o, expected="") for n, o in PLAIN),
]


def split(cases: list[Case]) -> dict[str, str]:
    """Within each group, cases sorted by name alternate: even positions calibrate, odd are held out."""
    halves = {}
    for group in sorted({c.group for c in cases}):
        names = sorted(c.name for c in cases if c.group == group)
        for i, name in enumerate(names):
            halves[name] = "calibrate" if i % 2 == 0 else "held-out"
    return halves


# --------------------------------------------------------------------------- running


def _load_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def prepare_cifar(source: Path, dest: Path) -> dict[str, Path]:
    quality = _load_module("quality_budget")
    out = {}
    for size in (16, 32):
        folder = dest / f"c{size}"
        if not (folder / "test.npz").is_file():
            quality.prepare_data(source, folder, train_images=CIFAR_IMAGES, queries=CIFAR_QUERIES, size=size, seed=3)
        out[f"c{size}"] = folder
    return out


def _monitor_record(state: dict[str, Any]) -> dict[str, Any]:
    return {name: {"steps": state["steps"][name], "metrics": state["history"][name]} for name in state["steps"]}


class _Embedding(torch.nn.Module):
    """Images → a method's ``emb`` (its projector output), for :func:`collapselab.evaluate`."""

    def __init__(self, method: torch.nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.embed(x)["emb"]


def embedding_knn(run: Any, dataset: str, data_dir: Path | None, normalizer: Any) -> dict[str, float]:
    """kNN top-1 (%) of the trained projector output ``emb`` and of the same network untrained
    (the whole method re-initialised), with the run's k and τ. Recorded for reading, not used in
    the labels: healthy projectors on digits score below raw pixels and near their untrained
    twin, so a kNN floor cannot label the projector (docs/diagnostics.md, the collapse zoo)."""
    from collapselab.evaluation import evaluate

    c = run.config
    scores = evaluate(_Embedding(run.method), dataset, protocols=("knn",), baselines=("random",), k=c.eval.knn_k,
                      temperature=c.eval.knn_temperature, seed=c.train.seed, transform=normalizer, data_dir=data_dir)
    return {"knn_top1": 100 * scores["knn_top1"], "baseline_random": 100 * scores["baseline_random_knn_top1"]}


def floor_se(hits: torch.Tensor, pixels: torch.Tensor, random: torch.Tensor) -> dict[str, float]:
    """Per-query kNN hits of the trained backbone against those of the lower floor (raw pixels or
    the untrained network, whichever scores less): the paired difference in points and its standard
    error, std(h − h_floor)/√M, on the M queries both were scored on."""
    floor = pixels if pixels.double().mean() <= random.double().mean() else random
    d = 100 * (hits.double() - floor.double())
    return {"floor_diff": float(d.mean()), "floor_se": float(d.std() / math.sqrt(len(d))), "queries": len(d)}


def trained_floor_se(run: Any, dataset: str, data_dir: Path | None, normalizer: Any) -> dict[str, float]:
    """:func:`floor_se` of a trainer run, with the features the trainer's final evaluation used
    (its backbone, raw pixels in [0, 1], the same network re-initialised with the run's seed)."""
    from collapselab.data import get_dataset
    from collapselab.evaluation import extract_features, knn_hits, pixel_splits, random_init_copy

    c = run.config
    train, test = (get_dataset(dataset, split, data_dir=data_dir) for split in ("train", "test"))

    def hits(train_x: torch.Tensor, test_x: torch.Tensor) -> torch.Tensor:
        return knn_hits(train_x, train.labels, test_x, test.labels, k=c.eval.knn_k, temperature=c.eval.knn_temperature)

    def network(model: torch.nn.Module) -> torch.Tensor:
        return hits(*(extract_features(model, split.images, transform=normalizer) for split in (train, test)))

    pixels = pixel_splits(train, test)
    return floor_se(network(run.method.eval_backbone), hits(pixels.train_features, pixels.test_features),
                    network(random_init_copy(run.method.eval_backbone, seed=c.train.seed)))


def run_train_case(case: Case, out: Path, data: dict[str, Path], seed: int = 0) -> dict[str, Any]:
    import collapselab
    from collapselab.engine.checkpoint import load_checkpoint
    from collapselab.engine.trainer import Normalizer

    torch.set_num_threads(1)
    overrides = [*TRAIN_COMMON, *case.overrides, f"run.out_dir={out / 'runs'}", f"run.name={case.name.replace('/', '__')}"]
    if seed:
        base = next((int(o.split("=")[1]) for o in case.overrides if o.startswith("train.seed=")), 0)
        overrides.append(f"train.seed={base + seed}")
    dataset = "digits" if case.group == "digits" else "npz"
    if dataset == "npz":
        overrides.append(f"data.data_dir={data[case.group]}")
    run_dir = out / "runs" / case.name.replace("/", "__")
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    start = time.perf_counter()
    run = collapselab.train(case.method, dataset, overrides=overrides)
    wall = time.perf_counter() - start
    state = load_checkpoint(run.dir / "checkpoints" / "last.pt")
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    ev = run.summary["eval"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    record: dict[str, Any] = {
        "losses": [[r["step"], r["loss"]] for r in epochs],
        "knn": [[r["step"], 100 * r["knn_top1"]] for r in epochs if "knn_top1" in r],
        "eval": {"knn_top1": 100 * ev["knn_top1"], "baseline_pixels": 100 * ev["baseline_pixels_knn_top1"],
                 "baseline_random": 100 * ev["baseline_random_knn_top1"]},
        "collapse_loss": run.method.collapse_loss(run.config.data.batch_size),
        "monitor": _monitor_record(state["monitor"]),
        "warmup_steps": round(run.config.monitor.warmup_epochs * (epochs[0]["step"] if epochs else 1)),
        "wall_s": wall,
        "summary_final_verdict": run.summary.get("final_verdict"),
    }
    norm = state["normalization"]
    normalizer = Normalizer(norm["mean"], norm["std"])
    record["eval_emb"] = embedding_knn(run, dataset, data.get(case.group), normalizer)
    record["eval"].update(trained_floor_se(run, dataset, data.get(case.group), normalizer))
    if hasattr(run.method, "logits"):  # code methods: usage of the codes on the held-out images
        from collapselab.data import get_dataset

        test = get_dataset(dataset, "test", data_dir=data.get(case.group))
        run.method.eval()
        with torch.no_grad():
            codes = run.method.embed(normalizer(test.images))["codes"].argmax(1)
        available = min(run.config.method.n_codes, len(codes))
        record["heldout_code_used_fraction"] = len(torch.unique(codes)) / available
    return record


def run_plain_case(case: Case, seed: int = 0) -> dict[str, Any]:
    """A plain PyTorch loop (ReLU MLP on digits) that hands its embeddings to a CollapseMonitor."""
    from sklearn.datasets import load_digits

    from collapselab.evaluation import knn_hits

    torch.set_num_threads(1)
    calib = _load_module("diagnostics_calibration")
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    n_train = 1438
    monitor = CollapseMonitor(warmup_steps=50)
    losses: list[list[float]] = []
    knn: list[list[float]] = []

    def features(backbone: torch.nn.Module, data: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return backbone(data)

    def hits(fx: torch.Tensor) -> torch.Tensor:
        return knn_hits(fx[:n_train], y[:n_train], fx[n_train:], y[n_train:], k=20, temperature=0.1)

    def percent(h: torch.Tensor) -> float:
        return 100 * float(h.double().mean())

    def top1(fx: torch.Tensor) -> float:
        return percent(hits(fx))

    bn = case.name.endswith("_bn")
    backbone, projector, predictor = calib.networks(1 + seed, bn)
    untrained_hits, raw_hits = hits(features(backbone, x)), hits(x)
    untrained, raw = percent(untrained_hits), percent(raw_hits)
    untrained_emb = top1(calib.embed(x, backbone, projector))
    probe = x[:n_train:3]
    params = [*backbone.parameters(), *projector.parameters(), *predictor.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    steps, every = 1000, 50
    monitor.update(0, {"repr": features(backbone, probe), "emb": calib.embed(probe, backbone, projector)})
    window: list[float] = []
    final_hits = untrained_hits  # the backbone's hits at its last kNN check
    for step in range(1, steps + 1):
        idx = torch.randint(0, n_train, (256,), generator=g)
        z1 = projector(backbone(calib.augment(x[idx], g)))
        z2 = projector(backbone(calib.augment(x[idx], g)))
        if case.method == "vicreg":
            loss = calib.vicreg(z1, z2)
        else:
            t1, t2 = (z2, z1) if case.method == "simsiam_no_stop_gradient" else (z2.detach(), z1.detach())
            p1, p2 = predictor(z1), predictor(z2)
            loss = -(torch.nn.functional.cosine_similarity(p1, t1).mean()
                     + torch.nn.functional.cosine_similarity(p2, t2).mean()) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append(float(loss.detach()))
        if step % every == 0:
            mean_loss = sum(window) / len(window)
            window.clear()
            losses.append([step, mean_loss])
            monitor.update(step, {"repr": features(backbone, probe), "emb": calib.embed(probe, backbone, projector)},
                           loss=mean_loss)
            final_hits = hits(features(backbone, x))
            knn.append([step, percent(final_hits)])
    collapse_loss = -1.0 if case.method.startswith("simsiam") else 25 * (1 - math.sqrt(1e-4))
    return {
        "losses": losses, "knn": knn, "collapse_loss": collapse_loss,
        "eval": {"knn_top1": knn[-1][1], "baseline_pixels": raw, "baseline_random": untrained,
                 **floor_se(final_hits, raw_hits, untrained_hits)},
        "eval_emb": {"knn_top1": top1(calib.embed(x, backbone, projector)), "baseline_random": untrained_emb},
        "monitor": _monitor_record(monitor.state_dict()), "warmup_steps": 50,
    }


def synthetic_sequence(construction: str, checks: int = 12, n: int = 512, d: int = 64,
                       seed: int = 0) -> list[dict[str, Any]]:
    """The embeddings (and codes) a synthetic case feeds the monitor, check by check."""
    g = torch.Generator().manual_seed(seed + int(hashlib.sha256(construction.encode()).hexdigest()[:6], 16))
    out = []
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    centres = 3 * torch.randn(10, d, generator=g)
    assign = torch.arange(n) % 10
    for t in range(checks):
        frac = t / (checks - 1)
        z = torch.randn(n, d, generator=g)
        codes = None
        if construction == "stationary":
            pass
        elif construction == "anisotropic":
            z = z * torch.arange(1, d + 1).float().pow(-1.0)
        elif construction == "growing_scale":
            z = z * 10 ** (2 * frac)
        elif construction == "rotating":
            angle = frac * math.pi / 2
            rot = torch.eye(d)
            rot[0, 0] = rot[1, 1] = math.cos(angle)
            rot[0, 1], rot[1, 0] = -math.sin(angle), math.sin(angle)
            z = (z * torch.arange(1, d + 1).float().pow(-0.5)) @ basis @ rot
        elif construction == "dip_and_recover":
            shrink = 0.05 if t in (1, 2) else 1.0
            z = torch.cat([z[:, :3], shrink * z[:, 3:]], dim=1)
        elif construction == "clusters_uniform_codes":
            z = centres[assign] + z
            codes = assign
        elif construction == "point":
            z = 5 + z * 10 ** (-6 * frac)
        elif construction == "ray":
            direction = torch.randn(d, generator=torch.Generator().manual_seed(seed + 1))
            radius = 1 + torch.rand(n, 1, generator=g)
            z = radius * (direction + 10 ** (-5 * frac) * z)
        elif construction == "rank_shrink":
            z = torch.cat([z[:, :2], 10 ** (-4 * frac) * z[:, 2:]], dim=1) @ basis
        elif construction == "low_rank_throughout":
            d_big = 256
            low = torch.randn(n, 3, generator=g) @ torch.randn(3, d_big, generator=g)
            z = low + 1e-3 * torch.randn(n, d_big, generator=g)
        elif construction == "codes_concentrate":  # one-hot over 32 codes: c is known
            used = max(2, round(32 * (1 - frac) + 2 * frac))
            assigned = torch.randint(0, used, (n,), generator=g)
            codes = torch.nn.functional.one_hot(assigned, 32).double()
            z = centres.repeat(4, 1)[assigned % 40] + z
        elif construction == "codes_partial":
            used = 32 if t < 3 else 20
            assigned = torch.randint(0, used, (n,), generator=g)
            codes = torch.nn.functional.one_hot(assigned, 32).double()
            z = centres.repeat(4, 1)[assigned % 40] + z
        elif construction == "clusters_shrink":
            z = centres[assign] + z * 10 ** (-3 * frac)
            codes = assign
        else:
            raise ValueError(construction)
        out.append({"z": z, "codes": codes})
    return out


def run_synthetic_case(case: Case, seed: int = 0) -> dict[str, Any]:
    monitor = CollapseMonitor(warmup_steps=2)
    for t, item in enumerate(synthetic_sequence(case.construction, seed=seed)):
        monitor.update(t, {"emb": item["z"]}, codes=item["codes"])
    return {"monitor": _monitor_record(monitor.state_dict()), "warmup_steps": 2, "losses": [], "knn": []}


def _worker(args: tuple[Case, str, dict[str, str], int]) -> tuple[str, dict[str, Any] | str]:
    case, out, data, seed = args
    try:
        with open(Path(out) / "logs" / (case.name.replace("/", "__") + ".log"), "w") as log:
            stdout, stderr = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = log
            try:
                if case.kind == "train":
                    record = run_train_case(case, Path(out), {k: Path(v) for k, v in data.items()}, seed)
                elif case.kind == "plain":
                    record = run_plain_case(case, seed)
                else:
                    record = run_synthetic_case(case, seed)
            finally:
                sys.stdout, sys.stderr = stdout, stderr
    except Exception as exc:  # one failing case is reported, the zoo goes on
        return case.name, f"{type(exc).__name__}: {exc}"
    record.update(seed=seed, name=case.name, kind=case.kind, group=case.group, method=case.method,
                  overrides=list(case.overrides), construction=case.construction, expected=case.expected)
    return case.name, record


def record_path(out: Path, name: str) -> Path:
    return out / "records" / (name.replace("/", "__") + ".json")


def run_cases(cases: list[Case], out: Path, data: dict[str, Path], workers: int, seed: int = 0) -> None:
    (out / "records").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases if not record_path(out, c.name).is_file()
            and (c.group not in ("c16", "c32") or c.group in data)]
    print(f"{len(cases) - len(todo)} cases already recorded, {len(todo)} to run", flush=True)
    jobs = [(c, str(out), {k: str(v) for k, v in data.items()}, seed) for c in todo]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, maxtasksperchild=1) as pool:
        for name, record in pool.imap_unordered(_worker, jobs):
            if isinstance(record, str):
                print(f"  {name}: FAILED {record}", flush=True)
                continue
            path = record_path(out, name)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, default=_json_default))
            os.replace(tmp, path)
            print(f"  {name}: recorded", flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(type(value).__name__)


# --------------------------------------------------------------------------- labels and scores


def label(record: dict[str, Any]) -> dict[str, Any]:
    """The outcome, from kNN, loss and held-out code usage (or the construction), not the monitor."""
    if record["kind"] == "synthetic":
        mode = dict(SYNTHETIC)[record["construction"]]
        return {"collapsed": mode != "healthy", "modes": [] if mode == "healthy" else [mode], "determined": True,
                "why": "construction"}
    modes: list[str] = []
    why = []
    beyond_knn = False  # a loss or code-usage outcome decides the label, whatever the kNN's error
    ev = record["eval"]
    floor = min(ev["baseline_pixels"], ev["baseline_random"])
    if ev["knn_top1"] < floor - KNN_MARGIN:
        modes += ["complete", "dimensional"]
        why.append(f"kNN {ev['knn_top1']:.1f} < both baselines ({floor:.1f}) - {KNN_MARGIN:g}")
    target, losses = record.get("collapse_loss"), record.get("losses") or []
    if target is not None and len(losses) >= 2:
        first, last = losses[0][1], losses[-1][1]
        if abs(last - target) <= LOSS_AT_COLLAPSE * abs(first - target):
            modes += [m for m in ("complete", "dimensional") if m not in modes]
            why.append(f"loss {last:.4g} at its collapse value {target:.4g}")
            beyond_knn = True
    used = record.get("heldout_code_used_fraction")
    if used is not None and used < CODE_USAGE_LABEL:
        modes.append("cluster")
        why.append(f"{used:.0%} of the codes used on held-out images")
        beyond_knn = True
    why = why or ["kNN above the baselines"]
    se = ev.get("floor_se")  # None in records written before it was measured: taken as determined
    determined = beyond_knn or se is None or abs(ev["knn_top1"] - floor) >= LABEL_Z * se
    if se is not None:
        why.append(f"kNN − floor {ev['knn_top1'] - floor:+.1f} ± {se:.1f}" + ("" if determined else ", undetermined"))
    return {"collapsed": bool(modes), "modes": modes, "determined": determined, "why": "; ".join(why)}


def first_knn_drop(record: dict[str, Any]) -> int | None:
    """Step at which the online kNN fell below the baselines for good: the first check of the
    stretch, ending at the last check, with kNN more than KNN_MARGIN below both — provided an
    earlier check was above that floor (an observed fall). None if the run did not end below the
    floor, or was below it from its first kNN check: on digits every run, healthy ones included,
    is 1-2 points under the untrained backbone after its first 5-step epoch, so a fall before the
    first check cannot be told from that dip."""
    ev = record.get("eval") or {}
    if not record.get("knn") or "baseline_pixels" not in ev:
        return None
    floor = min(ev["baseline_pixels"], ev["baseline_random"]) - KNN_MARGIN
    drop, seen_above = None, False
    for step, top1 in record["knn"]:
        if top1 < floor:
            drop = int(step) if drop is None and seen_above else drop
        else:
            drop, seen_above = None, True
    return drop


def below_from_start(record: dict[str, Any]) -> bool:
    """The online kNN was below the floor at every check (no observed fall; see first_knn_drop)."""
    ev = record.get("eval") or {}
    if not record.get("knn") or "baseline_pixels" not in ev:
        return False
    floor = min(ev["baseline_pixels"], ev["baseline_random"]) - KNN_MARGIN
    return all(top1 < floor for _, top1 in record["knn"])


def score(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    halves = split(CASES)
    for r in records:
        truth = label(r)
        monitor = replay(r["monitor"], losses=r.get("losses"), collapse_loss=r.get("collapse_loss"),
                         warmup_steps=r.get("warmup_steps", 0))
        final = monitor.final_verdict()
        flagged = {mode for name in final for mode, v in final[name].items() if v["level"] in ("warning", "collapsed")}
        first_alarm = min((a.step for a in monitor.alarms), default=None)
        drop = first_knn_drop(r)
        rows.append({
            "name": r["name"], "half": halves[r["name"]], "collapsed": truth["collapsed"], "modes": truth["modes"],
            "why": truth["why"], "determined": truth["determined"], "flagged": sorted(flagged),
            "caught": bool(set(truth["modes"]) & flagged) if truth["collapsed"] else None,
            "false_alarm": bool(flagged) if not truth["collapsed"] else None,
            "knn_drop_step": drop, "first_alarm": first_alarm,
            "lead": None if drop is None else (first_alarm is not None and first_alarm <= drop),
            "knn": (r.get("eval") or {}).get("knn_top1"),
            "below_from_start": below_from_start(r),
            "reasons": {f"{name}/{mode}": f"{v['level']} since {v['since']}: {v['reason']}" for name in final
                        for mode, v in final[name].items() if v["level"] in ("warning", "collapsed")},
        })
    return rows


def summarise(rows: list[dict[str, Any]]) -> str:
    lines = []
    for half in ("calibrate", "held-out", "all"):
        part = [r for r in rows if half == "all" or r["half"] == half]
        if not part:
            continue
        pos = [r for r in part if r["collapsed"]]
        neg = [r for r in part if not r["collapsed"]]
        leads = [r for r in part if r["lead"] is not None]
        recall = sum(r["caught"] for r in pos) / len(pos) if pos else math.nan
        fa = sum(r["false_alarm"] for r in neg) / len(neg) if neg else math.nan
        lead = sum(r["lead"] for r in leads) / len(leads) if leads else math.nan
        below = sum(r["below_from_start"] for r in part)
        lines.append(f"{half:<9}  cases {len(part):>3}  collapsed {len(pos):>3}  recall {recall:6.1%}  "
                     f"healthy {len(neg):>3}  false alarms {fa:6.1%}  kNN falls {len(leads):>2}  lead {lead:6.1%}  "
                     f"(below the floor from the first kNN check: {below})")
        by_mode: dict[str, list[bool]] = {}
        for r in pos:
            for mode in r["modes"]:
                by_mode.setdefault(mode, []).append(mode in r["flagged"])
        lines.append("           per mode (flagged in that mode / collapsed in it): " + ", ".join(
            f"{m} {sum(v)}/{len(v)}" for m, v in sorted(by_mode.items())))
        if any(not r["determined"] for r in part):
            lines.append("           " + determined_line(part))
    return "\n".join(lines)


def determined_line(part: list[dict[str, Any]]) -> str:
    """Recall and false alarms over the cases whose label the data determine (an analysis beside
    the pre-set rule's numbers, which stay the result): a label resting on the kNN alone within
    LABEL_Z standard errors of the floor is left out."""
    pos = [r for r in part if r["collapsed"] and r["determined"]]
    neg = [r for r in part if not r["collapsed"] and r["determined"]]
    out = len(part) - len(pos) - len(neg)
    caught, alarms = sum(r["caught"] for r in pos), sum(r["false_alarm"] for r in neg)
    recall = f"{caught / len(pos):6.1%} ({caught}/{len(pos)})" if pos else "n/a"
    fa = f"{alarms / len(neg):6.1%} ({alarms}/{len(neg)})" if neg else "n/a"
    return (f"determined labels only ({out} kNN labels within {LABEL_Z:g} standard errors of the floor left out): "
            f"recall {recall}  false alarms {fa}")


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| case | half | outcome (without the monitor) | kNN | final verdict flags | result |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["half"], r["name"])):
        outcome = ("collapsed: " if r["collapsed"] else "healthy: ") + r["why"]
        if r["collapsed"]:
            result = "caught" if r["caught"] else "**missed**"
        else:
            result = "**false alarm**" if r["false_alarm"] else "quiet"
        if r["lead"] is not None:
            result += f"; alarm {'at/before' if r['lead'] else '**after**'} the kNN drop (step {r['knn_drop_step']})"
        knn = f"{r['knn']:.1f}" if r["knn"] is not None else "—"
        out.append(f"| {r['name']} | {r['half']} | {outcome} | {knn} | {', '.join(r['flagged']) or '—'} | {result} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "collapse_zoo")
    parser.add_argument("--cifar", type=Path, help="folder with the decoded CIFAR-10 train.npz / test.npz")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0,
                        help="added to every case's seed: a replicate of the zoo on fresh draws (use another --out)")
    parser.add_argument("--only", nargs="*", help="case names (or group/ prefixes) to run")
    parser.add_argument("--score", action="store_true", help="only score the recorded cases")
    parser.add_argument("--table", action="store_true", help="also print the per-case markdown table")
    parser.add_argument("--half", choices=("calibrate", "held-out"),
                        help="print only this half's summary and table rows (calibrate without seeing the other)")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or any(c.name == o or c.name.startswith(o) for o in args.only)]
    if not args.score:
        data = prepare_cifar(args.cifar, args.out / "data") if args.cifar else {}
        if not args.cifar:
            print("no --cifar: the c16/c32 cases are skipped")
        run_cases(cases, args.out, data, args.workers, args.seed)
    records = [json.loads(p.read_text()) for p in sorted((args.out / "records").glob("*.json"))]
    rows = score(records)
    print(summarise([r for r in rows if args.half is None or r["half"] == args.half]))
    if args.table:
        print(table([r for r in rows if args.half is None or r["half"] == args.half]))
    return rows


if __name__ == "__main__":
    main()
