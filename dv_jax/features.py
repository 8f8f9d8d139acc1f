"""Feature spaces `phi` for the discrepancy term (METHOD.md section 2, term 2).

The MMD between the target `T` and a contributor's parts is measured in a feature space:

- `raw`: the flattened inputs.
- `init_features`: the penultimate features of the model at `theta0`, i.e. the input of
  the model's LAST `flax.linen.Dense` call (the readout). They are captured with
  `flax.linen.intercept_methods`, so any `apply_fn(params, x)` that runs a flax.linen
  module works, without a `features` method or `capture_intermediates` (which records
  outputs, not the readout's input). For `dv_jax.models.MLP` and `SmallCNN` this is exactly
  what `model.apply(..., return_features=True)` returns (tested).
- a user callable `x [n, ...] -> [n, d]`.

Either way the features are then standardised with the target's per-feature mean and
standard deviation (`standardize_like`), so one kernel bandwidth (the median heuristic of
`T`) suits every feature. Features constant on `T` keep scale 1 (dividing by a ~0 std
would blow up any contributor that varies there).

Shape legend: `n` examples, `m` target examples, `d` features, `b` examples in a block.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks

ArrayLike = jax.typing.ArrayLike

FEATURE_SPACES = ('raw', 'init_features', 'user')
# A feature whose target standard deviation is below this is treated as constant.
_MIN_STD = 1e-6


class Standardizer(NamedTuple):
  """Per-feature affine map `(f - mean) / scale` fitted on the target.

  Attributes:
    mean: `[d]`.
    scale: `[d]`, the target std, or 1 where the target is (nearly) constant.
  """
  mean: jax.Array
  scale: jax.Array


def flatten(x: ArrayLike) -> jax.Array:
  """`[n, ...] -> [n, d]` float32 (the `raw` feature space).

  Raises:
    ValueError: naming `x`, for a scalar or no rows (`n = 0`).
  """
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[0] == 0:
    raise ValueError(f'x must be [n, ...] with n >= 1 examples, got shape {x.shape}')
  return x.reshape((x.shape[0], -1)).astype(jnp.float32)


def _last_dense_input(apply_fn: Callable, params: Any, x_b: jax.Array) -> jax.Array:
  """Runs `apply_fn` and returns the input of its last `nn.Dense` call, `[b, d]`."""
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
      captured.append(args[0])
    return out

  with nn.intercept_methods(interceptor):
    apply_fn(params, x_b)
  if not captured:
    raise ValueError('init_features: apply_fn ran no flax.linen.Dense layer, so there is no '
                     'readout whose input could serve as penultimate features; pass a user '
                     'feature function instead')
  features = captured[-1]
  if features.ndim != 2:
    # A sequence model's readout reads per-position states [b, t, d]. Flattening them
    # would compare sequences position by position, padding included; METHOD.md's LM
    # feature is their mean over real tokens, which needs the attention mask.
    raise ValueError(
        f'init_features: the last Dense layer reads inputs of shape {features.shape}, not '
        '[b, d] (per-position states of a sequence model?); for an LM use '
        "dv_jax.tasks.lm_features_fn (its mean-pooled last hidden state) with "
        "mmd.feature_space='user'")
  return features


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def _features_block(apply_fn, params, x_b):
  return _last_dense_input(apply_fn, params, x_b)


def _pad_rows(x: jax.Array, block: int) -> jax.Array:
  """Pads the leading axis to a multiple of `block` by repeating the last row."""
  pad = -x.shape[0] % block
  if pad == 0:
    return x
  return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)


def init_features(apply_fn: Callable, params: Any, x: ArrayLike, *,
                  block_size: int = 256) -> jax.Array:
  """Penultimate features at `theta0`: the input of the last `nn.Dense` layer.

  Computed in jitted blocks of `min(block_size, next_pow2(n))` rows (the last one padded),
  so one compile serves every `n >= block_size` and one per power of two below it (a small
  `x` is not padded to a whole block).

  Args:
    apply_fn: `apply_fn(params, x [b, ...]) -> logits [b, c]` running a flax.linen module
      (e.g. from `dv_jax.models.bind_apply`). Reuse the same object to reuse the compile.
    params: parameters, normally `theta0`.
    x: `[n, ...]` inputs.
    block_size: rows per jitted block.

  Returns:
    `[n, d]` float32 features.

  Raises:
    ValueError: for empty or non-finite `x`, a bad `block_size`, a model without a
      `Dense` layer, or one whose last `Dense` reads more than `[b, d]` (an LM's
      per-position states: use `dv_jax.tasks.lm_features_fn`).
  """
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[0] == 0:
    raise ValueError(f'x must be a non-empty batch [n, ...], got shape {x.shape}')
  if jnp.issubdtype(x.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError('x contains NaN or Inf')
  block_size = checks.check_int(block_size, 'block_size')
  n = x.shape[0]
  block = min(int(block_size), 1 << (n - 1).bit_length())  # next power of two >= n
  x_pad = _pad_rows(x, block)
  blocks = [_features_block(apply_fn, params, x_pad[s:s + block])
            for s in range(0, x_pad.shape[0], block)]
  out = blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=0)
  return out[:n].astype(jnp.float32)


def feature_fn(kind: str, *, apply_fn: Optional[Callable] = None, params: Any = None,
               user_fn: Optional[Callable] = None, block_size: int = 256
               ) -> Callable[[ArrayLike], jax.Array]:
  """The feature map `phi: x [n, ...] -> [n, d]` of a feature space (before standardising).

  Args:
    kind: `'raw'`, `'init_features'` or `'user'`.
    apply_fn: needed by `init_features`.
    params: `theta0`, needed by `init_features`.
    user_fn: needed by `user`: `x [n, ...] -> [n, d]`.
    block_size: rows per block for `init_features`.

  Returns:
    `phi`.

  Raises:
    ValueError: unknown `kind`, or the function it needs is missing; `phi` of `'user'`
      raises when `user_fn` returns other than `[n, d]` or non-finite values.
  """
  if kind == 'raw':
    return flatten
  if kind == 'init_features':
    if apply_fn is None or params is None:
      raise ValueError("feature space 'init_features' needs apply_fn and params")
    return lambda x: init_features(apply_fn, params, x, block_size=block_size)
  if kind == 'user':
    if user_fn is None or not callable(user_fn):
      raise ValueError("feature space 'user' needs a callable features_fn(x) -> [n, d]")

    def phi(x):
      out = jnp.asarray(user_fn(x))
      if out.ndim != 2 or out.shape[0] != np.shape(x)[0]:
        raise ValueError(f'features_fn must return [n, d] = [{np.shape(x)[0]}, d], got '
                         f'shape {out.shape}')
      # The user function is the boundary: without this check a NaN feature surfaces
      # later as an MMD error about `x`, or as NaN terms after standardising.
      if not bool(jnp.all(jnp.isfinite(out))):
        raise ValueError('features_fn returned NaN or Inf features')
      return out.astype(jnp.float32)
    return phi
  raise ValueError(f'feature space must be one of {FEATURE_SPACES}, got {kind!r}')


def fit_standardizer(target_features: ArrayLike) -> Standardizer:
  """Per-feature mean and std of the target features (std 1 where T is constant).

  The std is the population one (ddof 0), our choice where METHOD.md says only "T's
  mean/std". Unless a feature is constant on T (scale 1 either way), it does not reach the
  MMD: ddof 1 would scale every feature by the same `sqrt(m / (m - 1))`, and the bandwidths,
  the median heuristic of T in the same space, scale with the squared distances, so every
  kernel value stays the same.

  Args:
    target_features: `[m, d]`, m >= 1.

  Returns:
    `Standardizer(mean [d], scale [d])`.

  Raises:
    ValueError: not `[m, d]`, empty, or non-finite.
  """
  f = jnp.asarray(target_features, jnp.float32)
  if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
    raise ValueError(f'target_features must be a non-empty [m, d], got shape {f.shape}')
  if not bool(jnp.all(jnp.isfinite(f))):
    raise ValueError('target_features contains NaN or Inf')
  mean = jnp.mean(f, axis=0)
  std = jnp.std(f, axis=0)
  # A feature constant on T can still get a float32 std far above _MIN_STD: its mean is
  # rounded (m copies of 3.3 average to 3.3 +- 1 ulp), and every row then differs from it.
  # So constancy is decided exactly, and such a feature is centred on its exact value.
  constant = jnp.all(f == f[:1], axis=0)
  mean = jnp.where(constant, f[0], mean)
  return Standardizer(mean, jnp.where((std > _MIN_STD) & ~constant, std, 1.0))


def standardize_like(features: ArrayLike, standardizer: Standardizer) -> jax.Array:
  """`(features - mean) / scale` with the target's `Standardizer`; `[n, d] -> [n, d]`.

  Raises:
    ValueError: `features` not `[n, d]` with the standardizer's `d`, or NaN/Inf.
  """
  f = jnp.asarray(features, jnp.float32)
  if f.ndim != 2 or f.shape[1] != standardizer.mean.shape[0]:
    raise ValueError(f'features must be [n, {standardizer.mean.shape[0]}], got shape '
                     f'{f.shape}')
  if not bool(jnp.all(jnp.isfinite(f))):
    raise ValueError('features contains NaN or Inf')
  return (f - standardizer.mean[None, :]) / standardizer.scale[None, :]


__all__ = ['FEATURE_SPACES', 'Standardizer', 'flatten', 'init_features', 'feature_fn',
           'fit_standardizer', 'standardize_like']
