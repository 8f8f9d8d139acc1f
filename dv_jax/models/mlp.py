"""A multi-layer perceptron classifier (flax.linen).

Shape legend: ``b`` batch, ``d`` flattened features, ``h`` hidden width, ``c`` classes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from dv_jax import checks
from dv_jax.models.common import check_widths


class MLP(nn.Module):
  """``Dense -> relu`` for each hidden size, then a ``Dense`` to ``num_classes`` logits.

  Every trailing axis of the input is flattened, so ``[b, 8, 8, 1]`` images and ``[b, 64]``
  vectors give the same network. Layers are named ``Dense_0 .. Dense_L`` (the last is the
  readout), which parameter filters of the NTK can match.

  Attributes:
    hidden_sizes: widths of the hidden layers (may be empty: a linear classifier).
    num_classes: ``c``.
  """
  hidden_sizes: Sequence[int] = (64,)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, return_features: bool = False):
    """Logits ``[b, c]`` of a batch ``x [b, ...]``.

    With ``return_features=True`` returns ``(logits, features)``, ``features [b, h_last]``
    the penultimate activations (the flattened input when there is no hidden layer).

    Raises:
      ValueError: a width in ``hidden_sizes`` or ``num_classes`` that is not an integer >= 1.
    """
    hidden_sizes = check_widths('hidden_sizes', self.hidden_sizes)
    num_classes = checks.check_int(self.num_classes, 'num_classes')
    h = x.reshape((x.shape[0], -1))
    for width in hidden_sizes:
      h = nn.relu(nn.Dense(width)(h))
    logits = nn.Dense(num_classes)(h)
    return (logits, h) if return_features else logits


__all__ = ['MLP']
