"""Long-tail samplers shared by the CIFAR-100, facts and arithmetic tasks (METHOD.md section 1).

Real data draws items (classes, facts, operand values) with Zipf frequencies
`p_r ∝ r^-beta` over ranks `r = 1..N`; synthetic data draws them from a truncation `p'` of
`p` (`hard` at rank `k`, `top_p`, `temperature`, `finite_sample`), computed by
`dv_jax.scaling.synthetic_distribution` so the data and the theory use one definition.

Sampling is inverse-CDF in float64 NumPy, seeded from an explicit JAX key. Why not
`jax.random.choice`: without x64 it accumulates the CDF and draws uniforms in float32, whose
resolution near 1 is 2^-24 ≈ 6e-8, so items with `p_r` below that are never drawn. With
`beta = 2`, `N = 10^6` that silently removes the tail beyond rank ~4500, which is the very
part of the distribution the three-phase experiment is about.

Shape legend: `N` items (or classes `C`), `n` samples.
"""

from typing import NamedTuple, Optional, Sequence

import jax
import numpy as np

from dv_jax import checks
from dv_jax import scaling
from dv_jax.data.contributors import Split

TRUNCATION_MODES = ('hard', 'top_p', 'temperature', 'finite_sample')


class WeightedSplit(NamedTuple):
  """A test split whose weighted mean is an expectation under the real distribution.

  Attributes:
    split: the examples (`Split`; `is_synthetic` all False).
    weight: float64 [n], non-negative, sums to 1. For a metric `m_j` per example,
      `sum_j weight_j m_j` is `E_{z ~ p}[m(z)]` exactly (every item appears once, weighted by
      its real frequency), so the test error has no sampling noise.
  """
  split: Split
  weight: np.ndarray


def rng_from_key(key: jax.Array) -> np.random.Generator:
  """A NumPy generator seeded deterministically from a JAX PRNG key.

  Args:
    key: a `jax.random.PRNGKey` (raw uint32 [2]) or a typed key.

  Returns:
    `np.random.Generator` whose stream is a pure function of `key`.

  Raises:
    ValueError: `key` not one PRNG key (an int seed, None, a batch of keys).
  """
  key = checks.check_key(key)
  bits = jax.random.bits(key, (4,), dtype=np.uint32)
  return np.random.default_rng(np.asarray(bits, dtype=np.uint64))


def _check_probs(p, name: str) -> np.ndarray:
  p = np.asarray(p, dtype=np.float64)
  if p.ndim != 1 or p.size == 0:
    raise ValueError(f'{name} must be a non-empty 1-D array, got shape {p.shape}')
  if not np.all(np.isfinite(p)):
    raise ValueError(f'{name} contains NaN or Inf')
  if np.any(p < 0):
    raise ValueError(f'{name} has negative entries')
  total = p.sum()
  if total <= 0:
    raise ValueError(f'{name} sums to {total}; it needs positive mass')
  return p / total


def zipf_probs(num_items: int, *, beta: float) -> np.ndarray:
  """Real item frequencies `p_r ∝ r^-beta`, `r = 1..N`, in float64 (`scaling.zipf`).

  Args:
    num_items: `N`.
    beta: Zipf exponent, > 1 (the three-phase analysis needs a normalisable tail).

  Returns:
    float64 [N], sums to 1, non-increasing.

  Raises:
    ValueError: if `num_items < 1` or `beta <= 1`.
  """
  num_items = checks.check_int(num_items, 'num_items')
  return np.asarray(scaling.zipf(num_items, beta), dtype=np.float64)


# The argument each truncation mode reads; the others are ignored, so a config may keep
# e.g. k=70 beside mode='top_p'.
_MODE_ARGUMENT = {'hard': 'k', 'top_p': 'top_p', 'temperature': 'temperature',
                  'finite_sample': 'num_samples'}


def truncated_probs(p, *, mode: str = 'hard', k: Optional[int] = None,
                    top_p: Optional[float] = None, temperature: Optional[float] = None,
                    num_samples: Optional[int] = None,
                    key: Optional[jax.Array] = None) -> np.ndarray:
  """The synthetic frequencies `p'`: a truncation of `p`, renormalised (METHOD.md section 1).

  Delegates to `dv_jax.scaling.synthetic_distribution` with only the chosen mode's
  parameter (`hard` keeps ranks `<= k`, `top_p` the smallest head of mass `top_p`,
  `temperature` `p^(1/tau)`, `finite_sample` the empirical law of `num_samples` draws from
  `key`); the parameters of the other modes are ignored.

  Args:
    p: [N] real frequencies, in rank order, summing to 1.
    mode: one of `TRUNCATION_MODES`.
    k, top_p, temperature, num_samples: the parameter of the chosen mode.
    key: JAX PRNG key, used by `finite_sample` only.

  Returns:
    float64 [N], sums to 1.

  Raises:
    ValueError: unknown mode, the mode's parameter missing or invalid, or `p` not a
      probability vector (NaN, negative entries, a sum other than 1).
  """
  # p is not renormalised here: scaling.synthetic_distribution refuses a p that does not
  # sum to 1, and every caller passes zipf_probs; 3 * p used to pass as p.
  if mode not in _MODE_ARGUMENT:
    raise ValueError(f'mode must be one of {TRUNCATION_MODES}, got {mode!r}')
  given = {'k': k, 'top_p': top_p, 'temperature': temperature, 'num_samples': num_samples}
  name = _MODE_ARGUMENT[mode]
  kwargs = {name: given[name]}
  if mode == 'finite_sample':
    if key is None:
      raise ValueError('key is required for mode="finite_sample"')
    kwargs['key'] = key
  q = scaling.synthetic_distribution(p, mode=mode, **kwargs)
  return _check_probs(q, f'synthetic_distribution(mode={mode!r})')


def sample_items(p, *, num_samples: int, key: jax.Array) -> np.ndarray:
  """Draws item ranks with replacement, `P(item r) = p_r`.

  Args:
    p: [N] frequencies (normalised here).
    num_samples: `n` (0 allowed: an empty draw).
    key: JAX PRNG key.

  Returns:
    int64 [n] item indices in `[0, N)` (index `r - 1` for rank `r`).
  """
  p = _check_probs(p, 'p')
  num_samples = checks.check_int(num_samples, 'num_samples', minimum=0)
  cdf = np.cumsum(p)
  # From the last item with positive mass on, the CDF is 1. Setting only cdf[-1] left
  # trailing zero-mass items (a `hard` truncation's whole tail) the round-off gap
  # [cumsum(p)[k-1], 1) of a few 2^-53, so the last of them could be drawn.
  cdf[np.flatnonzero(p)[-1]:] = 1.0
  u = rng_from_key(key).random(num_samples)
  # side='right': u lands in item r iff cdf[r-1] <= u < cdf[r]; items with p_r = 0 have an
  # empty interval and are never drawn.
  return np.minimum(np.searchsorted(cdf, u, side='right'), p.size - 1).astype(np.int64)


def class_probabilities(num_classes: int, *, beta: float,
                        class_order: Optional[Sequence[int]] = None) -> np.ndarray:
  """Per-label frequencies of a Zipf(beta) class distribution.

  Args:
    num_classes: `C`.
    beta: Zipf exponent.
    class_order: [C] permutation of the labels; `class_order[r]` is the label of rank
      `r + 1` (the most frequent first). Default: label `c` has rank `c + 1`.

  Returns:
    float64 [C], indexed by label.
  """
  return ranks_to_labels(zipf_probs(num_classes, beta=beta), class_order)


def ranks_to_labels(p_ranked, class_order: Optional[Sequence[int]] = None) -> np.ndarray:
  """Reindexes rank-ordered frequencies `[C]` by label through `class_order`."""
  p_ranked = np.asarray(p_ranked, dtype=np.float64)
  if class_order is None:
    return p_ranked
  order = checks.check_indices(class_order, 'class_order')  # floats: a bare IndexError below
  if order.shape != p_ranked.shape or not np.array_equal(np.sort(order),
                                                        np.arange(p_ranked.size)):
    raise ValueError(f'class_order must be a permutation of range({p_ranked.size}), '
                     f'got shape {order.shape}')
  p_label = np.empty_like(p_ranked)
  p_label[order] = p_ranked
  return p_label


def sample_by_class(labels, class_probs, *, num_samples: int, key: jax.Array) -> np.ndarray:
  """Indices into `labels`: a class drawn from `class_probs`, then an example of it uniformly.

  Both draws are with replacement, so an example can appear several times.

  Args:
    labels: int [n_pool] class labels in `[0, C)`.
    class_probs: [C] per-label frequencies.
    num_samples: number of indices to draw.
    key: JAX PRNG key.

  Returns:
    int64 [num_samples] indices into `labels`.

  Raises:
    ValueError: if a class with positive probability has no example in `labels`, or `key`
      is not one PRNG key.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be a non-empty 1-D integer array, got shape {labels.shape} '
                     f'and dtype {labels.dtype}')
  class_probs = _check_probs(class_probs, 'class_probs')
  num_classes = class_probs.size
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}), got range '
                     f'[{labels.min()}, {labels.max()}]')
  counts = np.bincount(labels, minlength=num_classes)
  empty = np.flatnonzero((counts == 0) & (class_probs > 0))
  if empty.size:
    raise ValueError(f'classes {empty[:10].tolist()} have positive probability but no example '
                     'in labels')
  num_samples = checks.check_int(num_samples, 'num_samples', minimum=0)
  class_key, example_key = jax.random.split(checks.check_key(key))
  classes = sample_items(class_probs, num_samples=num_samples, key=class_key)
  by_class = np.argsort(labels, kind='stable')
  starts = np.cumsum(counts) - counts
  offsets = rng_from_key(example_key).integers(0, np.maximum(counts[classes], 1))
  return by_class[starts[classes] + offsets].astype(np.int64)


def longtail_indices(labels, *, beta: float, num_samples: int, key: jax.Array,
                     class_order: Optional[Sequence[int]] = None,
                     num_classes: Optional[int] = None) -> np.ndarray:
  """Indices of a long-tail resample: class of rank `r` has frequency `∝ r^-beta`.

  Args:
    labels: int [n_pool] labels of a (roughly balanced) pool, e.g. CIFAR-100 train.
    beta: Zipf exponent.
    num_samples: number of indices (drawn with replacement).
    key: JAX PRNG key.
    class_order: [C] labels in rank order (most frequent first); default `0..C-1`.
    num_classes: `C`. Default `len(class_order)`, else `max(labels) + 1`, which cannot
      tell a pool that lacks the last classes from a smaller label set (the Zipf law would
      be silently renormalised over fewer classes), so pass it when it is known.

  Returns:
    int64 [num_samples] indices into `labels`.

  Raises:
    ValueError: if a class with positive probability has no example in `labels`, or
      `num_classes` disagrees with `class_order`.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f'labels must be a non-empty 1-D array, got shape {labels.shape}')
  if num_classes is not None:
    num_classes = checks.check_int(num_classes, 'num_classes')
    if class_order is not None and len(class_order) != num_classes:
      raise ValueError(f'class_order has {len(class_order)} labels but num_classes is '
                       f'{num_classes}')
  elif class_order is not None:
    num_classes = len(class_order)
  else:
    num_classes = int(labels.max()) + 1
  probs = class_probabilities(num_classes, beta=beta, class_order=class_order)
  return sample_by_class(labels, probs, num_samples=num_samples, key=key)


def split_counts(num_examples: int, *, pi: float) -> tuple:
  """`(n_real, n_synthetic)` with `n_real = round(pi * n)` (the paper's `pi = |S1| / n`)."""
  num_examples = checks.check_int(num_examples, 'num_examples', minimum=0)
  # A None or string pi (an unset config field) used to escape as np.isfinite's TypeError,
  # naming no argument; '0.5' * n would repeat the string.
  fraction = checks.unit_fraction(pi)
  if fraction is None:
    raise ValueError(f'pi must lie in [0, 1], got {pi!r}')
  num_real = int(round(fraction * num_examples))
  return num_real, num_examples - num_real


def stratified_partition(labels, *, fractions: Sequence[float], key: jax.Array) -> list:
  """Splits example indices into parts with the same class proportions, seeded.

  Each class's examples are shuffled and cut at `round(cumsum(fractions) * count)`, so every
  part gets its share of every class (up to rounding) and the parts are disjoint.

  Args:
    labels: int [n] labels.
    fractions: the parts' shares, non-negative, summing to 1 (within 1e-5; normalised).
    key: JAX PRNG key.

  Returns:
    list of int64 index arrays, one per fraction, each sorted in shuffled order.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be a non-empty 1-D integer array, got shape {labels.shape}')
  if labels.min() < 0:
    raise ValueError('labels must be non-negative')
  fractions = np.asarray(fractions, dtype=np.float64)
  if (fractions.ndim != 1 or fractions.size == 0 or np.any(fractions < 0)
      or not np.isclose(fractions.sum(), 1.0)):
    raise ValueError(f'fractions must be non-negative and sum to 1, got {fractions.tolist()}')
  perm = rng_from_key(key).permutation(labels.size)
  ordered = perm[np.argsort(labels[perm], kind='stable')]
  counts = np.bincount(labels)
  starts = np.cumsum(counts) - counts
  lab = labels[ordered]
  rank_in_class = np.arange(labels.size) - starts[lab]
  # Normalised first: fractions summing to 1 within isclose's 1e-5 cut the last part short
  # of a class's count (0.33333 x 3 left 2 of 200000 examples in no part).
  bounds = np.round(np.cumsum(fractions / fractions.sum())[None, :]
                    * counts[:, None]).astype(np.int64)
  bounds[:, -1] = counts  # every example in a part, whatever the cumsum's round-off
  part = (rank_in_class[:, None] >= bounds[lab]).sum(axis=1)
  # Restore the shuffled order inside each part so parts are not sorted by class.
  position = np.empty(labels.size, dtype=np.int64)
  position[perm] = np.arange(labels.size)
  out = []
  for j in range(fractions.size):
    members = ordered[part == j]
    out.append(members[np.argsort(position[members], kind='stable')].astype(np.int64))
  return out
