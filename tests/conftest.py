"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _catalogs import write_brand_catalog

torch.set_num_threads(1)  # the CI machine has 2 cores; tests stay predictable


@pytest.fixture
def brand_catalog(tmp_path: Path) -> Path:
    return write_brand_catalog(tmp_path / "brands")
