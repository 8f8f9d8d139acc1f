"""TracIn (TracInCP, Pruthi et al., NeurIPS 2020) aggregated per contributor (METHOD.md 3).

The model is trained once, from `theta0`, on the pooled data of all contributors (in name
order, so that the list's order does not change the training) with the shared recipe
(`dv_jax.training`), saving `J` checkpoints `theta_j` and the step size `eta_j` used between
`theta_{j-1}` and `theta_j` (its mean over those steps when the schedule decays; Pruthi et
al. assume it constant there). The value of contributor `S` towards the
target set `T` is

  TracIn(S, T) = sum_j eta_j sum_{z in S} sum_{z' in T} <grad l(z; theta_j), grad l(z'; theta_j)>
               = sum_j eta_j < sum_{z in S} grad l(z; theta_j), sum_{z' in T} grad l(z'; theta_j) >

with `l` the cross-entropy, so one pass of per-example gradients per checkpoint serves
every contributor. A positive value means that the steps on `S` lowered the loss on `T`
(a proponent), so larger is more valuable. Gradients may be randomly projected to `k`
dimensions (`projection_dim`, `dv_jax.ntk.Projection`), which keeps inner products in
expectation. With an adaptive optimiser (Adam, the shared recipe's default) the
learning-rate weighting is the usual approximation of TracInCP.

Shape legend: `N` pooled examples, `m` target examples, `p` parameters (`k` projected),
`K` contributors, `J` checkpoints.
"""

import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dv_jax import config_checks
from dv_jax import linalg
from dv_jax import ntk as ntk_lib
from dv_jax import training
from dv_jax import valuation
from dv_jax.baselines import checks
from dv_jax.data.contributors import Contributor
from dv_jax.models import lm as lm_lib
from dv_jax.models.common import BatchNormApply, recalibrated_state


def default_config() -> ml_collections.ConfigDict:
  """The `baselines.tracin` section: the training recipe and the checkpoints."""
  return ml_collections.ConfigDict(dict(
      train=ml_collections.ConfigDict(dict(
          optimizer='adam', learning_rate=1e-2, steps=300, batch_size=64, weight_decay=0.0,
          momentum=0.0, schedule='constant')),
      num_checkpoints=5,        # J checkpoints, evenly spaced (must divide train.steps).
      projection_dim=0,         # 0 = exact gradients; else k.
      projection_kind='rademacher',
      grad_block_size=256,
      # '' = all parameters, as the method's paper; 'last_layers:N' (an LLM's last N
      # blocks) or a regex on the leaf path (dv_jax.models.lm.resolve_param_filter).
      param_filter='',
      # Keep the checkpoints in host memory (training one jitted segment per checkpoint)
      # rather than stacked on the device: 5 copies of a 1.5B LLM are 29 GiB beside its
      # training state. The same scores, float32 rounding aside.
      checkpoints_on_host=False,
      # A model with BatchNorm may also set `bn_batches` (default 64): the training
      # batches that re-estimate its running statistics at each checkpoint.
  ))


class _LossFn(ntk_lib.ApplyFnWrapper):
  """`scalar_fn(params, x_i, y_i)`: the cross-entropy of one example.

  Equal for equal `apply_fn`, so every checkpoint shares the jitted gradient program of
  `dv_jax.ntk.per_example_grads`.
  """

  takes_class_labels = True  # indexes the logits by y_i: per_example_grads checks them

  def __call__(self, params, x_i, y_i):
    logits = self.apply_fn(params, x_i[None])
    # Called directly, a label outside [0, c) would read NaN (or, negative, another class);
    # inside per_example_grads' jitted block y_i is a tracer and this costs nothing.
    ntk_lib.check_class_labels(y_i, logits.shape[-1])
    return training.cross_entropy(logits, jnp.reshape(y_i, (1,)))[0]


def loss_fn(apply_fn: Callable) -> Callable:
  """The per-example loss `l(params, x_i, y_i)` TracIn differentiates.

  Args:
    apply_fn: batched `apply_fn(params, x [b, ...]) -> logits [b, c]`.

  Returns:
    `l(params, x_i, y_i) = logsumexp(z) - z_{y_i}`, `z = apply_fn(params, x_i[None])[0]`,
    for ONE unbatched example; a concrete label outside `[0, c)` raises a ValueError naming
    `labels`.
  """
  return _LossFn(apply_fn)


def tracin_scores(train_grads: Sequence[Any], target_grads: Sequence[Any],
                  learning_rates: Sequence[float], owner: Any, num_contributors: int
                  ) -> np.ndarray:
  """`sum_j eta_j <sum_{z in S_i} g_j(z), sum_{z' in T} g_j(z')>` for every contributor.

  Args:
    train_grads: `J` arrays `[N, p]`, per-example loss gradients at each checkpoint.
    target_grads: `J` arrays `[m, p]`.
    learning_rates: `[J]`.
    owner: `[N]` contributor index of each pooled example.
    num_contributors: `K`.

  Returns:
    `[K]` float64 scores.

  Raises:
    ValueError: naming the argument: `train_grads`, `target_grads` and `learning_rates` of
      different lengths (`zip` would silently drop checkpoints) or empty; a gradient array
      not 2-D with at least one row, with NaN or Inf, or of another width than its
      checkpoint's counterpart; a non-finite learning rate; `owner` not `[N]` integers in
      `[0, num_contributors)` (`segment_sum` would silently drop those rows).
  """
  if np.ndim(learning_rates) != 1:  # a bare 0.1 has no len()
    raise ValueError(f'learning_rates must be [J] finite numbers, got {learning_rates!r}')
  lengths = (len(train_grads), len(target_grads), len(learning_rates))
  if len(set(lengths)) != 1 or lengths[0] < 1:
    raise ValueError('train_grads, target_grads and learning_rates must have the same '
                     f'length J >= 1 (one per checkpoint), got {lengths}')
  etas = np.asarray(learning_rates, np.float64)
  if etas.ndim != 1 or not np.all(np.isfinite(etas)):
    raise ValueError(f'learning_rates must be [J] finite numbers, got {learning_rates!r}')
  train_grads = [checks.example_rows(g, f'train_grads[{j}]', width='p')
                 for j, g in enumerate(train_grads)]
  target_grads = [checks.example_rows(g, f'target_grads[{j}]', width='p')
                  for j, g in enumerate(target_grads)]
  for j, (g_train, g_target) in enumerate(zip(train_grads, target_grads)):
    if g_train.shape[1] != g_target.shape[1]:
      raise ValueError(f'train_grads[{j}] and target_grads[{j}] must have the same width p, '
                       f'got {g_train.shape} and {g_target.shape}')
    owner = valuation.check_owner(owner, g_train.shape[0], num_contributors)
  owner = jnp.asarray(owner)
  scores = np.zeros(num_contributors)
  for g_train, g_target, eta in zip(train_grads, target_grads, etas):
    # Summed in at least float32: bfloat16 sums of a bfloat16 model's gradients over a
    # contributor keep ~3 significant digits.
    dtype = linalg.compute_dtype(g_train, g_target)
    g_train, g_target = g_train.astype(dtype), g_target.astype(dtype)
    per_contributor = jax.ops.segment_sum(g_train, owner, num_segments=num_contributors)
    target_sum = jnp.sum(g_target, axis=0)
    scores += float(eta) * np.asarray(
        jnp.dot(per_contributor, target_sum, precision=jax.lax.Precision.HIGHEST), np.float64)
  return scores


class Settings(NamedTuple):
  """The `baselines.tracin` section as `value` reads it (`check_config`).

  `param_filter` is not here: it is resolved against the parameters (`'last_layers:N'`
  needs the model's depth), so `value` checks it when it has them.
  """
  train: training.TrainConfig     # with checkpoint_every = steps / num_checkpoints.
  num_checkpoints: int
  projection_dim: int             # 0: exact gradients.
  projection_kind: str
  grad_block_size: int
  bn_batches: int
  mesh: Optional[jax.sharding.Mesh]  # `config.ntk.data_parallel`'s, or None.
  checkpoints_on_host: bool


def check_config(config: ml_collections.ConfigDict) -> Settings:
  """Checks `config.baselines.tracin` without touching data or model.

  `value` calls it first; an experiment calls it before its own work, so that a bad
  field fails before hours of retraining instead of when TracIn's turn comes.

  Args:
    config: with `seed`, `baselines.tracin` and optionally `ntk.data_parallel`.

  Returns:
    The checked `Settings`.

  Raises:
    ValueError: naming the field: a missing section or a key it does not know, `seed`
      not a whole number, a bad training recipe,
      `num_checkpoints` not an int >= 1 dividing `train.steps`, a `train.checkpoint_every`
      other than 0 or `train.steps / num_checkpoints`, `projection_dim` not an
      int >= 0, `grad_block_size` or `bn_batches` not an int >= 1, an unknown
      `projection_kind` with a projection, `checkpoints_on_host` not a bool, a
      `grad_block_size` that is not a multiple of the device count under
      `config.ntk.data_parallel`.
  """
  cfg = checks.config_section(config, 'tracin',
                               fields=[*default_config().keys(), 'bn_batches'])
  config_checks.config_seed(config)
  train_config = checks.config_train(cfg.train, 'baselines.tracin.train')
  steps = int(train_config.steps)
  num_checkpoints = config_checks.config_int(cfg.num_checkpoints,
                                             'baselines.tracin.num_checkpoints')
  if steps % num_checkpoints:
    raise ValueError(f'config.baselines.tracin.num_checkpoints must divide train.steps = '
                     f'{steps}, got {num_checkpoints}')
  every = steps // num_checkpoints
  if train_config.checkpoint_every not in (0, every):
    # The checkpoints are num_checkpoints'; a spacing of its own would be overridden.
    raise ValueError(f'config.baselines.tracin.train.checkpoint_every is set by '
                     f'num_checkpoints ({num_checkpoints} -> every {every} steps): leave it '
                     f'0 or {every}, got {train_config.checkpoint_every}')
  train_config = train_config._replace(checkpoint_every=every)
  projection_dim = config_checks.config_int(cfg.projection_dim, 'baselines.tracin.projection_dim',
                                            minimum=0)
  grad_block_size = config_checks.config_int(cfg.grad_block_size,
                                             'baselines.tracin.grad_block_size')
  # config.ntk.data_parallel (absent: off) splits each gradient block over the devices.
  mesh = valuation.gradient_mesh(config, block_size=grad_block_size,
                                 field='baselines.tracin.grad_block_size')
  bn_batches = config_checks.config_int(cfg.get('bn_batches', 64), 'baselines.tracin.bn_batches')
  if projection_dim and cfg.projection_kind not in ntk_lib.PROJECTION_KINDS:
    raise ValueError(f'config.baselines.tracin.projection_kind must be one of '
                     f'{ntk_lib.PROJECTION_KINDS}, got {cfg.projection_kind!r}')
  # Absent (a config written before the field): on the device, as then.
  checkpoints_on_host = config_checks.config_bool(cfg.get('checkpoints_on_host', False),
                                                  'baselines.tracin.checkpoints_on_host')
  return Settings(train_config, num_checkpoints, projection_dim, cfg.projection_kind,
                  grad_block_size, bn_batches, mesh, checkpoints_on_host)


def value(contributors: Sequence[Contributor], target: Any, *, apply_fn: Callable,
          params: Any, config: ml_collections.ConfigDict) -> valuation.ValuationResult:
  """TracInCP values of the contributors towards the target set.

  Args:
    contributors: `K` contributors.
    target: `T` (`Split` or `(x, y)`).
    apply_fn: `apply_fn(params, x [b, ...]) -> logits [b, c]`.
    params: `theta0`, where training starts.
    config: with `seed` and `baselines.tracin` (see `default_config`); an `ntk` section's
      `data_parallel` (absent: False) splits the gradient blocks over the local devices
      (`valuation.gradient_mesh`).

  Returns:
    `ValuationResult` (`seconds`: `train`, `gradients`, `total`; `extras`:
    `learning_rates [J]`).

  Raises:
    ValueError: as `check_config` (first, naming the field); as
      `valuation.validate_inputs`; a bad `param_filter` (`lm.resolve_param_filter`); all
      before training.
  """
  t0 = time.perf_counter()
  # The fields read after training, checked before it: a typo must not cost the training.
  settings = check_config(config)
  cfg = config.baselines.tracin
  tx, ty, num_classes = valuation.validate_inputs(contributors, target, apply_fn=apply_fn,
                                                  params=params)
  # In name order: the training's minibatches are drawn by row, so a pool in list order
  # moved every value when the list was reordered.
  x, y, _, owner = valuation.pool_examples_by_name(contributors)
  train_config, num_checkpoints = settings.train, settings.num_checkpoints
  projection_dim, grad_block_size = settings.projection_dim, settings.grad_block_size
  bn_batches, mesh = settings.bn_batches, settings.mesh
  # Resolved before training, so that a bad filter fails before the long part.
  param_filter = lm_lib.resolve_param_filter(cfg.param_filter, params)
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 12)
  k_train, k_proj = jax.random.split(key)
  # BatchNorm re-estimates. Not fold_in(key, 1): under JAX's default (partitionable)
  # threefry split(key)[i] is fold_in(key, i), so that was k_proj, and batch b's rows were
  # drawn from the same bits as projection leaf b's signs.
  k_bn = jax.random.fold_in(key, 2)
  result = training.train(apply_fn, params, x, y, config=train_config, key=k_train,
                          num_classes=num_classes,
                          use_batch_stats=isinstance(apply_fn, BatchNormApply),
                          checkpoints_on_host=settings.checkpoints_on_host)
  jax.block_until_ready(result.checkpoints)
  checks.trained_finite(result.checkpoints, 'baselines.tracin.train')
  seconds = {'train': time.perf_counter() - t0}
  t = time.perf_counter()
  projection = (ntk_lib.Projection(projection_dim, cfg.projection_kind, k_proj)
                if projection_dim else None)
  train_grads, target_grads = [], []
  for j in range(num_checkpoints):
    params_j = jax.tree_util.tree_map(lambda leaf, j=j: leaf[j], result.checkpoints)
    # A BatchNorm model trained with batch statistics is read with its own running ones,
    # passed with params_j as data so that every checkpoint shares one gradient compile.
    state_j = recalibrated_state(apply_fn, params_j, x, key=jax.random.fold_in(k_bn, j),
                                 num_batches=bn_batches, batch_size=train_config.batch_size,
                                 param_filter=param_filter)
    scalar_fn = loss_fn(state_j.apply_fn)
    kwargs = dict(projection=projection, block_size=grad_block_size,
                  param_filter=state_j.param_filter, mesh=mesh)
    train_grads.append(ntk_lib.per_example_grads(scalar_fn, state_j.variables, x, y, **kwargs))
    target_grads.append(ntk_lib.per_example_grads(scalar_fn, state_j.variables, tx, ty,
                                                  **kwargs))
  learning_rates = np.asarray(result.learning_rates, np.float64)
  values = tracin_scores(train_grads, target_grads, learning_rates, owner, len(contributors))
  seconds['gradients'] = time.perf_counter() - t
  seconds['total'] = time.perf_counter() - t0
  return valuation.ValuationResult(tuple(c.name for c in contributors), jnp.asarray(values),
                                   valuation.ranking_of(values), None, seconds, None,
                                   {'learning_rates': learning_rates})


__all__ = ['Settings', 'check_config', 'default_config', 'loss_fn', 'tracin_scores', 'value']
