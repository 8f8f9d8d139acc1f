"""dv_jax.data.contributors: label flipping, the digit contributors' composition and
disjoint real parts, invalid specs named before any sampling, and keys folded from names."""

import zlib

import jax
import numpy as np
import pytest

from dv_jax.data import contributors
from dv_jax.data import digits
from dv_jax.data import synthetic
from dv_jax.data.contributors import Contributor
from dv_jax.data.contributors import ContributorSpec
from dv_jax.data.contributors import Split


@pytest.fixture(scope='module')
def pool():
  return digits.load_digits_splits(seed=0).pool


@pytest.fixture(scope='module')
def generator(pool):
  return synthetic.fit_generator(pool.x, pool.y, num_components=3)


@pytest.mark.parametrize('fraction', [None, 'a'])
def test_flip_labels_names_a_non_numeric_fraction(fraction):
  with pytest.raises(ValueError, match='fraction must be in'):
    contributors.flip_labels(np.array([0, 1, 2]), fraction=fraction, num_classes=3,
                             key=jax.random.PRNGKey(0))


def test_flip_labels_flips_exactly_to_another_class():
  y = np.random.default_rng(0).integers(0, 10, 1000)
  z = np.asarray(contributors.flip_labels(y, fraction=0.37, num_classes=10,
                                          key=jax.random.PRNGKey(1)))
  assert (z != y).sum() == 370


def test_flip_labels_reaches_every_other_class():
  # A flip drawing offsets from [1, c - 1) never reached the class c - 1 steps away.
  z = np.asarray(contributors.flip_labels(np.zeros(300, int), fraction=1.0, num_classes=3,
                                          key=jax.random.PRNGKey(0)))
  assert set(z.tolist()) == {1, 2}


@pytest.mark.parametrize('spec', [
    ContributorSpec(3, float('nan'), 'none', 0.0),  # used to fail inside spec.num_real
    ContributorSpec(2.5, 1.0, 'none', 0.0),  # used to fail in sample_from_rng, as 'num'
    ContributorSpec(5000, 1.5, 'none', 0.0),  # used to be reported as a too-small pool
])
def test_make_digit_contributors_names_an_invalid_spec(pool, spec):
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=3)
  with pytest.raises(ValueError, match=r'specs\[0\] is invalid'):
    contributors.make_digit_contributors(pool, gen, key=jax.random.PRNGKey(0),
                                         specs=[spec, ContributorSpec(4, 0.5, 'none', 0.0)])


def test_digit_contributors_composition_and_disjoint_real_parts(pool):
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=3)
  key = jax.random.PRNGKey(0)
  specs = [ContributorSpec(1, 1.0, 'none', 0.0), ContributorSpec(1, 0.0, 'hard:3', 0.0),
           ContributorSpec(20, 0.5, 'none', 0.5), ContributorSpec(30, 0.9, 'top_p:0.6', 0.1)]
  out = contributors.make_digit_contributors(pool, gen, key=key, specs=specs)
  flat = np.asarray(pool.x).reshape(pool.y.shape[0], -1)
  rows = []
  for c, s in zip(out, specs):
    assert (c.num_real, c.num_synthetic) == (s.num_real, s.num_synthetic)
    for v in np.asarray(c.x_real).reshape(c.num_real, flat.shape[1]):
      rows.append(int(np.flatnonzero((flat == v).all(1))[0]))
  assert len(rows) == len(set(rows))
  again = contributors.make_digit_contributors(pool, gen, key=key, specs=specs)
  for a, b in zip(out, again):
    np.testing.assert_array_equal(a.x_synthetic, b.x_synthetic)
    np.testing.assert_array_equal(a.y_real, b.y_real)


def test_a_pool_with_one_synthetic_example_is_refused(pool, generator):
  # Only a pool of synthetic examples only was refused; one synthetic row got through.
  flags = np.zeros(len(pool.y), bool)
  flags[0] = True
  with pytest.raises(ValueError, match='pool must hold real examples only'):
    contributors.make_digit_contributors(pool._replace(is_synthetic=flags), generator,
                                         key=jax.random.PRNGKey(0))


def test_a_pool_of_exactly_the_needed_size_is_enough(pool, generator):
  # A pool of exactly sum(num_real) rows was refused as too small.
  small = Split(pool.x[:10], pool.y[:10], pool.is_synthetic[:10])
  out = contributors.make_digit_contributors(
      small, generator, key=jax.random.PRNGKey(0),
      specs=[ContributorSpec(5, 1.0, 'none', 0.0)] * 2)
  assert [c.num_real for c in out] == [5, 5]


def test_real_and_synthetic_label_noise_flip_independent_rows(pool, generator):
  # The real part's flips drawn from the synthetic part's stream flipped the same positions.
  x = np.array(pool.x)
  x[:, 0, 0, 0] = np.arange(len(x)) / len(x)  # pixel (0, 0) traces each real row
  pool = Split(x, pool.y, pool.is_synthetic)
  key = jax.random.PRNGKey(2)
  spec = ContributorSpec(60, 0.5, 'none', 0.5)
  c = contributors.make_digit_contributors(pool, generator, key=key, specs=[spec, spec])[0]
  rows = np.rint(np.asarray(c.x_real)[:, 0, 0, 0] * len(pool.y)).astype(int)
  flipped_real = np.flatnonzero(np.asarray(c.y_real) != pool.y[rows])
  base = synthetic.long_tail_class_probs(
      10, beta=1.0, order=contributors.host_rng(key, 1).permutation(10))
  clean = synthetic.sample_from_rng(generator, contributors.host_rng(key, 3, 0, 2), 30,
                                    class_probs=base).y
  flipped_synthetic = np.flatnonzero(np.asarray(c.y_synthetic) != clean)
  assert len(flipped_real) == len(flipped_synthetic) == 15
  assert not np.array_equal(flipped_real, flipped_synthetic)


@pytest.mark.parametrize('size, pi, num_real', [(9, 0.75, 7), (9, 0.25, 2), (4, 0.5, 2),
                                               (10, 0.0, 0), (10, 1.0, 10)])
def test_spec_num_real_rounds_to_nearest(size, pi, num_real):
  # The docstring's round(pi * n): 6.75 -> 7 and 2.25 -> 2, where int() would give 6.
  spec = ContributorSpec(size, pi, 'none', 0.0)
  assert (spec.num_real, spec.num_synthetic) == (num_real, size - num_real)


def test_identical_finite_sample_contributors_draw_their_own_class_sets(pool):
  gen = synthetic.fit_generator(pool.x, pool.y, num_components=3)
  # finite_sample:4 keeps the classes of 4 draws from the class law, each with mass >= 1/4
  # (60 samples miss such a class with chance 0.75**60 < 1e-7); each contributor makes its
  # own 4 draws, so identical specs must not all get one class set.
  specs = [ContributorSpec(60, 0.0, 'finite_sample:4', 0.0)] * 4
  out = contributors.make_digit_contributors(pool, gen, key=jax.random.PRNGKey(0),
                                             specs=specs)
  class_sets = {frozenset(np.asarray(c.y_synthetic).tolist()) for c in out}
  assert all(len(s) <= 4 for s in class_sets)
  assert len(class_sets) > 1


def test_specs_shuffle_pi_independently_of_size():
  # Each factor has its own permutation; shuffling pi with the sizes' permutation paired
  # the same pi with the same size for every key (size confounded with pi).
  pairings = {tuple(sorted((s.size, s.pi) for s in
                           contributors.digit_contributor_specs(12, key=jax.random.PRNGKey(k))))
              for k in range(3)}
  assert len(pairings) > 1


def test_spec_sizes_are_the_rounded_evenly_spaced_sizes():
  # floor(linspace(40, 200, 12)) in place of rint moved most sizes down by one.
  specs = contributors.digit_contributor_specs(12, key=jax.random.PRNGKey(0))
  expected = np.rint(np.linspace(40, 200, 12)).astype(int).tolist()
  assert sorted(s.size for s in specs) == expected


def test_specs_shuffle_truncations_independently_of_pi():
  # Truncations shuffled by pi's permutation paired each pi with one truncation for every key.
  pairings = {tuple(sorted((s.pi, str(s.truncation)) for s in
                           contributors.digit_contributor_specs(12, key=jax.random.PRNGKey(k))))
              for k in range(3)}
  assert len(pairings) > 1


def test_fold_in_name_is_the_crc32_of_the_name_and_independent_of_order():
  key = jax.random.PRNGKey(3)
  # The reference: CRC-32 of the UTF-8 name, kept to 31 bits (the units' saved keys).
  expected = jax.random.fold_in(key, zlib.crc32('unit-é'.encode('utf-8')) & 0x7FFFFFFF)
  np.testing.assert_array_equal(contributors.fold_in_name(key, 'unit-é'), expected)
  assert not np.array_equal(contributors.fold_in_name(key, 'a'),
                            contributors.fold_in_name(key, 'b'))


@pytest.mark.parametrize('parts, match', [
    # Before: a Split of x [2] and y [3] rows, and labels 0.7, 1.9 cut to 0, 1.
    ((np.zeros((2, 2)), np.zeros(3, int)), 'x_real has 2 rows but y_real has 3'),
    ((np.zeros((2, 2)), np.array([0.7, 1.9])), 'y_real must hold integer labels'),
    ((np.full((2, 2), np.nan), np.zeros(2, int)), 'x_real contains NaN or Inf'),
    ((None, np.zeros(2, int)), 'x_real and y_real must both be given'),
])
def test_pooled_checks_each_part_as_validate_contributor_does(parts, match):
  c = contributors.Contributor('ann', *parts, np.ones((1, 2)), np.zeros(1, int))
  with pytest.raises(ValueError, match=f"contributor 'ann': {match}"):
    c.pooled()


def test_validate_contributor_accepts_boolean_features():
  # Boolean features (a binary image) were refused as not numbers.
  c = Contributor('b', np.ones((2, 3), bool), np.array([0, 1]), None, None)
  contributors.validate_contributor(c, feature_shape=(3,), num_classes=2)
