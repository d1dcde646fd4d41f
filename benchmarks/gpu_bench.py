"""GPU benchmark: ours vs PyTorch's batch norm with cuDNN on and off (see batchnorm_lib/bench/gpu.py).

    BATCHNORM_LIB_BACKEND=cuda python benchmarks/gpu_bench.py [--quick] [--out FILE.md]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a plain checkout

from batchnorm_lib.bench import gpu  # noqa: E402

if __name__ == "__main__":
    sys.exit(gpu.main())
