"""End-to-end test of experiments/lemma1_theory.py on its smoke config."""

import importlib.util
import math
import os
from pathlib import Path
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.special

from dv_jax import results
from dv_jax import scaling

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'experiments' / 'lemma1_theory.py'


def _load(path: Path, name: str):
  # experiments/ and configs/ are not packages: load the files as modules (the script's
  # flags are only defined under __main__, so importing it defines none).
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


lemma1_config = _load(ROOT / 'configs' / 'lemma1_theory.py', 'lemma1_theory_config')


@pytest.fixture(scope='module')
def experiment():
  return _load(SCRIPT, 'lemma1_theory_experiment')


def test_configs_build_and_reject_unknown_variants():
  default = lemma1_config.get_config()
  smoke = lemma1_config.get_config('smoke')
  assert set(default.keys()) == {'seed', 'data', 'scaling', 'fit', 'output'}
  assert default.data.num_items == 10**6 and smoke.data.num_items < default.data.num_items
  with pytest.raises(ValueError, match='variant'):
    lemma1_config.get_config('huge')


def test_grid_has_one_cell_per_mode_parameter(experiment):
  config = lemma1_config.get_config()
  cells = experiment.grid_cells(config)
  per_beta_pi = sum(len(config.data[field]) for field in ('ks', 'top_ps', 'temperatures',
                                                          'num_samples'))
  assert len(cells) == len(config.data.betas) * len(config.data.pis) * per_beta_pi
  assert len({cell.name for cell in cells}) == len(cells)


def test_grid_checks_its_lists_and_names_cells_exactly(experiment):
  config = lemma1_config.get_config('smoke')
  assert experiment.grid_cells(config)[0].name == 'hard-k=10-beta=2-pi=0.25'
  config.data.modes = ('finite_sample',)
  config.data.num_samples = (1000000, 1000004)  # equal under '%g': must stay two units
  assert len({cell.name for cell in experiment.grid_cells(config)}) == 2
  config.data.num_samples = (200, 2.5)
  with pytest.raises(ValueError, match=r'config\.data\.num_samples must hold integers'):
    experiment.grid_cells(config)
  config.data.modes = ('hard',)
  config.data.ks = (3, 4.5)
  with pytest.raises(ValueError, match=r'config\.data\.ks must hold integers'):
    experiment.grid_cells(config)
  config.data.ks = ()
  with pytest.raises(ValueError, match=r'config\.data\.ks is empty'):
    experiment.grid_cells(config)
  config.data.betas = ()
  with pytest.raises(ValueError, match=r'config\.data\.betas is empty'):
    experiment.grid_cells(config)


@pytest.mark.parametrize('section, field, value, match', [
    ('data', 'pis', (1.5,), r'config\.data\.pis must hold values in \(0, 1\]'),
    # Before, the next two failed after the reference and Monte Carlo units, under the
    # library's argument names.
    ('data', 'pis', (0.0,), r'config\.data\.pis must hold values in \(0, 1\]'),
    ('data', 'ks', (10**9,), r'config\.data\.ks must hold ranks <= config\.data\.num_items'),
    ('data', 'betas', (1.0,), r'config\.data\.betas must hold values > 1'),
    ('data', 'top_ps', (1.5,), r'config\.data\.top_ps must hold values in \(0, 1\]'),
    ('data', 'temperatures', (2.0,), r'config\.data\.temperatures must hold values in'),
    ('data', 'ks', (10, 10.0), r'config\.data\.ks repeats an entry'),
    ('data', 'modes', ('hard', 'hard'), r'config\.data\.modes repeats an entry'),
    ('scaling', 'n_min', 1e6, r'config\.scaling\.n_min and n_max must satisfy'),
    ('scaling', 'num_points', 5, r'config\.scaling\.num_points must be >= 10'),
    # One trial has no standard error: mc_stderr and z were written as NaN.
    ('scaling', 'mc_trials', 1, r'config\.scaling\.mc_trials must be an integer >= 2'),
    # The fit's options: before, a bad one failed in the first cell, after two units.
    ('fit', 'grid_points', 1, r'config\.fit: grid_points must be >= 2 to place a break'),
    ('fit', 'ci_level', 95.0, r'config\.fit: ci_level must lie in \(0, 1\)'),
    # Would silently leave out the all-modes figure (no cell at that beta).
    ('output', 'grid_beta', 3.0, r'config\.output\.grid_beta must be one of config\.data'),
    ('output', 'grid_columns', 0, r'config\.output\.grid_columns must be >= 1'),
])
def test_bad_settings_fail_naming_the_field_before_any_unit(experiment, tmp_path, monkeypatch,
                                                           section, field, value, match):
  def forbidden(*args, **kwargs):
    raise AssertionError('a unit was computed before the config was checked')

  monkeypatch.setattr(scaling, 'expected_error', forbidden)
  monkeypatch.setattr(scaling, 'simulate_error', forbidden)
  config = lemma1_config.get_config('smoke')
  config[section][field] = value
  with pytest.raises(ValueError, match=match):
    experiment.run(config, tmp_path)
  assert not (tmp_path / 'units').exists()


@pytest.mark.parametrize('change, match', [
    (dict(pis=(0.25, 1.0), modes=('hard', 'temperature')),
     r"config\.data\.pis holds 1, but mode 'temperature' needs pi < 1"),
    (dict(reference_pi=0.0), r'config\.data\.reference\.pi must lie in \(0, 1\]'),
])
def test_a_pi_without_the_phase_it_needs_fails_before_any_unit(experiment, tmp_path,
                                                               monkeypatch, change, match):
  monkeypatch.setattr(scaling, 'expected_error', lambda *args, **kwargs: pytest.fail('a unit'))
  config = lemma1_config.get_config('smoke')
  for field, value in change.items():
    if field == 'reference_pi':
      config.data.reference.pi = value
    else:
      config.data[field] = value
  with pytest.raises(ValueError, match=match):
    experiment.run(config, tmp_path)
  assert not (tmp_path / 'units').exists()
  if 'pis' in change:  # pi = 1 stays valid for the modes without a synthetic asymptote
    config.data.modes = ('hard',)
    experiment.check_config(config)


@pytest.mark.parametrize('field, values', [
    # A quoted error of 0 made rel_diff_paper inf; a negative n failed in the library
    # under its own argument name.
    ('paper_errors', (0.069, 0.0112, 0.0, 0.0016)),
    ('ns', (100, -4900, 78400, 3_000_000)),
])
def test_a_bad_reference_value_fails_naming_the_field(experiment, field, values):
  config = lemma1_config.get_config('smoke')
  config.data.reference[field] = values
  with pytest.raises(ValueError, match=rf'config\.data\.reference\.{field} must be positive'):
    experiment.check_config(config)


def test_a_seed_past_32_bits_fails_before_any_unit(experiment, tmp_path):
  config = lemma1_config.get_config('smoke')
  config.seed = 2**32  # PRNGKey would give seed 0's draws
  with pytest.raises(ValueError, match=r'config\.seed must be an integer in \[0, 4294967295\]'):
    experiment.run(config, tmp_path)
  assert not (tmp_path / 'units').exists()


def test_summary_counts_every_number_of_breaks_the_fit_allows(experiment):
  rows = [{'mode': 'hard', 'num_breaks': j, 'ratio_fit_paper_n1': ratio,
           'ratio_fit_paper_n2': 2.0, 'ratio_fit_ours_n1': 1.0, 'ratio_fit_ours_n2': 1.5}
          for j, ratio in zip((0, 2, 3, 3), (0.4, 1.0, 2.5, 9.0))]
  summary = experiment._summary(rows, 3)  # pylint: disable=protected-access
  assert summary['hard']['num_breaks'] == {'0': 1, '1': 0, '2': 1, '3': 2}
  assert sum(summary['hard']['num_breaks'].values()) == summary['hard']['cells']
  # By hand: the median of 0.4, 1, 2.5, 9 is (1 + 2.5) / 2 (their mean is 3.225); only 1
  # lies within a factor 2 of theory (0.4 and 2.5 are within a factor 3).
  assert summary['hard']['ratio_fit_paper_n1'] == {'median': 1.75, 'min': 0.4, 'max': 9.0,
                                                   'within_2x': 0.25}


def test_unit_fingerprint_ignores_the_output_and_the_grid_lists(experiment):
  config = lemma1_config.get_config('smoke')
  before = experiment.unit_fingerprint(config)
  config.output.figure_dpi = 300
  config.data.ks = (10, 20)
  assert experiment.unit_fingerprint(config) == before
  config.scaling.mc_trials += 1
  assert experiment.unit_fingerprint(config) != before


def test_reference_errors_match_the_quoted_values_at_the_paper_size():
  # METHOD.md section 1 quotes E(n) at the paper's cell for N = 10^6 Zipf items: the exact
  # E(n) = sum_i p_i (1 - q_i)^n in float64 NumPy, with the config's reference fields,
  # must give the config's quoted values (measured: within 0.6%). A changed pi or a
  # mistyped value moves some of them by 5%.
  ref = lemma1_config.get_config().data.reference
  assert ref.num_items == 10**6
  ranks = np.arange(1, ref.num_items + 1, dtype=np.float64)
  p = ranks ** -ref.beta / np.sum(ranks ** -ref.beta)
  head = np.where(ranks <= ref.k, p, 0.0)
  q = ref.pi * p + (1 - ref.pi) * head / head.sum()
  exact = [np.sum(p * (1 - q) ** n) for n in ref.ns]
  np.testing.assert_allclose(exact, ref.paper_errors, rtol=0.01)


def test_a_cell_reads_its_own_beta_and_temperature(experiment):
  # The smoke grid has only beta = 2 (where 1 - 1/beta = 1/beta) and temperature 0.5: a
  # cell at beta = 3, temperature 0.7 tells the right values from those.
  config = lemma1_config.get_config('smoke')
  cell = experiment.Cell(beta=3.0, pi=0.25, mode='temperature', parameter='temperature',
                         value=0.7)
  row = experiment._compute_cell(  # pylint: disable=protected-access
      cell, config, scaling.zipf(config.data.num_items, cell.beta),
      jax.random.PRNGKey(0))['row']
  assert row['theory_slope'] == pytest.approx(2 / 3, rel=1e-12)  # s = 1 - 1/beta
  # The crossing depends on the temperature (the library's own tests check its value).
  ours = scaling.predicted_breakpoints(3.0, 0.25, mode='temperature', temperature=0.7)
  assert row['ours_n2'] == ours.n2
  assert ours.n2 != scaling.predicted_breakpoints(3.0, 0.25, mode='temperature',
                                                  temperature=0.5).n2
  # No plateau under temperature: neither the paper's nor our n1 exists.
  assert math.isnan(row['paper_n1']) and math.isnan(row['ours_n1'])


def _legend_colors(ax):
  from matplotlib.colors import to_hex  # pylint: disable=g-import-not-at-top
  legend = ax.get_legend()
  return {text.get_text(): to_hex(handle.get_color())
          for text, handle in zip(legend.get_texts(), legend.legend_handles)
          if hasattr(handle, 'get_linestyle')}


def test_reference_figure_draws_the_fit_visibly_and_keys_what_is_drawn(experiment):
  from matplotlib.colors import to_hex  # pylint: disable=g-import-not-at-top
  config = lemma1_config.get_config('smoke')
  n = np.geomspace(10, 1e6, 20)
  error = n ** -0.5
  phases = {name: error for name in ('rapid', 'plateau', 'tail', 'continuum')}
  reference = {'n': n, 'error': error, 'fit': error * 1.001, 'phases': phases,
               'paper_breaks': [100.0, 1600.0], 'fitted_breaks': [120.0, 2000.0],
               'rows': [{'n': 100.0, 'paper': 0.1}]}
  monte_carlo = [{'n': 100, 'mc_mean': 0.1, 'mc_stderr': 0.001}]
  fig = experiment._reference_figure(reference, monte_carlo, config)
  ax = fig.axes[0]
  (exact,) = [line for line in ax.lines if line.get_label() == 'exact E(n)']
  (fit,) = [line for line in ax.lines if line.get_linestyle() == ':']
  # The fit runs along the exact curve: it is drawn above it and in another color, else it
  # is invisible under it although title and legend announce it.
  assert fit.get_zorder() > exact.get_zorder()
  assert to_hex(fit.get_color()) != to_hex(exact.get_color())
  # The keys to the break lines and the fit take the colors drawn, not a neutral gray.
  colors = _legend_colors(ax)
  assert colors['predicted break'] == colors['fitted break'] == to_hex(exact.get_color())
  assert colors['broken power law'] == to_hex(fit.get_color())


def test_modes_figure_titles_name_the_predicted_breaks_each_panel_draws(experiment):
  config = lemma1_config.get_config('smoke')
  config.data.modes = ('hard', 'temperature')
  beta = config.output.grid_beta
  n = np.geomspace(10, 1e6, 20)

  def cell(mode, paper_breaks):
    return {'row': {'mode': mode, 'beta': beta, 'parameter': 'x', 'value': 1.0, 'pi': 0.25},
            'n': n, 'error': n ** -0.5, 'paper_breaks': paper_breaks,
            'fitted_breaks': [150.0, 2000.0]}

  # temperature has no paper n1 (NaN by design; None through the units' JSON).
  fig = experiment._modes_figure([cell('hard', [100.0, 1600.0]),
                                  cell('temperature', [None, 1600.0])], config)
  titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
  assert titles == [f'hard (beta={beta:g}); solid: k_eff^beta, k_eff^beta/pi',
                    f'temperature (beta={beta:g}); solid: k_eff^beta/pi']


@pytest.mark.slow
def test_smoke_run_writes_outputs_and_resumes(experiment, tmp_path, monkeypatch):
  config = lemma1_config.get_config('smoke')
  config.lock()
  out = experiment.run(config, tmp_path)
  num_cells = len(experiment.grid_cells(config))
  assert len(out['cells']) == num_cells
  assert len(out['units_computed']) == num_cells + 2  # + reference and Monte Carlo
  for name in ('results.csv', 'results.json', 'reference.csv', 'monte_carlo.csv',
               'lemma1_reference.png', 'lemma1_reference.pdf', 'lemma1_modes.png',
               'lemma1_modes.pdf'):
    assert (tmp_path / name).stat().st_size > 0, name
  rows = results.read_csv(tmp_path / 'results.csv')
  assert [row['mode'] for row in rows] == list(config.data.modes)
  hard = rows[0]
  assert hard['paper_n1'] == config.data.ks[0] ** config.data.betas[0]
  assert hard['num_breaks'] in (0, 1, 2)
  for row in results.read_csv(tmp_path / 'monte_carlo.csv'):
    assert math.isfinite(row['z']) and abs(row['z']) < 5
  for row in out['reference']:
    assert abs(row['rel_diff_paper']) < 0.1  # N = 1e4 in the smoke config: a few % off
  assert results.read_json(tmp_path / 'results.json')['cells'] == out['cells']
  # One Monte Carlo row per config.scaling.mc_ns, z = (mean - exact) / s.e.
  assert [row['n'] for row in results.read_csv(tmp_path / 'monte_carlo.csv')] == list(
      config.scaling.mc_ns)
  for row in out['monte_carlo']:
    assert row['z'] == pytest.approx((row['mc_mean'] - row['exact']) / row['mc_stderr'],
                                     rel=1e-12)

  # The reference cell (beta=2, k=70, pi=1/16): the paper's breaks k^beta = 4900 and
  # k^beta / pi = 78400 (METHOD.md section 1); the phases in closed form (constants as
  # derived in dv_jax.scaling's docstring): rapid C (a n)^-s, plateau the real tail mass
  # zeta(beta, k+1) / zeta(beta), tail C (pi n)^-s, with s = 1 - 1/beta,
  # C = Gamma(s) zeta(beta)^(-1/beta) / beta, head rate a = pi + (1 - pi) / (1 - plateau).
  ref = config.data.reference
  assert out['reference_breaks']['paper'] == [4900.0, 78400.0]
  s = 1 - 1 / ref.beta
  zeta = scipy.special.zeta(ref.beta)
  constant = scipy.special.gamma(s) * zeta ** (-1 / ref.beta) / ref.beta
  tail_mass = scipy.special.zeta(ref.beta, ref.k + 1) / zeta
  head_rate = ref.pi + (1 - ref.pi) / (1 - tail_mass)
  for row in out['reference']:
    np.testing.assert_allclose(
        [row['rapid'], row['plateau'], row['tail'], row['rel_diff_paper']],
        [constant * (head_rate * row['n']) ** -s, tail_mass, constant * (ref.pi * row['n']) ** -s,
         row['exact'] / row['paper'] - 1], rtol=1e-10)

  # Each cell's unit: its columns against its own curve and fit.
  store = results.UnitStore(tmp_path / 'units')
  for cell, row in zip(experiment.grid_cells(config), out['cells']):
    unit = store.load(cell.name)
    assert unit['row'] == row
    ns, error, fit = (np.asarray(unit[key], np.float64) for key in ('n', 'error', 'fit'))
    assert row['fit_max_abs_log_residual'] == pytest.approx(
        np.max(np.abs(np.log(fit / error))), rel=1e-12)
    # Past the last break (over 50x below n_max here) the fit's log-log slope is the last
    # segment's: the first slope plus every change (measured: within 0.002).
    end_slope = -np.log(fit[-1] / fit[-2]) / np.log(ns[-1] / ns[-2])
    assert abs(end_slope - row[f'segment_slope{row["num_breaks"]}']) < 0.02
    for j in range(1, row['num_breaks'] + 1):
      assert row[f'fit_break{j}_lo'] < row[f'fit_break{j}_hi']
    for label in ('n1', 'n2'):
      for theory in ('paper', 'ours'):
        ratio = row[f'ratio_fit_{theory}_{label}']
        if row[f'fit_{label}'] is None or row[f'{theory}_{label}'] is None:  # NaN: null
          assert ratio is None
        else:
          assert ratio == pytest.approx(row[f'fit_{label}'] / row[f'{theory}_{label}'],
                                        rel=1e-12)
  temperature = out['cells'][list(config.data.modes).index('temperature')]
  assert temperature['paper_n1'] is None  # no plateau: the paper's n1 has no meaning
  # The hard cell's curve against E(n) = sum_i p_i (1 - q_i)^n in float64 NumPy on a
  # geometric n grid: Zipf p, the hard cut p' (the top k renormalised), q = pi p + (1 - pi) p'.
  cell = experiment.grid_cells(config)[0]
  assert cell.mode == 'hard'
  unit = store.load(cell.name)
  ns = np.asarray(unit['n'], np.float64)
  assert ns.size == config.scaling.num_points
  np.testing.assert_allclose(ns[[0, -1]], [config.scaling.n_min, config.scaling.n_max],
                             rtol=1e-12)
  np.testing.assert_allclose(np.diff(np.log(ns)), np.log(ns[1] / ns[0]), rtol=1e-9)
  ranks = np.arange(1, config.data.num_items + 1, dtype=np.float64)
  p = ranks ** -cell.beta / np.sum(ranks ** -cell.beta)
  head = np.where(ranks <= cell.value, p, 0.0)
  q = cell.pi * p + (1 - cell.pi) * head / head.sum()
  np.testing.assert_allclose(unit['error'], [np.sum(p * (1 - q) ** n) for n in ns], rtol=1e-9)

  # Second run: every unit is reused, nothing is recomputed.
  def forbidden(*args, **kwargs):
    raise AssertionError('a finished unit was recomputed')

  monkeypatch.setattr(scaling, 'expected_error', forbidden)
  monkeypatch.setattr(scaling, 'fit_broken_power_law', forbidden)
  again = experiment.run(config, tmp_path)
  assert again['units_computed'] == []
  assert results.read_csv(tmp_path / 'results.csv') == rows
  # A setting the saved units depend on changed: refused, not reported from stale units.
  config.scaling.mc_trials += 1
  with pytest.raises(ValueError, match='another config'):
    experiment.run(config, tmp_path)
  config.scaling.mc_trials -= 1
  # The reference cell and the items of every cell are settings of the units too.
  config.data.reference.pi /= 2
  with pytest.raises(ValueError, match='another config'):
    experiment.run(config, tmp_path)
  config.data.reference.pi *= 2
  config.data.num_items += 1
  with pytest.raises(ValueError, match='another config'):
    experiment.run(config, tmp_path)


def test_locked_config_rejects_a_typo(tmp_path):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
  process = subprocess.run(
      [sys.executable, str(SCRIPT), f'--config={ROOT}/configs/lemma1_theory.py:smoke',
       '--config.scaling.nmax=5', f'--workdir={tmp_path}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert process.returncode != 0
  assert 'nmax' in process.stderr
  assert not (tmp_path / 'config.json').exists()  # failed before doing anything
