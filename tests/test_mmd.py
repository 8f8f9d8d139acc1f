"""Tests of dv_jax.mmd against float64 NumPy double sums (the library runs in float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax import mmd

# float32 kernel sums of O(1) terms against float64: absolute error on MMD^2.
ATOL = 2e-6


def _sets(n, m, d, seed, shift=0.5):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift


def _np_kernel(a, b, bandwidths, a_labels=None, b_labels=None):
  d2 = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
  k = np.mean(np.exp(-d2[..., None] / (2 * np.asarray(bandwidths, np.float64))), axis=-1)
  if a_labels is not None:
    k = k * (np.asarray(a_labels)[:, None] == np.asarray(b_labels)[None, :])
  return k


def _np_mmd2(x, y, bandwidths, estimator, x_labels=None, y_labels=None):
  kxx = _np_kernel(x, x, bandwidths, x_labels, x_labels)
  kyy = _np_kernel(y, y, bandwidths, y_labels, y_labels)
  kxy = _np_kernel(x, y, bandwidths, x_labels, y_labels)
  n, m = len(x), len(y)
  if estimator == 'biased':
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()
  return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
          + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def _np_linear_mmd2(x, y, bandwidths, x_labels=None, y_labels=None):
  length = min(len(x), len(y))
  pairs = length // 2
  x_labels = np.zeros(len(x), int) if x_labels is None else np.asarray(x_labels)
  y_labels = np.zeros(len(y), int) if y_labels is None else np.asarray(y_labels)
  total = 0.0
  for i in range(pairs):  # the textbook loop over pairs (z_2i, z_2i+1)
    x1, x2, y1, y2 = x[2 * i], x[2 * i + 1], y[2 * i], y[2 * i + 1]
    lx1, lx2, ly1, ly2 = x_labels[2 * i], x_labels[2 * i + 1], y_labels[2 * i], y_labels[2 * i + 1]
    k = lambda a, b: np.mean(np.exp(-np.sum((a - b) ** 2) / (2 * np.asarray(bandwidths))))
    total += (k(x1, x2) * (lx1 == lx2) + k(y1, y2) * (ly1 == ly2) - k(x1, y2) * (lx1 == ly2)
              - k(x2, y1) * (lx2 == ly1))
  return total / pairs


def _np_bandwidths(target, num_kernels):
  diff = target[:, None, :] - target[None, :, :]
  d2 = np.sum(diff ** 2, axis=-1)[np.triu_indices(len(target), 1)]
  return np.median(d2) * 2.0 ** (np.arange(num_kernels) - num_kernels // 2)


@pytest.mark.parametrize('m,d,num_kernels', [(2, 1, 5), (5, 3, 1), (8, 2, 4), (30, 4, 5)])
def test_bandwidths_match_numpy_median(m, d, num_kernels):
  # m = 5: 10 pairs (even, mean of the middle two); m = 2: one pair; m = 30: 435 (odd).
  target = np.random.default_rng(m).normal(size=(m, d)) * 3.0 + 10.0
  np.testing.assert_allclose(mmd.bandwidths_from(target, num_kernels),
                             _np_bandwidths(target, num_kernels), rtol=1e-5)
  np.testing.assert_allclose(mmd.median_heuristic(target),
                             _np_bandwidths(target, 1)[0], rtol=1e-5)


def test_median_heuristic_subsamples_evenly_and_deterministically():
  x = np.random.default_rng(0).normal(size=(120, 3))
  rows = np.round(np.linspace(0, 119, 40)).astype(int)
  assert len(np.unique(rows)) == 40
  expected = _np_bandwidths(x[rows], 1)[0]
  np.testing.assert_allclose(mmd.median_heuristic(x, max_rows=40), expected, rtol=1e-5)
  assert mmd.MEDIAN_MAX_ROWS == 2048


def test_a_median_past_the_float32_range_is_refused_by_name():
  # Finite float32 features 1e19 apart: the median squared distance was inf, every
  # bandwidth inf, and mk_mmd returned NaN without a word.
  rng = np.random.default_rng(0)
  x, y = (rng.normal(size=(n, 3)).astype(np.float32) * np.float32(1e19) for n in (5, 7))
  assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
  with pytest.raises(ValueError, match='target: the median pairwise squared distance '
                                       'overflows'):
    mmd.mk_mmd(x, y)
  with pytest.raises(ValueError, match='x: the median pairwise squared distance overflows'):
    mmd.median_heuristic(x)
  assert np.isfinite(mmd.mk_mmd(x * 1e-2, y * 1e-2).value)  # 1e17: in range
  # Below that the median is finite but the kernel sums' squared norms (or the widest
  # bandwidth, 4 s) are not: MMD^2 was NaN there too.
  for scale, estimator in ((0.5, 'biased'), (0.5, 'unbiased'), (0.7, 'biased'),
                           (0.7, 'linear')):
    with pytest.raises(ValueError, match='MMD\\^2 is not finite: the squared distances or '
                                         'bandwidths overflow float32'):
      mmd.mk_mmd(x * np.float32(scale), y * np.float32(scale), estimator=estimator)


# (n, m, d, block_size): unequal sizes, n not a multiple of the block, n and m below and
# above the block, one feature.
CASES = [(6, 6, 2, 512), (13, 9, 3, 4), (17, 5, 1, 8), (3, 20, 4, 7)]


@pytest.mark.parametrize('estimator', ['biased', 'unbiased'])
@pytest.mark.parametrize('n,m,d,block_size', CASES)
def test_mk_mmd2_matches_numpy_double_sum(estimator, n, m, d, block_size):
  x, y = _sets(n, m, d, seed=n * m)
  bandwidths = _np_bandwidths(y, 5)
  got = mmd.mk_mmd2(x, y, estimator=estimator, block_size=block_size)
  assert got.shape == ()
  np.testing.assert_allclose(got, _np_mmd2(x, y, bandwidths, estimator), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize('estimator', ['biased', 'unbiased'])
def test_label_aware_product_kernel_matches_numpy(estimator):
  x, y = _sets(11, 9, 2, seed=1)
  x_labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0])
  y_labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
  bandwidths = np.array([0.5, 1.0, 2.0])
  got = mmd.mk_mmd2(x, y, bandwidths=bandwidths, estimator=estimator, block_size=4,
                    x_labels=x_labels, y_labels=y_labels)
  expected = _np_mmd2(x, y, bandwidths, estimator, x_labels, y_labels)
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-5)
  # All labels equal: the plain feature MMD.
  same = mmd.mk_mmd2(x, y, bandwidths=bandwidths, estimator=estimator,
                     x_labels=np.zeros(11, int), y_labels=np.zeros(9, int))
  np.testing.assert_allclose(same, _np_mmd2(x, y, bandwidths, estimator), atol=ATOL)


def test_labels_see_label_noise_that_features_cannot():
  x = np.random.default_rng(2).normal(size=(16, 2))
  labels = np.arange(16) % 2
  bandwidths = np.array([1.0, 2.0])
  plain = mmd.mk_mmd2(x, x, bandwidths=bandwidths)
  flipped = mmd.mk_mmd2(x, x, bandwidths=bandwidths, x_labels=1 - labels, y_labels=labels)
  assert abs(float(plain)) < 1e-6
  np.testing.assert_allclose(flipped, _np_mmd2(x, x, bandwidths, 'biased', 1 - labels, labels),
                             atol=ATOL)
  assert float(flipped) > 100 * ATOL


@pytest.mark.parametrize('n,m', [(10, 10), (9, 14), (15, 6)])
def test_linear_estimator_matches_numpy(n, m):
  x, y = _sets(n, m, 3, seed=n + m)
  bandwidths = _np_bandwidths(y, 5)
  got = mmd.mk_mmd2(x, y, estimator='linear')
  np.testing.assert_allclose(got, _np_linear_mmd2(x, y, bandwidths), atol=ATOL, rtol=1e-5)


def test_label_aware_linear_estimator_matches_numpy():
  # n = 9, m = 12: the first 9 rows of each set, 4 pairs; the labels mask each of the four
  # kernel terms of h separately.
  x, y = _sets(9, 12, 3, seed=3)
  x_labels, y_labels = np.arange(9) % 2, (np.arange(12) // 2) % 2
  bandwidths = np.array([0.5, 1.0, 2.0])
  got = mmd.mk_mmd2(x, y, bandwidths=bandwidths, estimator='linear', x_labels=x_labels,
                    y_labels=y_labels)
  expected = _np_linear_mmd2(x, y, bandwidths, x_labels, y_labels)
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-5)
  # Differs from the label-free estimate, so the labels are not ignored.
  assert abs(expected - _np_linear_mmd2(x, y, bandwidths)) > 100 * ATOL


@pytest.mark.parametrize('estimator', ['biased', 'unbiased'])
def test_result_independent_of_block_size(estimator):
  x, y = _sets(19, 11, 3, seed=7)
  values = [float(mmd.mk_mmd2(x, y, estimator=estimator, block_size=b)) for b in (3, 5, 64)]
  np.testing.assert_allclose(values, values[0], atol=1e-6)


def test_biased_mmd_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(3).normal(size=(21, 4)) + 100.0
  result = mmd.mk_mmd(x, x, block_size=8)
  # Zero up to float32 rounding of the tile sums (K_xy visits transposed tiles of K_xx).
  assert abs(float(result.mmd2)) < 1e-6
  assert float(result.value) < 1e-3


@pytest.mark.parametrize('estimator', ['biased', 'unbiased'])
def test_symmetric_given_fixed_bandwidths(estimator):
  x, y = _sets(12, 7, 2, seed=4)
  bandwidths = mmd.bandwidths_from(y)
  xy = mmd.mk_mmd2(x, y, bandwidths=bandwidths, estimator=estimator, block_size=4)
  yx = mmd.mk_mmd2(y, x, bandwidths=bandwidths, estimator=estimator, block_size=4)
  np.testing.assert_allclose(xy, yx, atol=ATOL)


@pytest.mark.parametrize('estimator', ['biased', 'unbiased'])
def test_invariant_to_row_permutations(estimator):
  x, y = _sets(12, 7, 2, seed=5)
  rng = np.random.default_rng(0)
  base = mmd.mk_mmd2(x, y, estimator=estimator, block_size=4)
  shuffled = mmd.mk_mmd2(x[rng.permutation(12)], y[rng.permutation(7)], estimator=estimator,
                         block_size=4)
  np.testing.assert_allclose(base, shuffled, atol=ATOL)


def test_unbiased_estimator_is_centred_where_biased_is_not():
  # Same distribution for x and y: E[unbiased] = 0 while E[biased] > 0 (the diagonal).
  rng = np.random.default_rng(6)
  bandwidths = np.array([1.0, 2.0, 4.0])
  unbiased, biased = [], []
  for _ in range(40):
    x, y = rng.normal(size=(8, 2)), rng.normal(size=(8, 2))
    unbiased.append(float(mmd.mk_mmd2(x, y, bandwidths=bandwidths, estimator='unbiased')))
    biased.append(float(mmd.mk_mmd2(x, y, bandwidths=bandwidths, estimator='biased')))
  stderr = np.std(unbiased) / np.sqrt(len(unbiased))
  assert abs(np.mean(unbiased)) < 3 * stderr
  assert np.mean(biased) > 5 * np.std(biased) / np.sqrt(len(biased))
  assert min(unbiased) < 0 < max(unbiased)


def test_mk_mmd_value_is_safe_sqrt_of_mmd2():
  x, y = _sets(9, 9, 2, seed=8, shift=0.0)
  result = mmd.mk_mmd(x, y, estimator='unbiased')
  np.testing.assert_allclose(result.value, np.sqrt(max(float(result.mmd2), 0.0)), rtol=1e-6)
  np.testing.assert_allclose(result.bandwidths, _np_bandwidths(y, 5), rtol=1e-5)
  x, y = _sets(9, 9, 2, seed=8, shift=3.0)
  result = mmd.mk_mmd(x, y, bandwidths=[1.0, 2.0])
  assert float(result.value) > 0
  np.testing.assert_allclose(result.value**2, result.mmd2, rtol=1e-5)
  np.testing.assert_allclose(result.bandwidths, [1.0, 2.0])


def test_one_compile_serves_sizes_with_the_same_block_counts():
  # Sizes < block_size are padded to the next power of two (here 16), so these calls run
  # the same 2-block program, for both estimators.
  bandwidths = np.array([1.0, 2.0])
  mmd.mk_mmd2(*_sets(9, 12, 5, seed=0), bandwidths=bandwidths, block_size=64)
  before = mmd._kernel_sums._cache_size()
  mmd.mk_mmd2(*_sets(11, 13, 5, seed=1), bandwidths=bandwidths, block_size=64)
  mmd.mk_mmd2(*_sets(16, 10, 5, seed=2), bandwidths=bandwidths, block_size=64,
              estimator='unbiased')
  assert mmd._kernel_sums._cache_size() == before


def test_large_sets_use_blocks_not_the_full_matrix():
  # 300 x 200 with B = 32: 10 + 7 blocks; only [32, 32, M] tiles exist in the program
  # (checked on the jaxpr: no intermediate has 300 or 200 rows).
  x, y = _sets(300, 200, 2, seed=9)
  bandwidths = np.array([0.5, 1.0])
  inputs = mmd._stacked_blocks(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                               jnp.zeros(300, jnp.int32), jnp.zeros(200, jnp.int32), 32)
  text = str(jax.make_jaxpr(mmd._kernel_sums)(*inputs, jnp.asarray(bandwidths, jnp.float32),
                                              False))
  assert 'f32[32,32,2]' in text
  assert '300,' not in text and '200,' not in text
  got = mmd.mk_mmd2(x, y, bandwidths=bandwidths, block_size=32)
  np.testing.assert_allclose(got, _np_mmd2(x, y, bandwidths, 'biased'), atol=ATOL)


def test_many_tiles_keep_float32_precision():
  # 1000 + 1000 rows in blocks of 16: 8001 tiles. MMD^2 ~ 2.7e-3 is a small difference of
  # sums of ~1e6 terms; a plain float32 running sum over the tiles is off by ~1e-6 here,
  # the compensated (Kahan) sum by < 1e-7.
  x, y = _sets(1000, 1000, 3, seed=12, shift=0.02)
  bandwidths = _np_bandwidths(y[:200], 3)
  got = mmd.mk_mmd2(x, y, bandwidths=bandwidths, block_size=16)
  np.testing.assert_allclose(got, _np_mmd2(x, y, bandwidths, 'biased'), atol=3e-7)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
  # Computed in the inputs' dtype, the float16 kernel sums (300^2 terms) overflowed to
  # inf - inf = NaN and bfloat16 missed MMD^2 by ~4%. The reference takes the same
  # half-precision values, so only the float32 arithmetic differs.
  x, y = _sets(300, 300, 4, seed=13, shift=0.3)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
  bandwidths = _np_bandwidths(y64, 5)
  for estimator in ('biased', 'linear'):
    got = mmd.mk_mmd(x, y, estimator=estimator)
    expected = (_np_mmd2(x64, y64, bandwidths, 'biased') if estimator == 'biased'
                else _np_linear_mmd2(x64, y64, bandwidths))
    np.testing.assert_allclose(np.asarray(got.mmd2, np.float64), expected, atol=ATOL,
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got.bandwidths, np.float64), bandwidths, rtol=1e-5)
    assert got.mmd2.dtype == got.bandwidths.dtype == jnp.float32


@pytest.mark.parametrize('n,m,block_size', [(1, 3, 2), (2, 2, 1), (3, 2, 512), (2, 7, 3)])
def test_tiny_sets_with_duplicates_and_mixed_label_dtypes_match_numpy(n, m, block_size):
  # 1-3 rows, blocks of one row and blocks larger than both sets, a duplicated row in each
  # set (the U-statistic drops the diagonal, not duplicates), uint8 labels against int64.
  x, y = _sets(n, m, 3, seed=n * 10 + m)
  x[-1], y[-1] = x[0], y[0]
  x_labels = (np.arange(n) % 2).astype(np.uint8)
  y_labels = (np.arange(m) // 2 % 2).astype(np.int64)
  bandwidths = np.array([0.5, 2.0])
  # One row: only the biased estimator is defined (the others raise, tested below).
  for estimator in ('biased',) if min(n, m) < 2 else mmd.ESTIMATORS:
    for labels in ((None, None), (x_labels, y_labels)):
      got = mmd.mk_mmd2(x, y, bandwidths=bandwidths, estimator=estimator,
                        block_size=block_size, x_labels=labels[0], y_labels=labels[1])
      expected = (_np_linear_mmd2(x, y, bandwidths, *labels) if estimator == 'linear'
                  else _np_mmd2(x, y, bandwidths, estimator, *labels))
      np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-5)


GOOD_X, GOOD_Y = _sets(4, 5, 2, seed=10)


@pytest.mark.parametrize('kwargs,match', [
    (dict(x=np.full((4, 2), np.nan)), 'x contains NaN'),
    (dict(y=np.array([[np.inf, 0.0]] * 5)), 'y contains NaN'),
    (dict(x=np.ones(4)), r'x must have shape \[examples, features\]'),
    (dict(y=np.ones((5, 3))), 'y has 3 features but x has 2'),
    (dict(x=np.zeros((0, 2))), 'x is empty'),
    (dict(y=np.zeros((0, 2))), 'y is empty'),
    (dict(x=np.zeros((4, 0)), y=np.zeros((5, 0))), 'x has no features'),
    (dict(estimator='quadratic'), 'estimator must be one of'),
    (dict(x=GOOD_X[:1], estimator='unbiased'), 'needs >= 2 rows in x'),
    (dict(y=GOOD_Y[:1], estimator='unbiased', bandwidths=[1.0]), 'needs >= 2 rows in y'),
    (dict(x=GOOD_X[:1], estimator='linear'), 'linear estimator needs >= 2 rows.*x has 1'),
    (dict(block_size=0), 'block_size must be an integer >= 1'),
    (dict(bandwidths=[1.0, -1.0]), 'bandwidths must be positive'),
    # A zero bandwidth was accepted: 0/0 on the kernel's diagonal, a NaN MMD^2.
    (dict(bandwidths=[0.0, 1.0]), 'bandwidths must be positive'),
    # No bandwidths were accepted: a mean over zero kernels, a NaN MMD^2.
    (dict(bandwidths=np.zeros(0)), r'bandwidths must have shape \[M\] with M >= 1'),
    (dict(bandwidths=[[1.0]]), r'bandwidths must have shape \[M\]'),
    (dict(num_kernels=0), 'num_kernels must be an integer >= 1'),
    (dict(bandwidths=[1.0, 2.0], num_kernels=3), 'num_kernels = 3 disagrees with the 2'),
    (dict(x_labels=np.zeros(4, int)), 'x_labels and y_labels must be given together'),
    (dict(x_labels=np.zeros(3, int), y_labels=np.zeros(5, int)), r'x_labels must have shape'),
    (dict(x_labels=np.zeros(4), y_labels=np.zeros(5)), 'x_labels must be integer'),
    # Cast to int32, label 2**32 became 0 and silently matched y's label 0.
    (dict(x_labels=np.array([0, 1, 2, 2**32]), y_labels=np.zeros(5, int)),
     'x_labels must fit in int32'),
    (dict(y=np.ones((5, 2))), 'target has median pairwise squared distance 0'),
    (dict(y=np.ones((1, 2))), 'target needs at least 2 rows'),
])
def test_errors_name_the_argument(kwargs, match):
  args = dict(x=GOOD_X, y=GOOD_Y)
  args.update(kwargs)
  x, y = args.pop('x'), args.pop('y')
  with pytest.raises(ValueError, match=match):
    mmd.mk_mmd2(x, y, **args)
  with pytest.raises(ValueError, match=match):
    mmd.mk_mmd(x, y, **args)


def test_num_kernels_given_with_bandwidths_must_be_their_number():
  bandwidths = _np_bandwidths(GOOD_Y, 3)
  expected = _np_mmd2(GOOD_X, GOOD_Y, bandwidths, 'biased')
  for num_kernels in (None, 3):
    np.testing.assert_allclose(mmd.mk_mmd2(GOOD_X, GOOD_Y, bandwidths=bandwidths,
                                           num_kernels=num_kernels), expected, rtol=1e-5)


def test_bandwidth_helper_errors():
  with pytest.raises(ValueError, match='x needs at least 2 rows'):
    mmd.median_heuristic(np.ones((1, 3)))
  with pytest.raises(ValueError, match='max_rows'):
    mmd.median_heuristic(GOOD_X, max_rows=1)
  with pytest.raises(ValueError, match='target contains NaN'):
    mmd.bandwidths_from(np.full((3, 2), np.nan))


@pytest.mark.parametrize('estimator', ['biased', 'unbiased'])
def test_float64_features_far_from_zero_keep_their_digits(estimator):
  # Without x64 float64 input became float32 before the centering on the target, so at an
  # offset of 1e5 the MMD^2 was 4e-4 .. 6e-4 off; it is now centred on the host first.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 3)) + 0.5 + 1e5
  y = rng.normal(size=(50, 3)) + 1e5
  bandwidths = np.asarray(mmd.bandwidths_from(y - y.mean(axis=0)), np.float64)

  def kernel(a, b):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.mean([np.exp(-d2 / (2 * s)) for s in bandwidths], axis=0)

  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  n, m = len(x), len(y)
  if estimator == 'biased':
    want = kxx.mean() + kyy.mean() - 2 * kxy.mean()
  else:
    want = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
  got = mmd.mk_mmd2(x, y, bandwidths=bandwidths, estimator=estimator)
  np.testing.assert_allclose(float(got), want, rtol=5e-5)
  # The default bandwidths (the target's median heuristic) do not move with the offset.
  np.testing.assert_allclose(mmd.mk_mmd(x, y).bandwidths, bandwidths, rtol=1e-5)
  # Nor do the public median heuristic and bandwidths (before: 7e-4 too small at 1e5).
  d2 = ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)
  median = np.median(d2[np.triu_indices(m, 1)])
  np.testing.assert_allclose(float(mmd.median_heuristic(y)), median, rtol=1e-5)
  np.testing.assert_allclose(mmd.bandwidths_from(y), bandwidths, rtol=1e-5)


def test_bool_labels_are_class_labels():
  # Bool labels were refused as non-integer, though they are the two classes 0 and 1.
  x_labels, y_labels = np.array([1, 0, 1, 0], bool), np.array([0, 1, 1, 0, 1], bool)
  bandwidths = np.array([1.0])
  got = mmd.mk_mmd2(GOOD_X, GOOD_Y, bandwidths=bandwidths, x_labels=x_labels,
                    y_labels=y_labels)
  expected = _np_mmd2(GOOD_X, GOOD_Y, bandwidths, 'biased', x_labels.astype(int),
                      y_labels.astype(int))
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-5)


def test_float32_features_against_a_float64_target_far_from_zero():
  # Only a float64 x was centred on the host: a float32 x lost the float64 target's digits
  # at an offset of 1e5 (y cast to float32 before the centering).
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(40, 3)) + 0.5 + 1e5).astype(np.float32)
  y = rng.normal(size=(50, 3)) + 1e5
  bandwidths = np.asarray(mmd.bandwidths_from(y - y.mean(axis=0)), np.float64)
  want = _np_mmd2(x.astype(np.float64), y, bandwidths, 'biased')
  np.testing.assert_allclose(float(mmd.mk_mmd2(x, y, bandwidths=bandwidths)), want, rtol=5e-5)
