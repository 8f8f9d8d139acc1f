"""Boundary checks the gradient baselines share (TracIn, TRAK).

Each raises a `ValueError` that names the config field or argument, so that a bad value
fails before the training it would otherwise follow.
"""

from typing import Any

import jax
import jax.numpy as jnp


def config_int(value: Any, field: str, *, minimum: int = 1) -> int:
  """`config.<field>` as an int >= `minimum` (an integral float is accepted).

  Args:
    value: the field's value.
    field: its dotted path under `config`, e.g. `'baselines.trak.grad_block_size'`.
    minimum: the least value allowed.

  Raises:
    ValueError: naming `config.<field>`, for a bool, None, a string, a fraction or a value
      below `minimum`.
  """
  try:
    ok = not isinstance(value, bool) and float(value).is_integer() and value >= minimum
  except (TypeError, ValueError):  # None, a string
    ok = False
  if not ok:
    raise ValueError(f'config.{field} must be an int >= {minimum}, got {value!r}')
  return int(value)


def example_rows(array: Any, name: str, *, width: str) -> jax.Array:
  """`array` as a finite `[rows >= 1, width]` matrix (one row per example).

  Args:
    array: per-example gradients or features.
    name: the argument named by the error.
    width: how the error spells the second axis (`'p'` parameters, `'k'` projected).

  Raises:
    ValueError: naming `name`, for another rank, no rows, or NaN / Inf (which would turn
      every score summed over it into NaN).
  """
  array = jnp.asarray(array)
  if array.ndim != 2 or array.shape[0] < 1:
    raise ValueError(f'{name} must be [rows, {width}] with at least one row, got shape '
                     f'{array.shape}')
  if not bool(jnp.isfinite(array).all()):
    raise ValueError(f'{name} contains NaN or Inf')
  return array
