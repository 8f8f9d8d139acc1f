"""Tests of dv_jax.bound against float64 NumPy references and closed forms."""

import logging
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax import bound
from dv_jax import linalg
from dv_jax import mmd

# float32 solves of kernels with condition number ~1e2 (p > n below) against float64.
RTOL = 1e-4
KEY = jax.random.PRNGKey(0)


def _grads(n, p, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, p)), rng.normal(size=n)


def _np_quad(grads, residual, eps=1e-4):
  theta = grads @ grads.T
  lam = eps * np.trace(theta) / len(grads)
  return np.sum(residual * np.linalg.solve(theta + lam * np.eye(len(grads)), residual))


def _np_normalize(quad, n, normalization):
  return math.sqrt(quad / n) if normalization == 'per_example' else math.sqrt(quad) / n


def _np_block_diagonal_quad(grads, residual, block_size, num_permutations, key, eps=1e-4):
  quads = []
  for perm_key in jax.random.split(key, num_permutations):  # the same seeded permutations
    order = np.asarray(jax.random.permutation(perm_key, len(grads)))
    quads.append(sum(_np_quad(grads[rows], residual[rows], eps)
                     for rows in np.array_split(order, range(block_size, len(order),
                                                              block_size))))
  return np.mean(quads)


# ---------------------------------------------------------------------------------------
# Empirical loss, discrepancy, composition.


def test_empirical_loss_is_the_pi_weighted_mean():
  real, synthetic = np.array([0.5, 1.0, 2.0]), np.array([3.0, 1.0, 0.0, 2.0, 4.0])
  pi = 3 / 8
  expected = pi * real.mean() + (1 - pi) * synthetic.mean()
  np.testing.assert_allclose(bound.empirical_loss_term(real, synthetic), expected, rtol=1e-6)
  # pi from the sizes makes it the mean over S.
  np.testing.assert_allclose(expected, np.concatenate([real, synthetic]).mean())


def test_empirical_loss_empty_part_has_weight_zero():
  losses = np.array([1.0, 2.0, 4.0])
  for got in (bound.empirical_loss_term(losses, np.zeros(0)),
              bound.empirical_loss_term(np.zeros(0), losses)):
    assert np.isfinite(float(got))
    np.testing.assert_allclose(got, 7 / 3, rtol=1e-6)


def test_discrepancy_weights_the_two_parts():
  np.testing.assert_allclose(bound.discrepancy_term(0.2, 0.6, pi=0.25),
                             0.25 * 0.2 + 0.75 * 0.6, rtol=1e-6)
  # An empty part is ignored (None allowed); an MMD result is accepted as is.
  assert float(bound.discrepancy_term(None, 0.6, pi=0.0)) == pytest.approx(0.6)
  assert float(bound.discrepancy_term(0.2, None, pi=1.0)) == pytest.approx(0.2)
  result = mmd.MMD(jnp.asarray(0.3), jnp.asarray(0.09), jnp.ones(5))
  np.testing.assert_allclose(bound.discrepancy_term(result, 0.1, pi=0.5), 0.2, rtol=1e-6)


@pytest.mark.parametrize('n,pi,expected', [
    (10, 0.3, math.sqrt(0.7) / 10), (4, 1.0, 0.25), (7, 0.5, math.sqrt(0.5) / 7),
    (1, 0.0, 1.0), (5, 0.8, math.sqrt(0.8) / 5)])  # the max's other side, pi > 1/2
def test_composition_closed_form(n, pi, expected):
  assert bound.composition_term(n, pi) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------
# NTK term.


@pytest.mark.parametrize('normalization', ['per_example', 'paper'])
def test_ntk_full_matches_numpy(normalization):
  grads, residual = _grads(10, 16, seed=0)
  got = bound.ntk_term(grads, residual, normalization=normalization)
  expected = _np_normalize(_np_quad(grads, residual), 10, normalization)
  np.testing.assert_allclose(got.value, expected, rtol=RTOL)
  theta = grads @ grads.T
  np.testing.assert_allclose(got.jitter, 1e-4 * np.trace(theta) / 10, rtol=1e-5)
  from_kernel = bound.ntk_term_from_kernel(theta, residual, normalization=normalization)
  np.testing.assert_allclose(from_kernel.value, expected, rtol=RTOL)


def test_ntk_multi_column_residual_sums_the_columns():
  grads, _ = _grads(10, 16, seed=1)
  residual = np.random.default_rng(2).normal(size=(10, 3))
  quad = sum(_np_quad(grads, residual[:, c]) for c in range(3))
  np.testing.assert_allclose(bound.ntk_term(grads, residual).value, math.sqrt(quad / 10),
                             rtol=RTOL)
  blocked = bound.ntk_term(grads, residual, method='block_diagonal', block_size=4, key=KEY)
  np.testing.assert_allclose(
      blocked.value ** 2 * 10,
      sum(_np_block_diagonal_quad(grads, residual[:, c], 4, 1, KEY) for c in range(3)),
      rtol=RTOL)


@pytest.mark.parametrize('block_size', [10, 64])
def test_block_diagonal_with_one_block_equals_full(block_size):
  grads, residual = _grads(10, 16, seed=3)
  full = bound.ntk_term(grads, residual)
  blocked = bound.ntk_term(grads, residual, method='block_diagonal', block_size=block_size,
                           num_permutations=2, key=KEY)
  np.testing.assert_allclose(blocked.value, full.value, rtol=RTOL)
  np.testing.assert_allclose(blocked.jitter, full.jitter, rtol=1e-5)


def test_a_block_larger_than_n_is_one_block_of_n(monkeypatch):
  # Its [B, B] Gram used to be allocated whole: block_size=10**12 aborted the process.
  padded_block_gram = bound._padded_block_gram

  def checked(grads_block, residual_block, num_valid):
    assert grads_block.shape[0] <= 10, grads_block.shape  # rather than allocating it
    return padded_block_gram(grads_block, residual_block, num_valid)

  monkeypatch.setattr(bound, '_padded_block_gram', checked)
  grads, residual = _grads(10, 16, seed=3)
  blocked = bound.ntk_term(grads, residual, method='block_diagonal', block_size=10**12,
                           num_permutations=2, key=KEY)
  np.testing.assert_allclose(blocked.value, bound.ntk_term(grads, residual).value, rtol=RTOL)


@pytest.mark.parametrize('normalization', ['per_example', 'paper'])
def test_block_diagonal_matches_numpy_blocks_with_a_ragged_last_block(normalization):
  # n = 11, B = 4: blocks of 4, 4, 3 (the last padded by one row); 3 permutations averaged.
  grads, residual = _grads(11, 16, seed=4)
  key = jax.random.PRNGKey(7)
  got = bound.ntk_term(grads, residual, method='block_diagonal', block_size=4,
                       num_permutations=3, key=key, normalization=normalization)
  quad = _np_block_diagonal_quad(grads, residual, 4, 3, key)
  np.testing.assert_allclose(got.value, _np_normalize(quad, 11, normalization), rtol=RTOL)
  # Differs from the full solve (cross-block terms are dropped), so the test has teeth.
  assert abs(_np_quad(grads, residual) - quad) > 1e-2 * quad


def test_padding_does_not_change_the_block_quad_form():
  # Three valid rows padded to five; the padding rows hold garbage that must be masked.
  rng = np.random.default_rng(5)
  grads_3xP, residual_3 = rng.normal(size=(3, 6)), rng.normal(size=3)
  grads_5xP = np.concatenate([grads_3xP, 100 * rng.normal(size=(2, 6))]).astype(np.float32)
  residual_5x1 = np.concatenate([residual_3, [7.0, -7.0]])[:, None].astype(np.float32)
  theta, residual, trace = bound._padded_block_gram(grads_5xP, residual_5x1, 3)
  theta_3 = grads_3xP @ grads_3xP.T
  np.testing.assert_allclose(trace, np.trace(theta_3), rtol=1e-5)
  np.testing.assert_allclose(theta[:3, :3], theta_3, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(theta[3:, :], np.eye(5)[3:], atol=0)
  np.testing.assert_allclose(residual[3:], 0.0, atol=0)
  jitter = 1e-2 * np.trace(theta_3) / 3
  padded = linalg.quad_form(theta, residual, initial_jitter=jitter)
  lam = padded.jitter
  expected = residual_3 @ np.linalg.solve(theta_3 + lam * np.eye(3), residual_3)
  np.testing.assert_allclose(padded.value, expected, rtol=RTOL)


def test_block_diagonal_compiles_once_for_every_n():
  grads, residual = _grads(13, 5, seed=6)  # p = 5 is used by no other test
  bound.ntk_term(grads[:7], residual[:7], method='block_diagonal', block_size=4, key=KEY)
  gram_compiles = bound._padded_block_gram._cache_size()
  quad_compiles = linalg._jittered_quad._cache_size()
  for n in (9, 13):
    bound.ntk_term(grads[:n], residual[:n], method='block_diagonal', block_size=4, key=KEY)
  assert bound._padded_block_gram._cache_size() == gram_compiles
  assert linalg._jittered_quad._cache_size() == quad_compiles


def _compiled_programs(fn):
  """The names of the XLA programs compiled while `fn()` runs (jax's compile log)."""
  names = []

  class _Names(logging.Handler):

    def emit(self, record):
      match = re.match(r'Finished XLA compilation of (\S+) in ', record.getMessage())
      if match:
        names.append(match.group(1))

  handler, logger = _Names(logging.WARNING), logging.getLogger('jax')
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      fn()
  finally:
    logger.removeHandler(handler)
  return names


def test_block_diagonal_compiles_no_permutation_for_a_new_n_in_its_bucket():
  # The digits table's block-diagonal rows compiled jax.random.permutation's sort for every
  # contributor size (~1 s each, most of the row): n = 27 after n = 20 (bucket 32) now
  # compiles only the per-n gather.
  grads, residual = _grads(27, 6, seed=8)  # p = 6 is used by no other test
  bound.ntk_term(grads[:20], residual[:20], method='block_diagonal', block_size=4, key=KEY)
  names = _compiled_programs(lambda: bound.ntk_term(
      grads, residual, method='block_diagonal', block_size=4, key=jax.random.PRNGKey(3)))
  assert names, 'the compile log was not captured'
  assert not [name for name in names if re.search('permut|shuffle|sort', name)], names


@pytest.mark.parametrize('typed,sizes', [(False, (0, 1, 9, 32, 33, 1625, 1626)),
                                          (True, (9, 1626))])
def test_permutation_is_jax_random_permutation(typed, sizes):
  # The same integers for every n, across bucket edges and the second sort round (n > 1625).
  for n in sizes:
    for seed in range(2):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), n)
      if typed:
        key = jax.random.wrap_key_data(key)
      np.testing.assert_array_equal(bound.permutation(key, n),
                                    np.asarray(jax.random.permutation(key, n)), err_msg=n)


def test_permutation_compiles_once_per_bucket():
  bound.permutation(KEY, 33)
  before = bound._padded_shuffle._cache_size()
  for n in (40, 51, 64):
    bound.permutation(KEY, n)
  assert bound._padded_shuffle._cache_size() == before


def test_permutation_without_partitionable_threefry_is_jax_random_permutation():
  with jax.threefry_partitionable(False):
    key = jax.random.PRNGKey(5)
    np.testing.assert_array_equal(bound.permutation(key, 37),
                                  np.asarray(jax.random.permutation(key, 37)))


@pytest.mark.parametrize('columns', [None, 3])
def test_block_diagonal_of_rows_is_ntk_term_on_the_gathered_rows(columns):
  # Bit for bit: the same permutation, the same [B] blocks, the same programs on them.
  rng = np.random.default_rng(9)
  grads = rng.normal(size=(30, 7)).astype(np.float32)
  residual = rng.normal(size=(30,) if columns is None else (30, columns)).astype(np.float32)
  rows = np.array([29, 3, 17, 4, 11, 0, 25, 8, 13, 21, 6])  # n = 11: a ragged last block
  key = jax.random.PRNGKey(4)
  got = bound.block_diagonal_ntk_term_of_rows(jnp.asarray(grads), residual, rows,
                                              block_size=4, num_permutations=2, key=key)
  want = bound.ntk_term(grads[rows], residual[rows], method='block_diagonal', block_size=4,
                        num_permutations=2, key=key)
  np.testing.assert_array_equal(np.asarray(got.value), np.asarray(want.value))
  assert got.jitter == want.jitter


@pytest.mark.parametrize('change, message', [
    (dict(rows=np.array([0, 30])), r'rows must lie in \[0, 30\)'),
    (dict(rows=np.array([0.0, 1.0])), 'rows must be a non-empty 1-D array of integer'),
    (dict(rows=np.zeros(0, int)), 'rows must be a non-empty'),
    (dict(residual=np.zeros(29, np.float32)), 'residual must be'),
    (dict(residual=np.full(30, np.nan, np.float32)), 'residual must be floating and finite'),
    (dict(grads=np.zeros((30, 0), np.float32)), r'grads must be \[N, p\]'),
    (dict(block_size=0), 'block_size'),
    (dict(key=0), 'key must be a single'),
])
def test_block_diagonal_of_rows_names_a_bad_argument(change, message):
  args = dict(grads=np.ones((30, 4), np.float32), residual=np.ones(30, np.float32),
              rows=np.arange(5), block_size=4, num_permutations=1, key=KEY)
  args.update(change)
  grads, residual, rows = args.pop('grads'), args.pop('residual'), args.pop('rows')
  with pytest.raises(ValueError, match=message):
    bound.block_diagonal_ntk_term_of_rows(grads, residual, rows, **args)


def test_block_diagonal_of_rows_names_non_finite_gradients():
  grads = np.ones((30, 4), np.float32)
  grads[7, 2] = np.inf
  args = dict(block_size=4, num_permutations=1, key=KEY)
  bound.block_diagonal_ntk_term_of_rows(grads, np.ones(30, np.float32), np.arange(6), **args)
  with pytest.raises(ValueError, match='grads contains NaN or Inf'):
    bound.block_diagonal_ntk_term_of_rows(grads, np.ones(30, np.float32), np.arange(9),
                                          **args)


def test_block_diagonal_rank_deficient_blocks_record_the_largest_jitter():
  # p = 2 < B: every block kernel is singular and PD only through its own jitter.
  grads, residual = _grads(9, 2, seed=8)
  got = bound.ntk_term(grads, residual, method='block_diagonal', block_size=4, key=KEY,
                       eps=1e-2)
  quad = _np_block_diagonal_quad(grads, residual, 4, 1, KEY, eps=1e-2)
  np.testing.assert_allclose(got.value, math.sqrt(quad / 9), rtol=1e-3)
  order = np.asarray(jax.random.permutation(jax.random.split(KEY, 1)[0], 9))
  jitters = [1e-2 * np.sum(grads[rows] ** 2) / len(rows)
             for rows in (order[:4], order[4:8], order[8:])]
  np.testing.assert_allclose(got.jitter, max(jitters), rtol=1e-5)


def test_block_diagonal_all_zero_gradient_block_uses_the_absolute_eps():
  # An all-zero block (trace 0) got jitter eps * 0 = 0 and a singular solve, not lam = eps.
  residual = np.arange(1.0, 7.0)
  got = bound.ntk_term(np.zeros((6, 3)), residual, method='block_diagonal', block_size=4,
                       key=KEY, eps=1e-2)
  np.testing.assert_allclose(got.value, math.sqrt(np.sum(residual ** 2) / 1e-2 / 6),
                             rtol=1e-5)
  assert got.jitter == pytest.approx(1e-2)


def test_subsample_of_all_rows_equals_full():
  grads, residual = _grads(10, 16, seed=9)
  for normalization in ('per_example', 'paper'):
    full = bound.ntk_term(grads, residual, normalization=normalization)
    sub = bound.ntk_term(grads, residual, method='subsample', num_sub=10, key=KEY,
                         normalization=normalization)
    np.testing.assert_allclose(sub.value, full.value, rtol=RTOL)


@pytest.mark.parametrize('normalization', ['per_example', 'paper'])
def test_subsample_matches_numpy_on_the_same_rows(normalization):
  grads, residual = _grads(12, 16, seed=10)
  key = jax.random.PRNGKey(3)
  rows = np.asarray(jax.random.permutation(key, 12))[:5]
  quad_sub = _np_quad(grads[rows], residual[rows])
  # Q_sub estimates Q * n_sub / n: per_example sqrt(Q_sub / n_sub), paper
  # sqrt(Q_sub * n / n_sub) / n.
  expected = (math.sqrt(quad_sub / 5) if normalization == 'per_example'
              else math.sqrt(quad_sub * 12 / 5) / 12)
  got = bound.ntk_term(grads, residual, method='subsample', num_sub=5, key=key,
                       normalization=normalization)
  np.testing.assert_allclose(got.value, expected, rtol=RTOL)


def test_bound_terms_composes_the_four_terms():
  grads, residual = _grads(8, 16, seed=11)
  loss_real, loss_synthetic = np.linspace(0.1, 1.0, 3), np.linspace(2.0, 3.0, 5)
  terms = bound.bound_terms(loss_real, loss_synthetic, 0.4, 0.8, grads, residual,
                            normalization='paper')
  pi = 3 / 8
  np.testing.assert_allclose(terms.empirical_loss,
                             pi * loss_real.mean() + (1 - pi) * loss_synthetic.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(terms.discrepancy, pi * 0.4 + (1 - pi) * 0.8, rtol=1e-6)
  np.testing.assert_allclose(terms.ntk, math.sqrt(_np_quad(grads, residual)) / 8, rtol=RTOL)
  np.testing.assert_allclose(terms.composition, math.sqrt(1 - pi) / 8, rtol=1e-6)
  # An all-synthetic subset: no real losses, no real MMD.
  terms = bound.bound_terms(np.zeros(0), loss_synthetic, None, 0.8, grads[:5], residual[:5])
  assert all(np.isfinite(float(t)) for t in terms)
  np.testing.assert_allclose(terms.composition, 1 / 5, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize('loss_real,loss_synthetic,match', [
    (np.zeros(0), np.zeros(0), 'both empty'),
    (np.array([1.0, np.nan]), np.ones(2), 'loss_real contains NaN'),
    (np.ones(2), np.array([np.inf]), 'loss_synthetic contains NaN'),
    (np.ones(2), np.ones((2, 1)), 'loss_synthetic must be 1-D'),
    (np.array([0.5, -0.2]), np.ones(2), r'loss_real must hold per-example losses >= 0'),
    # A loss of -1e-3 is no float32 rounding of 0, yet a looser tolerance let it through.
    (np.array([1.0, -1e-3]), np.ones(2), r'loss_real must hold per-example losses >= 0'),
    (np.ones(2), np.array([-2.3, -0.1]), r'loss_synthetic must .* minimum of -2.29'),
])
def test_empirical_loss_errors(loss_real, loss_synthetic, match):
  with pytest.raises(ValueError, match=match):
    bound.empirical_loss_term(loss_real, loss_synthetic)


def test_empirical_loss_tolerates_float32_rounding_below_zero():
  # A loss computed in float32 for a confident prediction can round to a hair below 0.
  got = bound.empirical_loss_term(np.array([-1e-8, 1.0], np.float32), np.zeros(0, np.float32))
  np.testing.assert_allclose(got, 0.5, rtol=1e-6)


@pytest.mark.parametrize('args,pi,match', [
    ((0.1, 0.2), 1.5, 'pi must be a number in'),
    ((0.1, 0.2), float('nan'), 'pi must be a number in'),
    ((0.1, 0.2), 'half', 'pi must be a number'),
    ((0.1, 0.2), '0.5', 'pi must be a number'),  # float() read it as 0.5
    ((0.1, 0.2), True, 'pi must be a number'),   # float() read it as 1.0
    ((None, 0.2), 0.3, 'mmd_real is None'),
    ((0.1, None), 0.3, 'mmd_synthetic is None'),
    ((-0.1, 0.2), 0.3, 'mmd_real must be >= 0'),
    ((0.1, np.nan), 0.3, 'mmd_synthetic contains NaN'),
    ((np.ones(2), 0.2), 0.3, 'mmd_real must be 0-D'),
])
def test_discrepancy_errors(args, pi, match):
  with pytest.raises(ValueError, match=match):
    bound.discrepancy_term(*args, pi=pi)


@pytest.mark.parametrize('n,pi,match', [
    (0, 0.5, 'n must be an integer >= 1'), (2.5, 0.5, 'n must be an integer >= 1'),
    (3, -0.1, 'pi must be a number in'), (3, True, 'pi must be a number in')])
def test_composition_errors(n, pi, match):
  with pytest.raises(ValueError, match=match):
    bound.composition_term(n, pi)


GRADS, RESIDUAL = _grads(6, 8, seed=12)


@pytest.mark.parametrize('kwargs,match', [
    (dict(method='exact'), 'method must be one of'),
    (dict(normalization='mean'), 'normalization must be one of'),
    (dict(method='block_diagonal'), 'key is required'),
    (dict(method='subsample', num_sub=3), 'key is required'),
    (dict(method='subsample', key=KEY), 'num_sub is required'),
    # Before: a raw JAX error that did not name key.
    (dict(method='block_diagonal', key=0), r'key must be a single jax\.random\.PRNGKey'),
    (dict(method='subsample', key=KEY, num_sub=7), 'num_sub must be <= n'),
    (dict(method='subsample', key=KEY, num_sub=0), 'num_sub must be an integer >= 1'),
    (dict(method='block_diagonal', key=KEY, block_size=0), 'block_size must be an integer'),
    (dict(method='block_diagonal', key=KEY, num_permutations=0), 'num_permutations must be'),
    (dict(method='block_diagonal', key=KEY, eps=0.0), 'eps must be positive'),
    (dict(eps=-1.0), 'eps must be positive'),
    (dict(grads=np.full((6, 8), np.nan)), 'grads contains NaN'),
    (dict(grads=np.ones(6)), 'grads must be 2-D'),
    (dict(grads=np.zeros((0, 8)), residual=np.zeros(0)), 'grads is empty'),
    # Grads of no parameters gave |r|^2 / eps (a zero kernel) instead of naming grads.
    (dict(grads=np.zeros((6, 0))), 'grads has no parameters'),
    (dict(residual=np.ones(5)), 'residual must have 6 rows'),
    (dict(residual=np.ones((6, 1, 1))), 'residual must be 1-D or 2-D'),
    (dict(residual=np.array([np.inf] * 6)), 'residual contains NaN'),
    # Before: a residual of no columns gave 0.0, the score of a perfect fit.
    (dict(residual=np.ones((6, 0))), r'residual has no columns \(shape \(6, 0\)\)'),
])
def test_ntk_term_errors(kwargs, match):
  args = dict(grads=GRADS, residual=RESIDUAL)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    bound.ntk_term(args.pop('grads'), args.pop('residual'), **args)


def test_ntk_term_from_kernel_and_bound_terms_errors():
  with pytest.raises(ValueError, match='theta must be a non-empty square'):
    bound.ntk_term_from_kernel(np.ones((3, 4)), np.ones(3))
  with pytest.raises(ValueError, match='normalization must be one of'):
    bound.ntk_term_from_kernel(np.eye(3), np.ones(3), normalization='none')
  # A cross-kernel K(x1, x2) of equal sizes is square but not a Gram matrix.
  cross = GRADS[:3] @ GRADS[3:].T
  with pytest.raises(ValueError, match='theta must be symmetric'):
    bound.ntk_term_from_kernel(cross, np.ones(3))
  with pytest.raises(ValueError, match=r'grads must have shape \[n1 \+ n2, p\] = \[6, p\]'):
    bound.bound_terms(np.ones(2), np.ones(4), 0.1, 0.1, GRADS[:5], RESIDUAL[:5])


# ---------------------------------------------------------------------------------------
# Half-precision inputs (a bfloat16 model's losses and gradients).


def test_empirical_loss_of_bfloat16_losses_is_a_float32_mean():
  # Before: the mean stayed bfloat16, 2.296875 for losses whose mean is 2.3046875 (bfloat16
  # has a step of 2^-6 = 0.0156 at 2.3, larger than the spread between contributors).
  real = jnp.asarray(np.linspace(2.2, 2.4, 7), jnp.bfloat16)
  synthetic = jnp.asarray(np.linspace(2.25, 2.35, 5), jnp.bfloat16)
  r64, s64 = np.asarray(real, np.float64), np.asarray(synthetic, np.float64)
  expected = 7 / 12 * r64.mean() + 5 / 12 * s64.mean()
  got = bound.empirical_loss_term(real, synthetic)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize('method', ['full', 'block_diagonal', 'subsample'])
def test_ntk_term_of_bfloat16_gradients_matches_numpy(method):
  # Before: NotImplementedError from the Cholesky of a bfloat16 Gram matrix.
  grads64, residual64 = _grads(8, 16, seed=13)
  grads = jnp.asarray(grads64, jnp.bfloat16)
  residual = jnp.asarray(residual64, jnp.bfloat16)
  g, r = np.asarray(grads, np.float64), np.asarray(residual, np.float64)
  kwargs = dict(method=method, key=KEY)
  if method == 'block_diagonal':
    kwargs['block_size'] = 8  # one block: the full solve
  if method == 'subsample':
    kwargs['num_sub'] = 8     # every row: the full solve
  got = bound.ntk_term(grads, residual, **kwargs)
  assert got.value.dtype == jnp.float32
  np.testing.assert_allclose(got.value, math.sqrt(_np_quad(g, r) / 8), rtol=RTOL)
