"""Every shipped recipe loads, and every digits recipe trains a few steps end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import collapselab
from collapselab.config import available_recipes, load_config
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
