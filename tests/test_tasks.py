"""Tests of dv_jax/tasks.py: the LM-as-classifier objective against closed forms and the
independent `dv_jax.models.lm.response_nll`, the shared contributor helpers, and every task
builder on tiny sizes (paper-scale builders on the on-disk fixtures of task_fixtures.py).
"""

import json
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import task_fixtures
from dv_jax import ntk
from dv_jax import tasks
from dv_jax import training
from dv_jax.data import tokenize
from dv_jax.data.contributors import Split
from dv_jax.models import lm as lm_lib
from dv_jax.models.transformer import TransformerLM

DESIGN = dict(num_contributors=4, size_range=(10, 20), pis=(0.0, 0.5, 1.0),
              truncations=('none', 'hard:3', 'top_p:0.6', 'temperature:0.5'),
              label_noises=(0.0, 0.2), contributor_seed=0)


def _jsonl(path):
  """The records of a JSONL fixture."""
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _config(data, model):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(data)
  config.model = ml_collections.ConfigDict(model)
  return config


def _row_set(x):
  x = np.asarray(x)
  return {r.tobytes() for r in x.reshape(x.shape[0], -1)}


# ----------------------------------------------------------------------------------------
# The LM objective.


def test_registry_and_unknown_names():
  assert set(tasks.TASKS) == {'mnist5k', 'cifar100', 'tweets', 'arithmetic', 'instruction',
                              'reasoning', 'sentiment'}
  with pytest.raises(ValueError, match="unknown task 'imagenet'; known: .*mnist5k"):
    tasks.build_task('imagenet', _config({}, {}))
  with pytest.raises(KeyError, match='known'):
    tasks.TASKS['imagenet']  # pylint: disable=pointless-statement


def test_pack_unpack_round_trip():
  tokens = np.array([[2, 7, 4, 9, 3, 0], [2, 5, 4, 8, 8, 3]])
  mask = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
  x = tasks.pack_lm(tokens, mask, np.array([5, 6]))
  assert x.shape == (2, 3, 6) and x.dtype == np.float32
  t, m, a = tasks.unpack_lm(x)
  np.testing.assert_array_equal(t, tokens)
  np.testing.assert_array_equal(m, mask)
  np.testing.assert_array_equal(a, [[1, 1, 1, 1, 1, 0], [1] * 6])
  assert tasks.pack_lm(np.zeros((0, 4), int), np.zeros((0, 4)), np.zeros(0, int)).shape == (
      0, 3, 4)


@pytest.mark.parametrize('tokens, mask, lengths, message', [
    (np.zeros((2, 1), int), np.zeros((2, 1)), [1, 1], r'\[n, t\]'),
    (np.zeros((1, 3)), np.array([[0, 1, 1]]), [3], 'integer'),
    (np.array([[0, 1, 1 << 24]]), np.array([[0, 1, 1]]), [3], '2\\^24'),
    (np.array([[0, 1, 2]]), np.array([[0, 2, 1]]), [3], '0/1'),
    (np.array([[0, 1, 2]]), np.array([[1, 0, 0]]), [3], 'no response token'),
    (np.array([[0, 1, 2]]), np.array([[0, 1, 0]]), [4], 'lengths'),
    # A fractional length would silently widen the attention mask (arange(t) < 2.5).
    (np.array([[0, 1, 2]]), np.array([[0, 1, 0]]), [2.5], 'lengths must be int'),
    # A response token among the pads: g would average the pads' log-probabilities.
    (np.array([[0, 1, 2, 0]]), np.array([[0, 1, 1, 1]]), [3],
     'beyond lengths in rows \\[0\\]'),
])
def test_pack_errors(tokens, mask, lengths, message):
  with pytest.raises(ValueError, match=message):
    tasks.pack_lm(tokens, mask, np.asarray(lengths))


def test_lm_logits_closed_forms():
  g = np.array([-25.0, -3.0, -0.7, -1e-3, -2e-6])
  z = np.asarray(tasks.lm_logits(jnp.asarray(g, jnp.float32)), np.float64)
  # Cross-entropy at label 0 (the shared training loss) is exactly -g.
  ce = np.asarray(training.cross_entropy(jnp.asarray(z, jnp.float32), jnp.zeros(5, jnp.int32)))
  np.testing.assert_allclose(ce, -g, rtol=2e-4, atol=1e-6)
  p = np.exp(g)
  np.testing.assert_allclose(np.exp(z[:, 0]) / np.exp(z).sum(1), p, rtol=1e-4)
  # TRAK's margin z_0 - logsumexp(z_others) is the log-odds of p = e^g.
  np.testing.assert_allclose(z[:, 0] - z[:, 1], np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)
  # Clamped at g >= -1e-6: finite, and the loss stays below 2e-6.
  z0 = np.asarray(tasks.lm_logits(jnp.zeros(1)))
  assert np.all(np.isfinite(z0))
  assert float(training.cross_entropy(jnp.asarray(z0), jnp.zeros(1, jnp.int32))[0]) < 2e-6
  grad = jax.grad(lambda v: training.cross_entropy(tasks.lm_logits(v), jnp.zeros(3, jnp.int32))
                  .sum())(jnp.array([-4.0, -0.5, -1e-3]))
  np.testing.assert_allclose(grad, -1.0, rtol=1e-3)


def test_mean_response_logprob_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7))
  tokens = rng.integers(0, 7, size=(3, 5))
  mask = np.array([[0, 0, 1, 1, 1], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0]], np.float64)
  got = tasks.mean_response_logprob(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens),
                                    jnp.asarray(mask, jnp.float32))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = []
  for b in range(3):
    terms = [logp[b, j - 1, tokens[b, j]] for j in range(1, 5) if mask[b, j]]
    want.append(np.mean(terms) if terms else 0.0)  # the mask on token 0 is ignored
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _tiny_lm_batch():
  tok = tokenize.VocabTokenizer.fit(['a b c d e f'], level='word')
  batch = tokenize.encode_pairs(tok, ['a b c', 'd', 'e f a b'], ['d e', 'f a b c', 'c'],
                                max_len=10)
  model = TransformerLM(vocab_size=tok.vocab_size, num_layers=1, num_heads=2, d_model=8,
                        d_ff=16, max_len=10, pad_id=tok.pad_id)
  lm_apply, params = tasks.init_backbone(model, jax.random.PRNGKey(0), batch.tokens)
  return model, lm_apply, params, batch


def test_lm_classifier_is_the_response_nll_and_its_logit_is_g():
  model, lm_apply, params, batch = _tiny_lm_batch()
  x = tasks.pack_lm(batch.tokens, batch.response_mask, batch.lengths)
  apply_fn = tasks.lm_classifier(lm_apply)
  assert apply_fn == tasks.lm_classifier(lm_apply) and hash(apply_fn) == hash(
      tasks.lm_classifier(lm_apply))
  z = apply_fn(params, x)
  nll = lm_lib.response_nll(lm_apply, params, batch.tokens, batch.response_mask)
  np.testing.assert_allclose(training.cross_entropy(z, jnp.zeros(3, jnp.int32)), nll,
                             rtol=1e-5)
  # The true-class logit is METHOD.md's LM scalar g: the NTK gradients are those of
  # response_logprob_fn.
  ours = ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, np.zeros(3, np.int32))
  ref = ntk.per_example_grads(lm_lib.response_logprob_fn(lm_apply), params, batch.tokens,
                              batch.response_mask)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)
  feats = tasks.lm_features_fn(model, params, block_size=2)(x)
  ref = model.apply({'params': params}, batch.tokens,
                    np.arange(10)[None, :] < batch.lengths[:, None], method=model.features)
  np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)


def test_token_inputs_accept_float_ids():
  model, lm_apply, params, batch = _tiny_lm_batch()
  del model
  wrapped = tasks.TokenInputs(lm_apply)
  np.testing.assert_allclose(wrapped(params, batch.tokens.astype(np.float32)),
                             lm_apply(params, batch.tokens), rtol=1e-6)
  assert wrapped == tasks.TokenInputs(lm_apply) and wrapped != tasks.TokenInputs(len)


# ----------------------------------------------------------------------------------------
# Contributor helpers.


def test_real_part_indices_are_disjoint_and_sized():
  specs = tasks.contributor_specs(ml_collections.ConfigDict(DESIGN), key=jax.random.PRNGKey(3))
  rows = tasks.real_part_indices(specs, 60, key=jax.random.PRNGKey(1))
  assert [r.size for r in rows] == [s.num_real for s in specs]
  flat = np.concatenate(rows)
  assert np.unique(flat).size == flat.size and flat.max() < 60
  syn = tasks.real_part_indices(specs, 60, key=jax.random.PRNGKey(1), part='synthetic')
  assert [r.size for r in syn] == [s.num_synthetic for s in specs]
  with pytest.raises(ValueError, match='pool holds 5 examples'):
    tasks.real_part_indices(specs, 5, key=jax.random.PRNGKey(1))
  # A misspelt part must not silently size the parts by num_synthetic.
  with pytest.raises(ValueError, match="part must be 'real' or 'synthetic', got 'Real'"):
    tasks.real_part_indices(specs, 60, key=jax.random.PRNGKey(1), part='Real')
  # Before: int() made 4.7 contributors 4 and True one contributor.
  for bad in (4.7, True):
    with pytest.raises(ValueError, match=r'config\.data\.num_contributors must be an integer'):
      tasks.contributor_specs(ml_collections.ConfigDict(dict(DESIGN, num_contributors=bad)),
                              key=jax.random.PRNGKey(3))


def test_contributor_specs_take_their_label_noises_from_the_config():
  data = ml_collections.ConfigDict(dict(DESIGN, label_noises=(0.0, 0.25)))
  specs = tasks.contributor_specs(data, key=jax.random.PRNGKey(3))
  # Cycled over K = 4 contributors, then shuffled: each level twice.
  assert sorted(s.label_noise for s in specs) == [0.0, 0.0, 0.25, 0.25]


def test_swap_responses():
  responses = [f'r{i}' for i in range(10)]
  out = tasks.swap_responses(responses, 0.4, key=jax.random.PRNGKey(0))
  assert sorted(out) == sorted(responses)
  assert sum(a != b for a, b in zip(out, responses)) == 4
  assert tasks.swap_responses(responses, 0.0, key=jax.random.PRNGKey(0)) == responses
  # One example to corrupt (0.1 of 10) still gets another example's response.
  one = tasks.swap_responses(responses, 0.1, key=jax.random.PRNGKey(0))
  assert sum(a != b for a, b in zip(one, responses)) == 1
  with pytest.raises(ValueError, match='fraction'):
    tasks.swap_responses(responses, 1.5, key=jax.random.PRNGKey(0))


def test_tweet_truncation_acts_on_sampler_or_labels():
  p = np.array([0.5, 0.3, 0.2])
  kw = dict(base_temperature=1.0, base_top_p=0.9, key=jax.random.PRNGKey(0))
  probs, t, top = tasks.tweet_truncation('temperature:0.5', p, **kw)
  assert (t, top) == (0.5, 0.9) and np.allclose(probs, p)
  probs, t, top = tasks.tweet_truncation('top_p:0.6', p, **kw)
  assert (t, top) == (1.0, 0.6) and np.allclose(probs, p)
  probs, t, top = tasks.tweet_truncation('hard:2', p, **kw)
  assert (t, top) == (1.0, 0.9)
  np.testing.assert_allclose(probs, [0.625, 0.375, 0.0])
  probs, _, _ = tasks.tweet_truncation('none', p, **kw)
  np.testing.assert_allclose(probs, p)


def test_config_digest_is_stable_and_sensitive():
  a = tasks.config_digest(ml_collections.ConfigDict({'x': 1, 'y': (2, 3)}), {'z': 'w'})
  assert a == tasks.config_digest({'y': [2, 3], 'x': 1}, {'z': 'w'})
  assert a != tasks.config_digest({'x': 2, 'y': (2, 3)}, {'z': 'w'})


# ----------------------------------------------------------------------------------------
# Builders (CPU tasks).


def _check_task(task, *, num_contributors=4):
  assert len(task.contributors) == num_contributors
  names = [c.name for c in task.contributors]
  assert len(set(names)) == len(names)
  for spec, c in zip(task.info['contributors'], task.contributors):
    assert (c.num_real, c.num_synthetic) == (spec['num_real'], spec['num_synthetic'])
    assert c.size == spec['size']
    # An all-real contributor's info listed its spec's truncation (e.g. 'hard3') although
    # nothing of it was truncated; its name said 'real'.
    assert (spec['truncation'] is None) == (c.num_synthetic == 0), (c.name, spec)
  assert not np.any(task.target.is_synthetic) and not np.any(task.test.is_synthetic)
  for apply_fn, params in task.backbones.values():
    logits = apply_fn(params, np.asarray(task.target.x[:3], np.float32))
    assert logits.shape == (3, task.num_classes)
    assert np.all(np.isfinite(logits))


def _mnist5k_config():
  return _config(dict(split_seed=0, target_size=50, test_size=60, pool_fraction=0.1,
                      generator_components=8, synthetic_beta=1.0, **DESIGN),
                 dict(backbones=('mlp',), mlp_hidden_sizes=(8,), cnn_channels=(2, 4),
                      init_seed=0))


def test_mnist5k_builder():
  task = tasks.build_task('mnist5k', _mnist5k_config())
  _check_task(task)
  assert task.target.x.shape[1:] == (28, 28, 1) and task.objective == 'classification'
  assert task.target.y.shape[0] == 50 and task.test.y.shape[0] == 60
  pool = _row_set(task.pool.x)
  for c in task.contributors:
    if c.num_real:
      assert _row_set(c.x_real) <= pool  # real parts come from the pool
    if c.num_synthetic:
      assert not _row_set(c.x_synthetic) & pool
  assert not _row_set(task.target.x) & pool and not _row_set(task.test.x) & pool


ARITH_DATA = dict(num_values=12, beta=1.5, operation='add', modulus=0, pool_size=200,
                  target_size=30, test_size=40, split_seed=0, num_contributors=4,
                  size_range=(20, 40), pis=(0.0, 0.5), truncations=('hard:3',),
                  label_noises=(0.0, 0.25), contributor_seed=0)
ARITH_MODEL = dict(num_layers=1, num_heads=2, d_model=16, d_ff=32, mlp_hidden_sizes=(8,),
                   init_seed=0, feature_block_size=8)


def test_arithmetic_one_hot_head_truncation_and_label_noise():
  task = tasks.build_task('arithmetic', _config(
      dict(objective='classification', representation='one_hot', **ARITH_DATA),
      dict(backbones=('mlp',), **ARITH_MODEL)))
  _check_task(task)
  assert task.num_classes == 23
  for spec, c in zip(task.info['contributors'], task.contributors):
    wrong = 0
    for x, y, is_synthetic in ((c.x_real, c.y_real, False),
                               (c.x_synthetic, c.y_synthetic, True)):
      x = np.asarray(x)
      if not x.shape[0]:
        continue
      a, b = x[:, :12].argmax(1), x[:, 12:].argmax(1)
      wrong += int(np.sum(a + b != np.asarray(y)))
      if is_synthetic:
        assert a.max() < 3 and b.max() < 3  # hard:3 keeps the head operands only
    expected = (round(spec['label_noise'] * c.num_real)
                + round(spec['label_noise'] * c.num_synthetic))
    assert wrong == expected


def test_arithmetic_draws_are_independent_across_contributors_and_splits():
  # One spec for all four contributors and equal target / test sizes: only the keys tell
  # the draws apart, so a key shared by two of them shows as equal arrays.
  data = dict(ARITH_DATA, objective='classification', representation='one_hot',
              target_size=30, test_size=30, size_range=(30, 30), pis=(0.5,),
              truncations=('none',), label_noises=(0.0,))
  task = tasks.build_task('arithmetic', _config(data, dict(backbones=('mlp',), **ARITH_MODEL)))
  synthetic = [np.asarray(c.x_synthetic) for c in task.contributors]
  assert all(x.shape[0] == 15 for x in synthetic)
  for i in range(len(synthetic)):
    for j in range(i):
      assert not np.array_equal(synthetic[i], synthetic[j]), (i, j)
  assert not np.array_equal(np.asarray(task.target.x), np.asarray(task.test.x))
  with pytest.raises(ValueError, match=r'model\.backbones is empty'):
    tasks.build_task('arithmetic', _config(data, dict(ARITH_MODEL, backbones=())))


def test_arithmetic_tokens_and_lm_objectives():
  cls = tasks.build_task('arithmetic', _config(
      dict(objective='classification', representation='tokens', **ARITH_DATA),
      dict(backbones=('transformer',), **ARITH_MODEL)))
  _check_task(cls)
  assert cls.target.x.dtype == np.int32 and cls.target.x.shape == (30, 8)
  lm = tasks.build_task('arithmetic', _config(
      dict(objective='lm', representation='tokens', **ARITH_DATA),
      dict(backbones=('transformer',), **ARITH_MODEL)))
  _check_task(lm)
  assert lm.objective == 'lm' and lm.num_classes == 2 and lm.target.x.shape == (30, 3, 11)
  assert np.all(np.asarray(lm.target.y) == 0)
  feats = lm.features_fn['transformer'](lm.target.x)
  assert feats.shape == (30, 16)
  # The questions agree across the two views of the same seed.
  prompt = cls.target.x != 0  # <bos> question <sep>, then padding where the LM has answers
  np.testing.assert_array_equal(cls.target.x[prompt],
                                np.asarray(lm.target.x[:, 0, :8])[prompt])
  with pytest.raises(ValueError, match='objective'):
    tasks.build_task('arithmetic', _config(dict(objective='regression', representation='x',
                                                **ARITH_DATA), dict(backbones=('mlp',))))
  with pytest.raises(ValueError, match="known: \\('transformer',\\)"):
    tasks.build_task('arithmetic', _config(
        dict(objective='lm', representation='tokens', **ARITH_DATA),
        dict(backbones=('mlp',), **ARITH_MODEL)))


# ----------------------------------------------------------------------------------------
# Builders (paper scale, on fixtures).


@pytest.fixture(scope='module')
def fixtures(tmp_path_factory):
  root = tmp_path_factory.mktemp('task_fixtures')
  return dict(
      cifar=task_fixtures.write_fake_cifar100(root / 'cifar'),
      generated=task_fixtures.write_generated_npz(root / 'generated.npz'),
      checkpoint=task_fixtures.write_tiny_checkpoint(root / 'ckpt'),
      alpaca=task_fixtures.write_alpaca_jsonl(root / 'alpaca.jsonl'),
      gsm8k=task_fixtures.write_gsm8k_jsonl(root / 'gsm8k.jsonl'),
      sst2=task_fixtures.write_sst2_jsonl(root / 'sst2.jsonl'))


def _cifar_config(fixtures, source=''):
  return _config(dict(directory=str(fixtures['cifar']), normalize=True, split_seed=0,
                      target_size=100, test_size=100, pool_size=300, synthetic_source=source,
                      generator_components=8, generator_fit_size=200, synthetic_beta=1.0,
                      **DESIGN),
                 dict(backbones=('cnn',), resnet_width=2, cnn_channels=(2, 4),
                      mlp_hidden_sizes=(8,), init_seed=0))


def test_cifar100_builder_pca_and_generated_images(fixtures):
  task = tasks.build_task('cifar100', _cifar_config(fixtures))
  _check_task(task)
  assert task.pool.x.shape == (300, 32, 32, 3) and task.test.x.shape == (100, 32, 32, 3)
  assert task.info['synthetic'] == 'pca_gaussian'
  generated = tasks.build_task('cifar100', _cifar_config(fixtures, str(fixtures['generated'])))
  _check_task(generated)
  for spec, c in zip(generated.info['contributors'], generated.contributors):
    if c.num_synthetic and spec['label_noise'] == 0:
      assert set(np.asarray(c.y_synthetic).tolist()) <= {0, 1, 2, 3, 5}
  # Any draw from the generated set passes that: hard:3 must also keep to the head, classes
  # 0..2 (rank = class index), and with the law ignored some draw would leave it.
  config = _cifar_config(fixtures, str(fixtures['generated']))
  config.data.truncations, config.data.label_noises, config.data.pis = ('hard:3',), (0.0,), (0.25,)
  for c in tasks.build_task('cifar100', config).contributors:
    assert c.num_synthetic and set(np.asarray(c.y_synthetic).tolist()) <= {0, 1, 2}
  config = _cifar_config(fixtures)
  config.data.directory = ''
  with pytest.raises(ValueError, match='nothing is downloaded'):
    tasks.build_task('cifar100', config)
  config = _cifar_config(fixtures)
  config.model.backbones = ('vit',)
  with pytest.raises(ValueError, match='known'):
    tasks.build_task('cifar100', config)


def test_cifar100_splits_come_from_their_official_images(fixtures):
  from dv_jax.data import cifar100  # pylint: disable=g-import-not-at-top
  data = cifar100.load_cifar100(str(fixtures['cifar']), normalize=True)
  task = tasks.build_task('cifar100', _cifar_config(fixtures))
  assert task.target.y.shape[0] == 100 and task.test.y.shape[0] == 100
  # The target is held out of the training images, the test set drawn from the test ones.
  assert _row_set(task.target.x) <= _row_set(data.x_train)
  assert _row_set(task.test.x) <= _row_set(data.x_test)
  # generator_fit_size=200 fits the generator on 200 of the 300 pool images; 0 on all.
  config = _cifar_config(fixtures)
  config.data.generator_fit_size = 0
  all_rows = tasks.build_task('cifar100', config)
  assert any(c.num_synthetic and not np.array_equal(c.x_synthetic, a.x_synthetic)
             for c, a in zip(task.contributors, all_rows.contributors))


@pytest.mark.parametrize('test_size', [-3, 201])
def test_cifar100_test_size_outside_the_official_split_is_refused(fixtures, test_size):
  # Only 0 means "all 200 test images"; these used to mean it too, without a word.
  config = _cifar_config(fixtures)
  config.data.test_size = test_size
  with pytest.raises(ValueError, match=r'^config\.data\.test_size must be an integer in '
                                       rf'\[0, 200\], got {test_size}$'):
    tasks.build_task('cifar100', config)


def test_cifar100_generated_images_draw_per_contributor_with_label_noise(fixtures):
  from dv_jax.data import cifar100  # pylint: disable=g-import-not-at-top
  data = cifar100.load_cifar100(str(fixtures['cifar']), normalize=True)
  source = cifar100.load_generated_images(str(fixtures['generated']),
                                          channel_mean=data.channel_mean,
                                          channel_std=data.channel_std)
  label_of = {r.tobytes(): int(y) for r, y in zip(np.asarray(source.x).reshape(60, -1),
                                                  np.asarray(source.y))}
  # Four equal specs: only the per-contributor keys tell their draws apart.
  config = _cifar_config(fixtures, str(fixtures['generated']))
  config.data.update(size_range=(12, 12), pis=(0.5,), truncations=('none',),
                     label_noises=(0.5,))
  task = tasks.build_task('cifar100', config)
  draws = []
  for c in task.contributors:
    x = np.asarray(c.x_synthetic).reshape(c.num_synthetic, -1)
    assert c.num_synthetic == 6 and _row_set(x) <= set(label_of)  # generated images only
    flipped = sum(label_of[r.tobytes()] != y for r, y in zip(x, np.asarray(c.y_synthetic)))
    assert flipped == round(0.5 * 6)
    draws.append(x)
  for i in range(len(draws)):
    for j in range(i):
      assert not np.array_equal(draws[i], draws[j]), (i, j)


def _text_config(fixtures, name):
  path = fixtures[{'instruction': 'alpaca', 'reasoning': 'gsm8k', 'sentiment': 'sst2'}[name]]
  return _config(dict(path=str(path), split='', max_records=0, drop_empty=False,
                      target_path='', test_path='',
                      target_split='', test_split='', target_size=6, test_size=6,
                      split_seed=0, max_len=24,
                      num_contributors=4, size_range=(4, 8), pis=(0.0, 0.5, 1.0),
                      label_noises=(0.0, 0.5), contributor_seed=0),
                 dict(backbones=('llm',), checkpoint=str(fixtures['checkpoint']),
                      dtype='float32', remat=False, feature_block_size=4,
                      **task_fixtures.TOKENS))


@pytest.mark.parametrize('name', ['instruction', 'reasoning', 'sentiment'])
def test_text_lm_builder_on_a_tiny_checkpoint(fixtures, name):
  task = tasks.build_task(name, _text_config(fixtures, name))
  _check_task(task)
  assert task.objective == 'lm' and task.name == name and task.target.x.shape == (6, 3, 24)
  assert task.info['num_real_records'] == 30 - 12 and task.info['num_synthetic_records'] == 24
  apply_fn, params = task.backbones['llm']
  tokens, mask, _ = tasks.unpack_lm(task.test.x)
  nll = lm_lib.response_nll(apply_fn.lm_apply, params, np.asarray(tokens), np.asarray(mask))
  np.testing.assert_allclose(
      training.cross_entropy(apply_fn(params, task.test.x), jnp.zeros(6, jnp.int32)), nll,
      rtol=1e-5)
  assert task.features_fn['llm'](task.target.x).shape == (6, 16)
  # Held-out target / test records are real and never in a contributor.
  pool = _row_set(task.pool.x)
  assert not _row_set(task.target.x) & pool and not _row_set(task.test.x) & pool


def test_sentiment_lm_responses_are_label_names_and_noise_flips_them(fixtures):
  # An SST-2 review is the prompt and its label name the response (one token each here);
  # label noise gives a chosen review the OTHER label, as in the classification tasks.
  config = _text_config(fixtures, 'sentiment')
  config.data.update(pis=(1.0,), label_noises=(0.0, 1.0), size_range=(4, 4))
  task = tasks.build_task('sentiment', config)
  # The fixture tokenizer's ids are positions in its word list.
  vocab = task_fixtures.SPECIALS + task_fixtures.WORDS + task_fixtures.LABEL_WORDS
  rows = _jsonl(fixtures['sst2'])
  label_of = {r['sentence']: r['label'] for r in rows}
  num_flipped = []
  for contributor in task.contributors:
    tokens, mask, _ = tasks.unpack_lm(contributor.x_real)
    flipped = 0
    for row, row_mask in zip(np.asarray(tokens, np.int64), np.asarray(mask)):
      words = [vocab[t] for t in row]
      response = [w for w, m in zip(words, row_mask) if m > 0 and w in vocab[-2:]]
      assert len(response) == 1  # the label name is the response
      prompt = ' '.join(w for w, m in zip(words, row_mask) if m == 0 and w in task_fixtures.WORDS)
      flipped += response[0] != ('negative', 'positive')[label_of[prompt]]
    num_flipped.append(flipped)
  expected = [round(spec['label_noise'] * 4) for spec in task.info['contributors']]
  assert num_flipped == expected and sorted(expected) == [0, 0, 4, 4]


def test_text_lm_held_out_sources_have_their_own_split(fixtures, tmp_path):
  # One `split` used to be read for path, target_path and test_path alike: a target in the
  # pool's own DatasetDict was its training split again, and a JSONL target failed.
  datasets = pytest.importorskip('datasets')
  rows = _jsonl(fixtures['alpaca'])
  def dataset(records):
    return datasets.Dataset.from_dict({k: [r[k] for r in records] for k in records[0]})

  folder = str(tmp_path / 'alpaca_dd')
  datasets.DatasetDict({'train': dataset(rows[6:]), 'heldout': dataset(rows[:6])}
                       ).save_to_disk(folder)
  config = _text_config(fixtures, 'instruction')
  config.data.update(path=folder, split='train', target_path=folder, target_split='heldout')
  task = tasks.build_task('instruction', config)
  assert task.target.x.shape[0] == 6 and not _row_set(task.target.x) & _row_set(task.pool.x)
  # A JSONL target beside a DatasetDict pool takes no split.
  real_jsonl = tmp_path / 'target.jsonl'
  real_jsonl.write_text(''.join(json.dumps(r) + '\n' for r in rows[:6]), encoding='utf-8')
  config.data.update(target_path=str(real_jsonl), target_split='')
  assert _row_set(tasks.build_task('instruction', config).target.x) == _row_set(task.target.x)
  # A held-out file with synthetic records is refused: the target is real data.
  config.data.update(target_path=str(fixtures['alpaca']))
  with pytest.raises(ValueError, match='target_path holds 24 records marked source: synthetic'):
    tasks.build_task('instruction', config)
  # The pool's own path and split as a held-out source is refused, naming the fields.
  config.data.update(target_path=folder, target_split='train')
  with pytest.raises(ValueError, match=r"target_path with target_split='train' reads the "
                                       r'same records as config.data.path'):
    tasks.build_task('instruction', config)


def test_text_lm_refuses_token_ids_past_the_vocabulary(fixtures, tmp_path):
  """A tokenizer.json from another model used to give NaN logits (an id past the embedding
  table is not an error inside jit), so every score was NaN with no word of why."""
  import shutil  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  ckpt = tmp_path / 'ckpt'
  shutil.copytree(fixtures['checkpoint'], ckpt)
  words = task_fixtures.SPECIALS + task_fixtures.WORDS + task_fixtures.LABEL_WORDS
  vocab = {tok: i + 100 * (tok in task_fixtures.WORDS) for i, tok in enumerate(words)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.save(str(ckpt / 'tokenizer.json'))
  config = _text_config(fixtures, 'instruction')
  config.model.checkpoint = str(ckpt)
  with pytest.raises(ValueError, match=r'the tokenizer gives id 1\d\d, outside the model '
                                       r'vocabulary \(config.json vocab_size=\d+\)'):
    tasks.build_task('instruction', config)


@pytest.mark.parametrize('max_len', [65, 0])
def test_text_lm_max_len_is_checked_against_the_checkpoint_context(fixtures, max_len):
  """A max_len past config.json's max_position_embeddings (64 here) ran in silence on rotary
  positions the checkpoint never saw; 0 was refused as a bare `max_len`, not the field."""
  config = _text_config(fixtures, 'instruction')
  config.data.max_len = max_len
  with pytest.raises(ValueError, match=r'config\.data\.max_len(=65 is past the context of '
                                       r'.*max_position_embeddings=64| must be an integer)'):
    tasks.build_task('instruction', config)
  config.data.max_len = 64  # the whole context is fine
  assert tasks.build_task('instruction', config).target.x.shape == (6, 3, 64)


def test_text_lm_warns_of_special_tokens_the_checkpoint_names_but_the_config_drops(
    fixtures, tmp_path):
  """Llama-3 is trained with <|begin_of_text|>; a run with the config's default
  bos_token='' encodes without it, which used to pass in silence."""
  import shutil  # pylint: disable=g-import-not-at-top
  ckpt = tmp_path / 'ckpt'
  shutil.copytree(fixtures['checkpoint'], ckpt)
  (ckpt / 'tokenizer_config.json').write_text(json.dumps(
      {'bos_token': '<s>', 'eos_token': {'content': '</s>', 'lstrip': False}}))
  config = _text_config(fixtures, 'instruction')
  config.model.update(checkpoint=str(ckpt), bos_token='', eos_token='')
  with pytest.warns(UserWarning) as record:
    tasks.load_lm_checkpoint(config.model)
  messages = sorted(str(w.message) for w in record)
  assert len(messages) == 2
  assert "names bos_token='<s>' but config.model.bos_token is ''" in messages[0]
  assert "set --config.model.eos_token='</s>'" in messages[1]
  config.model.update(bos_token='<s>', eos_token='</s>')  # named: nothing to say
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    tasks.load_lm_checkpoint(config.model)
  (ckpt / 'tokenizer_config.json').write_text(json.dumps({'bos_token': None}))  # as Qwen2
  config.model.update(bos_token='', eos_token='')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    tasks.load_lm_checkpoint(config.model)


def test_lm_checkpoint_warns_when_its_tokenizer_glues_prompt_and_response(fixtures, tmp_path):
  """A byte-level BPE (Qwen2, Llama-3) gives a separately encoded response no leading
  space: with sep_token='' the model reads 'a lot.positive'. The fixture's word-level
  tokenizer does not (the test above runs it with warnings as errors)."""
  import shutil  # pylint: disable=g-import-not-at-top
  tokenizers = pytest.importorskip('tokenizers')
  ckpt = tmp_path / 'ckpt'
  shutil.copytree(fixtures['checkpoint'], ckpt)
  symbols = task_fixtures.SPECIALS + tuple('Ġabcdefghijklmnopqrstuvwxyz')
  vocab = {symbol: i for i, symbol in enumerate(symbols)}
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, [], unk_token='[UNK]'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.add_special_tokens(list(task_fixtures.SPECIALS))
  tok.save(str(ckpt / 'tokenizer.json'))
  config = _text_config(fixtures, 'instruction')
  config.model.checkpoint = str(ckpt)
  with pytest.warns(UserWarning, match=r"encodes a response apart from its prompt without the "
                                       r".*config\.model\.sep_token is ''"):
    tasks.load_lm_checkpoint(config.model)
  config.model.sep_token = 'Ġ'  # a separator named: nothing to say
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    tasks.load_lm_checkpoint(config.model)


def _encoded_records(path, config):
  """`pack_lm` rows of every record in `path`, and which are synthetic."""
  from dv_jax.data import text  # pylint: disable=g-import-not-at-top
  records = text.load_text_task(str(path), task='instruction')
  _, _, tokenizer = tasks.load_lm_checkpoint(config.model)
  batch = tokenize.encode_pairs(tokenizer, list(records.prompts), list(records.responses),
                                max_len=int(config.data.max_len))
  return (tasks.pack_lm(batch.tokens, batch.response_mask, batch.lengths),
          np.asarray(records.is_synthetic))


def test_text_lm_target_is_the_target_file_and_synthetic_parts_the_synthetic_records(
    fixtures, tmp_path):
  rows = _jsonl(fixtures['alpaca'])
  target_file = tmp_path / 'target.jsonl'
  target_file.write_text(''.join(json.dumps(r) + '\n' for r in rows[3:9]), encoding='utf-8')
  pool_file = task_fixtures.write_alpaca_jsonl(tmp_path / 'pool.jsonl', num_real=20,
                                               num_synthetic=24, seed=1)
  config = _text_config(fixtures, 'instruction')
  # All-synthetic contributors needing 22 of the 24 synthetic records, more than the 14
  # real ones left once the test split is held out: synthetic rows read through positions
  # among the real ones would repeat.
  config.data.update(path=str(pool_file), target_path=str(target_file), pis=(0.0,),
                     size_range=(5, 6), label_noises=(0.0,))
  task = tasks.build_task('instruction', config)
  expected_target, _ = _encoded_records(target_file, config)
  np.testing.assert_array_equal(task.target.x, expected_target)
  x_all, is_synthetic = _encoded_records(pool_file, config)
  synthetic = np.concatenate([np.asarray(c.x_synthetic) for c in task.contributors])
  assert synthetic.shape[0] == 22 and len(_row_set(synthetic)) == 22
  assert _row_set(synthetic) <= _row_set(x_all[is_synthetic])


def test_text_lm_builder_errors(fixtures):
  config = _text_config(fixtures, 'instruction')
  config.model.checkpoint = ''
  with pytest.raises(ValueError, match='checkpoint'):
    tasks.build_task('instruction', config)
  config = _text_config(fixtures, 'instruction')
  config.data.target_size = 40
  with pytest.raises(ValueError, match='too few to hold out'):
    tasks.build_task('instruction', config)
  config = _text_config(fixtures, 'instruction')
  config.data.size_range = (20, 30)
  with pytest.raises(ValueError, match='pool holds'):
    tasks.build_task('instruction', config)
  config = _text_config(fixtures, 'instruction')
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match='dtype'):
    tasks.build_task('instruction', config)


def test_text_records_may_hold_out_every_real_record(fixtures):
  # target_size + test_size equal to the 30 real records was refused as too few to hold out.
  d = _text_config(fixtures, 'instruction').data
  d.update(target_size=12, test_size=18)
  _, real, _, held = tasks._text_records(d, 'instruction')  # pylint: disable=protected-access
  assert real.size == 0
  assert len(held['target'].prompts) == 12 and len(held['test'].prompts) == 18


@pytest.mark.parametrize('field', ['target_size', 'test_size'])
@pytest.mark.parametrize('bad', [-3, 0])
def test_text_held_out_sizes_are_checked_by_name(fixtures, field, bad):
  # Before: int(size) sliced the records, so target_size=-3 held out all but 3 records and
  # left the test set empty; 0 failed only at the ground truth, naming no field.
  d = _text_config(fixtures, 'instruction').data
  d[field] = bad
  with pytest.raises(ValueError, match=rf'config\.data\.{field} must be an integer >= 1'):
    tasks._text_records(d, 'instruction')  # pylint: disable=protected-access


def _pairs(records, rows):
  return {(records.prompts[i], records.responses[i]) for i in rows}


def test_text_records_train_on_no_held_out_record(fixtures, tmp_path):
  # A record written twice could be held out for the test set and also trained on (no
  # copy was dropped); and a test file could share records with the pool's file.
  records = _jsonl(fixtures['alpaca'])
  real = [r for r in records if r['source'] == 'real']
  copies = tmp_path / 'copies.jsonl'
  # Every real record twice, and two synthetic records copying real ones.
  copied = real + real + [dict(real[0], source='synthetic'), dict(real[1], source='synthetic')]
  copies.write_text(''.join(json.dumps(r) + '\n' for r in copied + records[len(real):]))
  d = _text_config(fixtures, 'instruction').data
  d.update(path=str(copies), target_size=6, test_size=6)
  with pytest.warns(UserWarning, match=r'left out 30 real records that repeat an earlier '
                                       r'one .* and 0 records'):
    data, pool_real, syn, held = tasks._text_records(d, 'instruction')  # pylint: disable=protected-access
  assert pool_real.size == 30 - 12  # one of each distinct real record, less the held out
  trained = _pairs(data, pool_real) | _pairs(data, syn)
  for part in held.values():
    assert not _pairs(part, range(len(part.prompts))) & trained
  # A test FILE that shares records with the pool's file: those records are left out.
  test_file = tmp_path / 'test.jsonl'
  test_file.write_text(''.join(json.dumps(r) + '\n' for r in real[:5]))
  d = _text_config(fixtures, 'instruction').data
  d.update(test_path=str(test_file))
  with pytest.warns(UserWarning, match=r'left out 0 real records that repeat an earlier one '
                                       r".* and 5 records equal to a target or test file's"):
    data, pool_real, syn, held = tasks._text_records(d, 'instruction')  # pylint: disable=protected-access
  test = _pairs(held['test'], range(5))
  assert not test & (_pairs(data, pool_real) | _pairs(data, syn))
  # Nor is the target, held out of the pool's file, drawn from them (METHOD.md: the test
  # split is never T).
  assert not test & _pairs(held['target'], range(6))
  assert pool_real.size == 30 - 5 - 6
  # Without copies, nothing is left out and nothing is said.
  d = _text_config(fixtures, 'instruction').data
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    tasks._text_records(d, 'instruction')  # pylint: disable=protected-access


def test_sentiment_copies_of_a_review_are_one_example_whatever_their_labels(fixtures,
                                                                           tmp_path):
  # The response is the label, so copies of a review with other labels were different
  # (prompt, response) records: one could be held out while another was trained on. Now a
  # review is one example: its copies keep the majority label, a tie is dropped (as the
  # tweets are), and a review in a test file is not trained on under another label.
  records = _jsonl(fixtures['sst2'])
  real = [r for r in records if r['source'] == 'real']
  flip = lambda r: dict(r, label=1 - r['label'])  # pylint: disable=unnecessary-lambda-assignment
  # Review 0 three times, its first copy under the minority label (2 to 1); review 1 twice
  # with both labels (a tie).
  copied = [flip(real[0])] + real + [real[0], flip(real[1])]
  path = tmp_path / 'copies.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in copied + records[len(real):]))
  d = _text_config(fixtures, 'sentiment').data
  d.update(path=str(path), target_size=6, test_size=6)
  assert len({r['sentence'] for r in real}) == len(real)  # the fixture's reviews are distinct
  with pytest.warns(UserWarning, match='left out 4 real records'):  # review 0's 2, review 1's 2
    data, pool_real, syn, held = tasks._text_records(d, 'sentiment')  # pylint: disable=protected-access
  seen = [(data.prompts[i], int(data.labels[i])) for i in pool_real]
  seen += [(p, int(y)) for part in held.values() for p, y in zip(part.prompts, part.labels)]
  assert len(seen) == len({p for p, _ in seen}) == len(real) - 1  # review 1 is dropped
  assert (real[0]['sentence'], real[0]['label']) in seen  # its majority label, not the first
  assert real[1]['sentence'] not in {p for p, _ in seen}
  # A test file holding reviews under other labels: those reviews are not trained on.
  test_file = tmp_path / 'test.jsonl'
  test_file.write_text(''.join(json.dumps(flip(r)) + '\n' for r in real[:5]))
  d = _text_config(fixtures, 'sentiment').data
  d.update(test_path=str(test_file))
  with pytest.warns(UserWarning, match='and 5 records equal to a target or test file'):
    data, pool_real, syn, held = tasks._text_records(d, 'sentiment')  # pylint: disable=protected-access
  trained = {data.prompts[i] for i in np.concatenate([pool_real, syn])}
  assert not trained & set(held['test'].prompts)
  assert not set(held['target'].prompts) & set(held['test'].prompts)


def test_a_target_file_and_a_test_file_must_not_share_records(fixtures, tmp_path):
  # ground_truth.retrain's test split "must be disjoint from the target set (the data
  # loaders guarantee it)": two files sharing records were accepted in silence.
  records = _jsonl(fixtures['alpaca'])
  real = [r for r in records if r['source'] == 'real']
  for name, rows in (('target', real[:6]), ('test', real[3:9])):
    (tmp_path / f'{name}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  d = _text_config(fixtures, 'instruction').data
  d.update(target_path=str(tmp_path / 'target.jsonl'), test_path=str(tmp_path / 'test.jsonl'))
  with pytest.raises(ValueError, match=r'config\.data\.target_path and config\.data\.test_path '
                                       r'share 3 records'):
    tasks._text_records(d, 'instruction')  # pylint: disable=protected-access


def test_text_records_read_the_first_max_records(fixtures):
  # The fixture's 54 records: 30 real, then 24 synthetic. No test set max_records > 0 here.
  d = _text_config(fixtures, 'instruction').data
  d.max_records = 20
  data, pool_real, syn, held = tasks._text_records(d, 'instruction')  # pylint: disable=protected-access
  assert len(data.prompts) == 20 and syn.size == 0
  assert pool_real.size == 20 - 6 - 6 and pool_real.max() < 20
  first = _jsonl(fixtures['alpaca'])[:20]
  outputs = {r['output'] for r in first}
  for part in held.values():
    assert set(part.responses) <= outputs


def test_text_records_drop_empty_reaches_the_loader(fixtures, tmp_path):
  # A pool file with an empty output (as Stanford's alpaca_data.json has) is refused, naming
  # the config field that skips such records; with it set the record is left out.
  records = _jsonl(fixtures['alpaca'])
  records[3]['output'] = ''
  path = tmp_path / 'alpaca.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  d = _text_config(fixtures, 'instruction').data
  d.path = str(path)
  with pytest.raises(ValueError, match=r"line 4: field 'output' is empty.*config\.data\."
                                       'drop_empty'):
    tasks._text_records(d, 'instruction')  # pylint: disable=protected-access
  d.drop_empty = True
  with pytest.warns(UserWarning, match='skipped 1 record'):
    data, *_ = tasks._text_records(d, 'instruction')  # pylint: disable=protected-access
  assert len(data.prompts) == len(records) - 1 and '' not in data.responses


@pytest.mark.parametrize('section, field', [('data', 'split_seed'), ('data', 'contributor_seed'),
                                            ('model', 'init_seed')])
@pytest.mark.parametrize('bad', [-1, 2**32, 1.5])
def test_seed_fields_outside_a_prng_key_are_refused_by_name(section, field, bad):
  # PRNGKey keeps a seed's low 32 bits: 2**32 would silently be seed 0 again, -1 be 2**32-1.
  data = dict(ARITH_DATA, objective='classification', representation='one_hot')
  model = dict(backbones=('mlp',), **ARITH_MODEL)
  dict(data=data, model=model)[section][field] = bad
  with pytest.raises(ValueError, match=rf'config\.{section}\.{field} must be an integer'):
    tasks.build_task('arithmetic', _config(data, model))


@pytest.mark.parametrize('task, field', [
    ('mnist5k', 'data.split_seed'), ('mnist5k', 'model.init_seed'),
    ('cifar100', 'data.split_seed'), ('cifar100', 'model.init_seed'),
    ('instruction', 'data.split_seed'),
])
def test_paper_task_seed_fields_outside_a_prng_key_are_refused_by_name(fixtures, task, field):
  # Each builder reads its seeds through config_checks.seed_field: an int() of 2**32 would
  # be refused (if at all) by a loader naming its own `seed`, or wrap to seed 0 in PRNGKey.
  config = {'mnist5k': _mnist5k_config, 'cifar100': lambda: _cifar_config(fixtures),
            'instruction': lambda: _text_config(fixtures, 'instruction')}[task]()
  section, name = field.split('.')
  config[section][name] = 2**32
  with pytest.raises(ValueError, match=rf'config\.{section}\.{name} must be an integer'):
    tasks.build_task(task, config)


def test_generator_fit_rows_seed_is_refused_by_name(fixtures):
  # The PCA generator's fit rows are drawn with data.split_seed + 7; the builders check
  # split_seed before, so the helper is called directly to pin its own check.
  config = _cifar_config(fixtures)
  config.data.update(split_seed=2**32, generator_fit_size=20)  # 20 of the pool's 40 rows
  y = np.repeat(np.arange(4), 10).astype(np.int32)
  pool = Split(np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32), y,
               np.zeros(40, bool))
  with pytest.raises(ValueError, match=r'config\.data\.split_seed must be an integer'):
    tasks._pca_contributors(pool, config, 4)  # pylint: disable=protected-access
