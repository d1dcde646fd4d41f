#!/usr/bin/env bash
# On an offline GPU host: install pycuda from a wheelhouse made by scripts/fetch_wheels.sh, build it
# against the local CUDA toolkit, then run the test suite on the CUDA backend and the GPU benchmark.
#
#   scripts/gpu_check.sh OUTDIR [WHEELHOUSE]          # WHEELHOUSE defaults to .whl/
#
# Writes into OUTDIR: env.log (toolkit, driver, versions), install.log, kernels.log (nvcc check),
# info.log, tests.log (pytest, BATCHNORM_LIB_BACKEND=cuda), compare.log (the GPU's outputs against
# cudasim's, bit for bit, per operation and kernel), bench.log and gpu_bench.md, and
# summary.txt with one line per step. Exit status: 0 when every step passed.
# Environment: CUDA_ROOT (toolkit; found from nvcc or /usr/local/cuda* when unset), LIBCUDA (the
# driver's libcuda.so.1; searched for when unset), PYTHON
# (default python3), VENV (default $TMPDIR/batchnorm_lib-gpu-venv, made with --system-site-packages
# so the host's numpy, setuptools and PyTorch are used), PYTEST_ARGS (default: -rs -q tests).
set -u
out=${1:?usage: scripts/gpu_check.sh OUTDIR [WHEELHOUSE]}
repo=$(cd "$(dirname "$0")/.." && pwd)
wheels=$(cd "${2:-$repo/.whl}" && pwd) || { echo "gpu_check: no wheelhouse ${2:-$repo/.whl}" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: >"$summary"
status=0

note() { echo "$*" | tee -a "$summary"; }
step() {  # step NAME LOGFILE COMMAND...: run, record PASS/FAIL with the exit status
    local name=$1 log=$2
    shift 2
    if "$@" >"$out/$log" 2>&1; then
        note "PASS  $name  ($log)"
    else
        note "FAIL  $name  (exit $?, see $log)"
        status=1
        return 1
    fi
}

# -- CUDA toolkit and driver ---------------------------------------------------------------------
# A toolkit root has bin/nvcc and include/cuda.h (an nvcc on PATH may be a wrapper elsewhere).
is_root() { [ -x "$1/bin/nvcc" ] && [ -f "$1/include/cuda.h" ]; }
if [ -z "${CUDA_ROOT:-}" ]; then
    candidates=()
    if command -v nvcc >/dev/null 2>&1; then
        candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")")
    fi
    candidates+=(/usr/local/cuda /usr/local/cuda-*)
    for d in "${candidates[@]}"; do
        if is_root "$d"; then
            CUDA_ROOT=$d
            break
        fi
    done
fi
if [ -z "${CUDA_ROOT:-}" ] || ! is_root "$CUDA_ROOT"; then
    note "FAIL  toolkit  (no CUDA toolkit with bin/nvcc and include/cuda.h: set CUDA_ROOT)"
    exit 1
fi
export CUDA_ROOT
export PATH="$CUDA_ROOT/bin:$PATH"

# The driver's libcuda.so.1 (never the toolkit's link-time stub) must be loadable at run time.
libcuda=${LIBCUDA:-}
for d in /usr/local/nvidia /usr/lib /usr/lib64 /lib /lib64; do
    [ -z "$libcuda" ] && [ -d "$d" ] || continue
    libcuda=$(find -L "$d" -maxdepth 4 -name 'libcuda.so.1' -not -path '*stubs*' 2>/dev/null | head -n 1)
    [ -n "$libcuda" ] && break
done
if [ -z "$libcuda" ]; then
    note "FAIL  driver  (no libcuda.so.1 under /usr/local/nvidia, /usr/lib, /usr/lib64, /lib, /lib64)"
    exit 1
fi
export LD_LIBRARY_PATH="$(dirname "$libcuda")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

python=${PYTHON:-python3}
venv=${VENV:-${TMPDIR:-/tmp}/batchnorm_lib-gpu-venv}
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "CUDA_ROOT: $CUDA_ROOT"
    echo "libcuda: $libcuda"
    nvcc --version
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi
    "$python" --version
} >"$out/env.log" 2>&1
note "info  CUDA_ROOT=$CUDA_ROOT libcuda=$libcuda"

# -- install -------------------------------------------------------------------------------------
install() {  # runs as a step's condition, where set -e does not apply: every command checks
    "$python" -m venv --system-site-packages "$venv" || return 1
    . "$venv/bin/activate" || return 1
    local pipi="python -m pip install --no-index --find-links $wheels"
    # wheel first: without build isolation, pycuda's setup needs bdist_wheel from somewhere.
    $pipi wheel || return 1
    # pycuda builds here from its unpacked sdist, configured for $CUDA_ROOT (and without CURAND
    # when the toolkit lacks it; the kernels do not use it).
    local sdist src
    sdist=$(ls "$wheels"/pycuda-*.tar.gz | sort -V | tail -n 1) || return 1
    src=$(mktemp -d) || return 1
    tar -xzf "$sdist" -C "$src" || return 1
    src=$(ls -d "$src"/pycuda-*/) || return 1
    local curand=""
    [ -f "$CUDA_ROOT/include/curand.h" ] || curand="--no-cuda-enable-curand"
    # Link against the driver found above, through an unversioned name (-lcuda), so the build
    # works whether or not the toolkit ships its link stub (lib64/stubs/libcuda.so).
    local linkdir
    linkdir=$(mktemp -d) || return 1
    ln -s "$libcuda" "$linkdir/libcuda.so" || return 1
    (cd "$src" && python configure.py --cuda-root="$CUDA_ROOT" $curand \
        --cudadrv-lib-dir="$linkdir,$CUDA_ROOT/lib64,$CUDA_ROOT/lib64/stubs,$CUDA_ROOT/lib") || return 1
    $pipi --no-build-isolation "$src" || return 1
    $pipi --no-deps scikit-cuda || echo "scikit-cuda not installed (optional)"
    $pipi --no-deps ml_dtypes || echo "ml_dtypes not installed: no bfloat16 (optional)"
    $pipi pytest hypothesis || return 1
    python -m pip install --no-index --no-build-isolation --no-deps -e "$repo" || return 1
    python -c "import pycuda.driver as d; d.init(); print('pycuda', d.get_version(), d.Device(0).name())"
}
if ! step install install.log install; then
    exit 1
fi
. "$venv/bin/activate"
cd "$repo"

# -- checks --------------------------------------------------------------------------------------
step "nvcc kernel check (sm_80, sm_90)" kernels.log scripts/check_kernels.sh
step "info (cuda backend)" info.log env BATCHNORM_LIB_BACKEND=cuda python -m batchnorm_lib info
# shellcheck disable=SC2086
step "test suite, BATCHNORM_LIB_BACKEND=cuda" tests.log \
    env BATCHNORM_LIB_BACKEND=cuda python -m pytest ${PYTEST_ARGS:--rs -q tests}
# The simulator must compute the GPU's bits: every operation's outputs, cuda against cudasim.
step "cudasim bit for bit against the GPU" compare.log python scripts/compare_cudasim.py
step "GPU benchmark" bench.log env BATCHNORM_LIB_BACKEND=cuda python benchmarks/gpu_bench.py --out "$out/gpu_bench.md"

tail -n 3 "$out/tests.log" | sed 's/^/tests: /' >>"$summary"
grep -E '^geomean' "$out/bench.log" | sed 's/^/bench: /' >>"$summary"
grep -E 'operation\(s\) with exact arithmetic differ' "$out/compare.log" | sed 's/^/compare: /' >>"$summary"
note "done  status $status; logs in $out"
exit $status
