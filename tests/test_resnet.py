"""Tests for dv_jax.models.resnet: parameter counts, a float64 NumPy BasicBlock, the
per-example independence that makes per-example NTKs exact (BatchNorm in inference mode),
and the bound apply's training mode and re-estimated statistics (the ground truth's)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax import training
from dv_jax.models.common import BatchNormApply, bind_apply
from dv_jax.models.resnet import BasicBlock
from dv_jax.models.resnet import ResNet18


def _random_variables(model, x, seed=0):
  """Random params and BatchNorm statistics of the model's structure (no init compile)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if name == 'scale':
      return (1 + 0.2 * rng.standard_normal(s.shape)).astype(np.float32)
    return (0.3 * rng.standard_normal(s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _num_params(model, x):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']
  return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))


def _closed_form_count(num_classes, f=64, small_images=True):
  """ResNet-18 parameter count: bias-free convs, BatchNorm scale + bias, a Dense head."""
  total = (9 if small_images else 49) * 3 * f + 2 * f
  c_in = f
  for width, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
    c_out = f * width
    for j in range(2):
      total += 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out
      if (stride if j == 0 else 1) != 1 or c_in != c_out:
        total += c_in * c_out + 2 * c_out
      c_in = c_out
  return total + c_in * num_classes + num_classes


def test_parameter_counts():
  cifar = _num_params(ResNet18(100), jnp.zeros((1, 32, 32, 3)))
  assert cifar == _closed_form_count(100) == 11_220_132
  # torchvision's resnet18 (ImageNet stem, 1000 classes) has 11,689,512 parameters.
  imagenet = _num_params(ResNet18(1000, small_images=False), jnp.zeros((1, 64, 64, 3)))
  assert imagenet == _closed_form_count(1000, small_images=False) == 11_689_512


def _np_conv(x, w, stride, pad):
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = w.shape[:2]
  ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      out += x[:, i:i + stride * ho:stride, j:j + stride * wo:stride] @ w[i, j]
  return out


def _np_batch_norm(x, params, stats, train):
  if train:
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  else:
    mean, var = stats['mean'], stats['var']
  return (x - mean) / np.sqrt(var + 1e-5) * params['scale'] + params['bias']


def _np_basic_block(variables, x, stride, train):
  v = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
  p, s = v['params'], v['batch_stats']
  relu = lambda z: np.maximum(z, 0)
  y = relu(_np_batch_norm(_np_conv(x, p['conv1']['kernel'], stride, 1), p['bn1'], s['bn1'],
                          train))
  y = _np_batch_norm(_np_conv(y, p['conv2']['kernel'], 1, 1), p['bn2'], s['bn2'], train)
  if 'proj_conv' in p:
    shortcut = _np_batch_norm(_np_conv(x, p['proj_conv']['kernel'], stride, 0), p['proj_bn'],
                              s['proj_bn'], train)
  else:
    shortcut = x
  return relu(y + shortcut)


@pytest.mark.parametrize('filters, stride', [(8, 2), (4, 1)])
def test_basic_block_matches_float64_numpy(filters, stride):
  x = np.random.default_rng(1).standard_normal((2, 6, 6, 4)).astype(np.float32)
  block = BasicBlock(filters, stride)
  variables = _random_variables(block, x)
  assert ('proj_conv' in variables['params']) == (stride != 1)

  @jax.jit
  def run(variables, x):
    eval_out = block.apply(variables, x, train=False)
    train_out, _ = block.apply(variables, x, train=True, mutable=['batch_stats'])
    return eval_out, train_out
  eval_out, train_out = run(variables, x)
  assert eval_out.shape == (2, 6 // stride, 6 // stride, filters)
  for out, train in ((eval_out, False), (train_out, True)):
    np.testing.assert_allclose(out, _np_basic_block(variables, x.astype(np.float64), stride,
                                                    train), rtol=1e-4, atol=1e-4)


def _np_max_pool_3x3_s2(x):
  """3x3 max-pool, stride 2, padded by 1 with -inf (torchvision's ImageNet stem)."""
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
  for i in range(3):
    for j in range(3):
      out = np.maximum(out, x[:, i:i + 2 * ho:2, j:j + 2 * wo:2])
  return out


def _np_resnet18(variables, x, *, small_images, train):
  """float64 ResNet-18: stem, four stages of two blocks (first strides 1, 2, 2, 2), global
  average pool, Dense head. Returns (logits, features)."""
  v = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
  p, s = v['params'], v['batch_stats']
  stride, pad = (1, 1) if small_images else (2, 3)
  y = _np_conv(np.asarray(x, np.float64), p['stem_conv']['kernel'], stride, pad)
  y = np.maximum(_np_batch_norm(y, p['stem_bn'], s['stem_bn'], train), 0)
  if not small_images:
    y = _np_max_pool_3x3_s2(y)
  for i, block_stride in enumerate((1, 1, 2, 1, 2, 1, 2, 1)):
    name = f'blocks_{i}'
    y = _np_basic_block({'params': p[name], 'batch_stats': s[name]}, y, block_stride, train)
  features = y.mean((1, 2))
  return features @ p['head']['kernel'] + p['head']['bias'], features


# Sizes that leave the last stage 2x2, so the global average pool is not the identity.
@pytest.mark.parametrize('small_images, size, train', [(True, 16, False), (True, 16, True),
                                                       (False, 48, False)])
def test_resnet18_matches_float64_numpy(small_images, size, train):
  # The BasicBlock is checked above; this pins the assembly around it: the stem (3x3 s1, or
  # 7x7 s2 + max-pool), the stage strides, the pooling and the head.
  model = ResNet18(5, num_filters=2, small_images=small_images)
  x = np.random.default_rng(6).standard_normal((3, size, size, 3)).astype(np.float32)
  variables = _random_variables(model, x, seed=6)

  @jax.jit
  def run(variables, x):
    if train:
      logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
      return logits, None
    return model.apply(variables, x), model.apply(variables, x, method='features')
  logits, features = run(variables, x)
  expected, expected_features = _np_resnet18(variables, x, small_images=small_images,
                                             train=train)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
  if features is not None:
    np.testing.assert_allclose(features, expected_features, rtol=1e-4, atol=1e-4)


def test_resnet_inference_mode_is_per_example_and_features_feed_the_head():
  model = ResNet18(10, num_filters=4)
  x = np.random.default_rng(2).standard_normal((3, 8, 8, 3)).astype(np.float32)
  variables = _random_variables(model, x)
  other = x.copy()
  other[1:] = np.random.default_rng(3).standard_normal((2, 8, 8, 3))

  @jax.jit
  def run(variables, x):
    logits = model.apply(variables, x)  # train=False is the default
    features = model.apply(variables, x, method='features')
    train_logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return logits, features, train_logits
  logits, features, train_logits = run(variables, x)
  logits_other, _, train_other = run(variables, other)
  assert logits.shape == (3, 10) and features.shape == (3, 32)
  head = variables['params']['head']
  np.testing.assert_allclose(logits, features @ head['kernel'] + head['bias'][None], rtol=1e-5,
                             atol=1e-5)
  # Inference mode: example 0's output depends on example 0 only.
  np.testing.assert_allclose(logits_other[0], logits[0], rtol=1e-6, atol=1e-6)
  # Training mode normalises with batch statistics, so it does not (the contrast).
  assert np.max(np.abs(train_other[0] - train_logits[0])) > 1e-3


def test_imagenet_stem_shapes_and_input_error():
  model = ResNet18(7, num_filters=4, small_images=False)
  x = jnp.zeros((2, 16, 16, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert variables['params']['stem_conv']['kernel'].shape == (7, 7, 3, 4)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 7)
  assert jax.eval_shape(functools.partial(model.apply, method='features'),
                        variables, x).shape == (2, 32)
  with pytest.raises(ValueError, match='NHWC'):
    jax.eval_shape(model.apply, variables, jnp.zeros((16, 16, 3)))


def test_estimate_batch_stats_keeps_a_tenth_of_each_batch_in_every_batch_norm():
  """Momentum 0.9 (PyTorch's 0.1) in the stem and in every block: one re-estimated batch
  moves each running mean and variance a tenth of the way to the batch's own."""
  model = ResNet18(5, num_filters=2)
  x = np.random.default_rng(5).standard_normal((6, 8, 8, 3)).astype(np.float32)
  variables = _random_variables(model, x, seed=5)  # statistics away from 0 / 1
  apply_fn, params = bind_apply(model, variables)
  key = jax.random.PRNGKey(2)
  stats = apply_fn.estimate_batch_stats(params, x, key=key, num_batches=1, batch_size=4)
  batch = x[np.asarray(jax.random.randint(jax.random.fold_in(key, 0), (4,), 0, 6))]
  # Each BatchNorm reads its convolution's output: train-mode conv outputs on the batch.
  _, state = jax.jit(lambda v, xb: model.apply(
      v, xb, train=True, mutable=['batch_stats', 'intermediates'],
      capture_intermediates=lambda module, _: isinstance(module, nn.Conv)))(variables, batch)
  convs = jax.tree_util.tree_map(lambda a: np.asarray(a[0], np.float64),
                                 state['intermediates'], is_leaf=lambda a: isinstance(a, tuple))
  # The stem's input is independent of every BatchNorm: its conv in float64 NumPy.
  stem_in = _np_conv(batch.astype(np.float64),
                     np.asarray(variables['params']['stem_conv']['kernel'], np.float64), 1, 1)
  np.testing.assert_allclose(convs['stem_conv']['__call__'], stem_in, rtol=1e-4, atol=1e-5)
  conv_of = {'stem_bn': 'stem_conv', 'bn1': 'conv1', 'bn2': 'conv2', 'proj_bn': 'proj_conv'}
  checked = []
  for path, old in jax.tree_util.tree_flatten_with_path(variables['batch_stats'])[0]:
    *scope, bn, stat = (k.key for k in path)
    h = convs
    for name in scope:
      h = h[name]
    h = h[conv_of[bn]]['__call__']
    batch_stat = h.mean((0, 1, 2)) if stat == 'mean' else h.var((0, 1, 2))
    new = stats
    for name in (*scope, bn, stat):
      new = new[name]
    np.testing.assert_allclose(new, 0.9 * np.asarray(old, np.float64) + 0.1 * batch_stat,
                               rtol=1e-4, atol=1e-5, err_msg='/'.join((*scope, bn, stat)))
    checked.append(bn)
  assert checked.count('stem_bn') == 2 and checked.count('proj_bn') == 6  # 3 downsamplings


@pytest.mark.slow  # ~15 s of ResNet compiles: main environment only
def test_bound_resnet_trains_with_batch_statistics_and_re_estimates_them():
  model = ResNet18(5, num_filters=2)
  rng = np.random.default_rng(4)
  x = rng.standard_normal((6, 8, 8, 3)).astype(np.float32)
  y = rng.integers(0, 5, size=6).astype(np.int32)
  variables = _random_variables(model, x, seed=4)  # no init: eager ResNet init takes seconds
  apply_fn, params = bind_apply(model, variables)
  assert isinstance(apply_fn, BatchNormApply)
  np.testing.assert_allclose(jax.jit(apply_fn)(params, x), jax.jit(model.apply)(variables, x),
                             rtol=1e-5, atol=1e-6)
  # One SGD step trains on the minibatch's statistics.
  key = jax.random.PRNGKey(1)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=1, batch_size=4)
  result = training.train(apply_fn, params, x, y, config=config, key=key, num_classes=5,
                          use_batch_stats=True)
  rows = jax.random.randint(jax.random.fold_in(key, 0), (4,), 0, 6)
  # Jitted references: ResNet-18 dispatched op by op costs seconds per call.
  grads = jax.jit(jax.grad(lambda p: jnp.mean(training.cross_entropy(
      model.apply({'params': p, **apply_fn.state}, x[rows], train=True,
                  mutable=['batch_stats'])[0], y[rows]))))(params)
  jax.tree_util.tree_map(
      lambda new, p, g: np.testing.assert_allclose(new, p - 0.1 * g, rtol=1e-4, atol=1e-5),
      result.params, params, grads)
  # The re-estimate is flax's own running average over the keyed batches, every layer.
  stats = apply_fn.estimate_batch_stats(result.params, x, key=key, num_batches=2, batch_size=5)
  update = jax.jit(lambda stats, batch: model.apply(
      {'params': result.params, 'batch_stats': stats}, batch, train=True,
      mutable=['batch_stats'])[1]['batch_stats'])
  expected = variables['batch_stats']
  for b in range(2):
    expected = update(expected, x[np.asarray(jax.random.randint(jax.random.fold_in(key, b),
                                                                (5,), 0, 6))])
  assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(expected)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), stats, expected)
  trained = {'params': result.params, 'batch_stats': stats}
  inference = jax.jit(model.apply)(trained, x)
  np.testing.assert_allclose(jax.jit(apply_fn.variables_apply)(trained, x), inference,
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.jit(apply_fn)(result.params, x), inference, rtol=1e-3)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_classes=True), 'num_classes must be an integer'),  # built a 1-logit head
    (dict(num_classes=10, num_filters=0), 'num_filters must be an integer >= 1'),
    (dict(num_classes=10, small_images='no'), 'small_images must be a bool'),  # CIFAR stem
    (dict(num_classes=10, small_images=1), 'small_images must be a bool'),  # an int is no bool
])
def test_sizes_are_checked_by_name(kwargs, message):
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(ResNet18(**kwargs).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
