"""The package imports, reports its version, and the CLI answers --version/--help."""

from __future__ import annotations

import subprocess
import sys

import collapselab
from collapselab.cli import main


def test_version_is_pep440_string() -> None:
    from packaging.version import Version

    assert str(Version(collapselab.__version__)) == collapselab.__version__


def test_cli_version_flag_prints_version(capsys) -> None:
    try:
        main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    assert collapselab.__version__ in capsys.readouterr().out


def test_cli_help_runs_as_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "collapselab", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: collapselab" in out.stdout
