"""Safe outputs: checked before any work, written all-or-nothing, never over an input.

A command that writes a set of files into a folder (``synthesize --out``, ``export-nnunet``,
``make-cohort``, evaluation reports) uses :class:`OutputFolder`::

    with OutputFolder(args.out, overwrite=args.overwrite, protect=input_paths) as out:
        out.expect(["t2.nii.gz", "us.nii.gz"])      # refuse existing outputs / inputs, before the work
        ...write every file under out.staging...
    # only here do the files appear in args.out, all of them

On entry the folder's location is checked: it must not be a file, and a staging folder
``.<name>.partial-<pid>-<token>`` is created beside it (same file system, so the final moves are
renames), which is the writability check. When the block succeeds every staged file is moved in;
when it fails (any exception, a full disk, Ctrl-C) the staging folder is removed and the target is
untouched. Staging folders left by a killed process are removed the next time the same target is
written. An existing output file needs ``overwrite=True``; a file that is one of the inputs
(``protect``) is never overwritten, with or without it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from mmhvae.errors import OutputError

_PARTIAL = ".partial-"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove ``.<name>.partial-<pid>-*`` folders beside ``target`` whose process is gone."""
    target = Path(target)
    removed = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    prefix = f".{target.name}{_PARTIAL}"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix) or not entry.is_dir():
            continue
        pid_text = entry.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class OutputFolder:
    """A folder of outputs written all-or-nothing (see the module docstring).

    Args:
        target: the output folder (created if needed; may already exist).
        overwrite: replace existing files of the same names (never a protected input).
        protect: input files that must never be overwritten.
        replace: on success, the target folder as a whole is replaced by the staged one (for folders
            whose every file the command writes, e.g. an nnU-Net dataset); needs ``overwrite`` when
            the target already holds files.
        flag: how the command names this folder in messages (``--out``).
    """

    def __init__(
        self,
        target: str | Path,
        *,
        overwrite: bool = False,
        protect: Iterable[str | Path] = (),
        replace: bool = False,
        flag: str = "--out",
    ):
        self.target = Path(target).expanduser()
        self.overwrite = overwrite
        self.protect = [Path(p).expanduser() for p in protect]
        self.replace = replace
        self.flag = flag
        self._root: Optional[Path] = None
        self.staging: Optional[Path] = None
        self.committed: list[Path] = []

    # --- checks ------------------------------------------------------------------------------------
    def _check_location(self) -> None:
        t = self.target
        if t.exists() and not t.is_dir():
            raise OutputError(f"{self.flag} {t}: is a file, expected a folder; choose a folder path")
        ancestor = next((a for a in t.parents if a.exists()), None)
        if ancestor is not None and not ancestor.is_dir():
            raise OutputError(f"{self.flag} {t}: {ancestor} is a file, not a folder; choose another {self.flag}")
        if self.replace and any(p.exists() and _same_file(p, t) for p in self.protect):
            raise OutputError(f"{self.flag} {t}: is an input folder; choose another {self.flag}")

    def expect(self, names: Iterable[str | Path]) -> None:
        """Refuse, before any work, output names that would overwrite an input or an existing file."""
        names = [Path(n) for n in names]
        for name in names:
            self._check_destination(self.target / name)
        if self.replace and not self.overwrite and self.target.is_dir() and any(self.target.iterdir()):
            raise OutputError(
                f"{self.flag} {self.target}: already holds files; pass --overwrite to replace the folder "
                f"or choose another {self.flag}"
            )

    def _check_destination(self, dest: Path) -> None:
        for p in self.protect:
            if (p.exists() and dest.exists() and _same_file(p, dest)) or dest.resolve() == p.resolve():
                raise OutputError(
                    f"{dest}: is one of the inputs ({p}); refusing to overwrite it (with or without "
                    f"--overwrite): choose another {self.flag}"
                )
        if dest.is_dir():
            raise OutputError(f"{dest}: a folder of that name exists where an output file goes; remove it")
        if dest.exists() and not self.overwrite:
            raise OutputError(
                f"{dest}: already exists; pass --overwrite to replace it or choose another {self.flag}"
            )

    # --- staging -----------------------------------------------------------------------------------
    def open(self) -> Path:
        """Check the location, create the staging folder (the writability check); return it."""
        self._check_location()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.target)
        token = secrets.token_hex(4)
        self._root = self.target.parent / f".{self.target.name}{_PARTIAL}{os.getpid()}-{token}"
        self._root.mkdir()
        self.staging = self._root / self.target.name
        self.staging.mkdir()
        if not os.access(self.staging, os.W_OK | os.X_OK):
            self.discard()
            raise OutputError(f"{self.flag} {self.target}: the folder is not writable; choose another {self.flag}")
        return self.staging

    def commit(self) -> list[Path]:
        """Move every staged file into the target; returns the final paths."""
        assert self.staging is not None, "open() first"
        files = sorted(p.relative_to(self.staging) for p in self.staging.rglob("*") if not p.is_dir())
        for rel in files:
            if not self.replace:
                self._check_destination(self.target / rel)
        if self.replace and self.target.is_dir() and any(self.target.iterdir()):
            if not self.overwrite:
                raise OutputError(f"{self.flag} {self.target}: already holds files; pass --overwrite")
            backup = self._root / ".previous"
            os.rename(self.target, backup)
            try:
                os.rename(self.staging, self.target)
            except BaseException:
                os.rename(backup, self.target)  # the previous folder is put back, never lost
                raise
        elif not self.target.exists() or (
            self.target.is_dir() and not self.target.is_symlink() and not any(self.target.iterdir())
        ):
            if self.target.exists():
                self.target.rmdir()
            os.rename(self.staging, self.target)  # one rename: the whole set appears at once
        else:
            for rel in files:
                dest = self.target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / rel, dest)
        self.committed = [self.target / rel for rel in files]
        self.discard()
        return self.committed

    def discard(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> "OutputFolder":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.commit()
            finally:
                self.discard()
        else:
            self.discard()
        return False


def check_writable(
    target: str | Path, *, overwrite: bool = False, names: Iterable[str] = (), replace: bool = False,
    protect: Iterable[str | Path] = (), flag: str = "--out",
) -> None:
    """Before a long job: refuse an output location that is unwritable or holds what would be replaced."""
    folder = OutputFolder(target, overwrite=overwrite, replace=replace, protect=protect, flag=flag)
    folder.open()
    try:
        folder.expect(names)
    finally:
        folder.discard()


def write_nifti_set(
    folder: str | Path,
    images: Mapping[str, object],
    *,
    overwrite: bool = False,
    protect: Sequence[str | Path] = (),
    flag: str = "--out",
) -> list[Path]:
    """Write ``{file name: nibabel image}`` into ``folder`` all-or-nothing (see :class:`OutputFolder`).

    The images are written as float32 (integer images keep their type) with their own affine and
    header; returns the final paths.
    """
    import numpy as np

    from mmhvae.data.nifti import write_volume

    with OutputFolder(folder, overwrite=overwrite, protect=protect, flag=flag) as out:
        out.expect(images)
        for name, img in images.items():
            data = np.asarray(img.dataobj)
            dtype = data.dtype if np.issubdtype(data.dtype, np.integer) else np.float32
            write_volume(out.staging / name, data, img.affine, img.header, dtype=dtype)
    return out.committed


__all__ = ["OutputFolder", "check_writable", "write_nifti_set", "remove_stale_staging"]
