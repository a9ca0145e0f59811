"""Compute table of the methods (parameters, MACs, latency) for a config preset.

    python benchmarks/compute.py --preset paper
    python benchmarks/compute.py --preset small --methods all --batch-size 16 --device cuda

The same as ``mmhvae benchmark compute`` (see its ``--help``); at the paper preset MMHVAE should
report about 14.5 M parameters, 12.5 GMACs with four inputs and 6.1 GMACs with one.
"""

from __future__ import annotations

import sys

from mmhvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", "compute", *sys.argv[1:]]))
