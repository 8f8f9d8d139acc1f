"""ResNet-18 (He et al. 2016) in flax.linen, the image backbone of METHOD.md section 5.

BatchNorm and the NTK. The bound's NTK term is taken at initialisation, theta0, from
per-example gradients. In training mode BatchNorm normalises with the statistics of the
batch, so example i's output (and its gradient) would depend on the other examples in the
batch and a "per-example" NTK would not be one. As DAVINZ does, the model is therefore run
with BatchNorm in inference mode (`train=False`, i.e. `use_running_average=True`) whenever
the NTK, the features or the loss at theta0 are computed: BatchNorm is then the fixed affine
map scale * (x - mean) / sqrt(var + eps) + bias with the stored statistics (mean 0, var 1 at
init), each example's output depends only on itself, and per-example NTKs are exact.

`dv_jax.models.bind_apply` returns a `BatchNormApply`: called, it is that inference-mode
function, closed over the `batch_stats` collection. Whatever trains the model trains it as
the standard recipe does, with `train=True` (each minibatch normalised by its own
statistics, through `train_apply`; `training.train(..., use_batch_stats=True)`), and reads
the trained parameters with running statistics re-estimated on the training data
(`estimate_batch_stats`, `common.recalibrated`):
  - the ground truth (`dv_jax.ground_truth.retrain`) evaluates the test split with them
    (`config.ground_truth.bn_batches` batches per run);
  - TracIn and TRAK (`dv_jax.baselines`) take their gradients (and TRAK its logits) at each
    checkpoint / model with them (`bn_batches` of their section, default 64), passed as
    data (`common.recalibrated_state`) so that one compile serves every checkpoint.

Layout: inputs are NHWC [b, H, W, C]. Convolutions are bias-free (each feeds a BatchNorm)
and padded symmetrically by 1 for 3x3 kernels (as torchvision; flax's 'SAME' would pad a
stride-2 layer asymmetrically). `small_images=True` is the CIFAR variant: a 3x3 stride-1
stem and no max-pool (11,220,132 parameters for 100 classes); `small_images=False` is the
ImageNet stem: 7x7 stride-2 conv and a 3x3 stride-2 max-pool (11,689,512 for 1000 classes).

Parameter paths: `stem_conv`, `stem_bn`, `blocks_{0..7}/{conv1,bn1,conv2,bn2[,proj_conv,
proj_bn]}`, `head`. Shape legend: b batch, H/W spatial, C channels, c classes.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks

# Stage widths (in units of num_filters) and first-block strides of ResNet-18.
_STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))
_BLOCKS_PER_STAGE = 2


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  # PyTorch defaults (momentum 0.1 there is 0.9 here: flax weights the old average).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
  """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); shortcut = 1x1 conv + BN when the
  stride or the width changes, else the identity.

  Attributes:
    filters: output channels.
    strides: stride of conv1 and of the shortcut.
  """
  filters: int
  strides: int = 1

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, self.filters, use_bias=False)
    y = conv((3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name='conv1')(x_BHWC)
    y = nn.relu(_batch_norm(train, 'bn1')(y))
    y = conv((3, 3), padding=((1, 1), (1, 1)), name='conv2')(y)
    y = _batch_norm(train, 'bn2')(y)
    shortcut = x_BHWC
    if self.strides != 1 or x_BHWC.shape[-1] != self.filters:
      shortcut = conv((1, 1), strides=self.strides, padding='VALID', name='proj_conv')(x_BHWC)
      shortcut = _batch_norm(train, 'proj_bn')(shortcut)
    return nn.relu(y + shortcut)


class ResNet18(nn.Module):
  """ResNet-18 classifier with BatchNorm in inference mode unless train=True.

  Initialise with train=False (as `dv_jax.models.init_model` does): BatchNorm then runs on
  its stored statistics from the start, so at theta0 each example's logits depend only on
  that example and per-example NTKs are exact (the module docstring explains why).

  Attributes:
    num_classes: c.
    num_filters: width of the first stage (64 in the standard network); stages are 1, 2, 4
      and 8 times it.
    small_images: CIFAR stem (3x3 conv, no max-pool) when True, ImageNet stem when False.
  """
  num_classes: int
  num_filters: int = 64
  small_images: bool = True

  def setup(self):
    # Checked, not cast: num_classes=True built a 1-logit head, small_images='no' the CIFAR stem.
    checks.check_int(self.num_classes, 'num_classes')
    checks.check_int(self.num_filters, 'num_filters')
    if not isinstance(self.small_images, (bool, np.bool_)):
      raise ValueError(f'small_images must be a bool, got {self.small_images!r}')
    if self.small_images:
      self.stem_conv = nn.Conv(self.num_filters, (3, 3), padding=((1, 1), (1, 1)),
                               use_bias=False)
    else:
      self.stem_conv = nn.Conv(self.num_filters, (7, 7), strides=2,
                               padding=((3, 3), (3, 3)), use_bias=False)
    self.stem_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
    self.blocks = [BasicBlock(self.num_filters * width, strides if j == 0 else 1)
                   for width, strides in _STAGES for j in range(_BLOCKS_PER_STAGE)]
    self.head = nn.Dense(self.num_classes)

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Penultimate features [b, 8 * num_filters]: global average pool of the last stage.

    Args:
      x: images [b, H, W, C] (NHWC).
      train: BatchNorm uses batch statistics (and updates `batch_stats`, which must then be
        mutable) when True; the stored statistics when False.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
      raise ValueError(f'x must be NHWC [b, H, W, C], got shape {x.shape}')
    y = nn.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if not self.small_images:
      y = nn.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      y = block(y, train)
    return jnp.mean(y, axis=(1, 2))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Class logits [b, c] of images x [b, H, W, C]; see `features` for `train`."""
    return self.head(self.features(x, train))
