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
``activation_forward(kind, x, out)``
    ``out = f(x)`` elementwise; ``kind`` is one of ``ACTIVATIONS``.
``activation_backward(kind, grad, y, dx)``
    ``dx = grad * f'(x)`` expressed through the forward output ``y = f(x)``.
``softmax_cross_entropy(scores, labels, grad, losses)``
    ``scores`` (N, C), ``labels`` N int32 class indices in [0, C). Per row ``p = softmax(scores)``:
    ``losses[i] = -log p[i, labels[i]]`` and ``grad[i] = (p[i] - onehot(labels[i])) / N``, the true
    gradient of the mean loss. Row maxima are subtracted first, so large scores do not overflow.
``sgd_update(param, grad, lr)``
    ``param -= lr * grad``.
``momentum_update(param, grad, mom, lr, momRate)``
    ``mom = momRate * mom - lr * grad``; ``param += mom``.
``adam_update(param, grad, mg, ms, lr, beta1, beta2, epsilon)``
    ``mg = beta1 * mg + (1 - beta1) * grad``; ``ms = beta2 * ms + (1 - beta2) * grad**2``;
    ``param -= lr * mg / (sqrt(ms) + epsilon)`` (``lr`` already carries Adam's bias correction).

Descent is built into the optimizer kernels: gradients are true gradients (dL/dparam) and the
updates subtract them.
"""

ACTIVATIONS = ("relu", "sigmoid", "tanh")


def ops(backend=None):
    """The dense-kernel implementation module of ``backend`` (default: the active one)."""
    from batchnorm_lib.kernels import implementation

    return implementation("dense", backend)
