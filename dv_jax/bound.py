"""The four terms of the real-synthetic generalization bound (METHOD.md section 2, Eq. 8).

For one subset `S = S1 ∪ S2` (`S1` real, `S2` synthetic, `n = |S|`, `pi = |S1| / n`),
everything evaluated at the initial parameters `theta0` (nothing is trained):

1. empirical loss  `E(S) = pi L(S1) + (1 - pi) L(S2)`, `L` the mean per-example loss;
2. discrepancy     `D(S) = pi MMD(T, S1) + (1 - pi) MMD(T, S2)` (see `dv_jax.mmd`);
3. NTK term        `N(S) = sqrt(yhat^T (Theta0 + lam I)^-1 yhat / n)` (per-example, the
   default) or `sqrt(yhat^T (Theta0 + lam I)^-1 yhat) / n` (the paper's form), with
   `Theta0 = G G^T`, `G` the per-example gradients of `g` at `theta0`;
4. composition     `C(S) = sqrt(max(pi, 1 - pi)) / n`.

An empty part (`S1` or `S2`) has weight 0 and never produces NaN.

The NTK term has three methods:
- `full`: one Cholesky solve of the `[n, n]` kernel.
- `block_diagonal`: rows are permuted with a seeded permutation and cut into blocks of
  `B`; the quadratic forms of the diagonal blocks (each with its own relative jitter
  `eps * trace(Theta_b) / n_b`) are summed, then averaged over `num_permutations`
  permutations. Cross-block entries are ignored, so memory is O(B^2) and the full kernel
  is never formed. The last block is padded to `B` rows with zero gradients, a zero
  residual and 1 on the padded diagonal: the padded kernel is then block diagonal
  `[[Theta_b + lam I, 0], [0, (1 + lam) I]]` and the zero residual makes the padding's
  contribution exactly 0, so one compiled per-block program (shape `[B, p]`) serves every
  `n`.
- `subsample`: a uniform subsample (without replacement) of `num_sub` rows, solved in
  full. Its quadratic form estimates the full one as `Q_hat = Q_sub * n / n_sub`, so the
  per-example form is `sqrt(Q_sub / n_sub)` (METHOD.md) and the paper form is
  `sqrt(Q_hat) / n` (a value on the scale of the full-data paper term, not of a set of
  size `n_sub`).
The residual may be `[n]` or `[n, c]`; for `[n, c]` the quadratic form is summed over the
`c` columns (the one-hot residual with a trace-averaged kernel).

These functions validate their inputs in Python and are called outside `jit`.

Shape legend: `n` examples of the subset (`n1` real, `n2` synthetic), `p` parameters (or
projected dimensions), `c` residual columns, `B` block size.
"""

import functools
import math
from typing import Any, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks
from dv_jax import linalg
from dv_jax import mmd as mmd_lib

ArrayLike = jax.typing.ArrayLike

NTK_METHODS = ('full', 'block_diagonal', 'subsample')
NORMALIZATIONS = ('per_example', 'paper')
_PRECISION = jax.lax.Precision.HIGHEST


class NTKTerm(NamedTuple):
  """The NTK term.

  Attributes:
    value: `[]`, the term `N(S)`.
    jitter: the absolute jitter `lam` used (Python float); for `block_diagonal`, the
      largest over blocks and permutations.
  """
  value: jax.Array
  jitter: float


class BoundTerms(NamedTuple):
  """The four terms of the bound for one subset (all `[]` arrays).

  Attributes:
    empirical_loss: `E(S)`.
    discrepancy: `D(S)`.
    ntk: `N(S)` (the value of `ntk_term`; call `ntk_term` for the jitter).
    composition: `C(S)`.
  """
  empirical_loss: jax.Array
  discrepancy: jax.Array
  ntk: jax.Array
  composition: jax.Array


# ---------------------------------------------------------------------------------------
# Validation (outside jit).


def _as_float(x: ArrayLike, name: str, ndims: Tuple[int, ...]) -> jax.Array:
  return linalg.checked_float_array(x, name, ndims=ndims)


def _check_pi(pi: ArrayLike) -> float:
  # checks.unit_fraction, not float(): '0.5' and True are not a real share.
  number = checks.unit_fraction(pi)
  if number is None:
    raise ValueError(f'pi must be a number in [0, 1], got {pi!r}')
  return number


def _check_normalization(normalization: str) -> str:
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'normalization must be one of {NORMALIZATIONS}, got {normalization!r}')
  return normalization


def _check_residual(residual: ArrayLike, n: int) -> jax.Array:
  residual = _as_float(residual, 'residual', (1, 2))
  if residual.shape[0] != n:
    raise ValueError(f'residual must have {n} rows (one per example of grads), got shape '
                     f'{residual.shape}')
  if residual.size == 0:  # [n, 0]: the quadratic form would be 0, a perfect-fit score
    raise ValueError(f'residual has no columns (shape {residual.shape})')
  return residual


# ---------------------------------------------------------------------------------------
# Terms 1, 2 and 4.


def empirical_loss_term(loss_real: ArrayLike, loss_synthetic: ArrayLike) -> jax.Array:
  """`E(S) = pi L(S1) + (1 - pi) L(S2)`, `pi = n1 / (n1 + n2)`; an empty part weighs 0.

  Args:
    loss_real: `[n1]` per-example losses of the real part (may be empty).
    loss_synthetic: `[n2]` per-example losses of the synthetic part (may be empty).

  Returns:
    `[]`.

  Raises:
    ValueError: not 1-D, NaN/Inf, a negative loss, or both parts empty.
  """
  loss_real = _as_float(loss_real, 'loss_real', (1,))
  loss_synthetic = _as_float(loss_synthetic, 'loss_synthetic', (1,))
  for losses, name in ((loss_real, 'loss_real'), (loss_synthetic, 'loss_synthetic')):
    # The bound is of a non-negative loss; a negative entry is most likely a
    # log-likelihood passed for a loss, which would flip the term's sign unnoticed.
    # Rounding of a float32 loss near 0 stays inside the tolerance.
    if not losses.size:
      continue
    lowest = float(jnp.min(losses))
    if lowest < -1e-6 * max(1.0, float(jnp.max(jnp.abs(losses)))):
      raise ValueError(f'{name} must hold per-example losses >= 0, got a minimum of {lowest}')
  n1, n2 = loss_real.shape[0], loss_synthetic.shape[0]
  if n1 + n2 == 0:
    raise ValueError('loss_real and loss_synthetic are both empty')
  pi = n1 / (n1 + n2)
  # At least float32: a bfloat16 result keeps ~3 significant digits, too few to tell
  # contributors apart when the term is z-scored across them.
  dtype = linalg.compute_dtype(loss_real.dtype, loss_synthetic.dtype)
  loss_real, loss_synthetic = loss_real.astype(dtype), loss_synthetic.astype(dtype)
  # Python-level branches: `0 * mean([])` would be 0 * NaN = NaN.
  total = jnp.zeros((), dtype)
  if n1:
    total = total + pi * jnp.mean(loss_real)
  if n2:
    total = total + (1 - pi) * jnp.mean(loss_synthetic)
  return total


def _mmd_value(value, name: str) -> jax.Array:
  if isinstance(value, mmd_lib.MMD):
    value = value.value
  value = _as_float(value, name, (0,))
  if float(value) < 0:
    raise ValueError(f'{name} must be >= 0 (an MMD, not MMD^2), got {float(value)}')
  return value


def discrepancy_term(mmd_real: Optional[Union[ArrayLike, mmd_lib.MMD]],
                     mmd_synthetic: Optional[Union[ArrayLike, mmd_lib.MMD]], *,
                     pi: ArrayLike) -> jax.Array:
  """`D(S) = pi MMD(T, S1) + (1 - pi) MMD(T, S2)`.

  Args:
    mmd_real: `[]` `MMD(T, S1)` (or an `mmd.MMD`); ignored, and may be None, when pi = 0.
    mmd_synthetic: `[]` `MMD(T, S2)` (or an `mmd.MMD`); ignored, may be None, when pi = 1.
    pi: fraction of real examples, in [0, 1].

  Returns:
    `[]`.

  Raises:
    ValueError: pi outside [0, 1]; a needed MMD missing, negative, non-scalar or NaN/Inf.
  """
  pi = _check_pi(pi)
  total = jnp.zeros(())
  if pi > 0:
    if mmd_real is None:
      raise ValueError(f'mmd_real is None but pi = {pi} > 0')
    total = total + pi * _mmd_value(mmd_real, 'mmd_real')
  if pi < 1:
    if mmd_synthetic is None:
      raise ValueError(f'mmd_synthetic is None but pi = {pi} < 1')
    total = total + (1 - pi) * _mmd_value(mmd_synthetic, 'mmd_synthetic')
  return total


def composition_term(n: int, pi: ArrayLike) -> float:
  """`C(S) = sqrt(max(pi, 1 - pi)) / n`.

  Args:
    n: subset size `|S|`, >= 1.
    pi: fraction of real examples, in [0, 1].

  Returns:
    The term (Python float).

  Raises:
    ValueError: `n` not a positive integer, pi outside [0, 1].
  """
  n = checks.check_int(n, 'n')
  pi = _check_pi(pi)
  return math.sqrt(max(pi, 1.0 - pi)) / n


# ---------------------------------------------------------------------------------------
# Term 3: the NTK term.


@jax.jit
def _gram(grads_NxP: jax.Array) -> jax.Array:
  return jnp.dot(grads_NxP, grads_NxP.T, precision=_PRECISION)


@jax.jit
def _padded_block_gram(grads_BxP: jax.Array, residual_BxC: jax.Array, num_valid: jax.Array
                       ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Kernel of one block whose rows `>= num_valid` are padding.

  Padding rows get zero gradients (so zero kernel rows/columns), 1 on the diagonal and a
  zero residual: the padded kernel is `diag(Theta_b, I)` and adds 0 to the quadratic form.

  Returns:
    `(theta [B, B], residual [B, c], trace of the valid part [])`.
  """
  valid_B = jnp.arange(grads_BxP.shape[0]) < num_valid
  grads_BxP = jnp.where(valid_B[:, None], grads_BxP, 0)
  residual_BxC = jnp.where(valid_B[:, None], residual_BxC, 0)
  theta_BxB = jnp.dot(grads_BxP, grads_BxP.T, precision=_PRECISION)
  trace = jnp.trace(theta_BxB)
  theta_BxB = theta_BxB + jnp.diag(jnp.where(valid_B, 0, 1).astype(theta_BxB.dtype))
  return theta_BxB, residual_BxC, trace


def bucket_size(n: int) -> int:
  """The padded size of `n` rows: the next power of two `>= n`, at least 8 (one compiled
  program per bucket instead of one per `n`)."""
  return max(8, 1 << (int(n) - 1).bit_length())


def _shuffle_rounds(n: int) -> int:
  """The sort rounds `jax.random.permutation` spends on `n` items (its static heuristic)."""
  return int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))


@functools.partial(jax.jit, static_argnames=('num_rounds',))
def _padded_shuffle(key: jax.Array, items_N: jax.Array, n: jax.Array, *,
                    num_rounds: int) -> jax.Array:
  """`jax.random.permutation`'s sort rounds on a bucket of `N >= n` items, entries `>= n`
  held at the end: the leading `n` outputs are `jax.random.permutation(key, n)`.

  With threefry's partitionable bits (`jax_threefry_partitionable`, the default), the
  sort keys of the first `n` slots are those of an `n`-item draw; the padded slots get the
  largest key and the stable sort keeps them after every real item (after a real key that
  ties with them too), round after round.
  """
  pad_N = jnp.arange(items_N.shape[0]) >= n
  for _ in range(num_rounds):
    key, subkey = jax.random.split(key)
    sort_keys = jax.random.bits(subkey, items_N.shape, jnp.uint32)
    sort_keys = jnp.where(pad_N, jnp.uint32(np.iinfo(np.uint32).max), sort_keys)
    _, items_N = jax.lax.sort_key_val(sort_keys, items_N, 0, is_stable=True)
  return items_N


def _bucketable(key: jax.Array) -> bool:
  """Whether `_padded_shuffle` reproduces `jax.random.permutation` for `key`."""
  if not jax.config.jax_threefry_partitionable:
    return False
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return str(jax.random.key_impl(key)) == 'threefry2x32'
  return key.shape == (2,) and jax.config.jax_default_prng_impl == 'threefry2x32'


def permutation(key: jax.Array, n: int) -> np.ndarray:
  """`np.asarray(jax.random.permutation(key, n))`, the same integers, compiled once per
  power-of-two bucket of `n` instead of once per `n`.

  `jax.random.permutation(key, n)` compiles its threefry draw and sort for every `n`
  (about a second each on 2 CPU cores: most of the digits table's block-diagonal NTK rows,
  whose contributors all differ in size). Under another PRNG implementation, or with
  `jax_threefry_partitionable` off, it is called as is.
  """
  n = checks.check_int(n, 'n', minimum=0)
  if n == 0 or not _bucketable(key):
    return np.asarray(jax.random.permutation(key, n))
  size = bucket_size(n)
  # The dtype of jnp.arange(n) (int64 under x64): indices either way.
  items = np.arange(size, dtype=jax.dtypes.canonicalize_dtype(np.int64))
  return np.asarray(_padded_shuffle(key, items, np.int32(n),
                                    num_rounds=_shuffle_rounds(n)))[:n]


@functools.partial(jax.jit, static_argnames=('dtype',))
def _take_rows(grads_NxP: jax.Array, rows_B: jax.Array, *, dtype: Any) -> jax.Array:
  """Rows `rows_B` of `grads_NxP` in `dtype`: one program per `(N, p, B)`."""
  return grads_NxP[rows_B].astype(dtype)


@jax.jit
def _rows_of(grads_NxP: jax.Array, residual: jax.Array, rows: jax.Array
             ) -> Tuple[jax.Array, jax.Array]:
  return grads_NxP[rows], residual[rows]


def _subsample_rows(key: jax.Array, grads_NxP: jax.Array, residual: jax.Array, *,
                    num_sub: int) -> Tuple[jax.Array, jax.Array]:
  """A uniform subsample without replacement: `num_sub` rows of a random permutation
  (`permutation`: compiled per bucket of `n`; the gather per `n`)."""
  rows = permutation(key, grads_NxP.shape[0])[:num_sub]
  return _rows_of(grads_NxP, residual, rows)


def _normalize(quad: jax.Array, n: int, normalization: str) -> jax.Array:
  if normalization == 'per_example':
    return linalg.safe_sqrt(quad / n)
  return linalg.safe_sqrt(quad) / n


def _block_diagonal_quad(grads_NxP: jax.Array, residual: ArrayLike, rows: np.ndarray, *,
                         block_size: int, num_permutations: int, key: jax.Array, eps: float,
                         dtype: Any) -> Tuple[jax.Array, float]:
  """Sum of diagonal-block quadratic forms of the examples `rows` of `grads_NxP`, averaged
  over seeded permutations.

  `rows` are `n` host indices into `grads_NxP` and `residual` (`[N]` or `[N, c]`).
  Permutation `r` orders the examples as `rows[permutation(perm_keys[r], n)]`, and each
  block's rows are gathered from `grads_NxP` by a `[B]` program: nothing compiles per `n`
  beyond what `grads_NxP`'s own shape asks, so a caller that keeps one `[N, p]` matrix (a
  valuation pool's factor) compiles nothing per coalition.

  Raises:
    ValueError: `grads contains NaN or Inf` (a block's trace is not finite).
  """
  n = rows.size
  num_blocks = -(-n // block_size)
  residual_NxC = np.asarray(residual)
  residual_NxC = residual_NxC.reshape(residual_NxC.shape[0], -1)
  perm_keys = jax.random.split(key, num_permutations)
  quads, max_jitter = [], 0.0
  for r in range(num_permutations):
    order = permutation(perm_keys[r], n)
    # The ragged last block is filled with copies of the first example, which
    # `_padded_block_gram` masks out.
    order = np.concatenate([order, np.zeros((num_blocks * block_size - n,), order.dtype)])
    picked = rows[order]
    total = jnp.zeros((), dtype)
    for b in range(num_blocks):
      num_valid = min(block_size, n - b * block_size)
      block_rows = picked[b * block_size:(b + 1) * block_size]
      theta_BxB, residual_BxC, trace = _padded_block_gram(
          _take_rows(grads_NxP, block_rows, dtype=dtype),
          residual_NxC[block_rows].astype(dtype), num_valid)
      trace = float(trace)
      if not np.isfinite(trace):  # a sum of squared gradients: not finite iff one is not
        raise ValueError('grads contains NaN or Inf')
      # Each block's own relative jitter: eps * trace / n_b over its valid rows.
      initial = eps * trace / num_valid
      quad, jitter = linalg.quad_form(theta_BxB, residual_BxC,
                                      initial_jitter=initial if initial > 0 else eps)
      total = total + quad
      max_jitter = max(max_jitter, jitter)
    quads.append(total)
  return jnp.mean(jnp.stack(quads)), max_jitter


def _check_block_diagonal(block_size: int, num_permutations: int, eps: float, n: int
                          ) -> Tuple[int, int, float]:
  """`(block_size, num_permutations, eps)` checked, the block capped at `n`."""
  # One block of all n rows is the whole kernel: a larger block only pads it with zero
  # rows, and its [B, B] Gram was allocated whole (block_size=10**12 aborted the process).
  block_size = min(checks.check_int(block_size, 'block_size'), n)
  num_permutations = checks.check_int(num_permutations, 'num_permutations')
  eps = float(eps)
  if not np.isfinite(eps) or eps <= 0:
    raise ValueError(f'eps must be positive and finite, got {eps}')
  return block_size, num_permutations, eps


def block_diagonal_ntk_term_of_rows(grads: ArrayLike, residual: ArrayLike, rows: ArrayLike,
                                    *, block_size: int, num_permutations: int,
                                    key: jax.Array, eps: float = 1e-4) -> NTKTerm:
  """`ntk_term(grads[rows], residual[rows], method='block_diagonal')` (per-example
  normalization), the same number, without forming `grads[rows]`.

  For many subsets of one `[N, p]` matrix (the coalitions of a valuation pool): a subset's
  rows are gathered block by block by `[B]` programs, so no program compiles per subset
  size (`ntk_term` on `grads[rows]` compiles its gather, its finiteness check and its
  per-`n` block gather for every `n`).

  Args:
    grads: `[N, p]` floating gradients (JAX or NumPy). Not checked whole: a block that
      holds NaN or Inf raises.
    residual: `[N]` or `[N, c]`, finite.
    rows: `[n]` distinct row indices, `n >= 1`, in the order the permutations act on.
    block_size, num_permutations, key, eps: as `ntk_term`.

  Returns:
    `NTKTerm(value [], jitter)`.

  Raises:
    ValueError: naming the argument, for bad shapes, `rows` not integers in `[0, N)`, a bad
      `block_size` / `num_permutations` / `eps` / `key`, NaN or Inf in a block's gradients
      or in `residual`, never positive definite.
  """
  shape = jnp.shape(grads)
  if len(shape) != 2 or 0 in shape:
    raise ValueError(f'grads must be [N, p] with N, p >= 1, got shape {shape}')
  if not jnp.issubdtype(jnp.result_type(grads), jnp.floating):
    raise ValueError(f'grads must be floating, got dtype {jnp.result_type(grads)}')
  rows = np.asarray(rows)
  if rows.ndim != 1 or rows.size == 0 or not np.issubdtype(rows.dtype, np.integer):
    raise ValueError(f'rows must be a non-empty 1-D array of integer indices, got shape '
                     f'{rows.shape} and dtype {rows.dtype}')
  if rows.min() < 0 or rows.max() >= shape[0]:
    raise ValueError(f'rows must lie in [0, {shape[0]}) (the rows of grads), got values in '
                     f'[{rows.min()}, {rows.max()}]')
  residual = np.asarray(residual)
  if residual.ndim not in (1, 2) or residual.shape[0] != shape[0] or residual.size == 0:
    raise ValueError(f'residual must be [N] or [N, c] with N = {shape[0]} (the rows of '
                     f'grads) and c >= 1, got shape {residual.shape}')
  # jnp's issubdtype: a bfloat16 model's residual (an ml_dtypes type) is floating too.
  if (not jnp.issubdtype(residual.dtype, jnp.floating)
      or not np.all(np.isfinite(residual.astype(np.float64)))):
    raise ValueError('residual must be floating and finite')
  key = checks.check_key(key)
  dtype = linalg.compute_dtype(jnp.result_type(grads), residual.dtype)
  block_size, num_permutations, eps = _check_block_diagonal(block_size, num_permutations, eps,
                                                            rows.size)
  quad, jitter = _block_diagonal_quad(grads, residual, rows, block_size=block_size,
                                      num_permutations=num_permutations, key=key, eps=eps,
                                      dtype=dtype)
  return NTKTerm(_normalize(quad, rows.size, 'per_example'), jitter)


def ntk_term_from_kernel(theta: ArrayLike, residual: ArrayLike, *, eps: float = 1e-4,
                         normalization: str = 'per_example') -> NTKTerm:
  """The NTK term from a precomputed kernel (the `full` method).

  `per_example`: `sqrt(yhat^T (Theta0 + lam I)^-1 yhat / n)`;
  `paper`: `sqrt(yhat^T (Theta0 + lam I)^-1 yhat) / n`.

  Args:
    theta: `[n, n]` empirical NTK `Theta0`, symmetric PSD.
    residual: `[n]` or `[n, c]`, `yhat`.
    eps: relative jitter, `lam = eps * trace(Theta0) / n` raised x10 until PD.
    normalization: `'per_example'` or `'paper'`.

  Returns:
    `NTKTerm(value [], jitter)`.

  Raises:
    ValueError: bad shapes, NaN/Inf, `theta` not symmetric, unknown normalization, never
      positive definite.
  """
  normalization = _check_normalization(normalization)
  theta = _as_float(theta, 'theta', (2,))
  if theta.shape[0] == 0 or theta.shape[0] != theta.shape[1]:
    raise ValueError(f'theta must be a non-empty square matrix [n, n], got {theta.shape}')
  # Checked here too (quad_form checks its `a`) so that the error names `theta`.
  linalg.check_symmetric(theta, 'theta')
  residual = _check_residual(residual, theta.shape[0])
  quad = linalg.quad_form(theta, residual, eps=eps)
  return NTKTerm(_normalize(quad.value, theta.shape[0], normalization), quad.jitter)


def ntk_term(grads: ArrayLike, residual: ArrayLike, *, method: str = 'full',
             block_size: int = 512, num_permutations: int = 1, num_sub: Optional[int] = None,
             key: Optional[jax.Array] = None, eps: float = 1e-4,
             normalization: str = 'per_example') -> NTKTerm:
  """The NTK term `N(S)` from per-example gradients at `theta0`.

  `Theta0 = G G^T` with `G = grads`; `per_example`: `sqrt(Q / n)`, `paper`: `sqrt(Q) / n`,
  `Q = yhat^T (Theta0 + lam I)^-1 yhat` (see the module docstring for the approximations).

  Args:
    grads: `[n, p]` per-example gradients of `g(x; theta0)` (possibly projected).
    residual: `[n]` or `[n, c]`, `yhat`.
    method: `'full'`, `'block_diagonal'` or `'subsample'`.
    block_size: `B` for `block_diagonal`.
    num_permutations: permutations averaged by `block_diagonal`.
    num_sub: subsample size for `subsample`, in [1, n].
    key: PRNG key, required by `block_diagonal` and `subsample`.
    eps: relative jitter.
    normalization: `'per_example'` or `'paper'`.

  Returns:
    `NTKTerm(value [], jitter)`.

  Raises:
    ValueError: naming the argument: unknown method or normalization, bad shapes,
      NaN/Inf, empty grads (no rows or no parameters), a residual of no columns, missing
      key or num_sub, a key that is not one PRNG key, num_sub outside [1, n],
      non-positive block_size or num_permutations, never positive definite.
  """
  if method not in NTK_METHODS:
    raise ValueError(f'method must be one of {NTK_METHODS}, got {method!r}')
  normalization = _check_normalization(normalization)
  grads = _as_float(grads, 'grads', (2,))
  n = grads.shape[0]
  if n == 0:
    raise ValueError(f'grads is empty (shape {grads.shape})')
  if grads.shape[1] == 0:
    raise ValueError(f'grads has no parameters (shape {grads.shape})')
  residual = _check_residual(residual, n)
  # At least float32 (bfloat16 gradients of a bfloat16 model): the Gram matrix feeds a
  # Cholesky solve, which has no half-precision implementation and no use for one.
  dtype = linalg.compute_dtype(grads.dtype, residual.dtype)
  grads, residual = grads.astype(dtype), residual.astype(dtype)
  if method != 'full':
    if key is None:
      raise ValueError(f'key is required for method={method!r}')
    key = checks.check_key(key)

  if method == 'full':
    return ntk_term_from_kernel(_gram(grads), residual, eps=eps, normalization=normalization)

  if method == 'subsample':
    if num_sub is None:
      raise ValueError("num_sub is required for method='subsample'")
    num_sub = checks.check_int(num_sub, 'num_sub')
    if num_sub > n:
      raise ValueError(f'num_sub must be <= n = {n}, got {num_sub}')
    grads_sub, residual_sub = _subsample_rows(key, grads, residual, num_sub=num_sub)
    quad = linalg.quad_form(_gram(grads_sub), residual_sub, eps=eps)
    # Q_sub estimates Q * n_sub / n; rescale to the full set before normalizing.
    return NTKTerm(_normalize(quad.value * (n / num_sub), n, normalization), quad.jitter)

  block_size, num_permutations, eps = _check_block_diagonal(block_size, num_permutations, eps,
                                                            n)
  quad, jitter = _block_diagonal_quad(grads, residual, np.arange(n), block_size=block_size,
                                      num_permutations=num_permutations, key=key, eps=eps,
                                      dtype=dtype)
  return NTKTerm(_normalize(quad, n, normalization), jitter)


# ---------------------------------------------------------------------------------------
# All four.


def bound_terms(loss_real: ArrayLike, loss_synthetic: ArrayLike,
                mmd_real: Optional[Union[ArrayLike, mmd_lib.MMD]],
                mmd_synthetic: Optional[Union[ArrayLike, mmd_lib.MMD]],
                grads: ArrayLike, residual: ArrayLike, *, method: str = 'full',
                block_size: int = 512, num_permutations: int = 1,
                num_sub: Optional[int] = None, key: Optional[jax.Array] = None,
                eps: float = 1e-4, normalization: str = 'per_example') -> BoundTerms:
  """The four terms of Eq. 8 for one subset `S = S1 ∪ S2`.

  `n1`, `n2` (hence `n` and `pi`) come from the sizes of the loss vectors; `grads` and
  `residual` hold the `n = n1 + n2` examples of `S` (any order).

  Args:
    loss_real: `[n1]` per-example losses of `S1` at `theta0` (may be empty).
    loss_synthetic: `[n2]` per-example losses of `S2` at `theta0` (may be empty).
    mmd_real: `[]` `MMD(T, S1)` (None allowed when `S1` is empty).
    mmd_synthetic: `[]` `MMD(T, S2)` (None allowed when `S2` is empty).
    grads: `[n, p]` per-example gradients of `g` at `theta0`.
    residual: `[n]` or `[n, c]`.
    method, block_size, num_permutations, num_sub, key, eps, normalization: as `ntk_term`.

  Returns:
    `BoundTerms(empirical_loss, discrepancy, ntk, composition)`, each `[]`.

  Raises:
    ValueError: as the individual terms; `grads` rows != n1 + n2.
  """
  empirical = empirical_loss_term(loss_real, loss_synthetic)
  n1, n2 = jnp.shape(loss_real)[0], jnp.shape(loss_synthetic)[0]
  n = n1 + n2
  pi = n1 / n
  if jnp.ndim(grads) != 2 or jnp.shape(grads)[0] != n:
    raise ValueError(f'grads must have shape [n1 + n2, p] = [{n}, p], got {jnp.shape(grads)}')
  discrepancy = discrepancy_term(mmd_real, mmd_synthetic, pi=pi)
  ntk = ntk_term(grads, residual, method=method, block_size=block_size,
                 num_permutations=num_permutations, num_sub=num_sub, key=key, eps=eps,
                 normalization=normalization)
  composition = jnp.asarray(composition_term(n, pi), empirical.dtype)
  return BoundTerms(empirical, discrepancy, ntk.value, composition)
