"""``model``: the H100 performance model of the CUDA kernels (modelled figures, no GPU needed).

Without ``--source`` it reports every pass of the library on the batch-norm shapes of
:mod:`batchnorm_lib.model.report` (simulated on cudasim). With ``--source FILE.cu --kernel NAME
--grid X[,Y,Z] --block X[,Y,Z]`` it prints one kernel's figures, one ``label: value`` per line.
"""

import argparse
import json
import sys

from batchnorm_lib.cli import int_at_least


def _dims(text):
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("must be X[,Y,Z] positive integers, got %r" % text) from None
    if not 1 <= len(dims) <= 3 or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError("must be X[,Y,Z] positive integers, got %r" % text)
    return dims


def _latency(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of nanoseconds, got %r" % text) from None
    if not 1 <= value <= 100000:
        raise argparse.ArgumentTypeError("must be 1..100000 ns, got %s" % text)
    return value


def add_parser(sub):
    from batchnorm_lib.model import report

    p = sub.add_parser(
        "model", help="modelled H100 performance of the CUDA kernels (no GPU needed)",
        description="Modelled H100 performance (never measured): bytes and sectors from the "
                    "cudasim traffic counters, registers and spills from ptxas, occupancy and "
                    "waves, global loads in flight per thread read from the sm_90 SASS, and a "
                    "modelled time = max(bytes / achievable bandwidth, bytes x latency / (bytes in "
                    "flight per SM x SMs)) + a per-launch cost. Needs nvcc and nvdisasm (pip "
                    "install 'batchnorm_lib[gpu-tools]') for the compiler figures.")
    p.add_argument("--source", metavar="FILE.cu", help="analyze one kernel of this CUDA source")
    p.add_argument("--kernel", metavar="NAME", help="with --source: the entry (extern \"C\" name)")
    p.add_argument("--grid", type=_dims, metavar="X[,Y,Z]", help="with --source: grid size")
    p.add_argument("--block", type=_dims, metavar="X[,Y,Z]", help="with --source: block size")
    p.add_argument("--shared", type=int_at_least(0), default=0, metavar="BYTES",
                   help="with --source: dynamic shared memory per block (default 0)")
    p.add_argument("--bytes", type=int_at_least(0), metavar="N",
                   help="with --source: DRAM bytes the launch moves, for its modelled time")
    p.add_argument("--latency", type=_latency, default=None, metavar="NS",
                   help="DRAM latency in ns (default %g)" % (report.h100.LATENCY * 1e9))
    p.add_argument("--quick", action="store_true",
                   help="library report: fewer shapes and dtypes (float32 only)")
    p.add_argument("--shape", action="append", type=report.parse_shape, metavar="[OP:]NxCx...",
                   help="library report: only this case (repeatable), e.g. 256x64x112x112 "
                        "(BatchNorm, channels first; NxC data runs the rows x channels kernels), "
                        "nhwc:256x112x112x64 (channels last), layernorm:4096x1024 (over the last "
                        "axis), groupnorm32:32x256x28x28, instancenorm:32x64x56x56")
    p.add_argument("--dtype", action="append", choices=report.DTYPES,
                   help="library report: only this dtype (repeatable)")
    p.add_argument("--sim-elements", type=int_at_least(64), metavar="N",
                   help="library report: simulate at most N elements per case (default %d, "
                        "--quick %d)" % (report.SIM_ELEMENTS, report.QUICK_SIM_ELEMENTS))
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    p.add_argument("--markdown", metavar="PATH",
                   help="library report: also write the table as Markdown to PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)
    return p


def _format(value):
    if isinstance(value, float):
        return "%.4g" % value
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


KERNEL_LABELS = (
    ("kernel", "kernel"), ("arch", "arch"), ("grid", "grid"), ("block", "block"),
    ("registers", "registers"), ("shared_bytes", "shared memory bytes"),
    ("spill_stores", "spill store bytes"), ("spill_loads", "spill load bytes"),
    ("blocks_per_sm", "blocks per SM"), ("occupancy_limited_by", "occupancy limited by"),
    ("occupancy", "occupancy"), ("waves", "waves"), ("tail_wave_fill", "tail wave fill"),
    ("loads_in_flight_per_thread", "loads in flight per thread"),
    ("bytes_in_flight_per_thread", "bytes in flight per thread"),
    ("widest_load_bytes", "widest load bytes"),
    ("resident_threads_per_sm", "resident threads per SM"),
    ("bytes_in_flight_per_sm", "bytes in flight per SM"), ("latency_ns", "latency ns"),
    ("bandwidth_fraction", "bandwidth fraction"),
    ("bandwidth_fraction_600ns", "bandwidth fraction at 600 ns"),
    ("bandwidth_fraction_800ns", "bandwidth fraction at 800 ns"),
    ("dram_bytes", "dram bytes"), ("modelled_time_us", "modelled time us"),
)


def _run_kernel(args, parser_error):
    from batchnorm_lib import model

    missing = [f for f in ("kernel", "grid", "block") if getattr(args, f) is None]
    if missing:
        return parser_error("--source needs --%s" % ", --".join(missing))
    latency = (args.latency if args.latency is not None else model.h100.LATENCY * 1e9) * 1e-9
    try:
        figures = model.analyze_kernel(args.source, args.kernel, args.grid, args.block,
                                       shared_bytes=args.shared, dram_bytes=args.bytes,
                                       latency=latency)
    except (OSError, ValueError, model.ToolError) as e:
        print("python -m batchnorm_lib model: error: %s" % e, file=sys.stderr)
        return 2
    print("modelled H100 figures (not measured)")
    for key, label in KERNEL_LABELS:
        if key in figures:
            print("%s: %s" % (label, _format(figures[key])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1, sort_keys=True)
    return 0


def run(args):
    def parser_error(message):
        print("python -m batchnorm_lib model: error: %s" % message, file=sys.stderr)
        return 2

    if args.source is not None:
        return _run_kernel(args, parser_error)
    stray = [f for f in ("kernel", "grid", "block", "bytes") if getattr(args, f) is not None]
    if args.source is None and args.shared:
        stray.append("shared")
    if stray:
        return parser_error("--%s only go with --source" % ", --".join(stray))
    from batchnorm_lib.model import report

    return report.main(args)
