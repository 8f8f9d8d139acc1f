"""Disjoint, class-stratified pool / target / test splits shared by the image data sets.

- `pool`: real examples that contributors draw from (and synthetic generators are fitted on);
- `target`: `T` of METHOD.md, the set every valuation method is measured against;
- `test`: the held-out split of the ground truth, disjoint from `T`, seen by no method.
"""

from typing import NamedTuple

import numpy as np

from dv_jax import checks
from dv_jax.data.contributors import Split


class PoolTargetTest(NamedTuple):
  """The three splits and their row indices into the full data set.

  Attributes:
    pool, target, test: `Split` with `x [n, ...]` float32, `y [n]` int32,
      `is_synthetic [n]` all False.
    pool_index, target_index, test_index: int64 `[n]` row indices, pairwise disjoint.
  """
  pool: Split
  target: Split
  test: Split
  pool_index: np.ndarray
  target_index: np.ndarray
  test_index: np.ndarray


def stratified_take(index, labels, size: int, seed: int):
  """Splits `index` into (`size` rows, the rest), stratified by `labels`, both sorted.

  Exact sizes (scikit-learn's `train_test_split`), unlike per-class rounding. scikit-learn
  needs at least one row per class on both sides and two rows in every class; when either
  side is smaller than the number of classes (e.g. a pool of all but a few rows) or a class
  has a single row, each class gets instead its largest-remainder share of `size` (every
  class within one row of `size * count / n`), still exactly `size` in all.

  Args:
    index: int `[n]` distinct row indices.
    labels: `[n]` labels of those rows.
    size: rows to take, `1 <= size <= n`.
    seed: shuffle seed, in `[0, 2^32 - 1]`.

  Returns:
    `(taken, rest)` int64 index arrays.

  Raises:
    ValueError: naming the argument: `index` not distinct integers, `size` outside
      `[1, n]`, `labels` not matching `index`, `seed` not an integer in `[0, 2^32 - 1]`.
  """
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  # Integers, not cast: 2.5 would be row 2. Distinct: a repeated row could land in both
  # taken and rest ([0, 0, 0, 1, 1, 1] gave ([0, 1], [0, 0, 1, 1])).
  index = checks.check_indices(index, 'index')
  repeats = index.size - np.unique(index).size
  if repeats:
    raise ValueError(f'index must not repeat a row, got {repeats} repeats')
  labels = np.asarray(labels)
  n = index.shape[0]
  if labels.shape != (n,):
    raise ValueError(f'labels must have shape ({n},) like index, got {labels.shape}')
  size = checks.check_int(size, 'size', maximum=n)
  seed = checks.check_seed(seed)  # else scikit-learn's error names random_state
  if size == n:
    return np.sort(index), index[:0]
  counts = np.unique(labels, return_counts=True)[1]
  # Exactly the cases scikit-learn accepts keep its draw, so existing splits (and the
  # results cached from them) stay bit-identical.
  if counts.min() >= 2 and min(size, n - size) >= counts.size:
    taken, rest = train_test_split(index, train_size=size, stratify=labels, random_state=seed)
    return np.sort(taken), np.sort(rest)
  taken = index[_largest_remainder_take(labels, size, seed)]
  return np.sort(taken), np.sort(np.setdiff1d(index, taken))


def _largest_remainder_take(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Positions of `size` rows: `floor(size * count_c / n)` of class c, plus one for the
  classes with the largest remainders (ties broken at random), each drawn at random."""
  rng = np.random.default_rng(seed)
  n = labels.shape[0]
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  # Integer arithmetic: a float share like 0.3 * 10 could floor to 2.
  quota, remainder = np.divmod(size * counts, n)
  extra = int(size - quota.sum())
  order = np.lexsort((rng.random(classes.size), -remainder))
  quota[order[:extra]] += 1
  chosen = [rng.permutation(np.flatnonzero(inverse == c))[:quota[c]]
            for c in range(classes.size)]
  return np.concatenate(chosen)


def pool_target_test(x_all: np.ndarray, y_all: np.ndarray, *, num_classes: int, seed: int,
                     pool_fraction: float, target_size: int, test_size: int) -> PoolTargetTest:
  """Splits a labelled data set into pool / target / test, stratified by class.

  `test_size` rows go to the test split and `target_size` rows to the target; the pool is
  `round(pool_fraction * rest)` of the remaining rows. Deterministic given `seed`.

  Args:
    x_all: `[N, ...]` float32 features.
    y_all: `[N]` int32 labels in `[0, num_classes)`.
    num_classes: `c`; every split needs at least one row per class.
    seed: seed of the stratified shuffles.
    pool_fraction: fraction of the remaining rows kept in the pool, in `(0, 1]`.
    target_size: number of target examples, `>= num_classes`.
    test_size: number of test examples, `>= num_classes`.

  Returns:
    `PoolTargetTest`.

  Raises:
    ValueError: naming the argument when a size, `num_classes`, the fraction or the seed
      is out of range, `x_all` has NaN or Inf, `x_all` and `y_all` differ in length, a
      label lies outside
      `[0, num_classes)`, or the sizes leave fewer than `num_classes` rows for the pool.
  """
  num_classes = checks.check_int(num_classes, 'num_classes')  # 2.5 was compared as is
  y_all = np.asarray(y_all)
  if y_all.ndim != 1 or not np.issubdtype(y_all.dtype, np.integer):
    raise ValueError(f'y_all must be 1-D integer labels [N], got {y_all.dtype} '
                     f'{y_all.shape}')
  num_examples = int(y_all.shape[0])
  # Without these checks a longer x_all lost its extra rows and a shorter one failed as an
  # IndexError; labels outside [0, num_classes) were split as if they were valid classes.
  if np.ndim(x_all) < 1 or np.shape(x_all)[0] != num_examples:
    raise ValueError(f'x_all must have {num_examples} rows like y_all, got shape '
                     f'{np.shape(x_all)}')
  x_all = np.asarray(x_all)
  # Every split inherits the rows as they are: NaN features would reach each model.
  if np.issubdtype(x_all.dtype, np.inexact) and not np.all(np.isfinite(x_all)):
    raise ValueError('x_all contains NaN or Inf')
  if num_examples and (y_all.min() < 0 or y_all.max() >= num_classes):
    raise ValueError(f'y_all has labels in [{y_all.min()}, {y_all.max()}], expected '
                     f'[0, {num_classes})')
  fraction = checks.unit_fraction(pool_fraction)  # not float(): None, '0.5', True
  if not fraction:  # None or 0
    raise ValueError(f'pool_fraction must be in (0, 1], got {pool_fraction!r}')
  # The three takes use seed, seed + 1 and seed + 2, each a scikit-learn random_state that
  # must lie below 2**32.
  seed = checks.check_int(seed, 'seed', minimum=0, maximum=2**32 - 3)
  target_size = checks.check_int(target_size, 'target_size', minimum=num_classes)
  test_size = checks.check_int(test_size, 'test_size', minimum=num_classes)
  rest_size = num_examples - target_size - test_size
  pool_size = int(round(fraction * rest_size))
  if pool_size < num_classes:
    raise ValueError(f'target_size={target_size} and test_size={test_size} with '
                     f'pool_fraction={pool_fraction} leave {pool_size} pool rows of '
                     f'{num_examples}; need >= {num_classes}')
  index = np.arange(num_examples)
  test_index, rest = stratified_take(index, y_all, test_size, seed)
  target_index, rest = stratified_take(rest, y_all[rest], target_size, seed + 1)
  pool_index, _ = stratified_take(rest, y_all[rest], pool_size, seed + 2)

  def split(idx):
    return Split(x_all[idx], y_all[idx], np.zeros(idx.shape[0], bool))

  return PoolTargetTest(split(pool_index), split(target_index), split(test_index),
                        pool_index, target_index, test_index)
