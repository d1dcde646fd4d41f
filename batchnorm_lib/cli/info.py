"""``info``: version, backends, device, and whether the CUDA kernels compile here."""

import glob
import os
import shutil
import subprocess
import tempfile

import batchnorm_lib
from batchnorm_lib import config

KERNEL_DIR = os.path.join(os.path.dirname(batchnorm_lib.__file__), "kernels")


def add_parser(sub):
    p = sub.add_parser("info", help="version, backend, device and CUDA kernel status",
                       description="Print the version, the active backend and its device, every "
                                   "backend's availability, and whether the CUDA kernels compile.")
    p.set_defaults(run=run)
    return p


def nvcc_check(arch="sm_80"):
    """Compile every kernels/<operation>/*.cu with nvcc; returns (ok, one-line detail)."""
    sources = sorted(glob.glob(os.path.join(KERNEL_DIR, "*", "*.cu")))
    nvcc = shutil.which("nvcc")
    if not sources:
        return False, "no .cu sources found in %s" % KERNEL_DIR
    if nvcc is None:
        return False, "nvcc not on PATH"
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            out = os.path.join(tmp, os.path.basename(src) + ".cubin")
            proc = subprocess.run([nvcc, "-cubin", "-arch=" + arch, "-o", out, src],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                return False, "%s failed:\n%s" % (os.path.basename(src), proc.stderr.strip())
    return True, "%d sources compile with nvcc for %s" % (len(sources), arch)


def run(args):
    print("batchnorm_lib %s" % batchnorm_lib.__version__)
    setting = os.environ.get(config.ENV_VAR, "auto")
    try:
        name = config.get_backend()
    except config.BackendError as e:  # still report what is available, then fail
        name, status = None, 2
        print("active backend: none (%s=%s): %s" % (config.ENV_VAR, setting, e))
    else:
        status = 0
        print("active backend: %s (%s=%s)" % (name, config.ENV_VAR, setting))
        print("device: %s" % config.backend_module().device_name())
    for b in config.BACKENDS:
        ok, reason = config.probe(b)
        print("  %-8s %s" % (b, "available" if ok else "unavailable: " + reason))
    if name is not None and hasattr(config.backend_module(), "kernel_report"):
        print(config.backend_module().kernel_report())
    ok, detail = nvcc_check()
    print("CUDA kernels (nvcc): %s" % ("ok, " + detail if ok else detail))
    from batchnorm_lib.backend import cublas

    ok, detail = cublas.status()
    print("cuBLAS (Linear on cuda): %s" % ("ok, " + detail if ok else detail))
    return status
