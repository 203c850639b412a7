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


# --- the band mode (--band, --reference-band) ----------------------------------------------------


def _spread(z: np.ndarray) -> float:
    """The RMS per-dimension standard deviation of the rows (the band mode's ``band_spread``)."""
    return float(np.sqrt(((z - z.mean(axis=0)) ** 2).mean()))


@pytest.mark.parametrize(
    ("scale", "shape", "expected"),
    [(1.0, "per_input", "healthy"), (1e-6, "per_dim", "collapsed")],
)
def test_band_verdict_matches_the_library(
    tmp_path: Path, embeddings: np.ndarray, scale: float, shape: str, expected: str, capsys
) -> None:
    from collapselab.diagnostics import diagnose

    n, d = embeddings.shape
    sigma = np.full(n if shape == "per_input" else (n, d), scale * _spread(embeddings))
    np.save(tmp_path / "z.npy", embeddings)
    np.save(tmp_path / "band.npy", sigma)
    library = diagnose(embeddings, band=sigma).verdict["band"]
    assert library == expected  # the clear-cut cases: as wide as the spread, a millionth of it
    code, out, err = _run(capsys, str(tmp_path / "z.npy"), "--band", str(tmp_path / "band.npy"))
    assert code == 0, err
    band_line = next(line for line in out.splitlines() if line.strip().startswith("band "))
    assert band_line.split()[1] == library
    code, _, _ = _run(capsys, str(tmp_path / "z.npy"), "--band", str(tmp_path / "band.npy"), "--fail-on", "collapsed")
    assert code == (1 if expected == "collapsed" else 0)


def test_band_in_json_output(tmp_path: Path, embeddings: np.ndarray, capsys) -> None:
    sigma = np.full(len(embeddings), 1e-6 * _spread(embeddings))
    np.save(tmp_path / "z.npy", embeddings)
    np.save(tmp_path / "band.npy", sigma)
    code, out, err = _run(capsys, str(tmp_path / "z.npy"), "--band", str(tmp_path / "band.npy"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["verdict"]["band"] == "collapsed"
    assert result["metrics"]["band_width_ratio"] == pytest.approx(1e-6, rel=1e-6)
    assert "band" in result["reasons"]
    _, out, _ = _run(capsys, str(tmp_path / "z.npy"), "--json")
    assert "band" not in json.loads(out)["verdict"]  # absent without --band


@pytest.mark.parametrize(
    ("band", "message"),
    [
        (np.ones(10), "band: expected shape (200,)"),  # 10 rows for 200 embeddings
        (-np.ones(200), "widths must be >= 0"),
        (np.r_[np.nan, np.ones(199)], "non-finite"),
        (None, "no such file"),
    ],
)
def test_bad_band_exits_2_with_one_line(
    tmp_path: Path, embeddings: np.ndarray, band: np.ndarray | None, message: str, capsys
) -> None:
    np.save(tmp_path / "z.npy", embeddings)
    if band is not None:
        np.save(tmp_path / "band.npy", band)
    code, out, err = _run(capsys, str(tmp_path / "z.npy"), "--band", str(tmp_path / "band.npy"))
    assert code == 2 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_reference_band_needs_reference(tmp_path: Path, embeddings: np.ndarray, capsys) -> None:
    np.save(tmp_path / "z.npy", embeddings)
    np.save(tmp_path / "band.npy", np.ones(len(embeddings)))
    code, out, err = _run(
        capsys, str(tmp_path / "z.npy"), "--band", str(tmp_path / "band.npy"), "--reference-band", str(tmp_path / "band.npy")
    )
    assert code == 2 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1 and "--reference" in err


def test_band_judged_against_the_reference_band(tmp_path: Path, embeddings: np.ndarray, capsys) -> None:
    from collapselab.diagnostics import diagnose

    sigma = np.full(len(embeddings), 0.5 * _spread(embeddings))  # healthy against the spread alone
    np.save(tmp_path / "z.npy", embeddings)
    np.save(tmp_path / "band.npy", sigma)
    np.save(tmp_path / "ref_band.npy", 1000 * sigma)  # the same embeddings, a band 1000x wider
    args = (str(tmp_path / "z.npy"), "--band", str(tmp_path / "band.npy"), "--json")
    code, out, _ = _run(capsys, *args)
    assert code == 0 and json.loads(out)["verdict"]["band"] == "healthy"
    code, out, err = _run(
        capsys, *args, "--reference", str(tmp_path / "z.npy"), "--reference-band", str(tmp_path / "ref_band.npy")
    )
    assert code == 0, err
    result = json.loads(out)
    library = diagnose(embeddings, band=sigma, reference=diagnose(embeddings, band=1000 * sigma))
    assert result["verdict"]["band"] == library.verdict["band"] != "healthy"
    assert result["verdict"]["band"] == "collapsed"  # 1e-3 of the reference's width, under 1e-2
    assert result["metrics"]["band_width_vs_reference"] == pytest.approx(1e-3)
    np.save(tmp_path / "short.npy", np.ones(3))
    code, _, err = _run(
        capsys, *args, "--reference", str(tmp_path / "z.npy"), "--reference-band", str(tmp_path / "short.npy")
    )
    assert code == 2 and err.startswith("error: reference: band:") and err.count("\n") == 1


def test_demo_footer_lists_the_modes_present(capsys) -> None:
    code, out, _ = _run(capsys, "--demo")
    assert code == 0
    footer = out[out.index("verdicts ("):].splitlines()
    assert footer[0] == "verdicts (complete / dimensional / cluster / intracluster):"  # no band in the demo
    assert all(len(line.split(" / ")) == 4 for line in footer[1:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_pt_of_a_float_dtype_numpy_lacks_is_read_as_float32(tmp_path: Path, embeddings: np.ndarray,
                                                             dtype: torch.dtype, capsys) -> None:
    torch.save(torch.from_numpy(embeddings).to(dtype), tmp_path / "z.pt")
    code, out, err = _run(capsys, str(tmp_path / "z.pt"))
    assert code == 0 and err == "" and "200 samples x 8 dims" in out


def test_demo_and_a_file_are_exclusive(tmp_path: Path, embeddings: np.ndarray, capsys) -> None:
    np.save(tmp_path / "z.npy", embeddings)
    code, out, err = _run(capsys, str(tmp_path / "z.npy"), "--demo")
    assert code == 2 and out == "" and err.count("\n") == 1 and "--demo" in err and "z.npy" in err
    code, _, err = _run(capsys, "--demo", "--labels", str(tmp_path / "z.npy"))
    assert code == 2 and "--labels" in err


@pytest.mark.parametrize(
    ("content", "name", "says"),
    [
        (b"\x80\x04\x95random bytes, not an array" * 8, "garbage.npy", "not a valid .npy file"),
        (b"\x80\x04\x95random bytes, not an archive" * 8, "garbage.npz", "not a valid .npz file"),
        (b"\x93NUMPY\x01\x00" + b"x" * 100, "renamed.npz", "rename it to .npy"),
    ],
)
def test_a_file_that_is_not_numpy_is_named_so_not_taken_for_a_pickle(tmp_path: Path, content: bytes, name: str,
                                                                       says: str, capsys) -> None:
    (tmp_path / name).write_bytes(content)
    code, _, err = _run(capsys, str(tmp_path / name))
    assert code == 2 and err.count("\n") == 1 and says in err and "pickled (object) data" not in err


def test_labels_all_unlabelled_give_no_intracluster_metrics(tmp_path: Path, embeddings: np.ndarray, capsys) -> None:
    np.save(tmp_path / "z.npy", embeddings)
    np.save(tmp_path / "lab.npy", -np.ones(len(embeddings), dtype=np.int64))
    code, out, _ = _run(capsys, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "lab.npy"))
    assert code == 0 and "unlabelled" in out and "intracluster_ratio" not in out
    code, out, _ = _run(capsys, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "lab.npy"), "--json")
    result = json.loads(out)
    assert result["verdict"]["intracluster"] == "n/a" and "intracluster_ratio" not in result["metrics"]
