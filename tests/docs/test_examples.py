"""The examples the docs show are real files, and they run."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_write_a_pass_example_runs():
    namespace = runpy.run_path(str(DOCS / "examples" / "write_a_pass.py"), run_name="example")
    namespace["main"]()


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: p.name)
def test_included_files_match_the_page(page):
    text = page.read_text()
    for include, body in re.findall(r"<!-- include: (\S+) -->\n```\w*\n(.*?)```", text, re.S):
        assert body == (ROOT / include).read_text(), f"{page.name} shows a stale copy of {include}"
