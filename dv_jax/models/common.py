"""Binding a flax.linen model to the ``apply_fn(params, x) -> logits`` interface.

Every consumer in dv_jax (NTK, training, baselines) sees a model as a pure function of its
trainable parameters. Other collections (BatchNorm's ``batch_stats``) are closed over, and
the module is run in inference mode, so the function is deterministic and differentiable
in ``params`` only.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


def _inference_kwargs(model: nn.Module) -> dict[str, bool]:
  """``train=False`` / ``deterministic=True`` when the module's ``__call__`` accepts them."""
  params = inspect.signature(type(model).__call__).parameters
  kwargs = {}
  if 'train' in params:
    kwargs['train'] = False
  if 'deterministic' in params:
    kwargs['deterministic'] = True
  return kwargs


def init_model(model: nn.Module, key: Any, sample_x: Any) -> dict[str, Any]:
  """Initialises ``model`` on the first example of ``sample_x``.

  Args:
    model: a flax.linen module.
    key: a ``jax.random.PRNGKey``.
    sample_x: a batch ``[b, ...]`` with the input shape (only ``sample_x[:1]`` is used).

  Returns:
    The variables as a plain dict (``{'params': ..., 'batch_stats': ...}``).

  Raises:
    ValueError: if ``sample_x`` has no batch axis or no rows.
  """
  sample_x = jnp.asarray(sample_x)
  if sample_x.ndim < 1 or sample_x.shape[0] == 0:
    raise ValueError(f'sample_x must be a non-empty batch [b, ...], got shape {sample_x.shape}')
  variables = model.init(key, sample_x[:1], **_inference_kwargs(model))
  return dict(flax.core.unfreeze(variables))


def bind_apply(model: nn.Module, variables: Any) -> tuple[Callable[[Any, Any], jax.Array], Any]:
  """Splits ``variables`` into a pure ``apply_fn(params, x)`` and the trainable ``params``.

  Args:
    model: a flax.linen module returning logits ``[b, c]``.
    variables: from ``init_model`` (or ``model.init``); must hold ``'params'``.

  Returns:
    ``(apply_fn, params)``: ``apply_fn(params, x [b, ...]) -> [b, c]`` runs the model with
    the non-param collections fixed and ``train=False`` / ``deterministic=True`` passed
    when ``__call__`` accepts them.

  Raises:
    ValueError: if ``variables`` has no ``'params'`` collection.
  """
  variables = dict(flax.core.unfreeze(variables))
  if 'params' not in variables:
    raise ValueError(f"variables must hold a 'params' collection, got {sorted(variables)}")
  params = variables.pop('params')
  state = variables
  kwargs = _inference_kwargs(model)

  def apply_fn(p, x):
    return model.apply({'params': p, **state}, x, **kwargs)

  return apply_fn, params


__all__ = ['init_model', 'bind_apply']
