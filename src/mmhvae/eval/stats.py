"""Paired comparisons between methods: Wilcoxon signed-rank and Bonferroni correction (DESIGN §5).

Methods are compared on the same subjects (and input subsets), so the test is paired. Degenerate
cases that make ``scipy.stats.wilcoxon`` raise or return NaN (no pairs, all differences zero) give
``p = 1.0`` with a note saying why, so a table can still be rendered and the reason shown.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

# Two-sided exact p of the signed-rank test cannot go below 2 / 2^n: with n < 6 non-zero
# differences no difference can be significant at 0.05, which users should be told.
MIN_PAIRS_FOR_5_PERCENT = 6


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired test: ``pvalue`` in [0, 1], the statistic (None when not run), the number
    of usable pairs ``n`` and a ``note`` explaining degenerate or low-power cases ("" otherwise)."""

    pvalue: float
    statistic: Optional[float]
    n: int
    note: str = ""


def align(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> tuple[list[float], list[float]]:
    """Values of the keys (subjects) present in both mappings, in ``a``'s order."""
    keys = [k for k in a if k in b]
    return [a[k] for k in keys], [b[k] for k in keys]


def paired_wilcoxon(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` (equal-length sequences, paired by position).

    Pairs with a missing or NaN value are dropped; zero differences are discarded as in
    ``scipy.stats.wilcoxon``'s default (``zero_method="wilcox"``). Infinite values (PSNR of a
    perfect reconstruction) are ranked as larger than any finite value.
    """
    if len(a) != len(b):
        raise ValueError(f"paired test needs equally long samples, got {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]
    if not pairs:
        return PairedTest(1.0, None, 0, "no paired values: p set to 1")
    x, y = (np.array(v, dtype=np.float64) for v in zip(*pairs))
    diff = _finite_differences(x, y)
    nonzero = int(np.count_nonzero(diff))
    if nonzero == 0:
        return PairedTest(1.0, None, len(pairs), "all paired differences are zero: p set to 1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small n; the note below says it once
        result = stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    note = ""
    if nonzero < MIN_PAIRS_FOR_5_PERCENT:
        note = f"only {nonzero} non-zero differences: p cannot fall below {2.0 / 2**nonzero:.3g}"
    return PairedTest(float(result.pvalue), float(result.statistic), len(pairs), note)


def _finite_differences(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x - y`` with infinities replaced by values beyond every finite one, keeping their order."""
    both = np.concatenate([x, y])
    finite = both[np.isfinite(both)]
    span = float(finite.max() - finite.min()) if finite.size else 1.0
    big = (abs(float(finite.max())) if finite.size else 0.0) + 2 * span + 1.0
    x = np.where(np.isposinf(x), big, np.where(np.isneginf(x), -big, x))
    y = np.where(np.isposinf(y), big, np.where(np.isneginf(y), -big, y))
    return x - y


def bonferroni(pvalues: Sequence[float], n_tests: Optional[int] = None) -> list[float]:
    """``min(1, p · n_tests)`` for each p; ``n_tests`` defaults to ``len(pvalues)`` and may be larger
    (when only some of a family of tests are listed), never smaller."""
    n = len(pvalues) if n_tests is None else int(n_tests)
    if n < len(pvalues):
        raise ValueError(f"n_tests={n} is smaller than the {len(pvalues)} p-values given")
    for p in pvalues:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    return [min(1.0, p * n) for p in pvalues]
