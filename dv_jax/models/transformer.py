"""A small decoder-only transformer language model, a sequence classifier and a sampler.

The LM is GPT-2 shaped: learned token and position embeddings, pre-LayerNorm blocks of causal
multi-head self-attention and a GELU MLP, a final LayerNorm and an untied output projection.
It is the from-scratch backbone of the sentiment (tweets) and facts tasks; `sample` draws
the synthetic tweets and facts from it with temperature and top-p truncation, the generation
mechanisms whose tail truncation METHOD.md section 1 models.

Incremental decoding (shared with `dv_jax.models.llama.Llama`): `prefill(tokens,
attention_mask, cache_len=L)` runs the causal forward pass once and returns its logits and a
`KVCache` of fixed-shape keys / values [b, L, kv, hd] per layer; `decode_step(token_B,
position_B, cache)` feeds one token per row at that row's own position, writes its keys /
values into slot `position_B` and attends to the slots s <= position_B that the key mask
allows. `sample` uses them, so generating N tokens costs one prefill plus N - 1 single-token
steps instead of N full forward passes.

Shape legend: b batch, t sequence length, s key positions, L cache length, d d_model,
f d_ff, V vocab, h heads, kv key/value heads, g = h // kv query heads per key/value head,
hd head dimension, c classes.

Parameter paths (what `dv_jax.models.lm.last_layers_filter` matches): `embed`, `pos_embed`,
`layers_{i}/{ln_1,attn/{query,key,value,out},ln_2,mlp/{fc_in,fc_out}}`, `final_norm`,
`lm_head`; the classifier nests the LM under `backbone/` and adds `classifier`.
"""

import functools
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks

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


def check_token_ids(tokens: jax.Array, vocab_size: int, name: str = 'tokens') -> None:
  """Refuses ids outside `[0, vocab_size)` where the tokens are concrete (outside jit).

  `nn.Embed` reads id -1 as the last row, a finite and wrong result, and an id past the
  table as NaN. Under jit / vmap the values are unknown and the check is skipped: the
  task builders check their token data once, before any model runs.
  """
  if isinstance(tokens, jax.core.Tracer) or not tokens.size:
    return
  low, high = int(jnp.min(tokens)), int(jnp.max(tokens))
  if low < 0 or high >= vocab_size:
    raise ValueError(f'{name} must be token ids in [0, {vocab_size}) (vocab_size), got '
                     f'ids from {low} to {high}')


def check_attention_mask(attention_mask: Any,
                         tokens_shape: Tuple[int, ...]) -> Optional[jax.Array]:
  """The mask as an array, checked to have the tokens' shape [b, t] (None passes through).

  `attention_allowed` broadcasts it against [b, t, t], so a [b, 1] or [1, t] mask would
  otherwise be accepted and applied to every key or every row.
  """
  if attention_mask is None:
    return None
  attention_mask = jnp.asarray(attention_mask)
  if attention_mask.shape != tuple(tokens_shape):
    raise ValueError(f'attention_mask must have the shape of tokens {tuple(tokens_shape)}, '
                     f'got {attention_mask.shape}')
  return attention_mask


class KVCache(NamedTuple):
  """Keys and values of every layer, for incremental decoding (`prefill`, `decode_step`).

  Slot s of the cache holds the token at position s of the row (prompts are right-padded, so
  a row's slot and position agree).

  Attributes:
    keys: one [b, L, kv, hd] array per layer (after the rotary embedding, for Llama).
    values: one [b, L, kv, hd] array per layer.
    key_mask: bool [b, L], False for a slot no query may attend to (masked padding, slots not
      written yet).
  """
  keys: Tuple[jax.Array, ...]
  values: Tuple[jax.Array, ...]
  key_mask: jax.Array


class LogitsAndCache(NamedTuple):
  """Output of `prefill` ([b, t, V] or [b, V] logits) and `decode_step` ([b, V] logits)."""
  logits: jax.Array
  cache: KVCache


def attend(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array, allowed_BTS: jax.Array,
           kv_cache: Optional[Tuple[jax.Array, jax.Array]] = None,
           slots_B: Optional[jax.Array] = None
           ) -> Tuple[jax.Array, Tuple[jax.Array, jax.Array]]:
  """Attention over this call's own keys, or (decoding) over a layer's cache.

  Args:
    q_BTHD: queries [b, t, h, hd].
    k_BTKD: this call's keys [b, t, kv, hd].
    v_BTKD: this call's values [b, t, kv, hd].
    allowed_BTS: bool [b or 1, t, s]; s = t without a cache, s = L with one.
    kv_cache: optional (keys [b, L, kv, hd], values [b, L, kv, hd]); then t must be 1 and
      row i's key / value is written into slot slots_B[i] before attending.
    slots_B: int [b], the slots to write (with kv_cache).

  Returns:
    (attention output [b, t, h * hd], (keys, values)): this call's keys and values without
    a cache (what `prefill` stores), else the updated cache.
  """
  if kv_cache is None:
    return grouped_query_attention(q_BTHD, k_BTKD, v_BTKD, allowed_BTS), (k_BTKD, v_BTKD)
  keys_BLKD, values_BLKD = kv_cache
  rows = jnp.arange(q_BTHD.shape[0])
  keys_BLKD = keys_BLKD.at[rows, slots_B].set(k_BTKD[:, 0].astype(keys_BLKD.dtype))
  values_BLKD = values_BLKD.at[rows, slots_B].set(v_BTKD[:, 0].astype(values_BLKD.dtype))
  out = grouped_query_attention(q_BTHD, keys_BLKD, values_BLKD, allowed_BTS)
  return out, (keys_BLKD, values_BLKD)


def cache_from_prefill(keys_values: Sequence[Tuple[jax.Array, jax.Array]],
                       key_mask_BT: jax.Array, cache_len: int) -> KVCache:
  """A KVCache of length L = cache_len holding a prefill's t positions in slots 0..t-1.

  Args:
    keys_values: per layer, (keys [b, t, kv, hd], values [b, t, kv, hd]).
    key_mask_BT: bool [b, t], True for the prefix positions later queries may see.
    cache_len: L >= t; slots t..L-1 are zero and masked until `decode_step` writes them.
  """
  t = key_mask_BT.shape[1]
  widths = ((0, 0), (0, cache_len - t), (0, 0), (0, 0))
  return KVCache(keys=tuple(jnp.pad(k, widths) for k, _ in keys_values),
                 values=tuple(jnp.pad(v, widths) for _, v in keys_values),
                 key_mask=jnp.pad(key_mask_BT, ((0, 0), (0, cache_len - t))))


def decode_allowed(key_mask_BL: jax.Array, position_B: jax.Array) -> jax.Array:
  """bool [b, 1, L]: slot s is visible to row i's query iff s <= position_B[i] and unmasked.

  The causal term keeps a row off its own not-yet-overwritten prompt padding (and anything
  past its current length) even where the key mask would allow it.
  """
  slots_1L = jnp.arange(key_mask_BL.shape[1])[None]
  return (key_mask_BL & (slots_1L <= position_B[:, None]))[:, None, :]


def check_prefill_args(tokens: jax.Array, cache_len: Any, logit_positions: Any,
                       max_len: Optional[int] = None) -> None:
  """ValueErrors for `prefill`'s arguments (shapes and dtypes: static, so free under jit)."""
  _check_tokens(tokens, max_len)
  t = tokens.shape[1]
  if not isinstance(cache_len, (int, np.integer)) or isinstance(cache_len, bool):
    raise ValueError(f'cache_len must be an int, got {cache_len!r}')
  if cache_len < t:
    raise ValueError(f'cache_len must be >= the prompt length {t}, got {cache_len}')
  if max_len is not None and cache_len > max_len:
    raise ValueError(f'cache_len {cache_len} > max_len={max_len}')
  if logit_positions is not None:
    positions = jnp.asarray(logit_positions)
    if positions.shape != tokens.shape[:1] or not jnp.issubdtype(positions.dtype, jnp.integer):
      raise ValueError(f'logit_positions must be int [{tokens.shape[0]}], got '
                       f'{positions.dtype} {positions.shape}')


def check_decode_args(token_B: jax.Array, position_B: jax.Array, cache: KVCache,
                      num_layers: int) -> None:
  """ValueErrors for `decode_step`'s arguments (shapes and dtypes: static under jit)."""
  if token_B.ndim != 1 or not jnp.issubdtype(token_B.dtype, jnp.integer):
    raise ValueError(f'token_B must be int [b], got {token_B.dtype} {token_B.shape}')
  if position_B.shape != token_B.shape or not jnp.issubdtype(position_B.dtype, jnp.integer):
    raise ValueError(f'position_B must be int {token_B.shape}, got {position_B.dtype} '
                     f'{position_B.shape}')
  if not isinstance(cache, KVCache):
    raise ValueError(f'cache must be a KVCache (from prefill), got {type(cache).__name__}')
  if len(cache.keys) != num_layers or len(cache.values) != num_layers:
    raise ValueError(f'cache has {len(cache.keys)} layers, the model {num_layers}')
  if cache.key_mask.ndim != 2 or cache.key_mask.shape[0] != token_B.shape[0]:
    raise ValueError(f'cache has batch shape {cache.key_mask.shape}, token_B {token_B.shape}')


def hidden_at(hidden_BTD: jax.Array, positions_B: Optional[jax.Array]) -> jax.Array:
  """hidden [b, t, d] unchanged, or [b, 1, d] at row i's position positions_B[i]."""
  if positions_B is None:
    return hidden_BTD
  rows = jnp.arange(hidden_BTD.shape[0])
  return hidden_BTD[rows, jnp.asarray(positions_B)][:, None]


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with biased q/k/v/out projections."""
  num_heads: int

  @nn.compact
  def __call__(self, x_BTD: jax.Array, allowed_BTS: jax.Array, kv_cache=None, slots_B=None):
    """Output [b, t, d] and (keys, values): see `attend` for kv_cache and slots_B."""
    b, t, d = x_BTD.shape
    if d % self.num_heads:
      raise ValueError(f'd_model={d} is not divisible by num_heads={self.num_heads}')
    hd = d // self.num_heads
    q = nn.Dense(d, name='query')(x_BTD).reshape(b, t, self.num_heads, hd)
    k = nn.Dense(d, name='key')(x_BTD).reshape(b, t, self.num_heads, hd)
    v = nn.Dense(d, name='value')(x_BTD).reshape(b, t, self.num_heads, hd)
    out, kv = attend(q, k, v, allowed_BTS, kv_cache, slots_B)
    return nn.Dense(d, name='out')(out), kv


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
  def __call__(self, x_BTD: jax.Array, allowed_BTS: jax.Array, kv_cache=None, slots_B=None):
    """Output [b, t, d] and the attention's (keys, values): see `attend`."""
    attn_BTD, kv = CausalSelfAttention(self.num_heads, name='attn')(
        nn.LayerNorm(epsilon=1e-5, name='ln_1')(x_BTD), allowed_BTS, kv_cache, slots_B)
    x_BTD = x_BTD + attn_BTD
    return x_BTD + MLP(self.d_ff, name='mlp')(nn.LayerNorm(epsilon=1e-5, name='ln_2')(x_BTD)), kv


def check_lm_sizes(module: Any) -> None:
  """ValueErrors naming a size of TransformerLM (also SequenceClassifier's backbone) that
  is not a whole number in range: `num_layers=-1` built a model of no blocks, `num_heads=0`
  failed as a modulo by zero, and True was read as 1."""
  for name in ('vocab_size', 'num_heads', 'd_model', 'd_ff', 'max_len'):
    checks.check_int(getattr(module, name), name)
  checks.check_int(module.num_layers, 'num_layers', minimum=0)
  if module.pad_id is not None:
    checks.check_int(module.pad_id, 'pad_id', minimum=0, maximum=module.vocab_size - 1)


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
    check_lm_sizes(self)
    self.embed = nn.Embed(self.vocab_size, self.d_model,
                          embedding_init=nn.initializers.normal(0.02))
    # float32 as every flax layer's parameters: without a dtype, jax_enable_x64 drew
    # float64 positions with other values (and activations in float64).
    self.pos_embed = self.param('pos_embed', nn.initializers.normal(0.02),
                                (self.max_len, self.d_model), jnp.float32)
    self.layers = [TransformerBlock(self.num_heads, self.d_ff) for _ in range(self.num_layers)]
    self.final_norm = nn.LayerNorm(epsilon=1e-5)
    self.lm_head = nn.Dense(self.vocab_size, use_bias=False)

  def _mask(self, tokens, attention_mask):
    attention_mask = check_attention_mask(attention_mask, jnp.shape(tokens))
    if attention_mask is None and self.pad_id is not None:
      return tokens != self.pad_id
    return attention_mask

  def _forward(self, tokens, attention_mask):
    """Final-LayerNorm hidden states [b, t, d], each layer's (keys, values), the key mask."""
    tokens = jnp.asarray(tokens)
    _check_tokens(tokens, self.max_len)
    check_token_ids(tokens, self.vocab_size)
    attention_mask = self._mask(tokens, attention_mask)
    t = tokens.shape[1]
    x_BTD = self.embed(tokens) + self.pos_embed[None, :t]
    allowed_BTS = attention_allowed(t, attention_mask)
    keys_values = []
    for layer in self.layers:
      x_BTD, kv = layer(x_BTD, allowed_BTS)
      keys_values.append(kv)
    return self.final_norm(x_BTD), keys_values, attention_mask

  def hidden_states(self, tokens: jax.Array,
                    attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Final-LayerNorm hidden states [b, t, d] of int tokens [b, t]."""
    return self._forward(tokens, attention_mask)[0]

  def __call__(self, tokens: jax.Array,
               attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Next-token logits [b, t, V]: position j predicts token j + 1 from tokens 0..j.

    Args:
      tokens: int [b, t], t <= max_len.
      attention_mask: optional [b, t], 1 for real tokens, 0 for padding (masked as keys).
    """
    return self.lm_head(self.hidden_states(tokens, attention_mask))

  def prefill(self, tokens: jax.Array, attention_mask: Optional[jax.Array] = None, *,
              cache_len: int, logit_positions: Optional[jax.Array] = None) -> LogitsAndCache:
    """The forward pass of `__call__`, also returning the keys / values for `decode_step`.

    Args:
      tokens: int [b, t], right-padded prompts (or unpadded).
      attention_mask: optional [b, t] as in `__call__` (without one, `pad_id` applies); a
        masked position stays masked as a key for every later step.
      cache_len: L, t <= L <= max_len: the cache holds positions 0..L-1.
      logit_positions: optional int [b]; then only row i's logits at position
        logit_positions[i] are computed (the sampler needs one per row, not [b, t, V]).

    Returns:
      LogitsAndCache(logits [b, t, V] (or [b, V] with logit_positions), KVCache with L slots).

    Raises:
      ValueError: on bad tokens, cache_len or logit_positions.
    """
    tokens = jnp.asarray(tokens)
    check_prefill_args(tokens, cache_len, logit_positions, self.max_len)
    hidden_BTD, keys_values, mask = self._forward(tokens, attention_mask)
    key_mask_BT = (jnp.ones(tokens.shape, bool) if mask is None
                   else jnp.asarray(mask) != 0)
    logits = self.lm_head(hidden_at(hidden_BTD, logit_positions))
    if logit_positions is not None:
      logits = logits[:, 0]
    return LogitsAndCache(logits, cache_from_prefill(keys_values, key_mask_BT, cache_len))

  def decode_step(self, token_B: jax.Array, position_B: jax.Array,
                  cache: KVCache) -> LogitsAndCache:
    """One token per row at that row's own position, attending to the cache.

    Row i's token is embedded at position position_B[i], its keys / values written into
    slot position_B[i], and it attends to the unmasked slots <= position_B[i]. With `pad_id`
    set, a token equal to it is masked as a key for later steps (as `__call__` masks it).

    Args:
      token_B: int [b].
      position_B: int [b], each in [0, L) (not checked: jit cannot).
      cache: the KVCache from `prefill` or a previous `decode_step`.

    Returns:
      LogitsAndCache(logits [b, V] predicting position_B + 1, the updated cache).

    Raises:
      ValueError: on bad shapes or dtypes, or a cache of another model.
    """
    token_B, position_B = jnp.asarray(token_B), jnp.asarray(position_B)
    check_decode_args(token_B, position_B, cache, self.num_layers)
    check_token_ids(token_B, self.vocab_size, 'token_B')
    rows = jnp.arange(token_B.shape[0])
    visible_B = (jnp.ones(token_B.shape, bool) if self.pad_id is None
                 else token_B != self.pad_id)
    key_mask_BL = cache.key_mask.at[rows, position_B].set(visible_B)
    allowed_B1L = decode_allowed(key_mask_BL, position_B)
    x_B1D = self.embed(token_B[:, None]) + self.pos_embed[position_B][:, None]
    keys, values = [], []
    for layer, k, v in zip(self.layers, cache.keys, cache.values):
      x_B1D, (k, v) = layer(x_B1D, allowed_B1L, (k, v), position_B)
      keys.append(k)
      values.append(v)
    logits_BV = self.lm_head(self.final_norm(x_B1D))[:, 0]
    return LogitsAndCache(logits_BV, KVCache(tuple(keys), tuple(values), key_mask_BL))

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
    checks.check_int(self.num_classes, 'num_classes')  # the backbone checks the rest
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
  logits = logits.astype(jnp.float32)
  scaled = logits / temperature
  # A tiny temperature overflows ordinary logits to inf (40 / 1e-37), and the softmax of
  # two infs is NaN. Shifted by the row's maximum first, the logits stay <= 0 (0 at the
  # argmax) and cannot overflow. Only rows that overflowed take the shifted form: the
  # others keep the very bits (and draws) they had.
  shifted = (logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature
  scaled = jnp.where(jnp.all(jnp.isfinite(scaled), axis=-1, keepdims=True), scaled, shifted)
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


def check_sampling(temperature: Any, top_p: Any) -> None:
  """Raises unless `sample` / `next_token_probs` can use `temperature` and `top_p`.

  Callers that train a model before sampling from it run this first.

  Raises:
    ValueError: a temperature not finite or 0 in float32, a top_p outside (0, 1] or 0 in
      float32.
  """
  # Logits are divided by the temperature in float32: one that rounds to 0 there (1e-40)
  # would give inf / NaN probabilities.
  if not (np.isfinite(temperature) and np.float32(temperature) >= np.finfo(np.float32).tiny):
    raise ValueError(f'temperature must be finite and > 0 in float32, got {temperature}')
  # The nucleus test compares with float32(top_p): one that rounds to 0 there (1e-46)
  # would keep no token at all.
  if not (np.isfinite(top_p) and 0 < np.float32(top_p) and top_p <= 1):
    raise ValueError(f'top_p must be in (0, 1] (and > 0 in float32), got {top_p}')


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
  check_sampling(temperature, top_p)
  logits = jnp.asarray(logits)
  if not bool(jnp.all(jnp.isfinite(logits))):
    raise ValueError('logits must be finite')
  return _next_token_probs_jit(logits, jnp.float32(temperature), jnp.float32(top_p))


@jax.jit
def _next_token_probs_jit(logits, temperature, top_p):
  return jax.nn.softmax(_truncated_logits(logits, temperature, top_p), axis=-1)


def _draw(step_key, logits_BV, state, write_pos_B, temperature, top_p, eos_id, pad_id):
  """One sampling step shared by both paths: draw, finish rows at eos, write the token."""
  buffer, done, lengths = state
  token_B = jax.random.categorical(step_key, _truncated_logits(logits_BV, temperature, top_p))
  token_B = jnp.where(done, pad_id, token_B).astype(buffer.dtype)
  lengths = lengths + (~done).astype(lengths.dtype)
  done = done | (token_B == eos_id)
  buffer = buffer.at[jnp.arange(buffer.shape[0]), write_pos_B].set(token_B)
  return token_B, (buffer, done, lengths)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'use_cache'))
def _sample_jit(model, params, key, buffer_BL, prompt_lengths_B, temperature, top_p, eos_id,
                pad_id, *, max_new_tokens, use_cache):
  # eos_id and pad_id are traced (eos_id = -1 never matches a token): changing them, the
  # temperature or top_p reuses the compiled program.
  b, total = buffer_BL.shape
  rows = jnp.arange(b)
  keys = jax.random.split(key, max_new_tokens)
  draw = functools.partial(_draw, temperature=temperature, top_p=top_p, eos_id=eos_id,
                           pad_id=pad_id)
  state = (buffer_BL, jnp.zeros((b,), bool), prompt_lengths_B)
  steps = jnp.arange(max_new_tokens, dtype=prompt_lengths_B.dtype)

  if not use_cache:
    def full_step(state, step_key_and_index):
      step_key, s = step_key_and_index
      write_pos_B = prompt_lengths_B + s
      # The model is causal, so logits at write_pos - 1 ignore whatever lies at and after
      # write_pos: one fixed-shape forward pass serves every row and every step.
      logits_BLV = model.apply({'params': params}, state[0])
      _, state = draw(step_key, logits_BLV[rows, write_pos_B - 1], state, write_pos_B)
      return state, None

    (buffer_BL, _, lengths_B), _ = jax.lax.scan(full_step, state, (keys, steps))
    return buffer_BL, lengths_B

  # No attention mask, so the prompt is seen exactly as the uncached forward pass sees the
  # buffer (a model's own pad_id rule included). A row's padding after its prompt is never
  # attended: causality hides it from the prompt, and decode_step lets position p see only
  # slots <= p, each overwritten by a generated token before p reaches it.
  prompt_len = total - max_new_tokens
  first_BV, cache = model.apply({'params': params}, buffer_BL[:, :prompt_len],
                                cache_len=total, logit_positions=prompt_lengths_B - 1,
                                method='prefill')
  token_B, state = draw(keys[0], first_BV, state, prompt_lengths_B)

  def cached_step(carry, step_key_and_index):
    token_B, cache, state = carry
    step_key, s = step_key_and_index
    # Feed the token drawn at position write_pos - 1; its logits predict write_pos.
    write_pos_B = prompt_lengths_B + s
    logits_BV, cache = model.apply({'params': params}, token_B, write_pos_B - 1, cache,
                                   method='decode_step')
    token_B, state = draw(step_key, logits_BV, state, write_pos_B)
    return (token_B, cache, state), None

  (_, _, (buffer_BL, _, lengths_B)), _ = jax.lax.scan(
      cached_step, (token_B, cache, state), (keys[1:], steps[1:]))
  return buffer_BL, lengths_B


def _check_token_ids(model: nn.Module, params: Any, prompt_BT: np.ndarray,
                     lengths_B: np.ndarray, *, eos_id: Any, pad_id: Any) -> None:
  """ValueErrors for ids `sample` would feed the model or compare against outside [0, V).

  The embedding gathers an id past the table as NaN (a negative one wraps around), and
  `pad_id` fills the buffer the prompt is read from: a prompt shorter than its row then has
  NaN keys and values after it, which the causal mask weights by 0, and 0 * NaN = NaN
  turns the row's logits into NaN (token 0 drawn, cached and uncached paths disagreeing).
  An eos_id outside the vocabulary can never be drawn, so no row would ever end.
  """
  vocab_size = int(jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params,
                                  jax.ShapeDtypeStruct((1, 1), jnp.int32)).shape[-1])
  for name, value, optional in (('pad_id', pad_id, False), ('eos_id', eos_id, True)):
    if optional and value is None:
      continue
    if (not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_))
        or not 0 <= value < vocab_size):
      raise ValueError(f'{name} must be an int in [0, {vocab_size}) (the model\'s '
                       f'vocabulary), got {value!r}')
  real_BT = np.arange(prompt_BT.shape[1])[None] < lengths_B[:, None]
  bad = real_BT & ((prompt_BT < 0) | (prompt_BT >= vocab_size))
  if np.any(bad):
    rows = np.flatnonzero(bad.any(axis=1))
    raise ValueError(f'prompt_tokens holds ids outside [0, {vocab_size}) (the model\'s '
                     f'vocabulary) in rows {rows[:10].tolist()}')


def supports_cache(model: nn.Module) -> bool:
  """Whether `model` has the incremental-decoding methods `prefill` and `decode_step`."""
  return callable(getattr(model, 'prefill', None)) and callable(
      getattr(model, 'decode_step', None))


def sample(model: nn.Module, params: Any, key: jax.Array, prompt_tokens: Any, *,
           max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
           prompt_lengths: Optional[Any] = None, eos_id: Optional[int] = None,
           pad_id: int = 0, use_cache: bool = True) -> SampleResult:
  """Ancestral sampling with temperature and top-p (nucleus) truncation.

  Each step draws token ~ `next_token_probs(logits, temperature=, top_p=)` at every row's
  next free position. Everything has a fixed shape (a buffer of t0 + max_new_tokens tokens,
  a key / value cache of that length, `lax.scan` over steps, one jit compile per
  model/shape). With the cache the cost is one prefill of the prompts plus one single-token
  `decode_step` per further new token; each row decodes at its own position, attending only
  to its prompt and its own generated tokens.

  Args:
    model: a causal LM module whose `apply({'params': params}, tokens[b, L])` returns
      logits [b, L, V] (TransformerLM, Llama); L = t0 + max_new_tokens must fit the model.
      With `prefill` and `decode_step` methods (TransformerLM, Llama) it decodes with a
      cache, otherwise by a full forward pass per step.
    params: the model's 'params' collection.
    key: PRNG key.
    prompt_tokens: int [b, t0], right-padded when prompts have different lengths.
    max_new_tokens: number of sampling steps (>= 1).
    temperature: > 0.
    top_p: in (0, 1].
    prompt_lengths: optional int [b] in [1, t0]; default t0 for every row.
    eos_id: optional end token in [0, V); a row that draws it is finished and gets
      `pad_id` after.
    pad_id: filler token after a row's end, in [0, V) (it is fed to the model).
    use_cache: decode with the key / value cache when the model has one; False reruns the
      full causal forward pass on the buffer every step (max_new_tokens forwards of length
      L: the reference the cached path is tested against). Given the same key both give the
      same tokens, up to float rounding of the logits.

  Returns:
    SampleResult(tokens [b, t0 + max_new_tokens], lengths [b]).

  Raises:
    ValueError: on bad shapes, lengths, temperature, top_p, max_new_tokens or use_cache,
      or on prompt ids (before each row's length), eos_id or pad_id outside [0, V).
  """
  check_sampling(temperature, top_p)
  if not isinstance(use_cache, (bool, np.bool_)):
    raise ValueError(f'use_cache must be a bool, got {use_cache!r}')
  max_new_tokens = checks.check_int(max_new_tokens, 'max_new_tokens')
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
  total = t0 + max_new_tokens
  max_len = getattr(model, 'max_len', None)
  if max_len is not None and total > max_len:
    raise ValueError(f'prompt length {t0} + max_new_tokens {max_new_tokens} > model max_len '
                     f'{max_len}')
  _check_token_ids(model, params, prompt, lengths, eos_id=eos_id, pad_id=pad_id)
  buffer = np.full((b, total), pad_id, np.int32)
  buffer[:, :t0] = prompt
  # Clear each row's padding so the result holds pad_id after every row's end.
  buffer[np.arange(total)[None, :] >= lengths[:, None]] = pad_id
  tokens, out_lengths = _sample_jit(
      model, params, key, jnp.asarray(buffer), jnp.asarray(lengths, jnp.int32),
      jnp.float32(temperature), jnp.float32(top_p),
      jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id),
      max_new_tokens=max_new_tokens,
      use_cache=bool(use_cache) and supports_cache(model))
  return SampleResult(tokens, out_lengths)
