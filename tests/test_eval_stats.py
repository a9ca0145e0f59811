"""Paired Wilcoxon signed-rank test and Bonferroni correction."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mmhvae.eval.stats import align, bonferroni, paired_wilcoxon

# Darwin's Zea mays data (cross- minus self-fertilized heights, eighths of an inch), the example of
# scipy.stats.wilcoxon's documentation: two-sided exact p = 0.041259765625 (= 1352 / 32768).
DARWIN = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]


def _exact_two_sided_p(diff: list[float]) -> float:
    """Enumerate all 2^n sign flips of the ranks: an independent check of the exact null distribution."""
    ranks = np.argsort(np.argsort(np.abs(diff))) + 1.0  # no ties in the data used here
    observed = min(ranks[np.array(diff) > 0].sum(), ranks[np.array(diff) < 0].sum())
    total = ranks.sum()
    count = 0
    for signs in itertools.product((0, 1), repeat=len(diff)):
        plus = float(np.dot(signs, ranks))
        count += min(plus, total - plus) <= observed
    return count / 2 ** len(diff)


def test_known_p_value_darwin():
    result = paired_wilcoxon([d + 100.0 for d in DARWIN], [100.0] * len(DARWIN))
    assert result.pvalue == pytest.approx(0.041259765625, abs=1e-12)
    assert result.statistic == 24.0 and result.n == 15 and result.note == ""
    assert result.pvalue == pytest.approx(_exact_two_sided_p(DARWIN), abs=1e-12)


def test_random_pairs_match_exact_enumeration():
    rng = np.random.default_rng(3)
    a = rng.normal(size=11)
    b = a + rng.normal(0.4, 1.0, size=11)
    assert paired_wilcoxon(a, b).pvalue == pytest.approx(_exact_two_sided_p(list(a - b)), abs=1e-12)


def test_all_zero_differences_give_p_one_with_a_note():
    result = paired_wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert result.pvalue == 1.0 and result.statistic is None and "zero" in result.note


def test_missing_values_are_dropped_and_small_samples_noted():
    result = paired_wilcoxon([1.0, None, 3.0, float("nan"), 5.0], [0.0, 1.0, 1.0, 2.0, 2.0])
    assert result.n == 3
    assert result.pvalue == pytest.approx(0.25)  # 3 positive differences: exact two-sided p = 2 / 2^3
    assert "only 3 non-zero differences" in result.note
    empty = paired_wilcoxon([None], [1.0])
    assert empty.pvalue == 1.0 and empty.n == 0 and "no paired" in empty.note


def test_infinite_psnr_ranks_above_every_finite_value():
    result = paired_wilcoxon([math.inf, 30.0, 31.0, 29.0, 33.0, 35.0], [20.0, 21.0, 22.0, 23.0, 24.0, 25.0])
    assert result.pvalue == pytest.approx(2 / 2**6)


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="equally long"):
        paired_wilcoxon([1.0, 2.0], [1.0])


def test_align_pairs_common_subjects():
    assert align({"a": 1.0, "b": 2.0, "c": 3.0}, {"c": 30.0, "a": 10.0}) == ([1.0, 3.0], [10.0, 30.0])


def test_bonferroni():
    assert bonferroni([0.01, 0.02, 0.5]) == pytest.approx([0.03, 0.06, 1.0])
    assert bonferroni([0.001], n_tests=10) == pytest.approx([0.01])
    assert bonferroni([]) == []
    with pytest.raises(ValueError, match="smaller than"):
        bonferroni([0.1, 0.2], n_tests=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bonferroni([1.5])
