"""report.html in a real browser (headless Chromium): no console messages, a page that is not blank.

How the checks work, and the tests that prove they can fail:

- Console: Chromium started with ``--enable-logging=stderr --v=0`` writes every console message
  (``console.log``/``error`` and uncaught exceptions) to stderr as ``...:CONSOLE(<line>)] "<text>"``
  (``:CONSOLE:<line>]`` in newer builds), at INFO level whatever the console method, so the level
  cannot tell an error from a log. The report has no script at all, so *any* console message is a
  fault; uncaught exceptions also match on "Uncaught". A page calling ``console.error('x')`` must
  be caught (``test_console_detector_catches_console_error``).
- Blank: the ``--screenshot`` PNG must have a meaningful fraction of non-white pixels and more than
  a handful of distinct colours; an empty page must fail that (``test_blank_detector_catches_an_empty_page``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from collapselab.report import write_report

CHROMIUM_TIMEOUT_S = 20
MIN_INK = 0.02  # fraction of pixels that are not white
MIN_COLOURS = 16
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; installed with apt-get when absent and we are root, else a skip."""
    path = find_chromium()
    if path is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "chromium"]):  # update only if the lists are stale
            try:
                subprocess.run(command, capture_output=True, timeout=600, check=False, env=env)
            except subprocess.TimeoutExpired:
                break
            path = find_chromium()
            if path is not None:
                break
    if path is None:
        pytest.skip("headless Chromium not found (install the 'chromium' package; apt-get needs root)")
    return path


def render(chromium: str, page: Path, tmp_path: Path) -> tuple[str, Path]:
    """Load ``page`` in headless Chromium; (its stderr, the screenshot PNG)."""
    png = tmp_path / f"{page.stem}.png"
    profile = tmp_path / f"profile-{page.stem}"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--window-size=1280,2000",
               f"--screenshot={png}", page.resolve().as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium took more than {CHROMIUM_TIMEOUT_S} s on {page}")
    assert png.is_file(), f"chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}"
    return done.stderr, png


def console_errors(stderr: str) -> list[str]:
    """Every console message and uncaught exception Chromium logged (a script-free page has none)."""
    found = [match.group(1) for match in map(CONSOLE.search, stderr.splitlines()) if match]
    found += [line for line in stderr.splitlines() if "Uncaught" in line and not CONSOLE.search(line)]
    return found


def blankness(png: Path) -> tuple[float, int]:
    """(fraction of non-white pixels, number of distinct RGB colours) of a screenshot."""
    from matplotlib.image import imread

    rgb = np.round(imread(png)[..., :3] * 255).astype(np.uint8)
    ink = float((rgb < 245).any(axis=-1).mean())
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    return ink, colours


def assert_rendered(ink: float, colours: int) -> None:
    assert ink >= MIN_INK, f"screenshot nearly blank: {ink:.1%} non-white pixels"
    assert colours > MIN_COLOURS, f"screenshot has only {colours} colours"


# --------------------------------------------------------------------------- the detectors


def test_console_detector_catches_console_error(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "error.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('x-marker')</script></body></html>")
    errors = console_errors(render(chromium, page, tmp_path)[0])
    assert any("x-marker" in e for e in errors), errors


def test_console_detector_catches_an_uncaught_exception_and_passes_a_quiet_page(chromium: str, tmp_path: Path) -> None:
    thrower = tmp_path / "throw.html"
    thrower.write_text("<!DOCTYPE html><html><body><script>noSuchFunction()</script></body></html>")
    assert any("Uncaught" in e for e in console_errors(render(chromium, thrower, tmp_path)[0]))
    quiet = tmp_path / "quiet.html"
    quiet.write_text("<!DOCTYPE html><html><body><h1>quiet</h1></body></html>")
    assert console_errors(render(chromium, quiet, tmp_path)[0]) == []


def test_blank_detector_catches_an_empty_page(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "blank.html"
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    ink, colours = blankness(render(chromium, page, tmp_path)[1])
    with pytest.raises(AssertionError, match=r"blank|colours"):
        assert_rendered(ink, colours)


# --------------------------------------------------------------------------- the report


def test_report_renders_without_console_errors_and_is_not_blank(chromium: str, make_run, tmp_path: Path) -> None:
    run = make_run("browser", collapse=True, codes=True)
    stderr, png = render(chromium, write_report(run.path), tmp_path)
    assert console_errors(stderr) == []
    assert_rendered(*blankness(png))


def test_comparison_report_renders_without_console_errors(chromium: str, make_run, tmp_path: Path) -> None:
    runs = [make_run("one").path, make_run("two", collapse=True).path]
    stderr, png = render(chromium, write_report(runs, tmp_path / "compare.html"), tmp_path)
    assert console_errors(stderr) == []
    assert_rendered(*blankness(png))


def test_injected_markup_in_user_strings_runs_nothing_in_the_browser(chromium: str, make_run, tmp_path: Path) -> None:
    """A run name, method and alarm reason that carry markup calling ``console.error``: escaped,
    Chromium logs nothing (unescaped, the same strings log ``injected-*``, as the detector test shows)."""
    script = "<script>console.error('injected-script')</script>"
    image = "<img src=x onerror=console.error('injected-img')>"
    run = make_run(image, method=script, reason_text=script + image, collapse=True, run__name=script)
    stderr, png = render(chromium, write_report(run.path), tmp_path)
    assert not [e for e in console_errors(stderr) if "injected" in e], console_errors(stderr)
    assert console_errors(stderr) == []
    assert_rendered(*blankness(png))
