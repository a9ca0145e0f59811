"""Paper-style Markdown tables (Table 1 layout) and CSV round trips."""

from __future__ import annotations

import numpy as np
import pytest

from mmhvae.eval.metrics import MetricAccumulator
from mmhvae.eval.tables import paper_table, read_csv, write_csv

MODALITIES = ["us", "t2"]
SUBJECTS = [f"s{i:02d}" for i in range(12)]


def _scores(with_lpips: bool = True) -> MetricAccumulator:
    """'ours' beats 'mvae' by a wide margin everywhere except t2 PSNR from "us", where the two are
    within noise and mvae's mean happens to be higher."""
    rng = np.random.default_rng(0)
    acc = MetricAccumulator()
    for subset in ("us+t2", "t2", "us"):  # deliberately not in table order
        for target in MODALITIES:
            for subject in SUBJECTS:
                base = {"psnr": 25.0, "ssim": 0.85, "lpips": 0.10}
                for method, gain in (("ours", 1.0), ("mvae", 0.0)):
                    close = subset == "us" and target == "t2"
                    noise = rng.normal(0, 1.0)
                    scores = {
                        "psnr": base["psnr"] + (noise + (0.3 if method == "mvae" else 0.0) if close else 3.0 * gain + 0.1 * noise),
                        "ssim": base["ssim"] + 0.05 * gain + 0.001 * noise,
                        "lpips": (base["lpips"] - 0.05 * gain + 0.001 * noise) if with_lpips else None,
                    }
                    acc.add_scores(method, subset, target, subject, scores)
    return acc


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]


def test_layout_inputs_average_and_order():
    table = paper_table(_scores(), MODALITIES, methods=["mvae", "ours"], labels={"us": "iUS", "t2": "T2"})
    rows = _rows(table)
    assert rows[0][:3] == ["Method", "iUS", "T2"]
    assert rows[0][3] == "iUS PSNR (dB) ↑" and rows[0][5] == "iUS LPIPS (%) ↓" and len(rows[0]) == 3 + 2 * 3
    body = rows[2:]
    # subsets in table order (by size, then modality order), one row per method, then Average rows
    assert [r[:3] for r in body] == [
        ["mvae", "●", "○"], ["ours", "●", "○"],
        ["mvae", "○", "●"], ["ours", "○", "●"],
        ["mvae", "●", "●"], ["ours", "●", "●"],
        ["mvae", "Average", ""], ["ours", "Average", ""],
    ]  # fmt: skip
    # SSIM in percent, "mean (std)"
    assert body[1][4].startswith("**90.0 (")


def test_best_in_bold_and_significance_dagger():
    table = paper_table(_scores(), MODALITIES, methods=["mvae", "ours"])
    rows = _rows(table)[2:]
    mvae_us, ours_us = rows[0], rows[1]
    # t2 PSNR from "us": mvae's mean is higher, so it is bold, but the difference is not significant
    assert mvae_us[6].startswith("**") and not ours_us[6].startswith("**") and not ours_us[6].endswith("†")
    # elsewhere ours wins by a wide margin on 12 subjects: bold, and mvae marked significantly worse
    assert ours_us[3].startswith("**") and mvae_us[3].endswith("†")
    assert rows[-1][5].startswith("**") and rows[-2][5].endswith("†")  # LPIPS, lower is better, Average rows
    assert "Bonferroni correction over 24 tests" in table
    single = paper_table(_scores(), MODALITIES, methods=["ours"])
    assert "**" not in single.split("\n\n")[0] and "†" not in single


def test_unavailable_lpips_is_shown_as_na_not_a_number():
    table = paper_table(_scores(with_lpips=False), MODALITIES)
    rows = _rows(table)[2:]
    assert all(r[5] == "n/a" and r[8] == "n/a" for r in rows)
    assert "n/a: no value" in table


def test_few_subjects_are_noted():
    acc = MetricAccumulator()
    for method, value in (("ours", 30.0), ("mvae", 20.0)):
        for subject in ("a", "b"):
            acc.add(method, "us", "t2", subject, "psnr", value + (subject == "b"))
    table = paper_table(acc, MODALITIES, metrics=["psnr"])
    assert "underpowered" in table
    assert not any(cell.endswith("†") for row in _rows(table)[2:] for cell in row)


def test_errors():
    with pytest.raises(ValueError, match="no scores"):
        paper_table([], MODALITIES)
    with pytest.raises(ValueError, match="unknown metric"):
        paper_table(_scores(), MODALITIES, metrics=["fid"])
    with pytest.raises(ValueError, match="unknown modality"):
        paper_table(_scores(), ["us"])


def test_csv_round_trip_keeps_unavailable_values(tmp_path):
    acc = _scores(with_lpips=False)
    path = write_csv(acc.rows(), tmp_path / "out" / "metrics.csv")
    rows = read_csv(path)
    assert rows[0].keys() == {"method", "subset", "target", "subject", "metric", "value"}
    again = MetricAccumulator.from_rows(rows)
    assert again.records == acc.records
    assert paper_table(again, MODALITIES) == paper_table(acc, MODALITIES)
    summary = write_csv(acc.summary(), tmp_path / "summary.csv")
    assert "n_unavailable" in summary.read_text().splitlines()[0]
