"""Subcommands of ``python -m batchnorm_lib``."""

import argparse


def int_at_least(low):
    """An argparse type: an integer >= ``low``, refused with a message naming the bound."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("must be an integer, got %r" % text) from None
        if value < low:
            raise argparse.ArgumentTypeError("must be an integer >= %d, got %d" % (low, value))
        return value

    parse.__name__ = "integer"
    return parse
