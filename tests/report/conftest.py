"""Run folders for the report tests, written by hand in the trainer's formats (runs.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from collapselab.runs import RunFolder, SpectraRecorder

MODES = ("complete", "dimensional", "cluster", "intracluster")


def config(name: str, **changes: Any) -> dict[str, Any]:
    """A small but real-looking resolved config; ``changes`` are dotted keys (``optim__lr=0.5``)."""
    cfg: dict[str, Any] = {
        "method": {"name": "byol", "predictor": "mlp", "ema": 0.99},
        "model": {"backbone": "small_cnn", "backbone_args": {"width": 32}},
        "data": {"dataset": "digits", "batch_size": 256},
        "optim": {"name": "lars", "lr": 1.0},
        "train": {"epochs": 4, "seed": 0},
        "run": {"name": name, "out_dir": "runs"},
    }
    for key, value in changes.items():
        section, leaf = key.split("__")
        cfg[section][leaf] = value
    return cfg


def write_run(root: Path, name: str, *, collapse: bool = False, codes: bool = False, alignment: bool = True,
              steps: int = 40, method: str = "byol", reason_text: str = "", **changes: Any) -> RunFolder:
    """A complete run folder: config.yaml, metrics.jsonl (train, epoch, check, alarm rows),
    spectra.npz and summary.json. ``collapse`` makes the embedding lose its dimensions."""
    folder = RunFolder(root / name)
    folder.path.mkdir(parents=True)
    folder.config_path.write_text(yaml.safe_dump(config(name, method__name=method, **changes)))
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    spectra = SpectraRecorder()
    alarms = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "kind": "train", "loss": 2.0 / step ** 0.5, "lr": 0.1, "epoch": 1 + step // 10,
                     "img_per_s": 5000.0})
        if step % 10 == 0:
            rows.append({"step": step, "kind": "epoch", "epoch": step // 10, "loss": 2.0 / step ** 0.5,
                         "img_per_s": 5000.0, "epoch_time_s": 0.2, "knn_top1": 0.9 + step / 1000})
    for step in range(0, steps + 1, 5):
        fraction = step / steps
        rank = 30.0 * (1 - 0.9 * fraction) if collapse else 20.0 + 5 * fraction
        level = "collapsed" if collapse and fraction > 0.6 else "warning" if collapse and fraction > 0.3 else "healthy"
        row: dict[str, Any] = {"step": step, "kind": "check", "loss": 1.0}
        for emb, scale in (("emb", 1.0), ("repr", 0.5)):
            row.update({f"{emb}/effective_rank": rank * scale, f"{emb}/stable_rank": rank * scale / 2,
                        f"{emb}/spread": 0.8 - (0.7 * fraction if collapse else 0.0), f"{emb}/uniformity": -3 + fraction,
                        f"{emb}/alignment": 0.5 - 0.4 * fraction if alignment else "nan"})
            if codes:
                row.update({f"{emb}/code_used_fraction": 1 - 0.5 * fraction, f"{emb}/code_perplexity": 100 - 50 * fraction})
            row.update({f"{emb}/verdict/{m}": level if m == "dimensional" else "healthy" if m == "complete" else "n/a"
                        for m in MODES})
            decay = np.exp(-np.arange(64) / (rank * scale))
            spectra.add(step, emb, decay * (1 + 0.01 * rng.random(64)), n_samples=512)
        rows.append(row)
        if collapse and level != "healthy" and (not alarms or alarms[-1]["level"] != level):
            alarm = {"step": step, "name": "emb", "mode": "dimensional", "level": level,
                     "reason": f"effective rank {rank:.1f} of 64{reason_text}"}
            alarms.append(alarm)
            rows.append({"step": step, "kind": "alarm", **{k: v for k, v in alarm.items() if k != "step"}})
    folder.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spectra.save(folder.spectra_path)
    worst = "collapsed" if collapse else "healthy"
    folder.write_summary({
        "status": "completed", "method": method, "dataset": "digits", "backbone": "small_cnn",
        "recipe": f"{method}_digits", "epochs_completed": steps // 10, "epochs": steps // 10, "steps": steps,
        "total_steps": steps, "wall_time_s": 5.0, "train_time_s": 2.5, "throughput_img_per_s": 5000.0,
        "alarms": alarms, "worst_verdict": worst, "collapse_loss": None,
        "final_verdict": {emb: {m: {"level": worst if m == "dimensional" else "healthy" if m == "complete" else "n/a",
                                    "since": 25 if collapse and m == "dimensional" else None,
                                    "reason": f"{emb} {m} reason{reason_text}"} for m in MODES}
                          for emb in ("emb", "repr")},
        "eval": {"knn_top1": 0.93, "baseline_pixels_knn_top1": 0.96, "baseline_random_knn_top1": 0.95},
    })
    return folder


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., RunFolder]:
    """``make_run(name, **options)`` → a run folder under tmp_path/runs (see write_run)."""
    return lambda name, **options: write_run(tmp_path / "runs", name, **options)
