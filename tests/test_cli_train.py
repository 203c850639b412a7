"""``collapselab train`` and ``collapselab methods``: the resolved config, exit codes, a real tiny
run, and the method list with switches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from collapselab.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
from collapselab.engine.trainer import Trainer
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
    captured = capsys.readouterr()
    assert captured.err.startswith("training failed: loss is nan at step 1 ")
    # the failed run still gets its report: diverged at step 1, so no epoch row to plot
    html = tmp_path / "x" / "report.html"
    assert f"report: {html}" in captured.out
    assert "error: loss is nan at step 1 " in html.read_text(encoding="utf-8")
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["status"] == "failed"

    # a report that cannot be written is a one-line warning; the failure and its exit code stay
    def broken_report(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no plots today")

    monkeypatch.setattr("collapselab.report.html.write_report", broken_report)
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path, "y")]) == EXIT_FAIL
    captured = capsys.readouterr()
    assert captured.err.startswith("training failed: loss is nan at step 1 ")
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no plots today" in warnings[0]
    assert "report:" not in captured.out and not (tmp_path / "y" / "report.html").exists()


def test_interrupted_run_writes_its_report_and_exits_130(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    original = Trainer._save

    def save_then_interrupt(self: Trainer) -> None:
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save", save_then_interrupt)
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path)]) == 128 + 2
    captured = capsys.readouterr()
    assert captured.err.rstrip().endswith("interrupted")
    html = tmp_path / "x" / "report.html"
    assert f"report: {html}" in captured.out
    assert "stop reason: SIGINT (Ctrl-C)" in html.read_text(encoding="utf-8")
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["status"] == "interrupted"

    # log.report=false: no report, failed or interrupted
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path, "y"), "log.report=false"]) == 128 + 2
    assert "report:" not in capsys.readouterr().out
    assert not (tmp_path / "y" / "report.html").exists()


def test_a_config_write_that_dies_half_way_leaves_the_earlier_config_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["train", "byol", "digits", *tiny_overrides(tmp_path), "log.report=false"]) == EXIT_OK
    config = tmp_path / "x" / "config.yaml"
    before = config.read_text()
    write_text, replace = Path.write_text, os.replace

    def half_then_crash(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self.name != "config.yaml":
            return write_text(self, data, *args, **kwargs)  # type: ignore[arg-type]
        write_text(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    def crash_on_config(src: str, dst: str | Path, *args: object, **kwargs: object) -> None:
        if Path(dst).name == "config.yaml":
            raise OSError(28, "No space left on device")
        replace(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", half_then_crash)  # a direct write dies half-way
    monkeypatch.setattr(os, "replace", crash_on_config)  # an atomic one before its rename
    assert main(["train", "--resume", str(tmp_path / "x"), "train.epochs=2"]) == EXIT_USAGE
    assert "No space left on device" in capsys.readouterr().err
    assert config.read_text() == before
    assert [p.name for p in config.parent.iterdir() if p.name.endswith(".tmp")] == []


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
