"""Hugging Face Llama / Qwen2 checkpoints on local disk <-> `dv_jax.models.llama.Llama` params.

A checkpoint directory holds `config.json`, the weights as `model.safetensors` or as shards
listed by `model.safetensors.index.json`, and (for text) `tokenizer.json`. HF stores a Linear
layer's weight as [out, in]; flax's Dense kernel is [in, out], so every projection is
transposed on the way in and out. The name mapping:

  model.embed_tokens.weight                         embed_tokens/embedding         [V, H]
  model.layers.{i}.input_layernorm.weight           layers_{i}/input_layernorm/weight
  model.layers.{i}.self_attn.{q,k,v,o}_proj.weight  layers_{i}/self_attn/{.}_proj/kernel (T)
  model.layers.{i}.self_attn.{q,k,v,o}_proj.bias    layers_{i}/self_attn/{.}_proj/bias
  model.layers.{i}.post_attention_layernorm.weight  layers_{i}/post_attention_layernorm/weight
  model.layers.{i}.mlp.{gate,up,down}_proj.weight   layers_{i}/mlp/{.}_proj/kernel (T)
  model.norm.weight                                 norm/weight
  lm_head.weight                                    lm_head/kernel (T), absent when tied

`safetensors` and `tokenizers` are imported only inside the functions that need them.
`save_hf_checkpoint` writes files although dv_jax is otherwise I/O-free: it is the inverse
of the loader (tests write tiny checkpoints with it) and lives beside it on purpose.
"""

import json
from pathlib import Path
import re
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks
from dv_jax import results
from dv_jax.models.llama import Llama
from dv_jax.models.llama import LlamaConfig

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
TOKENIZER_FILE = 'tokenizer.json'

# The shard names `save_hf_checkpoint` (and transformers' save_pretrained) write.
_SHARD_NAME = re.compile(r'model-\d{5}-of-\d{5}\.safetensors')

# Tensors some checkpoints carry that hold no parameter (old Llama saves the rotary table).
_IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)


class HFCheckpoint(NamedTuple):
  """`load_hf_checkpoint`'s result: the config and the flax 'params' collection."""
  config: LlamaConfig
  params: Dict[str, Any]


def hf_tensor_names(config: LlamaConfig) -> Iterator[Tuple[str, Tuple[str, ...], bool]]:
  """Yields (HF tensor name, flax param path, transposed?) for every parameter."""
  yield 'model.embed_tokens.weight', ('embed_tokens', 'embedding'), False
  for i in range(config.num_hidden_layers):
    hf, fx = f'model.layers.{i}', f'layers_{i}'
    yield f'{hf}.input_layernorm.weight', (fx, 'input_layernorm', 'weight'), False
    for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
      yield f'{hf}.self_attn.{proj}.weight', (fx, 'self_attn', proj, 'kernel'), True
      if config.o_proj_bias if proj == 'o_proj' else config.qkv_bias:
        yield f'{hf}.self_attn.{proj}.bias', (fx, 'self_attn', proj, 'bias'), False
    yield f'{hf}.post_attention_layernorm.weight', (fx, 'post_attention_layernorm',
                                                    'weight'), False
    for proj in ('gate_proj', 'up_proj', 'down_proj'):
      yield f'{hf}.mlp.{proj}.weight', (fx, 'mlp', proj, 'kernel'), True
      if config.mlp_bias:
        yield f'{hf}.mlp.{proj}.bias', (fx, 'mlp', proj, 'bias'), False
  yield 'model.norm.weight', ('norm', 'weight'), False
  if not config.tie_word_embeddings:
    yield 'lm_head.weight', ('lm_head', 'kernel'), True


def param_shapes(config: LlamaConfig) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Flax param path -> shape of `Llama(config)`, from an abstract init (nothing allocated)."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  abstract = jax.eval_shape(Llama(config).init, jax.random.PRNGKey(0), tokens)
  flat = jax.tree_util.tree_flatten_with_path(abstract['params'])[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _set(tree: dict, path: Tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path: Tuple[str, ...]):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      raise ValueError(f"params lacks {'/'.join(path)}")
    tree = tree[key]
  return tree


def params_from_hf_state_dict(config: LlamaConfig, state: Dict[str, Any], *,
                              dtype: Any = jnp.float32) -> Dict[str, Any]:
  """HF-named tensors in HF layout -> the flax 'params' tree of `Llama(config)`.

  Args:
    config: the model config.
    state: HF tensor name -> array (Linear weights [out, in]); extra `inv_freq` buffers and,
      for tied embeddings, a duplicate `lm_head.weight` equal to the embedding are ignored.
    dtype: floating dtype of the returned parameters.

  Returns:
    nested dict of jax arrays, ready for `Llama(config).apply({'params': params}, tokens)`.

  Raises:
    ValueError: a tensor is missing, unexpected, of the wrong shape, or not finite (naming
      the file it came from when `state` is a loaded checkpoint's); a tied model's
      `lm_head.weight` that differs from its embedding; a dtype that is not floating.
  """
  dtype = _float_dtype(dtype)
  shapes = param_shapes(config)
  params: Dict[str, Any] = {}
  expected = set()
  for name, path, transposed in hf_tensor_names(config):
    expected.add(name)
    if name not in state:
      raise ValueError(f'checkpoint lacks tensor {name!r}')
    value = np.asarray(state[name])
    if transposed:
      value = value.T
    if path not in shapes:
      raise ValueError(f'internal: no parameter {"/".join(path)} in Llama({config})')
    if value.shape != shapes[path]:
      hf_shape = value.T.shape if transposed else value.shape
      want = shapes[path][::-1] if transposed else shapes[path]
      raise ValueError(f'tensor {name!r}{_source(state, name)} has shape {hf_shape}, the '
                       f'config needs {want}')
    value = value.astype(dtype)
    if not np.all(np.isfinite(value.astype(np.float32))):
      raise ValueError(f'tensor {name!r}{_source(state, name)} holds NaN or Inf (in {dtype})')
    _set(params, path, jnp.asarray(value))
  if config.tie_word_embeddings and 'lm_head.weight' in state:
    # Tied, the head is the embedding and this tensor goes unused; one that differs means
    # the config and the weights disagree about tying, and the logits would silently come
    # from the embedding rather than the head the weights were trained with.
    head = np.asarray(state['lm_head.weight'])
    embedding = np.asarray(state['model.embed_tokens.weight'])
    if head.shape != embedding.shape or not np.array_equal(head, embedding):
      raise ValueError(f"config.json sets tie_word_embeddings, but the checkpoint's "
                       f"'lm_head.weight'{_source(state, 'lm_head.weight')} differs from "
                       f"'model.embed_tokens.weight': set tie_word_embeddings to false to "
                       f'use the separate head')
  missing_paths = set(shapes) - {path for _, path, _ in hf_tensor_names(config)}
  if missing_paths:
    raise ValueError(f'internal: name table misses parameters {sorted(missing_paths)}')
  unexpected = sorted(
      name for name in state if name not in expected
      and not name.endswith(_IGNORED_SUFFIXES)
      and not (config.tie_word_embeddings and name == 'lm_head.weight'))
  if unexpected:
    raise ValueError(f'checkpoint has tensors this architecture does not use: {unexpected}')
  return params


def _float_dtype(dtype: Any) -> np.dtype:
  # An integer dtype would truncate every weight to an integer without an error.
  try:
    out = jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f'dtype must be a floating dtype, got {dtype!r}') from e
  if not jnp.issubdtype(out, jnp.floating):
    raise ValueError(f'dtype must be a floating dtype, got {out}')
  return out


def _source(state: Any, name: str) -> str:
  """' in file X' for a tensor of a loaded checkpoint (a `_LazyState`), else ''."""
  return f' in file {state.file_of(name).name!r}' if isinstance(state, _LazyState) else ''


def params_to_hf_state_dict(config: LlamaConfig, params: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """The inverse of `params_from_hf_state_dict`: HF name -> NumPy array in HF layout."""
  state = {}
  for name, path, transposed in hf_tensor_names(config):
    value = np.asarray(_get(params, path))
    state[name] = np.ascontiguousarray(value.T if transposed else value)
  return state


def _read_config(directory: Path) -> LlamaConfig:
  path = directory / CONFIG_FILE
  if not path.is_file():
    # `huggingface-cli download` and from_pretrained keep a model under
    # models--org--name/snapshots/<revision>/ in the cache, not at the folder's top.
    snapshots = sorted(p for p in (directory / 'snapshots').glob('*') if p.is_dir())
    cache = (f'; it is a Hugging Face cache folder: pass a snapshot inside it, such as '
             f'{str(snapshots[-1])!r}' if snapshots else '')
    raise ValueError(f'checkpoint directory {str(directory)!r} has no {CONFIG_FILE}{cache}')
  try:
    # JSON is UTF-8 (RFC 8259), whatever the locale: read_text() without an encoding read a
    # config.json holding any non-ASCII character (a `_name_or_path` under /home/josé) as
    # the locale's (ASCII under LANG=C: UnicodeDecodeError; cp1252: mojibake).
    hf = json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e
  return LlamaConfig.from_hf_dict(hf)


def _weight_files(directory: Path) -> Tuple[List[Path], Optional[Dict[str, str]]]:
  """The weight files to read, and the index's weight_map (None without an index)."""
  index = directory / INDEX_FILE
  if index.is_file():
    try:
      parsed = json.loads(index.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
      raise ValueError(f'{index} is not valid JSON: {e}') from e
    weight_map = parsed.get('weight_map') if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f'{index} has no weight_map')
    files = [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / WEIGHTS_FILE
    if single.is_file() and single not in files:
      # One is left from an earlier save. transformers reads model.safetensors and ignores
      # the index; reading the index ignored model.safetensors: either may be the stale one.
      raise ValueError(f'checkpoint directory {str(directory)!r} holds both {WEIGHTS_FILE} '
                       f'and {INDEX_FILE}, whose shards do not include it: one is left from '
                       'an earlier save; remove the stale one')
  else:
    weight_map = None
    files = sorted(directory.glob('*.safetensors'))
    if not files:
      raise ValueError(f'checkpoint directory {str(directory)!r} has no *.safetensors file '
                       f'and no {INDEX_FILE}')
  for path in files:
    if not path.is_file():
      raise ValueError(f'weight file {path.name!r} listed in {INDEX_FILE} is missing from '
                       f'{str(directory)!r}')
  return files, weight_map


def _read_safetensors(path: Path, read):
  """`read(handle)` on an open safetensors file; its errors re-raised naming the file.

  safetensors' own errors (a truncated or corrupt file: 'incomplete metadata, file not
  fully covered') do not say which shard of a multi-file checkpoint is at fault.
  """
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(str(path), framework='np') as f:
      return read(f)
  except SafetensorError as e:
    raise ValueError(f'weight file {str(path)!r} is not a readable safetensors file '
                     f'(truncated or corrupt?): {e}') from e


class _LazyState(dict):
  """HF name -> file, reading a tensor only when it is looked up (one at a time in memory)."""

  def __init__(self, locations: Dict[str, Path]):
    super().__init__(locations)

  def file_of(self, name: str) -> Path:
    return super().__getitem__(name)

  def __getitem__(self, name):
    return _read_safetensors(self.file_of(name), lambda f: f.get_tensor(name))


def _tensor_locations(directory: Path) -> Dict[str, Path]:
  """HF tensor name -> the weight file holding it.

  Raises:
    ValueError: a tensor is stored in two files (a stale copy beside the real one: which one
      would be read is an accident of file-name order), or the index lists a tensor in a
      file that does not hold it.
  """
  files, weight_map = _weight_files(directory)
  locations: Dict[str, Path] = {}
  for path in files:
    for name in _read_safetensors(path, lambda f: list(f.keys())):
      if name in locations:
        raise ValueError(f'tensor {name!r} is stored in both {locations[name].name!r} and '
                         f'{path.name!r} in {str(directory)!r}; remove the stale file')
      locations[name] = path
  for name, file_name in (weight_map or {}).items():
    if name not in locations or locations[name].name != file_name:
      found = (f'it is in {locations[name].name!r}' if name in locations
               else 'no file the index lists holds it')
      raise ValueError(f'{INDEX_FILE} lists tensor {name!r} in {file_name!r}, but {found}')
  return locations


def load_hf_checkpoint(directory: Any, *, dtype: Any = jnp.float32) -> HFCheckpoint:
  """Loads a HF Llama / Qwen2 checkpoint directory into (LlamaConfig, flax params).

  Args:
    directory: holds config.json and model.safetensors, or shards with
      model.safetensors.index.json (any *.safetensors files when there is no index).
    dtype: dtype of the returned parameters (float32 default; bfloat16 halves the memory).

  Returns:
    HFCheckpoint(config, params); run it as `Llama(config).apply({'params': params}, tokens)`.

  Raises:
    ValueError: naming the missing, malformed (invalid index JSON) or unreadable
      (truncated safetensors) file, the missing tensor, a shape mismatch (and its file), a
      tensor stored in two files or not where the index says, a model.safetensors beside an
      index that does not list it, an unsupported architecture, or a dtype that is not
      floating.
  """
  dtype = _float_dtype(dtype)
  directory = Path(directory)
  if not directory.is_dir():
    raise ValueError(f'directory {str(directory)!r} does not exist')
  config = _read_config(directory)
  params = params_from_hf_state_dict(config, _LazyState(_tensor_locations(directory)),
                                     dtype=dtype)
  return HFCheckpoint(config, params)


def _atomic_save_file(tensors: Dict[str, np.ndarray], path: Path) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  with results.atomic_path(path) as temporary:
    # 'format': 'pt' is the metadata HF transformers expects of a safetensors checkpoint.
    save_file(tensors, str(temporary), metadata={'format': 'pt'})


def _atomic_write_json(obj: Any, path: Path) -> None:
  results.atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def save_hf_checkpoint(directory: Any, config: LlamaConfig, params: Dict[str, Any], *,
                       max_shard_bytes: Optional[int] = None) -> List[Path]:
  """Writes params as a HF checkpoint directory (config.json + safetensors), the loader's inverse.

  Args:
    directory: created if absent; existing files of the same names are replaced, and the
      weight files of an earlier save (model.safetensors, model-0000k-of-0000N.safetensors
      shards, model.safetensors.index.json) that this one does not write are removed.
    config: the model config (written as config.json).
    params: the flax 'params' tree of `Llama(config)`.
    max_shard_bytes: when set and the weights are larger, split them into
      model-0000k-of-0000N.safetensors shards plus model.safetensors.index.json.

  Returns:
    the paths written.

  Raises:
    ValueError: params do not match the config (a missing leaf, a wrong shape, or a leaf
      the config has no tensor for), or max_shard_bytes < 1.
  """
  if max_shard_bytes is not None:
    max_shard_bytes = checks.check_int(max_shard_bytes, 'max_shard_bytes')
  state = params_to_hf_state_dict(config, params)
  shapes = param_shapes(config)
  # Leaves the config has no tensor for (the params of a deeper model, an untied head under
  # a tied config) would be dropped from the files without a word.
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  extra = sorted('/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in flat
                 if tuple(getattr(k, 'key', k) for k in path) not in shapes)
  if extra:
    raise ValueError(f'params has leaves that Llama(config) lacks, which would not be saved: '
                     f'{extra[:10]}')
  for name, path, transposed in hf_tensor_names(config):
    want = shapes[path][::-1] if transposed else shapes[path]
    if state[name].shape != want:
      raise ValueError(f"params {'/'.join(path)} has the wrong shape for the config")
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  hf_config = config.to_hf_dict()
  hf_config['torch_dtype'] = str(state['model.embed_tokens.weight'].dtype)
  written = []
  total = sum(v.nbytes for v in state.values())
  if max_shard_bytes is None or total <= max_shard_bytes:
    _atomic_save_file(state, directory / WEIGHTS_FILE)
    written.append(directory / WEIGHTS_FILE)
  else:
    shards: List[Dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in state.items():
      if shards[-1] and size + value.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][name] = value
      size += value.nbytes
    weight_map = {}
    for k, shard in enumerate(shards):
      file_name = f'model-{k + 1:05d}-of-{len(shards):05d}.safetensors'
      _atomic_save_file(shard, directory / file_name)
      written.append(directory / file_name)
      weight_map.update({name: file_name for name in shard})
    _atomic_write_json({'metadata': {'total_size': total}, 'weight_map': weight_map},
                       directory / INDEX_FILE)
    written.append(directory / INDEX_FILE)
  _remove_stale_weights(directory, written)
  _atomic_write_json(hf_config, directory / CONFIG_FILE)
  written.append(directory / CONFIG_FILE)
  return written


def _remove_stale_weights(directory: Path, written: List[Path]) -> None:
  """Removes weight files of an earlier save that this one did not replace.

  A single-file save over a sharded one left the old index, which the loader reads, so the
  old weights came back; a sharded save over a single file left model.safetensors, which
  transformers reads. Only names a save writes are removed (after the new files are in
  place), as transformers' save_pretrained removes its own stale shards.
  """
  keep = {path.name for path in written}
  for path in directory.iterdir():
    ours = path.name in (WEIGHTS_FILE, INDEX_FILE) or _SHARD_NAME.fullmatch(path.name)
    if ours and path.name not in keep and path.is_file():
      path.unlink()


def load_tokenizer(directory: Any):
  """The `tokenizers.Tokenizer` of a checkpoint directory (its tokenizer.json).

  Raises:
    ValueError: the directory has no tokenizer.json, or the file does not parse.
  """
  path = Path(directory) / TOKENIZER_FILE
  if not path.is_file():
    raise ValueError(f'{str(directory)!r} has no {TOKENIZER_FILE}')
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  try:
    return Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises a bare Exception on malformed JSON.
    raise ValueError(f'{path} is not a valid tokenizers file: {e}') from e


TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'


def named_special_tokens(directory: Any) -> Dict[str, str]:
  """The `bos_token` / `eos_token` a checkpoint's tokenizer_config.json names, if any.

  `transformers` reads them from there (a string, or an `{"content": ...}` dict in older
  files); `tokenizers` alone never does. A null or absent entry is left out (Qwen2 names
  no bos_token), as is everything when the file is missing or is not a JSON object.
  """
  path = Path(directory) / TOKENIZER_CONFIG_FILE
  try:
    spec = json.loads(path.read_text(encoding='utf-8'))
  except (OSError, ValueError):  # absent or unreadable: it is optional
    return {}
  if not isinstance(spec, dict):
    return {}
  named = {}
  for field in ('bos_token', 'eos_token'):
    value = spec.get(field)
    if isinstance(value, dict):
      value = value.get('content')
    if isinstance(value, str) and value:
      named[field] = value
  return named
