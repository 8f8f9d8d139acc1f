"""Tests of dv_jax.data.synthetic: the PCA Gaussian generator against float64 NumPy, the
moments of its samples, and the class truncations of METHOD.md section 1."""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from dv_jax.data import contributors, digits, synthetic


@pytest.fixture(scope='module')
def pool():
  return digits.load_digits_splits(seed=0).pool


def test_fit_matches_numpy_pca_and_class_statistics(pool):
  q, ridge = 6, 1e-3
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=q, ridge=ridge)
  flat = np.asarray(pool.x, np.float64).reshape(len(pool.y), -1)
  mean = flat.mean(axis=0)
  np.testing.assert_allclose(gen.mean, mean, atol=1e-6)
  # The top-q principal subspace of the covariance (sign-free: compare projectors).
  evals, evecs = np.linalg.eigh(np.cov(flat, rowvar=False))
  top = evecs[:, np.argsort(evals)[::-1][:q]]
  w = np.asarray(gen.components, np.float64)
  np.testing.assert_allclose(w @ w.T, np.eye(q), atol=1e-5)
  np.testing.assert_allclose(w.T @ w, top @ top.T, atol=1e-4)
  z = (flat - mean) @ w.T
  jitter = ridge * np.trace(np.cov(z, rowvar=False)) / q
  for c in (0, 7):
    zc = z[pool.y == c]
    np.testing.assert_allclose(gen.class_means[c], zc.mean(axis=0), atol=1e-4)
    chol = np.asarray(gen.class_chols[c], np.float64)
    np.testing.assert_allclose(chol @ chol.T, np.cov(zc, rowvar=False) + jitter * np.eye(q),
                               rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gen.class_freqs, np.bincount(pool.y) / len(pool.y), rtol=1e-6)
  assert gen.feature_shape == (8, 8, 1) and gen.value_range == (0.0, 1.0)


@pytest.mark.parametrize('temperature', [1.0, 0.25])
def test_sample_moments_in_pca_space(pool, temperature):
  q = 4
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=q)
  probs = np.zeros(10)
  probs[3] = 1.0
  num = 4000
  out = synthetic.sample(gen, jax.random.PRNGKey(0), num, class_probs=probs,
                         temperature=temperature, clip=False)
  assert np.all(np.asarray(out.y) == 3)
  w = np.asarray(gen.components, np.float64)
  z = (np.asarray(out.x, np.float64).reshape(num, -1) - np.asarray(gen.mean)) @ w.T
  chol = np.asarray(gen.class_chols[3], np.float64)
  cov = temperature * chol @ chol.T
  sd = np.sqrt(np.diag(cov))
  np.testing.assert_array_less(np.abs(z.mean(axis=0) - gen.class_means[3]), 5 * sd / np.sqrt(num))
  # Sample covariance of 4000 draws: relative error ~ sqrt(2 / num) ~ 2% on the diagonal.
  np.testing.assert_allclose(np.cov(z, rowvar=False), cov, rtol=0.1, atol=0.1 * sd.max() ** 2)


def test_samples_look_like_digits_of_their_label(pool):
  # A nearest-class-mean classifier fitted on real digits recognises the synthetic ones.
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=20)
  out = synthetic.sample(gen, jax.random.PRNGKey(1), 500)
  flat = np.asarray(pool.x).reshape(len(pool.y), -1)
  centers = np.stack([flat[pool.y == c].mean(axis=0) for c in range(10)])
  xs = np.asarray(out.x).reshape(500, -1)
  pred = np.argmin(((xs[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
  assert np.mean(pred == np.asarray(out.y)) > 0.8
  assert xs.min() >= 0.0 and xs.max() <= 1.0
  assert out.x.shape == (500, 8, 8, 1) and out.x.dtype == np.float32
  assert np.all(np.asarray(out.is_synthetic))


def test_sample_is_deterministic_and_respects_zero_probabilities(pool):
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=8)
  probs = synthetic.truncate_class_probs(np.full(10, 0.1), 'hard:3')
  a = synthetic.sample(gen, jax.random.PRNGKey(2), 300, class_probs=probs)
  b = synthetic.sample(gen, jax.random.PRNGKey(2), 300, class_probs=probs)
  c = synthetic.sample(gen, jax.random.PRNGKey(3), 300, class_probs=probs)
  np.testing.assert_array_equal(a.x, b.x)
  assert not np.array_equal(a.x, c.x)
  assert set(np.unique(np.asarray(a.y))) <= set(np.flatnonzero(probs))
  empty = synthetic.sample(gen, jax.random.PRNGKey(2), 0)
  assert empty.x.shape == (0, 8, 8, 1) and empty.y.shape == (0,)


def test_sample_labels_follow_class_probs_chi_square(pool):
  # y ~ p' (the docstring): the label counts of many draws against n p', for a given p' and
  # for the default (the fitting data's class frequencies).
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=4)
  num = 20_000
  probs = synthetic.truncate_class_probs(
      synthetic.long_tail_class_probs(10, beta=1.2, order=[4, 1, 7, 0, 9, 2, 8, 3, 6, 5]),
      'hard:6')
  for class_probs, key in ((probs, 5), (None, 6)):
    out = synthetic.sample(gen, jax.random.PRNGKey(key), num, class_probs=class_probs)
    expected = probs if class_probs is not None else np.bincount(pool.y) / len(pool.y)
    counts = np.bincount(np.asarray(out.y), minlength=10)
    keep = expected > 0
    assert counts[~keep].sum() == 0
    assert stats.chisquare(counts[keep], num * expected[keep]).pvalue > 1e-3


def test_temperature_shrinks_diversity(pool):
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=10)
  probs = np.eye(10)[5]
  spread = []
  for tau in (1.0, 0.2):
    out = synthetic.sample(gen, jax.random.PRNGKey(4), 500, class_probs=probs, temperature=tau)
    spread.append(np.asarray(out.x).reshape(500, -1).var(axis=0).sum())
  assert spread[1] < 0.5 * spread[0]


def test_long_tail_class_probs_closed_form():
  p = synthetic.long_tail_class_probs(4, beta=2.0, order=[2, 0, 3, 1])
  ranked = np.array([1.0, 1 / 4, 1 / 9, 1 / 16])
  expected = np.empty(4)
  expected[[2, 0, 3, 1]] = ranked / ranked.sum()
  np.testing.assert_allclose(p, expected, rtol=1e-12)
  np.testing.assert_allclose(synthetic.long_tail_class_probs(5, beta=0.0), np.full(5, 0.2))


def _random_probs(seed, c=10):
  return synthetic.long_tail_class_probs(c, beta=1.3,
                                         order=np.random.default_rng(seed).permutation(c))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_hard_and_top_p_keep_the_head(seed):
  p = _random_probs(seed)
  order = np.argsort(-p)
  hard = synthetic.truncate_class_probs(p, synthetic.Truncation('hard', 4))
  expected = np.zeros(10)
  expected[order[:4]] = p[order[:4]] / p[order[:4]].sum()
  np.testing.assert_allclose(hard, expected, rtol=1e-12)
  for top_p in (0.3, 0.5, 0.9, 1.0):
    kept = synthetic.truncate_class_probs(p, f'top_p:{top_p}')
    # Brute force: the smallest k whose head mass reaches top_p.
    k = next(k for k in range(1, 11) if p[order[:k]].sum() >= top_p - 1e-12)
    assert np.count_nonzero(kept) == k
    np.testing.assert_allclose(kept[order[:k]], p[order[:k]] / p[order[:k]].sum(), rtol=1e-12)


def test_hard_breaks_frequency_ties_by_class_index():
  # Two head classes at the ends and a tie of 18 between them: the lowest indices win.
  p = np.ones(20)
  p[[0, 19]] = 3.0
  kept = synthetic.truncate_class_probs(p, 'hard:5')
  np.testing.assert_array_equal(np.flatnonzero(kept), [0, 1, 2, 3, 19])
  np.testing.assert_allclose(kept[[0, 1, 2, 3, 19]], np.array([3, 1, 1, 1, 3]) / 9, rtol=1e-12)
  uniform = synthetic.truncate_class_probs(np.full(100, 0.01), 'hard:10')
  np.testing.assert_array_equal(np.flatnonzero(uniform), np.arange(10))


def test_hard_k_equal_to_the_class_count_keeps_every_class():
  # hard:c keeping every class was refused as more classes than there are.
  p = np.array([0.5, 0.3, 0.2])
  np.testing.assert_allclose(synthetic.truncate_class_probs(p, 'hard:3'), p)


def test_class_entropy_is_in_nats():
  assert math.isclose(synthetic.class_entropy([0.25] * 4), math.log(4), rel_tol=1e-15)
  # 0 log 0 = 0, and the input is normalised: [2, 1, 1, 0] is [1/2, 1/4, 1/4, 0].
  assert math.isclose(synthetic.class_entropy([2.0, 1.0, 1.0, 0.0]), 1.5 * math.log(2),
                      rel_tol=1e-15)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_temperature_thins_the_tail(seed):
  p = _random_probs(seed)
  entropies = [synthetic.class_entropy(p)]
  for tau in (0.7, 0.4, 0.2):
    q = synthetic.truncate_class_probs(p, f'temperature:{tau}')
    np.testing.assert_allclose(q, p ** (1 / tau) / (p ** (1 / tau)).sum(), rtol=1e-10)
    entropies.append(synthetic.class_entropy(q))
  assert np.all(np.diff(entropies) < 0)
  assert synthetic.class_entropy(
      synthetic.truncate_class_probs(p, 'temperature:2')) > entropies[0]


def test_finite_sample_forgets_unseen_classes():
  p = _random_probs(3)
  key = jax.random.PRNGKey(0)
  q = synthetic.truncate_class_probs(p, 'finite_sample:6', key=key)
  np.testing.assert_allclose(q.sum(), 1.0)
  np.testing.assert_allclose(q * 6, np.round(q * 6), atol=1e-12)  # Counts of 6 draws.
  assert np.count_nonzero(q) <= 6
  np.testing.assert_array_equal(q, synthetic.truncate_class_probs(p, 'finite_sample:6', key=key))
  # Many draws approach p.
  big = synthetic.truncate_class_probs(p, 'finite_sample:200000', key=key)
  np.testing.assert_allclose(big, p, atol=5e-3)
  with pytest.raises(ValueError, match='needs key'):
    synthetic.truncate_class_probs(p, 'finite_sample:6')


def test_finite_sample_keeps_one_entry_per_class():
  # Counts without minlength dropped the classes after the last one drawn: q shorter than p.
  p = np.array([0.999, 0.0005, 0.0005])
  q = synthetic.truncate_class_probs(p, 'finite_sample:1', rng=np.random.default_rng(0))
  np.testing.assert_array_equal(q, [1.0, 0.0, 0.0])


def test_none_is_the_identity():
  p = _random_probs(4)
  np.testing.assert_allclose(synthetic.truncate_class_probs(p, None), p)
  np.testing.assert_allclose(synthetic.truncate_class_probs(p, 'none'), p)


@pytest.mark.parametrize('spec,match', [
    ('dropout:0.1', 'truncation kind'), ('hard', 'needs a value'), ('hard:0', 'integer >= 1'),
    ('hard:2.5', 'integer >= 1'), ('top_p:1.5', r'\(0, 1\]'), ('temperature:0', 'tau > 0'),
    ('hard:x', 'not a number'), (3, 'must be None, a string'),
])
def test_truncation_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    synthetic.as_truncation(spec)


def test_covariance_temperature_is_tau_for_temperature_only():
  assert synthetic.as_truncation('temperature:0.3').covariance_temperature == 0.3
  for spec in (None, 'hard:3', 'top_p:0.6', 'finite_sample:8'):
    assert synthetic.as_truncation(spec).covariance_temperature == 1.0


def test_temperature_contributors_shrink_the_within_class_spread(pool):
  # 'temperature:0.25' scales each class covariance by 1/4 (METHOD.md section 1). Clipping
  # to the pixel range trims the wider untempered samples more, so the variance ratio in
  # PCA space comes out near 0.3 rather than 0.25; without the factor it would be 1.
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=8)
  specs = [contributors.ContributorSpec(2000, 0.0, 'temperature:0.25', 0.0),
           contributors.ContributorSpec(2000, 0.0, 'none', 0.0)]
  tempered, plain = contributors.make_digit_contributors(
      pool, gen, key=jax.random.PRNGKey(0), specs=specs, synthetic_beta=0.0)
  w = np.asarray(gen.components, np.float64)

  def class_variance(c, k):
    x = np.asarray(c.x_synthetic, np.float64).reshape(len(c.y_synthetic), -1)
    z = (x - np.asarray(gen.mean, np.float64))[np.asarray(c.y_synthetic) == k] @ w.T
    assert len(z) > 50
    return z.var(axis=0, ddof=1).sum()

  # synthetic_beta=0: uniform classes, ~200 samples of each in either part.
  ratios = [class_variance(tempered, k) / class_variance(plain, k) for k in range(10)]
  np.testing.assert_array_less(ratios, 0.4)
  np.testing.assert_array_less(0.2, ratios)


def test_truncate_and_sample_errors(pool):
  with pytest.raises(ValueError, match='k=11'):
    synthetic.truncate_class_probs(np.full(10, 0.1), 'hard:11')
  with pytest.raises(ValueError, match='probs must be finite'):
    synthetic.truncate_class_probs(np.array([0.5, -0.1]), 'none')
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=3)
  with pytest.raises(ValueError, match='class_probs has 3 classes'):
    synthetic.sample(gen, jax.random.PRNGKey(0), 5, class_probs=[0.2, 0.3, 0.5])
  with pytest.raises(ValueError, match='temperature'):
    synthetic.sample(gen, jax.random.PRNGKey(0), 5, temperature=0.0)
  with pytest.raises(ValueError, match='num'):
    synthetic.sample(gen, jax.random.PRNGKey(0), -1)


def test_fit_errors(pool):
  x = np.asarray(pool.x).copy()
  x[0, 1, 1, 0] = np.nan
  with pytest.raises(ValueError, match='x contains NaN'):
    synthetic.fit_generator(x, pool.y)
  y = np.asarray(pool.y).copy()
  y[:] = 0
  y[0] = 1
  with pytest.raises(ValueError, match='>= 2 examples'):
    synthetic.fit_generator(pool.x, y)
  with pytest.raises(ValueError, match='num_components'):
    synthetic.fit_generator(pool.x, pool.y, num_components=65)
  with pytest.raises(ValueError, match='y must be integer'):
    synthetic.fit_generator(pool.x, pool.y[:5])


def test_infinite_temperature_is_refused(pool):
  # tau = inf passed as_truncation and then failed as an OverflowError; as the covariance
  # factor of sample it gave NaN pixels.
  with pytest.raises(ValueError, match='finite tau > 0'):
    synthetic.as_truncation('temperature:inf')
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=3)
  with pytest.raises(ValueError, match='temperature must be finite'):
    synthetic.sample(gen, jax.random.PRNGKey(0), 5, temperature=float('inf'))
  with pytest.raises(ValueError, match='temperature must be finite'):  # was a TypeError
    synthetic.sample(gen, jax.random.PRNGKey(0), 5, temperature=None)


@pytest.mark.parametrize('call, match', [
    # Before: True was k = 1, a float order and None beta were bare IndexError / TypeError.
    (lambda: synthetic.as_truncation(synthetic.Truncation('hard', True)),
     "truncation 'hard' needs a number, got True"),
    (lambda: synthetic.long_tail_class_probs(3, beta=1.0, order=[2.0, 1.0, 0.0]),
     'order must be integers'),
    (lambda: synthetic.long_tail_class_probs(3, beta=None), 'beta must be >= 0, got None'),
    (lambda: synthetic.long_tail_class_probs(3, beta=float('nan')), 'beta must be >= 0, got nan'),
])
def test_misread_truncation_and_class_order_are_refused(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ---------------------------------------------------------------------------------------
# Inputs that used to be misread without an error (an audit's fixes). The contributor
# helpers are tested here too: they build on this module's truncations.


def test_none_truncation_takes_no_value():
  # Before: 'none:3' (e.g. a typo for 'hard:3') dropped the 3 and kept every class.
  with pytest.raises(ValueError, match="'none' takes no value"):
    synthetic.as_truncation('none:3')
  with pytest.raises(ValueError, match="'none' takes no value"):
    synthetic.as_truncation(synthetic.Truncation('none', 0.5))
  assert synthetic.as_truncation(synthetic.Truncation('none', None)) == ('none', None)


def test_truncate_class_probs_takes_key_or_rng_not_both():
  # Before: the key was ignored when an rng was given.
  p = _random_probs(0)
  with pytest.raises(ValueError, match='key or rng, not both'):
    synthetic.truncate_class_probs(p, 'finite_sample:5', key=jax.random.PRNGKey(0),
                                   rng=np.random.default_rng(0))


@pytest.mark.parametrize('kwargs,match', [
    (dict(ridge=np.inf), 'ridge must be finite'),  # before: NaN Cholesky factors
    (dict(num_classes=10.5), 'num_classes must be an integer'),  # before: 10 classes
    (dict(num_classes=float('nan')), 'num_classes must be an integer'),
    (dict(num_components=True), 'num_components must be an integer'),  # before: q = 1
    (dict(num_components=2.5), 'num_components must be an integer'),
])
def test_fit_generator_rejects_options_it_used_to_misread(pool, kwargs, match):
  with pytest.raises(ValueError, match=match):
    synthetic.fit_generator(pool.x, pool.y, **({'num_components': 3} | kwargs))


def test_fit_generator_without_ridge_names_a_singular_class(pool):
  # ridge = 0 is allowed, but a class of <= q examples then has a singular covariance:
  # before, NumPy's LinAlgError named nothing.
  keep = np.concatenate([np.flatnonzero(np.asarray(pool.y) == k)[:3]
                         for k in np.unique(pool.y)])
  x, y = np.asarray(pool.x)[keep], np.asarray(pool.y)[keep]
  with pytest.raises(ValueError, match=r'ridge=0.0: a class covariance is singular'):
    synthetic.fit_generator(x, y, num_components=5, ridge=0.0)
  synthetic.fit_generator(x, y, num_components=5, ridge=1e-4)  # the default ridge copes


def test_fit_generator_rejects_complex_features(pool):
  # Before: the float64 cast dropped the imaginary part with only a ComplexWarning.
  with pytest.raises(ValueError, match='x must be real'):
    synthetic.fit_generator(np.asarray(pool.x) + 1j, pool.y, num_components=3)


def test_sample_rejects_a_non_bool_clip_and_a_nan_count(pool):
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=3)
  with pytest.raises(ValueError, match='clip must be True or False'):  # 'no' is truthy
    synthetic.sample(gen, jax.random.PRNGKey(0), 5, clip='no')
  with pytest.raises(ValueError, match='num must be an integer'):  # before: int(nan) failed
    synthetic.sample(gen, jax.random.PRNGKey(0), float('nan'))
  assert synthetic.sample(gen, jax.random.PRNGKey(0), np.int64(3)).y.shape == (3,)


def test_host_rng_path_must_be_integers():
  # Before: int(1.7) == 1, so path (1.7,) silently reused stream (1,).
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r'path\[1\] must be an integer >= 0, got 1.7'):
    contributors.host_rng(key, 0, 1.7)
  np.testing.assert_array_equal(contributors.host_rng(key, np.int64(1)).random(3),
                                contributors.host_rng(key, 1).random(3))


@pytest.mark.parametrize('y,match', [
    (np.zeros((4, 2), np.int32), 'y must be 1-D'),  # before: whole rows were flipped
    (np.array([0.7, 1.2, 2.9]), 'integer labels'),  # before: truncated to 0, 1, 2
    (np.array([5, 7]), r'labels in \[5, 7\], expected \[0, 3\)'),  # before: kept as they were
])
def test_flip_labels_rejects_bad_labels(y, match):
  with pytest.raises(ValueError, match=match):
    contributors.flip_labels(y, fraction=0.5, num_classes=3, key=jax.random.PRNGKey(0))


def test_contributor_specs_size_range_must_be_integers():
  # Before: (10.9, 20.9) became sizes 10..20 without a word.
  with pytest.raises(ValueError, match=r'size_range\[0\] must be an integer >= 1'):
    contributors.digit_contributor_specs(3, key=jax.random.PRNGKey(0), size_range=(10.9, 20.9))
  with pytest.raises(ValueError, match=r'size_range\[1\] must be an integer >= 20, got 10'):
    contributors.digit_contributor_specs(3, key=jax.random.PRNGKey(0), size_range=(20, 10))
  specs = contributors.digit_contributor_specs(3, key=jax.random.PRNGKey(0),
                                               size_range=(10.0, np.int64(20)))
  assert sorted(s.size for s in specs) == [10, 15, 20]


def test_validate_contributor_rejects_complex_features():
  # Before: accepted; pooled() then dropped the imaginary part in its float32 cast.
  c = contributors.Contributor('c0', np.ones((3, 2), np.complex64), np.zeros(3, np.int32),
                               None, None)
  with pytest.raises(ValueError, match="'c0': x_real must hold numbers"):
    contributors.validate_contributor(c, feature_shape=(2,), num_classes=2)


def test_make_digit_contributors_names_a_nan_synthetic_beta(pool):
  # Before: NaN passed the `< 0` test and failed later as "beta must be >= 0".
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=3)
  with pytest.raises(ValueError, match='synthetic_beta must be >= 0'):
    contributors.make_digit_contributors(pool, gen, key=jax.random.PRNGKey(0),
                                         synthetic_beta=float('nan'))
