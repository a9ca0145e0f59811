"""One training process per run folder: an exclusive lock on ``RUN/.train.lock``.

Two trainers writing the same run (the same command started twice, or the workers of a comparison
whose parent was killed and that go on training while a rerun resumes the same folders) interleave
their rows in ``metrics.csv`` and overwrite each other's checkpoints. The lock is an advisory
``flock`` held for the whole training: the operating system drops it when the process ends, however
it ends, so a killed run never leaves a stale lock. The file records the holder's pid for the error
message. Where ``fcntl`` does not exist (Windows) the lock is not taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from mmhvae.errors import MmhvaeError

LOCK_NAME = ".train.lock"


class RunInUseError(MmhvaeError, RuntimeError):
    """The run folder is being trained by another process."""


class RunLock:
    """``with RunLock(run_dir):`` trains alone in ``run_dir`` or raises :class:`RunInUseError`."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUseError(
                f"{self.path.parent} is being trained by another process (pid {holder}); wait for it to end "
                f"or stop it before resuming this run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
