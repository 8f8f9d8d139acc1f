"""Tests of the small models (MLP, SmallCNN) and bind_apply / init_model.

References: the forward passes re-implemented in float64 NumPy with the same weights.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax.models.cnn import SmallCNN
from dv_jax.models.common import bind_apply, init_model
from dv_jax.models.mlp import MLP


def _np(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _images(b=3, seed=0):
  return np.random.default_rng(seed).uniform(size=(b, 8, 8, 1)).astype(np.float32)


def _mlp_reference(params, x):
  p = _np(params)
  h = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  names = sorted(p, key=lambda s: int(s.split('_')[1]))
  for name in names[:-1]:
    h = np.maximum(h @ p[name]['kernel'] + p[name]['bias'], 0.0)
  return h @ p[names[-1]]['kernel'] + p[names[-1]]['bias'], h


@pytest.mark.parametrize('hidden', [(), (7,), (16, 5)])
def test_mlp_matches_numpy(hidden):
  model = MLP(hidden_sizes=hidden, num_classes=4)
  x = _images()
  variables = init_model(model, jax.random.PRNGKey(0), x)
  apply_fn, params = bind_apply(model, variables)
  expected, features = _mlp_reference(params, x)
  logits = apply_fn(params, x)
  assert logits.shape == (3, 4)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  # Flat [b, 64] input gives the same network.
  np.testing.assert_allclose(apply_fn(params, x.reshape(3, 64)), logits, rtol=1e-6, atol=1e-6)
  out, feats = model.apply(variables, x, return_features=True)
  np.testing.assert_allclose(out, logits, rtol=1e-6)
  np.testing.assert_allclose(feats, features, rtol=1e-5, atol=1e-5)


def _conv_same_3x3(x, kernel, bias):
  """Cross-correlation with zero SAME padding: x [b, H, W, C], kernel [3, 3, C, O]."""
  b, hgt, wid, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((b, hgt, wid, kernel.shape[-1]))
  for di in range(3):
    for dj in range(3):
      out += np.einsum('bhwc,co->bhwo', xp[:, di:di + hgt, dj:dj + wid, :], kernel[di, dj])
  return out + bias


def _avg_pool_2x2(x):
  b, hgt, wid, c = x.shape
  return x.reshape(b, hgt // 2, 2, wid // 2, 2, c).mean(axis=(2, 4))


def test_small_cnn_matches_numpy():
  model = SmallCNN(channels=(3, 5), num_classes=6)
  x = _images(b=2, seed=1)
  variables = init_model(model, jax.random.PRNGKey(1), x)
  apply_fn, params = bind_apply(model, variables)
  p = _np(params)
  h = np.asarray(x, np.float64)
  for name in ('Conv_0', 'Conv_1'):
    h = _avg_pool_2x2(np.maximum(_conv_same_3x3(h, p[name]['kernel'], p[name]['bias']), 0.0))
  assert h.shape == (2, 2, 2, 5)
  features = h.reshape(2, -1)
  expected = features @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
  logits = apply_fn(params, x)
  assert logits.shape == (2, 6)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  # [b, H, W] images get a channel axis.
  np.testing.assert_allclose(apply_fn(params, x[..., 0]), logits, rtol=1e-6, atol=1e-6)
  _, feats = model.apply(variables, x, return_features=True)
  np.testing.assert_allclose(feats, features, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='SmallCNN expects x'):
    apply_fn(params, x.reshape(2, 64))


class _BatchNormNet(nn.Module):
  """Dense -> BatchNorm: its inference output depends on batch_stats and train=False."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.Dense(3)(x.reshape((x.shape[0], -1)))
    return nn.BatchNorm(use_running_average=not train, epsilon=1e-5)(h)


def test_bind_apply_closes_over_batch_stats_in_inference_mode():
  model = _BatchNormNet()
  x = _images(b=4, seed=2)
  variables = init_model(model, jax.random.PRNGKey(2), x)
  assert set(variables) == {'params', 'batch_stats'}
  mean = np.array([0.1, -0.2, 0.3], np.float32)
  var = np.array([2.0, 0.5, 1.5], np.float32)
  variables['batch_stats'] = {'BatchNorm_0': {'mean': mean, 'var': var}}
  apply_fn, params = bind_apply(model, variables)
  assert set(params) == {'Dense_0', 'BatchNorm_0'}
  p = _np(params)
  h = np.asarray(x, np.float64).reshape(4, -1) @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
  expected = ((h - mean) / np.sqrt(var + 1e-5) * p['BatchNorm_0']['scale']
              + p['BatchNorm_0']['bias'])
  np.testing.assert_allclose(apply_fn(params, x), expected, rtol=1e-5, atol=1e-5)
  # Differentiable in params only; the statistics stay fixed (no mutable collection).
  grads = jax.grad(lambda q: jnp.sum(apply_fn(q, x)))(params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


def test_common_errors():
  model = MLP((4,), 3)
  with pytest.raises(ValueError, match='sample_x'):
    init_model(model, jax.random.PRNGKey(0), np.zeros((0, 8, 8, 1)))
  with pytest.raises(ValueError, match="'params'"):
    bind_apply(model, {'batch_stats': {}})
