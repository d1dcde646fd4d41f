"""Compare the GPU's kernel outputs with the simulator's, bit for bit, operation by operation.

    python scripts/compare_cudasim.py                    # on a GPU host: cuda against cudasim
    python scripts/compare_cudasim.py --against cudasim  # the comparison itself, without a GPU

Every batch-norm and dense operation runs on the same random inputs (odd sizes, float32, float16
and, where the device has it, bfloat16) on both backends in one process; the table lists the
kernels each operation launched (as the simulator counted them), the largest difference in float32
ulps and whether the bits are equal. Under the project's floating-point policy (nvcc -fmad=false,
see docs/cudasim.md) every operation built from IEEE arithmetic must match exactly; those that
call CUDA's expf/logf/tanhf (softmax cross-entropy, sigmoid and tanh forward) are only within
CUDA's documented ulp bounds of the host's libm and are reported, not failed. Exit status 0 when
every exact operation matched, 1 otherwise, 2 when a backend is unavailable.
"""

import argparse
import os
import sys

import numpy as np

from batchnorm_lib import config

# operations whose kernels call CUDA's library functions with an ulp bound, not IEEE-exact ones
WITHIN_BOUND = {"softmax_cross_entropy", "activation_forward sigmoid", "activation_forward tanh",
                "activation_forward elu", "activation_forward softPlus",
                "activation_backward softPlus"}  # expm1f, expf, log1pf: the host libm's bits


def _two_pass(case):
    """``case`` with the single-read training kernels turned off."""
    def run(ops, dense, to_gpu):
        saved = os.environ.get(ops.SINGLE_READ_ENV)
        os.environ[ops.SINGLE_READ_ENV] = "0"
        try:
            return case(ops, dense, to_gpu)
        finally:
            if saved is None:
                del os.environ[ops.SINGLE_READ_ENV]
            else:
                os.environ[ops.SINGLE_READ_ENV] = saved
    return run


def _cases(rng, dtypes):
    """(name, dtype, callable(ops, dense, to_gpu) -> list of output arrays) for every operation."""
    cases = []
    for dtype in dtypes:
        for shape in ((5, 3, 7, 9), (4, 6, 1, 1), (3, 2, 33), (2, 3, 8, 8)):
            x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
            dy = rng.standard_normal(shape).astype(np.float32)
            c = shape[1]
            scale = (rng.standard_normal(c) + 1).astype(np.float32)
            bias = rng.standard_normal(c).astype(np.float32)
            rmean = rng.standard_normal(c).astype(np.float32)
            rvar = (rng.random(c) + 0.5).astype(np.float32)

            def train(ops, dense, to_gpu, x=x, scale=scale, bias=bias, rmean=rmean, rvar=rvar,
                      dtype=dtype):
                xs = to_gpu(x.astype(dtype))
                out = to_gpu(np.zeros(x.shape, dtype))
                sm, si = to_gpu(np.zeros(len(scale), np.float32)), to_gpu(np.zeros(len(scale), np.float32))
                rm, rv = to_gpu(rmean.copy()), to_gpu(rvar.copy())
                ops.forward_train(xs, to_gpu(scale), to_gpu(bias), rm, rv, 1e-5, 0.1, out, sm, si)
                return [out, sm, si, rm, rv]

            def infer(ops, dense, to_gpu, x=x, scale=scale, bias=bias, rmean=rmean, rvar=rvar,
                      dtype=dtype):
                out = to_gpu(np.zeros(x.shape, dtype))
                ops.forward_infer(to_gpu(x.astype(dtype)), to_gpu(scale), to_gpu(bias),
                                  to_gpu(rmean), to_gpu(rvar), 1e-5, out)
                return [out]

            def backward(ops, dense, to_gpu, x=x, dy=dy, scale=scale, dtype=dtype):
                c = len(scale)
                xs, dys = to_gpu(x.astype(dtype)), to_gpu(dy.astype(dtype))
                out = to_gpu(np.zeros(x.shape, dtype))
                sm, si = to_gpu(np.zeros(c, np.float32)), to_gpu(np.zeros(c, np.float32))
                rm, rv = to_gpu(np.zeros(c, np.float32)), to_gpu(np.ones(c, np.float32))
                ops.forward_train(xs, to_gpu(scale), to_gpu(np.zeros(c, np.float32)), rm, rv,
                                  1e-5, 0.1, out, sm, si)
                dx = to_gpu(np.zeros(x.shape, dtype))
                ds, db = to_gpu(np.zeros(c, np.float32)), to_gpu(np.zeros(c, np.float32))
                ops.backward_train(xs, dys, to_gpu(scale), sm, si, dx, ds, db)
                return [dx, ds, db]

            def backward_infer(ops, dense, to_gpu, dy=dy, scale=scale, rvar=rvar, dtype=dtype):
                dx = to_gpu(np.zeros(dy.shape, dtype))
                ops.backward_infer(to_gpu(dy.astype(dtype)), to_gpu(scale), to_gpu(rvar), 1e-5, dx)
                return [dx]

            tag = "%s %s" % (np.dtype(dtype).name, "x".join(map(str, shape)))
            cases += [("forward_train " + tag, train), ("forward_infer " + tag, infer),
                      ("backward_train " + tag, backward),
                      ("backward_infer " + tag, backward_infer)]
            # the training passes once more on the two-pass kernels, which the single-read ones
            # (kernels/norm/persistent.cu) replace wherever the data fits on chip
            cases += [("forward_train two-pass " + tag, _two_pass(train)),
                      ("backward_train two-pass " + tag, _two_pass(backward))]
    cases += _relu_and_misaligned_cases(rng, dtypes)
    a = rng.standard_normal(37).astype(np.float32)
    b = rng.standard_normal(37).astype(np.float32)

    def axpby(ops, dense, to_gpu):
        y = to_gpu(b.copy())
        ops.axpby(to_gpu(a), y, 0.7, 0.3)
        return [y]

    cases.append(("axpby", axpby))
    rows, cols = 13, 45
    m = rng.standard_normal((rows, cols)).astype(np.float32)
    g = rng.standard_normal((rows, cols)).astype(np.float32)
    v = rng.standard_normal(cols).astype(np.float32)
    labels = rng.integers(0, cols, rows).astype(np.int32)

    def dense_case(fn):
        return lambda ops, dense, to_gpu: fn(dense, to_gpu)

    def add_bias(dense, to_gpu):
        out = to_gpu(m.copy())
        dense.add_bias(out, to_gpu(v))
        return [out]

    def bias_grad(dense, to_gpu):
        out = to_gpu(v.copy())
        dense.bias_grad(to_gpu(g), out, 0.5, 0.25)
        return [out]

    def act(kind, backward, params):
        def run(dense, to_gpu):
            y = to_gpu(np.zeros_like(m))
            dense.activation_forward(kind, to_gpu(m), y, *params)
            if not backward:
                return [y]
            dx = to_gpu(np.zeros_like(m))
            dense.activation_backward(kind, to_gpu(g), to_gpu(np.tanh(m)), dx, *params)
            return [dx]
        return run

    def softmax(dense, to_gpu):
        grad, losses = to_gpu(np.zeros_like(m)), to_gpu(np.zeros(rows, np.float32))
        dense.softmax_cross_entropy(to_gpu(m), to_gpu(labels), grad, losses)
        return [grad, losses]

    def mse(dense, to_gpu):
        grad = to_gpu(np.zeros_like(m))
        error = dense.mse(to_gpu(m), to_gpu(g), grad, 1.0 / m.size)
        return [grad, to_gpu(np.array([error], np.float32))]

    def optimizers(dense, to_gpu):
        p1, p2, p3 = to_gpu(v.copy()), to_gpu(v.copy()), to_gpu(v.copy())
        mom, mg, ms = to_gpu(v * 0.1), to_gpu(v * 0.2), to_gpu(v * v)
        gr = to_gpu(a[:cols] if cols <= len(a) else np.resize(a, cols))
        dense.sgd_update(p1, gr, 0.01)
        dense.momentum_update(p2, gr, mom, 0.01, 0.9)
        dense.adam_update(p3, gr, mg, ms, 0.001, 0.9, 0.999, 1e-8)
        return [p1, p2, mom, p3, mg, ms]

    cases += [("add_bias", dense_case(add_bias)), ("bias_grad", dense_case(bias_grad)),
              ("softmax_cross_entropy", dense_case(softmax)), ("mse", dense_case(mse)),
              ("optimizer updates", dense_case(optimizers))]
    for kind, params in (("relu", ()), ("sigmoid", ()), ("tanh", ()), ("leakyRelu", (0.01,)),
                         ("elu", (1.0,)), ("softPlus", ()), ("clip", (-0.5, 0.75))):
        cases.append(("activation_forward " + kind, dense_case(act(kind, False, params))))
        cases.append(("activation_backward " + kind, dense_case(act(kind, True, params))))
    return cases


def _relu_and_misaligned_cases(rng, dtypes):
    """The fused-ReLU passes (relu=True forward, the output y masking the backward) on the scalar,
    16-byte and column paths, and every pass on data one element off 16-byte alignment (the
    scalar elementwise kernels)."""
    cases = []
    for dtype in dtypes:
        for shape, misaligned in (((5, 3, 7, 9), False), ((2, 3, 8, 8), False),
                                  ((4, 6, 1, 1), False), ((5, 3, 7, 9), True)):
            x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
            dy = rng.standard_normal(shape).astype(np.float32)
            mask = np.where(rng.random(shape) < 0.3, 0.0, rng.standard_normal(shape))
            c = shape[1]
            scale = (rng.standard_normal(c) + 1).astype(np.float32)
            bias = rng.standard_normal(c).astype(np.float32)
            rvar = (rng.random(c) + 0.5).astype(np.float32)

            def passes(ops, dense, to_gpu, x=x, dy=dy, mask=mask, scale=scale, bias=bias,
                       rvar=rvar, dtype=dtype, misaligned=misaligned):
                def data(a):
                    a = np.asarray(a).astype(dtype)
                    if not misaligned:
                        return to_gpu(a)
                    return to_gpu(np.concatenate([np.zeros(1, dtype), a.ravel()]))[1:] \
                        .reshape(a.shape)

                c = len(scale)
                vec = lambda v: to_gpu(np.asarray(v, np.float32))  # noqa: E731
                xs, dys, ys = data(x), data(dy), data(mask)
                outs = []
                for relu in (False, True) if misaligned else (True,):
                    out, dx, dxi = data(np.zeros(x.shape)), data(np.zeros(x.shape)), \
                        data(np.zeros(x.shape))
                    sm, si, rm, rv = vec(np.zeros(c)), vec(np.zeros(c)), vec(np.zeros(c)), \
                        vec(np.ones(c))
                    ds, db = vec(np.zeros(c)), vec(np.zeros(c))
                    y = out if relu else None
                    ops.forward_train(xs, vec(scale), vec(bias), rm, rv, 1e-5, 0.1, out, sm, si,
                                      relu=relu)
                    ops.backward_train(xs, dys, vec(scale), sm, si, dx, ds, db, y=y)
                    inf = data(np.zeros(x.shape))
                    ops.forward_infer(xs, vec(scale), vec(bias), rm, rv, 1e-5, inf, relu=relu)
                    ops.backward_infer(dys, vec(scale), vec(rvar), 1e-5, dxi,
                                       y=ys if relu else None)
                    outs += [out, sm, si, rm, rv, dx, ds, db, inf, dxi]
                return outs

            tag = "%s %s" % (np.dtype(dtype).name, "x".join(map(str, shape)))
            name = "misaligned passes " + tag if misaligned else "relu passes " + tag
            # on the single-read training kernels where the data fits, and on the two-pass ones
            cases += [(name, passes), (name + " two-pass", _two_pass(passes))]
    return cases


def _run(backend, cases):
    from batchnorm_lib.kernels.dense import cuda as dense_cuda
    from batchnorm_lib.kernels.norm import cuda as norm_cuda

    config.set_backend(backend)
    module = config.backend_module()
    results, launched = {}, {}
    counts = None
    if backend == "cudasim":
        from batchnorm_lib.backend.cudasim import compiler
        counts = compiler.launch_counts
    for name, fn in cases:
        before = dict(counts) if counts is not None else {}
        outs = fn(norm_cuda, dense_cuda, module.to_gpu)
        results[name] = [np.asarray(o.get()) for o in outs]
        if counts is not None:
            launched[name] = sorted(k for k in counts if counts[k] != before.get(k, 0))
    return results, launched


def _ulps(a, b):
    a32, b32 = a.astype(np.float32).ravel(), b.astype(np.float32).ravel()
    both_nan = np.isnan(a32) & np.isnan(b32)
    ia, ib = a32.view(np.int32).astype(np.int64), b32.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    d = np.abs(ia - ib)
    d[both_nan] = 0
    return int(d.max()) if d.size else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="cuda", choices=("cuda", "cudasim"),
                        help="the backend compared with cudasim (default: cuda, the GPU)")
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args(argv)
    for backend in {args.against, "cudasim"}:
        ok, why = config.probe(backend)
        if not ok:
            print("compare_cudasim: backend %s unavailable: %s" % (backend, why), file=sys.stderr)
            return 2
    previous = config.get_backend()
    try:
        dtypes = [np.float32, np.float16]
        config.set_backend(args.against)
        bf16 = [d for d in config.backend_module().supported_dtypes() if d.name == "bfloat16"]
        config.set_backend("cudasim")
        bf16 = [d for d in bf16 if d in config.backend_module().supported_dtypes()]
        cases = _cases(np.random.default_rng(args.seed), dtypes + bf16)
        gpu, _ = _run(args.against, cases)
        sim, launched = _run("cudasim", cases)
    finally:
        config.set_backend(previous)
    failed = 0
    print("| operation | kernels (cudasim) | max ulps | bits |")
    print("|---|---|---|---|")
    for name, _ in cases:
        diffs = [_ulps(x, y) if x.dtype.kind == "f" else int(np.any(x != y))
                 for x, y in zip(gpu[name], sim[name])]
        same = all(x.tobytes() == y.tobytes() for x, y in zip(gpu[name], sim[name]))
        bound = any(name.startswith(w) for w in WITHIN_BOUND)
        verdict = "equal" if same else ("differ (within bound)" if bound else "DIFFER")
        failed += not same and not bound
        print("| %s | %s | %d | %s |" % (name, ", ".join(launched.get(name, [])) or "-",
                                         max(diffs), verdict))
    print("\n%d operation(s) with exact arithmetic differ" % failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
