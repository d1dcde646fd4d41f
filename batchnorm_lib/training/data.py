"""Data sets for the examples: scikit-learn's bundled digits (no network needed)."""

from dataclasses import dataclass

import numpy as np


class MissingExtraError(ImportError):
    """An optional dependency of the examples is not installed; the message says what to install."""

    def __init__(self, package):
        super().__init__('this needs %s, which is not installed; install the examples extra: '
                         'pip install "batchnorm_lib[examples]"' % package)
        self.package = package


@dataclass
class Dataset:
    """Host arrays: ``x`` float32 (samples, features), ``y`` int32 (samples,)."""

    xtrain: np.ndarray
    ytrain: np.ndarray
    xtest: np.ndarray
    ytest: np.ndarray
    classes: int
    name: str = ""

    @property
    def features(self):
        return self.xtrain.shape[1]

    def subset(self, ntrain, ntest=None):
        """The first ``ntrain`` training and ``ntest`` test samples (for quick runs and tests)."""
        ntest = len(self.ytest) if ntest is None else ntest
        return Dataset(self.xtrain[:ntrain], self.ytrain[:ntrain], self.xtest[:ntest],
                       self.ytest[:ntest], self.classes, self.name)


def load_digits(test_fraction=0.2, seed=0):
    """The 8x8 handwritten digits (1797 samples, 64 features, 10 classes) from scikit-learn.

    Pixels (0..16) are scaled to [0, 1] and nothing else, so the network sees unnormalized
    features; the split is stratified and fixed by ``seed``.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise MissingExtraError("scikit-learn") from None
    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                          stratify=y)
    return Dataset(np.ascontiguousarray(xtr), np.ascontiguousarray(ytr),
                   np.ascontiguousarray(xte), np.ascontiguousarray(yte), 10, "digits")
