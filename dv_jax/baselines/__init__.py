"""Baseline valuation methods (METHOD.md section 3), all with the call shape of
`dv_jax.valuation.value_contributors`:

  BASELINES[name](contributors, target, *, apply_fn, params, config) -> ValuationResult

`config` holds `seed` and a `baselines` section with one sub-section per method
(`default_config()` builds it). An unknown name raises (`get_baseline`, or indexing the
registry). `check_config(name, config)` checks a method's section without data or model:
each method runs the same check first, and an experiment runs it before its own work.
"""

from typing import Any, Callable

import ml_collections

from dv_jax.baselines import davinz
from dv_jax.baselines import random_baseline
from dv_jax.baselines import trak
from dv_jax.baselines import tracin


class _Registry(dict):
  """A dict whose missing keys raise a KeyError listing the known names."""

  def __missing__(self, name):
    raise KeyError(f'unknown baseline {name!r}; known: {sorted(self)}')


BASELINES = _Registry({
    'davinz': davinz.value,
    'tracin': tracin.value,
    'trak': trak.value,
    'random': random_baseline.value,
})


# Each method's check of its config section, the one its `value` runs first.
CONFIG_CHECKS = _Registry({
    'davinz': davinz.check_config,
    'tracin': tracin.check_config,
    'trak': trak.check_config,
    'random': random_baseline.check_config,
})


def get_baseline(name: str) -> Callable:
  """The baseline called `name`.

  Raises:
    ValueError: for an unknown name (the message lists the known ones).
  """
  if name not in BASELINES:
    raise ValueError(f'unknown baseline {name!r}; known: {sorted(BASELINES)}')
  return BASELINES[name]


def check_config(name: str, config: ml_collections.ConfigDict) -> Any:
  """Checks `config.baselines.<name>` as baseline `name` will, without data or model.

  Args:
    name: a `BASELINES` name.
    config: with `seed` and the `baselines` section (an `ntk` section's `data_parallel`
      is checked against the gradient block size too).

  Returns:
    The method's checked settings (its `check_config`'s return value).

  Raises:
    ValueError: for an unknown name (as `get_baseline`); naming the field, a bad setting.
  """
  get_baseline(name)
  return CONFIG_CHECKS[name](config)


def default_config() -> ml_collections.ConfigDict:
  """`seed` and the `baselines` section with every method's defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.baselines = ml_collections.ConfigDict(dict(
      davinz=davinz.default_config(), tracin=tracin.default_config(),
      trak=trak.default_config(), random=random_baseline.default_config()))
  return config


__all__ = ['BASELINES', 'CONFIG_CHECKS', 'check_config', 'get_baseline', 'default_config']
