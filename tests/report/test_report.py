"""report.html: sections, figures, escaping, partial runs, several runs, the command."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from collapselab._validation import InputError
from collapselab.cli import EXIT_OK, EXIT_USAGE, main
from collapselab.report import plots, render_report, write_report
from collapselab.report.data import load_run

FIGURE_SECTIONS = ("loss", "knn", "ranks", "spectrum", "alignment-uniformity")
XSS = "<script>alert(1)</script>"


def section(page: str, sid: str) -> str:
    """The HTML of ``<section id=sid>`` (asserts it is there)."""
    match = re.search(rf'<section id="{sid}">(.*?)</section>', page, flags=re.DOTALL)
    assert match, f"no section {sid!r}"
    return match.group(1)


def test_every_section_of_a_complete_run_has_its_heading_and_figure(make_run) -> None:
    run = make_run("r1", collapse=True, codes=True)
    path = write_report(run.path)
    assert path == run.report_path
    page = path.read_text()
    for sid in ("summary", "alarms", *FIGURE_SECTIONS, "codes", "config"):
        assert "<h2>" in section(page, sid)
    for sid in ("alarms", *FIGURE_SECTIONS, "codes"):
        assert "<svg" in section(page, sid), sid
    assert 'id="comparison"' not in page  # one run: nothing to compare
    summary = section(page, "summary")
    assert "93.0 %" in summary and "96.0 %" in summary and "95.0 %" in summary  # kNN beside both baselines
    assert "level-collapsed" in summary and "since step 25" in summary
    assert "effective rank" in section(page, "alarms") and "<table>" in section(page, "alarms")
    assert "optim:" in section(page, "config") and "<pre>" in section(page, "config")


def test_page_is_self_contained_without_scripts_or_fetches(make_run) -> None:
    page = render_report([make_run("r1", collapse=True)])
    assert "<script" not in page.lower()
    assert not re.search(r"\son[a-z]+\s*=", page)  # no event handlers
    assert not re.search(r'(src|href)\s*=\s*"(?!#)', page)  # only in-page anchors
    assert "@import" not in page and "url(http" not in page
    assert page.count("<svg") >= 6 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "an id is used twice (figures must not share ids)"


def test_user_strings_are_escaped_everywhere(make_run) -> None:
    run = make_run("<img src=x onerror=alert(1)>", method=XSS, reason_text=XSS, collapse=True, run__name=XSS)
    other = make_run("plain", collapse=True)
    for page in (write_report(run.path).read_text(), render_report([run, other])):
        assert "<script" not in page.lower() and "<img" not in page.lower()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_names_with_dollar_or_leading_underscore_are_plotted_as_text(make_run) -> None:
    runs = [load_run(make_run("cost$1$")), load_run(make_run("_hidden"))]
    svg = plots.loss_figure(runs)
    assert svg is not None and "cost$1$" in svg and "_hidden" in svg


def test_run_with_only_a_config_still_renders_with_notes(tmp_path: Path) -> None:
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "config.yaml").write_text("method:\n  name: simclr\ndata:\n  dataset: digits\n")
    page = write_report(run).read_text()
    assert "summary.json is missing" in page and "metrics.jsonl is missing" in page
    for sid in FIGURE_SECTIONS:
        assert "Not recorded in this run" in section(page, sid)
    assert "simclr" in section(page, "summary") and "simclr" in section(page, "config")
    assert "<svg" not in page


def test_unreadable_files_become_notes_not_errors(make_run) -> None:
    run = make_run("broken")
    run.summary_path.write_text("{not json")
    run.spectra_path.write_bytes(b"not a zip")
    page = write_report(run.path).read_text()
    assert "summary.json could not be read" in page and "spectra.npz could not be read" in page
    assert "<svg" in section(page, "loss")


def test_interrupted_run_without_checks_or_summary(make_run) -> None:
    run = make_run("stopped")
    run.summary_path.unlink()
    run.spectra_path.unlink()
    lines = [line for line in run.metrics_path.read_text().splitlines() if '"check"' not in line and '"alarm"' not in line]
    run.metrics_path.write_text("\n".join(lines) + '\n{"step": 41, "kind": "tra')  # a line cut by the crash
    page = write_report(run.path).read_text()
    assert "<svg" in section(page, "loss") and "<svg" in section(page, "knn")
    assert "Not recorded" in section(page, "spectrum") and "Not recorded" in section(page, "alarms")
    assert "No verdict recorded" in section(page, "summary")


def test_alignment_all_nan_and_no_codes_skip_those_figures(make_run) -> None:
    page = render_report([make_run("r", alignment=False)])
    assert "Not recorded" in section(page, "alignment-uniformity")
    assert 'id="codes"' not in page


def test_several_runs_overlay_with_a_legend_and_a_comparison(make_run, tmp_path: Path) -> None:
    a, b = make_run("alpha"), make_run("beta", collapse=True, optim__lr=0.5)
    out = write_report([a.path, b], tmp_path / "both.html")
    page = out.read_text()
    compare = section(page, "comparison")
    assert "optim.lr" in compare and "effective_rank/emb" in compare and ("(+" in compare or "(-" in compare)
    for sid in ("loss", "knn", "ranks"):
        assert ">alpha" in section(page, sid) and ">beta" in section(page, sid), sid  # legend text in the SVG
    assert section(page, "spectrum").count("alpha · emb") == 1 and "beta · repr" in section(page, "spectrum")
    assert "<details>" in section(page, "config")


def test_several_runs_need_an_out_path(make_run) -> None:
    with pytest.raises(InputError, match="out="):
        write_report([make_run("a").path, make_run("b").path])


def test_not_a_run_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such run folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(InputError, match="not a run folder"):
        write_report(tmp_path)


def test_spectrum_checks_are_spread_over_the_run() -> None:
    assert plots.spectrum_steps(0) == []
    assert plots.spectrum_steps(3) == [0, 1, 2]
    chosen = plots.spectrum_steps(41)
    assert len(chosen) == 6 and chosen[0] == 0 and chosen[-1] == 40
    assert np.all(np.diff(chosen) >= 7)


def test_report_command_prints_the_path_and_exits_2_on_bad_input(make_run, tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    run = make_run("cli")
    assert main(["report", str(run.path)]) == EXIT_OK
    assert capsys.readouterr().out.strip() == str(run.report_path)
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(run.path), str(make_run("cli2").path)]) == EXIT_OK
    assert capsys.readouterr().out.strip() == "report.html" and (tmp_path / "report.html").is_file()
    assert main(["report", str(run.path), "--out", str(tmp_path / "x.html"), "--title", "T"]) == EXIT_OK
    assert "<title>T</title>" in (tmp_path / "x.html").read_text()
    capsys.readouterr()
    for bad in (tmp_path / "nope", tmp_path / "x.html", tmp_path / "runs"):
        assert main(["report", str(bad)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_report_of_a_real_training_run_is_fast(tmp_path: Path) -> None:
    from collapselab import train

    run = train("byol", "digits", epochs=2, run={"out_dir": str(tmp_path), "name": "real"},
                log={"progress": False, "tensorboard": False})
    start = time.perf_counter()
    page = write_report(run.dir).read_text()
    elapsed = time.perf_counter() - start
    for sid in ("loss", "knn", "ranks", "spectrum"):
        assert "<svg" in section(page, sid), sid
    assert "completed" in section(page, "summary") and "level-" in section(page, "summary")
    assert elapsed < 10, f"write_report took {elapsed:.1f} s (budget ~3 s on an idle 2-core machine)"


def test_long_curves_are_thinned_and_figures_stay_small(make_run) -> None:
    run = load_run(make_run("long", steps=20_000))
    svg = plots.loss_figure([run])
    assert svg is not None and len(svg) < 300_000
    steps, values = plots.thin(np.arange(10_000.0), np.arange(10_000.0), most=100)
    assert steps.size == 100 and steps[-1] == 9_999 and np.array_equal(steps, values)


def test_a_figure_that_fails_leaves_a_note_not_a_lost_report(make_run, monkeypatch) -> None:
    def broken(runs):
        raise ValueError("odd value")

    monkeypatch.setitem(plots.FIGURES, "knn", broken)
    page = render_report([make_run("r")])
    assert "could not be drawn (ValueError: odd value)" in section(page, "knn")
    assert "<svg" in section(page, "loss")


def test_odd_values_in_a_hand_edited_summary_do_not_break_the_report(make_run) -> None:
    run = make_run("edited", collapse=True)
    run.summary_path.write_text('{"status": 3, "steps": "many", "alarms": [{"step": "x"}, 7], '
                                '"final_verdict": ["no"], "eval": {"knn_top1": "high"}, "throughput_img_per_s": "fast"}')
    page = write_report(run.path).read_text()
    for sid in ("summary", "alarms", *FIGURE_SECTIONS, "config"):
        assert "could not be drawn" not in section(page, sid), sid
    assert "<svg" in section(page, "knn") and "<svg" in section(page, "alarms")


def test_report_out_a_folder_writes_report_html_inside(make_run, tmp_path: Path, capsys) -> None:
    run = make_run("dir_out")
    folder = tmp_path / "reports"
    folder.mkdir()
    assert main(["report", str(run.path), "--out", str(folder)]) == EXIT_OK
    assert capsys.readouterr().out.strip() == str(folder / "report.html") and (folder / "report.html").is_file()
    new = tmp_path / "new"
    assert main(["report", str(run.path), str(make_run("other").path), "--out", f"{new}/"]) == EXIT_OK
    assert (new / "report.html").is_file() and not list(tmp_path.rglob(".*.tmp"))
    assert write_report(run.path, folder) == folder / "report.html"
