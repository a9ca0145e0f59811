"""Subset enumeration and the mixture weights p_alpha(r' | r) (paper eq. 7-8)."""

import itertools
import math

import pytest
import torch

from mmhvae.subsets import SubsetPolicy, all_subsets, parse_subset, subset_name, subsets_of

MODS = ["us", "t2", "cet1", "flair"]


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_all_subsets_enumerates_every_nonempty_combination(m):
    subs = all_subsets(m)
    assert len(subs) == 2**m - 1 == len(set(subs))
    assert all(any(s) for s in subs)
    assert [sum(s) for s in subs] == sorted(sum(s) for s in subs)


def test_subsets_of_matches_the_paper_example():
    # S_[1,1,0,0] = {[1,1,0,0], [1,0,0,0], [0,1,0,0]}
    assert set(subsets_of([1, 1, 0, 0])) == {(True, True, False, False), (True, False, False, False), (False, True, False, False)}


def test_parse_and_name_round_trip_and_errors():
    s = parse_subset("t2+us", MODS)
    assert s == (True, True, False, False) and subset_name(s, MODS) == "us+t2"
    with pytest.raises(ValueError, match="unknown modality"):
        parse_subset("t1+us", MODS)
    with pytest.raises(ValueError, match="empty subset"):
        parse_subset("", MODS)


@pytest.mark.parametrize("policy", ["paper", "uniform", "size-uniform"])
def test_mixture_weights_sum_to_one_on_s_r_for_every_availability(policy):
    pol = SubsetPolicy(MODS, policy, groups={"anchor": ["us"]})
    for r in itertools.product([False, True], repeat=4):
        if not any(r):
            with pytest.raises(ValueError):
                pol.distribution(r)
            continue
        dist = pol.distribution(r)
        assert math.isclose(sum(dist.values()), 1.0, rel_tol=1e-12)
        assert set(dist) <= set(subsets_of(r))
        assert all(p > 0 for p in dist.values())


def test_paper_policy_values_for_a_complete_subject():
    pol = SubsetPolicy(MODS, "paper", groups={"anchor": ["us"]})
    dist = pol.distribution([True] * 4)
    assert dist[(True, True, True, True)] == pytest.approx(1 / 3)
    assert dist[(True, False, False, False)] == pytest.approx(1 / 3)
    mr = [s for s in dist if not s[0]]
    assert len(mr) == 7 and all(dist[s] == pytest.approx(1 / 21) for s in mr)


def test_paper_policy_renormalizes_when_a_group_is_missing():
    pol = SubsetPolicy(MODS, "paper", groups={"anchor": ["us"]})
    dist = pol.distribution([False, True, True, False])  # no ultrasound
    assert dist[(False, True, True, False)] == pytest.approx(0.5 + 0.5 / 3)
    assert dist[(False, True, False, False)] == pytest.approx(0.5 / 3)


def test_size_uniform_policy():
    pol = SubsetPolicy(MODS, "size-uniform")
    dist = pol.distribution([True] * 4)
    for k in range(1, 5):
        assert sum(p for s, p in dist.items() if sum(s) == k) == pytest.approx(0.25)


def test_explicit_weights_policy_restricts_and_renormalizes():
    pol = SubsetPolicy(MODS, "weights", weights={"us": 1.0, "us+t2": 3.0, "flair": 5.0})
    dist = pol.distribution([True, True, False, False])
    assert dist == pytest.approx({(True, False, False, False): 0.25, (True, True, False, False): 0.75})
    assert sum(SubsetPolicy(MODS, "weights", weights={"flair": 1.0}).distribution([1, 0, 0, 0]).values()) == 1.0


def test_sampling_frequencies_follow_the_distribution():
    pol = SubsetPolicy(MODS, "paper", groups={"anchor": ["us"]})
    g = torch.Generator().manual_seed(0)
    r = [True, True, True, False]
    n = 6000
    counts = {}
    for _ in range(n):
        s = pol.sample(r, g)
        counts[s] = counts.get(s, 0) + 1
    for s, p in pol.distribution(r).items():
        assert abs(counts.get(s, 0) / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    masks = pol.sample_masks(torch.tensor([r, [True, False, False, True]]), g)
    assert masks.shape == (2, 4) and not (masks & ~torch.tensor([r, [True, False, False, True]])).any()
