"""Downstream tasks on synthesized images (DESIGN §6, paper §4.4.3-4.4.4, Tables 5-6).

* :mod:`~mmhvae.downstream.registration` — rigid MR-to-ultrasound registration, directly or via a
  synthesized MR, and its target registration error under simulated displacements;
* :mod:`~mmhvae.downstream.nnunet_export` — observed + synthesized channels in nnU-Net v2 layout;
* :mod:`~mmhvae.downstream.segmentation` — a CPU-sized segmentation experiment (train on synthetic
  ultrasound, test on acquired ultrasound).

Every task takes the synthesis model as an injected callable, a :data:`Synthesizer`, so it can be
tested with a trivial function and run with any trained method (:func:`model_synthesizer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import nibabel as nib

#: ``synthesize(inputs, targets) -> images``: ``inputs`` maps observed modality names to volumes on
#: one grid; the result maps every name in ``targets`` to a volume with the inputs' shape and affine.
Synthesizer = Callable[[Mapping[str, nib.Nifti1Image], Sequence[str]], Mapping[str, nib.Nifti1Image]]


def model_synthesizer(
    checkpoint: str | Path,
    *,
    temperature: Optional[float] = None,
    samples: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "auto",
) -> tuple[Synthesizer, list[str]]:
    """A :data:`Synthesizer` backed by a trained checkpoint, and the model's modality names.

    ``temperature`` None takes the checkpoint's ``eval.temperature``; 0 gives the posterior-mean
    (deterministic) synthesis; the paper samples at 0.5. ``device`` "auto" picks CUDA when present.
    """
    import torch

    from mmhvae.infer import load_model, synthesize_volume

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found (give a run folder or a .safetensors file)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(checkpoint, device=device)
    modalities = list(model.config.model.modalities)
    if temperature is None:
        temperature = float(model.config.eval.temperature)

    def synthesize(inputs: Mapping[str, nib.Nifti1Image], targets: Sequence[str]) -> dict[str, nib.Nifti1Image]:
        return synthesize_volume(
            model, dict(inputs), targets=list(targets), temperature=temperature,
            samples=samples, batch_size=batch_size, seed=seed,
        )

    return synthesize, modalities


__all__ = ["Synthesizer", "model_synthesizer"]
