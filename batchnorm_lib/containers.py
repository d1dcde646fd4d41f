"""PuzzleLib's ``Containers`` package name: ``from batchnorm_lib.containers import Sequential``."""

from batchnorm_lib.modules.sequential import Sequential

__all__ = ["Sequential"]
