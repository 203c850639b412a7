"""Every shipped recipe loads, and every digits recipe trains a few steps end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.config import available_recipes, load_config, recipe_dir
from collapselab.data import native
from collapselab.engine.trainer import lr_scale
from collapselab.methods import METHODS

torch.set_num_threads(1)


def small_backbone(method: str) -> dict:
    """Cheap backbone arguments for a method's digits recipe: a narrow small CNN, or one
    transformer block for the ViT recipes (a ViT has no ``width``)."""
    backbone = load_config(method, "digits").model.backbone
    return {"depth": 1} if backbone.startswith("vit") else {"width": 8}


def split(recipe: str) -> tuple[str, str]:
    method, dataset = recipe.rsplit("_", 1)
    return method, dataset


def test_every_method_has_a_digits_and_a_cifar10_recipe() -> None:
    for method in METHODS:
        assert f"{method}_digits" in available_recipes()
        assert f"{method}_cifar10" in available_recipes()


@pytest.mark.parametrize("recipe", available_recipes())
def test_recipe_loads_and_names_its_method_and_dataset(recipe: str) -> None:
    method, dataset = split(recipe)
    config = load_config(method, dataset)
    assert config.method.name == method and config.data.dataset == dataset


@pytest.mark.parametrize("method", sorted(METHODS))
def test_digits_recipe_trains_two_steps_and_writes_the_run(tmp_path: Path, method: str) -> None:
    run = collapselab.train(
        method, "digits", run={"name": "r", "out_dir": str(tmp_path)},
        train={"epochs": 1, "threads": 1, "max_steps_per_epoch": 2}, data={"batch_size": 64},
        model={"backbone_args": small_backbone(method)}, log={"progress": False},
        eval={"final": False, "knn_every": 1}, monitor={"probe_size": 64},
    )
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    epoch = [r for r in run.history if r["kind"] == "epoch"][-1]
    assert math.isfinite(epoch["loss"]) and 0.0 <= epoch["knn_top1"] <= 1.0
    assert (run.dir / "checkpoints" / "last.pt").is_file() and (run.dir / "config.yaml").is_file()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_the_run_records_which_augmentation_backend_made_its_views(tmp_path: Path, backend: str,
                                                                   device: str) -> None:
    run = collapselab.train(
        "simclr", "digits", run={"name": "r", "out_dir": str(tmp_path)},
        train={"epochs": 1, "threads": 1, "max_steps_per_epoch": 1, "device": device},
        data={"batch_size": 32, "augment_backend": backend},
        model={"backbone_args": {"width": 8}}, log={"progress": False},
        eval={"final": False, "knn_every": 0}, monitor={"probe_size": 32},
    )
    summary = json.loads((run.dir / "summary.json").read_text())
    # auto: the native kernel makes CPU batches (when it builds); CUDA batches use the torch ops
    expected = "native" if backend == "auto" and device == "cpu" and native.available() else "torch"
    assert summary["augment"] == {"recipe": "simclr", "backend": expected}


def test_an_unknown_augmentation_backend_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="did you mean 'torch'"):
        collapselab.train("simclr", "digits", run={"name": "r", "out_dir": str(tmp_path)},
                          train={"epochs": 1, "max_steps_per_epoch": 1}, data={"augment_backend": "torhc"},
                          log={"progress": False})


# --------------------------------------------------------------------------- batch-1024 variants

BATCH1024 = sorted(p.stem for p in (recipe_dir() / "batch1024").glob("*.yaml"))


def test_every_cifar10_recipe_has_a_batch_1024_variant() -> None:
    assert BATCH1024 == sorted(r for r in available_recipes() if r.endswith("_cifar10"))


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_states_its_lr_scaling(recipe: str) -> None:
    text = (recipe_dir() / f"{recipe}.yaml").read_text()
    assert "lr_scaling:" in text, f"{recipe}.yaml does not say how its learning rate scales with the batch"


@pytest.mark.parametrize("variant", BATCH1024)
def test_batch_1024_variant_layers_over_its_recipe(variant: str) -> None:
    method, dataset = split(variant)
    base = load_config(method, dataset)
    big = load_config(method, dataset, config_file=recipe_dir() / "batch1024" / f"{variant}.yaml")
    assert big.data.batch_size == 1024 and base.data.batch_size == 256
    assert big.optim.lr == base.optim.lr  # the base rate is per 256 images; the scaling rule does the rest
    rate = lambda c: c.optim.lr * lr_scale(c.optim.lr_scaling, c.data.batch_size)  # noqa: E731
    factor = rate(big) / rate(base)
    assert factor == pytest.approx(4.0 if big.optim.lr_scaling == "linear" else 2.0)
    base_ema = getattr(base.method, "ema", None)
    if isinstance(base_ema, float):  # EMA scaling rule (Busbridge et al. 2023): rho -> rho^4
        assert big.method.ema == pytest.approx(base_ema**4, abs=1e-3)


def test_shipped_variant_is_found_by_its_relative_name_from_any_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name resolves inside the installed package
    by_path = load_config("simclr", "cifar10", config_file=recipe_dir() / "batch1024" / "simclr_cifar10.yaml")
    for name in ("batch1024/simclr_cifar10.yaml", "batch1024/simclr_cifar10"):
        assert load_config("simclr", "cifar10", config_file=name) == by_path
    with pytest.raises(InputError, match=r"batch1024/nope\.yaml does not exist \(shipped variants: ") as err:
        load_config("simclr", "cifar10", config_file="batch1024/nope.yaml")
    assert "\n" not in str(err.value)


def test_lr_scaling_rules() -> None:
    assert lr_scale("linear", 1024) == 4.0 and lr_scale("sqrt", 1024) == 2.0 and lr_scale("none", 1024) == 1.0
    assert lr_scale("linear", 256) == lr_scale("sqrt", 256) == 1.0
    with pytest.raises(InputError, match=r"optim\.lr_scaling"):
        load_config("byol", "digits", optim={"lr_scaling": "quadratic"})
