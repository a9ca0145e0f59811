"""The run logger shared by every trainer: ``metrics.csv`` (step, key, value) + TensorBoard scalars."""

from __future__ import annotations

import csv
from pathlib import Path

from mmhvae import checkpoint as ckpt


class RunLogger:
    """CSV + TensorBoard scalars, written by the main process only.

    ``resume_step``: rows and events a killed run logged after the checkpoint it resumes from are
    dropped, so every (step, key) is logged once.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.csv"
        self.writer = None
        if enabled:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            ckpt.truncate_log(self.path, resume_step)
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops the events a killed run logged after its last checkpoint.
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step or None)
            except ImportError:  # tensorboard is optional at run time; CSV is always written
                self.writer = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["step", "key", "value"])
            for k, v in values.items():
                w.writerow([step, k, f"{v:.6g}"])
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of scalar ``key`` in a run's ``metrics.csv``, by step (empty if absent).

    A step logged twice (a resumed run repeats the steps after its last checkpoint) keeps its last row.
    """
    path = Path(run_dir) / "metrics.csv"
    points: dict[int, float] = {}
    if path.is_file():
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("key") == key:
                    points[int(row["step"])] = float(row["value"])
    return sorted(points.items())
