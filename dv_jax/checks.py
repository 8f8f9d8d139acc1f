"""Checks of the library's function arguments, each raising a `ValueError` that names one.

One rule and one wording for "this argument is a whole number" (a count, a size, a block
size, a seed), so that every function refuses the same inputs in the same words. Fields of
a config go through `dv_jax.config_checks`, which words its errors as `config.<field>` and
delegates its integer check here.
"""

import math
from typing import Any, Optional

import jax
import numpy as np


def unwrap_scalar(value: Any) -> Any:
  """The scalar a 0-d NumPy / JAX array (or NumPy scalar) holds; anything else as it is.

  Type tests then see what the array holds: `np.array(True)` is no `np.bool_`, and
  `float()` would read it as 1.0.
  """
  return np.asarray(value)[()] if getattr(value, 'shape', None) == () else value


def _whole_number(value: Any) -> Optional[int]:
  """`value` as an int if it is a whole number (3, np.int64(3), 3.0), else None."""
  value = unwrap_scalar(value)
  if isinstance(value, (bool, np.bool_)):  # True is an int to Python, never a count here
    return None
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(
      value).is_integer():
    return int(value)
  return None


def check_int(value: Any, name: str, *, minimum: Optional[int] = 1,
              maximum: Optional[int] = None) -> int:
  """`value` as an int in `[minimum, maximum]`; a whole float (3.0) is accepted.

  Accepts Python ints, NumPy integers, finite whole floats and 0-d arrays of these; refuses
  bool / `np.bool_`, None, strings, fractions (2.5), NaN and Inf, rather than cutting or
  reading them (`int(2.5) == 2`, `int(True) == 1`).

  Args:
    value: the argument.
    name: its name in the message (`'block_size'`, `'config.train.steps'`).
    minimum: the smallest value allowed; None for no lower bound.
    maximum: the largest value allowed (inclusive); None for no upper bound.

  Returns:
    `value` as a Python int.

  Raises:
    ValueError: `<name> must be an integer >= <minimum>, got <value!r>` (`in [<minimum>,
      <maximum>]` when both bounds are given).
  """
  number = _whole_number(value)
  if (number is None or (minimum is not None and number < minimum)
      or (maximum is not None and number > maximum)):
    if minimum is not None and maximum is not None:
      wanted = f' in [{minimum}, {maximum}]'
    elif minimum is not None:
      wanted = f' >= {minimum}'
    elif maximum is not None:
      wanted = f' <= {maximum}'
    else:
      wanted = ''
    raise ValueError(f'{name} must be an integer{wanted}, got {value!r}')
  return number


# `jax.random.PRNGKey` keeps a seed's low 32 bits: PRNGKey(2**32) is PRNGKey(0)'s key and
# PRNGKey(-1) is PRNGKey(2**32 - 1)'s, so a seed outside [0, MAX_SEED] silently repeats
# another seed's draws; NumPy's generators refuse negative seeds outright.
MAX_SEED = 2**32 - 1


def check_seed(value: Any, name: str = 'seed') -> int:
  """`value` as a seed: an int in `[0, MAX_SEED]`, each naming a PRNG key of its own.

  Raises:
    ValueError: `<name> must be an integer in [0, 4294967295], got <value!r>`.
  """
  return check_int(value, name, minimum=0, maximum=MAX_SEED)


def check_indices(indices: Any, name: str = 'indices') -> np.ndarray:
  """`indices` as a 1-D int64 array of positions; an empty list is fine.

  Refuses a boolean mask and float positions instead of casting them: `np.asarray(mask,
  np.int64)` reads `[True, False, True]` as the positions 1, 0, 1, and 2.7 as 2.

  Raises:
    ValueError: naming `name`, for a non-integer dtype or an array that is not 1-D.
  """
  idx = np.asarray(indices)
  if idx.size and not np.issubdtype(idx.dtype, np.integer):
    hint = ' (for a boolean mask pass np.flatnonzero(mask))' if idx.dtype == bool else ''
    raise ValueError(f'{name} must be integers, got dtype {idx.dtype}{hint}')
  if idx.ndim != 1:
    raise ValueError(f'{name} must be 1-D, got shape {idx.shape}')
  return idx.astype(np.int64)


def real_number(value: Any) -> Optional[float]:
  """`value` as a Python float if it is a real number (NaN and Inf included), else None.

  None for a bool, a string (even '2', which `float()` would read), bytes, None, a complex
  number and anything `float()` refuses; each caller words its own error and range,
  naming its argument.
  """
  value = unwrap_scalar(value)
  if isinstance(value, (bool, np.bool_, str, bytes, complex, np.complexfloating)):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def unit_fraction(value: Any) -> Optional[float]:
  """`value` as a float in [0, 1] (a fraction, a share), or None if it is not one.

  None also for a bool, a string (even '0.5', which `float()` would read), None, NaN and
  anything `float()` refuses; each caller words its own error, naming its argument.
  """
  number = real_number(value)
  if number is None:
    return None
  return number if 0.0 <= number <= 1.0 else None  # NaN fails both comparisons


def check_key(key: Any, name: str = 'key') -> Any:
  """`key` unchanged if it is one JAX PRNG key: a raw `uint32 [2]` (`jax.random.PRNGKey`,
  `[4]` under the rbg implementation) or a typed scalar key (`jax.random.key`).

  Only the dtype and shape are read, so a traced key passes too. Without this check an int
  seed, None or a batch of keys reaches `jax.random` and fails there with an error that
  does not name the argument (or, for a batch, draws a batch of streams).

  Raises:
    ValueError: `<name> must be a single jax.random.PRNGKey ...`, naming what it got.
  """
  dtype, shape = getattr(key, 'dtype', None), getattr(key, 'shape', None)
  if dtype is not None and shape is not None:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      if shape == ():
        return key
    elif dtype == np.uint32 and len(shape) == 1 and shape[0] in (2, 4):
      return key
    got = f'dtype {dtype}, shape {tuple(shape)}'
  else:
    got = repr(key)
  hint = ' (for a seed pass jax.random.PRNGKey(seed))' if isinstance(key, int) else ''
  raise ValueError(f'{name} must be a single jax.random.PRNGKey (uint32 [2]) or typed key, '
                   f'got {got}{hint}')


def non_finite_leaf(tree: Any) -> Optional[str]:
  """The path (`jax.tree_util.keystr`) of the first leaf of `tree` holding NaN or Inf, or
  None; traced leaves, whose values are unknown, are skipped."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not isinstance(leaf, jax.core.Tracer) and not bool(np.isfinite(leaf).all()):
      return jax.tree_util.keystr(path)
  return None


__all__ = ['MAX_SEED', 'check_indices', 'check_int', 'check_key', 'check_seed',
           'non_finite_leaf', 'real_number', 'unit_fraction', 'unwrap_scalar']
