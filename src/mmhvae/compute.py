"""Compute cost of a generator: parameters, MACs and forward latency (paper §5.1 "Computational resources").

Conventions, fixed here so that every method is measured the same way:

* **Parameters**: trainable generator parameters (discriminators excluded), shared weights once.
* **MACs**: ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 for one forward pass of one slice
  at ``model.image_size``. It counts convolutions (grouped and transposed included), linear layers
  and matrix products; element-wise operations (norms, activations, sampling, the PoE) are not
  counted, as in the usual MAC counters. ``gmacs`` has every modality as input, ``gmacs_one_input``
  only the first of ``inputs`` (MMHVAE skips the encoders of absent modalities; zero-imputing models
  cost the same whatever is given).
* **Latency**: wall time of ``model(images, observed, temperature=0.5)`` under ``torch.inference_mode``
  in evaluation mode, after ``warmup`` passes, median of ``repeats`` passes, divided by the batch size
  (``latency_ms`` per slice); ``throughput`` is slices per second. On CUDA the device is synchronized
  before reading the clock.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from typing import Optional, Sequence

import torch
from torch import nn

from mmhvae.config import ConfigError, ModelConfig

KEYS = (
    "model",
    "image_size",
    "batch_size",
    "device",
    "inputs",
    "params",
    "gmacs",
    "gmacs_one_input",
    "latency_ms",
    "throughput",
)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, images: torch.Tensor, observed: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2) on ``images`` ``(B, M, H, W)``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(images, observed, temperature=0.5)
    return counter.get_total_flops() // 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model_cfg: ModelConfig,
    batch_size: int = 1,
    inputs: Optional[Sequence[str]] = None,
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Parameters, MACs and latency of the generator ``model_cfg`` describes (random weights).

    Args:
        model_cfg: the generator's configuration (``method`` selects the family).
        batch_size: slices per timed forward pass.
        inputs: observed modality names for the timed pass and ``gmacs``; default: all.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        warmup, repeats: untimed and timed passes.
    Returns:
        dict with the keys of :data:`KEYS`: ``params`` (int), ``gmacs`` / ``gmacs_one_input``
        (10^9 MACs per slice), ``latency_ms`` (per slice), ``throughput`` (slices/s), plus the
        settings (``model``, ``image_size``, ``batch_size``, ``device``, ``inputs``).
    """
    from mmhvae.models import build_model

    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ConfigError("batch_size and repeats must be >= 1 and warmup >= 0")
    cfg = copy.deepcopy(model_cfg)
    names = list(inputs) if inputs is not None else list(cfg.modalities)
    unknown = [n for n in names if n not in cfg.modalities]
    if not names or unknown:
        raise ConfigError(f"inputs must be a non-empty subset of {cfg.modalities}, got {names}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    from mmhvae.checkpoint import inference_memory_format

    model = build_model(cfg).to(dev).to(memory_format=inference_memory_format(dev)).eval()  # as load_model does
    M, S = cfg.num_modalities, cfg.image_size
    given = torch.tensor([m in names for m in cfg.modalities], device=dev)
    one = torch.tensor([m == names[0] for m in cfg.modalities], device=dev)

    single = torch.rand(1, M, S, S, device=dev)
    macs_all = count_macs(model, single, given[None])
    macs_one = count_macs(model, single, one[None])

    images = torch.rand(batch_size, M, S, S, device=dev)
    observed = given[None].expand(batch_size, M).contiguous()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _synchronize(dev)
            t0 = time.perf_counter()
            model(images, observed, temperature=0.5)
            _synchronize(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    per_batch = statistics.median(times)
    return {
        "model": cfg.method,
        "image_size": S,
        "batch_size": batch_size,
        "device": str(dev),
        "inputs": "+".join(names),
        "params": count_parameters(model),
        "gmacs": macs_all / 1e9,
        "gmacs_one_input": macs_one / 1e9,
        "latency_ms": 1000.0 * per_batch / batch_size,
        "throughput": batch_size / per_batch,
    }


def measure_methods(
    preset_name: str,
    methods: Sequence[str],
    batch_size: int = 1,
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
) -> list[dict]:
    """:func:`measure` for each method preset (:mod:`mmhvae.methods`) on one config preset.

    Each row also has ``method`` (the preset name) and ``levels`` (latent groups L; 0 for
    deterministic baselines).
    """
    from mmhvae.config import preset
    from mmhvae.methods import apply_method

    base = preset(preset_name)
    rows = []
    for name in methods:
        cfg = apply_method(base, name)
        row = {"method": name, **measure(cfg.model, batch_size, None, device, warmup, repeats)}
        row["levels"] = cfg.model.num_levels if cfg.model.method == "mmhvae" else 0
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`measure_methods` rows (one line per method)."""
    header = (
        "| Method | Model | L | Image | Params (M) | GMACs (all inputs) | GMACs (1 input) "
        "| Latency (ms/slice) | Throughput (slices/s) |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r.get('method', r['model'])} | {r['model']} | {r.get('levels', '') or '-'} | {r['image_size']}² "
            f"| {_fmt(r['params'] / 1e6)} | {_fmt(r['gmacs'])} | {_fmt(r['gmacs_one_input'])} "
            f"| {_fmt(r['latency_ms'])} | {_fmt(r['throughput'])} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    # One decimal for large figures, three significant digits for the small ones of tiny presets.
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def machine_description(device: str = "cpu") -> str:
    """One line naming the hardware and software the figures were measured on."""
    dev = torch.device(device)
    if dev.type == "cuda":
        hw = torch.cuda.get_device_name(dev)
    else:
        hw = f"{_cpu_name()}, {torch.get_num_threads()} threads"
    return f"{hw}; torch {torch.__version__}; Python {platform.python_version()}; {platform.system()}"


def _cpu_name() -> str:
    # platform.processor() is empty on most Linux systems; /proc/cpuinfo has the marketing name.
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
