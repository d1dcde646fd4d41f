"""CPU benchmark: batchnorm_lib's CPU backend vs PyTorch's CPU batch norm vs a naive numpy formula.

    python benchmarks/cpu_bench.py [--quick] [--threads 2] [--markdown] [--json FILE]

A thin wrapper over :mod:`batchnorm_lib.bench.cpu` (also ``python -m batchnorm_lib bench``);
``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a plain checkout

from batchnorm_lib.bench.cpu import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
