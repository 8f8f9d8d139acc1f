"""Tests of dv_jax.training: float64 NumPy references of the loss and single optimiser
steps, the checkpoint bookkeeping, one compile per capacity, training with BatchNorm's batch
statistics, and the error paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax import training

D, C = 5, 3


def _linear_apply(params, x):
  return x.reshape((x.shape[0], -1)) @ params['w'] + params['b'][None, :]


def _linear_params(seed=0):
  rng = np.random.default_rng(seed)
  return {'w': jnp.asarray(rng.normal(size=(D, C)), jnp.float32),
          'b': jnp.asarray(rng.normal(size=(C,)), jnp.float32)}


def _blobs(n, seed=0):
  """Three Gaussian blobs in D dims: a learnable problem."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, C, size=n)
  centers = 3.0 * np.eye(C, D)
  x = centers[y] + rng.normal(size=(n, D))
  return x.astype(np.float32), y.astype(np.int32)


def _softmax_ce_grad(w, b, x, y):
  """float64 reference: mean CE of x [n, D], and its gradient for the linear model."""
  logits = x @ w + b
  z = logits - logits.max(axis=1, keepdims=True)
  prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  loss = -np.log(prob[np.arange(len(y)), y]).mean()
  delta = (prob - np.eye(C)[y]) / len(y)
  return loss, x.T @ delta, delta.sum(axis=0)


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 4)) * 5
  y = rng.integers(0, 4, size=6)
  expected = np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(6), y]
  got = training.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(y))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize('labels, match', [
    ([0, 3], r'labels must lie in \[0, 3\)'),  # before: NaN for the second example
    ([0, -1], r'labels must lie in \[0, 3\)'),  # before: wrapped to the last class
    ([0, 1, 2], r'labels must be \[2\]'),  # before: a bare broadcasting error
    ([0.0, 1.0], 'labels must be integer'),
])
def test_cross_entropy_refuses_bad_labels(labels, match):
  with pytest.raises(ValueError, match=match):
    training.cross_entropy(jnp.zeros((2, 3)), np.asarray(labels))


def test_learning_rate_schedules():
  t = np.arange(0, 11)
  cos = training.learning_rate_at(t, learning_rate=0.2, schedule='cosine', steps=10)
  np.testing.assert_allclose(cos, 0.2 * 0.5 * (1 + np.cos(np.pi * t / 10)), rtol=1e-6)
  const = training.learning_rate_at(t, learning_rate=0.2, schedule='constant', steps=10)
  np.testing.assert_allclose(const, np.full(11, 0.2), rtol=1e-7)
  with pytest.raises(ValueError, match='steps must be an integer >= 1'):  # was NaN
    training.learning_rate_at(1, learning_rate=0.1, schedule='cosine', steps=0)


# ('adam', 0.1): adam's L2 term enters the gradient before the moments, as sgd's does.
@pytest.mark.parametrize('optimizer,weight_decay', [('sgd', 0.0), ('sgd', 0.1), ('adam', 0.0),
                                                    ('adam', 0.1)])
def test_one_step_matches_numpy(optimizer, weight_decay):
  # n = 1 (padded to 4 rows): every minibatch index is 0, so the step is deterministic.
  params = _linear_params()
  x = np.random.default_rng(2).normal(size=(1, D)).astype(np.float32)
  y = np.array([2], np.int32)
  config = training.TrainConfig(optimizer=optimizer, learning_rate=0.1, steps=1, batch_size=3,
                                weight_decay=weight_decay)
  result = training.train(_linear_apply, params, x, y, config=config, key=jax.random.PRNGKey(0),
                          num_classes=C, pad_to=4)
  w0, b0 = (np.asarray(params[k], np.float64) for k in ('w', 'b'))
  loss, gw, gb = _softmax_ce_grad(w0, b0, x.astype(np.float64), y)
  gw, gb = gw + weight_decay * w0, gb + weight_decay * b0
  if optimizer == 'sgd':
    step_w, step_b = gw, gb
  else:  # Adam's first step: m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps).
    step_w, step_b = gw / (np.abs(gw) + 1e-8), gb / (np.abs(gb) + 1e-8)
  np.testing.assert_allclose(result.losses, [loss], rtol=1e-5)
  np.testing.assert_allclose(result.params['w'], w0 - 0.1 * step_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.params['b'], b0 - 0.1 * step_b, rtol=1e-5, atol=1e-6)


def test_momentum_and_decoupled_weight_decay_match_numpy():
  # One step cannot tell heavy-ball momentum from plain SGD, and AdamW was not among the
  # one-step cases: two SGD steps at momentum 0.9, one AdamW step, against float64 NumPy.
  params = _linear_params()
  x = np.random.default_rng(3).normal(size=(1, D)).astype(np.float32)
  y = np.array([1], np.int32)
  x64 = x.astype(np.float64)
  w0, b0 = (np.asarray(params[k], np.float64) for k in ('w', 'b'))
  kwargs = dict(key=jax.random.PRNGKey(0), num_classes=C, pad_to=4)

  sgd = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=2, batch_size=3,
                             momentum=0.9)
  result = training.train(_linear_apply, params, x, y, config=sgd, **kwargs)
  loss0, gw0, gb0 = _softmax_ce_grad(w0, b0, x64, y)
  w1, b1 = w0 - 0.1 * gw0, b0 - 0.1 * gb0  # the trace starts at the first gradient
  loss1, gw1, gb1 = _softmax_ce_grad(w1, b1, x64, y)
  w2, b2 = w1 - 0.1 * (gw1 + 0.9 * gw0), b1 - 0.1 * (gb1 + 0.9 * gb0)
  np.testing.assert_allclose(result.losses, [loss0, loss1], rtol=1e-5)
  np.testing.assert_allclose(result.params['w'], w2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.params['b'], b2, rtol=1e-5, atol=1e-6)

  adamw = training.TrainConfig(optimizer='adamw', learning_rate=0.1, steps=1, batch_size=3,
                               weight_decay=0.5)
  result = training.train(_linear_apply, params, x, y, config=adamw, **kwargs)
  # Adam's first step g / (|g| + eps), plus the decay on the weights outside the moments.
  step_w = gw0 / (np.abs(gw0) + 1e-8) + 0.5 * w0
  step_b = gb0 / (np.abs(gb0) + 1e-8) + 0.5 * b0
  np.testing.assert_allclose(result.params['w'], w0 - 0.1 * step_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.params['b'], b0 - 0.1 * step_b, rtol=1e-5, atol=1e-6)


def test_cosine_schedule_sets_each_steps_update_like_numpy():
  # learning_rate_at's formula is checked above, and TrainResult.learning_rates reads it,
  # but neither shows that the optimiser steps with it: three SGD steps of a cosine schedule
  # over T = 3 take eta_t = eta (1 + cos(pi t / 3)) / 2 = eta, 3 eta / 4, eta / 4.
  params = _linear_params()
  x = np.random.default_rng(4).normal(size=(1, D)).astype(np.float32)
  y = np.array([0], np.int32)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.5, steps=3, batch_size=3,
                                schedule='cosine')
  result = training.train(_linear_apply, params, x, y, config=config, key=jax.random.PRNGKey(0),
                          num_classes=C, pad_to=4)
  w, b = (np.asarray(params[k], np.float64) for k in ('w', 'b'))
  losses = []
  for eta in (0.5, 0.375, 0.125):
    loss, gw, gb = _softmax_ce_grad(w, b, x.astype(np.float64), y)
    losses.append(loss)
    w, b = w - eta * gw, b - eta * gb
  np.testing.assert_allclose(result.losses, losses, rtol=1e-5)
  np.testing.assert_allclose(result.params['w'], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.params['b'], b, rtol=1e-5, atol=1e-6)


def test_padded_capacity_is_pad_to_or_the_next_power_of_two():
  assert [training.padded_capacity(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
  assert training.padded_capacity(5, 64) == 64
  with pytest.raises(ValueError, match='pad_to must be an integer >= 5'):
    training.padded_capacity(5, 4)


def test_training_learns_and_is_deterministic():
  x, y = _blobs(60)
  params = _linear_params(1)
  config = training.TrainConfig(optimizer='adam', learning_rate=0.05, steps=60, batch_size=16)
  before = training.evaluate(_linear_apply, params, x, y)
  run = training.train(_linear_apply, params, x, y, config=config, key=jax.random.PRNGKey(3),
                       num_classes=C)
  after = training.evaluate(_linear_apply, run.params, x, y)
  assert after.loss < 0.5 * before.loss and after.accuracy > 0.9
  again = training.train(_linear_apply, params, x, y, config=config, key=jax.random.PRNGKey(3),
                         num_classes=C)
  np.testing.assert_array_equal(run.losses, again.losses)
  other = training.train(_linear_apply, params, x, y, config=config, key=jax.random.PRNGKey(4),
                         num_classes=C)
  assert not np.array_equal(run.losses, other.losses)


def test_many_seeds_equals_single_runs():
  x, y = _blobs(20, seed=1)
  params = _linear_params(2)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=8, batch_size=4,
                                momentum=0.9)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  many = training.train_many_seeds(_linear_apply, params, x, y, config=config, keys=keys,
                                   num_classes=C)
  assert many.losses.shape == (3, 8) and many.params['w'].shape == (3, D, C)
  for r in range(3):
    one = training.train(_linear_apply, params, x, y, config=config, key=keys[r], num_classes=C)
    np.testing.assert_allclose(many.params['w'][r], one.params['w'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.losses[r], one.losses, rtol=1e-5)
  # New-style typed keys give the same runs.
  typed = training.train_many_seeds(_linear_apply, params, x, y, config=config,
                                    keys=jax.random.wrap_key_data(keys), num_classes=C)
  np.testing.assert_array_equal(typed.params['w'], many.params['w'])
  ev = training.evaluate_many(_linear_apply, many.params, x, y)
  assert ev.loss.shape == (3,)
  for r in range(3):
    single = training.evaluate(_linear_apply, {k: v[r] for k, v in many.params.items()}, x, y)
    np.testing.assert_allclose(ev.loss[r], single.loss, rtol=1e-5)


def test_one_compile_serves_every_size_up_to_the_capacity():
  config = training.TrainConfig(steps=3, batch_size=4)
  params = _linear_params(3)

  def apply_fn(p, x):  # A fresh function: its own cache entries.
    return _linear_apply(p, x)

  before = training._fit_jit._cache_size()  # pylint: disable=protected-access
  for n in (3, 5, 7, 8):
    x, y = _blobs(n, seed=n)
    training.train(apply_fn, params, x, y, config=config, key=jax.random.PRNGKey(0),
                   num_classes=C, pad_to=8)
  assert training._fit_jit._cache_size() == before + 1  # pylint: disable=protected-access


def test_padding_rows_are_never_drawn():
  # Two real rows of class 0 padded with zero rows (label 0 too, but x = 0): if a padded
  # row were drawn the loss of that step would differ from a real row's loss.
  params = _linear_params(4)
  x = np.ones((2, D), np.float32)
  y = np.zeros(2, np.int32)
  config = training.TrainConfig(optimizer='sgd', learning_rate=1e-6, steps=20, batch_size=1)
  run = training.train(_linear_apply, params, x, y, config=config, key=jax.random.PRNGKey(5),
                       num_classes=C, pad_to=64)
  real_loss, *_ = _softmax_ce_grad(np.asarray(params['w'], np.float64),
                                   np.asarray(params['b'], np.float64), x[:1].astype(float),
                                   y[:1])
  np.testing.assert_allclose(run.losses, np.full(20, real_loss), rtol=1e-4)


def test_each_step_trains_on_the_minibatch_its_own_key_draws():
  """Step t's minibatch is drawn from ``fold_in(key, t)``: a stream that reused one key would
  train on the same rows at every step."""
  # lr 1e-30 leaves the parameters bit-identical, so each step's loss is the loss of the
  # row it drew. steps=20, batch_size=1 and pad_to=64 are test_padding_rows_are_never_drawn's
  # compiled program (the learning rate is traced).
  params = _linear_params(4)
  x, y = _blobs(5, seed=9)
  config = training.TrainConfig(optimizer='sgd', learning_rate=1e-30, steps=20, batch_size=1)
  key = jax.random.PRNGKey(6)
  run = training.train(_linear_apply, params, x, y, config=config, key=key, num_classes=C,
                       pad_to=64)
  w, b = (np.asarray(params[k], np.float64) for k in ('w', 'b'))
  row_losses = np.array([_softmax_ce_grad(w, b, x[i:i + 1].astype(np.float64), y[i:i + 1])[0]
                         for i in range(5)])
  assert len(np.unique(row_losses.round(6))) == 5  # a loss names its row
  rows = [int(jax.random.randint(jax.random.fold_in(key, t), (1,), 0, 5)[0])
          for t in range(20)]
  assert len(set(rows)) > 1
  np.testing.assert_allclose(run.losses, row_losses[rows], rtol=1e-5)


@pytest.mark.parametrize('schedule', ['constant', 'cosine'])
def test_checkpoints(schedule):
  x, y = _blobs(16, seed=2)
  params = _linear_params(5)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=6, batch_size=4,
                                schedule=schedule, checkpoint_every=2)
  run = training.train(_linear_apply, params, x, y, config=config, key=jax.random.PRNGKey(1),
                       num_classes=C)
  assert run.checkpoints['w'].shape == (3, D, C) and run.losses.shape == (6,)
  np.testing.assert_array_equal(run.checkpoints['w'][-1], run.params['w'])
  # Each checkpoint carries the mean rate of the two steps since the one before.
  step_rates = 0.1 * (1 + np.cos(np.pi * np.arange(6) / 6)) / 2 if schedule == 'cosine' \
      else np.full(6, 0.1)
  np.testing.assert_allclose(run.learning_rates, step_rates.reshape(3, 2).mean(axis=1),
                             rtol=1e-6)
  # Checkpointing does not change the run.
  plain = training.train(_linear_apply, params, x, y,
                         config=config._replace(checkpoint_every=0),
                         key=jax.random.PRNGKey(1), num_classes=C)
  np.testing.assert_allclose(plain.params['w'], run.params['w'], rtol=1e-6)
  np.testing.assert_allclose(plain.losses, run.losses, rtol=1e-6)


@pytest.mark.parametrize('optimizer, schedule', [('sgd', 'cosine'), ('adam', 'constant')])
def test_checkpoints_on_host_are_the_same_run(optimizer, schedule):
  # TracIn's LLM configs keep the checkpoints on the host (5 stacked copies of a 1.5B model
  # beside its training state did not fit an 80 GB device): one jitted segment per
  # checkpoint, the same steps, keys and rates as the one scan.
  x, y = _blobs(16, seed=2)
  params = _linear_params(5)
  config = training.TrainConfig(optimizer=optimizer, learning_rate=0.1, steps=6, batch_size=4,
                                schedule=schedule, checkpoint_every=2)
  kwargs = dict(config=config, key=jax.random.PRNGKey(1), num_classes=C)
  device = training.train(_linear_apply, params, x, y, **kwargs)
  host = training.train(_linear_apply, params, x, y, checkpoints_on_host=True, **kwargs)
  assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree_util.tree_leaves(host.checkpoints))
  for field in ('params', 'losses', 'checkpoints', 'learning_rates'):
    for a, b in zip(jax.tree_util.tree_leaves(getattr(device, field)),
                    jax.tree_util.tree_leaves(getattr(host, field))):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
  # The caller's theta0 is not donated to the first segment.
  np.testing.assert_array_equal(params['w'], _linear_params(5)['w'])
  # Without checkpoints there is nothing to keep: the one scan, whatever the flag.
  plain = config._replace(checkpoint_every=0)
  a, b = (training.train(_linear_apply, params, x, y, config=plain, key=jax.random.PRNGKey(1),
                         num_classes=C, checkpoints_on_host=flag) for flag in (False, True))
  np.testing.assert_array_equal(a.params['w'], b.params['w'])
  with pytest.raises(ValueError, match='checkpoints_on_host must be True or False'):
    training.train(_linear_apply, params, x, y, checkpoints_on_host='yes', **kwargs)


def test_evaluate_in_padded_blocks_matches_numpy():
  x, y = _blobs(37, seed=3)
  params = _linear_params(6)
  ev = training.evaluate(_linear_apply, params, x, y, block_size=16)
  w, b = (np.asarray(params[k], np.float64) for k in ('w', 'b'))
  loss, *_ = _softmax_ce_grad(w, b, x.astype(np.float64), y)
  acc = np.mean(np.argmax(x @ w + b, axis=1) == y)
  np.testing.assert_allclose(ev.loss, loss, rtol=1e-5)
  np.testing.assert_allclose(ev.accuracy, acc, rtol=1e-6)


def test_evaluate_padded_rows_never_reach_the_sums():
  """A padded row is all zeros; a model that is NaN there must not poison the block's sums."""

  def normalised_apply(params, x):  # x / |x|: NaN on an all-zero row
    return _linear_apply(params, x / jnp.linalg.norm(x, axis=-1, keepdims=True))

  x, y = _blobs(5, seed=7)  # 5 rows: one block of 8, three padded rows
  params = _linear_params(8)
  w, b = (np.asarray(params[k], np.float64) for k in ('w', 'b'))
  xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
  loss, *_ = _softmax_ce_grad(w, b, xn, y)
  acc = np.mean(np.argmax(xn @ w + b, axis=1) == y)
  ev = training.evaluate(normalised_apply, params, x, y)
  np.testing.assert_allclose(ev.loss, loss, rtol=1e-5)
  np.testing.assert_allclose(ev.accuracy, acc, rtol=1e-6)
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), params)
  many = training.evaluate_many(normalised_apply, stacked, x, y)
  np.testing.assert_allclose(many.loss, [loss, loss], rtol=1e-5)


def test_evaluate_many_scores_each_stacked_model_like_numpy():
  """Three different models stacked: row r's loss and accuracy are model r's, in float64
  NumPy (the tests above stack one model twice, or compare with `evaluate`, which shares
  the block code). 37 rows in blocks of 16: three blocks, the last one padded."""
  x, y = _blobs(37, seed=11)
  models = [_linear_params(seed) for seed in (20, 21, 22)]
  stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *models)
  many = training.evaluate_many(_linear_apply, stacked, x, y, block_size=16)
  xd = x.astype(np.float64)
  want_loss, want_acc = [], []
  for params in models:
    w, b = (np.asarray(params[k], np.float64) for k in ('w', 'b'))
    logits = xd @ w + b
    log_z = np.log(np.exp(logits).sum(axis=1))  # small logits: no shift needed
    want_loss.append(np.mean(log_z - logits[np.arange(37), y]))
    want_acc.append(np.mean(np.argmax(logits, axis=1) == y))
  assert len(set(want_acc)) == 3  # the rows are told apart by accuracy as well as loss
  np.testing.assert_allclose(many.loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(many.accuracy, want_acc, rtol=1e-6)


def test_evaluate_gives_nan_accuracy_for_rows_with_non_finite_logits():
  # A NaN row's argmax is class 0: a diverged model reported the share of label 0 as its
  # accuracy beside a NaN loss.
  x, y = _blobs(12, seed=4)
  y = np.zeros_like(y)  # every label 0: the old count gave accuracy 1.0
  params = _linear_params(2)
  nan_params = {'w': params['w'] * np.nan, 'b': params['b']}
  ev = training.evaluate(_linear_apply, nan_params, x, y)
  assert np.isnan(ev.loss) and np.isnan(ev.accuracy), ev
  stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, nan_params)
  many = training.evaluate_many(_linear_apply, stacked, x, y)
  assert np.isfinite(many.accuracy[0]) and np.isnan(many.accuracy[1]), many


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_evaluate_one_bad_logit_makes_the_row_nan_but_a_masked_class_does_not(bad):
  x, y = _blobs(8, seed=5)
  params = _linear_params(3)
  w, b = (np.asarray(params[k], np.float64) for k in ('w', 'b'))
  logits = x.astype(np.float64) @ w + b

  def poisoned(params, x):  # one logit of row 0 NaN or +inf, the others finite
    return _linear_apply(params, x).at[0, 1].set(bad)

  ev = training.evaluate(poisoned, params, x, y)
  assert not np.isfinite(ev.loss) and np.isnan(ev.accuracy), ev
  # A class masked with -inf (not the label's) is a valid model: loss and accuracy finite,
  # as a NumPy reference computes them.
  labels = (y % 2).astype(np.int32)  # classes 0 and 1; class 2 masked
  masked = training.evaluate(lambda p, x: _linear_apply(p, x).at[:, 2].set(-np.inf),
                             params, x, labels)
  z = logits[:, :2]
  lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
  np.testing.assert_allclose(masked.loss, np.mean(lse - z[np.arange(8), labels]), rtol=1e-5)
  np.testing.assert_allclose(masked.accuracy, np.mean(np.argmax(z, 1) == labels), rtol=1e-6)


def test_learning_rate_at_refuses_an_unknown_schedule():
  with pytest.raises(ValueError, match="schedule must be one of .*'linear'"):
    training.learning_rate_at(3, learning_rate=1.0, schedule='linear', steps=10)


def test_config_from_dict_and_config_dict():
  c = training.as_train_config({'optimizer': 'sgd', 'steps': 5, 'num_seeds': 3},
                               extra_fields=('num_seeds',))
  assert c.optimizer == 'sgd' and c.steps == 5 and c.batch_size == 64
  # A misspelt field is an error, not the default recipe.
  with pytest.raises(ValueError, match=r"unknown training fields \['lr'\]"):
    training.as_train_config({'optimizer': 'sgd', 'lr': 0.1})
  ml_collections = pytest.importorskip('ml_collections')
  cd = ml_collections.ConfigDict({'optimizer': 'adamw', 'learning_rate': 0.3, 'seed': 1})
  with pytest.raises(ValueError, match='seed'):
    training.as_train_config(cd)
  c = training.as_train_config(cd, extra_fields=('seed',))
  assert c.optimizer == 'adamw' and c.learning_rate == 0.3 and c.steps == 300


@pytest.mark.parametrize('field,value,match', [
    ('optimizer', 'rmsprop', 'config.optimizer'),
    ('schedule', 'linear', 'config.schedule'),
    ('steps', 0, 'config.steps'),
    ('batch_size', 2.5, 'config.batch_size'),
    ('steps', True, 'config.steps'),
    ('learning_rate', -1.0, 'config.learning_rate'),
    ('weight_decay', -0.1, 'config.weight_decay'),
    ('momentum', float('inf'), 'config.momentum'),
    ('momentum', 1.0, 'config.momentum'),
    ('checkpoint_every', 7, 'config.checkpoint_every'),
    # float() read True as 1.0, and failed on None without naming the field.
    ('learning_rate', True, 'config.learning_rate must be finite and > 0, got True'),
    ('learning_rate', None, 'config.learning_rate'),
    ('weight_decay', True, 'config.weight_decay'),
    ('momentum', None, 'config.momentum'),
    # adam (the default) has no heavy-ball momentum: it would be dropped silently.
    ('momentum', 0.9, 'config.momentum=0.9 is used only by optimizer sgd'),
])
def test_config_errors(field, value, match):
  with pytest.raises(ValueError, match=match):
    training.as_train_config(training.TrainConfig(steps=10)._replace(**{field: value}))


def test_data_errors():
  x, y = _blobs(6)
  params = _linear_params()
  kw = dict(config=training.TrainConfig(steps=1), key=jax.random.PRNGKey(0))
  bad = x.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match='x contains NaN'):
    training.train(_linear_apply, params, bad, y, num_classes=C, **kw)
  # Before: a raw JAX error that did not name key.
  with pytest.raises(ValueError, match=r'key must be a single jax\.random\.PRNGKey'):
    training.train(_linear_apply, params, x, y, num_classes=C, config=kw['config'], key=None)
  with pytest.raises(ValueError, match='y has labels'):
    training.train(_linear_apply, params, x, y + 3, num_classes=C, **kw)
  with pytest.raises(ValueError, match='y must have shape'):
    training.train(_linear_apply, params, x, y[:4], num_classes=C, **kw)
  with pytest.raises(ValueError, match='non-empty'):
    training.train(_linear_apply, params, x[:0], y[:0], num_classes=C, **kw)
  with pytest.raises(ValueError, match='num_classes=4'):
    training.train(_linear_apply, params, x, y, num_classes=4, **kw)
  with pytest.raises(ValueError, match='pad_to'):
    training.train(_linear_apply, params, x, y, num_classes=C, pad_to=3, **kw)
  with pytest.raises(ValueError, match='pad_to must be an integer'):  # not truncated to 8
    training.train(_linear_apply, params, x, y, num_classes=C, pad_to=8.5, **kw)
  with pytest.raises(ValueError, match='keys'):
    training.train_many_seeds(_linear_apply, params, x, y, num_classes=C,
                              config=training.TrainConfig(steps=1), keys=jax.random.PRNGKey(0))
  # An empty stack of keys [0, 2] was accepted (zero runs) rather than named.
  with pytest.raises(ValueError, match=r'keys must be a stack of PRNG keys \[R, 2\]'):
    training.train_many_seeds(_linear_apply, params, x, y, num_classes=C,
                              config=training.TrainConfig(steps=1),
                              keys=np.zeros((0, 2), np.uint32))
  # Evaluation gathers the label's logit: one outside the classes must not be clamped.
  for labels in (np.where(y == 0, -1, y), np.where(y == 0, C, y)):
    with pytest.raises(ValueError, match='y has labels'):
      training.evaluate(_linear_apply, params, x, labels)
    with pytest.raises(ValueError, match='y has labels'):
      training.evaluate_many(_linear_apply, jax.tree_util.tree_map(lambda a: a[None], params),
                             x, labels)
  # A malformed x is named before it reaches the model (which failed with a
  # ZeroDivisionError on an empty x, a dot_general error on a 1-D one).
  with pytest.raises(ValueError, match='x must be a non-empty batch'):
    training.evaluate(_linear_apply, params, x[:0], y[:0])
  with pytest.raises(ValueError, match='x must be a non-empty batch'):
    training.evaluate(_linear_apply, params, x[0], y[:1])


def test_integer_inputs_reach_the_model_as_int32():
  """Token / id inputs must stay integers through padding (embeddings index with them)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Embed(nn.Module):

    @nn.compact
    def __call__(self, ids):
      assert jnp.issubdtype(ids.dtype, jnp.integer), ids.dtype
      return nn.Embed(7, 3)(ids[:, 0])

  model = Embed()
  ids = np.arange(5, dtype=np.int64)[:, None] % 7
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(ids[:1], jnp.int32))
  result = training.train(model.apply, params, ids, np.arange(5) % 3,
                          config=training.TrainConfig(steps=3, batch_size=4),
                          key=jax.random.PRNGKey(1), num_classes=3)
  assert np.isfinite(np.asarray(result.losses)).all()
  evaluation = training.evaluate(model.apply, result.params, ids, np.arange(5) % 3)
  assert np.isfinite(evaluation.loss)


def _batch_norm_apply(x):
  """A Dense -> BatchNorm -> Dense classifier bound by ``bind_apply``: ``(apply_fn, params)``."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from dv_jax.models.common import bind_apply, init_model  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):

    @nn.compact
    def __call__(self, xb, train: bool = False):
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(
          nn.Dense(4)(xb))
      return nn.Dense(C)(nn.relu(h))

  model = Net()
  return bind_apply(model, init_model(model, jax.random.PRNGKey(4), x))


def test_use_batch_stats_trains_with_the_batch_statistics():
  x, y = _blobs(12, seed=4)
  apply_fn, params = _batch_norm_apply(x)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=1, batch_size=6)
  key = jax.random.PRNGKey(5)
  rows = jax.random.randint(jax.random.fold_in(key, 0), (6,), 0, 12)  # the step's minibatch

  def sgd_step(forward):
    def loss(p):
      return jnp.mean(training.cross_entropy(forward(p, x[rows]), y[rows]))
    value, grads = jax.value_and_grad(loss)(params)
    return value, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)

  kw = dict(config=config, key=key, num_classes=C)
  for use_batch_stats, forward in ((True, apply_fn.train_apply), (False, apply_fn)):
    result = training.train(apply_fn, params, x, y, use_batch_stats=use_batch_stats, **kw)
    loss, expected = sgd_step(forward)
    np.testing.assert_allclose(result.losses, [loss], rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        result.params, expected)
  # The two modes take different steps (the init statistics are not the batch's).
  batch_mode = training.train(apply_fn, params, x, y, use_batch_stats=True, **kw)
  frozen = training.train(apply_fn, params, x, y, **kw)
  assert not np.allclose(batch_mode.params['Dense_0']['kernel'],
                         frozen.params['Dense_0']['kernel'], rtol=1e-4)
  # vmapped seeds: each normalises its own minibatches, as a single run.
  keys = jax.random.split(key, 2)
  many = training.train_many_seeds(apply_fn, params, x, y, config=config._replace(steps=3),
                                   keys=keys, num_classes=C, use_batch_stats=True)
  one = training.train(apply_fn, params, x, y, config=config._replace(steps=3), key=keys[1],
                       num_classes=C, use_batch_stats=True)
  np.testing.assert_allclose(many.losses[1], one.losses, rtol=1e-5)
  with pytest.raises(ValueError, match='use_batch_stats'):
    training.train(_linear_apply, _linear_params(), x, y, use_batch_stats=True, **kw)


def test_batch_statistics_of_one_row_batches_are_refused():
  """batch_size 1 with batch statistics trained and scored in silence: a one-row batch has
  zero variance (BatchNorm outputs its offset, nothing before it learns) and the running
  statistics re-estimated from such batches blew the test loss up (digits: 8.2-8.8 against
  ln 10 = 2.3). Refused, naming batch_size, by train and train_many_seeds; a model without
  BatchNorm, or frozen statistics, may still take one row per step."""
  x, y = _blobs(12, seed=4)
  apply_fn, params = _batch_norm_apply(x)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=2, batch_size=1)
  with pytest.raises(ValueError, match=r'config\.batch_size=1 cannot train a BatchNorm'):
    training.train(apply_fn, params, x, y, config=config, key=jax.random.PRNGKey(0),
                   num_classes=C, use_batch_stats=True)
  with pytest.raises(ValueError, match=r'config\.batch_size=1 cannot train a BatchNorm'):
    training.train_many_seeds(apply_fn, params, x, y, config=config,
                              keys=jax.random.split(jax.random.PRNGKey(0), 2), num_classes=C,
                              use_batch_stats=True)
  training.train(apply_fn, params, x, y, config=config, key=jax.random.PRNGKey(0),
                 num_classes=C)
  training.train(apply_fn, params, x, y, config=config._replace(batch_size=2),
                 key=jax.random.PRNGKey(0), num_classes=C, use_batch_stats=True)


def test_an_integer_params_leaf_is_refused_by_its_path():
  # Used to fail inside jax.grad ("grad requires real- or complex-valued inputs ... got
  # int32"), naming no leaf; TracIn and TRAK train every leaf whatever their param_filter.
  x, y = _blobs(16, seed=2)
  params = {**_linear_params(), 'step': jnp.int32(0)}
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=2, batch_size=4)
  with pytest.raises(ValueError, match=r"params leaf \['step'\] has non-float dtype int32"):
    training.train(_linear_apply, params, x, y, config=config, key=jax.random.PRNGKey(0),
                   num_classes=C)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_a_non_finite_params_leaf_is_refused_by_its_path(bad):
  # Used to train to NaN losses silently; ground_truth.retrain returned all-NaN test losses.
  x, y = _blobs(16, seed=2)
  params = _linear_params()
  params = {**params, 'b': params['b'].at[0].set(bad)}
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.1, steps=2, batch_size=4)
  for run in (lambda: training.train(_linear_apply, params, x, y, config=config,
                                     key=jax.random.PRNGKey(0), num_classes=C),
              lambda: training.train_many_seeds(_linear_apply, params, x, y, config=config,
                                                keys=jax.random.split(jax.random.PRNGKey(0), 2),
                                                num_classes=C)):
    with pytest.raises(ValueError, match=r"params leaf \['b'\] holds NaN or Inf"):
      run()
