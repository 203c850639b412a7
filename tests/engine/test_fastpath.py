"""The trainer's fast path: no host synchronisation in a step, per-step values read back in one
transfer, channels-last, torch.compile (with its eager fallback), device spellings, and the
devices this machine lacks as one-line errors.

Device: everything here runs on the CPU; the CUDA variants skip without a CUDA device.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import collapselab
from collapselab._device import resolve_device
from collapselab._validation import InputError
from collapselab.config import load_config
from collapselab.engine import trainer as trainer_module
from collapselab.engine.fastpath import CompiledNetworks
from collapselab.engine.readback import StepValues, first_nonfinite
from collapselab.engine.trainer import Trainer
from collapselab.methods import METHODS

torch.set_num_threads(1)
HAS_CUDA = torch.cuda.is_available()


def tiny(out_dir: Path, name: str = "run", **sections: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "run": {"name": name, "out_dir": str(out_dir)},
        "train": {"epochs": 1, "threads": 1, "max_steps_per_epoch": 3, "device": "cpu", "adapt_threads": False},
        "data": {"batch_size": 32},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "tensorboard": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 32},
    }
    for key, value in sections.items():
        settings[key] = {**settings.get(key, {}), **value}
    return settings


# --------------------------------------------------------------------------- no host sync


_READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy")


@contextlib.contextmanager
def no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Make every Python-level read of a tensor's value raise (on a GPU each is a host
    synchronisation): ``bool``, ``float``, ``int``, ``.item()``, ``.tolist()``, ``.numpy()``."""
    reads: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def forbid(name: str):
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            # torch.optim keeps Adam's step count on the host (capturable=False): reading it is no
            # device synchronisation
            if "torch/optim/" in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                return originals[name](self, *args, **kwargs)
            reads.append(name)
            raise AssertionError(f"host read of a tensor value: Tensor.{name}")
        return read

    with monkeypatch.context() as patch:
        for name in _READS:
            patch.setattr(torch.Tensor, name, forbid(name))
        yield reads


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_training_step_reads_no_tensor_value_on_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           method: str) -> None:
    """Forward, loss, backward, optimiser step, EMA/after-step hooks and the per-step record:
    nothing reads a value back. (The views are made beforehand: the CPU augmentation path reads
    its draws on purpose; the GPU path is checked in tests/data/test_augment.py.)"""
    vit = load_config(method, "digits").model.backbone.startswith("vit")  # a ViT has no width
    config = load_config(method, "digits", **tiny(tmp_path, optim={"grad_clip": 1.0},
                                                  **({"model": {"backbone_args": {"depth": 1}}} if vit else {})))
    trainer = Trainer(config, tmp_path / "run")
    trainer.setup()
    trainer.method.train()
    images = trainer.train_set.images[:32]
    views = trainer.augment(images, trainer.generator)
    trainer.augment = lambda batch, generator: [v.clone() for v in views]
    trainer._step(images)  # first step outside the guard: lazy state (momentum buffers, caches)
    trainer.global_step += 1
    with no_host_reads(monkeypatch) as reads:
        for _ in range(2):
            trainer._step(images)
            trainer.global_step += 1
    assert reads == []
    records = trainer.values.read()
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and "grad_norm" in r for r in records)
    trainer.logger.close()


def test_step_values_read_back_in_order_with_the_reduction_applied() -> None:
    values = StepValues()
    for step in range(1, 5):
        values.add(step, {"loss": torch.tensor(float(step)), "term": torch.tensor(step / 10, dtype=torch.bfloat16)},
                   {"lr": 0.1 * step})
    records = values.read(reduce=lambda m: 2 * m)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["loss"] for r in records] == [2.0, 4.0, 6.0, 8.0]
    assert records[2]["term"] == pytest.approx(2 * float(torch.tensor(0.3, dtype=torch.bfloat16)))
    assert [r["lr"] for r in records] == pytest.approx([0.1, 0.2, 0.3, 0.4])  # host numbers: not reduced
    assert len(values) == 0 and values.read() == []
    assert first_nonfinite(records) is None
    assert first_nonfinite([{"loss": 1.0}, {"loss": math.inf, "step": 7}, {"loss": math.nan}])["step"] == 7


def test_step_values_refuse_a_window_whose_names_change() -> None:
    values = StepValues()
    values.add(1, {"loss": torch.tensor(1.0)}, {})
    with pytest.raises(ValueError, match="window started with"):
        values.add(2, {"loss": torch.tensor(1.0), "extra": torch.tensor(0.0)}, {})


def test_logged_rows_are_the_per_step_values(tmp_path: Path) -> None:
    """log.every=1 logs every step's own loss; log.every=3 logs steps 1 (first of the epoch), 3
    and 6 with the same values: reading back in windows changes nothing that is logged."""
    every1 = collapselab.train("byol", "digits", **tiny(tmp_path, "a", train={"max_steps_per_epoch": 6},
                                                         log={"every": 1}))
    every3 = collapselab.train("byol", "digits", **tiny(tmp_path, "b", train={"max_steps_per_epoch": 6},
                                                         log={"every": 3}))
    rows1 = {r["step"]: r for r in every1.history if r["kind"] == "train"}
    rows3 = {r["step"]: r for r in every3.history if r["kind"] == "train"}
    assert sorted(rows1) == [1, 2, 3, 4, 5, 6] and sorted(rows3) == [1, 3, 6]
    for step, row in rows3.items():
        assert row["loss"] == rows1[step]["loss"] and row["cosine"] == rows1[step]["cosine"]
        assert row["lr"] == rows1[step]["lr"]
    epoch = next(r for r in every1.history if r["kind"] == "epoch")
    assert epoch["loss"] == pytest.approx(sum(r["loss"] for r in rows1.values()) / 6)


# --------------------------------------------------------------------------- channels-last, compile


def test_channels_last_on_cpu_trains_in_nhwc_and_matches_the_default_layout(tmp_path: Path) -> None:
    nchw = collapselab.train("simclr", "digits", **tiny(tmp_path, "nchw", train={"channels_last": "off"}))
    nhwc = collapselab.train("simclr", "digits", **tiny(tmp_path, "nhwc", train={"channels_last": "on"}))
    convs = [m for m in nhwc.method.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert json.loads((nhwc.dir / "summary.json").read_text())["fast_path"]["channels_last"] is True
    a, b = nchw.method.state_dict(), nhwc.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:  # 3 steps: the same run up to the convolution algorithm's rounding
        torch.testing.assert_close(b[key].float(), a[key].float(), atol=1e-4, rtol=1e-3, msg=key)


def test_channels_last_auto_is_on_for_cpu_convnets_and_yaml_booleans_are_accepted(tmp_path: Path) -> None:
    assert load_config("byol", "digits", train={"channels_last": True}).train.channels_last == "on"
    assert load_config("byol", "digits", overrides=["train.compile=off"]).train.compile == "off"
    with pytest.raises(InputError, match=r"train.compile must be auto, on or off.*did you mean 'auto'"):
        load_config("byol", "digits", train={"compile": "autp"})
    run = collapselab.train("byol", "digits", **tiny(tmp_path))
    fast = json.loads((run.dir / "summary.json").read_text())["fast_path"]
    assert fast["channels_last"] is True and fast["compile"] is False and "CUDA" in fast["compile_reason"]
    from collapselab.engine.fastpath import use_channels_last
    from collapselab.models import build_backbone

    cpu = torch.device("cpu")
    assert use_channels_last("auto", cpu, build_backbone("small_cnn", in_channels=1, width=8))
    assert not use_channels_last("auto", cpu, build_backbone("mlp", input_dim=64))  # no convolutions
    assert not use_channels_last("auto", torch.device("mps"), build_backbone("small_cnn", in_channels=1, width=8))


@pytest.mark.slow  # torch.compile on 2 cores: ~10-30 s
def test_compile_on_trains_reports_its_time_and_hands_back_eager_modules(tmp_path: Path) -> None:
    eager = collapselab.train("byol", "digits", **tiny(tmp_path, "eager", train={"compile": "off"}))
    compiled = collapselab.train("byol", "digits", **tiny(tmp_path, "compiled", train={"compile": "on"}))
    fast = json.loads((compiled.dir / "summary.json").read_text())["fast_path"]
    assert fast["compile"] is True and fast["compile_time_s"] > 0
    assert compiled.method.backbone._compiled_call_impl is None  # the caller gets eager modules
    a, b = eager.method.state_dict(), compiled.method.state_dict()
    assert a.keys() == b.keys()  # checkpoints are interchangeable
    for key in a:
        torch.testing.assert_close(b[key].float(), a[key].float(), atol=1e-4, rtol=1e-3, msg=key)


def test_compile_auto_falls_back_to_eager_from_the_same_random_state(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A compilation that fails in the first step: auto warns, continues eager, and the run equals
    an eager run bit for bit (the step is redone from the same generator state)."""

    class Broken(CompiledNetworks):  # compiles into a call that fails, as inductor without a compiler
        def __init__(self, modules: list[torch.nn.Module]) -> None:
            self.modules, self.active = modules, True
            self.impls = [self.fail for _ in modules]
            for module in modules:
                module._compiled_call_impl = self.fail

        @staticmethod
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("inductor: no C compiler (simulated)")

    monkeypatch.setattr(trainer_module, "compile_decision", lambda mode, device, steps, budget=None: (True, "forced"))
    monkeypatch.setattr(trainer_module, "CompiledNetworks", Broken)
    with pytest.warns(UserWarning, match="torch.compile failed.*continues eager"):
        fallback = collapselab.train("byol", "digits", **tiny(tmp_path, "fallback"))
    monkeypatch.undo()
    eager = collapselab.train("byol", "digits", **tiny(tmp_path, "eager", train={"compile": "off"}))
    for key, value in eager.method.state_dict().items():
        assert torch.equal(fallback.method.state_dict()[key], value), key
    fast = json.loads((fallback.dir / "summary.json").read_text())["fast_path"]
    assert fast["compile"] is False and "compiling failed" in fast["compile_reason"]


def test_compile_on_that_fails_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(modules: list[torch.nn.Module]) -> Any:
        raise RuntimeError("no compiler")

    monkeypatch.setattr(trainer_module, "CompiledNetworks", broken)
    with pytest.raises(RuntimeError, match="no compiler"):
        collapselab.train("byol", "digits", **tiny(tmp_path, train={"compile": "on"}))


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(HAS_CUDA, reason="checks the errors of a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_a_machine_without_it_is_a_one_line_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=r"train.device=.*CUDA is not available") as info:
        collapselab.train("byol", "digits", **tiny(tmp_path, train={"device": name}))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_without_an_index_resolves_to_the_current_device() -> None:
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("auto").type == "cuda" and resolve_device("auto").index is not None
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_device_spellings() -> None:
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ".lower()) == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", torch.cuda.current_device()) if HAS_CUDA
                                      else torch.device("cpu"))
    with pytest.raises(InputError, match=r"'gpu0' is not a device \(use auto, cpu, cuda or cuda:N\)"):
        resolve_device("gpu0", "train.device")


@pytest.mark.skipif(HAS_CUDA, reason="checks the errors of a machine without CUDA")
def test_fp16_needs_cuda(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"train\.amp=fp16 needs CUDA"):
        collapselab.train("byol", "digits", **tiny(tmp_path, train={"amp": "fp16"}))


@pytest.mark.skipif(HAS_CUDA, reason="checks the errors of a machine without CUDA")
def test_eval_with_cuda_on_a_machine_without_it_is_a_one_line_error(tmp_path: Path) -> None:
    run = collapselab.train("byol", "digits", **tiny(tmp_path))
    with pytest.raises(InputError, match=r"device='cuda' but CUDA is not available"):
        collapselab.evaluate(run.dir, device="cuda")
    done = subprocess.run([sys.executable, "-m", "collapselab", "eval", str(run.dir), "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: device='cuda' but CUDA is not available")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- online kNN bank


def test_online_knn_uses_a_fixed_bank_of_the_configured_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = []
    real = trainer_module.knn_accuracy

    def spy(train_features: torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, float]:
        sizes.append(len(train_features))
        return real(train_features, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "knn_accuracy", spy)
    run = collapselab.train("byol", "digits", **tiny(tmp_path, train={"epochs": 2}, eval={"knn_every": 1, "knn_bank": 300}))
    assert sizes == [300, 300]
    epochs = [r for r in run.history if r["kind"] == "epoch"]
    assert all(0 <= r["knn_top1"] <= 1 and r["knn_time_s"] > 0 for r in epochs)
    with pytest.raises(InputError, match=r"eval\.knn_bank must be >= eval\.knn_k"):
        load_config("byol", "digits", eval={"knn_bank": 5, "knn_k": 20})
