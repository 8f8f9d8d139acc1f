"""Lemma 1: three-phase scaling of a knowledge-acquisition model under real-synthetic mixtures.

METHOD.md section 1. Items `i = 1..N` carry real frequencies `p_i ∝ i^-beta` (`zipf`). A
synthetic generator only reproduces a truncated version `p'` of them
(`synthetic_distribution`: hard cut at rank `k`, nucleus `top_p`, temperature, or the
empirical distribution of `M` draws). A model trained on `n` samples of the mixture
`q = pi p + (1 - pi) p'` (`mixture`) knows an item iff it saw it at least once, so its
test error is the real mass of the items it never saw:

    E(n) = sum_i p_i (1 - q_i)^n                                  (`expected_error`)

with a Monte Carlo counterpart (`simulate_error`). Under hard truncation `E(n)` has three
phases separated by the breakpoints `n1 = k^beta`, `n2 = k^beta / pi` (`breakpoints`);
`phase_asymptotes` gives each phase's closed form and `fit_broken_power_law` finds the
breaks of any measured curve.

Why NumPy/SciPy float64 and not JAX: `N = 10^6` items with `q_i` down to ~1e-14 and `n` up
to ~1e9 make `(1 - q_i)^n` a float32 disaster (`1 - q_i` rounds to 1, `log(1 - q_i)` to 0),
and curves of ~1e-3 are compared to ~1e-3 relative accuracy. Enabling `jax_enable_x64` is a
global switch this library must not flip, so the theory runs in float64 NumPy. The Monte
Carlo simulator draws its multinomial counts with NumPy's float64 conditional-binomial
sampler (exact for any `q`, a C loop over items); its seed comes from an explicit JAX key.

Derivation of the phase constants (Zipf over infinitely many items, `p_i = i^-beta /
zeta(beta)`, `s = 1 - 1/beta`). For a mixture that sees item `i` at rate `c p_i`
(`(1 - c p_i)^n ≈ exp(-n c p_i)`), replace the sum over `i` by an integral and substitute
`u = n c p(i) = n c i^-beta / zeta`, so `i = (n c / (zeta u))^(1/beta)` and
`p(i) di = -(u / (n c)) (1/beta) (n c / zeta)^(1/beta) u^(-1/beta - 1) du`:

    sum_i p_i exp(-n c p_i) ≈ (1/beta) zeta^(-1/beta) (n c)^-s ∫_0^∞ u^-(1/beta) e^-u du
                            = C (n c)^-s,        C = Gamma(s) zeta(beta)^(-1/beta) / beta.

(`learning_constant`; note the `1/beta`, e.g. `C = 0.691` at beta=2.) With hard truncation
at `k` the head items `i <= k` are seen at rate `a p_i`, `a = pi + (1 - pi) / H_k`
(`H_k` the real head mass), the tail items `i > k` only at rate `pi p_i`. Hence

- rapid learning (`n << n1`, the learned frontier inside the head): `E ≈ C (a n)^-s`;
- plateau (head learned, tail not yet): `E ≈ sum_{i>k} p_i = zeta(beta, k+1) / zeta(beta)`
  (Hurwitz zeta), whose leading term is `k^(1-beta) / ((beta - 1) zeta(beta))`;
- tail learning (`n >> n2`): `E ≈ C (pi n)^-s`.

Splitting the same integral at `k + 1/2` (midpoint rule for the sum) gives one formula for
all three phases with incomplete gamma functions `P` (lower) and `Q` (upper), regularised:

    E ≈ C [ (a n)^-s Q(s, a n (k+1/2)^-beta / zeta) + (pi n)^-s P(s, pi n (k+1/2)^-beta / zeta) ]

(`PhaseAsymptotes.continuum`, ours). The asymptotes cross at `n1* = (C/P)^(1/s) / a` and
`n2* = (C/P)^(1/s) / pi` (`refined_breakpoints`, ours), i.e. the paper's `k^beta` times
`zeta(beta) Gamma(2 - 1/beta)^(beta/(beta-1))` to leading order: 1.29 at beta=2, 1.03 at
beta=3, 1.86 at beta=1.5.

Soft truncations (ours; the paper leaves them open, `predicted_breakpoints`): `top_p` of a
rank-ordered `p` is a hard cut at the kept head size. `finite_sample` has a plateau at the
real mass the generator never drew, `E_real(M) ≈ C M^-s`, crossed by the two power laws at
`n1 = M` and `n2 = M / pi`. `temperature` (`p' ∝ p^(1/tau)`, a Zipf of exponent `beta/tau`)
has no plateau: the slope rises once, from `tau s` to `s` (`temperature_asymptotes`).

Shape legend: `N` items, `T` values of `n` (or points of a curve), `J` breaks, `B`
bootstrap replicates.
"""

import inspect
import itertools
import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from scipy import special

from dv_jax import checks

ArrayLike = jax.typing.ArrayLike

MODES = ('hard', 'top_p', 'temperature', 'finite_sample')
# The one argument each truncation mode reads; every other one must stay None.
_MODE_ARGUMENT = {
    'hard': 'k',
    'top_p': 'top_p',
    'temperature': 'temperature',
    'finite_sample': 'num_samples',
}
# A distribution may be off its unit sum by float64 round-off accumulated over 10^6 items.
_SUM_TOLERANCE = 1e-6
# Elements of one `exp(n log1p(-q))` block in `expected_error` (16 MiB of float64).
_BLOCK_ELEMENTS = 1 << 21


# ---------------------------------------------------------------------------------------
# Distributions.


# The real-number checks below go through checks.real_number, not float(): float() reads
# '2' and True as numbers (mixture(p, q, True) returned p) and words None as a TypeError
# that names no argument.


def _check_beta(beta: float) -> float:
  number = checks.real_number(beta)
  if number is None or not math.isfinite(number) or number <= 1.0:
    raise ValueError(f'beta must be a finite number > 1 (a normalisable Zipf tail), got '
                     f'{beta!r}')
  return number


def _check_pi(pi: float, *, allow_zero: bool = False) -> float:
  number = checks.real_number(pi)
  low_ok = number is not None and (number >= 0.0 if allow_zero else number > 0.0)
  if not (low_ok and math.isfinite(number) and number <= 1.0):
    interval = '[0, 1]' if allow_zero else '(0, 1]'
    raise ValueError(f'pi (the real fraction) must lie in {interval}, got {pi!r}')
  return number


def _as_real_float64(values: ArrayLike, name: str) -> np.ndarray:
  """`values` as float64; complex input is refused (the cast would drop its imaginary part
  with only a warning), as is anything that is not numbers."""
  if np.iscomplexobj(values):
    raise ValueError(f'{name} must be real numbers, got complex values')
  try:
    return np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise ValueError(f'{name} must be an array of numbers: {error}') from error


def _as_distribution(p: ArrayLike, name: str) -> np.ndarray:
  """Float64 `[N]` probability vector, validated."""
  p = _as_real_float64(p, name)
  if p.ndim != 1:
    raise ValueError(f'{name} must have shape [N], got shape {p.shape}')
  if p.size == 0:
    raise ValueError(f'{name} is empty')
  if not np.all(np.isfinite(p)):
    raise ValueError(f'{name} contains NaN or Inf')
  if np.any(p < 0):
    raise ValueError(f'{name} has negative entries')
  total = p.sum()
  if abs(total - 1.0) > _SUM_TOLERANCE:
    raise ValueError(f'{name} must sum to 1, sums to {total}')
  return p


def _numpy_rng(key: ArrayLike) -> np.random.Generator:
  """A NumPy generator seeded by the bits of a JAX key (raw `PRNGKey` or typed key)."""
  if key is None:
    raise ValueError('key is required (a jax.random.PRNGKey)')
  if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = np.asarray(key)
  # One key: a batch (`jax.random.split(key, B)`) used to be flattened into one seed.
  if words.dtype != np.uint32 or words.ndim != 1 or words.size < 2:
    raise ValueError(f'key must be a single jax.random.PRNGKey, got dtype {words.dtype}, '
                     f'shape {words.shape}')
  return np.random.default_rng([int(w) for w in words.ravel()])


def zipf(num_items: int, beta: float) -> np.ndarray:
  """Zipf frequencies `p_i = i^-beta / sum_{j<=N} j^-beta`, `i = 1..N` (METHOD.md §1).

  Args:
    num_items: `N >= 1`, the number of items.
    beta: tail exponent, `> 1`.

  Returns:
    float64 `[N]`, non-increasing, summing to 1.

  Raises:
    ValueError: `num_items` not a positive integer or `beta <= 1`.
  """
  num_items = checks.check_int(num_items, 'num_items')
  beta = _check_beta(beta)
  weights = np.arange(1, num_items + 1, dtype=np.float64) ** -beta
  # Sum smallest first: the tail of 10^6 tiny terms would otherwise lose digits.
  return weights / weights[::-1].sum()


def synthetic_distribution(
    p: ArrayLike,
    *,
    mode: str = 'hard',
    k: Optional[int] = None,
    top_p: Optional[float] = None,
    temperature: Optional[float] = None,
    num_samples: Optional[int] = None,
    key: Optional[ArrayLike] = None,
) -> np.ndarray:
  """The synthetic frequencies `p'`: `p` after a truncation mechanism, renormalised.

  Modes (METHOD.md §1; exactly the mode's own argument must be given):
  - `hard` (the paper's): `p'_i ∝ p_i` for `i <= k` (index order, i.e. rank), 0 beyond.
  - `top_p`: nucleus truncation: the smallest set of most probable items whose real mass
    reaches `top_p` (for a rank-ordered `p` a head `i <= k`), renormalised.
  - `temperature`: `p'_i ∝ p_i^(1/temperature)`; `temperature < 1` thins the tail.
  - `finite_sample`: the empirical distribution of `num_samples` draws from `p` (items
    never drawn get 0): the generator only knows what it saw. Needs `key`.

  Args:
    p: `[N]` real frequencies (rank-ordered for `hard`).
    mode: one of `MODES`.
    k: `hard` only, `1 <= k <= N`.
    top_p: `top_p` only, in `(0, 1]`.
    temperature: `temperature` only, `> 0`.
    num_samples: `finite_sample` only, `M >= 1`.
    key: `finite_sample` only, a `jax.random.PRNGKey` seeding the draws.

  Returns:
    float64 `[N]` summing to 1.

  Raises:
    ValueError: unknown `mode`; the mode's argument missing or invalid; another mode's
      argument given.
  """
  p = _as_distribution(p, 'p')
  if mode not in _MODE_ARGUMENT:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  given = {'k': k, 'top_p': top_p, 'temperature': temperature, 'num_samples': num_samples}
  needed = _MODE_ARGUMENT[mode]
  for name, value in given.items():
    if name == needed and value is None:
      raise ValueError(f'{name} is required for mode={mode!r}')
    if name != needed and value is not None:
      raise ValueError(f'{name} is not used by mode={mode!r}; pass only {needed}')
  if key is not None and mode != 'finite_sample':
    raise ValueError(f'key is not used by mode={mode!r}')
  num_items = p.size

  if mode == 'hard':
    k = checks.check_int(k, 'k')
    if k > num_items:
      raise ValueError(f'k must be <= the number of items {num_items}, got {k}')
    head = np.zeros_like(p)
    head[:k] = p[:k]
  elif mode == 'top_p':
    number = checks.real_number(top_p)
    if number is None or not 0.0 < number <= 1.0:  # (NaN fails the comparison)
      raise ValueError(f'top_p must lie in (0, 1], got {top_p!r}')
    top_p = number
    order = np.argsort(-p, kind='stable')
    mass = np.cumsum(p[order])
    # Smallest head reaching top_p. The slack of a few ulps lets a top_p summed another way
    # (p[:k].sum(), pairwise) keep the same k as the cumsum's own value; a relative 1e-12
    # cut every item lighter than it at the crossing (a matched top_p at beta = 3,
    # k = 10^4 kept 9999) and made top_p = 1 drop tails (6758 of 10^6 items kept at beta = 4).
    # top_p = 1 keeps every item, whatever the cumsum's round-off.
    keep = (num_items if top_p >= 1.0 else
            min(int(np.searchsorted(mass, top_p * (1.0 - 8 * np.finfo(np.float64).eps))) + 1,
                num_items))
    head = np.zeros_like(p)
    head[order[:keep]] = p[order[:keep]]
  elif mode == 'temperature':
    number = checks.real_number(temperature)
    if number is None or not (math.isfinite(number) and number > 0.0):
      raise ValueError(f'temperature must be a positive finite number, got {temperature!r}')
    temperature = number
    positive = p > 0
    log_p = np.log(p, where=positive, out=np.full_like(p, -np.inf))
    scaled = log_p / temperature
    # Subtract the max before exp: p^(1/tau) underflows for small tau.
    head = np.where(positive, np.exp(scaled - scaled[positive].max()), 0.0)
  else:
    num_samples = checks.check_int(num_samples, 'num_samples')
    rng = _numpy_rng(key)
    head = rng.multinomial(num_samples, p / p.sum()).astype(np.float64)
  return head / head.sum()


def mixture(p: ArrayLike, p_syn: ArrayLike, pi: float) -> np.ndarray:
  """Training mixture `q = pi p + (1 - pi) p'` (METHOD.md §1).

  Args:
    p: `[N]` real frequencies.
    p_syn: `[N]` synthetic frequencies.
    pi: fraction of real samples, in `[0, 1]`.

  Returns:
    float64 `[N]` summing to 1.

  Raises:
    ValueError: invalid distributions, mismatched shapes, or `pi` outside `[0, 1]`.
  """
  p = _as_distribution(p, 'p')
  p_syn = _as_distribution(p_syn, 'p_syn')
  if p_syn.shape != p.shape:
    raise ValueError(f'p_syn must have the shape of p {p.shape}, got {p_syn.shape}')
  pi = _check_pi(pi, allow_zero=True)
  return pi * p + (1.0 - pi) * p_syn


# Relative slack of the consistency checks of `effective_k` (the inputs agree to ~1e-15).
_CONSISTENCY_RTOL = 1e-6


def _check_head(p: np.ndarray, p_syn: np.ndarray, mode: str) -> None:
  """`p_syn` must be `p` renormalised on a head: its index head for `hard`, a set of most
  probable items for `top_p`. The cut is read off `p_syn`'s support, so a `p_syn` of another
  mode (e.g. a temperature one, positive everywhere) used to give `k = N` without a word."""
  support = p_syn > 0
  if mode == 'hard':
    region = np.arange(p.size) <= np.flatnonzero(support)[-1]
    shape = 'p renormalised on its first k items, 0 beyond'
  else:
    region = support
    shape = 'p renormalised on a set of its most probable items, 0 elsewhere'
    outside = p[~support]
    if outside.size and outside.max() > p[support].min() * (1.0 + _CONSISTENCY_RTOL):
      raise ValueError(f"p_syn is not a mode='top_p' truncation of p ({shape}): an item "
                       'it drops is more probable than one it keeps')
  scale = p_syn[region].sum() / p[region].sum() if p[region].sum() > 0 else np.inf
  if not np.allclose(p_syn[region], scale * p[region], rtol=_CONSISTENCY_RTOL, atol=0.0):
    raise ValueError(f'p_syn is not a mode={mode!r} truncation of p ({shape})')


def _check_empirical(p_syn: np.ndarray, num_samples: int) -> None:
  """`p_syn` must be counts of `num_samples` draws over `num_samples`; else `num_samples`
  (the only thing `finite_sample` reads) could belong to another distribution. (A multiple
  of the true count passes: `10 c_i / 10 M` is an empirical distribution of `10 M` draws.)"""
  counts = num_samples * p_syn
  whole = np.rint(counts)
  if (not np.all(np.abs(counts - whole) <= _CONSISTENCY_RTOL * np.maximum(whole, 1.0))
      or whole.sum() != num_samples):
    raise ValueError(f"p_syn is not the empirical distribution of num_samples={num_samples} "
                     "draws (mode='finite_sample': num_samples * p_syn must be counts summing "
                     'to num_samples)')


def effective_k(
    p: ArrayLike,
    p_syn: ArrayLike,
    *,
    pi: float,
    mode: str,
    num_samples: Optional[int] = None,
) -> int:
  """Rank at which a soft truncation acts like the hard cut `k` (ours, not in the paper).

  The paper's breakpoints `k^beta` and `k^beta / pi` need a cut `k`. For `hard` and
  `top_p`, `p'` is a renormalised head of `p` and the cut is its size, `#{i : p'_i > 0}`:
  exactly `k` for `hard` and the kept head for `top_p`, whatever `pi` (the head is learned
  at rate `pi + (1 - pi) / H_k`, faster than the tail's `pi`, for every `pi < 1`). For
  `temperature` we take the number of items whose mixture frequency is dominated by the
  synthetic part, `#{i : (1 - pi) p'_i > pi p_i}`: the crossover rank past which only real
  data teach an item. (That count is not used for the head modes: it equals the head size
  only while `pi < 1 / (1 + H_k)`, about 1/2, and is 0 above it.) The empirical `p'` of
  `finite_sample` has singletons far into the tail, so there we take the rank the
  generator expects to have seen once, `#{i : M p_i >= 1}`.

  Args:
    p: `[N]` real frequencies.
    p_syn: `[N]` synthetic frequencies.
    pi: fraction of real samples, in `(0, 1]`.
    mode: one of `MODES`.
    num_samples: `M`, required for `finite_sample`; None for the other modes (callers
      pass None there, so None is accepted; a value is an error, as it would be ignored).

  Returns:
    The effective cut (an item count, possibly 0).

  Raises:
    ValueError: invalid inputs, unknown `mode`, `num_samples` missing for
      `finite_sample` or given for another mode; a `p_syn` that is not of `mode`'s shape
      (`hard`: `p` renormalised on its first items; `top_p`: on its most probable items;
      `finite_sample`: counts of `num_samples` draws over `num_samples`).
  """
  p = _as_distribution(p, 'p')
  p_syn = _as_distribution(p_syn, 'p_syn')
  if p_syn.shape != p.shape:
    raise ValueError(f'p_syn must have the shape of p {p.shape}, got {p_syn.shape}')
  pi = _check_pi(pi)
  if mode not in _MODE_ARGUMENT:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  if mode == 'finite_sample':
    if num_samples is None:
      raise ValueError("num_samples is required for mode='finite_sample'")
    num_samples = checks.check_int(num_samples, 'num_samples')
    _check_empirical(p_syn, num_samples)
    return int(np.count_nonzero(num_samples * p >= 1.0))
  if num_samples is not None:
    raise ValueError(f"num_samples is only used by mode='finite_sample', not mode={mode!r}; "
                     'pass None')
  if mode in ('hard', 'top_p'):
    _check_head(p, p_syn, mode)
    return int(np.count_nonzero(p_syn))
  return int(np.count_nonzero((1.0 - pi) * p_syn > pi * p))


# ---------------------------------------------------------------------------------------
# Test error: exact expectation and Monte Carlo.


def _as_sample_sizes(n: ArrayLike, *, integer: bool) -> np.ndarray:
  n = _as_real_float64(n, 'n')
  if n.size == 0:
    raise ValueError('n is empty')
  if not np.all(np.isfinite(n)):
    raise ValueError('n contains NaN or Inf')
  if np.any(n < 0):
    raise ValueError('n must be non-negative')
  if integer and not np.all(n == np.round(n)):
    raise ValueError('n must hold integer sample counts')
  return n


def expected_error(n: ArrayLike, p: ArrayLike, q: ArrayLike) -> np.ndarray:
  """Exact expected test error `E(n) = sum_i p_i (1 - q_i)^n` (METHOD.md §1, Lemma 1).

  `(1 - q_i)^n` is evaluated as `exp(n log1p(-q_i))`: `1 - q_i` would round to 1 for
  `q_i < 1.1e-16` and lose the tail that dominates `E` at large `n`; `log1p` keeps full
  relative precision for tiny `q_i`. Every term is non-negative, so the sum has no
  cancellation. `n` may be real (the formula extends smoothly); `E(0) = 1`.

  Args:
    n: any shape, number(s) of training samples, `>= 0`.
    p: `[N]` real frequencies (the test distribution).
    q: `[N]` training frequencies.

  Returns:
    float64 array of the shape of `n`.

  Raises:
    ValueError: `n` negative / non-finite / empty, invalid `p` or `q`, shape mismatch.
  """
  n = _as_sample_sizes(n, integer=False)
  p = _as_distribution(p, 'p')
  q = _as_distribution(q, 'q')
  if q.shape != p.shape:
    raise ValueError(f'q must have the shape of p {p.shape}, got {q.shape}')
  seen = q > 0
  never_seen_mass = p[~seen].sum()  # items with q_i = 0 are never learned: (1 - 0)^n = 1.
  p_seen = p[seen]
  with np.errstate(divide='ignore'):
    log_miss = np.log1p(-np.minimum(q[seen], 1.0))  # -inf where q_i = 1: learned at once
  flat_n = n.ravel()
  errors = np.empty_like(flat_n)
  # Blocks of n values keep the [block, N] exponent matrix small.
  block = max(1, _BLOCK_ELEMENTS // max(p_seen.size, 1))
  with np.errstate(invalid='ignore'):  # 0 * -inf at n = 0, fixed just below
    for start in range(0, flat_n.size, block):
      n_block = flat_n[start:start + block]
      exponent = np.multiply.outer(n_block, log_miss)
      exponent[n_block == 0] = 0.0
      errors[start:start + block] = np.exp(exponent) @ p_seen
  return (errors + never_seen_mass).reshape(n.shape)


class SimulatedError(NamedTuple):
  """Monte Carlo test error.

  Attributes:
    mean: `[T]`, average over trials of the real mass of the items never drawn.
    stderr: `[T]`, standard error of `mean` (sample std / sqrt(trials)).
    errors: `[trials, T]`, every trial.
  """
  mean: np.ndarray
  stderr: np.ndarray
  errors: np.ndarray


def simulate_error(
    key: ArrayLike,
    n: ArrayLike,
    p: ArrayLike,
    q: ArrayLike,
    *,
    trials: int,
    nested: bool = True,
) -> SimulatedError:
  """Monte Carlo estimate of `E(n)`: draw `n` samples from `q`, sum the real mass unseen.

  Counts are multinomial draws from `q` (NumPy's float64 sampler, seeded by `key`). Each
  entry is an exact sample of the error at its own `n`; `nested` says how the entries of
  one trial relate. Nested (a growing data stream): the counts at the next larger `n` add
  a fresh `Multinomial(n' - n, q)` draw, so a trial's curve never rises. Not nested (a new
  data set per size, as an experiment that draws every unit's data afresh): each `n` gets
  its own `Multinomial(n, q)`, and the errors at different `n` are independent. The mean
  is the same; the noise along a curve, and so where a fit puts its bends, is not.

  Args:
    key: `jax.random.PRNGKey`.
    n: `[T]` non-negative integer sample counts below `2^63` (any order).
    p: `[N]` real frequencies.
    q: `[N]` training frequencies.
    trials: number of independent repetitions, `>= 1` (`>= 2` for a finite stderr).
    nested: one growing sample per trial (True) or an independent sample per `n` (False).

  Returns:
    `SimulatedError` with entries in the order of `n`.

  Raises:
    ValueError: invalid `n`, `p`, `q`, `trials` or `key` (e.g. a batch of keys).
  """
  n = _as_sample_sizes(n, integer=True)
  if n.ndim != 1:
    raise ValueError(f'n must have shape [T], got shape {n.shape}')
  p = _as_distribution(p, 'p')
  q = _as_distribution(q, 'q')
  if q.shape != p.shape:
    raise ValueError(f'q must have the shape of p {p.shape}, got {q.shape}')
  # Multinomial counts are int64: a larger n wrapped to a negative count and the error read 1.
  if n.max() >= 2.0 ** 63:
    raise ValueError(f'n must be < 2^63 (int64 sample counts), got {n.max():g}')
  trials = checks.check_int(trials, 'trials')
  if not isinstance(nested, (bool, np.bool_)):
    raise ValueError(f'nested must be True or False, got {nested!r}')
  rng = _numpy_rng(key)
  q = q / q.sum()  # NumPy's multinomial rejects sums above 1 + 1e-12
  order = np.argsort(n, kind='stable')
  sorted_n = n[order].astype(np.int64)
  errors = np.empty((trials, n.size))
  for trial in range(trials):
    counts = np.zeros(p.size, dtype=np.int64)
    drawn = 0
    for position, size in zip(order, sorted_n):
      if not nested:
        counts, drawn = np.zeros(p.size, dtype=np.int64), 0
      if size > drawn:
        counts += rng.multinomial(size - drawn, q)
        drawn = size
      errors[trial, position] = p[counts == 0].sum()
  stderr = (errors.std(axis=0, ddof=1) / math.sqrt(trials) if trials > 1
            else np.full(n.size, np.nan))
  return SimulatedError(mean=errors.mean(axis=0), stderr=stderr, errors=errors)


# ---------------------------------------------------------------------------------------
# Breakpoints and phase asymptotes (hard truncation, Zipf over infinitely many items).


class Breakpoints(NamedTuple):
  """Ends of the rapid-learning phase (`n1`) and of the plateau (`n2`)."""
  n1: float
  n2: float


class PhaseAsymptotes(NamedTuple):
  """Closed forms of the three phases of `E(n)`, each of the shape of `n`.

  Attributes:
    rapid: `C (a n)^-(1 - 1/beta)`, valid for `n << n1`.
    plateau: the real tail mass `sum_{i>k} p_i` (constant), valid for `n1 << n << n2`.
    tail: `C (pi n)^-(1 - 1/beta)`, valid for `n >> n2`.
    continuum: the incomplete-gamma formula valid across all three phases.
  """
  rapid: np.ndarray
  plateau: np.ndarray
  tail: np.ndarray
  continuum: np.ndarray


def _check_k(k) -> int:
  return checks.check_int(k, 'k')


def breakpoints(beta: float, k: int, pi: float) -> Breakpoints:
  """The paper's breakpoints `n1 = k^beta`, `n2 = k^beta / pi` (Lemma 1).

  Args:
    beta: Zipf exponent, `> 1`.
    k: synthetic truncation rank, `>= 1`.
    pi: fraction of real samples, in `(0, 1]`.

  Returns:
    `Breakpoints(n1, n2)` as floats.

  Raises:
    ValueError: an argument out of range.
  """
  beta, k, pi = _check_beta(beta), _check_k(k), _check_pi(pi)
  n1 = float(k) ** beta
  return Breakpoints(n1=n1, n2=n1 / pi)


def learning_constant(beta: float) -> float:
  """`C = Gamma(1 - 1/beta) zeta(beta)^(-1/beta) / beta`: `E ≈ C n^-(1-1/beta)` for `q = p`.

  See the module docstring for the derivation.

  Args:
    beta: Zipf exponent, `> 1`.

  Returns:
    The constant as a float.
  """
  beta = _check_beta(beta)
  return float(special.gamma(1.0 - 1.0 / beta) * special.zeta(beta) ** (-1.0 / beta) / beta)


def _tail_mass(beta: float, k: int) -> float:
  """`sum_{i>k} i^-beta / zeta(beta)` via the Hurwitz zeta function."""
  return float(special.zeta(beta, k + 1.0) / special.zeta(beta))


def phase_asymptotes(n: ArrayLike, *, beta: float, k: int, pi: float) -> PhaseAsymptotes:
  """Closed-form predictions of the three phases of `E(n)` under hard truncation.

  For Zipf over infinitely many items (`p_i = i^-beta / zeta(beta)`), with
  `s = 1 - 1/beta`, `C = learning_constant(beta)`, head mass `H_k = 1 - zeta(beta, k+1) /
  zeta(beta)` and head rate `a = pi + (1 - pi) / H_k` (derivation in the module
  docstring):
  rapid `C (a n)^-s`; plateau `zeta(beta, k+1) / zeta(beta) ≈ k^(1-beta) / ((beta - 1)
  zeta(beta))`; tail `C (pi n)^-s`; continuum
  `C [(a n)^-s Q(s, a n (k+1/2)^-beta / zeta) + (pi n)^-s P(s, pi n (k+1/2)^-beta / zeta)]`.

  Args:
    n: any shape, positive sample counts.
    beta: Zipf exponent, `> 1`.
    k: synthetic truncation rank, `>= 1`.
    pi: fraction of real samples, in `(0, 1]`.

  Returns:
    `PhaseAsymptotes`, each field float64 of the shape of `n`.

  Raises:
    ValueError: `n` not positive and finite, or a parameter out of range.
  """
  beta, k, pi = _check_beta(beta), _check_k(k), _check_pi(pi)
  n = _as_sample_sizes(n, integer=False)
  if np.any(n == 0):
    raise ValueError('n must be positive (the asymptotes diverge at n = 0)')
  s = 1.0 - 1.0 / beta
  constant = learning_constant(beta)
  zeta = float(special.zeta(beta))
  tail_mass = _tail_mass(beta, k)
  head_rate = pi + (1.0 - pi) / (1.0 - tail_mass)
  # Midpoint rule: the sum over i <= k is the integral up to k + 1/2.
  edge = (k + 0.5) ** -beta / zeta
  continuum = constant * ((head_rate * n) ** -s * special.gammaincc(s, head_rate * n * edge)
                          + (pi * n) ** -s * special.gammainc(s, pi * n * edge))
  return PhaseAsymptotes(
      rapid=constant * (head_rate * n) ** -s,
      plateau=np.full(n.shape, tail_mass),
      tail=constant * (pi * n) ** -s,
      continuum=continuum,
  )


def refined_breakpoints(beta: float, k: int, pi: float) -> Breakpoints:
  """Where the phase asymptotes cross (ours): `n1* = (C/P)^(1/s) / a`, `n2* = (C/P)^(1/s) / pi`.

  `P` the plateau (real tail mass), `C`, `s`, `a` as in `phase_asymptotes`. To leading
  order this is the paper's `k^beta` (resp. `/ pi`) times
  `zeta(beta) Gamma(2 - 1/beta)^(beta/(beta-1))`.

  Args:
    beta: Zipf exponent, `> 1`.
    k: synthetic truncation rank, `>= 1`.
    pi: fraction of real samples, in `(0, 1]`.

  Returns:
    `Breakpoints(n1, n2)`.
  """
  beta, k, pi = _check_beta(beta), _check_k(k), _check_pi(pi)
  s = 1.0 - 1.0 / beta
  tail_mass = _tail_mass(beta, k)
  crossing = (learning_constant(beta) / tail_mass) ** (1.0 / s)
  head_rate = pi + (1.0 - pi) / (1.0 - tail_mass)
  return Breakpoints(n1=crossing / head_rate, n2=crossing / pi)


class TemperatureAsymptotes(NamedTuple):
  """The two phases of `E(n)` under temperature truncation, each of the shape of `n`.

  Attributes:
    synthetic: `(temperature / (beta zeta(beta))) Gamma(temperature s)
      ((1 - pi) n / zeta(beta / temperature))^-(temperature s)`: the head is learned from
      the sharpened synthetic Zipf (exponent `beta / temperature`), valid for `n << n*`.
    tail: `C (pi n)^-s`: the tail is learned from the real data, valid for `n >> n*`.
  """
  synthetic: np.ndarray
  tail: np.ndarray


def temperature_asymptotes(n: ArrayLike, *, beta: float, temperature: float, pi: float
                           ) -> TemperatureAsymptotes:
  """Closed forms of `E(n)` when `p' ∝ p^(1/temperature)` (ours; `s = 1 - 1/beta`).

  `p'` is Zipf with exponent `beta' = beta / temperature`. While the synthetic part
  dominates the frontier, `E ≈ sum_i p_i exp(-(1 - pi) n p'_i)`; the substitution of the
  module docstring with `u = (1 - pi) n i^-beta' / zeta(beta')` gives the `synthetic` form,
  a power law with the *smaller* exponent `temperature * s`. Once real data dominate the
  frontier, `E ≈ C (pi n)^-s`. There is no plateau: a single break where the slope rises
  from `temperature * s` to `s` (`predicted_breakpoints`).

  Args:
    n: any shape, positive sample counts.
    beta: Zipf exponent, `> 1`.
    temperature: in `(0, 1)`.
    pi: fraction of real samples, in `(0, 1)`.

  Returns:
    `TemperatureAsymptotes`, each float64 of the shape of `n`.
  """
  beta, pi = _check_beta(beta), _check_pi(pi)
  number = checks.real_number(temperature)
  if number is None or not 0.0 < number < 1.0:  # (NaN fails the comparison)
    raise ValueError(f'temperature must lie in (0, 1) (a thinned tail), got {temperature!r}')
  temperature = number
  if pi >= 1.0:
    raise ValueError(f'pi must be < 1 for a synthetic phase, got {pi}')
  n = _as_sample_sizes(n, integer=False)
  if np.any(n == 0):
    raise ValueError('n must be positive (the asymptotes diverge at n = 0)')
  s = 1.0 - 1.0 / beta
  synthetic_zeta = float(special.zeta(beta / temperature))
  prefactor = temperature / (beta * float(special.zeta(beta))) * special.gamma(temperature * s)
  return TemperatureAsymptotes(
      synthetic=prefactor * ((1.0 - pi) * n / synthetic_zeta) ** (-temperature * s),
      tail=learning_constant(beta) * (pi * n) ** -s,
  )


def predicted_breakpoints(
    beta: float,
    pi: float,
    *,
    mode: str,
    k: Optional[int] = None,
    temperature: Optional[float] = None,
    num_samples: Optional[int] = None,
) -> Breakpoints:
  """Our breakpoint predictions for each truncation mode: where phase asymptotes cross.

  - `hard` and `top_p`: `refined_breakpoints(beta, k, pi)` (for `top_p`, `k` is the kept
    head size, e.g. `effective_k`: nucleus truncation of a Zipf *is* a hard cut).
  - `finite_sample`: the plateau is the real mass the generator never drew,
    `E_real(M) ≈ C M^-s`, so the asymptotes `C n^-s` and `C (pi n)^-s` cross it at
    `n1 = M` and `n2 = M / pi`, whatever `beta`.
  - `temperature`: no plateau; the two `temperature_asymptotes` cross once, at `n2`;
    `n1` is NaN.

  Args:
    beta: Zipf exponent, `> 1`.
    pi: fraction of real samples, in `(0, 1]` (`< 1` for `temperature`).
    mode: one of `MODES`.
    k: `hard` / `top_p`: the truncation rank.
    temperature: `temperature`: in `(0, 1)`.
    num_samples: `finite_sample`: `M`.
    (Exactly the mode's own argument is used; the others must be None.)

  Returns:
    `Breakpoints(n1, n2)`.

  Raises:
    ValueError: unknown `mode`, its argument missing, another mode's argument given (it
      would be ignored), or a value out of range.
  """
  if mode not in _MODE_ARGUMENT:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  # top_p's prediction is the hard cut's at the kept head size k, so both modes take k.
  needed = 'k' if mode in ('hard', 'top_p') else _MODE_ARGUMENT[mode]
  given = {'k': k, 'temperature': temperature, 'num_samples': num_samples}
  for name, value in given.items():
    if name != needed and value is not None:
      raise ValueError(f'{name} is not used by mode={mode!r}; pass only {needed}')
  beta, pi = _check_beta(beta), _check_pi(pi)
  if mode in ('hard', 'top_p'):
    if k is None:
      raise ValueError(f'k is required for mode={mode!r}')
    return refined_breakpoints(beta, k, pi)
  if mode == 'finite_sample':
    if num_samples is None:
      raise ValueError("num_samples is required for mode='finite_sample'")
    num_samples = checks.check_int(num_samples, 'num_samples')
    return Breakpoints(n1=float(num_samples), n2=num_samples / pi)
  if temperature is None:
    raise ValueError("temperature is required for mode='temperature'")
  # Both asymptotes are power laws A n^-(tau s) and B n^-s: they cross at (B/A)^(1/(s(1-tau))).
  at_one = temperature_asymptotes(1.0, beta=beta, temperature=temperature, pi=pi)
  s = 1.0 - 1.0 / beta
  crossing = float((at_one.tail / at_one.synthetic) ** (1.0 / (s * (1.0 - temperature))))
  return Breakpoints(n1=math.nan, n2=crossing)


# ---------------------------------------------------------------------------------------
# Smoothly broken power law: fit, model selection, bootstrap.


class BrokenPowerLaw(NamedTuple):
  """Parameters of `y = a + b x^-c0 prod_j (1 + (x/d_j)^(1/f_j))^(-c_j f_j)`.

  For `x << d_j` break `j` is inactive; for `x >> d_j` the log-log slope drops by `c_j`
  (so `c_j < 0` flattens the curve, `c_j > 0` steepens it). `d_j` is where the power laws
  on either side of the break cross; `f_j` is the width of the bend in units of `ln x`.

  Attributes:
    floor: `a >= 0`.
    scale: `b > 0`.
    slope: `c0`, the decay exponent before the first break.
    breaks: `[J]` increasing `d_j`.
    slope_changes: `[J]` `c_j`.
    smoothness: `[J]` `f_j > 0`.
  """
  floor: float
  scale: float
  slope: float
  breaks: np.ndarray
  slope_changes: np.ndarray
  smoothness: np.ndarray


class BrokenPowerLawFit(NamedTuple):
  """Result of `fit_broken_power_law`.

  Attributes:
    num_breaks: `J`, the number of breaks BIC selected.
    breaks: `[J]` fitted break locations (in units of `x`), increasing.
    break_ci: `[J, 2]` bootstrap confidence interval of each break (NaN without bootstrap).
    params: the selected `BrokenPowerLaw`; `broken_power_law(x, params)` predicts.
    bic: `[max_breaks + 1]` BIC of the best model with 0, 1, ... breaks.
    rss: `[max_breaks + 1]` residual sum of squares of `log y` of those models.
    models: the best `BrokenPowerLaw` with 0, 1, ... breaks.
    bootstrap_breaks: `[B, J]` the breaks of every bootstrap refit (NaN where it failed).
    break_range: `(low, high)` in units of `x`, the range every break was held to (NaN
      when unknown); a break at either end is censored (`breaks_on_edge`).
  """
  num_breaks: int
  breaks: np.ndarray
  break_ci: np.ndarray
  params: BrokenPowerLaw
  bic: np.ndarray
  rss: np.ndarray
  models: Tuple[BrokenPowerLaw, ...]
  bootstrap_breaks: np.ndarray
  break_range: Tuple[float, float] = (math.nan, math.nan)


def broken_power_law(x: ArrayLike, params: BrokenPowerLaw) -> np.ndarray:
  """Evaluates the smoothly broken power law `params` at `x` (METHOD.md §1).

  Args:
    x: any shape, positive.
    params: a `BrokenPowerLaw`.

  Returns:
    float64 array of the shape of `x`.

  Raises:
    ValueError: `x` not positive and finite; `params` with a NaN/Inf field, a negative
      floor, a non-positive scale, breaks not positive and increasing, a non-positive
      smoothness, or per-break fields of different lengths.
  """
  x = np.asarray(x, dtype=np.float64)
  if np.any(~np.isfinite(x)) or np.any(x <= 0):
    raise ValueError('x must be positive and finite')
  return np.exp(_log_curve(np.log(x), *_natural(params)))


def _natural(params: BrokenPowerLaw):
  """Checked `(log_a or None, log_b, c0, log_d [J], c [J], log_f [J])` of `params`."""
  breaks = np.atleast_1d(np.asarray(params.breaks, dtype=np.float64))
  changes = np.atleast_1d(np.asarray(params.slope_changes, dtype=np.float64))
  widths = np.atleast_1d(np.asarray(params.smoothness, dtype=np.float64))
  if not (breaks.shape == changes.shape == widths.shape and breaks.ndim == 1):
    raise ValueError('params.breaks, slope_changes and smoothness must have the same shape [J]')
  scalars = np.array([params.floor, params.scale, params.slope], dtype=np.float64)
  if not (np.all(np.isfinite(scalars)) and np.all(np.isfinite(breaks))
          and np.all(np.isfinite(changes)) and np.all(np.isfinite(widths))):
    raise ValueError(f'params must be finite, got {params}')
  # A negative floor would otherwise be dropped as "no floor" without a word.
  if params.floor < 0 or params.scale <= 0:
    raise ValueError(f'params.floor must be >= 0 and params.scale > 0, got floor '
                     f'{params.floor}, scale {params.scale}')
  if np.any(breaks <= 0) or np.any(widths <= 0) or np.any(np.diff(breaks) <= 0):
    raise ValueError('params.breaks must be positive and increasing, smoothness positive')
  log_a = math.log(params.floor) if params.floor > 0 else None
  return (log_a, math.log(params.scale), float(params.slope), np.log(breaks), changes,
          np.log(widths))


def _log_curve(log_x: np.ndarray, log_a: Optional[float], log_b: float, slope: float,
               log_d: np.ndarray, changes: np.ndarray, log_f: np.ndarray) -> np.ndarray:
  """`log y` of the model at `log_x`; softplus form so no power ever overflows."""
  widths = np.exp(log_f)
  z_TxJ = (log_x[..., None] - log_d) / widths
  log_body = log_b - slope * log_x - (np.logaddexp(0.0, z_TxJ) * (changes * widths)).sum(-1)
  if log_a is None:
    return log_body
  return np.logaddexp(log_a, log_body)


class _BreakRange(NamedTuple):
  """Where the breaks of a fit may lie, in `log x`.

  `low <= log d_1`, `log d_J <= high`, and `log d_{j+1} - log d_j >= min_gap`.
  """
  low: float
  high: float
  min_gap: float

  def slack(self, num_breaks: int) -> float:
    """Room left in the range once `num_breaks` breaks sit `min_gap` apart (< 0: none fit)."""
    return self.high - self.low - max(num_breaks - 1, 0) * self.min_gap


# theta layout: [log a (only with a floor)] + [log b, s_0] + [u_j, s_j, log f_j] * J, where
# s_j is the decay exponent of the segment after break j (so c_j = s_j - s_{j-1}) and
# u_j in [0, 1] places break j (`_decode_breaks`). The breaks must be ordered, `min_gap`
# apart and all inside `_BreakRange` (a break beyond the data is no break the data show),
# a constraint on their sum that least squares, which takes only box bounds, cannot state
# on log-gaps. So the breaks share the range's slack R = high - low - (J - 1) min_gap:
# break j takes the fraction u_j of the slack the earlier ones left,
#   log d_j = log d_{j-1} + min_gap + u_j R_j,   R_1 = R,   R_{j+1} = (1 - u_j) R_j
# (with log d_0 + min_gap read as low), i.e. R_j = high - log d_{j-1} - (J - j + 1) min_gap.
# Every u in the unit box is an admissible break set and every admissible set has a u
# (unique while no u_j = 1), and the map is a polynomial, so the box stays a box, the
# Jacobian stays analytic by the chain rule, and a fit with its breaks inside the range
# has the optimum it had with free gaps. (A penalty for leaving the range would let breaks
# out by an amount that depends on its weight; clipping would flatten the gradient.) Box
# bounds on the slopes keep them within slope_range (non-negative by default: a learning
# curve does not rise), which stops two breaks with huge opposite slope changes from
# faking a bump between them.
def _decode_breaks(fractions: np.ndarray, break_range: _BreakRange
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """`(log_d [J], d log_d / d u [J, J])` of the break fractions `u` (layout above)."""
  num_breaks = fractions.size
  log_d = np.empty(num_breaks)
  jac_JxJ = np.zeros((num_breaks, num_breaks))
  # A slack a hair below 0 is round-off of a range that just holds J breaks; an
  # infeasible J never gets here (`_hinge_starts` finds no start for it).
  room, bottom = max(break_range.slack(num_breaks), 0.0), break_range.low
  d_room, d_bottom = np.zeros(num_breaks), np.zeros(num_breaks)  # their gradients in u
  for j, u in enumerate(fractions):
    log_d[j] = bottom + u * room
    jac_JxJ[j] = d_bottom + u * d_room
    jac_JxJ[j, j] += room
    d_room = (1.0 - u) * d_room
    d_room[j] -= room
    room *= 1.0 - u
    bottom, d_bottom = log_d[j] + break_range.min_gap, jac_JxJ[j]
  return log_d, jac_JxJ


def _encode_breaks(log_d: np.ndarray, break_range: _BreakRange) -> np.ndarray:
  """`[J]` fractions `u` of admissible `log_d` (inverse of `_decode_breaks`; clipped)."""
  fractions = np.zeros(log_d.size)
  room, bottom = max(break_range.slack(log_d.size), 0.0), break_range.low
  for j, value in enumerate(log_d):
    # No room (J breaks exactly min_gap apart end to end): every u gives the same break.
    fractions[j] = np.clip((value - bottom) / room, 0.0, 1.0) if room > 0 else 0.0
    bottom += fractions[j] * room + break_range.min_gap
    room *= 1.0 - fractions[j]
  return fractions


def _pack(log_a: Optional[float], log_b: float, slope: float, log_d: np.ndarray,
          changes: np.ndarray, log_f: np.ndarray, break_range: _BreakRange) -> np.ndarray:
  """theta (layout above) of the natural parameters; `log_a` None means no floor."""
  head = [log_a] if log_a is not None else []
  head += [log_b, slope]
  per_break = np.stack([_encode_breaks(np.asarray(log_d, np.float64), break_range),
                        slope + np.cumsum(changes), log_f], axis=1).ravel()
  return np.concatenate([np.asarray(head, dtype=np.float64), per_break])


def _split(theta: np.ndarray, num_breaks: int, floor: bool, break_range: _BreakRange):
  """`(log_a or None, log_b, c0, log_d [J], c [J], log_f [J])` from `theta`."""
  offset = 1 if floor else 0
  per_break = theta[offset + 2:].reshape(num_breaks, 3)
  slopes = np.concatenate([[theta[offset + 1]], per_break[:, 1]])
  log_d, _ = _decode_breaks(per_break[:, 0], break_range)
  return (theta[0] if floor else None, theta[offset], theta[offset + 1], log_d,
          np.diff(slopes), per_break[:, 2])


def _unpack(theta: np.ndarray, num_breaks: int, floor: bool, break_range: _BreakRange
            ) -> BrokenPowerLaw:
  log_a, log_b, slope, log_d, changes, log_f = _split(theta, num_breaks, floor, break_range)
  return BrokenPowerLaw(
      floor=float(np.exp(log_a)) if floor else 0.0,
      scale=float(np.exp(log_b)),
      slope=float(slope),
      breaks=np.exp(log_d),
      slope_changes=changes,
      smoothness=np.exp(log_f),
  )


def _log_model(theta: np.ndarray, log_x: np.ndarray, num_breaks: int, floor: bool,
               break_range: _BreakRange) -> np.ndarray:
  """`[T]` `log y` of the model with parameters `theta`."""
  return _log_curve(log_x, *_split(theta, num_breaks, floor, break_range))


def _log_model_jacobian(theta: np.ndarray, log_x: np.ndarray, num_breaks: int, floor: bool,
                        break_range: _BreakRange) -> np.ndarray:
  """`[T, len(theta)]` derivative of `_log_model` (analytic: 10x fewer model evaluations)."""
  log_a, log_b, slope, log_d, changes, log_f = _split(theta, num_breaks, floor, break_range)
  offset = 1 if floor else 0
  widths = np.exp(log_f)
  z_TxJ = (log_x[:, None] - log_d) / widths
  softplus = np.logaddexp(0.0, z_TxJ)
  sigmoid = special.expit(z_TxJ)
  jac = np.empty((log_x.size, theta.size))
  jac[:, offset] = 1.0
  # d log y / d c_j for j = 0..J (c_0 the initial slope); segment slope s_i enters c_i with
  # +1 and c_{i+1} with -1.
  d_change = np.concatenate([-log_x[:, None], -widths * softplus], axis=1)  # [T, J + 1]
  d_slope = d_change - np.concatenate([d_change[:, 1:], np.zeros((log_x.size, 1))], axis=1)
  jac[:, offset + 1] = d_slope[:, 0]
  jac[:, offset + 3::3] = d_slope[:, 1:]
  # d log y / d log d_j, then by the chain rule through the break map: u_i moves break i
  # and, through the slack it leaves, every later break.
  d_log_d = changes * sigmoid
  _, d_log_d_du_JxJ = _decode_breaks(theta[offset + 2::3], break_range)
  jac[:, offset + 2::3] = d_log_d @ d_log_d_du_JxJ
  jac[:, offset + 4::3] = -changes * widths * (softplus - sigmoid * z_TxJ)  # d / d log f_j
  if floor:
    log_body = log_b - slope * log_x - (softplus * (changes * widths)).sum(1)
    floor_share = special.expit(log_a - log_body)  # a / (a + body)
    jac[:, 1:] *= (1.0 - floor_share)[:, None]
    jac[:, 0] = floor_share
  return jac


class _Problem(NamedTuple):
  log_x: np.ndarray
  log_y: np.ndarray
  num_breaks: int
  floor: bool
  break_range: _BreakRange
  lower: np.ndarray
  upper: np.ndarray


def _make_problem(log_x, log_y, num_breaks, floor, *, grid, min_log_gap, smoothness_range,
                  slope_range) -> _Problem:
  """Box constraints: break fractions in [0, 1], slopes and smoothness in range.

  The fractions place every break inside the grid's range, `min_log_gap` from its
  neighbours (the layout note above `_decode_breaks`).
  """
  log_width_lo, log_width_hi = math.log(smoothness_range[0]), math.log(smoothness_range[1])
  slope_lo, slope_hi = slope_range
  lower = ([log_y.min() - 30.0] if floor else []) + [-np.inf, slope_lo]
  upper = ([log_y.max()] if floor else []) + [np.inf, slope_hi]
  for _ in range(num_breaks):
    lower += [0.0, slope_lo, log_width_lo]
    upper += [1.0, slope_hi, log_width_hi]
  return _Problem(log_x, log_y, num_breaks, floor,
                  _BreakRange(float(grid[0]), float(grid[-1]), float(min_log_gap)),
                  np.asarray(lower), np.asarray(upper))


def _hinge_starts(log_x: np.ndarray, log_y: np.ndarray, num_breaks: int, grid: np.ndarray,
                  min_log_gap: float, num_starts: int) -> list:
  """Coarse grid: continuous piecewise-linear fits of `log y` for every set of breaks.

  The hinge model `log y = b0 + b1 lx + sum_j g_j max(lx - ld_j, 0)` is the sharp
  (`f -> 0`) limit of the smooth model, linear in its coefficients for fixed breaks, so the
  whole grid costs one batched solve. Returns `(log_breaks, intercept, slope, changes)` of
  the `num_starts` lowest-SSE break sets whose neighbours are `min_log_gap` apart.
  """
  subsets = [c for c in itertools.combinations(range(grid.size), num_breaks)
             if np.all(np.diff(grid[list(c)]) >= min_log_gap)]
  if not subsets:
    return []
  combos = np.array(subsets, dtype=int).reshape(len(subsets), num_breaks)  # [P, J]
  center = log_x.mean()  # centring keeps the normal equations well conditioned
  log_breaks = grid[combos]  # [P, J]
  num_combos = len(subsets)
  design = np.concatenate([
      np.ones((num_combos, 1, log_x.size)),
      np.broadcast_to(log_x - center, (num_combos, 1, log_x.size)),
      np.maximum(log_x[None, None, :] - log_breaks[:, :, None], 0.0),
  ], axis=1)  # [P, 2 + J, T]
  gram = np.einsum('pkt,plt->pkl', design, design) + 1e-10 * np.eye(2 + num_breaks)
  rhs = np.einsum('pkt,t->pk', design, log_y)
  coef = np.linalg.solve(gram, rhs[..., None])[..., 0]  # [P, 2 + J]
  sse = ((np.einsum('pkt,pk->pt', design, coef) - log_y) ** 2).sum(axis=1)
  starts = []
  for index in np.argsort(sse)[:num_starts]:
    intercept = coef[index, 0] - coef[index, 1] * center
    starts.append((log_breaks[index], intercept, coef[index, 1], coef[index, 2:]))
  return starts


def _solve(problem: _Problem, theta0: np.ndarray, max_evaluations: int
           ) -> Tuple[np.ndarray, float]:
  """Local least squares of `log y` from `theta0`; returns `(theta, rss)`."""
  # Strictly inside the box: 'trf' needs an interior start.
  width = np.where(np.isfinite(problem.upper - problem.lower), problem.upper - problem.lower,
                   1.0)
  theta0 = np.clip(theta0, problem.lower + 1e-6 * width, problem.upper - 1e-6 * width)
  model_args = (problem.log_x, problem.num_breaks, problem.floor, problem.break_range)
  result = optimize.least_squares(
      lambda t: _log_model(t, *model_args) - problem.log_y,
      theta0,
      jac=lambda t: _log_model_jacobian(t, *model_args),
      bounds=(problem.lower, problem.upper),
      method='trf',
      x_scale='jac',
      max_nfev=max_evaluations,
  )
  return result.x, float(np.sum(result.fun ** 2))


def _fit_fixed_breaks(problem: _Problem, starts: list, initial_smoothness: float,
                      max_evaluations: int) -> Tuple[Optional[np.ndarray], float]:
  """Best local fit with exactly `problem.num_breaks` breaks over the grid's best starts."""
  best_theta, best_rss = None, np.inf
  for log_breaks, intercept, slope, changes in starts:
    # Hinge coefficients are slopes of log y; the model's slopes are their negatives.
    theta0 = _pack(problem.log_y.min() - 3.0 if problem.floor else None, intercept, -slope,
                   log_breaks, -changes,
                   np.full(problem.num_breaks, math.log(initial_smoothness)),
                   problem.break_range)
    theta, rss = _solve(problem, theta0, max_evaluations)
    if rss < best_rss:
      best_theta, best_rss = theta, rss
  return best_theta, best_rss


def _check_number(value: Any, name: str) -> float:
  """`value` as a float; a string, None, a bool or an array is a ValueError naming `name`."""
  array = np.asarray(value) if not isinstance(value, (str, bytes)) else None
  if array is None or array.ndim != 0 or array.dtype.kind not in 'iuf':
    raise ValueError(f'{name} must be a number, got {value!r}')
  return float(array)


def _check_range(value: Any, name: str) -> Tuple[float, float]:
  """`(low, high)` as two floats; NaN fails every comparison the caller makes after."""
  try:
    values = tuple(value)
  except TypeError:
    values = ()
  if len(values) != 2:
    raise ValueError(f'{name} must be a pair (low, high), got {value!r}')
  return tuple(_check_number(v, name) for v in values)


def check_fit_options(**options: Any) -> Dict[str, Any]:
  """`fit_broken_power_law`'s options, checked and normalised, its defaults filled in.

  The fit runs this first; an experiment runs it on its `config.fit` (`fit_options`)
  before the training whose curves it will fit, so that a bad option fails first.

  Args:
    **options: keywords of `fit_broken_power_law` other than `x` and `y`.

  Returns:
    `{keyword: value}` for every option: ints as ints, numbers as floats, ranges as
    `(low, high)` float tuples.

  Raises:
    ValueError: naming the option: an unknown one, or a value the fit cannot use.
  """
  unknown = sorted(set(options) - set(_FIT_DEFAULTS))
  if unknown:
    raise ValueError(f'{unknown} are not options of fit_broken_power_law; known: '
                     f'{sorted(_FIT_DEFAULTS)}')
  o = {**_FIT_DEFAULTS, **options}
  o['max_breaks'] = checks.check_int(o['max_breaks'], 'max_breaks', minimum=0, maximum=3)
  o['num_bootstrap'] = checks.check_int(o['num_bootstrap'], 'num_bootstrap', minimum=0)
  # A string such as 'False' is truthy and used to fit a floor without a word.
  if not isinstance(o['floor'], (bool, np.bool_)):
    raise ValueError(f"floor must be True or False, got {o['floor']!r}")
  # seed=None drew fresh OS entropy: a bootstrap that changed on every call.
  o['seed'] = checks.check_seed(o['seed'])
  o['grid_points'] = checks.check_int(o['grid_points'], 'grid_points')
  if o['max_breaks'] >= 1 and o['grid_points'] < 2:
    # One candidate pins the first break's lower and upper bound to the same value, which
    # SciPy refused with a message naming no argument.
    raise ValueError(f"grid_points must be >= 2 to place a break, got {o['grid_points']}")
  for name in ('num_starts', 'min_segment_points', 'max_evaluations'):
    o[name] = checks.check_int(o[name], name)
  o['min_break_ratio'] = _check_number(o['min_break_ratio'], 'min_break_ratio')
  if not (math.isfinite(o['min_break_ratio']) and o['min_break_ratio'] > 1.0):
    raise ValueError(f"min_break_ratio must be a finite number > 1, got "
                     f"{o['min_break_ratio']}")
  if o['bootstrap'] not in ('residual', 'case'):
    raise ValueError(f"bootstrap must be 'residual' or 'case', got {o['bootstrap']!r}")
  o['ci_level'] = _check_number(o['ci_level'], 'ci_level')
  if not 0.0 < o['ci_level'] < 1.0:
    raise ValueError(f"ci_level must lie in (0, 1), got {o['ci_level']}")
  o['sigma_floor'] = _check_number(o['sigma_floor'], 'sigma_floor')
  if not (math.isfinite(o['sigma_floor']) and o['sigma_floor'] > 0):
    raise ValueError(f"sigma_floor must be positive and finite, got {o['sigma_floor']}")
  o['slope_range'] = slope_range = _check_range(o['slope_range'], 'slope_range')
  if not slope_range[0] < slope_range[1]:
    raise ValueError(f'slope_range must be (low, high) with low < high, got {slope_range}')
  o['smoothness_range'] = smoothness_range = _check_range(o['smoothness_range'],
                                                          'smoothness_range')
  low, high = smoothness_range
  o['initial_smoothness'] = _check_number(o['initial_smoothness'], 'initial_smoothness')
  if not 0 < low < high:
    raise ValueError(f'smoothness_range must be (low, high) with 0 < low < high, '
                     f'got {smoothness_range}')
  if not low <= o['initial_smoothness'] <= high:
    raise ValueError(f"initial_smoothness must lie in smoothness_range, got "
                     f"{o['initial_smoothness']}")
  return o


def bootstrap_residuals(residuals: np.ndarray, num_params: int) -> np.ndarray:
  """A least-squares fit's residuals made fit to resample: centred, then scaled by
  `sqrt(T / (T - p))` (Davison & Hinkley 1997, section 6.2).

  A fit of `p` parameters to `T` points leaves residuals whose spread is shrunk by about
  `(T - p) / T`: resampled as they were, the breaks' 95% intervals covered the truth in
  64-87% of simulated two-break curves at the experiments' grids (`T` = 13 and 25, `p` = 8,
  noise 2-20%); centred and rescaled, in 90-93% (noise 5%).
  """
  residuals = np.asarray(residuals, np.float64)
  num_points = residuals.size
  if not 0 <= num_params < num_points:
    raise ValueError(f'num_params must lie in [0, {num_points}) for {num_points} residuals, '
                     f'got {num_params}')
  return (residuals - residuals.mean()) * math.sqrt(num_points / (num_points - num_params))


def fit_broken_power_law(
    x: ArrayLike,
    y: ArrayLike,
    *,
    max_breaks: int = 2,
    num_bootstrap: int = 100,
    seed: int = 0,
    floor: bool = True,
    grid_points: int = 25,
    num_starts: int = 3,
    min_segment_points: int = 3,
    min_break_ratio: float = 2.0,
    initial_smoothness: float = 0.5,
    smoothness_range: Tuple[float, float] = (0.02, 3.0),
    slope_range: Tuple[float, float] = (0.0, 10.0),
    sigma_floor: float = 1e-3,
    bootstrap: str = 'residual',
    ci_level: float = 0.95,
    max_evaluations: int = 200,
) -> BrokenPowerLawFit:
  """Fits a smoothly broken power law in log-log space and selects the number of breaks.

  Model (METHOD.md §1): `y = a + b x^-c0 prod_j (1 + (x/d_j)^(1/f_j))^(-c_j f_j)`, residuals
  in `log y`, slopes by each segment's decay exponent (bounded by `slope_range`). For each
  `J = 0..max_breaks`: a coarse grid of `grid_points` candidate breaks in `log x` (all
  admissible `J`-subsets) is scored by a continuous piecewise-linear least squares; the
  `num_starts` best start a bounded local least squares (`scipy.optimize.least_squares`,
  analytic Jacobian). Every break of every model (and of every bootstrap refit) stays
  within the grid's range, which keeps `min_segment_points` data points beyond each end,
  with neighbouring breaks at least `min_break_ratio` apart: a break beyond the data is
  not one the data show. BIC `T ln(max(RSS/T, sigma_floor^2)) + (#params) ln T` picks
  `J`. The variance floor says that misfits below `sigma_floor` (in `ln y`) are not
  evidence: without it a noise-free curve always buys more breaks with round-off. The
  selected model is refitted on `num_bootstrap` resamples (`residual`: `log y_hat +`
  resampled residuals, centred and rescaled by `bootstrap_residuals`; `case`: resampled
  points), started from the fit, and the
  percentile interval of each break is returned. Residuals of a noise-free curve are
  misfit rather than noise, so there the interval measures how firmly the data pin each
  break, not sampling error. A break is not a smooth function of the data, so its
  percentile interval need not contain the fitted break: with few resamples it is about
  their range (at B = 4, as in the smoke configs, all four fall on one side of the break
  with probability ~1/8), and a break held at a bound repeats one value.

  Args:
    x: `[T]` positive abscissae (e.g. sample counts).
    y: `[T]` positive values (e.g. test error).
    max_breaks: largest `J` tried, 0..3.
    num_bootstrap: `B >= 0` bootstrap refits of the selected model.
    seed: seed of the bootstrap resampling, an int in [0, 2^32 - 1] (None is refused: the
      bootstrap would change from call to call).
    floor: fit the additive floor `a >= 0` (else `a = 0`); a bool.
    grid_points: candidate break locations of the coarse grid (`>= 2` when
      `max_breaks >= 1`).
    num_starts: grid candidates refined by local least squares, per `J`.
    min_segment_points: distinct `x` values kept outside the extreme grid candidates.
    min_break_ratio: smallest ratio `d_{j+1} / d_j` of neighbouring breaks, `> 1`.
    initial_smoothness: `f_j` at the start of the local fit.
    smoothness_range: bounds of `f_j`.
    slope_range: bounds of every segment's decay exponent (`c0`, `c0 + c1`, ...); the default
      `(0, 10)` fits non-increasing curves (test error against data size); pass e.g.
      `(-10, 10)` for curves that may rise.
    sigma_floor: smallest residual standard deviation (in `ln y`) BIC believes.
    bootstrap: `'residual'` or `'case'`.
    ci_level: confidence level of `break_ci`, in `(0, 1)`.
    max_evaluations: cap on model evaluations of each local least squares (a poorly
      identified bootstrap refit can otherwise wander for thousands of steps).

  Returns:
    `BrokenPowerLawFit`. A `J` for which no admissible grid subset exists (the data span
    too short for `J` breaks `min_break_ratio` apart) gets BIC `inf` and RSS `inf`, and
    `models` stops before it.

  Raises:
    ValueError: invalid `x`/`y`, too few points for the largest model, or a bad option.
  """
  x = _as_real_float64(x, 'x')
  y = _as_real_float64(y, 'y')
  for name, values in (('x', x), ('y', y)):
    if values.ndim != 1:
      raise ValueError(f'{name} must have shape [T], got shape {values.shape}')
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
      raise ValueError(f'{name} must be positive and finite (it is fitted in log space)')
  if y.shape != x.shape:
    raise ValueError(f'y must have the shape of x {x.shape}, got {y.shape}')
  o = check_fit_options(
      max_breaks=max_breaks, num_bootstrap=num_bootstrap, seed=seed, floor=floor,
      grid_points=grid_points, num_starts=num_starts, min_segment_points=min_segment_points,
      min_break_ratio=min_break_ratio, initial_smoothness=initial_smoothness,
      smoothness_range=smoothness_range, slope_range=slope_range, sigma_floor=sigma_floor,
      bootstrap=bootstrap, ci_level=ci_level, max_evaluations=max_evaluations)
  max_breaks, num_bootstrap, seed = o['max_breaks'], o['num_bootstrap'], o['seed']
  grid_points, num_starts = o['grid_points'], o['num_starts']
  min_segment_points, max_evaluations = o['min_segment_points'], o['max_evaluations']
  min_break_ratio, ci_level, sigma_floor = o['min_break_ratio'], o['ci_level'], o['sigma_floor']
  slope_range, smoothness_range = o['slope_range'], o['smoothness_range']
  initial_smoothness = o['initial_smoothness']
  order = np.argsort(x, kind='stable')
  log_x, log_y = np.log(x[order]), np.log(y[order])
  num_points = log_x.size
  most_params = (1 if floor else 0) + 2 + 3 * max_breaks
  if num_points <= most_params:
    raise ValueError(f'x has {num_points} points; a model with {max_breaks} breaks has '
                     f'{most_params} parameters and needs more points')
  unique_log_x = np.unique(log_x)
  if unique_log_x.size < 2 * min_segment_points:
    raise ValueError(f'x needs at least {2 * min_segment_points} distinct values '
                     f'(min_segment_points={min_segment_points} on each side)')
  grid = np.linspace(unique_log_x[min_segment_points - 1], unique_log_x[-min_segment_points],
                     grid_points)
  min_log_gap = math.log(min_break_ratio)
  options = dict(grid=grid, min_log_gap=min_log_gap, smoothness_range=smoothness_range,
                 slope_range=slope_range)

  bic = np.full(max_breaks + 1, np.inf)
  rss = np.full(max_breaks + 1, np.inf)
  thetas, models = [], []
  for num_breaks in range(max_breaks + 1):
    problem = _make_problem(log_x, log_y, num_breaks, floor, **options)
    starts = _hinge_starts(log_x, log_y, num_breaks, grid, min_log_gap, num_starts)
    theta, rss_j = _fit_fixed_breaks(problem, starts, initial_smoothness, max_evaluations)
    # No admissible grid subset means the range cannot hold J breaks min_log_gap apart (the
    # grid spans exactly the break range), so no J-break model exists: more breaks cannot
    # be tried either.
    if theta is None:
      break
    rss[num_breaks] = rss_j
    bic[num_breaks] = (num_points * math.log(max(rss_j / num_points, sigma_floor ** 2))
                       + theta.size * math.log(num_points))
    thetas.append(theta)
    models.append(_unpack(theta, num_breaks, floor, problem.break_range))
  chosen = int(np.argmin(bic))
  params = models[chosen]

  boot = np.full((num_bootstrap, chosen), np.nan)
  if chosen > 0 and num_bootstrap > 0:
    rng = np.random.default_rng(seed)
    problem = _make_problem(log_x, log_y, chosen, floor, **options)
    fitted = _log_model(thetas[chosen], log_x, chosen, floor, problem.break_range)
    residuals = bootstrap_residuals(log_y - fitted, thetas[chosen].size)
    for b in range(num_bootstrap):
      index = rng.integers(num_points, size=num_points)
      if bootstrap == 'residual':
        replicate = problem._replace(log_y=fitted + residuals[index])
      else:
        index.sort()
        replicate = problem._replace(log_x=log_x[index], log_y=log_y[index])
      try:
        theta_b, _ = _solve(replicate, thetas[chosen], max_evaluations)
      except (ValueError, np.linalg.LinAlgError):  # a degenerate resample: recorded as NaN
        continue
      boot[b] = _unpack(theta_b, chosen, floor, problem.break_range).breaks
  if chosen > 0 and np.any(np.isfinite(boot)):
    tail = 100.0 * (1.0 - ci_level) / 2.0
    break_ci = np.nanpercentile(boot, [tail, 100.0 - tail], axis=0).T
  else:
    break_ci = np.full((chosen, 2), np.nan)
  return BrokenPowerLawFit(
      num_breaks=chosen,
      breaks=params.breaks,
      break_ci=break_ci,
      params=params,
      bic=bic,
      rss=rss,
      models=tuple(models),
      bootstrap_breaks=boot,
      break_range=(float(np.exp(grid[0])), float(np.exp(grid[-1]))),
  )


# The fit's options and their defaults, read once from its signature (so that a test's
# stand-in for the fit does not change them).
_FIT_DEFAULTS = {name: parameter.default
                 for name, parameter in inspect.signature(fit_broken_power_law).parameters.items()
                 if name not in ('x', 'y')}


def breaks_on_edge(fit: BrokenPowerLawFit, *, rtol: float = 1e-6) -> np.ndarray:
  """`[J]` whether each selected break sits on an end of `fit.break_range`.

  Such a break is censored: the fit would have put it further out if it could, so the data
  say only that the bend lies at or beyond it, not where.
  """
  breaks = np.asarray(fit.breaks, np.float64)
  low, high = fit.break_range
  return (np.abs(np.log(breaks / low)) <= rtol) | (np.abs(np.log(breaks / high)) <= rtol)


def segment_slopes(params: BrokenPowerLaw) -> np.ndarray:
  """`[J + 1]` decay exponents of the fit's segments: before, between and after the breaks.

  Segment `j` decays as `x^-(c0 + c_1 + ... + c_j)` far from every break (the curve's log-log
  slope there is minus this).
  """
  changes = np.asarray(params.slope_changes, np.float64)
  return float(params.slope) + np.concatenate([[0.0], np.cumsum(changes)])


def match_breaks(fitted: Sequence[float], predicted: Sequence[float]) -> List[float]:
  """The fitted break paired with each predicted one (NaN where none is).

  A prediction that is NaN or not positive (e.g. temperature truncation's first break, which
  has no plateau to end) takes no break. Equal counts pair in order. Otherwise the pairs
  closest in `log n` are taken first, each break used at most once: a lone fitted break goes
  to the prediction nearest to it, not to the first one.

  Args:
    fitted: the fit's breaks, increasing (`BrokenPowerLawFit.breaks`).
    predicted: the predicted breaks, e.g. `(n1, n2)`.

  Returns:
    One value per prediction, in its order.

  Raises:
    ValueError: `fitted` not positive, finite and strictly increasing (a break <= 0 failed
      as log's 'math domain error'; an unsorted list was paired in the order given).
  """
  fitted = [float(value) for value in fitted]
  if not all(math.isfinite(value) and value > 0 for value in fitted):
    raise ValueError(f'fitted must be positive finite breaks, got {fitted}')
  if any(b <= a for a, b in zip(fitted, fitted[1:])):
    raise ValueError(f'fitted must be increasing (BrokenPowerLawFit.breaks), got {fitted}')
  predicted = [float(value) for value in predicted]
  finite = [i for i, value in enumerate(predicted) if math.isfinite(value) and value > 0]
  matched = [math.nan] * len(predicted)
  if len(fitted) == len(finite):
    for i, value in zip(finite, fitted):
      matched[i] = value
    return matched
  pairs = sorted((abs(math.log(fitted[j] / predicted[i])), i, j)
                 for i in finite for j in range(len(fitted)))
  used = set()
  for _, i, j in pairs:
    if math.isnan(matched[i]) and j not in used:
      matched[i] = fitted[j]
      used.add(j)
  return matched


def fit_options(fit_config: Mapping[str, Any], **overrides: Any) -> Dict[str, Any]:
  """The keyword arguments of `fit_broken_power_law` that a config section sets.

  An experiment's `config.fit` mirrors the fit's keywords and adds its own settings (e.g. a
  seed bootstrap); only the fit's keywords are taken, so the section and the function
  cannot drift apart. Lists become tuples (the ranges).

  Args:
    fit_config: a mapping (e.g. an `ml_collections.ConfigDict`).
    **overrides: keywords set on top (e.g. `seed=config.seed`); each must be a keyword of
      `fit_broken_power_law`.

  Returns:
    `{keyword: value}` for `fit_broken_power_law(x, y, **options)`.

  Raises:
    ValueError: an override that is not a keyword of the fit.
  """
  keywords = set(_FIT_DEFAULTS)
  unknown = sorted(set(overrides) - keywords)
  if unknown:
    raise ValueError(f'overrides {unknown} are not keywords of fit_broken_power_law')
  options = {name: fit_config[name] for name in fit_config if name in keywords}
  options.update(overrides)
  return {name: tuple(value) if isinstance(value, list) else value
          for name, value in options.items()}
