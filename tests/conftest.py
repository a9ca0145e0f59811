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


@pytest.fixture
def compile_raises(monkeypatch):
    """``compile_raises(message, from_module)``: from then on ``runtime.compile_cells`` installs, on
    every cell, a compiled call that raises an error at the first call: one that looks raised by
    torch.compile's machinery (``from_module``, e.g. ``torch._dynamo.exc``: a broken compiler), or with
    ``from_module=None`` a ValueError (a bug of the model itself)."""
    from mmhvae import runtime

    def install(message: str, from_module=None) -> None:
        if from_module:
            error = type("CompileFailure", (RuntimeError,), {"__module__": from_module})(message)
        else:
            error = ValueError(message)

        def broken(model, units=None):
            def fail(*args, **kwargs):
                raise error

            for module in model.modules():
                if isinstance(module, runtime.compile_units()):
                    module._compiled_call_impl = fail
            return 1

        monkeypatch.setattr(runtime, "compile_cells", broken)

    return install
