"""Tests of experiments/breakpoint_sweep.py and configs/breakpoint_sweep.py.

The exponent fit against closed forms (an exact power law, the delta-method interval by
hand); the config has no `data.k` and each cut's config does; the smoke sweep runs, writes
its tables and figure, and a rerun trains nothing.
"""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from dv_jax import results

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / 'experiments'))
import breakpoint_sweep  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

_spec = importlib.util.spec_from_file_location('breakpoint_sweep_config',
                                               _ROOT / 'configs' / 'breakpoint_sweep.py')
configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configs)


def test_fit_exponent_recovers_a_power_law():
  ks = [8, 16, 32]
  fit = breakpoint_sweep.fit_exponent(ks, [3.0 * k ** 2.0 for k in ks])
  np.testing.assert_allclose([fit['slope'], fit['intercept']], [2.0, math.log(3.0)])
  assert fit['num_points'] == 3 and math.isnan(fit['slope_lo'])


def test_fit_exponent_interval_and_missing_breaks():
  ks = np.array([8.0, 16.0, 32.0])
  breaks = 2.0 * ks ** 1.5
  sd = np.array([0.1, 0.2, 0.3])  # log-space sds of the three breaks
  intervals = np.stack([breaks * np.exp(-1.959963984540054 * sd),
                        breaks * np.exp(1.959963984540054 * sd)], axis=1)
  fit = breakpoint_sweep.fit_exponent(ks, breaks, intervals)
  # Least-squares weights on log k = log 8 + (0, 1, 2) log 2: (-1, 0, 1) / (2 log 2).
  slope_sd = math.sqrt(0.1 ** 2 + 0.3 ** 2) / (2 * math.log(2.0))
  np.testing.assert_allclose(fit['slope'], 1.5)
  np.testing.assert_allclose([fit['slope_lo'], fit['slope_hi']],
                             1.5 + np.array([-1, 1]) * 1.959963984540054 * slope_sd)
  # A cut whose fit found no break is left out; one point left gives no slope.
  fit = breakpoint_sweep.fit_exponent(ks, [breaks[0], math.nan, breaks[2]])
  np.testing.assert_allclose(fit['slope'], 1.5)
  assert fit['num_points'] == 2
  assert math.isnan(breakpoint_sweep.fit_exponent(ks, [1.0, math.nan, math.nan])['slope'])


def test_fit_exponent_interval_has_the_level_of_the_per_k_intervals():
  # The same log-space sds as 90% intervals give the 90% slope interval: z = 1.645 on both
  # sides, so the per-k intervals' own level carries through (no level argument to misread).
  ks = np.array([8.0, 16.0, 32.0])
  breaks = 2.0 * ks ** 1.5
  sd = np.array([0.1, 0.2, 0.3])
  z90 = 1.6448536269514722
  intervals = np.stack([breaks * np.exp(-z90 * sd), breaks * np.exp(z90 * sd)], axis=1)
  fit = breakpoint_sweep.fit_exponent(ks, breaks, intervals)
  slope_sd = math.sqrt(0.1 ** 2 + 0.3 ** 2) / (2 * math.log(2.0))
  np.testing.assert_allclose([fit['slope_lo'], fit['slope_hi']],
                             1.5 + np.array([-1, 1]) * z90 * slope_sd)
  # A cut without a break but with a finite interval is left out of the interval too: the
  # two-point slope's weights are (-1, 1) / (2 log 2).
  fit = breakpoint_sweep.fit_exponent(ks, [breaks[0], math.nan, breaks[2]], intervals)
  half_width = z90 * math.sqrt(0.1 ** 2 + 0.3 ** 2) / (2 * math.log(2.0))
  np.testing.assert_allclose([fit['slope'], fit['slope_lo'], fit['slope_hi']],
                             [1.5, 1.5 - half_width, 1.5 + half_width])


# zeta(3/2): the Zipf law's normalisation at beta = 1.5 (tabulated, not scipy's).
_ZETA_1_5 = 2.6123753486854883


def _breakpoint_row(curve, mode, k, beta, pi, scale):
  """A three_phase_scaling breakpoints row whose breaks are `scale` x the paper's.

  Measured curves carry a seed-bootstrap interval (median, lo, hi all distinct); the theory
  carries the ideal learner's instead, and no seed bootstrap (as three_phase_scaling).
  """
  row = {'curve': curve, 'mode': mode, 'num_breaks': 2, 'three_phases': True}
  for label, paper in (('n1', k ** beta), ('n2', k ** beta / pi)):
    boot = (1.1, 0.5, 2.0) if curve != 'theory' else (math.nan,) * 3
    row.update({f'fit_{label}': scale * paper, f'paper_{label}': paper,
                **{f'seedboot_{label}_{stat}': f * scale * paper
                   for stat, f in zip(('median', 'lo', 'hi'), boot)}})
    if curve == 'theory':
      row.update({f'ideal_{label}_median': scale * paper, f'ideal_{label}_lo': 0.8 * paper,
                  f'ideal_{label}_hi': 3.0 * paper, f'ideal_{label}_within_2x': 0.9})
  return row


def test_sweep_rows_keep_the_hard_cut_and_normalise_by_zeta():
  beta, pi, k = 1.5, 0.25, 4
  output = {'breakpoints': [
      _breakpoint_row('theory', 'hard', k, beta, pi, 1.2),
      _breakpoint_row('measured_loss', 'hard', k, beta, pi, 1.5),
      _breakpoint_row('measured_loss', 'top_p', k, beta, pi, 9.0),  # a soft cut: not Lemma 1's
  ]}
  rows = breakpoint_sweep.sweep_rows(k, output, beta)
  assert [(r['k'], r['curve']) for r in rows] == [(4, 'theory'), (4, 'measured_loss')]
  for row, source, scale in zip(rows, output['breakpoints'], (1.2, 1.5)):
    for label in ('n1', 'n2'):
      np.testing.assert_allclose([row[f'ratio_paper_{label}'], row[f'ratio_normalised_{label}']],
                                 [scale, scale / _ZETA_1_5], rtol=1e-12)
      # The seed-bootstrap interval is the cut's own (lo and hi, not its median).
      np.testing.assert_array_equal(
          [row[f'seedboot_{label}_lo'], row[f'seedboot_{label}_hi']],
          [source[f'seedboot_{label}_lo'], source[f'seedboot_{label}_hi']])
  assert rows[0]['ideal_n2_hi'] == output['breakpoints'][0]['ideal_n2_hi']


def test_sweep_uses_the_configs_beta_and_draws_each_curves_interval(tmp_path, monkeypatch):
  # The cuts' runs replaced by their breakpoint rows: the sweep's own arithmetic and figure
  # at beta = 1.5 (the defaults' beta = 2 would hide a hard-coded 2).
  config = configs.get_config('smoke')
  config.data.beta = beta = 1.5
  pi = config.data.pi
  scales = {'theory': 1.2, 'measured_loss': 1.5, 'measured_error': 1.8}

  def cut(k_config, workdir):
    del workdir
    return {'breakpoints': [_breakpoint_row(curve, 'hard', k_config.data.k, beta, pi, scale)
                            for curve, scale in scales.items()], 'units_computed': []}

  figures = []
  monkeypatch.setattr(breakpoint_sweep.three_phase_scaling, 'run', cut)
  monkeypatch.setattr(breakpoint_sweep.plotting, 'save_figure',
                      lambda fig, path, dpi: figures.append(fig) or [])
  out = breakpoint_sweep.run(config, tmp_path)
  for row in out['rows']:
    np.testing.assert_allclose(row['ratio_normalised_n2'], scales[row['curve']] / _ZETA_1_5,
                               rtol=1e-12)
  (figure,) = figures
  for ax, constant in zip(figure.axes, (1.0, 1.0 / pi)):  # n1, then n2
    # The reference lines: the paper's k^beta (n2: / pi), and zeta(beta) times it.
    paper, normalised = ax.lines[:2]
    np.testing.assert_allclose(paper.get_ydata() / paper.get_xdata() ** beta, constant)
    np.testing.assert_allclose(normalised.get_ydata() / normalised.get_xdata() ** beta,
                               _ZETA_1_5 * constant)
    # Error bars: the ideal learner's interval on the theory, the seeds' on the measured.
    bars = {c.get_label().split(' (')[0]: c for c in ax.containers}
    for text, lo, hi in (('fit to exact E(n)', 0.8, 3.0), ('measured loss', 0.75, 3.0)):
      ends = [segment[:, 1] for segment in bars[text].lines[2][0].get_segments()]
      paper_breaks = [k ** beta * constant for k in config.sweep.ks]
      np.testing.assert_allclose(ends, [[lo * b, hi * b] for b in paper_breaks], rtol=1e-12)


def _no_training(*args, **kwargs):
  raise AssertionError('a cut was run before every cut was checked')


@pytest.mark.parametrize('field, value, message', [
    ('sweep.ks', (3, 4, 300), r'config\.sweep\.ks: the cut k=300: config\.data\.k must be'),
    ('sweep.ks', (3, 4, 3), r'config\.sweep\.ks repeats a cut'),
    ('fit.ci_level', 95.0, r'config\.fit\.ci_level must be in \(0, 1\)'),
    ('scaling.grid_below', 0.0, r'config\.scaling\.grid_below must be > 0'),
])
def test_sweep_checks_every_cut_before_any_training(tmp_path, monkeypatch, field, value,
                                                    message):
  config = configs.get_config('smoke')
  section, name = field.split('.')
  config[section][name] = value
  monkeypatch.setattr(breakpoint_sweep.three_phase_scaling, 'run', _no_training)
  with pytest.raises(ValueError, match=message):
    breakpoint_sweep.run(config, tmp_path)
  assert not list(tmp_path.iterdir())


def test_sweep_refuses_a_stale_cut_before_any_training(tmp_path, monkeypatch):
  # The last cut's workdir holds a unit of another config: refused before the first cut.
  config = configs.get_config('smoke')
  k = config.sweep.ks[-1]
  tps = breakpoint_sweep.three_phase_scaling
  k_config = breakpoint_sweep.config_for_k(config, k)
  name = tps._unit_name(*tps.planned_units(k_config)[0])  # pylint: disable=protected-access
  results.UnitStore(tmp_path / f'k{k}' / 'units').save(name, {'fingerprint': 'another config'})
  monkeypatch.setattr(tps, 'run', _no_training)
  with pytest.raises(ValueError, match='fresh --workdir'):
    breakpoint_sweep.run(config, tmp_path)
  assert sorted(path.name for path in tmp_path.iterdir()) == [f'k{k}']


@pytest.mark.parametrize('variant', configs.VARIANTS)
def test_config_has_cuts_not_a_k(variant):
  config = configs.get_config(variant)
  assert 'k' not in config.data and len(set(config.sweep.ks)) >= 2
  assert breakpoint_sweep.check_config(config) == list(config.sweep.ks)
  assert tuple(config.truncation.modes) == ('hard',)
  one = breakpoint_sweep.config_for_k(config, config.sweep.ks[-1])
  assert one.data.k == config.sweep.ks[-1] and 'sweep' not in one
  with pytest.raises(ValueError, match='sweep.ks'):
    breakpoint_sweep.config_for_k(config, 2.5)
  with pytest.raises(ValueError, match='unknown variant'):
    configs.get_config('cifar')


@pytest.mark.slow
def test_smoke_sweep_runs_and_resumes(tmp_path):
  config = configs.get_config('smoke')
  out = breakpoint_sweep.run(config, tmp_path)
  for name in ('sweep.csv', 'exponents.csv', 'results.json', 'breakpoint_sweep.png',
               'breakpoint_sweep.pdf'):
    assert (tmp_path / name).is_file()
  for k in config.sweep.ks:
    assert (tmp_path / f'k{k}' / 'breakpoints.csv').is_file()
    assert results.read_json(tmp_path / f'k{k}' / 'config.json')['data']['k'] == k
    assert out['units_computed'][str(k)]
  rows = results.read_csv(tmp_path / 'sweep.csv')
  assert sorted({int(r['k']) for r in rows}) == sorted(config.sweep.ks)
  theory = [r for r in out['rows'] if r['curve'] == 'theory']
  for row in theory:  # the paper's breaks of each cut
    assert row['paper_n1'] == row['k'] ** config.data.beta
    np.testing.assert_allclose(row['paper_n2'], row['paper_n1'] / config.data.pi)
  assert {(e['curve'], e['break']) for e in out['exponents']} == {
      (c, b) for c in breakpoint_sweep.CURVES for b in ('n1', 'n2')}
  again = breakpoint_sweep.run(config, tmp_path)
  assert all(not v for v in again['units_computed'].values())
  assert repr(again['rows']) == repr(out['rows'])  # NaN breaks compare by repr
  with pytest.raises(ValueError, match='two distinct'):
    config.sweep.ks = (3, 3)
    breakpoint_sweep.run(config, tmp_path)
  with pytest.raises(ValueError, match=r'config\.sweep\.ks must hold integers >= 1'):
    config.sweep.ks = (3, 4.5)  # not truncated to 4
    breakpoint_sweep.run(config, tmp_path)
