"""Boundary checks the baselines share (DAVINZ, TracIn, TRAK, random).

Each raises a `ValueError` that names the config field or argument, so that a bad value
fails before the training it would otherwise follow. Each baseline's `check_config` is
built from them and from `dv_jax.config_checks` (single fields): its `value` calls it
first, and an experiment calls it (through `dv_jax.baselines.check_config`) before any of
its own work.
"""

from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp

from dv_jax import checks as checks_lib
from dv_jax import training


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


def config_section(config: Any, name: str, *, fields: Optional[Iterable[str]] = None) -> Any:
  """`config.baselines.<name>`, the section of baseline `name`.

  Args:
    config: with the `baselines` section.
    name: the baseline.
    fields: the keys the section may hold (None: not checked).

  Raises:
    ValueError: naming `config.baselines.<name>` when the config has no such section
      (rather than an AttributeError from deep inside the baseline), or when it holds a
      key outside `fields` (a misspelt `rigde` would otherwise be ignored and the default
      ridge used, as `training.as_train_config` refuses for a recipe).
  """
  section = config.get('baselines', None)
  if section is None or name not in section:
    raise ValueError(f'config.baselines.{name} is missing: baseline {name!r} reads its '
                     'settings from it (dv_jax.baselines.default_config() has the defaults)')
  section = section[name]
  if fields is not None:
    unknown = sorted(set(section.keys()) - set(fields))
    if unknown:
      raise ValueError(f'config.baselines.{name} has unknown fields {unknown}; valid: '
                       f'{sorted(fields)}')
  return section



def config_train(value: Any, field: str) -> training.TrainConfig:
  """`config.<field>`, a training recipe, as `training.as_train_config` reads it.

  Raises:
    ValueError: `as_train_config`'s, prefixed with `config.<field>` (its own message names
      only the field inside the recipe).
  """
  try:
    return training.as_train_config(value)
  except ValueError as error:
    raise ValueError(f'config.{field}: {error}') from error


def trained_finite(params: Any, field: str) -> None:
  """Refuses trained parameters (a stack of models or checkpoints) holding NaN or Inf.

  A diverged training reached the gradient step, whose check of its input parameters
  ("params contain NaN or Inf") blamed the caller's theta0, which was finite.

  Raises:
    ValueError: naming the leaf and `config.<field>.learning_rate`.
  """
  bad = checks_lib.non_finite_leaf(params)
  if bad is not None:
    raise ValueError(f'training diverged: trained params leaf {bad} holds NaN or Inf; lower '
                     f'config.{field}.learning_rate')
