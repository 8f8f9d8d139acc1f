"""A real synthetic-data generator for the digits benchmark, and its truncations.

The generator is a class-conditional Gaussian in PCA space fitted on real examples only:
``x = clip(mu + z W, lo, hi)`` with ``W`` the top ``q`` principal directions of the real
data and ``z | y=c ~ N(m_c, tau * Sigma_c)``. Its samples look like digits (blurred: the
``d - q`` discarded directions and everything non-Gaussian are gone) but they lack the tail
in the sense of METHOD.md section 1: the class distribution ``p'`` they are drawn from is a
truncation of a long-tailed ``p``:

- ``hard``: ``p'_c ∝ p_c`` for the ``k`` most frequent classes, 0 beyond.
- ``top_p``: keep the smallest head whose mass reaches ``top_p``.
- ``temperature``: ``p'_c ∝ p_c^(1/tau)``; ``tau < 1`` thins the tail. Here it also scales
  the within-class covariance by ``tau``, so samples lose diversity as well.
- ``finite_sample``: the empirical distribution of ``M`` draws from ``p``; classes never
  drawn get 0 (the generator only knows what it saw).

Shape legend: ``n`` examples, ``d`` flattened features, ``q`` PCA components, ``c`` classes.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dv_jax import checks
from dv_jax import scaling
from dv_jax.data.contributors import Split, host_rng

TRUNCATION_KINDS = ('none', 'hard', 'top_p', 'temperature', 'finite_sample')


class Truncation(NamedTuple):
  """A truncation of the class distribution (METHOD.md section 1).

  Attributes:
    kind: one of ``TRUNCATION_KINDS``.
    value: ``k`` (hard), ``top_p`` (top_p), ``tau`` (temperature), ``M`` (finite_sample);
      unused for ``none``.
  """
  kind: str = 'none'
  value: float | None = None

  @property
  def label(self) -> str:
    """Short label for names and tables, e.g. ``'hard3'``, ``'temp0.3'``."""
    if self.kind == 'none':
      return 'none'
    short = {'hard': 'hard', 'top_p': 'topp', 'temperature': 'temp',
             'finite_sample': 'finite'}[self.kind]
    value = float(self.value)
    return f'{short}{int(value) if value.is_integer() else value:g}'

  @property
  def covariance_temperature(self) -> float:
    """The factor on the within-class covariance: ``tau`` for temperature, else 1."""
    return float(self.value) if self.kind == 'temperature' else 1.0


def as_truncation(truncation: Any) -> Truncation:
  """Normalises ``None``, ``'kind'``, ``'kind:value'`` or a ``Truncation``; validates it.

  Raises:
    ValueError: for an unknown kind or a value out of range (hard: integer k >= 1;
      top_p: in (0, 1]; temperature: finite tau > 0; finite_sample: integer M >= 1).
  """
  if truncation is None:
    return Truncation()
  if isinstance(truncation, str):
    kind, _, value = truncation.partition(':')
    try:
      truncation = Truncation(kind.strip(), float(value) if value else None)
    except ValueError as e:
      raise ValueError(f'truncation {truncation!r}: value is not a number') from e
  if not isinstance(truncation, Truncation):
    raise ValueError(f'truncation must be None, a string or a Truncation, got {truncation!r}')
  kind, value = truncation
  if kind not in TRUNCATION_KINDS:
    raise ValueError(f'truncation kind must be one of {TRUNCATION_KINDS}, got {kind!r}')
  if kind == 'none':
    # 'none:3' used to drop the 3 without a word (e.g. a typo for 'hard:3').
    if value is not None:
      raise ValueError(f"truncation 'none' takes no value, got {value!r}")
    return Truncation('none', None)
  if value is None:
    raise ValueError(f'truncation {kind!r} needs a value, e.g. {kind!r}:3')
  number = checks.real_number(value)  # not float(): True was k = 1, 'x' float()'s error
  if number is None:
    raise ValueError(f'truncation {kind!r} needs a number, got {value!r}')
  value = number
  if kind in ('hard', 'finite_sample') and (not value.is_integer() or value < 1):
    raise ValueError(f'truncation {kind!r} needs an integer >= 1, got {value}')
  if kind == 'top_p' and not 0.0 < value <= 1.0:
    raise ValueError(f"truncation 'top_p' needs a value in (0, 1], got {value}")
  # Finite too: tau = inf passed here and then failed as an OverflowError (or, as the
  # covariance factor, gave NaN samples).
  if kind == 'temperature' and not 0.0 < value < np.inf:
    raise ValueError(f"truncation 'temperature' needs a finite tau > 0, got {value}")
  return Truncation(kind, value)


def long_tail_class_probs(num_classes: int, *, beta: float,
                          order: Sequence[int] | None = None) -> np.ndarray:
  """Zipf class frequencies ``p_{order[r]} ∝ (r + 1)^-beta``.

  Args:
    num_classes: ``c >= 1``.
    beta: exponent ``>= 0`` (0 gives the uniform distribution).
    order: a permutation of ``range(c)``, head class first; None is ``0, 1, ..., c-1``.

  Returns:
    ``[c]`` float64 probabilities summing to 1.

  Raises:
    ValueError: for ``c < 1``, ``beta < 0`` or an ``order`` that is not a permutation.
  """
  num_classes = checks.check_int(num_classes, 'num_classes')
  beta_value = checks.real_number(beta)  # not float(): None was a TypeError naming no one
  if beta_value is None or not beta_value >= 0.0:
    raise ValueError(f'beta must be >= 0, got {beta!r}')
  beta = beta_value
  # Integers: a float order passed the permutation test and failed as a bare IndexError.
  order = np.arange(num_classes) if order is None else checks.check_indices(order, 'order')
  if sorted(order.tolist()) != list(range(num_classes)):
    raise ValueError(f'order must be a permutation of range({num_classes}), got {order}')
  ranked = np.arange(1, num_classes + 1, dtype=np.float64) ** -float(beta)
  probs = np.empty(num_classes)
  probs[order] = ranked / ranked.sum()
  return probs


def _check_probs(probs: Any, name: str) -> np.ndarray:
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 1 or probs.shape[0] == 0:
    raise ValueError(f'{name} must be a non-empty 1-D array [c], got shape {probs.shape}')
  if not np.all(np.isfinite(probs)) or np.any(probs < 0) or probs.sum() <= 0:
    raise ValueError(f'{name} must be finite, >= 0 and have a positive sum')
  return probs / probs.sum()


def truncate_class_probs(probs: Any, truncation: Any, *, key: Any = None,
                         rng: np.random.Generator | None = None) -> np.ndarray:
  """The synthetic class distribution ``p'``: a truncation of ``p``, renormalised.

  Ties in frequency are broken by class index (lower index counts as more frequent).

  Args:
    probs: ``[c]`` real class frequencies ``p`` (normalised here).
    truncation: a ``Truncation`` or its string form (see ``as_truncation``).
    key: ``jax.random.PRNGKey``, needed by ``finite_sample`` only (or pass ``rng``).
    rng: a NumPy generator used instead of ``key``.

  Returns:
    ``[c]`` float64 probabilities summing to 1.

  Raises:
    ValueError: for bad ``probs``, a bad truncation, ``k > c``, ``finite_sample``
      without a key, or both ``key`` and ``rng``.
  """
  p = _check_probs(probs, 'probs')
  kind, value = as_truncation(truncation)
  # Two sources of randomness: the key used to be ignored without a word.
  if key is not None and rng is not None:
    raise ValueError('pass key or rng, not both')
  if kind == 'none':
    return p.copy()
  if kind == 'finite_sample':
    if rng is None:
      if key is None:
        raise ValueError("truncation 'finite_sample' needs key")
      rng = host_rng(key)
    draws = rng.choice(p.shape[0], size=int(value), p=p)
    q = np.bincount(draws, minlength=p.shape[0]).astype(np.float64)
    return q / q.sum()
  if kind == 'hard' and int(value) > p.shape[0]:
    raise ValueError(f"truncation 'hard' keeps k={int(value)} classes but there are {p.shape[0]}")
  # The truncations themselves are Lemma 1's (dv_jax.scaling), which expects a rank-ordered
  # p: sort descending (ties by class index), truncate, and put the classes back in place.
  ranked = np.argsort(-p, kind='stable')
  argument = {'hard': {'k': int(value)}, 'top_p': {'top_p': value},
              'temperature': {'temperature': value}}[kind]
  q = np.empty_like(p)
  q[ranked] = scaling.synthetic_distribution(p[ranked], mode=kind, **argument)
  return q / q.sum()


def class_entropy(probs: Any) -> float:
  """Shannon entropy ``-sum p log p`` (nats) of a class distribution, ``0 log 0 = 0``."""
  p = _check_probs(probs, 'probs')
  nz = p[p > 0]
  return float(-(nz * np.log(nz)).sum())


class GaussianPCAGenerator(NamedTuple):
  """A fitted class-conditional Gaussian in PCA space.

  Attributes:
    mean: ``[d]`` mean of the flattened real features.
    components: ``[q, d]`` orthonormal principal directions (rows).
    class_means: ``[c, q]`` per-class mean of the PCA coordinates.
    class_chols: ``[c, q, q]`` lower Cholesky factors of the per-class covariances
      (ridge included).
    class_freqs: ``[c]`` class frequencies of the fitting data.
    feature_shape: per-example feature shape, e.g. ``(8, 8, 1)``.
    value_range: ``(lo, hi)`` the features are clipped to (the fitting data's range).
  """
  mean: jax.Array
  components: jax.Array
  class_means: jax.Array
  class_chols: jax.Array
  class_freqs: jax.Array
  feature_shape: tuple
  value_range: tuple


def fit_generator(x: Any, y: Any, *, num_components: int = 20, num_classes: int | None = None,
                  ridge: float = 1e-4) -> GaussianPCAGenerator:
  """Fits the class-conditional Gaussian in PCA space on real examples (float64).

  PCA: ``W`` = the top ``q`` right singular vectors of the centred ``[n, d]`` data. Per class
  ``c``: ``m_c`` the mean and ``Sigma_c`` the unbiased (``ddof=1``) covariance of
  ``z = (x - mu) W^T``, plus ``ridge * trace(Cov(z)) / q`` on the diagonal so the Cholesky
  factor exists.

  Args:
    x: ``[n, *feature_shape]`` real features (never target or test examples).
    y: ``[n]`` int labels.
    num_components: ``q``, ``1 <= q <= min(n, d)``.
    num_classes: ``c``; None means ``max(y) + 1``.
    ridge: relative diagonal regulariser, ``>= 0``.

  Returns:
    A ``GaussianPCAGenerator`` (float32 arrays).

  Raises:
    ValueError: naming the argument, for NaN/Inf or empty ``x``, mismatched ``y``, labels
      out of range, a class with fewer than 2 examples, complex ``x``, a bad
      ``num_components`` or ``num_classes`` (not an integer), a ``ridge`` not finite
      and >= 0, or ``ridge = 0`` with a singular class covariance.
  """
  # Complex features used to lose their imaginary part in the float64 cast, with a warning.
  if np.iscomplexobj(x):
    raise ValueError('x must be real features, got complex values')
  x_np = np.asarray(x, np.float64)
  y_np = np.asarray(y)
  if x_np.ndim < 2 or x_np.shape[0] == 0:
    raise ValueError(f'x must be [n, *feature_shape] with n >= 1, got shape {x_np.shape}')
  if not np.all(np.isfinite(x_np)):
    raise ValueError('x contains NaN or Inf')
  if y_np.shape != (x_np.shape[0],) or not np.issubdtype(y_np.dtype, np.integer):
    raise ValueError(f'y must be integer labels of shape ({x_np.shape[0]},), got '
                     f'{y_np.dtype} {y_np.shape}')
  if num_classes is None:
    c = int(y_np.max()) + 1
  else:  # int(10.5) used to give 10 classes silently.
    c = checks.check_int(num_classes, 'num_classes')
  if y_np.min() < 0 or y_np.max() >= c:
    raise ValueError(f'y has labels outside [0, {c})')
  flat = x_np.reshape(x_np.shape[0], -1)
  n, d = flat.shape
  q = checks.check_int(num_components, 'num_components', maximum=min(n, d))
  # ridge = inf made every Cholesky factor NaN (a warning, no error).
  if not 0.0 <= float(ridge) < np.inf:
    raise ValueError(f'ridge must be finite and >= 0, got {ridge}')
  counts = np.bincount(y_np, minlength=c)
  if np.any(counts < 2):
    raise ValueError(f'y: every class needs >= 2 examples, counts are {counts.tolist()}')
  mean = flat.mean(axis=0)
  _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
  components = vt[:q]
  z = (flat - mean) @ components.T
  jitter = float(ridge) * np.trace(np.cov(z, rowvar=False).reshape(q, q)) / q
  class_means = np.stack([z[y_np == k].mean(axis=0) for k in range(c)])
  class_covs = np.stack([np.cov(z[y_np == k], rowvar=False).reshape(q, q) for k in range(c)])
  try:
    class_chols = np.linalg.cholesky(class_covs + jitter * np.eye(q))
  except np.linalg.LinAlgError as error:
    # With ridge = 0 a class of <= q examples has a singular covariance.
    raise ValueError(f'ridge={ridge}: a class covariance is singular (a class with <= '
                     f'num_components={q} examples, counts {counts.tolist()}); use ridge > 0'
                     ) from error
  return GaussianPCAGenerator(
      mean=jnp.asarray(mean, jnp.float32), components=jnp.asarray(components, jnp.float32),
      class_means=jnp.asarray(class_means, jnp.float32),
      class_chols=jnp.asarray(class_chols, jnp.float32),
      class_freqs=jnp.asarray(counts / n, jnp.float32),
      feature_shape=tuple(int(s) for s in x_np.shape[1:]),
      value_range=(float(flat.min()), float(flat.max())))


def sample_from_rng(generator: GaussianPCAGenerator, rng: np.random.Generator, num: int, *,
                    class_probs: Any = None, temperature: float = 1.0,
                    clip: bool = True) -> Split:
  """``sample`` on the host with a NumPy generator (float64 math, float32 output).

  Returns:
    ``Split`` of NumPy arrays: ``x [num, *feature_shape]`` float32, ``y [num]`` int32,
    ``is_synthetic [num]`` all True.
  """
  num = checks.check_int(num, 'num', minimum=0)
  if not isinstance(clip, (bool, np.bool_)):  # clip='no' is truthy
    raise ValueError(f'clip must be True or False, got {clip!r}')
  c = generator.class_means.shape[0]
  probs = np.asarray(generator.class_freqs) if class_probs is None else class_probs
  probs = _check_probs(probs, 'class_probs')
  if probs.shape[0] != c:
    raise ValueError(f'class_probs has {probs.shape[0]} classes, the generator has {c}')
  # An infinite factor makes z = m + inf * (L eps), whose 0 * inf entries are NaN.
  if not 0.0 < (checks.real_number(temperature) or 0.0) < np.inf:  # None: not float()'s error
    raise ValueError(f'temperature must be finite and > 0, got {temperature!r}')
  means = np.asarray(generator.class_means, np.float64)
  chols = np.asarray(generator.class_chols, np.float64)
  components = np.asarray(generator.components, np.float64)
  # Classes with probability 0 are never drawn.
  y = rng.choice(c, size=num, p=probs).astype(np.int32)
  eps = rng.standard_normal((num, components.shape[0]))
  z = means[y] + np.sqrt(float(temperature)) * np.einsum('nij,nj->ni', chols[y], eps)
  x = np.asarray(generator.mean, np.float64)[None, :] + z @ components
  if clip:
    x = np.clip(x, *generator.value_range)
  x = x.reshape((num,) + tuple(generator.feature_shape)).astype(np.float32)
  return Split(x, y, np.ones((num,), bool))


def sample(generator: GaussianPCAGenerator, key: Any, num: int, *, class_probs: Any = None,
           temperature: float = 1.0, clip: bool = True) -> Split:
  """Draws synthetic examples: ``y ~ p'``, ``z ~ N(m_y, tau Sigma_y)``, ``x = mu + z W``.

  Sampling runs on the host from a NumPy generator seeded by ``key`` (``host_rng``): the
  sizes vary per contributor and a device program per size would be compiled otherwise.

  Args:
    generator: from ``fit_generator``.
    key: a ``jax.random.PRNGKey``.
    num: number of examples, ``>= 0``.
    class_probs: ``[c]`` class distribution ``p'`` (e.g. ``truncate_class_probs``); None
      uses the fitting data's class frequencies. Classes with probability 0 never appear.
    temperature: finite ``tau > 0``, the factor on the within-class covariance.
    clip: clip features to ``generator.value_range`` so they stay valid pixels.

  Returns:
    ``Split(x [num, *feature_shape] float32, y [num] int32, is_synthetic [num] all True)``.

  Raises:
    ValueError: for a negative ``num``, bad ``class_probs`` or a ``temperature`` not finite
      and > 0.
  """
  out = sample_from_rng(generator, host_rng(key), num, class_probs=class_probs,
                        temperature=temperature, clip=clip)
  return Split(*(jnp.asarray(a) for a in out))


__all__ = ['TRUNCATION_KINDS', 'Truncation', 'as_truncation', 'long_tail_class_probs',
           'truncate_class_probs', 'class_entropy', 'GaussianPCAGenerator', 'fit_generator',
           'sample', 'sample_from_rng']
