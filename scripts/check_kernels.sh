#!/usr/bin/env bash
# Compile every CUDA source under batchnorm_lib/kernels/<operation>/ with nvcc for each target architecture and
# fail on any error, any warning, any register spill or local-memory use, and any double-precision
# instruction in a kernel other than the per-channel ones whose names match $DOUBLE_OK (finalize
# kernels merge a channel's block partials in float64 once; the per-element kernels stay float32,
# as consumer GPUs run float64 at 1/64 rate). The options are the backend's own
# (NVCC_OPTIONS in backend/cuda/core.py): -fmad=false, so nothing is contracted into an FMA.
#
#   scripts/check_kernels.sh            # sm_80 and sm_90
#   ARCHS="sm_90" scripts/check_kernels.sh
#   NVCC=/usr/local/cuda/bin/nvcc scripts/check_kernels.sh
#
# Exit status: 0 all clean; 1 a problem was found; 2 nvcc is missing.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
kernels="$here/batchnorm_lib/kernels"
nvcc=${NVCC:-$(command -v nvcc || true)}
archs=${ARCHS:-"sm_80 sm_90"}
# float64 runs once per channel, never per element: in the finalize kernels, in the last block of
# the batch-norm reductions (they finish in their own launch) and in the single-read kernels'
# merge of their channel's block partials (kernels/norm/persistent.cu), and the one-launch
# inference passes' factors, once per channel per block (batchnorm.cu, rows_channels.cu)
DOUBLE_OK='_finalize$|^(bn|rc)_(stats|backward)_partial_|^(bn|rc)_persist_|^(bn|rc)_(normalize|backward)_infer_'

if [ -z "$nvcc" ]; then
    echo "check_kernels: nvcc not found (set NVCC or put it on PATH)" >&2
    exit 2
fi

shopt -s nullglob
sources=("$kernels"/*/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "check_kernels: no .cu sources in $kernels" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for src in "${sources[@]}"; do
    name=$(basename "$src")
    for arch in $archs; do
        log="$tmp/$name.$arch.log"
        if ! "$nvcc" -cubin -arch="$arch" -std=c++17 -fmad=false -I"$(dirname "$src")" -Werror all-warnings \
                -Xptxas -v,-warn-spills,-warn-lmem-usage,-Werror \
                -o "$tmp/$name.$arch.cubin" "$src" >"$log" 2>&1; then
            echo "FAIL $name $arch: nvcc failed" >&2
            cat "$log" >&2
            status=1
            continue
        fi
        # ptxas -v reports every function; anything other than its info lines is a warning.
        unexpected=$(grep -v -E '^ptxas info|^[[:space:]]*[0-9]+ bytes stack frame|^$' "$log" || true)
        spills=$(grep -E '[1-9][0-9]* bytes spill (stores|loads)' "$log" || true)
        lmem=$(grep -E 'bytes stack frame' "$log" | grep -v -E '^[[:space:]]*0 bytes stack frame' || true)
        if [ -n "$unexpected" ] || [ -n "$spills" ] || [ -n "$lmem" ]; then
            echo "FAIL $name $arch:" >&2
            printf '%s\n' "$unexpected" "$spills" "$lmem" | grep -v '^$' >&2
            status=1
            continue
        fi
        # float64 instructions, per entry function of the PTX
        if ! "$nvcc" -ptx -arch="$arch" -I"$(dirname "$src")" -o "$tmp/$name.$arch.ptx" "$src" \
                >"$log.ptx" 2>&1; then
            echo "FAIL $name $arch: nvcc -ptx failed" >&2
            cat "$log.ptx" >&2
            status=1
            continue
        fi
        doubles=$(awk -v ok="$DOUBLE_OK" '
            /\.entry[[:space:]]/ { name = $0; sub(/.*\.entry[[:space:]]+/, "", name); sub(/\(.*/, "", name) }
            /\.f64/ && name != "" && name !~ ok { bad[name] = 1 }
            END { for (n in bad) print n }' "$tmp/$name.$arch.ptx" | sort)
        if [ -n "$doubles" ]; then
            echo "FAIL $name $arch: float64 instructions in" $doubles >&2
            status=1
            continue
        fi
        entries=$(grep -c "^ptxas info    : Compiling entry function" "$log")
        echo "ok   $name $arch: $entries kernels, no warnings, no spills"
    done
done
exit $status
