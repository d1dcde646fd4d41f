"""``bench``: time the batch norm of the active backend against PyTorch.

On the cpu backend it runs :mod:`batchnorm_lib.bench.cpu` (ours vs PyTorch's CPU batch norm vs a
naive numpy formula) with a progress bar and prints the table. On cuda/cudasim it runs the GPU
benchmark (:mod:`batchnorm_lib.bench.gpu`: ours vs PyTorch with cuDNN on and off), which needs the
cuda backend and PyTorch with CUDA and says so, exiting 2, where they are missing.
"""

import sys

from batchnorm_lib import config


def add_parser(sub):
    from batchnorm_lib.bench import cpu

    p = sub.add_parser(
        "bench", help="benchmark batch norm on the active backend against PyTorch",
        description="Benchmark batch norm on the active backend (BATCHNORM_LIB_BACKEND). On the cpu "
                    "backend: ours vs PyTorch's CPU batch norm vs a naive numpy formula, per shape "
                    "and pass, with time, GB/s, fraction of the copy bandwidth and the ratio to "
                    "PyTorch, geomean last. On cuda/cudasim: the GPU benchmark.")
    cpu.add_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def _progress_bar():
    """A progress(done, total, label) callback: tqdm when importable, else a plain line."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    state = {}

    def progress(done, total, label):
        if tqdm is not None:
            bar = state.get("bar")
            if bar is None:
                bar = state["bar"] = tqdm(total=total, desc="bench", unit="step", file=sys.stderr,
                                          leave=False)
            bar.set_postfix_str(label, refresh=False)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
            return
        sys.stderr.write("\r[%d/%d] %-60s" % (done, total, label[:60]))
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return progress


def run(args):
    name = config.get_backend()
    if name == "cpu":
        from batchnorm_lib.bench import cpu

        return cpu.run_from_args(args, progress=None if args.no_progress else _progress_bar())
    from batchnorm_lib.bench import gpu

    argv = ["--quick"] if args.quick else []
    return gpu.main(argv, progress=None if args.no_progress else _progress_bar())
