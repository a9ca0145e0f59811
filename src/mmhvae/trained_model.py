"""A trained generator together with what it was trained with (DESIGN §7 Python API).

:func:`mmhvae.infer.load_model` returns a :class:`TrainedModel`: the network, the resolved
experiment config of its run (data preprocessing, the training frame, the evaluation temperature),
the step it was saved at and the file it came from. Nothing is attached to the ``nn.Module``
itself; code that needs the config reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from mmhvae.config import ExperimentConfig


@dataclass
class TrainedModel:
    """``network`` (a generator of :mod:`mmhvae.models`), its run's ``config``, ``step`` and ``path``."""

    network: nn.Module
    config: ExperimentConfig
    step: int = 0
    path: Optional[Path] = None

    @classmethod
    def untrained(cls, network: nn.Module, config: Optional[ExperimentConfig] = None) -> "TrainedModel":
        """Wrap a freshly built network (e.g. ``MMHVAE.from_config(cfg)``): default data and evaluation
        settings around its model config (the input's own spacing as the frame)."""
        if config is None:
            config = ExperimentConfig(model=network.cfg)
        return cls(network, config)

    @property
    def cfg(self):
        """The network's :class:`~mmhvae.config.ModelConfig`."""
        return self.network.cfg

    @property
    def modalities(self) -> list[str]:
        return list(self.network.cfg.modalities)

    @property
    def frame(self):
        """The :class:`~mmhvae.data.frame.TrainingFrame` it was trained in, or None when the run
        recorded no spacing (then inputs keep their own spacing)."""
        from mmhvae.data.frame import frame_of

        if not self.config.data.spacing:
            return None
        return frame_of(self.config.data, self.network.cfg.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def synthesize(
        self, images: Mapping[str, Tensor], temperature: Optional[float] = None, targets: Optional[Sequence[str]] = None,
    ) -> dict[str, Tensor]:
        """``network.synthesize`` at the run's ``eval.temperature`` unless ``temperature`` is given."""
        tau = self.config.eval.temperature if temperature is None else temperature
        return self.network.synthesize(images, temperature=tau, targets=targets)

    def to(self, device) -> "TrainedModel":
        self.network.to(device)
        return self

    def eval(self) -> "TrainedModel":
        self.network.eval()
        return self


def as_trained(model) -> TrainedModel:
    """A :class:`TrainedModel` from a TrainedModel or a bare network (wrapped with default settings)."""
    if isinstance(model, TrainedModel):
        return model
    if isinstance(model, nn.Module):
        return TrainedModel.untrained(model)
    raise TypeError(f"expected a TrainedModel or a generator nn.Module, got {type(model).__name__}")
