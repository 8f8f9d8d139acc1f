r"""The valuation table (paper Table 1 analog) on the digits benchmark and the four tasks.

For each backbone (MLP, small CNN): the ground truth retrains theta0 on each contributor
(R seeds, loss on the TEST split); every method values the contributors against the
TARGET split only (the fitted-weights rows also read the test losses of probe coalitions
without the contributor they value, METHOD.md's regression); each row reports Spearman and Kendall against the ground truth with
percentile-bootstrap CIs (contributors resampled) and the method's wall time beside the
retraining cost. Rows: our score in each variant of METHOD.md section 2 (the first row is
METHOD.md's defaults; `ours-recommended` the variant chosen on DEVELOPMENT seeds of the
benchmark with ground truth measured on the target split, never on this test split), our
score with NNLS-fitted weights (leave-one-contributor-out: contributor i is scored by
weights fitted on probe coalitions that do not contain it), DAVINZ, TracIn, TRAK and a
seeded random ranking.

  python experiments/valuation_table.py --config=configs/valuation_table.py:digits \
      --workdir=workdirs/valuation_table

The same table runs on the paper's four tasks (`config.task`, built by `dv_jax.tasks`):
image classification (`mnist5k` on CPU, `cifar100` + ResNet-18 at scale), sentiment
(`tweets` on CPU; `sentiment_llm`, SST-2 / IMDB records with a Qwen / Llama checkpoint, at
scale), reasoning (`arithmetic`, `arithmetic_lm` on CPU; `reasoning_llm` with a checkpoint
at scale) and instruction following (`instruction`, checkpoint at scale);
configs/valuation_table.py lists the variants, commands and measured results. Slow
intermediate results of a task (the synthetic tweets) are cached as `cache/...` units.

Outputs in --workdir: config.json, log.txt, units/ (one JSON per finished unit: the ground
truth per (draw, backbone), the probe ground truth, each (draw, backbone, method); a rerun
skips them), results.csv (one row per draw, backbone and method, with the ground truth's
seed-to-seed Spearman, the reliability of its seed mean and the ceiling that sets on a
method's Spearman, `metrics.replicate_reliability`), results.json (rows, the summary
over draws, the ground truth), table.md and figure.{png,pdf}.

Expected result (measured; configs/valuation_table.py has the full list): on `digits`
(one draw) our proposed score reaches Spearman 0.78 (MLP) / 0.69 (CNN) against retraining
at 0.61 / 0.06 of the retraining time, the METHOD.md defaults 0.26 / 0.05; over the five
draws of `digits_draws` 0.73 ± 0.08 / 0.70 ± 0.10, ahead of DAVINZ, TRAK and random on
both backbones and of TracIn on the CNN, behind TracIn on the MLP (0.78 ± 0.13). The
paper's 0.8 is not reached. Times include JIT compilation (most of ours on these tiny
models); retraining 12 MLPs x 3 seeds takes only ~4 s, so on the MLP no method is a small
fraction of it. Runtime: `digits` 81-146 s wall on 2 shared CPU cores, `digits_draws` ~9
minutes.
"""

import ast
import math
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import jax
import matplotlib.ticker
import ml_collections
import numpy as np
from tqdm import tqdm

from dv_jax import baselines
from dv_jax import config_checks
from dv_jax import features as features_lib
from dv_jax import ground_truth
from dv_jax import metrics
from dv_jax import plotting
from dv_jax import results
from dv_jax import tasks
from dv_jax import valuation
from dv_jax.data import contributors as contributors_lib
from dv_jax.data import digits
from dv_jax.data import synthetic
from dv_jax.models.cnn import SmallCNN
from dv_jax.models.common import bind_apply
from dv_jax.models.common import init_model
from dv_jax.models.mlp import MLP

METHOD_SECTIONS = ('ntk', 'mmd', 'bound', 'valuation')
# The figure's guide line: the paper's Spearman target (README, "The 0.8 target").
SPEARMAN_TARGET = 0.8
PROBE_RETRAIN_LABEL = "probes' retraining (fitted weights)"


# ---------------------------------------------------------------------------------------
# The benchmark: data, contributors, backbones.


class Benchmark(NamedTuple):
  """The benchmark of one config (digits, or a task of `dv_jax.tasks`).

  Attributes:
    splits: pool / target / test (`digits.DigitsSplits`, or `TaskSplits` for a task).
    contributors: the K contributors.
    backbones: `{name: (apply_fn, theta0)}`.
    features_fn: `{backbone: phi}` for `mmd.feature_space='user'` (LM tasks: the mean-pooled
      last hidden state at theta0); empty for digits.
    info: a JSON-able description of the task (empty for digits).
  """
  splits: Any
  contributors: List[contributors_lib.Contributor]
  backbones: Dict[str, Tuple[Any, Any]]
  features_fn: Dict[str, Any] = {}
  info: Dict[str, Any] = {}


class TaskSplits(NamedTuple):
  """The splits of a `dv_jax.tasks.ValuationTask`, shaped like the digits' splits."""
  pool: Any
  target: Any
  test: Any


# Config fields that choose which units run (each unit's name spells the choice), so a
# unit does not depend on them: adding a draw, backbone, variant or budget reuses the rest.
_SELECTOR_FIELDS = {'data': ('num_draws',), 'model': ('backbones',),
                    'valuation': ('variants', 'budgets', 'num_repeats'),
                    'baselines': ('methods',)}


# Config fields that choose where the work runs, not its result (float32 rounding aside),
# so no unit depends on them either: toggling them reuses every saved unit, and units
# saved before they existed keep their fingerprints.
_PLACEMENT_FIELDS = {'ntk': ('data_parallel',),
                     'ground_truth': ('vmap_seeds', 'eval_block_size'),
                     'baseline': ('vmap_models', 'checkpoints_on_host')}


def _without_selectors(section_name: str, section: Any) -> Any:
  fields = results.to_jsonable(section)
  if not isinstance(fields, dict):
    return fields
  drop = _SELECTOR_FIELDS.get(section_name, ()) + _PLACEMENT_FIELDS.get(section_name, ())
  return {k: v for k, v in fields.items() if k not in drop}


def unit_fingerprint(config: ml_collections.ConfigDict, **sections: Any) -> str:
  """Fingerprint of a unit: the benchmark it is computed on and its method's `sections`.

  The benchmark is the seed, task, data and model config; the selector fields
  (`_SELECTOR_FIELDS`) and the placement fields (`_PLACEMENT_FIELDS`:
  `ntk.data_parallel`, the ground truth's `vmap_seeds` and `eval_block_size`, TRAK's
  `vmap_models`, TracIn's `checkpoints_on_host`) are left out of every section. A unit
  saved under one fingerprint is refused under another (`results.UnitStore`), so a rerun in a workdir with a setting
  changed fails instead of reporting stale results.

  Args:
    config: the (draw's) experiment config.
    **sections: what else the unit depends on, by section name (e.g.
      `ground_truth=config.ground_truth`).
  """
  benchmark = {name: _without_selectors(name, config[name]) for name in ('data', 'model')}
  benchmark.update(seed=config.seed, task=config.get('task', 'digits'))
  return results.fingerprint(
      benchmark, {name: _without_selectors(name, value) for name, value in sections.items()})


def method_fingerprint(config: ml_collections.ConfigDict,
                       method: ml_collections.ConfigDict) -> str:
  """`unit_fingerprint` of our method run under `method` (a `method_config`)."""
  return unit_fingerprint(config, method_seed=method.seed,
                          **{name: method[name] for name in METHOD_SECTIONS})


def unit_cache(store: Optional[results.UnitStore], fingerprint: Optional[str] = None
               ) -> tasks.Cache:
  """A `dv_jax.tasks.Cache` that keeps values as units of `store` (None: no caching)."""
  if store is None:
    return tasks.no_cache

  def cache(name, compute):
    unit = f'cache/{name}'
    if unit not in store:
      store.save(unit, compute(), fingerprint=fingerprint)
    return store.load(unit, fingerprint=fingerprint)

  return cache


def make_model(name: str, config: ml_collections.ConfigDict):
  """The flax module of backbone `name` ('mlp' or 'cnn')."""
  if name == 'mlp':
    return MLP(hidden_sizes=tuple(config.model.mlp_hidden_sizes),
               num_classes=digits.NUM_CLASSES)
  if name == 'cnn':
    return SmallCNN(channels=tuple(config.model.cnn_channels),
                    num_classes=digits.NUM_CLASSES)
  raise ValueError(f'unknown backbone {name!r}; known: mlp, cnn')


def build_benchmark(config: ml_collections.ConfigDict,
                    store: Optional[results.UnitStore] = None) -> Benchmark:
  """Splits, generator (fitted on the real pool only), contributors and theta0 per backbone.

  `config.task` (absent: 'digits') names the task; anything but digits is built by
  `dv_jax.tasks.build_task`, with slow intermediate results (the synthetic tweets) cached
  in `store` when it is given.
  """
  task_name = config.get('task', 'digits')
  if task_name != 'digits':
    task = tasks.build_task(task_name, config,
                           cache=unit_cache(store, unit_fingerprint(config)))
    return Benchmark(TaskSplits(task.pool, task.target, task.test), task.contributors,
                     task.backbones, dict(task.features_fn), dict(task.info))
  d = config.data
  splits = digits.load_digits_splits(seed=config_checks.seed_field(d.split_seed, 'data.split_seed'),
                                     pool_fraction=float(d.pool_fraction),
                                     target_size=int(d.target_size),
                                     test_size=int(d.test_size))
  generator = synthetic.fit_generator(splits.pool.x, splits.pool.y,
                                      num_components=int(d.generator_components),
                                      num_classes=digits.NUM_CLASSES)
  contributors = contributors_lib.make_digit_contributors(
      splits.pool, generator,
      key=jax.random.PRNGKey(config_checks.seed_field(d.contributor_seed, 'data.contributor_seed')),
      num_contributors=config_checks.config_int(d.num_contributors, 'data.num_contributors',
                                                minimum=2),
      size_range=tuple(d.size_range),
      pis=tuple(d.pis), truncations=tuple(d.truncations), label_noises=tuple(d.label_noises),
      synthetic_beta=float(d.synthetic_beta))
  backbones = {}
  init_key = jax.random.PRNGKey(config_checks.seed_field(config.model.init_seed, 'model.init_seed'))
  for name in config.model.backbones:
    model = make_model(name, config)
    variables = init_model(model, init_key, splits.target.x)
    backbones[name] = bind_apply(model, variables)
  return Benchmark(splits, contributors, backbones)


# ---------------------------------------------------------------------------------------
# Variants of our method.


def parse_variant(spec: str) -> Tuple[str, Dict[str, Any]]:
  """`'name|section.field=value;...'` -> `(name, {'section.field': value})`.

  Values are Python literals; anything that is not one is kept as a string. `'name|'` is
  METHOD.md's defaults.

  Raises:
    ValueError: a spec without `|` (a bare `ours-proposed`, or `a,b` typed on the command
      line, which ml_collections reads as ONE string, used to run the defaults under that
      name), no name, or an item that is not `section.field=value`.
  """
  name, bar, body = spec.partition('|')
  if not bar:
    raise ValueError(f"variant {spec!r} has no '|': write '{spec}|' for METHOD.md's "
                     "defaults or 'name|section.field=value;...'; several variants are a "
                     "tuple: --config.valuation.variants='(\"a|...\", \"b|...\")'")
  if not name:
    raise ValueError(f'variant {spec!r} has no name')
  overrides = {}
  for item in filter(None, (part.strip() for part in body.split(';'))):
    field, eq, text = item.partition('=')
    if not eq or '.' not in field:
      raise ValueError(f'variant {spec!r}: {item!r} is not section.field=value')
    try:
      overrides[field.strip()] = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      overrides[field.strip()] = text.strip()
  return name, overrides


def method_config(config: ml_collections.ConfigDict, overrides: Dict[str, Any]
                  ) -> ml_collections.ConfigDict:
  """`seed` and the method sections of `config`, with `overrides` applied (a copy)."""
  out = ml_collections.ConfigDict()
  out.seed = int(config.seed)
  for section in METHOD_SECTIONS:
    out[section] = ml_collections.ConfigDict(config[section].to_dict())
  for field, value in overrides.items():
    section, _, name = field.partition('.')
    if section not in METHOD_SECTIONS or name not in out[section]:
      raise ValueError(f'override {field!r} names no field of {METHOD_SECTIONS}')
    out[section][name] = value
  return out


# The fields of the shared training recipe (`dv_jax.training.TrainConfig`).
_RECIPE_FIELDS = ('optimizer', 'learning_rate', 'steps', 'batch_size', 'weight_decay',
                  'momentum', 'schedule')


def recipe_differences(config: ml_collections.ConfigDict) -> List[str]:
  """Where TracIn's / TRAK's training recipe, or a gradient method's param_filter, differs
  from the ground truth's / ours.

  The configs copy one recipe into each section, so an override of `ground_truth.steps`
  alone leaves the baselines on the old one, in silence. Differing may be meant, so this
  only says so (the run logs it).
  """
  lines = []
  for name in ('tracin', 'trak'):
    if name not in config.baselines.methods or 'train' not in config.baselines[name]:
      continue
    train = config.baselines[name].train
    differ = [f'{field} {train[field]!r} vs {config.ground_truth[field]!r}'
              for field in _RECIPE_FIELDS
              if field in train and field in config.ground_truth
              and train[field] != config.ground_truth[field]]
    if differ:
      lines.append(f'baselines.{name}.train differs from the ground truth\'s recipe: '
                   + ', '.join(differ) + f' (override baselines.{name}.train.* too to '
                   'train it as the ground truth)')
  ours = str(config.ntk.get('param_filter', ''))
  for name in ('davinz', 'tracin', 'trak'):
    theirs = config.baselines.get(name, {}).get('param_filter')
    if name in config.baselines.methods and theirs is not None and str(theirs) != ours:
      if name == 'davinz' and str(theirs) == 'kernel' and not ours:
        continue  # the official DAVINZ differentiates the kernels only, by design
      lines.append(f'baselines.{name}.param_filter {str(theirs)!r} differs from '
                   f'ntk.param_filter {ours!r}')
  return lines


def check_output(config: ml_collections.ConfigDict) -> None:
  """Fails, naming the field, on bootstrap settings the tables read only after every unit.

  Raises:
    ValueError: `config.output.bootstrap_resamples` not an integer >= 1, or
      `config.output.ci_level` outside (0, 1).
  """
  config_checks.config_int(config.output.bootstrap_resamples, 'output.bootstrap_resamples')
  level = config.output.ci_level
  if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
    raise ValueError(f'config.output.ci_level must lie in (0, 1) (0.95, not 95), got '
                     f'{level!r}')


def check_ground_truth(config: ml_collections.ConfigDict) -> None:
  """Fails, naming the field, on a `config.ground_truth` recipe the retraining would refuse.

  `ground_truth.retrain` checks it only when the first retraining starts, after the
  benchmark (for a task, its synthetic data and models) has been built.

  Raises:
    ValueError: `ground_truth.check_config`'s, prefixed with `config.ground_truth` (its own
      message names only the field inside the recipe).
  """
  try:
    ground_truth.check_config(config.ground_truth)
  except ValueError as error:
    raise ValueError(f'config.ground_truth: {error}') from error


# The valuation fields that draw the probe coalitions of fitted weights.
_PROBE_FIELDS = ('fit_union_size', 'fit_num_unions', 'fit_seed')


def checked_variants(config: ml_collections.ConfigDict, *, allow_fit: bool = True,
                     taken: Sequence[str] = (), extra: Optional[Dict[str, Any]] = None
                     ) -> List[Tuple[str, Dict[str, Any]]]:
  """`config.valuation.variants` parsed, each checked as the library will check it.

  A variant is a unit name: two variants of one name (or a variant named as another unit
  of the run, `taken`) would share a unit, and the second be refused as "computed under
  another config" after the first had run. A bad override would fail only when its
  variant's turn comes, after the retraining.

  Args:
    config: the experiment config.
    allow_fit: whether `valuation.weights='fit'` is meaningful (it needs probe coalitions,
      which only valuation_table.py retrains).
    taken: the other unit names beside the variants' (baselines, ground truth).
    extra: overrides the experiment adds to every variant when it runs it.

  Returns:
    `[(name, overrides)]` in config order.

  Raises:
    ValueError: naming `config.valuation.variants` and the variant.
  """
  variants = []
  for spec in config.valuation.variants:
    try:
      name, overrides = parse_variant(spec)
      # The probe coalitions are drawn and retrained once per draw, for every variant
      # (`probe_coalitions`, `check_probes`): a variant's own fit_* would be ignored.
      probe_fields = sorted(set(overrides) & {f'valuation.{f}' for f in _PROBE_FIELDS})
      if probe_fields:
        raise ValueError(f'{probe_fields} are experiment-wide (one set of retrained probe '
                         'coalitions serves every variant): set config.valuation.'
                         f'{probe_fields[0].split(".")[1]} instead')
      method = method_config(config, {**overrides, **(extra or {})})
      # The library's own check of the method sections (choices, terms, sizes), which it
      # would otherwise run only when this variant's unit is computed.
      valuation.check_config(method)
    except (ValueError, TypeError) as error:  # ConfigDict raises TypeError on a bad type
      raise ValueError(f'config.valuation.variants: {spec!r}: {error}') from error
    if not allow_fit and method.valuation.weights == 'fit':
      raise ValueError(f'config.valuation.variants: {spec!r} has valuation.weights=fit '
                       '(its own override or config.valuation.weights), which needs retrained '
                       'probe coalitions that this experiment does not have '
                       '(experiments/valuation_table.py runs fitted weights)')
    variants.append((name, overrides))
  names = [name for name, _ in variants] + list(taken)
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise ValueError(f'config.valuation.variants: the unit names {repeated} are used twice '
                     f'(variant names must be unique and differ from {sorted(taken)})')
  return variants


def describe(overrides: Dict[str, Any]) -> str:
  """A table cell describing a variant's overrides."""
  if not overrides:
    return 'METHOD.md defaults'
  return '; '.join(f'{k}={v}' for k, v in overrides.items())


def check_probes(config: ml_collections.ConfigDict, num_contributors: int
                 ) -> Tuple[int, int, int]:
  """`(fit_union_size, fit_num_unions, fit_seed)`, checked against `num_contributors`.

  A union is of 2..K contributors (a singleton is already a probe), and there are only
  `comb(K, size)` distinct ones.

  Raises:
    ValueError: naming the `config.valuation` field, or `config.data.num_contributors`
      below 3 (with 2, each contributor is left out of one probe only, its own partner's
      singleton, and its out-of-sample fit needs two).
  """
  if num_contributors < 3:
    raise ValueError(f'config.data.num_contributors={num_contributors}: fitted weights '
                     '(valuation.weights=fit) need at least 3 contributors, so that two '
                     'probes leave each one out')
  v = config.valuation
  size = config_checks.config_int(v.fit_union_size, 'valuation.fit_union_size', minimum=2,
                                  maximum=num_contributors)
  count = config_checks.config_int(v.fit_num_unions, 'valuation.fit_num_unions',
                                   maximum=math.comb(num_contributors, size))
  seed = config_checks.config_int(v.fit_seed, 'valuation.fit_seed', minimum=0)
  return size, count, seed


def probe_coalitions(config: ml_collections.ConfigDict, num_contributors: int
                     ) -> Tuple[Tuple[int, ...], ...]:
  """The K singletons plus `fit_num_unions` distinct seeded random unions.

  Raises:
    ValueError: as `check_probes`.
  """
  size, target, seed = check_probes(config, num_contributors)
  rng = np.random.default_rng(seed)
  unions = []
  for _ in range(100 * target):
    if len(unions) >= target:
      break
    members = tuple(sorted(rng.choice(num_contributors, size=size, replace=False).tolist()))
    if members not in unions:
      unions.append(members)
  if len(unions) < target:  # comb(K, size) >= target makes this all but impossible
    raise RuntimeError(f'drew {len(unions)} distinct unions of {size} in {100 * target} '
                       f'tries, {target} asked')
  return tuple((i,) for i in range(num_contributors)) + tuple(unions)


def union_contributor(contributors: Sequence[contributors_lib.Contributor],
                      members: Sequence[int]) -> contributors_lib.Contributor:
  """The union of the contributors `members` (real parts and synthetic parts pooled)."""

  def cat(parts, dtype, shape):
    parts = [np.asarray(p, dtype) for p in parts if p is not None and np.shape(p)[0]]
    return np.concatenate(parts) if parts else np.zeros((0,) + shape, dtype)

  chosen = [contributors[i] for i in members]
  shape = tuple(np.shape(next(c.x_real if c.num_real else c.x_synthetic for c in chosen))[1:])
  return contributors_lib.Contributor(
      'union(' + '+'.join(c.name for c in chosen) + ')',
      cat([c.x_real for c in chosen], np.float32, shape),
      cat([c.y_real for c in chosen], np.int32, ()),
      cat([c.x_synthetic for c in chosen], np.float32, shape),
      cat([c.y_synthetic for c in chosen], np.int32, ()))


# ---------------------------------------------------------------------------------------
# Units.


def ground_truth_unit(store: results.UnitStore, name: str, contributors, test, *,
                      apply_fn, params, config, fingerprint: str) -> Dict[str, Any]:
  """Retraining ground truth (loss on the TEST split), saved as unit `name`.

  `fingerprint`: the unit's `unit_fingerprint` (the benchmark, `config.ground_truth` and
  whatever chose `contributors`).
  """
  if name in store:
    return store.load(name, fingerprint=fingerprint)
  gt = ground_truth.retrain(contributors, test, apply_fn=apply_fn, params=params,
                            config=config.ground_truth, progress=bool(config.output.progress))
  unit = {'names': list(gt.names), 'test_loss': gt.test_loss,
          'test_accuracy': gt.test_accuracy, 'test_loss_per_seed': gt.test_loss_per_seed,
          'seconds': gt.seconds}
  store.save(name, unit, fingerprint=fingerprint)
  logging.info('%s: retrained %d subsets in %.1f s', name, len(gt.names), gt.seconds)
  return store.load(name, fingerprint=fingerprint)


def result_unit(result: valuation.ValuationResult) -> Dict[str, Any]:
  """The JSON form of a `ValuationResult`."""
  unit = {'names': list(result.names), 'values': np.asarray(result.values, np.float64),
          'seconds': dict(result.seconds or {})}
  if result.terms is not None:
    unit['terms_raw'] = np.asarray(result.terms.raw)
    unit['terms_standardized'] = np.asarray(result.terms.standardized)
    unit['ntk_jitter'] = np.asarray(result.terms.jitter)
  if result.fit is not None:
    unit['fit_weights'] = np.asarray(result.fit.weights)
    unit['fit_used_probes'] = np.asarray(result.fit.used_probes)
    unit['fit_all_weights'] = np.asarray(result.fit.all_weights)
  return unit


def correlation_row(values: Any, truth: Any, *, config, key: jax.Array) -> Dict[str, float]:
  """Spearman and Kendall with bootstrap CIs of `values` against `truth`."""
  row = {}
  for metric in ('spearman', 'kendall'):
    ci = metrics.bootstrap_ci(values, truth, metric=metric,
                              num_resamples=int(config.output.bootstrap_resamples),
                              level=float(config.output.ci_level), key=key)
    row[metric] = ci.estimate
    row[f'{metric}_low'] = ci.low
    row[f'{metric}_high'] = ci.high
  return row


def draw_config(config: ml_collections.ConfigDict, draw: int) -> ml_collections.ConfigDict:
  """The config of benchmark draw `draw`: split, contributor and init seeds shifted by it."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.data.split_seed = config_checks.seed_field(config.data.split_seed, 'data.split_seed') + draw
  out.data.contributor_seed = (
      config_checks.seed_field(config.data.contributor_seed, 'data.contributor_seed') + draw)
  if 'init_seed' in config.model:  # an LLM's theta0 is its checkpoint: nothing to reseed
    out.model.init_seed = config_checks.seed_field(config.model.init_seed, 'model.init_seed') + draw
  return out


def fits_weights(config: ml_collections.ConfigDict, overrides: Dict[str, Any]) -> bool:
  """Whether a variant uses NNLS-fitted weights: its own override, else the config's."""
  return overrides.get('valuation.weights', config.valuation.weights) == 'fit'


def draw_units(config: ml_collections.ConfigDict, draw: int) -> Dict[str, str]:
  """`{unit name: fingerprint}` of every unit `run_draw(config, draw, ...)` uses.

  Computed from the config alone (no data, no model), so that `run` checks the saved
  units of every draw before any work; `run_draw` takes its fingerprints from here, so the
  two cannot disagree. Every task's backbones are `config.model.backbones` (`dv_jax.tasks`
  refuses any other name). Not listed: a task's `cache/...` units, whose names the task
  derives internally (the tweets' synthetic data); the task checks them as it builds.
  """
  config = draw_config(config, draw)
  variants = [parse_variant(spec) for spec in config.valuation.variants]
  truth = unit_fingerprint(config, ground_truth=config.ground_truth)
  # The unions are drawn from the valuation section's fit_* fields.
  probe_truth = unit_fingerprint(config, ground_truth=config.ground_truth,
                                 valuation=config.valuation)
  methods = {name: method_fingerprint(config, method_config(config, overrides))
             for name, overrides in variants}
  methods.update({name: unit_fingerprint(config, baseline=config.baselines.get(name))
                  for name in config.baselines.methods})
  units = {}
  for backbone in dict.fromkeys(config.model.backbones):
    prefix = f'draw{draw}/{backbone}/'
    units[prefix + 'ground_truth'] = truth
    if any(fits_weights(config, overrides) for _, overrides in variants):
      units[prefix + 'probe_ground_truth'] = probe_truth
    units.update({prefix + name: fingerprint for name, fingerprint in methods.items()})
  return units


def check_saved_units(store: results.UnitStore, units: Dict[str, str]) -> None:
  """Refuses, before any work, a saved unit of `units` computed under another config.

  Otherwise the run would find it only when its turn came, after writing the units before
  it, and leave the workdir half of one config and half of another.

  Args:
    store: the workdir's units.
    units: `{unit name: the fingerprint this run computes it under}`.

  Raises:
    ValueError: as `results.UnitStore.load`, naming the unit.
  """
  for name, fingerprint in units.items():
    if name in store:
      store.load(name, fingerprint=fingerprint)


def check_feature_spaces(config: ml_collections.ConfigDict, bench: Benchmark,
                         variants: Sequence[Tuple[str, Dict[str, Any]]]) -> None:
  """Checks that every backbone can give each variant's MMD feature space.

  `checked_variants` cannot know the backbones. Without this, a variant the task cannot
  serve would be refused only when its turn came, after the ground-truth retraining:
  `init_features` on a backbone without a `[b, d]` readout input (an LM reads `[b, t, d]`),
  and `user` on a task that has no features of its own (`bench.features_fn`: the LM tasks
  have them, the image and classification tasks do not).

  Raises:
    ValueError: naming `config.valuation.variants`, the variant and the backbone.
  """
  spaces = [(name, method_config(config, overrides).mmd.feature_space)
            for name, overrides in variants]
  missing = [b for b in bench.backbones if b not in bench.features_fn]
  for name, space in spaces:  # raw needs nothing of the backbone
    if space == 'user' and missing:
      raise ValueError(f'config.valuation.variants: {name!r} sets mmd.feature_space=user, '
                       f'but this task has no features of its own for backbone '
                       f'{missing[0]!r} (only for {sorted(bench.features_fn)})')
  names = [name for name, space in spaces if space == 'init_features']
  if not names:
    return
  # One call per backbone answers for every init_features variant.
  rows = bench.splits.target.x[:2]
  for backbone, (apply_fn, params) in bench.backbones.items():
    try:
      features_lib.init_features(apply_fn, params, rows, block_size=2)
    except ValueError as error:
      raise ValueError(f'config.valuation.variants: {names[0]!r} on backbone {backbone!r}: '
                       f'{error}') from error


def run_draw(config: ml_collections.ConfigDict, draw: int, store: results.UnitStore
             ) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
  """All (backbone, method) rows of one benchmark draw; units are prefixed `draw<d>/`."""
  fingerprints = draw_units(config, draw)
  config = draw_config(config, draw)
  bench = build_benchmark(config, store)
  contributors = bench.contributors
  test = (bench.splits.test.x, bench.splits.test.y)  # ground truth only
  target = bench.splits.target                         # what every method sees
  variants = [parse_variant(spec) for spec in config.valuation.variants]
  needs_probes = any(fits_weights(config, overrides) for _, overrides in variants)
  coalitions = probe_coalitions(config, len(contributors)) if needs_probes else ()
  rows, truth_units = [], {}
  key = jax.random.PRNGKey(int(config.seed))
  prefix = f'draw{draw}/'
  for name in config.baselines.methods:  # an unknown name fails before any work
    baselines.get_baseline(name)
  check_feature_spaces(config, bench, variants)
  for backbone, (apply_fn, params) in bench.backbones.items():
    gt = ground_truth_unit(store, f'{prefix}{backbone}/ground_truth', contributors, test,
                           apply_fn=apply_fn, params=params, config=config,
                           fingerprint=fingerprints[f'{prefix}{backbone}/ground_truth'])
    truth = -np.asarray(gt['test_loss'], np.float64)
    # METHOD.md's value is minus the test loss; the test accuracy is a second, coarser
    # ground truth. Where the two disagree (an overconfident retrained model), neither
    # ranking is trustworthy, and the table shows it.
    accuracy = np.asarray(gt['test_accuracy'], np.float64)
    # How well the retraining reproduces its own ranking: a method's Spearman against the
    # seeds' mean is bounded by how well that mean tracks the retraining's expected
    # outcome (`ceiling`), not by 1.
    reliability = metrics.replicate_reliability(-np.asarray(gt['test_loss_per_seed'],
                                                            np.float64))
    truth_units[backbone] = gt
    probes, probe_seconds = None, 0.0
    if needs_probes:
      unions = [c for c in coalitions if len(c) > 1]
      probe_gt = ground_truth_unit(
          store, f'{prefix}{backbone}/probe_ground_truth',
          [union_contributor(contributors, c) for c in unions], test, apply_fn=apply_fn,
          params=params, config=config,
          fingerprint=fingerprints[f'{prefix}{backbone}/probe_ground_truth'])
      union_loss = dict(zip(unions, probe_gt['test_loss']))
      probes = valuation.Probes(coalitions, np.array(
          [gt['test_loss'][c[0]] if len(c) == 1 else union_loss[c] for c in coalitions]))
      probe_seconds = float(probe_gt['seconds'])
    methods = [(name, 'ours', overrides) for name, overrides in variants]
    methods += [(name, 'baseline', {}) for name in config.baselines.methods]
    for name, kind, overrides in tqdm(methods, desc=f'draw {draw} {backbone}',
                                      disable=not config.output.progress):
      unit_name = f'{prefix}{backbone}/{name}'
      fingerprint = fingerprints[unit_name]
      if unit_name not in store:
        if kind == 'ours':
          result = valuation.value_contributors(
              contributors, target, apply_fn=apply_fn, params=params,
              config=method_config(config, overrides),
              probes=probes, features_fn=bench.features_fn.get(backbone))
        else:
          result = baselines.get_baseline(name)(contributors, target, apply_fn=apply_fn,
                                                params=params, config=config)
        store.save(unit_name, result_unit(result), fingerprint=fingerprint)
        logging.info('%s: %.1f s', unit_name, result.seconds['total'])
      unit = store.load(unit_name, fingerprint=fingerprint)
      fitted = kind == 'ours' and fits_weights(config, overrides)
      row = {'draw': draw, 'backbone': backbone, 'method': name, 'kind': kind,
             'setting': describe(overrides) if kind == 'ours' else 'see dv_jax.baselines',
             **correlation_row(unit['values'], truth, config=config, key=key),
             'spearman_accuracy': metrics.spearman(unit['values'], accuracy),
             'seconds': float(unit['seconds']['total']),
             # Fitted weights need the probes' ground truth: the K singletons (the
             # whole ground-truth retraining) and the unions. That retraining is part
             # of their cost, so their cost_fraction exceeds 1.
             'probe_retrain_seconds': probe_seconds + float(gt['seconds']) if fitted else 0.0,
             'retrain_seconds': float(gt['seconds']),
             'truth_seeds': reliability.num_replicates,
             'truth_seed_spearman': reliability.pairwise,
             'truth_reliability': reliability.of_mean,
             'truth_ceiling': reliability.ceiling}
      row['cost_fraction'] = ((row['seconds'] + row['probe_retrain_seconds'])
                              / row['retrain_seconds'])
      rows.append(row)
  info = {'ground_truth': truth_units, 'contributors': [c.name for c in contributors],
          'probe_coalitions': [list(c) for c in coalitions] if needs_probes else [],
          'task': bench.info}
  return rows, info


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Per (backbone, method): mean and std over draws of the correlations and costs.

  The std is the population one (ddof 0), as the README's quoted spreads were measured; the
  sample std of `d` draws is `sqrt(d / (d - 1))` times it. table.md says which.
  """
  out = []
  for backbone, method in dict.fromkeys((r['backbone'], r['method']) for r in rows):
    sub = [r for r in rows if (r['backbone'], r['method']) == (backbone, method)]
    entry = {'backbone': backbone, 'method': method, 'kind': sub[0]['kind'],
             'setting': sub[0]['setting'], 'draws': len(sub)}
    for field in ('spearman', 'kendall', 'spearman_accuracy', 'seconds',
                  'probe_retrain_seconds', 'cost_fraction'):
      values = np.array([r[field] for r in sub], np.float64)
      entry[f'{field}_mean'] = float(values.mean())
      entry[f'{field}_std'] = float(values.std())
    entry['retrain_seconds_mean'] = float(np.mean([r['retrain_seconds'] for r in sub]))
    out.append(entry)
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the whole table; writes results.csv/json, table.md and the figure.

  Returns:
    `{'rows': [...], 'summary': [...], 'draws': [...]}` as written to results.json.
  """
  workdir = Path(workdir)
  if int(config.data.num_draws) < 1:
    raise ValueError(f'config.data.num_draws must be >= 1, got {config.data.num_draws}')
  if 'backbones' in config.model and not len(config.model.backbones):
    raise ValueError('config.model.backbones is empty: no model to value the data with')
  if not len(config.valuation.variants) + len(config.baselines.methods):
    raise ValueError('config.valuation.variants and config.baselines.methods are both '
                     'empty: no method to compare')
  # Every setting read after the benchmark, the retraining or the first unit, checked
  # before any of them.
  check_output(config)
  check_ground_truth(config)
  methods = list(config.baselines.methods)
  if len(set(methods)) != len(methods):
    raise ValueError(f'config.baselines.methods repeats a method: {tuple(methods)}')
  for name in methods:
    try:
      baselines.get_baseline(name)
    except ValueError as error:
      raise ValueError(f'config.baselines.methods: {error}') from error
    # Its section as the baseline will check it, which it would otherwise do only after
    # the retraining and our variants. The draws shift data seeds only: one check serves.
    baselines.check_config(name, config)
  variants = checked_variants(config, taken=('ground_truth', 'probe_ground_truth',
                                             *config.baselines.methods))
  if any(fits_weights(config, overrides) for _, overrides in variants):
    check_probes(config, config_checks.config_int(config.data.num_contributors,
                                                  'data.num_contributors'))
  for line in recipe_differences(config):
    logging.warning(line)
  store = results.UnitStore(workdir / 'units')
  # Every saved unit of every draw against this config, before the first draw's work.
  check_saved_units(store, {name: fingerprint
                            for draw in range(int(config.data.num_draws))
                            for name, fingerprint in draw_units(config, draw).items()})
  rows, infos = [], []
  for draw in range(int(config.data.num_draws)):
    draw_rows, info = run_draw(config, draw, store)
    rows += draw_rows
    infos.append(info)
  summary = summarize(rows)
  out = {'rows': rows, 'summary': summary, 'draws': infos}
  results.write_csv(workdir / 'results.csv', rows)
  results.write_json(workdir / 'results.json', out)
  results.atomic_write_text(workdir / 'table.md', markdown_table(rows, summary, config))
  plot(rows, summary, workdir / 'figure', ci_level=float(config.output.ci_level))
  return out


# ---------------------------------------------------------------------------------------
# Table and figure.


def _ci(row: Dict[str, Any], metric: str) -> str:
  return f'{row[metric]:+.2f} [{row[metric + "_low"]:+.2f}, {row[metric + "_high"]:+.2f}]'


def _truth_line(row: Dict[str, Any]) -> str:
  num_seeds = row['truth_seeds']
  if num_seeds < 2:
    return ('Ground truth from one retraining seed: its seed-to-seed agreement is not '
            'measured.')
  agreement = ('Ground truth: two retraining seeds rank the contributors with Spearman '
               f'{row["truth_seed_spearman"]:+.2f} on average')
  if not row['truth_seed_spearman'] > 0:
    return (f'{agreement}: the retraining does not reproduce its own ranking, so no method '
            'can be judged against it.')
  return (f'{agreement}; the mean of the {num_seeds} seeds, '
          f'which the methods are ranked against, has reliability '
          f'{row["truth_reliability"]:+.2f} (Spearman-Brown), so a method that knew the '
          f'retraining\'s expected outcome would reach about {row["truth_ceiling"]:+.2f} '
          '(its square root) against it.')


def markdown_table(rows: Sequence[Dict[str, Any]], summary: Sequence[Dict[str, Any]],
                   config: ml_collections.ConfigDict) -> str:
  """The summary over draws (when there are several), then one table per draw and backbone."""
  level = plotting.percent(config.output.ci_level)
  num_draws = int(config.data.num_draws)
  lines = [f'# Valuation table ({config.variant}): K = {config.data.num_contributors} '
           f'contributors, {num_draws} benchmark draw(s); ground truth = minus the test '
           'loss after retraining', '']
  if num_draws > 1:
    lines += ['## Mean ± std over draws (population std, ddof 0)', '',
              '| backbone | method | Spearman | Kendall | Spearman vs accuracy | seconds | '
              'cost / retraining |', '|---|---|---|---|---|---|---|']
    for s in summary:
      lines.append(f'| {s["backbone"]} | {s["method"]} | '
                   f'{s["spearman_mean"]:+.2f} ± {s["spearman_std"]:.2f} | '
                   f'{s["kendall_mean"]:+.2f} ± {s["kendall_std"]:.2f} | '
                   f'{s["spearman_accuracy_mean"]:+.2f} ± {s["spearman_accuracy_std"]:.2f} | '
                   f'{s["seconds_mean"]:.1f} | {s["cost_fraction_mean"]:.3f} |')
    lines.append('')
  lines += [f'Per draw: Spearman / Kendall with {level} bootstrap CIs '
            f'({config.output.bootstrap_resamples} resamples of the contributors: they leave '
            'out the noise of the retraining and of the method\'s own seeds, and all rows '
            'share the resamples); cost = '
            '(seconds + the probes\' retraining for fitted weights) / retraining. "Spearman vs '
            'accuracy" ranks against the retrained test accuracy instead (no CI): a second '
            'ground truth, shown because the two can disagree. Seconds are wall time with '
            'JAX compilation included: the first row of a backbone (and a row with new '
            'array shapes, such as block_diagonal) compiles kernels that later rows reuse, '
            'so at CPU scale its time is mostly compilation.', '']
  for draw in range(num_draws):
    for backbone in dict.fromkeys(r['backbone'] for r in rows):
      sub = [r for r in rows if r['backbone'] == backbone and r['draw'] == draw]
      lines += [f'## draw {draw}, {backbone} (retraining: {sub[0]["retrain_seconds"]:.1f} s)',
                '', _truth_line(sub[0]), '',
                '| method | setting | Spearman | Kendall | Spearman vs accuracy | seconds '
                '| cost / retraining |', '|---|---|---|---|---|---|---|']
      for r in sub:
        lines.append(f'| {r["method"]} | {r["setting"]} | {_ci(r, "spearman")} | '
                     f'{_ci(r, "kendall")} | {r["spearman_accuracy"]:+.2f} | '
                     f'{r["seconds"]:.1f} | {r["cost_fraction"]:.3f} |')
      lines.append('')
  return '\n'.join(lines)


def plot(rows: Sequence[Dict[str, Any]], summary: Sequence[Dict[str, Any]],
         path: Path, *, ci_level: Optional[float] = None) -> None:
  """Spearman per method (left: mean over draws, dots per draw; bars the first draw's CI
  when there is one draw) and wall time against retraining (right: the method's own time,
  then, hatched, the probes' retraining that fitted weights also pay for)."""
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  backbones = list(dict.fromkeys(r['backbone'] for r in rows))
  num_draws = len({r['draw'] for r in rows})
  colors_of = {'ours': 'tab:blue', 'baseline': 'tab:gray'}
  fig, axes = plotting.new_figure(nrows=len(backbones), ncols=2, panel_size=(6.0, 4.2))
  any_fitted = False
  for b, backbone in enumerate(backbones):
    sub = [s for s in summary if s['backbone'] == backbone]
    ypos = np.arange(len(sub))[::-1]
    colors = np.array([colors_of[s['kind']] for s in sub])
    ax = axes[b, 0]
    # Over draws, symmetric whiskers of the std; one draw, its CI.
    ax.barh(ypos, [s['spearman_mean'] for s in sub], color=colors, capsize=2,
            xerr=[s['spearman_std'] for s in sub] if num_draws > 1 else None)
    if num_draws == 1:
      # Each CI from its recorded ends: a bootstrap CI need not contain its estimate.
      first = [r for r in rows if r['backbone'] == backbone]
      plotting.interval_bars(ax, ypos, [r['spearman_low'] for r in first],
                             [r['spearman_high'] for r in first], horizontal=True)
    else:
      for y, s in zip(ypos, sub):
        dots = [r['spearman'] for r in rows
                if (r['backbone'], r['method']) == (backbone, s['method'])]
        ax.plot(dots, [y] * len(dots), 'k.', ms=3)
    ax.set_yticks(ypos, [s['method'] for s in sub], fontsize=7)
    ax.axvline(SPEARMAN_TARGET, color='k', lw=0.8, ls='--')
    # A little past [-1, 1]: a CI cap at exactly 1 would otherwise sit on the frame.
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel('Spearman vs retraining')
    ax.set_title(backbone)
    ax = axes[b, 1]
    own = np.array([s['seconds_mean'] for s in sub])
    probes = np.array([s['probe_retrain_seconds_mean'] for s in sub])
    ax.barh(ypos, own, color=colors)
    # Fitted weights need the probes' retraining: stacked on the method's own time, the
    # bar ends where table.md's cost / retraining counts.
    fitted = probes > 0
    if fitted.any():
      any_fitted = True
      ax.barh(ypos[fitted], probes[fitted], left=own[fitted], color='white',
              edgecolor=colors[fitted], hatch='///', lw=0.8, label=PROBE_RETRAIN_LABEL)
    ax.axvline(sub[0]['retrain_seconds_mean'], color='tab:red', lw=1.0)
    ax.set_xscale('log')
    # A narrow log range gets crowded minor-tick labels otherwise.
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(ypos, [''] * len(sub))
    ax.set_xlabel('wall time [s]')
  # One key for every panel, outside them: explicit handles, as the bars' own entry would
  # show a blue patch for black whiskers; inside, it covered the lowest rows' bars.
  spread = plotting.whisker_key(
      ci_level, label=None if num_draws == 1 else f'std over {num_draws} draws')
  handles = [Patch(color=colors_of['ours'], label='ours'),
             Patch(color=colors_of['baseline'], label='baseline'), spread,
             Line2D([], [], color='k', lw=0.8, ls='--', label=f'{SPEARMAN_TARGET:g} target')]
  if num_draws > 1:
    handles.append(Line2D([], [], color='k', marker='.', ms=3, ls='', label='one draw'))
  if any_fitted:
    handles.append(Patch(facecolor='white', edgecolor='k', hatch='///',
                         label=PROBE_RETRAIN_LABEL))
  handles.append(Line2D([], [], color='tab:red', lw=1.0, label='retraining'))
  fig.legend(handles=handles, loc='outside upper center', ncols=len(handles), fontsize=8)
  plotting.save_figure(fig, path)


if __name__ == '__main__':
  import launch  # experiments/launch.py, beside this script
  launch.main(run, name='valuation_table')
