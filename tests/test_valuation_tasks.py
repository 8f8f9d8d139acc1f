"""Tests of the task variants of experiments/valuation_table.py and configs/valuation_table.py.

Every task config builds; each smoke twin runs end to end in a temporary workdir (the
paper-scale ones on the on-disk fixtures of task_fixtures.py) and writes its table and
figures; a rerun recomputes nothing; the paper-scale configs themselves build their data
and model (ResNet-18, the Llama / Qwen checkpoint) on the fixtures. Also here: the
`ntk.residual='loss'` option of dv_jax.valuation that the LM configs use, against a float64
NumPy reference.
"""

import importlib.util
import sys
from pathlib import Path

from absl import app
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import task_fixtures
from dv_jax import ground_truth
from dv_jax import ntk
from dv_jax import results
from dv_jax import tasks
from dv_jax import training
from dv_jax import valuation
from dv_jax.baselines import davinz
from dv_jax.baselines import tracin
from dv_jax.baselines import trak
from dv_jax.data import tweets as tweets_lib
from dv_jax.models.lm import last_layers_filter
from dv_jax.models.llama import Llama
from dv_jax.models.llama import LlamaConfig

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / 'experiments'))
import launch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import valuation_table  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG_PATH = _ROOT / 'configs' / 'valuation_table.py'
_spec = importlib.util.spec_from_file_location('valuation_table_config', _CONFIG_PATH)
CONFIGS = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(CONFIGS)


@pytest.fixture(scope='module')
def fixtures(tmp_path_factory):
  root = tmp_path_factory.mktemp('paper_scale_fixtures')
  return dict(cifar=task_fixtures.write_fake_cifar100(root / 'cifar'),
              checkpoint=task_fixtures.write_tiny_checkpoint(root / 'ckpt'),
              instruction=task_fixtures.write_alpaca_jsonl(root / 'alpaca.jsonl'),
              reasoning_llm=task_fixtures.write_gsm8k_jsonl(root / 'gsm8k.jsonl'),
              sentiment_llm=task_fixtures.write_sst2_jsonl(root / 'sst2.jsonl'))


def _with_fixtures(config, base, fixtures):
  """Points a paper-scale config at the fixtures (the only overrides the tests make)."""
  if base == 'cifar100':
    config.data.directory = str(fixtures['cifar'])
  elif base in CONFIGS.LLM_TEXT:
    config.data.path = str(fixtures[base])
    config.model.checkpoint = str(fixtures['checkpoint'])
    for field, value in task_fixtures.TOKENS.items():
      config.model[field] = value
  return config


@pytest.mark.parametrize('variant', CONFIGS.TASK_VARIANTS)
def test_task_configs_build(variant):
  config = CONFIGS.get_config(variant)
  assert config.variant == variant and config.task in tasks.TASKS
  for section in ('seed', 'task', 'data', 'model', 'ntk', 'mmd', 'bound', 'valuation',
                  'baselines', 'ground_truth', 'output'):
    assert section in config
  names = []
  for spec in config.valuation.variants:
    name, overrides = valuation_table.parse_variant(spec)
    valuation_table.method_config(config, overrides)  # every override names a real field
    names.append(name)
  assert len(set(names)) == len(names)
  smoke = variant.endswith('_smoke')
  if not smoke:
    assert names[0] == 'ours-paper-defaults' and config.data.num_contributors >= 12
    assert set(config.baselines.methods) == {'davinz', 'tracin', 'trak', 'random'}
    assert f'{variant}_smoke' in CONFIGS.TASK_VARIANTS
  base = variant[:-len('_smoke')] if smoke else variant
  if base in CONFIGS.LLM_TEXT or config.data.get('objective') == 'lm':
    assert config.ntk.residual == 'loss'  # METHOD.md's LM residual, the response NLL
  if base in CONFIGS.PAPER_SCALE:  # no local paths in the config: building names them
    with pytest.raises(ValueError, match='(directory|checkpoint|path) must name a local'):
      tasks.build_task(config.task, config)


@pytest.mark.parametrize('field, value, match', [
    ('top_p', 0.0, r'top_p must be in \(0, 1\]'),
    ('temperature', 1e-40, r'temperature must be finite and > 0 in float32'),
])
def test_tweet_sampling_settings_fail_before_the_generator_trains(monkeypatch, field, value,
                                                                 match):
  # Before, the sampler refused them only after the generator LM's training.
  monkeypatch.setattr(tweets_lib, 'train_tweet_lm',
                      lambda *args, **kwargs: pytest.fail('the generator was trained'))
  config = CONFIGS.get_config('tweets_smoke')
  config.data.generator[field] = value
  with pytest.raises(ValueError, match=r'config\.data\.generator \(temperature, top_p\) '
                     f'under the truncation .*{match}'):
    tasks.build_task(config.task, config)


@pytest.mark.parametrize('field', ['split_seed', 'generator.seed'])
def test_tweet_seed_fields_outside_a_prng_key_fail_before_the_generator_trains(monkeypatch,
                                                                              field):
  # Read through config_checks.seed_field: int(2**32) would be refused by load_tweets as its
  # own `seed`, or wrap to seed 0 in PRNGKey (the generator LM's key).
  monkeypatch.setattr(tweets_lib, 'train_tweet_lm',
                      lambda *args, **kwargs: pytest.fail('the generator was trained'))
  config = CONFIGS.get_config('tweets_smoke')
  config.data.update_from_flattened_dict({field: 2**32})
  with pytest.raises(ValueError, match=rf'config\.data\.{field} must be an integer'):
    tasks.build_task(config.task, config)


def test_unknown_variant_and_override_typos_list_the_valid_names():
  with pytest.raises(ValueError, match='unknown variant.*tweets_smoke'):
    CONFIGS.get_config('tweet')
  argv = ['prog', f'--config={_CONFIG_PATH}:tweets_smoke', '--config.data.generator.sed=1']
  with pytest.raises(app.UsageError, match='Valid keys of config.data.generator: .*seed'):
    launch.check_config_overrides(argv)
  launch.check_config_overrides(argv[:2] + ['--config.data.generator.seed=1'])


def test_loss_residual_matches_numpy():
  """`ntk.residual='loss'`: N = sqrt(l^T (Theta + lam I)^-1 l / n), l the loss at theta0."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(14, 5)).astype(np.float32)
  y = rng.integers(0, 3, size=14)
  w = rng.normal(size=(5, 3)).astype(np.float32)

  def apply_fn(params, xb):
    return jnp.tanh(xb @ params['w']) * 2.0

  params = {'w': jnp.asarray(w)}
  contributors = [valuation.Contributor('a', x[:6], y[:6], x[6:9], y[6:9]),
                  valuation.Contributor('b', x[9:], y[9:], None, None)]
  config = valuation.default_config()
  config.ntk.residual = 'loss'
  result = valuation.value_contributors(contributors, (x[:4], y[:4]), apply_fn=apply_fn,
                                        params=params, config=config)
  grads = np.asarray(ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, y),
                     np.float64)
  loss = np.asarray(training.cross_entropy(apply_fn(params, x), jnp.asarray(y)), np.float64)
  for i, rows in enumerate((np.arange(9), np.arange(9, 14))):
    theta = grads[rows] @ grads[rows].T
    lam = 1e-4 * np.trace(theta) / rows.size
    quad = loss[rows] @ np.linalg.solve(theta + lam * np.eye(rows.size), loss[rows])
    np.testing.assert_allclose(result.terms.raw[i, 2], np.sqrt(quad / rows.size), rtol=2e-3)
  # The empirical-loss term is built from the same per-example losses.
  np.testing.assert_allclose(result.terms.raw[:, 0],
                             [6 / 9 * loss[:6].mean() + 3 / 9 * loss[6:9].mean(),
                              loss[9:].mean()], rtol=1e-5)
  config.ntk.residual = 'one-hot'
  with pytest.raises(ValueError, match="'loss'"):
    valuation.value_contributors(contributors, (x[:4], y[:4]), apply_fn=apply_fn,
                                 params=params, config=config)


def _forbid(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('a finished unit was recomputed')
  monkeypatch.setattr(valuation, 'value_contributors', fail)
  monkeypatch.setattr(ground_truth, 'retrain', fail)
  monkeypatch.setattr(valuation_table.baselines, 'BASELINES',
                      {name: fail for name in valuation_table.baselines.BASELINES})


def _check_tweets(config, workdir, out, monkeypatch):
  """The synthetic tweets are a cached unit; a rebuild reuses it (no LM is trained)."""
  store = results.UnitStore(workdir / 'units')
  assert any(n.startswith('cache/tweets_synthetic_') for n in store.names())
  monkeypatch.setattr(tasks, '_tweet_synthetic', None)
  bench = valuation_table.build_benchmark(config, store)
  assert [c.name for c in bench.contributors] == out['draws'][0]['contributors']
  assert bench.splits.target.x.dtype == np.int32
  train = tweets_lib.load_tweets(seed=0, target_size=config.data.target_size,
                                 test_size=config.data.test_size,
                                 train_size=config.data.train_size).train
  head = np.bincount(train.labels).argmax()
  specs = bench.info['contributors']
  hard1 = [c for s, c in zip(specs, bench.contributors)
           if s['truncation'] == 'hard1' and s['label_noise'] == 0 and c.num_synthetic]
  assert hard1
  for c in hard1:  # hard:1 keeps the most frequent label only
    assert set(np.asarray(c.y_synthetic).tolist()) == {head}
  monkeypatch.undo()


@pytest.mark.slow
@pytest.mark.parametrize('base', list(CONFIGS.TASK_OF_VARIANT))
def test_smoke_variant_runs(base, fixtures, tmp_path, monkeypatch):
  config = _with_fixtures(CONFIGS.get_config(f'{base}_smoke'), base, fixtures)
  out = valuation_table.run(config, tmp_path)
  for name in ('results.csv', 'results.json', 'table.md', 'figure.png', 'figure.pdf'):
    assert (tmp_path / name).is_file()
  rows = results.read_csv(tmp_path / 'results.csv')
  expected = ([valuation_table.parse_variant(v)[0] for v in config.valuation.variants]
              + list(config.baselines.methods))
  assert [r['method'] for r in rows] == expected * len(config.model.backbones)
  for row in out['rows']:
    assert -1 <= row['spearman'] <= 1 and row['seconds'] >= 0 and row['retrain_seconds'] > 0
  info = results.read_json(tmp_path / 'results.json')['draws'][0]['task']
  assert len(info['contributors']) == config.data.num_contributors
  if base == 'tweets':
    _check_tweets(config, tmp_path, out, monkeypatch)
  if base in ('tweets', 'instruction'):
    _forbid(monkeypatch)
    monkeypatch.setattr(tasks, '_tweet_synthetic', None)  # the cached tweets are reused
    again = valuation_table.run(config, tmp_path)
    assert [r['spearman'] for r in again['rows']] == [r['spearman'] for r in out['rows']]


@pytest.mark.slow
def test_paper_scale_configs_build_their_models_on_fixtures(fixtures):
  # Sizes the fixture holds; the data and model paths are the paper-scale config's.
  bench = valuation_table.build_benchmark(_cifar100_fixture_config(fixtures))
  apply_fn, params = bench.backbones['resnet18']
  assert apply_fn(params, bench.splits.target.x[:2]).shape == (2, 100)
  for base in CONFIGS.LLM_TEXT:
    config = _with_fixtures(CONFIGS.get_config(base), base, fixtures)
    config.data.update(dict(target_size=6, test_size=6, max_len=24, size_range=(1, 2)))
    config.data.num_contributors = 12
    bench = valuation_table.build_benchmark(config)
    apply_fn, params = bench.backbones['llm']
    x = bench.splits.target.x
    assert x.shape == (6, 3, 24) and apply_fn(params, x).shape == (6, 2)
    assert bench.features_fn['llm'](x).shape == (6, 16)
    assert len(bench.contributors) == 12


def _cifar100_fixture_config(fixtures):
  """The paper's cifar100 config at the sizes the fake CIFAR-100 folder holds."""
  config = _with_fixtures(CONFIGS.get_config('cifar100'), 'cifar100', fixtures)
  config.data.update(dict(target_size=100, test_size=100, pool_size=300,
                          generator_fit_size=200, generator_components=8,
                          size_range=(5, 10)))
  config.model.resnet_width = 2
  return config


@pytest.mark.slow
@pytest.mark.parametrize('base', ['cifar100', 'instruction'])
def test_paper_scale_method_settings_run_on_the_fixtures(fixtures, base):
  # The smoke twins drop the paper-scale NTK settings (block_diagonal on 2048-dim projected
  # gradients, the LLM's 2,000-example subsample; DAVINZ's projection and 100 blocks), so
  # they run here with the paper config itself on the fixtures, at the fixtures' sizes.
  if base == 'cifar100':
    config = _cifar100_fixture_config(fixtures)
  else:
    config = _with_fixtures(CONFIGS.get_config(base), base, fixtures)
    config.data.update(dict(target_size=6, test_size=6, max_len=24, size_range=(1, 2)))
  assert (config.ntk.method, config.ntk.projection_dim) == ('block_diagonal', 2048)
  assert config.valuation.subsample == (0 if base == 'cifar100' else 2000)
  assert (config.baselines.davinz.projection_dim, config.baselines.davinz.num_blocks) == (
      2048, 100)
  bench = valuation_table.build_benchmark(config)
  (backbone, (apply_fn, params)), = bench.backbones.items()
  target = bench.splits.target
  for spec in config.valuation.variants[:2]:  # the defaults and the next row
    _, overrides = valuation_table.parse_variant(spec)
    result = valuation.value_contributors(
        bench.contributors, target, apply_fn=apply_fn, params=params,
        config=valuation_table.method_config(config, overrides),
        features_fn=bench.features_fn.get(backbone))
    assert np.all(np.isfinite(np.asarray(result.values)))
  result = davinz.value(bench.contributors, target, apply_fn=apply_fn, params=params,
                        config=config)
  assert np.all(np.isfinite(result.values)) and np.all(result.extras['ntk'] > 0)


def test_init_features_on_an_lm_fails_before_the_ground_truth(monkeypatch, tmp_path):
  # The variant passes checked_variants (which cannot know the backbone); before, it failed
  # only at its turn, after the ground truth had been retrained and saved.
  config = CONFIGS.get_config('arithmetic_lm_smoke')
  config.valuation.variants = ('lm_init|mmd.feature_space=init_features',)

  def unreachable(*args, **kwargs):
    raise AssertionError('the ground truth was retrained before the check')

  monkeypatch.setattr(valuation_table, 'ground_truth_unit', unreachable)
  with pytest.raises(ValueError, match=r"config\.valuation\.variants: 'lm_init' on backbone "
                                       r"'\w+': init_features: the last Dense layer"):
    valuation_table.run(config, tmp_path)


def test_llm_tasks_refuse_a_truncation_they_would_ignore(fixtures):
  config = _with_fixtures(CONFIGS.get_config('instruction_smoke'), 'instruction', fixtures)
  config.data.truncations = ('hard:5',)
  with pytest.raises(ValueError, match=r"config\.data\.truncations must be \('none',\)"):
    valuation_table.build_benchmark(config)


def test_davinz_projection_preserves_the_ntk_score():
  """Paper-scale DAVINZ projects gradients; a wide Gaussian projection keeps its score."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(12, 6)).astype(np.float32)
  y = rng.integers(0, 2, size=12)
  params = {'w': jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)}

  def apply_fn(p, xb):
    return jnp.tanh(xb @ p['w'])

  contributors = [valuation.Contributor('a', x[:5], y[:5], None, None),
                  valuation.Contributor('b', x[5:8], y[5:8], x[8:], y[8:])]
  config = valuation_table.baselines.default_config()
  config.baselines.davinz.param_filter = ''
  exact = davinz.value(contributors, (x[:4], y[:4]), apply_fn=apply_fn, params=params,
                       config=config)
  config.baselines.davinz.projection_dim = 20000
  config.baselines.davinz.projection_kind = 'gaussian'
  projected = davinz.value(contributors, (x[:4], y[:4]), apply_fn=apply_fn, params=params,
                           config=config)
  np.testing.assert_allclose(projected.extras['ntk'], exact.extras['ntk'], rtol=0.05)
  np.testing.assert_allclose(projected.extras['mmd'], exact.extras['mmd'])
  assert not np.allclose(projected.extras['ntk'], exact.extras['ntk'], rtol=1e-6)


@pytest.mark.slow  # ~30 s of compiles; wiring, which the jax-0.5.3 run need not repeat
def test_last_layers_spec_reaches_every_gradient_method(monkeypatch):
  """'last_layers:1' in ours', DAVINZ's, TracIn's and TRAK's config sections is differentiated
  as the regex of the LM's last block (+ final norm), not as a literal regex or all leaves."""
  model = Llama(LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=8,
                            num_hidden_layers=2, num_attention_heads=2))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 13, size=(10, 6))
  mask = np.zeros((10, 6))
  mask[:, 3:] = 1  # the last three tokens are the response
  x = tasks.pack_lm(tokens, mask, np.full(10, 6))
  y = np.zeros(10, np.int32)
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(tokens[:1]))['params']
  apply_fn = tasks.lm_classifier(lambda p, t: model.apply({'params': p}, t))
  contributors = [valuation.Contributor('a', x[:4], y[:4], None, None),
                  valuation.Contributor('b', x[4:8], y[4:8], None, None)]
  target = (x[8:], y[8:])

  seen = []
  real = ntk.per_example_grads

  def recording(*args, **kwargs):
    seen.append(kwargs['param_filter'])
    return real(*args, **kwargs)

  monkeypatch.setattr(ntk, 'per_example_grads', recording)
  config = valuation_table.baselines.default_config()
  config.update(valuation.default_config())
  config.ntk.param_filter = 'last_layers:1'
  for name in ('davinz', 'tracin', 'trak'):
    config.baselines[name].param_filter = 'last_layers:1'
    if name != 'davinz':
      config.baselines[name].train.update(dict(steps=2, batch_size=4))
  config.baselines.tracin.num_checkpoints = 1
  config.baselines.trak.num_models = 1
  config.baselines.trak.projection_dim = 8
  expected = last_layers_filter(1, total_layers=2)
  valuation.value_contributors(contributors, target, apply_fn=apply_fn, params=params,
                               config=config)
  assert seen and set(seen) == {expected}
  for method in (davinz, tracin, trak):
    seen.clear()
    method.value(contributors, target, apply_fn=apply_fn, params=params, config=config)
    assert seen and set(seen) == {expected}, method.__name__
