#!/usr/bin/env bash
# Build a wheelhouse for an offline GPU host (run this where there is network):
#
#   scripts/fetch_wheels.sh [WHEELHOUSE] [PYTHON_VERSION]     # defaults: the checkout's .whl/, 3.12
#
# It holds the pycuda source distribution (pycuda ships no wheels; it is built on the GPU host
# against that host's CUDA) and the manylinux/pure-Python wheels for the target Python of what
# pycuda, scikit-cuda, bfloat16 arrays (ml_dtypes) and the test suite need beyond what the GPU host already has (numpy,
# setuptools, markupsafe, PyTorch). scripts/gpu_check.sh installs from it with --no-index.
set -euo pipefail
dest=${1:-$(cd "$(dirname "$0")/.." && pwd)/.whl}
pyver=${2:-3.12}
abi="cp${pyver/./}"
platform=${PLATFORM:-manylinux2014_x86_64}
pip=${PIP:-python3 -m pip}
mkdir -p "$dest"

target=(--only-binary=:all: --python-version "$pyver" --implementation cp --abi "$abi"
        --abi abi3 --abi none --platform "$platform" --platform manylinux_2_17_x86_64
        --platform manylinux_2_28_x86_64 --platform any -d "$dest")

echo "fetch_wheels: pycuda source distribution"
# --no-binary only for pycuda itself: its build requirements (numpy, setuptools) still come as wheels
# when pip prepares the sdist's metadata here.
if ! $pip download --no-deps --no-binary pycuda -d "$dest" pycuda; then
    echo "fetch_wheels: retrying without build isolation (uses this machine's setuptools)" >&2
    $pip download --no-deps --no-binary pycuda --no-build-isolation -d "$dest" pycuda
fi

echo "fetch_wheels: pycuda's and scikit-cuda's pure and $abi wheels"
# Each without its dependencies, so nothing the GPU host already has (numpy) is pulled in.
for pkg in pytools platformdirs mako siphash24 typing_extensions scikit-cuda wheel ml_dtypes; do
    $pip download --no-deps "${target[@]}" "$pkg"
done

echo "fetch_wheels: test suite (pytest, hypothesis) with their dependencies"
$pip download "${target[@]}" pytest hypothesis

echo "fetch_wheels: $(ls "$dest" | wc -l) files in $dest"
ls -1 "$dest"
