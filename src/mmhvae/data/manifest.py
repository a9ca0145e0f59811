"""Reading a cohort's CSV manifest (DESIGN §3).

A ``subject`` column, one column per modality holding a NIfTI path or nothing (missing), and
optional ``seg`` (tumour label map), ``mask`` (brain mask), ``wm`` (white-matter mask) and ``split``
(``train``/``val``/``test``) columns. Relative paths are relative to the CSV's folder. Column names
are lower-cased and mapped through the aliases (column -> modality name).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from mmhvae.data.subject import (
    MAPS,
    RESERVED,
    CohortListing,
    Subject,
    hashed_split,
    known_modalities,
    make_subject,
    normalize_split,
    order_modalities,
)
from mmhvae.errors import CohortError


def read_manifest(
    path: Path, wanted: Optional[list[str]], aliases: dict[str, str], problems: Optional[list[str]] = None
) -> CohortListing:
    """The manifest at ``path``; with a ``problems`` list, bad rows are appended to it instead of raised."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CohortError(f"{path}: cannot read the manifest ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise CohortError(f"{path}: empty manifest (expected a header row with a 'subject' column)")
    header = [c.strip().lower() for c in rows[0]]
    if "subject" not in header:
        raise CohortError(f"{path}: no 'subject' column in the header {rows[0]}")
    columns, ignored, ignored_columns = _header_columns(path, rows[0], header, wanted, aliases)
    found = [n for n in columns.values() if n not in MAPS]
    modalities = wanted if wanted is not None else order_modalities(set(found))
    if not modalities:
        raise CohortError(f"{path}: no modality columns in the header {rows[0]}")
    split_col = header.index("split") if "split" in header else None
    subject_col = header.index("subject")

    subjects: list[Subject] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for line, row in enumerate(rows[1:], start=2):
        try:
            subject = _csv_row(path, line, row, header, columns, subject_col, split_col, ignored_columns, seen)
        except CohortError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
            continue
        if isinstance(subject, str):
            skipped.append(subject)  # has images, but only of modalities this run does not use
        else:
            subjects.append(subject)
    return CohortListing(modalities=list(modalities), subjects=subjects, source=path, ignored=ignored, skipped=skipped)


def _header_columns(
    path: Path, raw: list[str], header: list[str], wanted: Optional[list[str]], aliases: dict[str, str]
) -> tuple[dict[int, str], list[str], list[int]]:
    """Column index -> modality or map name, the ignored column names and their indices."""
    columns: dict[int, str] = {}  # column index -> modality or map name
    ignored: list[str] = []
    ignored_columns: list[int] = []
    for i, col in enumerate(header):
        if not col or col in ("subject", "split"):
            continue
        name = aliases.get(col, col)
        if name in MAPS:
            columns[i] = name
            continue
        if wanted is not None and name not in wanted:
            if name in known_modalities(aliases):
                ignored.append(col)  # a modality this run does not use (e.g. a model without FLAIR)
                ignored_columns.append(i)
                continue
            via = f" (alias of {name!r})" if name != col else ""
            raise CohortError(
                f"{path}: unknown modality column {raw[i]!r}{via}; expected modalities {wanted} or one "
                f"of {list(RESERVED)}; rename the column or map it with an alias (e.g. --alias {col}=t2)"
            )
        if name in columns.values():
            raise CohortError(f"{path}: two columns map to {name!r}; check the header and the aliases")
        columns[i] = name
    return columns, ignored, ignored_columns


def _csv_row(
    path: Path, line: int, row: list[str], header: list[str], columns: dict[int, str], subject_col: int,
    split_col: Optional[int], ignored_columns: list[int], seen: set[str],
) -> "Subject | str":
    """One manifest row -> its :class:`Subject`, or its name when it only has ignored modalities."""
    where = f"{path}, line {line}"
    extra = [c for c in row[len(header):] if c.strip()]
    if extra:
        raise CohortError(
            f"{where}: {len(row)} cells but the header has {len(header)} columns (extra {extra[:3]}); "
            "a path with a comma must be quoted, or a column header is missing"
        )
    row = row + [""] * (len(header) - len(row))
    name = row[subject_col].strip()
    if not name:
        raise CohortError(f"{where}: empty subject name")
    if name in seen:
        raise CohortError(f"{where}: subject {name!r} appears twice")
    seen.add(name)
    files: dict[str, Path] = {}
    for i, key in columns.items():
        value = row[i].strip()
        if value:
            file = Path(value).expanduser()
            file = file if file.is_absolute() else path.parent / file
            if not file.is_file():
                raise CohortError(f"{where}: subject {name!r}, {key}: file not found: {file}")
            files[key] = file
    split_value = row[split_col].strip() if split_col is not None else ""
    split = normalize_split(split_value, f"{where}, subject {name!r}") if split_value else hashed_split(name)
    if not any(k not in MAPS for k in files) and any(row[i].strip() for i in ignored_columns):
        return name
    return make_subject(name, files, split, where)

