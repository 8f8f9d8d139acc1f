"""Tests for dv_jax.models.llama and dv_jax.models.checkpoint.

The reference is a float64 NumPy forward pass written here from HF-named, HF-layout tensors
(Linear weights [out, in]), so the loader's name mapping and transposes are checked against
the HF layout itself, not only against our own saver.
"""

import functools
import json
import os
from pathlib import Path
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding_helpers import decode_step
from decoding_helpers import prefill
from dv_jax.models import checkpoint
from dv_jax.models.llama import Llama
from dv_jax.models.llama import LlamaConfig
from dv_jax.models.llama import rope_inverse_frequencies
from dv_jax.models.transformer import KVCache
from dv_jax.models.transformer import sample

_BASE = dict(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
             max_position_embeddings=64, hidden_act='silu')
HF_CONFIGS = {
    'llama_untied': dict(_BASE, model_type='llama', rope_theta=10000.0,
                         tie_word_embeddings=False),
    'qwen2_tied_bias': dict(_BASE, model_type='qwen2', rope_theta=1e6,
                            tie_word_embeddings=True, use_sliding_window=False,
                            sliding_window=4096, max_window_layers=2),
    # Every Llama bias, an explicit head_dim != hidden / heads, one kv head, llama3 rope
    # scaling with all three frequency bands populated (wavelengths 6.3, 135, 2920 vs
    # bands at 128 and 512).
    'llama_bias_llama3rope': dict(
        _BASE, model_type='llama', rope_theta=10000.0, tie_word_embeddings=False,
        attention_bias=True, mlp_bias=True, head_dim=6, num_key_value_heads=1,
        rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                      'high_freq_factor': 4.0, 'original_max_position_embeddings': 512}),
}


def _hf_state(hf, seed=0):
  """Random HF-named tensors in HF layout, shapes written out from the HF architecture."""
  rng = np.random.default_rng(seed)
  h, f, v = hf['hidden_size'], hf['intermediate_size'], hf['vocab_size']
  nh, nkv = hf['num_attention_heads'], hf['num_key_value_heads']
  hd = hf.get('head_dim') or h // nh
  qwen = hf['model_type'] == 'qwen2'
  attn_bias = hf.get('attention_bias', False)
  w = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)
  norm = lambda: (1 + 0.2 * rng.standard_normal(h)).astype(np.float32)
  state = {'model.embed_tokens.weight': w(v, h), 'model.norm.weight': norm()}
  for i in range(hf['num_hidden_layers']):
    p = f'model.layers.{i}.'
    state[p + 'input_layernorm.weight'] = norm()
    state[p + 'post_attention_layernorm.weight'] = norm()
    for name, out_dim, in_dim in (('q_proj', nh * hd, h), ('k_proj', nkv * hd, h),
                                  ('v_proj', nkv * hd, h), ('o_proj', h, nh * hd)):
      state[p + f'self_attn.{name}.weight'] = w(out_dim, in_dim)
      if (qwen and name != 'o_proj') or attn_bias:
        state[p + f'self_attn.{name}.bias'] = w(out_dim)
    for name, out_dim, in_dim in (('gate_proj', f, h), ('up_proj', f, h), ('down_proj', h, f)):
      state[p + f'mlp.{name}.weight'] = w(out_dim, in_dim)
      if hf.get('mlp_bias', False):
        state[p + f'mlp.{name}.bias'] = w(out_dim)
  if not hf['tie_word_embeddings']:
    state['lm_head.weight'] = w(v, h)
  return state


def _np_inv_freq(hf, hd):
  inv = 1.0 / hf['rope_theta'] ** (np.arange(0, hd, 2) / hd)
  rope = hf.get('rope_scaling')
  if rope is None:
    return inv
  out = []
  for freq in inv:
    wavelength = 2 * np.pi / freq
    old = rope['original_max_position_embeddings']
    if wavelength < old / rope['high_freq_factor']:
      out.append(freq)
    elif wavelength > old / rope['low_freq_factor']:
      out.append(freq / rope['factor'])
    else:
      s = (old / wavelength - rope['low_freq_factor']) / (
          rope['high_freq_factor'] - rope['low_freq_factor'])
      out.append((1 - s) * freq / rope['factor'] + s * freq)
  return np.array(out)


def _np_logits(state, hf, tokens, attention_mask=None):
  """float64 NumPy forward pass of HF Llama / Qwen2 from the HF-layout tensors."""
  s = {k: np.asarray(a, np.float64) for k, a in state.items()}
  tokens = np.asarray(tokens)
  b, t = tokens.shape
  h, nh, nkv = hf['hidden_size'], hf['num_attention_heads'], hf['num_key_value_heads']
  hd = hf.get('head_dim') or h // nh
  eps = hf['rms_norm_eps']
  mask = np.ones((b, t)) if attention_mask is None else np.asarray(attention_mask, float)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  angles = positions[..., None] * _np_inv_freq(hf, hd)[None, None]
  cos = np.cos(np.concatenate([angles, angles], -1))[:, :, None]
  sin = np.sin(np.concatenate([angles, angles], -1))[:, :, None]

  def rms(x, name):
    return s[name] * x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps)

  def linear(x, name):
    y = x @ s[name + '.weight'].T
    return y + s[name + '.bias'] if name + '.bias' in s else y

  def rotate(z):
    z1, z2 = z[..., :hd // 2], z[..., hd // 2:]
    return z * cos + np.concatenate([-z2, z1], -1) * sin

  allowed = np.tril(np.ones((t, t), bool))[None] & (mask[:, None, :] > 0)
  x = s['model.embed_tokens.weight'][tokens]
  for i in range(hf['num_hidden_layers']):
    p = f'model.layers.{i}.'
    hn = rms(x, p + 'input_layernorm.weight')
    q = rotate(linear(hn, p + 'self_attn.q_proj').reshape(b, t, nh, hd))
    k = rotate(linear(hn, p + 'self_attn.k_proj').reshape(b, t, nkv, hd))
    v = linear(hn, p + 'self_attn.v_proj').reshape(b, t, nkv, hd)
    k, v = np.repeat(k, nh // nkv, axis=2), np.repeat(v, nh // nkv, axis=2)
    heads = []
    for j in range(nh):
      scores = q[:, :, j] @ k[:, :, j].transpose(0, 2, 1) / np.sqrt(hd)
      scores = np.where(allowed, scores, -1e30)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      heads.append(probs @ v[:, :, j])
    x = x + linear(np.concatenate(heads, -1), p + 'self_attn.o_proj')
    hn = rms(x, p + 'post_attention_layernorm.weight')
    gate = linear(hn, p + 'mlp.gate_proj')
    x = x + linear(gate / (1 + np.exp(-gate)) * linear(hn, p + 'mlp.up_proj'),
                   p + 'mlp.down_proj')
  x = rms(x, 'model.norm.weight')
  head = s['model.embed_tokens.weight'] if hf['tie_word_embeddings'] else s['lm_head.weight']
  return x @ head.T, x


@functools.partial(jax.jit, static_argnames=('model',))
def _apply(model, params, tokens, attention_mask=None):
  return model.apply({'params': params}, tokens, attention_mask, return_hidden=True)


def _tokens(b=2, t=7, seed=1):
  return np.random.default_rng(seed).integers(0, 37, size=(b, t)).astype(np.int32)


def _assert_tree_equal(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    # Dtypes too: assert_array_equal passes a bfloat16 leaf equal in value to a float32 one,
    # and the loader's dtype is part of what it promises.
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype, f'{jax.tree_util.keystr(path)}: {x.dtype} != {y.dtype}'
    np.testing.assert_array_equal(x, y, err_msg=str(path))


# ---------------------------------------------------------------------------- forward pass


@pytest.mark.parametrize('name', sorted(HF_CONFIGS))
def test_logits_match_float64_numpy_reference(name):
  hf = HF_CONFIGS[name]
  cfg = LlamaConfig.from_hf_dict(hf)
  state = _hf_state(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, state)
  tokens = _tokens()
  # Row 0 unpadded; row 1 left-padded by 2 (mask 0), exercising the mask and positions.
  mask = np.ones_like(tokens)
  mask[1, :2] = 0
  for attention_mask in (None, mask):
    logits, hidden = _apply(Llama(cfg), params, tokens, attention_mask)
    ref_logits, ref_hidden = _np_logits(state, hf, tokens, attention_mask)
    real = np.ones(tokens.shape, bool) if attention_mask is None else mask.astype(bool)
    assert logits.shape == (2, 7, 37) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits)[real], ref_logits[real], rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(hidden)[real], ref_hidden[real], rtol=1e-4,
                               atol=1e-4)


def test_reference_is_sensitive_to_the_mapping():
  # The comparison above fails when a Linear weight is not transposed on the way in.
  hf = HF_CONFIGS['llama_untied']
  cfg = LlamaConfig.from_hf_dict(hf)
  state = _hf_state(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, state)
  kernel = params['layers_0']['self_attn']['q_proj']['kernel']
  params['layers_0']['self_attn']['q_proj']['kernel'] = kernel.T
  logits, _ = _apply(Llama(cfg), params, _tokens())
  assert np.max(np.abs(np.asarray(logits) - _np_logits(state, hf, _tokens())[0])) > 1e-2


def test_padding_leaves_real_token_logits_unchanged():
  hf = HF_CONFIGS['qwen2_tied_bias']
  cfg = LlamaConfig.from_hf_dict(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf))
  seq = _tokens(1, 5)
  unpadded, _ = _apply(Llama(cfg), params, seq)
  padded = np.zeros((2, 7), np.int32)
  mask = np.zeros((2, 7), np.int32)
  padded[0, 2:], mask[0, 2:] = seq[0], 1  # left padding
  padded[1, :5], mask[1, :5] = seq[0], 1  # right padding
  logits, _ = _apply(Llama(cfg), params, padded, mask)
  np.testing.assert_allclose(logits[0, 2:], unpadded[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[1, :5], unpadded[0], rtol=1e-5, atol=1e-5)


def test_causal_and_features_and_remat():
  hf = HF_CONFIGS['llama_untied']
  cfg = LlamaConfig.from_hf_dict(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf))
  tokens = _tokens()
  changed = tokens.copy()
  changed[:, 4] = (changed[:, 4] + 1) % 37
  logits, hidden = _apply(Llama(cfg), params, tokens)
  logits2, _ = _apply(Llama(cfg), params, changed)
  np.testing.assert_allclose(logits[:, :4], logits2[:, :4], rtol=0, atol=1e-6)
  assert np.max(np.abs(logits[:, 4:] - logits2[:, 4:])) > 1e-3
  mask = np.ones_like(tokens)
  mask[0, 5:] = 0
  feats = jax.jit(functools.partial(Llama(cfg).apply, method='features'))(
      {'params': params}, tokens, mask)
  np.testing.assert_allclose(feats[0], np.mean(hidden[0, :5], axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(feats[1], np.mean(hidden[1], axis=0), rtol=1e-5, atol=1e-6)

  def loss(model, p):
    return jnp.sum(model.apply({'params': p}, tokens) ** 2)
  value, grads = jax.jit(jax.value_and_grad(functools.partial(loss, Llama(cfg))))(params)
  value_r, grads_r = jax.jit(jax.value_and_grad(
      functools.partial(loss, Llama(cfg, remat=True))))(params)
  np.testing.assert_allclose(value, value_r, rtol=1e-5)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.max(np.abs(a))),
      grads, grads_r)


def test_init_builds_the_hf_parameter_tree():
  for hf in HF_CONFIGS.values():
    cfg = LlamaConfig.from_hf_dict(hf)
    shapes = checkpoint.param_shapes(cfg)
    table = {path: (name, transposed)
             for name, path, transposed in checkpoint.hf_tensor_names(cfg)}
    assert set(shapes) == set(table)
    state = _hf_state(hf)
    assert {name for name, _ in table.values()} == set(state)
    for path, (name, transposed) in table.items():
      assert shapes[path] == (state[name].T.shape if transposed else state[name].shape)


def test_rope_inverse_frequencies_llama3_bands():
  hf = HF_CONFIGS['llama_bias_llama3rope']
  cfg = LlamaConfig.from_hf_dict(hf)
  np.testing.assert_allclose(rope_inverse_frequencies(cfg), _np_inv_freq(hf, 6), rtol=1e-12)
  base = 1.0 / 10000.0 ** (np.arange(0, 6, 2) / 6)
  got = rope_inverse_frequencies(cfg)
  assert got[0] == base[0] and np.isclose(got[2], base[2] / 8) and base[1] / 8 < got[1] < base[1]


@pytest.mark.parametrize('rope_scaling', [{'rope_type': 'linear', 'factor': 4.0},
                                          {'type': 'linear', 'factor': 4.0},
                                          {'rope_type': 'default'}])
def test_rope_inverse_frequencies_linear_and_default(rope_scaling):
  # HF's 'linear' scaling divides every default frequency theta^(-2j / hd) by `factor`.
  cfg = LlamaConfig.from_hf_dict(dict(HF_CONFIGS['llama_untied'], rope_scaling=rope_scaling))
  base = 1.0 / 10000.0 ** (np.arange(0, 4, 2, dtype=np.float64) / 4)
  factor = rope_scaling.get('factor', 1.0)
  np.testing.assert_allclose(rope_inverse_frequencies(cfg), base / factor, rtol=1e-14)


def test_sample_runs_on_llama_greedy_is_argmax():
  hf = HF_CONFIGS['qwen2_tied_bias']
  cfg = LlamaConfig.from_hf_dict(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf))
  tokens = _tokens()
  out = sample(Llama(cfg), params, jax.random.PRNGKey(0), tokens[:, :6], max_new_tokens=1,
               top_p=1e-6)
  logits, _ = _apply(Llama(cfg), params, tokens)  # causal: token 6 does not affect row 5
  np.testing.assert_array_equal(out.tokens[:, :6], tokens[:, :6])
  np.testing.assert_array_equal(out.tokens[:, 6], np.argmax(logits[:, 5], axis=-1))


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize('name', ['llama_bias_llama3rope', 'qwen2_tied_bias'])
def test_prefill_and_decode_step_match_forward(name):
  # GQA (kv = 1 and kv = 2), Llama biases with llama3 rope scaling and an untied head, Qwen2
  # q/k/v biases with tied embeddings; each row decodes at its own rotary position.
  hf = HF_CONFIGS[name]
  cfg = LlamaConfig.from_hf_dict(hf)
  model = Llama(cfg)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf))
  full = _tokens(3, 10, seed=2)
  full_logits = np.asarray(_apply(model, params, full)[0])
  lengths, t0 = np.array([5, 2, 4]), 5
  # Garbage, not pad ids, after each prompt: attending to it would change the logits.
  prompt = full[:, :t0].copy()
  tail = np.arange(t0)[None] >= lengths[:, None]
  prompt[tail] = (prompt[tail] + 7) % 37
  logits, cache = prefill(model, params, prompt, (~tail).astype(np.int32), cache_len=10)
  # Prefill logits are the forward pass's: at the real positions, those of the full sequence.
  for row, length in enumerate(lengths):
    np.testing.assert_allclose(logits[row, :length], full_logits[row, :length], rtol=1e-5,
                               atol=1e-5)
  kv, hd = cfg.num_key_value_heads, cfg.dim_per_head
  assert len(cache.keys) == 2 and cache.keys[1].shape == cache.values[0].shape == (3, 10, kv, hd)
  np.testing.assert_array_equal(cache.key_mask[:, :t0], ~tail)
  np.testing.assert_array_equal(cache.key_mask[:, t0:], False)
  rows = np.arange(3)
  for s in range(10 - t0):
    position = (lengths + s).astype(np.int32)
    logits_BV, cache = decode_step(model, params, full[rows, position], position, cache)
    np.testing.assert_allclose(logits_BV, full_logits[rows, position], rtol=1e-5, atol=1e-5,
                               err_msg=f'step {s}')


@pytest.mark.parametrize('name, remat', [('llama_bias_llama3rope', False),
                                         ('qwen2_tied_bias', True)])
def test_cached_sample_equals_uncached_sample(name, remat):
  hf = HF_CONFIGS[name]
  cfg = LlamaConfig.from_hf_dict(hf)
  model = Llama(cfg, remat=remat)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf, seed=1))
  prompt = _tokens(3, 4, seed=5)
  lengths, new = np.array([4, 2, 3]), 5
  kwargs = dict(max_new_tokens=new, temperature=1.5, top_p=0.9, prompt_lengths=lengths,
                pad_id=0)
  key = jax.random.PRNGKey(2)
  free = sample(model, params, key, prompt, use_cache=False, **kwargs)
  # An eos that some row draws (the first row's second new token), so a row ends early.
  eos = int(np.asarray(free.tokens)[0, lengths[0] + 1])
  for eos_id in (None, eos):
    cached = sample(model, params, key, prompt, use_cache=True, eos_id=eos_id, **kwargs)
    uncached = sample(model, params, key, prompt, use_cache=False, eos_id=eos_id, **kwargs)
    np.testing.assert_array_equal(cached.tokens, uncached.tokens)
    np.testing.assert_array_equal(cached.lengths, uncached.lengths)
  assert cached.lengths[0] <= lengths[0] + 2 < lengths[0] + new


def test_decode_errors():
  hf = HF_CONFIGS['llama_untied']
  cfg = LlamaConfig.from_hf_dict(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf))
  variables = {'params': params}
  with pytest.raises(ValueError, match='cache_len'):
    Llama(cfg).apply(variables, _tokens(2, 4), cache_len=3, method='prefill')
  with pytest.raises(ValueError, match='logit_positions'):
    Llama(cfg).apply(variables, _tokens(2, 4), cache_len=6, logit_positions=np.zeros(3, int),
                     method='prefill')
  _, cache = jax.eval_shape(functools.partial(prefill, Llama(cfg), cache_len=6), params,
                            _tokens(2, 4))
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
  token = np.zeros(2, np.int32)
  with pytest.raises(ValueError, match='position_B'):
    Llama(cfg).apply(variables, token, np.zeros((2, 1), np.int32), cache, method='decode_step')
  with pytest.raises(ValueError, match='layers'):
    Llama(cfg).apply(variables, token, token, KVCache(cache.keys[:1], cache.values[:1],
                                                       cache.key_mask), method='decode_step')
  # nn.Embed read id -1 as the last row (finite, wrong) and an id past the table as NaN.
  for bad in (-1, cfg.vocab_size):
    with pytest.raises(ValueError, match=rf'token_B must be token ids in \[0, {cfg.vocab_size}\)'):
      Llama(cfg).apply(variables, np.full(2, bad, np.int32), token, cache, method='decode_step')
    tokens = np.asarray(_tokens(2, 4)).copy()
    tokens[1, 2] = bad
    with pytest.raises(ValueError, match=rf'tokens must be token ids .* from -?\d+ to \d+'):
      Llama(cfg).apply(variables, tokens)


# ------------------------------------------------------------------------------ config


def test_config_round_trip_and_derived_fields():
  for hf in HF_CONFIGS.values():
    cfg = LlamaConfig.from_hf_dict(hf)
    assert LlamaConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg
    hash(cfg)
  qwen = LlamaConfig.from_hf_dict(HF_CONFIGS['qwen2_tied_bias'])
  assert qwen.qkv_bias and not qwen.o_proj_bias and qwen.dim_per_head == 4
  llama = LlamaConfig.from_hf_dict(HF_CONFIGS['llama_bias_llama3rope'])
  assert llama.qkv_bias and llama.o_proj_bias and llama.dim_per_head == 6
  assert llama.rope_scaling_dict['rope_type'] == 'llama3'
  assert LlamaConfig(37, 16, 24, 2, 4).num_key_value_heads == 4


@pytest.mark.parametrize('change, message', [
    (dict(model_type='gpt2'), 'model_type'),
    (dict(hidden_act='gelu'), 'hidden_act'),
    (dict(num_attention_heads=3), 'divisible'),
    (dict(num_key_value_heads=3), 'num_key_value_heads'),
    (dict(rope_scaling={'rope_type': 'yarn', 'factor': 2.0}), 'rope_scaling'),
    (dict(model_type='qwen2', use_sliding_window=True), 'sliding'),
    (dict(vocab_size=0), 'vocab_size'),
    (dict(head_dim=5), 'even'),
    (dict(head_dim=0), 'head_dim must be an integer >= 1'),  # not hidden / heads silently
])
def test_config_errors(change, message):
  with pytest.raises(ValueError, match=message):
    LlamaConfig.from_hf_dict(dict(HF_CONFIGS['llama_untied'], **change))


def test_config_missing_field():
  hf = dict(HF_CONFIGS['llama_untied'])
  del hf['hidden_size']
  with pytest.raises(ValueError, match='hidden_size'):
    LlamaConfig.from_hf_dict(hf)


def _v5_config(hf):
  """`hf` as transformers v5 writes it: rope_theta / rope_scaling inside rope_parameters."""
  out = {k: v for k, v in hf.items() if k not in ('rope_theta', 'rope_scaling')}
  out['rope_parameters'] = dict(hf.get('rope_scaling') or {'rope_type': 'default'},
                                rope_theta=hf['rope_theta'])
  return out


@pytest.mark.parametrize('name', ['qwen2_tied_bias', 'llama_bias_llama3rope'])
def test_config_reads_transformers_v5_rope_parameters(name):
  # Dropping rope_parameters used to fall back to rope_theta=10000 (wrong logits for Qwen's
  # 1e6) and to no llama3 scaling, silently.
  hf = HF_CONFIGS[name]
  cfg = LlamaConfig.from_hf_dict(_v5_config(hf))
  assert cfg == LlamaConfig.from_hf_dict(hf)
  np.testing.assert_array_equal(rope_inverse_frequencies(cfg),
                                rope_inverse_frequencies(LlamaConfig.from_hf_dict(hf)))
  # Both spellings present and agreeing (also with 'type' for 'rope_type') is fine.
  both = dict(_v5_config(hf), rope_theta=hf['rope_theta'])
  if hf.get('rope_scaling'):
    scaling = dict(hf['rope_scaling'])
    scaling['type'] = scaling.pop('rope_type')
    both['rope_scaling'] = scaling
  assert LlamaConfig.from_hf_dict(both) == cfg


@pytest.mark.parametrize('change, message', [
    (dict(rope_theta=500.0), r'rope_theta=500\.0.*rope_parameters'),
    (dict(rope_scaling={'rope_type': 'linear', 'factor': 2.0}), 'rope_scaling.*rope_parameters'),
    (dict(rope_parameters=[1e6]), 'rope_parameters must be a dict'),
])
def test_config_rope_parameters_conflicts(change, message):
  with pytest.raises(ValueError, match=message):
    LlamaConfig.from_hf_dict(dict(_v5_config(HF_CONFIGS['qwen2_tied_bias']), **change))


@pytest.mark.parametrize('change, message', [
    # Used to load, then raise a bare KeyError in rope_inverse_frequencies.
    (dict(rope_scaling={'rope_type': 'llama3', 'factor': 8.0}),
     "rope_scaling.*lacks 'low_freq_factor'"),
    (dict(rope_scaling={'type': 'linear'}), "rope_scaling.*lacks 'factor'"),
    (dict(rope_scaling={'type': 'linear', 'factor': '2'}), r"rope_scaling\['factor'\]"),
    # A string used to raise TypeError from the comparison.
    (dict(rope_theta='10000'), 'rope_theta'),
    (dict(rope_theta=float('nan')), 'rope_theta'),
    (dict(rms_norm_eps=None), 'rms_norm_eps'),
    # Equal factors divided by zero in rope_inverse_frequencies.
    (dict(rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 4.0,
                        'high_freq_factor': 4.0, 'original_max_position_embeddings': 64}),
     'needs high_freq_factor > low_freq_factor'),
])
def test_config_rope_field_errors(change, message):
  with pytest.raises(ValueError, match=message):
    LlamaConfig.from_hf_dict(dict(HF_CONFIGS['llama_untied'], **change))


def test_state_dict_errors():
  hf = HF_CONFIGS['llama_untied']
  cfg = LlamaConfig.from_hf_dict(hf)
  state = _hf_state(hf)
  missing = {k: v for k, v in state.items() if k != 'model.layers.1.mlp.up_proj.weight'}
  with pytest.raises(ValueError, match=r'model\.layers\.1\.mlp\.up_proj\.weight'):
    checkpoint.params_from_hf_state_dict(cfg, missing)
  wrong = dict(state, **{'model.norm.weight': np.ones(15, np.float32)})
  with pytest.raises(ValueError, match=r'model\.norm\.weight.*shape'):
    checkpoint.params_from_hf_state_dict(cfg, wrong)
  extra = dict(state, **{'model.layers.0.self_attn.q_norm.weight': np.ones(4, np.float32)})
  with pytest.raises(ValueError, match='q_norm'):
    checkpoint.params_from_hf_state_dict(cfg, extra)
  nan = dict(state, **{'model.norm.weight': np.full(16, np.nan, np.float32)})
  with pytest.raises(ValueError, match='NaN'):
    checkpoint.params_from_hf_state_dict(cfg, nan)
  # Ignored: the old rotary buffer, and a duplicate head of a tied model.
  ignored = dict(state, **{'model.layers.0.self_attn.rotary_emb.inv_freq': np.ones(2)})
  checkpoint.params_from_hf_state_dict(cfg, ignored)
  with pytest.raises(ValueError, match='params lacks'):
    checkpoint.params_to_hf_state_dict(cfg, {'embed_tokens': {}})


# -------------------------------------------------------------------------- checkpoints


def _write_hf_dir(directory, hf, state):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'config.json').write_text(json.dumps(hf))
  save_file(state, str(directory / 'model.safetensors'))


@pytest.mark.parametrize('name', sorted(HF_CONFIGS))
def test_loader_reads_hf_layout_safetensors(tmp_path, name):
  pytest.importorskip('safetensors')
  hf = HF_CONFIGS[name]
  state = _hf_state(hf, seed=3)
  _write_hf_dir(tmp_path, hf, state)
  cfg, params = checkpoint.load_hf_checkpoint(tmp_path)
  assert cfg == LlamaConfig.from_hf_dict(hf)
  tokens = _tokens(seed=4)
  logits, _ = _apply(Llama(cfg), params, tokens)
  np.testing.assert_allclose(logits, _np_logits(state, hf, tokens)[0], rtol=1e-4, atol=1e-4)


def test_loader_reads_sharded_bf16_checkpoint(tmp_path):
  pytest.importorskip('safetensors')
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  hf = HF_CONFIGS['qwen2_tied_bias']
  cfg = LlamaConfig.from_hf_dict(hf)
  state = {k: v.astype(jnp.bfloat16) for k, v in _hf_state(hf).items()}
  names = sorted(state)
  shards = {'a.safetensors': names[:5], 'b.safetensors': names[5:]}
  for file_name, keys in shards.items():
    save_file({k: state[k] for k in keys}, str(tmp_path / file_name))
  weight_map = {k: f for f, keys in shards.items() for k in keys}
  (tmp_path / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
  (tmp_path / 'config.json').write_text(json.dumps(hf))
  _, params = checkpoint.load_hf_checkpoint(tmp_path)
  expected = checkpoint.params_from_hf_state_dict(
      cfg, {k: v.astype(np.float32) for k, v in state.items()})
  _assert_tree_equal(params, expected)
  _, params16 = checkpoint.load_hf_checkpoint(tmp_path, dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(params16))
  # bfloat16 compute: float32 logits within bfloat16 rounding of the float32 forward pass.
  logits16, hidden16 = _apply(Llama(cfg, dtype=jnp.bfloat16), params16, _tokens())
  assert logits16.dtype == jnp.float32 and hidden16.dtype == jnp.bfloat16
  np.testing.assert_allclose(logits16, _apply(Llama(cfg), params, _tokens())[0], atol=0.15)
  # A shard listed in the index but absent is named.
  (tmp_path / 'b.safetensors').unlink()
  with pytest.raises(ValueError, match='b.safetensors'):
    checkpoint.load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize('max_shard_bytes', [None, 2000])
def test_save_load_round_trip(tmp_path, max_shard_bytes):
  pytest.importorskip('safetensors')
  hf = HF_CONFIGS['llama_bias_llama3rope']
  cfg = LlamaConfig.from_hf_dict(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf, seed=5))
  written = checkpoint.save_hf_checkpoint(tmp_path, cfg, params, max_shard_bytes=max_shard_bytes)
  sharded = (tmp_path / 'model.safetensors.index.json').exists()
  assert sharded == (max_shard_bytes is not None)
  assert all(p.exists() for p in written)
  if sharded:
    assert len(list(tmp_path.glob('model-*-of-*.safetensors'))) > 1
  loaded_cfg, loaded = checkpoint.load_hf_checkpoint(tmp_path)
  assert loaded_cfg == cfg
  _assert_tree_equal(loaded, params)
  # A float32 checkpoint read as bfloat16 is cast on the way in (the files stay float32).
  _, loaded16 = checkpoint.load_hf_checkpoint(tmp_path, dtype=jnp.bfloat16)
  _assert_tree_equal(loaded16, jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params))
  tokens = _tokens(seed=6)
  np.testing.assert_array_equal(_apply(Llama(cfg), loaded, tokens)[0],
                                _apply(Llama(cfg), params, tokens)[0])
  # What we write is HF layout: the file holds the transposed kernel under the HF name.
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if not sharded:
    raw = load_file(str(tmp_path / 'model.safetensors'))
    np.testing.assert_array_equal(raw['model.layers.0.self_attn.q_proj.weight'],
                                  np.asarray(params['layers_0']['self_attn']['q_proj']['kernel']).T)


def test_loader_reads_utf8_json_whatever_the_locale(tmp_path):
  # config.json and the shard index are UTF-8 JSON; read with the locale's encoding (ASCII
  # under LANG=C with Python's UTF-8 mode and locale coercion off) a non-ASCII character
  # failed with UnicodeDecodeError, and cp1252 would have read it as mojibake.
  pytest.importorskip('safetensors')
  hf = HF_CONFIGS['llama_bias_llama3rope']
  cfg = LlamaConfig.from_hf_dict(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf, seed=5))
  checkpoint.save_hf_checkpoint(tmp_path, cfg, params, max_shard_bytes=2000)
  for name in ('config.json', 'model.safetensors.index.json'):
    obj = json.loads((tmp_path / name).read_text(encoding='utf-8'))
    obj['_name_or_path'] = '/home/jos\u00e9/llama'
    (tmp_path / name).write_bytes(json.dumps(obj, ensure_ascii=False).encode('utf-8'))
  root = str(Path(__file__).resolve().parents[1])
  env = dict(os.environ, LC_ALL='C', LANG='C', PYTHONUTF8='0', PYTHONCOERCECLOCALE='0',
             PYTHONPATH=os.pathsep.join([root, os.environ.get('PYTHONPATH', '')]),
             JAX_PLATFORMS='cpu')
  script = ('import sys\n'
            'from dv_jax.models import checkpoint\n'
            'print(checkpoint.load_hf_checkpoint(sys.argv[1]).config.hidden_size)\n')
  proc = subprocess.run([sys.executable, '-c', script, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == [str(cfg.hidden_size)]


def test_load_errors(tmp_path):
  pytest.importorskip('safetensors')
  hf = HF_CONFIGS['llama_untied']
  with pytest.raises(ValueError, match='does not exist'):
    checkpoint.load_hf_checkpoint(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match='config.json'):
    checkpoint.load_hf_checkpoint(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps(hf))
  with pytest.raises(ValueError, match='safetensors'):
    checkpoint.load_hf_checkpoint(tmp_path)
  state = _hf_state(hf)
  del state['lm_head.weight']
  _write_hf_dir(tmp_path, hf, state)
  with pytest.raises(ValueError, match='lm_head.weight'):
    checkpoint.load_hf_checkpoint(tmp_path)
  (tmp_path / 'config.json').write_text('{not json')
  with pytest.raises(ValueError, match='JSON'):
    checkpoint.load_hf_checkpoint(tmp_path)
  with pytest.raises(ValueError, match='max_shard_bytes'):
    checkpoint.save_hf_checkpoint(tmp_path / 'out', LlamaConfig.from_hf_dict(hf), {},
                                  max_shard_bytes=0)


def test_load_points_from_a_hugging_face_cache_folder_to_its_snapshot(tmp_path):
  # The cache keeps models--org--name/snapshots/<revision>/config.json; the folder itself
  # was reported only as lacking config.json.
  pytest.importorskip('safetensors')
  hf = HF_CONFIGS['llama_untied']
  snapshot = tmp_path / 'models--org--tiny' / 'snapshots' / '0123abcd'
  _write_hf_dir(snapshot, hf, _hf_state(hf))
  with pytest.raises(ValueError, match=r"has no config\.json; it is a Hugging Face cache "
                                       r"folder: pass a snapshot inside it, such as "
                                       r"'.*snapshots/0123abcd'"):
    checkpoint.load_hf_checkpoint(tmp_path / 'models--org--tiny')
  assert checkpoint.load_hf_checkpoint(snapshot).config == LlamaConfig.from_hf_dict(hf)


def test_load_errors_name_the_malformed_index_or_truncated_shard(tmp_path):
  pytest.importorskip('safetensors')
  hf = HF_CONFIGS['llama_untied']
  _write_hf_dir(tmp_path, hf, _hf_state(hf))
  weights = tmp_path / 'model.safetensors'
  blob = weights.read_bytes()
  # Used to raise safetensors' SafetensorError, which does not name the file.
  weights.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(ValueError, match=r'model\.safetensors.*truncated'):
    checkpoint.load_hf_checkpoint(tmp_path)
  weights.write_bytes(blob)
  # Used to raise a bare JSONDecodeError.
  (tmp_path / 'model.safetensors.index.json').write_text('{oops')
  with pytest.raises(ValueError, match=r'model\.safetensors\.index\.json is not valid JSON'):
    checkpoint.load_hf_checkpoint(tmp_path)


def test_tokenizer_loads(tmp_path):
  tokenizers = pytest.importorskip('tokenizers')
  vocab = {'[UNK]': 0, 'the': 1, 'cat': 2, 'sat': 3}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / 'tokenizer.json'))
  loaded = checkpoint.load_tokenizer(tmp_path)
  assert loaded.encode('the cat sat on').ids == [1, 2, 3, 0]
  assert loaded.get_vocab_size() == 4
  with pytest.raises(ValueError, match='tokenizer.json'):
    checkpoint.load_tokenizer(tmp_path / 'empty')
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'tokenizer.json').write_text('{"nonsense": 1}')
  with pytest.raises(ValueError, match='tokenizers file'):
    checkpoint.load_tokenizer(tmp_path / 'bad')


def test_named_special_tokens_reads_tokenizer_config_and_tolerates_what_it_cannot_read(
    tmp_path):
  """tokenizer_config.json is optional: a missing, malformed or non-object file names no
  token (loading a checkpoint must not fail on it), and an empty or non-string entry is no
  token either (it would be warned of as `bos_token=''`)."""
  config = tmp_path / 'tokenizer_config.json'
  assert checkpoint.named_special_tokens(tmp_path) == {}
  config.write_text(json.dumps({'bos_token': '<s>', 'eos_token': {'content': '</s>'}}))
  assert checkpoint.named_special_tokens(tmp_path) == {'bos_token': '<s>', 'eos_token': '</s>'}
  config.write_text(json.dumps({'bos_token': '', 'eos_token': {'content': ''}}))
  assert checkpoint.named_special_tokens(tmp_path) == {}
  config.write_text(json.dumps({'bos_token': None, 'eos_token': 2}))
  assert checkpoint.named_special_tokens(tmp_path) == {}
  config.write_text('{"bos_token": ')
  assert checkpoint.named_special_tokens(tmp_path) == {}
  config.write_text('["<s>"]')
  assert checkpoint.named_special_tokens(tmp_path) == {}

# Published sizes of real checkpoints: the architecture (GQA widths, biases, tying) matches.
REAL_CONFIGS = [
    (dict(model_type='qwen2', vocab_size=151936, hidden_size=896, intermediate_size=4864,
          num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
          rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True, hidden_act='silu',
          max_position_embeddings=32768, use_sliding_window=False, sliding_window=32768),
     494_032_768),  # Qwen2.5-0.5B
    (dict(model_type='llama', vocab_size=128256, hidden_size=2048, intermediate_size=8192,
          num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
          rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, hidden_act='silu',
          max_position_embeddings=131072,
          rope_scaling={'factor': 32.0, 'high_freq_factor': 4.0, 'low_freq_factor': 1.0,
                        'original_max_position_embeddings': 8192, 'rope_type': 'llama3'}),
     1_235_814_400),  # Llama-3.2-1B
]


@pytest.mark.parametrize('hf, count', REAL_CONFIGS)
def test_parameter_count_of_real_architectures(hf, count):
  shapes = checkpoint.param_shapes(LlamaConfig.from_hf_dict(hf))
  assert sum(int(np.prod(s)) for s in shapes.values()) == count


# ------------------------------------------------------------- checkpoint input checks


def test_load_refuses_a_tensor_stored_in_two_files(tmp_path):
  # Used to load silently, the file later in name order winning: here a stale all-zero
  # final norm beside the real weights.
  pytest.importorskip('safetensors')
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  hf = HF_CONFIGS['llama_untied']
  _write_hf_dir(tmp_path, hf, _hf_state(hf))
  save_file({'model.norm.weight': np.zeros(16, np.float32)}, str(tmp_path / 'old.safetensors'))
  with pytest.raises(ValueError, match=r"'model\.norm\.weight' is stored in both "
                                       r"'model\.safetensors' and 'old\.safetensors'"):
    checkpoint.load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize('first_shard_bytes, second_shard_bytes', [(2000, None), (None, 2000)])
def test_a_second_save_in_the_other_layout_is_what_loads(tmp_path, first_shard_bytes,
                                                         second_shard_bytes):
  # A single-file save over a sharded one left the old index, and the loader read the old
  # shards it lists: the first save's weights came back without a word. A sharded save over
  # a single file left model.safetensors, which transformers reads instead of the index.
  pytest.importorskip('safetensors')
  hf = HF_CONFIGS['llama_untied']
  cfg = LlamaConfig.from_hf_dict(hf)
  first = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf, seed=1))
  second = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf, seed=2))
  checkpoint.save_hf_checkpoint(tmp_path, cfg, first, max_shard_bytes=first_shard_bytes)
  written = checkpoint.save_hf_checkpoint(tmp_path, cfg, second,
                                          max_shard_bytes=second_shard_bytes)
  assert sorted(tmp_path.iterdir()) == sorted(written)
  _assert_tree_equal(checkpoint.load_hf_checkpoint(tmp_path).params, second)


def test_load_refuses_model_safetensors_beside_an_index_that_omits_it(tmp_path):
  pytest.importorskip('safetensors')
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  hf = HF_CONFIGS['llama_untied']
  cfg = LlamaConfig.from_hf_dict(hf)
  params = checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf, seed=1))
  checkpoint.save_hf_checkpoint(tmp_path, cfg, params, max_shard_bytes=2000)
  stale = _hf_state(hf, seed=2)
  save_file(stale, str(tmp_path / 'model.safetensors'))  # e.g. copied in by hand
  with pytest.raises(ValueError, match=r'holds both model\.safetensors and '
                                       r'model\.safetensors\.index\.json'):
    checkpoint.load_hf_checkpoint(tmp_path)
  # An index of the one file (some converters write it) is no conflict.
  for shard in tmp_path.glob('model-*-of-*.safetensors'):
    shard.unlink()
  (tmp_path / 'model.safetensors.index.json').write_text(
      json.dumps({'weight_map': {name: 'model.safetensors' for name in stale}}))
  _assert_tree_equal(checkpoint.load_hf_checkpoint(tmp_path).params,
                     checkpoint.params_from_hf_state_dict(cfg, stale))


def test_load_refuses_an_index_that_misplaces_a_tensor(tmp_path):
  pytest.importorskip('safetensors')
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  hf = HF_CONFIGS['llama_untied']
  state = _hf_state(hf)
  names = sorted(state)
  save_file({k: state[k] for k in names[:5]}, str(tmp_path / 'a.safetensors'))
  save_file({k: state[k] for k in names[5:]}, str(tmp_path / 'b.safetensors'))
  weight_map = {k: 'a.safetensors' if k in names[:6] else 'b.safetensors' for k in names}
  (tmp_path / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
  (tmp_path / 'config.json').write_text(json.dumps(hf))
  with pytest.raises(ValueError, match=rf"lists tensor '{names[5]}' in 'a\.safetensors', but "
                                       r"it is in 'b\.safetensors'"):
    checkpoint.load_hf_checkpoint(tmp_path)


def test_load_names_the_file_of_a_misshapen_tensor(tmp_path):
  pytest.importorskip('safetensors')
  hf = HF_CONFIGS['llama_untied']
  state = dict(_hf_state(hf), **{'model.norm.weight': np.ones(15, np.float32)})
  _write_hf_dir(tmp_path, hf, state)
  with pytest.raises(ValueError, match=r"'model\.norm\.weight' in file 'model\.safetensors' "
                                       r'has shape \(15,\), the config needs \(16,\)'):
    checkpoint.load_hf_checkpoint(tmp_path)


def test_tied_config_refuses_a_different_lm_head():
  # Used to be dropped silently: the logits then came from the embedding, not this head.
  hf = HF_CONFIGS['qwen2_tied_bias']
  cfg = LlamaConfig.from_hf_dict(hf)
  state = _hf_state(hf)
  with pytest.raises(ValueError, match='tie_word_embeddings.*lm_head'):
    checkpoint.params_from_hf_state_dict(cfg, dict(state, **{'lm_head.weight': _hf_state(
        HF_CONFIGS['llama_untied'], seed=9)['lm_head.weight']}))
  # A duplicate equal to the embedding (some savers write one) is still fine.
  same = dict(state, **{'lm_head.weight': state['model.embed_tokens.weight'].copy()})
  _assert_tree_equal(checkpoint.params_from_hf_state_dict(cfg, same),
                     checkpoint.params_from_hf_state_dict(cfg, state))


@pytest.mark.parametrize('dtype', [jnp.int8, np.int32, 'bool', 'not a dtype'])
def test_loader_refuses_a_non_floating_dtype(tmp_path, dtype):
  # int8 used to truncate every weight to an integer without an error.
  hf = HF_CONFIGS['llama_untied']
  cfg = LlamaConfig.from_hf_dict(hf)
  with pytest.raises(ValueError, match='dtype must be a floating dtype'):
    checkpoint.params_from_hf_state_dict(cfg, _hf_state(hf), dtype=dtype)
  with pytest.raises(ValueError, match='dtype must be a floating dtype'):
    checkpoint.load_hf_checkpoint(tmp_path, dtype=dtype)


def test_save_refuses_params_the_config_does_not_hold(tmp_path):
  # The params of a 2-layer model saved under a 1-layer config used to lose layer 1.
  hf = HF_CONFIGS['llama_untied']
  params = checkpoint.params_from_hf_state_dict(LlamaConfig.from_hf_dict(hf), _hf_state(hf))
  shallow = LlamaConfig.from_hf_dict(dict(hf, num_hidden_layers=1))
  with pytest.raises(ValueError, match=r'leaves that Llama\(config\) lacks.*layers_1/'):
    checkpoint.save_hf_checkpoint(tmp_path, shallow, params)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('name', ['qwen2_tied_bias', 'llama_bias_llama3rope'])
def test_config_reads_rope_theta_written_inside_rope_scaling(name):
  # Used to ignore it: Qwen's theta of 1e6 became the default 10000 (and the llama3 dict kept
  # a stray key), wrong rotary frequencies without an error.
  hf = HF_CONFIGS[name]
  inside = {k: v for k, v in hf.items() if k != 'rope_theta'}
  inside['rope_scaling'] = dict(hf.get('rope_scaling') or {'rope_type': 'default'},
                                rope_theta=hf['rope_theta'])
  cfg = LlamaConfig.from_hf_dict(inside)
  assert cfg == LlamaConfig.from_hf_dict(hf)
  np.testing.assert_allclose(rope_inverse_frequencies(cfg), _np_inv_freq(hf, cfg.dim_per_head),
                             rtol=1e-12)
  with pytest.raises(ValueError, match=r"rope_theta=500\.0 and rope_scaling\['rope_theta'\]"):
    LlamaConfig.from_hf_dict(dict(inside, rope_theta=500.0))
