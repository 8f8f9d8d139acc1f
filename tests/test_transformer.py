"""Tests for dv_jax.models.transformer: NumPy forward pass, causality, KV cache, sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding_helpers import decode_step
from decoding_helpers import prefill
from dv_jax.models import transformer
from dv_jax.models.transformer import KVCache
from dv_jax.models.transformer import SequenceClassifier
from dv_jax.models.transformer import TransformerLM
from dv_jax.models.transformer import next_token_probs
from dv_jax.models.transformer import sample

V, LAYERS, HEADS, D, FF, MAX_LEN = 37, 2, 4, 16, 24, 12
LM = TransformerLM(V, LAYERS, HEADS, D, FF, MAX_LEN)


def _random_params(model, tokens, seed=0):
  """Random params of the model's structure (eval_shape: no init compile)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)['params']
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if path[-1].key == 'scale':  # LayerNorm gains near 1
      return (1 + 0.2 * rng.standard_normal(s.shape)).astype(np.float32)
    return (0.3 * rng.standard_normal(s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


PARAMS = _random_params(LM, jnp.zeros((1, 4), jnp.int32))


@functools.partial(jax.jit, static_argnames=('model', 'method'))
def _apply(model, params, tokens, attention_mask=None, method=None):
  return model.apply({'params': params}, tokens, attention_mask, method=method)


def _tokens(b=2, t=7, seed=1):
  return np.random.default_rng(seed).integers(0, V, size=(b, t)).astype(np.int32)


def _np_hidden(params, tokens, attention_mask=None):
  """float64 NumPy forward pass of the pre-LN LM up to the final LayerNorm."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  b, t = tokens.shape
  mask = np.ones((b, t)) if attention_mask is None else np.asarray(attention_mask, float)

  def layer_norm(x, q):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * q['scale'] + q[
        'bias']

  def dense(x, q):
    return x @ q['kernel'] + q['bias']

  x = p['embed']['embedding'][tokens] + p['pos_embed'][:t]
  hd = D // HEADS
  for i in range(LAYERS):
    q = p[f'layers_{i}']
    h = layer_norm(x, q['ln_1'])
    out = np.zeros_like(x)
    for bi in range(b):
      heads = []
      for j in range(HEADS):
        sl = slice(j * hd, (j + 1) * hd)
        qq = dense(h[bi], q['attn']['query'])[:, sl]
        kk = dense(h[bi], q['attn']['key'])[:, sl]
        vv = dense(h[bi], q['attn']['value'])[:, sl]
        att = np.full((t, t), -np.inf)
        for r in range(t):
          for c in range(r + 1):
            if mask[bi, c] > 0:
              att[r, c] = qq[r] @ kk[c] / np.sqrt(hd)
        att = np.exp(att - att.max(-1, keepdims=True))
        heads.append(att / att.sum(-1, keepdims=True) @ vv)
      out[bi] = dense(np.concatenate(heads, -1), q['attn']['out'])
    x = x + out
    u = dense(layer_norm(x, q['ln_2']), q['mlp']['fc_in'])
    u = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
    x = x + dense(u, q['mlp']['fc_out'])
  return layer_norm(x, p['final_norm'])


# ---------------------------------------------------------------------------- forward pass


def test_logits_and_features_match_float64_numpy_reference():
  tokens = _tokens()
  ref_hidden = _np_hidden(PARAMS, tokens)
  ref_logits = ref_hidden @ np.asarray(PARAMS['lm_head']['kernel'], np.float64)
  logits = _apply(LM, PARAMS, tokens)
  assert logits.shape == (2, 7, V)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
  # Right padding in row 1 (positions 5, 6): mask as keys, excluded from the features.
  mask = np.ones_like(tokens)
  mask[1, 5:] = 0
  ref_hidden = _np_hidden(PARAMS, tokens, mask)
  feats = _apply(LM, PARAMS, tokens, mask, method='features')
  assert feats.shape == (2, D)
  np.testing.assert_allclose(feats[0], ref_hidden[0].mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(feats[1], ref_hidden[1, :5].mean(0), rtol=1e-4, atol=1e-5)


def test_masked_mean_of_an_all_padding_row_is_zero():
  # The documented value, not 0 / 0 = NaN: a batch may carry rows that are all padding.
  hidden = np.random.default_rng(12).standard_normal((2, 3, 4)).astype(np.float32)
  got = transformer.masked_mean(hidden, np.array([[1, 0, 1], [0, 0, 0]]))
  np.testing.assert_allclose(got[0], hidden[0, [0, 2]].astype(np.float64).mean(0), rtol=1e-6)
  np.testing.assert_array_equal(got[1], np.zeros(4))


def test_causality():
  tokens = _tokens()
  changed = tokens.copy()
  changed[:, 3] = (changed[:, 3] + 5) % V
  a, b = _apply(LM, PARAMS, tokens), _apply(LM, PARAMS, changed)
  np.testing.assert_allclose(a[:, :3], b[:, :3], rtol=0, atol=1e-6)
  assert np.min(np.max(np.abs(a[:, 3:] - b[:, 3:]), axis=-1)) > 1e-4


def test_sequence_classifier_ignores_padding_with_pad_id():
  model = SequenceClassifier(V, 3, LAYERS, HEADS, D, FF, MAX_LEN, pad_id=0)
  params = _random_params(model, jnp.zeros((1, 4), jnp.int32), seed=2)
  assert 'lm_head' not in params['backbone'] and params['classifier']['kernel'].shape == (D, 3)
  seq = np.array([[5, 9, 2, 7, 3]], np.int32)
  padded = np.concatenate([seq, np.zeros((1, 4), np.int32)], axis=1)
  short, long = _apply(model, params, seq), _apply(model, params, padded)
  assert short.shape == (1, 3)
  np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-6)
  # Features are the backbone's mean over real tokens; logits are a Dense of them.
  feats = _apply(model, params, padded, method='features')
  hidden = _np_hidden(params['backbone'], seq)
  np.testing.assert_allclose(feats[0], hidden[0].mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      long, feats @ params['classifier']['kernel'] + params['classifier']['bias'][None],
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('tokens, message', [
    (np.zeros((1, MAX_LEN + 1), np.int32), 'max_len'),
    (np.zeros((1, 4), np.float32), 'integer'),
    (np.zeros((4,), np.int32), r'\[b, t\]'),
    # nn.Embed read id -1 as the last row (finite, wrong) and an id past the table as NaN.
    (np.full((1, 4), -1, np.int32), rf'tokens must be token ids in \[0, {V}\) .* from -1 to -1'),
    (np.full((1, 4), V, np.int32), rf'tokens must be token ids in \[0, {V}\)'),
])
def test_forward_errors(tokens, message):
  with pytest.raises(ValueError, match=message):
    LM.apply({'params': PARAMS}, tokens)


@pytest.mark.parametrize('method, kwargs', [(None, {}), ('features', {}),
                                            ('prefill', dict(cache_len=MAX_LEN))])
@pytest.mark.parametrize('mask_shape', [(2, 1), (1, 5), (2, 6)])
def test_attention_mask_of_another_shape_is_refused(method, kwargs, mask_shape):
  # A [b, 1] or [1, t] mask used to broadcast against the [b, t, t] causal mask: one mask
  # bit applied to every key, or row 0's mask to every row, without an error.
  with pytest.raises(ValueError, match=r'attention_mask must have the shape of tokens '
                                       r'\(2, 5\)'):
    LM.apply({'params': PARAMS}, _tokens(2, 5), np.ones(mask_shape, np.int32), method=method,
             **kwargs)


# ------------------------------------------------------------------------------- KV cache


def _right_padded_prompts(full, lengths, t0, seed=11):
  """full[:, :t0] with each row's tail past lengths[i] replaced by other random tokens.

  Garbage rather than pad ids: a test comparing against the unpadded forward pass then
  fails if any query attends to a row's padding.
  """
  prompt = full[:, :t0].copy()
  garbage = np.random.default_rng(seed).integers(0, V, size=prompt.shape)
  tail = np.arange(t0)[None] >= lengths[:, None]
  prompt[tail] = (prompt[tail] + 1 + garbage[tail] % (V - 1)) % V
  return prompt


def test_prefill_logits_equal_forward_logits():
  tokens = _tokens(2, 7)
  forward = _apply(LM, PARAMS, tokens)
  logits, cache = prefill(LM, PARAMS, tokens, cache_len=MAX_LEN)
  np.testing.assert_allclose(logits, forward, rtol=0, atol=1e-6)
  assert len(cache.keys) == len(cache.values) == LAYERS
  assert cache.keys[0].shape == cache.values[1].shape == (2, MAX_LEN, HEADS, D // HEADS)
  np.testing.assert_array_equal(cache.key_mask, np.arange(MAX_LEN)[None] < np.array([[7], [7]]))
  np.testing.assert_array_equal(cache.keys[0][:, 7:], 0)
  # A mask (row 1 right-padded after 5 tokens) is kept as the key mask; logit_positions gives
  # one row of logits per prompt, the same numbers (right padding leaves real logits as is).
  mask = np.ones_like(tokens)
  mask[1, 5:] = 0
  last, cache = prefill(LM, PARAMS, tokens, mask, np.array([6, 4]), cache_len=MAX_LEN)
  np.testing.assert_allclose(last, forward[np.arange(2), [6, 4]], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(cache.key_mask[:, :7], mask != 0)


@pytest.mark.parametrize('pass_mask', [False, True])
def test_decode_step_matches_forward_at_per_row_positions(pass_mask):
  full = _tokens(3, MAX_LEN, seed=3)
  full_logits = np.asarray(_apply(LM, PARAMS, full))
  lengths, t0 = np.array([5, 2, 4]), 5
  prompt = _right_padded_prompts(full, lengths, t0)
  mask = (np.arange(t0)[None] < lengths[:, None]).astype(np.int32) if pass_mask else None
  logits, cache = prefill(LM, PARAMS, prompt, mask, cache_len=MAX_LEN)
  for row, length in enumerate(lengths):
    np.testing.assert_allclose(logits[row, :length], full_logits[row, :length], atol=1e-5)
  rows = np.arange(3)
  # Teacher forcing: every row feeds the true token at its own next position.
  for s in range(MAX_LEN - t0):
    position = (lengths + s).astype(np.int32)
    logits_BV, cache = decode_step(LM, PARAMS, full[rows, position], position, cache)
    np.testing.assert_allclose(logits_BV, full_logits[rows, position], rtol=1e-5, atol=1e-5,
                               err_msg=f'step {s}')


def test_decode_step_masks_the_models_pad_id_as_forward_does():
  # A model with pad_id masks such tokens as keys in __call__; decode_step must too.
  model = TransformerLM(V, LAYERS, HEADS, D, FF, MAX_LEN, pad_id=3)
  full = _tokens(2, 8, seed=4)
  full[:, 5] = 3
  full_logits = np.asarray(_apply(model, PARAMS, full))
  _, cache = prefill(model, PARAMS, full[:, :4], cache_len=8)
  rows = np.arange(2)
  for position in range(4, 8):
    position_B = np.full(2, position, np.int32)
    logits_BV, cache = decode_step(model, PARAMS, full[:, position], position_B, cache)
    np.testing.assert_allclose(logits_BV, full_logits[rows, position], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(cache.key_mask[:, 5], False)


def _bad_cache(cache, change):
  if change == 'layers':
    return KVCache(cache.keys[:1], cache.values[:1], cache.key_mask)
  if change == 'batch':
    return cache._replace(key_mask=cache.key_mask[:1])
  return tuple(cache)


@pytest.mark.parametrize('kwargs, message', [
    (dict(cache_len=3), 'cache_len'),
    (dict(cache_len=MAX_LEN + 1), 'cache_len'),
    (dict(cache_len=8.0), 'cache_len'),
    (dict(cache_len=8, logit_positions=np.array([1])), 'logit_positions'),
    (dict(cache_len=8, logit_positions=np.array([1.0, 2.0])), 'logit_positions'),
])
def test_prefill_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    LM.apply({'params': PARAMS}, _tokens(2, 4), method='prefill', **kwargs)


@pytest.mark.parametrize('token, position, change, message', [
    (np.zeros((2, 1), np.int32), np.zeros(2, np.int32), None, 'token_B'),
    (np.zeros(2, np.float32), np.zeros(2, np.int32), None, 'token_B'),
    (np.zeros(2, np.int32), np.zeros(3, np.int32), None, 'position_B'),
    (np.zeros(2, np.int32), np.zeros(2, np.float32), None, 'position_B'),
    (np.zeros(2, np.int32), np.zeros(2, np.int32), 'tuple', 'KVCache'),
    (np.zeros(2, np.int32), np.zeros(2, np.int32), 'layers', 'layers'),
    (np.zeros(2, np.int32), np.zeros(2, np.int32), 'batch', 'batch'),
    (np.full(2, V, np.int32), np.zeros(2, np.int32), None,
     rf'token_B must be token ids in \[0, {V}\)'),
])
def test_decode_step_errors(token, position, change, message):
  _, cache = jax.eval_shape(functools.partial(prefill, LM, cache_len=8), PARAMS,
                            _tokens(2, 4))
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
  if change is not None:
    cache = _bad_cache(cache, change)
  with pytest.raises(ValueError, match=message):
    LM.apply({'params': PARAMS}, token, position, cache, method='decode_step')


# -------------------------------------------------------------------------------- sampling


def _np_next_token_probs(logits, temperature, top_p):
  z = np.asarray(logits, np.float64) / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  kept = np.zeros_like(p)
  mass = 0.0
  for idx in np.argsort(-p, kind='stable'):
    if mass >= top_p:
      break
    kept[idx] = p[idx]
    mass += p[idx]
  return kept / kept.sum()


@pytest.mark.parametrize('temperature, top_p', [(1.0, 1.0), (0.7, 1.0), (1.0, 0.5),
                                                (2.0, 0.9), (0.5, 0.3)])
def test_next_token_probs_match_numpy(temperature, top_p):
  logits = np.random.default_rng(0).normal(0, 2, size=(3, V)).astype(np.float32)
  got = next_token_probs(logits, temperature=temperature, top_p=top_p)
  ref = np.stack([_np_next_token_probs(row, temperature, top_p) for row in logits])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(got) > 0, ref > 0)
  if top_p < 1:
    assert np.all(np.sum(ref > 0, axis=-1) < V)  # the truncation did remove tokens


def test_next_token_probs_tiny_top_p_is_greedy_and_errors():
  logits = np.random.default_rng(1).normal(size=(4, V))
  got = next_token_probs(logits, top_p=1e-9)
  np.testing.assert_array_equal(got, np.eye(V)[np.argmax(logits, -1)])
  for kwargs, message in [(dict(temperature=0.0), 'temperature'),
                          (dict(temperature=np.nan), 'temperature'),
                          (dict(temperature=1e-40), 'temperature'),  # 0 in float32
                          (dict(top_p=0.0), 'top_p'), (dict(top_p=1.5), 'top_p'),
                          # 0 in float32: before, no token was kept and every p was NaN.
                          (dict(top_p=1e-46), r'top_p must be in \(0, 1\] \(and > 0 in float32\)')]:
    with pytest.raises(ValueError, match=message):
      next_token_probs(logits, **kwargs)
  # A temperature tiny enough to overflow the logits to inf (before: NaN) is greedy too.
  big = np.array([[10.0, 40.0, 0.0], [-5.0, -6.0, -30.0]])
  np.testing.assert_array_equal(next_token_probs(big, temperature=1e-37), np.eye(3)[[1, 0]])
  with pytest.raises(ValueError, match='finite'):
    next_token_probs(np.full((1, V), np.inf))


def test_only_the_rows_that_overflow_are_shifted_by_their_maximum():
  # Shifting every row once one overflowed changed the others' bits (and draws).
  logits = jnp.array([[1e-36, 0.0], [40.0, 0.0]])  # / 1e-37: row 0 finite, row 1 inf
  out = np.asarray(transformer._truncated_logits(  # pylint: disable=protected-access
      logits, jnp.float32(1e-37), jnp.float32(1.0)))
  np.testing.assert_array_equal(out[0], np.float32(logits[0]) / np.float32(1e-37))
  assert out[1, 0] == 0.0


def test_next_token_probs_at_the_nucleus_boundaries():
  # Probabilities exactly [1/2, 1/4, 1/4] in float32: token 0 alone reaches top_p = 1/2, so
  # token 1, with exactly top_p above it, is outside the nucleus.
  np.testing.assert_array_equal(next_token_probs(np.array([np.log(2.0), 0.0, 0.0]), top_p=0.5),
                                [1.0, 0.0, 0.0])
  # top_p = 1 keeps every token: in float32 the head alone rounds to mass 1, so the mass
  # above each tail token is 1 and the tail survives only by the top_p >= 1 rule.
  tail = np.exp(-20.0) / (1 + 3 * np.exp(-20.0))
  got = next_token_probs(np.array([0.0, -20.0, -20.0, -20.0]), top_p=1.0)
  np.testing.assert_allclose(got, [1 - 3 * tail, tail, tail, tail], rtol=1e-5)


def _greedy_rollout(prompt, steps, lengths=None):
  """Greedy decoding by a Python loop of full forward passes (independent of `sample`)."""
  b, t0 = prompt.shape
  lengths = np.full(b, t0) if lengths is None else lengths
  buffer = np.zeros((b, MAX_LEN), np.int32)
  for row in range(b):
    buffer[row, :lengths[row]] = prompt[row, :lengths[row]]
  for s in range(steps):
    logits = np.asarray(_apply(LM, PARAMS, buffer))
    for row in range(b):
      buffer[row, lengths[row] + s] = np.argmax(logits[row, lengths[row] + s - 1])
  return buffer[:, :t0 + steps]


def test_sample_greedy_variable_prompts_and_eos():
  prompt = _tokens(3, 4, seed=5)
  key = jax.random.PRNGKey(0)
  out = sample(LM, PARAMS, key, prompt, max_new_tokens=5, top_p=1e-7)
  ref = _greedy_rollout(prompt, 5)
  np.testing.assert_array_equal(out.tokens, ref)
  np.testing.assert_array_equal(out.lengths, [9, 9, 9])
  # Row 1's prompt is 2 tokens long (right-padded): it continues from its own end.
  lengths = np.array([4, 2, 4])
  out = sample(LM, PARAMS, key, prompt, max_new_tokens=5, top_p=1e-7, prompt_lengths=lengths,
               pad_id=0)
  np.testing.assert_array_equal(out.tokens, _greedy_rollout(prompt, 5, lengths))
  np.testing.assert_array_equal(np.asarray(out.tokens)[1, 7:], [0, 0])
  np.testing.assert_array_equal(out.lengths, [9, 7, 9])
  # eos: row 0's second generated token; the row stops there, the rows never reaching it
  # are unchanged.
  eos = int(ref[0, 5])
  out = sample(LM, PARAMS, key, prompt, max_new_tokens=5, top_p=1e-7, eos_id=eos, pad_id=0)
  for row in range(3):
    hits = np.flatnonzero(ref[row, 4:] == eos)
    end = 4 + (hits[0] + 1 if hits.size else 5)
    np.testing.assert_array_equal(out.tokens[row, :end], ref[row, :end])
    np.testing.assert_array_equal(out.tokens[row, end:], 0)
    assert out.lengths[row] == end
  assert out.lengths[0] == 6


def test_sample_writes_pad_id_after_each_rows_end():
  # SampleResult: prompt, generated tokens, then pad_id, even where prompt_tokens holds
  # other ids past a row's length (row 1's 9s). A [2, 3] prompt and one new token is the
  # program test_sample_refuses_prompt_ids_outside_the_vocabulary_... compiles.
  prompt = np.array([[5, 6, 7], [5, 9, 9]], np.int32)
  lengths = np.array([3, 1])
  out = sample(LM, PARAMS, jax.random.PRNGKey(0), prompt, max_new_tokens=1, top_p=1e-7,
               prompt_lengths=lengths, pad_id=0)
  expected = _greedy_rollout(prompt, 1, lengths)  # zeros after each row's end
  np.testing.assert_array_equal(np.asarray(out.tokens)[1, 2:], [0, 0])
  np.testing.assert_array_equal(out.tokens, expected)
  np.testing.assert_array_equal(out.lengths, [4, 2])


def test_sample_frequencies_follow_truncated_distribution():
  n, temperature, top_p = 4000, 0.8, 0.7
  prompt = np.tile(_tokens(1, 3, seed=7), (n, 1))
  out = sample(LM, PARAMS, jax.random.PRNGKey(3), prompt, max_new_tokens=1,
               temperature=temperature, top_p=top_p)
  np.testing.assert_array_equal(out.tokens[:, :3], prompt)
  logits = np.asarray(_apply(LM, PARAMS, prompt[:1]))[0, 2]
  probs = _np_next_token_probs(logits, temperature, top_p)
  freq = np.bincount(np.asarray(out.tokens[:, 3]), minlength=V) / n
  assert np.all(freq[probs == 0] == 0)
  assert np.sum(probs > 0) >= 2
  np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9)
  # Different keys give different draws; the same key the same draws.
  again = sample(LM, PARAMS, jax.random.PRNGKey(3), prompt, max_new_tokens=1,
                 temperature=temperature, top_p=top_p)
  np.testing.assert_array_equal(again.tokens, out.tokens)


def test_sample_compiles_once_per_shape():
  prompt = _tokens(2, 2, seed=9)
  before = transformer._sample_jit._cache_size()  # pylint: disable=protected-access
  for temperature, top_p, eos_id, pad_id in ((1.0, 1.0, None, 0), (0.5, 0.3, 3, 1),
                                             (2.0, 0.9, 5, 0)):
    sample(LM, PARAMS, jax.random.PRNGKey(0), prompt, max_new_tokens=2,
           temperature=temperature, top_p=top_p, eos_id=eos_id, pad_id=pad_id)
  assert transformer._sample_jit._cache_size() - before == 1  # pylint: disable=protected-access


def test_cached_sample_equals_uncached_sample():
  prompt = _tokens(4, 5, seed=8)
  lengths, new = np.array([5, 3, 4, 5]), MAX_LEN - 5
  kwargs = dict(max_new_tokens=new, temperature=1.3, top_p=0.95, prompt_lengths=lengths,
                pad_id=0)
  key = jax.random.PRNGKey(7)
  free = sample(LM, PARAMS, key, prompt, use_cache=False, **kwargs)
  np.testing.assert_array_equal(free.lengths, lengths + new)
  # An eos that some row draws (the most frequent generated token), so rows finish early.
  position = np.arange(MAX_LEN)[None]
  generated = np.asarray(free.tokens)[(position >= lengths[:, None])
                                      & (position < lengths[:, None] + new)]
  eos = int(np.bincount(generated, minlength=V).argmax())
  for eos_id in (None, eos):
    cached = sample(LM, PARAMS, key, prompt, use_cache=True, eos_id=eos_id, **kwargs)
    uncached = sample(LM, PARAMS, key, prompt, use_cache=False, eos_id=eos_id, **kwargs)
    np.testing.assert_array_equal(cached.tokens, uncached.tokens)
    np.testing.assert_array_equal(cached.lengths, uncached.lengths)
  assert np.any(np.asarray(cached.lengths) < lengths + new)  # eos did end a row early


def test_sample_falls_back_without_decoding_methods():
  assert transformer.supports_cache(LM)
  assert not transformer.supports_cache(SequenceClassifier(V, 3, LAYERS, HEADS, D, FF, MAX_LEN))


@pytest.mark.parametrize('kwargs, message', [
    (dict(max_new_tokens=2, use_cache='yes'), 'use_cache'),
    (dict(max_new_tokens=0), 'max_new_tokens'),
    (dict(max_new_tokens=MAX_LEN), 'max_len'),
    (dict(max_new_tokens=2, temperature=-1.0), 'temperature'),
    (dict(max_new_tokens=2, top_p=0.0), 'top_p'),
    (dict(max_new_tokens=2, prompt_lengths=np.array([0, 3])), 'prompt_lengths'),
    (dict(max_new_tokens=2, prompt_lengths=np.array([3])), 'prompt_lengths'),
    # Ids outside [0, V): a pad_id past the embedding table used to become NaN keys after a
    # short prompt, NaN logits and token 0 drawn; an eos_id there never ends a row.
    (dict(max_new_tokens=2, pad_id=V), r'pad_id must be an int in \[0, 37\)'),
    (dict(max_new_tokens=2, pad_id=-1), 'pad_id'),
    (dict(max_new_tokens=2, pad_id=1.0), 'pad_id'),
    (dict(max_new_tokens=2, eos_id=V), 'eos_id'),
    (dict(max_new_tokens=2, eos_id=-1), 'eos_id'),
])
def test_sample_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sample(LM, PARAMS, jax.random.PRNGKey(0), _tokens(2, 3), **kwargs)
  with pytest.raises(ValueError, match='prompt_tokens'):
    sample(LM, PARAMS, jax.random.PRNGKey(0), np.zeros((2, 3)), max_new_tokens=1)


def test_sample_refuses_prompt_ids_outside_the_vocabulary_before_each_rows_length():
  prompt = _tokens(2, 3)
  valid = prompt.copy()
  prompt[1, 2] = V  # past row 1's length of 2: cleared to pad_id, never read
  # An id at the row's length, left in the buffer, reached the model: the draws must be
  # those of the same prompt with a valid id there.
  for use_cache in (True, False):
    kwargs = dict(max_new_tokens=1, top_p=1e-7, prompt_lengths=np.array([3, 2]),
                  use_cache=use_cache)
    out = sample(LM, PARAMS, jax.random.PRNGKey(0), prompt, **kwargs)
    np.testing.assert_array_equal(np.asarray(out.tokens)[1, :2], prompt[1, :2])
    np.testing.assert_array_equal(
        out.tokens, sample(LM, PARAMS, jax.random.PRNGKey(0), valid, **kwargs).tokens)
  for bad in (V, -1):
    prompt[0, 1] = bad
    with pytest.raises(ValueError, match=r'prompt_tokens holds ids outside \[0, 37\) .*\[0\]'):
      sample(LM, PARAMS, jax.random.PRNGKey(0), prompt, max_new_tokens=1,
             prompt_lengths=np.array([3, 2]))


@pytest.mark.parametrize('change, message', [
    (dict(num_layers=-1), 'num_layers must be an integer >= 0'),  # built a model of no blocks
    (dict(num_heads=0), 'num_heads must be an integer >= 1'),  # a modulo by zero
    (dict(num_heads=True), 'num_heads must be an integer'),  # read as 1 head
    (dict(vocab_size=V, pad_id=V), r'pad_id must be an integer in \[0, 36\]'),
    # every size is checked, each under its own name (True was read as 1, 0 built an
    # empty layer)
    *[(dict([(name, bad)]), f'{name} must be an integer')
      for name in ('vocab_size', 'd_model', 'd_ff', 'max_len') for bad in (True, 0)],
])
def test_sizes_are_checked_by_name(change, message):
  sizes = dict(vocab_size=V, num_layers=LAYERS, num_heads=HEADS, d_model=D, d_ff=FF,
               max_len=MAX_LEN)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(TransformerLM(**{**sizes, **change}).init, jax.random.PRNGKey(0),
                   jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(SequenceClassifier(num_classes=3, **{**sizes, **change}).init,
                   jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


def test_an_empty_batch_skips_the_token_id_check():
  # The id range of no tokens is undefined (min of an empty array raises): an empty batch
  # is not refused, it gives empty logits.
  logits = LM.apply({'params': PARAMS}, jnp.zeros((0, 4), jnp.int32))
  assert logits.shape == (0, 4, V)


def test_classifier_num_classes_is_checked_by_name():
  # num_classes=True was read as a 1-logit head.
  with pytest.raises(ValueError, match='num_classes must be an integer'):
    jax.eval_shape(SequenceClassifier(V, True, LAYERS, HEADS, D, FF, MAX_LEN).init,
                   jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
