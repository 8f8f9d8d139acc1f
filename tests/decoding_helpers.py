"""Jitted incremental-decoding calls shared by the KV-cache tests of both LM classes.

`TransformerLM` and `Llama` expose the same `prefill` / `decode_step` interface
(`dv_jax.models.transformer`), so one pair of jitted wrappers serves both test files; the
model is a static argument, so each model compiles once.
"""

import functools

import jax


@functools.partial(jax.jit, static_argnames=('model', 'cache_len'))
def prefill(model, params, tokens, attention_mask=None, logit_positions=None, *, cache_len):
  return model.apply({'params': params}, tokens, attention_mask, cache_len=cache_len,
                     logit_positions=logit_positions, method='prefill')


@functools.partial(jax.jit, static_argnames=('model',))
def decode_step(model, params, token_B, position_B, cache):
  return model.apply({'params': params}, token_B, position_B, cache, method='decode_step')
