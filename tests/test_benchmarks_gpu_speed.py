"""Smoke test of ``benchmarks/gpu_speed.py`` on the CPU with tiny sizes: every part runs and the
result has the numbers the table is built from (the timings themselves are not checked)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"
_spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
gpu_speed = importlib.util.module_from_spec(_spec)
sys.modules["gpu_speed"] = gpu_speed  # dataclasses look their module up there
_spec.loader.exec_module(gpu_speed)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_cpu_run_reports_every_part(tmp_path, capsys):
    out = tmp_path / "speed.json"
    result = gpu_speed.main([
        "--device", "cpu", "--methods", "simclr", "--images", "96", "--batch-sizes", "32",
        "--width", "0.125", "--steps", "1", "--warmup", "1", "--trainer-steps", "1",
        "--workers", "0", "--out", str(out),
    ])
    printed = capsys.readouterr().out
    assert "s/epoch (50,000 images)" in printed and "targets" in printed
    (row,) = result["rows"]
    assert row["trainer"]["s_epoch"] > 0 and row["trainer"]["steps"] == 1
    assert set(row["plain"]) == {"fp32", "bf16", "bf16+cl"}
    assert all(p["s_epoch"] > 0 for p in row["plain"].values())
    assert row["lib_over_plain"] > 0
    assert 0 < row["augment"]["share"]
    if row["torchvision"].get("skipped"):
        assert "(c) skipped: torchvision not installed" in printed
    else:
        assert row["torchvision"]["s_epoch"] > 0 and row["torchvision_over_lib"] > 0
    assert json.loads(out.read_text())["rows"][0]["method"] == "simclr"


def test_switches_missing_from_the_config_are_skipped_with_a_note(monkeypatch):
    @dataclasses.dataclass
    class OldTrainConfig:
        epochs: int = 1

    args = gpu_speed.parse_args(["--device", "cpu", "--compile", "on"])
    monkeypatch.setattr(gpu_speed, "TrainConfig", OldTrainConfig)
    switches, notes = gpu_speed.trainer_switches(args)
    assert switches == {}
    assert any("compile" in n for n in notes) and any("channels_last" in n for n in notes)


def test_matching_variant_follows_the_trainers_fast_path():
    assert gpu_speed.matching_variant({"fast_path": {"amp": "off"}}) == "fp32"
    assert gpu_speed.matching_variant({"fast_path": {"amp": "bfloat16", "channels_last": True}}) == "bf16+cl"
    assert gpu_speed.matching_variant({"fast_path": {"amp": "bfloat16", "channels_last": True,
                                                     "compile": True}}) == "bf16+cl+compile"
    assert gpu_speed.matching_variant({"error": "x"}) is None
