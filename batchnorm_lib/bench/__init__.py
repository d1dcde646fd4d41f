"""Benchmarks of the batch-norm kernels (``python -m batchnorm_lib bench``).

:mod:`batchnorm_lib.bench.cpu` times the CPU backend against PyTorch's CPU batch norm and a naive
numpy formula.
"""
