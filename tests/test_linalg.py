"""Tests of dv_jax.linalg against float64 NumPy references (the library runs in float32)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax import linalg

# float32 Cholesky of matrices with condition number <= ~1e3 (below) against float64.
RTOL = 1e-4


def _spd(n, seed, extra=3):
  """A well-conditioned SPD matrix G G^T / p + I / 2 (float64)."""
  g = np.random.default_rng(seed).normal(size=(n, n + extra))
  return g @ g.T / (n + extra) + 0.5 * np.eye(n)


def _indefinite(eigenvalues, seed):
  """Q diag(eigenvalues) Q^T with a random orthogonal Q."""
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
  return (q * np.asarray(eigenvalues, np.float64)) @ q.T


@pytest.mark.parametrize('n,rhs_shape', [(1, ()), (5, ()), (12, ()), (6, (3,))])
def test_psd_solve_matches_numpy(n, rhs_shape):
  a = _spd(n, seed=n)
  b = np.random.default_rng(n + 1).normal(size=(n,) + rhs_shape)
  result = linalg.psd_solve(a, b, eps=1e-3)
  lam = 1e-3 * np.trace(a) / n
  assert isinstance(result.jitter, float)
  np.testing.assert_allclose(result.jitter, lam, rtol=1e-6)
  expected = np.linalg.solve(a + lam * np.eye(n), b)
  assert result.solution.shape == b.shape
  np.testing.assert_allclose(result.solution, expected, rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize('y_shape', [(7,), (7, 3)])
def test_quad_form_matches_numpy(y_shape):
  a = _spd(7, seed=3)
  y = np.random.default_rng(4).normal(size=y_shape)
  result = linalg.quad_form(a, y)
  lam = 1e-4 * np.trace(a) / 7
  expected = np.sum(y * np.linalg.solve(a + lam * np.eye(7), y))
  assert result.value.shape == ()
  np.testing.assert_allclose(result.value, expected, rtol=RTOL)
  np.testing.assert_allclose(result.jitter, lam, rtol=1e-6)


def test_quad_form_rank_deficient_gram_uses_first_jitter():
  # n = 8 examples, p = 3 parameters: Theta = G G^T has rank 3, PD only through lam.
  g = np.random.default_rng(5).normal(size=(8, 3))
  a = g @ g.T
  y = np.random.default_rng(6).normal(size=8)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no escalation expected at eps = 1e-2
    result = linalg.quad_form(a, y, eps=1e-2)
  lam = 1e-2 * np.trace(a) / 8
  expected = y @ np.linalg.solve(a + lam * np.eye(8), y)
  np.testing.assert_allclose(result.jitter, lam, rtol=1e-6)
  # Condition number ~ 1e2 * 8 here; float32 keeps ~4 digits.
  np.testing.assert_allclose(result.value, expected, rtol=1e-3)


def test_jitter_escalates_on_indefinite_matrix():
  # Smallest eigenvalue -0.05: lam must exceed 0.05. base = 1e-4 * trace / n = 7.375e-5,
  # so the tries 7.4e-5, 7.4e-4, 7.4e-3 fail and 7.4e-2 (k = 3) succeeds.
  eigenvalues = [1.0, 1.0, 1.0, -0.05]
  a = _indefinite(eigenvalues, seed=0)
  b = np.arange(1.0, 5.0)
  base = 1e-4 * np.trace(a) / 4
  with pytest.warns(RuntimeWarning, match='not positive definite') as record:
    result = linalg.psd_solve(a, b)
  messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
  assert len(messages) == 3
  # The trace is taken in float32, hence rtol 1e-6 against the float64 base.
  np.testing.assert_allclose(result.jitter, base * 1e3, rtol=1e-6)
  assert f'retrying with jitter {result.jitter:.3g}' in messages[-1]
  expected = np.linalg.solve(a + result.jitter * np.eye(4), b)
  np.testing.assert_allclose(result.solution, expected, rtol=1e-3)

  with pytest.warns(RuntimeWarning):
    quad = linalg.quad_form(a, b)
  np.testing.assert_allclose(quad.jitter, base * 1e3, rtol=1e-6)
  np.testing.assert_allclose(quad.value, b @ expected, rtol=1e-3)


def test_never_positive_definite_raises():
  a = _indefinite([10.0, 10.0, 10.0, -5.0], seed=1)  # needs lam > 5 = base * 10^4
  with pytest.warns(RuntimeWarning):
    with pytest.raises(ValueError, match='not positive definite'):
      linalg.psd_solve(a, np.ones(4), max_tries=3)


def test_zero_matrix_uses_absolute_eps():
  y = np.array([1.0, 2.0, 3.0])
  result = linalg.quad_form(np.zeros((3, 3)), y, eps=1e-2)
  assert result.jitter == 1e-2
  np.testing.assert_allclose(result.value, y @ y / 1e-2, rtol=1e-6)


def test_escalation_reuses_one_compile():
  # Every jitter is a traced scalar: after one call has compiled this size, further
  # escalations through other jitter values compile nothing.
  with pytest.warns(RuntimeWarning):
    linalg.psd_solve(_indefinite([1.0] * 10 + [-0.05], seed=2), np.ones(11))
  before = linalg._jittered_cholesky._cache_size()
  with pytest.warns(RuntimeWarning) as record:
    linalg.psd_solve(_indefinite([3.0] * 10 + [-0.5], seed=3), np.ones(11))
  assert len(record) >= 3
  assert linalg._jittered_cholesky._cache_size() == before


def test_safe_sqrt_values_and_gradients():
  x = jnp.array([-2.0, -1e-30, 0.0, 1e-30, 0.25, 4.0])
  np.testing.assert_allclose(linalg.safe_sqrt(x), np.sqrt(np.maximum(np.asarray(x), 0)),
                             rtol=1e-6)
  grads = jax.jit(jax.vmap(jax.grad(linalg.safe_sqrt)))(x)
  assert np.all(np.isfinite(grads))
  np.testing.assert_allclose(grads[:3], 0.0)
  np.testing.assert_allclose(grads[4:], 0.5 / np.sqrt([0.25, 4.0]), rtol=1e-6)
  assert float(jax.grad(linalg.safe_sqrt)(0.0)) == 0.0
  # Gradient through a sum that hits 0 exactly stays finite (no 0 * inf).
  assert float(jax.grad(lambda v: linalg.safe_sqrt(v - v))(3.0)) == 0.0
  assert linalg.safe_sqrt(4).dtype == jnp.result_type(float)


def test_safe_sqrt_keeps_nan():
  # Before: NaN failed `x > 0` and came back 0.0, a NaN MMD^2 reading as a perfect match.
  assert np.isnan(linalg.safe_sqrt(jnp.nan))
  np.testing.assert_array_equal(linalg.safe_sqrt(jnp.array([jnp.nan, -1.0, 4.0, jnp.inf])),
                                [np.nan, 0.0, 2.0, np.inf])
  assert np.isnan(jax.grad(linalg.safe_sqrt)(jnp.nan))


@pytest.mark.parametrize('a,b,match', [
    (np.ones((3, 4)), np.ones(3), 'a must be a square'),
    (np.ones(3), np.ones(3), 'a must be a square'),
    (np.zeros((0, 0)), np.ones(0), 'a must not be empty'),
    (np.eye(3), np.ones(4), 'b must have shape'),
    (np.eye(3), np.ones((3, 2, 1)), 'b must have shape'),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), np.ones(2), 'a contains NaN'),
    (np.eye(2), np.array([1.0, np.inf]), 'b contains NaN'),
    (-np.eye(2), np.ones(2), 'a has a negative trace'),
    (np.eye(2).astype(np.complex64), np.ones(2), 'a must be real'),
])
def test_psd_solve_errors(a, b, match):
  with pytest.raises(ValueError, match=match):
    linalg.psd_solve(a, b)


def test_non_symmetric_matrix_is_rejected_not_symmetrized():
  # Before: Cholesky read (a + a^T) / 2, so this upper-triangular a, whose own solution is
  # [0.125, 0.5], gave [0.364, 0.364] without a word.
  a = np.array([[2.0, 1.5], [0.0, 2.0]])
  with pytest.raises(ValueError, match=r'a must be symmetric: max \|a - a\^T\| = 1\.5'):
    linalg.psd_solve(a, np.ones(2))
  with pytest.raises(ValueError, match='a must be symmetric'):
    linalg.quad_form(a, np.ones(2), initial_jitter=1e-3)  # also with an explicit jitter
  # The tolerance is relative to the scale of a: float32 round-off of a Gram matrix of any
  # scale passes, an asymmetry of 1e-3 relative does not.
  for scale in (1e-8, 1.0, 1e8):
    spd = _spd(6, seed=7) * scale
    rounding = spd + np.triu(np.full((6, 6), 1e-6 * scale), 1)  # ~float32 eps relative
    expected = np.linalg.solve(rounding + 1e-4 * np.trace(rounding) / 6 * np.eye(6), np.ones(6))
    np.testing.assert_allclose(linalg.psd_solve(rounding, np.ones(6)).solution, expected,
                               rtol=RTOL)
    skewed = spd + np.triu(np.full((6, 6), 1e-3 * np.abs(spd).max()), 1)
    with pytest.raises(ValueError, match='a must be symmetric'):
      linalg.quad_form(skewed, np.ones(6))


def test_quad_form_errors_name_y_and_hyperparameters():
  with pytest.raises(ValueError, match='y must have shape'):
    linalg.quad_form(np.eye(3), np.ones(2))
  # Before: y [n, 0] gave 0.0, the value of a perfect fit.
  with pytest.raises(ValueError, match=r'y must have shape .* and k >= 1, got shape \(3, 0\)'):
    linalg.quad_form(np.eye(3), np.ones((3, 0)))
  with pytest.raises(ValueError, match='y contains NaN'):
    linalg.quad_form(np.eye(2), np.array([np.nan, 1.0]))
  with pytest.raises(ValueError, match='eps must be positive'):
    linalg.quad_form(np.eye(2), np.ones(2), eps=0.0)
  with pytest.raises(ValueError, match='max_tries'):
    linalg.quad_form(np.eye(2), np.ones(2), max_tries=0)
  with pytest.raises(ValueError, match='max_tries'):  # True was read as one try
    linalg.quad_form(np.eye(2), np.ones(2), max_tries=True)
  with pytest.raises(ValueError, match='initial_jitter'):
    linalg.quad_form(np.eye(2), np.ones(2), initial_jitter=-1.0)


def test_escalate_jitter_returns_the_first_success():
  tried = []

  def attempt(jitter):
    tried.append(jitter)
    return f'result at {len(tried)}', jitter > 0.05

  with pytest.warns(RuntimeWarning, match='retrying with jitter') as record:
    result, jitter = linalg.escalate_jitter(attempt, 1e-3, max_tries=5, name='theta')
  assert result == 'result at 3'
  assert tried == [1e-3, 1e-3 * 10.0, 1e-3 * 100.0]
  assert jitter == 1e-3 * 100.0
  assert len(record) == 2 and 'theta +' in str(record[0].message)


def test_escalate_jitter_refuses_a_zero_initial_jitter():
  # A zero first jitter was accepted, and 0 * 10^t stays 0 at every escalation.
  with pytest.raises(ValueError, match='initial_jitter must be positive'):
    linalg.escalate_jitter(lambda lam: (None, True), 0.0)


def test_escalate_jitter_warns_no_retry_after_the_last_try():
  # The last failed try also warned "retrying with jitter ...", a retry that never came.
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter('always')
    with pytest.raises(ValueError, match='for any of 2 jitters'):
      linalg.escalate_jitter(lambda lam: (None, False), 1e-3, max_tries=2)
  assert len(record) == 1


def test_psd_solve_uses_the_given_initial_jitter():
  # An explicit initial_jitter was ignored for eps * trace / n.
  result = linalg.psd_solve(np.eye(2), np.ones(2), initial_jitter=1.0)
  assert result.jitter == 1.0
  np.testing.assert_allclose(result.solution, [0.5, 0.5], rtol=1e-6)


def test_checked_float_array_converts_and_validates():
  converted = linalg.checked_float_array(np.arange(3), 'x')
  assert isinstance(converted, jax.Array) and converted.dtype == jnp.result_type(float)
  assert linalg.checked_float_array(np.ones(2, np.float64), 'x').dtype == jnp.result_type(float)
  assert linalg.checked_float_array(np.zeros((0, 3)), 'x').shape == (0, 3)
  with pytest.raises(ValueError, match='x contains NaN'):
    linalg.checked_float_array(jnp.array([1.0, jnp.nan]), 'x')  # a device array
  with pytest.raises(ValueError, match='x contains NaN'):
    linalg.checked_float_array([1.0, -np.inf], 'x')
  with pytest.raises(ValueError, match='x must be 1-D or 2-D'):
    linalg.checked_float_array(np.ones((1, 1, 1)), 'x', ndims=(1, 2))
  with pytest.raises(ValueError, match='x must be real-valued'):
    linalg.checked_float_array(np.array(['a']), 'x')


def test_checked_float_array_converts_bools():
  # Bool arrays were refused as not real-valued, though the docstring converts them.
  got = linalg.checked_float_array(np.array([True, False]), 'x')
  np.testing.assert_array_equal(got, [1.0, 0.0])


def test_round_off_asymmetry_inside_sqrt_eps_is_accepted():
  # A tolerance of 100 eps (1.2e-5) refused an asymmetry of 1e-4 relative, < sqrt(eps).
  a = np.array([[2.0, 1.0 + 2e-4], [1.0, 2.0]], np.float32)
  linalg.check_symmetric(jax.device_put(a), 'a')


@pytest.mark.parametrize('as_numpy', [False, True])
@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_are_solved_in_float32(dtype, as_numpy):
  # Before: NotImplementedError ('Unsupported dtype bfloat16') from the Cholesky; and in
  # bfloat16 (eps 7.8e-3) the default jitter 1e-4 * trace / n would round away. As NumPy
  # arrays (np.asarray of a bfloat16 model's outputs), bfloat16 (NumPy kind 'V') was
  # refused as 'must be real-valued'.
  a_half = jnp.asarray(_spd(6, seed=8), dtype)
  b_half = jnp.asarray(np.random.default_rng(9).normal(size=(6, 2)), dtype)
  if as_numpy:
    a_half, b_half = np.asarray(a_half), np.asarray(b_half)
    assert a_half.dtype == dtype
  a64, b64 = np.asarray(a_half, np.float64), np.asarray(b_half, np.float64)
  lam = 1e-4 * np.trace(a64) / 6
  expected = np.linalg.solve(a64 + lam * np.eye(6), b64)
  result = linalg.psd_solve(a_half, b_half)
  assert result.solution.dtype == jnp.float32
  np.testing.assert_allclose(result.jitter, lam, rtol=1e-6)
  np.testing.assert_allclose(result.solution, expected, rtol=RTOL, atol=1e-6)
  quad = linalg.quad_form(a_half, b_half)
  assert quad.value.dtype == jnp.float32
  np.testing.assert_allclose(quad.value, np.sum(b64 * expected), rtol=RTOL)
