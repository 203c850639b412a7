"""The composite method with the uncertainty band: loss and gradients against the naive float64
formula, what ``embed`` returns, which parameters each band term trains, config checks, and two
short digits runs with the band monitor on: the recipe (e) stays healthy, the same objective
without the band's prior collapses the band silently (a band alarm while the loss is finite)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.config import load_config, recipe_dir
from collapselab.methods import Composite, CompositeConfig, build_method
from collapselab.models import build_backbone

torch.set_num_threads(1)

SMALL = {"projector_hidden_dim": 8, "projector_out_dim": 5, "predictor_hidden_dim": 8, "band_hidden_dim": 6}
BAND = {"band": "diagonal", "alignment_weight": 0.0, "variance_weight": 3.0, "covariance_weight": 0.5,
        "band_nll_weight": 2.0, "band_prior_weight": 4.0, "band_ref": 0.5}
CONFIGS = recipe_dir() / "composite"


def make(seed: int = 0, **overrides) -> Composite:
    torch.manual_seed(seed)
    method = build_method(CompositeConfig(**{**SMALL, **BAND, **overrides}),
                          build_backbone("small_cnn", in_channels=1, width=4))
    return method.double()  # type: ignore[return-value]


def views(n: int = 10, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]


def naive_hinge_variance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    total = z.new_zeros(())
    for j in range(d):
        mean = sum(z[b, j] for b in range(n)) / n
        var = sum((z[b, j] - mean) ** 2 for b in range(n)) / (n - 1)
        total = total + torch.clamp(1.0 - torch.sqrt(var + 1e-4), min=0.0)
    return total / d


def naive_covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    mean = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
    cov = [[sum((z[b, i] - mean[i]) * (z[b, j] - mean[j]) for b in range(n)) / (n - 1) for j in range(d)] for i in range(d)]
    return sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d


def naive_nll(p: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n, d = p.shape
    total = p.new_zeros(())
    for b in range(n):
        for j in range(d):
            var = torch.clamp(s[b, j if s.shape[1] == d else 0] ** 2, min=1e-6)
            total = total + 0.5 * ((t[b, j] - p[b, j]) ** 2 / var + torch.log(var))
    return total / (n * d)


def naive_prior(s: torch.Tensor, ref: float, kind: str) -> torch.Tensor:
    entries = [s[b, j] for b in range(s.shape[0]) for j in range(s.shape[1])]
    if kind == "kl":
        values = [torch.log(ref / e) + e**2 / (2 * ref**2) - 0.5 for e in entries]
    else:
        values = [torch.clamp(math.log(ref) - torch.log(e), min=0.0) for e in entries]
    return sum(values) / len(values)


def naive_loss(method: Composite, pair: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    c = method.config
    h = [method.backbone(x) for x in pair]
    z = [method.projector(hi) for hi in h]
    s = [method.band_head(hi) for hi in h]
    p = [method.predictor(zi) if method.predictor is not None else zi for zi in z]
    t = [zi.detach() if c.stop_gradient else zi for zi in z]
    terms = {
        "variance": (naive_hinge_variance(z[0]) + naive_hinge_variance(z[1])) / 2,
        "covariance": naive_covariance(z[0]) + naive_covariance(z[1]),
        "band_nll": (naive_nll(p[0], t[1], s[0]) + naive_nll(p[1], t[0], s[1])) / 2,
        "band_prior": (naive_prior(s[0], c.band_ref, c.band_prior) + naive_prior(s[1], c.band_ref, c.band_prior)) / 2,
    }
    active = {k: v for k, v in terms.items() if getattr(c, f"{k}_weight") > 0}
    return sum(getattr(c, f"{k}_weight") * v for k, v in active.items()), active  # type: ignore[return-value]


def run(method: Composite, pair: list[torch.Tensor], naive: bool):
    method.zero_grad(set_to_none=True)
    if naive:
        loss, terms = naive_loss(method, pair)
    else:
        out = method(pair)
        loss, terms = out.loss, {k: v for k, v in out.scalars.items() if k != "band_width"}
    loss.backward()
    grads = {n: None if q.grad is None else q.grad.clone() for n, q in method.named_parameters()}
    return float(loss.detach()), {k: float(v.detach()) for k, v in terms.items()}, grads


@pytest.mark.parametrize("band, predictor, prior, stop_gradient", [
    ("diagonal", "none", "kl", False), ("scalar", "none", "floor", False),
    ("diagonal", "mlp", "kl", False), ("scalar", "linear", "kl", True),
])
def test_band_loss_and_gradient_equal_the_naive_float64_formula(band, predictor, prior, stop_gradient) -> None:
    method = make(band=band, predictor=predictor, band_prior=prior, stop_gradient=stop_gradient,
                  band_ref=0.5 if prior == "kl" else 2.0)
    pair = views()
    loss, terms, grads = run(method, pair, naive=False)
    loss_n, terms_n, grads_n = run(method, pair, naive=True)
    assert loss == pytest.approx(loss_n, rel=1e-10)
    assert terms.keys() == terms_n.keys() == {"variance", "covariance", "band_nll", "band_prior"}
    for k in terms:
        assert terms[k] == pytest.approx(terms_n[k], rel=1e-10), k
    assert terms["band_prior"] > 0
    for name in grads:
        if grads[name] is None or grads_n[name] is None:
            assert grads[name] is None and grads_n[name] is None, name
        else:
            torch.testing.assert_close(grads[name], grads_n[name], rtol=1e-8, atol=1e-12, msg=name)


def test_embed_returns_the_band_beside_the_embedding_only_when_it_is_on() -> None:
    x = views()[0]
    for band, columns in (("diagonal", 5), ("scalar", 1)):
        out = make(band=band).eval().embed(x)
        assert set(out) == {"repr", "emb", "band"} and out["band"].shape == (10, columns)
        assert bool((out["band"] > 0).all())
    plain = make(band="off", alignment_weight=1.0, band_nll_weight=0.0, band_prior_weight=0.0)
    assert set(plain.embed(x)) == {"repr", "emb"} and plain.band_head is None
    assert not any(name.startswith("band_head") for name, _ in plain.named_parameters())


def test_each_band_term_trains_what_it_should() -> None:
    pair = views()
    # the prior acts on the band only: removing it changes no gradient outside the band head
    method = make(band_nll_weight=0.0, alignment_weight=1.0)
    with_prior = run(method, pair, naive=False)
    method.config.band_prior_weight = 0.0  # (a config validate() would refuse; the forward honours it)
    without = run(method, pair, naive=False)
    assert "band_prior" in with_prior[1] and "band_prior" not in without[1]
    for name, grad in with_prior[2].items():
        if name.startswith("band_head"):
            assert grad is not None and without[2][name] is None, name
        elif name.startswith(("projector", "predictor")):
            torch.testing.assert_close(grad, without[2][name], rtol=0, atol=0, msg=name)
    # the likelihood's mean is the prediction: with alignment_weight 0 the predictor still learns
    method = make(predictor="mlp", band_prior_weight=0.0)
    method.zero_grad(set_to_none=True)
    method(pair).loss.backward()
    assert any(q.grad is not None and float(q.grad.abs().max()) > 0 for q in method.predictor.parameters())


@pytest.mark.parametrize("overrides, match", [
    ({"band": "full"}, "method.band must be one of"),
    ({"band_param": "relu"}, "method.band_param must be one of"),
    ({"band_prior": "l2"}, "method.band_prior must be one of"),
    ({"band_init": 0.0}, "method.band_init must be a positive"),
    ({"band_ref": -1.0}, "method.band_ref must be a positive"),
    ({"band_hidden_dim": 0}, "method.band_hidden_dim"),
    ({"band_nll_weight": -1.0}, "method.band_nll_weight must be a finite number"),
    ({"band": "off"}, "acts on the band: set method.band"),
    ({"band_nll_weight": 0.0, "band_prior_weight": 0.0, "alignment_weight": 1.0}, "nothing trains the band"),
    ({"band_nll_weight": 0.0, "band_prior_weight": 1.0, "variance_weight": 0.0, "covariance_weight": 0.0},
     "nothing to minimise"),
])
def test_bad_band_settings_raise_input_error_naming_the_key(overrides: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        CompositeConfig(**{**BAND, **overrides}).validate()


def test_a_predictor_may_act_through_the_bands_likelihood_alone() -> None:
    CompositeConfig(**{**BAND, "predictor": "mlp"}).validate()
    with pytest.raises(InputError, match="alignment term"):
        CompositeConfig(**{**BAND, "predictor": "mlp", "band_nll_weight": 0.0}).validate()


def test_no_single_collapse_value_exists_with_the_band() -> None:
    assert make().collapse_loss(256) is None
    assert make(band="off", alignment_weight=1.0, band_nll_weight=0.0, band_prior_weight=0.0).collapse_loss(256) \
        == pytest.approx(3.0 * (1 - 0.01))


def test_the_band_recipe_is_b_with_the_alignment_done_by_the_band() -> None:
    recipe = load_config("composite", "digits").method
    band = load_config("composite", "digits", config_file=CONFIGS / "e_band.yaml").method
    assert (band.band, band.alignment_weight, band.band_prior) == ("diagonal", 0.0, "kl")
    assert band.band_prior_weight > band.band_nll_weight > 0  # the condition for a band that cannot vanish
    same = {k for k in vars(recipe) if not k.startswith("band") and k != "alignment_weight"}
    assert {k: vars(band)[k] for k in same} == {k: vars(recipe)[k] for k in same}


def test_the_16px_band_recipe_is_the_small_image_recipe_with_e_bands_method(tmp_path: Path) -> None:
    """configs/composite/e_band_16px.yaml: the small-image composite recipe underneath, the method
    exactly e_band.yaml's; it trains on 16-px colour images (a synthetic npz stands in for the
    CIFAR-10 subset) and its band is recorded at the checks."""
    import numpy as np

    small = load_config("composite", "npz", recipe="small/composite_16px", overrides=["data.data_dir=/x"])
    cifar = load_config("composite", "npz", config_file=CONFIGS / "e_band_16px.yaml", overrides=["data.data_dir=/x"])
    digits = load_config("composite", "digits", config_file=CONFIGS / "e_band.yaml")
    assert vars(cifar.method) == vars(load_config("composite", "npz", recipe="small/composite_16px",
                                                  config_file=CONFIGS / "e_band.yaml",
                                                  overrides=["data.data_dir=/x"]).method)
    band_keys = {k: v for k, v in vars(digits.method).items() if k.startswith("band") or "weight" in k}
    assert {k: vars(cifar.method)[k] for k in band_keys} == band_keys
    assert (cifar.model, cifar.optim, cifar.data.augment) == (small.model, small.optim, small.data.augment)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", x=images, y=np.arange(96) % 4)
    np.savez(tmp_path / "test.npz", x=images[:32], y=np.arange(32) % 4)
    run_ = collapselab.train(
        "composite", "npz", config=CONFIGS / "e_band_16px.yaml",
        overrides=[f"data.data_dir={tmp_path}", "data.batch_size=32", "train.epochs=2", "train.threads=1",
                   "monitor.every=1", "monitor.probe_size=32", "log.progress=false", "log.report=false",
                   "eval.final=false", "eval.knn_every=0", f"run.out_dir={tmp_path}", "run.name=band16"],
    )
    from collapselab.runs import RunFolder

    checks = RunFolder(run_.dir).checks()["emb"]
    assert run_.summary["status"] == "completed" and len(checks["band_width"]) >= 2
    assert all(0 < w < 10 for w in checks["band_width"])

# --------------------------------------------------------------------------- training on digits


def train(tmp_path: Path, name: str, overrides: list[str]) -> dict:
    run_ = collapselab.train(
        "composite", "digits", config=CONFIGS / "e_band.yaml",
        overrides=["train.threads=1", "log.progress=false", "eval.final=false", "eval.knn_every=0",
                   "log.report=false", f"run.name={name}", f"run.out_dir={tmp_path}", *overrides],
    )
    return {**json.loads((run_.dir / "summary.json").read_text()), "_dir": run_.dir}


def band_alarms(summary: dict) -> list[dict]:
    return [a for a in summary["alarms"] if a["mode"] == "band"]


def test_the_band_recipe_keeps_a_healthy_band_on_digits(tmp_path: Path) -> None:
    summary = train(tmp_path, "e_band", [])
    assert summary["status"] == "completed"
    assert band_alarms(summary) == [], summary["alarms"]
    final = summary["final_verdict"]["emb"]["band"]
    assert final["level"] == "healthy", final
    metrics = summary["diagnosis"]["emb"]["metrics"]
    assert 0.1 < metrics["band_width_ratio"] < 10 and metrics["band_below_floor"] == 0.0
    assert not any(a["level"] == "collapsed" for a in summary["alarms"])
    # the report draws the band and lists its verdict
    from collapselab.report import render_report

    page = render_report([summary["_dir"]])
    section = page.split('<section id="band">', 1)[1].split("</section>", 1)[0]
    assert "Uncertainty band" in section and "<svg" in section
    assert "uncertainty band is" in page  # the band's verdict sentence in the verdict table


def test_without_the_prior_and_with_direct_alignment_the_band_collapses_silently(tmp_path: Path) -> None:
    # policy=stop: the run ends at its first collapsed alarm (step 31 when measured)
    summary = train(tmp_path, "e_band_no_prior", ["method.band_prior_weight=0", "monitor.policy=stop"])
    alarms = band_alarms(summary)
    assert alarms, summary["alarms"]
    first = alarms[0]
    assert first["level"] in ("warning", "collapsed") and "silent: the training loss is finite" in first["reason"]
    assert summary["steps"] < summary["total_steps"]


def test_a_training_step_with_the_band_reads_no_tensor_value_on_the_host(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """As tests/engine/test_fastpath.py for every method's default: the band terms add no host
    synchronisation to the step (their value checks are off inside the trainer's step)."""
    from collapselab.engine.trainer import Trainer

    config = load_config("composite", "digits", config_file=CONFIGS / "e_band.yaml", overrides=[
        f"run.out_dir={tmp_path}", "run.name=run", "train.epochs=1", "train.threads=1", "train.max_steps_per_epoch=3",
        "train.device=cpu", "train.adapt_threads=false", "data.batch_size=32", "model.backbone_args={width: 8}",
        "log.progress=false", "log.tensorboard=false", "eval.final=false", "eval.knn_every=0",
        "monitor.probe_size=32", "method.predictor=mlp", "optim.grad_clip=1.0"])
    trainer = Trainer(config, tmp_path / "run")
    trainer.setup()
    trainer.method.train()
    images = trainer.train_set.images[:32]
    views = trainer.augment(images, trainer.generator)
    trainer.augment = lambda batch, generator: [v.clone() for v in views]
    trainer._step(images)  # lazy state first
    trainer.global_step += 1
    reads: list[str] = []

    def forbid(name: str):
        def read(self: torch.Tensor, *args, **kwargs):
            reads.append(name)
            raise AssertionError(f"host read of a tensor value: Tensor.{name}")
        return read

    with monkeypatch.context() as patch:
        for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy"):
            patch.setattr(torch.Tensor, name, forbid(name))
        trainer._step(images)
        trainer.global_step += 1
    assert reads == []
    records = trainer.values.read()
    assert all(math.isfinite(r["loss"]) and "band_nll" in r and "band_prior" in r for r in records)
    trainer.logger.close()
