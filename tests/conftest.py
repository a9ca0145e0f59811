"""Shared fixtures. Real data is read from ../shared/data/real beside the clone, never copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"

# One intra-op thread: the test models are tiny, and spinning OpenMP threads on a shared machine
# cost far more than they save.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The two real BraTS-space cases; tests using this are skipped with a message when absent."""
    if not REAL_DATA.is_dir() or not any(REAL_DATA.iterdir()):
        pytest.skip(f"real data not found at {REAL_DATA} (expected ../shared/data/real beside the repo)")
    return REAL_DATA
