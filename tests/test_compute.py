"""Compute measurements: documented keys and positive values, exact MAC counting, paper-preset cost, CLI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmhvae.compute import KEYS, count_macs, machine_description, markdown_table, measure, measure_methods
from mmhvae.config import preset
from mmhvae.methods import apply_method
from mmhvae.models import build_model


@pytest.mark.parametrize("method", ["mmhvae", "mmgan", "resvit"])
def test_measure_returns_the_documented_keys_with_positive_values(method):
    cfg = apply_method(preset("tiny"), method).model
    row = measure(cfg, batch_size=2, warmup=0, repeats=1)
    assert set(KEYS) <= set(row)
    for key in ("params", "gmacs", "gmacs_one_input", "latency_ms", "throughput"):
        assert row[key] > 0, key
    assert row["model"] == method and row["batch_size"] == 2 and row["inputs"] == "us+t2+cet1"
    if method == "mmhvae":  # absent modalities' encoders are skipped
        assert row["gmacs_one_input"] < row["gmacs"]
    else:  # zero-imputation costs the same whatever is given
        assert row["gmacs_one_input"] == row["gmacs"]


class _OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, images, observed, temperature=1.0):
        return self.conv(images)


def test_macs_are_flops_over_two():
    macs = count_macs(_OneConv(), torch.rand(1, 3, 8, 8), torch.ones(1, 3, dtype=torch.bool))
    assert macs == 5 * 8 * 8 * 3 * 3 * 3  # output elements x (in channels x kernel area)


def test_paper_preset_cost_matches_the_official_implementation():
    # DESIGN §1: 13.77 M parameters, 12.6 GMACs with 4 inputs, 6.5 with one, within 15%.
    model = build_model(preset("paper").model).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 4, 192, 192)
    all_in = count_macs(model, x, torch.ones(1, 4, dtype=torch.bool)) / 1e9
    one_in = count_macs(model, x, torch.tensor([[True, False, False, False]])) / 1e9
    assert params == pytest.approx(13.77e6, rel=0.15)
    assert all_in == pytest.approx(12.6, rel=0.15) and one_in == pytest.approx(6.5, rel=0.15)


def test_table_and_machine_line():
    rows = measure_methods("tiny", ["mmhvae", "L1", "mmgan"], warmup=0, repeats=1)
    assert [r["method"] for r in rows] == ["mmhvae", "L1", "mmgan"]
    assert [r["levels"] for r in rows] == [3, 1, 0]
    table = markdown_table(rows)
    assert table.count("\n") == 2 + len(rows) and "| L1 | mmhvae | 1 | 32² |" in table
    assert "torch" in machine_description("cpu")


def test_benchmark_compute_cli_appends_a_table(tmp_path, capsys):
    from mmhvae.cli import main

    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n")
    rc = main(["benchmark", "compute", "--preset", "tiny", "--methods", "mmhvae,resvit",
               "--warmup", "0", "--repeats", "1", "--append", str(out)])
    assert rc == 0
    text = out.read_text()
    assert text.startswith("# Benchmarks\n") and "Measured on:" in text and "| resvit | resvit |" in text
    assert "| mmhvae |" in capsys.readouterr().out


def test_benchmark_cli_refuses_unknown_methods(capsys):
    from mmhvae.cli import main

    assert main(["benchmark", "compute", "--preset", "tiny", "--methods", "mmhvae,nope"]) == 1
    assert "unknown method" in capsys.readouterr().err
