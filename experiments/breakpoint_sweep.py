r"""Breakpoint scaling: do the fitted breaks of the three-phase curve grow as k^beta?

Runs `three_phase_scaling.run` (hard truncation) once per cut k of `config.sweep.ks`, each
in `<workdir>/k<k>/` with its own units (a rerun, or an interrupted sweep, resumes there),
then fits log(break) = slope * log(k) + c by least squares for every curve (the exact
theory E(n) at the measured sizes, the measured test loss and error) and each break.
Lemma 1 predicts slope beta for both breaks. The interval of a measured slope is a paired
seed bootstrap: the cuts are not independent (they share the seed, so a size common to two
cuts is the same unit draw), and every cut's seed bootstrap draws the same seed indices in
resample b (`three_phase_scaling.seed_bootstrap`). So resample b gives one slope, fitted to
its own breaks at every cut; the interval is the percentile interval of those slopes at
`fit.ci_level`, over the resamples with the break at every cut (the others are dropped and
counted: `resamples`, `resamples_dropped` in exponents.csv).
Every cut's settings and saved units are checked before the first cut trains.

  python experiments/breakpoint_sweep.py --config=configs/breakpoint_sweep.py \
      --workdir=workdirs/breakpoint_sweep

Outputs in --workdir: config.json, log.txt, k<k>/ (each a full three_phase_scaling
workdir), sweep.csv (one row per k and curve: fitted, paper and zeta-normalised breaks),
exponents.csv (one row per curve and break), results.json, breakpoint_sweep.{png,pdf}.
"""

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import ml_collections
import numpy as np
from scipy import special
from tqdm import tqdm

from dv_jax import plotting
from dv_jax import results
import three_phase_scaling  # experiments/three_phase_scaling.py, beside this script

CURVES = ('theory', 'measured_loss', 'measured_error')


def _check_cuts(ks: Sequence[Any]) -> None:
  if any(float(k) != int(float(k)) or float(k) < 1 for k in ks):
    raise ValueError(f'config.sweep.ks must hold integers >= 1, got {tuple(ks)}')


def config_for_k(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
  """The three_phase_scaling config of one cut: the sweep's config with `data.k = k`."""
  _check_cuts([k])
  out = ml_collections.ConfigDict(config.to_dict())
  out.data.k = int(k)
  del out['sweep']
  return out


def fit_exponent(ks: Sequence[float], breaks: Sequence[float],
                 resample_breaks: Optional[Sequence[Sequence[float]]] = None,
                 ci_level: float = 0.95) -> Dict[str, float]:
  """Least-squares slope of log(break) on log(k), and its paired-bootstrap interval.

  The slope is a fixed linear combination `sum_j w_j log b_j` of the breaks. Resample b
  of a paired bootstrap has a break `B_jb` at every cut j, all from the same resampled
  seeds, so its slope `sum_j w_j log B_jb` carries the cuts' correlation with it; the
  interval is the `ci_level` percentile interval of these slopes (no assumption of
  independence across k, nor of normality). A resample without the break at a cut of the
  fit has no slope and is dropped; `resamples` / `resamples_dropped` count both.

  Args:
    ks: `[J]` cuts, at least two distinct.
    breaks: `[J]` fitted breaks (NaN where a fit found none: left out, from the slope and
      from every resample's slope).
    resample_breaks: optional `[J, B]` breaks of B paired resamples (resample b drew the
      same seeds at every cut; NaN where its fit found no break).
    ci_level: the interval's level, in (0, 1).

  Returns:
    `{'slope', 'intercept', 'num_points', 'slope_lo', 'slope_hi', 'resamples',
    'resamples_dropped'}` (NaN where undefined; counts 0 without resamples).

  Raises:
    ValueError: naming `ks` if it is not `[J]` of finite values > 0, `breaks` if it is not
      `[J]`, `resample_breaks` if it is not `[J, B]`, or `ci_level` outside (0, 1).
  """
  if not 0.0 < ci_level < 1.0:
    raise ValueError(f'ci_level must be in (0, 1), got {ci_level}')
  ks = np.asarray(ks, np.float64)
  breaks = np.asarray(breaks, np.float64)
  # A cut of 0 or NaN made the slope NaN while num_points still counted it; breaks of
  # another length failed on a bare IndexError.
  if ks.ndim != 1 or not np.all(np.isfinite(ks)) or not np.all(ks > 0):
    raise ValueError(f'ks must be [J] finite cuts > 0, got {ks.tolist()}')
  if breaks.shape != ks.shape:
    raise ValueError(f'breaks must be [J={ks.size}] like ks, got shape {breaks.shape}')
  log_k = np.log(ks)
  with np.errstate(divide='ignore', invalid='ignore'):  # a break <= 0 is not found: NaN
    log_b = np.log(breaks)
  keep = np.isfinite(log_b)
  out = {'slope': math.nan, 'intercept': math.nan, 'num_points': int(keep.sum()),
         'slope_lo': math.nan, 'slope_hi': math.nan, 'resamples': 0, 'resamples_dropped': 0}
  if resample_breaks is not None:
    resample_breaks = np.asarray(resample_breaks, np.float64)
    if resample_breaks.ndim != 2 or resample_breaks.shape[0] != log_k.size:
      raise ValueError(f'resample_breaks must be [J={log_k.size}, B], got shape '
                       f'{resample_breaks.shape}')
  if keep.sum() < 2 or np.ptp(log_k[keep]) == 0:
    return out
  x = log_k[keep] - log_k[keep].mean()
  weights = x / np.sum(x * x)  # slope = sum_j weights_j log_b_j
  slope = float(np.sum(weights * log_b[keep]))
  out.update(slope=slope, intercept=float(np.mean(log_b[keep]) - slope * log_k[keep].mean()))
  if resample_breaks is not None:
    with np.errstate(divide='ignore', invalid='ignore'):  # a break <= 0 counts as missing
      log_r = np.log(resample_breaks[keep])
    complete = np.all(np.isfinite(log_r), axis=0)
    out.update(resamples=int(complete.sum()), resamples_dropped=int((~complete).sum()))
    if complete.any():
      slopes = weights @ log_r[:, complete]
      tail = 100.0 * (1.0 - ci_level) / 2.0
      out.update(slope_lo=float(np.percentile(slopes, tail)),
                 slope_hi=float(np.percentile(slopes, 100.0 - tail)))
  return out


def paired_resamples(cuts: Sequence[Optional[Dict[str, Any]]]) -> Optional[np.ndarray]:
  """`[J, B, 2]` per-resample `(n1, n2)` of one curve at J cuts, if they pair up.

  Args:
    cuts: per cut, its `three_phase_scaling.run(...)['seed_bootstrap']` entry of the curve
      (`'replicates'`: `[B, R]` replicate ids each resample drew, `'breaks'`: `[B, 2]`), or
      None where the cut had no seed bootstrap.

  Returns:
    The breaks, or None (logged) if a cut has none or the cuts' resamples drew different
    replicates (then resample b is not one draw of the seeds across cuts).
  """
  if not cuts or any(cut is None for cut in cuts):
    return None
  drawn = [np.asarray(cut['replicates']) for cut in cuts]
  if any(d.shape != drawn[0].shape or np.any(d != drawn[0]) for d in drawn[1:]):
    logging.warning('seed bootstraps of the cuts drew different replicates: no paired '
                    'interval of the slope')
    return None
  return np.stack([np.asarray(cut['breaks'], np.float64) for cut in cuts])


def sweep_rows(k: int, output: Dict[str, Any], beta: float) -> List[Dict[str, Any]]:
  """One row per curve of one cut, from `three_phase_scaling.run`'s output."""
  zeta = float(special.zeta(beta))
  rows = []
  for row in output['breakpoints']:
    if row['mode'] != 'hard' or row['curve'] not in CURVES:
      continue
    entry = {'k': k, 'curve': row['curve'], 'num_breaks': row['num_breaks'],
             'three_phases': row['three_phases']}
    for label in ('n1', 'n2'):
      fitted, paper = row[f'fit_{label}'], row[f'paper_{label}']
      entry.update({
          f'fit_{label}': fitted, f'paper_{label}': paper,
          f'ratio_paper_{label}': fitted / paper,
          # Lemma 1 with the Zipf law normalised: p_k = k^-beta / zeta(beta).
          f'ratio_normalised_{label}': fitted / (zeta * paper),
          f'seedboot_{label}_lo': row.get(f'seedboot_{label}_lo', math.nan),
          f'seedboot_{label}_hi': row.get(f'seedboot_{label}_hi', math.nan),
      })
      if row['curve'] == 'theory':  # where the ideal learner's breaks fall at these seeds
        entry.update({f'ideal_{label}_{stat}': row.get(f'ideal_{label}_{stat}', math.nan)
                      for stat in ('median', 'lo', 'hi', 'within_2x')})
    rows.append(entry)
  return rows


def _figure(config, rows: Sequence[Dict[str, Any]], exponents: Sequence[Dict[str, Any]]):
  data = config.data
  fig, axes = plotting.new_figure(ncols=2, squeeze=False, panel_size=(5.0, 3.8))
  ks = np.array(sorted({r['k'] for r in rows}), np.float64)
  dense = np.geomspace(ks.min() / 1.3, ks.max() * 1.3, 50)
  zeta = float(special.zeta(data.beta))
  # Both intervals are fit.ci_level percentile intervals: of the ideal learner's replicates
  # on the theory, of the seed bootstrap's resamples on the measured curves.
  level = plotting.percent(config.fit.ci_level)
  styles = {'theory': ('k', 's', f'fit to exact E(n) (bars: {level} ideal learner)'),
            'measured_loss': ('tab:blue', 'o', f'measured loss (bars: {level} seed bootstrap)'),
            'measured_error': ('tab:orange', '^',
                               f'measured error (bars: {level} seed bootstrap)')}
  for ax, label, scale, name in ((axes[0, 0], 'n1', 1.0, 'k^beta'),
                                 (axes[0, 1], 'n2', 1.0 / data.pi, 'k^beta / pi')):
    ax.plot(dense, scale * dense ** data.beta, 'k-', lw=1, label=f'paper: {name}')
    ax.plot(dense, zeta * scale * dense ** data.beta, 'k:', lw=1,
            label=f'zeta(beta) {name}')
    for offset, curve in zip((0.97, 1.0, 1.03), CURVES):
      sub = sorted((r for r in rows if r['curve'] == curve), key=lambda r: r['k'])
      if not sub:
        continue
      color, marker, text = styles[curve]
      x = np.array([r['k'] for r in sub], np.float64) * offset
      y = np.array([r[f'fit_{label}'] for r in sub], np.float64)
      # Measured curves: the seed-bootstrap interval; the theory: the ideal learner's.
      interval = 'ideal' if curve == 'theory' else 'seedboot'
      lo = np.array([r.get(f'{interval}_{label}_lo', math.nan) for r in sub], np.float64)
      hi = np.array([r.get(f'{interval}_{label}_hi', math.nan) for r in sub], np.float64)
      slope = next((e['slope'] for e in exponents
                    if e['curve'] == curve and e['break'] == label), math.nan)
      ax.plot(x, y, marker, ls='none', color=color, ms=5, label=f'{text} (slope {slope:.2f})')
      # [lo, hi] as sweep.csv records it: the interval of resampled breaks need not
      # contain the break fitted on the mean curve.
      plotting.interval_bars(ax, x, lo, hi, color=color, label=f'_{curve} {label} interval')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('truncation rank k')
    ax.set_ylabel(f'fitted break {label} (|S|)')
    ax.set_title(f'{label}: predicted slope beta = {data.beta:g}', fontsize=10)
    ax.legend(fontsize=7)
  fig.suptitle(f'Breakpoint scaling, facts, beta={data.beta:g}, pi={data.pi:g}, '
               f'N={data.num_items}', fontsize=10)
  return fig


def check_config(config: ml_collections.ConfigDict) -> List[int]:
  """The cuts of `config.sweep.ks`, each cut's config checked as its run will check it.

  Runs before any cut trains: a bad setting (or a cut out of range) would otherwise fail
  only when its cut's turn came, after the cuts before it had trained.

  Returns:
    The cuts as ints, in config order.

  Raises:
    ValueError: naming `config.sweep.ks` (integers >= 1, at least two, none repeated) or,
      through `three_phase_scaling.check_config`, the field a cut's config fails on.
  """
  _check_cuts(config.sweep.ks)  # before int() could truncate one
  ks = [int(k) for k in config.sweep.ks]
  if len(set(ks)) < 2:
    raise ValueError(f'config.sweep.ks must hold at least two distinct cuts, got {ks}')
  if len(set(ks)) != len(ks):  # a repeated cut would count twice in the slope fits
    raise ValueError(f'config.sweep.ks repeats a cut: {tuple(config.sweep.ks)}')
  for k in ks:
    try:
      three_phase_scaling.check_config(config_for_k(config, k))
    except ValueError as error:
      raise ValueError(f'config.sweep.ks: the cut k={k}: {error}') from error
  return ks


def run(config: ml_collections.ConfigDict, workdir) -> Dict[str, Any]:
  """Runs (or resumes) every cut, fits the exponents, writes tables and the figure.

  Returns:
    `{'rows', 'exponents', 'units_computed', 'runtime_s', 'files'}` as in results.json
    (`units_computed`: per k, the units trained in this call).
  """
  start = time.perf_counter()
  workdir = Path(workdir)
  ks = check_config(config)
  # Every cut's saved units, before the first cut trains: a stale k<k>/ found only when
  # its turn came would leave the sweep half run.
  for k in ks:
    three_phase_scaling.check_saved_units(config_for_k(config, k), workdir / f'k{k}')
  rows, computed, boots = [], {}, {}
  for k in tqdm(ks, desc='sweep k', disable=not config.output.progress):
    k_config = config_for_k(config, k)
    output = three_phase_scaling.run(k_config, workdir / f'k{k}')
    results.save_config(k_config, workdir / f'k{k}')  # each k<k>/ is a whole workdir
    computed[k] = output['units_computed']
    rows += sweep_rows(k, output, float(config.data.beta))
    boots.update({(k, entry['curve']): entry for entry in output.get('seed_bootstrap', ())
                  if entry['mode'] == 'hard'})
  exponents = []
  for curve in CURVES:
    sub = [r for r in rows if r['curve'] == curve]
    if not sub:
      continue
    # The theory curve has no seed bootstrap: no interval.
    paired = (paired_resamples([boots.get((r['k'], curve)) for r in sub])
              if curve != 'theory' else None)
    for j, label in enumerate(('n1', 'n2')):
      fit = fit_exponent([r['k'] for r in sub], [r[f'fit_{label}'] for r in sub],
                         None if paired is None else paired[:, :, j],
                         ci_level=float(config.fit.ci_level))
      exponents.append({'curve': curve, 'break': label, 'predicted_slope': config.data.beta,
                        **fit})
      logging.info('%s %s: slope %.3f [%.3f, %.3f] (predicted %g; paired seed bootstrap: '
                   '%d resamples, %d dropped without the break at every cut)', curve, label,
                   fit['slope'], fit['slope_lo'], fit['slope_hi'], config.data.beta,
                   fit['resamples'], fit['resamples_dropped'])
  files = [results.write_csv(workdir / 'sweep.csv', rows),
           results.write_csv(workdir / 'exponents.csv', exponents)]
  files += plotting.save_figure(_figure(config, rows, exponents),
                                workdir / 'breakpoint_sweep', dpi=config.output.figure_dpi)
  output = {'rows': rows, 'exponents': exponents,
            'units_computed': {str(k): v for k, v in computed.items()},
            'runtime_s': time.perf_counter() - start}
  files.append(workdir / 'results.json')
  output['files'] = [str(path) for path in files]
  results.write_json(workdir / 'results.json', output)
  logging.info('breakpoint_sweep: %d cuts in %.1f s', len(ks), output['runtime_s'])
  return output


if __name__ == '__main__':
  import launch  # experiments/launch.py, beside this script
  launch.main(run, name='breakpoint_sweep')
