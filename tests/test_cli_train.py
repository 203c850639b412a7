"""``collapselab train`` and ``collapselab methods``: the resolved config, exit codes, a real tiny
run, and the method list with switches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from collapselab.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
from collapselab.methods import BYOL, METHODS, MethodOutput, available_methods

torch.set_num_threads(1)


def tiny_overrides(out_dir: Path, name: str = "x") -> list[str]:
    return [
        "train.epochs=1", "train.threads=1", "train.max_steps_per_epoch=2", "data.batch_size=64",
        "model.backbone_args.width=8", "log.progress=false", "log.tensorboard=false",
        "eval.knn_every=0", "eval.final=false", "monitor.probe_size=64",
        f"run.out_dir={out_dir}", f"run.name={name}",
    ]


def test_print_config_shows_the_override_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "optim.lr=0.5"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "lr: 0.5" in out
    printed = yaml.safe_load(out)
    assert printed["optim"]["lr"] == 0.5
    assert printed["method"]["name"] == "byol" and printed["data"]["dataset"] == "digits"


def test_print_config_layers_a_config_file_and_the_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 7\n")
    assert main(["train", "simsiam", "digits", "--config", str(path), "--name", "mine", "--print-config"]) == EXIT_OK
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"]["name"] == "simsiam"
    assert printed["train"]["epochs"] == 7
    assert printed["run"]["name"] == "mine"


@pytest.mark.parametrize(("args", "expected"), [
    (["optim.lrr=0.5"], "did you mean 'optim.lr'?"),
    (["simsam"], "did you mean 'simsiam'?"),
    (["byol", "digits", "extra"], "at most METHOD and DATASET"),
    (["optim.lr=-1"], "optim.lr must be > 0"),
])
def test_bad_config_exits_2_with_the_reason_on_stderr(capsys: pytest.CaptureFixture[str], args: list[str],
                                                      expected: str) -> None:
    assert main(["train", "--print-config", *args]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert expected in captured.err
    assert captured.err.startswith("error: ")
    assert captured.out == ""


def test_bad_key_in_a_real_run_exits_2_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path), "method.predictr=none"]) == EXIT_USAGE
    assert "did you mean 'method.predictor'?" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_with_method_name_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "byol", "--resume", str(tmp_path)]) == EXIT_USAGE
    assert "drop METHOD/DATASET" in capsys.readouterr().err


def test_resume_of_a_folder_without_a_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == EXIT_USAGE
    assert "no config.yaml" in capsys.readouterr().err


def test_tiny_run_exits_0_and_says_where_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    run_dir = tmp_path / "x"
    assert f"run written to {run_dir}/" in out
    assert "byol on digits: completed after 1 epochs, 2 steps" in out
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "report.html"):
        assert (run_dir / name).is_file(), name
    assert f"report: {run_dir / 'report.html'}" in out
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"

    # the same folder again without --resume is refused; with --resume it continues
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path)]) == EXIT_USAGE
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "train.epochs=2"]) == EXIT_OK
    assert "completed after 2 epochs, 4 steps" in capsys.readouterr().out


def test_log_report_false_writes_and_prints_no_report(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path), "log.report=false"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "report:" not in out
    assert not (tmp_path / "x" / "report.html").exists()


def test_training_failure_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    original = BYOL.forward

    def nan_forward(self: BYOL, views: list[torch.Tensor]) -> MethodOutput:
        out = original(self, views)
        return MethodOutput(out.loss * float("nan"), out.tensors, out.scalars)

    monkeypatch.setattr(BYOL, "forward", nan_forward)
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path)]) == EXIT_FAIL
    err = capsys.readouterr().err
    assert err.startswith("training failed: loss is nan at step 1 ")


def test_methods_lists_every_method_with_its_switches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == EXIT_OK
    out = capsys.readouterr().out
    assert set(available_methods()) >= {"simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg",
                                        "falcon", "directpred", "composite"}
    lines = out.splitlines()
    for name in available_methods():
        row = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
        assert METHODS[name].summary in lines[row]
        assert lines[row + 1].strip().startswith("switches: ")
        for switch in METHODS[name].switches:
            assert f"{switch}=" in lines[row + 1], (name, switch)
    assert "byol_digits" in out
