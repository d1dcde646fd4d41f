"""One dispatch for the dense-network operations (Linear, Activation, costs, optimizers).

``ops()`` returns the implementation for the active backend; every implementation module exports
the same functions with the same contract. Arrays are arrays of that backend, C-contiguous, float32
unless said otherwise; "in place" results are written into the named argument.

``gemm_status() -> (ok, reason)``
    Whether ``gemm`` can run here (on CUDA it needs cuBLAS); ``reason`` says why not.
``gemm(a, b, out, transA=False, transB=False, alpha=1.0, beta=0.0)``
    ``out = alpha * op(a) @ op(b) + beta * out`` for row-major 2-D matrices, ``op(x)`` being ``x.T``
    when the matching flag is set. ``beta == 0`` overwrites ``out`` (stale NaN does not survive).
``add_bias(out, bias)``
    ``out[i, :] += bias`` for an (N, M) ``out`` and an M-element ``bias``.
``bias_grad(grad, out, alpha, beta)``
    ``out = alpha * grad.sum(axis=0) + beta * out`` for an (N, M) ``grad``; ``beta == 0``
    overwrites.
``activation_forward(kind, x, out, a=0.0, b=0.0)``
    ``out = f(x)`` elementwise; ``kind`` is one of ``ACTIVATIONS``; ``a``, ``b`` are its
    parameters (leakyRelu's slope ``a``, elu's ``a``, clip's bounds ``[a, b]``). NaN stays NaN
    in every kind (as in PyTorch).
``activation_backward(kind, grad, y, dx, a=0.0, b=0.0)``
    ``dx = grad * f'(x)`` expressed through the forward output ``y = f(x)``; relu's mask is
    ``y <= 0 -> 0`` (a NaN output passes its gradient, as PyTorch's relu backward and the fused
    relu of the batch norm contract do).
``softmax_cross_entropy(scores, labels, grad, losses, weights=None)``
    ``scores`` (N, C, *spatial), ``labels`` (N, *spatial) int32 class indices in [0, C),
    ``weights`` None or C per-class weights. Per (sample, position) ``p = softmax`` over C:
    ``losses[n, s] = -w[label] * log p[label]`` and ``grad[n, c, s] = w[c] * (onehot - p) / N``,
    the *negative* gradient (PuzzleLib's convention and weighting). Maxima are subtracted first,
    so large scores do not overflow.
``mse(pred, target, grad, scale) -> float``
    ``grad = (target - pred) * scale`` (the negative gradient); returns ``sum((target - pred)**2)``.
``sgd_update(param, grad, lr)``
    ``param += lr * grad``.
``momentum_update(param, grad, mom, lr, momRate)``
    ``mom = momRate * mom + lr * grad``; ``param += mom``.
``adam_update(param, grad, mg, ms, lr, beta1, beta2, epsilon)``
    ``mg = beta1 * mg + (1 - beta1) * grad``; ``ms = beta2 * ms + (1 - beta2) * grad**2``;
    ``param += lr * mg / (sqrt(ms) + epsilon)`` (``lr`` already carries Adam's bias correction).

PuzzleLib's sign convention: costs return the negative gradient of the loss (-dL/dscores),
modules pass it back linearly, and the optimizer updates *add* ``lr * grad``, so a positive rate
descends.
"""

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leakyRelu", "elu", "softPlus", "clip")


def ops(backend=None):
    """The dense-kernel implementation module of ``backend`` (default: the active one)."""
    from batchnorm_lib.kernels import implementation

    return implementation("dense", backend)
