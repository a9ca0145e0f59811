"""The project's exceptions: one base class, one subclass per kind of thing a user can get wrong.

Every failure a user can cause (a bad file, a bad setting, a checkpoint that does not fit, a machine
without CUDA, an output that would overwrite something) raises a subclass of :class:`MmhvaeError`
whose message names the file or setting and says what to do. ``mmhvae`` prints such an error as one
line and exits non-zero; anything else is a bug and keeps its traceback (see :mod:`mmhvae.cli`).

    MmhvaeError
    ├── InputDataError         cohort, NIfTI file, harmonization, dataset contents
    │   ├── CohortError            (mmhvae.data.cohort)
    │   └── NiftiError             (mmhvae.data.nifti)
    ├── CheckpointError        missing, corrupt, foreign, non-finite or ill-fitting weights
    │   └── CheckpointNotFoundError
    ├── ConfigError            a configuration value, file or command-line option
    │   └── UserError              (mmhvae.cli: invalid combination of command-line options)
    ├── OutputError            an output that exists, would overwrite an input, or cannot be written
    └── EnvironmentSetupError  the machine lacks something: CUDA, a package, a device

The classes also derive from :class:`ValueError` (``EnvironmentSetupError`` from
:class:`RuntimeError`) so that code written against the earlier ``ValueError`` contract still works.
"""

from __future__ import annotations

import errno


class MmhvaeError(Exception):
    """Base of every error a user can cause; the message names the file or setting and the fix."""


class InputDataError(MmhvaeError, ValueError):
    """Input data (a cohort, a NIfTI file, its contents) is missing or invalid."""


class CohortError(InputDataError):
    """A cohort, subject or file is invalid; the message names the subject, the file and the problem."""


class NiftiError(InputDataError):
    """A NIfTI file is missing, unreadable, of the wrong dimensionality or holds non-finite values."""


class CheckpointError(MmhvaeError, ValueError):
    """A checkpoint is missing, corrupt, foreign, non-finite or does not fit its config; names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path (also a :class:`FileNotFoundError`, as before)."""


class ConfigError(MmhvaeError, ValueError):
    """A configuration value or file is invalid; the message names the key and the problem."""


class UserError(ConfigError):
    """Command-line options that are invalid together (or out of range); printed without a traceback."""


class OutputError(MmhvaeError, ValueError):
    """An output would overwrite an input or an existing file, or its folder cannot be written."""


class EnvironmentSetupError(MmhvaeError, RuntimeError):
    """The machine lacks what the command needs (CUDA, a GPU, a package)."""


# errno -> what to do about it, for operating-system errors reported by the CLI.
_OS_FIXES = {
    errno.EACCES: "check the permissions or choose another location",
    errno.EPERM: "check the permissions or choose another location",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write elsewhere",
    errno.EEXIST: "remove it, pass --overwrite where the command has it, or choose another name",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer workers",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what happened, to which file, and what to do."""
    what = exc.strerror or str(exc) or type(exc).__name__
    files = [f for f in (exc.filename, getattr(exc, "filename2", None)) if f]
    where = f"{' -> '.join(str(f) for f in files)}: " if files else ""
    fix = _OS_FIXES.get(exc.errno)
    return f"{where}{what}" + (f" ({fix})" if fix else "")


def cuda_unavailable_message(requested: str) -> str:
    """The message for ``--device cuda`` on a machine where torch sees no CUDA device."""
    import torch

    why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
    return f"device {requested!r} requested but {why}; use --device cpu (or auto)"


def check_device(name: str):
    """``auto``, ``cpu``, ``cuda``, ``cuda:K``, ``mps`` -> a :class:`torch.device` that exists here.

    Raises :class:`EnvironmentSetupError` (one line) instead of torch's assertion deep in a forward
    pass when the device is not available.
    """
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:K") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentSetupError(cuda_unavailable_message(str(name)))
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EnvironmentSetupError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EnvironmentSetupError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return device


__all__ = [
    "MmhvaeError", "InputDataError", "CohortError", "NiftiError", "CheckpointError", "CheckpointNotFoundError",
    "ConfigError",
    "UserError", "OutputError", "EnvironmentSetupError", "describe_os_error", "check_device",
    "cuda_unavailable_message",
]
