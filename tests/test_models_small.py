"""Tests of the small models (MLP, SmallCNN) and bind_apply / init_model.

References: the forward passes re-implemented in float64 NumPy with the same weights; for a
BatchNorm model, the re-estimated statistics against a float64 NumPy running average, and
`recalibrated_state` (statistics as data) against `recalibrated` (statistics bound) and a
float64 NumPy forward pass.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax.models.cnn import SmallCNN
from dv_jax import ntk
from dv_jax import valuation
from dv_jax.models.common import BatchNormApply, bind_apply, init_model
from dv_jax.models.common import recalibrated, recalibrated_state
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
  # Four halvings of 8x8 images would leave nothing to read out.
  with pytest.raises(ValueError, match='4 stages .* 8x8 are too small'):
    init_model(SmallCNN(channels=(2, 2, 2, 2)), jax.random.PRNGKey(0), x)


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


class _DenseBatchNormDense(nn.Module):
  """Dense -> BatchNorm -> Dense: the smallest classifier with batch statistics."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(4, name='hidden')(x.reshape((x.shape[0], -1)))
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name='bn')(h)
    return nn.Dense(3, name='head')(nn.relu(h))


def _bn_input(params, x):
  """float64 input of the BatchNorm (the hidden layer's pre-activations) [n, 4]."""
  p = _np(params)['hidden']
  return np.asarray(x, np.float64).reshape(x.shape[0], -1) @ p['kernel'] + p['bias']


def _dense_bn_dense():
  model = _DenseBatchNormDense()
  x = _images(b=6, seed=5)
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(5), x))
  return model, apply_fn, params, x


def test_batch_norm_apply_is_inference_mode_and_train_apply_uses_the_batch():
  model, apply_fn, params, x = _dense_bn_dense()
  assert isinstance(apply_fn, BatchNormApply)
  variables = {'params': params, **apply_fn.state}
  inference = model.apply(variables, x, train=False)
  np.testing.assert_allclose(apply_fn(params, x), inference, rtol=1e-6)
  np.testing.assert_allclose(apply_fn.variables_apply(variables, x), inference, rtol=1e-6)
  np.testing.assert_allclose(
      apply_fn.train_apply(params, x),
      model.apply(variables, x, train=True, mutable=['batch_stats'])[0], rtol=1e-6)
  # Row 0 alone versus row 0 among the others: only train mode sees the other rows.
  other = np.concatenate([x[:1], _images(b=5, seed=6)])
  np.testing.assert_allclose(apply_fn(params, x)[0], apply_fn(params, other)[0], rtol=1e-6)
  assert not np.allclose(apply_fn.train_apply(params, x)[0],
                         apply_fn.train_apply(params, other)[0], rtol=1e-3)


def test_batch_norm_apply_equality_follows_the_model_and_the_state_arrays():
  model = _DenseBatchNormDense()
  x = _images(b=6, seed=5)
  variables = init_model(model, jax.random.PRNGKey(5), x)
  a, _ = bind_apply(model, variables)
  b, _ = bind_apply(_DenseBatchNormDense(), variables)  # an equal model, the same arrays
  assert a == b and hash(a) == hash(b)
  assert a.train_apply == b.train_apply and hash(a.train_apply) == hash(b.train_apply)
  assert a.variables_apply == b.variables_apply
  assert hash(a.variables_apply) == hash(b.variables_apply)
  assert a != a.train_apply and a.train_apply != a.variables_apply
  copied = dict(variables, batch_stats=jax.tree_util.tree_map(jnp.array, variables['batch_stats']))
  c, _ = bind_apply(model, copied)  # equal values, other arrays: not provably the same state
  assert c != a and c.train_apply != a.train_apply
  assert c.variables_apply == a.variables_apply  # reads the statistics from its argument
  # Equal applies share one compile.
  jitted = jax.jit(lambda f, p, xb: f(p, xb), static_argnums=0)
  jitted(a.train_apply, variables['params'], x)
  before = jitted._cache_size()  # pylint: disable=protected-access
  jitted(b.train_apply, variables['params'], x)
  assert jitted._cache_size() == before  # pylint: disable=protected-access
  # A model without batch statistics keeps the plain function.
  mlp = MLP((4,), 3)
  plain, _ = bind_apply(mlp, init_model(mlp, jax.random.PRNGKey(0), x))
  assert not isinstance(plain, BatchNormApply) and not hasattr(plain, 'train_apply')


def test_numpy_statistics_loaded_in_place_are_not_read_stale_from_an_earlier_compile():
  # Equality keys the state by array identity. NumPy statistics (e.g. from np.load) were
  # kept as given, so statistics loaded into the same buffers made a new bind equal to the
  # old one, and a jitted caller reused the old compile, whose constants are the old
  # statistics: the result depended on what ran earlier in the process.
  model, x = _DenseBatchNormDense(), _images(b=6, seed=5)
  variables = jax.tree_util.tree_map(np.array, init_model(model, jax.random.PRNGKey(5), x))
  stats = variables['batch_stats']['bn']
  old_fn, params = bind_apply(model, variables)
  old = np.asarray(valuation.logits_at(old_fn, params, x))
  stats['mean'][...], stats['var'][...] = 1.5, 4.0  # new statistics, in the same buffers
  new_fn, _ = bind_apply(model, variables)
  expected = model.apply({'params': params, 'batch_stats': {'bn': {
      'mean': np.full(4, 1.5, np.float32), 'var': np.full(4, 4.0, np.float32)}}}, x)
  np.testing.assert_allclose(valuation.logits_at(new_fn, params, x), expected, rtol=1e-6)
  np.testing.assert_allclose(valuation.logits_at(old_fn, params, x), old, rtol=1e-6)


class _BatchNormDropout(nn.Module):
  """BatchNorm and Dropout tied to one `train` flag, the usual flax idiom."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(8, name='hidden')(x.reshape((x.shape[0], -1)))
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn')(h)
    h = nn.Dropout(0.5, deterministic=not train)(nn.relu(h))
    return nn.Dense(3, name='head')(h)


def test_train_mode_of_a_model_whose_train_flag_also_turns_on_dropout():
  """Every train-mode path (train_apply, training with batch statistics, the statistics'
  re-estimate) failed with flax's "Dropout_0 needs PRNG for 'dropout'"."""
  from dv_jax import training  # pylint: disable=g-import-not-at-top
  model = _BatchNormDropout()
  x = _images(b=16, seed=5)
  y = np.arange(16, dtype=np.int32) % 3
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(5), x))
  # Inference mode: no dropout, deterministic. Train mode: the masks follow the key.
  np.testing.assert_array_equal(apply_fn(params, x), apply_fn(params, x))
  a, b = (apply_fn.train_apply(params, x, jax.random.PRNGKey(s)) for s in (1, 2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, apply_fn.train_apply(params, x, jax.random.PRNGKey(1)))
  variables = {'params': params, **apply_fn.state}
  np.testing.assert_allclose(a, model.apply(variables, x, train=True, mutable=['batch_stats'],
                                            rngs={'dropout': jax.random.fold_in(
                                                jax.random.PRNGKey(1), 1)})[0], rtol=1e-6)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=4, batch_size=8)
  run = training.train(apply_fn, params, x, y, config=config, key=jax.random.PRNGKey(0),
                       num_classes=3, use_batch_stats=True)
  assert np.all(np.isfinite(run.losses))
  stats = apply_fn.estimate_batch_stats(run.params, x, key=jax.random.PRNGKey(3),
                                        num_batches=2, batch_size=8)
  assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(
      apply_fn.state['batch_stats'])


class _DropoutBatchNorm(nn.Module):
  """Dropout ahead of BatchNorm: the masks change the batch statistics."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dropout(0.5, deterministic=not train)(x.reshape((x.shape[0], -1)))
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn')(h)
    return nn.Dense(3, name='head')(h)

def test_dropout_masks_follow_each_training_steps_key_and_each_batchs_key():
  """Training step t draws its Dropout masks from fold_in(key, t) (the key that also draws
  its minibatch) and the statistics' re-estimate batch b from fold_in(key, b): one fixed
  mask for every step (the call key, or PRNGKey(0)) still trains, so only the losses and
  statistics themselves show it."""
  from dv_jax import training  # pylint: disable=g-import-not-at-top
  model = _BatchNormDropout()
  x = _images(b=16, seed=5)
  y = np.arange(16, dtype=np.int32) % 3
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(5), x))
  key = jax.random.PRNGKey(7)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=2, batch_size=8)
  kw = dict(key=key, num_classes=3, use_batch_stats=True)
  run = training.train(apply_fn, params, x, y, config=config, **kw)
  after_one = training.train(apply_fn, params, x, y, config=config._replace(steps=1),
                             **kw).params  # a constant rate: the two-step run's first step
  for t, p in enumerate((params, after_one)):
    step_key = jax.random.fold_in(key, t)
    rows = np.asarray(jax.random.randint(step_key, (8,), 0, 16))
    logits = apply_fn.train_apply(p, x[rows], step_key)
    want = float(jnp.mean(training.cross_entropy(logits, y[rows])))
    np.testing.assert_allclose(run.losses[t], want, rtol=1e-5)
  # Dropout before BatchNorm, so that the masks reach the statistics.
  model = _DropoutBatchNorm()
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(5), x))
  stats_key = jax.random.PRNGKey(3)
  stats = apply_fn.estimate_batch_stats(params, x, key=stats_key, num_batches=2, batch_size=8)
  want = apply_fn.state['batch_stats']
  for b in range(2):
    batch_key = jax.random.fold_in(stats_key, b)
    rows = np.asarray(jax.random.randint(batch_key, (8,), 0, 16))
    _, updated = model.apply({'params': params, 'batch_stats': want}, x[rows], train=True,
                             mutable=['batch_stats'],
                             rngs={'dropout': jax.random.fold_in(batch_key, 1)})
    want = updated['batch_stats']
  for got_leaf, want_leaf in zip(jax.tree_util.tree_leaves(stats),
                                 jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-6)

def test_estimate_batch_stats_matches_a_numpy_running_average():
  _, apply_fn, params, x = _dense_bn_dense()
  x = _images(b=40, seed=7)
  key, num_batches, batch_size, n = jax.random.PRNGKey(3), 5, 8, 30
  padded = np.concatenate([x[:n], np.full((10,) + x.shape[1:], 1e3, np.float32)])
  stats = apply_fn.estimate_batch_stats(params, padded, key=key, num_batches=num_batches,
                                        batch_size=batch_size, num_rows=n)
  h = _bn_input(params, x[:n])
  mean, var = np.zeros(4), np.ones(4)  # the init statistics
  for b in range(num_batches):
    rows = np.asarray(jax.random.randint(jax.random.fold_in(key, b), (batch_size,), 0, n))
    mean = 0.9 * mean + 0.1 * h[rows].mean(axis=0)
    var = 0.9 * var + 0.1 * h[rows].var(axis=0)
  np.testing.assert_allclose(stats['bn']['mean'], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['bn']['var'], var, rtol=1e-5, atol=1e-6)
  # Whole-data batches, long enough that the init statistics have decayed (0.9 ** 300):
  # the data's mean and (biased) variance, up to the resampling noise.
  x = _images(b=512, seed=8)
  h = _bn_input(params, x)
  stats = apply_fn.estimate_batch_stats(params, x, key=key, num_batches=300, batch_size=512)
  sd = h.std(axis=0)
  np.testing.assert_allclose(stats['bn']['mean'], h.mean(axis=0), atol=float(0.05 * sd.min()))
  np.testing.assert_allclose(stats['bn']['var'], h.var(axis=0), rtol=0.05)


def _trained(params, seed):
  """`params` moved away from init, as training would (the statistics then matter)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a: (np.asarray(a) + 0.5 * rng.standard_normal(a.shape)).astype(np.float32), params)


def test_recalibrated_state_passes_the_statistics_as_data():
  _, apply_fn, params, x = _dense_bn_dense()
  params = _trained(params, 0)
  kw = dict(key=jax.random.PRNGKey(4), num_batches=3, batch_size=4)
  state = recalibrated_state(apply_fn, params, x, **kw)
  bound = recalibrated(apply_fn, params, x, **kw)
  pair_params, pair_state = state.variables
  assert pair_params is params
  jax.tree_util.tree_map(np.testing.assert_array_equal, pair_state, bound.state)
  # The forward pass in float64 NumPy with the re-estimated statistics.
  p, stats = _np(params), _np(pair_state['batch_stats'])['bn']
  h = (_bn_input(params, x) - stats['mean']) / np.sqrt(stats['var'] + 1e-5)
  h = np.maximum(h * p['bn']['scale'] + p['bn']['bias'], 0.0)
  expected = h @ p['head']['kernel'] + p['head']['bias']
  np.testing.assert_allclose(state.apply_fn(state.variables, x), expected, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(state.apply_fn(state.variables, x), bound(params, x))
  # Gradients: of params only (the filter never selects a statistic), as `recalibrated`'s.
  y = np.arange(6) % 3
  scalar = ntk.true_class_logit
  grads = {}
  for param_filter in (None, 'head', lambda path, leaf: path.startswith('head/')):
    pair = recalibrated_state(apply_fn, params, x, param_filter=param_filter, **kw)
    grads[param_filter if param_filter is None or isinstance(param_filter, str)
          else 'callable'] = ntk.per_example_grads(scalar(pair.apply_fn), pair.variables, x,
                                                   y, param_filter=pair.param_filter)
  want = ntk.per_example_grads(scalar(bound), params, x, y)
  assert want.shape == (6, ntk.flat_param_count(params))
  np.testing.assert_allclose(grads[None], want, rtol=1e-6, atol=1e-7)
  # Leaf order bn/{bias, scale}, head/{bias, kernel}, hidden/...: the head's 3 + 12
  # columns follow the BatchNorm's 4 + 4.
  np.testing.assert_allclose(grads['head'], grads[None][:, 8:23], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(grads['callable'], grads['head'])
  # A model without statistics: everything back unchanged.
  mlp = MLP((4,), 3)
  plain, mlp_params = bind_apply(mlp, init_model(mlp, jax.random.PRNGKey(0), x))
  unchanged = recalibrated_state(plain, mlp_params, x, param_filter='Dense_1', **kw)
  assert (unchanged.apply_fn is plain and unchanged.variables is mlp_params
          and unchanged.param_filter == 'Dense_1')
  for bad, message in ((3, 'param_filter must be None, a regex'),
                       ('(', "param_filter '\\(' is not a valid regex")):
    with pytest.raises(ValueError, match=message):
      recalibrated_state(apply_fn, params, x, param_filter=bad, **kw)
  with pytest.raises(ValueError, match='x must be'):
    recalibrated_state(apply_fn, params, x[:0], **kw)


def test_recalibrated_caps_the_batch_size_at_the_rows_of_x():
  # batch_size=64 on 6 rows re-estimates with batches of 6 rows, drawn as
  # estimate_batch_stats draws them (not 64 draws with replacement).
  _, apply_fn, params, x = _dense_bn_dense()
  params = _trained(params, 1)
  key, num_batches = jax.random.PRNGKey(6), 3
  bound = recalibrated(apply_fn, params, x, key=key, num_batches=num_batches, batch_size=64)
  h = _bn_input(params, x)
  mean, var = np.zeros(4), np.ones(4)  # the init statistics
  for b in range(num_batches):
    rows = np.asarray(jax.random.randint(jax.random.fold_in(key, b), (6,), 0, 6))
    mean = 0.9 * mean + 0.1 * h[rows].mean(axis=0)
    var = 0.9 * var + 0.1 * h[rows].var(axis=0)
  np.testing.assert_allclose(bound.state['batch_stats']['bn']['mean'], mean, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(bound.state['batch_stats']['bn']['var'], var, rtol=1e-5, atol=1e-6)


class _DropoutBatchNormNet(nn.Module):
  """Dense -> BatchNorm -> Dropout -> Dense, dropout on unless told ``deterministic``."""

  @nn.compact
  def __call__(self, x, train: bool = False, deterministic: bool = False):
    h = nn.Dense(4, name='hidden')(x.reshape((x.shape[0], -1)))
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name='bn')(h)
    return nn.Dense(3, name='head')(nn.Dropout(0.5)(nn.relu(h), deterministic=deterministic))


def test_bound_applies_pass_deterministic_to_a_dropout_model():
  """bind_apply passes deterministic=True: the inference apply and train_apply (batch
  statistics, as training.train calls it, with no dropout key) are the dropout-free forward."""
  model = _DropoutBatchNormNet()
  x = _images(b=6, seed=5)
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(5), x))
  params = _trained(params, 2)
  p = _np(params)
  h = _bn_input(params, x)

  def head(normalised):
    relu = np.maximum(normalised * p['bn']['scale'] + p['bn']['bias'], 0.0)
    return relu @ p['head']['kernel'] + p['head']['bias']
  np.testing.assert_allclose(apply_fn(params, x), head(h / np.sqrt(1 + 1e-5)), rtol=1e-5,
                             atol=1e-5)  # init statistics: mean 0, var 1
  np.testing.assert_allclose(apply_fn.train_apply(params, x),
                             head((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)), rtol=1e-5,
                             atol=1e-5)


class _CompileCountDenseBatchNormDense(_DenseBatchNormDense):
  """The same network under a class of its own: no other test warms its compile caches."""


def test_recalibrated_states_of_one_model_share_one_compile():
  """Two trained states (TRAK's models, TracIn's checkpoints): one gradient compile, one
  logits compile. `recalibrated` binds the statistics as constants: a compile per state."""
  model = _CompileCountDenseBatchNormDense()
  x = _images(b=6, seed=5)
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(5), x))
  y = np.arange(6) % 3
  # pylint: disable=protected-access
  grads_before = ntk._grads_block._cache_size()
  logits_before = valuation._logits_block._cache_size()
  for seed in (1, 2):
    state = recalibrated_state(apply_fn, _trained(params, seed), x, key=jax.random.PRNGKey(seed),
                               num_batches=2, batch_size=4)
    ntk.per_example_grads(ntk.true_class_logit(state.apply_fn), state.variables, x, y,
                          param_filter=state.param_filter)
    valuation.logits_at(state.apply_fn, state.variables, x)
  assert ntk._grads_block._cache_size() - grads_before == 1
  assert valuation._logits_block._cache_size() - logits_before == 1
  # `pair_apply` is equal across states; `with_batch_stats` itself is not (a new program).
  other = apply_fn.with_batch_stats(state.variables[1]['batch_stats'])
  assert other.pair_apply == apply_fn.pair_apply
  assert hash(other.pair_apply) == hash(apply_fn.pair_apply)
  assert other != apply_fn and apply_fn.pair_apply != apply_fn.variables_apply


def test_estimate_batch_stats_errors():
  _, apply_fn, params, x = _dense_bn_dense()
  kw = dict(key=jax.random.PRNGKey(0), num_batches=2, batch_size=3)
  with pytest.raises(ValueError, match='x must be'):
    apply_fn.estimate_batch_stats(params, x[:0], **kw)
  with pytest.raises(ValueError, match='num_batches'):
    apply_fn.estimate_batch_stats(params, x, **dict(kw, num_batches=0))
  with pytest.raises(ValueError, match='batch_size'):
    apply_fn.estimate_batch_stats(params, x, **dict(kw, batch_size=0))
  with pytest.raises(ValueError, match='num_rows'):
    apply_fn.estimate_batch_stats(params, x, num_rows=7, **kw)


def test_common_errors():
  model = MLP((4,), 3)
  with pytest.raises(ValueError, match='sample_x'):
    init_model(model, jax.random.PRNGKey(0), np.zeros((0, 8, 8, 1)))
  with pytest.raises(ValueError, match="'params'"):
    bind_apply(model, {'batch_stats': {}})


@pytest.mark.parametrize('make, message', [
    (lambda: MLP((7.5,), 3), 'hidden_sizes'),
    (lambda: MLP((4, 0), 3), 'hidden_sizes'),
    (lambda: MLP((4,), 2.5), 'num_classes'),
    (lambda: MLP((True,), 3), 'hidden_sizes'),
    (lambda: SmallCNN((3.5,), 3), 'channels'),
    (lambda: SmallCNN((2,), 0), 'num_classes'),
])
def test_widths_must_be_whole_numbers(make, message):
  # int() used to cut a width of 7.5 to 7 (and 2.5 classes to 2) without a word; a width
  # of 0 gave an empty layer.
  with pytest.raises(ValueError, match=rf'{message}(\[\d\])? must be an integer >= 1'):
    init_model(make(), jax.random.PRNGKey(0), _images(b=1))
  # Whole floats and NumPy ints (what a config may hold) are still accepted.
  init_model(MLP((np.int64(4), 3.0), np.int32(3)), jax.random.PRNGKey(0), _images(b=1))
