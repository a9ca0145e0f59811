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


# The two BraTS-space cases the first real-data tests were written for (two scanners, BraTS 2023
# and TCGA names); the folder holds more subjects now (see its README).
REAL_PAIR = ("BraTS-GLI-00001-000", "TCGA-DU-7294")


@pytest.fixture(scope="session")
def real_cases_dir() -> Path:
    """Every real case of ../shared/data/real; tests using this are skipped with a message when absent."""
    if not REAL_DATA.is_dir() or not any(REAL_DATA.iterdir()):
        pytest.skip(f"real data not found at {REAL_DATA} (expected ../shared/data/real beside the repo)")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_data_dir(real_cases_dir, tmp_path_factory) -> Path:
    """A cohort folder of the two BraTS-space cases of ``REAL_PAIR`` (symbolic links, nothing copied)."""
    missing = [name for name in REAL_PAIR if not (real_cases_dir / name).is_dir()]
    if missing:
        pytest.skip(f"real cases {missing} not found in {real_cases_dir}")
    folder = tmp_path_factory.mktemp("real_pair")
    for name in REAL_PAIR:
        (folder / name).symlink_to(real_cases_dir / name, target_is_directory=True)
    return folder
