"""Tests for dv_jax.models.lm: the LM NTK scalar, response NLL and the last-layers filter."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax.models import lm
from dv_jax.models.checkpoint import param_shapes
from dv_jax.models.llama import Llama
from dv_jax.models.llama import LlamaConfig
from dv_jax.models.transformer import SequenceClassifier
from dv_jax.models.transformer import TransformerLM

V = 23
LM_MODEL = TransformerLM(V, 2, 2, 8, 16, 10)


def _random_params(model, seed=0):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32), shapes['params'])


PARAMS = _random_params(LM_MODEL)


def transformer_apply(params, tokens):
  return LM_MODEL.apply({'params': params}, tokens)


def bigram_apply(params, tokens):
  """logits[b, j] = W[tokens[b, j]] + bias: a model whose gradient has a closed form."""
  return params['W'][tokens] + params['bias'][None, None]


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, size=(3, 8)).astype(np.int32)
  mask = np.zeros((3, 8), np.int32)
  mask[0, 4:] = 1          # prompt 4 tokens, response 4
  mask[1, 0] = 1           # position 0 is ignored (nothing predicts it) ...
  mask[1, 6] = 1           # ... so row 1 has a single response token
  mask[2, 2:5] = 1         # response then right padding (positions 5..7)
  return tokens, mask


def _np_mean_response_logprob(logits, tokens, mask):
  logits = np.asarray(logits, np.float64)
  out = []
  for row in range(tokens.shape[0]):
    values = []
    for j in range(1, tokens.shape[1]):
      if mask[row, j]:
        z = logits[row, j - 1]
        log_softmax = z - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
        values.append(log_softmax[tokens[row, j]])
    out.append(np.mean(values))
  return np.array(out)


def test_response_logprob_matches_numpy_log_softmax():
  tokens, mask = _batch()
  scalar_fn = lm.response_logprob_fn(transformer_apply)
  got = jax.jit(jax.vmap(scalar_fn, in_axes=(None, 0, 0)))(PARAMS, tokens, mask)
  logits = jax.jit(transformer_apply)(PARAMS, tokens)
  ref = _np_mean_response_logprob(logits, tokens, mask)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  assert got.shape == (3,) and np.all(got < 0)
  # The NLL is its negative; n = 3 in blocks of 2 pads the last block (padding dropped).
  np.testing.assert_allclose(
      lm.response_nll(transformer_apply, PARAMS, tokens, mask, block_size=2), -ref,
      rtol=1e-5, atol=1e-6)


def test_mean_response_logprob_of_a_row_without_response_tokens_is_zero():
  # A block's padding rows have no response token (row 1's only mask bit is at position 0,
  # which nothing predicts): their g is the documented 0, not 0 / 0 = NaN.
  tokens, mask = _batch()
  mask[1, 6] = 0
  logits = np.random.default_rng(5).normal(size=(3, 8, V)).astype(np.float32)
  got = np.asarray(lm.mean_response_logprob(logits, tokens, mask))
  rows = [0, 2]
  np.testing.assert_allclose(got[rows], _np_mean_response_logprob(logits[rows], tokens[rows],
                                                                  mask[rows]),
                             rtol=1e-5, atol=1e-6)
  assert got[1] == 0.0


def test_per_example_grads_of_last_layers_match_jax_grad():
  ntk = pytest.importorskip('dv_jax.ntk')
  tokens, mask = _batch()
  regex = lm.last_layers_filter(1, total_layers=2, model='transformer_lm')
  scalar_fn = lm.response_logprob_fn(transformer_apply)
  assert scalar_fn == lm.response_logprob_fn(transformer_apply)  # shares ntk's compile
  got = ntk.per_example_grads(scalar_fn, PARAMS, tokens, mask, param_filter=regex,
                              block_size=2)
  flat = jax.tree_util.tree_flatten_with_path(PARAMS)[0]
  keep = ['/'.join(k.key for k in path) for path, _ in flat]
  keep = [bool(re.search(regex, p)) for p in keep]
  assert any(keep) and not all(keep)
  grad_fn = jax.jit(jax.grad(scalar_fn))
  for row in range(3):
    leaves = jax.tree_util.tree_leaves(grad_fn(PARAMS, tokens[row], mask[row]))
    ref = np.concatenate([np.ravel(g) for g, k in zip(leaves, keep) if k])
    np.testing.assert_allclose(got[row], ref, rtol=1e-4, atol=1e-6)


def test_response_nll_compiles_once_for_every_n():
  rng = np.random.default_rng(4)
  params = {'W': rng.standard_normal((V, V)).astype(np.float32),
            'bias': np.zeros(V, np.float32)}
  before = lm._nll_block._cache_size()  # pylint: disable=protected-access
  for n in (1, 3, 4, 7):
    tokens = rng.integers(0, V, size=(n, 6))
    mask = np.zeros((n, 6), np.int32)
    mask[:, 3:] = 1
    assert lm.response_nll(bigram_apply, params, tokens, mask, block_size=4).shape == (n,)
  assert lm._nll_block._cache_size() - before == 1  # pylint: disable=protected-access


def test_right_padding_does_not_change_the_value():
  tokens, mask = _batch()
  scalar_fn = jax.jit(lm.response_logprob_fn(transformer_apply))
  value = scalar_fn(PARAMS, tokens[2, :5], mask[2, :5])
  np.testing.assert_allclose(scalar_fn(PARAMS, tokens[2], mask[2]), value, rtol=1e-6)
  padded = tokens[2].copy()
  padded[5:] = 0
  np.testing.assert_allclose(scalar_fn(PARAMS, padded, mask[2]), value, rtol=1e-6)


def test_gradient_matches_closed_form_for_bigram_model():
  rng = np.random.default_rng(1)
  params = {'W': rng.standard_normal((V, V)).astype(np.float32),
            'bias': rng.standard_normal(V).astype(np.float32)}
  tokens, mask = _batch(seed=2)
  scalar_fn = lm.response_logprob_fn(bigram_apply)
  grads = jax.jit(jax.vmap(jax.grad(scalar_fn), in_axes=(None, 0, 0)))(params, tokens, mask)
  w, bias = params['W'].astype(np.float64), params['bias'].astype(np.float64)
  for row in range(3):
    positions = [j for j in range(1, 8) if mask[row, j]]
    ref_w, ref_b = np.zeros((V, V)), np.zeros(V)
    for j in positions:
      z = w[tokens[row, j - 1]] + bias
      softmax = np.exp(z - z.max()) / np.sum(np.exp(z - z.max()))
      onehot = np.eye(V)[tokens[row, j]]
      ref_w[tokens[row, j - 1]] += (onehot - softmax) / len(positions)
      ref_b += (onehot - softmax) / len(positions)
    np.testing.assert_allclose(grads['W'][row], ref_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads['bias'][row], ref_b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('tokens, mask, message', [
    (np.zeros((2, 4), np.int32), np.zeros((2, 3)), 'shape'),
    (np.zeros((2, 4), np.int32), np.array([[0, 1, 0, 0], [1, 0, 0, 0]]), r'rows \[1\]'),
    (np.zeros((2, 4), np.int32), np.full((2, 4), 0.5), '0 and 1'),
    (np.zeros((2, 4), np.float32), np.ones((2, 4)), 'integer'),
    (-np.ones((2, 4), np.int32), np.ones((2, 4)), 'non-negative'),
    (np.zeros((2, 1), np.int32), np.ones((2, 1)), 't >= 2'),
    (np.zeros((0, 4), np.int32), np.ones((0, 4)), 'n >= 1'),
])
def test_response_nll_errors(tokens, mask, message):
  with pytest.raises(ValueError, match=message):
    lm.response_nll(bigram_apply, {}, tokens, mask)


def test_response_nll_refuses_ids_beyond_the_vocabulary():
  params = {'W': np.zeros((V, V), np.float32), 'bias': np.zeros(V, np.float32)}
  tokens = np.array([[1, 2, V, 3]], np.int32)  # JAX would clamp id V to V - 1
  with pytest.raises(ValueError, match=f'ids up to {V}, beyond the model.s vocabulary of {V}'):
    lm.response_nll(bigram_apply, params, tokens, np.ones((1, 4)))


def test_response_nll_block_size_error():
  tokens, mask = _batch()
  with pytest.raises(ValueError, match='block_size'):
    lm.response_nll(bigram_apply, {}, tokens, mask, block_size=0)


def _paths(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return ['/'.join(str(k.key) for k in path) for path, _ in flat]


def test_last_layers_filter_on_llama_paths():
  cfg = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=8, num_hidden_layers=12,
                    num_attention_heads=2)
  paths = ['params/' + '/'.join(p) for p in param_shapes(cfg)]
  regex = lm.last_layers_filter(2, total_layers=12)
  selected = {p for p in paths if re.search(regex, p)}
  expected = {p for p in paths if p.startswith(('params/layers_10/', 'params/layers_11/'))}
  expected |= {'params/norm/weight', 'params/lm_head/kernel'}
  assert selected == expected
  # Without the 'params/' prefix the same leaves match; layers_1 is not layers_11.
  assert {p for p in paths if re.search(regex, p[len('params/'):])} == expected
  regex = lm.last_layers_filter(1, total_layers=12, include_head=False)
  assert not re.search(regex, 'params/layers_1/mlp/up_proj/kernel')
  assert re.search(regex, 'params/layers_11/mlp/up_proj/kernel')
  assert not re.search(regex, 'params/lm_head/kernel')
  assert not re.search(regex, 'params/layers_11x/mlp')
  none = lm.last_layers_filter(0, total_layers=12)
  assert {p for p in paths if re.search(none, p)} == {'params/norm/weight',
                                                       'params/lm_head/kernel'}


def test_last_layers_filter_on_transformer_classifier_paths():
  model = SequenceClassifier(V, 2, 3, 2, 8, 16, 10)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  paths = _paths(shapes)
  regex = lm.last_layers_filter(1, total_layers=3, model='transformer_lm')
  selected = {p for p in paths if re.search(regex, p)}
  assert selected == {p for p in paths if p.startswith(
      ('params/backbone/layers_2/', 'params/backbone/final_norm/', 'params/classifier/'))}
  assert any('ln_1' in p for p in selected)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_layers=3, total_layers=2), 'num_layers'),
    (dict(num_layers=-1, total_layers=2), 'num_layers'),
    (dict(num_layers=1, total_layers=0), 'total_layers'),
    (dict(num_layers=1, total_layers=2, model='gpt'), 'model'),
])
def test_last_layers_filter_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    lm.last_layers_filter(**kwargs)


def _llama_shapes(num_layers):
  cfg = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=8,
                    num_hidden_layers=num_layers, num_attention_heads=2)
  model = Llama(cfg)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


def test_resolve_param_filter_reads_depth_and_family_off_the_params():
  shapes = _llama_shapes(12)
  assert lm.resolve_param_filter('last_layers:2', shapes) == lm.last_layers_filter(
      2, total_layers=12)
  assert lm.resolve_param_filter('last_layers:2', shapes['params']) == lm.last_layers_filter(
      2, total_layers=12)
  # The same spec on a 3-block TransformerLM classifier: its family's names, its depth.
  classifier = jax.eval_shape(SequenceClassifier(V, 2, 3, 2, 8, 16, 10).init,
                              jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  regex = lm.resolve_param_filter('last_layers:1', classifier)
  assert regex == lm.last_layers_filter(1, total_layers=3, model='transformer_lm')
  assert {p for p in _paths(classifier) if re.search(regex, p)} == {
      p for p in _paths(classifier) if p.startswith(
          ('params/backbone/layers_2/', 'params/backbone/final_norm/', 'params/classifier/'))}


def test_resolve_param_filter_passes_other_strings_through():
  shapes = _llama_shapes(2)
  assert lm.resolve_param_filter('', shapes) is None
  assert lm.resolve_param_filter('mlp/down_proj', shapes) == 'mlp/down_proj'


@pytest.mark.parametrize('spec, message', [
    ('last_layers:x', "'last_layers:N'"),
    ('last_layers:-1', "'last_layers:N'"),
    ('last_layers:3', "'last_layers:3': the model has 2 blocks, so N must be in [0, 2]"),
    ('last_layers:\u00b2', "'last_layers:N'"),  # str.isdigit() is True: int() failed
    ('last_layers:\u0663', "'last_layers:N'"),  # Arabic-Indic 3 was read as 3
    ('no_such_leaf', 'selects no parameter'),
    ('(', 'not a valid regex'),
])
def test_resolve_param_filter_errors(spec, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    lm.resolve_param_filter(spec, _llama_shapes(2))


def test_resolve_param_filter_needs_numbered_blocks():
  mlp_params = {'Dense_0': {'kernel': jnp.zeros((2, 3))}, 'Dense_1': {'kernel': jnp.zeros(3)}}
  with pytest.raises(ValueError, match='last_layers:1.*layers_'):
    lm.resolve_param_filter('last_layers:1', mlp_params)
  with pytest.raises(ValueError, match='param_filter must be a string'):
    lm.resolve_param_filter(None, mlp_params)
