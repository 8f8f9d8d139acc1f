"""A seeded random ranking: the floor every valuation method must clear (METHOD.md 3).

Values are i.i.d. uniform draws from a key derived from `config.seed` (and
`baselines.random.seed_offset`), so the ranking is reproducible and independent of the
data; its expected Spearman correlation with any ground truth is 0.

Shape legend: `K` contributors.
"""

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dv_jax import config_checks
from dv_jax import valuation
from dv_jax.baselines import checks
from dv_jax.data.contributors import Contributor


_MAX_SEED_OFFSET = 2**32 - 1 - 14  # `value` folds in 14 + seed_offset, a uint32


def default_config() -> ml_collections.ConfigDict:
  """The `baselines.random` section."""
  return ml_collections.ConfigDict(dict(seed_offset=0))


def check_config(config: ml_collections.ConfigDict) -> int:
  """Checks `config.baselines.random` without touching data or model.

  Args:
    config: with `seed` and `baselines.random`.

  Returns:
    `seed_offset`.

  Raises:
    ValueError: naming the field: a missing section or a key it does not know, `seed` not
      an int in `[0, 2^32 - 1]`, or `seed_offset` not an int in `[0, 2^32 - 15]` (`value`
      folds in `14 + seed_offset`, and `jax.random.fold_in` takes an unsigned 32-bit
      integer).
  """
  cfg = checks.config_section(config, 'random', fields=default_config().keys())
  config_checks.config_seed(config)
  seed_offset = config_checks.config_int(cfg.seed_offset, 'baselines.random.seed_offset',
                                         minimum=0)
  if seed_offset > _MAX_SEED_OFFSET:
    raise ValueError(f'config.baselines.random.seed_offset must be <= {_MAX_SEED_OFFSET} '
                     f'(14 + seed_offset is folded into a uint32), got {seed_offset}')
  return seed_offset


def value(contributors: Sequence[Contributor], target: Any, *, apply_fn: Callable,
          params: Any, config: ml_collections.ConfigDict) -> valuation.ValuationResult:
  """Uniform random values `[K]` from `fold_in(PRNGKey(seed), 14 + seed_offset)`.

  The inputs are validated like every other method's (so bad data fails the same way),
  but the values do not depend on them.

  Args:
    contributors: `K` contributors.
    target: `T` (`Split` or `(x, y)`).
    apply_fn: `apply_fn(params, x [b, ...]) -> logits [b, c]` (only validated).
    params: `theta0` (only validated).
    config: with `seed` and `baselines.random`.

  Returns:
    `ValuationResult`.

  Raises:
    ValueError: as `check_config`; as `valuation.validate_inputs`.
  """
  t0 = time.perf_counter()
  seed_offset = check_config(config)
  valuation.validate_inputs(contributors, target, apply_fn=apply_fn, params=params)
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 14 + seed_offset)
  # float32 explicitly: under jax_enable_x64 the default float64 draws other values.
  values = np.asarray(jax.random.uniform(key, (len(contributors),), jnp.float32), np.float64)
  seconds = {'total': time.perf_counter() - t0}
  return valuation.ValuationResult(tuple(c.name for c in contributors), jnp.asarray(values),
                                   valuation.ranking_of(values), None, seconds)


__all__ = ['check_config', 'default_config', 'value']
