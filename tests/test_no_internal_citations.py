"""User-facing text cites papers, never the team's internal notes or files outside the repository."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("science.md", "/work/shared", "shared/seeds", "seed note")


def shipped_text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    for folder, patterns in (("src", ("*.py", "*.yaml", "*.md")), ("docs", ("*.md", "*.py")),
                             ("tests", ("*.py",)), ("benchmarks", ("*.py", "*.sh"))):
        for pattern in patterns:
            files += sorted((ROOT / folder).rglob(pattern))
    return [f for f in files if f.is_file() and f.name != Path(__file__).name]


def test_the_repository_has_text_files_to_check() -> None:
    assert len(shipped_text_files()) > 50


@pytest.mark.parametrize("needle", FORBIDDEN)
def test_no_file_cites_internal_notes(needle: str) -> None:
    hits = [f"{f.relative_to(ROOT)}:{n}" for f in shipped_text_files()
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if needle in line.lower()]
    assert not hits, f"{needle!r} cited in: {', '.join(hits[:10])}"
