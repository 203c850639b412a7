"""diagnose's input checks: references of another width, extreme magnitudes, CSV headers,
file paths and tensors as references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import collapselab as cl
from collapselab._validation import InputError
from collapselab.diagnostics.io import load_array


def _z(n: int = 300, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def test_a_reference_of_another_width_is_a_one_line_error() -> None:
    with pytest.raises(InputError, match="reference: has 8 dimensions, z has 16"):
        cl.diagnose(_z(), reference=cl.diagnose(_z(d=8)))
    with pytest.raises(InputError, match="reference: has 8 dimensions"):
        cl.diagnose(_z(), reference=_z(d=8))


def test_a_reference_may_be_given_as_embeddings() -> None:
    start = _z(seed=1)
    as_tensor = cl.diagnose(0.001 * _z(), reference=torch.from_numpy(start))
    as_diagnosis = cl.diagnose(0.001 * _z(), reference=cl.diagnose(start))
    assert as_tensor.metrics["total_variance_vs_reference"] == pytest.approx(
        as_diagnosis.metrics["total_variance_vs_reference"])
    assert as_tensor.verdict["complete"] == "collapsed"  # tr Σ fell a millionfold


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300])
def test_extreme_magnitudes_are_rescaled_not_called_collapsed(scale: float) -> None:
    plain = cl.diagnose(_z())
    big = cl.diagnose(_z() * scale)
    assert big.verdict == plain.verdict
    for key in ("effective_rank", "stable_rank", "spread", "uniformity"):
        assert big.metrics[key] == pytest.approx(plain.metrics[key], rel=1e-9), key
    assert big.metrics["input_scale"] != 1.0
    # the total variance is reported in the input's units: inf / 0 where float64 cannot hold it
    with np.errstate(over="ignore", under="ignore"):
        expected = float(np.float64(plain.metrics["total_variance"]) * np.float64(scale) ** 2)
    if np.isfinite(expected) and expected != 0.0:
        assert big.metrics["total_variance"] == pytest.approx(expected, rel=1e-9)
    else:
        assert big.metrics["total_variance"] == expected


def test_a_csv_whose_first_row_holds_a_bad_value_is_an_error_not_a_header(tmp_path: Path) -> None:
    bad_first = tmp_path / "bad_first.csv"
    bad_first.write_text("1.0,oops,3\n4,5,6\n7,8,9\n")
    with pytest.raises(InputError, match="cannot read as a table of numbers"):
        load_array(bad_first)
    header = tmp_path / "header.csv"
    header.write_text("a,b,c\n4,5,6\n7,8,9\n")
    assert load_array(header).shape == (2, 3)
    plain = tmp_path / "plain.csv"
    plain.write_text("1,2,3\n4,5,6\n")
    assert load_array(plain).shape == (2, 3)


def test_diagnose_reads_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "z.npy"
    np.save(path, _z())
    from_file, from_array = cl.diagnose(str(path)), cl.diagnose(_z())
    assert from_file.metrics == from_array.metrics
    assert cl.diagnose(path).verdict == from_array.verdict
    with pytest.raises(FileNotFoundError):
        cl.diagnose(tmp_path / "missing.npy")


def test_the_demos_complete_set_is_collapsed_in_every_mode() -> None:
    from collapselab.diagnostics.demo import demo_sets

    sets = demo_sets()
    verdicts = {name: cl.diagnose(s["z"], codes=s["codes"], labels=s["labels"]).verdict for name, s in sets.items()}
    assert set(verdicts["complete"].values()) == {"collapsed"}
    assert set(verdicts["healthy"].values()) == {"healthy"}
    assert verdicts["cluster"]["cluster"] == "collapsed" and verdicts["dimensional"]["dimensional"] == "collapsed"
