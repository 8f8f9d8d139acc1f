"""dv_jax's Llama / Qwen2 against real Hugging Face `transformers` outputs (golden fixture).

test_llama.py checks the forward pass against a float64 NumPy reference written in this
repository, so a misreading of the HF layout shared by both would pass there. The fixture
in tests/data/hf_golden/ was written by `make_fixture.py` (beside it) with transformers
(see VERSIONS.json; CPU, float32, eager attention): each architecture's directory is a
`save_pretrained(safe_serialization=True)` checkpoint (HF's own config.json and tensor
layout) plus reference.npz with HF's logits, last hidden state and greedy `generate`
tokens, and METHOD.md's g (mean response-token log-probability) computed from HF's logits
in float64. No torch is needed here. Agreement is ~1e-6 relative in float32; a wrong rope
convention or scaling, a missing bias, a wrong tying or GQA grouping is off by 1e-1..1.
"""

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax.models import checkpoint
from dv_jax.models import lm
from dv_jax.models.llama import Llama
from dv_jax.models.transformer import sample

FIXTURE = Path(os.environ.get('DV_HF_GOLDEN_DIR',
                              Path(__file__).parent / 'data' / 'hf_golden'))
ARCHS = ('llama_gqa_untied_llama3rope', 'llama_tied_bias_linearrope', 'qwen2_mqa_tied',
         'qwen2_gqa_untied')
# Relative to the largest |logit|: float32 agreement is ~1e-6, structural errors >= 6e-2.
RTOL = 1e-4


def _close(got, want, mask=None, rtol=RTOL):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if mask is not None:
    got, want = got[mask.astype(bool)], want[mask.astype(bool)]
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max())


def _load(arch, directory=None):
  ckpt = checkpoint.load_hf_checkpoint(directory or FIXTURE / arch)
  ref = dict(np.load(FIXTURE / arch / 'reference.npz'))
  return ckpt, Llama(ckpt.config), ref


def test_fixture_is_present():
  # A missing fixture must fail, not skip every parametrised test below.
  for arch in ARCHS:
    assert (FIXTURE / arch / 'model.safetensors').is_file(), FIXTURE / arch


def test_fixture_covers_the_features():
  configs = {a: checkpoint.load_hf_checkpoint(FIXTURE / a).config for a in ARCHS}
  assert {c.model_type for c in configs.values()} == {'llama', 'qwen2'}
  assert {c.tie_word_embeddings for c in configs.values()} == {True, False}
  assert any(c.num_key_value_heads < c.num_attention_heads for c in configs.values())
  assert any(c.o_proj_bias and c.mlp_bias for c in configs.values())
  rope_types = {(c.rope_scaling_dict or {}).get('rope_type') for c in configs.values()}
  assert {'llama3', 'linear'} <= rope_types


@pytest.mark.parametrize('arch', ARCHS)
def test_logits_match_hf(arch):
  ckpt, model, ref = _load(arch)
  run = lambda *a, **kw: model.apply({'params': ckpt.params}, *map(jnp.asarray, a), **kw)
  _close(run(ref['ids']), ref['logits'])
  real_r = np.broadcast_to(ref['mask_r'][..., None], ref['logits_r'].shape)
  _close(run(ref['ids_r'], ref['mask_r']), ref['logits_r'], real_r)
  # Left padding: HF was given position_ids = cumsum(mask) - 1, dv_jax's default rule.
  real_l = np.broadcast_to(ref['mask_l'][..., None], ref['logits_l'].shape)
  _close(run(ref['ids_l'], ref['mask_l']), ref['logits_l'], real_l)
  _close(run(ref['ids_l'], ref['mask_l'], position_ids=jnp.asarray(ref['pos_l'])),
         ref['logits_l'], real_l)


@pytest.mark.parametrize('arch', ARCHS)
def test_hidden_states_match_hf(arch):
  ckpt, model, ref = _load(arch)
  hidden = model.apply({'params': ckpt.params}, jnp.asarray(ref['ids']),
                       method=Llama.hidden_states)
  _close(hidden, ref['hidden'])


@pytest.mark.parametrize('arch', ARCHS)
def test_greedy_sampling_matches_hf_generate(arch):
  # With the KV cache only: test_llama.py checks prefill / decode_step against the forward
  # pass and cached against uncached sampling, so HF's generate is needed here once.
  ckpt, model, ref = _load(arch)
  assert ref['greedy_margin'] > 1e-2  # no near-ties on the path
  new = ref['greedy'].shape[1]
  # top_p -> 0 keeps only the argmax: greedy decoding.
  res = sample(model, ckpt.params, jax.random.PRNGKey(0), ref['prompt'], max_new_tokens=new,
               top_p=1e-6, prompt_lengths=ref['prompt_lengths'], use_cache=True)
  tokens = np.asarray(res.tokens)
  got = np.stack([tokens[i, n:n + new] for i, n in enumerate(ref['prompt_lengths'])])
  np.testing.assert_array_equal(got, ref['greedy'])


@pytest.mark.parametrize('arch', ARCHS)
def test_response_nll_is_minus_hf_g(arch):
  ckpt, model, ref = _load(arch)
  apply_fn = lambda params, tokens: model.apply({'params': params}, tokens)
  nll = lm.response_nll(apply_fn, ckpt.params, ref['ids_r'], ref['resp_mask'], block_size=2)
  np.testing.assert_allclose(-np.asarray(nll), ref['g'], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch', ARCHS)
def test_transformers_v4_config_layout(arch, tmp_path):
  """The same weights under a v4 config.json (top-level rope_theta, rope_scaling 'type')."""
  directory = tmp_path / arch
  shutil.copytree(FIXTURE / arch, directory)
  hf = json.loads((directory / 'config.json').read_text())
  rope = dict(hf.pop('rope_parameters'))
  hf['rope_theta'] = rope.pop('rope_theta')
  rope_type = rope.pop('rope_type')
  hf['rope_scaling'] = None if rope_type == 'default' else {'type': rope_type, **rope}
  (directory / 'config.json').write_text(json.dumps(hf))
  ckpt, model, ref = _load(arch, directory)
  _close(model.apply({'params': ckpt.params}, jnp.asarray(ref['ids'])), ref['logits'])


@pytest.mark.parametrize('arch', ARCHS[:1])
def test_bfloat16_is_near_hf_float32(arch):
  ckpt = checkpoint.load_hf_checkpoint(FIXTURE / arch, dtype=jnp.bfloat16)
  ref = dict(np.load(FIXTURE / arch / 'reference.npz'))
  logits = Llama(ckpt.config, dtype=jnp.bfloat16).apply({'params': ckpt.params},
                                                        jnp.asarray(ref['ids']))
  assert logits.dtype == jnp.float32
  _close(logits, ref['logits'], rtol=0.1)  # bf16 rounding: ~3e-2 relative observed
