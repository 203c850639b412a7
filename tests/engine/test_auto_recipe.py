"""Recipes for datasets without their own: ``pick_recipe`` chooses by image size and device,
``collapselab.train`` applies and reports the choice, ``run.recipe`` names one explicitly, and
every shipped small-image recipe trains on images of its size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.config import SMALL_RECIPE_MAX_16PX, load_config, pick_recipe, recipe_dir
from collapselab.methods import METHODS

torch.set_num_threads(1)

SMALL = sorted(str(p.relative_to(recipe_dir()).with_suffix("")) for p in (recipe_dir() / "small").glob("*.yaml"))


def write_npz(folder: Path, side: int, channels: int = 3, n_train: int = 120, n_test: int = 40) -> Path:
    """A random 10-class dataset of ``side``-px images in the layout ``dataset=npz`` reads."""
    rng = np.random.default_rng(side)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, side, side, channels), dtype=np.uint8)
        np.savez(folder / f"{split}.npz", x=x, y=np.arange(n) % 10)
    return folder


def quick(out_dir: Path, name: str, data_dir: Path, **extra: dict) -> dict:
    settings = {
        "run": {"name": name, "out_dir": str(out_dir)},
        "data": {"data_dir": str(data_dir), "batch_size": 32},
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "threads": 1, "adapt_threads": False, "device": "cpu"},
        "log": {"progress": False, "tensorboard": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 32},
    }
    for key, value in extra.items():
        settings[key] = {**settings.get(key, {}), **value}
    return settings


def test_every_method_has_small_recipes_for_16_and_32_px() -> None:
    assert SMALL == sorted(f"small/{m}_{s}px" for m in METHODS for s in (16, 32))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_pick_recipe_by_size_and_device(method: str) -> None:
    assert pick_recipe(method, 32, "cuda")[0] == f"{method}_cifar10"
    assert pick_recipe(method, 16, "cuda")[0] == f"{method}_cifar10"
    assert pick_recipe(method, 16, "cpu")[0] == f"small/{method}_16px"
    assert pick_recipe(method, SMALL_RECIPE_MAX_16PX, "cpu")[0] == f"small/{method}_16px"
    assert pick_recipe(method, SMALL_RECIPE_MAX_16PX + 1, "cpu")[0] == f"small/{method}_32px"
    assert pick_recipe(method, 64, "mps")[0] == f"small/{method}_32px"
    assert pick_recipe("not_a_method", 32, "cpu")[0] is None


@pytest.mark.parametrize("recipe", SMALL)
def test_every_small_recipe_trains_on_images_of_its_size(tmp_path: Path, recipe: str) -> None:
    method, size = recipe.removeprefix("small/").rsplit("_", 1)
    data = write_npz(tmp_path / "data", int(size.removesuffix("px")))
    run = collapselab.train(method, "npz", **quick(tmp_path, "r", data, run={"recipe": recipe}))
    assert run.summary["recipe"] == recipe and run.summary["steps"] == 2
    assert run.summary["status"] == "completed"


@pytest.mark.parametrize(("side", "channels"), [(16, 3), (32, 3), (28, 1)])
def test_train_on_npz_picks_reports_and_records_the_recipe(tmp_path: Path, capsys, side: int, channels: int) -> None:
    data = write_npz(tmp_path / "data", side, channels)
    run = collapselab.train("simclr", "npz", **quick(tmp_path, "r", data, data={"batch_size": 16}))
    expected = f"small/simclr_{16 if side <= SMALL_RECIPE_MAX_16PX else 32}px"
    assert run.summary["recipe"] == run.config.run.recipe == expected
    assert f"recipe: {expected} (npz has no simclr recipe; {side}-px images on cpu" in capsys.readouterr().out
    assert run.config.data.batch_size == 16  # the user's layers still win over the picked recipe
    reference = load_config("simclr", "npz", recipe=expected, data={"batch_size": 16})
    assert run.config.model == reference.model and run.config.optim == reference.optim
    saved = (run.dir / "config.yaml").read_text()
    assert f"recipe: {expected}" in saved


def test_a_dataset_with_a_recipe_keeps_it() -> None:
    assert load_config("byol", "digits").run.recipe == "byol_digits"
    assert load_config("byol", "npz").run.recipe is None  # train() picks one once it sees the images


def test_unknown_recipe_is_a_one_line_error_with_the_near_miss() -> None:
    with pytest.raises(InputError, match=r"run\.recipe='small/byol_32' is not a shipped recipe; did you mean "
                                         r"'small/byol_32px'\?") as err:
        load_config("byol", "npz", run={"recipe": "small/byol_32"})
    assert "\n" not in str(err.value)


def test_one_channel_images_get_no_flips_and_the_user_still_wins(tmp_path: Path, capsys) -> None:
    data = write_npz(tmp_path / "data", 32, channels=1)
    run = collapselab.train("byol", "npz", **quick(tmp_path, "grey", data))
    assert run.config.data.augment["flip_p"] == 0.0
    assert run.config.data.augment["crop_scale"] == load_config("byol", "npz", recipe="small/byol_32px").data.augment["crop_scale"]
    assert "1-channel images: data.augment.flip_p=0" in capsys.readouterr().out
    mine = collapselab.train("byol", "npz", overrides=["data.augment.flip_p=0.3"], **quick(tmp_path, "mine", data))
    assert mine.config.data.augment["flip_p"] == 0.3
    colour = collapselab.train("byol", "npz", **quick(tmp_path, "colour", write_npz(tmp_path / "rgb", 32)))
    assert "flip_p" not in colour.config.data.augment  # the recipe's own (the default 0.5)


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "ijepa"))
def test_two_view_32px_recipes_train_on_views_of_half_the_side(method: str) -> None:
    """At 32 px on a CPU the views are 16 px (about 3x the steps in a short budget), except
    FALCON's, whose projector ended collapsed with them (docs/performance.md); the picked 16-px
    recipes keep full-size views. I-JEPA (patches of the full image) is left alone."""
    from collapselab.data.augment import build_augment

    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for side, want in ((32, 32 if method == "falcon" else 16), (16, 16)):
        augment = load_config(method, "npz", recipe=f"small/{method}_{side}px").data.augment
        views = build_augment(dict(augment), backend="torch")(images[..., :side, :side])
        assert [tuple(v.shape[-2:]) for v in views] == [(want, want)] * 2
