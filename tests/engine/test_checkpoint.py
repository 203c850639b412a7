"""Checkpoints: exact round trip, atomic replacement, refusal of corrupt/foreign/unsafe files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from collapselab.engine import CheckpointError, load_checkpoint, save_checkpoint
from collapselab.engine import checkpoint as ckpt


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "rng": torch.get_rng_state(),
        "config": {"method": "byol", "lr": 0.1, "layers": [4, 8, 2]},
    }


def _assert_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal(x, y)
    else:
        assert a == b


def test_round_trip_is_exact(tmp_path: Path) -> None:
    state = _state()
    path = save_checkpoint(tmp_path / "run" / "last.pt", state)
    _assert_equal(load_checkpoint(path), state)


def test_interrupted_write_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_corrupt_file_is_refused(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.arange(1000.0)})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # inside the tensor data: the zip may still parse, the digest must not match
        idx = data.find(torch.arange(1000.0)[500:501].numpy().tobytes())
        data[idx] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_checkpoint(path)
    if damage == "flip_byte":  # the zip container still parses: only the digest catches it
        assert "SHA-256 mismatch" in str(err.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_and_unsafe_files_are_refused(tmp_path: Path) -> None:
    torch.save({"model": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a collapselab checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="unsafe"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_saving_objects_that_cannot_be_loaded_safely_fails_at_save_time(tmp_path: Path) -> None:
    class Custom:
        pass

    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        save_checkpoint(tmp_path / "x.pt", {"thing": Custom()})
    assert not (tmp_path / "x.pt").exists()


def test_unsupported_version_is_named(tmp_path: Path) -> None:
    state = {"w": torch.ones(1)}
    torch.save({"format": ckpt.FORMAT, "version": 99, "sha256": "", "state": state}, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "v.pt")


def test_a_state_whose_equal_strings_are_one_object_loads_back(tmp_path: Path) -> None:
    """Regression: the digest was taken over pickle bytes, which refer back to a string already
    written when the *same object* recurs; a state holding one string object twice reloaded with
    two objects, digested differently and was refused as corrupt."""
    shared = "".join(["o", "ff"])  # one object, not interned
    state = {"config": {"compile": shared, "channels_last": shared}, "backend": shared, "w": torch.ones(3)}
    path = save_checkpoint(tmp_path / "s.pt", state)
    assert load_checkpoint(path)["config"] == {"compile": "off", "channels_last": "off"}


def test_content_digest_sees_values_not_identities_or_layouts() -> None:
    a = {"x": torch.arange(24.0).reshape(1, 2, 3, 4), "s": ["a", "b"], "n": (1, 2.5, None, True)}
    b = {"x": a["x"].contiguous(memory_format=torch.channels_last), "s": ["a", "b"], "n": (1, 2.5, None, True)}
    assert ckpt.content_digest(a) == ckpt.content_digest(b)
    for changed in ({**a, "x": a["x"] + 1e-6}, {**a, "s": ["a", "c"]}, {**a, "n": [1, 2.5, None, True]},
                    {**a, "x": a["x"].double()}, {"s": a["s"], "x": a["x"], "n": a["n"]}):
        assert ckpt.content_digest(changed) != ckpt.content_digest(a)
    with pytest.raises(TypeError, match="cannot digest"):
        ckpt.content_digest({"f": object()})


def test_checkpoints_written_with_the_pickle_digest_still_load(tmp_path: Path) -> None:
    state = _state()
    payload = {"format": ckpt.FORMAT, "version": ckpt.FORMAT_VERSION, "sha256": ckpt._digest(ckpt._to_cpu(state)),
               "state": state}  # as save_checkpoint wrote it before content digests
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["epoch"] == 3
    payload["state"] = {**state, "epoch": 4}  # a changed value under the old digest
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(tmp_path / "bad.pt")
