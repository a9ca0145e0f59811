"""Reading a cohort laid out as ``<root>/<subject>/<subject>-<suffix>.nii.gz`` (BraTS style, DESIGN §3).

``<root>`` may also be a single case folder. The suffixes ``seg``, ``mask`` and ``wm`` name the
optional maps; every other suffix is a modality, lower-cased and mapped through the aliases (file
suffix -> modality name). Files that match no modality and empty subject folders become warnings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from mmhvae.data.subject import CohortListing, MAPS, hashed_split, known_modalities, make_subject, order_modalities
from mmhvae.errors import CohortError

_NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def case_files(folder: Path, subject: Optional[str] = None) -> dict[str, Path]:
    """Raw suffix -> path for the files ``<folder>/<subject>-<suffix>.nii[.gz]`` (subject = folder name)."""
    subject = subject or folder.name
    out: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if not file.is_file() or not _NIFTI_SUFFIX.search(file.name):
            continue
        stem = _NIFTI_SUFFIX.sub("", file.name)
        if stem.lower().startswith(subject.lower() + "-") or stem.lower().startswith(subject.lower() + "_"):
            out[stem[len(subject) + 1:].lower()] = file
    return out


def _stray_files(folder: Path, matched: dict[str, Path]) -> list[Path]:
    """NIfTI files in ``folder`` that do not follow ``<subject>-<suffix>.nii[.gz]``."""
    taken = set(matched.values())
    return [f for f in sorted(folder.iterdir())
            if f.is_file() and _NIFTI_SUFFIX.search(f.name) and f not in taken and not f.name.startswith(".")]


def read_case_folders(
    root: Path, wanted: Optional[list[str]], aliases: dict[str, str], problems: Optional[list[str]] = None
) -> CohortListing:
    """The cases under ``root`` (or ``root`` itself as one case); with a ``problems`` list, problems of
    single subjects are appended to it instead of raised."""
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    cases = [d for d in folders if case_files(d)]
    if not cases:
        if case_files(root):
            cases, folders = [root], [root]  # a single case folder
        else:
            raise CohortError(
                f"{root}: no manifest.csv and no files named <subject>/<subject>-<modality>.nii.gz; "
                "write a CSV manifest or rename the files (e.g. sub01/sub01-t2.nii.gz)"
            )
    notes = _other_folder_notes([f for f in folders if f not in cases])
    known = known_modalities(aliases)
    ignored: set[str] = set()
    per_case = [(case, _case_modalities(case, wanted, aliases, known, ignored, notes, problems)) for case in cases]
    found = {k for _, files in per_case for k in files if k not in MAPS}
    modalities = wanted if wanted is not None else order_modalities(found)
    subjects = []
    for case, files in per_case:
        if not any(k not in MAPS for k in files):
            empty = (f"{case}: subject {case.name!r} has no image of the modalities {modalities} "
                     f"(found suffixes {sorted(case_files(case))}); map them with aliases (e.g. --alias t2w=t2)")
            if problems is None:
                raise CohortError(empty)
            problems.append(empty)
            continue
        subjects.append(make_subject(case.name, files, hashed_split(case.name), str(case)))
    return CohortListing(modalities=list(modalities), subjects=subjects, source=root, ignored=sorted(ignored),
                         warnings=notes)


def _other_folder_notes(folders: list[Path]) -> list[str]:
    """A warning for each folder that holds no case: misnamed NIfTI files, or none at all."""
    notes: list[str] = []
    for folder in folders:
        niftis = [f.name for f in sorted(folder.iterdir()) if f.is_file() and _NIFTI_SUFFIX.search(f.name)]
        if niftis:
            notes.append(
                f"{folder}: no file is named {folder.name}-<modality>.nii.gz (found {niftis[:3]}); "
                f"rename them, e.g. {folder.name}/{folder.name}-t2.nii.gz"
            )
        else:
            notes.append(f"{folder}: empty subject folder (no NIfTI file); remove it or add the subject's images")
    return notes


def _case_modalities(
    case: Path, wanted: Optional[list[str]], aliases: dict[str, str], known: set[str], ignored: set[str],
    notes: list[str], problems: Optional[list[str]],
) -> dict[str, Path]:
    """Modality or map name -> file of one case folder; adds ignored suffixes and warnings as it goes."""
    files: dict[str, Path] = {}
    matched = case_files(case)
    for stray in _stray_files(case, matched):
        notes.append(
            f"{stray}: does not follow {case.name}-<modality>.nii.gz and matches no modality; rename it"
        )
    for suffix, file in matched.items():
        name = aliases.get(suffix, suffix)
        if name not in MAPS and wanted is not None and name not in wanted:
            ignored.add(suffix)
            if name not in known:
                notes.append(
                    f"{file}: suffix {suffix!r} matches no modality of {wanted}; rename the file or map it "
                    f"with an alias (--alias {suffix}=NAME)"
                )
            continue
        if name not in MAPS and wanted is None and name not in known:
            notes.append(
                f"{file}: suffix {suffix!r} is not a known modality name ({sorted(known)}); it is read as a "
                f"modality of its own: rename the file or map it with --alias {suffix}=NAME if it is a typo"
            )
        if name in files:
            clash = (f"{case}: files {files[name].name} and {file.name} both map to {name!r}; "
                     "remove one or change the aliases")
            if problems is None:
                raise CohortError(clash)
            problems.append(clash)
            continue
        files[name] = file
    return files
