"""Multi-kernel maximum mean discrepancy (MK-MMD), the discrepancy term of the bound.

METHOD.md section 2.2. The kernel is a uniform mixture of `M` Gaussian kernels

  k(x, x') = (1 / M) sum_j exp(-||x - x'||^2 / (2 s_j)),   s_j = s * 2^(j - floor(M / 2)),

with `s` the median pairwise squared distance of the *target* set `T`, computed once so
that every contributor is measured with the same kernel. `bandwidths` are always these
`s_j` (squared length scales), never their roots.

Estimators of `MMD^2(x, y)` (Gretton et al., JMLR 2012, "A kernel two-sample test"):
- `biased`: the V-statistic `mean K_xx + mean K_yy - 2 mean K_xy` over all pairs
  including the diagonals; >= 0 (the squared RKHS distance of the empirical mean
  embeddings) and 0 for `x is y`, both up to float32 rounding.
- `unbiased`: the U-statistic, diagonals of `K_xx` and `K_yy` excluded; can be negative;
  needs >= 2 examples in each set. Unequal sizes are allowed for both.
- `linear`: the O(n) streaming estimator `mean_i h(z_2i, z_2i+1)` with `z = (x, y)` and
  `h(z, z') = k(x, x') + k(y, y') - k(x, y') - k(x', y)`. For unequal sizes it uses the
  first `L = min(n, m)` rows of each set (the rest is ignored), i.e. `floor(L / 2)`
  consecutive pairs; it depends on the row order (shuffle first if the rows are sorted).

Label-aware discrepancy (METHOD.md section 2, "weak spots"): with `x_labels`/`y_labels`
the kernel becomes the product `k((x, a), (x', a')) = k(x, x') * [a == a']` (a delta
kernel on integer labels), i.e. MMD of the joint distribution of (features, label).
Leaving both label arguments `None` gives the plain feature MMD.

Computation: the kernel sums of the biased/unbiased estimators run in fixed-size blocks:
the rows of x and y are padded to blocks of `B` rows with a validity mask, stacked into one
`[nb, B, d]` array, and one jitted program scans over the unordered block pairs, forming
one `[B, B, M]` kernel tile at a time and accumulating `sum K_xx`, `sum K_xy`, `sum K_yy`
together (symmetric tiles of K_xx and K_yy are visited once and counted twice) in a
compensated (Kahan) running sum, because MMD^2 is a small difference of three large
float32 sums. Memory is O(B^2 M), never the full `[n, m]` matrix. The program compiles
once per (total number of blocks `nb`, `B`, `d`, `M`, dtype), shared by both estimators
and by every pair of sizes with the same block counts. Sets smaller than `block_size` use
the next power of two >= the larger set's size (at least 8) as `B`, so small contributors
neither waste a full block nor compile once per size. Squared distances are formed as
`|a|^2 + |b|^2 - 2 a.b` after centering both sets on the target mean (less cancellation
in float32) at `Precision.HIGHEST` (no TF32 on GPUs), clipped at 0.

Half-precision inputs (float16, bfloat16) are computed in float32, bandwidths included.

These functions validate their inputs in Python and are called outside `jit`.

Shape legend: `n` examples of `x`, `m` examples of the target `y`, `d` features, `M`
kernels, `B` block size, `nb` number of blocks.
"""

import functools
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks
from dv_jax import linalg

ArrayLike = jax.typing.ArrayLike

ESTIMATORS = ('biased', 'unbiased', 'linear')
DEFAULT_NUM_KERNELS = 5  # METHOD.md: M = 5 Gaussian kernels around the median heuristic
# The median heuristic looks at an evenly spaced, deterministic subsample of at most this
# many target rows: 2048 rows already give ~2M pairs, and the [r, r] matrix stays 16 MiB.
MEDIAN_MAX_ROWS = 2048
_MIN_BLOCK = 8
_PRECISION = jax.lax.Precision.HIGHEST


class MMD(NamedTuple):
  """An MK-MMD estimate.

  Attributes:
    value: `[]`, `sqrt(max(mmd2, 0))` (gradient 0 at 0).
    mmd2: `[]`, the estimate of `MMD^2` (the unbiased and linear ones can be negative).
    bandwidths: `[M]`, the squared length scales `s_j` that were used.
  """
  value: jax.Array
  mmd2: jax.Array
  bandwidths: jax.Array


# ---------------------------------------------------------------------------------------
# Validation (outside jit).


def _as_features(x: ArrayLike, name: str) -> jax.Array:
  x = linalg.checked_float_array(x, name)
  if x.ndim != 2:
    raise ValueError(f'{name} must have shape [examples, features], got shape {x.shape}')
  if x.shape[0] == 0:
    raise ValueError(f'{name} is empty (shape {x.shape})')
  if x.shape[1] == 0:
    raise ValueError(f'{name} has no features (shape {x.shape})')
  return x


def _as_labels(labels: Optional[ArrayLike], n: int, name: str) -> jax.Array:
  if labels is None:
    return jax.device_put(np.zeros((n,), np.int32))
  if not isinstance(labels, jax.Array):
    labels = np.asarray(labels)
  if np.dtype(labels.dtype).kind not in 'iub':
    raise ValueError(f'{name} must be integer class labels, got dtype {labels.dtype}')
  if labels.shape != (n,):
    raise ValueError(f'{name} must have shape [{n}] (one label per row), got {labels.shape}')
  # The kernel compares int32 labels: a wider label outside that range would wrap onto
  # another (2**32 -> 0) and silently match it. (Narrower dtypes need no look at the values.)
  if not np.can_cast(labels.dtype, np.int32) and labels.size and (
      int(labels.min()) < np.iinfo(np.int32).min or int(labels.max()) > np.iinfo(np.int32).max):
    raise ValueError(f'{name} must fit in int32, got values in [{labels.min()}, '
                     f'{labels.max()}]')
  labels = labels.astype(np.int32)
  return labels if isinstance(labels, jax.Array) else jax.device_put(labels)


def _check_num_kernels(num_kernels: int) -> int:
  return checks.check_int(num_kernels, 'num_kernels')


def _check_bandwidths(bandwidths: ArrayLike) -> jax.Array:
  bandwidths = linalg.checked_float_array(bandwidths, 'bandwidths')
  if bandwidths.ndim != 1 or bandwidths.shape[0] == 0:
    raise ValueError(f'bandwidths must have shape [M] with M >= 1, got {bandwidths.shape}')
  if not bool(np.all(np.asarray(bandwidths) > 0)):
    raise ValueError(f'bandwidths must be positive and finite, got {bandwidths}')
  return bandwidths


# ---------------------------------------------------------------------------------------
# Bandwidths.


@jax.jit
def _median_sq_dist(x_RxD: jax.Array) -> jax.Array:
  """Median of the off-diagonal pairwise squared distances of the rows of x."""
  r = x_RxD.shape[0]
  x_RxD = x_RxD - jnp.mean(x_RxD, axis=0, keepdims=True)
  sq_R = jnp.sum(x_RxD * x_RxD, axis=1)
  d2_RxR = sq_R[:, None] + sq_R[None, :] - 2 * jnp.dot(x_RxD, x_RxD.T, precision=_PRECISION)
  d2_RxR = jnp.maximum(0.5 * (d2_RxR + d2_RxR.T), 0)
  # Every off-diagonal value appears twice in the symmetric matrix; the median of the
  # doubled list equals the median of the r (r - 1) / 2 distinct pairs (index algebra:
  # the doubled list holds pair i at positions 2i, 2i + 1). The diagonal is sent to -inf
  # so it occupies the first r sorted positions.
  d2_RxR = jnp.where(jnp.eye(r, dtype=bool), -jnp.inf, d2_RxR)
  sorted_values = jnp.sort(d2_RxR.reshape(-1))
  num_pairs = r * (r - 1) // 2
  return 0.5 * (sorted_values[r + num_pairs - 1] + sorted_values[r + num_pairs])


def _median_heuristic(x: ArrayLike, max_rows: int, name: str) -> jax.Array:
  max_rows = checks.check_int(max_rows, 'max_rows', minimum=2)
  # Host float64 rows centred before the float32 cast, as mk_mmd's (the distances do not
  # depend on the translation; the digits lost to it do).
  x, _ = _center_float64_on_host(x, x)
  x = _as_features(x, name)
  x = x.astype(linalg.compute_dtype(x.dtype))  # as _mmd2_and_bandwidths
  n = x.shape[0]
  if n < 2:
    raise ValueError(f'{name} needs at least 2 rows for a pairwise distance, got {n}')
  if n > max_rows:
    x = x[np.round(np.linspace(0, n - 1, max_rows)).astype(np.int64)]
  median = _median_sq_dist(x)
  # Finite features whose squared distances pass the compute dtype's range (float32:
  # spreads near 1e19) give an infinite median, and infinite bandwidths a NaN MMD.
  if not np.isfinite(float(median)):
    raise ValueError(f'{name}: the median pairwise squared distance overflows '
                     f'{x.dtype} (features spread too far for it); rescale the features')
  return median


def median_heuristic(x: ArrayLike, *, max_rows: int = MEDIAN_MAX_ROWS) -> jax.Array:
  """Median pairwise squared Euclidean distance over distinct pairs (the diagonal excluded).

  For more than `max_rows` rows, the median of an evenly spaced, deterministic subsample
  of `max_rows` rows (indices `round(linspace(0, n - 1, max_rows))`) is returned: no key
  is needed and the value is reproducible. The median of an even number of pairs is the
  mean of the two middle values, as `numpy.median`.

  Args:
    x: `[n, d]`, n >= 2.
    max_rows: subsample size for large `x`, >= 2.

  Returns:
    `[]`, the median squared distance `s`.

  Raises:
    ValueError: `x` not `[n, d]`, fewer than 2 rows, NaN/Inf; bad `max_rows`; a median
      that overflows the compute dtype.
  """
  return _median_heuristic(x, max_rows, 'x')


def bandwidths_from(target: ArrayLike, num_kernels: int = DEFAULT_NUM_KERNELS) -> jax.Array:
  """The kernel bandwidths `s_j = s * 2^(j - floor(M / 2))`, `s` = median heuristic of T.

  Args:
    target: `[m, d]`, the target set `T` (m >= 2).
    num_kernels: `M`, >= 1.

  Returns:
    `[M]`, squared length scales, increasing.

  Raises:
    ValueError: bad `target` (see `median_heuristic`), `num_kernels < 1`, or a target
      whose median squared distance is 0 (more than half of its pairs coincide).
  """
  num_kernels = _check_num_kernels(num_kernels)
  s = _median_heuristic(target, MEDIAN_MAX_ROWS, 'target')
  if not float(s) > 0:
    raise ValueError('target has median pairwise squared distance 0 (most rows coincide); '
                     'pass bandwidths explicitly')
  exponents = jnp.arange(num_kernels) - num_kernels // 2
  return s * jnp.exp2(exponents.astype(s.dtype))


# ---------------------------------------------------------------------------------------
# Blocked kernel sums.


def _kernel_mean(d2: jax.Array, bandwidths_M: jax.Array) -> jax.Array:
  """`(1 / M) sum_j exp(-d2 / (2 s_j))` elementwise; shape of d2."""
  s = bandwidths_M.reshape((1,) * d2.ndim + (-1,))
  return jnp.mean(jnp.exp(-d2[..., None] / (2 * s)), axis=-1)


def _block_pair_sum(a_BxD, a_mask_B, a_labels_B, b_BxD, b_mask_B, b_labels_B,
                    bandwidths_M, drop_diagonal):
  """Sum of the (label-masked) kernel over one `[B, d] x [B, d]` tile of valid pairs."""
  block = a_BxD.shape[0]
  sq_a = jnp.sum(a_BxD * a_BxD, axis=1)
  sq_b = jnp.sum(b_BxD * b_BxD, axis=1)
  cross_BxB = jnp.dot(a_BxD, b_BxD.T, precision=_PRECISION)
  d2_BxB = jnp.maximum(sq_a[:, None] + sq_b[None, :] - 2 * cross_BxB, 0)
  keep_BxB = (a_mask_B[:, None] & b_mask_B[None, :]
              & (a_labels_B[:, None] == b_labels_B[None, :]))
  keep_BxB = keep_BxB & ~(drop_diagonal & jnp.eye(block, dtype=bool))
  return jnp.sum(jnp.where(keep_BxB, _kernel_mean(d2_BxB, bandwidths_M), 0))


@jax.jit
def _kernel_sums(blocks, mask, labels, block_group, pair_a, pair_b, bandwidths_M,
                 exclude_diagonal):
  """`(sum K_xx, sum K_xy, sum K_yy)` over valid rows by one scan over block pairs.

  x and y are stacked into one padded set of blocks; `block_group` says which set each
  block comes from (x blocks first). The scan visits each unordered block pair once
  (`pair_a <= pair_b`); a tile of two different blocks of the same set stands for itself
  and its transpose (weight 2), so K_xx and K_yy cost half of a full sweep.

  Args:
    blocks: `[nb, B, d]`; mask, labels: `[nb, B]`; block_group: `[nb]`, 0 = x, 1 = y.
    pair_a, pair_b: `[P]` block indices with `pair_a <= pair_b`, every such pair once.
    bandwidths_M: `[M]`.
    exclude_diagonal: `[]` bool, drop `i == j` terms (the U-statistic).

  Returns:
    `[3]`: the sums over K_xx, K_xy, K_yy.
  """

  def step(carry, pair):
    totals_3, compensation_3 = carry
    a, b = pair
    drop = jnp.logical_and(exclude_diagonal, a == b)
    tile = _block_pair_sum(blocks[a], mask[a], labels[a], blocks[b], mask[b], labels[b],
                           bandwidths_M, drop)
    group_a, group_b = block_group[a], block_group[b]
    weight = jnp.where((a != b) & (group_a == group_b), 2, 1).astype(tile.dtype)
    # group_a + group_b is 0 for x-x, 1 for x-y (x blocks precede y blocks), 2 for y-y.
    slot_3 = jax.nn.one_hot(group_a + group_b, 3, dtype=tile.dtype)
    # Kahan summation: MMD^2 is a small difference of three large float32 sums, and a
    # plain running sum over thousands of tiles loses the digits it is made of.
    increment_3 = slot_3 * (weight * tile) - compensation_3
    new_totals_3 = totals_3 + increment_3
    compensation_3 = (new_totals_3 - totals_3) - increment_3
    return (new_totals_3, compensation_3), None

  zeros_3 = jnp.zeros((3,), blocks.dtype)
  (totals_3, _), _ = jax.lax.scan(step, (zeros_3, zeros_3), (pair_a, pair_b))
  return totals_3


def _block_size_for(num_rows: int, block_size: int) -> int:
  if num_rows >= block_size:
    return block_size
  return min(block_size, max(_MIN_BLOCK, 1 << (num_rows - 1).bit_length()))


def _center_on_target(x_NxD: jax.Array, y_MxD: jax.Array) -> Tuple[jax.Array, jax.Array]:
  # Distances are translation invariant; centering on the target mean shrinks |x|^2 and
  # with it the cancellation in |a|^2 + |b|^2 - 2 a.b.
  center_1xD = jnp.mean(y_MxD, axis=0, keepdims=True)
  return x_NxD - center_1xD, y_MxD - center_1xD


def _to_blocks(x_NxD: jax.Array, labels_N: jax.Array, block: int
               ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Pads rows to a multiple of `block`: `[nb, B, d]` rows, `[nb, B]` mask and labels."""
  n, d = x_NxD.shape
  num_blocks = -(-n // block)
  pad = num_blocks * block - n
  x_blocks = jnp.pad(x_NxD, ((0, pad), (0, 0))).reshape(num_blocks, block, d)
  mask = (jnp.arange(num_blocks * block) < n).reshape(num_blocks, block)
  labels = jnp.pad(labels_N, (0, pad)).reshape(num_blocks, block)
  return x_blocks, mask, labels


@functools.partial(jax.jit, static_argnames=('block',))
def _centered_blocks(x_NxD, y_MxD, x_labels_N, y_labels_M, *, block: int):
  """x then y blocks, centered and padded: `[nb, B, d]` rows, `[nb, B]` mask and labels.

  One small program per (n, m, B): it replaces a handful of eager ops that would each
  compile per shape anyway.
  """
  x_NxD, y_MxD = _center_on_target(x_NxD, y_MxD)
  x_blocks, x_mask, x_label_blocks = _to_blocks(x_NxD, x_labels_N, block)
  y_blocks, y_mask, y_label_blocks = _to_blocks(y_MxD, y_labels_M, block)
  return (jnp.concatenate([x_blocks, y_blocks]), jnp.concatenate([x_mask, y_mask]),
          jnp.concatenate([x_label_blocks, y_label_blocks]))


def _stacked_blocks(x_NxD, y_MxD, x_labels_N, y_labels_M, block: int):
  """The block inputs of `_kernel_sums`: blocks, mask, labels, block_group, pair_a, pair_b."""
  num_x_blocks = -(-x_NxD.shape[0] // block)
  num_blocks = num_x_blocks + -(-y_MxD.shape[0] // block)
  block_group = (np.arange(num_blocks) >= num_x_blocks).astype(np.int32)
  pair_a, pair_b = np.triu_indices(num_blocks)
  return (*_centered_blocks(x_NxD, y_MxD, x_labels_N, y_labels_M, block=block), block_group,
          pair_a.astype(np.int32), pair_b.astype(np.int32))


@jax.jit
def _linear_mmd2(x_NxD, y_MxD, x_labels_N, y_labels_M, bandwidths_M):
  """The linear-time estimator on the `P = min(n, m) // 2` leading consecutive pairs."""
  num_pairs = min(x_NxD.shape[0], y_MxD.shape[0]) // 2
  x_NxD, y_MxD = _center_on_target(x_NxD, y_MxD)

  def pairs(rows):  # rows [>= 2P, ...] -> (rows 0, 2, 4, ...), (rows 1, 3, 5, ...)
    paired = rows[:2 * num_pairs].reshape((num_pairs, 2) + rows.shape[1:])
    return paired[:, 0], paired[:, 1]

  (x1, x2), (y1, y2) = pairs(x_NxD), pairs(y_MxD)
  (lx1, lx2), (ly1, ly2) = pairs(x_labels_N), pairs(y_labels_M)

  def k(a_PxD, b_PxD, la_P, lb_P):
    diff = a_PxD - b_PxD
    return _kernel_mean(jnp.sum(diff * diff, axis=1), bandwidths_M) * (la_P == lb_P)

  h_P = k(x1, x2, lx1, lx2) + k(y1, y2, ly1, ly2) - k(x1, y2, lx1, ly2) - k(x2, y1, lx2, ly1)
  return jnp.mean(h_P)


# ---------------------------------------------------------------------------------------
# Public estimators.


def _center_float64_on_host(x: ArrayLike, y: ArrayLike) -> Tuple[ArrayLike, ArrayLike]:
  """Host float64 `x` and `y` less the mean of `y` (anything else: unchanged).

  Without x64, `_as_features` casts float64 to float32 before the centering in
  `_center_on_target`, so features far from 0 lose their digits first (MMD^2 0.4% off at an
  offset of 1e5). Distances, hence MMD and the median-heuristic bandwidths, do not depend
  on the translation. A non-finite `y` is left alone for `_as_features` to name.
  """
  if isinstance(x, jax.Array) or isinstance(y, jax.Array):
    return x, y
  try:
    x_array, y_array = np.asarray(x), np.asarray(y)
  except (TypeError, ValueError):
    return x, y
  if not (np.float64 in (x_array.dtype, y_array.dtype) and x_array.ndim == y_array.ndim == 2
          and x_array.dtype.kind in 'iuf' and y_array.dtype.kind in 'iuf'
          and y_array.shape[0] > 0 and x_array.shape[1] == y_array.shape[1]
          and np.all(np.isfinite(y_array))):
    return x, y
  center = y_array.mean(axis=0, keepdims=True, dtype=np.float64)
  return x_array - center, y_array - center


def _mmd2_and_bandwidths(x, y, bandwidths, num_kernels, estimator, block_size, x_labels,
                         y_labels) -> Tuple[jax.Array, jax.Array]:
  if estimator not in ESTIMATORS:
    raise ValueError(f'estimator must be one of {ESTIMATORS}, got {estimator!r}')
  block_size = checks.check_int(block_size, 'block_size')
  x, y = _center_float64_on_host(x, y)
  x = _as_features(x, 'x')
  y = _as_features(y, 'y')
  (n, d), m = x.shape, y.shape[0]
  if y.shape[1] != d:
    raise ValueError(f'y has {y.shape[1]} features but x has {d}')
  if (x_labels is None) != (y_labels is None):
    raise ValueError('x_labels and y_labels must be given together (or both None)')
  x_labels = _as_labels(x_labels, n, 'x_labels')
  y_labels = _as_labels(y_labels, m, 'y_labels')
  if bandwidths is None:
    bandwidths = bandwidths_from(y, DEFAULT_NUM_KERNELS if num_kernels is None else num_kernels)
  else:
    bandwidths = _check_bandwidths(bandwidths)
    # Given bandwidths fix M; a num_kernels that disagrees would otherwise be ignored.
    if num_kernels is not None and _check_num_kernels(num_kernels) != bandwidths.shape[0]:
      raise ValueError(f'num_kernels = {num_kernels} disagrees with the {bandwidths.shape[0]} '
                       'bandwidths given; pass one of them')
  # At least float32: float16 kernel sums (n^2 terms of up to 1) overflow past 65504, and
  # in bfloat16 MMD^2, a small difference of such sums, is off by percents.
  dtype = linalg.compute_dtype(x.dtype, y.dtype, bandwidths.dtype)
  x, y, bandwidths = x.astype(dtype), y.astype(dtype), bandwidths.astype(dtype)
  if estimator == 'linear':
    num_rows = min(n, m)
    if num_rows < 2:
      name = 'x' if n < 2 else 'y'
      raise ValueError(f'the linear estimator needs >= 2 rows in each set; {name} has '
                       f'{num_rows}')
    mmd2 = _linear_mmd2(x, y, x_labels, y_labels, bandwidths)
    _check_finite_result(mmd2, bandwidths)
    return mmd2, bandwidths

  unbiased = estimator == 'unbiased'
  if unbiased and n < 2:
    raise ValueError(f'the unbiased estimator needs >= 2 rows in x, got {n}')
  if unbiased and m < 2:
    raise ValueError(f'the unbiased estimator needs >= 2 rows in y, got {m}')
  block = _block_size_for(max(n, m), int(block_size))
  sum_xx, sum_xy, sum_yy = _kernel_sums(*_stacked_blocks(x, y, x_labels, y_labels, block),
                                        bandwidths, unbiased)
  if unbiased:
    mmd2 = sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - 2 * sum_xy / (n * m)
  else:
    mmd2 = sum_xx / (n * n) + sum_yy / (m * m) - 2 * sum_xy / (n * m)
  _check_finite_result(mmd2, bandwidths)
  return mmd2, bandwidths


def _check_finite_result(mmd2: jax.Array, bandwidths: jax.Array) -> None:
  """Refuses a NaN MMD^2 of finite inputs: squared distances (or the widest bandwidth)
  past the compute dtype's range, e.g. float32 features spread over ~4e18. Under a
  transformation (`jax.grad` with explicit bandwidths) the values are unknown: unchecked."""
  if isinstance(mmd2, jax.core.Tracer) or isinstance(bandwidths, jax.core.Tracer):
    return
  if not (np.isfinite(float(mmd2)) and np.all(np.isfinite(np.asarray(bandwidths)))):
    raise ValueError(f'MMD^2 is not finite: the squared distances or bandwidths overflow '
                     f'{mmd2.dtype} (features spread too far for it); rescale the features')


def mk_mmd2(x: ArrayLike, y: ArrayLike, *, bandwidths: Optional[ArrayLike] = None,
            num_kernels: Optional[int] = None, estimator: str = 'biased',
            block_size: int = 512,
            x_labels: Optional[ArrayLike] = None, y_labels: Optional[ArrayLike] = None
            ) -> jax.Array:
  """Estimate of `MMD^2` between `x` and the target `y` with the multi-kernel Gaussian.

  Args:
    x: `[n, d]`, the set being measured (e.g. a contributor's real or synthetic part).
    y: `[m, d]`, the target set `T`.
    bandwidths: `[M]` squared length scales `s_j`; `None` means `bandwidths_from(y)`.
      Pass them explicitly to measure several sets with the same kernel.
    num_kernels: `M` when `bandwidths` is None (default `DEFAULT_NUM_KERNELS` = 5); with
      `bandwidths` it may be given only as their number.
    estimator: `'biased'` (V-statistic, >= 0), `'unbiased'` (U-statistic, needs >= 2
      rows in each set) or `'linear'` (O(n), first `min(n, m)` rows, consecutive pairs).
    block_size: rows per block `B` of the blocked kernel sums.
    x_labels: optional `[n]` integer labels of `x`; with `y_labels`, the kernel is
      `k(x, x') * [label == label']` (MMD of the joint (feature, label) distribution).
    y_labels: optional `[m]` integer labels of `y`.

  Returns:
    `[]`, the estimate of `MMD^2`.

  Raises:
    ValueError: naming the offending argument: unknown estimator, bad shapes, feature
      dimension mismatch, empty sets, NaN/Inf, too few rows for the estimator, labels
      given for one set only, non-integer or outside int32, non-positive bandwidths or
      block size, a `num_kernels` other than the number of `bandwidths` given.
  """
  mmd2, _ = _mmd2_and_bandwidths(x, y, bandwidths, num_kernels, estimator, block_size,
                                 x_labels, y_labels)
  return mmd2


def mk_mmd(x: ArrayLike, y: ArrayLike, *, bandwidths: Optional[ArrayLike] = None,
           num_kernels: Optional[int] = None, estimator: str = 'biased',
           block_size: int = 512,
           x_labels: Optional[ArrayLike] = None, y_labels: Optional[ArrayLike] = None
           ) -> MMD:
  """MK-MMD `sqrt(max(MMD^2, 0))` (safe gradient at 0) with the estimate and bandwidths.

  Arguments as `mk_mmd2`.

  Returns:
    `MMD(value [], mmd2 [], bandwidths [M])`.

  Raises:
    ValueError: as `mk_mmd2`.
  """
  mmd2, bandwidths = _mmd2_and_bandwidths(x, y, bandwidths, num_kernels, estimator,
                                          block_size, x_labels, y_labels)
  return MMD(linalg.safe_sqrt(mmd2), mmd2, bandwidths)
