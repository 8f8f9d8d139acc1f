"""Contributors: who supplies which real and synthetic examples (METHOD.md, Notation).

A contributor ``i`` supplies ``S = S1 ∪ S2``: ``S1`` real, ``S2`` synthetic, ``n = |S|`` and
``pi = |S1| / n``. Every example keeps its ``is_synthetic`` flag end to end, so a pooled view
(``Contributor.pooled``) carries it beside the features and labels.

``make_digit_contributors`` builds the digits benchmark: K contributors (12 by default, at
least 2) that differ in size, real fraction ``pi``, the truncation of their synthetic part
(METHOD.md section 1) and label noise, all from config values and one key.

Shape legend: ``n`` examples, ``d`` features (``feature_shape``, ``(8, 8, 1)`` for digits),
``c`` classes, ``K`` contributors.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Tuple
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks


class Split(NamedTuple):
  """A set of labelled examples.

  Attributes:
    x: ``[n, *feature_shape]`` float32 features.
    y: ``[n]`` int32 labels.
    is_synthetic: ``[n]`` bool, True for examples that a generator produced.
  """
  x: Any
  y: Any
  is_synthetic: Any


def fold_in_name(key: Any, name: str) -> jax.Array:
  """`key` folded with a stable 31-bit hash (CRC-32) of `name`.

  The key of a named unit of work (an experiment unit, a contributor) that stays the same
  whatever order the units run in, or which of them run.
  """
  return jax.random.fold_in(key, zlib.crc32(name.encode('utf-8')) & 0x7FFFFFFF)


def host_rng(key: Any, *path: int) -> np.random.Generator:
  """A NumPy generator seeded by a JAX PRNG key and an optional integer path.

  Data construction draws many differently sized samples; doing that on the host avoids
  compiling one device program per size, while the key stays the single source of
  randomness. ``host_rng(key, 3, i)`` and ``host_rng(key, 3, j)`` are independent streams.
  Paths that differ only by trailing zeros are NOT: NumPy's ``SeedSequence`` pads short
  entropy with zeros, so ``host_rng(key)``, ``host_rng(key, 0)`` and ``host_rng(key, 0, 0)``
  are one stream (no caller pairs them; changing the seeding would change every draw).

  Args:
    key: a ``jax.random.PRNGKey`` (raw ``uint32[2]``) or a typed ``jax.random.key``.
    *path: non-negative integers naming the stream.

  Returns:
    A ``numpy.random.Generator``.

  Raises:
    ValueError: if ``key`` is not a single key or a path entry is not an integer >= 0.
  """
  if hasattr(key, 'dtype') and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = np.asarray(key)
  if words.ndim != 1 or not np.issubdtype(words.dtype, np.integer):
    raise ValueError(f'key must be a single PRNG key, got {words.dtype} {words.shape}')
  # int(1.7) == 1 used to reuse stream 1 for path entry 1.7.
  path = [checks.check_int(i, f'path[{j}]', minimum=0) for j, i in enumerate(path)]
  return np.random.default_rng([int(w) for w in words.astype(np.uint32)] + path)


def _part_size(x: Any, y: Any) -> int:
  """Number of examples in one part; ``None`` or a zero-length array means empty."""
  if x is None and y is None:
    return 0
  if x is None or y is None:
    return -1  # Half a part: validate_contributor reports it.
  return int(np.shape(y)[0]) if np.ndim(y) >= 1 else -1


class Contributor(NamedTuple):
  """One data contributor: a real part ``S1`` and a synthetic part ``S2``.

  Either part may be empty (``None`` or arrays with zero rows), never both
  (``validate_contributor`` checks).

  Attributes:
    name: unique name, used in every error message and result table.
    x_real: ``[n1, *feature_shape]`` real features.
    y_real: ``[n1]`` int labels of the real part.
    x_synthetic: ``[n2, *feature_shape]`` synthetic features.
    y_synthetic: ``[n2]`` int labels of the synthetic part.
  """
  name: str
  x_real: Any
  y_real: Any
  x_synthetic: Any
  y_synthetic: Any

  @property
  def num_real(self) -> int:
    """``|S1|``."""
    return max(_part_size(self.x_real, self.y_real), 0)

  @property
  def num_synthetic(self) -> int:
    """``|S2|``."""
    return max(_part_size(self.x_synthetic, self.y_synthetic), 0)

  @property
  def size(self) -> int:
    """``n = |S1| + |S2|``."""
    return self.num_real + self.num_synthetic

  @property
  def pi(self) -> float:
    """Fraction of real examples ``pi = |S1| / n``.

    Raises:
      ValueError: if the contributor has no examples.
    """
    if self.size == 0:
      raise ValueError(f'contributor {self.name!r} has no examples, so pi is undefined')
    return self.num_real / self.size

  def pooled(self) -> Split:
    """All examples of ``S1 ∪ S2`` with their flags, real part first.

    Returns:
      ``Split(x [n, *feature_shape] float32, y [n] int32, is_synthetic [n] bool)``.

    Raises:
      ValueError: naming the contributor, if it has no examples, or for a part that
        `validate_contributor` would refuse without a target: half a part, mismatched
        lengths, non-numeric, NaN or Inf features, non-integer labels.
    """
    # The casts below used to cut label 1.9 to 1, and x of 2 rows with y of 3 made a Split
    # of unequal lengths.
    for part, x, y in (('real', self.x_real, self.y_real),
                       ('synthetic', self.x_synthetic, self.y_synthetic)):
      _check_part(self.name, part, x, y)
    parts = [(x, y, flag) for x, y, flag in ((self.x_real, self.y_real, False),
                                             (self.x_synthetic, self.y_synthetic, True))
             if _part_size(x, y) > 0]
    if not parts:
      raise ValueError(f'contributor {self.name!r} has no examples')
    # Host concatenation: one device program per contributor size would be compiled
    # otherwise.
    x = np.concatenate([np.asarray(p[0], np.float32) for p in parts], axis=0)
    y = np.concatenate([np.asarray(p[1], np.int32) for p in parts], axis=0)
    flags = np.concatenate([np.full((_part_size(p[0], p[1]),), p[2]) for p in parts])
    return Split(jnp.asarray(x), jnp.asarray(y), jnp.asarray(flags))


def _check_part(name: Any, part: str, x: Any, y: Any, *,
                feature_shape: Optional[Tuple[int, ...]] = None,
                num_classes: Optional[int] = None) -> None:
  """One part's checks of `validate_contributor`; without a target (`feature_shape` or
  `num_classes` None, as in `Contributor.pooled`) the feature shape or the label range
  goes unchecked."""
  if x is None and y is None:
    return
  if x is None or y is None:
    raise ValueError(f'contributor {name!r}: x_{part} and y_{part} must both be given or '
                     'both be None')
  x_np = np.asarray(x)
  y_np = np.asarray(y)
  if y_np.ndim != 1:
    raise ValueError(f'contributor {name!r}: y_{part} must be 1-D [n], got shape '
                     f'{y_np.shape}')
  # A scalar x used to reach the row count message below and fail there as an IndexError.
  if x_np.ndim < 1:
    raise ValueError(f'contributor {name!r}: x_{part} must be [n, *feature_shape], got a '
                     'scalar')
  if x_np.shape[0:1] != y_np.shape[0:1]:
    raise ValueError(f'contributor {name!r}: x_{part} has {x_np.shape[0]} rows but '
                     f'y_{part} has {y_np.shape[0]}')
  if y_np.shape[0] == 0:
    return
  if feature_shape is not None and tuple(x_np.shape[1:]) != feature_shape:
    raise ValueError(f'contributor {name!r}: x_{part} has feature shape '
                     f'{tuple(x_np.shape[1:])}, the target has {feature_shape}')
  # np.isfinite raises a TypeError, naming neither, on strings or objects; complex
  # features would lose their imaginary part in pooled()'s float32 cast.
  if (not (np.issubdtype(x_np.dtype, np.number) or x_np.dtype == bool)
      or np.issubdtype(x_np.dtype, np.complexfloating)):
    raise ValueError(f'contributor {name!r}: x_{part} must hold numbers, got dtype '
                     f'{x_np.dtype}')
  if not np.all(np.isfinite(x_np)):
    raise ValueError(f'contributor {name!r}: x_{part} contains NaN or Inf')
  if not np.issubdtype(y_np.dtype, np.integer):
    raise ValueError(f'contributor {name!r}: y_{part} must hold integer labels, got '
                     f'dtype {y_np.dtype}')
  if num_classes is not None and (y_np.min() < 0 or y_np.max() >= num_classes):
    raise ValueError(f'contributor {name!r}: y_{part} has labels in '
                     f'[{y_np.min()}, {y_np.max()}], expected [0, {num_classes})')


def validate_contributor(contributor: Contributor, *, feature_shape: Sequence[int],
                         num_classes: int) -> None:
  """Checks one contributor against the target's feature shape and label range.

  Args:
    contributor: the contributor to check.
    feature_shape: the per-example feature shape of the target set, e.g. ``(8, 8, 1)``.
    num_classes: labels must lie in ``[0, num_classes)``.

  Raises:
    ValueError: naming the contributor, for a part with features but no labels (or the
      reverse), mismatched lengths, a feature shape other than ``feature_shape``,
      non-numeric, NaN or Inf features, non-integer or out-of-range labels, or no examples
      at all.
  """
  name = getattr(contributor, 'name', None)
  if not isinstance(contributor, Contributor):
    raise ValueError(f'contributor {name!r}: expected a Contributor, got '
                     f'{type(contributor).__name__}')
  feature_shape = tuple(int(s) for s in feature_shape)
  for part in ('real', 'synthetic'):
    _check_part(name, part, getattr(contributor, f'x_{part}'),
                getattr(contributor, f'y_{part}'), feature_shape=feature_shape,
                num_classes=num_classes)
  if contributor.size == 0:
    raise ValueError(f'contributor {name!r} has no examples (both parts are empty)')


class ContributorSpec(NamedTuple):
  """How one benchmark contributor is built.

  Attributes:
    size: ``n``, the number of examples.
    pi: fraction of real examples; the real part has ``round(pi * n)`` examples.
    truncation: the synthetic part's class truncation (``dv_jax.data.synthetic.Truncation``
      or its string form, e.g. ``'hard:3'``).
    label_noise: fraction of labels (in each part) replaced by a different, random class.
  """
  size: int
  pi: float
  truncation: Any
  label_noise: float

  @property
  def num_real(self) -> int:
    return int(round(self.pi * self.size))

  @property
  def num_synthetic(self) -> int:
    return self.size - self.num_real


# Default factor levels of the digits benchmark: each factor's levels are cycled to K
# values and shuffled independently, so contributors differ along every axis at once.
DEFAULT_SIZE_RANGE = (40, 200)
DEFAULT_PIS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_TRUNCATIONS = ('none', 'hard:6', 'hard:3', 'top_p:0.6', 'temperature:0.3',
                       'finite_sample:8')
DEFAULT_LABEL_NOISES = (0.0, 0.0, 0.1, 0.3, 0.5)


def digit_contributor_specs(num_contributors: int = 12, *, key: Any,
                            size_range: Sequence[int] = DEFAULT_SIZE_RANGE,
                            pis: Sequence[float] = DEFAULT_PIS,
                            truncations: Sequence[Any] = DEFAULT_TRUNCATIONS,
                            label_noises: Sequence[float] = DEFAULT_LABEL_NOISES,
                            ) -> list[ContributorSpec]:
  """A seeded design of K contributor specs.

  Sizes are ``K`` evenly spaced integers over ``size_range``; ``pis``, ``truncations`` and
  ``label_noises`` are cycled to ``K`` values. Each factor is then shuffled by its own
  permutation from ``key``.

  Args:
    num_contributors: ``K``, at least 2.
    key: a ``jax.random.PRNGKey``.
    size_range: ``(smallest, largest)`` contributor size, both >= 1.
    pis: real-fraction levels in ``[0, 1]``.
    truncations: truncation levels (``Truncation`` or strings such as ``'hard:3'``).
    label_noises: label-noise levels in ``[0, 1]``.

  Returns:
    A list of ``K`` ``ContributorSpec``.

  Raises:
    ValueError: naming the argument for ``K < 2``, a bad size range, or levels out of range.
  """
  from dv_jax.data import synthetic  # pylint: disable=g-import-not-at-top  (acyclic imports)
  num_contributors = checks.check_int(num_contributors, 'num_contributors', minimum=2)
  if len(size_range) != 2:
    raise ValueError(f'size_range must be (smallest, largest), got {tuple(size_range)}')
  # int(10.9) == 10 used to move the design's sizes without a word.
  lo = checks.check_int(size_range[0], 'size_range[0]')
  hi = checks.check_int(size_range[1], 'size_range[1]', minimum=lo)
  for arg, levels in (('pis', pis), ('label_noises', label_noises)):
    if len(levels) == 0 or any(not 0.0 <= float(v) <= 1.0 for v in levels):
      raise ValueError(f'{arg} must be a non-empty list of values in [0, 1], got {levels}')
  if len(truncations) == 0:
    raise ValueError('truncations must be non-empty')
  truncs = [synthetic.as_truncation(t) for t in truncations]
  k = int(num_contributors)
  sizes = np.rint(np.linspace(lo, hi, k)).astype(int)
  rng = host_rng(key)
  perms = [rng.permutation(k) for _ in range(4)]

  def cycled(levels):
    return [levels[i % len(levels)] for i in range(k)]

  pi_levels = cycled([float(v) for v in pis])
  trunc_levels = cycled(truncs)
  noise_levels = cycled([float(v) for v in label_noises])
  return [ContributorSpec(size=int(sizes[perms[0][i]]), pi=pi_levels[perms[1][i]],
                          truncation=trunc_levels[perms[2][i]],
                          label_noise=noise_levels[perms[3][i]]) for i in range(k)]


def spec_name(index: int, spec: ContributorSpec) -> str:
  """A self-describing contributor name, e.g. ``'c03_n120_pi0.25_hard3_noise0.10'``."""
  from dv_jax.data import synthetic  # pylint: disable=g-import-not-at-top  (acyclic imports)
  trunc = synthetic.as_truncation(spec.truncation)
  part = 'real' if spec.num_synthetic == 0 else trunc.label
  return f'c{index:02d}_n{spec.size}_pi{spec.pi:.2f}_{part}_noise{spec.label_noise:.2f}'


def flip_labels(y: Any, *, fraction: float, num_classes: int, key: Any) -> jax.Array:
  """Replaces ``round(fraction * n)`` labels, chosen at random, by a different class.

  Args:
    y: ``[n]`` int labels in ``[0, num_classes)``.
    fraction: in ``[0, 1]``.
    num_classes: ``c >= 2``.
    key: a ``jax.random.PRNGKey``.

  Returns:
    ``[n]`` int32 labels; exactly ``round(fraction * n)`` of them differ from ``y``.

  Raises:
    ValueError: ``y`` not 1-D integer labels in ``[0, num_classes)``, ``fraction`` outside
      ``[0, 1]`` or ``num_classes`` not an integer >= 2.
  """
  return jnp.asarray(_flip_labels(np.asarray(y), fraction=fraction, num_classes=num_classes,
                                  rng=host_rng(key)))


def _flip_labels(y: np.ndarray, *, fraction: float, num_classes: int,
                 rng: np.random.Generator) -> np.ndarray:
  # float('a') / float(None) used to raise their own errors, naming no argument.
  share = checks.unit_fraction(fraction)
  if share is None:
    raise ValueError(f'fraction must be in [0, 1], got {fraction}')
  num_classes = checks.check_int(num_classes, 'num_classes', minimum=2)
  # A [n, 2] y used to have whole rows flipped, float labels were truncated to ints and labels
  # outside [0, c) kept as they were.
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f'y must be 1-D labels [n], got shape {y.shape}')
  if y.size and not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'y must hold integer labels, got dtype {y.dtype}')
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'y has labels in [{y.min()}, {y.max()}], expected [0, {num_classes})')
  y = np.array(y, np.int32)
  n = y.shape[0]
  num_flip = int(round(share * n))
  which = rng.permutation(n)[:num_flip]
  # A shift in [1, c) guarantees the new label is wrong, uniformly over the other classes.
  shift = rng.integers(1, num_classes, size=num_flip)
  y[which] = (y[which] + shift) % num_classes
  return y


def make_digit_contributors(pool: Split, generator: Any, *, key: Any,
                            num_contributors: int = 12,
                            specs: Sequence[ContributorSpec] | None = None,
                            size_range: Sequence[int] = DEFAULT_SIZE_RANGE,
                            pis: Sequence[float] = DEFAULT_PIS,
                            truncations: Sequence[Any] = DEFAULT_TRUNCATIONS,
                            label_noises: Sequence[float] = DEFAULT_LABEL_NOISES,
                            synthetic_beta: float = 1.0) -> list[Contributor]:
  """Builds the digits benchmark's contributors from a real pool and a generator.

  Real parts are disjoint draws from ``pool`` (no example belongs to two contributors).
  The synthetic world has long-tailed class frequencies ``p_c ∝ rank(c)^-synthetic_beta``
  (one seeded class order shared by every contributor); each contributor's synthetic part
  is sampled from ``generator`` with its truncation of that class distribution
  (METHOD.md section 1: ``hard`` keeps the head classes, ``top_p``, ``temperature`` also
  shrinks the within-class covariance, ``finite_sample``). Label noise then flips a
  fraction of each part's labels.

  Args:
    pool: real examples (``Split``); must hold no synthetic example.
    generator: a fitted ``dv_jax.data.synthetic.GaussianPCAGenerator``.
    key: a ``jax.random.PRNGKey``; everything is deterministic given it.
    num_contributors: ``K`` when ``specs`` is None.
    specs: explicit ``ContributorSpec`` list; None draws ``digit_contributor_specs``.
    size_range, pis, truncations, label_noises: factor levels for the drawn design.
    synthetic_beta: long-tail exponent of the synthetic class distribution (0: uniform).

  Returns:
    ``K`` ``Contributor`` with names from ``spec_name``.

  Raises:
    ValueError: naming the argument, if the pool is too small for the real parts, holds
      synthetic examples, examples of another shape than the generator's, or labels
      outside the generator's classes.
  """
  from dv_jax.data import synthetic  # pylint: disable=g-import-not-at-top  (acyclic imports)
  if not isinstance(pool, Split):
    raise ValueError(f'pool must be a Split, got {type(pool).__name__}')
  pool_x = np.asarray(pool.x, np.float32)
  pool_y = np.asarray(pool.y)
  if np.any(np.asarray(pool.is_synthetic)):
    raise ValueError('pool must hold real examples only (is_synthetic is set)')
  if pool_x.shape[1:] != tuple(generator.feature_shape):
    # Else the real and synthetic parts differ in shape and fail later, naming nothing.
    raise ValueError(f'pool examples have shape {pool_x.shape[1:]}, the generator\'s '
                     f'{tuple(generator.feature_shape)}')
  num_classes = int(np.shape(generator.class_means)[0])
  if pool_y.size and (pool_y.min() < 0 or pool_y.max() >= num_classes):
    raise ValueError(f'pool has labels outside [0, {num_classes}) of the generator')
  if not float(synthetic_beta) >= 0:  # NaN too
    raise ValueError(f'synthetic_beta must be >= 0, got {synthetic_beta}')
  if specs is None:
    specs = digit_contributor_specs(num_contributors, key=key, size_range=size_range,
                                    pis=pis, truncations=truncations,
                                    label_noises=label_noises)
  specs = list(specs)
  if len(specs) < 2:
    raise ValueError(f'specs must hold at least 2 contributors, got {len(specs)}')
  # Checked before `needed`: a NaN pi used to fail inside `spec.num_real` ('cannot convert
  # float NaN to integer'), a fractional size inside sample_from_rng ('num must be an
  # integer'), and a pi above 1 could be reported as a too-small pool, none naming the spec.
  for i, spec in enumerate(specs):
    try:
      checks.check_int(spec.size, 'size')  # a whole number >= 1
      if checks.unit_fraction(spec.pi) is None or checks.unit_fraction(spec.label_noise) is None:
        raise ValueError('pi and label_noise must lie in [0, 1]')
    except ValueError:
      raise ValueError(f'specs[{i}] is invalid: {spec}') from None
  needed = sum(s.num_real for s in specs)
  if needed > pool_y.shape[0]:
    raise ValueError(f'pool has {pool_y.shape[0]} real examples but the contributors need '
                     f'{needed} (disjoint real parts); lower size_range or pis')
  order = host_rng(key, 1).permutation(num_classes)
  base_probs = synthetic.long_tail_class_probs(num_classes, beta=synthetic_beta, order=order)
  perm = host_rng(key, 2).permutation(pool_y.shape[0])
  contributors = []
  offset = 0
  for i, spec in enumerate(specs):
    idx = perm[offset:offset + spec.num_real]
    offset += spec.num_real
    y_real = _flip_labels(pool_y[idx], fraction=spec.label_noise, num_classes=num_classes,
                          rng=host_rng(key, 3, i, 0))
    trunc = synthetic.as_truncation(spec.truncation)
    probs = synthetic.truncate_class_probs(base_probs, trunc, rng=host_rng(key, 3, i, 1))
    x_syn, y_syn, _ = synthetic.sample_from_rng(generator, host_rng(key, 3, i, 2),
                                                spec.num_synthetic, class_probs=probs,
                                                temperature=trunc.covariance_temperature)
    y_syn = _flip_labels(y_syn, fraction=spec.label_noise, num_classes=num_classes,
                         rng=host_rng(key, 3, i, 3))
    contributors.append(Contributor(spec_name(i, spec), jnp.asarray(pool_x[idx]),
                                    jnp.asarray(y_real), jnp.asarray(x_syn),
                                    jnp.asarray(y_syn)))
  return contributors


__all__ = ['Split', 'host_rng', 'Contributor', 'validate_contributor', 'ContributorSpec',
           'digit_contributor_specs', 'spec_name', 'flip_labels', 'make_digit_contributors',
           'DEFAULT_SIZE_RANGE', 'DEFAULT_PIS', 'DEFAULT_TRUNCATIONS', 'DEFAULT_LABEL_NOISES']
