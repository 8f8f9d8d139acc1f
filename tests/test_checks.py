"""dv_jax.checks: check_int (which values count as whole numbers, and the one message),
check_seed, check_indices, real_number, unit_fraction and check_key."""

import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax import checks


@pytest.mark.parametrize('value', [
    3, np.int64(3), np.int32(3), np.uint8(3), 3.0, np.float32(3.0), np.float64(3.0),
    np.array(3), np.array(3.0), jnp.int32(3), jnp.array(3.0),
])
def test_accepts_whole_numbers_as_python_ints(value):
  out = checks.check_int(value, 'k')
  assert out == 3 and type(out) is int  # pylint: disable=unidiomatic-typecheck


def test_bounds_are_inclusive():
  assert checks.check_int(0, 'k', minimum=0) == 0
  assert checks.check_int(5, 'k', minimum=2, maximum=5) == 5
  assert checks.check_int(-7, 'k', minimum=None) == -7
  assert checks.check_int(2**70, 'k') == 2**70  # no float round trip


@pytest.mark.parametrize('value', [
    True, False, np.bool_(True), None, '3', b'3', 2.5, np.float32(0.5), math.nan, math.inf,
    -math.inf, np.nan, fractions.Fraction(3, 1), np.array([3]), [3], 3 + 0j,
])
def test_refuses_what_is_not_a_whole_number(value):
  with pytest.raises(ValueError, match=r'^k must be an integer >= 1, got '):
    checks.check_int(value, 'k')


@pytest.mark.parametrize('kwargs,value,message', [
    (dict(), 0, r'^num_items must be an integer >= 1, got 0$'),
    (dict(minimum=2), 1, r'^num_items must be an integer >= 2, got 1$'),
    (dict(minimum=0), -1, r'^num_items must be an integer >= 0, got -1$'),
    (dict(maximum=4), 5, r'^num_items must be an integer in \[1, 4\], got 5$'),
    (dict(minimum=None, maximum=4), 5, r'^num_items must be an integer <= 4, got 5$'),
    (dict(minimum=None), 2.5, r'^num_items must be an integer, got 2\.5$'),
    (dict(), 'ten', r"^num_items must be an integer >= 1, got 'ten'$"),
])
def test_message_names_the_argument_the_bounds_and_the_value(kwargs, value, message):
  with pytest.raises(ValueError, match=message):
    checks.check_int(value, 'num_items', **kwargs)


def test_check_seed_takes_exactly_the_seeds_with_keys_of_their_own():
  assert checks.check_seed(0) == 0 and checks.check_seed(np.uint32(2**32 - 1)) == 2**32 - 1
  # What the bound is for: PRNGKey keeps the low 32 bits, so these repeat another seed.
  assert (jax.random.key_data(jax.random.PRNGKey(2**32)).tolist()
          == jax.random.key_data(jax.random.PRNGKey(0)).tolist())
  for seed in (2**32, -1, 1.5, True, None):
    with pytest.raises(ValueError, match=r'^config\.seed must be an integer in '
                                         r'\[0, 4294967295\], got'):
      checks.check_seed(seed, 'config.seed')


def test_check_indices_keeps_integer_positions_and_refuses_masks_and_floats():
  out = checks.check_indices(np.array([2, 0], np.int32))
  assert out.dtype == np.int64 and out.tolist() == [2, 0]
  assert checks.check_indices([]).tolist() == []
  with pytest.raises(ValueError, match=r'rows must be integers, got dtype bool \(for a '
                                       r'boolean mask pass np\.flatnonzero\(mask\)\)'):
    checks.check_indices(np.array([True, False]), 'rows')
  with pytest.raises(ValueError, match='indices must be integers, got dtype float64$'):
    checks.check_indices([1.0, 2.7])
  with pytest.raises(ValueError, match=r'indices must be 1-D, got shape \(1, 2\)'):
    checks.check_indices([[0, 1]])


def test_unit_fraction_reads_numbers_in_the_unit_interval_only():
  assert checks.unit_fraction(0.25) == 0.25 and checks.unit_fraction(np.float32(1.0)) == 1.0
  assert checks.unit_fraction(jnp.array(0.0)) == 0.0 and checks.unit_fraction(1) == 1.0
  for value in (True, '0.5', b'0.5', None, math.nan, -0.1, 1.5, [0.5], object()):
    assert checks.unit_fraction(value) is None, value


def test_check_indices_refuses_a_0d_array():
  # A lone position is not a list of positions: astype would hand back a 0-d array.
  with pytest.raises(ValueError, match=r'^rows must be 1-D, got shape \(\)$'):
    checks.check_indices(np.array(3), 'rows')


@pytest.mark.parametrize('value', [np.True_, np.bool_(False), np.array(True), np.array(False),
                                   jnp.array(True)])
def test_unit_fraction_refuses_numpy_bools_and_0d_bool_arrays(value):
  # float() reads each of these as 1.0 or 0.0, a share nobody meant.
  assert checks.unit_fraction(value) is None


def test_real_number_reads_real_numbers_and_refuses_what_float_would_misread():
  assert checks.real_number(2) == 2.0 and checks.real_number(np.float32(0.5)) == 0.5
  assert checks.real_number(jnp.array(3.0)) == 3.0 and math.isnan(checks.real_number(math.nan))
  assert checks.real_number(-math.inf) == -math.inf  # the range is each caller's to check
  for value in (True, np.True_, '2', b'2', None, 1 + 0j, np.complex128(1.0), [2.0], object()):
    assert checks.real_number(value) is None, value


@pytest.mark.parametrize('key', [jax.random.PRNGKey(3), np.asarray(jax.random.PRNGKey(3)),
                                 jax.random.key(3),
                                 np.arange(4, dtype=np.uint32)])  # a raw key under rbg
def test_check_key_passes_one_raw_or_typed_key(key):
  assert checks.check_key(key) is key


@pytest.mark.parametrize('key, got', [
    (3, r'got 3 \(for a seed pass jax.random.PRNGKey\(seed\)\)'), (None, 'got None'),
    (jax.random.split(jax.random.PRNGKey(0), 3), r'shape \(3, 2\)'),
    # split's default: two raw keys, whose leading 2 is not a key's length.
    (jax.random.split(jax.random.PRNGKey(0)), r'shape \(2, 2\)'),
    (np.array([0, 3]), 'dtype int64'), (jax.random.split(jax.random.key(0), 2), r'shape \(2,\)'),
])
def test_check_key_names_the_argument_and_what_it_got(key, got):
  with pytest.raises(ValueError, match=r'^rng_key must be a single jax.random.PRNGKey .*' + got):
    checks.check_key(key, 'rng_key')


def test_non_finite_leaf_names_the_first_bad_leaf_by_path():
  tree = {'a': np.ones(2), 'b': {'c': np.array([1.0, np.inf]), 'd': np.array([np.nan])}}
  assert checks.non_finite_leaf(tree) == "['b']['c']"
  assert checks.non_finite_leaf({'a': np.ones(2)}) is None
  traced = jax.jit(lambda x: checks.non_finite_leaf({'x': x}) is None)  # values unknown
  assert traced(jnp.array([np.nan]))
