"""How a network is executed on a device: memory layout, autocast precision, ``torch.compile``.

Measured, not assumed (issue 14; ``benchmarks/execution.py``, BENCHMARKS.md): on the 2-core AMD EPYC
development CPU (AVX512 with bf16 instructions, torch 2.13, one thread) the fastest training plan was
NCHW + bf16 at the paper preset (1.44x NCHW float32; NHWC float32 0.93x) but NCHW float32 within the
noise at the ``small`` preset (NHWC + bf16 0.63x there), while synthesis was fastest in NHWC at both.
Which is faster depends on the CPU, its oneDNN kernels and the widths, so ``auto`` settings are
decided by timing the real work: :func:`choose_by_timing` runs each candidate :class:`ExecutionPlan`
on the same batch and keeps the fastest. The product of experts and the KL stay in float32 whatever
the plan (:mod:`mmhvae.nn.gaussian`).

``torch.compile`` is opt-in (``train.compile``): :func:`compile_cells` compiles the repeated cells of
a network (one graph per cell shape, not one per input subset), and :func:`uncompile` reverts them
when compilation fails on a platform without a working compiler, so training falls back to eager.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ExecutionPlan:
    """One way of running the network: ``memory_format`` and ``amp`` (autocast precision)."""

    memory_format: str = "contiguous"  # "contiguous" (NCHW) | "channels_last" (NHWC)
    amp: str = "fp32"  # "fp32" | "bf16" (autocast; the product of experts stays float32)

    def __post_init__(self) -> None:
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory format must be one of {sorted(MEMORY_FORMATS)}, got {self.memory_format!r}")
        if self.amp not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.amp!r}")

    @property
    def torch_memory_format(self) -> torch.memory_format:
        return MEMORY_FORMATS[self.memory_format]

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return PRECISIONS[self.amp]

    def autocast(self, device: torch.device):
        """The autocast context of this plan on ``device`` (a no-op in float32)."""
        dtype = self.autocast_dtype
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def describe(self) -> str:
        return f"{self.memory_format}, {self.amp}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExecutionPlan":
        return cls(memory_format=str(data["memory_format"]), amp=str(data["amp"]))


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (CUDA: Ampere and later; CPU: oneDNN bf16 instructions)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def candidate_plans(memory_format: str, amp: str, device: torch.device) -> list[ExecutionPlan]:
    """The plans the settings allow on ``device``: a fixed setting gives one choice, ``auto`` several.

    ``memory_format=auto`` tries NCHW and NHWC; ``amp=auto`` takes bf16 on a GPU that supports it,
    and tries float32 and bf16 on a CPU with bf16 instructions (float32 only on one without).
    """
    if memory_format not in (*MEMORY_FORMATS, "auto"):
        raise ValueError(f"memory format must be auto, contiguous or channels_last, got {memory_format!r}")
    if amp not in (*PRECISIONS, "auto"):
        raise ValueError(f"amp must be auto, fp32 or bf16, got {amp!r}")
    layouts = list(MEMORY_FORMATS) if memory_format == "auto" else [memory_format]
    if amp != "auto":
        precisions = [amp]
    elif device.type == "cuda":
        precisions = ["bf16"] if bf16_supported(device) else ["fp32"]
    else:
        precisions = ["fp32", "bf16"] if bf16_supported(device) else ["fp32"]
    return [ExecutionPlan(layout, precision) for layout in layouts for precision in precisions]


def default_plan(memory_format: str, amp: str, device: torch.device) -> ExecutionPlan:
    """The plan used without measuring (distributed runs, where every rank must agree): NHWC + bf16 on
    a GPU, NCHW + float32 on a CPU, unless the settings fix them."""
    layout = memory_format if memory_format != "auto" else ("channels_last" if device.type == "cuda" else "contiguous")
    if amp != "auto":
        precision = amp
    else:
        precision = "bf16" if device.type == "cuda" and bf16_supported(device) else "fp32"
    return ExecutionPlan(layout, precision)


def choose_by_timing(
    candidates: Sequence[ExecutionPlan],
    run: Callable[[ExecutionPlan], Any],
    repeats: int = 1,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    margin: float = 0.1,
) -> tuple[ExecutionPlan, dict[ExecutionPlan, float]]:
    """The fastest of ``candidates`` for ``run(plan)`` (the minimum of ``repeats`` timed calls after
    ``warmup`` untimed ones, candidates interleaved so all see the same load) and every timing.

    The first candidate is the reference (NCHW float32 where allowed): another replaces it only when
    it is more than ``margin`` (10 %) faster, so that timing noise does not trade float32 for bf16
    rounding or change the layout for nothing. A single candidate is returned without running anything."""
    candidates = list(dict.fromkeys(candidates))
    if not candidates:
        raise ValueError("no execution plan to choose from")
    if len(candidates) == 1:
        return candidates[0], {}
    for plan in candidates:
        for _ in range(warmup):
            run(plan)
    times: dict[ExecutionPlan, float] = {plan: float("inf") for plan in candidates}
    for _ in range(max(repeats, 1)):
        for plan in candidates:
            t0 = clock()
            run(plan)
            times[plan] = min(times[plan], clock() - t0)
    fastest = min(candidates, key=lambda p: times[p])
    best = fastest if times[fastest] < (1.0 - margin) * times[candidates[0]] else candidates[0]
    return best, times


def compile_units() -> tuple[type, ...]:
    """The module classes :func:`compile_cells` compiles: the network's repeated cells."""
    from mmhvae.nn.cells import DecoderCell, EncoderCell, ResBlock

    return (EncoderCell, DecoderCell, ResBlock)


def compile_cells(model: nn.Module, units: Optional[tuple[type, ...]] = None) -> int:
    """``torch.compile`` every cell of ``model`` in place (lazily: compilation happens at the first
    call); returns how many. Raises RuntimeError where torch.compile is unavailable."""
    if not hasattr(torch, "compile"):
        raise RuntimeError("this torch has no torch.compile")
    units = units or compile_units()
    count = 0
    for module in model.modules():
        if isinstance(module, units):
            module.compile(dynamic=False)
            count += 1
    return count


def uncompile(model: nn.Module) -> None:
    """Undo :func:`compile_cells`: every module runs eagerly again."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


def is_compile_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from torch.compile's machinery (dynamo, inductor, a C++ compiler)
    rather than from the model itself."""
    for cls in type(error).__mro__:
        if cls.__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
    text = str(error)
    return any(s in text for s in ("torch._dynamo", "torch._inductor", "Dynamo is not supported", "CppCompileError"))


def warn_compile_fallback(error: BaseException) -> None:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    warnings.warn(f"torch.compile failed ({type(error).__name__}: {first[:200]}); running eagerly instead",
                  RuntimeWarning, stacklevel=2)
