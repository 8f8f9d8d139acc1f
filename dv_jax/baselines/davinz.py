"""DAVINZ (Wu, Shu and Low, ICML 2022): data valuation at initialization (METHOD.md section 3).

For each contributor `S` (real and synthetic examples pooled, DAVINZ does not tell them
apart), with the target set `T`:

  N(S)  = sqrt( sum_b Y_b^T (Theta_b + lam I)^-1 Y_b / n )     in-domain NTK score
  MMD(S) = sqrt(MMD^2_biased(S, T))                           single RBF kernel, raw inputs
  v(S)  = -(kappa N(S) + MMD(S)),  kappa = mean_i MMD(S_i) / mean_i N(S_i)

following the choices of the official code (github.com/ZhaoxuanWu/DAVINZ-DataValuation):
- `Theta[a, b] = <grad f_{y_a}(x_a), grad f_{y_b}(x_b)>`, the NTK of the TRUE-CLASS logit at
  initialisation, differentiated with respect to the weight matrices / kernels only: the
  official code differentiates its `Conv2d` / `Linear` layers, all built with
  `bias=False` (BatchNorm reset to the identity); our models have biases, so the
  `param_filter` regex `'kernel'` keeps flax's `Dense` / `Conv` kernels (our reading).
- residual `Y = 1 - f_y(x)` (classification; an LM, read through `dv_jax.tasks.lm_classifier`,
  gets `1 - g = 1 +` its response NLL, the official rule applied to `g`, where our score's
  `ntk.residual='loss'` takes METHOD.md's NLL itself);
- an ABSOLUTE jitter `1e-4 I` (`diagonal_I_mag`), not relative to the trace (raised x10
  with a warning only if the Cholesky factor still fails, which the official code does
  not need as it calls `inv`);
- block-diagonal approximation: the examples of a random permutation cut into
  `num_blocks` contiguous blocks `[b N / B, (b + 1) N / B)` (the official default is 1
  block for its CNN, 100 for large models), the quadratic forms summed, averaged over
  `num_permutations` permutations (official: 1);
- MMD with ONE Gaussian kernel `exp(-||x - x'||^2 / (2 sigma^2))` on the flattened raw
  inputs (no standardisation), biased V-statistic, `sigma = 5` (official value; 0 or None
  means the median heuristic `sqrt(median ||x - x'||^2)` of `T`; a negative one is an
  error). Kept for fidelity, but know what it does on raw pixels: on scikit-learn's digits
  the median squared distance is ~2,400, so a typical off-diagonal kernel value is
  exp(-2400 / 50) ~ 1e-21 (CIFAR's 3,072 dimensions are further still), and the MMD is
  close to `sqrt(1/n + 1/m)`, a function of the sizes alone; `sigma=0` measures the data.
  For text the raw input is the packed token row (ids and masks, `dv_jax.models.lm`): with
  a real vocabulary any two different sequences are far apart at `sigma=5` and the same
  holds; the official code has no text path, so `sigma=0` is the setting to consider there;
- `kappa` as above, over the contributors valued together.
Beyond the official code (off by default): `projection_dim = k > 0` randomly projects the
per-example gradients to `k` dimensions (`dv_jax.ntk.Projection`), without which a
ResNet-18 or an LLM has per-example gradients too large to hold for the whole pool. The
projected NTK of a block has rank <= k, so a block may hold at most k / 2 rows
(`ntk.check_projected_block_rows`): with one block, a contributor larger than k would be
scored by the jitter alone. Use the official large-model setting, `num_blocks=100`.

Shape legend: `K` contributors, `n` examples of one contributor, `p` parameters.
"""

import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dv_jax import checks as checks_lib
from dv_jax import config_checks
from dv_jax import mmd as mmd_lib
from dv_jax import ntk as ntk_lib
from dv_jax import valuation
from dv_jax.baselines import checks
from dv_jax.data import contributors as contributors_lib
from dv_jax.data.contributors import Contributor
from dv_jax.models import lm as lm_lib


def default_config() -> ml_collections.ConfigDict:
  """The `baselines.davinz` section."""
  return ml_collections.ConfigDict(dict(
      sigma=5.0,             # RBF length scale on raw inputs; 0 (or None) = median
                             # heuristic of T.
      jitter=1e-4,           # absolute diagonal added to each NTK block.
      num_blocks=1,          # blocks of the block-diagonal NTK (official CNN setting: 1).
      num_permutations=1,    # permutations averaged (official: 1).
      param_filter='kernel',  # weights only, as the official code; '' = all parameters.
      grad_block_size=256,   # examples per jitted gradient block.
      # Beyond the official code, for models whose per-example gradients do not fit
      # (ResNet-18, LLMs): a random projection to k dimensions (dv_jax.ntk.Projection);
      # 0 = exact gradients, as the official code.
      projection_dim=0,
      projection_kind='rademacher',
  ))


def _check_sigma(sigma: Any) -> float:
  """The RBF length scale: > 0, or 0 / None for the median heuristic (returned as 0)."""
  if sigma is None:
    return 0.0
  try:
    number = float(sigma) if not isinstance(sigma, bool) else np.nan
  except (TypeError, ValueError):  # a string: named below, not by float()'s message
    number = np.nan
  # 0 (or None) is how the median heuristic is asked for; a negative or non-finite sigma
  # is a typo, not such a request, and must not silently get the heuristic.
  if not (np.isfinite(number) and number >= 0):
    raise ValueError('config.baselines.davinz.sigma must be a finite length scale > 0, or 0 '
                     f'(or None) for the median heuristic, got {sigma!r}')
  return number


def _contributor_key(key: jax.Array, contributor: Contributor) -> jax.Array:
  """The permutation key of one contributor, from its (unique) name, not its position:
  with `num_blocks > 1` a contributor's value must not change when the list is reordered."""
  return contributors_lib.fold_in_name(key, contributor.name)


def ntk_score(grads: Any, residual: Any, *, num_blocks: int, num_permutations: int,
              jitter: float, key: jax.Array) -> float:
  """DAVINZ's `sqrt(sum_b Y_b^T (G_b G_b^T + jitter I)^-1 Y_b / n)`, averaged over
  permutations (the mean of the square roots, as the official code).

  Args:
    grads: `[n, p]` per-example gradients of the true-class logit.
    residual: `[n]`, `1 - f_y(x)`.
    num_blocks: `B`; block `b` holds permuted rows `[b n // B, (b + 1) n // B)` (empty
      blocks are skipped). The permutation of `n` rows is a random permutation of the
      next power of two `>= n` with the rows `>= n` removed (still uniform; one compile
      per power of two instead of one per `n`).
    num_permutations: permutations averaged.
    jitter: absolute diagonal term.
    key: PRNG key of the permutations.

  Returns:
    The score (Python float).

  Raises:
    ValueError: naming the argument: `num_blocks` or `num_permutations` not an int >= 1 (0
      blocks would score nothing and 0 permutations divide by zero); `grads` not `[n, p]`
      with `n, p >= 1`; `residual` not `[n]`; `jitter` not finite and > 0; NaN or Inf in
      `grads` or `residual`.
  """
  num_blocks = checks_lib.check_int(num_blocks, 'num_blocks')
  num_permutations = checks_lib.check_int(num_permutations, 'num_permutations')
  grads = np.asarray(grads, np.float32)
  residual = np.asarray(residual, np.float32)
  if grads.ndim != 2 or min(grads.shape) < 1:  # p = 0 scored ~1/sqrt(jitter), not an error
    raise ValueError(f'grads must be [n, p] with n >= 1 and p >= 1, got shape {grads.shape}')
  n = grads.shape[0]
  # [n] only: the blocks index the rows of both, and DAVINZ's residual is one number each.
  if residual.shape != (n,):
    raise ValueError(f'residual must be [{n}] (one per row of grads), got shape '
                     f'{residual.shape}')
  jitter_value = checks_lib.real_number(jitter)  # not np.isfinite: True would be 1.0
  if jitter_value is None or not (np.isfinite(jitter_value) and jitter_value > 0):
    raise ValueError(f'jitter must be finite and > 0, got {jitter!r}')
  total = 0.0
  for perm_key in jax.random.split(key, num_permutations):
    order = np.asarray(jax.random.permutation(perm_key, valuation.bucket_size(n)))
    order = order[order < n]
    score = 0.0
    for b in range(num_blocks):
      rows = order[b * n // num_blocks:(b + 1) * n // num_blocks]
      if rows.size == 0:
        continue
      # Padded to a power-of-two bucket: one Cholesky compile serves every block size.
      score += float(valuation.gram_quad_form(grads[rows], residual[rows],
                                              initial_jitter=jitter_value).value)
    # The official code averages each permutation's square-rooted score.
    total += float(np.sqrt(max(score, 0.0) / n))
  return total / num_permutations


class Settings(NamedTuple):
  """The `baselines.davinz` section as `value` reads it (`check_config`).

  `param_filter` is not here: it is resolved against the parameters (`'last_layers:N'`
  needs the model's depth), so `value` checks it when it has them.
  """
  sigma: float                    # 0: the median heuristic.
  jitter: float
  num_blocks: int
  num_permutations: int
  grad_block_size: int
  projection_dim: int             # 0: exact gradients.
  projection_kind: str
  mesh: Optional[jax.sharding.Mesh]  # `config.ntk.data_parallel`'s, or None.


def check_config(config: ml_collections.ConfigDict) -> Settings:
  """Checks `config.baselines.davinz` without touching data or model.

  `value` calls it first; an experiment calls it before its own work, so that a bad
  field fails before hours of retraining instead of when DAVINZ's turn comes.

  Args:
    config: with `seed`, `baselines.davinz` and optionally `ntk.data_parallel`.

  Returns:
    The checked `Settings`.

  Raises:
    ValueError: naming the field: a missing section or a key it does not know, `seed`
      not a whole number, a negative or non-finite `sigma`,
      `jitter` not finite and > 0, `num_blocks` / `num_permutations` not an int >= 1,
      `grad_block_size` not an int >= 1 (or not a multiple of the device count under
      `config.ntk.data_parallel`), `projection_dim` not an int >= 0, an unknown
      `projection_kind` with a projection.
  """
  cfg = checks.config_section(config, 'davinz', fields=default_config().keys())
  config_checks.config_seed(config)
  sigma = _check_sigma(cfg.sigma)
  num_blocks = config_checks.config_int(cfg.num_blocks, 'baselines.davinz.num_blocks')
  num_permutations = config_checks.config_int(cfg.num_permutations,
                                              'baselines.davinz.num_permutations')
  jitter = config_checks.config_positive_float(cfg.jitter, 'baselines.davinz.jitter')
  grad_block_size = config_checks.config_int(cfg.grad_block_size,
                                             'baselines.davinz.grad_block_size')
  projection_dim = config_checks.config_int(cfg.get('projection_dim', 0),
                                            'baselines.davinz.projection_dim', minimum=0)
  projection_kind = cfg.get('projection_kind', 'rademacher')
  if projection_dim and projection_kind not in ntk_lib.PROJECTION_KINDS:
    raise ValueError(f'config.baselines.davinz.projection_kind must be one of '
                     f'{ntk_lib.PROJECTION_KINDS}, got {projection_kind!r}')
  # config.ntk.data_parallel (absent: off) splits each gradient block over the devices.
  mesh = valuation.gradient_mesh(config, block_size=grad_block_size,
                                 field='baselines.davinz.grad_block_size')
  return Settings(sigma, jitter, num_blocks, num_permutations, grad_block_size,
                  projection_dim, projection_kind, mesh)


def value(contributors: Sequence[Contributor], target: Any, *, apply_fn: Callable,
          params: Any, config: ml_collections.ConfigDict) -> valuation.ValuationResult:
  """DAVINZ values `-(kappa N + MMD)` of the contributors.

  Args:
    contributors: `K` contributors.
    target: `T` (`Split` or `(x, y)`).
    apply_fn: `apply_fn(params, x [b, ...]) -> logits [b, c]`.
    params: `theta0`.
    config: with `seed` and `baselines.davinz` (see `default_config`); an `ntk` section's
      `data_parallel` (absent: False) splits the gradient blocks over the local devices
      (`valuation.gradient_mesh`).

  Returns:
    `ValuationResult` with `extras` `mmd [K]`, `ntk [K]`, `kappa`.

  Raises:
    ValueError: as `check_config` (first, naming the field); as
      `valuation.validate_inputs`; a bad `param_filter` (`lm.resolve_param_filter`); with
      a projection, a block of more than `projection_dim / 2` rows
      (`ntk.check_projected_block_rows`: raise `num_blocks`); `sigma=0` on a target whose
      median pairwise squared distance is 0.
  """
  t0 = time.perf_counter()
  # The config first, so that a bad field fails before the gradients.
  settings = check_config(config)
  cfg = config.baselines.davinz
  tx, _, _ = valuation.validate_inputs(contributors, target, apply_fn=apply_fn, params=params)
  target_flat = tx.reshape(tx.shape[0], -1)
  sigma, block_size = settings.sigma, settings.grad_block_size
  if sigma > 0:
    bandwidths = jnp.asarray([sigma ** 2], jnp.float32)
  else:
    bandwidths = mmd_lib.median_heuristic(target_flat).reshape(1)
    # Named here: mk_mmd refused the 0 as "bandwidths must be positive", an argument the
    # caller never passed.
    if not float(bandwidths[0]) > 0:
      raise ValueError('config.baselines.davinz.sigma=0 asks for the median heuristic, but '
                       "the target's median pairwise squared distance is 0 (most of its rows "
                       'coincide); set config.baselines.davinz.sigma > 0')
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 11)
  # Per-example quantities once for the pooled examples (one compile for every size).
  x, y, _, owner = valuation.pool_examples(contributors)
  # Before the gradients: the largest contributor's largest block holds ceil(n / B) rows.
  largest = int(np.bincount(owner).max())
  ntk_lib.check_projected_block_rows(
      -(-largest // settings.num_blocks), settings.projection_dim,
      what=f'a DAVINZ block (a contributor of {largest} examples in '
           f'baselines.davinz.num_blocks={settings.num_blocks} blocks)')
  projection = (ntk_lib.Projection(settings.projection_dim, settings.projection_kind,
                                   jax.random.fold_in(key, 1_000_003))
                if settings.projection_dim else None)
  grads = np.asarray(ntk_lib.per_example_grads(
      ntk_lib.true_class_logit(apply_fn), params, x, y,
      param_filter=lm_lib.resolve_param_filter(cfg.param_filter, params),
      projection=projection,
      block_size=block_size, mesh=settings.mesh))
  logits = np.asarray(valuation.logits_at(apply_fn, params, x, block_size=block_size))
  residual = 1.0 - logits[np.arange(y.shape[0]), y]
  flat = x.reshape(x.shape[0], -1)
  mmds, ntks = [], []
  for i in range(len(contributors)):
    rows = owner == i
    mmds.append(float(mmd_lib.mk_mmd(flat[rows], target_flat, bandwidths=bandwidths,
                                     estimator='biased').value))
    ntks.append(ntk_score(grads[rows], residual[rows], num_blocks=settings.num_blocks,
                          num_permutations=settings.num_permutations,
                          jitter=settings.jitter, key=_contributor_key(key, contributors[i])))
  mmds, ntks = np.array(mmds), np.array(ntks)
  kappa = float(mmds.mean() / ntks.mean()) if ntks.mean() > 0 else 0.0
  values = -(kappa * ntks + mmds)
  seconds = {'total': time.perf_counter() - t0}
  return valuation.ValuationResult(tuple(c.name for c in contributors), jnp.asarray(values),
                                   valuation.ranking_of(values), None, seconds, None,
                                   {'mmd': mmds, 'ntk': ntks, 'kappa': kappa})


__all__ = ['Settings', 'check_config', 'default_config', 'ntk_score', 'value']
