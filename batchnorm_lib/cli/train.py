"""``train``: the same MLP with and without BatchNorm on scikit-learn's digits, side by side.

Needs the examples extra (scikit-learn, tqdm, and matplotlib unless ``--no-plot``); when one is
missing the command says what to install and exits with status 2.
"""

import argparse
import json
import math
import os
import sys

from batchnorm_lib import config
from batchnorm_lib.cli import int_at_least

DEFAULTS = {"epochs": 20, "batch_size": 64, "lr": 0.3, "seed": 0, "out": "train_output",
            "optimizer": "momentum"}
HIDDEN = (128, 128)
INSTALL_HINT = 'pip install "batchnorm_lib[examples]"'


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number, got %r" % text) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a finite number > 0, got %r" % text)
    return value


def add_parser(sub):
    p = sub.add_parser(
        "train", help="train an MLP with and without BatchNorm on the digits data set",
        description="Train the same MLP (64-%s-10, relu) with and without BatchNorm on "
                    "scikit-learn's bundled digits data set, with the same seed, on the active "
                    "backend (BATCHNORM_LIB_BACKEND). Shows a progress bar per run and a per-epoch "
                    "table, writes loss/accuracy curves to DIR/train_curves.png, and ends with a "
                    "one-line summary. Needs: %s" % ("-".join(map(str, HIDDEN)), INSTALL_HINT))
    p.add_argument("--epochs", type=int_at_least(1), default=DEFAULTS["epochs"], metavar="N",
                   help="passes over the training set (default %(default)s)")
    p.add_argument("--batch-size", type=int_at_least(2), default=DEFAULTS["batch_size"],
                   metavar="B", help="samples per batch, >= 2 because batch statistics need two "
                                     "(default %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=DEFAULTS["lr"], metavar="X",
                   help="learning rate (default %(default)s)")
    p.add_argument("--optimizer", choices=("momentum", "sgd", "adam"),
                   default=DEFAULTS["optimizer"],
                   help="momentum: MomentumSGD(momRate=0.9); sgd: SGD; adam: Adam(alpha=lr) "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int_at_least(0), default=DEFAULTS["seed"], metavar="S",
                   help="seed for the data split, the initial weights and the batch order "
                        "(default %(default)s)")
    p.add_argument("--out", default=DEFAULTS["out"], metavar="DIR",
                   help="directory for train_curves.png and train_history.json "
                        "(default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (matplotlib not needed)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: launch with 'mpiexec -n P python -m batchnorm_lib "
                        "train --distributed'; each rank trains on a shard of every batch with "
                        "synchronized BatchNorm and summed gradients, rank 0 prints and writes "
                        "the results (needs mpi4py: pip install \"batchnorm_lib[mpi]\")")
    p.set_defaults(run=run)
    return p


def _progress_factory(tqdm):
    def make(total, desc):
        return tqdm(total=total, desc="%-12s" % desc, unit="batch", leave=True, mininterval=0.25,
                    dynamic_ncols=True)

    return make


def _single_threaded_blas(backend):
    """On the CPU backend, one BLAS thread: the products here are at most 64 x 128 by 128 x 128,
    too small to gain from threads, and on a busy machine idle-spinning BLAS threads made runs
    several times slower and their timings erratic. (threadpoolctl comes with scikit-learn.)"""
    import contextlib

    if backend != "cpu":
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _loss(value, width):
    """A loss in ``width`` characters: fixed point, or exponent form once it is large (diverged)."""
    if math.isfinite(value) and abs(value) < 1e4:
        return "%*.4f" % (width, value)
    return "%*.3g" % (width, value)


def format_table(results):
    names = [r.name for r in results]
    cols = "train loss  train acc  test loss  test acc"
    width = len(cols)
    lines = ["epoch | " + " | ".join(n.center(width) for n in names),
             "      | " + " | ".join(cols for _ in names),
             "------+-" + "-+-".join("-" * width for _ in names)]
    epochs = max(len(r.history) for r in results)
    for i in range(epochs):
        cells = []
        for r in results:
            if i < len(r.history):
                h = r.history[i]
                cells.append("%s  %9.3f  %s  %8.3f" % (_loss(h.train_loss, 10), h.train_acc,
                                                       _loss(h.test_loss, 9), h.test_acc))
            else:
                cells.append("(stopped: loss not finite)".center(width))
        lines.append("%5d | " % (i + 1) + " | ".join(cells))
    return "\n".join(line.rstrip() for line in lines)


def summary_line(results):
    return " | ".join("%s: test accuracy %.3f in %.2f s" % (r.name, r.test_acc, r.seconds)
                      for r in results)


def missing_extras(need_plot):
    """Names of the examples' packages that cannot be imported here."""
    import importlib

    wanted = [("tqdm", "tqdm"), ("sklearn", "scikit-learn")]
    if need_plot:
        wanted.append(("matplotlib", "matplotlib"))
    missing = []
    for module, package in wanted:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def run(args):
    missing = missing_extras(not args.no_plot)
    if missing:
        print("error: the train command needs %s, which %s not installed.\n"
              "Install the examples extra: %s\n"
              "(from a source checkout: pip install -e \".[examples]\")%s"
              % (", ".join(missing), "is" if len(missing) == 1 else "are", INSTALL_HINT,
                 "\n(or pass --no-plot to skip the curves and matplotlib)"
                 if "matplotlib" in missing else ""), file=sys.stderr)
        return 2
    from tqdm import tqdm

    comm = None
    if args.distributed:
        from batchnorm_lib import distributed
        from batchnorm_lib.modules import ModuleError

        try:
            comm = distributed.require_mpi().COMM_WORLD
        except ModuleError as e:
            print("error: %s" % e, file=sys.stderr)
            return 2
        if comm.Get_rank() != 0:  # the other ranks train quietly
            sys.stdout = open(os.devnull, "w")
            tqdm = None
    from batchnorm_lib.training import data as datamod
    from batchnorm_lib.training.loop import train_run

    try:
        backend = config.get_backend()
    except config.BackendError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    data = datamod.load_digits(seed=args.seed)

    print("batchnorm_lib train | backend: %s | device: %s"
          % (backend, config.backend_module().device_name()))
    print("data: digits, %d train / %d test samples, %d features, %d classes (pixels / 16)"
          % (len(data.ytrain), len(data.ytest), data.features, data.classes))
    opt = {"momentum": "MomentumSGD(learnRate=%g, momRate=0.9)", "sgd": "SGD(learnRate=%g)",
           "adam": "Adam(alpha=%g)"}[args.optimizer] % args.lr
    print("model: %d-%s-%d MLP, Linear -> [BatchNorm] -> relu; %s, batch %d, %d epochs, seed %d"
          % (data.features, "-".join(map(str, HIDDEN)), data.classes, opt, args.batch_size,
             args.epochs, args.seed))
    if comm is not None:
        print("distributed: %d ranks (MPI), each a shard of every batch; synchronized BatchNorm"
              % comm.Get_size())
    sys.stdout.flush()

    progress = _progress_factory(tqdm) if tqdm is not None else None
    results = []
    with _single_threaded_blas(backend):
        for batchnorm in (True, False):
            results.append(train_run(data, batchnorm=batchnorm, epochs=args.epochs,
                                     batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                     hidden=HIDDEN, optimizer=args.optimizer, progress=progress,
                                     comm=comm))
            sys.stderr.flush()

    if comm is not None and comm.Get_rank() != 0:
        return 0
    print()
    print(format_table(results))
    print()
    os.makedirs(args.out, exist_ok=True)
    history = {r.name: [vars(h) for h in r.history] for r in results}
    history["settings"] = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                           "optimizer": args.optimizer, "seed": args.seed, "hidden": list(HIDDEN),
                           "backend": backend, "ranks": comm.Get_size() if comm else 1}
    with open(os.path.join(args.out, "train_history.json"), "w") as f:
        json.dump(history, f, indent=1)
    if not args.no_plot:
        from batchnorm_lib.training.plot import save_curves

        path = save_curves(results, os.path.join(args.out, "train_curves.png"),
                           title="digits, 64-%s-10 MLP, %s, batch %d, seed %d, backend %s"
                                 % ("-".join(map(str, HIDDEN)), opt, args.batch_size, args.seed,
                                    backend))
        print("curves: %s" % path)
    print("history: %s" % os.path.join(args.out, "train_history.json"))
    print(summary_line(results))
    return 0
