"""Integrity check of a whole cohort: every problem at once (``mmhvae cohort check``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mmhvae.data.nifti import NiftiError, read_labels, read_volume
from mmhvae.data.subject import MAPS, MASK, Subject
from mmhvae.data.subject_volumes import check_grid
from mmhvae.errors import CohortError


@dataclass
class CohortCheck:
    """Every problem found in a cohort, one line each; ``ok`` when there is none."""

    source: Path
    subjects: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        head = f"{self.source}: {self.subjects} subjects, {self.files} files read"
        if self.ok:
            return head + ": no problem found"
        lines = [f"{head}: {len(self.problems)} problem(s)"]
        return "\n".join(lines + [f"  {p}" for p in self.problems])


def check_cohort(
    source: str | Path,
    modalities: Optional[list[str]] = None,
    aliases: Optional[dict[str, str]] = None,
    affine_tolerance: float = 1e-3,
) -> CohortCheck:
    """Read every file of a cohort and report every problem at once (like nnU-Net's integrity check).

    Finds: manifest rows naming missing files or with extra cells, files matching no modality, empty
    subject folders, unreadable or truncated files, 4D images, NaN/Inf voxels, images with no signal
    (every voxel equal), and images or maps whose shape or affine differs from the subject's first
    image. Nothing is raised for a problem of one subject; a cohort that cannot be read at all (no
    subjects, bad header) is one problem.
    """
    from mmhvae.data.cohort import Cohort  # the cohort module re-exports this one

    check = CohortCheck(source=Path(source))
    try:
        cohort = Cohort.load(source, modalities=modalities, aliases=aliases, problems=check.problems)
    except CohortError as exc:
        check.problems.append(str(exc))
        return check
    check.source = cohort.source
    check.subjects = len(cohort.subjects)
    for subject in cohort.subjects:
        check.problems.extend(_check_subject(subject, affine_tolerance, check))
    return check


def _check_subject(subject: Subject, tolerance: float, check: CohortCheck) -> list[str]:
    problems: list[str] = []
    ref: Optional[tuple] = None
    for key, path in subject.files().items():
        check.files += 1
        reader = read_volume if key not in MAPS else read_labels
        try:
            data, affine, _ = reader(path)
        except NiftiError as exc:
            problems.append(f"subject {subject.name!r}, {key}: {exc}")
            continue
        if key not in MAPS and data.size and float(data.min()) == float(data.max()):
            problems.append(f"subject {subject.name!r}, {key}: {path} has no signal (every voxel is {data.flat[0]:g})")
        if key == MASK and not data.any():
            problems.append(f"subject {subject.name!r}, mask: {path} is empty (no brain voxel)")
        if ref is None:
            ref = (key, path, data.shape, affine)
            continue
        try:
            check_grid(subject.name, key, path, data.shape, affine, ref, tolerance)
        except CohortError as exc:
            problems.append(str(exc))
    return problems
