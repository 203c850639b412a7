"""Bad input to ``collapselab train`` and ``collapselab.train``: one-line errors (exit 2 on the
command line) for wrong container types, unreadable override values, a resume of another method's
run, and names that a run checks only when it builds them; NumPy scalars, a single override
string and an in-memory config mapping are accepted."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import collapselab
from collapselab._validation import InputError, plain_values
from collapselab.cli import EXIT_USAGE, main
from collapselab.config import load_config, to_yaml


def usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one-line stderr of a ``collapselab train`` that must exit 2 without printing a config."""
    assert main(["train", *args]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


# ---- wrong container types


@pytest.mark.parametrize(("override", "expected"), [
    ("data.augment=[1,2]", "'data.augment' in the overrides takes a recipe name"),
    ("optim.betas={a: 1}", "'optim.betas' in the overrides takes a list of two numbers"),
    ("model.backbone_args=[1]", "'model.backbone_args' in the overrides takes a mapping"),
])
def test_a_list_for_a_mapping_or_a_mapping_for_a_list_names_the_key(
        capsys: pytest.CaptureFixture[str], override: str, expected: str) -> None:
    assert expected in usage_error(["byol", "digits", override, "--print-config"], capsys)


def test_a_wrong_container_in_a_config_file_names_the_file_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data: {augment: [1, 2]}\n")
    err = usage_error(["byol", "digits", "--config", str(path), "--print-config"], capsys)
    assert f"'data.augment' in {path} takes a recipe name" in err


def test_a_list_for_augment_without_a_recipe_is_refused_too() -> None:
    with pytest.raises(InputError, match=r"data\.augment takes a recipe name"):
        load_config("byol", "digits", use_recipe=False, overrides=["data.augment=[1,2]"])


def test_python_keyword_with_a_wrong_container_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"'data\.augment' in the keyword arguments takes"):
        collapselab.train("byol", "digits", data={"augment": [1, 2]})


def test_sweep_with_a_wrong_container_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", "byol_digits", "data.augment=[1,2],[3]", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "'data.augment' in the overrides takes a recipe name" in err


# ---- unreadable override values


@pytest.mark.parametrize("override", ["optim.lr=[1,2", "optim.lr=a: b: c"])
def test_an_override_that_is_not_yaml_is_named(capsys: pytest.CaptureFixture[str], override: str) -> None:
    err = usage_error(["byol", "digits", override, "--print-config"], capsys)
    assert f"override {override!r}: cannot read the value as YAML" in err


def test_a_config_file_that_is_not_yaml_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data: {augment: [1, 2}\n")
    assert "not valid YAML" in usage_error(["--config", str(path), "--print-config"], capsys)


def test_a_config_directory_is_called_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["--config", str(tmp_path), "--print-config"], capsys)
    assert "is a directory" in err and "does not exist" not in err


# ---- resuming another method's run


def fake_run(out_dir: Path, name: str = "b1") -> Path:
    """A run folder of a BYOL digits run with a (dummy) checkpoint: enough to be found for resuming."""
    folder = out_dir / name
    (folder / "checkpoints").mkdir(parents=True)
    cfg = load_config("byol", "digits", overrides=[f"run.out_dir={out_dir}", f"run.name={name}"])
    (folder / "config.yaml").write_text(to_yaml(cfg))
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    return folder


@pytest.mark.parametrize(("names", "expected"), [
    (["simsiam", "digits"], "not method 'simsiam'"),
    (["byol", "cifar10"], "not dataset 'cifar10'"),
])
def test_auto_resume_refuses_a_run_of_another_method_or_dataset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], names: list[str], expected: str) -> None:
    fake_run(tmp_path)
    err = usage_error([*names, f"run.out_dir={tmp_path}", "--name", "b1", "--auto-resume"], capsys)
    assert "--auto-resume" in err and "is a byol run on digits" in err and expected in err


@pytest.mark.parametrize(("names", "expected"), [
    (("simsiam", "cifar10"), "not method 'simsiam'"),
    (("byol", "cifar10"), "not dataset 'cifar10'"),
])
def test_python_resume_refuses_another_method_or_dataset(tmp_path: Path, names: tuple[str, str],
                                                         expected: str) -> None:
    folder = fake_run(tmp_path)
    with pytest.raises(InputError, match=expected):
        collapselab.train(*names, resume=folder)


# ---- Python train(...) inputs


def test_numpy_scalars_are_taken_as_python_numbers() -> None:
    cfg = load_config("byol", "digits", lr=np.float32(0.5), batch_size=np.int64(64),
                      optim={"weight_decay": np.float64(0.01)}, betas=[np.float64(0.5), np.float32(0.25)])
    assert cfg.optim.lr == pytest.approx(0.5) and type(cfg.optim.lr) is float
    assert cfg.data.batch_size == 64 and type(cfg.data.batch_size) is int
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.betas == [0.5, 0.25]
    assert plain_values({"a": (np.bool_(True), np.array(3))}) == {"a": [True, 3]}


def test_one_override_string_is_one_override() -> None:
    assert load_config("byol", "digits", overrides="optim.lr=0.5").optim.lr == 0.5


def test_a_config_mapping_is_an_in_memory_layer() -> None:
    cfg = load_config("byol", "digits", config_file={"optim": {"lr": 0.7}, "train": {"epochs": 2}})
    assert cfg.optim.lr == 0.7 and cfg.train.epochs == 2
    with pytest.raises(InputError, match=r"unknown config key 'optim\.lrr' in the config mapping"):
        load_config("byol", "digits", config_file={"optim": {"lrr": 0.7}})
    with pytest.raises(InputError, match="path of a YAML file or a mapping"):
        load_config("byol", "digits", config_file=3)  # type: ignore[arg-type]


def test_python_train_takes_numpy_a_string_override_and_a_mapping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``collapselab.train`` itself, stopped just before training: what reaches the Trainer."""
    import collapselab.engine.trainer as trainer

    seen = {}

    class Stop(Exception):
        pass

    def fake_init(self: object, cfg: object, run_dir: Path, resume: bool = False) -> None:
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(trainer.Trainer, "__init__", fake_init)
    with pytest.raises(Stop):
        collapselab.train("byol", "digits", config={"train": {"epochs": 2}}, overrides="optim.lr=0.5",
                          batch_size=np.int64(64), optim={"weight_decay": np.float64(0.01)},
                          out_dir=str(tmp_path))
    cfg = seen["cfg"]
    assert cfg.train.epochs == 2 and cfg.optim.lr == 0.5  # type: ignore[attr-defined]
    assert cfg.data.batch_size == 64 and cfg.optim.weight_decay == 0.01  # type: ignore[attr-defined]


# ---- --print-config checks what a run would


@pytest.mark.parametrize(("args", "expected"), [
    (["data.augment=foo"], "augment: unknown recipe 'foo'"),
    (["model.backbone=resnet99"], "did you mean 'resnet50'?"),
    (["model.backbone=keras:x"], "unknown adapter"),
    (["data.dataset=digitz"], "did you mean 'digits'?"),
])
def test_print_config_refuses_what_a_run_would(capsys: pytest.CaptureFixture[str], args: list[str],
                                               expected: str) -> None:
    assert expected in usage_error(["byol", "digits", *args, "--print-config"], capsys)


def test_print_config_refuses_an_unknown_dataset_in_a_config_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "digitz"}}))
    assert "unknown dataset 'digitz'" in usage_error(["--config", str(path), "--print-config"], capsys)


# ---- augment settings that were dropped silently


@pytest.mark.parametrize(("augment", "expected"), [
    ("{views: 0}", "data.augment.views must map view groups"),
    ("{std: [0.5]}", "data.augment.std is given without data.augment.mean"),
    ("{mean: [0.5]}", "data.augment.mean is given without data.augment.std"),
])
def test_augment_views_and_one_sided_stats_are_errors(capsys: pytest.CaptureFixture[str], augment: str,
                                                     expected: str) -> None:
    assert expected in usage_error(["byol", "digits", f"data.augment={augment}", "--print-config"], capsys)


@pytest.mark.parametrize("saved, key", [
    ({"optim": {"lr": [1, 2]}}, "optim.lr"),
    ({"train": {"epochs": "abc"}}, "train.epochs"),
    ({"model": {"backbone_args": [1]}}, "model.backbone_args"),
])
def test_a_saved_config_with_a_bad_value_or_container_is_one_input_error(saved, key):
    """config_from_dict (config.yaml, checkpoints) names the key, as load_config does."""
    from collapselab.config import config_from_dict

    with pytest.raises(InputError, match=re.escape(repr(key))):
        config_from_dict(saved)
