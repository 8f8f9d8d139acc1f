"""A small decoder-only transformer language model, a sequence classifier and a sampler.

The LM is GPT-2 shaped: learned token and position embeddings, pre-LayerNorm blocks of causal
multi-head self-attention and a GELU MLP, a final LayerNorm and an untied output projection.
It is the from-scratch backbone of the sentiment (tweets) and facts tasks; `sample` draws
the synthetic tweets and facts from it with temperature and top-p truncation, the generation
mechanisms whose tail truncation METHOD.md section 1 models.

Shape legend: b batch, t sequence length, s key positions, d d_model, f d_ff, V vocab,
h heads, kv key/value heads, g = h // kv query heads per key/value head, hd head dimension,
c classes.

Parameter paths (what `dv_jax.models.lm.last_layers_filter` matches): `embed`, `pos_embed`,
`layers_{i}/{ln_1,attn/{query,key,value,out},ln_2,mlp/{fc_in,fc_out}}`, `final_norm`,
`lm_head`; the classifier nests the LM under `backbone/` and adds `classifier`.
"""

import functools
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Masked attention scores get the most negative finite float32, not -inf: a query row with no
# visible key (a left pad) then gets a uniform, finite softmax instead of NaN (as HF does).
_MASK_VALUE = float(np.finfo(np.float32).min)


def attention_allowed(seq_len: int, attention_mask: Optional[jax.Array] = None) -> jax.Array:
  """Which key positions each query position may attend to: causal and not padding.

  Args:
    seq_len: t.
    attention_mask: optional [b, t], nonzero for real tokens and 0 for padding.

  Returns:
    bool [1, t, t] (no mask) or [b, t, t]; entry [., q, s] is True when s <= q and s is real.
  """
  allowed_1TS = jnp.tril(jnp.ones((seq_len, seq_len), dtype=bool))[None]
  if attention_mask is None:
    return allowed_1TS
  return allowed_1TS & (jnp.asarray(attention_mask) != 0)[:, None, :]


def grouped_query_attention(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array,
                            allowed_BTS: jax.Array) -> jax.Array:
  """Scaled dot-product attention where kv heads are shared by groups of query heads.

  softmax(q k^T / sqrt(hd)) v per head, query head j reading key/value head j // g (the HF
  `repeat_kv` order). With kv = h it is ordinary multi-head attention. Scores and softmax are
  in float32 whatever the input dtype.

  Args:
    q_BTHD: queries [b, t, h, hd].
    k_BSKD: keys [b, s, kv, hd], kv dividing h.
    v_BSKD: values [b, s, kv, hd].
    allowed_BTS: bool [b or 1, t, s], False where attention is masked.

  Returns:
    [b, t, h * hd], heads concatenated in query-head order.
  """
  b, t, h, hd = q_BTHD.shape
  kv = k_BSKD.shape[2]
  q_BTKGD = q_BTHD.reshape(b, t, kv, h // kv, hd)
  scores = jnp.einsum('btkgd,bskd->bkgts', q_BTKGD, k_BSKD).astype(jnp.float32)
  scores = scores * (1.0 / np.sqrt(hd))
  scores = jnp.where(allowed_BTS[:, None, None], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BSKD.dtype)
  out = jnp.einsum('bkgts,bskd->btkgd', probs, v_BSKD)
  return out.reshape(b, t, h * hd)


def masked_mean(hidden_BTD: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean over real (unmasked) positions: [b, t, d] -> [b, d]; an all-pad row gives 0."""
  if attention_mask is None:
    return jnp.mean(hidden_BTD, axis=1)
  weights_BT = (jnp.asarray(attention_mask) != 0).astype(hidden_BTD.dtype)
  total_BD = jnp.einsum('btd,bt->bd', hidden_BTD, weights_BT)
  count_B1 = jnp.maximum(jnp.sum(weights_BT, axis=1, keepdims=True), 1.0)
  return total_BD / count_B1


def _check_tokens(tokens: jax.Array, max_len: Optional[int] = None) -> None:
  # Shapes are static under jit, so this check costs nothing at run time.
  if tokens.ndim != 2:
    raise ValueError(f'tokens must be [b, t], got shape {tokens.shape}')
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f'tokens must be integer token ids, got dtype {tokens.dtype}')
  if max_len is not None and tokens.shape[1] > max_len:
    raise ValueError(f'tokens has length {tokens.shape[1]} > max_len={max_len}')


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with biased q/k/v/out projections."""
  num_heads: int

  @nn.compact
  def __call__(self, x_BTD: jax.Array, allowed_BTS: jax.Array) -> jax.Array:
    b, t, d = x_BTD.shape
    if d % self.num_heads:
      raise ValueError(f'd_model={d} is not divisible by num_heads={self.num_heads}')
    hd = d // self.num_heads
    q = nn.Dense(d, name='query')(x_BTD).reshape(b, t, self.num_heads, hd)
    k = nn.Dense(d, name='key')(x_BTD).reshape(b, t, self.num_heads, hd)
    v = nn.Dense(d, name='value')(x_BTD).reshape(b, t, self.num_heads, hd)
    return nn.Dense(d, name='out')(grouped_query_attention(q, k, v, allowed_BTS))


class MLP(nn.Module):
  """Dense(d_ff) -> GELU (tanh approximation, as GPT-2) -> Dense(d_model)."""
  d_ff: int

  @nn.compact
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    y = nn.gelu(nn.Dense(self.d_ff, name='fc_in')(x_BTD), approximate=True)
    return nn.Dense(x_BTD.shape[-1], name='fc_out')(y)


class TransformerBlock(nn.Module):
  """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x))."""
  num_heads: int
  d_ff: int

  @nn.compact
  def __call__(self, x_BTD: jax.Array, allowed_BTS: jax.Array) -> jax.Array:
    x_BTD = x_BTD + CausalSelfAttention(self.num_heads, name='attn')(
        nn.LayerNorm(epsilon=1e-5, name='ln_1')(x_BTD), allowed_BTS)
    return x_BTD + MLP(self.d_ff, name='mlp')(nn.LayerNorm(epsilon=1e-5, name='ln_2')(x_BTD))


class TransformerLM(nn.Module):
  """Tiny decoder-only causal LM (pre-LN, learned positions, untied output head).

  Attributes:
    vocab_size: V.
    num_layers: number of transformer blocks.
    num_heads: attention heads; must divide d_model.
    d_model: width d.
    d_ff: MLP hidden width f.
    max_len: longest sequence (size of the learned position table).
    pad_id: when set and no `attention_mask` is passed, tokens equal to `pad_id` are treated
      as padding (masked as keys and left out of `features`' mean). This lets a batched
      `apply_fn(params, tokens)` (the NTK interface) see padded text correctly.
  """
  vocab_size: int
  num_layers: int
  num_heads: int
  d_model: int
  d_ff: int
  max_len: int
  pad_id: Optional[int] = None

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.d_model,
                          embedding_init=nn.initializers.normal(0.02))
    self.pos_embed = self.param('pos_embed', nn.initializers.normal(0.02),
                                (self.max_len, self.d_model))
    self.layers = [TransformerBlock(self.num_heads, self.d_ff) for _ in range(self.num_layers)]
    self.final_norm = nn.LayerNorm(epsilon=1e-5)
    self.lm_head = nn.Dense(self.vocab_size, use_bias=False)

  def _mask(self, tokens, attention_mask):
    if attention_mask is None and self.pad_id is not None:
      return tokens != self.pad_id
    return attention_mask

  def hidden_states(self, tokens: jax.Array,
                    attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Final-LayerNorm hidden states [b, t, d] of int tokens [b, t]."""
    tokens = jnp.asarray(tokens)
    _check_tokens(tokens, self.max_len)
    attention_mask = self._mask(tokens, attention_mask)
    t = tokens.shape[1]
    x_BTD = self.embed(tokens) + self.pos_embed[None, :t]
    allowed_BTS = attention_allowed(t, attention_mask)
    for layer in self.layers:
      x_BTD = layer(x_BTD, allowed_BTS)
    return self.final_norm(x_BTD)

  def __call__(self, tokens: jax.Array,
               attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Next-token logits [b, t, V]: position j predicts token j + 1 from tokens 0..j.

    Args:
      tokens: int [b, t], t <= max_len.
      attention_mask: optional [b, t], 1 for real tokens, 0 for padding (masked as keys).
    """
    return self.lm_head(self.hidden_states(tokens, attention_mask))

  def features(self, tokens: jax.Array,
               attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean-pooled last hidden state [b, d] (METHOD.md's LM `init_features`)."""
    tokens = jnp.asarray(tokens)
    mask = self._mask(tokens, attention_mask)
    return masked_mean(self.hidden_states(tokens, mask), mask)


class SequenceClassifier(nn.Module):
  """A TransformerLM backbone, mean-pooled over real tokens, then a linear classifier.

  The backbone's `lm_head` is never called, so it has no parameters here.

  Attributes:
    vocab_size, num_layers, num_heads, d_model, d_ff, max_len, pad_id: as TransformerLM.
    num_classes: c.
  """
  vocab_size: int
  num_classes: int
  num_layers: int
  num_heads: int
  d_model: int
  d_ff: int
  max_len: int
  pad_id: Optional[int] = None

  def setup(self):
    self.backbone = TransformerLM(self.vocab_size, self.num_layers, self.num_heads,
                                  self.d_model, self.d_ff, self.max_len, pad_id=self.pad_id)
    self.classifier = nn.Dense(self.num_classes)

  def features(self, tokens: jax.Array,
               attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean-pooled last hidden state [b, d]."""
    return self.backbone.features(tokens, attention_mask)

  def __call__(self, tokens: jax.Array,
               attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Class logits [b, c] of int tokens [b, t]."""
    return self.classifier(self.features(tokens, attention_mask))


# ----------------------------------------------------------------------------------------
# Sampling.


class SampleResult(NamedTuple):
  """Output of `sample`.

  Attributes:
    tokens: int32 [b, t0 + max_new_tokens]; row i holds its prompt (positions
      < prompt_lengths[i]), then the generated tokens, then `pad_id`.
    lengths: int32 [b], number of valid tokens per row (prompt + generated, the eos included).
  """
  tokens: jax.Array
  lengths: jax.Array


def _truncated_logits(logits: jax.Array, temperature: Any, top_p: Any) -> jax.Array:
  """Logits / temperature with the tokens outside the top-p nucleus set to -inf."""
  scaled = logits.astype(jnp.float32) / temperature
  probs = jax.nn.softmax(scaled, axis=-1)
  order = jnp.argsort(-probs, axis=-1)
  sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
  # Keep a token when the mass strictly above it is < top_p: the smallest head reaching
  # top_p, and always the most likely token (so top_p -> 0 is greedy decoding).
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  # top_p = 1 keeps every token even when float32 rounding lets mass_before reach 1.
  keep_sorted = (mass_before < top_p) | (top_p >= 1.0)
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
  return jnp.where(keep, scaled, -jnp.inf)


def _validate_temperature_top_p(temperature, top_p):
  if not (np.isfinite(temperature) and temperature > 0):
    raise ValueError(f'temperature must be finite and > 0, got {temperature}')
  if not (np.isfinite(top_p) and 0 < top_p <= 1):
    raise ValueError(f'top_p must be in (0, 1], got {top_p}')


def next_token_probs(logits: jax.Array, *, temperature: float = 1.0,
                     top_p: float = 1.0) -> jax.Array:
  """The distribution `sample` draws the next token from.

  p = softmax(logits / temperature), restricted to the top-p nucleus (the most likely tokens
  whose cumulative mass first reaches top_p) and renormalised.

  Args:
    logits: [..., V].
    temperature: > 0; < 1 sharpens the distribution (thins the tail).
    top_p: in (0, 1]; 1 keeps every token, -> 0 keeps only the argmax.

  Returns:
    float32 [..., V], rows summing to 1.

  Raises:
    ValueError: on a bad temperature or top_p, or non-finite logits.
  """
  _validate_temperature_top_p(temperature, top_p)
  logits = jnp.asarray(logits)
  if not bool(jnp.all(jnp.isfinite(logits))):
    raise ValueError('logits must be finite')
  return _next_token_probs_jit(logits, jnp.float32(temperature), jnp.float32(top_p))


@jax.jit
def _next_token_probs_jit(logits, temperature, top_p):
  return jax.nn.softmax(_truncated_logits(logits, temperature, top_p), axis=-1)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens'))
def _sample_jit(model, params, key, buffer_BL, prompt_lengths_B, temperature, top_p, eos_id,
                pad_id, *, max_new_tokens):
  # eos_id and pad_id are traced (eos_id = -1 never matches a token): changing them, the
  # temperature or top_p reuses the compiled program.
  b = buffer_BL.shape[0]
  rows = jnp.arange(b)

  def step(carry, step_key_and_index):
    buffer, done, lengths = carry
    step_key, s = step_key_and_index
    write_pos_B = prompt_lengths_B + s
    # The model is causal, so logits at write_pos - 1 ignore whatever lies at and after
    # write_pos: one fixed-shape forward pass serves every row and every step.
    logits_BLV = model.apply({'params': params}, buffer)
    last_BV = logits_BLV[rows, write_pos_B - 1]
    token_B = jax.random.categorical(step_key, _truncated_logits(last_BV, temperature, top_p))
    token_B = jnp.where(done, pad_id, token_B).astype(buffer.dtype)
    lengths = lengths + (~done).astype(lengths.dtype)
    done = done | (token_B == eos_id)
    buffer = buffer.at[rows, write_pos_B].set(token_B)
    return (buffer, done, lengths), None

  keys = jax.random.split(key, max_new_tokens)
  init = (buffer_BL, jnp.zeros((b,), bool), prompt_lengths_B)
  (buffer_BL, _, lengths_B), _ = jax.lax.scan(
      step, init, (keys, jnp.arange(max_new_tokens, dtype=prompt_lengths_B.dtype)))
  return buffer_BL, lengths_B


def sample(model: nn.Module, params: Any, key: jax.Array, prompt_tokens: Any, *,
           max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
           prompt_lengths: Optional[Any] = None, eos_id: Optional[int] = None,
           pad_id: int = 0) -> SampleResult:
  """Ancestral sampling with temperature and top-p (nucleus) truncation.

  Each step draws token ~ `next_token_probs(logits, temperature=, top_p=)` at every row's
  next free position. Everything has a fixed shape (a buffer of t0 + max_new_tokens tokens,
  `lax.scan` over steps, one jit compile per model/shape), and each step reruns the full
  causal forward pass on the buffer (no KV cache: O(max_new_tokens) forwards, fine for the
  small models this samples synthetic data from).

  Args:
    model: a causal LM module whose `apply({'params': params}, tokens[b, L])` returns
      logits [b, L, V] (TransformerLM, Llama); L = t0 + max_new_tokens must fit the model.
    params: the model's 'params' collection.
    key: PRNG key.
    prompt_tokens: int [b, t0], right-padded when prompts have different lengths.
    max_new_tokens: number of sampling steps (>= 1).
    temperature: > 0.
    top_p: in (0, 1].
    prompt_lengths: optional int [b] in [1, t0]; default t0 for every row.
    eos_id: optional end token; a row that draws it is finished and gets `pad_id` after.
    pad_id: filler token after a row's end.

  Returns:
    SampleResult(tokens [b, t0 + max_new_tokens], lengths [b]).

  Raises:
    ValueError: on bad shapes, lengths, temperature, top_p or max_new_tokens.
  """
  _validate_temperature_top_p(temperature, top_p)
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be an int >= 1, got {max_new_tokens}')
  prompt = np.asarray(prompt_tokens)
  if prompt.ndim != 2 or prompt.shape[0] == 0 or prompt.shape[1] == 0:
    raise ValueError(f'prompt_tokens must be a non-empty [b, t0] array, got {prompt.shape}')
  if not np.issubdtype(prompt.dtype, np.integer):
    raise ValueError(f'prompt_tokens must be integer token ids, got dtype {prompt.dtype}')
  b, t0 = prompt.shape
  if prompt_lengths is None:
    lengths = np.full((b,), t0, np.int32)
  else:
    lengths = np.asarray(prompt_lengths)
    if lengths.shape != (b,) or not np.issubdtype(lengths.dtype, np.integer):
      raise ValueError(f'prompt_lengths must be int [{b}], got {lengths.dtype} {lengths.shape}')
    if np.any(lengths < 1) or np.any(lengths > t0):
      raise ValueError(f'prompt_lengths must lie in [1, {t0}], got {lengths}')
  total = t0 + int(max_new_tokens)
  max_len = getattr(model, 'max_len', None)
  if max_len is not None and total > max_len:
    raise ValueError(f'prompt length {t0} + max_new_tokens {max_new_tokens} > model max_len '
                     f'{max_len}')
  buffer = np.full((b, total), pad_id, np.int32)
  buffer[:, :t0] = prompt
  # Clear each row's padding so the result holds pad_id after every row's end.
  buffer[np.arange(total)[None, :] >= lengths[:, None]] = pad_id
  tokens, out_lengths = _sample_jit(
      model, params, key, jnp.asarray(buffer), jnp.asarray(lengths, jnp.int32),
      jnp.float32(temperature), jnp.float32(top_p),
      jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id),
      max_new_tokens=int(max_new_tokens))
  return SampleResult(tokens, out_lengths)
