"""Array backends. Each backend package exposes the same surface:

``probe() -> (ok, reason)``, ``GPUArray``, ``to_gpu``, ``empty``, ``zeros``, ``device_name()``,
``supported_dtypes()``. User code goes through :mod:`batchnorm_lib.backend.gpuarray`, which forwards
to the active backend.
"""
