"""Variable: a parameter's data, its gradient and its per-variable rate factors."""

from batchnorm_lib.backend import gpuarray


class Variable:
    index = 0

    def __init__(self, data, name=None, withgrad=True, grad=None):
        if name is None:
            name = str(Variable.index)
            Variable.index += 1
        self.name = name
        self.data = data
        if grad is not None:
            self.grad = grad
        elif withgrad:
            self.grad = gpuarray.zeros(data.shape, dtype=data.dtype)
        else:
            self.grad = None
        # PuzzleLib's per-variable factors: optimizers scale the learning rate and momentum by them
        self.learnRate, self.momRate = 1.0, 1.0
        self.wc = 0.0

    def __repr__(self):
        return "Variable(name=%r, shape=%s, dtype=%s)" % (self.name, self.data.shape, self.data.dtype)
