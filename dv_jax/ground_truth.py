"""Ground truth by retraining (METHOD.md section 4).

For each contributor ``S_i`` the model is trained from ``theta0`` on ``S_i`` alone with one
fixed recipe (``dv_jax.training``), for ``R`` seeds, and evaluated on a held-out test split
that is never the target ``T``. The ground-truth value is minus the test loss
averaged over seeds; the accuracy is reported beside it.

Every contributor's data are padded to the largest contributor's size, so one compiled
program serves all of them. The ``R`` seeds are the same for every contributor (common
random numbers), so differences between contributors are not blurred by seed noise.

Where the work runs (``vmap_seeds``, ``eval_block_size``) does not change the result beyond
float32 rounding. By default the ``R`` seeds train as one vmapped program, fastest for a
small model; a 1.5B LLM holds ``4R + 1`` float32 copies of its parameters that way (each
seed's parameters, Adam moments and gradients, plus ``theta0``), so the LLM configs train
them one after another (``vmap_seeds=False``: 5 copies). The test split is evaluated in
blocks of ``eval_block_size`` rows: an LLM's full-vocabulary logits for 512 rows of 512
tokens are 150 GiB per seed, so the LLM configs use 8.

BatchNorm (an ``apply_fn`` that is a ``dv_jax.models.common.BatchNormApply``, e.g.
ResNet-18) is trained as the standard recipe does: each minibatch is normalised by its own
statistics (``use_batch_stats=True``). After training, each seed's running statistics are
re-estimated on that contributor's training data (``bn_batches`` batches of
``min(batch_size, n)`` rows drawn with replacement, keyed by ``batch_stats_key`` of the
seed's training key), and the test split is evaluated in inference mode with them. The NTK
and the other methods still see the model in inference mode at ``theta0``.

Shape legend: ``K`` contributors, ``R`` seeds.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dv_jax import checks
from dv_jax import config_checks
from dv_jax import training
from dv_jax.models.common import BatchNormApply
from dv_jax.data.contributors import Contributor, Split, validate_contributor


class GroundTruthConfig(NamedTuple):
  """The retraining recipe (an ``ml_collections.ConfigDict`` with these fields works too).

  The ``TrainConfig`` fields (optimizer, learning_rate, steps, batch_size, weight_decay,
  momentum, schedule) plus ``num_seeds`` (``R``), ``seed`` (the base of the seed keys) and
  ``bn_batches``: the number of training batches BatchNorm's running statistics are
  re-estimated on after training (read only for a BatchNorm model; with momentum 0.9 the
  initial statistics keep a weight 0.9 ** 64 = 1e-3).
  """
  optimizer: str = 'adam'
  learning_rate: float = 1e-2
  steps: int = 300
  batch_size: int = 64
  weight_decay: float = 0.0
  momentum: float = 0.0
  schedule: str = 'constant'
  num_seeds: int = 3
  seed: int = 0
  bn_batches: int = 64
  vmap_seeds: bool = True
  eval_block_size: int = 512


class GroundTruth(NamedTuple):
  """Retraining results, one row per contributor.

  Attributes:
    names: ``K`` contributor names.
    test_loss: ``[K]`` test cross-entropy averaged over seeds.
    test_accuracy: ``[K]`` test accuracy averaged over seeds.
    test_loss_per_seed: ``[K, R]``.
    test_accuracy_per_seed: ``[K, R]``.
    seconds: wall time of the whole retraining (compilation included).
  """
  names: tuple
  test_loss: np.ndarray
  test_accuracy: np.ndarray
  test_loss_per_seed: np.ndarray
  test_accuracy_per_seed: np.ndarray
  seconds: float

  @property
  def values(self) -> np.ndarray:
    """``[K]`` ground-truth values ``-test_loss`` (larger is more valuable)."""
    return -self.test_loss


def _get(config: Any, field: str) -> Any:
  default = GroundTruthConfig._field_defaults[field]
  if isinstance(config, dict):
    return config.get(field, default)
  return getattr(config, field, default)


# fold_in tag of the statistics stream: training draws step t's batch from fold_in(key, t),
# t < steps, so the largest uint32 never collides with a training batch.
_BATCH_STATS_TAG = 2**32 - 1


def batch_stats_key(train_key: Any) -> jax.Array:
  """The key of a seed's BatchNorm re-estimate, derived from its training key."""
  return jax.random.fold_in(train_key, _BATCH_STATS_TAG)


class Settings(NamedTuple):
  """A retraining recipe as ``retrain`` reads it (``check_config``)."""
  train: training.TrainConfig  # ``checkpoint_every`` 0: only the final parameters are read.
  num_seeds: int
  seed: int
  bn_batches: int
  vmap_seeds: bool
  eval_block_size: int


def check_config(config: Any = None) -> Settings:
  """Checks a retraining recipe as ``retrain`` does first, without data or model.

  An experiment calls it (``config.ground_truth``) before building its benchmark, so that a
  bad field fails before that work instead of when the first retraining starts.

  Args:
    config: ``GroundTruthConfig`` or a ConfigDict / dict with its fields (None: defaults).

  Returns:
    The checked ``Settings``.

  Raises:
    ValueError: naming the field: a key it does not know, a bad training field
      (``training.as_train_config``), ``num_seeds`` / ``bn_batches`` / ``eval_block_size``
      not an int >= 1, ``vmap_seeds`` not a bool, ``seed`` not a whole number in
      ``[0, 2^32)``.
  """
  if config is None:
    config = GroundTruthConfig()
  train_config = training.as_train_config(
      config, extra_fields=set(GroundTruthConfig._fields) - set(training.TrainConfig._fields))
  if train_config.checkpoint_every:
    train_config = train_config._replace(checkpoint_every=0)
  num_seeds = config_checks.config_int(_get(config, 'num_seeds'), 'num_seeds')
  bn_batches = config_checks.config_int(_get(config, 'bn_batches'), 'bn_batches')
  vmap_seeds = config_checks.config_bool(_get(config, 'vmap_seeds'), 'vmap_seeds')
  eval_block_size = config_checks.config_int(_get(config, 'eval_block_size'),
                                             'eval_block_size')
  seed = checks.check_seed(_get(config, 'seed'), 'config.seed')
  return Settings(train_config, num_seeds, seed, bn_batches, vmap_seeds, eval_block_size)


def retrain(contributors: Sequence[Contributor], test: Split | tuple, *,
            apply_fn: Callable[[Any, Any], Any], params: Any, config: Any = None,
            progress: bool = True) -> GroundTruth:
  """Trains from ``params`` on each contributor's data and scores it on ``test``.

  Args:
    contributors: ``K >= 1`` contributors (unique names); real and synthetic parts pooled.
    test: the held-out test split, ``Split`` or ``(x [m, ...], y [m])``; must be disjoint
      from the target set (the data loaders guarantee it).
    apply_fn: ``apply_fn(params, x [b, ...]) -> logits [b, c]``; a ``BatchNormApply`` is
      trained in train mode and evaluated with re-estimated statistics (module docstring).
    params: ``theta0``, the initial parameters every run starts from.
    config: ``GroundTruthConfig`` or a ConfigDict with its fields (None: defaults).
    progress: show a tqdm bar over contributors.

  Returns:
    ``GroundTruth``.

  Raises:
    ValueError: naming the field, a bad config (``check_config``, first); naming the
      contributor for bad data (see ``validate_contributor``), for duplicate names, no
      contributors, or a bad test split; naming the
      contributor, the seeds and the learning rate when a retraining diverged (NaN or Inf
      test loss).
  """
  settings = check_config(config)
  train_config, num_seeds, seed = settings.train, settings.num_seeds, settings.seed
  bn_batches, vmap_seeds = settings.bn_batches, settings.vmap_seeds
  eval_block_size = settings.eval_block_size
  batch_norm = isinstance(apply_fn, BatchNormApply)
  contributors = list(contributors)
  if not contributors:
    raise ValueError('contributors must hold at least one contributor')
  names = [getattr(c, 'name', None) for c in contributors]
  duplicates = sorted({n for n in names if names.count(n) > 1}, key=str)
  if duplicates:
    raise ValueError(f'contributors have duplicate names: {duplicates}')
  test_x, test_y = np.asarray(test[0], np.float32), np.asarray(test[1])
  if test_x.ndim < 2 or test_x.shape[0] == 0 or test_y.shape != (test_x.shape[0],):
    raise ValueError(f'test must be a non-empty (x [m, ...], y [m]) split, got shapes '
                     f'{test_x.shape} and {test_y.shape}')
  if not np.all(np.isfinite(test_x)):
    raise ValueError('test.x contains NaN or Inf')
  # Checked before any training: float labels (NaN among them) pass the range check below
  # and would only fail in the evaluation, after every contributor has been trained.
  if not np.issubdtype(test_y.dtype, np.integer):
    raise ValueError(f'test.y must hold integer labels, got dtype {test_y.dtype}')
  out = jax.eval_shape(apply_fn, params, test_x[:1])
  # Checked as valuation checks it: a binary model's [b] logits read as 1 class, and the
  # refusal blamed test.y's labels.
  if len(out.shape) != 2 or out.shape[0] != 1:
    raise ValueError(f'apply_fn must return logits [b, c]; for one example it returned '
                     f'shape {out.shape}')
  num_classes = int(out.shape[1])
  if test_y.min() < 0 or test_y.max() >= num_classes:
    raise ValueError(f'test.y has labels outside [0, {num_classes})')
  for c in contributors:
    validate_contributor(c, feature_shape=test_x.shape[1:], num_classes=num_classes)

  start = time.perf_counter()
  keys = jax.random.split(jax.random.PRNGKey(seed), int(num_seeds))
  capacity = max(c.size for c in contributors)
  train_kwargs = dict(config=train_config, num_classes=num_classes, pad_to=capacity,
                      use_batch_stats=batch_norm)
  losses, accuracies = [], []
  for c in tqdm(contributors, desc='retrain', disable=not progress):
    data = c.pooled()
    n = data.x.shape[0]
    if batch_norm:
      # Padded to the capacity (rows beyond n are never drawn): one compile for everyone.
      x_pad, _ = training.pad_examples(data.x, data.y, capacity)

    def statistics(params_r, r):
      # Running statistics re-estimated on this seed's training data, for inference mode.
      return apply_fn.estimate_batch_stats(
          params_r, x_pad, key=batch_stats_key(keys[r]), num_batches=int(bn_batches),
          batch_size=min(train_config.batch_size, n), num_rows=n)

    eval_fn = apply_fn.variables_apply if batch_norm else apply_fn
    if vmap_seeds:
      result = training.train_many_seeds(apply_fn, params, data.x, data.y, keys=keys,
                                         **train_kwargs)
      variables = result.params
      if batch_norm:
        stats = [statistics(jax.tree_util.tree_map(lambda leaf, r=r: leaf[r], result.params), r)
                 for r in range(int(num_seeds))]
        variables = {'params': result.params,
                     'batch_stats': jax.tree_util.tree_map(lambda *s_r: jnp.stack(s_r), *stats)}
      ev = training.evaluate_many(eval_fn, variables, test_x, test_y,
                                  block_size=eval_block_size)
    else:
      # One seed at a time: one seed's training state in memory instead of R's.
      evs = []
      for r in range(int(num_seeds)):
        params_r = training.train(apply_fn, params, data.x, data.y, key=keys[r],
                                  **train_kwargs).params
        variables = ({'params': params_r, 'batch_stats': statistics(params_r, r)}
                     if batch_norm else params_r)
        evs.append(training.evaluate(eval_fn, variables, test_x, test_y,
                                     block_size=eval_block_size))
        del params_r, variables  # freed before the next seed trains
      ev = training.Evaluation(*(jnp.stack(field) for field in zip(*evs)))
    loss_r = np.asarray(ev.loss, np.float64)
    # Refused here, before anything is saved: a diverged seed's NaN test loss was stored as a
    # finished ground-truth unit (reused on every rerun) and failed far away, in a rank
    # correlation, naming neither the contributor nor the recipe.
    if not np.all(np.isfinite(loss_r)):
      seeds = np.flatnonzero(~np.isfinite(loss_r)).tolist()
      raise ValueError(f'retraining diverged on contributor {c.name!r} (seeds {seeds}): its '
                       f'test loss is NaN or Inf; lower the recipe\'s learning_rate '
                       f'({train_config.learning_rate!r}; config.ground_truth.learning_rate '
                       'in the experiments)')
    losses.append(loss_r)
    accuracies.append(np.asarray(ev.accuracy, np.float64))
  seconds = time.perf_counter() - start
  loss_kr = np.stack(losses)
  acc_kr = np.stack(accuracies)
  return GroundTruth(tuple(names), loss_kr.mean(axis=1), acc_kr.mean(axis=1), loss_kr, acc_kr,
                     seconds)


__all__ = ['GroundTruthConfig', 'GroundTruth', 'Settings', 'check_config', 'retrain']
