"""Accuracy table: batch norm's worst errors in float32 ulps against float64, per backend and
kernel path, next to PyTorch's CPU batch_norm (the table in docs/numerics.md).

    python benchmarks/numerics.py [--seeds 3] [--markdown] [--no-16bit]

A thin wrapper over :mod:`batchnorm_lib.bench.numerics`; ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a plain checkout

from batchnorm_lib.bench.numerics import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
