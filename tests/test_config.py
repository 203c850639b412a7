"""Run config: unknown keys name the closest valid one, impossible values fail before training,
layers merge in order (recipe < YAML file < overrides < keywords), and configs round-trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

import collapselab
from collapselab._validation import InputError
from collapselab.config import (
    Config,
    check_keys,
    config_from_dict,
    load_config,
    recipe_path,
    shorthand,
    to_dict,
    to_yaml,
    validate,
)
from collapselab.methods import available_methods, ema_base

torch.set_num_threads(1)


def tiny(out_dir: Path, name: str = "run") -> dict[str, Any]:
    """Keyword arguments for a run of about a second on digits (2 steps, width-8 CNN)."""
    return {
        "run": {"name": name, "out_dir": str(out_dir)},
        "train": {"epochs": 1, "threads": 1, "max_steps_per_epoch": 2},
        "data": {"batch_size": 64},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "tensorboard": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 64},
    }


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(("override", "bad_key", "suggestion"), [
    ("optim.lrr=0.1", "optim.lrr", "optim.lr"),
    ("method.predictr=none", "method.predictr", "method.predictor"),
    ("train.epoch=3", "train.epoch", "train.epochs"),
    ("trian.epochs=3", "trian", "train"),  # an unknown section
    ("optimizer.lr=0.1", "optimizer", "optim"),
])
def test_unknown_key_names_the_closest_valid_key(override: str, bad_key: str, suggestion: str) -> None:
    with pytest.raises(InputError) as info:
        load_config("byol", "digits", overrides=[override])
    assert f"unknown config key {bad_key!r} in the overrides; did you mean {suggestion!r}?" in str(info.value)


def test_key_in_the_wrong_section_names_the_right_section() -> None:
    with pytest.raises(InputError, match=r"did you mean 'optim\.lr'\?"):
        load_config("byol", "digits", overrides=["train.lr=0.1"])


def test_section_given_a_value_is_an_error() -> None:
    with pytest.raises(InputError, match="'optim' in the overrides is a section"):
        load_config("byol", "digits", overrides=["optim=3"])


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(InputError, match=r"did you mean 'optim\.lr'\?") as info:
        load_config("byol", "digits", config_file=path)
    assert str(path) in str(info.value)


def test_check_keys_accepts_valid_nested_layers() -> None:
    schema = Config(method=load_config("moco", "digits").method)
    check_keys({"optim": {"lr": 0.1}, "method": {"queue_size": 5}, "model": {"backbone_args": {"any": 1}}},
               schema, "test")


def test_unknown_method_lists_available_and_nearest() -> None:
    with pytest.raises(InputError) as info:
        load_config("simsam", "digits")
    message = str(info.value)
    assert "did you mean 'simsiam'?" in message
    for name in available_methods():
        assert name in message


def test_method_specific_key_is_rejected_for_another_method() -> None:
    assert load_config("moco", "digits", overrides=["method.queue_size=5"]).method.queue_size == 5
    with pytest.raises(InputError, match=r"unknown config key 'method\.queue_size'"):
        load_config("byol", "digits", overrides=["method.queue_size=5"])
    with pytest.raises(InputError, match=r"unknown config key 'method\.predictor'"):
        load_config("simclr", "digits", overrides=["method.predictor=mlp"])  # SimCLR has no predictor


# --------------------------------------------------------------------------- impossible values


@pytest.mark.parametrize(("override", "names"), [
    ("optim.lr=-0.1", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=abc", "optim.lr"),
    ("data.batch_size=1", "data.batch_size"),
    ("optim.momentum=1.0", "optim.momentum"),
    ("method.ema=1.0", "method.ema"),
    ("method.predictor=mpl", "method.predictor"),
    ("monitor.policy=explode", "monitor.policy"),
    ("train.amp=fp8", "train.amp"),
    ("train.epochs=0", "train.epochs"),
    ("optim.name=sdg", "optim.name"),
    ("method.stop_gradient=false", "method.stop_gradient"),
])
def test_impossible_value_fails_before_any_training(tmp_path: Path, override: str, names: str) -> None:
    settings = tiny(tmp_path)
    section, key = names.split(".")
    settings.get(section, {}).pop(key, None)  # keywords would win over the override
    with pytest.raises(InputError, match=names.replace(".", r"\.")):
        collapselab.train("byol", "digits", overrides=[override], **settings)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("value", "expected"), [("off", "off"), ("no", "off"), ("false", "off"),
                                                ("bf16", "bf16"), ("BF16", "bf16"), ("auto", "auto")])
def test_train_amp_off_survives_yaml_reading_it_as_a_boolean(value: str, expected: str) -> None:
    """`train.amp=off` is what the trainer's divergence message suggests; YAML reads it as False."""
    assert load_config("byol", "digits", overrides=[f"train.amp={value}"]).train.amp == expected


@pytest.mark.parametrize("value", ["on", "yes", "fp8"])
def test_train_amp_that_names_no_precision_is_a_one_line_error(value: str) -> None:
    with pytest.raises(InputError, match=r"train\.amp must be one of auto, bf16, fp16, off"):
        load_config("byol", "digits", overrides=[f"train.amp={value}"])


@pytest.mark.parametrize("value", [".nan", ".inf"])
@pytest.mark.parametrize(("method", "key"), [
    ("simsiam", "optim.lr"),
    ("simsiam", "optim.predictor_lr_ratio"),
    ("simsiam", "optim.warmup_epochs"),
    ("simsiam", "optim.grad_clip"),
    ("simsiam", "optim.weight_decay"),
    ("simsiam", "optim.eta"),
    ("simsiam", "monitor.warmup_epochs"),
    ("simsiam", "eval.knn_temperature"),
    ("byol", "method.ema"),
    ("byol", "method.ema_final"),
    ("simclr", "method.temperature"),
    ("vicreg", "method.variance_weight"),
    ("barlow_twins", "method.lambda_offdiag"),
    ("dino", "method.teacher_temp_warmup_epochs"),
    ("swav", "method.queue_start_epoch"),
    ("byol", "data.augment.flip_p"),
])
def test_non_finite_setting_is_a_one_line_error_naming_the_key(method: str, key: str, value: str) -> None:
    with pytest.raises(InputError) as info:
        load_config(method, "digits", overrides=[f"{key}={value}"])
    message = str(info.value)
    assert key in message and "finite" in message and "\n" not in message


def test_non_finite_setting_fails_on_the_command_line_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from collapselab.cli import EXIT_USAGE, main

    assert main(["train", "simsiam", "digits", "optim.predictor_lr_ratio=1e400", "--print-config"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == "error: optim.predictor_lr_ratio must be a finite number, got inf\n"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(("method", "key"), [
    ("simclr", "temperature"),
    ("moco", "temperature"),
    ("vicreg", "variance_weight"),
    ("barlow_twins", "lambda_offdiag"),
    ("dino", "freeze_last_layer_epochs"),
    ("falcon", "beta"),
    ("falcon", "eps"),
    ("swav", "queue_start_epoch"),
])
def test_method_validate_rejects_non_finite_numbers(method: str, key: str, value: float) -> None:
    from collapselab.methods import method_class

    config = dataclasses.replace(method_class(method).config_class(), **{key: value})
    with pytest.raises(InputError, match=rf"method\.{key} must be .*finite"):
        config.validate()


def test_batch_larger_than_dataset_fails_before_any_step(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"data\.batch_size=5000.*1438") as info:
        collapselab.train("byol", "digits", overrides=["data.batch_size=5000"], **{**tiny(tmp_path), "data": {}})
    assert "lower data.batch_size" in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_validate_rejects_a_config_changed_after_loading() -> None:
    config = load_config("byol", "digits")
    validate(config)
    config.optim.lr = -1.0
    with pytest.raises(InputError, match=r"optim\.lr must be > 0"):
        validate(config)
    config.optim.lr = float("nan")
    with pytest.raises(InputError, match=r"optim\.lr must be a finite number, got nan"):
        validate(config)


@pytest.mark.parametrize("content", ["optim: [unclosed\n", "- a\n- b\n"])
def test_bad_yaml_file_is_an_input_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(InputError, match=str(path)):
        load_config("byol", "digits", config_file=path)
    with pytest.raises(InputError, match="does not exist"):
        load_config("byol", "digits", config_file=tmp_path / "missing.yaml")


def test_malformed_override_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"section\.key=value"):
        load_config("byol", "digits", overrides=["optim.lr"])


# --------------------------------------------------------------------------- layers


def test_layers_merge_recipe_then_file_then_overrides_then_keywords(tmp_path: Path) -> None:
    recipe = OmegaConf.to_container(OmegaConf.load(recipe_path("byol", "digits")))
    default = Config()
    assert recipe["optim"]["weight_decay"] != default.optim.weight_decay  # the recipe layer is visible
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lr: 0.5\n  momentum: 0.8\ntrain:\n  epochs: 7\n  seed: 3\ndata:\n  batch_size: 128\n")
    config = load_config("byol", "digits", config_file=path,
                         overrides=["optim.lr=0.25", "train.epochs=5", "train.seed=4"], epochs=3)
    assert config.optim.weight_decay == recipe["optim"]["weight_decay"]  # recipe only
    assert config.model.backbone_args == recipe["model"]["backbone_args"]  # recipe only
    assert config.data.batch_size == 128 and config.optim.momentum == 0.8  # file over recipe
    assert config.optim.lr == 0.25 and config.train.seed == 4  # overrides over file and recipe
    assert config.train.epochs == 3  # keywords over everything
    assert config.data.augment["recipe"] == "byol"  # untouched nested recipe values survive


def test_method_and_dataset_from_a_later_layer_win() -> None:
    config = load_config("byol", "digits", overrides=["method.name=simsiam"])
    assert config.method.name == "simsiam" and type(config.method).__name__ == "SimSiamConfig"


def test_shorthand_maps_unique_field_names_to_their_section() -> None:
    assert shorthand({"epochs": 20}) == {"train": {"epochs": 20}}
    assert shorthand({"lr": 0.1}) == {"optim": {"lr": 0.1}}
    assert shorthand({"optim__lr": 0.1, "train": {"seed": 1}}) == {"optim": {"lr": 0.1}, "train": {"seed": 1}}


def test_shorthand_ambiguous_name_lists_the_options() -> None:
    with pytest.raises(InputError, match="ambiguous") as info:
        shorthand({"every": 5})
    for option in ("monitor__every", "checkpoint__every", "log__every"):
        assert option in str(info.value)


def test_shorthand_unknown_name_suggests_the_nearest() -> None:
    with pytest.raises(InputError, match=r"unknown keyword 'epochz'; did you mean 'epochs'\?"):
        shorthand({"epochz": 3})


def test_train_accepts_the_method_section_as_a_keyword(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"did you mean 'method\.predictor'\?"):
        collapselab.train("byol", "digits", method={"predictr": "none"}, **tiny(tmp_path))


# --------------------------------------------------------------------------- values and round trips


def test_ema_off_in_yaml_means_no_ema(tmp_path: Path) -> None:
    path = tmp_path / "no_ema.yaml"
    path.write_text("method:\n  ema: off\n  stop_gradient: false\n")
    from_file = load_config("byol", "digits", config_file=path)
    assert ema_base(from_file.method.ema) is None
    assert ema_base(load_config("byol", "digits", overrides=["method.ema=off"]).method.ema) is None
    assert ema_base(load_config("byol", "digits").method.ema) is not None  # BYOL's default has one
    assert ema_base(config_from_dict(to_dict(from_file)).method.ema) is None


@pytest.mark.parametrize("method", available_methods())
def test_config_round_trips_through_dict_and_yaml(method: str, tmp_path: Path) -> None:
    config = load_config(method, "digits")
    assert config_from_dict(to_dict(config)) == config
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    assert config_from_dict(OmegaConf.to_container(OmegaConf.load(path))) == config


def test_every_method_is_covered_by_the_round_trip() -> None:
    assert set(available_methods()) == {
        "simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "falcon", "directpred", "composite",
        "dino", "swav", "ijepa",
    }


def test_saved_run_config_reloads_to_the_same_config(tmp_path: Path) -> None:
    run = collapselab.train("byol", "digits", overrides=["method.ema=off", "method.stop_gradient=true"],
                            **tiny(tmp_path))
    saved = OmegaConf.to_container(OmegaConf.load(run.dir / "config.yaml"))
    assert config_from_dict(saved) == run.config
    assert dataclasses.asdict(config_from_dict(saved)) == dataclasses.asdict(run.config)
    assert ema_base(run.config.method.ema) is None
