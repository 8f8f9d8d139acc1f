r"""Ablation of the four terms of our score on the digits benchmark (METHOD.md section 4).

For each backbone and each variant in `config.valuation.variants`, the four terms are
computed once (`dv_jax.valuation.value_contributors`); the score of every term subset is
minus the sum of its standardized terms (exactly what `bound.terms` = that subset gives);
rows: all four terms, each term dropped, each term alone; columns: Spearman and Kendall
against the retraining ground truth (TEST split) with bootstrap CIs. A term whose removal
raises the correlation hurts the score; a single term's own correlation says what it
measures on this benchmark.

  python experiments/ablation.py --config=configs/ablation.py:digits \
      --workdir=workdirs/ablation

Outputs in --workdir: config.json, log.txt, units/ (ground truth per backbone, terms per
(backbone, variant)), results.csv, results.json, table.md, figure.{png,pdf}.

Expected result and runtime: see configs/ablation.py (measured: the empirical loss at
theta0 is anti-correlated with retraining and dropping it is the largest gain); 36 s wall
on 2 CPU cores.
"""

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import valuation_table  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from dv_jax import plotting  # noqa: E402
from dv_jax import results  # noqa: E402
from dv_jax import valuation  # noqa: E402


SHORT = {'empirical_loss': 'E', 'discrepancy': 'D', 'ntk': 'N', 'composition': 'C'}


def term_subsets() -> List[tuple]:
  """(label, term indices): all four, each dropped, each alone."""
  names = valuation.TERM_NAMES
  subsets = [('all four', tuple(range(4)))]
  subsets += [(f'drop {SHORT[names[j]]}', tuple(i for i in range(4) if i != j))
              for j in range(4)]
  subsets += [(f'only {SHORT[names[j]]}', (j,)) for j in range(4)]
  return subsets


def unit_fingerprints(config: ml_collections.ConfigDict,
                      variants: Sequence[Tuple[str, Dict[str, Any]]]) -> Dict[str, str]:
  """`{unit name: fingerprint}` of every unit `run` uses, from the config alone.

  `run` checks the saved ones before any work and takes its fingerprints from here.
  Every backbone is one of `config.model.backbones`, the names `build_benchmark` uses.

  Args:
    config: the experiment config.
    variants: `[(name, overrides)]` (`valuation_table.checked_variants`).
  """
  truth = valuation_table.unit_fingerprint(config, ground_truth=config.ground_truth)
  units = {}
  for backbone in dict.fromkeys(config.model.backbones):
    units[f'{backbone}/ground_truth'] = truth
    for name, overrides in variants:
      units[f'{backbone}/{name}'] = valuation_table.method_fingerprint(
          config, valuation_table.method_config(config, overrides))
  return units


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the ablation; writes results.csv/json, table.md and the figure."""
  workdir = Path(workdir)
  if int(config.data.num_draws) != 1:
    raise ValueError(f'config.data.num_draws must be 1 for the ablation (one benchmark '
                     f'draw), got {config.data.num_draws}; valuation_table.py runs several')
  if not len(config.valuation.variants):
    raise ValueError('config.valuation.variants is empty: nothing to ablate')
  # Before the benchmark and the retraining: the bootstrap settings the table reads last,
  # the retraining recipe, and every variant (fitted weights need probe coalitions this
  # script does not retrain).
  valuation_table.check_output(config)
  valuation_table.check_ground_truth(config)
  variants = valuation_table.checked_variants(config, allow_fit=False, taken=('ground_truth',))
  store = results.UnitStore(workdir / 'units')
  fingerprints = unit_fingerprints(config, variants)
  # A saved unit of another config is refused here, not after the units before it ran.
  valuation_table.check_saved_units(store, fingerprints)
  bench = valuation_table.build_benchmark(config)
  # Before the retraining: a variant's feature space the task's backbones cannot give.
  valuation_table.check_feature_spaces(config, bench, variants)
  test = (bench.splits.test.x, bench.splits.test.y)
  key = jax.random.PRNGKey(int(config.seed))
  rows = []
  for backbone, (apply_fn, params) in bench.backbones.items():
    gt = valuation_table.ground_truth_unit(
        store, f'{backbone}/ground_truth', bench.contributors, test, apply_fn=apply_fn,
        params=params, config=config,
        fingerprint=fingerprints[f'{backbone}/ground_truth'])
    truth = -np.asarray(gt['test_loss'], np.float64)
    for name, overrides in tqdm(variants, desc=f'{backbone} variants',
                                disable=not config.output.progress):
      unit_name = f'{backbone}/{name}'
      fingerprint = fingerprints[unit_name]
      if unit_name not in store:
        result = valuation.value_contributors(
            bench.contributors, bench.splits.target, apply_fn=apply_fn, params=params,
            config=valuation_table.method_config(config, overrides),
            features_fn=bench.features_fn.get(backbone))
        store.save(unit_name, valuation_table.result_unit(result), fingerprint=fingerprint)
      z = np.asarray(store.load(unit_name, fingerprint=fingerprint)['terms_standardized'],
                     np.float64)
      for label, subset in term_subsets():
        values = -z[:, list(subset)].sum(axis=1)
        rows.append({'backbone': backbone, 'variant': name,
                     'setting': valuation_table.describe(overrides), 'terms': label,
                     **valuation_table.correlation_row(values, truth, config=config, key=key)})
  results.write_csv(workdir / 'results.csv', rows)
  results.write_json(workdir / 'results.json', {'rows': rows})
  results.atomic_write_text(workdir / 'table.md', markdown_table(rows))
  plot(rows, workdir / 'figure', ci_level=float(config.output.ci_level))
  return {'rows': rows}


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
  """One table per backbone: variants as column groups would be wide, so one row each."""
  lines = ['# Ablation of the four terms (E loss, D discrepancy, N NTK, C composition)', '',
           'Spearman / Kendall against retraining (test split) with bootstrap CIs.', '']
  for backbone in dict.fromkeys(r['backbone'] for r in rows):
    lines += [f'## {backbone}', '', '| variant | terms | Spearman | Kendall |',
              '|---|---|---|---|']
    for r in (r for r in rows if r['backbone'] == backbone):
      lines.append(f'| {r["variant"]} | {r["terms"]} | {valuation_table._ci(r, "spearman")} '
                   f'| {valuation_table._ci(r, "kendall")} |')
    lines.append('')
  return '\n'.join(lines)


# Bar colour per kind of term subset (term_subsets' labels start with these words).
SUBSET_COLORS = {'all': ('tab:blue', 'all four terms'), 'drop': ('tab:orange', 'one dropped'),
                 'only': ('tab:gray', 'one alone')}


def plot(rows: Sequence[Dict[str, Any]], path: Path, *, ci_level: Optional[float] = None
         ) -> None:
  """Spearman of each term subset: a grid, one row per backbone, one column per variant."""
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  backbones = list(dict.fromkeys(r['backbone'] for r in rows))
  variants = list(dict.fromkeys(r['variant'] for r in rows))
  # A grid rather than one row of six: at 21.6 in wide, scaled to a page, the text was
  # unreadable; each row shares its subsets' labels, each column its variant.
  fig, axes = plotting.new_figure(nrows=len(backbones), ncols=len(variants),
                                  panel_size=(3.8, 3.2))
  for b, backbone in enumerate(backbones):
    for v, variant in enumerate(variants):
      ax = axes[b, v]
      sub = [r for r in rows if r['backbone'] == backbone and r['variant'] == variant]
      if not sub:
        ax.set_visible(False)
        continue
      ypos = np.arange(len(sub))[::-1]
      ax.barh(ypos, [r['spearman'] for r in sub],
              color=[SUBSET_COLORS[r['terms'].split()[0]][0] for r in sub])
      # Each CI from its recorded ends: a bootstrap CI need not contain its estimate.
      plotting.interval_bars(ax, ypos, [r['spearman_low'] for r in sub],
                             [r['spearman_high'] for r in sub], horizontal=True)
      ax.set_yticks(ypos, [r['terms'] for r in sub] if v == 0 else [''] * len(sub),
                    fontsize=9)
      # A little past [-1, 1]: a CI cap at exactly 1 would otherwise sit on the frame.
      ax.set_xlim(-1.05, 1.05)
      ax.set_xticks([-1.0, -0.5, 0.0, 0.5, 1.0])
      ax.axvline(0, color='k', lw=0.5)
      ax.tick_params(axis='x', labelsize=9)
      if b == 0:
        ax.set_title(variant, fontsize=10)
      if v == 0:
        ax.set_ylabel(backbone, fontsize=11)
      if b == len(backbones) - 1:
        ax.set_xlabel('Spearman vs retraining', fontsize=10)
  handles = [Patch(color=color, label=label) for color, label in SUBSET_COLORS.values()]
  handles.append(plotting.whisker_key(ci_level))
  fig.legend(handles=handles, loc='outside upper center', ncols=len(handles), fontsize=9)
  plotting.save_figure(fig, path)


if __name__ == '__main__':
  import launch  # experiments/launch.py, beside this script
  launch.main(run, name='ablation')
