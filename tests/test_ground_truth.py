"""Tests of dv_jax.ground_truth.retrain on a tiny digits problem (a small MLP, and a
Dense -> BatchNorm -> Dense net for the BatchNorm recipe)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from dv_jax import ground_truth, training
from dv_jax.data import contributors as contrib
from dv_jax.data import digits
from dv_jax.data.contributors import Contributor
from dv_jax.models.common import bind_apply, init_model
from dv_jax.models.mlp import MLP

CONFIG = ground_truth.GroundTruthConfig(steps=80, batch_size=32, learning_rate=1e-2,
                                        num_seeds=2, seed=0)


@pytest.fixture(scope='module')
def problem():
  splits = digits.load_digits_splits(seed=0, target_size=100, test_size=300)
  model = MLP(hidden_sizes=(16,), num_classes=10)
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(0), splits.pool.x))
  x, y = np.asarray(splits.pool.x), np.asarray(splits.pool.y)
  noisy_y = np.asarray(contrib.flip_labels(y[200:400], fraction=0.7, num_classes=10,
                                           key=jax.random.PRNGKey(1)))
  cs = [Contributor('clean', x[:200], y[:200], None, None),
        Contributor('noisy', x[200:400], noisy_y, None, None),
        Contributor('tiny', x[400:415], y[400:415], None, None)]
  return splits, apply_fn, params, cs


@pytest.fixture(scope='module')
def result(problem):
  splits, apply_fn, params, cs = problem
  return ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params, config=CONFIG,
                              progress=False)


def test_more_clean_real_data_is_worth_more(result):
  loss = dict(zip(result.names, result.test_loss))
  acc = dict(zip(result.names, result.test_accuracy))
  assert loss['clean'] < loss['noisy'] and loss['clean'] < loss['tiny']
  assert acc['clean'] > acc['noisy'] and acc['clean'] > 0.7
  # The gap is larger than the seed-to-seed spread.
  per_seed = dict(zip(result.names, result.test_loss_per_seed))
  assert per_seed['clean'].max() < per_seed['noisy'].min()


def test_shapes_and_consistency(problem, result):
  splits, apply_fn, params, cs = problem
  assert result.names == ('clean', 'noisy', 'tiny')
  assert result.test_loss_per_seed.shape == (3, 2)
  assert result.test_accuracy_per_seed.shape == (3, 2)
  np.testing.assert_allclose(result.test_loss, result.test_loss_per_seed.mean(axis=1))
  np.testing.assert_allclose(result.values, -result.test_loss)
  assert result.seconds > 0
  # Seed r of contributor 'clean' is train(key_r) then evaluate, reproduced by hand.
  keys = jax.random.split(jax.random.PRNGKey(CONFIG.seed), CONFIG.num_seeds)
  run = training.train(apply_fn, params, cs[0].x_real, cs[0].y_real,
                       config=training.as_train_config(CONFIG), key=keys[1], num_classes=10,
                       pad_to=200)
  ev = training.evaluate(apply_fn, run.params, splits.test.x, splits.test.y)
  np.testing.assert_allclose(result.test_loss_per_seed[0, 1], ev.loss, rtol=1e-4)
  np.testing.assert_allclose(result.test_accuracy_per_seed[0, 1], ev.accuracy, rtol=1e-6)


def test_seed_is_the_base_of_the_seed_keys(problem, result):
  # Seed r of config.seed = 1 trains with split(PRNGKey(1), R)[r], reproduced by hand for
  # 'clean' (the other tests run seed 0 only, which a key ignoring config.seed also gets).
  splits, apply_fn, params, cs = problem
  config = CONFIG._replace(seed=1)
  again = ground_truth.retrain(cs[:1], splits.test, apply_fn=apply_fn, params=params,
                               config=config, progress=False)
  keys = jax.random.split(jax.random.PRNGKey(1), config.num_seeds)
  for r in range(config.num_seeds):
    run = training.train(apply_fn, params, cs[0].x_real, cs[0].y_real,
                         config=training.as_train_config(config), key=keys[r],
                         num_classes=10, pad_to=200)
    ev = training.evaluate(apply_fn, run.params, splits.test.x, splits.test.y)
    np.testing.assert_allclose(again.test_loss_per_seed[0, r], ev.loss, rtol=1e-4)
  assert not np.allclose(again.test_loss_per_seed[0], result.test_loss_per_seed[0], rtol=1e-4)


def test_a_mixed_contributor_trains_on_both_parts(problem):
  # The other contributors are real-only. S_i = S1 ∪ S2 (METHOD.md section 4): seed r of a
  # contributor with both parts is train(key_r) on the real rows then the synthetic ones,
  # reproduced by hand for r = 1 (a retrain reading only S1 would not match it).
  splits, apply_fn, params, cs = problem
  x, y = cs[0].x_real, cs[0].y_real
  mixed = Contributor('mixed', x[:40], y[:40], x[100:160], y[100:160])
  got = ground_truth.retrain([mixed], splits.test, apply_fn=apply_fn, params=params,
                             config=CONFIG, progress=False)
  keys = jax.random.split(jax.random.PRNGKey(CONFIG.seed), CONFIG.num_seeds)
  run = training.train(apply_fn, params, np.concatenate([x[:40], x[100:160]]),
                       np.concatenate([y[:40], y[100:160]]),
                       config=training.as_train_config(CONFIG), key=keys[1], num_classes=10,
                       pad_to=100)
  ev = training.evaluate(apply_fn, run.params, splits.test.x, splits.test.y)
  np.testing.assert_allclose(got.test_loss_per_seed[0, 1], ev.loss, rtol=1e-4)


def test_deterministic_and_accepts_a_config_dict(problem, result):
  splits, apply_fn, params, cs = problem
  again = ground_truth.retrain(cs, (splits.test.x, splits.test.y), apply_fn=apply_fn,
                               params=params, config=dict(CONFIG._asdict()), progress=False)
  np.testing.assert_allclose(again.test_loss_per_seed, result.test_loss_per_seed, rtol=1e-6)


def test_errors_name_the_contributor_or_argument(problem):
  splits, apply_fn, params, cs = problem
  kw = dict(apply_fn=apply_fn, params=params, config=CONFIG, progress=False)
  bad = cs[0]._replace(name='mallory', x_real=np.full_like(cs[0].x_real, np.nan))
  with pytest.raises(ValueError, match="'mallory'.*NaN"):
    ground_truth.retrain([cs[1], bad], splits.test, **kw)
  flat = cs[0]._replace(name='flat', x_real=cs[0].x_real.reshape(200, 64))
  with pytest.raises(ValueError, match="'flat'.*feature shape"):
    ground_truth.retrain([flat], splits.test, **kw)
  with pytest.raises(ValueError, match='duplicate names'):
    ground_truth.retrain([cs[0], cs[0]], splits.test, **kw)
  with pytest.raises(ValueError, match='at least one'):
    ground_truth.retrain([], splits.test, **kw)
  with pytest.raises(ValueError, match='test.y'):
    ground_truth.retrain(cs, (splits.test.x, splits.test.y + 10), **kw)
  # Float (NaN) labels pass a range check; caught before training, not after it.
  float_y = splits.test.y.astype(np.float32)
  float_y[0] = np.nan
  with pytest.raises(ValueError, match='test.y must hold integer labels'):
    ground_truth.retrain(cs, (splits.test.x, float_y), **kw)
  with pytest.raises(ValueError, match='num_seeds'):
    ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params,
                         config=CONFIG._replace(num_seeds=0), progress=False)


@pytest.mark.parametrize('defect, message', [
    ('nan_x', 'test.x contains NaN or Inf'),
    ('label_below', r'test.y has labels outside \[0, 10\)'),
    ('label_c', r'test.y has labels outside \[0, 10\)'),
    # An empty test split was not named: it failed in a JAX reshape (ZeroDivisionError).
    ('empty', 'test must be a non-empty'),
])
def test_a_bad_test_split_fails_before_any_training(problem, monkeypatch, defect, message):
  # Without its own check, a NaN input or a label outside [0, c) fails only in the
  # evaluation, after every contributor has been trained.
  splits, apply_fn, params, cs = problem

  def no_training(*args, **kwargs):
    raise AssertionError('trained before checking the test split')

  monkeypatch.setattr(training, 'train_many_seeds', no_training)
  x, y = np.array(splits.test.x), np.array(splits.test.y)
  if defect == 'nan_x':
    x[5, 3] = np.nan
  elif defect == 'empty':
    x, y = x[:0], y[:0]
  else:
    y[5] = -1 if defect == 'label_below' else 10
  with pytest.raises(ValueError, match=message):
    ground_truth.retrain(cs, (x, y), apply_fn=apply_fn, params=params, config=CONFIG,
                         progress=False)


def test_batch_stats_key_is_no_training_steps_key():
  # A statistics tag among the step indices (fold_in 0) re-drew step 0's training batch.
  key = jax.random.PRNGKey(0)
  stats = np.asarray(ground_truth.batch_stats_key(key))
  steps = np.asarray(jax.vmap(lambda t: jax.random.fold_in(key, t))(np.arange(1000)))
  assert not (steps == stats).all(axis=1).any()


class _DenseBatchNormDense(nn.Module):
  """Dense -> BatchNorm -> Dense on flattened digits: the smallest BatchNorm classifier."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(16)(x.reshape((x.shape[0], -1)))
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(h)
    return nn.Dense(10)(nn.relu(h))


BN_CONFIG = CONFIG._replace(steps=30, bn_batches=8)


def test_batch_norm_model_is_evaluated_with_re_estimated_statistics(problem):
  splits, _, _, cs = problem
  model = _DenseBatchNormDense()
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(0), splits.pool.x))
  cs = cs[1:]  # 'noisy' (200 rows) and 'tiny' (15 rows: batches of min(32, 15) rows)
  result = ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params,
                                config=BN_CONFIG, progress=False)
  keys = jax.random.split(jax.random.PRNGKey(BN_CONFIG.seed), BN_CONFIG.num_seeds)
  train_config = training.as_train_config(BN_CONFIG)
  for i, c in enumerate(cs):
    runs = training.train_many_seeds(apply_fn, params, c.x_real, c.y_real, config=train_config,
                                     keys=keys, num_classes=10, pad_to=200,
                                     use_batch_stats=True)
    for r in range(BN_CONFIG.num_seeds):
      params_r = jax.tree_util.tree_map(lambda leaf, r=r: leaf[r], runs.params)
      stats = apply_fn.estimate_batch_stats(
          params_r, c.x_real, key=ground_truth.batch_stats_key(keys[r]),
          num_batches=BN_CONFIG.bn_batches, batch_size=min(BN_CONFIG.batch_size, c.size))
      ev = training.evaluate(apply_fn.variables_apply,
                             {'params': params_r, 'batch_stats': stats}, *splits.test[:2])
      np.testing.assert_allclose(result.test_loss_per_seed[i, r], ev.loss, rtol=1e-5)
      np.testing.assert_allclose(result.test_accuracy_per_seed[i, r], ev.accuracy, rtol=1e-6)
      # The init statistics (mean 0, var 1) are not those of the trained network.
      frozen = training.evaluate(apply_fn, params_r, *splits.test[:2])
      assert abs(frozen.loss - ev.loss) > 1e-3
  # A config without the field re-estimates on the default number of batches.
  default = ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params,
                                 config={k: v for k, v in BN_CONFIG._asdict().items()
                                         if k != 'bn_batches'}, progress=False)
  explicit = ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params,
                                  config=BN_CONFIG._replace(bn_batches=64), progress=False)
  np.testing.assert_allclose(default.test_loss_per_seed, explicit.test_loss_per_seed, rtol=1e-6)
  assert not np.allclose(default.test_loss_per_seed, result.test_loss_per_seed, rtol=1e-6)
  with pytest.raises(ValueError, match='bn_batches'):
    ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params,
                         config=BN_CONFIG._replace(bn_batches=0), progress=False)


@pytest.mark.parametrize('field,value', [
    ('seed', 0.5),             # silently truncated to seed 0 before
    ('seed', None),            # TypeError naming no field before
    ('num_seeds', True),       # read as one seed before
    ('num_seeds', float('nan')),
    ('num_seeds', float('inf')),  # OverflowError before
    ('bn_batches', 2.5),
    ('eval_block_size', 0),
    ('eval_block_size', 2.5),
])
def test_config_integers_are_checked_and_named(problem, field, value):
  splits, apply_fn, params, cs = problem
  with pytest.raises(ValueError, match=f'config.{field} must be an integer'):
    ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params,
                         config=CONFIG._replace(**{field: value}), progress=False)


def test_retraining_keys_are_not_our_methods_stage_keys(problem, monkeypatch):
  # Both seeds default to 0. Seed r's key was split(PRNGKey(0), R)[r] == fold_in(PRNGKey(0), r),
  # which was our method's stage-r key: retraining seed 0's minibatches came from the bits
  # of the projection (stage 0) and seed 2's from the subsample (stage 2).
  from dv_jax import valuation  # pylint: disable=g-import-not-at-top
  splits, apply_fn, params, cs = problem
  seen = []
  train_many_seeds = training.train_many_seeds
  monkeypatch.setattr(training, 'train_many_seeds', lambda *args, keys, **kwargs: (
      seen.append(np.asarray(jax.random.key_data(keys)))
      or train_many_seeds(*args, keys=keys, **kwargs)))
  config = CONFIG._replace(steps=2, num_seeds=5, seed=0)
  ground_truth.retrain(cs[:1], splits.test, apply_fn=apply_fn, params=params, config=config,
                       progress=False)
  ours = valuation.default_config()
  ours.seed = 0
  stage_keys = {tuple(np.asarray(jax.random.key_data(valuation.stage_key(ours, s))).tolist())
                for s in range(5)}
  retrain_keys = {tuple(k.tolist()) for k in seen[0]}
  assert len(retrain_keys) == 5 and not retrain_keys & stage_keys


def _spy(monkeypatch, name, calls):
  """Records the keyword `block_size` of every call of `training.<name>`."""
  real = getattr(training, name)
  monkeypatch.setattr(training, name, lambda *args, **kwargs: (
      calls.append((name, kwargs.get('block_size'))) or real(*args, **kwargs)))


@pytest.mark.parametrize('batch_norm', [False, True])
def test_seeds_one_after_another_and_eval_blocks_do_not_change_the_result(
    problem, result, monkeypatch, batch_norm):
  # The LLM configs train the seeds one at a time and evaluate 8 test rows per block (one
  # vmapped program over R seeds of a 1.5B model, and 512-row blocks of 151,936-token
  # logits, need more memory than a GPU has): the same numbers, float32 rounding aside.
  splits, apply_fn, params, cs = problem
  config = CONFIG
  if batch_norm:
    model = _DenseBatchNormDense()
    apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(0),
                                                    splits.pool.x))
    config = BN_CONFIG
  vmapped = (ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params,
                                  config=config, progress=False) if batch_norm else result)
  calls = []
  for name in ('train', 'train_many_seeds', 'evaluate', 'evaluate_many'):
    _spy(monkeypatch, name, calls)
  one_at_a_time = ground_truth.retrain(
      cs, splits.test, apply_fn=apply_fn, params=params,
      config=config._replace(vmap_seeds=False, eval_block_size=7), progress=False)
  # Seed by seed (R = 2 per contributor), each test split in blocks of 7 rows.
  assert calls == [('train', None), ('evaluate', 7)] * (len(cs) * config.num_seeds)
  np.testing.assert_allclose(one_at_a_time.test_loss_per_seed, vmapped.test_loss_per_seed,
                             rtol=1e-5)
  np.testing.assert_allclose(one_at_a_time.test_accuracy_per_seed,
                             vmapped.test_accuracy_per_seed, rtol=1e-6)
  calls.clear()
  ground_truth.retrain(cs[:1], splits.test, apply_fn=apply_fn, params=params,
                       config=config._replace(steps=2, eval_block_size=5), progress=False)
  assert calls == [('train_many_seeds', None), ('evaluate_many', 5)]


def test_vmap_seeds_must_be_a_bool(problem):
  splits, apply_fn, params, cs = problem
  with pytest.raises(ValueError, match='config.vmap_seeds must be True or False'):
    ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params,
                         config=CONFIG._replace(vmap_seeds='False'), progress=False)


def test_a_model_without_a_class_axis_is_named(problem):
  # A binary model's [b] logits read as 1 class: the refusal blamed test.y's labels.
  splits, apply_fn, params, cs = problem
  with pytest.raises(ValueError, match=r'apply_fn must return logits \[b, c\]; for one '
                                       r'example it returned shape \(1,\)'):
    ground_truth.retrain(cs, splits.test, apply_fn=lambda p, x: apply_fn(p, x)[:, 0],
                         params=params, config=CONFIG, progress=False)


def test_a_model_whose_batch_axis_is_not_first_is_named(problem):
  splits, apply_fn, params, cs = problem
  with pytest.raises(ValueError, match=r'apply_fn must return logits \[b, c\]; for one '
                                       r'example it returned shape \(10, 1\)'):
    ground_truth.retrain(cs, splits.test, apply_fn=lambda p, x: apply_fn(p, x).T,
                         params=params, config=CONFIG, progress=False)


def test_only_the_seeds_that_diverged_are_named(problem, monkeypatch):
  splits, apply_fn, params, cs = problem
  real = training.evaluate_many

  def second_seed_inf(*args, **kwargs):
    ev = real(*args, **kwargs)
    return training.Evaluation(ev.loss.at[1].set(np.inf), ev.accuracy)

  monkeypatch.setattr(training, 'evaluate_many', second_seed_inf)
  with pytest.raises(ValueError, match=r"contributor 'clean' \(seeds \[1\]\)"):
    ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params, config=CONFIG,
                         progress=False)


def test_a_diverged_retraining_is_refused_naming_contributor_and_learning_rate(problem):
  # Its NaN test loss was saved as a finished unit and failed later in a rank correlation.
  splits, apply_fn, params, cs = problem
  config = CONFIG._replace(optimizer='sgd', learning_rate=1e20, steps=5)
  with pytest.raises(ValueError, match=r"retraining diverged on contributor 'clean' \(seeds "
                                       r"\[0, 1\]\).*learning_rate \(1e\+20"):
    ground_truth.retrain(cs, splits.test, apply_fn=apply_fn, params=params, config=config,
                         progress=False)
