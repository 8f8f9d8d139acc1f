"""TRAK (Park et al., ICML 2023) aggregated per contributor (METHOD.md section 3).

`R` models are trained on the pooled data of all contributors (in name order, so that the
list's order does not change the training; the shared recipe of `dv_jax.training`, from
`theta0`, with `R` different minibatch seeds). For model `r`:

- features `phi(z) = P^T grad_theta f(z; theta_r)` of the margin
  `f(z) = z_y - logsumexp_{j != y} z_j` (the log-odds of the true class), randomly projected
  to `k` dimensions in JAX (`dv_jax.ntk.Projection`, Rademacher or Gaussian, chunked per
  parameter leaf), for the pooled examples (`Phi [N, k]`) and the target (`[m, k]`);
- `Q_z = 1 - p_z`, `p_z` the softmax probability of the true class;
- attribution of training example `z` to target example `z'`:
  `tau(z', z) = phi(z')^T (Phi^T Phi + lam I)^-1 phi(z) Q_z`, with the ridge
  `lam = ridge * trace(Phi^T Phi) / k` (relative, so one value suits any gradient scale;
  raised x10 if the Cholesky factor fails).

The value of contributor `S` is `mean_r sum_{z in S} sum_{z' in T} tau_r(z', z)`, computed as
`sum_{z in S} Q_z phi(z)^T u` with `u = (Phi^T Phi + lam I)^-1 sum_{z'} phi(z')`: one `[k, k]`
solve per model. Positive: the subset raises the target margins (larger is more valuable).
Our choices: models differ by their minibatch order, not their initialisation (the call
shape hands us one `theta0`) nor by data subsets. Each model's scores carry that model's
own `Q` before the `R` models are averaged, as METHOD.md section 3 reads ("times
(1 - p_z), averaged over models"); TRAK's Algorithm 1 and official code instead average
the kernel terms and the `Q`s separately, `mean_r(A_r) * mean_r(Q_r)`. On digits (8
contributors, 5 models) the two differ by up to 8% in value and not at all in ranking.

Shape legend: `N` pooled examples, `m` target examples, `k` projection dimension, `K`
contributors, `R` models.
"""

import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dv_jax import checks as checks_lib
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
  """The `baselines.trak` section."""
  return ml_collections.ConfigDict(dict(
      train=ml_collections.ConfigDict(dict(
          optimizer='adam', learning_rate=1e-2, steps=300, batch_size=64, weight_decay=0.0,
          momentum=0.0, schedule='constant')),
      num_models=3,                 # R models.
      projection_dim=512,           # k.
      projection_kind='rademacher',  # 'rademacher' | 'gaussian'.
      ridge=1e-3,                   # lam = ridge * trace(Phi^T Phi) / k.
      grad_block_size=256,
      # '' = all parameters, as the method's paper; 'last_layers:N' (an LLM's last N
      # blocks) or a regex on the leaf path (dv_jax.models.lm.resolve_param_filter).
      param_filter='',
      # Train the R models as one vmapped program (fastest for a small model) or one after
      # another (False: a third of the memory for three fine-tunings of a 1.5B LLM, each
      # holding its parameters, Adam moments and gradients). The same scores either way,
      # float32 rounding aside.
      vmap_models=True,
      # A model with BatchNorm may also set `bn_batches` (default 64): the training
      # batches that re-estimate its running statistics for each model.
  ))


class _Margin(ntk_lib.ApplyFnWrapper):
  """`scalar_fn(params, x_i, y_i) = z_y - logsumexp_{j != y} z_j` of one example."""

  takes_class_labels = True  # indexes the logits by y_i: per_example_grads checks them

  def __call__(self, params, x_i, y_i):
    logits = self.apply_fn(params, x_i[None])[0]
    # Called directly, a label outside [0, c) would be clamped (or, negative, wrap) into a
    # plausible wrong margin; inside per_example_grads' jitted block y_i is a tracer.
    ntk_lib.check_class_labels(y_i, logits.shape[0])
    others = jnp.where(jnp.arange(logits.shape[0]) == y_i, -jnp.inf, logits)
    return logits[y_i] - jax.nn.logsumexp(others)


def margin_fn(apply_fn: Callable) -> Callable:
  """TRAK's model output `f(z) = log(p_y / (1 - p_y))` as a per-example scalar function.

  Args:
    apply_fn: batched `apply_fn(params, x [b, ...]) -> logits [b, c]`, `c >= 2`.

  Returns:
    `f(params, x_i, y_i) = z_{y_i} - logsumexp_{j != y_i} z_j` for ONE unbatched example; a
    concrete label outside `[0, c)` raises a ValueError naming `labels`.
  """
  return _Margin(apply_fn)


def trak_scores(train_features: Any, target_features: Any, q: Any, owner: Any,
                num_contributors: int, *, ridge: float) -> np.ndarray:
  """One model's `sum_{z in S_i} sum_{z'} phi(z')^T (Phi^T Phi + lam I)^-1 phi(z) Q_z`.

  Args:
    train_features: `Phi [N, k]`.
    target_features: `[m, k]`.
    q: `[N]`, `1 - p_z`.
    owner: `[N]` contributor of each row.
    num_contributors: `K`.
    ridge: relative ridge, `lam = ridge * trace(Phi^T Phi) / k`.

  Returns:
    `[K]` float64 scores.

  Raises:
    ValueError: naming the argument: features not 2-D with at least one row, of different
      widths `k`, or with NaN or Inf; `q` not `[N]` finite (a `[N, 1]` one would broadcast
      the scores to `[K, N]`); `ridge` not finite and > 0; `owner` not `[N]` integers in
      `[0, num_contributors)` (`segment_sum` would silently drop the rows of an owner out
      of range), or `num_contributors < 1`.
  """
  phi_NxK = checks.example_rows(train_features, 'train_features', width='k')
  target_MxK = checks.example_rows(target_features, 'target_features', width='k')
  if target_MxK.shape[1] != phi_NxK.shape[1]:
    raise ValueError(f'target_features must have the width k = {phi_NxK.shape[1]} of '
                     f'train_features, got shape {target_MxK.shape}')
  q_N = jnp.asarray(q)
  if q_N.shape != phi_NxK.shape[:1] or not bool(jnp.isfinite(q_N).all()):
    raise ValueError(f'q must be [{phi_NxK.shape[0]}] (one finite weight per row of '
                     f'train_features), got shape {q_N.shape}')
  number = checks_lib.real_number(ridge)  # None, '1e-3' and True are not a ridge
  if number is None or not (np.isfinite(number) and number > 0):
    raise ValueError(f'ridge must be finite and > 0, got {ridge!r}')
  ridge = number
  owner = valuation.check_owner(owner, phi_NxK.shape[0], num_contributors)
  # At least float32 (the bfloat16 features of a bfloat16 model): a bfloat16 Gram matrix
  # keeps ~3 significant digits, coarser than the relative ridge it is solved with.
  dtype = linalg.compute_dtype(phi_NxK, target_MxK, q_N)
  phi_NxK, target_MxK, q_N = (a.astype(dtype) for a in (phi_NxK, target_MxK, q_N))
  gram_KxK = jnp.dot(phi_NxK.T, phi_NxK, precision=jax.lax.Precision.HIGHEST)
  u_K = linalg.psd_solve(gram_KxK, jnp.sum(target_MxK, axis=0), eps=float(ridge)).solution
  per_example = jnp.dot(phi_NxK, u_K, precision=jax.lax.Precision.HIGHEST) * q_N
  return np.asarray(jax.ops.segment_sum(per_example, jnp.asarray(owner),
                                        num_segments=num_contributors), np.float64)


class Settings(NamedTuple):
  """The `baselines.trak` section as `value` reads it (`check_config`).

  `param_filter` is not here: it is resolved against the parameters (`'last_layers:N'`
  needs the model's depth), so `value` checks it when it has them.
  """
  train: training.TrainConfig
  num_models: int
  projection_dim: int
  projection_kind: str
  ridge: float
  grad_block_size: int
  bn_batches: int
  mesh: Optional[jax.sharding.Mesh]  # `config.ntk.data_parallel`'s, or None.
  vmap_models: bool


def check_config(config: ml_collections.ConfigDict) -> Settings:
  """Checks `config.baselines.trak` without touching data or model.

  `value` calls it first; an experiment calls it before its own work, so that a bad
  field fails before hours of retraining instead of when TRAK's turn comes.

  Args:
    config: with `seed`, `baselines.trak` and optionally `ntk.data_parallel`.

  Returns:
    The checked `Settings`.

  Raises:
    ValueError: naming the field: a missing section or a key it does not know, `seed`
      not a whole number, a bad training recipe, `num_models`,
      `projection_dim`, `grad_block_size` or `bn_batches` not an int >= 1, an unknown
      `projection_kind`, `ridge` not finite and > 0, a `grad_block_size` that is not a
      multiple of the device count under `config.ntk.data_parallel`.
  """
  cfg = checks.config_section(config, 'trak', fields=[*default_config().keys(), 'bn_batches'])
  config_checks.config_seed(config)
  train_config = checks.config_train(cfg.train, 'baselines.trak.train')
  num_models = config_checks.config_int(cfg.num_models, 'baselines.trak.num_models')
  projection_dim = config_checks.config_int(cfg.projection_dim, 'baselines.trak.projection_dim')
  if cfg.projection_kind not in ntk_lib.PROJECTION_KINDS:
    raise ValueError(f'config.baselines.trak.projection_kind must be one of '
                     f'{ntk_lib.PROJECTION_KINDS}, got {cfg.projection_kind!r}')
  ridge = config_checks.config_positive_float(cfg.ridge, 'baselines.trak.ridge')
  grad_block_size = config_checks.config_int(cfg.grad_block_size, 'baselines.trak.grad_block_size')
  # config.ntk.data_parallel (absent: off) splits each gradient block over the devices.
  mesh = valuation.gradient_mesh(config, block_size=grad_block_size,
                                 field='baselines.trak.grad_block_size')
  bn_batches = config_checks.config_int(cfg.get('bn_batches', 64), 'baselines.trak.bn_batches')
  # Absent (a config written before the field): vmapped, as then.
  vmap_models = config_checks.config_bool(cfg.get('vmap_models', True),
                                          'baselines.trak.vmap_models')
  return Settings(train_config, num_models, projection_dim, cfg.projection_kind, ridge,
                  grad_block_size, bn_batches, mesh, vmap_models)


def value(contributors: Sequence[Contributor], target: Any, *, apply_fn: Callable,
          params: Any, config: ml_collections.ConfigDict) -> valuation.ValuationResult:
  """TRAK values of the contributors towards the target set.

  Args:
    contributors: `K` contributors.
    target: `T` (`Split` or `(x, y)`).
    apply_fn: `apply_fn(params, x [b, ...]) -> logits [b, c]`.
    params: `theta0`, where every model's training starts.
    config: with `seed` and `baselines.trak` (see `default_config`); an `ntk` section's
      `data_parallel` (absent: False) splits the gradient blocks over the local devices
      (`valuation.gradient_mesh`).

  Returns:
    `ValuationResult` (`seconds`: `train`, `features`, `total`; `extras`: `per_model
    [R, K]`).

  Raises:
    ValueError: as `check_config` (first, naming the field); as
      `valuation.validate_inputs`; a bad `param_filter` (`lm.resolve_param_filter`); all
      before training.
  """
  t0 = time.perf_counter()
  # The fields read after training, checked before it: a typo must not cost the training.
  settings = check_config(config)
  cfg = config.baselines.trak
  tx, ty, num_classes = valuation.validate_inputs(contributors, target, apply_fn=apply_fn,
                                                  params=params)
  # In name order: the training's minibatches are drawn by row, so a pool in list order
  # moved every value when the list was reordered.
  x, y, _, owner = valuation.pool_examples_by_name(contributors)
  num_models, ridge, mesh = settings.num_models, settings.ridge, settings.mesh
  grad_block_size, bn_batches = settings.grad_block_size, settings.bn_batches
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 13)
  k_train, k_proj = jax.random.split(key)
  # BatchNorm re-estimates. Not fold_in(key, 1): under JAX's default (partitionable)
  # threefry split(key)[i] is fold_in(key, i), so that was k_proj, and batch b's rows were
  # drawn from the same bits as projection leaf b's signs.
  k_bn = jax.random.fold_in(key, 2)
  # Resolved before training, so that a bad filter fails before the long part.
  param_filter = lm_lib.resolve_param_filter(cfg.param_filter, params)
  batch_norm = isinstance(apply_fn, BatchNormApply)
  train_keys = jax.random.split(k_train, num_models)
  train_kwargs = dict(config=cfg.train, num_classes=num_classes, use_batch_stats=batch_norm)
  if settings.vmap_models:
    trained = training.train_many_seeds(apply_fn, params, x, y, keys=train_keys,
                                        **train_kwargs).params
    jax.block_until_ready(trained)
    checks.trained_finite(trained, 'baselines.trak.train')
  seconds = {'train': time.perf_counter() - t0, 'features': 0.0}
  bn_batch_size = settings.train.batch_size

  def model_scores(params_r, r):
    # A function, so that model r's arrays are freed before model r + 1 trains.
    # A BatchNorm model trained with batch statistics is read with its own running ones,
    # passed with params_r as data so that every model shares one compile.
    state_r = recalibrated_state(apply_fn, params_r, x, key=jax.random.fold_in(k_bn, r),
                                 num_batches=bn_batches, batch_size=bn_batch_size,
                                 param_filter=param_filter)
    scalar_fn = margin_fn(state_r.apply_fn)
    projection = ntk_lib.Projection(int(cfg.projection_dim), cfg.projection_kind,
                                    jax.random.fold_in(k_proj, r))
    kwargs = dict(projection=projection, block_size=grad_block_size,
                  param_filter=state_r.param_filter, mesh=mesh)
    phi = ntk_lib.per_example_grads(scalar_fn, state_r.variables, x, y, **kwargs)
    phi_target = ntk_lib.per_example_grads(scalar_fn, state_r.variables, tx, ty, **kwargs)
    logits = valuation.logits_at(state_r.apply_fn, state_r.variables, x,
                                 block_size=grad_block_size)
    # In at least float32: a bfloat16 `1 - p` rounds every Q of a confident example to a
    # multiple of 2^-8.
    logits = logits.astype(linalg.compute_dtype(logits.dtype))
    p_true = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), jnp.asarray(y)[:, None],
                                 axis=1)[:, 0]
    return trak_scores(phi, phi_target, 1.0 - p_true, owner, len(contributors), ridge=ridge)

  per_model = []
  for r in range(num_models):
    if settings.vmap_models:
      params_r = jax.tree_util.tree_map(lambda leaf, r=r: leaf[r], trained)
    else:
      # One model at a time: one model's training state in memory instead of R's.
      t = time.perf_counter()
      params_r = jax.block_until_ready(training.train(apply_fn, params, x, y,
                                                      key=train_keys[r], **train_kwargs).params)
      checks.trained_finite(params_r, 'baselines.trak.train')
      seconds['train'] += time.perf_counter() - t
    t = time.perf_counter()
    per_model.append(model_scores(params_r, r))
    del params_r
    seconds['features'] += time.perf_counter() - t
  per_model = np.stack(per_model)
  values = per_model.mean(axis=0)
  seconds['total'] = time.perf_counter() - t0
  return valuation.ValuationResult(tuple(c.name for c in contributors), jnp.asarray(values),
                                   valuation.ranking_of(values), None, seconds, None,
                                   {'per_model': per_model})


__all__ = ['Settings', 'check_config', 'default_config', 'margin_fn', 'trak_scores', 'value']
