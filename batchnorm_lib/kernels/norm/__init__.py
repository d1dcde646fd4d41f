"""The normalization engine: one dispatch for every batch-norm operation.

``ops()`` returns the implementation for the active backend; every implementation module exports
the same functions with the same contract (all arrays are arrays of that backend, C-contiguous):

``forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar, relu=False)``
    ``x``/``out``: (N, C, *spatial) data; the other arrays hold C float32 values each. Computes the
    per-channel batch mean and biased variance, writes ``out = (x - mean) * invstd * scale + bias``,
    ``savemean = mean``, ``saveinvvar = 1 / sqrt(var + eps)``, and updates the running statistics in
    place: ``run = (1 - factor) * run + factor * batch`` with the *unbiased* batch variance.
``forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False)``
    Normalizes with the running statistics; ``out`` may be ``x`` itself.

Both forwards compute ``out = fmaf(x - mean, a, bias)`` with ``a = scale / sqrt(var + eps)`` computed
once per channel in float64, on every backend (values equal to the mean come out exactly as
``bias``); docs/numerics.md gives the accuracy and the handling of NaN and Inf.
``backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None)``
    ``dbias = sum(dy)``, ``dscale = sum(dy * xhat)`` per channel, and, unless ``dx`` is None,
    ``dx = scale * invstd * (dy - dbias / m - xhat * dscale / m)``.
``backward_infer(dy, scale, run_var, eps, dx, y=None)``
    ``dx = dy * scale / sqrt(run_var + eps)`` (frozen statistics).
``axpby(x, y, alpha, beta)``
    ``y = alpha * x + beta * y`` elementwise, in place (parameter-gradient accumulation and updates);
    ``beta == 0`` overwrites ``y``.

Fused ReLU (``BatchNorm*(activation="relu")``): both forwards take ``relu=False``; with
``relu=True`` they write ``out = relu(fmaf(x - mean, a, bias))`` in the same pass, where
``relu(v) = 0 if v <= 0 else v`` (NaN stays NaN, -0 becomes +0). Both backwards take ``y=None``:
given the forward's output ``y`` (same shape and dtype as ``dy``), they use ``dy`` masked by it,
``dy' = 0 if y <= 0 else dy`` (a NaN output passes its gradient, as PyTorch's relu backward
does), everywhere ``dy`` appears above (sums and ``dx``), in the same pass. The rows x channels
entries below take the same keywords.

Pattern (a), statistics per contiguous row (LayerNorm, InstanceNorm2D, GroupNorm): ``x`` is read
as R rows of L contiguous values, R = ``savemean.size``. A row splits into L / ``spatial`` channels
of ``spatial`` values each; row r holds channels ``(r % groups) * (L / spatial) ...`` of the
per-channel ``scale`` and ``bias`` (``groups * L / spatial`` float32 values each). LayerNorm:
groups = spatial = 1; InstanceNorm2D: groups = C, spatial = H * W; GroupNorm: groups, spatial = S.

``per_row_forward(x, scale, bias, groups, spatial, eps, out, savemean, saveinvstd)``
    Per-row mean and biased variance; ``savemean = mean``, ``saveinvstd = 1 / sqrt(var + eps)``
    (R float32 values each); ``out = (x - mean) * a + bias``, ``a = scale * invstd``, in float32.
``per_row_backward(x, dy, scale, savemean, saveinvstd, groups, spatial, dx, dscale, dbias)``
    ``dbias = sum(dy)``, ``dscale = sum(dy * xhat)`` per channel (over rows and positions) and,
    unless ``dx`` is None, per row with ``g = dy * scale``:
    ``dx = invstd * (g - mean(g) - xhat * mean(g * xhat))``, evaluated in float32 as
    ``(dy * k - c0) - (x - mean) * c1`` with ``k = scale * invstd``, ``c0 = invstd * sum(g) / L``,
    ``c1 = invstd^3 * sum(g * (x - mean)) / L``.
The rows x channels family: the same four operations on data whose channels are the last axis
(C contiguous), with statistics per channel over all the leading axes: ``BatchNorm`` on (N, C) and
every channels-last layout ((N, L, C), (N, H, W, C), (N, D, H, W, C)). Same arguments, results and
rounding as above, with ``x`` (and ``out``, ``dy``, ``dx``) of shape (..., C):

``rows_forward_train(x, scale, bias, run_mean, run_var, eps, factor, out, savemean, saveinvvar, relu=False)``
``rows_forward_infer(x, scale, bias, run_mean, run_var, eps, out, relu=False)``
``rows_backward_train(x, dy, scale, savemean, saveinvvar, dx, dscale, dbias, y=None)``
``rows_backward_infer(dy, scale, run_var, eps, dx, y=None)``

Per-channel partials for statistics merged across processes (synchronized batch norm) are
composed from these entries in :mod:`batchnorm_lib.kernels.norm.partials`.

Data may be float32 on every backend and float16/bfloat16 where the backend lists it in
``supported_dtypes()``; statistics, parameters and accumulation are float32.
"""



def ops(backend=None):
    """The normalization implementation module of ``backend`` (default: the active one)."""
    from batchnorm_lib.kernels import implementation

    return implementation("norm", backend)
