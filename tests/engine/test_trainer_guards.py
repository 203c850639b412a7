"""Nothing lost, nothing misleading: resume guards, SIGTERM, divergence in the weights, run names,
backbone arguments, the CLI's option order, eval's kNN settings."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.cli import main
from collapselab.config import load_config
from collapselab.engine.checkpoint import CheckpointError
from collapselab.engine.trainer import Trainer, TrainingError
from collapselab.evaluation import evaluate
from collapselab.runs import RunFolder

torch.set_num_threads(1)


def tiny(out_dir: Path, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "run": {"name": name, "out_dir": str(out_dir)},
        "train": {"epochs": 2, "threads": 1, "max_steps_per_epoch": 2},
        "data": {"batch_size": 64},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "tensorboard": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 64},
    }
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return settings


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run (copied by tests that change it)."""
    return collapselab.train("byol", "digits", **tiny(tmp_path_factory.mktemp("done"), "done")).dir


def copy(run_dir: Path, target: Path) -> Path:
    return Path(shutil.copytree(run_dir, target))


# ---- resume ------------------------------------------------------------------------------


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path: Path, done: Path) -> None:
    run_dir = copy(done, tmp_path / "r")
    with pytest.raises(InputError, match=r"has done 4 steps .2 epochs. but the config asks for 2"):
        collapselab.train(resume=run_dir, overrides=["train.epochs=1"])


@pytest.mark.parametrize("override", ["data.batch_size=32", "train.seed=3", "method.predictor=none"])
def test_resume_refuses_changes_to_what_defines_the_run(tmp_path: Path, done: Path, override: str) -> None:
    run_dir = copy(done, tmp_path / "r")
    key = override.split("=")[0].rsplit(".", 1)[0] if override.startswith("method") else override.split("=")[0]
    with pytest.raises(InputError, match=f"{key} cannot change on resume"):
        collapselab.train(resume=run_dir, overrides=[override, "train.epochs=3"])


def test_resume_with_a_new_length_says_the_schedules_are_replanned(
        tmp_path: Path, done: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = copy(done, tmp_path / "r")
    run = collapselab.train(resume=run_dir, overrides=["train.epochs=3"])
    assert run.summary["epochs_completed"] == 3
    assert "train.epochs 2 -> 3: the LR and EMA schedules are re-planned" in capsys.readouterr().err


def test_resume_of_another_methods_checkpoint_is_a_one_line_error(tmp_path: Path, done: Path) -> None:
    other = collapselab.train("simclr", "digits", **tiny(tmp_path, "simclr", train={"epochs": 1})).dir
    run_dir = copy(done, tmp_path / "r")
    shutil.copy(other / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError) as info:
        collapselab.train(resume=run_dir, overrides=["train.epochs=3"])
    message = str(info.value)
    assert "method.name 'simclr' -> 'byol'" in message and "\n" not in message


@pytest.mark.parametrize(("edit", "named"), [
    (("seed: 0", "seed: 7"), "train.seed 0 -> 7"),
    (("predictor_lr_ratio: 1.0", "predictor_lr_ratio: 3.0"), "optim.predictor_lr_ratio 1.0 -> 3.0"),
    (("predictor: mlp", "predictor: none"), "method.predictor 'mlp' -> 'none'"),
])
def test_resume_after_editing_config_yaml_is_refused_with_the_key(
        tmp_path: Path, done: Path, edit: tuple[str, str], named: str) -> None:
    """The checkpoint keeps the config it was written with: an edited config.yaml that changes
    what a resume cannot change is refused like the same override, naming the key."""
    run_dir = copy(done, tmp_path / "r")
    path = run_dir / "config.yaml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(CheckpointError) as info:
        collapselab.train(resume=run_dir, overrides=["train.epochs=3"])
    assert named in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["run.name=zzz", "run.out_dir=/tmp/elsewhere"])
def test_resume_refuses_another_run_folder(tmp_path: Path, done: Path, override: str) -> None:
    run_dir = copy(done, tmp_path / "r")
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(InputError, match=f"{override.split('=')[0]} cannot change on resume"):
        collapselab.train(resume=run_dir, overrides=[override, "train.epochs=3"])
    assert (run_dir / "config.yaml").read_text() == before


def test_print_config_of_a_resume_is_the_runs_config(
        tmp_path: Path, done: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = copy(done, tmp_path / "r")
    assert main(["train", "--resume", str(run_dir), "--print-config", "train.epochs=5"]) == 0
    out = capsys.readouterr().out
    # the run's own settings (not the byol/digits defaults), with the override layered on
    assert "width: 8" in out and "max_steps_per_epoch: 2" in out and "epochs: 5" in out
    assert "name: done" in out


# ---- signals and divergence ----------------------------------------------------------------


def test_sigterm_ends_the_run_interrupted_with_its_summary_and_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Trainer._save

    def save_then_terminate(self: Trainer) -> None:
        original(self)
        if self.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_save", save_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        collapselab.train("byol", "digits", **tiny(tmp_path, "term"))
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the caller's again
    summary = RunFolder(tmp_path / "term").summary()
    assert summary["status"] == "interrupted" and summary["stop_reason"] == "SIGTERM"
    assert summary["epochs_completed"] == 1
    monkeypatch.undo()
    resumed = collapselab.train(resume=tmp_path / "term")
    assert resumed.summary["status"] == "completed" and resumed.summary["epochs_completed"] == 2


def test_sigterm_during_the_final_evaluation_still_writes_an_interrupted_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def terminate(self: Trainer) -> dict[str, float]:
        os.kill(os.getpid(), signal.SIGTERM)
        return {}

    monkeypatch.setattr(Trainer, "final_evaluation", terminate)
    with pytest.raises(KeyboardInterrupt):
        collapselab.train("byol", "digits", **tiny(tmp_path, "late", eval={"final": True}))
    summary = RunFolder(tmp_path / "late").summary()
    assert summary["status"] == "interrupted" and summary["stop_reason"] == "SIGTERM"
    assert summary["epochs_completed"] == 2
    assert (tmp_path / "late" / "checkpoints" / "last.pt").is_file()


def test_weights_that_diverge_after_the_last_finite_loss_are_reported_as_divergence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Trainer._step

    def step_then_poison(self: Trainer, images: torch.Tensor) -> None:
        original(self, images)
        if self.global_step == 1:  # the epoch's last step: its loss was finite
            with torch.no_grad():
                next(self.method.backbone.parameters()).fill_(float("inf"))

    monkeypatch.setattr(Trainer, "_step", step_then_poison)
    with pytest.raises(TrainingError, match=r"diverged by step 2 .*non-finite.*Try a lower optim.lr"):
        collapselab.train("byol", "digits", **tiny(tmp_path, "div"))
    assert RunFolder(tmp_path / "div").summary()["status"] == "failed"


# ---- config and CLI ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", " "])
def test_run_name_cannot_leave_the_out_dir(name: str) -> None:
    with pytest.raises(InputError, match=r"run\.name must be a folder name"):
        load_config("byol", "digits", overrides=[f"run.name={name!r}"])


def test_backbone_args_follow_the_backbone_they_were_written_for() -> None:
    recipe = load_config("byol", "digits")
    assert recipe.model.backbone_args  # the digits recipe sizes its small CNN
    resnet = load_config("byol", "digits", overrides=["model.backbone=resnet18"])
    assert resnet.model.backbone == "resnet18" and resnet.model.backbone_args == {}
    cleared = load_config("byol", "digits", overrides=["model.backbone_args={}"])
    assert cleared.model.backbone_args == {}
    kept = load_config("byol", "digits", overrides=["model.backbone=resnet18", "model.backbone_args.width=1"])
    assert dict(kept.model.backbone_args) == {"width": 1}


def test_options_may_follow_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "byol", "digits", "train.epochs=1", "--name", "r", "log.progress=false",
                 "--print-config"])
    out = capsys.readouterr().out
    assert code == 0
    assert "progress: false" in out and "name: r" in out and "epochs: 1" in out


def test_missing_dataset_hint_names_real_commands() -> None:
    with pytest.raises(FileNotFoundError) as info:
        collapselab.data.get_dataset("cifar10", "train", data_dir="/nonexistent-collapselab")
    assert "collapselab datasets --download cifar10" in str(info.value)
    assert "(CLI: --download)" not in str(info.value)


# ---- eval ----------------------------------------------------------------------------------


def test_eval_of_a_run_uses_and_records_the_runs_knn_settings(tmp_path: Path) -> None:
    run = collapselab.train("byol", "digits", **tiny(tmp_path, "k7", eval={"final": True, "knn_k": 7}))
    trained = run.summary["eval"]["knn_top1"]
    scores = evaluate(run.dir, protocols=("knn",), baselines=())
    n_test = len(collapselab.data.get_dataset("digits", "test"))
    assert abs(scores["knn_top1"] - trained) <= 1 / n_test  # the same k, τ and bank as the trainer's
    recorded = RunFolder(run.dir).summary()["eval"]
    assert recorded["knn_k"] == 7 and recorded["knn_temperature"] == pytest.approx(0.1)
    evaluate(run.dir, protocols=("knn",), baselines=(), k=200)
    assert RunFolder(run.dir).summary()["eval"]["knn_k"] == 200  # an explicit k is recorded too


def test_knn_k_larger_than_the_bank_warns_and_uses_the_bank() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(12, 4, generator=g), torch.randn(6, 4, generator=g)
    labels, test_labels = torch.arange(12) % 3, torch.arange(6) % 3
    source = {"train_features": train, "train_labels": labels, "test_features": test, "test_labels": test_labels}
    with pytest.warns(UserWarning, match="k=50 is larger than the 12 training features; using k=12"):
        big = evaluate(source, protocols=("knn",), k=50)
    assert big == evaluate(source, protocols=("knn",), k=12)


# ---- data and outputs ----------------------------------------------------------------------


def test_npz_with_an_object_array_is_a_one_line_error(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(InputError, match="cannot be read as numeric arrays"):
        collapselab.data.get_dataset("npz", "train", data_dir=path)


def test_unlabelled_npz_trains_without_label_based_evaluation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    images = np.random.default_rng(0).integers(0, 255, (160, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", x=images)
    np.savez(tmp_path / "test.npz", x=images[:40])
    run = collapselab.train("byol", "npz", **tiny(tmp_path, "unlabelled", data={"data_dir": str(tmp_path)},
                                                  eval={"final": True, "knn_every": 1}))
    assert run.summary["status"] == "completed" and run.summary["eval"] == {"step": run.summary["steps"]}  # no scores
    assert "has no labels, so the online kNN and the final evaluation are skipped" in capsys.readouterr().err
    assert RunFolder(run.dir).checks()["emb"]["step"]  # the monitor still ran


def test_an_unwritable_output_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["theory", "phase-map", "--out", str(blocker / "sub"), "--eta", "0.1", "--beta", "0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err


def test_a_corrupt_image_in_an_imagefolder_is_named(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=r"cannot decode image .*bad\.png"):
        collapselab.data.get_dataset("imagefolder", "train", data_dir=tmp_path)


def test_a_checkpoint_holding_code_is_refused_without_unpickling_advice(tmp_path: Path) -> None:
    from collapselab.engine.checkpoint import load_checkpoint

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (Path.touch, (str(marker),))

    torch.save({"format": "collapselab-checkpoint", "state": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert "never unpickled" in str(info.value) and "weights_only=False" not in str(info.value)
    assert "\n" not in str(info.value) and not marker.exists()


# ---- evaluation split and summary checks at setup -----------------------------------------


def _npz(folder: Path, split: str, images: Any, labels: Any = None) -> None:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{split}.npz", x=images, **({} if labels is None else {"y": labels}))


def _images(n: int, channels: int = 3, side: int = 8) -> Any:
    import numpy as np

    return np.random.default_rng(n).integers(0, 255, (n, channels, side, side), dtype=np.uint8)


@pytest.mark.parametrize(("test_images", "labels", "message"), [
    ((40, 3, 4), None, r"'test' split's images are 3×4×4 \(C×H×W\) but the train split's are 3×8×8"),
    ((40, 1, 8), None, r"'test' split's images are 1×8×8 \(C×H×W\) but the train split's are 3×8×8"),
    ((40, 3, 8), "zeros", r"train split's labels hold a single class \(0\)"),
], ids=["size", "channels", "one-class"])
def test_a_bad_evaluation_split_is_refused_before_the_first_step(
        tmp_path: Path, test_images: tuple[int, int, int], labels: str | None, message: str) -> None:
    import numpy as np

    data = tmp_path / "data"
    y = np.zeros(160, np.int64) if labels == "zeros" else np.arange(160) % 4
    _npz(data, "train", _images(160), y)
    _npz(data, "test", _images(*test_images), np.arange(test_images[0]) % 4)
    with pytest.raises(InputError, match=message) as info:
        collapselab.train("byol", "npz", **tiny(tmp_path, "bad", data={"data_dir": str(data)},
                                                eval={"final": True, "knn_every": 1}))
    assert "eval.final=false eval.knn_every=0" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "bad" / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize("layout", ["file", "folder", "imagefolder"])
def test_data_with_only_a_train_split_trains_and_skips_evaluation_with_a_note(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str) -> None:
    import numpy as np

    images, labels = _images(160), np.arange(160) % 4
    if layout == "imagefolder":
        from PIL import Image

        data, dataset = tmp_path / "folder", "imagefolder"
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            (data / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(data / f"c{label}" / f"{i}.png")
    else:
        _npz(tmp_path / "npz", "train", images, labels)
        data, dataset = (tmp_path / "npz" / "train.npz" if layout == "file" else tmp_path / "npz"), "npz"
    run = collapselab.train("byol", dataset, **tiny(tmp_path, "only", data={"data_dir": str(data)},
                                                    eval={"final": True, "knn_every": 1}))
    err = capsys.readouterr().err
    assert "has no 'test' split, so the online kNN and the final evaluation are skipped" in err
    assert run.summary["status"] == "completed" and run.summary["eval"] == {"step": run.summary["steps"]}
    assert RunFolder(run.dir).summary()["status"] == "completed"
    assert RunFolder(run.dir).checks()["emb"]["step"]  # the monitor's probe needs no test split


def test_a_resumed_run_that_completes_drops_the_earlier_error(tmp_path: Path, done: Path) -> None:
    import json

    run_dir = copy(done, tmp_path / "r")
    folder = RunFolder(run_dir)
    failed = {**folder.summary(), "status": "failed", "error": "loss is nan at step 5"}
    folder.summary_path.write_text(json.dumps(failed))
    run = collapselab.train(resume=run_dir, overrides=["train.epochs=3"])
    summary = folder.summary()
    assert run.summary["status"] == summary["status"] == "completed"
    assert "error" not in summary and "error" not in run.summary
    assert summary["earlier_ends"] == [{"status": "failed", "steps": 4, "error": "loss is nan at step 5"}]


def test_a_corrupt_summary_is_refused_before_a_resume_trains(tmp_path: Path, done: Path) -> None:
    run_dir = copy(done, tmp_path / "r")
    (run_dir / "summary.json").write_text("{not json")
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(InputError, match=r"summary\.json: not valid JSON .*repair the file or move it aside") as info:
        collapselab.train(resume=run_dir, overrides=["train.epochs=3"])
    assert "\n" not in str(info.value)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before  # nothing trained or overwritten
