"""Tests of experiments/breakpoint_sweep.py and configs/breakpoint_sweep.py.

The exponent fit against closed forms (an exact power law; the paired-bootstrap interval
against per-resample float64 polyfit slopes, resamples without a break dropped and counted);
the config has no `data.k` and each cut's config does; the smoke sweep runs, writes its
tables and figure, and a rerun trains nothing.
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

CURVES = breakpoint_sweep.CURVES

_spec = importlib.util.spec_from_file_location('breakpoint_sweep_config',
                                               _ROOT / 'configs' / 'breakpoint_sweep.py')
configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configs)


def test_fit_exponent_recovers_a_power_law():
  ks = [8, 16, 32]
  fit = breakpoint_sweep.fit_exponent(ks, [3.0 * k ** 2.0 for k in ks])
  np.testing.assert_allclose([fit['slope'], fit['intercept']], [2.0, math.log(3.0)])
  assert fit['num_points'] == 3 and math.isnan(fit['slope_lo'])


def _percentile(values, q):
  """Linear-interpolation percentile by hand (numpy's default), for the references."""
  ordered = sorted(values)
  position = q / 100.0 * (len(ordered) - 1)
  low = math.floor(position)
  high = min(low + 1, len(ordered) - 1)
  return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def test_fit_exponent_paired_interval_against_numpy():
  # Resample b's breaks c_b k^s_b: a factor common to every cut (the cuts' correlation)
  # and its own slope s_b. Each resample's slope is s_b exactly, whatever c_b: the paired
  # interval is the 25th-75th percentile of (1, 1.5, 2, 2.5, 3), i.e. [1.5, 2.5].
  # Intervals treated as independent across k would add up the huge common factors.
  ks = np.array([8.0, 16.0, 32.0])
  common = np.array([0.01, 30.0, 1.0, 900.0, 0.2])
  own = np.array([2.5, 1.0, 3.0, 1.5, 2.0])
  resampled = common[None, :] * ks[:, None] ** own[None, :]  # [J, B]
  fit = breakpoint_sweep.fit_exponent(ks, 5.0 * ks ** 1.75, resampled, ci_level=0.5)
  np.testing.assert_allclose(fit['slope'], 1.75)
  np.testing.assert_allclose([fit['slope_lo'], fit['slope_hi']], [1.5, 2.5], rtol=1e-12)
  assert (fit['resamples'], fit['resamples_dropped']) == (5, 0)

  # Noisy, correlated breaks at unevenly spaced cuts: each resample's slope by float64
  # polyfit, the interval by a hand-written percentile.
  rng = np.random.default_rng(3)
  ks = np.array([5.0, 8.0, 16.0, 40.0])
  shared = rng.normal(0.0, 0.5, size=200)
  log_breaks = (0.3 + 2.0 * np.log(ks)[:, None] + shared[None, :]
                + rng.normal(0.0, 0.2, size=(4, 200)) * np.log(ks)[:, None] / 3)
  point = np.exp(0.3 + 2.0 * np.log(ks) + np.array([0.05, -0.1, 0.02, 0.07]))
  fit = breakpoint_sweep.fit_exponent(ks, point, np.exp(log_breaks), ci_level=0.9)
  slopes = [np.polyfit(np.log(ks), log_breaks[:, b], 1)[0] for b in range(200)]
  np.testing.assert_allclose(fit['slope'], np.polyfit(np.log(ks), np.log(point), 1)[0],
                             rtol=1e-12)
  np.testing.assert_allclose([fit['slope_lo'], fit['slope_hi']],
                             [_percentile(slopes, 5.0), _percentile(slopes, 95.0)], rtol=1e-12)
  assert (fit['resamples'], fit['resamples_dropped']) == (200, 0)


def test_fit_exponent_drops_resamples_without_a_break_and_counts_them():
  ks = np.array([8.0, 16.0, 32.0])
  breaks = 2.0 * ks ** 1.5
  own = np.array([1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
  resampled = 3.0 * ks[:, None] ** own[None, :]
  resampled[1, 0] = math.nan  # resample 0: no break at k = 16
  resampled[2, 5] = math.nan  # resample 5: none at k = 32
  fit = breakpoint_sweep.fit_exponent(ks, breaks, resampled, ci_level=0.5)
  assert (fit['resamples'], fit['resamples_dropped']) == (4, 2)
  # The rest: slopes 1.2, 1.4, 1.6, 1.8, whose 25th-75th percentiles are 1.35 and 1.65.
  np.testing.assert_allclose([fit['slope_lo'], fit['slope_hi']], [1.35, 1.65], rtol=1e-12)
  # A cut whose own fit found no break leaves the slope, so a resample's missing break
  # there costs nothing: resample 0 counts again (two-point slopes: 1.0, ..., 1.8).
  fit = breakpoint_sweep.fit_exponent(ks, [breaks[0], math.nan, breaks[2]], resampled,
                                      ci_level=0.5)
  np.testing.assert_allclose(fit['slope'], 1.5)
  assert (fit['num_points'], fit['resamples'], fit['resamples_dropped']) == (2, 5, 1)
  np.testing.assert_allclose([fit['slope_lo'], fit['slope_hi']], [1.2, 1.6], rtol=1e-12)
  # No resample complete: no interval, all counted as dropped.
  fit = breakpoint_sweep.fit_exponent(ks, breaks, np.full((3, 4), math.nan))
  assert math.isnan(fit['slope_lo']) and math.isnan(fit['slope_hi'])
  assert (fit['resamples'], fit['resamples_dropped']) == (0, 4)
  # A cut without a break is left out; one point left gives no slope.
  fit = breakpoint_sweep.fit_exponent(ks, [breaks[0], math.nan, breaks[2]])
  np.testing.assert_allclose(fit['slope'], 1.5)
  assert fit['num_points'] == 2 and math.isnan(fit['slope_lo'])
  assert math.isnan(breakpoint_sweep.fit_exponent(ks, [1.0, math.nan, math.nan])['slope'])
  with pytest.raises(ValueError, match=r'resample_breaks must be \[J=3, B\]'):
    breakpoint_sweep.fit_exponent(ks, breaks, resampled[:2])
  with pytest.raises(ValueError, match='ci_level'):
    breakpoint_sweep.fit_exponent(ks, breaks, resampled, ci_level=95.0)


def test_fit_exponent_edges_of_its_resamples_and_level():
  # A [J, B, 2] or [J] array is not [J, B], even with J rows; ci_level = 1 is outside
  # (0, 1); a resampled break <= 0 counts as missing (not as |b|); and a single complete
  # resample still gives an interval, collapsed onto its own slope.
  ks = np.array([8.0, 16.0, 32.0])
  breaks = 2.0 * ks ** 1.5
  for bad in (np.ones((3, 4, 2)), np.ones(3)):
    with pytest.raises(ValueError, match=r'resample_breaks must be \[J=3, B\]'):
      breakpoint_sweep.fit_exponent(ks, breaks, bad)
  resampled = 3.0 * ks[:, None] ** np.array([[1.2, 1.7]])
  with pytest.raises(ValueError, match=r'ci_level must be in \(0, 1\)'):
    breakpoint_sweep.fit_exponent(ks, breaks, resampled, ci_level=1.0)
  resampled[1, 1] = -1.0  # resample 1: a negative break at k = 16
  fit = breakpoint_sweep.fit_exponent(ks, breaks, resampled, ci_level=0.5)
  assert (fit['resamples'], fit['resamples_dropped']) == (1, 1)
  np.testing.assert_allclose([fit['slope_lo'], fit['slope_hi']], [1.2, 1.2], rtol=1e-12)


@pytest.mark.parametrize('ks, breaks, match', [
    ([8.0, 0.0, 32.0], [1.0, 2.0, 3.0], r'ks must be \[J\] finite cuts > 0'),
    ([8.0, math.nan, 32.0], [1.0, 2.0, 3.0], r'ks must be \[J\] finite cuts > 0'),
    ([8.0, 16.0, 32.0], [1.0, 2.0], r'breaks must be \[J=3\] like ks'),
])
def test_fit_exponent_refuses_bad_cuts_by_name(ks, breaks, match):
  # A cut of 0 or NaN gave slope NaN with num_points 3; two breaks for three cuts failed on
  # a bare IndexError naming nothing.
  with pytest.raises(ValueError, match=match):
    breakpoint_sweep.fit_exponent(ks, breaks)


def test_paired_resamples_need_the_same_draws_at_every_cut():
  drawn = [[0, 0, 1], [2, 1, 0]]
  cuts = [{'replicates': drawn, 'breaks': [[1.0, 2.0], [3.0, 4.0]]},
          {'replicates': drawn, 'breaks': [[5.0, 6.0], [7.0, math.nan]]}]
  np.testing.assert_array_equal(breakpoint_sweep.paired_resamples(cuts),
                                [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, math.nan]]])
  assert breakpoint_sweep.paired_resamples([cuts[0], None]) is None
  other = {'replicates': [[0, 0, 1], [2, 1, 1]], 'breaks': cuts[1]['breaks']}
  assert breakpoint_sweep.paired_resamples([cuts[0], other]) is None


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
  for ax, constant, label in zip(figure.axes, (1.0, 1.0 / pi), ('n1', 'n2')):
    # The reference lines: the paper's k^beta (n2: / pi), and zeta(beta) times it.
    paper, normalised = ax.lines[:2]
    np.testing.assert_allclose(paper.get_ydata() / paper.get_xdata() ** beta, constant)
    np.testing.assert_allclose(normalised.get_ydata() / normalised.get_xdata() ** beta,
                               _ZETA_1_5 * constant)
    # Error bars: the ideal learner's interval on the theory, the seeds' on the measured.
    bars = {c.get_label(): c for c in ax.containers}
    for curve, lo, hi in (('theory', 0.8, 3.0), ('measured_loss', 0.75, 3.0)):
      ends = [segment[:, 1]
              for segment in bars[f'_{curve} {label} interval'].lines[2][0].get_segments()]
      paper_breaks = [k ** beta * constant for k in config.sweep.ks]
      np.testing.assert_allclose(ends, [[lo * b, hi * b] for b in paper_breaks], rtol=1e-12)


def _vertical_segments(ax):
  """`(x, bottom, top)` of every vertical segment drawn as a collection (error bars)."""
  out = []
  for collection in ax.collections:
    for segment in getattr(collection, 'get_segments', lambda: [])():
      segment = np.asarray(segment)
      if len(segment) == 2 and segment[0, 0] == segment[1, 0]:
        out.append((segment[0, 0], *sorted(segment[:, 1])))
  return out


def test_figure_draws_each_recorded_interval_even_where_it_excludes_the_fit():
  # A percentile interval of resampled breaks need not contain the break fitted on the mean
  # curve (the facts smoke at k = 3: the fit on E(n) puts n1 at 32.5, the ideal learner's
  # interval is [12.3, 12.3]). The bar must span [lo, hi] as sweep.csv records it; clipped
  # at the point it spanned [12.3, 32.5], an interval that no results file holds.
  config = configs.get_config('smoke')
  ks = [int(k) for k in config.sweep.ks]
  rows = []
  for k in ks:
    base = float(k) ** config.data.beta
    rows.append({'k': k, 'curve': 'theory', 'fit_n1': 2.0 * base, 'fit_n2': 2.0 * base,
                 'ideal_n1_lo': 0.5 * base, 'ideal_n1_hi': 1.0 * base,
                 'ideal_n2_lo': 0.5 * base, 'ideal_n2_hi': 1.0 * base})
    rows.append({'k': k, 'curve': 'measured_loss', 'fit_n1': base, 'fit_n2': base,
                 'seedboot_n1_lo': 1.5 * base, 'seedboot_n1_hi': 3.0 * base,
                 'seedboot_n2_lo': 1.5 * base, 'seedboot_n2_hi': 3.0 * base})
    rows.append({'k': k, 'curve': 'measured_error', 'fit_n1': base, 'fit_n2': math.nan,
                 'seedboot_n1_lo': math.nan, 'seedboot_n1_hi': math.nan,
                 'seedboot_n2_lo': math.nan, 'seedboot_n2_hi': math.nan})
  fig = breakpoint_sweep._figure(config, rows, [])
  expected = sorted((lo * k ** config.data.beta, hi * k ** config.data.beta)
                    for k in ks for lo, hi in ((0.5, 1.0), (1.5, 3.0)))
  for ax in fig.axes:
    drawn = sorted((bottom, top) for _, bottom, top in _vertical_segments(ax))
    np.testing.assert_allclose(drawn, expected, rtol=1e-12)
    # ... and the key names each curve's bars (the measured ones had no word on theirs).
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert [entry.split(' (slope')[0] for entry in legend[2:]] == [
        'fit to exact E(n) (bars: 95% ideal learner)',
        'measured loss (bars: 95% seed bootstrap)', 'measured error (bars: 95% seed bootstrap)']


def test_sweep_pairs_each_curves_resamples_across_cuts(tmp_path, monkeypatch):
  # Each cut returns its resamples as three_phase_scaling.run does: resample b's breaks are
  # c_b k^(beta + d_b) x the paper's constant, so its slope is beta + d_b at both breaks.
  # The loss's cuts drew the same replicates (paired); the error's did not (no interval).
  config = configs.get_config('smoke')
  beta, pi = config.data.beta, config.data.pi
  config.fit.ci_level = 0.5
  offsets = np.array([-0.4, -0.2, 0.0, 0.2, 0.4, 0.6])
  common = np.array([3.0, 0.1, 20.0, 1.0, 0.5, 7.0])
  drawn = [[0, 1], [1, 1], [0, 0], [1, 0], [0, 1], [1, 1]]

  def cut(k_config, workdir):
    del workdir
    k = k_config.data.k
    breaks = [[c * k ** (beta + d), c * k ** (beta + d) / pi] for c, d in zip(common, offsets)]
    if k == config.sweep.ks[-1]:
      breaks[5][1] = math.nan  # resample 5: no second break at the last cut
    rows = [_breakpoint_row(curve, 'hard', k, beta, pi, 1.0) for curve in CURVES]
    boots = [{'curve': 'measured_loss', 'mode': 'hard', 'replicates': drawn, 'breaks': breaks},
             {'curve': 'measured_error', 'mode': 'hard',
              'replicates': drawn if k == config.sweep.ks[0] else drawn[::-1],
              'breaks': breaks},
             # another mode's resamples (slopes beta + 3 + d_b): not the sweep's, and they
             # would shift the loss's interval by 3 if the sweep read them
             {'curve': 'measured_loss', 'mode': 'top_p', 'replicates': drawn[::-1],
              'breaks': [[c * k ** (beta + 3 + d), c * k ** (beta + 3 + d) / pi]
                         for c, d in zip(common, offsets)]}]
    return {'breakpoints': rows, 'units_computed': [], 'seed_bootstrap': boots}

  monkeypatch.setattr(breakpoint_sweep.three_phase_scaling, 'run', cut)
  monkeypatch.setattr(breakpoint_sweep.plotting, 'save_figure', lambda fig, path, dpi: [])
  out = breakpoint_sweep.run(config, tmp_path)
  exponents = {(e['curve'], e['break']): e for e in out['exponents']}
  loss_n1, loss_n2 = exponents[('measured_loss', 'n1')], exponents[('measured_loss', 'n2')]
  slopes = beta + offsets
  np.testing.assert_allclose([loss_n1['slope_lo'], loss_n1['slope_hi']],
                             [_percentile(slopes, 25.0), _percentile(slopes, 75.0)],
                             rtol=1e-12)
  assert (loss_n1['resamples'], loss_n1['resamples_dropped']) == (6, 0)
  np.testing.assert_allclose([loss_n2['slope_lo'], loss_n2['slope_hi']],
                             [_percentile(slopes[:5], 25.0), _percentile(slopes[:5], 75.0)],
                             rtol=1e-12)
  assert (loss_n2['resamples'], loss_n2['resamples_dropped']) == (5, 1)
  for curve in ('theory', 'measured_error'):
    for label in ('n1', 'n2'):
      row = exponents[(curve, label)]
      np.testing.assert_allclose(row['slope'], beta)
      assert math.isnan(row['slope_lo']) and row['resamples'] == 0
  table = {(r['curve'], r['break']): r for r in results.read_csv(tmp_path / 'exponents.csv')}
  assert table[('measured_loss', 'n2')]['resamples_dropped'] == 1


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
