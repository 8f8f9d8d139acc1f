"""Tests of dv_jax.baselines: DAVINZ, TracIn, TRAK, random and the registry.

Each score is checked against a small float64 NumPy reference of its formula (DAVINZ's
`sqrt(Y^T (G G^T + 1e-4 I)^-1 Y / n)` and kappa, TracIn's learning-rate-weighted sum of
gradient dot products, TRAK's projected ridge formula), the per-example functions they
differentiate against NumPy and `jax.grad` one example at a time, whole methods end to end
(TracIn and TRAK retrained with the same keys, DAVINZ's NTK term from closed-form kernel
gradients of the MLP), the random baseline for being seeded, every method for naming a bad
contributor or config field (before training; a misspelt key and a seed that is not a
whole number too) and every score function for naming a bad argument; TracIn's rate per
checkpoint under a cosine schedule; bfloat16 gradients and logits aggregated in float32;
and, for a BatchNorm model, that all checkpoints / models share one compile.
"""

import copy
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dv_jax import baselines
from dv_jax import ntk
from dv_jax import training
from dv_jax import valuation
from dv_jax.baselines import davinz
from dv_jax.baselines import random_baseline
from dv_jax.baselines import tracin
from dv_jax.baselines import trak
from dv_jax.data.contributors import Contributor
from dv_jax.data.contributors import Split
from dv_jax.models.common import BatchNormApply
from dv_jax.models.common import bind_apply
from dv_jax.models.common import init_model
from dv_jax.models.common import recalibrated
from dv_jax.models.mlp import MLP

from config_helpers import with_baseline_setting

NUM_CLASSES = 3
DIM = 5


def _data(key, n):
  kx, ky = jax.random.split(key)
  return (np.asarray(jax.random.normal(kx, (n, DIM)), np.float32),
          np.asarray(jax.random.randint(ky, (n,), 0, NUM_CLASSES), np.int32))


@pytest.fixture(scope='module')
def setup():
  model = MLP(hidden_sizes=(4,), num_classes=NUM_CLASSES)
  tx, ty = _data(jax.random.PRNGKey(7), 8)
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(1), tx))
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  xa, ya = _data(keys[0], 6)
  xb, yb = _data(keys[1], 5)
  xc, yc = _data(keys[2], 7)
  contributors = [Contributor('a', xa[:4], ya[:4], xa[4:], ya[4:]),
                  Contributor('b', xb, yb, None, None),
                  Contributor('c', None, None, xc, yc)]
  config = baselines.default_config()
  for name in ('tracin', 'trak'):
    config.baselines[name].train.steps = 6
    config.baselines[name].train.batch_size = 4
  config.baselines.tracin.num_checkpoints = 2
  config.baselines.trak.num_models = 2
  config.baselines.trak.projection_dim = 16
  return dict(apply_fn=apply_fn, params=params, target=Split(tx, ty, np.zeros(8, bool)),
              contributors=contributors, config=config)


def _call(name, setup, contributors=None):
  return baselines.BASELINES[name](setup['contributors'] if contributors is None
                                   else contributors, setup['target'],
                                   apply_fn=setup['apply_fn'], params=setup['params'],
                                   config=setup['config'])


# ----------------------------------------------------------------------------------------
# Registry.


def test_registry_is_explicit_and_raises_on_unknown_names():
  assert set(baselines.BASELINES) == {'davinz', 'tracin', 'trak', 'random'}
  with pytest.raises(KeyError, match='known'):
    baselines.BASELINES['shapley_by_magic']  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match='unknown baseline'):
    baselines.get_baseline('influence')
  assert baselines.get_baseline('trak') is trak.value


@pytest.mark.parametrize('name', ['davinz', 'tracin', 'trak', 'random'])
def test_each_baseline_returns_a_valuation(setup, name):
  result = _call(name, setup)
  assert result.names == ('a', 'b', 'c')
  values = np.asarray(result.values)
  assert values.shape == (3,) and np.all(np.isfinite(values))
  np.testing.assert_array_equal(result.ranking, np.argsort(-values, kind='stable'))
  assert result.seconds['total'] >= 0


@pytest.mark.parametrize('name', ['davinz', 'tracin', 'trak', 'random'])
@pytest.mark.parametrize('defect', ['nan', 'empty'])
def test_bad_contributor_is_named(setup, name, defect):
  x, y = _data(jax.random.PRNGKey(3), 3)
  x = x.copy()
  if defect == 'nan':
    x[1, 2] = np.nan
  else:  # an empty subset
    x, y = x[:0], y[:0]
  bad = Contributor('broken_one', x, y, None, None)
  with pytest.raises(ValueError, match='broken_one'):
    _call(name, setup, setup['contributors'][:2] + [bad])


# ----------------------------------------------------------------------------------------
# DAVINZ.


def _np_davinz_ntk(grads, residual, jitter, blocks):
  grads = np.asarray(grads, np.float64)
  residual = np.asarray(residual, np.float64)
  total = 0.0
  for rows in blocks:
    g = grads[rows]
    total += residual[rows] @ np.linalg.solve(g @ g.T + jitter * np.eye(len(rows)),
                                              residual[rows])
  return math.sqrt(total / grads.shape[0])


def test_davinz_ntk_score_matches_numpy():
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(11, 4))  # n > p: the NTK is singular, the jitter matters
  residual = rng.normal(size=11)
  key = jax.random.PRNGKey(5)
  one = davinz.ntk_score(grads, residual, num_blocks=1, num_permutations=1, jitter=1e-4,
                         key=key)
  np.testing.assert_allclose(one, _np_davinz_ntk(grads, residual, 1e-4, [np.arange(11)]),
                             rtol=2e-3)
  # Three blocks of the permutation drawn from the first split key (official slicing).
  three = davinz.ntk_score(grads, residual, num_blocks=3, num_permutations=1, jitter=1e-2,
                           key=key)
  order = np.asarray(jax.random.permutation(jax.random.split(key, 1)[0], 16))
  order = order[order < 11]  # a permutation of the next power of two, filtered
  blocks = [order[b * 11 // 3:(b + 1) * 11 // 3] for b in range(3)]
  np.testing.assert_allclose(three, _np_davinz_ntk(grads, residual, 1e-2, blocks), rtol=1e-4)
  # Several permutations: the mean of each one's square-rooted score, as the official
  # code (before: the square root of the mean, larger by Jensen's inequality).
  mean = davinz.ntk_score(grads, residual, num_blocks=3, num_permutations=4, jitter=1e-2,
                          key=key)
  scores = []
  for perm_key in jax.random.split(key, 4):
    order = np.asarray(jax.random.permutation(perm_key, 16))
    order = order[order < 11]
    scores.append(_np_davinz_ntk(grads, residual, 1e-2,
                                 [order[b * 11 // 3:(b + 1) * 11 // 3] for b in range(3)]))
  np.testing.assert_allclose(mean, np.mean(scores), rtol=1e-4)


def test_davinz_value_is_kappa_ntk_plus_mmd(setup):
  result = _call('davinz', setup)
  mmd, ntk = result.extras['mmd'], result.extras['ntk']
  kappa = mmd.mean() / ntk.mean()
  np.testing.assert_allclose(result.extras['kappa'], kappa, rtol=1e-12)
  np.testing.assert_allclose(result.values, -(kappa * ntk + mmd), rtol=1e-6)
  # The MMD: one RBF kernel exp(-d^2 / (2 sigma^2)) on raw inputs, biased, sigma = 5.
  c = setup['contributors'][0]
  x = np.concatenate([c.x_real, c.x_synthetic]).astype(np.float64)
  t = np.asarray(setup['target'].x, np.float64)

  def k(a, b):
    return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * 5.0 ** 2)).mean()

  np.testing.assert_allclose(mmd[0], math.sqrt(k(x, x) + k(t, t) - 2 * k(x, t)), rtol=1e-4)


def test_davinz_refuses_projected_blocks_the_projection_cannot_hold(setup, monkeypatch):
  # The projected NTK of a block has rank <= projection_dim: one block of contributor c's 7
  # rows on 8 projected dimensions scored the jitter (the paper-scale config had 1 block of
  # up to 5,000 rows on 2,048). Refused before any gradient, naming num_blocks.
  config = copy.deepcopy(setup['config'])
  config.baselines.davinz.projection_dim = 8
  monkeypatch.setattr(ntk, 'per_example_grads', None)  # not reached
  with pytest.raises(ValueError, match=r'contributor of 7 examples in baselines\.davinz\.'
                                       r'num_blocks=1 blocks\) holds up to 7 examples, more '
                                       r'than half of projection_dim=8'):
    baselines.BASELINES['davinz'](setup['contributors'], setup['target'],
                                  apply_fn=setup['apply_fn'], params=setup['params'],
                                  config=config)
  # Two blocks of 7 rows hold 3 and 4 (the larger is ceil(7 / 2)): 4 > 7 / 2.
  config.baselines.davinz.update(num_blocks=2, projection_dim=7)
  with pytest.raises(ValueError, match=r'num_blocks=2 blocks\) holds up to 4 examples'):
    baselines.BASELINES['davinz'](setup['contributors'], setup['target'],
                                  apply_fn=setup['apply_fn'], params=setup['params'],
                                  config=config)
  monkeypatch.undo()
  config.baselines.davinz.update(num_blocks=2, projection_dim=8)  # blocks of <= 4 rows
  result = baselines.BASELINES['davinz'](setup['contributors'], setup['target'],
                                         apply_fn=setup['apply_fn'], params=setup['params'],
                                         config=config)
  assert np.all(np.isfinite(result.values))


@pytest.mark.parametrize('field, value, message', [
    ('num_blocks', 0, 'num_blocks must be an integer >= 1'),
    ('num_permutations', 0, 'num_permutations must be an integer >= 1'),
    ('sigma', -1.0, 'sigma must be a finite length scale'),
    ('sigma', float('nan'), 'sigma must be a finite length scale'),
])
def test_davinz_rejects_a_degenerate_config(setup, field, value, message):
  # Before: 0 blocks zeroed the NTK term, 0 permutations divided by zero, and a negative
  # sigma silently became the median heuristic.
  config = copy.deepcopy(setup['config'])
  config.baselines.davinz[field] = value
  with pytest.raises(ValueError, match=f'config.baselines.davinz.{message}'):
    baselines.BASELINES['davinz'](setup['contributors'], setup['target'],
                                  apply_fn=setup['apply_fn'], params=setup['params'],
                                  config=config)
  if field != 'sigma':
    kwargs = dict(num_blocks=1, num_permutations=1, jitter=1e-4, key=jax.random.PRNGKey(0))
    kwargs[field] = value
    with pytest.raises(ValueError, match=f'^{message}'):
      davinz.ntk_score(np.ones((4, 3)), np.ones(4), **kwargs)


@pytest.mark.parametrize('grads, residual, jitter, message', [
    (np.ones((4, 3)), np.ones(3), 1e-4, r'residual must be \[4\]'),
    (np.ones((4, 3)), np.ones((4, 1)), 1e-4, r'residual must be \[4\]'),
    (np.ones((0, 3)), np.ones(0), 1e-4, r'grads must be \[n, p\] with n >= 1'),
    (np.ones(4), np.ones(4), 1e-4, r'grads must be \[n, p\]'),
    (np.ones((4, 3)), np.ones(4), 0.0, 'jitter must be finite and > 0'),
    (np.ones((4, 3)), np.full(4, np.nan), 1e-4, 'residual contains NaN'),
    # Before: zero-width gradients scored 1/sqrt(jitter) = 31.6 (Theta = 0), and jitter
    # None or '1e-3' was a TypeError, True ran with jitter 1.0.
    (np.ones((4, 0)), np.ones(4), 1e-3, r'grads must be \[n, p\] with n >= 1 and p >= 1'),
    (np.ones((4, 3)), np.ones(4), None, 'jitter must be finite and > 0'),
    (np.ones((4, 3)), np.ones(4), '1e-3', 'jitter must be finite and > 0'),
    (np.ones((4, 3)), np.ones(4), True, 'jitter must be finite and > 0'),
    (np.ones((4, 3)), np.ones(4), np.inf, '^jitter must be finite and > 0'),
])
def test_davinz_ntk_score_names_a_bad_input(grads, residual, jitter, message):
  # Before: a short residual was an IndexError, an empty subset a ZeroDivisionError, and a
  # non-positive jitter was named `initial_jitter`.
  with pytest.raises(ValueError, match=message):
    davinz.ntk_score(grads, residual, num_blocks=1, num_permutations=1, jitter=jitter,
                     key=jax.random.PRNGKey(0))


@pytest.mark.parametrize('jitter', [1e-4, 0.3])
def test_davinz_ntk_term_matches_closed_form_kernel_gradients(setup, jitter):
  """extras['ntk'] from the closed-form gradients of the true-class logit of the MLP
  `W2^T relu(W1^T x + b1) + b2` with respect to its kernels only (DAVINZ's weights-only
  NTK), the residual `1 - f_y(x)`, one block (the default), the absolute jitter
  `baselines.davinz.jitter` (default 1e-4), in float64 NumPy."""
  config = copy.deepcopy(setup['config'])
  config.baselines.davinz.jitter = jitter
  result = _call('davinz', dict(setup, config=config))
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), setup['params'])
  w1, b1 = p['Dense_0']['kernel'], p['Dense_0']['bias']
  w2, b2 = p['Dense_1']['kernel'], p['Dense_1']['bias']
  for i, c in enumerate(setup['contributors']):
    data = c.pooled()
    x, y = np.asarray(data.x, np.float64), np.asarray(data.y)
    pre = x @ w1 + b1
    h = np.maximum(pre, 0.0)
    logit = (h @ w2 + b2)[np.arange(len(y)), y]
    d_w2 = np.zeros((len(y),) + w2.shape)
    d_w2[np.arange(len(y)), :, y] = h  # d logit_y / d W2[:, y] = h
    d_w1 = x[:, :, None] * (w2[:, y].T * (pre > 0))[:, None, :]  # x (W2[:, y] * relu')^T
    g = np.concatenate([d_w1.reshape(len(y), -1), d_w2.reshape(len(y), -1)], axis=1)
    r = 1.0 - logit
    expected = math.sqrt(r @ np.linalg.solve(g @ g.T + jitter * np.eye(len(y)), r) / len(y))
    np.testing.assert_allclose(result.extras['ntk'][i], expected, rtol=2e-3)


def test_davinz_sigma_zero_on_a_target_of_coinciding_rows_names_sigma(setup):
  # Six of eight rows equal: the median heuristic is 0, and mk_mmd refused it as
  # "bandwidths must be positive", an argument the caller never passed.
  tx = np.array(setup['target'].x)
  tx[:6] = tx[0]
  config = copy.deepcopy(setup['config'])
  config.baselines.davinz.sigma = 0.0
  target = Split(tx, setup['target'].y, np.zeros(8, bool))
  with pytest.raises(ValueError, match=r'davinz\.sigma=0 asks for the median heuristic.*'
                                       r'set config\.baselines\.davinz\.sigma > 0'):
    _call('davinz', dict(setup, config=config, target=target))


def test_davinz_sigma_zero_or_none_is_the_median_heuristic(setup):
  values = []
  for sigma in (0.0, None):
    config = copy.deepcopy(setup['config'])
    config.baselines.davinz.sigma = sigma
    values.append(_call('davinz', dict(setup, config=config)).extras['mmd'])
  np.testing.assert_array_equal(values[0], values[1])
  # The median heuristic's bandwidth, by hand, for contributor 'b' (real part only).
  t = np.asarray(setup['target'].x, np.float64)
  d2 = ((t[:, None] - t[None]) ** 2).sum(-1)
  s = np.median(d2[np.triu_indices(t.shape[0], 1)])
  x = np.asarray(setup['contributors'][1].x_real, np.float64)

  def k(a, b):
    return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * s)).mean()

  np.testing.assert_allclose(values[0][1], math.sqrt(k(x, x) + k(t, t) - 2 * k(x, t)),
                             rtol=1e-4)


# ----------------------------------------------------------------------------------------
# TracIn.


def test_tracin_scores_are_the_weighted_dot_product_sum():
  rng = np.random.default_rng(1)
  owner = np.array([0, 0, 1, 2, 1])
  train = [rng.normal(size=(5, 3)) for _ in range(2)]
  target = [rng.normal(size=(4, 3)) for _ in range(2)]
  etas = [0.1, 0.05]
  expected = np.zeros(3)
  for g, gt, eta in zip(train, target, etas):
    for z in range(5):
      for zp in range(4):
        expected[owner[z]] += eta * g[z] @ gt[zp]
  got = tracin.tracin_scores([jnp.asarray(g, jnp.float32) for g in train],
                             [jnp.asarray(g, jnp.float32) for g in target], etas, owner, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_tracin_scores_reject_silent_truncation():
  g = [np.ones((4, 3), np.float32)] * 2
  owner = np.array([0, 0, 1, 1])
  # Before: zip dropped the second checkpoint for want of a learning rate.
  with pytest.raises(ValueError, match='same length'):
    tracin.tracin_scores(g, g, [0.1], owner, 2)
  with pytest.raises(ValueError, match='same length'):
    tracin.tracin_scores(g, g[:1], [0.1, 0.1], owner, 2)
  # Before: segment_sum dropped the rows of contributor 2 of K = 2.
  with pytest.raises(ValueError, match=r'owner must lie in \[0, num_contributors\)'):
    tracin.tracin_scores(g, g, [0.1, 0.1], np.array([0, 0, 1, 2]), 2)
  with pytest.raises(ValueError, match='owner must be'):
    tracin.tracin_scores(g, g, [0.1, 0.1], owner[:3], 2)
  # Before: zero checkpoints passed the length check and scored every contributor 0.
  with pytest.raises(ValueError, match='same length J >= 1'):
    tracin.tracin_scores([], [], [], owner, 2)


@pytest.mark.parametrize('change, message', [
    (dict(train=1, value=np.nan), r'train_grads\[1\] contains NaN or Inf'),
    (dict(target=0, value=np.inf), r'target_grads\[0\] contains NaN or Inf'),
    (dict(target=0, rows=0), r'target_grads\[0\] must be \[rows, p\] with at least one row'),
    (dict(target=1, width=2), r'train_grads\[1\] and target_grads\[1\] must have the same '
                              'width'),
    (dict(train=0, ndim=1), r'train_grads\[0\] must be \[rows, p\]'),
    (dict(eta=np.nan), 'learning_rates must be'),
    (dict(etas=0.1), r'learning_rates must be \[J\]'),  # len(0.1) was a TypeError before
])
def test_tracin_scores_name_a_bad_input(change, message):
  # Before: NaN spread into the scores, an empty target scored every contributor 0, and a
  # width mismatch was a TypeError from deep inside jnp.dot.
  train = [np.ones((4, 3), np.float32) for _ in range(2)]
  target = [np.ones((2, 3), np.float32) for _ in range(2)]
  etas = [0.1, 0.1]
  arrays, j = (train, change['train']) if 'train' in change else (target, change.get('target'))
  if 'value' in change:
    arrays[j] = arrays[j].copy()
    arrays[j][0, 1] = change['value']
  if 'rows' in change:
    arrays[j] = arrays[j][:change['rows']]
  if 'width' in change:
    arrays[j] = arrays[j][:, :change['width']]
  if 'ndim' in change:
    arrays[j] = arrays[j][:, 0]
  if 'eta' in change:
    etas[1] = change['eta']
  etas = change.get('etas', etas)
  with pytest.raises(ValueError, match=message):
    tracin.tracin_scores(train, target, etas, np.array([0, 0, 1, 1]), 2)


def test_tracin_loss_fn_is_the_cross_entropy(setup):
  apply_fn, params = setup['apply_fn'], setup['params']
  x, y = setup['target'].x[:3], setup['target'].y[:3]
  fn = tracin.loss_fn(apply_fn)
  for x_i, y_i in zip(x, y):
    z = np.asarray(apply_fn(params, x_i[None])[0], np.float64)
    expected = z.max() + math.log(np.exp(z - z.max()).sum()) - z[y_i]  # float64 NumPy
    np.testing.assert_allclose(fn(params, jnp.asarray(x_i), y_i), expected, rtol=1e-5)
  assert fn == tracin.loss_fn(apply_fn) and hash(fn) == hash(tracin.loss_fn(apply_fn))


@pytest.mark.parametrize('scalar', [tracin.loss_fn, trak.margin_fn])
@pytest.mark.parametrize('label', [NUM_CLASSES, -1])
def test_per_example_scalars_refuse_a_label_outside_the_classes(setup, scalar, label):
  # Before, called directly: label 3 of 3 classes gave NaN (loss) or the clamped class 2's
  # margin; label -1 silently read class 2 in both.
  fn = scalar(setup['apply_fn'])
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 3\)'):
    fn(setup['params'], jnp.asarray(setup['target'].x[0]), label)


@pytest.mark.parametrize('projection_dim', [0, 8])
def test_tracin_end_to_end_matches_a_loop_over_checkpoints(setup, projection_dim):
  """Retrains with the same key and recomputes the score with jax.grad per example; with a
  projection, the gradients times `P [p, k]`, read off as the projected gradients of the
  coordinates (before, a projection was checked only for its config errors)."""
  config = copy.deepcopy(setup['config'])
  config.baselines.tracin.projection_dim = projection_dim
  result = _call('tracin', dict(setup, config=config))
  cfg = config.baselines.tracin
  apply_fn, params = setup['apply_fn'], setup['params']
  x = np.concatenate([np.concatenate([p for p in (c.x_real, c.x_synthetic) if p is not None])
                      for c in setup['contributors']])
  y = np.concatenate([np.concatenate([p for p in (c.y_real, c.y_synthetic) if p is not None])
                      for c in setup['contributors']])
  owner = np.repeat([0, 1, 2], [c.size for c in setup['contributors']])
  key, k_proj = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 12))
  train_cfg = training.as_train_config(cfg.train)._replace(checkpoint_every=3)
  trained = training.train(apply_fn, params, x, y, config=train_cfg, key=key,
                           num_classes=NUM_CLASSES)
  num_params = _flat(params).shape[0]
  if projection_dim:
    projection = ntk.Projection(projection_dim, 'rademacher', k_proj)
    proj_matrix = np.asarray(ntk.per_example_grads(_coordinate, params, np.eye(num_params),
                                                   np.zeros(num_params), projection=projection),
                             np.float64)
  else:
    proj_matrix = np.eye(num_params)

  def loss(p, x_i, y_i):
    return training.cross_entropy(apply_fn(p, x_i[None]), jnp.asarray([y_i]))[0]

  def flat_grad(p, x_i, y_i):
    return np.concatenate([np.asarray(l, np.float64).ravel() for l in
                           jax.tree_util.tree_leaves(jax.grad(loss)(p, x_i, y_i))]) @ proj_matrix

  expected = np.zeros(3)
  for j in range(2):
    p_j = jax.tree_util.tree_map(lambda leaf, j=j: leaf[j], trained.checkpoints)
    target_sum = sum(flat_grad(p_j, xt, yt) for xt, yt in zip(setup['target'].x,
                                                                setup['target'].y))
    for x_i, y_i, o in zip(x, y, owner):
      expected[o] += float(trained.learning_rates[j]) * flat_grad(p_j, x_i, y_i) @ target_sum
  np.testing.assert_allclose(result.values, expected, rtol=1e-3, atol=1e-6)


def test_tracin_checkpoints_on_the_host_score_as_on_the_device(setup, monkeypatch):
  # checkpoints_on_host=True (the LLM configs) trains one segment per checkpoint and keeps
  # them as NumPy arrays: the same scores, and the flag really reaches training.
  on_device = _call('tracin', setup)
  seen = []
  train = training.train
  monkeypatch.setattr(training, 'train', lambda *a, **k: (
      seen.append(k.get('checkpoints_on_host')) or train(*a, **k)))
  config = copy.deepcopy(setup['config'])
  config.baselines.tracin.checkpoints_on_host = True
  on_host = _call('tracin', dict(setup, config=config))
  assert seen == [True]
  np.testing.assert_allclose(on_host.values, on_device.values, rtol=1e-5,
                             atol=1e-6 * np.abs(on_device.values).max())


def test_tracin_weights_each_checkpoint_by_its_own_learning_rate(setup, monkeypatch):
  """Under a cosine schedule each checkpoint's rate differs: checkpoint j (after steps
  (j + 1) e) is weighted by the mean rate of the steps since the previous checkpoint,
  eta (1 + cos(pi t / T)) / 2 for t = j e, ..., (j + 1) e - 1, not by the base rate, nor by
  the last step's rate, which gives the final checkpoint a weight near 0."""
  captured = []
  scores = tracin.tracin_scores

  def spy(train_grads, target_grads, learning_rates, owner, num_contributors):
    captured.append(np.asarray(learning_rates, np.float64))
    return scores(train_grads, target_grads, learning_rates, owner, num_contributors)

  monkeypatch.setattr(tracin, 'tracin_scores', spy)
  config = copy.deepcopy(setup['config'])
  config.baselines.tracin.train.schedule = 'cosine'
  config.baselines.tracin.num_checkpoints = 3  # steps 6: checkpoints after steps 2, 4, 6
  result = _call('tracin', dict(setup, config=config))
  eta = config.baselines.tracin.train.learning_rate
  step_rates = eta * (1 + np.cos(np.pi * np.arange(6) / 6)) / 2
  expected = step_rates.reshape(3, 2).mean(axis=1)
  assert len(captured) == 1
  np.testing.assert_allclose(captured[0], expected, rtol=1e-6)
  np.testing.assert_allclose(result.extras['learning_rates'], expected, rtol=1e-6)


class _BatchNormMLP(nn.Module):
  """Dense -> BatchNorm -> relu -> Dense: a model whose training mode uses batch statistics."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(4)(x))
    return nn.Dense(NUM_CLASSES)(nn.relu(h))


@pytest.mark.slow  # ~8 s, mostly the eager jax.grad reference loop: main environment only
def test_tracin_and_trak_train_a_batch_norm_model_with_batch_statistics(setup):
  """TracIn's checkpoints and TRAK's models are read with statistics re-estimated from
  their own params, on `bn_batches` batches (2, not the default 64) keyed per checkpoint
  (model): fold_in(fold_in(stage key, 2), j), apart from the projection's key (stage, 1)."""
  model = _BatchNormMLP()
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(3),
                                                  setup['target'].x))
  assert isinstance(apply_fn, BatchNormApply)
  config = copy.deepcopy(setup['config'])
  config.baselines.tracin.bn_batches = 2
  config.baselines.trak.bn_batches = 2
  bn_setup = dict(setup, apply_fn=apply_fn, params=params, config=config)
  result = _call('tracin', bn_setup)
  cfg = config.baselines.tracin
  x, y, _, owner = valuation.pool_examples(setup['contributors'])
  base = jax.random.fold_in(jax.random.PRNGKey(0), 12)
  train_cfg = training.as_train_config(cfg.train)._replace(checkpoint_every=3)
  trained = training.train(apply_fn, params, x, y, config=train_cfg,
                           key=jax.random.split(base)[0], num_classes=NUM_CLASSES,
                           use_batch_stats=True)
  expected = np.zeros(3)
  for j in range(2):
    p_j = jax.tree_util.tree_map(lambda leaf, j=j: leaf[j], trained.checkpoints)
    apply_j = recalibrated(apply_fn, p_j, x, key=jax.random.fold_in(jax.random.fold_in(base, 2),
                                                                    j),
                           num_batches=2, batch_size=train_cfg.batch_size)

    def grad(x_i, y_i, apply_j=apply_j, p_j=p_j):
      g = jax.grad(lambda p: training.cross_entropy(apply_j(p, x_i[None]),
                                                    jnp.asarray([y_i]))[0])(p_j)
      return np.concatenate([np.asarray(l, np.float64).ravel()
                             for l in jax.tree_util.tree_leaves(g)])

    target_sum = sum(grad(xt, yt) for xt, yt in zip(setup['target'].x, setup['target'].y))
    for x_i, y_i, o in zip(x, y, owner):
      expected[o] += float(trained.learning_rates[j]) * grad(x_i, y_i) @ target_sum
  np.testing.assert_allclose(result.values, expected, rtol=1e-3, atol=1e-6)
  # TRAK runs the same path (train mode, re-estimated statistics per model), its 2 models
  # sharing one compile of the gradient block and one of the logits block (the statistics
  # are arguments, not constants bound into a new apply_fn per model).
  # pylint: disable=protected-access
  grads_before = ntk._grads_block._cache_size()
  logits_before = valuation._logits_block._cache_size()
  result = _call('trak', bn_setup)
  assert ntk._grads_block._cache_size() - grads_before == 1
  assert valuation._logits_block._cache_size() - logits_before == 1
  # pylint: enable=protected-access
  cfg = config.baselines.trak
  stage = jax.random.fold_in(jax.random.PRNGKey(0), 13)
  k_train, k_proj = jax.random.split(stage)
  trained = training.train_many_seeds(apply_fn, params, x, y, config=cfg.train,
                                      keys=jax.random.split(k_train, 2),
                                      num_classes=NUM_CLASSES, use_batch_stats=True)
  expected = []
  for r in range(2):
    p_r = jax.tree_util.tree_map(lambda leaf, r=r: leaf[r], trained.params)
    apply_r = recalibrated(apply_fn, p_r, x, key=jax.random.fold_in(jax.random.fold_in(stage, 2),
                                                                    r),
                           num_batches=2, batch_size=cfg.train.batch_size)
    expected.append(_np_trak_model_scores(apply_r, p_r, jax.random.fold_in(k_proj, r),
                                          (x, y, owner),
                                          (setup['target'].x, setup['target'].y),
                                          ridge=cfg.ridge))
  expected = np.stack(expected)
  np.testing.assert_allclose(result.extras['per_model'], expected, rtol=1e-3,
                             atol=1e-4 * np.abs(expected).max())


def test_trak_models_trained_one_after_another_score_as_the_vmapped_program(setup,
                                                                          monkeypatch):
  # vmap_models=False (the LLM configs: three vmapped fine-tunings of a 1.5B model hold 13
  # float32 copies of its parameters, 75 GiB before any activation) trains model r with
  # train(key=keys[r]), which train_many_seeds promises equals its run r.
  vmapped = _call('trak', setup)
  calls = []
  for name in ('train', 'train_many_seeds'):
    real = getattr(training, name)
    monkeypatch.setattr(training, name, lambda *a, name=name, real=real, **k: (
        calls.append(name) or real(*a, **k)))
  config = copy.deepcopy(setup['config'])
  config.baselines.trak.vmap_models = False
  one_at_a_time = _call('trak', dict(setup, config=config))
  assert calls == ['train', 'train']
  np.testing.assert_allclose(one_at_a_time.extras['per_model'], vmapped.extras['per_model'],
                             rtol=1e-4, atol=1e-6 * np.abs(vmapped.extras['per_model']).max())
  assert one_at_a_time.seconds['train'] > 0 and one_at_a_time.seconds['features'] > 0


class _CompileCountBatchNormMLP(nn.Module):
  """`_BatchNormMLP` under a class of its own: no other test warms its compile caches."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(4)(x))
    return nn.Dense(NUM_CLASSES)(nn.relu(h))


def test_batch_norm_checkpoints_share_one_gradient_compile(setup):
  """TracIn's per-checkpoint statistics are data, not constants: one compile for all.

  Before, each checkpoint bound its re-estimated statistics into a new `BatchNormApply`, a
  new static argument, so the gradient block compiled once per checkpoint (minutes per run
  for ResNet-18). TRAK's models: the BatchNorm test above; the mechanism:
  test_models_small's `recalibrated_state` tests.
  """
  model = _CompileCountBatchNormMLP()
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(3),
                                                  setup['target'].x))
  config = copy.deepcopy(setup['config'])
  config.baselines.tracin.num_checkpoints = 3
  config.baselines.tracin.bn_batches = 2
  before = ntk._grads_block._cache_size()  # pylint: disable=protected-access
  result = baselines.BASELINES['tracin'](setup['contributors'], setup['target'],
                                         apply_fn=apply_fn, params=params, config=config)
  # 3 checkpoints x (pool, target), both padded to one block shape: one compile.
  assert ntk._grads_block._cache_size() - before == 1  # pylint: disable=protected-access
  assert np.all(np.isfinite(result.values))


# ----------------------------------------------------------------------------------------
# TRAK.


def test_trak_scores_match_the_projected_ridge_formula():
  rng = np.random.default_rng(2)
  phi = rng.normal(size=(9, 4))
  phi_target = rng.normal(size=(3, 4))
  q = rng.uniform(size=9)
  owner = np.array([0, 1, 1, 2, 0, 2, 2, 1, 0])
  ridge = 1e-2
  gram = phi.T @ phi
  lam = ridge * np.trace(gram) / 4
  inv = np.linalg.inv(gram + lam * np.eye(4))
  expected = np.zeros(3)
  for z in range(9):
    for zp in range(3):
      expected[owner[z]] += phi_target[zp] @ inv @ phi[z] * q[z]
  got = trak.trak_scores(jnp.asarray(phi, jnp.float32), jnp.asarray(phi_target, jnp.float32),
                         q, owner, 3, ridge=ridge)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize('owner, message', [
    ([0, 1, 5, 7], r'owner must lie in \[0, num_contributors\)'),
    ([0, -1, 1, 1], r'owner must lie in \[0, num_contributors\)'),
    ([0, 1, 1], r'owner must be \[4\]'),
    ([0.0, 1.0, 1.0, 1.0], 'owner must hold integer'),
])
def test_trak_scores_reject_a_bad_owner(owner, message):
  # Before: segment_sum silently dropped the rows of an owner outside [0, K).
  phi = np.eye(4, dtype=np.float32)
  with pytest.raises(ValueError, match=message):
    trak.trak_scores(phi, phi[:2], np.ones(4, np.float32), np.asarray(owner), 2, ridge=1e-3)


@pytest.mark.parametrize('change, message', [
    (dict(q=np.ones((4, 1), np.float32)), r'q must be \[4\]'),
    (dict(q=np.array([1, np.nan, 1, 1], np.float32)), r'q must be \[4\]'),
    (dict(phi=np.where(np.eye(4) > 0, np.nan, 0).astype(np.float32)),
     'train_features contains NaN or Inf'),
    (dict(phi_target=np.ones((0, 4), np.float32)),
     r'target_features must be \[rows, k\] with at least one row'),
    (dict(phi_target=np.ones((2, 3), np.float32)), 'target_features must have the width k = 4'),
    (dict(ridge=0.0), 'ridge must be finite and > 0'),
    (dict(ridge=float('nan')), 'ridge must be finite and > 0'),
    (dict(ridge=None), 'ridge must be finite and > 0'),  # a TypeError from isfinite before
    (dict(ridge=True), 'ridge must be finite and > 0'),  # ran as a ridge of 1.0
    (dict(ridge=float('inf')), 'ridge must be finite and > 0'),
])
def test_trak_scores_name_a_bad_input(change, message):
  # Before: a [N, 1] q broadcast the scores to [K, N], a NaN q gave NaN scores, an empty
  # target scored 0, and the rest were named as linalg.psd_solve's `a`, `b` and `eps`.
  kwargs = dict(phi=np.eye(4, dtype=np.float32), phi_target=np.ones((2, 4), np.float32),
                q=np.ones(4, np.float32), ridge=1e-3)
  kwargs.update(change)
  with pytest.raises(ValueError, match=message):
    trak.trak_scores(kwargs['phi'], kwargs['phi_target'], kwargs['q'], np.array([0, 0, 1, 1]),
                     2, ridge=kwargs['ridge'])


@pytest.mark.parametrize('method', ['tracin', 'trak'])
def test_scores_of_bfloat16_features_are_summed_and_solved_in_float32(method):
  # The gradients of a bfloat16 model (config.model.dtype = 'bfloat16') are bfloat16.
  # Before: TracIn summed them per contributor in bfloat16 and TRAK built its Gram matrix
  # (and Q phi^T u) in bfloat16, ~3 significant digits, coarser than TRAK's ridge: errors
  # of ~0.4% (TracIn) and ~50% (TRAK; Spearman 0.83 against float32) on the digits MLP.
  rng = np.random.default_rng(4)
  bf16 = lambda a: jnp.asarray(a, jnp.bfloat16)  # pylint: disable=unnecessary-lambda-assignment
  f64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)  # the same values
  owner = np.repeat([0, 1], [150, 106])
  if method == 'tracin':
    g, g_target = bf16(1 + 0.1 * rng.normal(size=(256, 3))), bf16(rng.normal(size=(8, 3)))
    got = tracin.tracin_scores([g], [g_target], [0.5], owner, 2)
    expected = 0.5 * np.stack([f64(g)[owner == i].sum(0) for i in (0, 1)]) @ f64(
        g_target).sum(0)
  else:
    phi, phi_target = bf16(rng.normal(size=(256, 8)) + 3), bf16(rng.normal(size=(4, 8)))
    q = bf16(rng.uniform(size=256))
    got = trak.trak_scores(phi, phi_target, q, owner, 2, ridge=1e-3)
    gram = f64(phi).T @ f64(phi)
    u = np.linalg.solve(gram + 1e-3 * np.trace(gram) / 8 * np.eye(8), f64(phi_target).sum(0))
    expected = np.bincount(owner, weights=(f64(phi) @ u) * f64(q), minlength=2)
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, expected, rtol=1e-4)


class _Bfloat16Apply(ntk.ApplyFnWrapper):
  """`apply_fn` computed in bfloat16 (params and inputs cast): bfloat16 logits."""

  def __call__(self, params, x):
    cast = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.bfloat16), params)
    return self.apply_fn(cast, x.astype(jnp.bfloat16))


def test_trak_q_of_bfloat16_logits_is_computed_in_float32(setup, monkeypatch):
  # Before: softmax of bfloat16 logits, so Q = 1 - p_z on a grid of 2^-8 (off by up to
  # 40% for a confident example on the digits MLP).
  logits_seen, q_seen = [], []
  logits_at, scores = valuation.logits_at, trak.trak_scores

  def logits_spy(*args, **kwargs):
    logits_seen.append(logits_at(*args, **kwargs))
    return logits_seen[-1]

  def scores_spy(phi, phi_target, q, *args, **kwargs):
    q_seen.append(q)
    return scores(phi, phi_target, q, *args, **kwargs)

  monkeypatch.setattr(valuation, 'logits_at', logits_spy)
  monkeypatch.setattr(trak, 'trak_scores', scores_spy)
  _call('trak', dict(setup, apply_fn=_Bfloat16Apply(setup['apply_fn'])))
  y = valuation.pool_examples(setup['contributors'])[1]
  assert len(q_seen) == 2 and all(z.dtype == jnp.bfloat16 for z in logits_seen)
  for z, q in zip(logits_seen, q_seen):
    z = np.asarray(jnp.asarray(z, jnp.float32), np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(q, np.float64), 1 - p[np.arange(len(y)), y],
                               rtol=1e-5)


@pytest.mark.parametrize('method, field, value, message', [
    ('trak', 'projection_kind', 'sparse', 'projection_kind must be one of'),
    ('trak', 'ridge', -1.0, 'ridge must be finite and > 0'),
    ('trak', 'grad_block_size', 0, 'grad_block_size must be an integer >= 1'),
    ('trak', 'bn_batches', 0, 'bn_batches must be an integer >= 1'),
    ('trak', 'num_models', 0, 'num_models must be an integer >= 1'),
    ('tracin', 'projection_kind', 'sparse', 'projection_kind must be one of'),
    ('tracin', 'projection_dim', -1, 'projection_dim must be an integer >= 0'),
    ('tracin', 'grad_block_size', 0, 'grad_block_size must be an integer >= 1'),
    ('tracin', 'num_checkpoints', 4, 'num_checkpoints must divide'),
    ('davinz', 'jitter', 0.0, 'jitter must be finite and > 0'),
])
def test_a_bad_config_fails_before_the_training(setup, monkeypatch, method, field, value,
                                                message):
  # Before, TracIn's projection_kind and TRAK's ridge / projection_kind were first read
  # after training: a typo cost the whole training before failing.
  def no_training(*args, **kwargs):
    raise AssertionError('trained before checking the config')

  monkeypatch.setattr(training, 'train', no_training)
  monkeypatch.setattr(training, 'train_many_seeds', no_training)
  config = copy.deepcopy(setup['config'])
  config.baselines[method][field] = value
  if field == 'projection_kind' and method == 'tracin':
    config.baselines.tracin.projection_dim = 4
  with pytest.raises(ValueError, match=f'config.baselines.{method}.*{message}'):
    _call(method, dict(setup, config=config))


@pytest.mark.parametrize('path, value, message', [
    ('davinz.sigma', 'wide', 'davinz.sigma must be a finite length scale'),
    # Before: True was read as sigma = 1.0.
    ('davinz.sigma', True, 'davinz.sigma must be a finite length scale'),
    ('davinz.num_blocks', 1.5, 'davinz.num_blocks must be an integer >= 1'),
    ('davinz.jitter', None, 'davinz.jitter must be finite and > 0'),
    ('davinz.grad_block_size', 0, 'davinz.grad_block_size must be an integer >= 1'),
    ('davinz.projection_dim', -1, 'davinz.projection_dim must be an integer >= 0'),
    ('tracin.num_checkpoints', 1.5, 'tracin.num_checkpoints must be an integer >= 1'),
    ('tracin.num_checkpoints', 4, 'tracin.num_checkpoints must divide train.steps'),
    ('tracin.train.steps', 0, r'tracin.train: config.steps must be an integer >= 1'),
    # Before: overridden by steps / num_checkpoints without a word.
    ('tracin.train.checkpoint_every', 2,
     r'tracin.train.checkpoint_every is set by num_checkpoints'),
    ('tracin.train.lr', 0.1, r'tracin.train: config has unknown training fields'),
    ('tracin.bn_batches', 0, 'tracin.bn_batches must be an integer >= 1'),
    ('trak.ridge', -1.0, 'trak.ridge must be finite and > 0'),
    ('trak.ridge', 'small', 'trak.ridge must be finite and > 0'),
    ('trak.num_models', 2.5, 'trak.num_models must be an integer >= 1'),
    ('trak.projection_dim', 0, 'trak.projection_dim must be an integer >= 1'),
    ('trak.vmap_models', 'False', 'trak.vmap_models must be True or False'),
    ('tracin.checkpoints_on_host', 1, 'tracin.checkpoints_on_host must be True or False'),
    ('trak.train.optimizer', 'adamm', r'trak.train: config.optimizer must be one of'),
    ('random.seed_offset', -1, 'random.seed_offset must be an integer >= 0'),
    # Before: fold_in(key, 14 + seed_offset) raised an OverflowError only inside `value`.
    ('random.seed_offset', 2**32 - 14,
     'random.seed_offset must be <= 4294967281'),
    # Before: a misspelt key was ignored and the method ran with its default.
    ('davinz.num_block', 2, r"davinz has unknown fields \['num_block'\]"),
    ('tracin.projection_dims', 8, r"tracin has unknown fields \['projection_dims'\]"),
    ('trak.rigde', 1e-2, r"trak has unknown fields \['rigde'\]"),
    ('random.seed', 3, r"random has unknown fields \['seed'\]"),
])
def test_check_config_names_a_bad_field_without_data_or_model(setup, path, value, message):
  # Before, these failed only inside `value` (after an experiment's retraining), or not
  # at all: int() truncated num_checkpoints = 1.5 and num_models = 2.5.
  config = with_baseline_setting(setup['config'], path, value)
  method = path.split('.')[0]
  with pytest.raises(ValueError, match=f'^config.baselines.{message}'):
    baselines.check_config(method, config)
  # The method's own entry point runs the same check, first.
  with pytest.raises(ValueError, match=f'^config.baselines.{message}'):
    _call(method, dict(setup, config=config))


def test_tracin_accepts_checkpoint_every_equal_to_its_spacing(setup):
  # checkpoint_every = steps / num_checkpoints (6 / 2), the spacing it is set to, was refused.
  config = with_baseline_setting(setup['config'], 'tracin.train.checkpoint_every', 3)
  assert baselines.check_config('tracin', config).train.checkpoint_every == 3


@pytest.mark.parametrize('name', ['davinz', 'tracin', 'trak', 'random'])
@pytest.mark.parametrize('seed', [1.5, True, None, '0'])
def test_check_config_names_a_bad_seed(setup, name, seed):
  # Before: int(config.seed) cut 1.5 to 1 and read True as 1 and '0' as 0, silently; None
  # was a TypeError inside `value`, after an experiment's up-front check had passed.
  config = ml_collections.ConfigDict(dict(setup['config'].to_dict(), seed=seed))
  with pytest.raises(ValueError, match=r'^config\.seed must be an integer'):
    baselines.check_config(name, config)
  with pytest.raises(ValueError, match=r'^config\.seed must be an integer'):
    _call(name, dict(setup, config=config))


def test_check_config_is_what_each_baseline_runs_first(setup, monkeypatch):
  assert set(baselines.CONFIG_CHECKS) == set(baselines.BASELINES)
  with pytest.raises(ValueError, match='unknown baseline'):
    baselines.check_config('influence', setup['config'])
  config = copy.deepcopy(setup['config'])
  del config.baselines['trak']
  with pytest.raises(ValueError, match=r'^config\.baselines\.trak is missing'):
    baselines.check_config('trak', config)
  for name, module in (('davinz', davinz), ('tracin', tracin), ('trak', trak),
                       ('random', random_baseline)):
    assert baselines.CONFIG_CHECKS[name] is module.check_config
    baselines.check_config(name, setup['config'])  # the defaults pass

    # One check, not two copies of it: replaced, the entry point calls the replacement.
    def replaced(config, name=name):
      raise ValueError(f'checked {name}')

    monkeypatch.setattr(module, 'check_config', replaced)
    with pytest.raises(ValueError, match=f'checked {name}'):
      _call(name, setup)


@pytest.mark.parametrize('name, value_rtol', [
    ('davinz', 1e-5), ('tracin', 1e-5),
    # TRAK's ridge solve with the projected Gram matrix multiplies the gradients' float32
    # rounding by its condition number.
    ('trak', 1e-3),
])
def test_data_parallel_splits_the_gradients_and_keeps_the_values(setup, monkeypatch, name,
                                                                 value_rtol):
  # config.ntk.data_parallel, read from the shared ntk section: every gradient block over
  # all local devices (tests/conftest.py gives this process four CPU devices).
  calls = []
  per_example_grads = ntk.per_example_grads

  def compared(*args, mesh=None, **kwargs):  # each call against the same one on one device
    grads = per_example_grads(*args, mesh=mesh, **kwargs)
    reference = np.asarray(per_example_grads(*args, **kwargs))
    calls.append((mesh, np.abs(np.asarray(grads) - reference).max() / np.abs(reference).max()))
    return grads

  config = copy.deepcopy(setup['config'])
  expected = np.asarray(_call(name, dict(setup, config=config)).values)
  monkeypatch.setattr(ntk, 'per_example_grads', compared)
  config.ntk = ml_collections.ConfigDict(dict(data_parallel=True))
  got = np.asarray(_call(name, dict(setup, config=config)).values)
  assert calls and all(isinstance(mesh, jax.sharding.Mesh) and mesh.size == jax.device_count()
                       for mesh, _ in calls)
  # Nothing is summed across examples: the gradients differ by float32 rounding at most.
  assert max(diff for _, diff in calls) <= 1e-5, calls
  np.testing.assert_allclose(got, expected, atol=value_rtol * np.abs(expected).max())


@pytest.mark.parametrize('name', ['tracin', 'trak'])
def test_trained_baselines_do_not_depend_on_the_order_of_the_list(setup, name):
  """TracIn and TRAK train on the pooled rows, whose minibatches are drawn by row index:
  pooled in list order, the contributors listed in reverse trained another model and every
  value moved (on the option audit's digits pool, K = 4, TracIn's 2.89 -> 7.67 and -0.21 ->
  +1.68, TRAK's 2.94 -> 0.80). The pool is in name
  order, so each name keeps its value."""
  forward = np.asarray(_call(name, setup).values)
  backward = np.asarray(_call(name, setup, setup['contributors'][::-1]).values)[::-1]
  np.testing.assert_allclose(backward, forward, rtol=1e-4, atol=1e-5 * np.abs(forward).max())


def test_trak_margin_is_the_log_odds(setup):
  apply_fn, params = setup['apply_fn'], setup['params']
  x_i, y_i = setup['target'].x[0], int(setup['target'].y[0])
  logits = np.asarray(apply_fn(params, x_i[None])[0], np.float64)
  p = np.exp(logits - logits.max())
  p /= p.sum()
  np.testing.assert_allclose(trak.margin_fn(apply_fn)(params, jnp.asarray(x_i), y_i),
                             math.log(p[y_i] / (1 - p[y_i])), rtol=1e-5)
  grad = jax.grad(trak.margin_fn(apply_fn))(params, jnp.asarray(x_i), y_i)
  assert all(np.all(np.isfinite(l)) for l in jax.tree_util.tree_leaves(grad))


def _flat(params):
  return jnp.concatenate([jnp.ravel(l) for l in jax.tree_util.tree_leaves(params)])


def _coordinate(params, e_i, _):
  """`<theta, e_i>`: its per-example gradient is `e_i`, its projection row i of `P`."""
  return _flat(params) @ e_i


def _np_trak_model_scores(apply_fn, params, projection_key, pool, target, *, ridge):
  """One trained model's TRAK scores `[K]`: the margin's gradients by jax.grad per example,
  the projection `P [p, 16]` read off as the projected gradients of the coordinates, `Q`,
  the relative ridge and the per-contributor sums in float64 NumPy.

  pool: `(x, y, owner)`; target: `(x, y)`.
  """
  x, y, owner = pool

  def margin(p, x_i, y_i):
    z = apply_fn(p, x_i[None])[0]
    return z[y_i] - jax.nn.logsumexp(jnp.delete(z, y_i, assume_unique_indices=True))

  # One jitted program for pool and target together (op by op, vmap(grad) takes seconds).
  flat_grads = jax.jit(jax.vmap(lambda x_i, y_i: _flat(jax.grad(margin)(params, x_i, y_i))))
  num_params = _flat(params).shape[0]
  projection = ntk.Projection(16, 'rademacher', projection_key)
  proj_matrix = np.asarray(ntk.per_example_grads(_coordinate, params, np.eye(num_params),
                                                 np.zeros(num_params), projection=projection),
                           np.float64)
  phi_both = np.asarray(flat_grads(np.concatenate([x, target[0]]),
                                   np.concatenate([y, target[1]])), np.float64) @ proj_matrix
  phi, phi_target = phi_both[:len(y)], phi_both[len(y):]
  z = np.asarray(apply_fn(params, x), np.float64)
  prob = np.exp(z - z.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  q = 1.0 - prob[np.arange(len(y)), y]
  gram = phi.T @ phi
  u = np.linalg.solve(gram + ridge * np.trace(gram) / 16 * np.eye(16), phi_target.sum(0))
  return np.bincount(owner, weights=(phi @ u) * q, minlength=3)


def test_trak_end_to_end_matches_a_float64_reference(setup):
  """Retrains with the same keys; each model's scores by `_np_trak_model_scores`; the
  models averaged."""
  result = _call('trak', setup)
  cfg = setup['config'].baselines.trak
  apply_fn, params = setup['apply_fn'], setup['params']
  x, y, _, owner = valuation.pool_examples(setup['contributors'])
  k_train, k_proj = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 13))
  trained = training.train_many_seeds(apply_fn, params, x, y, config=cfg.train,
                                      keys=jax.random.split(k_train, 2),
                                      num_classes=NUM_CLASSES)
  expected = np.stack([
      _np_trak_model_scores(apply_fn, jax.tree_util.tree_map(lambda leaf, r=r: leaf[r],
                                                             trained.params),
                            jax.random.fold_in(k_proj, r), (x, y, owner),
                            (setup['target'].x, setup['target'].y), ridge=cfg.ridge)
      for r in range(2)])
  scale = np.abs(expected).max()
  np.testing.assert_allclose(result.extras['per_model'], expected, rtol=1e-3,
                             atol=1e-4 * scale)
  np.testing.assert_allclose(result.values, expected.mean(axis=0), rtol=1e-3,
                             atol=1e-4 * scale)


# ----------------------------------------------------------------------------------------
# Random.


def test_random_is_seeded_and_data_independent(setup):
  first = _call('random', setup)
  second = _call('random', setup)
  np.testing.assert_array_equal(first.values, second.values)
  reordered = _call('random', setup, setup['contributors'][::-1])
  np.testing.assert_array_equal(first.values, reordered.values)  # values depend on seed only
  setup['config'].seed = 1
  try:
    other = _call('random', setup)
  finally:
    setup['config'].seed = 0
  assert not np.allclose(first.values, other.values)


def test_random_seed_offset_moves_the_key(setup):
  # The values are uniform draws from fold_in(PRNGKey(seed), 14 + seed_offset) (the module
  # docstring): offset 5 draws from fold_in(PRNGKey(0), 19), not from offset 0's key.
  config = copy.deepcopy(setup['config'])
  config.baselines.random.seed_offset = 5
  shifted = np.asarray(_call('random', dict(setup, config=config)).values)
  expected = jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(0), 19), (3,))
  np.testing.assert_allclose(shifted, np.asarray(expected), rtol=1e-6)
  assert not np.allclose(shifted, np.asarray(_call('random', setup).values))


def test_random_accepts_the_largest_seed_offset(setup):
  # seed_offset = 2**32 - 15 (14 + offset the largest uint32) was refused as too large.
  config = with_baseline_setting(setup['config'], 'random.seed_offset', 2**32 - 15)
  got = np.asarray(_call('random', dict(setup, config=config)).values)
  expected = jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(0), 2**32 - 1), (3,))
  np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-6)


def test_davinz_with_blocks_does_not_depend_on_the_order_of_contributors(setup):
  # Each contributor's block permutation was keyed by its position in the list, so with
  # num_blocks > 1 reordering the contributors changed their values; now by its name.
  config = baselines.default_config()
  config.baselines.davinz.num_blocks = 2
  contributors = setup['contributors']
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'], config=config)
  forward = baselines.BASELINES['davinz'](contributors, setup['target'], **kwargs)
  backward = baselines.BASELINES['davinz'](contributors[::-1], setup['target'], **kwargs)
  assert backward.names == forward.names[::-1]
  np.testing.assert_allclose(np.asarray(backward.extras['ntk'])[::-1],
                             np.asarray(forward.extras['ntk']), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(backward.values)[::-1], np.asarray(forward.values),
                             rtol=1e-5)


@pytest.mark.parametrize('name', ['tracin', 'trak'])
def test_a_diverged_training_names_the_learning_rate(setup, name):
  # It used to fail at the gradient step as "params contain NaN or Inf", which blamed the
  # caller's theta0 (finite) rather than the baseline's own training.
  config = copy.deepcopy(setup['config'])
  config.baselines[name].train.learning_rate = 1e30
  with pytest.raises(ValueError, match=rf'training diverged: .* lower '
                                       rf'config\.baselines\.{name}\.train\.learning_rate'):
    _call(name, dict(setup, config=config))


def test_trak_checks_every_stacked_model_for_divergence(setup, monkeypatch):
  # The vmapped models are checked as one stack: model 1 of 2 diverging while model 0 is
  # finite must still be named as a diverged training (a check of model 0 alone let it
  # reach the gradient step, which blamed theta0).
  real = training.train_many_seeds

  def second_diverged(*args, **kwargs):
    result = real(*args, **kwargs)
    return result._replace(params=jax.tree_util.tree_map(lambda a: a.at[1].set(jnp.nan),
                                                         result.params))

  monkeypatch.setattr(training, 'train_many_seeds', second_diverged)
  with pytest.raises(ValueError, match=r'training diverged: .* lower '
                                       r'config\.baselines\.trak\.train\.learning_rate'):
    _call('trak', setup)
