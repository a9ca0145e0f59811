"""Subsets of modalities and the mixture weights p_alpha(r' | r) (paper eq. 7-8, DESIGN §1).

A subset is a tuple of M booleans. ``S_r`` is the set of non-empty subsets of the available
modalities ``r``. A :class:`SubsetPolicy` gives the exact distribution over ``S_r`` (so tests can
check that it sums to one) and draws from it with an explicit ``torch.Generator``.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Optional, Sequence

import torch

Subset = tuple[bool, ...]


def all_subsets(num_modalities: int) -> list[Subset]:
    """All 2^M - 1 non-empty subsets, ordered by size then lexicographically (paper table order)."""
    out = [s for s in itertools.product([False, True], repeat=num_modalities) if any(s)]
    return sorted(out, key=lambda s: (sum(s), [not b for b in s]))


def subsets_of(available: Sequence[bool]) -> list[Subset]:
    """S_r: the non-empty subsets of ``available``."""
    avail = tuple(bool(a) for a in available)
    return [s for s in all_subsets(len(avail)) if all(a or not b for a, b in zip(avail, s))]


def subset_name(subset: Sequence[bool], modalities: Sequence[str]) -> str:
    """``(True, False, True)`` -> ``"us+cet1"`` (modality order)."""
    return "+".join(m for m, b in zip(modalities, subset) if b)


def parse_subset(name: str, modalities: Sequence[str]) -> Subset:
    """``"us+t2"`` -> mask; unknown names and empty subsets are refused with a clear message."""
    parts = [p.strip() for p in name.replace(",", "+").split("+") if p.strip()]
    if not parts:
        raise ValueError(f"empty subset {name!r}: give at least one of {list(modalities)}")
    unknown = [p for p in parts if p not in modalities]
    if unknown:
        raise ValueError(f"unknown modality {unknown} in subset {name!r}; known: {list(modalities)}")
    return tuple(m in parts for m in modalities)


class SubsetPolicy:
    """p_alpha(r' | r) for one of the policies of DESIGN §1.

    * ``paper``: probability 1/3 each for r' = r, each named group alone (e.g. the ultrasound), and
      a uniform non-empty subset of the remaining available modalities (the MR); groups that are
      unavailable for a subject are dropped and the rest renormalized.
    * ``uniform``: uniform over S_r.
    * ``size-uniform``: uniform subset size, then a uniform subset of that size (U-HVED).
    * ``weights``: explicit weights per subset name (``"us+t2": 2.0``), restricted to S_r and
      renormalized; uniform over S_r when none of the weighted subsets is available.
    """

    POLICIES = ("paper", "uniform", "size-uniform", "weights")

    def __init__(
        self,
        modalities: Sequence[str],
        policy: str = "paper",
        groups: Optional[Mapping[str, Sequence[str]]] = None,
        weights: Optional[Mapping[str, float]] = None,
    ):
        if policy not in self.POLICIES:
            raise ValueError(f"unknown subset policy {policy!r}; choose one of {self.POLICIES}")
        self.modalities = list(modalities)
        self.policy = policy
        self.groups: list[Subset] = []
        for gname, members in (groups or {}).items():
            present = [m for m in members if m in self.modalities]
            if present:  # a group naming modalities this model does not have is ignored
                self.groups.append(parse_subset("+".join(present), self.modalities))
        self.weights: dict[Subset, float] = {}
        for sname, w in (weights or {}).items():
            if w < 0:
                raise ValueError(f"subset weight for {sname!r} must be >= 0, got {w}")
            self.weights[parse_subset(sname, self.modalities)] = float(w)
        if policy == "weights" and not self.weights:
            raise ValueError("subset policy 'weights' needs train.subset_weights")

    def distribution(self, available: Sequence[bool]) -> dict[Subset, float]:
        """The exact mixture weights alpha^(r) over S_r (they sum to one)."""
        avail = tuple(bool(a) for a in available)
        candidates = subsets_of(avail)
        if not candidates:
            raise ValueError("a subject with no available modality has no input subset")
        probs: dict[Subset, float] = {}

        def add(s: Subset, p: float) -> None:
            probs[s] = probs.get(s, 0.0) + p

        if self.policy == "uniform":
            for s in candidates:
                add(s, 1.0 / len(candidates))
        elif self.policy == "size-uniform":
            sizes = sorted({sum(s) for s in candidates})
            for k in sizes:
                same = [s for s in candidates if sum(s) == k]
                for s in same:
                    add(s, 1.0 / len(sizes) / len(same))
        elif self.policy == "weights":
            total = sum(self.weights.get(s, 0.0) for s in candidates)
            if total <= 0:
                for s in candidates:
                    add(s, 1.0 / len(candidates))
            else:
                for s in candidates:
                    if self.weights.get(s, 0.0) > 0:
                        add(s, self.weights[s] / total)
        else:  # paper
            options: list[list[Subset]] = [[avail]]
            grouped = [False] * len(avail)
            for g in self.groups:
                inter = tuple(a and b for a, b in zip(avail, g))
                grouped = [x or y for x, y in zip(grouped, g)]
                if any(inter):
                    options.append([inter])
            rest = tuple(a and not gb for a, gb in zip(avail, grouped))
            if any(rest):
                options.append(subsets_of(rest))
            for opt in options:
                for s in opt:
                    add(s, 1.0 / len(options) / len(opt))
        return probs

    def sample(self, available: Sequence[bool], generator: Optional[torch.Generator] = None) -> Subset:
        dist = self.distribution(available)
        keys = list(dist)
        p = torch.tensor([dist[k] for k in keys], dtype=torch.float64)
        idx = int(torch.multinomial(p, 1, generator=generator).item())
        return keys[idx]

    def sample_masks(
        self, available: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Draw one r' per row of ``available`` (B, M) bool -> (B, M) bool."""
        rows = [self.sample(row.tolist(), generator) for row in available.cpu()]
        return torch.tensor(rows, dtype=torch.bool, device=available.device)
