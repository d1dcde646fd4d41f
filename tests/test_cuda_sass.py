"""The 16-byte paths of the batch-norm kernels issue 128-bit global loads on sm_90: every `_vec`
entry of kernels/norm/batchnorm.cu and rows_channels.cu (plain and fused-ReLU) has LDG.E.128 in its
SASS, read from `cuobjdump -sass` (the CUDA wheels of the [gpu-tools] extra)."""

import os
import re
import subprocess

import pytest

from batchnorm_lib.model import sass

pytestmark = pytest.mark.skipif(
    sass.find_tool("nvcc") is None or sass.find_tool("cuobjdump") is None,
    reason="nvcc or cuobjdump not found (pip install '.[gpu-tools]')")


@pytest.mark.parametrize("source, scalar", [("batchnorm.cu", "bn_backward_infer_relu_f32"),
                                            ("rows_channels.cu", "rc_normalize_relu_f32")])
def test_every_vector_entry_issues_128_bit_loads(source, scalar):
    from batchnorm_lib.backend.cuda.core import KERNEL_DIR

    cubin, entries = sass.compile_cubin(os.path.join(KERNEL_DIR, "norm", source))
    text = subprocess.run([sass.find_tool("cuobjdump"), "-sass", cubin], check=True,
                          stdout=subprocess.PIPE, universal_newlines=True).stdout
    bodies = dict(re.findall(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", text, re.S))
    vector = sorted(name for name in entries if name.endswith("_vec"))
    assert len(vector) >= 24 and set(vector) <= set(bodies)
    assert any("_relu_" in name for name in vector)
    missing = [name for name in vector if not re.search(r"\bLDG\.E\.128\b", bodies[name])]
    assert not missing
    # a scalar twin does not: the check can fail
    assert not re.search(r"\bLDG\.E\.128\b", bodies[scalar])
