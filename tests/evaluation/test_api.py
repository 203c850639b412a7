"""evaluate(): modules and precomputed features, baselines beside the scores, caching, summaries."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from collapselab._validation import InputError
from collapselab.data import get_dataset
from collapselab.evaluation import (
    CheckpointSource,
    FeatureSplits,
    append_to_summary,
    evaluate,
    extract_features,
    load_features,
    random_init_copy,
)

FAST = {"protocols": ("knn",), "k": 20}


def _small_backbone(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16)
    )


class CountingModel(nn.Module):
    """Records how many images it embedded (to see the cache at work); returns a dict of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _small_backbone()
        self.seen = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen += len(x)
        return {"repr": self.net(x), "emb": self.net(x)[:, :2]}


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", "train"), get_dataset("digits", "test")


def test_identity_extractor_scores_equal_the_raw_pixel_baseline():
    result = evaluate(
        nn.Flatten(),
        "digits",
        protocols=("knn", "clustering"),
        baselines=("pixels",),
        k=20,
        n_init=2,
    )
    for key in ("knn_top1", "knn_top5", "nmi", "ari", "acc"):
        assert result[key] == result[f"baseline_pixels_{key}"]
    assert result["baseline_pixels_knn_top1"] > 0.9  # digits pixels are a strong floor


def test_module_evaluation_reports_every_protocol_and_both_baselines():
    model = _small_backbone()
    model.train()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    result = evaluate(model, "digits", k=20, n_init=2)
    expected = {"knn_top1", "knn_top5", "linear_top1", "linear_train_top1", "nmi", "ari", "acc"}
    assert set(result) == expected | {"knn_k", "knn_temperature"} | {
        f"baseline_{b}_{key}" for b in ("pixels", "random") for key in expected
    }
    assert (result.pop("knn_k"), result.pop("knn_temperature")) == (20, 0.1)  # the settings used
    assert all(0.0 <= value <= 1.0 for value in result.values())
    # Frozen: weights (and BatchNorm running statistics) unchanged, training mode restored.
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert model.training


def test_random_init_baseline_differs_from_a_trained_extractor():
    model = _small_backbone()
    with (
        torch.no_grad()
    ):  # a "trained" model: weights the seeded re-initialisation cannot reproduce
        for p in model.parameters():
            p.add_(0.3)
    result = evaluate(model, "digits", baselines=("random",), **FAST)
    assert result["knn_top1"] != result["baseline_random_knn_top1"]
    assert "baseline_pixels_knn_top1" not in result


def test_random_init_copy_is_seeded_and_leaves_the_original_untouched():
    model = _small_backbone(seed=123)
    original = [p.clone() for p in model.parameters()]
    first, second, other = (
        random_init_copy(model, 1),
        random_init_copy(model, 1),
        random_init_copy(model, 2),
    )
    assert all(
        torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )
    assert not torch.equal(first[1].weight, other[1].weight)
    assert not torch.equal(first[1].weight, model[1].weight)
    assert all(torch.equal(a, b) for a, b in zip(original, model.parameters(), strict=True))


def test_random_init_copy_names_parameters_it_cannot_reset_in_a_one_line_notice(caplog):
    class WithEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.position = nn.Parameter(torch.ones(4))
            self.head = nn.Linear(4, 2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a notice, not a Python warning with a file path
        twin = random_init_copy(WithEmbedding())
    assert torch.equal(twin.position, torch.ones(4))
    [record] = [r for r in caplog.records if "random-init baseline" in r.getMessage()]
    message = record.getMessage()
    assert "WithEmbedding kept trained values" in message and "\n" not in message


def _trained_vit(seed: int) -> nn.Module:
    from collapselab.models import build_backbone

    torch.manual_seed(seed)
    model = build_backbone("vit_tiny", img_size=8, patch_size=2, in_channels=1, depth=2, pos_embed="learned")
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):  # a few steps move every parameter, the learned position table included
        optimiser.zero_grad()
        (model(torch.randn(4, 1, 8, 8)) ** 2).sum().backward()
        optimiser.step()
    return model


def test_random_init_copy_of_a_trained_vit_is_a_freshly_built_vit(caplog):
    from collapselab.models import build_backbone

    trained = _trained_vit(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = random_init_copy(trained, seed=5)
    assert not [r for r in caplog.records if "random-init baseline" in r.getMessage()]
    torch.manual_seed(5)
    fresh = build_backbone("vit_tiny", img_size=8, patch_size=2, in_channels=1, depth=2, pos_embed="learned")
    pairs = zip(twin.named_parameters(), fresh.parameters(), trained.parameters(), strict=True)
    for (name, reset), built, kept in pairs:
        assert torch.equal(reset, built), name
        assert not torch.equal(reset, kept), name


def test_extract_features_is_batch_size_invariant_and_reads_the_output_key(digits):
    model = CountingModel()
    images = digits[1].images[:50]
    small = extract_features(model, images, batch_size=7)
    large = extract_features(model, images, batch_size=64)
    torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-6)
    assert small.shape == (50, 16) and small.dtype == torch.float32
    assert extract_features(model, images, output_key="emb").shape == (50, 2)


def test_precomputed_features_accept_dicts_tuples_and_feature_splits(digits):
    train, test = digits
    projection = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    xtr = train.images.reshape(len(train), -1).float() @ projection
    xte = test.images.reshape(len(test), -1).float() @ projection
    as_dict = evaluate(
        {
            "train_features": xtr,
            "train_labels": train.labels,
            "test_features": xte,
            "test_labels": test.labels,
        },
        None,
        **FAST,
    )
    as_tuple = evaluate(
        ((xtr.numpy(), train.labels.numpy()), (xte.numpy(), test.labels.numpy())), None, **FAST
    )
    as_splits = evaluate(
        FeatureSplits(xtr, train.labels, xte, test.labels), "digits", baselines=("pixels",), **FAST
    )
    assert (
        as_dict == as_tuple == {k: v for k, v in as_splits.items() if not k.startswith("baseline_")}
    )
    assert "baseline_pixels_knn_top1" in as_splits


def test_codes_add_argmax_code_scores(digits):
    train, test = digits
    flat_train = train.images.reshape(len(train), -1).float()
    flat_test = test.images.reshape(len(test), -1).float()
    splits = FeatureSplits(flat_train, train.labels, flat_test, test.labels)
    result = evaluate(splits, None, protocols=("clustering",), codes=test.labels, n_init=1)
    assert result["codes_nmi"] == result["codes_acc"] == result["codes_ari"] == 1.0


def test_feature_cache_skips_extraction_when_the_weights_match(tmp_path):
    model = CountingModel()
    cache = tmp_path / "features.npz"
    first = evaluate(model, "digits", baselines=(), cache=cache, **FAST)
    embedded = model.seen
    assert cache.exists() and embedded == 1438 + 359
    assert evaluate(model, "digits", baselines=(), cache=cache, **FAST) == first
    assert model.seen == embedded
    with torch.no_grad():
        model.net[1].weight.add_(1.0)
    evaluate(model, "digits", baselines=(), cache=cache, **FAST)
    assert model.seen == 2 * embedded


def test_saved_features_load_back_identically(tmp_path):
    splits = FeatureSplits(
        torch.randn(6, 3),
        torch.tensor([0, 1] * 3),
        torch.randn(4, 3),
        torch.tensor([1, 0] * 2),
        test_codes=torch.tensor([0, 0, 1, 1]),
    )
    splits.save(tmp_path / "f.npz")
    loaded = load_features(tmp_path / "f.npz")
    for key in ("train_features", "train_labels", "test_features", "test_labels", "test_codes"):
        assert torch.equal(getattr(loaded, key), getattr(splits, key))


def test_append_to_summary_keeps_existing_entries(tmp_path):
    (tmp_path / "summary.json").write_text(
        json.dumps({"final_loss": 0.5, "eval": {"knn_top1": 0.1}})
    )
    append_to_summary(tmp_path, {"knn_top1": 0.9, "nmi": 0.4})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"final_loss": 0.5, "eval": {"knn_top1": 0.9, "nmi": 0.4}}


def test_evaluate_is_deterministic_across_calls():
    model = _small_backbone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = evaluate(
            model, "digits", protocols=("linear", "clustering"), baselines=(), n_init=2
        )
    second = evaluate(model, "digits", protocols=("linear", "clustering"), baselines=(), n_init=2)
    assert first == second
    assert np.isfinite(list(first.values())).all()


def test_a_module_without_a_dataset_is_told_to_name_one():
    with pytest.raises(InputError, match=r"needs images: pass dataset=<name>"):
        evaluate(_small_backbone())


def test_checkpoint_hook_result_supplies_dataset_transform_and_summary(tmp_path, monkeypatch):
    # The trainer implements load_checkpoint_source; evaluate's side is tested here.
    from collapselab.evaluation import api

    seen = []

    def transform(images):
        seen.append(images.dtype)
        return images.float() / 255

    loaded = CheckpointSource(
        _small_backbone(), dataset="digits", transform=transform, run_dir=tmp_path
    )
    monkeypatch.setattr(api, "load_checkpoint_source", lambda path: loaded)
    result = evaluate(tmp_path, baselines=(), **FAST)
    assert seen and seen[0] == torch.uint8  # the run's transform received the raw batches
    summary = json.loads((tmp_path / "summary.json").read_text())
    recorded = {"knn_k": FAST.get("k", 200), "knn_temperature": FAST.get("temperature", 0.1)}
    assert summary["eval"] == {**result, **recorded}  # the scores and the kNN settings behind them
