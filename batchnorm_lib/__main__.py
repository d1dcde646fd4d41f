"""``python -m batchnorm_lib COMMAND``: demo, info, and the commands listed in SUBCOMMANDS."""

import argparse
import importlib
import sys

# each module defines add_parser(subparsers) -> parser with set_defaults(run=callable(args) -> int)
SUBCOMMANDS = (
    "batchnorm_lib.cli.demo",
    "batchnorm_lib.cli.info",
    "batchnorm_lib.cli.bench",
    "batchnorm_lib.cli.train",
    "batchnorm_lib.cli.model",
)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m batchnorm_lib",
                                     description="batchnorm_lib command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None):
    from batchnorm_lib.config import BackendError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BackendError as e:
        # a backend that cannot work here (BATCHNORM_LIB_BACKEND, BATCHNORM_LIB_CPU_KERNELS) is a
        # usage error: say why in one line, as argparse does, rather than with a traceback
        print("python -m batchnorm_lib %s: error: %s" % (args.command, e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
