"""Tests of experiments/valuation_table.py, ablation.py, subsample_stability.py and configs.

The smoke variants run end to end in a temporary workdir and write their tables and
figures; a rerun recomputes nothing (every unit comes from the store: the functions that
would compute one are replaced by ones that fail). Unit tests cover the variant parser,
the probe coalitions and the union contributor.
"""

import importlib.util
import math
import sys
from pathlib import Path

import jax
from matplotlib.container import ErrorbarContainer
import ml_collections
import numpy as np
import pytest
import scipy.stats

from dv_jax import ground_truth
from dv_jax import metrics
from dv_jax import results
from dv_jax import valuation

from config_helpers import with_baseline_setting

_ROOT = Path(__file__).resolve().parents[1]
# The experiment scripts import their shared helpers as `valuation_table`.
sys.path.insert(0, str(_ROOT / 'experiments'))
import ablation  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import subsample_stability  # noqa: E402  pylint: disable=g-import-not-at-top
import valuation_table  # noqa: E402  pylint: disable=g-import-not-at-top


def _load_config(name: str):
  spec = importlib.util.spec_from_file_location(f'{name}_config',
                                                _ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


CONFIGS = {name: _load_config(name)
           for name in ('valuation_table', 'ablation', 'subsample_stability')}


@pytest.mark.parametrize('name, variant', [(name, variant) for name in sorted(CONFIGS)
                                           for variant in CONFIGS[name].VARIANTS])
def test_configs_build(name, variant):
  config = CONFIGS[name].get_config(variant)
  for section in ('seed', 'data', 'model', 'ntk', 'mmd', 'bound', 'valuation', 'output'):
    assert section in config
  assert config.data.num_contributors >= (2 if variant == 'smoke' else 12)
  for spec in config.valuation.variants:
    _, overrides = valuation_table.parse_variant(spec)
    valuation_table.method_config(config, overrides)  # every override names a real field
  with pytest.raises(ValueError, match='unknown variant'):
    CONFIGS[name].get_config('imagenet')


@pytest.mark.parametrize('variant', CONFIGS['valuation_table'].PAPER_SCALE)
def test_paper_scale_ntk_blocks_fit_their_projection(variant):
  # A projected NTK block has rank <= projection_dim (ntk.check_projected_block_rows): the
  # largest contributor's DAVINZ blocks and our blocks must hold at most half of it. With
  # DAVINZ's one block, contributors of up to 5,000 examples were scored by the jitter.
  config = CONFIGS['valuation_table'].get_config(variant)
  largest = config.data.size_range[1]
  davinz = config.baselines.davinz
  assert davinz.projection_dim > 0 and config.ntk.projection_dim > 0
  assert 2 * math.ceil(largest / davinz.num_blocks) <= davinz.projection_dim
  assert config.ntk.method == 'block_diagonal'
  assert 2 * config.ntk.block_size <= config.ntk.projection_dim


@pytest.mark.parametrize('variant', [v + smoke for v in CONFIGS['valuation_table'].LLM_TEXT
                                     for smoke in ('', '_smoke')])
def test_paper_scale_llm_fine_tunings_fit_a_gpu(variant):
  # Qwen2.5-1.5B (p = 1.54e9, 5.75 GiB per float32 copy; vocabulary 151,936). Vmapped over R
  # runs, a fine-tuning holds each run's parameters, Adam moments and gradients plus theta0:
  # TRAK's three needed 13 copies (75 GiB) before any activation. And the ground truth
  # evaluated 512 test rows at once: 512 x 512 tokens of full-vocabulary logits, 150 GiB
  # per seed. One run at a time (5 copies, 29 GiB) and 8-row blocks (2.3 GiB) fit 80 GB.
  # The smoke twins run the same settings end to end on the fixtures (test_valuation_tasks).
  config = CONFIGS['valuation_table'].get_config(variant)
  assert config.ground_truth.vmap_seeds is False and config.baselines.trak.vmap_models is False
  assert config.baselines.tracin.checkpoints_on_host is True
  if not variant.endswith('_smoke'):
    rows_x_tokens = config.ground_truth.eval_block_size * config.data.max_len
    assert rows_x_tokens * 151936 * 4 / 2**30 < 3  # GiB of one block's logits
  # The CPU tasks keep the fast vmapped programs.
  digits = CONFIGS['valuation_table'].get_config('digits')
  assert digits.ground_truth.vmap_seeds and digits.baselines.trak.vmap_models
  assert not digits.baselines.tracin.checkpoints_on_host


def test_digits_table_has_the_required_rows():
  config = CONFIGS['valuation_table'].get_config('digits')
  names = [valuation_table.parse_variant(v)[0] for v in config.valuation.variants]
  assert names[0] == 'ours-paper-defaults'
  assert valuation_table.parse_variant(config.valuation.variants[0])[1] == {}
  assert any('fit' in n for n in names)
  assert set(config.baselines.methods) == {'davinz', 'tracin', 'trak', 'random'}
  assert tuple(config.model.backbones) == ('mlp', 'cnn')


def test_draws_shift_the_seeds():
  config = CONFIGS['valuation_table'].get_config('digits_draws')
  assert config.data.num_draws == 5
  second = valuation_table.draw_config(config, 2)
  assert (second.data.split_seed, second.data.contributor_seed, second.model.init_seed) == (
      config.data.split_seed + 2, config.data.contributor_seed + 2, config.model.init_seed + 2)
  for field in ('split_seed', 'contributor_seed'):
    bad = CONFIGS['valuation_table'].get_config('digits_draws')
    bad.data[field] = -1
    with pytest.raises(ValueError, match=rf'config\.data\.{field} must be an integer'):
      valuation_table.draw_config(bad, 2)
  # The init seed too: -1 + 2 would pass as seed 1, 2**32 + 2 wrap to seed 2 in PRNGKey.
  for seed in (-1, 2**32):
    bad = CONFIGS['valuation_table'].get_config('digits_draws')
    bad.model.init_seed = seed
    with pytest.raises(ValueError, match=r'config\.model\.init_seed must be an integer'):
      valuation_table.draw_config(bad, 2)


@pytest.mark.parametrize('field', ['data.split_seed', 'data.contributor_seed', 'model.init_seed'])
def test_digits_seed_fields_outside_a_prng_key_are_refused_by_name(field):
  # PRNGKey keeps a seed's low 32 bits: 2**32 would silently be seed 0 again.
  config = CONFIGS['valuation_table'].get_config('smoke')
  section, name = field.split('.')
  config[section][name] = 2**32
  with pytest.raises(ValueError, match=rf'config\.{section}\.{name} must be an integer'):
    valuation_table.build_benchmark(config)


def test_draw_summaries_average_the_draws():
  rows = [{'draw': d, 'backbone': 'mlp', 'method': m, 'kind': 'ours', 'setting': '',
           'spearman': s, 'kendall': s / 2, 'spearman_accuracy': -s, 'seconds': 1.0 + d,
           'probe_retrain_seconds': 3.0 * d, 'cost_fraction': 0.1, 'retrain_seconds': 10.0}
          for d, (m, s) in enumerate([('a', 0.2), ('a', 0.6), ('b', 0.1)])]
  summary = valuation_table.summarize(rows)
  assert [(s['method'], s['draws']) for s in summary] == [('a', 2), ('b', 1)]
  np.testing.assert_allclose([summary[0]['spearman_mean'], summary[0]['spearman_std'],
                              summary[0]['spearman_accuracy_mean'],
                              summary[0]['seconds_mean'],
                              summary[0]['probe_retrain_seconds_mean']], [0.4, 0.2, -0.4, 1.5, 1.5])


def test_table_rows_match_the_library_presets():
  module = CONFIGS['valuation_table']
  for spec, preset in ((module.OURS_DEFAULT, 'paper'),
                       (module.OURS_RECOMMENDED, 'recommended'),
                       (module.OURS_PROPOSED, 'proposed')):
    _, overrides = valuation_table.parse_variant(spec)
    assert overrides == valuation.PRESETS[preset]
  config = valuation.preset_config('proposed')
  assert config.mmd.discrepancy == 'mixture' and config.ntk.residual == 'one_hot'
  with pytest.raises(ValueError, match='unknown preset'):
    valuation.preset_config('magic')


def test_parse_variant_and_method_config():
  name, overrides = valuation_table.parse_variant(
      "v|ntk.residual=one_hot;bound.terms=('ntk','composition');mmd.label_aware=True")
  assert name == 'v'
  assert overrides == {'ntk.residual': 'one_hot', 'bound.terms': ('ntk', 'composition'),
                       'mmd.label_aware': True}
  config = CONFIGS['valuation_table'].get_config('smoke')
  method = valuation_table.method_config(config, overrides)
  assert method.ntk.residual == 'one_hot' and config.ntk.residual == 'true_class'
  assert tuple(method.bound.terms) == ('ntk', 'composition')
  with pytest.raises(ValueError, match='names no field'):
    valuation_table.method_config(config, {'ntk.colour': 1})
  with pytest.raises(ValueError, match='section.field=value'):
    valuation_table.parse_variant('v|residual')
  # A bare name (or 'a,b', which the command line reads as one string) used to run
  # METHOD.md's defaults under that name.
  for bare in ('ours-proposed', 'ours-proposed,ours-recommended'):
    with pytest.raises(ValueError, match=f"variant '{bare}' has no '\\|'"):
      valuation_table.parse_variant(bare)
  assert valuation_table.parse_variant('defaults|') == ('defaults', {})
  # ConfigDict's TypeError for a bad type now names the variant too, as a ValueError.
  config.valuation.variants = ('a|mmd.label_aware="true"',)
  with pytest.raises(ValueError, match=r"config.valuation.variants: 'a\|mmd.label_aware"):
    valuation_table.checked_variants(config)


def test_recipe_differences_name_a_ground_truth_override_the_baselines_did_not_get():
  """The configs copy one training recipe into the ground truth, TracIn and TRAK, and one
  param_filter into every gradient method; overriding one copy used to pass in silence."""
  config = CONFIGS['valuation_table'].get_config('digits')
  assert valuation_table.recipe_differences(config) == []
  config.ground_truth.steps = 100
  lines = valuation_table.recipe_differences(config)
  assert [line.split(' ')[0] for line in lines] == ['baselines.tracin.train',
                                                    'baselines.trak.train']
  assert 'steps 300 vs 100' in lines[0]
  llm = CONFIGS['valuation_table'].get_config('instruction')
  assert valuation_table.recipe_differences(llm) == []
  llm.ntk.param_filter = 'last_layers:4'
  assert len(valuation_table.recipe_differences(llm)) == 3  # davinz, tracin, trak
  # Every field of the recipe counts, the schedule too.
  config = CONFIGS['valuation_table'].get_config('digits')
  config.ground_truth.schedule = 'cosine'
  lines = valuation_table.recipe_differences(config)
  assert [line.split(' ')[0] for line in lines] == ['baselines.tracin.train',
                                                    'baselines.trak.train']
  assert "schedule 'constant' vs 'cosine'" in lines[0]
  # DAVINZ's 'kernel' is by design only beside our all-parameter filter.
  config = CONFIGS['valuation_table'].get_config('digits')
  config.ntk.param_filter = 'bias'
  assert [line.split(' ')[0] for line in valuation_table.recipe_differences(config)] == [
      'baselines.davinz.param_filter', 'baselines.tracin.param_filter',
      'baselines.trak.param_filter']
  # Only the methods the run computes are compared.
  config.ground_truth.schedule = 'cosine'
  config.baselines.methods = ('random',)
  assert valuation_table.recipe_differences(config) == []


def test_valuation_table_logs_the_recipe_differences_before_any_work(tmp_path, monkeypatch):
  _forbid(monkeypatch, (valuation_table, 'build_benchmark'), (ground_truth, 'retrain'),
          (valuation, 'value_contributors'))
  warned = []
  monkeypatch.setattr(valuation_table.logging, 'warning',
                      lambda message, *args: warned.append(message % args if args else message))
  config = CONFIGS['valuation_table'].get_config('smoke')
  config.ground_truth.steps = int(config.ground_truth.steps) + 1
  expected = valuation_table.recipe_differences(config)
  assert expected
  with pytest.raises(AssertionError, match='recomputed'):
    valuation_table.run(config, tmp_path)
  assert all(line in warned for line in expected), warned


def test_probe_coalitions_and_unions():
  config = CONFIGS['valuation_table'].get_config('digits')
  coalitions = valuation_table.probe_coalitions(config, 12)
  assert coalitions[:12] == tuple((i,) for i in range(12))
  unions = coalitions[12:]
  assert len(unions) == config.valuation.fit_num_unions == len(set(unions))
  assert all(len(u) == 2 and u[0] < u[1] for u in unions)
  a = valuation.Contributor('a', np.ones((2, 3), np.float32), np.array([0, 1]), None, None)
  b = valuation.Contributor('b', None, None, np.zeros((3, 3), np.float32),
                            np.array([2, 2, 1]))
  # Every distinct union when all are asked for.
  config.valuation.fit_num_unions = 66
  assert len(set(valuation_table.probe_coalitions(config, 12)[12:])) == 66
  config.valuation.fit_num_unions = 67
  with pytest.raises(ValueError, match=r'config\.valuation\.fit_num_unions must be an '
                     r'integer in \[1, 66\]'):
    valuation_table.probe_coalitions(config, 12)
  # With 2 contributors each is left out of one probe only (its partner's singleton): the
  # run used to retrain the ground truth and the unions before failing on it.
  config.valuation.fit_num_unions = 1
  with pytest.raises(ValueError, match=r'config\.data\.num_contributors=2: fitted weights'):
    valuation_table.probe_coalitions(config, 2)
  three = valuation_table.probe_coalitions(config, 3)
  assert all(sum(i not in c for c in three) >= 2 for i in range(3))
  union = valuation_table.union_contributor([a, b], (0, 1))
  assert (union.num_real, union.num_synthetic) == (2, 3)
  np.testing.assert_array_equal(union.y_synthetic, [2, 2, 1])


_MODULES = {'valuation_table': valuation_table, 'ablation': ablation,
            'subsample_stability': subsample_stability}


@pytest.mark.parametrize('name, field, value, match', [
    # Read by the tables only after every unit: checked first, under the config key.
    ('valuation_table', 'output.ci_level', 95, r'config\.output\.ci_level must lie in'),
    ('valuation_table', 'output.bootstrap_resamples', 0,
     r'config\.output\.bootstrap_resamples must be an integer >= 1'),
    ('ablation', 'output.ci_level', 95, r'config\.output\.ci_level must lie in'),
    # A variant is a unit name: a repeated one, or one named as another unit of the run,
    # would be refused as "computed under another config" after the first had run.
    ('valuation_table', 'valuation.variants', ('a|', 'a|ntk.residual=one_hot'),
     r"config\.valuation\.variants: the unit names \['a'\] are used twice"),
    ('valuation_table', 'valuation.variants', ('random|',), r"unit names \['random'\]"),
    ('valuation_table', 'valuation.variants', ('ground_truth|',), r'unit names'),
    ('ablation', 'valuation.variants', ('ground_truth|',), r'unit names'),
    ('subsample_stability', 'valuation.variants', ('a|', 'a|mmd.label_aware=True'),
     r'unit names'),
    # The smoke rows fit weights on probe unions of 2..K = 4 contributors: comb(4, 2) = 6.
    # Before, these failed only after the first retraining, or drew fewer unions silently.
    ('valuation_table', 'valuation.fit_union_size', 1,
     r'config\.valuation\.fit_union_size must be an integer in \[2, 4\]'),
    ('valuation_table', 'valuation.fit_union_size', 5,
     r'config\.valuation\.fit_union_size must be an integer in \[2, 4\]'),
    ('valuation_table', 'valuation.fit_num_unions', 0,
     r'config\.valuation\.fit_num_unions must be an integer in \[1, 6\]'),
    ('valuation_table', 'valuation.fit_num_unions', 7,
     r'config\.valuation\.fit_num_unions must be an integer in \[1, 6\]'),
    ('valuation_table', 'baselines.methods', ('davinz', 'davinz'),
     r'config\.baselines\.methods repeats a method'),
    ('valuation_table', 'baselines.methods', ('tracn',),
     r"config\.baselines\.methods: unknown baseline 'tracn'"),
    # A bad override fails before the retraining, naming the variant.
    ('valuation_table', 'valuation.variants', ('x|ntk.residul=one_hot',),
     r"config\.valuation\.variants: 'x\|ntk\.residul=one_hot': override 'ntk\.residul'"),
    ('valuation_table', 'valuation.variants', ('x|ntk.residual=one_hott',),
     r"config\.valuation\.variants: .*config\.ntk\.residual must be one of"),
    # One set of probe coalitions serves every variant: a variant's own fit_* was accepted
    # and ignored (two settings, the same values), and never range-checked.
    ('valuation_table', 'valuation.variants',
     ('b|valuation.weights=fit;valuation.fit_num_unions=6;valuation.fit_union_size=3',),
     r"config\.valuation\.variants: .*\['valuation\.fit_num_unions', "
     r"'valuation\.fit_union_size'\] are experiment-wide.*set config\.valuation\.fit_num_unions"),
    ('valuation_table', 'valuation.variants', ('b|valuation.fit_seed=3',),
     r"\['valuation\.fit_seed'\] are experiment-wide"),
    # Fitted weights need probe coalitions that only valuation_table.py retrains.
    ('ablation', 'valuation.weights', 'fit', r'valuation\.weights=fit'),
    ('ablation', 'valuation.variants', ('x|valuation.weights=fit',), r'valuation\.weights=fit'),
    ('subsample_stability', 'valuation.weights', 'fit', r'valuation\.weights=fit'),
    # The study sets valuation.subsample per unit: a value of its own would be ignored.
    ('subsample_stability', 'valuation.subsample', 100,
     r'config\.valuation\.subsample .* must stay 0'),
    ('subsample_stability', 'valuation.variants', ('x|valuation.subsample=50',),
     r'config\.valuation\.subsample .* must stay 0'),
    ('subsample_stability', 'valuation.budgets', (16, 16),
     r'config\.valuation\.budgets repeats a budget'),
    # One benchmark draw only: refused rather than ignored.
    ('subsample_stability', 'data.num_draws', 2, r'config\.data\.num_draws must be 1'),
    # The retraining recipe was checked only when the first retraining started, after the
    # benchmark (a task's synthetic data and models), and named neither section nor run.
    ('valuation_table', 'ground_truth.learning_rate', -1.0,
     r'config\.ground_truth: config\.learning_rate must be finite and > 0'),
    ('valuation_table', 'ground_truth.num_seed', 2,
     r"config\.ground_truth: config has unknown training fields \['num_seed'\]"),
    ('valuation_table', 'ground_truth.eval_block_size', 0,
     r'config\.ground_truth: .*eval_block_size must be an integer >= 1'),
    ('ablation', 'ground_truth.num_seeds', 0,
     r'config\.ground_truth: .*num_seeds must be an integer >= 1'),
])
def test_bad_settings_fail_naming_the_field_before_any_work(tmp_path, monkeypatch, name, field,
                                                            value, match):
  _forbid(monkeypatch, (valuation_table, 'build_benchmark'), (ground_truth, 'retrain'),
          (valuation, 'value_contributors'))
  config = CONFIGS[name].get_config('smoke')
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=match):
    _MODULES[name].run(config, tmp_path)
  assert not (tmp_path / 'units').exists()


def test_subsample_budget_of_the_whole_pool_is_refused(tmp_path, monkeypatch):
  """A budget >= the pool keeps every example: the full-pool reference, tau = 1 by design."""
  config = CONFIGS['subsample_stability'].get_config('smoke')
  bench = valuation_table.build_benchmark(config)
  pool_size = sum(c.num_real + c.num_synthetic for c in bench.contributors)
  # Built once: each run below gets this benchmark.
  monkeypatch.setattr(valuation_table, 'build_benchmark', lambda config: bench)
  _forbid(monkeypatch, (valuation, 'value_contributors'))
  # Exactly the pool, far past it, and one short of it: each contributor's rounded share
  # then keeps all its rows, and the row reported tau = 1 as a subsample.
  for budget in (pool_size, 100_000, pool_size - 1):
    assert valuation.subsampled_pool_size(
        bench.contributors, budget, config.valuation.min_subsample) == pool_size
    config.valuation.budgets = (16, budget)
    with pytest.raises(ValueError, match=rf'config\.valuation\.budgets \({budget},\) keep '
                                         rf'the whole pool of {pool_size} examples'):
      subsample_stability.run(config, tmp_path)
  # What the subsample really keeps: the count the rows of a run add up to.
  rows = valuation._subsample_rows(bench.contributors, 40, 2, jax.random.PRNGKey(0))  # pylint: disable=protected-access
  assert sum(r.size + s_.size for r, s_ in rows) == valuation.subsampled_pool_size(
      bench.contributors, 40, 2)


@pytest.mark.parametrize('path, value, match', [
    ('trak.ridge', -1.0, r'config\.baselines\.trak\.ridge must be finite and > 0'),
    ('tracin.num_checkpoints', 1.5,
     r'config\.baselines\.tracin\.num_checkpoints must be an integer >= 1'),
    ('tracin.grad_block_size', 0, r'config\.baselines\.tracin\.grad_block_size must be an integer'),
    ('davinz.grad_block_size', 'big', r'config\.baselines\.davinz\.grad_block_size must be'),
    ('davinz.sigma', -1.0, r'config\.baselines\.davinz\.sigma must be a finite length scale'),
    ('trak.train.steps', 0, r'config\.baselines\.trak\.train: config\.steps must be'),
    ('random.seed_offset', -1, r'config\.baselines\.random\.seed_offset must be an integer >= 0'),
])
def test_bad_baseline_settings_fail_before_any_work(tmp_path, monkeypatch, path, value, match):
  # Before, a baseline checked its section only when its unit's turn came: after the
  # benchmark, the retraining and every variant of ours.
  _forbid(monkeypatch, (valuation_table, 'build_benchmark'), (ground_truth, 'retrain'),
          (valuation, 'value_contributors'))
  config = with_baseline_setting(CONFIGS['valuation_table'].get_config('smoke'), path, value)
  with pytest.raises(ValueError, match=match):
    valuation_table.run(config, tmp_path)
  assert not (tmp_path / 'units').exists()


def _stale_workdir(tmp_path, units, stale):
  """A workdir holding `units` (saved under their own fingerprints) and the unit `stale`
  saved under another config; returns its files' contents, to compare after a rerun."""
  store = results.UnitStore(tmp_path / 'units')
  for name, fingerprint in units.items():
    if name != stale:
      store.save(name, {'kept': name}, fingerprint=fingerprint)
  store.save(stale, {'kept': stale}, fingerprint='0123456789abcdef')
  return {p.name: p.read_bytes() for p in store.directory.iterdir()}


def test_valuation_table_refuses_a_stale_unit_of_any_draw_before_any_work(tmp_path,
                                                                          monkeypatch):
  # Before, draw 0 was built, retrained and valued (and its units written) before the
  # stale unit of draw 1 was found.
  _forbid(monkeypatch, (valuation_table, 'build_benchmark'), (ground_truth, 'retrain'),
          (valuation, 'value_contributors'))
  config = CONFIGS['valuation_table'].get_config('smoke')
  config.data.num_draws = 2
  backbone = config.model.backbones[0]
  expected = {**valuation_table.draw_units(config, 0), **valuation_table.draw_units(config, 1)}
  assert f'draw1/{backbone}/probe_ground_truth' in expected  # the smoke rows fit weights
  stale = f'draw1/{backbone}/random'
  # Only a few saved units: the others are the ones a run would compute first.
  saved = {name: fp for name, fp in expected.items() if name.startswith(f'draw1/{backbone}/')}
  before = _stale_workdir(tmp_path, saved, stale)
  with pytest.raises(ValueError, match=f"unit '{stale}' .* another config"):
    valuation_table.run(config, tmp_path)
  assert {p.name: p.read_bytes() for p in (tmp_path / 'units').iterdir()} == before


@pytest.mark.parametrize('script', ['valuation_table', 'ablation', 'subsample_stability'])
def test_user_features_on_a_task_without_them_fail_before_the_ground_truth(tmp_path,
                                                                           monkeypatch,
                                                                           script):
  # digits has no features of its own; before, the variant was refused only at its turn,
  # after the ground truth had been retrained and saved, and not under the config key
  # (the ablation and the subsample study did not check at all).
  _forbid(monkeypatch, (ground_truth, 'retrain'), (valuation, 'value_contributors'))
  config = CONFIGS[script].get_config('smoke')
  config.valuation.variants = ('mine|mmd.feature_space=user',)
  module = {'valuation_table': valuation_table, 'ablation': ablation,
            'subsample_stability': subsample_stability}[script]
  with pytest.raises(ValueError, match=r"config\.valuation\.variants: 'mine' sets "
                     r"mmd\.feature_space=user, but this task has no features of its own"):
    module.run(config, tmp_path)
  assert not any((tmp_path / 'units').glob('*'))


def test_ablation_refuses_a_stale_unit_before_any_work(tmp_path, monkeypatch):
  _forbid(monkeypatch, (valuation_table, 'build_benchmark'), (ground_truth, 'retrain'),
          (valuation, 'value_contributors'))
  config = CONFIGS['ablation'].get_config('smoke')
  config.model.backbones = ('mlp', 'cnn')  # the stale unit is under the second backbone
  variants = [valuation_table.parse_variant(v) for v in config.valuation.variants]
  expected = ablation.unit_fingerprints(config, variants)
  stale = f'{config.model.backbones[-1]}/{variants[-1][0]}'
  before = _stale_workdir(tmp_path, {stale: expected[stale]}, stale)
  with pytest.raises(ValueError, match=f"unit '{stale}' .* another config"):
    ablation.run(config, tmp_path)
  assert {p.name: p.read_bytes() for p in (tmp_path / 'units').iterdir()} == before


def test_subsample_stability_refuses_a_stale_unit_before_any_work(tmp_path, monkeypatch):
  _forbid(monkeypatch, (valuation_table, 'build_benchmark'), (valuation, 'value_contributors'))
  config = CONFIGS['subsample_stability'].get_config('smoke')
  config.model.backbones = ('mlp', 'cnn')  # the stale unit is under the second backbone
  variants = [valuation_table.parse_variant(v) for v in config.valuation.variants]
  budgets = [int(b) for b in config.valuation.budgets]
  expected = subsample_stability.unit_fingerprints(config, variants, budgets)
  stale = subsample_stability.unit_name(config.model.backbones[-1], variants[-1][0],
                                        budgets[-1], int(config.valuation.num_repeats) - 1)
  before = _stale_workdir(tmp_path, {stale: expected[stale]}, stale)
  with pytest.raises(ValueError, match=f"unit '{stale}' .* another config"):
    subsample_stability.run(config, tmp_path)
  assert {p.name: p.read_bytes() for p in (tmp_path / 'units').iterdir()} == before


def _forbid(monkeypatch, *targets):
  def fail(*args, **kwargs):
    raise AssertionError('a finished unit was recomputed')
  for module, attribute in targets:
    monkeypatch.setattr(module, attribute, fail)


# ---------------------------------------------------------------------------------------
# valuation_table without a run: what each unit's fingerprint covers, the seeds each part
# reads, the CIs' level, and the summary, table and figure over draws.


def _copy_with(config, **fields):
  """A copy of `config` with `fields` ('section__field' for a nested one) set."""
  out = ml_collections.ConfigDict(config.to_dict())
  for path, value in fields.items():
    *sections, name = path.split('__')
    node = out
    for section in sections:
      node = node[section]
    node[name] = value
  return out


def test_unit_fingerprints_cover_what_each_unit_depends_on():
  config = CONFIGS['valuation_table'].get_config('smoke')
  units = valuation_table.draw_units(config, 0)
  prefix = 'draw0/mlp/'
  truth, probe = prefix + 'ground_truth', prefix + 'probe_ground_truth'
  ours = {prefix + valuation_table.parse_variant(v)[0] for v in config.valuation.variants}
  theirs = {prefix + name for name in config.baselines.methods}
  assert set(units) == {truth, probe} | ours | theirs

  def changed(**fields):
    other = valuation_table.draw_units(_copy_with(config, **fields), 0)
    return {name for name in units if other[name] != units[name]}

  # theta0 (model.init_seed) enters every unit: the retraining starts from it, every
  # method differentiates at it.
  assert changed(model__init_seed=2) == set(units)
  # config.seed keys our method and every baseline (e.g. random's draws).
  assert ours | theirs <= changed(seed=1)
  # The valuation section is part of our method; not of the ground truth or a baseline.
  subsample = changed(valuation__min_subsample=3)
  assert ours <= subsample and not subsample & ({truth} | theirs)
  # The probe unions are drawn from valuation.fit_seed: its ground truth must follow it,
  # while the contributors' own ground truth does not.
  fit_seed = changed(valuation__fit_seed=1)
  assert probe in fit_seed and truth not in fit_seed
  # Adding a draw or a backbone selects more units and leaves the saved ones reusable.
  more = valuation_table.draw_units(
      _copy_with(config, data__num_draws=2, model__backbones=('mlp', 'cnn')), 0)
  assert {name: more[name] for name in units} == units
  assert 'draw0/cnn/ground_truth' in more
  # Where the ground truth and TRAK run (seeds vmapped or one at a time, evaluation block
  # rows) is not what they compute: toggling it reuses every saved unit.
  assert not changed(ground_truth__vmap_seeds=False, ground_truth__eval_block_size=8,
                     baselines__trak__vmap_models=False,
                     baselines__tracin__checkpoints_on_host=True)


def test_config_level_fitted_weights_need_probes():
  # valuation.weights='fit' set for the whole config (no variant overrides it) fits weights
  # too, so the probes' ground truth is planned; a variant's own override wins.
  config = _copy_with(CONFIGS['valuation_table'].get_config('smoke'), valuation__weights='fit',
                      valuation__variants=('plain|',
                                           'standardized|valuation.weights=standardize'))
  assert valuation_table.fits_weights(config, {})
  assert not valuation_table.fits_weights(config, {'valuation.weights': 'standardize'})
  assert 'draw0/mlp/probe_ground_truth' in valuation_table.draw_units(config, 0)


def test_seeds_reach_the_method_the_probes_and_theta0():
  config = CONFIGS['valuation_table'].get_config('smoke')
  assert valuation_table.method_config(_copy_with(config, seed=7), {}).seed == 7
  digits = CONFIGS['valuation_table'].get_config('digits')
  coalitions = valuation_table.probe_coalitions(digits, 12)
  assert valuation_table.probe_coalitions(digits, 12) == coalitions
  assert valuation_table.probe_coalitions(_copy_with(digits, valuation__fit_seed=1),
                                          12)[12:] != coalitions[12:]

  def theta0(**fields):
    bench = valuation_table.build_benchmark(_copy_with(config, **fields))
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(bench.backbones['mlp'][1])]

  # theta0 comes from model.init_seed alone (config.seed keys the methods, not the model).
  first = theta0()
  for a, b in zip(first, theta0(seed=5)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(first, theta0(model__init_seed=2)))


def test_correlation_cis_have_the_configured_level():
  values = np.array([3., 1., 4., 1.5, 5., 9., 2., 6., 5.3, 3.5, 8., 9.7])
  truth = np.array([2., 7., 1., 8., 2.8, 1.8, 2.9, 4.5, 9.1, 0.5, 6.6, 3.2])
  config = _copy_with(CONFIGS['valuation_table'].get_config('smoke'), output__ci_level=0.5)
  key = jax.random.PRNGKey(3)
  row = valuation_table.correlation_row(values, truth, config=config, key=key)
  # Reference: the same resamples of the contributors, each ranked by scipy, and their
  # 25% / 75% quantiles.
  index = np.asarray(metrics.bootstrap_indices(12, config.output.bootstrap_resamples, key=key))
  for metric, reference in (('spearman', scipy.stats.spearmanr),
                            ('kendall', scipy.stats.kendalltau)):
    resamples = np.array([reference(values[i], truth[i])[0] for i in index])
    np.testing.assert_allclose(row[metric], reference(values, truth)[0], rtol=1e-12)
    np.testing.assert_allclose([row[f'{metric}_low'], row[f'{metric}_high']],
                               np.nanquantile(resamples, [0.25, 0.75]), rtol=1e-12)


def _two_draw_rows():
  """Rows of two draws, one backbone, one of our rows and one baseline; CIs asymmetric."""
  rows = []
  for draw, ((s_ours, k_ours), (s_random, k_random)) in enumerate(
      [((0.3, 0.2), (-0.1, -0.1)), ((0.5, 0.4), (0.1, 0.0))]):
    for method, kind, s, k in (('ours-a', 'ours', s_ours, k_ours),
                               ('random', 'baseline', s_random, k_random)):
      rows.append({'draw': draw, 'backbone': 'mlp', 'method': method, 'kind': kind,
                   'setting': 'x', 'spearman': s, 'spearman_low': s - 0.2,
                   'spearman_high': s + 0.3, 'kendall': k, 'kendall_low': k - 0.2,
                   'kendall_high': k + 0.3, 'spearman_accuracy': -s, 'seconds': 2.0 + draw,
                   'probe_retrain_seconds': 0.0, 'retrain_seconds': 10.0,
                   'cost_fraction': (2.0 + draw) / 10.0, 'truth_seeds': 3,
                   'truth_seed_spearman': 0.5, 'truth_reliability': 0.75,
                   'truth_ceiling': 0.87})
  return rows


def test_table_over_draws_has_the_mean_and_std_and_ordered_cis():
  rows = _two_draw_rows()
  summary = valuation_table.summarize(rows)
  # By hand: ours-a's Kendall over the draws, 0.2 and 0.4: mean 0.3, std 0.1 (ddof 0).
  np.testing.assert_allclose([summary[0]['kendall_mean'], summary[0]['kendall_std']],
                             [0.3, 0.1])
  config = _copy_with(CONFIGS['valuation_table'].get_config('smoke'), data__num_draws=2)
  lines = valuation_table.markdown_table(rows, summary, config).splitlines()
  assert '## Mean ± std over draws (population std, ddof 0)' in lines
  assert '| mlp | ours-a | +0.40 ± 0.10 | +0.30 ± 0.10 | -0.40 ± 0.10 | 2.5 | 0.250 |' in lines
  # Per draw, each CI reads [low, high].
  assert '| ours-a | x | +0.30 [+0.10, +0.60] | +0.20 [+0.00, +0.50] | -0.30 | 2.0 | 0.200 |' \
      in lines
  # ... below the ground truth's own agreement across its retraining seeds.
  truth = [line for line in lines if line.startswith('Ground truth: ')]
  assert len(truth) == 2 and 'Spearman +0.50 on average' in truth[0]
  assert 'the mean of the 3 seeds' in truth[0] and 'reliability +0.75' in truth[0]
  assert 'would reach about +0.87' in truth[0]
  rows[0].update(truth_seed_spearman=-0.2, truth_reliability=math.nan, truth_ceiling=math.nan)
  assert 'the retraining does not reproduce its own ranking' in valuation_table._truth_line(
      rows[0])
  rows[0].update(truth_seeds=1)
  assert 'one retraining seed' in valuation_table._truth_line(rows[0])


def test_figure_draws_the_cis_and_the_wall_times(monkeypatch):
  figures = []
  monkeypatch.setattr(valuation_table.plotting, 'save_figure',
                      lambda fig, path: figures.append(fig))
  rows = [r for r in _two_draw_rows() if r['draw'] == 0]  # one draw: bars are the CIs
  # A bootstrap CI that misses its estimate is drawn as recorded, not clipped at the bar.
  rows[1].update(spearman_low=0.0, spearman_high=0.4)  # random's estimate is -0.1
  # ours-a fits its weights: its cost also counts the probes' retraining.
  rows[0]['probe_retrain_seconds'] = 7.0
  valuation_table.plot(rows, valuation_table.summarize(rows), Path('unused'), ci_level=0.95)
  (figure,) = figures
  left, right = figure.axes
  # Horizontal error bars from low to high at each method's bar (top to bottom).
  (errorbars,) = [c for c in left.containers if isinstance(c, ErrorbarContainer)]
  spans = [segment[:, 0] for segment in errorbars.lines[2][0].get_segments()]
  np.testing.assert_allclose(spans, [[r['spearman_low'], r['spearman_high']] for r in rows])
  # A CI cap at exactly +-1 stays inside the frame.
  low, high = left.get_xlim()
  assert low < -1 and high > 1
  # The key names what is drawn: the two colours, the black whiskers, the dashed line, the
  # hatched probes' retraining and the red line.
  (legend,) = figure.legends
  assert [t.get_text() for t in legend.get_texts()] == [
      'ours', 'baseline', '95% bootstrap CI', '0.8 target',
      valuation_table.PROBE_RETRAIN_LABEL, 'retraining']
  # Wall time: each method's own seconds, and stacked on it the probes' retraining, so a
  # bar ends at seconds + probe_retrain_seconds, what table.md's cost / retraining counts.
  own, probes = right.containers
  np.testing.assert_allclose([p.get_width() for p in own], [r['seconds'] for r in rows])
  assert probes.get_label() == valuation_table.PROBE_RETRAIN_LABEL
  np.testing.assert_allclose([(p.get_x(), p.get_width()) for p in probes],
                             [(rows[0]['seconds'], rows[0]['probe_retrain_seconds'])])


def test_figure_over_draws_keys_the_spread_and_the_dots(monkeypatch):
  figures = []
  monkeypatch.setattr(valuation_table.plotting, 'save_figure',
                      lambda fig, path: figures.append(fig))
  rows = _two_draw_rows()  # no fitted weights: no probes' bar
  valuation_table.plot(rows, valuation_table.summarize(rows), Path('unused'))
  (legend,) = figures[0].legends
  assert [t.get_text() for t in legend.get_texts()] == [
      'ours', 'baseline', 'std over 2 draws', '0.8 target', 'one draw', 'retraining']
  (own,) = figures[0].axes[1].containers
  np.testing.assert_allclose([p.get_width() for p in own], [2.5, 2.5])


@pytest.mark.slow
def test_valuation_table_smoke_runs_and_resumes(tmp_path, monkeypatch):
  config = CONFIGS['valuation_table'].get_config('smoke')
  # What the benchmark, the retraining and each method are given, and what they return.
  calls = {'benchmark': [], 'retrain': [], 'ours': [], 'baseline': []}

  def spy(kind, function):
    def wrapped(*args, **kwargs):
      output = function(*args, **kwargs)
      calls[kind].append((args, kwargs, output))
      return output
    return wrapped

  monkeypatch.setattr(valuation_table, 'build_benchmark',
                      spy('benchmark', valuation_table.build_benchmark))
  monkeypatch.setattr(ground_truth, 'retrain', spy('retrain', ground_truth.retrain))
  monkeypatch.setattr(valuation, 'value_contributors',
                      spy('ours', valuation.value_contributors))
  monkeypatch.setattr(valuation_table.baselines, 'BASELINES',
                      {name: spy('baseline', function)
                       for name, function in valuation_table.baselines.BASELINES.items()})
  out = valuation_table.run(config, tmp_path)
  for name in ('results.csv', 'results.json', 'table.md', 'figure.png', 'figure.pdf'):
    assert (tmp_path / name).is_file()
  rows = results.read_csv(tmp_path / 'results.csv')
  methods = [r['method'] for r in rows]
  assert methods == ['ours-paper-defaults', 'ours-proposed', 'ours-fit-weights-proposed',
                     'davinz', 'tracin', 'trak', 'random']
  for row in out['rows']:
    assert -1 <= row['spearman'] <= 1 and row['seconds'] >= 0
  assert 'ours-fit-weights-proposed' in (tmp_path / 'table.md').read_text()
  # The second ground truth: each method's values ranked against the retrained accuracy.
  store = results.UnitStore(tmp_path / 'units')
  for row in out['rows']:
    # A method's cost against the retraining; fitted weights also pay for their probes:
    # the singletons (the whole ground truth) and the retrained unions.
    retrain = store.load(f'draw0/{row["backbone"]}/ground_truth')['seconds']
    probes = (retrain + store.load(f'draw0/{row["backbone"]}/probe_ground_truth')['seconds']
              if row['method'] == 'ours-fit-weights-proposed' else 0.0)
    np.testing.assert_allclose([row['retrain_seconds'], row['probe_retrain_seconds'],
                                row['cost_fraction']],
                               [retrain, probes, (row['seconds'] + probes) / retrain])
    # The ground truth's seed-to-seed agreement, from its per-seed losses.
    per_seed = -np.asarray(store.load(f'draw0/{row["backbone"]}/ground_truth')[
        'test_loss_per_seed'])
    reliability = metrics.replicate_reliability(per_seed)
    assert row['truth_seeds'] == per_seed.shape[1] == config.ground_truth.num_seeds
    np.testing.assert_allclose(
        [row['truth_seed_spearman'], row['truth_reliability'], row['truth_ceiling']],
        [reliability.pairwise, reliability.of_mean, reliability.ceiling])
  # The up-front check (draw_units) lists exactly the units the run wrote.
  assert set(store.names()) == set(valuation_table.draw_units(config, 0))
  # METHOD.md: "Ground truth is always measured on a separate test split, never on T".
  # Both retrainings (the contributors and the probe unions) score on the test split;
  # every method, ours and the baselines, sees the target split only.
  (bench,) = [output for _, _, output in calls['benchmark']]
  test, target = bench.splits.test, bench.splits.target
  assert len(calls['retrain']) == 2 and len(calls['ours']) == 3
  assert len(calls['baseline']) == len(config.baselines.methods)
  for args, _, _ in calls['retrain']:
    np.testing.assert_array_equal(args[1][0], test.x)
    np.testing.assert_array_equal(args[1][1], test.y)
  for args, _, _ in calls['ours'] + calls['baseline']:
    np.testing.assert_array_equal(args[1].x, target.x)
    np.testing.assert_array_equal(args[1].y, target.y)
  # Each row runs its own variant (smoke: the defaults, proposed, fitted proposed).
  assert [(c.ntk.residual, c.mmd.discrepancy, c.valuation.weights)
          for c in (kwargs['config'] for _, kwargs, _ in calls['ours'])] == [
              ('true_class', 'parts', 'standardize'), ('one_hot', 'mixture', 'standardize'),
              ('one_hot', 'mixture', 'fit')]
  # The units hold what the retraining and the fitted row returned.
  for _, _, retrained in calls['retrain']:
    name = ('ground_truth' if list(retrained.names) == [c.name for c in bench.contributors]
            else 'probe_ground_truth')
    unit = store.load(f'draw0/mlp/{name}')
    np.testing.assert_allclose([unit['test_loss'], unit['test_accuracy']],
                               [retrained.test_loss, retrained.test_accuracy], rtol=1e-6)
  np.testing.assert_allclose(store.load('draw0/mlp/ours-fit-weights-proposed')['fit_weights'],
                             calls['ours'][2][2].fit.weights, rtol=1e-6)
  for backbone in config.model.backbones:
    truth = store.load(f'draw0/{backbone}/ground_truth')
    for row in (r for r in out['rows'] if r['backbone'] == backbone):
      values = store.load(f'draw0/{backbone}/{row["method"]}')['values']
      expected = scipy.stats.spearmanr(values, truth['test_accuracy'])[0]
      np.testing.assert_allclose(row['spearman_accuracy'], expected, equal_nan=True)
      # The headline: against METHOD.md's value, minus the retrained test loss.
      minus_loss = -np.asarray(truth['test_loss'])
      for metric, reference in (('spearman', scipy.stats.spearmanr),
                                ('kendall', scipy.stats.kendalltau)):
        np.testing.assert_allclose(row[metric], reference(values, minus_loss)[0],
                                   equal_nan=True, rtol=1e-12)
  _forbid(monkeypatch, (valuation, 'value_contributors'), (ground_truth, 'retrain'))
  monkeypatch.setattr(valuation_table.baselines, 'BASELINES',  # known, never called
                      {name: valuation.value_contributors
                       for name in valuation_table.baselines.BASELINES})
  again = valuation_table.run(config, tmp_path)
  assert [r['spearman'] for r in again['rows']] == [r['spearman'] for r in out['rows']]
  # A setting the saved units depend on changed: refused, not reported from stale units.
  config.ground_truth.steps += 1
  with pytest.raises(ValueError, match='ground_truth.* another config'):
    valuation_table.run(config, tmp_path)
  config.ground_truth.steps -= 1
  config.mmd.num_kernels += 1
  with pytest.raises(ValueError, match='ours-paper-defaults.* another config'):
    valuation_table.run(config, tmp_path)


def test_ablation_term_subsets_are_all_four_each_dropped_and_each_alone():
  # Indices into valuation.TERM_NAMES: E empirical loss, D discrepancy, N NTK, C composition.
  assert valuation.TERM_NAMES == ('empirical_loss', 'discrepancy', 'ntk', 'composition')
  assert ablation.term_subsets() == [
      ('all four', (0, 1, 2, 3)),
      ('drop E', (1, 2, 3)), ('drop D', (0, 2, 3)), ('drop N', (0, 1, 3)), ('drop C', (0, 1, 2)),
      ('only E', (0,)), ('only D', (1,)), ('only N', (2,)), ('only C', (3,))]


def test_ablation_figure_is_a_grid_of_backbones_by_variants(monkeypatch):
  figures = []
  monkeypatch.setattr(ablation.plotting, 'save_figure', lambda fig, path: figures.append(fig))
  rows = [{'backbone': backbone, 'variant': variant, 'terms': label, 'spearman': 0.1,
           'spearman_low': -0.2, 'spearman_high': 1.0}
          for backbone in ('mlp', 'cnn') for variant in ('a', 'b', 'c')
          for label, _ in ablation.term_subsets()]
  ablation.plot(rows, Path('unused'), ci_level=0.95)
  (figure,) = figures
  # Rows are backbones, columns variants: not one row of six panels 21.6 in wide.
  assert len(figure.axes) == 6
  assert figure.axes[0].get_subplotspec().get_geometry()[:2] == (2, 3)
  assert figure.get_figwidth() < 12
  assert [ax.get_title() for ax in figure.axes[:3]] == ['a', 'b', 'c']
  assert [figure.axes[i].get_ylabel() for i in (0, 3)] == ['mlp', 'cnn']
  # Each bar's colour says which kind of subset it is, and the key says so; a CI cap at 1
  # stays inside the frame.
  (legend,) = figure.legends
  assert [t.get_text() for t in legend.get_texts()] == [
      'all four terms', 'one dropped', 'one alone', '95% bootstrap CI']
  for ax in figure.axes:
    low, high = ax.get_xlim()
    assert low < -1 and high > 1


def test_ablation_figure_draws_each_ci_from_its_recorded_ends(monkeypatch):
  figures = []
  monkeypatch.setattr(ablation.plotting, 'save_figure', lambda fig, path: figures.append(fig))
  subsets = [label for label, _ in ablation.term_subsets()]
  # The first CI misses its estimate (0.1 below [0.2, 0.5]), the second is unknown.
  cis = [(0.2, 0.5), (math.nan, math.nan)] + [(-0.2, 0.4)] * (len(subsets) - 2)
  rows = [{'backbone': 'mlp', 'variant': 'a', 'terms': label, 'spearman': 0.1,
           'spearman_low': low, 'spearman_high': high}
          for label, (low, high) in zip(subsets, cis)]
  ablation.plot(rows, Path('unused'), ci_level=0.95)
  (ax,) = figures[0].axes
  (errorbars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
  spans = [segment[:, 0] for segment in errorbars.lines[2][0].get_segments()]
  # Top to bottom, as the bars; none for the NaN CI (not a zero-length whisker).
  np.testing.assert_allclose(spans, [cis[0]] + cis[2:])


@pytest.mark.slow
def test_ablation_smoke_runs_resumes_and_matches_the_score(tmp_path, monkeypatch):
  config = CONFIGS['ablation'].get_config('smoke')
  out = ablation.run(config, tmp_path)
  assert (tmp_path / 'table.md').is_file() and (tmp_path / 'figure.png').is_file()
  store = results.UnitStore(tmp_path / 'units')
  variants = [valuation_table.parse_variant(v) for v in config.valuation.variants]
  assert set(store.names()) == set(ablation.unit_fingerprints(config, variants))
  unit = store.load('mlp/ours-paper-defaults')
  # 'all four' is the score value_contributors returned.
  np.testing.assert_allclose(-np.sum(unit['terms_standardized'], axis=1), unit['values'],
                             rtol=1e-6)
  # Each term subset's ranking against minus the retrained test loss (METHOD.md's value).
  minus_loss = -np.asarray(store.load('mlp/ground_truth')['test_loss'])
  subsets = dict(ablation.term_subsets())
  for row in (r for r in out['rows'] if r['backbone'] == 'mlp'):
    z = np.asarray(store.load(f'mlp/{row["variant"]}')['terms_standardized'])
    values = -z[:, list(subsets[row['terms']])].sum(axis=1)
    np.testing.assert_allclose(row['spearman'],
                               scipy.stats.spearmanr(values, minus_loss)[0], equal_nan=True,
                               rtol=1e-12)
  assert len(out['rows']) == len(config.valuation.variants) * 9
  # Each row's variant setting, and table.md's cells: Spearman, then Kendall, with CIs.
  assert {(r['variant'], r['setting']) for r in out['rows']} == {
      ('ours-paper-defaults', 'METHOD.md defaults'), ('ours-one-hot-N', 'ntk.residual=one_hot')}
  table = [[cell.strip() for cell in line.strip('|').split('|')]
           for line in (tmp_path / 'table.md').read_text().splitlines()
           if line.startswith('| ours-')]
  expected = []
  for r in out['rows']:
    expected.append([r['variant'], r['terms']] + [
        f'{r[m]:+.2f} [{r[m + "_low"]:+.2f}, {r[m + "_high"]:+.2f}]'
        for m in ('spearman', 'kendall')])
  assert table == expected
  _forbid(monkeypatch, (valuation, 'value_contributors'), (ground_truth, 'retrain'))
  again = ablation.run(config, tmp_path)
  assert again['rows'] == out['rows']
  # A setting the saved units depend on changed: refused, not reported from stale units.
  config.ground_truth.steps += 1
  with pytest.raises(ValueError, match='ground_truth.* another config'):
    ablation.run(config, tmp_path)
  config.ground_truth.steps -= 1
  variants_before = config.valuation.variants
  name = variants[1][0]  # the same name, another override
  config.valuation.variants = (variants_before[0], f'{name}|ntk.residual=true_class')
  with pytest.raises(ValueError, match=f'{name}.* another config'):
    ablation.run(config, tmp_path)
  config.valuation.variants = variants_before
  config.data.num_draws = 2  # one draw only: refused rather than ignored
  with pytest.raises(ValueError, match='config.data.num_draws must be 1'):
    ablation.run(config, tmp_path)


def test_subsample_stability_plots_tau_against_the_rows_kept(tmp_path, monkeypatch):
  figures = []
  monkeypatch.setattr(subsample_stability.plotting, 'save_figure',
                      lambda fig, path: figures.append(fig))
  rows = [{'backbone': 'mlp', 'variant': 'v', 'budget': b, 'kept': k, 'repeat': 0,
           'kendall': t} for b, k, t in ((16, 20, 0.5), (32, 31, 0.8))]
  subsample_stability.plot(rows, tmp_path / 'figure')
  line = figures[0].axes[0].lines[0]  # the means (the error bars' caps are lines too)
  np.testing.assert_array_equal(line.get_xdata(), [20, 31])
  np.testing.assert_array_equal(line.get_ydata(), [0.5, 0.8])



def test_subsample_stability_figure_shows_every_tau_and_spread(tmp_path, monkeypatch):
  # Kendall's tau lies in [-1, 1], and a mean + std of taus in [-1, 1] can pass 1 (1, 1 and
  # -1: mean 1/3, std 0.94). The y axis was fixed at [-0.1, 1.05]: a negative mean (a tiny
  # budget) fell off the axes, and a whisker past it was cut, with nothing to say so.
  figures = []
  monkeypatch.setattr(subsample_stability.plotting, 'save_figure',
                      lambda fig, path: figures.append(fig))
  taus = {(16, 20): (-0.6, -0.2), (32, 31): (1.0, 1.0, -1.0)}
  rows = [{'backbone': 'mlp', 'variant': 'v', 'budget': b, 'kept': k, 'repeat': r,
           'kendall': t} for (b, k), values in taus.items() for r, t in enumerate(values)]
  subsample_stability.plot(rows, tmp_path / 'figure')
  ax = figures[0].axes[0]
  (container,) = ax.containers
  np.testing.assert_allclose(np.asarray(container.lines[0].get_ydata(), float),
                             [-0.4, 1.0 / 3.0])
  ends = np.array([segment[:, 1] for segment in container.lines[2][0].get_segments()], float)
  np.testing.assert_allclose(ends, [[-0.6, -0.2], [1 / 3 - np.std(taus[(32, 31)]),
                                                   1 / 3 + np.std(taus[(32, 31)])]])
  low, high = ax.get_ylim()
  assert low < ends.min() and ends.max() < high
  # ... and the axis says what the bars are (table.md's population std over repeats).
  assert 'mean ± std over repeats' in ax.get_ylabel()

@pytest.mark.slow
def test_subsample_stability_counts_the_rows_each_variant_keeps(tmp_path):
  # A variant's own valuation.min_subsample floors its parts: kept was computed once, with
  # the config's floor, for every variant (16 of 84 keeps 20 at a floor of 2, 46 at 8).
  config = CONFIGS['subsample_stability'].get_config('smoke')
  config.valuation.variants = ('ours-paper-defaults|',
                               'floor8|valuation.min_subsample=8')
  config.valuation.budgets = (16,)
  config.valuation.num_repeats = 1
  out = subsample_stability.run(config, tmp_path)
  bench = valuation_table.build_benchmark(config)
  for row in out['rows']:
    floor = 8 if row['variant'] == 'floor8' else config.valuation.min_subsample
    assert row['kept'] == valuation.subsampled_pool_size(bench.contributors, 16, floor), row
  assert len({row['kept'] for row in out['rows']}) == 2


@pytest.mark.slow
def test_subsample_stability_smoke_runs_and_resumes(tmp_path, monkeypatch):
  config = CONFIGS['subsample_stability'].get_config('smoke')
  out = subsample_stability.run(config, tmp_path)
  assert (tmp_path / 'table.md').is_file() and (tmp_path / 'figure.pdf').is_file()
  # Each budget's ranking against the full pool's (budget 0), from the saved units.
  store = results.UnitStore(tmp_path / 'units')
  pool_size = results.read_json(tmp_path / 'results.json')['pool_size']
  bench = valuation_table.build_benchmark(config)
  kept = {b: valuation.subsampled_pool_size(bench.contributors, b,
                                            config.valuation.min_subsample)
          for b in config.valuation.budgets}
  for row in out['rows']:
    def values(budget, repeat, row=row):
      return store.load(subsample_stability.unit_name(row['backbone'], row['variant'], budget,
                                                      repeat))['values']
    np.testing.assert_allclose(
        row['kendall'], scipy.stats.kendalltau(values(row['budget'], row['repeat']),
                                               values(0, 0))[0], equal_nan=True, rtol=1e-12)
    # A subsample is not the full pool, and each repeat draws a subsample of its own.
    assert not np.allclose(values(row['budget'], row['repeat']), values(0, 0))
    if row['repeat'] > 0:
      assert not np.allclose(values(row['budget'], row['repeat']), values(row['budget'], 0))
    # The rows kept, not the budget: shares are rounded and floored at min_subsample.
    assert row['kept'] == kept[row['budget']]
    assert row['fraction'] == row['kept'] / pool_size < 1
  assert any(k != b for b, k in kept.items()), kept  # the smoke pool's budgets show it
  # One unit per (backbone, variant): the full-pool reference and each (budget, repeat).
  assert len(store.names()) == len(config.model.backbones) * len(config.valuation.variants) * (
      1 + len(config.valuation.budgets) * config.valuation.num_repeats)
  # The summary per (backbone, variant, budget), in row order: mean, (population) std and min
  # of tau over the repeats; table.md shows the same numbers.
  summary = results.read_json(tmp_path / 'results.json')['summary']
  groups = {}
  for row in out['rows']:
    groups.setdefault((row['backbone'], row['variant'], row['budget']), []).append(
        row['kendall'])
  assert [(s['backbone'], s['variant'], s['budget']) for s in summary] == list(groups)
  lines = []
  for s, taus in zip(summary, groups.values()):
    taus = np.asarray(taus, np.float64)
    assert s['repeats'] == taus.size == config.valuation.num_repeats
    np.testing.assert_allclose([s['kendall_mean'], s['kendall_std'], s['kendall_min']],
                               [np.mean(taus), np.std(taus), np.min(taus)], rtol=1e-12)
    assert s['kept'] == kept[s['budget']]
    lines.append(f'| {s["backbone"]} | {s["variant"]} | {s["budget"]} | {s["kept"]} | '
                 f'{np.mean(taus):+.2f} | '
                 f'{np.std(taus):.2f} | {np.min(taus):+.2f} | {taus.size} |')
  assert (tmp_path / 'table.md').read_text().splitlines()[-len(lines):] == lines
  assert len(out['rows']) == (len(config.valuation.variants) * len(config.valuation.budgets)
                              * config.valuation.num_repeats)
  variants = [valuation_table.parse_variant(v) for v in config.valuation.variants]
  assert set(results.UnitStore(tmp_path / 'units').names()) == set(
      subsample_stability.unit_fingerprints(config, variants, list(config.valuation.budgets)))
  _forbid(monkeypatch, (valuation, 'value_contributors'))
  again = subsample_stability.run(config, tmp_path)
  assert again['rows'] == out['rows']
  # Which budgets run is not something a unit depends on: fewer of them reuse the rest.
  config.valuation.budgets = tuple(config.valuation.budgets)[:1]
  fewer = subsample_stability.run(config, tmp_path)
  assert fewer['rows'] == [r for r in out['rows'] if r['budget'] == config.valuation.budgets[0]]
  config.mmd.num_kernels += 1
  with pytest.raises(ValueError, match='another config'):
    subsample_stability.run(config, tmp_path)
  config.valuation.budgets = (0,)
  with pytest.raises(ValueError, match='config.valuation.budgets must hold integers >= 1'):
    subsample_stability.run(config, tmp_path)
