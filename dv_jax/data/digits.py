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

import numpy as np

from dv_jax.data.splits import PoolTargetTest
from dv_jax.data.splits import pool_target_test

NUM_CLASSES = 10
FEATURE_SHAPE = (8, 8, 1)
NUM_EXAMPLES = 1797


# The digits' splits are the shared pool / target / test record.
DigitsSplits = PoolTargetTest


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
  digits = load_digits()
  x_all = (digits.images.astype(np.float32) / 16.0)[..., None]
  y_all = digits.target.astype(np.int32)
  return pool_target_test(x_all, y_all, num_classes=NUM_CLASSES, seed=seed,
                          pool_fraction=pool_fraction, target_size=target_size,
                          test_size=test_size)


__all__ = ['NUM_CLASSES', 'FEATURE_SHAPE', 'DigitsSplits', 'load_digits_splits']
