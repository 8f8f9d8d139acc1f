"""Positive semi-definite solves with a relative jitter, and a square root safe at zero.

The NTK term of the bound (METHOD.md section 2.3) needs `y^T (Theta0 + lam I)^-1 y` for a
Gram matrix `Theta0` that is only positive *semi*-definite (rank-deficient whenever the
number of examples exceeds the number of parameters, and slightly indefinite after float32
round-off). Everything here solves through a Cholesky factor, never `inv`:

- `lam` starts at `eps * trace(a) / n` (relative to the mean eigenvalue, so the same `eps`
  suits any scale of `a`) and is raised x10, with a `warnings.warn` naming the new value,
  until the Cholesky factor is finite. The jitter actually used is returned as a Python
  float so callers can record it.
- `a` must be symmetric up to round-off (`check_symmetric`): a Cholesky factorisation reads
  one triangle (JAX's symmetrizes its input first), so a non-symmetric `a` would silently
  be solved as `(a + a^T) / 2`.
- Half-precision inputs (bfloat16 / float16 Gram matrices of a bfloat16 model) are solved
  in float32: below it the default relative jitter is under the rounding of the diagonal.
- Positive-definiteness is tested the jit-friendly way: JAX's Cholesky returns NaNs for a
  matrix that is not positive definite, so one jitted program factors and reports
  `all(isfinite(L))`. The loop over jitter values is plain Python outside jit; every try
  reuses the same compiled program (the jitter is a traced scalar).

Shape legend: `n` rows of the square matrix, `k` right-hand sides.
"""

import warnings
from typing import Callable, NamedTuple, Optional, Tuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks

ArrayLike = jax.typing.ArrayLike
_Result = TypeVar('_Result')


class SolveResult(NamedTuple):
  """Solution of `(a + jitter I) x = b`.

  Attributes:
    solution: `[n]` or `[n, k]`, the shape of `b`.
    jitter: the absolute `lam` added to the diagonal (Python float).
  """
  solution: jax.Array
  jitter: float


class QuadForm(NamedTuple):
  """Quadratic form `y^T (a + jitter I)^-1 y`.

  Attributes:
    value: `[]`, non-negative.
    jitter: the absolute `lam` added to the diagonal (Python float).
  """
  value: jax.Array
  jitter: float


def safe_sqrt(x: ArrayLike) -> jax.Array:
  """`sqrt(max(x, 0))` whose gradient is 0 (not inf or NaN) where `x <= 0`.

  Works under `jit`, `grad` and `vmap`. The inner `where` keeps the untaken `sqrt` branch
  away from 0, so its (discarded) derivative is finite and `0 * inf` never appears in the
  backward pass.

  NaN stays NaN, as in `max(x, 0)`: a NaN estimate (an MMD^2 of NaN features) must not
  read as 0, the value of a perfect match.

  Args:
    x: any shape; integers are promoted to the default float dtype.

  Returns:
    Array of the shape of `x`.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  # `x <= 0`, not `~(x > 0)`: NaN fails both tests, so it takes the sqrt branch and stays NaN.
  non_positive = x <= 0
  safe_x = jnp.where(non_positive, jnp.ones_like(x), x)
  return jnp.where(non_positive, jnp.zeros_like(x), jnp.sqrt(safe_x))


def escalate_jitter(
    attempt: Callable[[float], Tuple[_Result, jax.Array]],
    initial_jitter: float,
    *,
    max_tries: int = 10,
    name: str = 'a',
) -> Tuple[_Result, float]:
  """Calls `attempt(jitter)` with jitter `initial * 10^t`, t = 0, 1, ..., until it succeeds.

  The shared escalation rule of `psd_solve`, `quad_form` and the block-diagonal NTK term
  (`dv_jax.bound`): each raise is announced with `warnings.warn` naming the new jitter.

  Args:
    attempt: `jitter -> (result, ok)`, `ok` a boolean scalar (a Python bool or a `[]`
      array, e.g. `all(isfinite(cholesky_factor))`).
    initial_jitter: the first jitter, > 0.
    max_tries: how many jitter values to try, >= 1.
    name: the argument named in warnings and in the error.

  Returns:
    `(result, jitter)`: the first successful result and the jitter (Python float) it used.

  Raises:
    ValueError: if `max_tries < 1`, `initial_jitter` is not a positive finite number, or
      no jitter succeeds.
  """
  max_tries = checks.check_int(max_tries, 'max_tries')
  initial_jitter = float(initial_jitter)
  if not np.isfinite(initial_jitter) or initial_jitter <= 0:
    raise ValueError(f'initial_jitter must be positive and finite, got {initial_jitter}')
  for t in range(max_tries):
    # 10.0 ** t rather than repeated *= 10 so the recorded value is exactly initial * 10^t.
    jitter = initial_jitter * 10.0 ** t
    result, ok = attempt(jitter)
    if bool(ok):
      return result, jitter
    if t + 1 < max_tries:
      warnings.warn(
          f'{name} + {jitter:.3g} I is not positive definite (Cholesky factor not finite); '
          f'retrying with jitter {initial_jitter * 10.0 ** (t + 1):.3g}',
          RuntimeWarning, stacklevel=3)
  raise ValueError(
      f'{name} + lam I is not positive definite for any of {max_tries} jitters '
      f'{initial_jitter:.3g} * 10^t, t < {max_tries}; is {name} symmetric PSD?')


@jax.jit
def _jittered_cholesky(a_NxN: jax.Array, jitter: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Lower Cholesky factor of `a + jitter I` and whether it is finite (i.e. a was PD)."""
  n = a_NxN.shape[0]
  chol_NxN = jnp.linalg.cholesky(a_NxN + jitter * jnp.eye(n, dtype=a_NxN.dtype))
  return chol_NxN, jnp.all(jnp.isfinite(chol_NxN))


@jax.jit
def _cho_solve(chol_NxN: jax.Array, b: jax.Array) -> jax.Array:
  return jax.scipy.linalg.cho_solve((chol_NxN, True), b)


@jax.jit
def _jittered_quad(a_NxN: jax.Array, y: jax.Array, jitter: jax.Array
                   ) -> Tuple[jax.Array, jax.Array]:
  """`||L^-1 y||^2` with `L L^T = a + jitter I` (a sum of squares, so never negative)."""
  chol_NxN, ok = _jittered_cholesky(a_NxN, jitter)
  z = jax.scipy.linalg.solve_triangular(chol_NxN, y, lower=True)
  return jnp.sum(z * z), ok


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(x))


def compute_dtype(*arrays_or_dtypes) -> jnp.dtype:
  """The dtype to compute in: the inputs' promoted type, but at least float32.

  The library's one rule for half precision (a bfloat16 or float16 model's outputs): keep
  the inputs' dtype from float32 up, and compute bfloat16 / float16 inputs in float32.
  Their ~3 significant digits are too few for the sums, Gram matrices and solves that
  follow (XLA's CPU Cholesky has no half-precision kernel at all); each caller says what
  it would lose.
  """
  return jnp.promote_types(jnp.result_type(*arrays_or_dtypes), jnp.float32)


def checked_float_array(x: ArrayLike, name: str, *,
                        ndims: Optional[Tuple[int, ...]] = None) -> jax.Array:
  """Boundary validation shared by the numeric modules: a finite, real, float JAX array.

  NumPy inputs are checked and converted on the host (no device compile per shape);
  JAX arrays are checked by one jitted `all(isfinite)` (one small compile per shape).
  Integers and bools become the default float dtype; float64 becomes float32 unless x64
  is enabled. Empty arrays pass (they have no non-finite entry).

  Args:
    x: array-like.
    name: the argument named in errors.
    ndims: allowed numbers of dimensions; `None` allows any.

  Returns:
    The array as a floating `jax.Array`.

  Raises:
    ValueError: not an array of reals, wrong number of dimensions, NaN or Inf.
  """
  if not isinstance(x, jax.Array):
    try:
      x = np.asarray(x)
    except (TypeError, ValueError) as e:
      raise ValueError(f'{name} must be an array of reals: {e}') from e
  # bfloat16 has NumPy kind 'V' (an ml_dtypes type), for a NumPy array (np.asarray of a
  # bfloat16 model's outputs) as for a JAX one.
  kind = 'f' if jnp.issubdtype(x.dtype, jnp.floating) else np.dtype(x.dtype).kind
  if kind not in 'fiub':
    raise ValueError(f'{name} must be real-valued, got dtype {x.dtype}')
  if ndims is not None and x.ndim not in ndims:
    expected = ' or '.join(f'{d}-D' for d in ndims)
    raise ValueError(f'{name} must be {expected}, got shape {x.shape}')
  if kind != 'f':
    x = x.astype(jax.dtypes.canonicalize_dtype(np.float64))
  if isinstance(x, jax.Array):
    finite = x.size == 0 or bool(_all_finite(x))
  else:
    x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)
    finite = bool(np.all(np.isfinite(x)))
    x = jax.device_put(x)  # jnp.asarray would compile a staging program per shape
  if not finite:
    raise ValueError(f'{name} contains NaN or Inf')
  return x


@jax.jit
def _asymmetry(a_NxN: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """`(max |a - a^T|, max |a|)`."""
  return jnp.max(jnp.abs(a_NxN - a_NxN.T)), jnp.max(jnp.abs(a_NxN))


def check_symmetric(a: jax.Array, name: str) -> None:
  """Raises unless the finite square `a` is symmetric up to round-off.

  The test is `max |a - a^T| <= sqrt(eps) * max |a|`, `eps` the machine epsilon of `a`'s
  dtype (`sqrt(eps)` = 3.5e-4 in float32). A Gram matrix assembled in float32 by different
  code paths (blocks, vjp / jvp products) is off its transpose by ~1e-7 relative, far
  inside the bound; a matrix that is not a kernel (a cross-kernel `K(x1, x2)`, a
  triangular factor) is far outside it. Cost: one `O(n^2)` jitted reduction, against the
  `O(n^3)` Cholesky it guards.

  Args:
    a: `[n, n]` finite floating array (e.g. from `checked_float_array`).
    name: the argument named in the error.

  Raises:
    ValueError: `a` is not symmetric within the tolerance.
  """
  asymmetry, scale = (float(v) for v in _asymmetry(a))
  rtol = float(np.sqrt(jnp.finfo(a.dtype).eps))
  if asymmetry > rtol * scale:
    raise ValueError(
        f'{name} must be symmetric: max |{name} - {name}^T| = {asymmetry:.3g} exceeds '
        f'{rtol:.2g} * max |{name}| = {rtol * scale:.3g} (a Cholesky solve would silently '
        f'use ({name} + {name}^T) / 2); symmetrize it first if the asymmetry is round-off')


def _check_system(a: ArrayLike, b: ArrayLike, a_name: str, b_name: str
                  ) -> Tuple[jax.Array, jax.Array]:
  """Validates a square, symmetric, finite `a` and a finite `b` with `b.shape[0] == n`."""
  a = checked_float_array(a, a_name)
  b = checked_float_array(b, b_name)
  if a.ndim != 2 or a.shape[0] != a.shape[1]:
    raise ValueError(f'{a_name} must be a square matrix [n, n], got shape {a.shape}')
  if a.shape[0] == 0:
    raise ValueError(f'{a_name} must not be empty, got shape {a.shape}')
  check_symmetric(a, a_name)
  # k >= 1: a [n, 0] right-hand side made quad_form 0, which reads as a perfect fit.
  if b.ndim not in (1, 2) or b.shape[0] != a.shape[0] or b.size == 0:
    raise ValueError(
        f'{b_name} must have shape [n] or [n, k] with n = {a.shape[0]} (the size of '
        f'{a_name}) and k >= 1, got shape {b.shape}')
  # At least float32: XLA's CPU Cholesky has no half-precision kernel (it raises), and a
  # relative jitter of 1e-4 would round away in bfloat16 (eps 7.8e-3) anyway.
  dtype = compute_dtype(a.dtype, b.dtype)
  return a.astype(dtype), b.astype(dtype)


def _initial_jitter(a_NxN: jax.Array, eps: float, name: str) -> float:
  """`eps * trace(a) / n`; `eps` itself when the trace is 0 (an all-zero Gram matrix)."""
  eps = float(eps)
  if not np.isfinite(eps) or eps <= 0:
    raise ValueError(f'eps must be positive and finite, got {eps}')
  mean_diag = float(jnp.trace(a_NxN)) / a_NxN.shape[0]
  if mean_diag < 0:
    raise ValueError(f'{name} has a negative trace ({mean_diag * a_NxN.shape[0]:.3g}), so it '
                     'is not positive semi-definite')
  return eps * mean_diag if mean_diag > 0 else eps


def psd_solve(a: ArrayLike, b: ArrayLike, *, eps: float = 1e-4, max_tries: int = 10,
              initial_jitter: Optional[float] = None) -> SolveResult:
  """Solves `(a + lam I) x = b` for a symmetric PSD `a` by Cholesky.

  `lam = eps * trace(a) / n`, raised x10 (with a warning) until `a + lam I` factors.

  Args:
    a: `[n, n]`, symmetric positive semi-definite.
    b: `[n]` or `[n, k]`.
    eps: relative jitter, > 0.
    max_tries: number of jitter values tried before giving up.
    initial_jitter: absolute starting jitter overriding `eps * trace(a) / n`.

  Returns:
    `SolveResult(solution [n] or [n, k], jitter)`.

  Raises:
    ValueError: bad shapes, NaN/Inf, `a` not symmetric (`check_symmetric`), negative
      trace, or never positive definite.
  """
  a, b = _check_system(a, b, 'a', 'b')
  if initial_jitter is None:
    initial_jitter = _initial_jitter(a, eps, 'a')
  chol, jitter = escalate_jitter(lambda lam: _jittered_cholesky(a, lam), initial_jitter,
                                 max_tries=max_tries, name='a')
  return SolveResult(_cho_solve(chol, b), jitter)


def quad_form(a: ArrayLike, y: ArrayLike, *, eps: float = 1e-4, max_tries: int = 10,
              initial_jitter: Optional[float] = None) -> QuadForm:
  """`y^T (a + lam I)^-1 y` for a symmetric PSD `a`, the NTK term's quadratic form.

  Computed as `||L^-1 y||^2` with `L L^T = a + lam I`, so the value is never negative.
  For `y` of shape `[n, k]` the value is `trace(y^T (a + lam I)^-1 y)`, the sum of the k
  column forms (a multi-output residual with a trace-averaged kernel).

  Args:
    a: `[n, n]`, symmetric positive semi-definite.
    y: `[n]` or `[n, k]`.
    eps: relative jitter, > 0; `lam` starts at `eps * trace(a) / n`.
    max_tries: number of jitter values tried before giving up.
    initial_jitter: absolute starting jitter overriding `eps * trace(a) / n`.

  Returns:
    `QuadForm(value [], jitter)`.

  Raises:
    ValueError: bad shapes, NaN/Inf, `a` not symmetric (`check_symmetric`), negative
      trace, or never positive definite.
  """
  a, y = _check_system(a, y, 'a', 'y')
  if initial_jitter is None:
    initial_jitter = _initial_jitter(a, eps, 'a')
  value, jitter = escalate_jitter(lambda lam: _jittered_quad(a, y, lam), initial_jitter,
                                  max_tries=max_tries, name='a')
  return QuadForm(value, jitter)
