"""Checkpoints: atomic writes, loading that never executes code.

A run folder holds::

    config.yaml                      the resolved config (ExperimentConfig, or UHVEDConfig for U-HVED)
    checkpoints/last.safetensors     generator weights + metadata (format, step, config) - for inference
    checkpoints/best.safetensors     the same, at the best validation score
    checkpoints/last_state.pt        full training state (optimizers, schedulers, discriminators,
                                     GAN memories, RNG states, history), loaded with weights_only=True

Generator files are safetensors (no pickle); the training state is a ``torch.save`` dict of tensors
and plain Python values, read back with ``torch.load(..., weights_only=True)``. The metadata's
``family`` says which config the file embeds: ``mmhvae`` (every 2D generator; files without the key)
or ``uhved`` (U-HVED / U-HeMIS, :mod:`mmhvae.models.uhved`). Both families use this one writer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from mmhvae.atomic import atomic_write
from mmhvae.config import ConfigError, ExperimentConfig

FORMAT = "mmhvae-generator"
# 2: the image heads' GroupNorm before the output convolution became optional (model.head_output_norm,
# off by default); a format-1 file was written when every head had it, and loads with it on.
FORMAT_VERSION = "2"


from mmhvae.errors import CheckpointError, CheckpointNotFoundError  # noqa: E402,F401 - the project errors


FAMILIES = {"mmhvae": "an mmhvae generator", "uhved": "a U-HVED"}


def _config_class(family: str) -> type:
    """The config dataclass a checkpoint of ``family`` embeds (any class with ``from_dict``)."""
    if family == "uhved":
        from mmhvae.models.uhved import UHVEDConfig

        return UHVEDConfig
    return ExperimentConfig


def save_generator(path: Path, model: nn.Module, config: Any, step: int, **extra: Any) -> None:
    """Weights + metadata (format, family, step, ``config.to_yaml()``), atomically; ``config`` is an
    :class:`ExperimentConfig` or any family config with ``to_yaml`` and a ``family`` attribute."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": getattr(config, "family", "mmhvae"),
        "step": str(step),
        "config": config.to_yaml(),
        "extra": json.dumps(extra, default=str),
    }
    atomic_write(Path(path), lambda p: save_file(state, str(p), metadata=metadata))


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run folder, its ``checkpoints/`` folder, or a ``.safetensors`` file -> the generator file."""
    path = Path(path)
    if path.is_dir():
        for cand in (path / "checkpoints" / f"{which}.safetensors", path / f"{which}.safetensors",
                     path / "checkpoints" / "last.safetensors", path / "last.safetensors"):
            if cand.is_file():
                return cand
        raise CheckpointError(f"{path}: no {which}.safetensors or last.safetensors checkpoint in this folder")
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: checkpoint not found")
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors checkpoint file (``step``, ``config``, ...), without its weights."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None


def read_generator(path: str | Path, family: str = "mmhvae") -> tuple[dict[str, torch.Tensor], Any, dict[str, str]]:
    """Weights, resolved config and metadata of a generator checkpoint of ``family``, with clear errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = resolve_checkpoint(path)
    metadata = read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    found = metadata.get("family", "mmhvae") if metadata.get("format") == FORMAT else None
    if found != family:
        of = f"; it holds {FAMILIES[found]} model" if found in FAMILIES else ""
        raise CheckpointError(
            f"{path}: not {FAMILIES[family]} checkpoint (format={metadata.get('format')!r}{of}); "
            f"expected a file written by `mmhvae train`{' --method uhved' if family == 'uhved' else ''}"
        )
    try:
        import yaml

        config = _config_class(family).from_dict(_upgrade_embedded(yaml.safe_load(metadata["config"]), metadata))
    except (KeyError, ConfigError, Exception) as exc:  # noqa: BLE001 - report any config problem by file
        raise CheckpointError(f"{path}: the embedded config is invalid ({exc})") from None
    return state, config, metadata


def _upgrade_embedded(data: Any, metadata: dict[str, str]) -> Any:
    """The embedded config of a file of an earlier format version, as that file's network was built."""
    if metadata.get("format_version", "1") == "1" and isinstance(data, dict) and isinstance(data.get("model"), dict):
        data["model"].setdefault("head_output_norm", True)  # every image head ended in a GroupNorm then
    return data


def check_weights(path: str | Path, state: dict[str, torch.Tensor], model: nn.Module, what: str = "its config") -> None:
    """Refuse weights that are non-finite or do not fit ``model`` (names, shapes), naming the file.

    ``model.load_state_dict`` would report a size mismatch as a multi-line RuntimeError, and NaN
    weights would load silently and synthesize NaN volumes.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the architecture of {what} (missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); "
            "the file was edited or written by another version: use a checkpoint written by `mmhvae train`"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(
            f"{path}: weights do not fit {what}: {k} has shape {got} in the file but {want} in the model "
            f"({len(wrong)} mismatched tensor(s)); the weights and the embedded config disagree, use an "
            "unmodified checkpoint written by `mmhvae train`"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf (first: {bad[0]}); the model diverged or "
            "the file is damaged: use an earlier checkpoint (e.g. best.safetensors) or retrain"
        )


def load_trained(path: str | Path, device: str | torch.device = "cpu"):
    """The :class:`~mmhvae.trained_model.TrainedModel` of a run folder or ``.safetensors`` file: the
    generator described by the checkpoint with its weights, the run's config, step and file."""
    from mmhvae.models import build_model
    from mmhvae.trained_model import TrainedModel

    file = resolve_checkpoint(path)
    state, config, metadata = read_generator(file)
    model = build_model(config.model)
    check_weights(file, state, model)
    model.load_state_dict(state)
    step = _step(file, metadata)
    network = model.to(device).to(memory_format=inference_memory_format(torch.device(device))).eval()
    return TrainedModel(network, config, step, file)


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """The weights' layout for synthesis: NHWC (channels-last) on every device. Measured on the CPU
    (benchmarks/execution.py, BENCHMARKS.md): 1.24-1.31x faster than NCHW for paper-preset synthesis,
    1.03-1.07x at the small preset; on GPUs it is the tensor-core layout. (Training chooses its layout
    by timing, where NHWC was the slower one on this CPU.)"""
    return torch.channels_last


def _step(file: Path, metadata: dict[str, str]) -> int:
    try:
        return int(metadata.get("step", 0))
    except ValueError:
        raise CheckpointError(f"{file}: invalid step {metadata.get('step')!r} in the metadata") from None


def load_uhved(path: str | Path, device: str | torch.device = "cpu"):
    """A U-HVED / U-HeMIS checkpoint (run folder or ``.safetensors``) -> ``(network in eval mode, its
    UHVEDConfig, step)``; the same checks as :func:`load_trained` (family, weights fit, finite)."""
    from mmhvae.models.uhved import UHVED

    file = resolve_checkpoint(path)
    state, config, metadata = read_generator(file, family="uhved")
    model = UHVED.from_config(config)
    check_weights(file, state, model)
    model.load_state_dict(state)
    return model.to(device).eval(), config, _step(file, metadata)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Only the generator network of a checkpoint (see :func:`load_trained` for it with its config)."""
    return load_trained(path, device).network


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(path), lambda p: torch.save(state, p))


def load_state(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found (nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        # torch's own message suggests weights_only=False, i.e. running the file's code: not repeated here.
        raise CheckpointError(
            f"{path}: corrupt or foreign training state ({type(exc).__name__}); it cannot be resumed: "
            "start a new run in another --out (or restore the file from a backup)"
        ) from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not an mmhvae training state; start a new run in another --out")
    return state


def latest_state(run_dir: Path) -> Optional[Path]:
    p = Path(run_dir) / "checkpoints" / "last_state.pt"
    return p if p.is_file() else None


def resume_state(run_dir: Path, config_class: type, model_config: Any) -> Optional[dict[str, Any]]:
    """The training state to resume ``run_dir`` from (None when it has none), read weights-only;
    refused when the run's model config (``config_class`` of its ``config_yaml``) is not ``model_config``."""
    import yaml

    path = latest_state(run_dir)
    if path is None:
        return None
    state = load_state(path)
    saved = config_class.from_dict(yaml.safe_load(state["config_yaml"]))
    if saved.model != model_config:
        raise CheckpointError(
            f"{path}: the run was started with a different model config; resume with the run's config.yaml"
        )
    return state


# --------------------------------------------------------------------------------------------------
# Resuming: the same run, and no leftovers of a killed one
# --------------------------------------------------------------------------------------------------

#: Settings a resumed run may change: how long it runs, where, how often it logs and saves, and the
#: evaluation settings (not used by training). Everything else (model, data, objective) is the run's.
RESUMABLE_CHANGES = (
    "name", "train.steps", "train.device", "train.log_every", "train.checkpoint_every", "train.validate_every",
    "data.cache_dir", "eval.",
)


#: Settings the trainer fills in when a run starts (``[]`` / unset in a command line): a resume that
#: leaves them unset means "the run's", not a different value.
RESOLVED_AT_START = {"data.spacing": ([], None), "data.trained_with_masks": (False, True, None)}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data and all(isinstance(k, str) for k in data) and prefix.count(".") < 1:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: data}


def config_differences(saved: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, given value)`` for every setting (``section.key``) that differs."""
    a, b = _flatten(saved), _flatten(given)
    diffs = []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key), b.get(key)
        if key == "data.cohort" and va and vb:
            va_cmp, vb_cmp = str(Path(str(va)).expanduser().resolve()), str(Path(str(vb)).expanduser().resolve())
        else:
            va_cmp, vb_cmp = va, vb
        if key in RESOLVED_AT_START and any(vb == unset for unset in RESOLVED_AT_START[key]):
            continue  # left for the trainer to fill in: the run's recorded value is kept
        if va_cmp != vb_cmp:
            diffs.append((key, va, vb))
    return diffs


def check_resume_config(
    run_dir: Path, saved: dict[str, Any], given: dict[str, Any], source: Callable[[str], str] = lambda k: k
) -> list[tuple[str, Any, Any]]:
    """Refuse to resume ``run_dir`` with settings that differ from its ``config.yaml``.

    ``source(key)`` says where the given value came from (``--cohort``, ``--config tiny``, an
    override). Returns the allowed changes (:data:`RESUMABLE_CHANGES`), for the caller to report.
    """
    diffs = config_differences(saved, given)
    allowed = [d for d in diffs if any(d[0] == p or (p.endswith(".") and d[0].startswith(p)) for p in RESUMABLE_CHANGES)]
    refused = [d for d in diffs if d not in allowed]
    if refused:
        shown = "; ".join(f"{k}: run {_short(a)}, {source(k)} gives {_short(b)}" for k, a, b in refused[:4])
        more = f" (+{len(refused) - 4} more)" if len(refused) > 4 else ""
        raise ConfigError(
            f"--resume: {run_dir} was trained with other settings ({shown}{more}); resume with the run's own "
            f"settings (drop the differing options; see {Path(run_dir) / 'config.yaml'}) or train into a new --out"
        )
    return allowed


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes (``.<name>.<random>.tmp``) a killed process left.

    Only for a run folder about to be (re)used by one trainer: nobody else writes there meanwhile.
    """
    removed = []
    for sub in (Path(folder), Path(folder) / "checkpoints"):
        if not sub.is_dir():
            continue
        for file in sub.iterdir():
            if file.name.startswith(".") and file.name.endswith(".tmp") and file.is_file():
                file.unlink(missing_ok=True)
                removed.append(file)
    return removed


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows of a CSV log (step in the first column) up to ``step``, the checkpoint resumed from.

    A run killed after logging steps past its last checkpoint would otherwise log them twice; a new
    run (``step`` 0) starts an empty log.
    """
    import csv
    import io

    from mmhvae.atomic import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return
    if step <= 0:
        path.unlink()
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    kept = [r for r in rows[1:] if r and r[0].strip().isdigit() and int(r[0]) <= step]
    if len(kept) == len(rows) - 1:
        return
    buf = io.StringIO()
    csv.writer(buf).writerows([rows[0], *kept])
    atomic_write_text(path, buf.getvalue())
