"""Rank agreement between valuations and the ground truth (METHOD.md section 4).

Spearman's rho and Kendall's tau-b over the ``K`` contributors, percentile bootstrap
confidence intervals that resample contributors, and the subsampling-stability table. ``K``
is small (tens), so these are exact NumPy computations, vectorised over the last axis so a
bootstrap evaluates all resamples at once. Ties follow ``scipy.stats``: Spearman ranks tied
values by their average rank; Kendall's tau-b is
``(P - Q) / sqrt((P + Q + T_a) (P + Q + T_b))`` (``T_a`` pairs tied in ``a`` only). A
constant input gives NaN, as in SciPy.

Shape legend: ``K`` contributors, ``B`` bootstrap resamples.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from dv_jax import checks


def _numbers(values: Any, name: str) -> np.ndarray:
  try:
    return np.asarray(values, np.float64)
  except (TypeError, ValueError) as e:  # strings, ragged lists: numpy's words name nothing
    raise ValueError(f'{name} must be numbers, got {values!r} ({e})') from None


def _check_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
  a, b = _numbers(a, 'a'), _numbers(b, 'b')
  for name, v in (('a', a), ('b', b)):
    if v.ndim != 1:
      raise ValueError(f'{name} must be 1-D [K], got shape {v.shape}')
    if v.shape[0] < 2:
      raise ValueError(f'{name} needs at least 2 entries, got {v.shape[0]}')
    if not np.all(np.isfinite(v)):
      raise ValueError(f'{name} contains NaN or Inf')
  if a.shape != b.shape:
    raise ValueError(f'a and b must have the same length, got {a.shape[0]} and {b.shape[0]}')
  return a, b


def average_ranks(a: Any) -> np.ndarray:
  """1-based ranks along the last axis, ties given their average rank.

  ``rank_i = #{j: a_j < a_i} + (#{j: a_j = a_i} + 1) / 2`` (scipy's ``rankdata``).

  Args:
    a: ``[..., K]``.

  Returns:
    ``[..., K]`` float64 ranks.

  Raises:
    ValueError: ``a`` a scalar, or NaN (it compares unequal to itself, so every NaN would
      get a rank of its own without a word).
  """
  a = np.asarray(a, np.float64)
  if a.ndim < 1:
    raise ValueError('a must have shape [..., K], got a scalar')
  if np.any(np.isnan(a)):
    raise ValueError('a contains NaN')
  less = (a[..., None, :] < a[..., :, None]).sum(axis=-1)
  equal = (a[..., None, :] == a[..., :, None]).sum(axis=-1)
  return less + (equal + 1) / 2.0


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  ra = average_ranks(a)
  rb = average_ranks(b)
  ra = ra - ra.mean(axis=-1, keepdims=True)
  rb = rb - rb.mean(axis=-1, keepdims=True)
  denom = np.sqrt((ra * ra).sum(axis=-1) * (rb * rb).sum(axis=-1))
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(denom > 0, (ra * rb).sum(axis=-1) / np.where(denom > 0, denom, 1.0),
                    np.nan)


def _kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  sa = np.sign(a[..., :, None] - a[..., None, :])
  sb = np.sign(b[..., :, None] - b[..., None, :])
  # Sums over ordered pairs count every unordered pair twice; the factor cancels.
  concordance = (sa * sb).sum(axis=(-2, -1))
  untied_a = (sa != 0).sum(axis=(-2, -1))
  untied_b = (sb != 0).sum(axis=(-2, -1))
  denom = np.sqrt(untied_a.astype(np.float64) * untied_b)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(denom > 0, concordance / np.where(denom > 0, denom, 1.0), np.nan)


def spearman(a: Any, b: Any) -> float:
  """Spearman's rank correlation rho of ``a [K]`` and ``b [K]`` (average ranks for ties).

  Returns:
    rho in ``[-1, 1]``; NaN when either input is constant.

  Raises:
    ValueError: naming the argument, for a non-1-D input, fewer than 2 entries, NaN/Inf, or
      unequal lengths.
  """
  a, b = _check_pair(a, b)
  return float(_spearman_rows(a, b))


def kendall(a: Any, b: Any) -> float:
  """Kendall's tau-b of ``a [K]`` and ``b [K]`` (``scipy.stats.kendalltau``'s default).

  Returns:
    tau in ``[-1, 1]``; NaN when either input is constant.

  Raises:
    ValueError: as ``spearman``.
  """
  a, b = _check_pair(a, b)
  return float(_kendall_rows(a, b))


_METRICS = {'spearman': _spearman_rows, 'kendall': _kendall_rows}


class ConfidenceInterval(NamedTuple):
  """A percentile bootstrap interval.

  Attributes:
    estimate: the metric on the full data.
    low, high: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resamples.
    level: the coverage level.
    resamples: ``[B]`` the metric on each resample (NaN where a resample was constant).
    num_valid: number of resamples with a finite metric (the quantiles use these).
  """
  estimate: float
  low: float
  high: float
  level: float
  resamples: np.ndarray
  num_valid: int


def bootstrap_indices(num_items: int, num_resamples: int, *, key: Any) -> np.ndarray:
  """``[B, K]`` contributor indices drawn with replacement (``jax.random.randint``).

  Raises:
    ValueError: ``num_items`` (``K``) or ``num_resamples`` (``B``) not an integer >= 1
      (``randint`` on ``[0, 0)`` would return index 0 for an empty set), or ``key`` not
      one PRNG key (``checks.check_key``).
  """
  num_items = checks.check_int(num_items, 'num_items')
  num_resamples = checks.check_int(num_resamples, 'num_resamples')
  key = checks.check_key(key)
  return np.asarray(jax.random.randint(key, (num_resamples, num_items), 0, num_items,
                                       dtype=np.int32))


def bootstrap_ci(a: Any, b: Any, *, metric: str | Callable[[Any, Any], float] = 'spearman',
                 num_resamples: int = 1000, level: float = 0.95, seed: int = 0,
                 key: Any = None) -> ConfidenceInterval:
  """Percentile bootstrap CI of a rank metric, resampling contributors with replacement.

  Resample ``r`` uses indices ``bootstrap_indices(K, B, key=key)[r]`` for both ``a`` and
  ``b``.

  Args:
    a: ``[K]`` values (e.g. a valuation).
    b: ``[K]`` values (e.g. the ground truth).
    metric: ``'spearman'``, ``'kendall'`` or a callable ``(a, b) -> float``.
    num_resamples: ``B >= 1``.
    level: coverage in ``(0, 1)``.
    seed: makes the key when ``key`` is None.
    key: a ``jax.random.PRNGKey``.

  Returns:
    ``ConfidenceInterval``; ``low = high = NaN`` when no resample has a finite metric.

  Raises:
    ValueError: as ``spearman``, for an unknown metric, ``B < 1``, ``level`` outside
      ``(0, 1)`` or (without ``key``) a ``seed`` that is not an int in ``[0, 2^32 - 1]``.
  """
  a, b = _check_pair(a, b)
  if isinstance(metric, str):
    if metric not in _METRICS:
      raise ValueError(f'metric must be one of {sorted(_METRICS)} or a callable, got '
                       f'{metric!r}')
    rows = _METRICS[metric]
  elif callable(metric):
    def rows(x, y):
      if x.ndim == 1:
        return np.float64(metric(x, y))
      return np.array([metric(xi, yi) for xi, yi in zip(x, y)], np.float64)
  else:
    raise ValueError(f'metric must be a string or a callable, got {metric!r}')
  num_resamples = checks.check_int(num_resamples, 'num_resamples')
  # A number, not whatever float() takes: '0.9' or True would pass as 0.9 or 1.0.
  level_value = checks.unit_fraction(level)
  if level_value is None or level_value in (0.0, 1.0):  # the interval is open
    raise ValueError(f'level must be a number in (0, 1), got {level!r}')
  if key is None:
    # check_seed, not int(): int(2.5) == 2 would silently reuse seed 2's resamples.
    key = jax.random.PRNGKey(checks.check_seed(seed))
  idx = bootstrap_indices(a.shape[0], int(num_resamples), key=key)
  resamples = np.asarray(rows(a[idx], b[idx]), np.float64)
  valid = resamples[np.isfinite(resamples)]
  alpha = (1.0 - float(level)) / 2.0
  if valid.size:
    low, high = np.quantile(valid, [alpha, 1.0 - alpha])
  else:
    low = high = np.nan
  return ConfidenceInterval(float(rows(a, b)), float(low), float(high), float(level),
                            resamples, int(valid.size))


def ranking_stability(values_by_size: Mapping[Any, Any], reference: Any) -> dict[Any, float]:
  """Kendall's tau-b of each ranking against the reference ranking.

  METHOD.md section 4: values computed from subsamples of size 100, 400, 1000, 4000 per
  contributor, compared with the full-data values.

  Args:
    values_by_size: ``{subsample size: [K] values}``.
    reference: ``[K]`` full-data values.

  Returns:
    ``{subsample size: tau}`` in the order of ``values_by_size``.

  Raises:
    ValueError: naming the offending key, as ``kendall``.
    TypeError: ``values_by_size`` not a mapping (a bare list of rankings has no sizes).
  """
  if not isinstance(values_by_size, Mapping):
    raise TypeError('values_by_size must be a mapping {subsample size: [K] values}, got '
                    f'{type(values_by_size).__name__}')
  out = {}
  for size, values in values_by_size.items():
    try:
      out[size] = kendall(values, reference)
    except ValueError as e:
      raise ValueError(f'values_by_size[{size!r}] vs reference: {e}') from e
  return out


class Reliability(NamedTuple):
  """How far the mean of ``R`` noisy replicates of a ranking can be trusted.

  Attributes:
    pairwise: the mean Spearman rho between two replicates, over the ``R (R - 1) / 2``
      pairs whose rho is defined (NaN if none is).
    of_mean: the Spearman-Brown reliability of the mean of the ``R`` replicates,
      ``R rho / (1 + (R - 1) rho)`` with ``rho = pairwise``: the correlation expected
      between that mean and the mean of ``R`` fresh replicates. NaN unless ``rho > 0`` (at
      ``rho <= 0`` the formula is no correlation: it divides by 0 at ``rho = -1 / (R - 1)``).
    ceiling: ``sqrt(of_mean)``, the correlation expected between the mean and the
      replicates' noise-free values (classical attenuation): about the most a method that
      knew those values would reach against the mean.
    num_replicates: ``R``.
  """
  pairwise: float
  of_mean: float
  ceiling: float
  num_replicates: int


def replicate_reliability(values: Any) -> Reliability:
  """Seed-to-seed agreement of a ground truth measured ``R`` times: ``values [K, R]``.

  Retraining with another seed ranks the ``K`` contributors somewhat differently; the mean
  of ``R`` seeds is the ground truth every method is compared with, so a method's Spearman
  against it is bounded by how well that mean tracks the seeds' noise-free values
  (``ceiling``), not by 1. With one replicate the fields are NaN.

  Raises:
    ValueError: ``values`` not ``[K, R]`` with ``K >= 2``, or NaN / Inf in it.
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 2 or values.shape[0] < 2:
    raise ValueError(f'values must be [K, R] with K >= 2, got shape {values.shape}')
  if not np.all(np.isfinite(values)):
    raise ValueError('values contains NaN or Inf')
  num = values.shape[1]
  rhos = [_spearman_rows(values[:, i], values[:, j])
          for i in range(num) for j in range(i + 1, num)]
  rhos = [float(r) for r in rhos if np.isfinite(r)]
  rho = float(np.mean(rhos)) if rhos else math.nan
  if not rho > 0:
    return Reliability(rho, math.nan, math.nan, num)
  of_mean = num * rho / (1 + (num - 1) * rho)
  return Reliability(rho, of_mean, math.sqrt(of_mean), num)


__all__ = ['average_ranks', 'spearman', 'kendall', 'ConfidenceInterval', 'bootstrap_indices',
           'bootstrap_ci', 'ranking_stability', 'Reliability', 'replicate_reliability']
