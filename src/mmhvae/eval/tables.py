"""Result tables shaped like the paper's Table 1, and CSV input/output (DESIGN §5).

Layout of :func:`paper_table` (Markdown)::

    | Method | us | t2 | ... | us PSNR (dB) ↑ | us SSIM (%) ↑ | us LPIPS (%) ↓ | t2 PSNR (dB) ↑ | ...
    | ours   | ●  | ○  | ... | 25.3 (5.0)     | ...

One group of rows per input subset (● = modality given as input, ○ = not given), one row per
method inside a group, then one "Average" row per method pooling every (subset, subject) score.
Cells are "mean (std)" over subjects (population std), SSIM and LPIPS in percent.
With several methods, the best mean per group and column is **bold**, and a method whose paired
difference to the best is significant (two-sided Wilcoxon signed-rank on the common subjects,
Bonferroni-corrected over every comparison in the table, p < alpha) carries a dagger (†).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from mmhvae.atomic import atomic_write_text
from mmhvae.eval.metrics import METRICS, MetricAccumulator, MetricSpec, summarize
from mmhvae.eval.stats import align, bonferroni, paired_wilcoxon
from mmhvae.subsets import all_subsets, parse_subset

FILLED, EMPTY, DAGGER = "●", "○", "†"
AVERAGE = "Average"


def paper_table(
    rows: MetricAccumulator | Iterable[Mapping[str, Any]],
    modalities: Sequence[str],
    targets: Optional[Sequence[str]] = None,
    metrics: Sequence[str] = ("psnr", "ssim", "lpips"),
    methods: Optional[Sequence[str]] = None,
    best_marks: bool = True,
    alpha: float = 0.05,
    decimals: int = 1,
    labels: Optional[Mapping[str, str]] = None,
) -> str:
    """Markdown table of per-subject scores (records as from :meth:`MetricAccumulator.rows`).

    ``modalities`` fixes the order of the ● / ○ input columns; ``targets`` and ``methods``
    default to those present in ``rows``; ``labels`` renames modalities for display
    (``{"us": "iUS"}``). A legend below the table explains the marks and the number of tests.
    """
    acc = rows if isinstance(rows, MetricAccumulator) else MetricAccumulator.from_rows(rows)
    if not acc.records:
        raise ValueError("no scores to tabulate")
    targets = list(targets or acc.targets)
    methods = list(methods or acc.methods)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown}; known: {sorted(METRICS)}")
    order = {s: i for i, s in enumerate(all_subsets(len(modalities)))}
    subsets = sorted(acc.subsets, key=lambda name: order[parse_subset(name, modalities)])
    labels = dict(labels or {})
    mark = best_marks and len(methods) > 1

    columns = [(t, m) for t in targets for m in metrics]
    groups = [(s, [(method, {c: acc.values(method, c[0], c[1], s) for c in columns}) for method in methods]) for s in subsets]
    groups.append((None, [(method, {c: acc.values(method, c[0], c[1], None) for c in columns}) for method in methods]))
    bold, dagger, n_tests, notes = _significance_marks(groups, columns, alpha) if mark else (set(), set(), 0, [])

    header = ["Method"] + [labels.get(m, m) for m in modalities]
    header += [f"{labels.get(t, t)} {METRICS[m].label} {'↑' if METRICS[m].higher_is_better else '↓'}" for t, m in columns]
    body, unavailable = _body(groups, modalities, columns, decimals, bold, dagger)
    lines = [_md_row(header), _md_row(["---"] * len(header))] + body
    legend = ["", f"Mean (std) over subjects; the {AVERAGE} rows pool every (input subset, subject) score. "
              f"{FILLED} input given, {EMPTY} not given."]
    if mark:
        legend.append(
            f"**Bold**: best mean per input subset. {DAGGER}: paired two-sided Wilcoxon signed-rank test against the best "
            f"method significant at p < {alpha} after Bonferroni correction over {n_tests} tests."
        )
    if unavailable:
        legend.append("n/a: no value (e.g. LPIPS weights unavailable), not a score.")
    legend += [f"Note: {n}" for n in notes]
    return "\n".join(lines + legend) + "\n"


def _body(groups, modalities, columns, decimals, bold, dagger) -> tuple[list[str], bool]:
    """Markdown rows of every (subset or Average) group, and whether any cell had no value."""
    lines, unavailable = [], False
    for gi, (subset, members) in enumerate(groups):
        if subset is None:
            inputs = [AVERAGE] + [""] * (len(modalities) - 1)
        else:
            inputs = [FILLED if g else EMPTY for g in parse_subset(subset, modalities)]
        for method, cells in members:
            out = [method] + inputs
            for c in columns:
                text = _cell(list(cells[c].values()), METRICS[c[1]], decimals)
                unavailable |= text == "n/a"
                if (gi, method, c) in bold:
                    text = f"**{text}**"
                if (gi, method, c) in dagger:
                    text += DAGGER
                out.append(text)
            lines.append(_md_row(out))
    return lines, unavailable


def _significance_marks(groups, columns, alpha):
    """Bold cells (best mean), daggers (significantly worse than the best), the number of tests and notes.

    ``groups``: ``[(subset name or None for Average, [(method, {(target, metric): {key: value}})])]``.
    """
    bold, tests = set(), []
    for gi, (_, members) in enumerate(groups):
        for c in columns:
            spec = METRICS[c[1]]
            means = {method: summarize(list(cells[c].values()))[0] for method, cells in members}
            available = {m: v for m, v in means.items() if v is not None}
            if not available:
                continue
            best_value = max(available.values()) if spec.higher_is_better else min(available.values())
            winners = [m for m, v in available.items() if v == best_value]
            bold.update((gi, m, c) for m in winners)
            reference = dict(members)[winners[0]][c]
            for method, cells in members:
                if method in winners or method not in available:
                    continue
                a, b = align(reference, cells[c])
                tests.append(((gi, method, c), paired_wilcoxon(a, b)))
    corrected = bonferroni([t.pvalue for _, t in tests]) if tests else []
    dagger = {key for (key, _), p in zip(tests, corrected) if p < alpha}
    noted = [t.note for _, t in tests if t.note]
    notes = [f"{len(noted)} of {len(tests)} comparisons are degenerate or underpowered (e.g. {noted[0]})."] if noted else []
    return bold, dagger, len(tests), notes


def _cell(values: list[float], spec: MetricSpec, decimals: int) -> str:
    mean, std = summarize(values)
    if mean is None:
        return "n/a"
    if math.isinf(mean):
        return "inf"
    return f"{mean * spec.scale:.{decimals}f} ({std * spec.scale:.{decimals}f})"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write dicts as CSV (columns: union of keys in first-seen order; ``None`` as empty), atomically."""
    rows = list(rows)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by :func:`write_csv`; numeric columns are left as strings except ``value``
    (float, or None when empty), so the result feeds :meth:`MetricAccumulator.from_rows`."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if "value" in row:
            row["value"] = None if row["value"] in ("", None) else float(row["value"])
    return rows
