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
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
