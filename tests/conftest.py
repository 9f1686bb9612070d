"""Shared fixtures: seeds, torchvision availability, and the shared data directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.models` is importable from recipe factories too
SHARED_DATA = Path(os.environ.get("GRAPHOPT_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def torchvision_models():
    torchvision = pytest.importorskip("torchvision", reason="torchvision (dev extra) not installed")
    return torchvision.models
