"""``collapselab sweep`` and :mod:`collapselab.sweep`: grid expansion and names, CONFIG rules, the
mechanisms preset, in-process and worker runs, failures, resumption, printed commands and collect."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from collapselab._validation import InputError
from collapselab.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, build_parser, main, parse_intermixed
from collapselab.commands.train import split_args
from collapselab.runs import RunFolder
from collapselab.sweep import (
    Sweep,
    cell_name,
    collect,
    expand_grid,
    parse_grid,
    print_commands,
    resolve_config,
    run_sweep,
    split_values,
)

torch.set_num_threads(1)

# a cell in well under a second in-process: 3 steps of a width-8 CNN, no kNN
TINY = [
    "train.epochs=1", "train.threads=1", "train.max_steps_per_epoch=3", "data.batch_size=64",
    "model.backbone_args.width=8", "log.progress=false", "log.tensorboard=false", "log.report=false",
    "eval.knn_every=0", "eval.final=false", "monitor.probe_size=64", "optim.warmup_epochs=0",
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def tiny_sweep(tmp_path: Path, axes: dict[str, list[str]], **kwargs: object) -> Sweep:
    return Sweep("byol_digits", axes=axes, fixed=list(TINY), out=str(tmp_path), name="s", **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the grid (pure)


def test_split_values_keeps_brackets_and_quoted_commas_whole() -> None:
    assert split_values("0.1,0.3") == ["0.1", "0.3"]
    assert split_values("[0.2,1.0],[0.4,1.0]") == ["[0.2,1.0]", "[0.4,1.0]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert split_values("{k: 1, j: 2},none") == ["{k: 1, j: 2}", "none"]
    with pytest.raises(InputError, match="unbalanced"):
        split_values("[0.2,1.0")


def test_parse_grid_separates_swept_from_fixed_keys_and_canonicalises_shorthands() -> None:
    axes, fixed = parse_grid(["lr=0.1,0.3", "method.predictor=mlp,none", "train.epochs=2"])
    assert axes == {"optim.lr": ["0.1", "0.3"], "method.predictor": ["mlp", "none"]}
    assert fixed == ["train.epochs=2"]
    for bad, message in ((["optim.lr=0.1,0.1"], "twice"), (["run.name=a,b"], "set by the sweep"),
                         (["optim.lr=0.1,"], "empty value"), (["lr=1", "optim.lr=2,3"], "given twice")):
        with pytest.raises(InputError, match=message):
            parse_grid(bad)


def test_expand_grid_is_the_product_in_key_order_with_seeds_fastest() -> None:
    cells = expand_grid({"a.x": ["1", "2"], "b.y": ["p", "q", "r"]}, seeds=2)
    assert len(cells) == 12
    assert cells[0] == {"a.x": "1", "b.y": "p", "train.seed": "0"}
    assert cells[1] == {"a.x": "1", "b.y": "p", "train.seed": "1"}
    assert cells[-1] == {"a.x": "2", "b.y": "r", "train.seed": "1"}
    assert expand_grid({}, seeds=1) == [{}]
    with pytest.raises(InputError, match="not both"):
        expand_grid({"train.seed": ["0", "1"]}, seeds=2)


def test_cell_names_are_deterministic_filesystem_safe_and_distinct() -> None:
    assert cell_name({"method.predictor": "none", "train.seed": "1"}) == "predictor=none,seed=1"
    assert cell_name({}) == "base"
    # two keys with the same last part keep their whole dotted key
    assert cell_name({"optim.name": "sgd", "run.recipe": "x", "method.name": "byol"}).startswith("optim.name=sgd,recipe=x,")
    # values with other characters are slugged and hashed, so [0.2,1.0] and (0.2,1.0) differ
    a = cell_name({"data.augment.crop_scale": "[0.2,1.0]"})
    b = cell_name({"data.augment.crop_scale": "(0.2,1.0)"})
    assert a != b and a.startswith("crop_scale=0.2_1.0-") and a == cell_name({"data.augment.crop_scale": "[0.2,1.0]"})
    long = cell_name({f"k.key{i}": "value" * 5 for i in range(10)})
    assert len(long) <= 110
    for name in (a, b, long):
        assert "/" not in name and " " not in name and shlex.quote(name) == name


# --------------------------------------------------------------------------- CONFIG


def test_config_is_a_file_a_method_dataset_pair_or_a_shipped_recipe(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("method:\n  name: simsiam\n")
    assert resolve_config(str(path)).config_file == str(path)
    assert resolve_config("simsiam:digits").names() == ["simsiam", "digits"]
    assert resolve_config("barlow_twins_digits").names() == ["barlow_twins", "digits"]
    small = resolve_config("small/simclr_16px")
    assert small.names() == ["simclr"] and small.overrides == ("run.recipe=small/simclr_16px",)
    layer = resolve_config("batch1024/byol_cifar10")
    assert layer.names() == ["byol", "cifar10"] and layer.config_file == "batch1024/byol_cifar10.yaml"
    assert resolve_config("composite/a_alignment").names() == ["composite"]
    with pytest.raises(InputError, match="did you mean 'byol_digits'"):
        resolve_config("byol_digts")
    with pytest.raises(InputError, match="did you mean 'digits'"):
        resolve_config("byol:digts")


# --------------------------------------------------------------------------- validation and presets


def test_mechanisms_preset_expands_eight_cells_and_marks_stop_gradient_false_with_ema_invalid(tmp_path: Path) -> None:
    cells = Sweep("byol_digits", preset="mechanisms", out=str(tmp_path)).cells()
    assert len(cells) == 8
    assert [c.name for c in cells][:2] == ["predictor=mlp,stop_gradient=true,ema=0.99",
                                           "predictor=mlp,stop_gradient=true,ema=off"]
    invalid = {c.name for c in cells if c.invalid}
    assert invalid == {"predictor=mlp,stop_gradient=false,ema=0.99", "predictor=none,stop_gradient=false,ema=0.99"}
    assert all("stop_gradient=false needs method.ema=off" in c.invalid for c in cells if c.invalid)
    simsiam = Sweep("simsiam_digits", preset="mechanisms", out=str(tmp_path)).all_axes()
    assert simsiam["method.ema"] == ["0.99", "off"]  # SimSiam's default is off: 0.99 stands in


def test_mechanisms_preset_refuses_a_method_without_the_switches(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    assert main(["sweep", "simclr_digits", "--preset", "mechanisms", "--out", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "simclr does not have" in err and "byol" in err
    assert not any(tmp_path.iterdir())


def test_unknown_key_is_a_one_line_error_with_the_near_miss_and_nothing_runs(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["sweep", "byol_digits", "optim.lr=0.1,0.2", "method.predicter=mlp,none", "--out", str(tmp_path)])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'method.predictor'" in err
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- running


def test_two_cell_sweep_completes_writes_the_csv_and_a_rerun_skips_both(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["sweep", "byol_digits", "method.predictor=mlp,none", *TINY, "--out", str(tmp_path), "--name", "s"]
    assert main(argv) == EXIT_OK
    rows = read_csv(tmp_path / "s" / "sweep.csv")
    assert [r["cell"] for r in rows] == ["predictor=mlp", "predictor=none"]
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert [r["method.predictor"] for r in rows] == ["mlp", "none"]
    assert all(r["seed"] == "0" and r["steps"] == "3" and float(r["final_loss"]) > 0 for r in rows)
    definition = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert definition["axes"] == {"method.predictor": ["mlp", "none"]} and definition["config"] == "byol_digits"
    assert RunFolder(tmp_path / "s" / "predictor=none").config().method.predictor == "none"
    assert "2 cells: 2 completed" in capsys.readouterr().out

    summaries = [tmp_path / "s" / r["cell"] / "summary.json" for r in rows]
    before = [p.stat().st_mtime_ns for p in summaries]
    assert main(argv) == EXIT_OK
    assert [p.stat().st_mtime_ns for p in summaries] == before  # nothing retrained
    assert "(2 skipped: already finished)" in capsys.readouterr().out
    # another grid in the same folder is refused; under another name it is a new sweep
    assert main([*argv[:2], "method.predictor=mlp,linear", *argv[3:]]) == EXIT_USAGE
    assert "holds another sweep" in capsys.readouterr().err


def test_a_failing_cell_is_recorded_the_other_finishes_and_the_exit_code_is_1(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["sweep", "byol_digits", "optim.lr=0.5,1e30", *TINY, "--out", str(tmp_path), "--name", "s"]
    assert main(argv) == EXIT_FAIL
    rows = {r["cell"]: r for r in read_csv(tmp_path / "s" / "sweep.csv")}
    assert rows["lr=0.5"]["status"] == "completed" and rows["lr=0.5"]["error"] == ""
    assert rows["lr=1e30"]["status"] == "failed" and "loss is nan" in rows["lr=1e30"]["error"]
    assert "\n" not in rows["lr=1e30"]["error"]
    assert "1 completed, 1 failed" in capsys.readouterr().out


def test_a_cell_with_a_checkpoint_that_did_not_finish_is_resumed(tmp_path: Path) -> None:
    sweep = tiny_sweep(tmp_path, {"method.predictor": ["mlp", "none"]})
    run_sweep(sweep, log=lambda line: None)
    RunFolder(tmp_path / "s" / "predictor=none").write_summary({"status": "interrupted"})
    results = {r.cell.name: r for r in run_sweep(sweep, log=lambda line: None)}
    assert results["predictor=mlp"].action == "skipped"
    assert results["predictor=none"].action == "resumed" and results["predictor=none"].status == "completed"


def test_the_report_gets_the_finished_cells_and_a_failing_report_is_a_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[list[Path], Path, str]] = []
    fake = types.ModuleType("collapselab.report")

    def write_report(runs: list[Path], out: Path, title: str) -> Path:
        calls.append((list(runs), out, title))
        raise RuntimeError("no plots today")

    fake.write_report = write_report  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "collapselab.report", fake)
    warnings: list[str] = []
    sweep = tiny_sweep(tmp_path, {"method.stop_gradient": ["true", "false"]})
    results = run_sweep(sweep, log=lambda line: None, warn=warnings.append)
    assert [r.status for r in results] == ["completed", "invalid"]
    assert calls == [([tmp_path / "s" / "stop_gradient=true"], tmp_path / "s" / "report.html", calls[0][2])]
    assert len(warnings) == 1 and "no plots today" in warnings[0] and "\n" not in warnings[0]


def test_in_process_cells_write_their_own_report_as_worker_cells_do(tmp_path: Path) -> None:
    fixed = [*(t for t in TINY if not t.startswith("log.report")), "log.report=true"]
    sweep = Sweep("byol_digits", axes={"method.predictor": ["mlp", "none"]}, fixed=fixed, out=str(tmp_path), name="s")
    results = run_sweep(sweep, log=lambda line: None, warn=pytest.fail)
    assert [r.status for r in results] == ["completed", "completed"]
    for r in results:
        html = (r.cell.dir / "report.html").read_text(encoding="utf-8")
        assert "<svg" in html and r.cell.name in html, f"{r.cell.name}: not its own run report"
    assert (tmp_path / "s" / "report.html").is_file()  # and the sweep's side-by-side one


def test_an_in_process_cell_that_fails_writes_its_report_as_a_worker_cell_does(tmp_path: Path) -> None:
    fixed = [*(t for t in TINY if not t.startswith("log.report")), "log.report=true"]
    sweep = Sweep("byol_digits", axes={"optim.lr": ["1e30"]}, fixed=fixed, out=str(tmp_path), name="s")
    [result] = run_sweep(sweep, log=lambda line: None, warn=pytest.fail)
    assert result.status == "failed"
    assert "error: loss is nan at step " in (result.cell.dir / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- clusters


def test_printed_commands_parse_back_to_the_cells_and_collect_reads_what_ran(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["sweep", "byol_digits", "optim.lr=0.5,1.0", "--seeds", "2", *TINY, "--out", str(tmp_path / "o u t"),
            "--name", "s", "--print-commands"]
    assert main(argv) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    sweep = Sweep.from_folder(tmp_path / "o u t" / "s")
    cells = sweep.cells()
    assert len(lines) == len(cells) == 4
    assert not any((tmp_path / "o u t" / "s" / c.name).exists() for c in cells)  # nothing ran
    for line, cell in zip(lines, cells, strict=True):
        tokens = shlex.split(line)
        assert tokens[:2] == ["collapselab", "train"]
        names, overrides = split_args(parse_intermixed(build_parser(), tokens[1:]).args)
        assert names == ["byol", "digits"]
        assert set(cell.overrides) <= set(overrides) and set(TINY) <= set(overrides)
        assert f"run.out_dir={tmp_path / 'o u t' / 's'}" in overrides and f"run.name={cell.name}" in overrides

    first = shlex.split(lines[0])
    done = subprocess.run([sys.executable, "-m", "collapselab", *first[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert main(["sweep", "--collect", "--out", str(tmp_path / "o u t"), "--name", "s"]) == EXIT_OK
    rows = read_csv(tmp_path / "o u t" / "s" / "sweep.csv")
    assert [r["status"] for r in rows] == ["completed", "missing", "missing", "missing"]
    assert [(r["optim.lr"], r["seed"]) for r in rows] == [("0.5", "0"), ("0.5", "1"), ("1.0", "0"), ("1.0", "1")]
    assert collect(sweep)[0].scores["steps"] == 3


def test_print_commands_writes_sweep_json_and_comments_invalid_cells(tmp_path: Path) -> None:
    sweep = Sweep("byol_digits", axes={"method.stop_gradient": ["true", "false"]}, out=str(tmp_path))
    lines = print_commands(sweep)
    assert lines[0].startswith("collapselab train byol digits method.stop_gradient=true ")
    assert lines[1].startswith("# stop_gradient=false: invalid: method.stop_gradient=false needs")
    assert (tmp_path / "byol_digits" / "sweep.json").is_file()


def test_the_cli_prints_only_runnable_lines_on_stdout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Line N of stdout is the N-th valid cell (a SLURM array indexes it); invalid cells go to stderr."""
    argv = ["sweep", "byol_digits", "method.stop_gradient=false,true", "--out", str(tmp_path), "--name", "s",
            "--print-commands"]
    assert main(argv) == EXIT_OK
    out, err = capsys.readouterr()
    assert [shlex.split(line)[:2] for line in out.splitlines()] == [["collapselab", "train"]]
    assert "method.stop_gradient=true" in out and "stop_gradient=false: invalid:" in err


def test_parallel_workers_train_two_cells_with_their_logs(tmp_path: Path) -> None:
    sweep = Sweep("byol_digits", axes={"method.predictor": ["mlp", "none"]},
                  fixed=[t for t in TINY if not t.startswith("train.threads")], out=str(tmp_path), name="s")
    results = run_sweep(sweep, parallel=2, log=lambda line: None, cpus=2)
    assert [r.status for r in results] == ["completed", "completed"]
    for r in results:
        log = (r.cell.dir / "sweep.log").read_text()
        assert "-m collapselab train" in log and "train.threads=1" in log
    assert len(read_csv(tmp_path / "s" / "sweep.csv")) == 2


def test_a_failing_cell_under_parallel_workers_is_recorded_as_in_process(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The sequential failing-cell test's grid with --parallel 2: the same table, reason and exit code."""
    argv = ["sweep", "byol_digits", "optim.lr=0.5,1e30", *TINY, "--out", str(tmp_path), "--name", "s",
            "--parallel", "2"]
    assert main(argv) == EXIT_FAIL
    rows = {r["cell"]: r for r in read_csv(tmp_path / "s" / "sweep.csv")}
    assert rows["lr=0.5"]["status"] == "completed" and rows["lr=0.5"]["error"] == ""
    assert rows["lr=1e30"]["status"] == "failed"
    assert rows["lr=1e30"]["error"].startswith("loss is nan at step ")
    assert "\n" not in rows["lr=1e30"]["error"]
    out = capsys.readouterr().out
    assert "1 completed, 1 failed" in out
    assert "lr=1e30: failed in" in out and "(loss is nan at step " in out  # the progress line's reason
    failed_row = next(line for line in out.splitlines() if line.startswith("lr=1e30 "))
    assert "failed" in failed_row and "(loss is nan at step " in failed_row  # and the table's
    log = (tmp_path / "s" / "lr=1e30" / "sweep.log").read_text()
    assert "-m collapselab train" in log and "training failed: loss is nan" in log


def test_a_printed_command_run_twice_resumes_or_leaves_its_finished_cell(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A scheduler that requeues a job runs the same command again: --auto-resume continues an
    interrupted cell and leaves a completed one untouched."""
    sweep = Sweep("byol_digits", axes={"method.predictor": ["none"]}, fixed=TINY, out=str(tmp_path), name="q")
    line = print_commands(sweep)[0]
    assert line.endswith("--auto-resume")
    args = shlex.split(line)[1:]
    assert main(args) == EXIT_OK
    summary = RunFolder(sweep.cells()[0].dir).summary_path
    first = summary.stat().st_mtime_ns
    assert main(args) == EXIT_OK
    assert "already completed; nothing to do" in capsys.readouterr().out
    assert summary.stat().st_mtime_ns == first


def test_a_rerun_may_change_display_only_keys_but_not_the_grid(tmp_path: Path) -> None:
    axes = {"optim.lr": ["0.5", "1.0"]}
    fixed = ["train.epochs=1", "train.threads=1", "log.progress=false"]
    print_commands(Sweep("byol_digits", axes=axes, fixed=fixed, out=str(tmp_path), name="s"))
    for display in ([], ["log.progress=true", "log.tensorboard=false", "log.report=false"]):
        print_commands(Sweep("byol_digits", axes=axes, fixed=[*fixed[:2], *display], out=str(tmp_path), name="s"))
    for changed in ({"fixed": [*fixed[:1], "train.threads=2"]}, {"fixed": [*fixed, "log.every=5"]},
                    {"axes": {"optim.lr": ["0.5", "2.0"]}}):
        sweep = Sweep("byol_digits", **{"axes": axes, "fixed": fixed, **changed}, out=str(tmp_path), name="s")
        with pytest.raises(InputError, match="holds another sweep"):
            print_commands(sweep)
