"""Every shipped recipe loads, and every digits recipe trains a few steps end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.config import available_recipes, load_config
from collapselab.data import native
from collapselab.methods import METHODS

torch.set_num_threads(1)


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
        model={"backbone_args": {"width": 8}}, log={"progress": False},
        eval={"final": False, "knn_every": 1}, monitor={"probe_size": 64},
    )
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    epoch = [r for r in run.history if r["kind"] == "epoch"][-1]
    assert math.isfinite(epoch["loss"]) and 0.0 <= epoch["knn_top1"] <= 1.0
    assert (run.dir / "checkpoints" / "last.pt").is_file() and (run.dir / "config.yaml").is_file()


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_the_run_records_which_augmentation_backend_made_its_views(tmp_path: Path, backend: str) -> None:
    run = collapselab.train(
        "simclr", "digits", run={"name": "r", "out_dir": str(tmp_path)},
        train={"epochs": 1, "threads": 1, "max_steps_per_epoch": 1},
        data={"batch_size": 32, "augment_backend": backend},
        model={"backbone_args": {"width": 8}}, log={"progress": False},
        eval={"final": False, "knn_every": 0}, monitor={"probe_size": 32},
    )
    summary = json.loads((run.dir / "summary.json").read_text())
    expected = "native" if backend == "auto" and native.available() else "torch"
    assert summary["augment"] == {"recipe": "simclr", "backend": expected}


def test_an_unknown_augmentation_backend_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="did you mean 'torch'"):
        collapselab.train("simclr", "digits", run={"name": "r", "out_dir": str(tmp_path)},
                          train={"epochs": 1, "max_steps_per_epoch": 1}, data={"augment_backend": "torhc"},
                          log={"progress": False})
