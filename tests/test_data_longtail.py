"""dv_jax.data.longtail: the truncations against float64 closed forms, class sampling
frequencies (chi-square), and split_counts' arithmetic and refusals."""

import jax
import numpy as np
import pytest

from dv_jax import scaling
from dv_jax.data import longtail


@pytest.mark.parametrize('mode, kwargs, reference', [
    ('hard', {'k': 7}, lambda p: np.where(np.arange(p.size) < 7, p, 0.0)),
    ('top_p', {'top_p': 0.9}, lambda p: np.where(np.cumsum(p) - p < 0.9, p, 0.0)),
    ('temperature', {'temperature': 0.5}, lambda p: p ** 2.0),
])
def test_truncations_match_float64_closed_form(mode, kwargs, reference):
  r = np.arange(1, 51, dtype=np.float64) ** -1.5
  p = r / r.sum()
  np.testing.assert_allclose(longtail.zipf_probs(50, beta=1.5), p, rtol=1e-14)
  q = reference(p)
  np.testing.assert_allclose(longtail.truncated_probs(p, mode=mode, **kwargs), q / q.sum(),
                             rtol=1e-12, atol=1e-15)


def test_key_is_checked_by_name():
  # Before: a raw JAX error ("unexpected PRNG key type") that did not name key.
  p = longtail.zipf_probs(10, beta=2.0)
  with pytest.raises(ValueError, match=r'key must be a single jax\.random\.PRNGKey'):
    longtail.sample_items(p, num_samples=3, key=None)
  with pytest.raises(ValueError, match=r'key must be a single jax\.random\.PRNGKey'):
    longtail.sample_by_class(np.array([0, 1]), [0.5, 0.5], num_samples=3, key=0)


def test_float_class_order_is_refused():
  # Before: [0., 1., 2.] passed the permutation test and failed as a bare IndexError.
  with pytest.raises(ValueError, match='class_order must be integers'):
    longtail.longtail_indices(np.array([0, 1, 2]), beta=2.0, num_samples=3,
                              key=jax.random.PRNGKey(0), class_order=[0.0, 1.0, 2.0])


def test_truncated_probs_refuses_p_that_does_not_sum_to_one():
  # Before: 3 * p was renormalised to p, while scaling.synthetic_distribution refuses it.
  p = longtail.zipf_probs(10, beta=2.0)
  with pytest.raises(ValueError, match='p must sum to 1'):
    longtail.truncated_probs(3 * p, mode='hard', k=3)
  with pytest.raises(ValueError, match='p must sum to 1'):
    scaling.synthetic_distribution(3 * p, mode='hard', k=3)


@pytest.mark.parametrize('p, match', [
    ([0.5, -0.1, 0.6], 'negative entries'),  # was drawn from a non-monotone CDF
    ([0.0, 0.0], 'positive mass'),           # all-zero p: normalised by 0, a NaN CDF
])
def test_sample_items_refuses_negative_or_massless_p(p, match):
  # Either p was accepted and sampled from, though it is no distribution.
  with pytest.raises(ValueError, match=match):
    longtail.sample_items(p, num_samples=3, key=jax.random.PRNGKey(0))


def test_sample_by_class_label_range_and_absent_zero_probability_classes():
  # Label C was accepted for C class probabilities; an absent class of probability 0 was
  # refused as missing.
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 2\)'):
    longtail.sample_by_class([0, 1, 2], [0.5, 0.5], num_samples=3, key=key)
  idx = longtail.sample_by_class([0, 1, 0], [0.5, 0.5, 0.0], num_samples=20, key=key)
  assert set(idx.tolist()) <= {0, 1, 2}


def test_sample_by_class_frequencies_chi_square():
  labels = np.array([0, 0, 1, 2, 2, 2, 3, 5, 5, 4])
  probs = np.array([0.3, 0.2, 0.1, 0.15, 0.05, 0.2])
  n = 200_000
  idx = longtail.sample_by_class(labels, probs, num_samples=n, key=jax.random.PRNGKey(0))
  counts = np.bincount(labels[idx], minlength=probs.size)
  chi2 = ((counts - n * probs) ** 2 / (n * probs)).sum()
  assert chi2 < 20.5  # chi-square, 5 dof, p = 0.001
  # Uniform within a class: the three rows of class 2 each get a third.
  rows = np.bincount(idx, minlength=labels.size)[labels == 2]
  np.testing.assert_allclose(rows / rows.sum(), 1 / 3, atol=0.01)


def test_sample_by_class_draws_classes_and_examples_independently():
  # Two classes of two rows, so a draw is a class bit and a row bit. Were both draws seeded
  # from the same key, NumPy would take the row of draw 2m + 1 from the bits of the uniform
  # that picked draw m's class, and the two would always agree; independent ones agree half
  # the time.
  labels = np.array([0, 0, 1, 1])
  n = 4000
  idx = longtail.sample_by_class(labels, [0.5, 0.5], num_samples=n, key=jax.random.PRNGKey(0))
  cls, row = labels[idx], idx % 2
  bound = 4 * 0.5 / np.sqrt(n // 2)  # 4 sigma of a fair coin's agreement rate
  for shift in (0, 1):
    assert abs(np.mean(cls[:n // 2] == row[shift::2]) - 0.5) < bound, shift
  assert abs(np.mean(cls == row) - 0.5) < 4 * 0.5 / np.sqrt(n)


@pytest.mark.parametrize('n, pi, expected', [
    (10, 0.37, (4, 6)), (10, 0.34, (3, 7)), (7, 0.9, (6, 1)), (3, 0.99, (3, 0)),
    (100, 0.0625, (6, 94)),
])
def test_split_counts_rounds_to_nearest(n, pi, expected):
  # n_real = round(pi * n), not the floor: 3.7 real examples are 4.
  assert longtail.split_counts(n, pi=pi) == expected


@pytest.mark.parametrize('pi', [None, 'half', '0.5'])
def test_split_counts_names_a_non_numeric_pi(pi):
  with pytest.raises(ValueError, match='pi must lie in'):
    longtail.split_counts(10, pi=pi)


def test_split_counts_sum_to_n():
  for n in range(0, 60):
    for pi in np.linspace(0.0, 1.0, 41):
      num_real, num_syn = longtail.split_counts(n, pi=float(pi))
      assert num_real + num_syn == n and num_real >= 0 and num_syn >= 0
  assert longtail.split_counts(7, pi=0.0) == (0, 7)
  assert longtail.split_counts(7, pi=1.0) == (7, 0)


def test_stratified_partition_cuts_each_class_at_its_rounded_cumulative_share():
  # Uneven classes (7, 3, 11, 1, 5 rows, interleaved): part j holds round(F_j n_c) -
  # round(F_{j-1} n_c) rows of class c, F the cumulative fractions (no .5 ties here).
  counts = np.array([7, 3, 11, 1, 5])
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(5), counts))
  fractions = (0.2, 0.35, 0.45)
  parts = longtail.stratified_partition(labels, fractions=fractions, key=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))
  cuts = np.floor(np.outer(counts, np.cumsum(fractions)) + 0.5).astype(int)
  expected = np.diff(np.concatenate([np.zeros((5, 1), int), cuts], axis=1), axis=1)
  got = np.stack([np.bincount(labels[part], minlength=5) for part in parts], axis=1)
  np.testing.assert_array_equal(got, expected)


def test_stratified_partition_places_every_example_when_fractions_sum_to_1_within_1e5():
  # 0.33333 x 3 passes the sum check; the last cut, round(0.99999 n), left 2 of 200000
  # examples in no part.
  labels = np.zeros(200_000, np.int64)
  parts = longtail.stratified_partition(labels, fractions=(0.33333,) * 3,
                                        key=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))
  assert [len(part) for part in parts] == [66_667, 66_666, 66_667]  # cuts 66667, 133333


@pytest.mark.parametrize('labels, fractions, match', [
    ([0, -1, 1], [0.5, 0.5], 'non-negative'),  # a label -1 was accepted
    ([0, 1, 1], [0.5, 0.2], 'sum to 1'),       # fractions summing to 0.7 were accepted
])
def test_stratified_partition_refuses_bad_labels_and_fractions(labels, fractions, match):
  # Each was partitioned without a word instead of naming the bad argument.
  with pytest.raises(ValueError, match=match):
    longtail.stratified_partition(np.array(labels), fractions=fractions,
                                  key=jax.random.PRNGKey(0))
