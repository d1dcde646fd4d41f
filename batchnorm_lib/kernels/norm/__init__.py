"""The normalization engine: one dispatch for every batch-norm operation.

``ops()`` returns the implementation for the active backend; every implementation module exports
the same functions with the same contract (all arrays are arrays of that backend, C-contiguous):

``forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar)``
    ``x``/``out``: (N, C, *spatial) data; the other arrays hold C float32 values each. Computes the
    per-channel batch mean and biased variance, writes ``out = (x - mean) * invstd * scale + bias``,
    ``savemean = mean``, ``saveinvvar = 1 / sqrt(var + eps)``, and updates the running statistics in
    place: ``run = (1 - factor) * run + factor * batch`` with the *unbiased* batch variance.
``forward_infer(x, scale, bias, run_mean, run_var, eps, out)``
    Normalizes with the running statistics; ``out`` may be ``x`` itself.

Both forwards compute ``out = fmaf(x - mean, a, bias)`` with ``a = scale / sqrt(var + eps)`` computed
once per channel in float64, on every backend (values equal to the mean come out exactly as
``bias``); docs/numerics.md gives the accuracy and the handling of NaN and Inf.
``backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias)``
    ``dbias = sum(dy)``, ``dscale = sum(dy * xhat)`` per channel, and, unless ``dx`` is None,
    ``dx = scale * invstd * (dy - dbias / m - xhat * dscale / m)``.
``backward_infer(dy, scale, run_var, eps, dx)``
    ``dx = dy * scale / sqrt(run_var + eps)`` (frozen statistics).
``axpby(x, y, alpha, beta)``
    ``y = alpha * x + beta * y`` elementwise, in place (parameter-gradient accumulation and updates);
    ``beta == 0`` overwrites ``y``.

Data may be float32 on every backend and float16/bfloat16 where the backend lists it in
``supported_dtypes()``; statistics, parameters and accumulation are float32.
"""



def ops(backend=None):
    """The normalization implementation module of ``backend`` (default: the active one)."""
    from batchnorm_lib.kernels import implementation

    return implementation("norm", backend)
