"""report.html: written by every `graphopt run`, self-contained, and it renders its plots in a
real browser (headless Chromium; skipped with a reason where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from graphopt.cli import app

ROOT = Path(__file__).resolve().parents[2]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
PLOT_COLOURS = {"macs after": (31, 119, 180), "widths": (44, 160, 44), "latency": (255, 127, 14)}


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("run")
    recipe = directory / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent("""
        model: {python: "tests.models:conv_bn_model"}
        inputs: [{shape: [1, 3, 16, 16]}]
        passes: [{pass: fold_batch_norm}, {pass: channel_pruning, ratio: 0.5}]
        compile: {target: llvm, tuning: null}
        output_dir: out
    """)
    )
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, ["run", str(recipe)])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return directory / "out" / "report.html"


def test_the_page_is_self_contained_with_its_tables_and_plots(report_page):
    text = report_page.read_text()
    assert text.count("<svg") == 3  # MACs per layer, widths kept, latency
    assert "Before and after" in text and "channel_pruning" in text
    assert "pytorch eager" in text and "graphopt (llvm)" in text
    assert not any(f'{a}="http' in text for a in ("src", "href"))  # nothing fetched


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (Debian package: chromium)")
def test_the_page_renders_its_plots_in_a_browser(report_page, tmp_path):
    import matplotlib.image

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,2600",
            report_page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    for plot, colour in PLOT_COLOURS.items():
        found = np.all(np.abs(pixels - np.array(colour)) <= 3, axis=-1).sum()
        assert found > 200, f"the {plot} plot did not render ({found} pixels of its colour)"
