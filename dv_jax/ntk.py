"""Empirical neural tangent kernel and per-example gradients on public JAX.

The NTK term of the bound (METHOD.md section 2, term 3) needs
`Theta0[a, b] = <grad g(x_a; theta0), grad g(x_b; theta0)>`. This module computes it two
ways: as the Gram matrix of per-example gradients of a scalar `g` (`per_example_grads`,
what `bound.ntk_term` consumes), and as the empirical NTK of a vector-valued network
(`empirical_ntk_fn`, the same semantics as `neural_tangents.empirical_ntk_fn`).

Shape legend: `n` examples (`n1`, `n2` for the two sides of a kernel), `p` parameters
(of the leaves selected by `param_filter`), `c` outputs per example (the non-batch axes of
`apply_fn(params, x)`, flattened where it matters), `k` projection dimension, `b` examples
in one block.

Both paths are computed in fixed-size blocks by functions jitted at module level: the last
block is padded (by repeating the last example) and the padded rows are dropped, so one
compile serves every `n` and memory is bounded by the block, never by `n`.

Data parallelism (opt-in, `mesh=`). With a `jax.sharding.Mesh`, each padded block is
placed with its example axis split over all the mesh's devices
(`NamedSharding(mesh, PartitionSpec(axis_names))`) and the parameters and the projection
key replicated; the jitted block runs its per-example body under `shard_map`, so every
device runs the same program on its `block_size / mesh.size` examples and nothing crosses
devices (`_per_device` says why not XLA's automatic partitioning). The finished block is
gathered onto the mesh's first device, so the caller gets an ordinary single-device array,
and one compile still serves every `n`. `data_parallel_mesh()` is the 1-D mesh over the
local devices. Per-example gradients have no sum across examples, so the result equals the
unsharded one up to float32 rounding (see `per_example_grads`).

Parameters. `param_filter` selects the leaves that are differentiated; the others are held
constant. Flattened gradients list the selected leaves in `jax.tree_util` leaf order, each
leaf in row-major order.

Random projection. `Projection(dim=k, kind, key)` maps a gradient `g` (length `p`) to
`g @ P` with `P[p, k]` of i.i.d. entries, Rademacher (+-1) or standard normal, scaled by
`1/sqrt(k)`, so `E[P P^T] = I` and inner products are preserved in expectation. `P` is
never materialised: the rows of leaf number `l` (its index among ALL leaves of `params`,
so a leaf keeps its rows whatever the filter) are drawn in chunks of
`r = min(PROJECTION_CHUNK_ROWS, size of the leaf)` rows; chunk `j` is
`draw(fold_in(fold_in(key, l), j), [r, k]) / sqrt(k)` and its rows past the end of the leaf
are unused. A Gaussian `draw` is `jax.random.normal`; a Rademacher one takes
`jax.random.bits(key, [r, ceil(k / 32)], uint32)` and maps bit `b` of word `w` (least
significant first) to entry `32 w + b` of the row, 1 -> +1, 0 -> -1. `P` is drawn and
`g @ P` summed in at least float32 whatever the gradients' dtype, so a bfloat16 model gets
the same `P` as a float32 one and float32 projected gradients.

Dtypes. Kernels are returned in at least float32 by every implementation (the library's
rule for half precision, `linalg.checked_float_array`): for a bfloat16 model the Jacobian
contraction sums bfloat16 Jacobian entries over `p` in float32, while the vector-product
path's entries come out of a jvp run in the model's dtype and so carry bfloat16 rounding
(~1e-2 relative) before they are cast.
"""

import functools
import math
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from dv_jax import checks
from dv_jax import linalg

PyTree = Any
ParamFilter = Union[None, str, Callable[[str, Any], bool]]

# Rows of a projection matrix drawn at once: bounds the [rows, k] block held in memory.
PROJECTION_CHUNK_ROWS = 4096

IMPLEMENTATIONS = ('jacobian_contraction', 'ntk_vector_products', 'neural_tangents')
PROJECTION_KINDS = ('rademacher', 'gaussian')

# Kernel contractions run at full float32 precision: Theta feeds a Cholesky solve, and
# the TF32/bf16 passes some accelerators use by default lose too many digits.
_PRECISION = jax.lax.Precision.HIGHEST


def _at_least_float32(dtype):
  """`dtype` promoted to float32 or wider: the dtype of every kernel this module returns."""
  return jnp.promote_types(dtype, jnp.float32)


class Projection(NamedTuple):
  """A random projection of gradients to `dim` dimensions (see the module docstring).

  Attributes:
    dim: `k`, the projected dimension.
    kind: 'rademacher' (entries +-1/sqrt(k)) or 'gaussian' (N(0, 1/k)).
    key: the PRNG key the whole matrix is derived from (required; `None` is rejected).
  """
  dim: int
  kind: str = 'rademacher'
  key: Any = None


def check_projected_block_rows(rows: int, projection_dim: int, *, what: str) -> None:
  """Refuses a kernel block of `rows` examples on gradients projected to `projection_dim`.

  The projected NTK `G G^T` of a block has rank at most `k = projection_dim`, while the
  true NTK of a large model is full rank. As `rows` nears `k` its smallest eigenvalues
  fall towards 0 (for a random projection, about `(1 - sqrt(rows / k))^2` times the
  mean), and past `k` the block is singular: the quadratic form `Y^T (G G^T + lam I)^-1 Y`
  is then set by the jitter `lam`, not by the data. Up to `k / 2` rows the smallest
  eigenvalue stays above ~9% of the mean.

  Args:
    rows: the most examples one kernel block holds.
    projection_dim: `k`; 0 (exact gradients) is not checked.
    what: the block and the config fields that set it, for the error.

  Raises:
    ValueError: naming `what`, when `2 * rows > projection_dim > 0`.
  """
  if projection_dim and 2 * rows > projection_dim:
    raise ValueError(
        f'{what} holds up to {rows} examples, more than half of projection_dim='
        f'{projection_dim}: the projected NTK of such a block has rank <= {projection_dim} '
        'and is near-singular, so its quadratic form measures the jitter, not the data. '
        f'Use blocks of at most {projection_dim // 2} rows or a larger projection_dim.')


# ----------------------------------------------------------------------------------------
# Parameter paths and filters.


def _key_str(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_str(path) -> str:
  """The '/'-joined path of a `jax.tree_util` key path, as `param_filter` regexes see it."""
  return '/'.join(_key_str(entry) for entry in path)


def _selection_mask(params: PyTree, param_filter: ParamFilter) -> tuple[bool, ...]:
  """Which leaves of `params` (in leaf order) are differentiated; validates the filter."""
  with_paths, _ = jax.tree_util.tree_flatten_with_path(params)
  if not with_paths:
    raise ValueError('params has no leaves.')
  if param_filter is None:
    mask = tuple(True for _ in with_paths)
  elif isinstance(param_filter, str):
    try:
      pattern = re.compile(param_filter)
    except re.error as e:
      raise ValueError(f'param_filter {param_filter!r} is not a valid regex: {e}') from e
    mask = tuple(bool(pattern.search(path_str(path))) for path, _ in with_paths)
  elif callable(param_filter):
    mask = tuple(bool(param_filter(path_str(path), leaf)) for path, leaf in with_paths)
  else:
    raise ValueError('param_filter must be None, a regex string or a callable '
                     f'(path_str, leaf) -> bool, got {type(param_filter).__name__}.')
  if not any(mask):
    paths = [path_str(path) for path, _ in with_paths]
    shown = ', '.join(paths[:8]) + (', ...' if len(paths) > 8 else '')
    raise ValueError(f'param_filter {param_filter!r} selects no parameter; the paths are: '
                     f'{shown}.')
  for (path, leaf), selected in zip(with_paths, mask):
    if selected and not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise ValueError(f'params leaf {path_str(path)!r} is selected by param_filter but has '
                       f'non-float dtype {jnp.result_type(leaf)}; filter it out.')
  return mask


def _check_params(params: PyTree, mask: tuple[bool, ...]) -> None:
  leaves = jax.tree_util.tree_leaves(params)
  selected = [jnp.asarray(leaf) for leaf, m in zip(leaves, mask) if m]
  if not all(bool(jnp.isfinite(leaf).all()) for leaf in selected):
    raise ValueError('params contain NaN or Inf in a selected leaf.')


def flat_param_count(params: PyTree, param_filter: ParamFilter = None) -> int:
  """`p`: the number of scalar parameters `param_filter` selects.

  Args:
    params: the parameter pytree.
    param_filter: None (all), a regex searched in the '/'-joined leaf path, or a callable
      `(path_str, leaf) -> bool`.

  Returns:
    The total size of the selected leaves.

  Raises:
    ValueError: if the filter is malformed or selects nothing.
  """
  mask = _selection_mask(params, param_filter)
  leaves = jax.tree_util.tree_leaves(params)
  return int(sum(np.size(leaf) for leaf, m in zip(leaves, mask) if m))


def _split(params: PyTree, mask: tuple[bool, ...]):
  """Selected leaves and a function rebuilding the full pytree from new selected leaves."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  selected = [leaf for leaf, m in zip(leaves, mask) if m]

  def rebuild(new_selected):
    it = iter(new_selected)
    return jax.tree_util.tree_unflatten(
        treedef, [next(it) if m else leaf for leaf, m in zip(leaves, mask)])

  return selected, rebuild


def _selected_indices(mask: tuple[bool, ...]) -> list[int]:
  return [i for i, m in enumerate(mask) if m]


# ----------------------------------------------------------------------------------------
# Random projection, chunked per leaf and by rows.


def _check_projection(projection: Optional[Projection]) -> None:
  if projection is None:
    return
  if not isinstance(projection, Projection):
    raise ValueError(f'projection must be a Projection or None, got {type(projection).__name__}.')
  checks.check_int(projection.dim, 'projection.dim')
  if projection.kind not in PROJECTION_KINDS:
    raise ValueError(f'projection.kind must be one of {PROJECTION_KINDS}, got '
                     f'{projection.kind!r}.')
  if projection.key is None:
    raise ValueError('projection.key is None: pass an explicit jax.random key.')
  # An int seed or a batch of keys failed inside jax.random without naming the projection.
  checks.check_key(projection.key, 'projection.key')


def _rademacher_from_bits(key, shape, dtype):
  """+-1 entries, one random bit each: bit `b` of word `w` of row `r` is entry `32 w + b`.

  `jax.random.rademacher` spends a 32-bit draw (and a float compare) on every entry; a
  projection redraws its whole `[p, k]` matrix for every block of examples, so at LLM scale
  the draws, not the gradients, dominate a block's time. Unpacking the 32 bits of each
  word is ~8x faster on a CPU (benchmarks/bench_lm_ntk_memory.py times a block).
  """
  rows, dim = shape
  words = -(-dim // 32)
  bits_RxW = jax.random.bits(key, (rows, words), jnp.uint32)
  bits_RxWx32 = (bits_RxW[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)[None, None]) & 1
  bits_RxK = bits_RxWx32.reshape(rows, words * 32)[:, :dim]
  return (2 * bits_RxK.astype(dtype) - 1).astype(dtype)


def _draw(key, shape, kind: str, dtype):
  if kind == 'rademacher':
    values = _rademacher_from_bits(key, shape, dtype)
  else:
    values = jax.random.normal(key, shape, dtype=dtype)
  return values / jnp.sqrt(jnp.asarray(shape[-1], dtype))


def _chunking(size: int) -> tuple[int, int]:
  rows = max(1, min(PROJECTION_CHUNK_ROWS, size))
  return rows, -(-size // rows)


def _project_leaf(g_MxL, leaf_key, dim: int, kind: str):
  """`g @ P_leaf` for `g[m, L]` (L = leaf size); returns `[m, k]`, at least float32."""
  m, size = g_MxL.shape
  rows, num_chunks = _chunking(size)
  # At least float32: bfloat16 gradients (of a bfloat16 model) summed over p in bfloat16,
  # chunk after chunk, lose digits with every chunk; and a float32 P is the same matrix
  # whatever the model's dtype (a bfloat16 normal draw is another one).
  dtype = linalg.compute_dtype(g_MxL.dtype)
  g_MxL = g_MxL.astype(dtype)
  if num_chunks == 1:
    return jnp.matmul(g_MxL, _draw(jax.random.fold_in(leaf_key, 0), (rows, dim), kind, dtype),
                      precision=_PRECISION)
  g_pad = jnp.pad(g_MxL, ((0, 0), (0, num_chunks * rows - size)))
  g_chunks_CxMxR = jnp.transpose(g_pad.reshape(m, num_chunks, rows), (1, 0, 2))

  def body(acc_MxK, inputs):
    j, g_MxR = inputs
    p_RxK = _draw(jax.random.fold_in(leaf_key, j), (rows, dim), kind, dtype)
    return acc_MxK + jnp.matmul(g_MxR, p_RxK, precision=_PRECISION), None

  acc, _ = jax.lax.scan(body, jnp.zeros((m, dim), dtype),
                        (jnp.arange(num_chunks), g_chunks_CxMxR))
  return acc


def _unproject_leaf(z_MxK, leaf_key, size: int, kind: str):
  """`z @ P_leaf^T` for `z[m, k]`; returns `[m, L]` (a tangent in the leaf's space).

  At least float32, with the float32 `P` of `_project_leaf`; callers cast to the leaf's
  dtype.
  """
  m, dim = z_MxK.shape
  rows, num_chunks = _chunking(size)
  dtype = linalg.compute_dtype(z_MxK.dtype)
  z_MxK = z_MxK.astype(dtype)

  # Checkpointed so that differentiating through it regenerates each chunk instead of
  # saving all of them as residuals (which would materialise P).
  @jax.checkpoint
  def chunk(j):
    p_RxK = _draw(jax.random.fold_in(leaf_key, j), (rows, dim), kind, dtype)
    return jnp.matmul(z_MxK, p_RxK.T, precision=_PRECISION)

  if num_chunks == 1:
    return chunk(0)[:, :size]
  _, out_CxMxR = jax.lax.scan(lambda carry, j: (carry, chunk(j)), None,
                              jnp.arange(num_chunks))
  return jnp.transpose(out_CxMxR, (1, 0, 2)).reshape(m, num_chunks * rows)[:, :size]


def _flatten_and_project(leaf_grads: Sequence[Any], lead_shape: tuple[int, ...],
                         leaf_indices: Sequence[int], projection_dim: Optional[int],
                         projection_kind: Optional[str], projection_key):
  """Leaves `[*lead, *leaf_shape]` -> `[*lead, p]` (concatenated) or `[*lead, k]`."""
  m = math.prod(lead_shape)
  flat = [g.reshape(m, math.prod(g.shape[len(lead_shape):])) for g in leaf_grads]
  if projection_dim is None:
    out = jnp.concatenate(flat, axis=1)
  else:
    out = sum(_project_leaf(g, jax.random.fold_in(projection_key, index), projection_dim,
                            projection_kind)
              for g, index in zip(flat, leaf_indices))
  return out.reshape(*lead_shape, out.shape[-1])


# ----------------------------------------------------------------------------------------
# Input validation and blocking.


def _check_batch(x: ArrayLike, name: str) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f'{name} must have a leading example axis, got shape {x.shape}.')
  if x.shape[0] < 1:
    raise ValueError(f'{name} is empty (shape {x.shape}).')
  if jnp.issubdtype(x.dtype, jnp.inexact) and not bool(jnp.isfinite(x).all()):
    raise ValueError(f'{name} contains NaN or Inf.')
  return x


def _check_block_size(block_size, allow_none: bool) -> Optional[int]:
  if block_size is None and allow_none:
    return None
  return checks.check_int(block_size, 'block_size' + (' (or None)' if allow_none else ''))


def data_parallel_mesh() -> jax.sharding.Mesh:
  """The 1-D mesh over every local device, axis `'examples'`: what `mesh=` usually gets.

  The devices are `jax.local_devices()` (in one process, `jax.devices()`), in their order,
  so the results are gathered onto the default device. `config.ntk.data_parallel=True`
  passes this mesh (`dv_jax.valuation.gradient_mesh`).
  """
  return jax.sharding.Mesh(np.asarray(jax.local_devices()), ('examples',))


class _Placement(NamedTuple):
  """Where a data-parallel call puts its arrays (see the module docstring)."""
  mesh: jax.sharding.Mesh  # the caller's devices and axis names, axes of type Auto
  examples: jax.sharding.NamedSharding  # leading (example) axis split over every device
  replicated: jax.sharding.NamedSharding
  home: Any  # the device the results are gathered onto: the mesh's first


def _placement(mesh: Optional[jax.sharding.Mesh], block_size: Optional[int]
               ) -> Optional[_Placement]:
  """Validates `mesh` against `block_size` (already checked); None without a mesh."""
  if mesh is None:
    return None
  if not isinstance(mesh, jax.sharding.Mesh):
    raise ValueError(f'mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.')
  devices = list(mesh.devices.flat)
  if any(d.process_index != jax.process_index() for d in devices):
    raise ValueError('mesh must hold only this process\'s devices (the blocks are split over '
                     'local devices); use dv_jax.ntk.data_parallel_mesh().')
  if block_size is None or block_size % mesh.size:
    raise ValueError(f'block_size must be a multiple of the {mesh.size} devices of mesh (each '
                     f'block\'s examples are split evenly over them), got {block_size!r}.')
  # Automatic axes whatever the mesh's own (jax.make_mesh's are Explicit in recent JAX):
  # the blocks are placed by their shardings and split by shard_map alone.
  auto = jax.sharding.Mesh(mesh.devices, mesh.axis_names)
  return _Placement(auto, jax.sharding.NamedSharding(auto, _example_spec(auto)),
                    jax.sharding.NamedSharding(auto, jax.sharding.PartitionSpec()), devices[0])


def _example_spec(mesh: jax.sharding.Mesh) -> jax.sharding.PartitionSpec:
  """The leading axis split over all the mesh's axes together; the other axes whole."""
  return jax.sharding.PartitionSpec(tuple(mesh.axis_names))


def _replicate(placement: Optional[_Placement], params: PyTree, key):
  """`params` and the projection key copied to every device of the mesh (as given if None)."""
  if placement is None:
    return params, key
  return (jax.device_put(params, placement.replicated),
          None if key is None else jax.device_put(key, placement.replicated))


def _split_examples(placement: Optional[_Placement], x_b):
  """A block's examples split over the mesh's devices; without a mesh, on one device.

  An input the caller already sharded over several devices is gathered first when there is
  no mesh: jit would otherwise hand it to XLA's automatic partitioner, which splits the
  examples and gives a convolution wrong per-example weight gradients (`_per_device`).
  """
  if placement is not None:
    return jax.device_put(x_b, placement.examples)
  return _on_one_device(x_b)


def _default_device() -> jax.Device:
  """This process's default device: `jax.default_device`'s if set, else its first local one.

  Not `jax.devices()[0]`: in a multi-process run that is process 0's device, and every
  other process would get back arrays it cannot read.
  """
  device = jax.config.jax_default_device
  return device if isinstance(device, jax.Device) else jax.local_devices()[0]


def _on_one_device(x_b):
  """`x_b` as given, or gathered onto the default device if it is spread over several."""
  sharding = getattr(x_b, 'sharding', None)
  if sharding is not None and len(sharding.device_set) > 1:
    return jax.device_put(x_b, _default_device())
  return x_b


def _gathered(placement: Optional[_Placement], out):
  """A finished block gathered onto the mesh's first device (as given without a mesh)."""
  return out if placement is None else jax.device_put(out, placement.home)


def _per_device(fn: Callable, mesh: Optional[jax.sharding.Mesh],
                split: tuple[bool, ...]) -> Callable:
  """Inside a jitted block: `fn` itself, or `fn` run by every device on its examples.

  With a mesh, `fn` becomes a `shard_map`: each device runs the SAME per-example program
  on the `b / mesh.size` examples it holds of every argument whose `split` entry is True,
  and gets the others whole (the parameters, the projection key, a kernel's second side);
  the outputs' leading axes are those examples, in order. Nothing is exchanged between
  devices inside `fn`. (Left to the automatic partitioner instead, the per-example
  gradient of a convolution came out wrong on all devices but the first: the vmapped
  weight gradient is a `batch_group_count` convolution, and splitting it by examples gave
  other rows than the unsplit program, with jax 0.5.3 and 0.10.2 on CPU.)
  """
  if mesh is None:
    return fn
  rows, whole = _example_spec(mesh), jax.sharding.PartitionSpec()
  in_specs = tuple(rows if s else whole for s in split)
  # The replication check is off: every output is split by examples, none is claimed
  # replicated, so there is nothing for it to verify (and user models may use primitives
  # without a replication rule).
  if hasattr(jax, 'shard_map'):  # jax >= 0.7
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=rows, check_vma=False)
  from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top
  return shard_map(fn, mesh, in_specs=in_specs, out_specs=rows, check_rep=False)


def _pad_rows(x: jax.Array, block: int) -> jax.Array:
  """Pads the leading axis to a multiple of `block` by repeating the last example.

  Repeating a real example (not zeros) keeps the padded rows finite for any model; their
  results are dropped.
  """
  pad = -x.shape[0] % block
  if pad == 0:
    return x
  return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)


# ----------------------------------------------------------------------------------------
# Per-example gradients of a scalar.


class ApplyFnWrapper:
  """Base of the functions built from one `apply_fn` (per-example scalars, wrapped models).

  Such functions are static arguments of jitted blocks, and jit caches compiles by their
  hash: a closure would be new on every call and recompile. A subclass instance is equal to
  another of the same class wrapping an equal `apply_fn`, so they share one compile.
  Subclasses define `__call__`.

  Attributes:
    takes_class_labels: True for a scalar that indexes the logits `apply_fn(params, x)[0]`
      by its label `y_i`. JAX clamps an out-of-range index silently (label 5 of 3 classes
      reads class 2), so `per_example_grads` then checks concrete labels against the
      number of classes, once, outside jit.
  """

  takes_class_labels = False

  def __init__(self, apply_fn: Callable):
    self.apply_fn = apply_fn

  def __eq__(self, other):
    return type(other) is type(self) and other.apply_fn == self.apply_fn

  def __hash__(self):
    return hash((type(self), self.apply_fn))

  def __repr__(self):
    return f'{type(self).__name__}({self.apply_fn!r})'


def _is_tracer(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def check_class_labels(labels: Any, num_classes: int) -> None:
  """Raises unless concrete `labels` are integers in `[0, num_classes)`.

  Tracers (labels inside jit or vmap) pass unchecked: their values are unknown there, and
  the check belongs at the boundary, where they are concrete.

  Args:
    labels: `[n]` (or a scalar) class labels.
    num_classes: `c`, the number of logits.

  Raises:
    ValueError: naming `labels`, for non-integer labels or a label outside `[0, c)`.
  """
  if _is_tracer(labels):
    return
  labels = np.asarray(labels)
  if labels.size == 0:
    return
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integer class indices, got dtype {labels.dtype}.')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}) (the number of logits), got '
                     f'values in [{labels.min()}, {labels.max()}].')


class _TrueClassLogit(ApplyFnWrapper):
  """`scalar_fn(params, x_i, y_i) = apply_fn(params, x_i[None])[0, y_i]`."""

  takes_class_labels = True

  def __call__(self, params, x_i, y_i):
    logits = self.apply_fn(params, x_i[None])
    # Concrete only when called directly; inside per_example_grads' jitted block y_i is a
    # tracer and this costs nothing (per_example_grads checked the labels already).
    check_class_labels(y_i, logits.shape[1])
    return logits[0, y_i]


def true_class_logit(apply_fn: Callable) -> Callable:
  """The default scalar `g(x; theta)` of METHOD.md: the logit of the true class.

  Args:
    apply_fn: batched `apply_fn(params, x[b, ...]) -> logits[b, c]`.

  Returns:
    `scalar_fn(params, x_i, y_i) -> logits(x_i)[y_i]` for ONE unbatched example `x_i` and
    an integer label `y_i` in `[0, c)`; a concrete label out of range raises a ValueError
    naming `labels` (here and in `per_example_grads`), rather than JAX's silent clamp.
  """
  return _TrueClassLogit(apply_fn)


class _GradSpec(NamedTuple):
  scalar_fn: Callable
  mask: tuple[bool, ...]
  projection_dim: Optional[int]
  projection_kind: Optional[str]


@functools.partial(jax.jit, static_argnames=('spec', 'mesh'))
def _grads_block(spec: _GradSpec, params, projection_key, x_b, y_b, mesh=None):
  """Per-example gradients of one fixed-size block: `[b, p]` or `[b, k]`.

  `mesh`: None (one device), or the mesh whose devices each differentiate their
  `b / mesh.size` examples (`_per_device`).
  """

  def grads(params, projection_key, x_b, y_b):
    selected, rebuild = _split(params, spec.mask)

    def scalar(sel, x_i, y_i):
      return spec.scalar_fn(rebuild(sel), x_i, y_i)

    per_example = jax.vmap(jax.grad(scalar), in_axes=(None, 0, 0))(selected, x_b, y_b)
    return _flatten_and_project(per_example, (x_b.shape[0],), _selected_indices(spec.mask),
                                spec.projection_dim, spec.projection_kind, projection_key)

  return _per_device(grads, mesh, (False, False, True, True))(params, projection_key, x_b,
                                                              y_b)


def per_example_grads(scalar_fn: Callable, params: PyTree, x: ArrayLike, y: ArrayLike, *,
                      param_filter: ParamFilter = None,
                      projection: Optional[Projection] = None,
                      block_size: int = 256,
                      mesh: Optional[jax.sharding.Mesh] = None) -> jax.Array:
  """Gradients `grad_theta g(x_i, y_i; theta)` of a scalar, one row per example.

  The rows of the result are the features of the NTK term: `Theta0 = G G^T`
  (METHOD.md section 2, term 3); with a projection, `Theta0 ~= (G P)(G P)^T`.

  With a `mesh`, each block's `block_size` examples are split evenly over the mesh's
  devices and `params` (and the projection key) are replicated on each, so every device
  differentiates `block_size / mesh.size` examples of one jitted program (see the module
  docstring); the result is gathered onto the mesh's first device. Nothing is summed
  across examples, so it equals the unsharded result up to float32 rounding: XLA may tile a
  per-example contraction (a layer's matmul, the projection `g @ P`) differently for
  `block_size / mesh.size` rows than for `block_size`, which can move the last bits of a
  sum over features or parameters. tests/test_data_parallel.py asserts agreement to 1e-5
  of the largest entry.

  Args:
    scalar_fn: `scalar_fn(params, x_i, y_i) -> scalar` for ONE unbatched example, e.g.
      `true_class_logit(apply_fn)`. Pass the same object across calls to reuse the compile.
    params: the parameter pytree `theta0`.
    x: inputs `[n, ...]`.
    y: labels or targets `[n, ...]`.
    param_filter: which leaves to differentiate (see the module docstring); the others are
      held constant.
    projection: optional `Projection` to `k` dimensions.
    block_size: examples per jitted block; the last block is padded. With a `mesh`, a
      multiple of `mesh.size`.
    mesh: optional `jax.sharding.Mesh` of this process's devices to split each block's
      examples over (all its axes together); `data_parallel_mesh()` is the usual one.

  Returns:
    `[n, p]` (selected leaves concatenated in leaf order) or `[n, k]` when projected (at
    least float32), on one device.

  Raises:
    ValueError: on NaN/Inf or empty inputs, mismatched leading lengths, a filter that
      selects nothing, an invalid projection or block size, a `mesh` that is not a Mesh
      of local devices or whose size does not divide `block_size`; naming `labels`, concrete
      labels outside `[0, c)` for a scalar that indexes the logits by them
      (`ApplyFnWrapper.takes_class_labels`, e.g. `true_class_logit`).
  """
  x = _check_batch(x, 'x')
  y = _check_batch(y, 'y')
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'x and y must have the same number of examples, got {x.shape[0]} and '
                     f'{y.shape[0]} (y).')
  if getattr(scalar_fn, 'takes_class_labels', False) and not _is_tracer(y):
    if y.ndim != 1:  # [n, 1] would index the logits by a vector: a non-scalar "scalar"
      raise ValueError(f'labels (y) must be [n] class indices for a scalar_fn that indexes '
                       f'the logits by them, got shape {y.shape}.')
    # Once per call, outside jit: eval_shape traces the model without running it.
    out = jax.eval_shape(scalar_fn.apply_fn, params, x[:1])
    check_class_labels(y, out.shape[1])
  block_size = _check_block_size(block_size, allow_none=False)
  placement = _placement(mesh, block_size)
  _check_projection(projection)
  if not callable(scalar_fn):
    raise ValueError('scalar_fn must be callable.')
  mask = _selection_mask(params, param_filter)
  _check_params(params, mask)
  spec = _GradSpec(scalar_fn, mask, None if projection is None else int(projection.dim),
                   None if projection is None else projection.kind)
  key = None if projection is None else projection.key
  params, key = _replicate(placement, params, key)

  block_mesh = None if placement is None else placement.mesh

  def block(x_b, y_b):
    return _gathered(placement, _grads_block(spec, params, key,
                                             _split_examples(placement, x_b),
                                             _split_examples(placement, y_b), mesh=block_mesh))

  n = x.shape[0]
  x_pad, y_pad = _pad_rows(x, block_size), _pad_rows(y, block_size)
  blocks = [block(x_pad[s:s + block_size], y_pad[s:s + block_size])
            for s in range(0, x_pad.shape[0], block_size)]
  out = blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=0)
  return out[:n]


# ----------------------------------------------------------------------------------------
# Empirical NTK.


class _KernelSpec(NamedTuple):
  apply_fn: Callable
  traced: tuple[bool, ...]  # per output axis (batch axis excluded): is it traced?
  batched: bool  # vmap_axes == 0: outputs of different examples are independent
  mask: tuple[bool, ...]
  projection_dim: Optional[int]
  projection_kind: Optional[str]


_LETTERS = 'cdefghijklmnopqrstuvwxyz'


def _trace_scale(out_shape: tuple[int, ...], traced: tuple[bool, ...]) -> int:
  return math.prod(s for s, t in zip(out_shape, traced) if t)


def _trace_subscripts(traced: tuple[bool, ...]) -> str:
  """Einsum subscripts taking a full kernel `[b1, *o, b2, *o]` to the NTK layout.

  Traced axes share a letter (the einsum sums their diagonal); the others are zipped in
  the output as `[b1, b2, o_1, o_1, o_2, o_2, ...]`, the neural-tangents layout.
  """
  letters = iter(_LETTERS)
  side1, side2, out = 'a', 'b', 'ab'
  for t in traced:
    l1 = next(letters)
    if t:
      side1, side2 = side1 + l1, side2 + l1
    else:
      l2 = next(letters)
      side1, side2, out = side1 + l1, side2 + l2, out + l1 + l2
  return f'{side1}{side2}->{out}'


def _block_jacobian(spec: _KernelSpec, params, projection_key, x_b) -> list:
  """Jacobian blocks `[b, *o, q_l]`: one per selected leaf, or one `[b, *o, k]` projected.

  Leaves are kept apart (not concatenated to `[b, *o, p]`): contracting them one by one
  and summing saves a copy of the whole block Jacobian.
  """
  selected, rebuild = _split(params, spec.mask)
  if spec.batched:
    def one(x_i):
      return jax.jacrev(lambda sel: spec.apply_fn(rebuild(sel), x_i[None])[0])(selected)
    jac = jax.vmap(one)(x_b)
  else:
    jac = jax.jacrev(lambda sel: spec.apply_fn(rebuild(sel), x_b))(selected)
  lead_shape = tuple(jac[0].shape[:jac[0].ndim - selected[0].ndim])  # [b, *o]
  if spec.projection_dim is None:
    return [j.reshape(*lead_shape, leaf.size) for j, leaf in zip(jac, selected)]
  return [_flatten_and_project(jac, lead_shape, _selected_indices(spec.mask),
                               spec.projection_dim, spec.projection_kind, projection_key)]


@functools.partial(jax.jit, static_argnames=('spec', 'mesh'))
def _jacobian_block(spec: _KernelSpec, params, projection_key, x_b, mesh=None):
  return _per_device(functools.partial(_block_jacobian, spec), mesh, (False, False, True))(
      params, projection_key, x_b)


def _contract_pair(traced: tuple[bool, ...], j1, j2):
  """`sum_p J1 J2` for one leaf, as a single matmul: `[b1, b2, u_1, u_1, ...]`.

  Traced output axes are merged with the parameter axis and untraced ones with the
  example axis, so the contraction is one `[b1 U, T q] x [T q, b2 U]` product; an einsum
  with several contracting axes is markedly slower on CPU.
  """
  out_shape = j1.shape[1:-1]
  untraced = [i for i, t in enumerate(traced) if not t]
  perm = [0] + [1 + i for i in untraced] + [1 + i for i, t in enumerate(traced) if t] \
      + [j1.ndim - 1]
  u_shape = [out_shape[i] for i in untraced]
  u = math.prod(u_shape)
  a = jnp.transpose(j1, perm).reshape(j1.shape[0] * u, -1)
  b = jnp.transpose(j2, perm).reshape(j2.shape[0] * u, -1)
  # Summed over p in at least float32 (the module docstring's "Dtypes"): the Jacobian
  # blocks of a bfloat16 model are bfloat16, and a bfloat16 kernel keeps ~3 digits.
  k = jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_PRECISION,
                          preferred_element_type=_at_least_float32(a.dtype))
  k = k.reshape(j1.shape[0], *u_shape, j2.shape[0], *u_shape)
  n_u = len(u_shape)
  zipped = [0, 1 + n_u]
  for i in range(n_u):
    zipped += [1 + i, 2 + n_u + i]
  return jnp.transpose(k, zipped)


@functools.partial(jax.jit, static_argnames=('traced', 'mesh'))
def _contract_block(traced: tuple[bool, ...], j1: list, j2: list, mesh=None):
  """NTK block from two Jacobian blocks: `[b1, b2, ...]` (zipped untraced output axes).

  With a `mesh`, each device contracts its `b1` rows of `j1` with the whole of `j2`
  (gathered onto every device).
  """

  def contract(j1, j2):
    scale = _trace_scale(j1[0].shape[1:-1], traced)
    return sum(_contract_pair(traced, a, b) for a, b in zip(j1, j2)) / scale

  return _per_device(contract, mesh, (True, False))(j1, j2)


@functools.partial(jax.jit, static_argnames=('spec', 'mesh'))
def _vector_products_block(spec: _KernelSpec, params, projection_key, x1_b, x2_b, mesh=None):
  """NTK block by vjp of f(x2) on basis cotangents, then jvp of f(x1) along each result.

  No Jacobian is formed as an array of its own: each column of J(x2)^T is a tangent that
  is pushed straight through a jvp (vmapped over the block). With a `mesh`, each device
  pushes the tangents of the whole `x2` block through its rows of `x1`.
  """
  return _per_device(functools.partial(_vector_products, spec), mesh,
                     (False, False, True, False))(params, projection_key, x1_b, x2_b)


def _vector_products(spec: _KernelSpec, params, projection_key, x1_b, x2_b):
  """`_vector_products_block` on one device (its rows of `x1`, the whole `x2` block)."""
  selected, rebuild = _split(params, spec.mask)
  indices = _selected_indices(spec.mask)

  def f_single(sel, x_i):
    return spec.apply_fn(rebuild(sel), x_i[None])[0]

  out = jax.eval_shape(f_single, selected, x2_b[0])
  out_shape = tuple(out.shape)
  c = math.prod(out_shape)

  if spec.batched:
    def tangents_of(x_i):
      _, pullback = jax.vjp(lambda sel: f_single(sel, x_i), selected)
      basis = jnp.eye(c, dtype=out.dtype).reshape(c, *out_shape)
      return jax.vmap(pullback)(basis)[0]
    tangents = jax.vmap(tangents_of)(x2_b)  # leaves [b2, c, *leaf]
  else:
    b2 = x2_b.shape[0]
    _, pullback = jax.vjp(lambda sel: spec.apply_fn(rebuild(sel), x2_b), selected)
    basis = jnp.eye(b2 * c, dtype=out.dtype).reshape(b2 * c, b2, *out_shape)
    tangents = jax.vmap(pullback)(basis)[0]  # leaves [b2 * c, *leaf]
  b2 = x2_b.shape[0]
  tangents = [t.reshape(b2 * c, *leaf.shape) for t, leaf in zip(tangents, selected)]

  if spec.projection_dim is not None:
    # (J2 P)(P^T ...): project each tangent to k dims and back, so the jvp below sees
    # the tangent P P^T J2^T e and the kernel becomes J1 P P^T J2^T.
    z = _flatten_and_project(tangents, (b2 * c,), indices, spec.projection_dim,
                             spec.projection_kind, projection_key)
    tangents = [
        _unproject_leaf(z, jax.random.fold_in(projection_key, index), leaf.size,
                        spec.projection_kind).reshape(b2 * c, *leaf.shape).astype(leaf.dtype)
        for leaf, index in zip(selected, indices)
    ]

  def push(tangent):
    return jax.jvp(lambda sel: spec.apply_fn(rebuild(sel), x1_b), (selected,), (tangent,))[1]

  # The jvp runs in the model's dtype, so a bfloat16 model's entries carry bfloat16
  # rounding; they are returned (and traced) in at least float32 like the other paths.
  k_full = jax.vmap(push)(tangents)  # [b2 * c, b1, *o]
  k_full = k_full.astype(_at_least_float32(k_full.dtype))
  b1 = x1_b.shape[0]
  k_full = k_full.reshape(b2, *out_shape, b1, *out_shape)
  ndim = len(out_shape)
  # -> [b1, *o, b2, *o]
  k_full = jnp.transpose(k_full, (ndim + 1, *range(ndim + 2, 2 * ndim + 2), 0,
                                  *range(1, ndim + 1)))
  return (jnp.einsum(_trace_subscripts(spec.traced), k_full)
          / _trace_scale(out_shape, spec.traced))


def _import_neural_tangents():
  try:
    import neural_tangents  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "implementation='neural_tangents' needs the optional neural-tangents package, "
        'which is not importable here. Use the .venv-nt environment (see the Makefile) or '
        "`pip install dv_jax[nt]`; or pick implementation='jacobian_contraction' or "
        "'ntk_vector_products', which agree with it numerically.") from e
  return neural_tangents


@functools.partial(jax.jit, static_argnames=('spec', 'trace_axes', 'mesh'))
def _neural_tangents_block(spec: _KernelSpec, trace_axes: tuple[int, ...], params,
                           projection_key, x1_b, x2_b, mesh=None):
  """NTK block computed by neural_tangents.empirical_ntk_fn (its default implementation).

  The filter and the projection are mapped by reparameterisation: neural-tangents
  differentiates `f(z, x) = apply_fn(theta with selected leaves + P z, x)` at `z = 0`,
  whose Jacobian is `J P` (or, without a projection, `f(sel, x)` directly). With a
  `mesh`, each device computes its rows of `x1` against the whole `x2` block.
  """
  return _per_device(functools.partial(_neural_tangents, spec, trace_axes), mesh,
                     (False, False, True, False))(params, projection_key, x1_b, x2_b)


def _neural_tangents(spec: _KernelSpec, trace_axes: tuple[int, ...], params, projection_key,
                     x1_b, x2_b):
  """`_neural_tangents_block` on one device (its rows of `x1`, the whole `x2` block)."""
  nt = _import_neural_tangents()
  selected, rebuild = _split(params, spec.mask)
  indices = _selected_indices(spec.mask)
  if spec.projection_dim is None:
    def f(sel, x):
      return spec.apply_fn(rebuild(sel), x)
    primal = selected
  else:
    def f(z_k, x):
      shifted = [
          leaf + _unproject_leaf(z_k[None].astype(leaf.dtype),
                                 jax.random.fold_in(projection_key, index), leaf.size,
                                 spec.projection_kind).reshape(leaf.shape).astype(leaf.dtype)
          for leaf, index in zip(selected, indices)
      ]
      return spec.apply_fn(rebuild(shifted), x)
    primal = jnp.zeros((spec.projection_dim,), jnp.result_type(*selected))
  ntk_fn = nt.empirical_ntk_fn(f, trace_axes=trace_axes,
                               vmap_axes=0 if spec.batched else None,
                               implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION)
  block = ntk_fn(x1_b, x2_b, primal)
  return block.astype(_at_least_float32(block.dtype))


def _swap_sides(block, n_untraced: int):
  """`K(x2, x1)` from `K(x1, x2)`: swap the two example axes and each zipped output pair."""
  perm = [1, 0]
  for a in range(n_untraced):
    perm += [2 + 2 * a + 1, 2 + 2 * a]
  return jnp.transpose(block, perm)


def empirical_ntk_fn(apply_fn: Callable, *, trace_axes: Sequence[int] = (-1,),
                     vmap_axes: Optional[int] = 0,
                     implementation: str = 'jacobian_contraction',
                     block_size: Optional[int] = None,
                     param_filter: ParamFilter = None,
                     projection: Optional[Projection] = None,
                     mesh: Optional[jax.sharding.Mesh] = None) -> Callable:
  """Returns `ntk_fn(x1, x2, params)`, the empirical NTK `J(x1) J(x2)^T` of `apply_fn`.

  The semantics are those of `neural_tangents.empirical_ntk_fn` (with `diagonal_axes=()`):
  for outputs `f(x)[b, o_1, ..., o_r]`, the kernel is
  `K[a, b, o, o'] = sum_p J(x1)[a, o, p] J(x2)[b, o', p]`; each axis in `trace_axes` is
  traced (its pair replaced by the sum over its diagonal) and the result divided by the
  product of the traced sizes, i.e. traced axes are AVERAGED, as neural-tangents does.
  The untraced output axes appear twice, zipped: `[n1, n2, o_1, o_1, o_2, o_2, ...]`. For
  logits `[b, c]`: `trace_axes=(-1,)` gives `[n1, n2]` (the mean over classes of the
  per-class NTK) and `trace_axes=()` gives `[n1, n2, c, c]`.

  With a `mesh` (see the module docstring), each kernel block is computed with its `x1`
  rows split over the mesh's devices (`params` and the projection key replicated), each
  device against the whole `x2` block, then gathered onto the mesh's first device. The
  Jacobian contraction also splits the `x2` block's Jacobian and gathers it onto every
  device for the contraction; the vector-product and neural-tangents implementations
  compute the `x2` side on every device. A kernel entry sums over parameters, never over
  examples, so the result equals the unsharded one up to float32 rounding (XLA may tile
  the sums differently for `block_size / mesh.size` rows); tests/test_data_parallel.py
  asserts 1e-5 of the largest entry.

  Args:
    apply_fn: `apply_fn(params, x[b, ...]) -> out[b, ...]`, e.g. a flax `model.apply` or a
      stax-style apply function with list/tuple params.
    trace_axes: output axes of `apply_fn`'s result to trace over; the batch axis 0 cannot
      be traced.
    vmap_axes: 0 if the outputs of different examples are independent (no batch
      statistics); blocking and per-example Jacobians rely on it. None if examples
      interact: then the whole batch is one block (`block_size` must be None).
    implementation: 'jacobian_contraction' (per-block Jacobians, contracted),
      'ntk_vector_products' (vjp/jvp, no Jacobian array) or 'neural_tangents' (calls
      neural_tangents.empirical_ntk_fn per block; needs the optional package).
    block_size: examples per block on each side, the last block padded; None means one
      block per side (compiled for each shape). With a `mesh`, a multiple of `mesh.size`.
    param_filter: which leaves to differentiate (see the module docstring).
    projection: optional `Projection`; the kernel becomes `(J P)(J P)^T`.
    mesh: optional `jax.sharding.Mesh` of this process's devices to split each block's
      examples over; `data_parallel_mesh()` is the usual one. Needs `vmap_axes=0`.

  Returns:
    `ntk_fn(x1, x2, params) -> Array[n1, n2, ...]`, at least float32 (see "Dtypes" in
    the module docstring); `x2=None` means `x2 = x1` (and only the upper block triangle is
    computed).

  Raises:
    ValueError: for an unknown `implementation`, a bad `vmap_axes`, `trace_axes`,
      `block_size`, `projection` or `mesh` (its size must divide `block_size`); `ntk_fn`
      raises it for bad inputs (NaN/Inf, empty, mismatched trailing shapes) and for a
      filter selecting nothing.
    ImportError: for 'neural_tangents' when the package is not installed.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'implementation must be one of {IMPLEMENTATIONS}, got '
                     f'{implementation!r}.')
  if vmap_axes not in (0, None) or isinstance(vmap_axes, bool):
    raise ValueError(f'vmap_axes must be 0 (independent examples) or None, got {vmap_axes!r}.')
  try:
    # check_int, not int(): int(1.5) == 1 and int(True) == 1 would trace another axis.
    trace_axes = tuple(checks.check_int(a, 'trace_axes entry', minimum=None)
                       for a in trace_axes)
  except TypeError as e:
    raise ValueError(f'trace_axes must be a sequence of ints, got {trace_axes!r}.') from e
  block_size = _check_block_size(block_size, allow_none=True)
  if vmap_axes is None and block_size is not None:
    raise ValueError('block_size must be None when vmap_axes is None: examples interact, '
                     'so the batch cannot be split into blocks.')
  if vmap_axes is None and mesh is not None:
    raise ValueError('mesh must be None when vmap_axes is None: examples interact, so they '
                     'cannot be split over devices.')
  placement = _placement(mesh, block_size)
  _check_projection(projection)
  if implementation == 'neural_tangents':
    _import_neural_tangents()
  if not callable(apply_fn):
    raise ValueError('apply_fn must be callable.')

  def ntk_fn(x1: ArrayLike, x2: Optional[ArrayLike], params: PyTree) -> jax.Array:
    symmetric = x2 is None
    x1 = _check_batch(x1, 'x1')
    x2 = x1 if symmetric else _check_batch(x2, 'x2')
    if x2.shape[1:] != x1.shape[1:]:
      raise ValueError(f'x2 examples have shape {x2.shape[1:]}, x1 examples {x1.shape[1:]}.')
    mask = _selection_mask(params, param_filter)
    _check_params(params, mask)

    out = jax.eval_shape(apply_fn, params, x1[:1])
    out_ndim = len(out.shape)
    if out_ndim < 1 or out.shape[0] != 1:
      raise ValueError(f'apply_fn must return [b, ...] with a leading batch axis; for one '
                       f'example it returned shape {out.shape}.')
    canonical = set()
    for a in trace_axes:
      if not -out_ndim <= a < out_ndim:
        raise ValueError(f'trace_axes {trace_axes} out of range for outputs of rank '
                         f'{out_ndim}.')
      canonical.add(a % out_ndim)
    if 0 in canonical:
      raise ValueError(f'trace_axes {trace_axes} includes the batch axis 0.')
    traced = tuple(i in canonical for i in range(1, out_ndim))
    n_untraced = traced.count(False)

    spec = _KernelSpec(apply_fn, traced, vmap_axes == 0, mask,
                       None if projection is None else int(projection.dim),
                       None if projection is None else projection.kind)
    key = None if projection is None else projection.key
    params, key = _replicate(placement, params, key)
    block_mesh = None if placement is None else placement.mesh
    n1, n2 = x1.shape[0], x2.shape[0]
    b1 = block_size or n1
    b2 = block_size or n2
    x1_pad, x2_pad = _pad_rows(x1, b1), _pad_rows(x2, b2)
    starts1 = range(0, x1_pad.shape[0], b1)
    starts2 = range(0, x2_pad.shape[0], b2)

    split = functools.partial(_split_examples, placement)
    gathered = functools.partial(_gathered, placement)

    def whole(x_b):  # a block on every device of the mesh (on one without a mesh)
      if placement is None:
        return _on_one_device(x_b)
      return jax.device_put(x_b, placement.replicated)

    if implementation == 'jacobian_contraction':
      # The Jacobian does not depend on the trace axes: one compile serves all of them.
      jac_spec = spec._replace(traced=())

      def jacobian(x_b):
        return _jacobian_block(jac_spec, params, key, split(x_b), mesh=block_mesh)

      def row_blocks(i, s1):
        j1 = jacobian(x1_pad[s1:s1 + b1])
        for j, s2 in enumerate(starts2):
          if symmetric and j < i:
            yield None
          elif symmetric and j == i:
            yield gathered(_contract_block(traced, j1, j1, mesh=block_mesh))
          else:
            yield gathered(_contract_block(traced, j1, jacobian(x2_pad[s2:s2 + b2]),
                                           mesh=block_mesh))
    elif implementation == 'ntk_vector_products':
      def row_blocks(i, s1):
        for j, s2 in enumerate(starts2):
          yield None if symmetric and j < i else gathered(_vector_products_block(
              spec, params, key, split(x1_pad[s1:s1 + b1]), whole(x2_pad[s2:s2 + b2]),
              mesh=block_mesh))
    else:
      def row_blocks(i, s1):
        for j, s2 in enumerate(starts2):
          yield None if symmetric and j < i else gathered(_neural_tangents_block(
              spec, trace_axes, params, key, split(x1_pad[s1:s1 + b1]),
              whole(x2_pad[s2:s2 + b2]), mesh=block_mesh))

    grid = [list(row_blocks(i, s1)) for i, s1 in enumerate(starts1)]
    if symmetric:
      for i in range(len(grid)):
        for j in range(i):
          grid[i][j] = _swap_sides(grid[j][i], n_untraced)
    rows = [row[0] if len(row) == 1 else jnp.concatenate(row, axis=1) for row in grid]
    kernel = rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=0)
    return kernel[:n1, :n2]

  return ntk_fn
