"""`collapselab diagnose`: every file format, JSON output, exit codes, clear errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from collapselab.cli import main


@pytest.fixture
def embeddings() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["diagnose", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_npy_table_output(tmp_path: Path, embeddings: np.ndarray, capsys) -> None:
    np.save(tmp_path / "z.npy", embeddings)
    code, out, _ = _run(capsys, str(tmp_path / "z.npy"))
    assert code == 0
    assert "200 samples x 8 dims" in out and "dimensional   healthy" in out


@pytest.mark.parametrize("fmt", ["npz", "pt", "csv", "csv_header", "txt"])
def test_each_format_gives_the_same_metrics(tmp_path: Path, embeddings: np.ndarray, fmt: str, capsys) -> None:
    np.save(tmp_path / "ref.npy", embeddings)
    _, ref_out, _ = _run(capsys, str(tmp_path / "ref.npy"), "--json")
    if fmt == "npz":
        path = tmp_path / "z.npz"
        np.savez(path, emb=embeddings, other=np.zeros(3))
    elif fmt == "pt":
        path = tmp_path / "z.pt"
        torch.save({"emb": torch.from_numpy(embeddings)}, path)
    elif fmt == "csv":
        path = tmp_path / "z.csv"
        np.savetxt(path, embeddings, delimiter=",", fmt="%.9g")
    elif fmt == "csv_header":
        path = tmp_path / "z.csv"
        np.savetxt(path, embeddings, delimiter=",", header=",".join(f"d{i}" for i in range(8)), comments="", fmt="%.9g")
    else:
        path = tmp_path / "z.txt"
        np.savetxt(path, embeddings, fmt="%.9g")
    code, out, err = _run(capsys, str(path), "--json")
    assert code == 0, err
    got, ref = json.loads(out)["metrics"], json.loads(ref_out)["metrics"]
    assert got["effective_rank"] == pytest.approx(ref["effective_rank"], rel=1e-6)


def test_views_codes_labels_and_reference_files(tmp_path: Path, embeddings: np.ndarray, capsys) -> None:
    np.save(tmp_path / "z.npy", embeddings)
    np.save(tmp_path / "v.npy", embeddings + 0.01)
    np.save(tmp_path / "c.npy", np.arange(200) % 5)
    np.save(tmp_path / "l.npy", np.arange(200) % 4)
    np.save(tmp_path / "ref.npy", embeddings * 1e3)
    code, out, _ = _run(
        capsys, str(tmp_path / "z.npy"), "--views", str(tmp_path / "v.npy"), "--codes", str(tmp_path / "c.npy"),
        "--labels", str(tmp_path / "l.npy"), "--reference", str(tmp_path / "ref.npy"), "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert result["metrics"]["alignment"] < 1e-3
    assert result["metrics"]["code_perplexity"] == pytest.approx(5.0)
    assert result["metrics"]["n_clusters"] == 4
    assert result["verdict"]["complete"] == "collapsed"  # 1e-6 of the reference's spread


def test_demo_shows_all_four_situations(capsys) -> None:
    code, out, _ = _run(capsys, "--demo")
    assert code == 0
    for name in ("healthy", "complete", "dimensional", "cluster"):
        assert f"== {name}" in out
    code, _, _ = _run(capsys, "--demo", "--fail-on", "collapsed")
    assert code == 1


def test_fail_on_exit_codes(tmp_path: Path, embeddings: np.ndarray, capsys) -> None:
    np.save(tmp_path / "ok.npy", embeddings)
    np.save(tmp_path / "bad.npy", np.ones((50, 8)))
    assert _run(capsys, str(tmp_path / "ok.npy"), "--fail-on", "warning")[0] == 0
    assert _run(capsys, str(tmp_path / "bad.npy"), "--fail-on", "collapsed")[0] == 1


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "empty.npy", "empty"),
        (b"not numbers at all", "junk.npy", "cannot read"),
        (b"1,2\n3,oops\n", "bad.csv", "cannot read"),
        (b"x", "z.parquet", "unsupported format"),
    ],
)
def test_unreadable_files_exit_2_with_message(tmp_path: Path, content: bytes, name: str, message: str, capsys) -> None:
    (tmp_path / name).write_bytes(content)
    code, _, err = _run(capsys, str(tmp_path / name))
    assert code == 2
    assert message in err and name in err


def test_missing_file_nan_and_wrong_rank_exit_2(tmp_path: Path, capsys) -> None:
    assert _run(capsys, str(tmp_path / "nope.npy"))[0] == 2
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]]))
    code, _, err = _run(capsys, str(tmp_path / "nan.npy"))
    assert code == 2 and "1 non-finite" in err
    np.save(tmp_path / "flat.npy", np.zeros(10))
    code, _, err = _run(capsys, str(tmp_path / "flat.npy"))
    assert code == 2 and "2-D" in err
    assert _run(capsys)[0] == 2  # neither FILE nor --demo


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_never_unpickled(tmp_path: Path, capsys) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    code, out, err = _run(capsys, str(path))
    assert code == 2 and "pwned" not in out
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, out, err = _run(capsys, str(tmp_path / "obj.npy"))
    assert code == 2 and "cannot read" in err


def test_npz_with_several_unnamed_arrays_asks_for_key(tmp_path: Path, capsys) -> None:
    np.savez(tmp_path / "many.npz", a=np.zeros((3, 2)), b=np.ones((3, 2)))
    code, _, err = _run(capsys, str(tmp_path / "many.npz"))
    assert code == 2 and "--key" in err
    code, _, err = _run(capsys, str(tmp_path / "many.npz"), "--key", "c")
    assert code == 2 and "no array named 'c'" in err
