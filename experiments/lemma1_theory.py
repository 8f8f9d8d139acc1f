r"""Lemma 1: three-phase scaling curves, their breakpoints, and a Monte Carlo check.

For every cell of a grid (beta x pi x truncation mode x the mode's parameter) the exact
error curve E(n) = sum_i p_i (1 - q_i)^n is computed on a log grid of n, a smoothly broken
power law is fitted to it (BIC picks 0-2 breaks; a residual bootstrap of its misfit, the
curve being exact, gives break intervals: how tightly the smooth form pins them) and the
fitted breaks are compared with the paper's k^beta and k^beta/pi (k the truncation rank, or
for soft truncations our effective rank `dv_jax.scaling.effective_k`) and with our
asymptote-crossing predictions (`dv_jax.scaling.predicted_breakpoints`). The paper's cell
(beta=2, k=70, pi=0.0625) is checked against the values quoted in METHOD.md and against a
Monte Carlo simulation.

  python experiments/lemma1_theory.py --config=configs/lemma1_theory.py \
      --workdir=workdirs/lemma1_theory

Outputs in --workdir: config.json, log.txt, units/ (one JSON per finished cell; a rerun
skips them), results.csv (one row per cell), reference.csv, monte_carlo.csv, results.json,
lemma1_reference.{png,pdf} and lemma1_modes.{png,pdf}.
"""

import math
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple

from absl import logging
import jax
import numpy as np
from tqdm import tqdm

from dv_jax import config_checks
from dv_jax import plotting
from dv_jax import results
from dv_jax import scaling
from dv_jax.data import contributors

# The argument name each mode's parameter list is stored under in config.data.
_MODE_PARAMETERS = {
    'hard': ('k', 'ks'),
    'top_p': ('top_p', 'top_ps'),
    'temperature': ('temperature', 'temperatures'),
    'finite_sample': ('num_samples', 'num_samples'),
}


class Cell(NamedTuple):
  """One curve of the grid."""
  beta: float
  pi: float
  mode: str
  parameter: str
  value: float

  @property
  def name(self) -> str:
    return (f'{self.mode}-{self.parameter}={_exact(self.value)}-beta={_exact(self.beta)}'
            f'-pi={_exact(self.pi)}')


def _exact(value: float) -> str:
  """`value` as `:g` where that is exact (the names units were saved under), else repr."""
  short = f'{value:g}'
  return short if float(short) == float(value) else repr(value)


# The config fields that choose which cells exist; each cell's unit name spells its values.
_GRID_FIELDS = ('betas', 'pis', 'modes', 'ks', 'top_ps', 'temperatures', 'num_samples')

# The range of each soft mode's parameter (`dv_jax.scaling.synthetic_distribution`).
_PARAMETER_RANGES = {
    'top_p': (lambda v: 0 < v <= 1, 'in (0, 1] (the kept real mass)'),
    'temperature': (lambda v: 0 < v < 1, 'in (0, 1) (a thinned tail)'),
}


def check_config(config) -> None:
  """Fails, naming the field, on a setting that would break (or silently drop) later work.

  Runs before any unit: the grid (`grid_cells`), the n grid, the Monte Carlo check, the
  reference cell and the figure settings.

  Raises:
    ValueError: naming the config field.
  """
  config_checks.config_seed(config)
  for field, items in (('data.num_items', config.data.num_items),
                       ('data.reference.num_items', config.data.reference.num_items)):
    config_checks.config_int(items, field, minimum=2)
  grid_cells(config)  # reads data.num_items
  # Every cell fits its curve: a bad option would fail after the first units.
  try:
    scaling.check_fit_options(**_fit_options(config))
  except ValueError as error:
    raise ValueError(f'config.fit: {error}') from error
  scale = config.scaling
  if not (0 < float(scale.n_min) < float(scale.n_max) and math.isfinite(float(scale.n_max))):
    raise ValueError(f'config.scaling.n_min and n_max must satisfy 0 < n_min < n_max '
                     f'(finite), got {scale.n_min}, {scale.n_max}')
  # The fit has 3 + 3 * max_breaks parameters and needs more points than that.
  minimum = 4 + 3 * int(config.fit.max_breaks)
  if int(scale.num_points) < minimum:
    raise ValueError(f'config.scaling.num_points must be >= {minimum} for a fit with '
                     f'{config.fit.max_breaks} breaks, got {scale.num_points}')
  ns = [float(n) for n in scale.mc_ns]
  if not ns or any(not (n >= 1 and n.is_integer()) for n in ns):
    raise ValueError(f'config.scaling.mc_ns must be a non-empty list of integers >= 1, got '
                     f'{tuple(scale.mc_ns)}')
  # The Monte Carlo standard error (and so its z-score) needs two trials.
  config_checks.config_int(scale.mc_trials, 'scaling.mc_trials', minimum=2)
  ref = config.data.reference
  if not (float(ref.beta) > 1 and math.isfinite(float(ref.beta))):
    raise ValueError(f'config.data.reference.beta must be > 1, got {ref.beta}')
  if not 0 < float(ref.pi) <= 1:  # pi = 0: no real data, no breakpoint k^beta / pi
    raise ValueError(f'config.data.reference.pi must lie in (0, 1], got {ref.pi}')
  if not (float(ref.k) == int(ref.k) and 1 <= int(ref.k) < int(ref.num_items)):
    raise ValueError(f'config.data.reference.k must be an integer in [1, '
                     f'config.data.reference.num_items), got {ref.k}')
  if len(ref.paper_errors) != len(ref.ns) or not len(ref.ns):
    raise ValueError(f'config.data.reference.paper_errors has {len(ref.paper_errors)} values '
                     f'but config.data.reference.ns has {len(ref.ns)}: one error per n '
                     '(at least one)')
  for name, values in (('ns', ref.ns), ('paper_errors', ref.paper_errors)):
    # rel_diff_paper divides by the quoted error; E(n) needs sample sizes >= 0.
    if any(not (float(v) > 0 and math.isfinite(float(v))) for v in values):
      raise ValueError(f'config.data.reference.{name} must be positive and finite, got '
                       f'{tuple(values)}')
  if float(config.output.grid_beta) not in [float(b) for b in config.data.betas]:
    # Otherwise the all-modes figure would have no curve and silently not be written.
    raise ValueError(f'config.output.grid_beta must be one of config.data.betas '
                     f'{tuple(config.data.betas)}, got {config.output.grid_beta}')
  if int(config.output.grid_columns) < 1:
    raise ValueError(f'config.output.grid_columns must be >= 1, got '
                     f'{config.output.grid_columns}')
  if not float(config.output.figure_dpi) > 0:
    raise ValueError(f'config.output.figure_dpi must be > 0, got {config.output.figure_dpi}')


def unit_fingerprint(config) -> str:
  """Hash of every config field a unit depends on: all but the output and the grid lists."""
  fields = results.to_jsonable(config)
  fields.pop('output', None)
  fields['data'] = {k: v for k, v in fields['data'].items() if k not in _GRID_FIELDS}
  return results.fingerprint(fields)


def grid_cells(config) -> List[Cell]:
  """The cells of the grid, in a fixed order (beta, pi, mode, parameter value).

  Raises:
    ValueError: an empty grid list, a list with a repeated entry, an unknown mode, a beta
      that is not > 1, a pi outside (0, 1] (or 1 with the temperature mode, which needs a
      synthetic phase), a top_p outside (0, 1], a temperature outside (0, 1), a rank / sample
      count that is not a positive integer, or a rank above `data.num_items` (each names
      its config field). The library would reject most of these too, but only once the
      reference and the Monte Carlo units are computed, and under its argument name.
  """
  for field in ('betas', 'pis', 'modes'):
    if not len(config.data[field]):
      raise ValueError(f'config.data.{field} is empty: the grid would have no cells')
  for field in _GRID_FIELDS:
    values = list(config.data[field])
    if len(set(values)) != len(values):
      # A repeated entry repeats a cell: the same unit twice in the tables.
      raise ValueError(f'config.data.{field} repeats an entry: '
                       f'{tuple(config.data[field])}')
  for field, ok, allowed in (('betas', lambda v: v > 1, '> 1 (a normalisable Zipf tail)'),
                             ('pis', lambda v: 0 < v <= 1, 'in (0, 1]')):
    bad = [v for v in config.data[field] if not (math.isfinite(float(v)) and ok(float(v)))]
    if bad:
      raise ValueError(f'config.data.{field} must hold values {allowed}, got {bad}')
  cells = []
  for beta in config.data.betas:
    for pi in config.data.pis:
      for mode in config.data.modes:
        if mode not in _MODE_PARAMETERS:
          raise ValueError(f'config.data.modes: unknown mode {mode!r}; '
                           f'use some of {tuple(_MODE_PARAMETERS)}')
        parameter, field = _MODE_PARAMETERS[mode]
        if not len(config.data[field]):
          raise ValueError(f'config.data.{field} is empty, but mode {mode!r} needs values')
        if mode == 'temperature' and float(pi) == 1:
          raise ValueError("config.data.pis holds 1, but mode 'temperature' needs pi < 1 "
                           '(its asymptotes are those of a synthetic phase)')
        for value in config.data[field]:
          if parameter in ('k', 'num_samples') and not (
              float(value) == int(float(value)) and int(float(value)) >= 1):
            raise ValueError(f'config.data.{field} must hold integers >= 1, got {value!r}')
          if parameter == 'k' and int(float(value)) > int(config.data.num_items):
            raise ValueError(f'config.data.{field} must hold ranks <= config.data.num_items = '
                             f'{int(config.data.num_items)}, got {value!r}')
          if parameter in _PARAMETER_RANGES and not _PARAMETER_RANGES[parameter][0](
              float(value)):
            raise ValueError(f'config.data.{field} must hold values '
                             f'{_PARAMETER_RANGES[parameter][1]}, got {value!r}')
          cells.append(Cell(float(beta), float(pi), mode, parameter, value))
  return cells


def _n_grid(config) -> np.ndarray:
  return np.geomspace(config.scaling.n_min, config.scaling.n_max, config.scaling.num_points)


def _fit_options(config) -> Dict[str, Any]:
  return scaling.fit_options(config.fit, seed=config.seed)


def _compute_cell(cell: Cell, config, p: np.ndarray, key: jax.Array) -> Dict[str, Any]:
  """Curve, fit and predictions of one cell (a unit of the store)."""
  ns = _n_grid(config)
  extra = {'key': key} if cell.mode == 'finite_sample' else {}
  value = int(cell.value) if cell.parameter in ('k', 'num_samples') else float(cell.value)
  p_syn = scaling.synthetic_distribution(p, mode=cell.mode, **{cell.parameter: value}, **extra)
  q = scaling.mixture(p, p_syn, cell.pi)
  errors = scaling.expected_error(ns, p, q)
  fit = scaling.fit_broken_power_law(ns, errors, **_fit_options(config))

  num_samples = value if cell.mode == 'finite_sample' else None
  k_eff = scaling.effective_k(p, p_syn, pi=cell.pi, mode=cell.mode, num_samples=num_samples)
  if k_eff >= 1:
    paper = scaling.breakpoints(cell.beta, k_eff, cell.pi)
  else:
    paper = scaling.Breakpoints(math.nan, math.nan)
  if cell.mode == 'temperature':  # no plateau: only the end of the synthetic phase
    paper = paper._replace(n1=math.nan)
  ours = scaling.predicted_breakpoints(
      cell.beta, cell.pi, mode=cell.mode, k=k_eff if cell.mode in ('hard', 'top_p') else None,
      temperature=value if cell.mode == 'temperature' else None, num_samples=num_samples)
  matched = scaling.match_breaks(fit.breaks, ours)

  params = fit.params
  segment_slopes = scaling.segment_slopes(params)
  fitted_curve = scaling.broken_power_law(ns, params)
  row = {
      'beta': cell.beta, 'pi': cell.pi, 'mode': cell.mode, 'parameter': cell.parameter,
      'value': value, 'k_eff': k_eff,
      'paper_n1': paper.n1, 'paper_n2': paper.n2, 'ours_n1': ours.n1, 'ours_n2': ours.n2,
      'num_breaks': fit.num_breaks,
  }
  for j in range(config.fit.max_breaks):
    has = j < fit.num_breaks
    row[f'fit_break{j + 1}'] = float(fit.breaks[j]) if has else math.nan
    row[f'fit_break{j + 1}_lo'] = float(fit.break_ci[j, 0]) if has else math.nan
    row[f'fit_break{j + 1}_hi'] = float(fit.break_ci[j, 1]) if has else math.nan
  for label, matched_value, paper_value, ours_value in (
      ('n1', matched[0], paper.n1, ours.n1), ('n2', matched[1], paper.n2, ours.n2)):
    row[f'fit_{label}'] = matched_value
    row[f'ratio_fit_paper_{label}'] = matched_value / paper_value
    row[f'ratio_fit_ours_{label}'] = matched_value / ours_value
  row['theory_slope'] = 1.0 - 1.0 / cell.beta
  for j in range(config.fit.max_breaks + 1):
    row[f'segment_slope{j}'] = (float(segment_slopes[j]) if j < segment_slopes.size
                                else math.nan)
  for j, bic in enumerate(fit.bic):
    row[f'bic{j}'] = float(bic)
  row['fit_max_abs_log_residual'] = float(np.max(np.abs(np.log(fitted_curve / errors))))
  return {'row': row, 'n': ns, 'error': errors, 'fit': fitted_curve,
          'fitted_breaks': fit.breaks, 'paper_breaks': [paper.n1, paper.n2],
          'ours_breaks': [ours.n1, ours.n2]}


def _compute_reference(config) -> Dict[str, Any]:
  """The paper's cell: quoted values, phase asymptotes, curve and fit."""
  ref = config.data.reference
  p = scaling.zipf(ref.num_items, ref.beta)
  q = scaling.mixture(p, scaling.synthetic_distribution(p, mode='hard', k=ref.k), ref.pi)
  ns = np.asarray(ref.ns, dtype=np.float64)
  if len(ref.paper_errors) != ns.size:
    raise ValueError(f'config.data.reference.paper_errors has {len(ref.paper_errors)} values '
                     f'but config.data.reference.ns has {ns.size}: one error per n')
  exact = scaling.expected_error(ns, p, q)
  phases = scaling.phase_asymptotes(ns, beta=ref.beta, k=ref.k, pi=ref.pi)
  rows = []
  for i, n in enumerate(ns):
    rows.append({'n': n, 'exact': exact[i], 'paper': ref.paper_errors[i],
                 'rel_diff_paper': exact[i] / ref.paper_errors[i] - 1.0,
                 'rapid': phases.rapid[i], 'plateau': phases.plateau[i], 'tail': phases.tail[i],
                 'continuum': phases.continuum[i]})
  grid = _n_grid(config)
  curve = scaling.expected_error(grid, p, q)
  curve_phases = scaling.phase_asymptotes(grid, beta=ref.beta, k=ref.k, pi=ref.pi)
  fit = scaling.fit_broken_power_law(grid, curve, **_fit_options(config))
  return {'rows': rows, 'n': grid, 'error': curve, 'phases': curve_phases._asdict(),
          'fit': scaling.broken_power_law(grid, fit.params), 'fitted_breaks': fit.breaks,
          'fitted_break_ci': fit.break_ci,
          'paper_breaks': list(scaling.breakpoints(ref.beta, ref.k, ref.pi)),
          'refined_breaks': list(scaling.refined_breakpoints(ref.beta, ref.k, ref.pi))}


def _compute_monte_carlo(config, key: jax.Array) -> List[Dict[str, Any]]:
  """Monte Carlo estimates at the reference cell against the exact expectation."""
  ref = config.data.reference
  p = scaling.zipf(ref.num_items, ref.beta)
  q = scaling.mixture(p, scaling.synthetic_distribution(p, mode='hard', k=ref.k), ref.pi)
  ns = np.asarray(config.scaling.mc_ns, dtype=np.int64)
  exact = scaling.expected_error(ns, p, q)
  simulated = scaling.simulate_error(key, ns, p, q, trials=config.scaling.mc_trials)
  return [{'n': int(n), 'exact': exact[i], 'mc_mean': simulated.mean[i],
           'mc_stderr': simulated.stderr[i],
           'z': (simulated.mean[i] - exact[i]) / simulated.stderr[i],
           'trials': config.scaling.mc_trials} for i, n in enumerate(ns)]


def _summary(rows: List[Dict[str, Any]], max_breaks: int) -> Dict[str, Any]:
  """Per mode: how many breaks BIC found and how far the fitted breaks are from theory."""
  summary = {}
  for mode in dict.fromkeys(row['mode'] for row in rows):
    mode_rows = [row for row in rows if row['mode'] == mode]
    entry = {'cells': len(mode_rows),
             'num_breaks': {str(j): sum(row['num_breaks'] == j for row in mode_rows)
                            for j in range(int(max_breaks) + 1)}}
    for key in ('ratio_fit_paper_n1', 'ratio_fit_paper_n2', 'ratio_fit_ours_n1',
                'ratio_fit_ours_n2'):
      ratios = np.array([row[key] for row in mode_rows], dtype=float)
      ratios = ratios[np.isfinite(ratios)]
      entry[key] = ({'median': float(np.median(ratios)), 'min': float(ratios.min()),
                     'max': float(ratios.max()),
                     'within_2x': float(np.mean(np.abs(np.log(ratios)) <= math.log(2.0)))}
                    if ratios.size else None)
    summary[mode] = entry
  return summary


def _reference_figure(reference: Dict[str, Any], monte_carlo, config):
  ref = config.data.reference
  phases = reference['phases']
  gray = '0.45'
  curves = [
      plotting.Curve(reference['n'], reference['error'], 'exact E(n)', color='C0',
                     predicted_breaks=reference['paper_breaks'],
                     fitted_breaks=reference['fitted_breaks'], fit=reference['fit'],
                     fit_color='k'),
      plotting.Curve(reference['n'], phases['rapid'], 'rapid C(an)^-s', color='C2',
                     style='-.', width=1.0),
      plotting.Curve(reference['n'], phases['plateau'], 'plateau (tail mass)', color=gray,
                     style='-.', width=1.0),
      plotting.Curve(reference['n'], phases['tail'], 'tail C(pi n)^-s', color='C3',
                     style='-.', width=1.0),
  ]
  points = [
      plotting.Points([row['n'] for row in monte_carlo], [row['mc_mean'] for row in monte_carlo],
                      f'Monte Carlo ({config.scaling.mc_trials} trials, ±2 s.e.)',
                      yerr=[2 * row['mc_stderr'] for row in monte_carlo], marker='o', color='k'),
      plotting.Points([row['n'] for row in reference['rows']],
                      [row['paper'] for row in reference['rows']], 'values quoted in the spec',
                      marker='x', color='C1'),
  ]
  fig, axes = plotting.new_figure(panel_size=(7.0, 4.8))
  lowest = min(np.min(reference['error']), min(row['mc_mean'] for row in monte_carlo))
  axes[0, 0].set_ylim(lowest / 2, 1.5)
  plotting.plot_loglog_curves(
      axes[0, 0], curves, points=points,
      title=(f'Lemma 1, hard truncation: beta={ref.beta:g}, k={ref.k}, pi={ref.pi:g}, '
             f'N={ref.num_items:g}\nsolid: k^beta, k^beta/pi; dashed: fitted breaks; '
             'black dotted: broken power law'))
  return fig


def _predicted_caption(cells_out: List[Dict[str, Any]]) -> str:
  """'; solid: ...' naming the predicted breaks a panel draws: temperature has no paper n1
  (NaN by design), so a fixed 'k_eff^beta, k_eff^beta/pi' would name a line not there."""
  # None (a NaN through JSON) reads as NaN.
  breaks = np.array([out['paper_breaks'] for out in cells_out], dtype=float).reshape(-1, 2)
  drawn = [name for name, column in zip(('k_eff^beta', 'k_eff^beta/pi'), breaks.T)
           if np.isfinite(column).any()]
  return f'; solid: {", ".join(drawn)}' if drawn else ''


def _modes_figure(cells_out: List[Dict[str, Any]], config):
  beta = config.output.grid_beta
  panels = []
  for mode in config.data.modes:
    curves = []
    chosen = [out for out in cells_out
              if out['row']['mode'] == mode and out['row']['beta'] == beta]
    for index, out in enumerate(chosen):
      row = out['row']
      curves.append(plotting.Curve(
          out['n'], out['error'], f"{row['parameter']}={row['value']:g}, pi={row['pi']:g}",
          color=f'C{index % 10}', predicted_breaks=out['paper_breaks'],
          fitted_breaks=out['fitted_breaks']))
    if curves:
      panels.append((f'{mode} (beta={beta:g}){_predicted_caption(chosen)}', curves))
  if not panels:
    return None
  return plotting.curve_grid(panels, ncols=config.output.grid_columns)


def run(config, workdir) -> Dict[str, Any]:
  """Computes every unit not yet in `workdir/units`, then writes tables and figures.

  Args:
    config: the `configs/lemma1_theory.py` ConfigDict.
    workdir: output directory.

  Returns:
    `{'cells': rows, 'reference': rows, 'monte_carlo': rows, 'summary': per-mode summary,
    'units_computed': names computed in this call, 'files': written paths, 'runtime_s'}`.
  """
  start = time.perf_counter()
  workdir = Path(workdir)
  check_config(config)  # every setting, before any work
  cells = grid_cells(config)
  store = results.UnitStore(workdir / 'units')
  key = jax.random.PRNGKey(config.seed)
  computed = []

  fingerprint = unit_fingerprint(config)

  def unit(name, compute):
    if name not in store:
      store.save(name, compute(), fingerprint=fingerprint)
      computed.append(name)
      logging.info('unit %s computed', name)
    return store.load(name, fingerprint=fingerprint)

  reference = unit('reference', lambda: _compute_reference(config))
  monte_carlo = unit('monte_carlo', lambda: _compute_monte_carlo(
      config, jax.random.fold_in(key, 0)))
  for row in reference['rows']:
    logging.info('reference n=%g: exact %.5f, spec %.5f (%+.1f%%)', row['n'], row['exact'],
                 row['paper'], 100 * row['rel_diff_paper'])
  for row in monte_carlo:
    logging.info('Monte Carlo n=%d: %.5f ± %.5f vs exact %.5f (z=%.2f)', row['n'],
                 row['mc_mean'], row['mc_stderr'], row['exact'], row['z'])

  zipf_cache = {}
  cells_out = []
  for cell in tqdm(cells, desc='lemma1 cells', disable=not config.output.progress):
    def compute(cell=cell):
      if cell.beta not in zipf_cache:
        zipf_cache[cell.beta] = scaling.zipf(config.data.num_items, cell.beta)
      # The key depends on the cell's name, not its position: editing the grid leaves the
      # other cells' finite samples unchanged.
      cell_key = contributors.fold_in_name(key, cell.name)
      return _compute_cell(cell, config, zipf_cache[cell.beta], cell_key)
    cells_out.append(unit(cell.name, compute))
  rows = [out['row'] for out in cells_out]
  for row in rows:
    logging.info('%s beta=%g pi=%g %s=%g: %d breaks, fit/paper n1 %.2f n2 %.2f', row['mode'],
                 row['beta'], row['pi'], row['parameter'], row['value'], row['num_breaks'],
                 row['ratio_fit_paper_n1'] if row['ratio_fit_paper_n1'] is not None else
                 math.nan,
                 row['ratio_fit_paper_n2'] if row['ratio_fit_paper_n2'] is not None else
                 math.nan)

  files = [
      results.write_csv(workdir / 'results.csv', rows),
      results.write_csv(workdir / 'reference.csv', reference['rows']),
      results.write_csv(workdir / 'monte_carlo.csv', monte_carlo),
  ]
  dpi = config.output.figure_dpi
  files += plotting.save_figure(_reference_figure(reference, monte_carlo, config),
                                workdir / 'lemma1_reference', dpi=dpi)
  modes_fig = _modes_figure(cells_out, config)
  if modes_fig is not None:
    files += plotting.save_figure(modes_fig, workdir / 'lemma1_modes', dpi=dpi)
  output = {
      'cells': rows,
      'reference': reference['rows'],
      'reference_breaks': {'paper': reference['paper_breaks'],
                           'refined': reference['refined_breaks'],
                           'fitted': reference['fitted_breaks'],
                           'fitted_ci': reference['fitted_break_ci']},
      'monte_carlo': monte_carlo,
      'summary': _summary(rows, config.fit.max_breaks),
      'units_computed': computed,
      'runtime_s': time.perf_counter() - start,
  }
  files.append(workdir / 'results.json')
  output['files'] = [str(path) for path in files]
  results.write_json(workdir / 'results.json', output)
  logging.info('lemma1: %d units computed, %d reused, %.1f s', len(computed),
               len(cells) + 2 - len(computed), output['runtime_s'])
  return output


if __name__ == '__main__':
  import launch  # experiments/launch.py, beside this script
  launch.main(run, name='lemma1_theory')
