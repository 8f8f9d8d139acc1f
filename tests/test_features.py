"""Tests of dv_jax.features: the target standardizer against float64 NumPy.

(Most init_features and user-feature tests live in tests/test_valuation.py.)"""

import jax
import numpy as np
import pytest

from dv_jax import features as features_lib
from dv_jax import mmd
from dv_jax.models import MLP, bind_apply, init_model


def _mlp():
  model = MLP(hidden_sizes=(5,), num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  return bind_apply(model, init_model(model, jax.random.PRNGKey(1), x))


@pytest.mark.parametrize('value,m', [(3.3, 1000), (1000.1, 7), (12345.678, 100)])
def test_standardizer_keeps_a_float32_constant_feature_unscaled(value, m):
  # The float32 mean of m copies of `value` is off by an ulp, so the float32 std was 1e-6 ..
  # 1e-2 and the "constant" feature was divided by it: a contributor at value + 0.1 there
  # landed thousands of target standard deviations away.
  rng = np.random.default_rng(0)
  t = np.stack([rng.normal(size=m), np.full(m, value)], axis=1).astype(np.float32)
  st = features_lib.fit_standardizer(t)
  np.testing.assert_array_equal(np.asarray(st.scale)[1], 1.0)
  np.testing.assert_array_equal(np.asarray(features_lib.standardize_like(t, st))[:, 1], 0.0)
  moved = np.asarray(features_lib.standardize_like([[0.0, value + 0.1]], st))
  np.testing.assert_allclose(moved[0, 1], np.float32(value + 0.1) - np.float32(value),
                             rtol=1e-6)


def test_standardizer_matches_numpy_float64():
  rng = np.random.default_rng(1)
  t = rng.normal(5.0, 3.0, (50, 4)).astype(np.float32)
  x = rng.normal(size=(20, 4)).astype(np.float32)
  st = features_lib.fit_standardizer(t)
  t64 = t.astype(np.float64)
  expected = (x - t64.mean(axis=0)) / t64.std(axis=0)
  np.testing.assert_allclose(features_lib.standardize_like(x, st), expected, rtol=1e-5,
                             atol=1e-5)


def test_standardizer_keeps_a_nearly_constant_feature_unscaled():
  # A target std of 4.7e-9 (below _MIN_STD = 1e-6) was divided by, blowing the feature up.
  t = np.array([[0.0, 1.0], [1e-8, 2.0], [0.0, 3.0]], np.float32)
  st = features_lib.fit_standardizer(t)
  np.testing.assert_array_equal(np.asarray(st.scale)[0], 1.0)


def test_mmd_does_not_depend_on_the_std_convention():
  """fit_standardizer's docstring: ddof 0 or 1 gives the same MK-MMD (bandwidths from T)."""
  rng = np.random.default_rng(2)
  t = rng.normal(5.0, [1.0, 3.0, 0.5], (12, 3)).astype(np.float32)
  x = rng.normal(4.0, 2.0, (9, 3)).astype(np.float32)
  st = features_lib.fit_standardizer(t)
  t64 = t.astype(np.float64)
  mean, sd1 = t64.mean(axis=0), t64.std(axis=0, ddof=1)
  values = [float(mmd.mk_mmd2(features_lib.standardize_like(x, st),
                              features_lib.standardize_like(t, st))),
            float(mmd.mk_mmd2((x - mean) / sd1, (t64 - mean) / sd1))]
  assert values[0] > 1e-2
  np.testing.assert_allclose(values[0], values[1], rtol=1e-5)


def test_init_features_refuses_an_lms_per_position_states():
  """An LM's readout reads [b, t, d]; flattening it compared sequences position by position
  (padding included). METHOD.md's LM feature is the masked mean: the error says where."""
  from dv_jax.models import transformer
  model = transformer.TransformerLM(vocab_size=11, num_layers=1, num_heads=2, d_model=8,
                                    d_ff=16, max_len=6)
  tokens = np.arange(12, dtype=np.int32).reshape(2, 6) % 11
  params = model.init(jax.random.PRNGKey(0), tokens)['params']
  apply_fn = lambda p, x: model.apply({'params': p}, x)
  with pytest.raises(ValueError, match=r'\(2, 6, 8\).*lm_features_fn'):
    features_lib.init_features(apply_fn, params, tokens)


@pytest.mark.parametrize('x', [np.zeros((0, 3)), np.float32(3.0)])
def test_flatten_refuses_no_rows_and_scalars(x):
  # Before: ZeroDivisionError (no rows) and IndexError (a scalar), naming nothing.
  with pytest.raises(ValueError, match=r'x must be \[n, \.\.\.\] with n >= 1'):
    features_lib.flatten(x)


def test_init_features_refuses_nan_inputs():
  # A NaN in x went through the network unnoticed, as the docstring says it must not.
  apply_fn, params = _mlp()
  x = np.ones((4, 6), np.float32)
  x[2, 3] = np.nan
  with pytest.raises(ValueError, match='NaN or Inf'):
    features_lib.init_features(apply_fn, params, x)


def test_feature_fn_refuses_missing_params_and_a_non_callable_user_fn():
  # Both were accepted when the map was built and failed only when it was called.
  apply_fn, _ = _mlp()
  with pytest.raises(ValueError, match='needs apply_fn and params'):
    features_lib.feature_fn('init_features', apply_fn=apply_fn, params=None)
  with pytest.raises(ValueError, match='needs a callable'):
    features_lib.feature_fn('user', user_fn=np.ones((3, 2)))


def test_user_fn_with_the_wrong_number_of_rows_is_refused():
  # n + 1 feature rows for n examples were accepted, misaligning features and examples.
  phi = features_lib.feature_fn('user', user_fn=lambda v: np.ones((len(v) + 1, 2)))
  with pytest.raises(ValueError, match=r'features_fn must return \[n, d\] = \[3, d\]'):
    phi(np.ones((3, 4), np.float32))
