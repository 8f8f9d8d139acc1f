"""Tests of dv_jax.metrics against scipy.stats (rankdata, spearmanr, kendalltau)."""

import math
import warnings

import jax
import numpy as np
import pytest
from scipy import stats

from dv_jax import metrics


def _tied_pair(k, seed, levels=4):
  """Two length-k vectors of small integers: many ties, some correlation."""
  rng = np.random.default_rng(seed)
  a = rng.integers(0, levels, size=k).astype(np.float64)
  b = a + rng.integers(0, levels, size=k)
  return a, b


@pytest.mark.parametrize('k,seed,levels', [(2, 0, 100), (5, 1, 3), (12, 2, 4), (12, 3, 1000),
                                           (30, 4, 5)])
def test_spearman_and_kendall_match_scipy(k, seed, levels):
  a, b = _tied_pair(k, seed, levels)
  if np.ptp(a) == 0 or np.ptp(b) == 0:
    a[0] += 1.0  # Constant inputs are tested separately.
  np.testing.assert_allclose(metrics.spearman(a, b), stats.spearmanr(a, b).statistic,
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(metrics.kendall(a, b), stats.kendalltau(a, b).statistic,
                             rtol=1e-12, atol=1e-12)


def test_average_ranks_match_rankdata_rowwise():
  a = np.random.default_rng(0).integers(0, 4, size=(6, 9)).astype(float)
  expected = np.stack([stats.rankdata(row) for row in a])
  np.testing.assert_array_equal(metrics.average_ranks(a), expected)


def test_average_ranks_rejects_nan_and_scalars():
  # NaN != NaN, so each NaN would otherwise get a rank of its own.
  with pytest.raises(ValueError, match='a contains NaN'):
    metrics.average_ranks([1.0, np.nan, 2.0])
  with pytest.raises(ValueError, match='got a scalar'):
    metrics.average_ranks(1.0)


def test_perfect_and_reversed_rankings():
  a = np.array([0.3, -1.0, 2.0, 5.0, 0.0])
  assert metrics.spearman(a, 2 * a + 1) == pytest.approx(1.0)
  assert metrics.kendall(a, -a) == pytest.approx(-1.0)
  # Rank metrics are invariant to strictly increasing transforms.
  assert metrics.spearman(a, np.exp(a)) == pytest.approx(1.0)


def test_constant_input_gives_nan_like_scipy():
  a = np.ones(5)
  b = np.arange(5.0)
  assert np.isnan(metrics.spearman(a, b))
  assert np.isnan(metrics.kendall(b, a))


@pytest.mark.parametrize('fn', [metrics.spearman, metrics.kendall])
def test_errors_name_the_argument(fn):
  with pytest.raises(ValueError, match='same length'):
    fn(np.arange(3.0), np.arange(4.0))
  with pytest.raises(ValueError, match='a needs at least 2'):
    fn([1.0], [2.0])
  with pytest.raises(ValueError, match='b contains NaN'):
    fn([1.0, 2.0], [np.nan, 1.0])
  with pytest.raises(ValueError, match='a must be 1-D'):
    fn(np.ones((2, 2)), np.ones(4))
  with pytest.raises(ValueError, match="b must be numbers, got \\['x', 'y'\\]"):
    fn([1.0, 2.0], ['x', 'y'])  # numpy's "could not convert string to float" named nothing


@pytest.mark.parametrize('metric,scipy_fn', [('spearman', stats.spearmanr),
                                             ('kendall', stats.kendalltau)])
@pytest.mark.parametrize('pair', ['tied', 'four'])
def test_bootstrap_resamples_match_scipy_on_the_same_indices(metric, scipy_fn, pair):
  if pair == 'tied':
    a, b = _tied_pair(10, seed=7, levels=6)
  else:  # four contributors: some resamples repeat one, a constant metric (NaN)
    a, b = np.array([1., 2., 3., 4.]), np.array([1., 3., 2., 4.])
  key = jax.random.PRNGKey(3)
  ci = metrics.bootstrap_ci(a, b, metric=metric, num_resamples=200, key=key, level=0.9)
  idx = metrics.bootstrap_indices(len(a), 200, key=key)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # scipy warns on constant resamples (NaN, as ours).
    expected = np.array([scipy_fn(a[i], b[i]).statistic for i in idx])
  np.testing.assert_array_equal(np.isnan(ci.resamples), np.isnan(expected))
  ok = ~np.isnan(expected)
  if pair == 'four':  # else the interval's skipping of NaN resamples goes unchecked
    assert 0 < ok.sum() < 200
  np.testing.assert_allclose(ci.resamples[ok], expected[ok], rtol=1e-12, atol=1e-12)
  low, high = np.quantile(expected[ok], [0.05, 0.95])
  assert ci.low == pytest.approx(low) and ci.high == pytest.approx(high)
  assert ci.num_valid == ok.sum()
  assert ci.estimate == pytest.approx(scipy_fn(a, b).statistic)


def test_bootstrap_properties():
  rng = np.random.default_rng(0)
  truth = rng.normal(size=14)
  noisy = truth + 0.3 * rng.normal(size=14)
  ci = metrics.bootstrap_ci(noisy, truth, num_resamples=500, seed=1)
  assert ci.low <= ci.estimate <= ci.high
  # Before: key=3 (a seed passed as key) was a raw JAX error that did not name key.
  with pytest.raises(ValueError, match=r'key must be a single jax\.random\.PRNGKey'):
    metrics.bootstrap_ci(noisy, truth, num_resamples=5, key=3)
  assert ci.high <= 1.0 and ci.low > 0.0
  # Deterministic from the seed; another seed gives other resamples.
  again = metrics.bootstrap_ci(noisy, truth, num_resamples=500, seed=1)
  np.testing.assert_array_equal(ci.resamples, again.resamples)
  other = metrics.bootstrap_ci(noisy, truth, num_resamples=500, seed=2)
  assert not np.array_equal(ci.resamples, other.resamples)
  # A higher level gives a wider interval from the same resamples.
  wide = metrics.bootstrap_ci(noisy, truth, num_resamples=500, seed=1, level=0.99)
  assert wide.low <= ci.low and wide.high >= ci.high
  # A callable metric reproduces the named one.
  custom = metrics.bootstrap_ci(noisy, truth, metric=metrics.kendall, num_resamples=50, seed=4)
  named = metrics.bootstrap_ci(noisy, truth, metric='kendall', num_resamples=50, seed=4)
  np.testing.assert_allclose(custom.resamples, named.resamples, equal_nan=True)


def test_bootstrap_indices_cover_every_contributor():
  # The last contributor index K - 1 was never drawn (indices from [0, K - 1)).
  idx = metrics.bootstrap_indices(3, 500, key=jax.random.PRNGKey(0))
  assert idx.shape == (500, 3)
  assert set(np.unique(idx).tolist()) == {0, 1, 2}


def test_bootstrap_errors():
  a, b = np.arange(5.0), np.arange(5.0)
  with pytest.raises(ValueError, match='num_items must be an integer >= 1'):
    metrics.bootstrap_indices(0, 10, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='num_resamples must be an integer >= 1'):
    metrics.bootstrap_indices(5, -1, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='key must be a single jax.random.PRNGKey'):
    metrics.bootstrap_indices(5, 10, key=0)  # a seed, not a key
  with pytest.raises(ValueError, match='metric must be one of'):
    metrics.bootstrap_ci(a, b, metric='pearson')
  for bad in (0, float('nan'), 2.5, '10', True):
    with pytest.raises(ValueError, match='num_resamples must be an integer >= 1'):
      metrics.bootstrap_ci(a, b, num_resamples=bad)
  # float() read the string '0.9' as 0.9; None raised a TypeError naming nothing.
  for bad in (1.0, 0.0, float('nan'), '0.9', None, True):
    with pytest.raises(ValueError, match=r'level must be a number in \(0, 1\)'):
      metrics.bootstrap_ci(a, b, level=bad)
  # int(seed) read 2.5 as seed 2 (the same resamples) and failed on None with a TypeError.
  for bad in (2.5, None, '3', True):
    with pytest.raises(ValueError, match='seed must be an integer'):
      metrics.bootstrap_ci(a, b, seed=bad)
  np.testing.assert_array_equal(metrics.bootstrap_ci(a, b, seed=3.0).resamples,
                                metrics.bootstrap_ci(a, b, seed=3).resamples)


def test_ranking_stability_matches_scipy_kendall():
  rng = np.random.default_rng(5)
  reference = rng.normal(size=12)
  by_size = {100: reference + rng.normal(size=12), 400: reference + 0.3 * rng.normal(size=12),
             1000: reference.copy()}
  taus = metrics.ranking_stability(by_size, reference)
  assert list(taus) == [100, 400, 1000]
  for size, values in by_size.items():
    assert taus[size] == pytest.approx(stats.kendalltau(values, reference).statistic)
  assert taus[1000] == pytest.approx(1.0)
  with pytest.raises(ValueError, match=r'values_by_size\[400\]'):
    metrics.ranking_stability({400: np.ones(3)}, reference)
  with pytest.raises(TypeError, match='values_by_size must be a mapping'):  # AttributeError before
    metrics.ranking_stability([reference, reference], reference)


# ----------------------------------------------------------------------------------------
# Replicate reliability (the ground truth's seed-to-seed agreement).


def test_replicate_reliability_matches_scipy_and_spearman_brown():
  rng = np.random.default_rng(0)
  values = rng.normal(size=(12, 1)) + 0.8 * rng.normal(size=(12, 4))
  values[:, 3] = np.round(values[:, 3])  # ties
  rhos = [stats.spearmanr(values[:, i], values[:, j]).statistic
          for i in range(4) for j in range(i + 1, 4)]
  out = metrics.replicate_reliability(values)
  np.testing.assert_allclose(out.pairwise, np.mean(rhos), rtol=1e-12)
  rho = np.mean(rhos)
  np.testing.assert_allclose(out.of_mean, 4 * rho / (1 + 3 * rho), rtol=1e-12)
  assert out.num_replicates == 4
  # A constant replicate has no rho with the others: the defined pairs are averaged.
  values[:, 0] = 1.0
  np.testing.assert_allclose(metrics.replicate_reliability(values).pairwise,
                             np.mean([r for r in rhos[3:]]), rtol=1e-12)
  one = metrics.replicate_reliability(values[:, 1:2])
  assert one.num_replicates == 1 and np.isnan(one.pairwise) and np.isnan(one.of_mean)
  assert np.isnan(one.ceiling)


@pytest.mark.parametrize('values, pairwise', [
    ([[0.0, 1.0], [1.0, 0.0]], -1.0),             # the formula divided by 0 here
    ([[0.0, 2.0], [1.0, 1.5], [2.0, 0.0]], -1.0),
    ([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]], -1 / 3),  # ... and gave -3 here
    ([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]], math.nan),  # a constant replicate: no rho
])
def test_replicate_reliability_of_disagreeing_replicates_is_nan(values, pairwise):
  out = metrics.replicate_reliability(values)
  np.testing.assert_allclose(out.pairwise, pairwise, rtol=1e-12)  # NaN == NaN here
  assert np.isnan(out.of_mean) and np.isnan(out.ceiling)


def test_replicate_reliability_predicts_the_agreement_of_two_means():
  # What of_mean promises: the Spearman between the mean of R replicates and the mean of R
  # fresh ones, on average over draws (true scores + independent noise).
  rng = np.random.default_rng(1)
  # And ceiling: the Spearman between the mean and the noise-free values themselves, what
  # a method that knew them would reach.
  predicted, observed, ceilings, oracle = [], [], [], []
  for _ in range(400):
    truth = rng.normal(size=(30, 1))
    first, second = (truth + rng.normal(size=(30, 3)) for _ in range(2))
    reliability = metrics.replicate_reliability(first)
    predicted.append(reliability.of_mean)
    ceilings.append(reliability.ceiling)
    observed.append(metrics.spearman(first.mean(axis=1), second.mean(axis=1)))
    oracle.append(metrics.spearman(first.mean(axis=1), truth[:, 0]))
  np.testing.assert_allclose(np.mean(predicted), np.mean(observed), atol=0.03)
  np.testing.assert_allclose(np.mean(ceilings), np.mean(oracle), atol=0.03)
  assert np.mean(oracle) > np.mean(predicted) + 0.1  # the two differ: 0.84 against 0.71


@pytest.mark.parametrize('values, match', [
    (np.ones(5), r'values must be \[K, R\] with K >= 2'),
    (np.ones((1, 3)), r'values must be \[K, R\] with K >= 2'),
    (np.array([[1.0, np.nan], [2.0, 3.0]]), 'values contains NaN'),
])
def test_replicate_reliability_refuses_bad_input(values, match):
  with pytest.raises(ValueError, match=match):
    metrics.replicate_reliability(values)
