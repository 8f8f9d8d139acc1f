"""Baseline valuation methods (METHOD.md section 3), all with the call shape of
`dv_jax.valuation.value_contributors`:

  BASELINES[name](contributors, target, *, apply_fn, params, config) -> ValuationResult

`config` holds `seed` and a `baselines` section with one sub-section per method
(`default_config()` builds it). An unknown name raises (`get_baseline`, or indexing the
registry).
"""

from typing import Callable

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


def get_baseline(name: str) -> Callable:
  """The baseline called `name`.

  Raises:
    ValueError: for an unknown name (the message lists the known ones).
  """
  if name not in BASELINES:
    raise ValueError(f'unknown baseline {name!r}; known: {sorted(BASELINES)}')
  return BASELINES[name]


def default_config() -> ml_collections.ConfigDict:
  """`seed` and the `baselines` section with every method's defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.baselines = ml_collections.ConfigDict(dict(
      davinz=davinz.default_config(), tracin=tracin.default_config(),
      trak=trak.default_config(), random=random_baseline.default_config()))
  return config


__all__ = ['BASELINES', 'get_baseline', 'default_config']
