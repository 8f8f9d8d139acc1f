"""Tests of experiments/three_phase_scaling.py and configs/three_phase_scaling.py.

End to end: the smoke variants of the facts MLP, the facts LM and the paper's CIFAR-100 /
ResNet-18 path (on a tiny fake CIFAR-100 folder in the official pickle format) run in a
temporary workdir, write their tables and figures, and a rerun trains nothing. Unit
tests: the truncation matching, the step schedule, the planned units and their
fingerprint, the predictions, the break matching and the breakpoint rows and summaries on
hand-made fits, the per-example and per-unit metrics against a float64 NumPy reference
and the memorisation property of `ItemMLP`.
"""

import copy
import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import task_fixtures
from dv_jax import results
from dv_jax import scaling
from dv_jax import training

_ROOT = Path(__file__).resolve().parents[1]


def _load(relative: str, name: str):
  spec = importlib.util.spec_from_file_location(name, _ROOT / relative)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tps = _load('experiments/three_phase_scaling.py', 'three_phase_scaling_script')
configs = _load('configs/three_phase_scaling.py', 'three_phase_scaling_config')
CONFIG_PATH = str(_ROOT / 'configs' / 'three_phase_scaling.py')


# ---------------------------------------------------------------------------------------
# Configs.


@pytest.mark.parametrize('variant', configs.VARIANTS)
def test_every_variant_builds(variant):
  config = configs.get_config(variant)
  assert config.variant == variant
  for section in ('data', 'model', 'train', 'scaling', 'fit', 'truncation', 'output'):
    assert section in config
  grid = tps.size_grid(config)
  assert grid.size >= 10 and np.all(np.diff(grid) > 0)
  # The fit needs more points than its largest model has parameters.
  assert grid.size > 3 + 3 * config.fit.max_breaks
  assert 'hard' in config.truncation.modes
  # Every variant passes the checks run makes first (the smoke variants' measured soft
  # modes used to get 5 sizes, too few for the fit, and were trained but never fitted).
  tps.check_config(config)


def test_paper_variant_is_the_papers_setting():
  config = configs.get_config('cifar100')
  assert (config.data.beta, config.data.k, config.data.pi) == (2.0, 70, 0.0625)
  assert config.model.name == 'resnet18' and config.model.num_filters == 64
  paper = scaling.breakpoints(config.data.beta, config.data.k, config.data.pi)
  grid = tps.size_grid(config)
  assert grid.min() < paper.n1 < paper.n2 < grid.max()


def test_default_variant_is_facts_and_unknown_variant_fails():
  assert configs.get_config().variant == 'facts'
  with pytest.raises(ValueError, match='unknown variant'):
    configs.get_config('cifar10')


def test_locked_config_rejects_a_typo():
  config = configs.get_config('smoke')
  config.lock()
  with pytest.raises(AttributeError):
    config.data.kk = 3
  config.data.k = 5  # an existing field stays writable
  assert config.data.k == 5


# ---------------------------------------------------------------------------------------
# Helpers.


def test_truncation_parameters_match_the_effective_cut():
  config = configs.get_config('smoke')
  p = scaling.zipf(config.data.num_items, config.data.beta)
  params = tps.truncation_parameters(p, config)
  k, pi = config.data.k, config.data.pi
  assert params['hard'] == {'k': k}
  for mode, kwargs in params.items():
    (name, value), = kwargs.items()
    extra = {'key': jax.random.PRNGKey(0)} if mode == 'finite_sample' else {}
    scaling_name = 'num_samples' if name == 'generator_samples' else name
    p_syn = scaling.synthetic_distribution(p, mode=mode, **{scaling_name: value}, **extra)
    cut = scaling.effective_k(p, p_syn, pi=pi, mode=mode,
                              num_samples=value if mode == 'finite_sample' else None)
    assert cut == k, (mode, value, cut)
  # top_p keeps exactly the top k items: the same distribution as the hard cut.
  np.testing.assert_allclose(
      scaling.synthetic_distribution(p, mode='top_p', top_p=params['top_p']['top_p']),
      scaling.synthetic_distribution(p, mode='hard', k=k), rtol=1e-12)
  tau = params['temperature']['temperature']
  assert 0 < tau < 1
  # The bisection returns the smallest such temperature: a little lower misses k.
  p_low = scaling.synthetic_distribution(p, mode='temperature', temperature=tau * 0.99)
  assert scaling.effective_k(p, p_low, pi=pi, mode='temperature') < k


def test_truncation_parameters_only_for_the_modes_that_run():
  # At pi=0.9 no temperature reaches the cut; a run without that mode must not fail on it.
  config = configs.get_config('smoke')
  config.data.pi = 0.9
  config.truncation.modes = ('hard', 'top_p')
  p = scaling.zipf(config.data.num_items, config.data.beta)
  assert set(tps.truncation_parameters(p, config)) == {'hard', 'top_p'}
  task = tps.make_task(config, jax.random.PRNGKey(0))
  assert set(task.tasks) == {'hard', 'top_p'}


def test_matched_temperature_fails_when_unreachable():
  p = scaling.zipf(100, 2.0)
  with pytest.raises(ValueError, match='no temperature'):
    tps.matched_temperature(p, k=5, pi=0.9)  # real data dominate every item


@pytest.mark.parametrize('n, expected', [(1, 8), (640, 32), (100_000, 64)])
def test_steps_for(n, expected):
  recipe = ml_collections.ConfigDict(
      {'epochs': 4.0, 'batch_size': 100, 'min_steps': 8, 'max_steps': 64})
  # ceil(4 n / 100) rounded up to a power of two, then clipped to [8, 64].
  assert tps.steps_for(n, recipe) == expected


def test_steps_for_rounds_a_fractional_epoch_up():
  # 1650 examples in batches of 100 take 16.5 batches: the docstring's ceil gives 17 and
  # the next power of two 32 (flooring first would give 16 and drop half an epoch).
  recipe = ml_collections.ConfigDict(
      {'epochs': 1.0, 'batch_size': 100, 'min_steps': 1, 'max_steps': 1024})
  assert tps.steps_for(1650, recipe) == 32
  assert tps.steps_for(1600, recipe) == 16  # exactly 16 batches


def test_recipe_carries_every_training_field_of_the_config():
  # Dropping schedule and weight_decay from _recipe survived the suite: the CIFAR run would
  # have trained at a constant rate without decay.
  config = configs.get_config('cifar100')
  t = config.train
  defaults = training.TrainConfig()
  fields = ('optimizer', 'learning_rate', 'batch_size', 'weight_decay', 'momentum', 'schedule')
  assert all(t[f] != getattr(defaults, f) for f in fields)  # so a dropped field shows
  assert tps._recipe(config, 7) == defaults._replace(steps=7, **{f: t[f] for f in fields})


def test_planned_units_by_hand():
  # The facts variant: 25 sizes x 10 seeds of hard truncation, then each of the 3 soft
  # modes at every 2nd size (13 of them, from the smallest) x truncation.num_seeds = 3.
  config = configs.get_config('facts')
  grid = tps.size_grid(config)
  assert grid.size == 25 and config.truncation.grid_stride == 2
  work = tps.planned_units(config)
  hard = [unit for unit in work if unit[0] == 'hard']
  assert sorted(hard) == sorted((('hard', int(n), r) for n in grid for r in range(10)))
  for mode in ('top_p', 'temperature', 'finite_sample'):
    soft = [unit for unit in work if unit[0] == mode]
    assert len(soft) == 13 * 3
    assert sorted({n for _, n, _ in soft}) == [int(n) for n in grid[0::2]]
    assert {r for _, _, r in soft} == {0, 1, 2}
  assert len(work) == 250 + 3 * 13 * 3
  config.truncation.measure = False  # theory curves only: no soft-mode units
  assert tps.planned_units(config) == hard


def _saved_unit_workdir(config, workdir):
  """`workdir/units` holding the first planned unit, saved under `config`'s fingerprint."""
  name = tps._unit_name(*tps.planned_units(config)[0])
  results.UnitStore(Path(workdir) / 'units').save(
      name, {'loss': 1.0, 'fingerprint': tps.unit_fingerprint(config)})
  return name


@pytest.mark.parametrize('field, value', [
    ('seed', 1),  # another seed draws other mixtures and initialisations
    ('truncation.top_p', 0.8),  # read without match_k: other synthetic data
    ('truncation.temperature', 0.4),
    ('truncation.generator_samples', 50),
    ('train.learning_rate', 0.02),
    ('model.embed_dim', 16),
    ('data.num_answers', 5),
])
def test_saved_unit_of_another_config_is_refused(tmp_path, field, value):
  config = configs.get_config('smoke')
  config.truncation.match_k = False
  name = _saved_unit_workdir(config, tmp_path)
  assert list(tps.check_saved_units(config, tmp_path)) == [name]
  *sections, last = field.split('.')
  changed = copy.deepcopy(config)
  section = changed
  for part in sections:
    section = section[part]
  section[last] = value
  with pytest.raises(ValueError, match=f'unit {name} .* fresh --workdir'):
    tps.check_saved_units(changed, tmp_path)


def test_saved_unit_is_reused_when_only_the_fits_change(tmp_path):
  # The fits and the seed counts are not part of a trained unit (refits are free).
  config = configs.get_config('smoke')
  name = _saved_unit_workdir(config, tmp_path)
  config.fit.num_bootstrap += 1
  config.fit.ideal_replicates = 0
  config.scaling.num_seeds += 1
  assert list(tps.check_saved_units(config, tmp_path)) == [name]


def test_seen_metrics_by_hand():
  # Four items, the first two seen; every expected number is a hand sum.
  weight = np.array([0.4, 0.3, 0.2, 0.1])
  loss = np.array([0.1, 1.0, 2.0, 3.0])
  correct = np.array([True, False, True, False])
  seen = np.array([True, True, False, False])
  expected = {
      'loss': 0.04 + 0.3 + 0.4 + 0.3,
      'error': 0.3 + 0.1,
      'memorizer_error': 0.2 + 0.1,  # the unseen mass: Lemma 1's learner errs exactly there
      'seen_error': 0.3 / 0.7,       # per unit of seen mass, not of all mass
      'seen_loss': (0.04 + 0.3) / 0.7,
      'unseen_loss': (0.4 + 0.3) / 0.3,
  }
  got = tps._seen_metrics(weight, loss, correct, seen)
  assert set(got) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-12, err_msg=name)
  # Everything seen: no unseen mass, and the unseen loss is undefined rather than 0/0.
  every = tps._seen_metrics(weight, loss, correct, np.ones(4, bool))
  assert every['memorizer_error'] == 0.0 and math.isnan(every['unseen_loss'])
  np.testing.assert_allclose(every['seen_error'], 0.4, rtol=1e-12)


def _spy(function, calls):
  """`function`, recording `(args, kwargs, result)` of every call in `calls`."""
  def wrapped(*args, **kwargs):
    out = function(*args, **kwargs)
    calls.append((args, kwargs, out))
    return out
  return wrapped


def test_facts_unit_against_numpy(monkeypatch):
  """`FactsTask.run_unit` against a float64 NumPy recomputation from what it drew, trained
  and evaluated (spied): test weights the real Zipf p, every drawn item seen, the final
  training loss over the last tenth of the steps, and one answer table per seed."""
  config = configs.get_config('smoke')
  config.truncation.modes = ('hard',)
  # Real items first in a mixture, so at pi=3/4 the second half of the draws still holds
  # real items the first half missed.
  config.data.pi = 0.75
  task = tps.FactsTask(config, jax.random.PRNGKey(0))
  mixtures, trained, evaluated = [], [], []
  monkeypatch.setattr(tps.facts, 'make_mixture', _spy(tps.facts.make_mixture, mixtures))
  monkeypatch.setattr(tps.training, 'train', _spy(tps.training.train, trained))
  monkeypatch.setattr(tps, 'per_example_metrics', _spy(tps.per_example_metrics, evaluated))
  seed_a, seed_b = jax.random.PRNGKey(10), jax.random.PRNGKey(11)
  units = [task.run_unit('hard', 40, jax.random.PRNGKey(i), replicate, None)
           for i, replicate in enumerate((seed_a, seed_a, seed_b))]
  assert len(mixtures) == len(trained) == len(evaluated) == 3
  num_items = config.data.num_items
  p = scaling.zipf(num_items, config.data.beta)
  for unit, mixture, train_call, eval_call in zip(units, mixtures, trained, evaluated):
    ids = np.asarray(mixture[2].x).ravel()
    assert ids.size == 40
    seen = np.isin(np.arange(num_items), ids)
    wrong = ~np.asarray(eval_call[2][1])
    loss = np.asarray(eval_call[2][0], np.float64)
    assert unit['num_distinct_items'] == np.unique(ids).size
    np.testing.assert_allclose(unit['memorizer_error'], p[~seen].sum(), rtol=1e-12)
    np.testing.assert_allclose(unit['loss'], np.sum(p * loss), rtol=1e-12)
    np.testing.assert_allclose(unit['error'], np.sum(p * wrong), rtol=1e-12)
    np.testing.assert_allclose(unit['seen_error'], p[seen] @ wrong[seen] / p[seen].sum(),
                               rtol=1e-12)
    losses = np.asarray(train_call[2].losses, np.float64)
    assert unit['steps'] == losses.size == 20
    np.testing.assert_allclose(unit['train_loss_final'], losses[-2:].mean(), rtol=1e-6)
  # The labels evaluated are every item's answer: one table per seed (replicate key),
  # whatever the unit's own key.
  labels = [np.asarray(call[0][3]) for call in evaluated]
  np.testing.assert_array_equal(labels[0], labels[1])
  assert np.mean(labels[0] != labels[2]) > 0.5  # 10 answers: ~90% differ


def test_predictions_per_mode():
  # The smoke setting: beta=2, k=4, pi=1/4, so the paper's breaks are k^beta = 16 and
  # k^beta/pi = 64; every soft mode is matched to the same effective cut.
  config = configs.get_config('smoke')
  p = scaling.zipf(config.data.num_items, config.data.beta)
  parameters = tps.truncation_parameters(p, config)

  def predict(mode):
    (name, value), = parameters[mode].items()
    p_syn = scaling.synthetic_distribution(p, mode=mode, **{name: value})
    return tps.predictions(config, mode, p, p_syn, parameters[mode])

  refined = scaling.refined_breakpoints(2.0, 4, 0.25)
  hard = predict('hard')
  assert hard['k_eff'] == 4 and hard['paper'] == [16.0, 64.0]
  assert hard['ours'] == [refined.n1, refined.n2]
  # top_p of a rank-ordered Zipf is the hard cut at k_eff: the same predictions of ours.
  top_p = predict('top_p')
  assert top_p['k_eff'] == 4 and top_p['ours'] == [refined.n1, refined.n2]
  # Temperature has no plateau: no paper n1, only the end of the synthetic phase.
  temperature = predict('temperature')
  assert temperature['k_eff'] == 4 and math.isnan(temperature['paper'][0])
  assert temperature['paper'][1] == 64.0
  assert math.isnan(temperature['ours'][0]) and temperature['ours'][1] > 0


def test_shared_predicted_breaks():
  nan = float('nan')
  shared, own = tps.shared_predicted_breaks({'hard': [16.0, 64.0], 'top_p': [16.0, 64.0],
                                             'temperature': [nan, 64.0 * (1 + 1e-12)],
                                             'other': [None, 100.0]})
  assert shared == [16.0, 64.0]
  assert own == {'hard': [], 'top_p': [], 'temperature': [], 'other': [100.0]}
  # Unmatched modes (k_eff differs): nothing shared, each mode keeps its own breaks.
  assert tps.shared_predicted_breaks({'hard': [16.0, 64.0], 'top_p': [25.0, 100.0]}) == (
      [], {'hard': [16.0, 64.0], 'top_p': [25.0, 100.0]})


def test_modes_figure_draws_a_shared_break_once_and_marks_each_modes_fit():
  from matplotlib.colors import to_hex  # pylint: disable=g-import-not-at-top
  config = configs.get_config('smoke')
  config.truncation.modes = ('hard', 'top_p', 'temperature')
  n = np.geomspace(10, 1e4, 30)
  theory = {mode: n ** -0.5 for mode in config.truncation.modes}
  theory['n'] = n
  predictions = {mode: {'parameter': 'x', 'value': 1.0, 'k_eff': 4, 'paper': paper}
                 for mode, paper in (('hard', [16.0, 64.0]), ('top_p', [16.0, 64.0]),
                                     ('temperature', [float('nan'), 64.0]))}
  # hard's and top_p's fitted breaks nearly coincide.
  fits = {('theory', 'hard'): {'breaks': [20.0, 80.0]},
          ('theory', 'top_p'): {'breaks': [20.001, 80.001]},
          ('theory', 'temperature'): {'breaks': [300.0]}}
  fig = tps._modes_figure(config, [], fits, theory, predictions)
  ax = fig.axes[0]
  solid = [(line.get_xdata()[0], to_hex(line.get_color())) for line in ax.lines
           if line.get_linestyle() == '-' and list(line.get_ydata()) == [0, 1]]
  # Every mode predicts 64 and two predict 16: each drawn once, in black, not in a mode's
  # color over another's.
  assert sorted(solid) == [(16.0, to_hex('k')), (64.0, to_hex('k'))]
  legend = [text.get_text() for text in ax.get_legend().get_texts()]
  assert 'predicted break (shared: same k_eff)' in legend
  assert 'predicted break' not in legend  # no mode has a break of its own here
  # One marker row per mode at the top of the axes: coincident fitted breaks stay apart.
  markers = {to_hex(line.get_color()): (list(line.get_xdata()), set(line.get_ydata()))
             for line in ax.lines if line.get_marker() == 'v'}
  assert {color: xs for color, (xs, _) in markers.items()} == {
      to_hex('C0'): [20.0, 80.0], to_hex('C1'): [20.001, 80.001], to_hex('C2'): [300.0]}
  heights = [ys for _, ys in markers.values()]
  assert all(len(ys) == 1 for ys in heights) and len(set.union(*heights)) == 3


@pytest.mark.parametrize('num_breaks, slopes, expected', [
    (2, [0.5, 0.1, 0.4], True),    # a plateau between two faster decays
    (2, [0.5, 0.3, 0.2], False),   # flatter than the first, not than the last segment
    (2, [0.2, 0.3, 0.5], False),
    (1, [0.5, 0.1], False),
])
def test_three_phases(num_breaks, slopes, expected):
  assert tps._three_phases(num_breaks, np.array(slopes)) is expected


def _hand_fit(**extra):
  return dict({'ok': True, 'num_breaks': 2, 'breaks': [120.0, 1800.0],
               'break_ci': [[100.0, 150.0], [1500.0, 2500.0]],
               'breaks_on_edge': [False, True], 'segment_slopes': np.array([0.5, 0.1, 0.4]),
               'three_phases': True}, **extra)


def test_breakpoint_row_of_a_hand_made_fit():
  boot = {'n1_median': 125.0, 'n1_lo': 90.0, 'n1_hi': 160.0, 'n1_found': 1.0,
          'n2_median': 1700.0, 'n2_lo': 1200.0, 'n2_hi': 2600.0, 'n2_found': 0.75,
          'three_phases': 0.5}
  fit = _hand_fit(seed_bootstrap=boot)
  # Temperature: no paper n1, so the fit is paired with our (n1, n2), and so is the
  # theory fit's (pairing it with the paper's would lose its first break).
  prediction = {'k_eff': 4, 'parameter': 'temperature', 'value': 0.3,
                'paper': [math.nan, 1000.0], 'ours': [100.0, 2000.0]}
  row = tps.breakpoint_row('measured_loss', 'temperature', fit, prediction,
                           {'breaks': [110.0, 1900.0]}, max_breaks=2)
  assert (row['fit_break1'], row['fit_break1_lo'], row['fit_break1_hi']) == (120.0, 100.0, 150.0)
  assert (row['fit_break2'], row['fit_break2_lo'], row['fit_break2_hi']) == (1800.0, 1500.0, 2500.0)
  assert [row['fit_break1_on_edge'], row['fit_break2_on_edge']] == [False, True]
  assert [row[f'segment_slope{j}'] for j in range(3)] == [0.5, 0.1, 0.4]
  assert [row['fit_n1'], row['fit_n2']] == [120.0, 1800.0]
  assert [row['theoryfit_n1'], row['theoryfit_n2']] == [110.0, 1900.0]
  np.testing.assert_allclose([row['ratio_ours_n1'], row['ratio_ours_n2']], [1.2, 0.9])
  np.testing.assert_allclose(row['ratio_theoryfit_n1'], 120.0 / 110.0)
  assert math.isnan(row['ratio_paper_n1']) and row['within_2x_paper_n1'] is None
  np.testing.assert_allclose(row['ratio_paper_n2'], 1.8)
  assert row['within_2x_paper_n2'] is True
  for name, value in boot.items():
    assert row[f'seedboot_{name}'] == value, name
  # No seed bootstrap, one break: the missing cells are NaN, not absent.
  fit = _hand_fit(num_breaks=1, breaks=[120.0], break_ci=[[100.0, 150.0]],
                  breaks_on_edge=[False], segment_slopes=np.array([0.5, 0.1]))
  row = tps.breakpoint_row('measured_loss', 'hard', fit,
                           dict(prediction, paper=[100.0, 400.0]), None, max_breaks=2)
  assert row['fit_break1_lo'] == 100.0 and math.isnan(row['fit_break2_lo'])
  assert row['fit_break2_on_edge'] is None and 'theoryfit_n1' not in row
  assert row['segment_slope1'] == 0.1 and math.isnan(row['segment_slope2'])
  assert all(math.isnan(row[f'seedboot_n1_{stat}']) for stat in ('median', 'lo', 'hi'))


def test_break_intervals_prefer_the_seed_bootstrap():
  boot = {'n1_lo': 90.0, 'n1_hi': 160.0, 'n2_lo': 1200.0, 'n2_hi': 2600.0}
  intervals, source = tps._break_intervals(_hand_fit(seed_bootstrap=boot))
  assert source == 'seeds'
  np.testing.assert_array_equal(intervals, [[90.0, 160.0], [1200.0, 2600.0]])
  intervals, source = tps._break_intervals(_hand_fit())
  assert source == 'residuals'
  np.testing.assert_array_equal(intervals, [[100.0, 150.0], [1500.0, 2500.0]])


def test_break_summary_by_hand():
  # Six refits; n1 found in 5, n2 in 2. ci_level 0.5 is the 25th-75th percentile, which
  # by linear interpolation over 1..5 is 2..4, over (12, 50) is 21.5..40.5.
  matched = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, 12.0], [4.0, 50.0],
                      [5.0, np.nan], [np.nan, np.nan]])
  out = tps._break_summary(matched, 0.5, predicted=[2.5, 20.0])
  expected = {'n1_found': 5 / 6, 'n1_median': 3.0, 'n1_lo': 2.0, 'n1_hi': 4.0,
              # within 2x of 2.5 is [1.25, 5]: 2, 3, 4, 5, over all six refits
              'n1_within_2x': 4 / 6,
              'n2_found': 2 / 6, 'n2_median': 31.0, 'n2_lo': 21.5, 'n2_hi': 40.5,
              'n2_within_2x': 1 / 6}  # 12 is (0.6x), 50 is not (2.5x)
  assert set(out) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(out[name], value, rtol=1e-12, err_msg=name)
  # Nothing found for n1 (all NaN); n2 found 1 and 2, and only 1 is within 2x of 0.9.
  out = tps._break_summary(matched[:, ::-1][[0, 1, 5]], 0.95, predicted=[math.nan, 0.9])
  assert out['n1_found'] == 0.0 and math.isnan(out['n1_median']) and math.isnan(out['n1_lo'])
  assert math.isnan(out['n1_within_2x']) and out['n2_within_2x'] == 1 / 3
  assert 'n1_within_2x' not in tps._break_summary(matched, 0.5)


def test_seed_bootstrap_resamples_whole_seeds(monkeypatch):
  # Seed r's curve is the indicator of size r, so a resample's mean curve times the seed
  # count is how often each seed was drawn (to the power sqrt(R / (R - 1)) that restores
  # the spread, `_resampled_mean`). The refit is stubbed: its "break" is the number of
  # draws of seed 0, so the summary of the resamples can be checked by hand.
  config = configs.get_config('smoke')
  config.fit.seed_bootstrap = 200
  config.fit.seed_bootstrap_min_seeds = 4
  curves = []
  power = math.sqrt(4 / 3)

  def draws_of(curve):
    return (4 * np.asarray(curve)) ** (1 / power)

  def fake_refit(config, x, resamples, predicted):
    curves.extend(resamples)
    return [([1.0 + draws_of(c[0]), math.nan], draws_of(c[0]) > 1.5) for c in resamples]

  monkeypatch.setattr(tps, '_refit', fake_refit)
  out = tps.seed_bootstrap(config, np.arange(1.0, 5.0), np.eye(4), [1.0, 2.0])
  counts = np.round(draws_of(curves)).astype(int)
  np.testing.assert_allclose(draws_of(curves), counts, atol=1e-12)
  assert counts.shape == (200, 4) and np.all(counts.sum(axis=1) == 4)
  # Draws with replacement: ~Binomial(4, 1/4) per seed, so resamples differ.
  assert len({tuple(c) for c in counts}) > 10
  np.testing.assert_allclose(counts.mean(axis=0), 1.0, atol=0.25)
  assert out['replicates'] == 200 and out['n1_found'] == 1.0 and out['n2_found'] == 0.0
  assert out['n1_lo'] < out['n1_median'] < out['n1_hi']
  np.testing.assert_allclose(out['three_phases'], np.mean(counts[:, 0] > 1.5))
  # Every resample kept in draw order: the rows it drew and its own breaks.
  drawn = np.array(out['resample_seeds'])
  assert drawn.shape == (200, 4)
  np.testing.assert_array_equal([np.bincount(d, minlength=4) for d in drawn], counts)
  breaks = np.array(out['resample_breaks'])
  np.testing.assert_array_equal(breaks[:, 0], 1.0 + counts[:, 0])
  assert np.all(np.isnan(breaks[:, 1]))
  # Fewer seeds than seed_bootstrap_min_seeds: no interval; nor with one seed, whatever
  # the config says.
  assert tps.seed_bootstrap(config, np.arange(1.0, 4.0), np.eye(3), [1.0, 2.0]) is None
  config.fit.seed_bootstrap_min_seeds = 1
  assert tps.seed_bootstrap(config, np.arange(1.0, 4.0), np.ones((1, 3)), [1.0, 2.0]) is None


@pytest.mark.parametrize('num_seeds', [4, 10])
def test_resampled_mean_curves_spread_as_a_fresh_mean_of_the_seeds_would(num_seeds):
  # The mean of R seeds drawn with replacement varies by (R - 1) / R of the variance of the
  # mean of R fresh seeds: the seed bootstrap's 95% intervals covered the true breaks in
  # 78% / 83% of simulated fits at R = 4. Restored, the spread is s / sqrt(R) (s the
  # seeds' sample std), here in log space where the fits read the curves.
  rng = np.random.default_rng(num_seeds)
  per_seed = np.exp(0.01 * rng.standard_normal((num_seeds, 3))) * [1.0, 2.0, 3.0]
  per_seed[:, 2] = 0.0  # a size every seed got exactly right stays 0
  draws = rng.integers(num_seeds, size=(20000, num_seeds))
  curves = np.array([tps._resampled_mean(per_seed, rows) for rows in draws])
  assert np.all(curves[:, 2] == 0) and np.all(curves[:, :2] > 0)
  spread = np.log(curves[:, :2]).std(axis=0)
  expected = np.log(per_seed[:, :2]).std(axis=0, ddof=1) / math.sqrt(num_seeds)
  np.testing.assert_allclose(spread, expected, rtol=0.03)  # 20000 draws: ~0.5% MC error
  # Drawing every seed once gives the mean curve back.
  np.testing.assert_allclose(tps._resampled_mean(per_seed, np.arange(num_seeds)),
                             per_seed.mean(axis=0), rtol=1e-12)


def test_seed_bootstrap_draws_depend_on_the_seed_only(monkeypatch):
  # breakpoint_sweep pairs its cuts' resamples: the same seed and seed count must draw the
  # same rows whatever the curves, and a failed refit keeps its place (NaN breaks) in the
  # per-resample list while the summary counts only the fits that succeeded.
  config = configs.get_config('smoke')
  config.fit.seed_bootstrap, config.fit.seed_bootstrap_min_seeds = 30, 3

  def fake_refit(config, x, resamples, predicted):
    return [None if i % 3 == 0 else ([float(c.sum()), 2.0], True)
            for i, c in enumerate(resamples)]

  monkeypatch.setattr(tps, '_refit', fake_refit)
  rng = np.random.default_rng(7)
  one = tps.seed_bootstrap(config, np.arange(1.0, 6.0), rng.random((5, 5)), [1.0, 2.0])
  two = tps.seed_bootstrap(config, np.arange(1.0, 6.0), rng.random((5, 5)), [1.0, 2.0])
  assert one['resample_seeds'] == two['resample_seeds']
  assert one['replicates'] == 20
  breaks = np.array(one['resample_breaks'])
  assert breaks.shape == (30, 2)
  failed = np.arange(30) % 3 == 0
  assert np.all(np.isnan(breaks[failed])) and np.all(np.isfinite(breaks[~failed]))
  config.seed += 1
  other = tps.seed_bootstrap(config, np.arange(1.0, 6.0), rng.random((5, 5)), [1.0, 2.0])
  assert other['resample_seeds'] != one['resample_seeds']


def _small_mixture(num_items=512, beta=2.0, k=4, pi=0.25):
  p = scaling.zipf(num_items, beta)
  p_syn = scaling.synthetic_distribution(p, mode='hard', k=k)
  return p, scaling.mixture(p, p_syn, pi)


def _ideal_learner_setting(replicates):
  """The smoke config at 16 sizes, a small mixture, and the fit of its exact E(n).

  The ideal learner draws a fresh sample per size (independent noise along the curve),
  which moves a break of the smoke grid's 10 points by ~15% even at thousands of seeds:
  16 points pin it.
  """
  config = configs.get_config('smoke')
  config.fit.ideal_replicates = replicates
  config.scaling.num_points = 16
  p, q = _small_mixture()
  sizes = tps.size_grid(config)
  theory = tps.fit_curve(config, sizes, scaling.expected_error(sizes.astype(float), p, q),
                         bootstrap=False)
  assert theory['num_breaks'] == 2
  return config, p, q, sizes, theory


def test_ideal_learner_resolution_converges_to_the_theory_fit():
  # Averaged over many seeds the Monte Carlo curve is the exact E(n), so every replicate's
  # breaks must sit where the same fit puts the exact curve's.
  config, p, q, sizes, theory = _ideal_learner_setting(replicates=6)
  out = tps.ideal_learner_resolution(config, sizes, p, q, list(theory['breaks']),
                                     num_seeds=4000, key=jax.random.PRNGKey(0))
  assert out['replicates'] == 6 and out['num_seeds'] == 4000 and out['three_phases'] == 1.0
  for j, label in enumerate(('n1', 'n2')):
    assert out[f'{label}_found'] == 1.0
    np.testing.assert_allclose(out[f'{label}_median'], theory['breaks'][j], rtol=0.1)
    assert out[f'{label}_lo'] <= out[f'{label}_median'] <= out[f'{label}_hi']
    assert out[f'{label}_within_2x'] == 1.0
  # Against a prediction 10x off, no replicate is within 2x.
  far = tps.ideal_learner_resolution(config, sizes, p, q, [10 * b for b in theory['breaks']],
                                     num_seeds=200, key=jax.random.PRNGKey(0))
  assert far['n1_within_2x'] == far['n2_within_2x'] == 0.0
  # Few seeds spread the breaks out, and a fit that can only place breaks inside the
  # sizes often loses n2 (this grid ends 2.5x above it); off when replicates is 0.
  noisy = tps.ideal_learner_resolution(config, sizes, p, q, list(theory['breaks']),
                                       num_seeds=10, key=jax.random.PRNGKey(1))
  assert noisy['n1_hi'] / noisy['n1_lo'] > out['n1_hi'] / out['n1_lo']
  assert noisy['n2_found'] < out['n2_found']
  config.fit.ideal_replicates = 0
  assert tps.ideal_learner_resolution(config, sizes, p, q, [1.0, 2.0], num_seeds=3,
                                      key=jax.random.PRNGKey(0)) is None


def test_ideal_learner_by_seeds_narrows_towards_the_theory_fit():
  # A power analysis: the measured seed count's row is kept as given, every other count is
  # simulated afresh from its own key, rows come in increasing seed count, and with more
  # seeds the fits find both breaks, around the fit of the exact E(n).
  config, p, q, sizes, theory = _ideal_learner_setting(replicates=8)
  predicted = list(theory['breaks'])
  key = jax.random.PRNGKey(3)
  measured = tps.ideal_learner_resolution(config, sizes, p, q, predicted, num_seeds=5, key=key)
  config.fit.ideal_seed_counts = (2000, 5, 50)  # 5 is the measured count: not redrawn
  rows = tps.ideal_learner_by_seeds(config, sizes, p, q, predicted, measured=measured, key=key)
  assert [row['num_seeds'] for row in rows] == [5, 50, 2000]
  assert [row['measured'] for row in rows] == [True, False, False]
  assert {k: v for k, v in rows[0].items() if k != 'measured'} == measured
  np.testing.assert_equal(
      rows[1], dict(tps.ideal_learner_resolution(config, sizes, p, q, predicted, num_seeds=50,
                                                 key=jax.random.fold_in(key, 50)),
                    measured=False))
  # 5 seeds: most replicates' fits miss a break; thousands find both, near the theory fit.
  assert rows[0]['three_phases'] < 0.5 and rows[0]['n2_found'] < 0.5
  assert rows[2]['three_phases'] == rows[2]['n1_found'] == rows[2]['n2_found'] == 1.0
  np.testing.assert_allclose(rows[2]['n1_median'], theory['breaks'][0], rtol=0.1)
  np.testing.assert_allclose(rows[2]['n2_median'], theory['breaks'][1], rtol=0.2)
  config.fit.ideal_seed_counts = ()
  assert tps.ideal_learner_by_seeds(config, sizes, p, q, predicted, measured=measured,
                                    key=key) == [dict(measured, measured=True)]


def test_per_example_metrics_against_numpy():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 5)).astype(np.float32)
  apply_fn = lambda params, x: x @ params
  x = rng.normal(size=(37, 3)).astype(np.float32)
  y = rng.integers(0, 5, size=37).astype(np.int32)
  loss, correct = tps.per_example_metrics(apply_fn, jnp.asarray(w), x, y, block_size=16)
  logits = x.astype(np.float64) @ w.astype(np.float64)
  log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  np.testing.assert_allclose(loss, log_z - logits[np.arange(37), y], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(correct, logits.argmax(1) == y)
  assert loss.shape == (37,) and correct.dtype == bool


def test_item_mlp_leaves_unseen_items_untouched():
  """Only items in the training data move their embedding row (Lemma 1's learner)."""
  model = tps.ItemMLP(num_items=12, embed_dim=4, embed_init=0.01, hidden_sizes=(8,),
                      num_classes=3)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))['params']
  apply_fn = lambda p, x: model.apply({'params': p}, x)
  seen = np.array([0, 3, 5])
  x = np.repeat(seen, 4).astype(np.float32)[:, None]
  y = np.repeat(np.array([2, 0, 1]), 4).astype(np.int32)
  trained = training.train(apply_fn, params, x, y, config=training.TrainConfig(steps=200,
                           batch_size=8, learning_rate=0.05), key=jax.random.PRNGKey(1),
                           num_classes=3)
  before = np.asarray(params['Embed_0']['embedding'])
  after = np.asarray(trained.params['Embed_0']['embedding'])
  unseen = np.setdiff1d(np.arange(12), seen)
  np.testing.assert_array_equal(after[unseen], before[unseen])
  assert np.all(np.abs(after[seen] - before[seen]).sum(1) > 0)
  logits = np.asarray(apply_fn(trained.params, np.arange(12, dtype=np.float32)[:, None]))
  np.testing.assert_array_equal(logits[seen].argmax(1), [2, 0, 1])


# ---------------------------------------------------------------------------------------
# End to end.


def _run(config, workdir):
  results.save_config(config, workdir)  # what main() does before run()
  return tps.run(config, workdir)


def _check_outputs(workdir: Path, out):
  for name in ('config.json', 'units.csv', 'curve.csv', 'breakpoints.csv', 'results.json',
               'three_phase.png', 'three_phase.pdf', 'truncation_modes.png',
               'truncation_modes.pdf'):
    assert (workdir / name).is_file() and (workdir / name).stat().st_size > 0, name
  rows = results.read_csv(workdir / 'units.csv')
  assert len(rows) == out['num_units'] > 0
  for row in rows:
    assert 0.0 <= row['error'] <= 1.0 and row['loss'] > 0 and math.isfinite(row['loss'])
    assert 0.0 <= row['memorizer_error'] <= 1.0
  curves = {row['curve'] for row in results.read_csv(workdir / 'breakpoints.csv')}
  assert {'theory', 'measured_loss', 'measured_error'} <= curves


def _untimed(rows):
  return [{k: v for k, v in row.items() if k != 'seconds_mean'} for row in rows]


@pytest.mark.slow
def test_facts_smoke_runs_and_resumes(tmp_path):
  config = configs.get_config('smoke')
  # Eight seed-bootstrap resamples, not the smoke's 4: of 4, the two that found n1 drew the
  # same seeds ([0, 0, 0]), and an interval from one curve has no width to check.
  config.fit.seed_bootstrap = 8
  out = _run(config, tmp_path)
  _check_outputs(tmp_path, out)
  num_units = out['num_units']
  assert len(out['units_computed']) == num_units
  # Hard-truncation units for every size and seed, plus the measured soft modes.
  grid = tps.size_grid(config)
  assert (sum(name.startswith('hard-') for name in out['units_computed'])
          == grid.size * config.scaling.num_seeds)
  assert {name.split('-n')[0] for name in out['units_computed']} == set(config.truncation.modes)
  # The exact theory curve has two breaks; the summary reports them against the paper's.
  theory = next(row for row in out['breakpoints']
                if row['curve'] == 'theory' and row['mode'] == 'hard')
  assert theory['num_breaks'] == 2 and theory['three_phases']
  assert out['summary']['predicted_paper'] == [16.0, 64.0]
  # The smoke grid ends 8x above k^beta/pi, too soon for E(n)'s slow second bend: the fit
  # holds n2 at the top of the sizes' range, and the row says it is censored.
  assert [theory['fit_break1_on_edge'], theory['fit_break2_on_edge']] == [False, True]
  # ... and the ideal learner measured at the same seed count gives the resolution.
  ideal = out['summary']['ideal_learner']
  assert ideal['num_seeds'] == config.scaling.num_seeds
  assert ideal['replicates'] == config.fit.ideal_replicates
  assert theory['ideal_n2_within_2x'] == ideal['n2_within_2x']
  # ... and at more seeds (the power analysis), the measured count's row first.
  by_seeds = results.read_csv(tmp_path / 'ideal_learner.csv')
  assert [row['num_seeds'] for row in by_seeds] == [config.scaling.num_seeds,
                                                    *config.fit.ideal_seed_counts]
  assert [row['measured'] for row in by_seeds] == [True, False]
  assert by_seeds[0]['n2_within_2x'] == ideal['n2_within_2x']
  assert out['summary']['ideal_learner_by_seeds'][1]['num_seeds'] == 6
  # Three seeds: the headline curves carry a seed-bootstrap interval.
  loss = next(row for row in out['breakpoints']
              if row['curve'] == 'measured_loss' and row['mode'] == 'hard')
  assert 'seedboot_n2_median' in loss and 'ratio_theoryfit_n2' in loss
  # ... from seeds drawn with replacement (resampling nothing would give lo == hi).
  assert loss['seedboot_n1_found'] > 0
  assert loss['seedboot_n1_lo'] < loss['seedboot_n1_hi']
  # ... and the returned output (not results.json) keeps each resample, by replicate id.
  boots = {(b['curve'], b['mode']): b for b in out['seed_bootstrap']}
  boot = boots[('measured_loss', 'hard')]
  drawn = np.array(boot['replicates'])
  assert drawn.shape == (config.fit.seed_bootstrap, config.scaling.num_seeds)
  assert set(drawn.ravel()) <= set(range(config.scaling.num_seeds))
  assert np.array(boot['breaks']).shape == (config.fit.seed_bootstrap, 2)
  np.testing.assert_equal(boots[('measured_error', 'hard')]['replicates'], drawn)
  assert 'seed_bootstrap' not in results.read_json(tmp_path / 'results.json')
  # Hard truncation also fits the unseen mass of the samples (the ideal learner's curve
  # on the model's own draws); the summary quotes the loss and error rows' breaks.
  hard_rows = {row['curve']: row for row in out['breakpoints'] if row['mode'] == 'hard'}
  assert set(hard_rows) == {'theory', 'measured_loss', 'measured_error',
                            'measured_memorizer_error'}
  for metric in ('loss', 'error'):
    np.testing.assert_equal(out['summary'][f'fitted_{metric}'],
                            [hard_rows[f'measured_{metric}'][f'fit_{j}'] for j in ('n1', 'n2')])
  # The curve's standard errors over seeds, against float64 NumPy (unbiased variance).
  units = results.read_csv(tmp_path / 'units.csv')
  for row in out['curve']:
    for metric in ('loss', 'error'):
      values = np.array([u[metric] for u in units
                         if u['mode'] == row['mode'] and u['n'] == row['n']])
      assert values.size == row['num_seeds']
      if values.size > 1:
        sem = np.sqrt(np.sum((values - values.mean()) ** 2) / (values.size - 1) / values.size)
        np.testing.assert_allclose(row[f'{metric}_sem'], sem, rtol=1e-10)
  # Each mode's theory column is its own exact E(n) (temperature's differs from hard's).
  data = config.data
  p = scaling.zipf(data.num_items, data.beta)
  for mode, p_syn in (
      ('hard', scaling.synthetic_distribution(p, mode='hard', k=data.k)),
      ('temperature', scaling.synthetic_distribution(
          p, mode='temperature', temperature=out['truncation']['temperature']['value']))):
    rows = [row for row in out['curve'] if row['mode'] == mode]
    np.testing.assert_allclose(
        [row['theory_error'] for row in rows],
        scaling.expected_error(np.array([row['n'] for row in rows], float), p,
                               scaling.mixture(p, p_syn, data.pi)), rtol=1e-10)
  # Learning happens: the largest mixture beats the smallest one.
  hard = [row for row in out['curve'] if row['mode'] == 'hard']
  assert hard[-1]['error_mean'] < hard[0]['error_mean']

  # A rerun trains nothing and reproduces the tables.
  again = _run(config, tmp_path)
  assert again['units_computed'] == [] and again['num_units'] == num_units
  assert again['curve'] == out['curve']
  # An interrupted run resumes: only the missing units are trained again (a soft-mode unit
  # and every first seed of the hard grid) ...
  store = results.UnitStore(tmp_path / 'units')
  lost = [name for name in store.names() if name.startswith('hard-') and name.endswith('-r0')]
  lost.append(next(name for name in sorted(store.names()) if not name.startswith('hard-')))
  for name in lost:
    store.path(name).unlink()
  resumed = _run(config, tmp_path)
  assert sorted(resumed['units_computed']) == sorted(lost)
  # ... and its tables equal the uninterrupted run's, bit for bit (the means over seeds
  # must add the seeds in one order, however many units were saved before).
  assert repr(_untimed(resumed['curve'])) == repr(_untimed(out['curve']))
  assert repr(_untimed(resumed['breakpoints'])) == repr(_untimed(out['breakpoints']))
  assert repr(resumed['summary']) == repr(out['summary'])
  # A refit without the ideal learner trains nothing and leaves no earlier run's
  # ideal_learner.csv beside its results (it used to stay, describing the old config).
  refit = copy.deepcopy(config)
  refit.fit.ideal_replicates = 0
  assert _run(refit, tmp_path)['units_computed'] == []
  assert not (tmp_path / 'ideal_learner.csv').exists()
  # Units trained under another recipe are refused, not silently mixed in, and before
  # any new unit is trained (a wider grid would add some).
  config.train.learning_rate *= 2
  config.scaling.grid_above *= 2
  before = len(store)
  with pytest.raises(ValueError, match='fresh --workdir'):
    tps.run(config, tmp_path)
  assert len(store) == before


def test_a_diverged_unit_is_refused_and_not_saved(tmp_path):
  # Its NaN loss was saved as a finished unit: the seed bootstrap then failed on it (a
  # TypeError) on every rerun, or, without it, its size silently left the fit.
  config = configs.get_config('smoke')
  config.train.optimizer = 'sgd'
  config.train.learning_rate = 1e20
  config.output.progress = False
  with pytest.raises(ValueError, match=r'unit (\S+): training diverged .* not saved; '
                                       r'lower config\.train\.learning_rate \(1e\+20\)'
                     ) as error:
    tps.run(config, tmp_path)
  name = str(error.value).split(':')[0].split()[1]
  saved = list(tps.check_saved_units(config, tmp_path))
  assert name in {tps._unit_name(*unit) for unit in tps.planned_units(config)}
  assert name not in saved


def test_fit_curve_names_the_sizes_it_leaves_out(caplog):
  config = configs.get_config('smoke')
  x = np.geomspace(10, 1e4, 12)
  y = 2.0 * x ** -0.5
  y[[3, 7]] = (0.0, np.nan)
  with caplog.at_level('WARNING'):
    fit = tps.fit_curve(config, x, y, bootstrap=False)
  assert fit['ok']
  assert f"leaves out the sizes {[float(x[3]), float(x[7])]}" in caplog.text, caplog.text


def test_seed_bootstrap_leaves_out_the_sizes_fit_curve_leaves_out():
  # fit_curve leaves a size out of the fit when its mean is 0 (every seed got it exactly
  # right); a resampled mean is 0 there too, and the refits, which kept the size, all
  # failed: the seed bootstrap returned None while the point fit stood. A size that only
  # some seeds got right failed just the resamples that drew those seeds.
  config = configs.get_config('smoke')
  config.fit.seed_bootstrap = 8
  x = np.geomspace(10, 1e4, 12)
  rng = np.random.default_rng(0)
  per_seed = 2.0 * x ** -0.5 * np.exp(0.02 * rng.standard_normal((3, x.size)))
  per_seed[:, -1] = 0.0
  per_seed[0, -2] = 0.0
  assert tps.fit_curve(config, x, per_seed.mean(axis=0))['ok']
  out = tps.seed_bootstrap(config, x, per_seed, [100.0, 1000.0])
  assert out is not None and out['replicates'] == 8
  # Each refit is the fit of fit_curve on its resampled curve.
  (refit,) = tps._refit(config, x, [per_seed[0]], [100.0, 1000.0])
  alone = tps.fit_curve(config, x, per_seed[0], bootstrap=False)
  assert refit[0] == scaling.match_breaks(alone['breaks'], [100.0, 1000.0])


def test_soft_mode_theory_is_fitted_at_its_measured_sizes(tmp_path):
  # With grid_stride 2 (the facts variant's setting) a soft mode is measured at every 2nd
  # size; its theory row must be fitted at those sizes, like for like with its measured
  # curves, not on the full grid. Saved units stand in for training: run() only fits.
  config = configs.get_config('smoke')
  config.scaling.num_points = 20
  config.truncation.grid_stride = 2
  config.truncation.modes = ('hard', 'top_p')
  config.fit.ideal_replicates = 0
  grid = tps.size_grid(config)
  assert grid.size == 20
  store = results.UnitStore(tmp_path / 'units')
  rng = np.random.default_rng(0)
  for mode, n, replicate in tps.planned_units(config):
    error = float(0.9 * (n / grid[0]) ** -0.4 * (1 + 0.02 * rng.standard_normal()))
    store.save(tps._unit_name(mode, n, replicate), {
        'mode': mode, 'n': int(n), 'replicate': replicate, 'loss': 2 * error,
        'error': error, 'memorizer_error': error, 'seen_error': 0.0, 'unseen_loss': 1.0,
        'seen_loss': 0.1, 'train_loss_final': 0.1, 'num_distinct_items': int(n),
        'steps': 20, 'seconds': 0.0, 'fingerprint': tps.unit_fingerprint(config)})
  out = _run(config, tmp_path)
  assert out['units_computed'] == []
  rows = [row for row in out['curve'] if row['mode'] == 'top_p']
  sizes = np.array([row['n'] for row in rows])
  np.testing.assert_array_equal(sizes, grid[::2])
  expected = tps.fit_curve(config, sizes, [row['theory_error'] for row in rows],
                           bootstrap=False)
  assert expected['ok'] and expected['num_breaks'] >= 1
  theory = next(row for row in out['breakpoints']
                if row['curve'] == 'theory' and row['mode'] == 'top_p')
  assert theory['num_breaks'] == expected['num_breaks']
  np.testing.assert_allclose(
      [theory[f'fit_break{j + 1}'] for j in range(expected['num_breaks'])],
      expected['breaks'], rtol=1e-12)


@pytest.mark.parametrize('field, value, message', [
    ('data.k', 300, r'config\.data\.k must be an integer in \[1, config\.data\.num_items\)'),
    ('scaling.num_seeds', 0, r'config\.scaling\.num_seeds must be an integer >= 1'),
    ('scaling.num_points', 5, r'config\.scaling\.num_points must be >= 10'),
])
def test_run_names_the_bad_field(tmp_path, field, value, message):
  config = configs.get_config('smoke')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    tps.run(config, tmp_path)


def _no_work(*args, **kwargs):
  raise AssertionError('data were loaded or a unit was trained before the config check')


@pytest.mark.parametrize('variant, field, value, message', [
    ('smoke', 'seed', -1, r'config\.seed must be an integer in \[0, 4294967295\]'),
    ('smoke', 'seed', 2**32, r'config\.seed must be an integer in \[0, 4294967295\]'),
    ('smoke', 'data.beta', 1.0, r'config\.data\.beta must be > 1'),
    ('smoke', 'data.pi', 0.0, r'config\.data\.pi must be in \(0, 1\]'),
    ('smoke', 'data.name', 'cifar', r'config\.data\.name'),
    ('smoke', 'model.name', 'resnet18', r'config\.model\.name must be one of'),
    ('smoke', 'model.embed_dim', 0, r'config\.model\.embed_dim must be an integer >= 1'),
    ('smoke', 'model.hidden_sizes', (8, 0), r'config\.model\.hidden_sizes\[1\]'),
    ('facts_lm_smoke', 'model.num_heads', 3, r'config\.model\.d_model=16 must be a multiple'),
    ('cifar100_smoke', 'data.num_items', 50, r'config\.data\.num_items must be 100'),
    ('cifar100_smoke', 'train.bn_batches', 0, r'config\.train\.bn_batches must be an integer >= 1'),
    ('smoke', 'train.learning_rate', -1.0, r'config\.train\.learning_rate must be finite'),
    ('smoke', 'train.momentum', 0.5, r'config\.train\.momentum=0\.5 is used only by'),
    ('smoke', 'train.optimizer', 'adamax', r'config\.train\.optimizer must be one of'),
    ('smoke', 'train.epochs', 0.0, r'config\.train\.epochs must be > 0'),
    ('smoke', 'train.max_steps', 5, r'max_steps=5 must be >= config\.train\.min_steps=20'),
    ('smoke', 'train.eval_block_size', 0, r'config\.train\.eval_block_size'),
    ('smoke', 'scaling.grid_below', 0.0, r'config\.scaling\.grid_below must be > 0'),
    ('smoke', 'scaling.grid_above', -1.0, r'config\.scaling\.grid_above must be > 0'),
    ('smoke', 'scaling.theory_points', 0, r'config\.scaling\.theory_points'),
    ('smoke', 'scaling.grid_above', 1e-3, r'config\.scaling\.num_points=10 gives only'),
    ('smoke', 'fit.max_breaks', -1, r'config\.fit\.max_breaks must be an integer in \[0, 3\]'),
    ('smoke', 'fit.max_breaks', 4, r'config\.fit\.max_breaks must be an integer in \[0, 3\]'),
    ('smoke', 'fit.ci_level', 95.0, r'config\.fit\.ci_level must be in \(0, 1\)'),
    ('smoke', 'fit.bootstrap', 'block', r'config\.fit\.bootstrap'),
    ('smoke', 'fit.num_bootstrap', -1, r'config\.fit\.num_bootstrap'),
    ('smoke', 'fit.smoothness_range', (1.0, 0.5), r'config\.fit\.smoothness_range\[1\]'),
    ('smoke', 'fit.initial_smoothness', 2.0, r'config\.fit\.initial_smoothness'),
    ('smoke', 'fit.min_break_ratio', 1.0, r'config\.fit\.min_break_ratio must be > 1'),
    ('smoke', 'fit.sigma_floor', 0.0, r'config\.fit\.sigma_floor must be > 0'),
    ('smoke', 'fit.grid_points', 0, r'config\.fit\.grid_points'),
    # Before: accepted, and every fit after the training reported NaN breaks.
    ('smoke', 'fit.grid_points', 1, r'config\.fit: grid_points must be >= 2 to place a break'),
    ('smoke', 'fit.slope_range', (1.0, 0.0), r'config\.fit: slope_range must be'),
    ('smoke', 'fit.min_segment_points', 6, r'config\.scaling\.num_points must be >= 12'),
    ('smoke', 'fit.seed_bootstrap', -1, r'config\.fit\.seed_bootstrap must be an integer >= 0'),
    ('smoke', 'fit.seed_bootstrap_min_seeds', 0, r'config\.fit\.seed_bootstrap_min_seeds'),
    # One seed: the restored spread divided by R - 1 = 0 after all the training.
    ('smoke', 'fit.seed_bootstrap_min_seeds', 1, r'config\.fit\.seed_bootstrap_min_seeds'),
    ('smoke', 'fit.ideal_replicates', -1, r'config\.fit\.ideal_replicates'),
    ('smoke', 'fit.ideal_seed_counts', (6, 0), r'config\.fit\.ideal_seed_counts\[1\]'),
    ('smoke', 'fit.ideal_seed_counts', (2.5,), r'config\.fit\.ideal_seed_counts\[0\]'),
    ('smoke', 'fit.ideal_seed_counts', (6, 6), r'config\.fit\.ideal_seed_counts repeats'),
    ('smoke', 'truncation.modes', ('hard', 'top_p', 'hard'), r'truncation\.modes repeats'),
    ('smoke', 'truncation.modes', ('top_p',), r'config\.truncation\.modes must hold hard'),
    ('smoke', 'truncation.grid_stride', 0,
     r'config\.truncation\.grid_stride must be an integer >= 1'),
    ('smoke', 'truncation.grid_stride', 2, r'grid_stride=2 leaves 5 sizes'),
    ('smoke', 'truncation.num_seeds', 0, r'config\.truncation\.num_seeds'),
    ('smoke', 'output.figure_dpi', 0, r'config\.output\.figure_dpi must be > 0'),
])
def test_run_refuses_a_bad_setting_before_any_work(tmp_path, monkeypatch, variant, field,
                                                   value, message):
  config = configs.get_config(variant)
  *sections, name = field.split('.')
  section = config
  for part in sections:
    section = section[part]
  section[name] = value
  monkeypatch.setattr(tps, 'make_task', _no_work)
  with pytest.raises(ValueError, match=message):
    tps.run(config, tmp_path)
  assert not (tmp_path / 'units').exists()


def test_soft_mode_settings_checked_only_when_used(tmp_path, monkeypatch):
  config = configs.get_config('smoke')
  config.truncation.match_k = False
  config.truncation.temperature = 1.5  # a fattened tail: no prediction of ours to pair with
  monkeypatch.setattr(tps, 'make_task', _no_work)
  with pytest.raises(ValueError, match=r'config\.truncation\.temperature must be in \(0, 1\)'):
    tps.run(config, tmp_path)
  config.truncation.modes = ('hard', 'top_p', 'finite_sample')  # temperature not run
  tps.check_config(config)
  config.truncation.generator_samples = 0
  with pytest.raises(ValueError, match=r'config\.truncation\.generator_samples'):
    tps.check_config(config)


@pytest.mark.slow
def test_facts_lm_smoke_runs(tmp_path):
  config = configs.get_config('facts_lm_smoke')
  config.truncation.modes = ('hard', 'temperature')  # one soft mode suffices here
  out = _run(config, tmp_path)
  _check_outputs(tmp_path, out)
  units = results.read_csv(tmp_path / 'units.csv')
  # The LM predicts over its whole vocabulary: on items it never saw, its loss stays above
  # ln(A), the loss of a uniform guess among the A answers (3.0 .. 5.5 against 2.3 here).
  unseen = [row['unseen_loss'] for row in units if row['unseen_loss'] is not None]
  assert unseen and min(unseen) > math.log(config.data.num_answers)


@pytest.mark.slow
def test_cifar100_path_on_a_fake_folder(tmp_path, monkeypatch):
  data_dir = tmp_path / 'cifar'
  task_fixtures.write_fake_cifar100(data_dir, per_class_train=2, per_class_test=1)
  config = configs.get_config('cifar100_smoke')
  config.data.directory = str(data_dir)
  config.truncation.modes = ('hard', 'finite_sample')
  workdir = tmp_path / 'work'
  # What every unit draws, trains on and evaluates, for the checks at the end.
  draws, trained, evaluated = [], [], []
  monkeypatch.setattr(tps.longtail, 'sample_by_class', _spy(tps.longtail.sample_by_class, draws))
  monkeypatch.setattr(tps.training, 'train', _spy(tps.training.train, trained))
  monkeypatch.setattr(tps, 'per_example_metrics', _spy(tps.per_example_metrics, evaluated))
  out = _run(config, workdir)
  _check_outputs(workdir, out)
  units = results.read_csv(workdir / 'units.csv')
  assert all(row['steps'] == 2 for row in units)
  # The paper's breakpoints for beta=2, k=70, pi=0.0625.
  assert out['summary']['predicted_paper'] == [4900.0, 78400.0]

  # Each unit against float64 NumPy on what it drew and evaluated. The fake test split has
  # one image per class, so an image's weight is its class's Zipf(2) probability.
  ranks = np.arange(1.0, 101.0)
  p = ranks ** -2.0 / np.sum(ranks ** -2.0)
  store = results.UnitStore(workdir / 'units')
  names = out['units_computed']
  assert len(names) == len(units) and len(draws) == 2 * len(names)
  assert len(trained) == len(evaluated) == len(names)
  for i, name in enumerate(names):
    unit = store.load(name)
    # The real part from the real long tail (every class), the synthetic from the cut at k.
    real_probs, syn_probs = draws[2 * i][0][1], draws[2 * i + 1][0][1]
    np.testing.assert_allclose(real_probs, p, rtol=1e-12)
    assert np.all(np.asarray(syn_probs)[:70] > 0) and np.all(np.asarray(syn_probs)[70:] == 0)
    y_train = np.asarray(trained[i][0][3])
    _, variables, _, y_test = evaluated[i][0]
    loss, correct = evaluated[i][2]
    assert np.array_equal(np.sort(y_test), np.arange(100))
    weight = p[y_test]
    unseen = ~np.isin(y_test, y_train)
    assert unit['num_distinct_items'] == np.unique(y_train).size < 100
    np.testing.assert_allclose(unit['memorizer_error'], weight[unseen].sum(), rtol=1e-12)
    np.testing.assert_allclose(unit['loss'], np.sum(weight * loss), rtol=1e-12)
    np.testing.assert_allclose(unit['error'], np.sum(weight * ~correct), rtol=1e-12)
    # Evaluated with BatchNorm statistics re-estimated on the mixture, not the initial
    # ones (means 0, variances 1).
    leaves = jax.tree_util.tree_leaves_with_path(variables['batch_stats'])
    means = [np.asarray(leaf) for path, leaf in leaves if 'mean' in jax.tree_util.keystr(path)]
    variances = [np.asarray(leaf) for path, leaf in leaves if 'var' in jax.tree_util.keystr(path)]
    assert means and len(means) == len(variances)
    assert all(np.any(m != 0) for m in means) and all(np.any(v != 1) for v in variances)


def test_cifar100_needs_a_directory():
  config = configs.get_config('cifar100_smoke')
  with pytest.raises(ValueError, match='data.directory'):
    tps.make_task(config, jax.random.PRNGKey(0))


def _figure_inputs(config, sem: float):
  """Hand-made curve rows, fits, theory and prediction of hard truncation for
  `_three_phase_figure` (standard errors all `sem`, NaN as with one seed)."""
  n = np.array([4.0, 16.0, 64.0, 256.0])
  rows = [{'mode': 'hard', 'n': int(size), 'loss_mean': 1.0 / (i + 1), 'loss_sem': sem,
           'error_mean': 0.5 / (i + 1), 'error_sem': sem,
           'memorizer_error_mean': 0.4 / (i + 1)} for i, size in enumerate(n)]
  boot = {'n1_lo': 10.0, 'n1_hi': 20.0, 'n2_lo': 50.0, 'n2_hi': 90.0}
  fits = {(f'measured_{metric}', 'hard'): _hand_fit(breaks=[14.0, 70.0], curve=0.9 / n,
                                                   seed_bootstrap=boot)
          for metric in ('loss', 'error')}
  fits[('theory', 'hard')] = _hand_fit(breaks=[36.0, 174.0])
  theory = {'n': n, 'hard': 0.3 / np.sqrt(n)}
  prediction = {'k_eff': 4, 'parameter': 'k', 'value': 4, 'paper': [16.0, 64.0],
                'ours': [23.6, 105.5]}
  return rows, fits, theory, prediction


def test_three_phase_figure_states_the_bands_level_as_configured():
  # 0.975 read '98% CI' (a '.0%' format); the band is the 97.5% interval.
  config = configs.get_config('smoke')
  config.fit.ci_level = 0.975
  fig = tps._three_phase_figure(config, *_figure_inputs(config, 0.01), num_classes=4)
  for ax in fig.axes:
    assert '(shaded: 97.5% CI' in ax.get_title()
    # ... and the bands are the seed bootstrap's intervals.
    spans = sorted((patch.get_x(), patch.get_x() + patch.get_width()) for patch in ax.patches)
    np.testing.assert_allclose(spans, [(10.0, 20.0), (50.0, 90.0)])


def test_three_phase_figure_draws_no_standard_error_it_does_not_have():
  # One seed (the cifar100 variants): each size's s.e. is NaN in curve.csv. It was drawn
  # as a zero-length bar with caps at every point, keyed '±1 s.e. over seeds'.
  config = configs.get_config('smoke')
  config.scaling.num_seeds = 1
  for sem, keyed in ((math.nan, False), (0.01, True)):
    fig = tps._three_phase_figure(config, *_figure_inputs(config, sem), num_classes=4)
    for ax in fig.axes:
      legend = [text.get_text() for text in ax.get_legend().get_texts()]
      assert ('±1 s.e. over seeds' in legend) is keyed
      bars = [np.asarray(segment) for collection in ax.collections
              for segment in collection.get_segments()]
      heights = sorted(float(np.ptp(bar[:, 1])) for bar in bars)
      np.testing.assert_allclose(heights, [0.02] * 4 if keyed else [], rtol=1e-9)
