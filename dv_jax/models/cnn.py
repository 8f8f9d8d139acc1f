"""A small convolutional classifier for 8x8 (or other small) images (flax.linen).

Shape legend: ``b`` batch, ``H x W`` image size, ``C`` input channels, ``c`` classes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from dv_jax import checks
from dv_jax.models.common import check_widths


class SmallCNN(nn.Module):
  """``[Conv 3x3 SAME -> relu -> avg_pool 2x2]`` per entry of ``channels``, then a ``Dense``.

  On ``[b, 8, 8, 1]`` digits with ``channels=(16, 32)`` the readout sees ``2 x 2 x 32 = 128``
  features. Each pooling halves the spatial size, so ``len(channels)`` must not exceed
  ``log2(min(H, W))``.

  Attributes:
    channels: output channels of each convolution.
    num_classes: ``c``.
  """
  channels: Sequence[int] = (16, 32)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, return_features: bool = False):
    """Logits ``[b, c]`` of images ``x [b, H, W, C]`` (``[b, H, W]`` gets a channel axis).

    With ``return_features=True`` returns ``(logits, features)``, ``features`` the
    flattened output of the last pooling ``[b, H' * W' * channels[-1]]``.

    Raises:
      ValueError: a bad input shape, or a width in ``channels`` or ``num_classes`` that is
        not an integer >= 1.
    """
    channels = check_widths('channels', self.channels)
    num_classes = checks.check_int(self.num_classes, 'num_classes')
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4:
      raise ValueError(f'SmallCNN expects x of shape [b, H, W, C] or [b, H, W], got {x.shape}')
    if min(x.shape[1:3]) < 2 ** len(self.channels):
      raise ValueError(f'SmallCNN with {len(self.channels)} stages (channels={self.channels}) '
                       f'halves H and W that often; images of {x.shape[1]}x{x.shape[2]} '
                       f'are too small')
    h = x
    for width in channels:
      h = nn.Conv(width, kernel_size=(3, 3), padding='SAME')(h)
      h = nn.avg_pool(nn.relu(h), window_shape=(2, 2), strides=(2, 2))
    h = h.reshape((h.shape[0], -1))
    logits = nn.Dense(num_classes)(h)
    return (logits, h) if return_features else logits


__all__ = ['SmallCNN']
