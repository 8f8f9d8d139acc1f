"""Tests of dv_jax.data.digits (the splits) and dv_jax.data.contributors (Contributor,
validate_contributor, the digits benchmark's contributors)."""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from dv_jax.data import contributors as contrib
from dv_jax.data import digits, synthetic
from dv_jax.data import splits as splits_lib
from dv_jax.data.contributors import Contributor, ContributorSpec, Split


@pytest.fixture(scope='module')
def splits():
  return digits.load_digits_splits(seed=0, target_size=200, test_size=400)


@pytest.fixture(scope='module')
def generator(splits):
  return synthetic.fit_generator(splits.pool.x, splits.pool.y, num_components=12)


def test_splits_shapes_values_and_disjointness(splits):
  raw = load_digits()
  assert splits.target.x.shape == (200, 8, 8, 1) and splits.test.x.shape == (400, 8, 8, 1)
  assert splits.pool.x.shape == (1197, 8, 8, 1)
  for part, index in ((splits.pool, splits.pool_index), (splits.target, splits.target_index),
                      (splits.test, splits.test_index)):
    assert part.x.dtype == np.float32 and part.y.dtype == np.int32
    assert 0.0 <= part.x.min() and part.x.max() <= 1.0
    np.testing.assert_array_equal(part.x[..., 0] * 16, raw.images[index])
    np.testing.assert_array_equal(part.y, raw.target[index])
    assert not np.any(part.is_synthetic)
  sets = [set(splits.pool_index), set(splits.target_index), set(splits.test_index)]
  assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
  assert len(sets[0] | sets[1] | sets[2]) == digits.NUM_EXAMPLES


def test_splits_are_stratified(splits):
  freqs = np.bincount(load_digits().target) / digits.NUM_EXAMPLES
  for part in (splits.target, splits.test, splits.pool):
    counts = np.bincount(part.y, minlength=10)
    assert np.all(np.abs(counts - freqs * len(part.y)) <= 1.0 + 1e-9)


def test_splits_are_deterministic_and_seeded(splits):
  again = digits.load_digits_splits(seed=0, target_size=200, test_size=400)
  np.testing.assert_array_equal(again.test_index, splits.test_index)
  other = digits.load_digits_splits(seed=1, target_size=200, test_size=400)
  assert not np.array_equal(other.test_index, splits.test_index)
  half = digits.load_digits_splits(seed=0, pool_fraction=0.5, target_size=200, test_size=400)
  assert len(half.pool.y) == round(0.5 * 1197)
  assert set(half.pool_index) <= set(splits.pool_index)


def test_pool_size_rounds_to_nearest():
  # 0.7 of the 1197 rows left after target and test is 837.9: the documented
  # round(pool_fraction * rest) keeps 838 rows, a truncating int() would keep 837.
  s = digits.load_digits_splits(pool_fraction=0.7)
  assert s.pool.x.shape[0] == s.pool_index.size == 838


@pytest.mark.parametrize('kwargs,match', [
    (dict(pool_fraction=0.0), 'pool_fraction'), (dict(pool_fraction=1.5), 'pool_fraction'),
    (dict(target_size=5), 'target_size'), (dict(test_size=20.5), 'test_size'),
    (dict(target_size=900, test_size=895), 'leave'),
    (dict(seed=-1), 'seed must be an integer'),
])
def test_split_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    digits.load_digits_splits(**kwargs)


def _sklearn_pool_target_test(y_all, *, seed, pool_fraction, target_size, test_size):
  """The indices of `pool_target_test` as first written: three sklearn stratified takes."""
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  index = np.arange(y_all.size)
  out = []
  for offset, size in ((0, test_size), (1, target_size), (2, None)):
    if size is None:
      size = int(round(pool_fraction * index.size))
    if size == index.size:
      out.append(np.sort(index))
      break
    taken, index = train_test_split(index, train_size=size, stratify=y_all[index],
                                    random_state=seed + offset)
    out.append(np.sort(taken))
    index = np.sort(index)
  return out


@pytest.mark.parametrize('kwargs', [dict(), dict(seed=3, pool_fraction=0.5),
                                    dict(target_size=200, test_size=400, pool_fraction=0.9)])
def test_ordinary_splits_are_unchanged(kwargs):
  # Cached experiment results index these rows: the fallback for small leftovers must not
  # touch the sizes scikit-learn already handled.
  got = digits.load_digits_splits(**kwargs)
  args = dict(dict(seed=0, pool_fraction=1.0, target_size=200, test_size=400), **kwargs)
  test, target, pool = _sklearn_pool_target_test(load_digits().target, **args)
  np.testing.assert_array_equal(got.test_index, test)
  np.testing.assert_array_equal(got.target_index, target)
  np.testing.assert_array_equal(got.pool_index, pool)


def test_pool_fraction_leaving_fewer_rows_than_classes():
  # round(0.995 * 1197) = 1191 leaves 6 rows for 10 classes; sklearn used to reject this
  # with a message about test_size, an argument the caller never passed.
  s = digits.load_digits_splits(pool_fraction=0.995)
  assert s.pool.x.shape[0] == 1191
  rest = np.setdiff1d(np.arange(digits.NUM_EXAMPLES),
                      np.concatenate([s.test_index, s.target_index]))
  assert set(s.pool_index) <= set(rest)
  counts = np.bincount(load_digits().target[rest], minlength=10)
  np.testing.assert_array_less(np.abs(np.bincount(s.pool.y, minlength=10)
                                      - 1191 * counts / rest.size), 1.0)


# The class counts by hand: floor(size * count / n) each, then one more for the largest
# remainders. 8 of (3, 2, 4) / 9: floors (2, 1, 3), remainders (6, 7, 5) / 9, two extra rows
# to classes 1 and 0. 1 of them: floors 0, the one row to class 2 (remainder 4 / 9). 3 of
# (1, 3, 2) / 6: floors (0, 1, 1), remainders (3, 3, 0) / 6, a tie that the seed breaks.
@pytest.mark.parametrize('labels, size, counts', [
    ([0, 0, 0, 1, 1, 2, 2, 2, 2], 8, [(3, 2, 3)]),             # rest of 1 < 3 classes
    ([0, 0, 0, 1, 1, 2, 2, 2, 2], 1, [(0, 0, 1)]),             # take of 1 < 3 classes
    ([0, 1, 1, 1, 2, 2], 3, [(1, 1, 1), (0, 2, 1)]),           # a class of one row
])
def test_stratified_take_largest_remainder(labels, size, counts):
  labels = np.asarray(labels)
  index = np.arange(100, 100 + labels.size)
  taken, rest = splits_lib.stratified_take(index, labels, size, seed=0)
  assert taken.size == size and np.array_equal(np.sort(np.concatenate([taken, rest])), index)
  assert tuple(np.bincount(labels[taken - 100], minlength=3)) in counts
  # Over seeds, a tie goes either way; counts outside it never occur.
  seen = {tuple(np.bincount(labels[splits_lib.stratified_take(index, labels, size, s)[0] - 100],
                            minlength=3)) for s in range(20)}
  assert seen == set(counts), seen
  again = splits_lib.stratified_take(index, labels, size, seed=0)
  np.testing.assert_array_equal(again[0], taken)
  with pytest.raises(ValueError, match=r'size must be an integer in \[1, 9\]'):
    splits_lib.stratified_take(np.arange(9), np.zeros(9), 0, seed=0)
  with pytest.raises(ValueError, match='labels must have shape'):
    splits_lib.stratified_take(np.arange(9), np.zeros(8), 3, seed=0)


def test_stratified_take_keeps_sklearns_draw_when_a_side_has_one_row_per_class():
  # A side of exactly one row per class fell back to largest remainder, not sklearn's draw.
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  labels = np.repeat(np.arange(10), 3)  # 30 rows, 10 classes: take 10 = the class count
  index = np.arange(100, 130)
  taken, rest = splits_lib.stratified_take(index, labels, 10, seed=4)
  ref, ref_rest = train_test_split(index, train_size=10, stratify=labels, random_state=4)
  np.testing.assert_array_equal(taken, np.sort(ref))
  np.testing.assert_array_equal(rest, np.sort(ref_rest))


@pytest.mark.parametrize('index, seed, match', [
    # Before: a repeated row landed in both sides ([0, 1] and [0, 0, 1, 1]), 0.5 was row 0,
    # and a seed of -1 failed in scikit-learn, naming random_state.
    ([0, 0, 0, 1, 1, 1], 0, 'index must not repeat a row'),
    ([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], 0, 'index must be integers'),
    ([0, 1, 2, 3, 4, 5], -1, r'seed must be an integer in \[0, 4294967295\]'),
    ([0, 1, 2, 3, 4, 5], 1.5, r'seed must be an integer in \[0, 4294967295\]'),
])
def test_stratified_take_refuses_repeated_or_fractional_rows_and_bad_seeds(index, seed,
                                                                           match):
  with pytest.raises(ValueError, match=match):
    splits_lib.stratified_take(np.array(index), np.array([0, 0, 0, 1, 1, 1]), 2, seed)


def _toy(name='a', n_real=3, n_syn=2, shape=(2, 2)):
  rng = np.random.default_rng(0)
  return Contributor(name, rng.uniform(size=(n_real,) + shape).astype(np.float32),
                     np.arange(n_real) % 3, rng.uniform(size=(n_syn,) + shape).astype(np.float32),
                     np.arange(n_syn) % 3)


def test_contributor_pooled_size_and_pi():
  c = _toy()
  assert c.size == 5 and c.num_real == 3 and c.num_synthetic == 2 and c.pi == pytest.approx(0.6)
  pooled = c.pooled()
  assert isinstance(pooled, Split)
  np.testing.assert_array_equal(pooled.x[:3], c.x_real)
  np.testing.assert_array_equal(pooled.x[3:], c.x_synthetic)
  np.testing.assert_array_equal(pooled.y, [0, 1, 2, 0, 1])
  np.testing.assert_array_equal(pooled.is_synthetic, [False] * 3 + [True] * 2)
  real_only = Contributor('r', c.x_real, c.y_real, None, None)
  assert real_only.pi == 1.0 and bool(np.any(real_only.pooled().is_synthetic)) is False
  syn_only = Contributor('s', np.zeros((0, 2, 2)), np.zeros(0, int), c.x_synthetic,
                         c.y_synthetic)
  assert syn_only.pi == 0.0 and np.all(syn_only.pooled().is_synthetic)
  empty = Contributor('nobody', None, None, None, None)
  with pytest.raises(ValueError, match="'nobody' has no examples"):
    empty.pooled()
  with pytest.raises(ValueError, match="'nobody'"):
    _ = empty.pi


def test_validate_contributor_accepts_good_data():
  contrib.validate_contributor(_toy(), feature_shape=(2, 2), num_classes=3)
  contrib.validate_contributor(_toy(n_syn=0), feature_shape=(2, 2), num_classes=3)


@pytest.mark.parametrize('mutate,match', [
    (lambda c: c._replace(x_real=np.where(np.ones_like(c.x_real, bool), np.nan, 0.0)),
     'x_real contains NaN'),
    (lambda c: c._replace(x_synthetic=np.ones((2, 3, 2), np.float32)), 'feature shape'),
    (lambda c: c._replace(y_real=np.array([0, 1, 3])), 'labels in'),
    (lambda c: c._replace(y_real=np.array([0, -1, 2])), r'labels in \[-1, 2\]'),
    (lambda c: c._replace(y_synthetic=np.array([0.0, 1.0])), 'integer labels'),
    (lambda c: c._replace(y_real=np.array([0, 1])), 'rows'),
    (lambda c: c._replace(y_synthetic=None), 'both be given'),
    (lambda c: c._replace(x_real=None, y_real=None, x_synthetic=None, y_synthetic=None),
     'no examples'),
])
def test_validate_contributor_errors_name_the_contributor(mutate, match):
  bad = mutate(_toy(name='alice'))
  with pytest.raises(ValueError, match=match) as info:
    contrib.validate_contributor(bad, feature_shape=(2, 2), num_classes=3)
  assert "'alice'" in str(info.value)


def test_host_rng_streams():
  key = jax.random.PRNGKey(7)
  a = contrib.host_rng(key, 1, 2).random(4)
  np.testing.assert_array_equal(a, contrib.host_rng(key, 1, 2).random(4))
  assert not np.array_equal(a, contrib.host_rng(key, 1, 3).random(4))
  assert not np.array_equal(a, contrib.host_rng(jax.random.PRNGKey(8), 1, 2).random(4))
  with pytest.raises(ValueError, match='single PRNG key'):
    contrib.host_rng(jax.random.split(key, 2))


def test_flip_labels_flips_exactly_the_fraction():
  y = np.arange(40) % 10
  flipped = np.asarray(contrib.flip_labels(y, fraction=0.3, num_classes=10,
                                           key=jax.random.PRNGKey(0)))
  assert np.sum(flipped != y) == 12
  assert flipped.min() >= 0 and flipped.max() < 10
  same = contrib.flip_labels(y, fraction=0.3, num_classes=10, key=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(flipped, same)
  np.testing.assert_array_equal(
      contrib.flip_labels(y, fraction=0.0, num_classes=10, key=jax.random.PRNGKey(0)), y)


def _indexed_pool(splits):
  """The pool with pixel (0, 0) replaced by the row index: real rows become traceable."""
  x = np.array(splits.pool.x)
  x[:, 0, 0, 0] = np.arange(len(x)) / len(x)
  return Split(x, splits.pool.y, splits.pool.is_synthetic)


def test_default_contributors_differ_on_every_axis(splits, generator):
  cs = contrib.make_digit_contributors(splits.pool, generator, key=jax.random.PRNGKey(0))
  assert len(cs) == 12 and len({c.name for c in cs}) == 12
  for c in cs:
    contrib.validate_contributor(c, feature_shape=(8, 8, 1), num_classes=10)
  assert len({c.size for c in cs}) == 12
  assert len({round(c.pi, 2) for c in cs}) >= 4
  assert {c.name.split('_')[3] for c in cs if c.pi < 1} >= {'none', 'hard3'}
  assert len({c.name.split('_')[4] for c in cs}) >= 3
  again = contrib.make_digit_contributors(splits.pool, generator, key=jax.random.PRNGKey(0))
  for a, b in zip(cs, again):
    assert a.name == b.name
    np.testing.assert_array_equal(a.pooled().x, b.pooled().x)
  other = contrib.make_digit_contributors(splits.pool, generator, key=jax.random.PRNGKey(1))
  assert [c.name for c in other] != [c.name for c in cs]


def test_contributors_follow_their_specs(splits, generator):
  pool = _indexed_pool(splits)
  specs = [ContributorSpec(100, 1.0, 'none', 0.0), ContributorSpec(80, 0.0, 'hard:3', 0.0),
           ContributorSpec(60, 0.5, 'none', 0.5), ContributorSpec(50, 0.2, 'temperature:0.3', 0.0)]
  cs = contrib.make_digit_contributors(pool, generator, key=jax.random.PRNGKey(2), specs=specs)
  for c, s in zip(cs, specs):
    assert (c.size, c.num_real) == (s.size, s.num_real)
  # Real parts are disjoint rows of the pool, with the pool's labels unless noised.
  rows = [np.rint(np.asarray(c.x_real)[:, 0, 0, 0] * len(pool.y)).astype(int) for c in cs]
  all_rows = np.concatenate(rows)
  assert len(set(all_rows)) == len(all_rows)
  np.testing.assert_array_equal(cs[0].y_real, pool.y[rows[0]])
  assert np.sum(np.asarray(cs[2].y_real) != pool.y[rows[2]]) == 15
  # hard:3 with the seeded long-tail order: 3 classes only, the synthetic world's head.
  assert len(np.unique(np.asarray(cs[1].y_synthetic))) <= 3
  assert cs[1].name == 'c01_n80_pi0.00_hard3_noise0.00'
  # The synthetic parts by the documented recipe, from the public pieces: the class law
  # (Zipf over the seeded order, beta = synthetic_beta, then the spec's truncation), the
  # generator at the truncation's covariance temperature, then the spec's label noise.
  # Before, a temperature, a synthetic_beta, a class order or a synthetic noise left unused
  # still passed this test.
  key = jax.random.PRNGKey(2)
  order = contrib.host_rng(key, 1).permutation(10)
  base = synthetic.long_tail_class_probs(10, beta=1.0, order=order)
  for i in (1, 2, 3):
    trunc = synthetic.as_truncation(specs[i].truncation)
    probs = synthetic.truncate_class_probs(base, trunc, rng=contrib.host_rng(key, 3, i, 1))
    expected = synthetic.sample_from_rng(generator, contrib.host_rng(key, 3, i, 2),
                                         specs[i].num_synthetic, class_probs=probs,
                                         temperature=trunc.covariance_temperature)
    np.testing.assert_allclose(cs[i].x_synthetic, expected.x, rtol=1e-6, atol=1e-6)
    flipped = np.asarray(cs[i].y_synthetic) != np.asarray(expected.y)
    assert flipped.sum() == round(specs[i].label_noise * specs[i].num_synthetic)
  assert set(np.asarray(cs[1].y_synthetic).tolist()) <= set(order[:3].tolist())


def test_contributor_errors(splits, generator):
  with pytest.raises(ValueError, match='pool has 1197 real examples'):
    contrib.make_digit_contributors(splits.pool, generator, key=jax.random.PRNGKey(0),
                                    specs=[ContributorSpec(1000, 1.0, 'none', 0.0)] * 2)
  syn = splits.pool._replace(is_synthetic=np.ones(len(splits.pool.y), bool))
  with pytest.raises(ValueError, match='pool must hold real examples'):
    contrib.make_digit_contributors(syn, generator, key=jax.random.PRNGKey(0))
  # Before: built, and the parts' shapes clashed later in a concatenation naming nothing.
  flat = splits.pool._replace(x=np.asarray(splits.pool.x).reshape(len(splits.pool.y), -1))
  with pytest.raises(ValueError, match=r"pool examples have shape \(64,\), the generator's "
                     r'\(8, 8, 1\)'):
    contrib.make_digit_contributors(flat, generator, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='num_contributors'):
    contrib.digit_contributor_specs(1, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='pis'):
    contrib.digit_contributor_specs(12, key=jax.random.PRNGKey(0), pis=(0.5, 1.5))
  with pytest.raises(ValueError, match='truncation kind'):
    contrib.digit_contributor_specs(12, key=jax.random.PRNGKey(0), truncations=('drop:1',))


@pytest.mark.parametrize('mutate,match', [
    (lambda c: c._replace(x_real=np.float32(1.0)), 'x_real must be'),
    (lambda c: c._replace(x_synthetic=np.full((2, 2, 2), 'a')), 'x_synthetic must hold numbers'),
])
def test_validate_contributor_bad_features_raise_value_error(mutate, match):
  # These raised an IndexError and a TypeError that named neither contributor nor argument.
  with pytest.raises(ValueError, match=match) as info:
    contrib.validate_contributor(mutate(_toy(name='bob')), feature_shape=(2, 2),
                                 num_classes=3)
  assert "'bob'" in str(info.value)


def _toy_data(n=300, num_classes=5):
  rng = np.random.default_rng(0)
  return (rng.normal(size=(n, 2)).astype(np.float32),
          rng.integers(0, num_classes, n).astype(np.int32))


@pytest.mark.parametrize('change,match', [
    (dict(x_all=lambda x: x[:200]), 'x_all must have 300 rows'),
    (dict(x_all=lambda x: np.concatenate([x, x])), 'x_all must have 300 rows'),
    (dict(num_classes=3), r'y_all has labels in \[0, 4\], expected \[0, 3\)'),
    # The boundary: a label equal to num_classes is already one class too many.
    (dict(num_classes=4), r'y_all has labels in \[0, 4\], expected \[0, 4\)'),
    (dict(y_all=lambda y: y.astype(np.float32)), 'y_all must be 1-D integer'),
    (dict(seed=2**32 - 1), r'seed must be an integer in \[0, 4294967293\]'),
    # Before: all-NaN features were split as data, 2.5 classes compared as is, and None or
    # '0.5' reached float().
    (dict(x_all=lambda x: np.full_like(x, np.nan)), 'x_all contains NaN or Inf'),
    (dict(num_classes=5.5), 'num_classes must be an integer >= 1'),
    (dict(pool_fraction=None), r'pool_fraction must be in \(0, 1\]'),
    (dict(pool_fraction='0.5'), r'pool_fraction must be in \(0, 1\]'),
])
def test_pool_target_test_checks_its_inputs(change, match):
  # Before: a shorter x_all failed as an IndexError, a longer one lost rows silently, labels
  # >= num_classes were split as classes, and a seed near 2**32 passed the check and then
  # failed inside scikit-learn as seed + 2.
  x, y = _toy_data()
  args = dict(num_classes=5, seed=0, pool_fraction=1.0, target_size=50, test_size=50)
  if 'x_all' in change:
    x = change['x_all'](x)
  elif 'y_all' in change:
    y = change['y_all'](y)
  else:
    args.update(change)
  with pytest.raises(ValueError, match=match):
    splits_lib.pool_target_test(x, y, **args)
  ok = splits_lib.pool_target_test(*_toy_data(), num_classes=5, seed=2**32 - 3,
                                   pool_fraction=1.0, target_size=50, test_size=50)
  assert len(ok.pool_index) == 200
