"""Checks of single config fields, each raising a `ValueError` that names `config.<field>`.

One wording for the library's own config checks (each baseline's `check_config`) and the
experiment scripts' (`check_config` before any unit), so that a bad setting fails before
the work it would otherwise follow, and says which key to fix. `field` is always the
dotted path under `config`, e.g. `'baselines.trak.grad_block_size'` or `'fit.ci_level'`.
"""

import math
from typing import Any, Callable, Optional

import numpy as np

from dv_jax import checks


def config_int(value: Any, field: str, *, minimum: Optional[int] = 1,
               maximum: Optional[int] = None) -> int:
  """`config.<field>` as an int in `[minimum, maximum]` (None: unbounded); a whole float
  is accepted.

  Raises:
    ValueError: `config.<field> must be an integer >= <minimum>` (`dv_jax.checks.check_int`),
      for a bool, None, a string, a fraction, NaN / Inf or a value below `minimum`.
  """
  return checks.check_int(value, f'config.{field}', minimum=minimum, maximum=maximum)


def config_seed(config: Any) -> int:
  """`config.seed`, the seed a method derives its keys from, as an int in
  `[0, dv_jax.checks.MAX_SEED]`.

  Raises:
    ValueError: naming `config.seed` when it is missing, not a whole number (`int()`
      would cut 1.5 to 1 and read True as 1, or fail on None / NaN without naming it), or
      outside the range (`PRNGKey` keeps a seed's low 32 bits: 2**32 is seed 0 again).
  """
  return checks.check_seed(config.get('seed', None), 'config.seed')


def seed_field(value: Any, field: str) -> int:
  """`config.<field>`, a seed of one part of a task (data split, contributors, init), as an
  int in `[0, dv_jax.checks.MAX_SEED]`.

  Raises:
    ValueError: naming `config.<field>`, as `config_seed` does: `PRNGKey` keeps a seed's low
      32 bits, so 2**32 would silently be seed 0 again and -1 seed 2**32 - 1.
  """
  return checks.check_seed(value, f'config.{field}')


def config_float(value: Any, field: str, ok: Callable[[float], bool], allowed: str) -> float:
  """`config.<field>` as a finite float for which `ok` holds; `allowed` says what that is.

  Raises:
    ValueError: `config.<field> must be <allowed>`, for a bool, None, a string that is not
      a number ('0.5' is read as 0.5), NaN / Inf or a value `ok` refuses.
  """
  scalar = checks.unwrap_scalar(value)  # float(np.array(True)) would be 1.0
  try:
    number = float(scalar) if not isinstance(scalar, (bool, np.bool_)) else math.nan
  except (TypeError, ValueError):  # None, a string
    number = math.nan
  if not (math.isfinite(number) and ok(number)):
    raise ValueError(f'config.{field} must be {allowed}, got {value!r}')
  return number


def config_positive_float(value: Any, field: str) -> float:
  """`config.<field>` as a finite float > 0 (a jitter, a ridge, a length scale)."""
  return config_float(value, field, lambda v: v > 0, 'finite and > 0')


def config_bool(value: Any, field: str) -> bool:
  """`config.<field>` as a bool: `True` / `False` only (not 1, 0 or the string 'False')."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'config.{field} must be True or False, got {value!r}')
  return bool(value)


__all__ = ['config_bool', 'config_float', 'config_int', 'config_positive_float']
