r"""Stability of our rankings under subsampling (METHOD.md section 4, paper section 5.4).

For each backbone and variant, the score is computed from the full pool (the reference)
and from uniform subsamples of `config.valuation.budgets` pooled examples (spread over the
contributors in proportion to their sizes, each real / synthetic part stratified; n and pi
stay the full ones), `num_repeats` subsample seeds each; Kendall's tau of each subsampled
ranking against the full-pool ranking. No retraining is involved.

  python experiments/subsample_stability.py --config=configs/subsample_stability.py:digits \
      --workdir=workdirs/subsample_stability

Outputs in --workdir: config.json, log.txt, units/ (values per (backbone, variant, budget,
repeat)), results.csv (one row per unit), results.json, table.md (mean / min tau per
budget), figure.{png,pdf}.

Expected result and runtime: see configs/subsample_stability.py (measured, ours-proposed:
mean tau >= 0.88 at 400 of the 1,440 pooled examples, >= 0.93 at 1000); 42 s wall on 2
CPU cores.
"""

import sys
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import ml_collections
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import valuation_table  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from dv_jax import metrics  # noqa: E402
from dv_jax import plotting  # noqa: E402
from dv_jax import results  # noqa: E402
from dv_jax import valuation  # noqa: E402



def unit_name(backbone: str, variant: str, budget: int, repeat: int) -> str:
  """The unit of one subsample (budget 0, repeat 0: the full-pool reference)."""
  return f'{backbone}/{variant}/budget{budget}/repeat{repeat}'


def method_of(config: ml_collections.ConfigDict, overrides: Dict[str, Any], budget: int,
              repeat: int) -> ml_collections.ConfigDict:
  """Our method's config for one subsample of a variant."""
  method = valuation_table.method_config(config, {**overrides, 'valuation.subsample': budget})
  # The repeat changes the subsample. The seed also draws the gradient projection and
  # the block-diagonal / subsampled NTK's rows: with those options on, tau measures
  # that randomness too (the METHOD.md defaults use none of them).
  method.seed = int(config.seed) + repeat
  return method


def unit_fingerprints(config: ml_collections.ConfigDict,
                      variants: Sequence[Tuple[str, Dict[str, Any]]],
                      budgets: Sequence[int]) -> Dict[str, str]:
  """`{unit name: fingerprint}` of every unit `run` uses, from the config alone.

  `run` checks the saved ones before any work and takes its fingerprints from here.
  Every backbone is one of `config.model.backbones`, the names `build_benchmark` uses.

  Args:
    config: the experiment config.
    variants: `[(name, overrides)]` (`valuation_table.checked_variants`).
    budgets: the subsample budgets (the reference, budget 0, is added).
  """
  jobs = [(0, 0)] + [(budget, repeat) for budget in budgets
                     for repeat in range(int(config.valuation.num_repeats))]
  return {unit_name(backbone, name, budget, repeat): valuation_table.method_fingerprint(
              config, method_of(config, overrides, budget, repeat))
          for backbone in dict.fromkeys(config.model.backbones)
          for name, overrides in variants for budget, repeat in jobs}


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the study; writes results.csv/json, table.md and the figure."""
  workdir = Path(workdir)
  if int(config.data.num_draws) != 1:
    raise ValueError(f'config.data.num_draws must be 1 for this study (one benchmark '
                     f'draw), got {config.data.num_draws}')
  for field in ('variants', 'budgets'):
    if not len(config.valuation[field]):
      raise ValueError(f'config.valuation.{field} is empty: nothing to compare')
  budgets = [int(b) for b in config.valuation.budgets]
  if any(b < 1 or b != float(v) for b, v in zip(budgets, config.valuation.budgets)):
    raise ValueError('config.valuation.budgets must hold integers >= 1 (0 is the full-pool '
                     f'reference itself), got {tuple(config.valuation.budgets)}')
  if len(set(budgets)) != len(budgets):
    raise ValueError(f'config.valuation.budgets repeats a budget: '
                     f'{tuple(config.valuation.budgets)}')
  if int(config.valuation.num_repeats) < 1:
    raise ValueError(f'config.valuation.num_repeats must be >= 1, got '
                     f'{config.valuation.num_repeats}')
  # Each variant as the library will check it, with a subsample (fitted weights need
  # probe coalitions, which only valuation_table.py retrains).
  variants = valuation_table.checked_variants(config, allow_fit=False,
                                              extra={'valuation.subsample': min(budgets)})
  # This study sets valuation.subsample itself (0 for the reference, each budget in turn).
  if int(config.valuation.subsample) != 0 or any('valuation.subsample' in overrides
                                                 for _, overrides in variants):
    raise ValueError('config.valuation.subsample (and a variant\'s valuation.subsample) '
                     'must stay 0 here: the study sets it to each of config.valuation.budgets '
                     f'in turn, got {config.valuation.subsample}')
  store = results.UnitStore(workdir / 'units')
  fingerprints = unit_fingerprints(config, variants, budgets)
  # A saved unit of another config is refused here, not after the units before it ran.
  valuation_table.check_saved_units(store, fingerprints)
  bench = valuation_table.build_benchmark(config)
  valuation_table.check_feature_spaces(config, bench, variants)
  total = sum(c.size for c in bench.contributors)
  # A budget that keeps the whole pool is the full-pool reference itself (tau = 1). Each
  # contributor's share is rounded and floored at valuation.min_subsample (a variant may set
  # its own), so a budget just below the pool size can keep all of it too.
  kept = {}
  for name, overrides in variants:
    floor = int(method_of(config, overrides, budgets[0], 0).valuation.min_subsample)
    kept[name] = {b: valuation.subsampled_pool_size(bench.contributors, b, floor)
                  for b in budgets}
    whole = [b for b in budgets if kept[name][b] >= total]
    if whole:
      raise ValueError(f'config.valuation.budgets {tuple(whole)} keep the whole pool of '
                       f'{total} examples for variant {name!r} (each contributor\'s share is '
                       'rounded, and at least valuation.min_subsample per part): keep them '
                       'below it')
  rows = []
  jobs = [(b, v) for b in bench.backbones for v in variants]
  for backbone, (name, overrides) in tqdm(jobs, desc='variants',
                                          disable=not config.output.progress):
    apply_fn, params = bench.backbones[backbone]

    def values_of(budget: int, repeat: int) -> np.ndarray:
      unit = unit_name(backbone, name, budget, repeat)
      fingerprint = fingerprints[unit]
      if unit not in store:
        result = valuation.value_contributors(bench.contributors, bench.splits.target,
                                              apply_fn=apply_fn, params=params,
                                              config=method_of(config, overrides, budget,
                                                               repeat),
                                              features_fn=bench.features_fn.get(backbone))
        store.save(unit, valuation_table.result_unit(result), fingerprint=fingerprint)
      return np.asarray(store.load(unit, fingerprint=fingerprint)['values'], np.float64)

    reference = values_of(0, 0)
    for budget in budgets:
      for repeat in range(int(config.valuation.num_repeats)):
        # `kept`, not the budget: each contributor's share is rounded and floored at
        # valuation.min_subsample (a budget of 16 of 84 kept 20).
        rows.append({'backbone': backbone, 'variant': name, 'budget': int(budget),
                     'kept': kept[name][budget], 'fraction': kept[name][budget] / total,
                     'repeat': repeat,
                     'kendall': metrics.kendall(values_of(int(budget), repeat), reference)})
  results.write_csv(workdir / 'results.csv', rows)
  summary = summarize(rows)
  results.write_json(workdir / 'results.json', {'rows': rows, 'summary': summary,
                                                'pool_size': total})
  results.atomic_write_text(workdir / 'table.md', markdown_table(summary, total))
  plot(rows, workdir / 'figure')
  return {'rows': rows, 'summary': summary}


def summarize(rows: Sequence[Dict[str, Any]]) -> list:
  """Mean, std (population, ddof 0) and min tau per (backbone, variant, budget)."""
  out = []
  for key in dict.fromkeys((r['backbone'], r['variant'], r['budget']) for r in rows):
    taus = np.array([r['kendall'] for r in rows
                     if (r['backbone'], r['variant'], r['budget']) == key])
    kept = next(r['kept'] for r in rows if (r['backbone'], r['variant'], r['budget']) == key)
    out.append({'backbone': key[0], 'variant': key[1], 'budget': key[2], 'kept': kept,
                'kendall_mean': float(taus.mean()), 'kendall_std': float(taus.std()),
                'kendall_min': float(taus.min()), 'repeats': int(taus.size)})
  return out


def markdown_table(summary: Sequence[Dict[str, Any]], total: int) -> str:
  lines = [f'# Ranking stability under subsampling (pool of {total} examples)', '',
           "Kendall's tau of the ranking from a subsample against the full-pool ranking; "
           'tau std is the population std (ddof 0) over the repeats.', '',
           '| backbone | variant | budget | kept | tau mean | tau std | tau min | repeats |',
           '|---|---|---|---|---|---|---|---|']
  for s in summary:
    lines.append(f'| {s["backbone"]} | {s["variant"]} | {s["budget"]} | {s["kept"]} | '
                 f'{s["kendall_mean"]:+.2f} | {s["kendall_std"]:.2f} | '
                 f'{s["kendall_min"]:+.2f} | {s["repeats"]} |')
  return '\n'.join(lines) + '\n'


def plot(rows: Sequence[Dict[str, Any]], path: Path) -> None:
  """Kendall's tau against the pooled examples kept, one line per (backbone, variant)."""
  fig, axes = plotting.new_figure(panel_size=(5.0, 3.6))
  ax = axes[0, 0]
  # [-0.1, 1.05] unless a mean or whisker lies outside: a fixed range cut them silently.
  low, high = -0.1, 1.05
  for key in dict.fromkeys((r['backbone'], r['variant']) for r in rows):
    sub = [r for r in rows if (r['backbone'], r['variant']) == key]
    sizes = sorted({r['kept'] for r in sub})
    taus = [[r['kendall'] for r in sub if r['kept'] == k] for k in sizes]
    means, stds = np.array([np.mean(t) for t in taus]), np.array([np.std(t) for t in taus])
    ax.errorbar(sizes, means, yerr=stds, marker='o', capsize=2, label=f'{key[0]}: {key[1]}')
    ends = np.concatenate([means - stds, means + stds])
    ends = ends[np.isfinite(ends)]
    if ends.size:
      low, high = min(low, ends.min() - 0.05), max(high, ends.max() + 0.05)
  ax.set_xscale('log')
  ax.set_ylim(low, high)
  ax.set_xlabel('pooled examples kept')
  # The bars are table.md's tau std (population, ddof 0), not a CI nor a standard error.
  ax.set_ylabel("Kendall's tau vs full pool\n(mean ± std over repeats)")
  ax.legend(fontsize=6)
  plotting.save_figure(fig, path)


if __name__ == '__main__':
  import launch  # experiments/launch.py, beside this script
  launch.main(run, name='subsample_stability')
