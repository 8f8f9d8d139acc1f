"""A seed draws the same numbers with `jax_enable_x64` on (a common research setting).

JAX's random functions draw from the key's bits through their dtype: with x64 on, the
default int64 / float64 give other indices and values for the same key. Every draw that
picks data, minibatches or resamples names its dtype, so a notebook with x64 on reproduces
a pipeline run without it.
"""

import flax.linen as nn
import jax
import numpy as np

from dv_jax import baselines
from dv_jax import metrics
from dv_jax import training
from dv_jax.baselines import random_baseline
from dv_jax.data import facts
from dv_jax.data import tweets
from dv_jax.data.contributors import Contributor
from dv_jax.data.contributors import Split
from dv_jax.models.common import bind_apply
from dv_jax.models.common import init_model
from dv_jax.models.mlp import MLP


def _x64():
  """x64 on inside the block (`jax.enable_x64` on current JAX, `jax.experimental`'s before)."""
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _both(fn):
  """`fn()` without x64 and with it."""
  without = fn()
  with _x64():
    assert jax.numpy.arange(1).dtype == np.int64  # the context really switched
    with_x64 = fn()
  return without, with_x64


def test_bootstrap_resamples():
  without, with_x64 = _both(lambda: metrics.bootstrap_indices(6, 4, key=jax.random.PRNGKey(3)))
  np.testing.assert_array_equal(with_x64, without)


def _mlp(x):
  model = MLP(hidden_sizes=(4,), num_classes=3)
  return bind_apply(model, init_model(model, jax.random.PRNGKey(0), x[:1]))


def test_training_minibatches_and_the_random_baseline():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 5)).astype(np.float32)
  y = rng.integers(0, 3, size=40).astype(np.int32)
  apply_fn, params = _mlp(x)
  config = training.TrainConfig(optimizer='sgd', learning_rate=0.5, steps=5, batch_size=4)

  def train():
    return training.train(apply_fn, params, x, y, config=config, key=jax.random.PRNGKey(1),
                          num_classes=3).params

  without, with_x64 = _both(train)
  for a, b in zip(jax.tree_util.tree_leaves(without), jax.tree_util.tree_leaves(with_x64)):
    np.testing.assert_allclose(np.asarray(b, np.float64), np.asarray(a, np.float64),
                               rtol=1e-5, atol=1e-6)
  contributors = [Contributor(name, x[i:i + 10], y[i:i + 10], None, None)
                  for name, i in (('a', 0), ('b', 10), ('c', 20))]
  target = Split(x[30:], y[30:], np.zeros(10, bool))
  config = baselines.default_config()
  without, with_x64 = _both(lambda: np.asarray(random_baseline.value(
      contributors, target, apply_fn=apply_fn, params=params, config=config).values))
  np.testing.assert_array_equal(with_x64, without)


def test_facts_item_codes():
  def codes():
    task = facts.make_facts_task(num_items=50, num_answers=4, beta=1.5,
                                 key=jax.random.PRNGKey(2), k=10)
    return facts.item_codes(task, np.arange(50), code_dim=8)

  without, with_x64 = _both(codes)
  np.testing.assert_allclose(with_x64, without, rtol=1e-6)


class _BatchNormMLP(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(4)(x))
    return nn.Dense(3)(nn.relu(h))


def test_batch_norm_re_estimation_rows():
  # Rows far apart (row r is shifted by r), so other rows give other statistics.
  x = (np.random.default_rng(0).normal(size=(40, 5)) + np.arange(40)[:, None]).astype(np.float32)
  model = _BatchNormMLP()
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(3), x[:1]))

  def statistics():
    stats = apply_fn.estimate_batch_stats(params, x, key=jax.random.PRNGKey(1), num_batches=2,
                                          batch_size=4, num_rows=40)
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(stats)])

  without, with_x64 = _both(statistics)
  np.testing.assert_allclose(with_x64, without, rtol=1e-5, atol=1e-6)


def test_tweet_lm_minibatches():
  texts = [f'tweet {i} about the {"sun" if i % 2 else "rain"} today' for i in range(30)]
  config = tweets.TweetLMConfig(max_len=12, num_layers=1, num_heads=2, d_model=8, d_ff=16,
                                num_steps=3, batch_size=4)

  def losses():
    return np.asarray(tweets.train_tweet_lm(texts, np.arange(30) % 3, key=jax.random.PRNGKey(0),
                                            lm_config=config)[3])

  without, with_x64 = _both(losses)
  np.testing.assert_allclose(with_x64, without, rtol=1e-5)
