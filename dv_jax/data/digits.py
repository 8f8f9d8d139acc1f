"""scikit-learn's bundled handwritten digits (1,797 8x8 images, no download).

The data set is split into three disjoint, stratified parts:

- ``pool``: real examples that contributors draw from (and the synthetic generator is
  fitted on);
- ``target``: ``T`` of METHOD.md, the set the valuation is measured against;
- ``test``: the held-out split of the ground truth, disjoint from ``T``.

Features are float32 images in ``[0, 1]`` (pixel / 16) of shape ``[n, 8, 8, 1]`` (NHWC): the
CNN reads them as they are and the MLP flattens every trailing axis, so one layout serves
both models.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dv_jax.data.contributors import Split

NUM_CLASSES = 10
FEATURE_SHAPE = (8, 8, 1)
NUM_EXAMPLES = 1797


class DigitsSplits(NamedTuple):
  """The three splits and the row indices (into ``sklearn.datasets.load_digits``) they use.

  Attributes:
    pool, target, test: ``Split`` with ``x [n, 8, 8, 1]`` float32 in ``[0, 1]``,
      ``y [n]`` int32, ``is_synthetic [n]`` all False.
    pool_index, target_index, test_index: ``[n]`` int64 row indices, pairwise disjoint.
  """
  pool: Split
  target: Split
  test: Split
  pool_index: np.ndarray
  target_index: np.ndarray
  test_index: np.ndarray


def _stratified_take(index: np.ndarray, labels: np.ndarray, size: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Splits ``index`` into (taken ``size`` rows, the rest), stratified by ``labels``."""
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  if size == index.shape[0]:
    return index, index[:0]
  taken, rest = train_test_split(index, train_size=size, stratify=labels, random_state=seed)
  return np.sort(taken), np.sort(rest)


def load_digits_splits(*, seed: int = 0, pool_fraction: float = 1.0, target_size: int = 200,
                       test_size: int = 400) -> DigitsSplits:
  """Loads the digits and splits them into pool / target / test, stratified by class.

  ``test_size`` rows go to the test split and ``target_size`` rows to the target, both
  stratified; the pool is ``round(pool_fraction * rest)`` of the remaining rows (stratified).
  Deterministic given ``seed``.

  Args:
    seed: seed of the stratified shuffles.
    pool_fraction: fraction of the remaining rows kept in the pool, in ``(0, 1]``.
    target_size: number of target examples, ``>= 10`` (one per class at least).
    test_size: number of test examples, ``>= 10``.

  Returns:
    ``DigitsSplits``.

  Raises:
    ValueError: naming the argument when a size or the fraction is out of range, or the
      sizes leave fewer than 10 rows for the pool.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
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
  digits = load_digits()
  x_all = (digits.images.astype(np.float32) / 16.0)[..., None]
  y_all = digits.target.astype(np.int32)
  index = np.arange(y_all.shape[0])
  test_index, rest = _stratified_take(index, y_all, int(test_size), seed)
  target_index, rest = _stratified_take(rest, y_all[rest], int(target_size), seed + 1)
  pool_index, _ = _stratified_take(rest, y_all[rest], pool_size, seed + 2)

  def split(idx):
    return Split(x_all[idx], y_all[idx], np.zeros(idx.shape[0], bool))

  return DigitsSplits(split(pool_index), split(target_index), split(test_index),
                      pool_index, target_index, test_index)


__all__ = ['NUM_CLASSES', 'FEATURE_SHAPE', 'DigitsSplits', 'load_digits_splits']
