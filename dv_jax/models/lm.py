"""The language-model pieces of METHOD.md's bound: NTK scalar, residual and layer filter.

For an LM the NTK is taken of g(x; theta) = mean log-probability of the response tokens
(METHOD.md "Notation"), and the residual / loss is the mean response-token NLL (section 2,
terms 1 and 3). An example is a token sequence x [t] (prompt then response, right-padded)
with a response mask y [t]: y[j] = 1 when token j belongs to the response. Position j - 1's
logits predict token j, so

  g(x; theta) = sum_{j >= 1} y[j] log softmax(f(x; theta)[j - 1])[x[j]] / sum_{j >= 1} y[j]

(a mask on token 0 is ignored: nothing predicts it). Right padding needs no attention mask:
the model is causal, so pads after the response never influence the logits that g reads.

Shape legend: n examples, t sequence length, V vocab.
"""

import functools
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks
from dv_jax import ntk

ApplyFn = Callable[[Any, jax.Array], jax.Array]

# Per model family: the name flax gives the transformer blocks, the final norm and the heads
# (see the parameter paths in llama.py and transformer.py).
_LAYER_NAMES = {
    'llama': ('layers_', 'norm', ('lm_head',)),
    'transformer_lm': ('layers_', 'final_norm', ('lm_head', 'classifier')),
}


def response_token_logprobs(logits_BTV: jax.Array, tokens_BT: jax.Array) -> jax.Array:
  """log p(token j | tokens < j) for j = 1..t-1: [b, t, V], [b, t] -> float32 [b, t - 1].

  The picked logit minus the log-sum-exp, not a gather from `log_softmax`: that would be
  one more `[b, t, V]` array (V = 152k for Qwen), and per-example gradients of an LLM hold
  several. XLA's temp for a Qwen2.5-0.5B gradient block (benchmarks/bench_lm_ntk_memory.py,
  last2+proj) drops from 4,399 to 3,250 MB.
  """
  logits_BTV = logits_BTV[:, :-1].astype(jnp.float32)
  picked_BT = jnp.take_along_axis(logits_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  return picked_BT - jax.nn.logsumexp(logits_BTV, axis=-1)


def mean_response_logprob(logits_BTV: jax.Array, tokens_BT: jax.Array,
                          mask_BT: jax.Array) -> jax.Array:
  """`g` per row: the mean of `log p(token_j | tokens_<j)` over response positions `j >= 1`.

  Args:
    logits_BTV: `[b, t, V]` next-token logits (position `j` predicts token `j + 1`).
    tokens_BT: int `[b, t]`.
    mask_BT: `[b, t]` response mask.

  Returns:
    float32 `[b]` (0 for a row without response tokens, e.g. padding).
  """
  weights = mask_BT[:, 1:].astype(jnp.float32)
  total = jnp.sum(response_token_logprobs(logits_BTV, tokens_BT) * weights, axis=1)
  # Guard 0/0 for padding rows of a block; validated inputs always have a response token.
  return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class _ResponseLogprob(ntk.ApplyFnWrapper):
  """scalar_fn(params, tokens_i, response_mask_i): see `response_logprob_fn`."""

  def __call__(self, params, tokens_T, response_mask_T):
    tokens_1T = jnp.asarray(tokens_T)[None]
    logits_1TV = self.apply_fn(params, tokens_1T)
    mask_1T = jnp.asarray(response_mask_T)[None]
    return mean_response_logprob(logits_1TV, tokens_1T, mask_1T)[0]


def response_logprob_fn(apply_fn: ApplyFn) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """Builds METHOD.md's LM NTK scalar g for `dv_jax.ntk.per_example_grads`.

  Args:
    apply_fn: batched `apply_fn(params, tokens[b, t]) -> logits[b, t, V]` of a causal LM,
      e.g. `lambda p, x: Llama(cfg).apply({'params': p}, x)`.

  Returns:
    scalar_fn(params, tokens_i [t], response_mask_i [t]) -> float32 scalar, the mean
    log-probability of example i's response tokens (formula in the module docstring). Use
    it with x = tokens [n, t] and y = response_mask [n, t]. It is traced inside vmap/jit, so
    it does not validate; `validate_lm_batch` (which `response_nll` calls) does, on the
    same inputs. Calls with the same apply_fn return equal (and equally hashed) objects.
  """
  return _ResponseLogprob(apply_fn)


def validate_lm_batch(tokens: Any, response_mask: Any) -> tuple:
  """Checks and converts an LM batch; returns (int32 tokens [n, t], float32 mask [n, t]).

  Raises:
    ValueError: tokens not a non-empty integer [n, t] with t >= 2; response_mask of another
      shape, not 0/1, or a row without a response token at a position >= 1.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
    raise ValueError(f'tokens must be [n, t] with n >= 1 and t >= 2, got shape {tokens.shape}')
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f'tokens must be integer token ids, got dtype {tokens.dtype}')
  if np.any(tokens < 0):
    raise ValueError('tokens must be non-negative token ids')
  mask = np.asarray(response_mask)
  if mask.shape != tokens.shape:
    raise ValueError(f'response_mask must have the shape of tokens {tokens.shape}, got '
                     f'{mask.shape}')
  if not np.all((mask == 0) | (mask == 1)):
    raise ValueError('response_mask must hold only 0 and 1')
  empty = np.flatnonzero(mask[:, 1:].sum(axis=1) == 0)
  if empty.size:
    raise ValueError(f'response_mask has no response token (at a position >= 1) in rows '
                     f'{empty[:10].tolist()}')
  return tokens.astype(np.int32), mask.astype(np.float32)


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def _nll_block(apply_fn, params, tokens_BT, mask_BT):
  return -mean_response_logprob(apply_fn(params, tokens_BT), tokens_BT, mask_BT)


def response_nll(apply_fn: ApplyFn, params: Any, tokens: Any, response_mask: Any, *,
                 block_size: int = 16) -> jax.Array:
  """Per-example mean response-token NLL, -g(x_i; theta): the LM loss and NTK residual.

  Runs in jitted blocks of `block_size` examples; the last block is padded (and its padding
  dropped), so one compile serves every n.

  Args:
    apply_fn: batched `apply_fn(params, tokens[b, t]) -> logits[b, t, V]`.
    params: the parameters apply_fn takes.
    tokens: int [n, t], right-padded.
    response_mask: [n, t] of 0/1, 1 on response tokens; each row needs one at a position
      >= 1.
    block_size: examples per forward pass.

  Returns:
    float32 [n], mean NLL (nats per response token) of each example.

  Raises:
    ValueError: see `validate_lm_batch`; block_size < 1.
  """
  block_size = checks.check_int(block_size, 'block_size')
  tokens, mask = validate_lm_batch(tokens, response_mask)
  # An id past the vocabulary would be gathered clamped (a wrong log-prob, or NaN).
  vocab_size = int(jax.eval_shape(apply_fn, params, jnp.asarray(tokens[:1])).shape[-1])
  if tokens.max() >= vocab_size:
    raise ValueError(f'tokens hold ids up to {tokens.max()}, beyond the model\'s vocabulary '
                     f'of {vocab_size}')
  n = tokens.shape[0]
  pad = -n % block_size
  tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)])
  mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), np.float32)])
  blocks = [_nll_block(apply_fn, params, jnp.asarray(tokens[s:s + block_size]),
                       jnp.asarray(mask[s:s + block_size]))
            for s in range(0, n + pad, block_size)]
  return jnp.concatenate(blocks)[:n]


def last_layers_filter(num_layers: int, *, total_layers: int, model: str = 'llama',
                       include_head: bool = True) -> str:
  """A `param_filter` regex selecting the last blocks, the final norm and the output head.

  METHOD.md lets the NTK use a subset of the parameters; the last layers are the usual
  choice for a 0.5B-1.5B model. The regex is matched with `re.search` against '/'-joined
  parameter paths ('params/layers_11/self_attn/q_proj/kernel', 'layers_11/mlp/...').

  Args:
    num_layers: how many of the last transformer blocks to select (0 selects none).
    total_layers: the model's number of blocks (Llama: config.num_hidden_layers).
    model: 'llama' (Llama / Qwen2) or 'transformer_lm' (TransformerLM and its
      SequenceClassifier).
    include_head: also select the untied output head (`lm_head`, or the classifier). With
      tied embeddings the head is the embedding table `embed_tokens`, which this does not
      select (it is V x H, the largest leaf); add '|(^|/)embed_tokens(/|$)' to select it.

  Returns:
    the regex string.

  Raises:
    ValueError: an unknown model, or num_layers outside [0, total_layers].
  """
  if model not in _LAYER_NAMES:
    raise ValueError(f'model must be one of {sorted(_LAYER_NAMES)}, got {model!r}')
  total_layers = checks.check_int(total_layers, 'total_layers')
  num_layers = checks.check_int(num_layers, 'num_layers', minimum=0, maximum=total_layers)
  layer_prefix, norm_name, head_names = _LAYER_NAMES[model]
  names = [re.escape(norm_name)]
  layers = [str(i) for i in range(total_layers - num_layers, total_layers)]
  if layers:
    names.append(re.escape(layer_prefix) + '(' + '|'.join(layers) + ')')
  if include_head:
    names.extend(re.escape(h) for h in head_names)
  # Anchored on '/' so 'norm' misses 'input_layernorm' and 'layers_1' misses 'layers_11'.
  return '(^|/)(' + '|'.join(names) + ')(/|$)'


LAST_LAYERS_SPEC = 'last_layers:'
_LAYER_COMPONENT = re.compile(r'^layers_(\d+)$')


def resolve_param_filter(param_filter: str, params: Any) -> Optional[str]:
  """A config's `param_filter` string, as `dv_jax.ntk` takes it, for the model of `params`.

  A config is written before its checkpoint is loaded, so it cannot spell the regex of "the
  last two blocks" of a model whose depth it does not know (24 blocks for Qwen2.5-0.5B, 28
  for 1.5B). It says `'last_layers:N'` instead, and this reads the depth and the model
  family off the parameter paths.

  Args:
    param_filter: '' (all parameters), `'last_layers:N'` (the last N blocks, the final norm
      and an untied output head: `last_layers_filter`), or any other string, a regex
      returned unchanged.
    params: the parameter pytree the filter will be applied to.

  Returns:
    None (all parameters) or a regex string.

  Raises:
    ValueError: a malformed 'last_layers:' spec, params without numbered `layers_{i}`
      blocks or a final norm of a known model family, an invalid regex, or a filter that
      selects no parameter.
  """
  if not isinstance(param_filter, str):
    raise ValueError(f'param_filter must be a string, got {type(param_filter).__name__}')
  if not param_filter:
    return None
  if not param_filter.startswith(LAST_LAYERS_SPEC):
    ntk.flat_param_count(params, param_filter)  # a bad regex fails here, before long work
    return param_filter
  count = param_filter[len(LAST_LAYERS_SPEC):]
  if not (count.isascii() and count.isdigit()):  # '²' and '٣' are digits to str.isdigit
    raise ValueError(f"param_filter {param_filter!r}: expected 'last_layers:N' with N an int "
                     '>= 0')
  components = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    components.update(ntk.path_str(path).split('/'))
  layers = sorted(int(m.group(1)) for c in components if (m := _LAYER_COMPONENT.match(c)))
  families = [name for name, (_, norm, _) in _LAYER_NAMES.items() if norm in components]
  if not layers or len(families) != 1:
    raise ValueError(f'param_filter {param_filter!r} needs the parameters of a Llama / Qwen2 or '
                     'TransformerLM (numbered layers_{i} blocks and a final norm); these have '
                     f'the path components {sorted(components)[:12]}')
  if layers != list(range(len(layers))):
    raise ValueError(f'param_filter {param_filter!r}: the blocks are not numbered 0..L-1: '
                     f'{layers}')
  if int(count) > len(layers):  # last_layers_filter would name its own num_layers argument
    raise ValueError(f'param_filter {param_filter!r}: the model has {len(layers)} blocks, so '
                     f'N must be in [0, {len(layers)}]')
  regex = last_layers_filter(int(count), total_layers=len(layers), model=families[0])
  ntk.flat_param_count(params, regex)  # raises, naming the paths, if it selects nothing
  return regex
