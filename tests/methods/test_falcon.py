"""FALCON / CPLearn: packed dictionary, temperature, loss vs a naive loop, probe metrics, digits run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.diagnostics import code_geometry
from collapselab.losses import falcon, falcon_from_logits
from collapselab.methods import FALCON, FALCONConfig, build_method
from collapselab.models import RademacherDictionary, build_backbone

torch.set_num_threads(1)


def make(seed: int = 0, **overrides) -> FALCON:
    torch.manual_seed(seed)
    settings = {"projector_out_dim": 64, "n_codes": 40, **overrides}
    return build_method(FALCONConfig(**settings), build_backbone("small_cnn", in_channels=1, width=4))  # type: ignore[return-value]


def views(n: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 8, 8, generator=g) for _ in range(2)]


# ---- dictionary ---------------------------------------------------------------------------


@pytest.mark.parametrize(("f", "c", "chunk"), [(5, 2, 8), (7, 37, 8), (16, 1000, 64), (3, 4096, 4096)])
def test_packed_dictionary_matches_its_dense_form_in_value_and_gradient(f: int, c: int, chunk: int) -> None:
    d = RademacherDictionary(f, c, torch.Generator().manual_seed(0), chunk=chunk)
    w = d.dense(torch.float64)
    assert w.shape == (f, c) and set(w.unique().tolist()) <= {-1.0, 1.0}
    assert d.packed.dtype == torch.uint8 and d.packed.numel() == f * math.ceil(c / 8)
    h = torch.randn(6, f, dtype=torch.float64, requires_grad=True)
    target = torch.randn(6, c, dtype=torch.float64)
    (d(h) * target).sum().backward()
    grad = h.grad.clone()
    h.grad = None
    assert torch.allclose(d(h), h @ w)
    ((h @ w) * target).sum().backward()
    assert torch.allclose(grad, h.grad)


def test_dictionary_entries_are_balanced_signs_and_seeded() -> None:
    a = RademacherDictionary(64, 512, torch.Generator().manual_seed(3), chunk=128).dense()
    b = RademacherDictionary(64, 512, torch.Generator().manual_seed(3), chunk=128).dense()
    c = RademacherDictionary(64, 512, torch.Generator().manual_seed(4), chunk=128).dense()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # 32,768 fair ±1 draws: the mean is within 4 standard deviations (1/sqrt(32768)) of 0
    assert abs(float(a.mean())) < 4 / math.sqrt(a.numel())


def test_a_65536_code_dictionary_costs_one_bit_per_entry() -> None:
    d = RademacherDictionary(256, 65536, torch.Generator().manual_seed(0))
    assert d.packed.numel() == 256 * 65536 // 8  # 2 MiB, against 64 MiB as float32
    h = torch.randn(4, 256, requires_grad=True)
    logits = d(h)
    assert logits.shape == (4, 65536)
    logits.pow(2).mean().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_dictionary_is_a_buffer_that_training_does_not_change() -> None:
    method = make()
    before = method.dictionary.packed.clone()
    assert all(p is not method.dictionary.packed for p in method.parameters())
    assert "dictionary.packed" in method.state_dict()
    opt = torch.optim.SGD(method.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        method(views()).loss.backward()
        opt.step()
    assert torch.equal(before, method.dictionary.packed)


# ---- temperature and loss -----------------------------------------------------------------


def test_temperature_follows_the_official_formula_with_the_global_batch() -> None:
    method = make(projector_out_dim=64, n_codes=40)
    f, c, n, eps = 64, 40, 16, 1e-8
    expected = f / (math.sqrt(n) * math.log((1 - eps * (c - 1)) / eps))
    assert method.temperature(16) == pytest.approx(expected, rel=1e-12)
    assert make(temperature=0.7).temperature(16) == 0.7
    # the official CIFAR recipe: f = 2048, c = 16384, n = 64 → τ ≈ 13.9
    assert make(projector_out_dim=2048, n_codes=16384).temperature(64) == pytest.approx(13.9, abs=0.05)


@pytest.mark.parametrize("prior_kl", ["reverse", "forward"])
def test_method_loss_and_gradients_match_a_naive_loop(prior_kl: str) -> None:
    beta = 0.3
    method = make(beta=beta, prior_kl=prior_kl, projector_out_dim=16, n_codes=12).double()
    v1, v2 = (v.double() for v in views(n=8))
    out = method([v1, v2])
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in method.named_parameters()}
    method.zero_grad()

    h1, h2 = method.projector(method.backbone(v1)), method.projector(method.backbone(v2))
    w = method.dictionary.dense(torch.float64)
    tau = method.temperature(v1.shape[0])
    n, c = h1.shape[0], w.shape[1]

    def softmax_rows(h: torch.Tensor) -> list[list[torch.Tensor]]:
        rows = []
        for b in range(n):
            logits = [sum(h[b, i] * w[i, j] for i in range(w.shape[0])) / tau for j in range(c)]
            top = max(float(x.detach()) for x in logits)
            e = [torch.exp(x - top) for x in logits]
            s = sum(e)
            rows.append([x / s for x in e])
        return rows

    def prior(p: list[list[torch.Tensor]]) -> torch.Tensor:
        marginal = [sum(p[b][j] for b in range(n)) / n for j in range(c)]
        if prior_kl == "reverse":
            return sum(m * torch.log(c * m) for m in marginal)
        return -sum(torch.log(m) for m in marginal) / c - math.log(c)

    def ce(p: list[list[torch.Tensor]], q: list[list[torch.Tensor]]) -> torch.Tensor:
        return sum(-sum(p[b][j] * torch.log(q[b][j]) for j in range(c)) for b in range(n)) / n

    q1, q2 = softmax_rows(h1), softmax_rows(h2)
    naive = 0.5 * (prior(q2) + beta * ce(q2, q1)) + 0.5 * (prior(q1) + beta * ce(q1, q2))
    assert float(out.loss.detach()) == pytest.approx(float(naive.detach()), rel=1e-9)
    naive.backward()
    for name, p in method.named_parameters():
        assert torch.allclose(got[name], p.grad, rtol=1e-6, atol=1e-10), name


def test_loss_from_logits_equals_the_dictionary_form() -> None:
    g = torch.Generator().manual_seed(0)
    h1, h2 = torch.randn(12, 16, generator=g, dtype=torch.float64), torch.randn(12, 16, generator=g, dtype=torch.float64)
    w = RademacherDictionary(16, 24, g).dense(torch.float64)
    for prior_kl in ("reverse", "forward"):
        a = falcon(h1, h2, w, 0.5, prior_kl, temperature=1.7)
        b = falcon_from_logits(h1 @ w / 1.7, h2 @ w / 1.7, 0.5, prior_kl)
        assert float(a) == pytest.approx(float(b), rel=1e-12)
    with pytest.raises(InputError, match="equal shape"):
        falcon_from_logits(torch.randn(4, 5), torch.randn(4, 6))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"projector_variant": "sigmoid"}, "projector_variant"),
        ({"projector_variant": "l2"}, "needs an explicit method.temperature"),
        ({"n_codes": 1}, "n_codes"),
        ({"prior_kl": "both"}, "prior_kl"),
        ({"beta": -1.0}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"projector_bn": False}, "BN is part of the method"),
    ],
)
def test_bad_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        FALCONConfig(**overrides).validate()


# ---- probe metrics ------------------------------------------------------------------------


def test_code_geometry_matches_naive_computations() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(30, 6, generator=g, dtype=torch.float64)
    h[:, 1] = 0.8 * h[:, 0] + 0.2 * h[:, 1]
    assign = torch.randint(0, 4, (30,), generator=g)
    got = code_geometry(h, assign)
    corr = np.corrcoef(h.numpy(), rowvar=False)
    off = corr[~np.eye(6, dtype=bool)]
    assert got["decorrelation_offdiag"] == pytest.approx(float((off**2).mean()), rel=1e-9)
    unit = h / h.norm(dim=1, keepdim=True)
    within, between = [], []
    for i in range(30):
        for j in range(30):
            if i != j:
                (within if assign[i] == assign[j] else between).append(float(unit[i] @ unit[j]))
    assert got["block_within_cosine"] == pytest.approx(np.mean(within), rel=1e-9)
    assert got["block_between_cosine"] == pytest.approx(np.mean(between), rel=1e-9)
    sizes = np.bincount(assign.numpy(), minlength=4)
    assert got["block_size_max_ratio"] == pytest.approx(sizes.max() / (30 / 4))
    assert got["block_size_cv"] == pytest.approx(sizes.std() / sizes.mean())


def test_code_geometry_of_ideal_falcon_codes() -> None:
    """Rows equal to their code word, codes balanced: blocks are tight (cos 1) and equal-sized."""
    w = RademacherDictionary(64, 8, torch.Generator().manual_seed(1)).dense(torch.float64)
    assign = torch.arange(32) % 8
    got = code_geometry(w.T[assign], assign)
    assert got["block_within_cosine"] == pytest.approx(1.0)
    assert got["block_size_max_ratio"] == pytest.approx(1.0) and got["block_size_cv"] == pytest.approx(0.0)
    assert got["block_between_cosine"] < 0.3


def test_probe_metrics_report_usage_geometry_and_code_nmi() -> None:
    method = make().eval()
    with torch.no_grad():
        probe = method.embed(views(n=40)[0])
    labels = torch.arange(40) % 4
    labels[0] = -1  # unlabeled rows are left out of the NMI
    got = method.probe_metrics(probe, labels)
    assert {"code_used_fraction", "code_perplexity", "decorrelation_offdiag", "block_within_cosine",
            "block_size_max_ratio", "codes_nmi", "codes_acc"} <= set(got)
    assert 0 < got["code_used_fraction"] <= 1 and 0 <= got["codes_nmi"] <= 1
    assert torch.allclose(probe["codes"].sum(dim=1), torch.ones(40), atol=1e-5)


# ---- training -----------------------------------------------------------------------------


def test_digits_recipe_uses_every_code_and_raises_no_alarm(tmp_path) -> None:
    """The shipped recipe (f = 2048, c = 32, β = 0.25, Adam): measured 32 of 32 codes used at the
    end, perplexity 28.4; the test asks for ≥ 90 % of the codes and perplexity ≥ 0.6·c."""
    run = collapselab.train("falcon", "digits", overrides=["train.threads=1", "eval.final=false",
                                                            f"run.out_dir={tmp_path}"])
    assert run.summary["status"] == "completed"
    assert run.summary["alarms"] == []
    epochs = [r for r in run.history if r.get("kind") == "epoch"]
    last = epochs[-1]
    assert last["code_used_fraction"] >= 0.9
    assert last["code_perplexity"] >= 0.6 * 32
    assert all(r["verdict"] == "healthy" for r in epochs[6:])
