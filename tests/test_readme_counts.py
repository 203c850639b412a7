"""Counts that README.md and the docs state (claims in the ledger) match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import collapselab.theory.training_claims  # noqa: F401  (registers the training claims)
from collapselab.theory.claims import all_claims

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COUNT = re.compile(r"\b(\d+) (theory |training-level |training )?claims\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_stated_claim_counts_match_the_ledger(page: Path) -> None:
    kinds = {"theory ": "theory", "training-level ": "training", "training ": "training"}
    for number, kind in COUNT.findall(page.read_text()):
        expected = len(all_claims(kinds[kind])) if kind else len(all_claims("theory"))
        assert int(number) == expected, f"{page.name}: '{number} {kind}claims', the ledger has {expected}"


def test_readme_states_the_claim_counts() -> None:
    assert COUNT.search((ROOT / "README.md").read_text())
