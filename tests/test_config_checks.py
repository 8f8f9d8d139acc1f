"""dv_jax.config_checks: every refusal names `config.<field>`; valid values come back typed."""

import math

import ml_collections
import numpy as np
import pytest

from dv_jax import config_checks


def test_valid_values_come_back_typed():
  assert config_checks.config_int(3.0, 'a.b') == 3 and isinstance(
      config_checks.config_int(np.int64(3), 'a.b'), int)
  assert config_checks.config_int(0, 'a.b', minimum=0) == 0
  assert config_checks.config_float('0.5', 'a.b', lambda v: v < 1, '< 1') == 0.5
  assert config_checks.config_positive_float(1e-6, 'a.b') == 1e-6
  assert config_checks.config_bool(np.bool_(False), 'a.b') is False


@pytest.mark.parametrize('value', [True, None, 'three', 2.5, math.nan, math.inf, 0, -1])
def test_config_int_refuses(value):
  with pytest.raises(ValueError, match=r'config\.train\.steps must be an integer >= 1, got'):
    config_checks.config_int(value, 'train.steps')


@pytest.mark.parametrize('value', [
    True, False, None, 'wide', math.nan, math.inf, -math.inf, 0.0, -2.0])
def test_config_positive_float_refuses(value):
  with pytest.raises(ValueError, match=r'config\.trak\.ridge must be finite and > 0, got'):
    config_checks.config_positive_float(value, 'trak.ridge')


@pytest.mark.parametrize('value', [True, np.True_, np.array(True), math.inf, None, 'wide'])
def test_config_float_refuses_bools_and_infinities(value):
  # Each of these passes the predicate once float() has read it (True as 1.0, inf > 0).
  with pytest.raises(ValueError, match=r'config\.fit\.scale must be > 0, got'):
    config_checks.config_float(value, 'fit.scale', lambda v: v > 0, '> 0')


def test_config_float_reads_a_0d_number_array():
  assert config_checks.config_float(np.array(0.5), 'fit.scale', lambda v: v > 0, '> 0') == 0.5


def test_config_seed_names_a_missing_seed():
  with pytest.raises(ValueError, match=r'^config\.seed must be an integer in '
                                       r'\[0, 4294967295\], got None$'):
    config_checks.config_seed(ml_collections.ConfigDict({'data': {}}))
  assert config_checks.config_seed(ml_collections.ConfigDict({'seed': 7})) == 7


def test_config_float_uses_the_predicate_and_its_wording():
  with pytest.raises(ValueError, match=r'config\.fit\.ci_level must be in \(0, 1\), got 95'):
    config_checks.config_float(95, 'fit.ci_level', lambda v: 0 < v < 1, 'in (0, 1)')


@pytest.mark.parametrize('value', [1, 0, 'False', None])
def test_config_bool_refuses_look_alikes(value):
  with pytest.raises(ValueError, match=r'config\.fit\.floor must be True or False'):
    config_checks.config_bool(value, 'fit.floor')
