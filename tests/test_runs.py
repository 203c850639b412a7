"""The run-folder layer (collapselab.runs): opening, summary merges, spectra, check rows, kept
checkpoints, and the layering it exists for (evaluation no longer imports the trainer)."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.runs import RunFolder, SpectraRecorder, read_spectra

torch.set_num_threads(1)
SRC = Path(collapselab.__file__).parent


def tiny(out_dir: Path, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "run": {"name": name, "out_dir": str(out_dir)},
        "train": {"epochs": 3, "threads": 1, "max_steps_per_epoch": 2},
        "data": {"batch_size": 64},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "tensorboard": "auto"},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 64},
    }
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return settings


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> collapselab.Run:
    out = tmp_path_factory.mktemp("runs")
    return collapselab.train("byol", "digits", **tiny(out, "r", checkpoint={"keep": 2}, train={"epochs": 4}))


# ---- opening -----------------------------------------------------------------------------


def test_open_refuses_what_is_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such run folder"):
        RunFolder.open(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        RunFolder.open(tmp_path / "file.txt")
    with pytest.raises(InputError, match="not a run folder"):
        RunFolder.open(tmp_path)


def test_empty_config_is_an_error_not_schema_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(InputError, match="empty or not a mapping"):
        RunFolder.open(tmp_path).config()


def test_missing_checkpoint_names_the_kept_ones(run: collapselab.Run) -> None:
    folder = RunFolder.open(run.dir)
    with pytest.raises(InputError, match="kept epochs: epoch 2, epoch 4"):
        folder.checkpoint(3)


# ---- summary -----------------------------------------------------------------------------


def test_write_summary_replaces_own_keys_keeps_others_and_merges_eval(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write_summary({"status": "failed", "error": "boom", "eval": {"knn_top1": 0.1}})
    folder.update_summary("eval", {"linear_top1": 0.7})
    folder.write_summary({"other": 1})
    written = folder.write_summary({"status": "completed", "error": None, "eval": {"knn_top1": 0.9},
                                    "loss": math.nan})
    on_disk = json.loads(folder.summary_path.read_text())  # strict JSON: NaN written as "nan"
    assert on_disk == {"status": "completed", "error": None, "other": 1, "loss": "nan",
                       "eval": {"knn_top1": 0.9, "linear_top1": 0.7}}
    assert written["eval"] == on_disk["eval"]
    assert not list(tmp_path.glob(".*tmp"))


def test_eval_of_an_earlier_step_moves_aside_instead_of_mixing(tmp_path: Path) -> None:
    """Same step (or no step): merged key by key. Another step: the old section moves whole to
    eval_earlier[old step] (merged there with what that step already had); eval is the new one."""
    folder = RunFolder(tmp_path)
    folder.write_summary({"eval": {"knn_top1": 0.1, "step": 5}})
    folder.update_summary("eval", {"linear_top1": 0.7})  # no step: same weights
    folder.write_summary({"eval": {"knn_top1": 0.2, "step": 5}})
    assert folder.summary()["eval"] == {"knn_top1": 0.2, "linear_top1": 0.7, "step": 5}
    folder.write_summary({"eval": {"knn_top1": 0.3, "step": 15}})
    on_disk = folder.summary()
    assert on_disk["eval"] == {"knn_top1": 0.3, "step": 15}
    assert on_disk["eval_earlier"] == {"5": {"knn_top1": 0.2, "linear_top1": 0.7, "step": 5}}
    folder.write_summary({"eval": {"step": 25}})
    assert folder.summary()["eval_earlier"] == {"5": {"knn_top1": 0.2, "linear_top1": 0.7, "step": 5},
                                                "15": {"knn_top1": 0.3, "step": 15}}


def test_update_summary_of_another_step_keeps_the_old_scores_under_their_own_step(tmp_path: Path) -> None:
    """collapselab eval's merge (update_summary) of new weights' scores: the old step's scores move
    to eval_earlier under that step, not into eval under the new one."""
    folder = RunFolder(tmp_path)
    folder.write_summary({"eval": {"knn_top1": 0.4, "step": 50}})
    folder.update_summary("eval", {"linear_top1": 0.8, "step": 105})
    on_disk = folder.summary()
    assert on_disk["eval"] == {"linear_top1": 0.8, "step": 105}
    assert on_disk["eval_earlier"] == {"50": {"knn_top1": 0.4, "step": 50}}
    folder.update_summary("eval", {"knn_top1": 0.5})  # no step: the same weights, merged
    assert folder.summary()["eval"] == {"linear_top1": 0.8, "knn_top1": 0.5, "step": 105}


def test_summary_that_is_not_an_object_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        RunFolder(tmp_path).summary()
    (tmp_path / "summary.json").write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        RunFolder(tmp_path).summary()


# ---- spectra -----------------------------------------------------------------------------


def test_spectra_recorder_round_trip_and_resume_trim(tmp_path: Path) -> None:
    rec = SpectraRecorder()
    rec.add(0, "emb", torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0]), n_samples=3)  # N < D: K = 3
    rec.add(5, "emb", torch.tensor([4.0, 1.0, 0.5, 0.0, 0.0]), n_samples=3)
    rec.add(9, "emb", torch.tensor([5.0, 0.1, 0.0, 0.0, 0.0]), n_samples=3)
    path = rec.save(tmp_path / "spectra.npz")
    steps, values = read_spectra(path)["emb"]
    assert steps.tolist() == [0, 5, 9] and values.shape == (3, 3)
    np.testing.assert_allclose(values[1], [4.0, 1.0, 0.5])
    resumed = SpectraRecorder()
    resumed.load(path, up_to_step=5)
    assert resumed.steps["emb"] == [0, 5]


def test_spectra_file_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spectra.npz"
    np.savez(path, **{"emb/steps": np.array([0]), "emb/eigenvalues": np.array([[{"x": 1}]], dtype=object)})
    with pytest.raises(InputError, match="cannot be read as a spectra file"):
        read_spectra(path)


def test_recorded_spectra_agree_with_the_check_rows(run: collapselab.Run) -> None:
    """Each check row's trace and effective rank follow from that check's saved spectrum
    (tr Σ = Σλ; erank = exp H(λ/Σλ), Roy & Vetterli 2007): both record the same embedding."""
    folder = RunFolder.open(run.dir)
    checks, spectra = folder.checks(), folder.spectra()
    assert set(spectra) == set(checks) == {"repr", "emb"}
    for name, (steps, eigenvalues) in spectra.items():
        series = checks[name]
        assert series["step"] == steps.tolist()
        assert len(steps) == 5  # the reference at step 0 and one check per epoch
        assert eigenvalues.shape[1] == min(64, int(series["dim"][0]))
        for i, lam in enumerate(eigenvalues):
            assert lam.sum() == pytest.approx(series["total_variance"][i], rel=1e-5)
            p = lam[lam > 0] / lam.sum()
            assert math.exp(-(p * np.log(p)).sum()) == pytest.approx(series["effective_rank"][i], rel=1e-4)
            assert np.all(np.diff(lam) <= 1e-12)  # descending
        assert set(series["verdict/dimensional"]) <= {"healthy", "warning", "collapsed"}


def test_check_rows_carry_every_monitor_metric_named_by_embedding(run: collapselab.Run) -> None:
    rows = RunFolder.open(run.dir).rows("check")
    final = run.summary["diagnosis"]
    last = rows[-1]
    for name, diag in final.items():
        for metric, value in diag["metrics"].items():
            assert f"{name}/{metric}" in last, f"{name}/{metric} missing"
            if value is not None:
                assert last[f"{name}/{metric}"] == pytest.approx(value, rel=1e-9)
        for mode, level in diag["verdict"].items():
            assert last[f"{name}/verdict/{mode}"] == level
    assert "loss" not in rows[0] and all("loss" in r for r in rows[1:])  # no training loss at init


# ---- checkpoints and messages --------------------------------------------------------------


def test_checkpoint_keep_spreads_epochs_over_the_run(run: collapselab.Run) -> None:
    folder = RunFolder.open(run.dir)
    assert list(folder.epoch_checkpoints()) == [2, 4]
    early, late = folder.backbone(2), folder.backbone(4)
    assert not torch.equal(next(early.parameters()), next(late.parameters()))
    torch.testing.assert_close(next(late.parameters()), next(run.method.backbone.parameters()))


def test_tensorboard_auto_says_once_whether_it_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    collapselab.train("byol", "digits", **tiny(tmp_path, "tb", train={"epochs": 1}))
    out = capsys.readouterr()
    text = out.out + out.err
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert text.count("TensorBoard: not installed") == 1
    else:
        assert text.count("TensorBoard: writing events") == 1


# ---- layering ----------------------------------------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_run_folder_layer_sits_below_trainer_evaluation_and_report() -> None:
    higher = ("collapselab.engine.trainer", "collapselab.evaluation", "collapselab.report", "collapselab.sweep",
              "collapselab.commands", "collapselab.cli")
    imported = _imported_modules(SRC / "runs.py")
    assert not [m for m in imported if m.startswith(higher)]
    for module in (SRC / "evaluation").glob("*.py"):
        assert "collapselab.engine.trainer" not in _imported_modules(module), module.name


def test_evaluation_loads_without_the_trainer() -> None:
    # importing the package runs collapselab/__init__ (which imports the trainer), so load the
    # module file with the package's __init__ bypassed
    code = ("import importlib.util, sys, types; "
            f"pkg = types.ModuleType('collapselab'); pkg.__path__ = [{str(SRC)!r}]; sys.modules['collapselab'] = pkg; "
            "import collapselab.evaluation.api; print('collapselab.engine.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
