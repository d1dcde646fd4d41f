"""Subcommands of ``python -m batchnorm_lib``."""
