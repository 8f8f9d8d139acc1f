"""Llama / Qwen2 decoder-only transformers in flax.linen, matching Hugging Face numerics.

The architecture of HF `LlamaForCausalLM` and `Qwen2ForCausalLM`: token embedding, blocks of
RMSNorm -> grouped-query causal self-attention with rotary position embeddings (HF
`rotate_half` convention) -> residual, RMSNorm -> SwiGLU MLP -> residual, a final RMSNorm and
an output projection that may be tied to the embedding. Qwen2 differs only by biases on the
q/k/v projections. `dv_jax.models.checkpoint.load_hf_checkpoint` fills the parameters from a
HF checkpoint directory; the backbones of METHOD.md's instruction-following and reasoning
tasks (Qwen / Llama, 0.5B-1.5B) are loaded this way, and their NTK taken at that checkpoint.

Shape legend: b batch, t sequence length, H hidden_size, F intermediate_size, V vocab_size,
h attention heads, kv key/value heads, hd head_dim.

Parameter paths mirror the HF names: `embed_tokens/embedding` [V, H];
`layers_{i}/input_layernorm/weight`, `layers_{i}/self_attn/{q,k,v,o}_proj/{kernel,bias}`
(kernel [in, out], the transpose of the HF Linear weight),
`layers_{i}/post_attention_layernorm/weight`, `layers_{i}/mlp/{gate,up,down}_proj/kernel`;
`norm/weight`; `lm_head/kernel` [H, V] when the embeddings are not tied.

Incremental decoding has the interface of `dv_jax.models.transformer.TransformerLM`:
`prefill(tokens, attention_mask, cache_len=L)` and `decode_step(token_B, position_B, cache)`
with a `KVCache` of rotated keys and values [b, L, kv, hd] per layer (kv heads, so GQA keeps
its memory saving); `dv_jax.models.transformer.sample` decodes with them.
"""

import dataclasses
from typing import Any, NamedTuple, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks
from dv_jax.models.transformer import KVCache
from dv_jax.models.transformer import LogitsAndCache
from dv_jax.models.transformer import attend
from dv_jax.models.transformer import attention_allowed
from dv_jax.models.transformer import cache_from_prefill
from dv_jax.models.transformer import check_attention_mask
from dv_jax.models.transformer import check_decode_args
from dv_jax.models.transformer import check_prefill_args
from dv_jax.models.transformer import check_token_ids
from dv_jax.models.transformer import decode_allowed
from dv_jax.models.transformer import hidden_at
from dv_jax.models.transformer import masked_mean

SUPPORTED_MODEL_TYPES = ('llama', 'qwen2')
_ROPE_TYPES = ('default', 'linear', 'llama3')
# The rope_scaling keys each type reads in `rope_inverse_frequencies`; checked up front so an
# incomplete config fails when it is parsed, not with a KeyError deep inside the forward pass.
_ROPE_REQUIRED_KEYS = {
    'default': (),
    'linear': ('factor',),
    'llama3': ('factor', 'low_freq_factor', 'high_freq_factor',
               'original_max_position_embeddings'),
}


def _freeze(value):
  """JSON value -> hashable equivalent (a module attribute must hash for jit)."""
  if isinstance(value, dict):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


def _thaw(value):
  if isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2
                                      and isinstance(v[0], str) for v in value):
    return {k: _thaw(v) for k, v in value}
  if isinstance(value, tuple):
    return [_thaw(v) for v in value]
  return value


def _is_real_number(value) -> bool:
  # bool is an int subclass, and a JSON string "10000" is not a number either.
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
      value, (bool, np.bool_))


def _rope_type(rope: dict) -> str:
  # HF wrote 'type' before it wrote 'rope_type'; both spellings occur in saved configs.
  return rope.get('rope_type', rope.get('type', 'default'))


def _split_rope_parameters(rope: dict) -> Tuple[Any, Optional[dict]]:
  """A transformers v5 `rope_parameters` dict -> (rope_theta or None, rope_scaling or None).

  The scaling is the dict without `rope_theta`, or None for the 'default' (unscaled) type,
  which is how a v4 config.json spells the same rotary embedding.
  """
  theta = rope.get('rope_theta')
  scaling = {k: v for k, v in rope.items() if k != 'rope_theta'}
  if _rope_type(scaling) == 'default':
    scaling = None
  return theta, scaling


def _same_rope_scaling(a: Optional[dict], b: Optional[dict]) -> bool:
  """Equal up to the 'type' / 'rope_type' spelling and an explicit 'default' type."""
  def canonical(rope):
    if not isinstance(rope, dict):
      return rope
    _, scaling = _split_rope_parameters(rope)
    if scaling is None:
      return None
    out = {k: v for k, v in scaling.items() if k != 'type'}
    out['rope_type'] = _rope_type(scaling)
    return out
  return canonical(a) == canonical(b)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """The fields of a HF Llama / Qwen2 `config.json` that the forward pass depends on.

  Attributes mirror the HF names. `attention_bias` is Llama's flag (biases on q, k, v and o);
  `model_type='qwen2'` always has q/k/v biases and no o bias, as HF Qwen2 does. `rope_scaling`
  is kept as a sorted tuple of (key, value) pairs so the config hashes; `rope_scaling_dict`
  gives it back as a dict. `head_dim=None` means hidden_size // num_attention_heads.
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: Optional[int] = None
  head_dim: Optional[int] = None
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: Optional[Tuple[Tuple[str, Any], ...]] = None
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  model_type: str = 'llama'
  hidden_act: str = 'silu'
  initializer_range: float = 0.02
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[Union[int, Tuple[int, ...]]] = None
  pad_token_id: Optional[int] = None

  def __post_init__(self):
    if self.num_key_value_heads is None:
      object.__setattr__(self, 'num_key_value_heads', self.num_attention_heads)
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, 'rope_scaling', _freeze(self.rope_scaling))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, 'eos_token_id', tuple(self.eos_token_id))
    self._validate()

  def _validate(self):
    for name in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
                 'num_attention_heads', 'num_key_value_heads'):
      object.__setattr__(self, name, checks.check_int(getattr(self, name), name))
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f'model_type must be one of {SUPPORTED_MODEL_TYPES}, '
                       f'got {self.model_type!r}')
    if self.hidden_act != 'silu':
      raise ValueError(f"hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}")
    if self.head_dim is not None:
      object.__setattr__(self, 'head_dim', checks.check_int(self.head_dim, 'head_dim'))
    if self.head_dim is None and self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size={self.hidden_size} is not divisible by '
                       f'num_attention_heads={self.num_attention_heads}')
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f'num_attention_heads={self.num_attention_heads} is not divisible by '
                       f'num_key_value_heads={self.num_key_value_heads}')
    if self.dim_per_head % 2:
      raise ValueError(f'head_dim must be even for rotary embeddings, got {self.dim_per_head}')
    for name in ('rms_norm_eps', 'rope_theta'):
      value = getattr(self, name)
      if not _is_real_number(value) or not np.isfinite(value) or value <= 0:
        raise ValueError(f'{name} must be a finite number > 0, got {value!r}')
    rope = self.rope_scaling_dict
    if rope is not None:
      if not isinstance(rope, dict):
        raise ValueError(f'rope_scaling must be a dict, got {rope!r}')
      rope_type = _rope_type(rope)
      if rope_type not in _ROPE_TYPES:
        raise ValueError(f'rope_scaling type must be one of {_ROPE_TYPES}, got {rope_type!r}')
      for key in _ROPE_REQUIRED_KEYS[rope_type]:
        if key not in rope:
          raise ValueError(f'rope_scaling of type {rope_type!r} lacks {key!r} (got {rope})')
        if not _is_real_number(rope[key]) or not np.isfinite(rope[key]) or rope[key] <= 0:
          raise ValueError(f'rope_scaling[{key!r}] must be a finite number > 0, '
                           f'got {rope[key]!r}')
      # llama3 blends the two bands over [low, high) wavelengths: equal factors divide by 0.
      if rope_type == 'llama3' and rope['high_freq_factor'] <= rope['low_freq_factor']:
        raise ValueError("rope_scaling of type 'llama3' needs high_freq_factor > "
                         f"low_freq_factor, got {rope['high_freq_factor']!r} <= "
                         f"{rope['low_freq_factor']!r}")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads

  @property
  def qkv_bias(self) -> bool:
    return self.model_type == 'qwen2' or self.attention_bias

  @property
  def o_proj_bias(self) -> bool:
    return self.model_type == 'llama' and self.attention_bias

  @property
  def rope_scaling_dict(self) -> Optional[dict]:
    return None if self.rope_scaling is None else _thaw(self.rope_scaling)

  @classmethod
  def from_hf_dict(cls, hf: dict) -> 'LlamaConfig':
    """Builds the config from a parsed HF `config.json`.

    Reads `rope_theta` / `rope_scaling` at the top level (transformers v4) or inside
    `rope_parameters` (v5, where a `rope_type` of 'default' means no scaling); a
    `rope_theta` inside `rope_scaling` is read as well.

    Raises:
      ValueError: a required field is missing or malformed (e.g. an incomplete
        `rope_scaling`, a non-numeric `rope_theta`), the top-level and `rope_parameters`
        rope fields disagree, or the checkpoint uses a feature this implementation lacks
        (another architecture, sliding-window attention, an unsupported rope scaling or
        activation).
    """
    required = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
                'num_attention_heads')
    missing = [name for name in required if name not in hf]
    if missing:
      raise ValueError(f'config.json lacks the required fields {missing}')
    model_type = hf.get('model_type', 'llama')
    if model_type == 'qwen2' and hf.get('use_sliding_window', False):
      raise ValueError('config.json sets use_sliding_window: sliding-window attention is not '
                       'implemented')
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in fields}
    kwargs['model_type'] = model_type
    if hf.get('rope_parameters') is not None:
      kwargs.update(cls._rope_from_parameters(hf))
    elif isinstance(hf.get('rope_scaling'), dict) and 'rope_theta' in hf['rope_scaling']:
      # Some transformers releases write rope_theta inside rope_scaling as well; left there
      # it was ignored, the default theta of 10000 used when the top level has none.
      kwargs.update(cls._rope_from_parameters(hf, field='rope_scaling'))
    if kwargs.get('rope_scaling') is not None:
      kwargs['rope_scaling'] = _freeze(kwargs['rope_scaling'])
    return cls(**kwargs)

  @staticmethod
  def _rope_from_parameters(hf: dict, field: str = 'rope_parameters') -> dict:
    """rope_theta / rope_scaling from a dict `hf[field]` that may hold both.

    transformers v5 moves both fields into `rope_parameters` (and some releases also write
    `rope_theta` into `rope_scaling`); ignoring it would fall back to the default theta of
    10000 and give wrong logits without an error.

    Raises:
      ValueError: `hf[field]` is not a dict, or a top-level `rope_theta` / `rope_scaling`
        disagrees with it.
    """
    rope = hf[field]
    if not isinstance(rope, dict):
      raise ValueError(f'{field} must be a dict, got {rope!r}')
    theta, scaling = _split_rope_parameters(rope)
    out = {}
    if theta is not None:
      if hf.get('rope_theta') is not None and hf['rope_theta'] != theta:
        raise ValueError(f"config.json has rope_theta={hf['rope_theta']!r} and "
                         f"{field}['rope_theta']={theta!r}; they disagree")
      out['rope_theta'] = theta
    top_scaling = hf.get('rope_scaling')
    if (field != 'rope_scaling' and top_scaling is not None
        and not _same_rope_scaling(top_scaling, scaling)):
      raise ValueError(f'config.json has rope_scaling={top_scaling!r} and '
                       f'rope_parameters={rope!r}; they disagree')
    out['rope_scaling'] = scaling
    return out

  def to_hf_dict(self) -> dict:
    """The HF `config.json` content for this config (inverse of `from_hf_dict`)."""
    out = dataclasses.asdict(self)
    out['rope_scaling'] = self.rope_scaling_dict
    if isinstance(self.eos_token_id, tuple):
      out['eos_token_id'] = list(self.eos_token_id)
    if out['head_dim'] is None:
      del out['head_dim']
    out['architectures'] = [{'llama': 'LlamaForCausalLM',
                             'qwen2': 'Qwen2ForCausalLM'}[self.model_type]]
    out['torch_dtype'] = 'float32'
    return out


def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
  """inv_freq [hd / 2] = theta^(-2j / hd), with the rope scaling of HF applied.

  'linear' divides every frequency by `factor`. 'llama3' (Llama 3.1/3.2) divides the low
  frequencies (wavelength > original_max_position_embeddings / low_freq_factor) by `factor`,
  keeps the high ones (wavelength < .../high_freq_factor) and interpolates linearly in
  original_max_position_embeddings / wavelength between the two.
  """
  hd = config.dim_per_head
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
  rope = config.rope_scaling_dict
  if rope is None:
    return inv_freq
  rope_type = _rope_type(rope)
  if rope_type == 'linear':
    return inv_freq / rope['factor']
  if rope_type == 'llama3':
    factor = rope['factor']
    low, high = rope['low_freq_factor'], rope['high_freq_factor']
    old_len = rope['original_max_position_embeddings']
    wavelength = 2 * np.pi / inv_freq
    smooth = (old_len / wavelength - low) / (high - low)
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(wavelength > old_len / low, inv_freq / factor,
                    np.where(wavelength < old_len / high, inv_freq, interpolated))
  return inv_freq


def rotary_cos_sin(position_ids_BT: jax.Array,
                   inv_freq: np.ndarray) -> Tuple[jax.Array, jax.Array]:
  """cos and sin [b, t, hd] of angles position * inv_freq, the half repeated (HF layout)."""
  angles_BTF = (position_ids_BT.astype(jnp.float32)[..., None]
                * jnp.asarray(inv_freq, jnp.float32)[None, None])
  angles_BTD = jnp.concatenate([angles_BTF, angles_BTF], axis=-1)
  return jnp.cos(angles_BTD), jnp.sin(angles_BTD)


def apply_rotary(x_BTHD: jax.Array, cos_BTD: jax.Array, sin_BTD: jax.Array) -> jax.Array:
  """x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[hd/2:], x[:hd/2])."""
  half = x_BTHD.shape[-1] // 2
  rotated = jnp.concatenate([-x_BTHD[..., half:], x_BTHD[..., :half]], axis=-1)
  out = x_BTHD * cos_BTD[:, :, None] + rotated * sin_BTD[:, :, None]
  return out.astype(x_BTHD.dtype)


class RMSNorm(nn.Module):
  """weight * x / sqrt(mean(x^2) + eps), the statistic in float32 (as HF)."""
  eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    weight = self.param('weight', nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return weight.astype(self.dtype)[None, None] * x32.astype(self.dtype)


class LlamaAttention(nn.Module):
  """Grouped-query causal self-attention with rotary embeddings."""
  config: LlamaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTH, allowed_BTS, cos_BTD, sin_BTD, kv_cache=None, slots_B=None):
    """Output [b, t, H] and (keys, values): see `dv_jax.models.transformer.attend`."""
    cfg = self.config
    b, t, _ = x_BTH.shape
    hd = cfg.dim_per_head
    dense = lambda features, bias, name: nn.Dense(
        features, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)
    q = dense(cfg.num_attention_heads * hd, cfg.qkv_bias, 'q_proj')(x_BTH)
    k = dense(cfg.num_key_value_heads * hd, cfg.qkv_bias, 'k_proj')(x_BTH)
    v = dense(cfg.num_key_value_heads * hd, cfg.qkv_bias, 'v_proj')(x_BTH)
    q = apply_rotary(q.reshape(b, t, cfg.num_attention_heads, hd), cos_BTD, sin_BTD)
    k = apply_rotary(k.reshape(b, t, cfg.num_key_value_heads, hd), cos_BTD, sin_BTD)
    v = v.reshape(b, t, cfg.num_key_value_heads, hd)
    out, kv = attend(q, k, v, allowed_BTS, kv_cache, slots_B)
    return dense(cfg.hidden_size, cfg.o_proj_bias, 'o_proj')(out), kv


class LlamaMLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  config: LlamaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTH):
    cfg = self.config
    dense = lambda features, name: nn.Dense(
        features, use_bias=cfg.mlp_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)
    gate = dense(cfg.intermediate_size, 'gate_proj')(x_BTH)
    up = dense(cfg.intermediate_size, 'up_proj')(x_BTH)
    return dense(cfg.hidden_size, 'down_proj')(nn.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
  """x + attn(RMSNorm(x)), then x + mlp(RMSNorm(x))."""
  config: LlamaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTH, allowed_BTS, cos_BTD, sin_BTD, kv_cache=None, slots_B=None):
    """Output [b, t, H] and the attention's (keys, values): see `LlamaAttention`."""
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = RMSNorm(cfg.rms_norm_eps, name='input_layernorm', **kw)(x_BTH)
    attn_BTH, kv = LlamaAttention(cfg, name='self_attn', **kw)(h, allowed_BTS, cos_BTD,
                                                               sin_BTD, kv_cache, slots_B)
    x_BTH = x_BTH + attn_BTH
    h = RMSNorm(cfg.rms_norm_eps, name='post_attention_layernorm', **kw)(x_BTH)
    return x_BTH + LlamaMLP(cfg, name='mlp', **kw)(h), kv


class LlamaOutput(NamedTuple):
  """`Llama(..., return_hidden=True)`: logits [b, t, V] (float32), hidden [b, t, H]."""
  logits: jax.Array
  hidden: jax.Array


class Llama(nn.Module):
  """HF-compatible Llama / Qwen2 causal LM.

  Attributes:
    config: the LlamaConfig.
    dtype: computation dtype (bfloat16 halves activation memory on an accelerator); the
      attention softmax and RMSNorm statistics are float32 regardless, logits are float32.
    param_dtype: dtype of freshly initialised parameters.
    remat: rematerialise each decoder layer in the backward pass (jax.checkpoint): the
      gradient of a 0.5B-1.5B model then stores one activation per layer, not all.
  """
  config: LlamaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size,
                                 embedding_init=nn.initializers.normal(cfg.initializer_range),
                                 **kw)
    layer_cls = nn.remat(LlamaDecoderLayer) if self.remat else LlamaDecoderLayer
    self.layers = [layer_cls(cfg, **kw) for _ in range(cfg.num_hidden_layers)]
    self.norm = RMSNorm(cfg.rms_norm_eps, **kw)
    if not cfg.tie_word_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False,
                              kernel_init=nn.initializers.normal(cfg.initializer_range), **kw)

  def _forward(self, tokens, attention_mask, position_ids):
    """Hidden states after the final RMSNorm [b, t, H] and each layer's (keys, values)."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f'tokens must be [b, t], got shape {tokens.shape}')
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'tokens must be integer token ids, got dtype {tokens.dtype}')
    check_token_ids(tokens, self.config.vocab_size)
    b, t = tokens.shape
    attention_mask = check_attention_mask(attention_mask, (b, t))
    if position_ids is None:
      if attention_mask is None:
        position_ids = jnp.broadcast_to(jnp.arange(t)[None], (b, t))
      else:
        # Count only real tokens, so a left-padded row is rotated as if unpadded.
        real = (attention_mask != 0).astype(jnp.int32)
        position_ids = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)
    else:
      position_ids = jnp.asarray(position_ids)
      if position_ids.shape != (b, t):
        raise ValueError(f'position_ids must have shape {(b, t)}, got {position_ids.shape}')
    cos_BTD, sin_BTD = rotary_cos_sin(position_ids, rope_inverse_frequencies(self.config))
    allowed_BTS = attention_allowed(t, attention_mask)
    x_BTH = self.embed_tokens(tokens)
    keys_values = []
    for layer in self.layers:
      x_BTH, kv = layer(x_BTH, allowed_BTS, cos_BTD, sin_BTD)
      keys_values.append(kv)
    return self.norm(x_BTH), keys_values

  def _logits(self, hidden_BTH):
    if self.config.tie_word_embeddings:
      logits = self.embed_tokens.attend(hidden_BTH)
    else:
      logits = self.lm_head(hidden_BTH)
    return logits.astype(jnp.float32)

  def hidden_states(self, tokens: jax.Array, attention_mask: Optional[jax.Array] = None,
                    position_ids: Optional[jax.Array] = None) -> jax.Array:
    """Hidden states after the final RMSNorm, [b, t, H]. Arguments as `__call__`."""
    return self._forward(tokens, attention_mask, position_ids)[0]

  def __call__(self, tokens: jax.Array, attention_mask: Optional[jax.Array] = None,
               position_ids: Optional[jax.Array] = None, return_hidden: bool = False
               ) -> Union[jax.Array, LlamaOutput]:
    """Next-token logits: position j predicts token j + 1 from tokens 0..j.

    Args:
      tokens: int [b, t] (ids outside [0, V) are not checked: jit cannot).
      attention_mask: optional [b, t], 1 for real tokens, 0 for padding (masked as keys).
      position_ids: optional int [b, t]. Default: 0..t-1, or with an attention_mask the
        running count of real tokens minus one (HF `generate`'s rule), so padding on either
        side leaves a row's real-token logits unchanged.
      return_hidden: also return the final hidden states.

    Returns:
      float32 logits [b, t, V], or LlamaOutput(logits, hidden) when return_hidden.
    """
    hidden_BTH = self.hidden_states(tokens, attention_mask, position_ids)
    logits = self._logits(hidden_BTH)
    return LlamaOutput(logits, hidden_BTH) if return_hidden else logits

  def prefill(self, tokens: jax.Array, attention_mask: Optional[jax.Array] = None, *,
              cache_len: int, logit_positions: Optional[jax.Array] = None) -> LogitsAndCache:
    """The forward pass of `__call__`, also returning the keys / values for `decode_step`.

    Args:
      tokens: int [b, t], right-padded prompts (or unpadded): `decode_step` writes slot p
        with rotary position p, which is the position a right-padded prompt's real tokens
        continue from (a left-padded prompt's would not be).
      attention_mask: optional [b, t] as in `__call__`; a masked position stays masked as a
        key for every later step.
      cache_len: L >= t: the cache holds positions 0..L-1.
      logit_positions: optional int [b]; then only row i's logits at position
        logit_positions[i] are computed (the sampler needs one per row, not [b, t, V]).

    Returns:
      LogitsAndCache(float32 logits [b, t, V] (or [b, V] with logit_positions), KVCache
      with L slots).

    Raises:
      ValueError: on bad tokens, attention_mask, cache_len or logit_positions.
    """
    tokens = jnp.asarray(tokens)
    check_prefill_args(tokens, cache_len, logit_positions)
    hidden_BTH, keys_values = self._forward(tokens, attention_mask, None)
    key_mask_BT = (jnp.ones(tokens.shape, bool) if attention_mask is None
                   else jnp.asarray(attention_mask) != 0)
    logits = self._logits(hidden_at(hidden_BTH, logit_positions))
    if logit_positions is not None:
      logits = logits[:, 0]
    return LogitsAndCache(logits, cache_from_prefill(keys_values, key_mask_BT, cache_len))

  def decode_step(self, token_B: jax.Array, position_B: jax.Array,
                  cache: KVCache) -> LogitsAndCache:
    """One token per row at that row's own position, attending to the cache.

    Row i's token is rotated to position position_B[i], its keys / values written into slot
    position_B[i], and it attends to the unmasked slots <= position_B[i].

    Args:
      token_B: int [b].
      position_B: int [b], each in [0, L) (not checked: jit cannot).
      cache: the KVCache from `prefill` or a previous `decode_step`.

    Returns:
      LogitsAndCache(float32 logits [b, V] predicting position_B + 1, the updated cache).

    Raises:
      ValueError: on bad shapes or dtypes, or a cache of another model.
    """
    token_B, position_B = jnp.asarray(token_B), jnp.asarray(position_B)
    check_decode_args(token_B, position_B, cache, self.config.num_hidden_layers)
    check_token_ids(token_B, self.config.vocab_size, 'token_B')
    rows = jnp.arange(token_B.shape[0])
    key_mask_BL = cache.key_mask.at[rows, position_B].set(True)
    allowed_B1L = decode_allowed(key_mask_BL, position_B)
    cos_B1D, sin_B1D = rotary_cos_sin(position_B[:, None],
                                      rope_inverse_frequencies(self.config))
    x_B1H = self.embed_tokens(token_B[:, None])
    keys, values = [], []
    for layer, k, v in zip(self.layers, cache.keys, cache.values):
      x_B1H, (k, v) = layer(x_B1H, allowed_B1L, cos_B1D, sin_B1D, (k, v), position_B)
      keys.append(k)
      values.append(v)
    logits_BV = self._logits(self.norm(x_B1H))[:, 0]
    return LogitsAndCache(logits_BV, KVCache(tuple(keys), tuple(values), key_mask_BL))

  def features(self, tokens: jax.Array,
               attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean-pooled last hidden state [b, H] over real tokens (METHOD.md `init_features`)."""
    return masked_mean(self.hidden_states(tokens, attention_mask),
                       attention_mask).astype(jnp.float32)
