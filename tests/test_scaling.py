"""Tests of dv_jax.scaling: Lemma 1 distributions, error curves, asymptotes, break fitting."""

import inspect
import math

import jax
import numpy as np
import pytest
from scipy import integrate
from scipy import special
from scipy import stats

from dv_jax import scaling

# The paper's cell (METHOD.md section 1).
BETA, K, PI, N = 2.0, 70, 0.0625, 10**6


@pytest.fixture(scope='module')
def paper_cell():
  p = scaling.zipf(N, BETA)
  q = scaling.mixture(p, scaling.synthetic_distribution(p, mode='hard', k=K), PI)
  return p, q


def _zipf_reference(num_items, beta):
  weights = np.array([i ** -beta for i in range(1, num_items + 1)], dtype=np.float64)
  return weights / math.fsum(weights)


# ---------------------------------------------------------------------------------------
# Distributions.


@pytest.mark.parametrize('num_items,beta', [(1, 2.0), (7, 1.5), (1000, 3.0)])
def test_zipf_matches_reference(num_items, beta):
  p = scaling.zipf(num_items, beta)
  np.testing.assert_allclose(p, _zipf_reference(num_items, beta), rtol=1e-12)
  assert p.dtype == np.float64
  assert math.isclose(p.sum(), 1.0, abs_tol=1e-12)
  assert np.all(np.diff(p) <= 0)


@pytest.mark.parametrize('num_items,beta,match', [
    (10, 1.0, 'beta'), (10, 0.5, 'beta'), (10, float('nan'), 'beta'), (0, 2.0, 'num_items'),
    (2.5, 2.0, 'num_items'), (True, 2.0, 'num_items'),
    # Before: float() read '2' as 2.0 and None failed as a TypeError naming no argument.
    (10, '2', 'beta must be a finite number'), (10, None, 'beta must be a finite number')])
def test_zipf_rejects(num_items, beta, match):
  with pytest.raises(ValueError, match=match):
    scaling.zipf(num_items, beta)


def test_hard_truncation_keeps_head_proportional():
  p = scaling.zipf(50, 2.0)
  p_syn = scaling.synthetic_distribution(p, mode='hard', k=7)
  reference = np.where(np.arange(50) < 7, p, 0.0)
  np.testing.assert_allclose(p_syn, reference / reference.sum(), rtol=1e-13)


def test_top_p_is_the_smallest_reaching_head():
  p = scaling.zipf(200, 2.0)
  p_syn = scaling.synthetic_distribution(p, mode='top_p', top_p=0.9)
  kept = np.flatnonzero(p_syn)
  size = kept.size
  np.testing.assert_array_equal(kept, np.arange(size))
  assert p[:size].sum() >= 0.9 > p[:size - 1].sum()
  np.testing.assert_allclose(p_syn[:size], p[:size] / p[:size].sum(), rtol=1e-13)
  full = scaling.synthetic_distribution(p, mode='top_p', top_p=1.0)
  np.testing.assert_allclose(full, p, rtol=1e-12)


@pytest.mark.parametrize('beta, num_items, k', [(4.0, 10**6, None), (3.0, 10**5, 20000),
                                                  (3.0, 10**6, 40000),
                                                  (3.0, 10**6, 10000), (2.0, 10**6, 70)])
def test_top_p_keeps_every_item_at_1_and_exactly_k_at_the_mass_of_k(beta, num_items, k):
  # A relative 1e-12 slack dropped every item lighter than it at the cut: top_p = 1 kept
  # 6758 of 10^6 items at beta = 4, and a matched top_p kept 19991 of k = 20000.
  p = scaling.zipf(num_items, beta)
  if k is None:
    full = scaling.synthetic_distribution(p, mode='top_p', top_p=1.0)
    assert np.count_nonzero(full) == num_items
    np.testing.assert_allclose(full, p, rtol=1e-13)
    return
  for top_p in (float(np.cumsum(p)[k - 1]), float(p[:k].sum()), math.fsum(p[:k])):
    p_syn = scaling.synthetic_distribution(p, mode='top_p', top_p=top_p)
    assert np.count_nonzero(p_syn) == k, (top_p, np.count_nonzero(p_syn))


def test_top_p_1_keeps_an_item_below_any_slack():
  p_syn = scaling.synthetic_distribution(np.array([1.0, 1e-20]), mode='top_p', top_p=1.0)
  assert np.count_nonzero(p_syn) == 2


def test_top_p_keeps_most_probable_items_of_unsorted_p():
  p = np.array([0.1, 0.5, 0.05, 0.35])
  p_syn = scaling.synthetic_distribution(p, mode='top_p', top_p=0.8)
  np.testing.assert_allclose(p_syn, [0.0, 0.5 / 0.85, 0.0, 0.35 / 0.85])


@pytest.mark.parametrize('temperature', [0.01, 0.5, 1.0, 2.0])
def test_temperature_powers_ratios(temperature):
  p = scaling.zipf(100, 2.0)
  p_syn = scaling.synthetic_distribution(p, mode='temperature', temperature=temperature)
  assert np.all(np.isfinite(p_syn)) and math.isclose(p_syn.sum(), 1.0, abs_tol=1e-12)
  # p'_i / p'_1 = (p_i / p_1)^(1/tau), compared in log space where p' is a normal float
  # (tiny tau pushes the tail into subnormals and then to 0).
  positive = p_syn > 1e-300
  np.testing.assert_allclose(np.log(p_syn[positive] / p_syn[0]),
                             np.log(p[positive] / p[0]) / temperature, rtol=1e-10, atol=1e-10)
  if temperature == 1.0:
    np.testing.assert_allclose(p_syn, p, rtol=1e-12)


def test_finite_sample_is_an_empirical_distribution():
  p = scaling.zipf(300, 2.0)
  key = jax.random.PRNGKey(3)
  p_syn = scaling.synthetic_distribution(p, mode='finite_sample', num_samples=500, key=key)
  counts = p_syn * 500
  np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
  assert math.isclose(p_syn.sum(), 1.0, abs_tol=1e-12)
  again = scaling.synthetic_distribution(p, mode='finite_sample', num_samples=500, key=key)
  np.testing.assert_array_equal(p_syn, again)
  other = scaling.synthetic_distribution(p, mode='finite_sample', num_samples=500,
                                         key=jax.random.PRNGKey(4))
  assert not np.array_equal(p_syn, other)
  typed = scaling.synthetic_distribution(p, mode='finite_sample', num_samples=500,
                                         key=jax.random.key(3))
  np.testing.assert_array_equal(p_syn, typed)  # same bits, same draws


def test_finite_sample_counts_follow_the_multinomial_of_p():
  # The test above checks that p' is an empirical law; this one that its draws come from p:
  # M p' ~ Multinomial(M, p), so chi-square against M p (and a uniform law is far off).
  p = scaling.zipf(12, 1.5)
  num_samples = 100_000
  p_syn = scaling.synthetic_distribution(p, mode='finite_sample', num_samples=num_samples,
                                         key=jax.random.PRNGKey(7))
  counts = np.round(p_syn * num_samples)
  assert counts.sum() == num_samples
  assert stats.chisquare(counts, num_samples * p).pvalue > 1e-3
  # Few draws: items with M p_i << 1 are mostly missing (P(drawn) = 1 - (1 - p_i)^M).
  few = [scaling.synthetic_distribution(p, mode='finite_sample', num_samples=5,
                                        key=jax.random.PRNGKey(s)) > 0 for s in range(400)]
  seen = np.mean(few, axis=0)
  expected = 1 - (1 - p) ** 5
  bound = 4 * np.sqrt(expected * (1 - expected) / 400)
  assert np.all(np.abs(seen - expected) <= bound), (seen, expected)


@pytest.mark.parametrize('kwargs,match', [
    (dict(mode='hard'), 'k is required'),
    (dict(mode='hard', k=0), 'k must be an integer >= 1'),
    (dict(mode='hard', k=11), 'k must be <='),
    (dict(mode='hard', k=2.5), 'k must be an integer >= 1'),
    (dict(mode='hard', k=3, top_p=0.5), 'top_p is not used'),
    (dict(mode='top_p'), 'top_p is required'),
    (dict(mode='top_p', top_p=0.0), 'top_p must lie'),
    (dict(mode='top_p', top_p=1.5), 'top_p must lie'),
    (dict(mode='temperature'), 'temperature is required'),
    (dict(mode='temperature', temperature=0.0), 'temperature must be'),
    (dict(mode='temperature', temperature=float('inf')), 'temperature must be'),
    # Before: float() read True as top_p = 1 (p came back unchanged) and '0.5' as 0.5.
    (dict(mode='top_p', top_p=True), 'top_p must lie'),
    (dict(mode='temperature', temperature='0.5'), 'temperature must be'),
    (dict(mode='finite_sample', num_samples=10), 'key is required'),
    (dict(mode='finite_sample', num_samples=0, key=jax.random.PRNGKey(0)), 'num_samples'),
    (dict(mode='finite_sample', key=jax.random.PRNGKey(0)), 'num_samples is required'),
    (dict(mode='hard', k=2, key=jax.random.PRNGKey(0)), 'key is not used'),
    (dict(mode='nucleus', top_p=0.5), 'mode must be one of'),
])
def test_synthetic_distribution_rejects(kwargs, match):
  with pytest.raises(ValueError, match=match):
    scaling.synthetic_distribution(scaling.zipf(10, 2.0), **kwargs)


@pytest.mark.parametrize('p,match', [
    (np.array([0.5, np.nan, 0.5]), 'NaN'), (np.array([1.5, -0.5]), 'negative'),
    (np.ones((2, 2)) / 4, 'shape'), (np.array([]), 'empty'), (np.array([0.2, 0.2]), 'sum to 1')])
def test_distribution_validation(p, match):
  with pytest.raises(ValueError, match=match):
    scaling.synthetic_distribution(p, mode='hard', k=1)


def test_mixture_formula_and_errors():
  p = scaling.zipf(20, 2.0)
  p_syn = scaling.synthetic_distribution(p, mode='hard', k=5)
  np.testing.assert_allclose(scaling.mixture(p, p_syn, 0.3), 0.3 * p + 0.7 * p_syn)
  np.testing.assert_allclose(scaling.mixture(p, p_syn, 0.0), p_syn)
  with pytest.raises(ValueError, match='pi'):
    scaling.mixture(p, p_syn, 1.2)
  # Before: float(True) == 1.0 returned p, as if pi were a real share.
  with pytest.raises(ValueError, match=r'pi \(the real fraction\) must lie in'):
    scaling.mixture(p, p_syn, True)
  with pytest.raises(ValueError, match='p_syn must have the shape'):
    scaling.mixture(p, p_syn[:10] / p_syn[:10].sum(), 0.5)


def test_effective_k_per_mode():
  p = scaling.zipf(10_000, 2.0)
  hard = scaling.synthetic_distribution(p, mode='hard', k=40)
  assert scaling.effective_k(p, hard, pi=PI, mode='hard') == 40
  nucleus = scaling.synthetic_distribution(p, mode='top_p', top_p=0.99)
  assert scaling.effective_k(p, nucleus, pi=PI, mode='top_p') == np.count_nonzero(nucleus)
  sharp = scaling.synthetic_distribution(p, mode='temperature', temperature=0.7)
  crossing = np.flatnonzero((1 - PI) * sharp <= PI * p)[0]  # first real-dominated item
  assert scaling.effective_k(p, sharp, pi=PI, mode='temperature') == crossing
  empirical = scaling.synthetic_distribution(p, mode='finite_sample', num_samples=5000,
                                             key=jax.random.PRNGKey(0))
  expected = math.floor((5000 * p[0]) ** 0.5)  # M p_k >= 1 <=> k <= (M p_1)^(1/beta)
  assert scaling.effective_k(p, empirical, pi=PI, mode='finite_sample',
                             num_samples=5000) == expected
  with pytest.raises(ValueError, match='num_samples is required'):
    scaling.effective_k(p, empirical, pi=PI, mode='finite_sample')


@pytest.mark.parametrize('pi', [0.25, 0.6, 0.9])
def test_effective_k_of_a_head_truncation_is_the_head_size_for_every_pi(pi):
  # Before: the synthetic-dominated count (1 - pi) p'_i > pi p_i, which is the head size
  # only for pi < 1 / (1 + H_k) ~ 1/2 and 0 above it (then no breakpoints at all).
  p = scaling.zipf(1000, 2.0)
  hard = scaling.synthetic_distribution(p, mode='hard', k=40)
  assert scaling.effective_k(p, hard, pi=pi, mode='hard') == 40
  nucleus = scaling.synthetic_distribution(p, mode='top_p', top_p=0.95)
  assert scaling.effective_k(p, nucleus, pi=pi, mode='top_p') == 12  # p[:12].sum() >= 0.95
  assert p[:11].sum() < 0.95 <= p[:12].sum()


def test_effective_k_rejects_num_samples_of_another_mode():
  p = scaling.zipf(1000, 2.0)
  hard = scaling.synthetic_distribution(p, mode='hard', k=40)
  # None is what the experiments pass for the other modes; it stays accepted.
  assert scaling.effective_k(p, hard, pi=PI, mode='hard', num_samples=None) == 40
  with pytest.raises(ValueError, match="num_samples is only used by mode='finite_sample'"):
    scaling.effective_k(p, hard, pi=PI, mode='hard', num_samples=5000)


@pytest.mark.parametrize('pi', [0.0, 1.5, float('nan')])
def test_effective_k_refuses_a_pi_outside_its_range(pi):
  # The head modes never use pi, so nothing downstream would notice a bad one.
  p = scaling.zipf(100, 2.0)
  hard = scaling.synthetic_distribution(p, mode='hard', k=10)
  with pytest.raises(ValueError, match=r'pi \(the real fraction\) must lie in \(0, 1\]'):
    scaling.effective_k(p, hard, pi=pi, mode='hard')


# ---------------------------------------------------------------------------------------
# Expected and simulated error.


def test_expected_error_matches_direct_sum():
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(12))
  q = rng.dirichlet(np.ones(12))
  ns = np.array([0, 1, 2, 7, 30, 250])
  reference = [math.fsum(p_i * (1.0 - q_i) ** int(n) for p_i, q_i in zip(p, q)) for n in ns]
  np.testing.assert_allclose(scaling.expected_error(ns, p, q), reference, rtol=1e-12)


def test_expected_error_closed_form_uniform():
  p = np.full(40, 1 / 40)
  ns = np.array([[0.0, 1.0], [17.5, 400.0]])
  out = scaling.expected_error(ns, p, p)
  assert out.shape == (2, 2)
  np.testing.assert_allclose(out, (1 - 1 / 40) ** ns, rtol=1e-12)


def test_expected_error_edge_items_and_precision():
  # q_i = 0: never learned; q_i = 1 (after rounding): learned after one sample; q = 1e-18 at
  # n = 1e17 must give exp(-0.1), where a naive (1 - q)^n gives 1.
  p = np.array([0.25, 0.25, 0.5])
  q = np.array([1.0 - 1e-18, 0.0, 1e-18])
  out = scaling.expected_error(np.array([0.0, 1.0, 1e17]), p, q)
  np.testing.assert_allclose(out, [1.0, 0.25 + 0.5, 0.25 + 0.5 * math.exp(-0.1)], rtol=1e-12)


def test_expected_error_of_a_q_slightly_above_one_is_zero():
  # A q summing to 1 within the 1e-6 tolerance may hold q_i > 1; log1p(-q_i) would be NaN,
  # and such an item is learned from its first sample like q_i = 1.
  np.testing.assert_array_equal(scaling.expected_error([1.0, 5.0], [1.0], [1.0 + 5e-7]),
                                [0.0, 0.0])
  np.testing.assert_allclose(scaling.expected_error(3.0, [0.5, 0.5], [1.0 + 5e-7, 0.0]), 0.5,
                             rtol=1e-15)


def test_expected_error_is_monotone(paper_cell):
  p, q = paper_cell
  errors = scaling.expected_error(np.geomspace(1, 1e9, 40), p, q)
  assert np.all(np.diff(errors) < 0) and errors[0] < 1


@pytest.mark.parametrize('n,reference', [(100, 0.069), (4900, 0.0112), (78400, 0.0072),
                                         (3e6, 0.0016)])
def test_reference_values(paper_cell, n, reference):
  """Spec values for beta=2, k=70, pi=0.0625, N=1e6, agree to their quoted digits."""
  p, q = paper_cell
  exact = float(scaling.expected_error(n, p, q))
  half_unit = 0.5 * 10.0 ** (math.floor(math.log10(reference)) - 1)  # two significant digits
  assert abs(exact - reference) <= half_unit + 1e-15, (exact, reference)


@pytest.mark.parametrize('n,match', [(-1.0, 'non-negative'), (np.nan, 'NaN'),
                                     (np.array([]), 'empty')])
def test_expected_error_rejects(n, match):
  p = scaling.zipf(5, 2.0)
  with pytest.raises(ValueError, match=match):
    scaling.expected_error(n, p, p)
  with pytest.raises(ValueError, match='q must have the shape'):
    scaling.expected_error(1.0, p, scaling.zipf(6, 2.0))


def test_simulation_agrees_with_expectation_small():
  p = scaling.zipf(30, 1.5)
  q = scaling.mixture(p, scaling.synthetic_distribution(p, mode='hard', k=5), 0.2)
  ns = np.array([400, 0, 5, 50])  # unsorted on purpose
  sim = scaling.simulate_error(jax.random.PRNGKey(0), ns, p, q, trials=400)
  exact = scaling.expected_error(ns, p, q)
  assert sim.errors.shape == (400, 4)
  assert sim.mean[1] == 1.0 and sim.stderr[1] == 0.0
  assert np.all(np.abs(sim.mean - exact) <= 4 * sim.stderr + 1e-12), (sim.mean, exact)


def test_simulation_agrees_with_expectation_paper_cell(paper_cell):
  p, q = paper_cell
  ns = np.array([4900, 78400])
  sim = scaling.simulate_error(jax.random.PRNGKey(1), ns, p, q, trials=12)
  exact = scaling.expected_error(ns, p, q)
  assert np.all(np.abs(sim.mean - exact) <= 4 * sim.stderr), (sim.mean, sim.stderr, exact)


def test_simulation_stderr_is_the_sample_std_over_root_trials():
  # Few trials, where the unbiased (T - 1) and the biased (T) variance differ by 4/3.
  p = scaling.zipf(5, 1.5)
  sim = scaling.simulate_error(jax.random.PRNGKey(0), [1, 2, 4], p, p, trials=4)
  deviations = sim.errors - sim.errors.sum(axis=0) / 4
  expected = np.sqrt((deviations ** 2).sum(axis=0) / 3) / 2
  assert np.all(expected > 0)
  np.testing.assert_allclose(sim.stderr, expected, rtol=1e-12)
  np.testing.assert_allclose(sim.mean, sim.errors.sum(axis=0) / 4, rtol=1e-12)


def test_simulation_is_deterministic_and_order_free():
  p = scaling.zipf(50, 2.0)
  first = scaling.simulate_error(jax.random.PRNGKey(5), [10, 100], p, p, trials=3)
  second = scaling.simulate_error(jax.random.PRNGKey(5), [100, 10], p, p, trials=3)
  np.testing.assert_array_equal(first.errors, second.errors[:, ::-1])


def test_simulation_nested_or_independent_samples():
  # Same expectation either way; nested curves never rise, independent ones do, and their
  # errors at two sizes are uncorrelated (nested ones strongly correlated).
  p = scaling.zipf(40, 1.5)
  q = scaling.mixture(p, scaling.synthetic_distribution(p, mode='hard', k=4), 0.3)
  ns = np.array([20, 25, 30])
  exact = scaling.expected_error(ns, p, q)
  correlation = {}
  for nested in (True, False):
    sim = scaling.simulate_error(jax.random.PRNGKey(3), ns, p, q, trials=2000, nested=nested)
    assert np.all(np.abs(sim.mean - exact) <= 4 * sim.stderr), (nested, sim.mean, exact)
    rises = np.any(np.diff(sim.errors, axis=1) > 0, axis=1)
    assert rises.any() != nested
    correlation[nested] = np.corrcoef(sim.errors[:, 0], sim.errors[:, 1])[0, 1]
  assert correlation[True] > 0.5, correlation
  assert abs(correlation[False]) < 4 / np.sqrt(2000), correlation


@pytest.mark.parametrize('kwargs,match', [
    (dict(n=[1.5]), 'integer'), (dict(n=[[1]]), 'shape'), (dict(trials=0), 'trials'),
    (dict(key=None), 'key'), (dict(key=np.zeros(2, np.float32)), 'key'),
    (dict(nested='no'), 'nested')])
def test_simulate_error_rejects(kwargs, match):
  p = scaling.zipf(5, 2.0)
  arguments = dict(key=jax.random.PRNGKey(0), n=[1], trials=2, nested=True) | kwargs
  with pytest.raises(ValueError, match=match):
    scaling.simulate_error(arguments['key'], arguments['n'], p, p, trials=arguments['trials'],
                           nested=arguments['nested'])


# ---------------------------------------------------------------------------------------
# Breakpoints and asymptotes.


def test_paper_breakpoints():
  assert scaling.breakpoints(2.0, 70, 0.0625) == (4900.0, 78400.0)
  with pytest.raises(ValueError, match='pi'):
    scaling.breakpoints(2.0, 70, 0.0)
  with pytest.raises(ValueError, match='k'):
    scaling.breakpoints(2.0, 0, 0.5)
  with pytest.raises(ValueError, match='beta'):
    scaling.breakpoints(1.0, 70, 0.5)
  with pytest.raises(ValueError, match=r'pi \(the real fraction\) must lie in'):
    scaling.breakpoints(2.0, 70, '0.5')  # before: float('0.5') read the string


@pytest.mark.parametrize('beta', [1.5, 2.0, 3.0])
def test_learning_constant_matches_the_integral(beta):
  """C n^-s equals the integral the sum is replaced by (independent quadrature)."""
  zeta = special.zeta(beta)
  for n in (1e3, 1e6):
    integrand = lambda i, n=n: i ** -beta / zeta * math.exp(-n * i ** -beta / zeta)
    frontier = (n / zeta) ** (1 / beta)  # where the integrand peaks
    integral = (integrate.quad(integrand, 0, frontier, limit=200)[0]
                + integrate.quad(integrand, frontier, np.inf, limit=200)[0])
    expected = scaling.learning_constant(beta) * n ** -(1 - 1 / beta)
    assert math.isclose(integral, expected, rel_tol=1e-6), (integral, expected)
  assert math.isclose(scaling.learning_constant(2.0), 0.5 * math.sqrt(math.pi / special.zeta(2)),
                      rel_tol=1e-12)


@pytest.mark.parametrize('beta,k,pi', [(2.0, 70, 0.0625), (3.0, 30, 0.25)])
def test_phase_asymptotes_match_the_exact_curve(beta, k, pi):
  p = scaling.zipf(N, beta)
  q = scaling.mixture(p, scaling.synthetic_distribution(p, mode='hard', k=k), pi)
  crossings = scaling.refined_breakpoints(beta, k, pi)

  def relative(field, n):
    asymptote = getattr(scaling.phase_asymptotes(n, beta=beta, k=k, pi=pi), field)
    return np.abs(asymptote / scaling.expected_error(n, p, q) - 1)

  assert relative('rapid', np.geomspace(100, crossings.n1 / 10, 4)).max() < 0.01
  assert relative('plateau', np.sqrt(crossings.n1 * crossings.n2)).max() < 0.12
  assert relative('tail', np.geomspace(10 * crossings.n2, 1e8, 4)).max() < 0.005
  assert relative('continuum', np.geomspace(100, 1e8, 25)).max() < 0.006
  plateau = scaling.phase_asymptotes(1.0, beta=beta, k=k, pi=pi).plateau
  leading = k ** (1 - beta) / ((beta - 1) * special.zeta(beta))
  assert math.isclose(plateau, leading, rel_tol=beta / k)  # the next order is O(1/k)
  assert math.isclose(plateau, p[k:].sum(), rel_tol=1e-3)  # finite N changes little


def test_refined_breakpoints_are_asymptote_crossings():
  crossings = scaling.refined_breakpoints(BETA, K, PI)
  at_n1 = scaling.phase_asymptotes(crossings.n1, beta=BETA, k=K, pi=PI)
  at_n2 = scaling.phase_asymptotes(crossings.n2, beta=BETA, k=K, pi=PI)
  assert math.isclose(at_n1.rapid, at_n1.plateau, rel_tol=1e-10)
  assert math.isclose(at_n2.tail, at_n2.plateau, rel_tol=1e-10)
  # Leading order: the paper's k^beta times zeta(beta) Gamma(2 - 1/beta)^(beta/(beta-1)).
  factor = special.zeta(BETA) * special.gamma(2 - 1 / BETA) ** (BETA / (BETA - 1))
  assert math.isclose(crossings.n2 / (K ** BETA / PI), factor, rel_tol=2 / K)


def test_temperature_asymptotes_and_crossing():
  p = scaling.zipf(N, 2.0)
  q = scaling.mixture(p, scaling.synthetic_distribution(p, mode='temperature',
                                                        temperature=0.7), PI)
  small, large = np.array([10.0, 30.0, 100.0]), np.array([1e8, 1e9])
  ratio_small = (scaling.temperature_asymptotes(small, beta=2.0, temperature=0.7, pi=PI)
                 .synthetic / scaling.expected_error(small, p, q))
  ratio_large = (scaling.temperature_asymptotes(large, beta=2.0, temperature=0.7, pi=PI)
                 .tail / scaling.expected_error(large, p, q))
  np.testing.assert_allclose(ratio_small, 1.0, atol=0.1)
  np.testing.assert_allclose(ratio_large, 1.0, atol=0.02)
  n2 = scaling.predicted_breakpoints(2.0, PI, mode='temperature', temperature=0.7).n2
  at_n2 = scaling.temperature_asymptotes(n2, beta=2.0, temperature=0.7, pi=PI)
  assert math.isclose(at_n2.synthetic, at_n2.tail, rel_tol=1e-10)
  with pytest.raises(ValueError, match='temperature'):
    scaling.temperature_asymptotes(1.0, beta=2.0, temperature=1.0, pi=PI)
  with pytest.raises(ValueError, match=r'temperature must lie in \(0, 1\)'):
    scaling.temperature_asymptotes(1.0, beta=2.0, temperature='0.7', pi=PI)


def test_temperature_synthetic_asymptote_is_the_synthetic_only_sum():
  # pi = 1/2: the synthetic part draws (1 - pi) n samples, a factor 2^0.35 in the asymptote
  # (at PI = 1/16 the factor is 1.02, within the loose tolerance above).
  pi, temperature = 0.5, 0.7
  p = scaling.zipf(N, 2.0)
  p_syn = scaling.synthetic_distribution(p, mode='temperature', temperature=temperature)
  ns = np.array([1e3, 1e4, 1e5])
  synthetic_only = [math.fsum(p * np.exp(-(1 - pi) * n * p_syn)) for n in ns]
  asymptote = scaling.temperature_asymptotes(ns, beta=2.0, temperature=temperature, pi=pi)
  np.testing.assert_allclose(asymptote.synthetic, synthetic_only, rtol=1e-3)


def test_predicted_breakpoints_per_mode():
  assert scaling.predicted_breakpoints(2.0, PI, mode='hard', k=K) == (
      scaling.refined_breakpoints(2.0, K, PI))
  # Nucleus truncation of a Zipf keeps a head: its prediction is the hard cut's at that k.
  assert scaling.predicted_breakpoints(2.0, PI, mode='top_p', k=K) == (
      scaling.refined_breakpoints(2.0, K, PI))
  assert scaling.predicted_breakpoints(3.0, 0.25, mode='finite_sample',
                                       num_samples=1000) == (1000.0, 4000.0)
  assert math.isnan(scaling.predicted_breakpoints(2.0, PI, mode='temperature',
                                                  temperature=0.5).n1)
  for mode, match in (('top_p', 'k is required'), ('temperature', 'temperature is required'),
                      ('finite_sample', 'num_samples is required'), ('bad', 'mode')):
    with pytest.raises(ValueError, match=match):
      scaling.predicted_breakpoints(2.0, PI, mode=mode)


@pytest.mark.parametrize('mode, own, extra', [
    ('hard', dict(k=K), dict(temperature=0.5, num_samples=3)),
    ('hard', dict(k=K), dict(num_samples=3)),
    ('top_p', dict(k=K), dict(temperature=0.5)),
    ('temperature', dict(temperature=0.5), dict(k=K)),
    ('finite_sample', dict(num_samples=1000), dict(temperature=0.5)),
])
def test_predicted_breakpoints_rejects_another_modes_argument(mode, own, extra):
  wrong = next(iter(extra))
  with pytest.raises(ValueError, match=f'^{wrong} is not used by mode={mode!r}'):
    scaling.predicted_breakpoints(2.0, PI, mode=mode, **own, **extra)
  # The experiments pass None for the arguments of the other modes: still accepted.
  nones = {name: None for name in extra}
  assert scaling.predicted_breakpoints(2.0, PI, mode=mode, **own, **nones) == (
      scaling.predicted_breakpoints(2.0, PI, mode=mode, **own))


# ---------------------------------------------------------------------------------------
# Broken power-law fit.


def _model_reference(x, floor, scale, slope, breaks, changes, widths):
  """The METHOD.md formula written out directly."""
  y = scale * x ** -slope
  for d, c, f in zip(breaks, changes, widths):
    y = y * (1 + (x / d) ** (1 / f)) ** (-c * f)
  return floor + y


def test_broken_power_law_matches_formula():
  x = np.geomspace(1, 1e6, 30)
  params = scaling.BrokenPowerLaw(floor=0.01, scale=2.0, slope=0.5,
                                  breaks=np.array([30.0, 3e4]),
                                  slope_changes=np.array([-0.4, 0.7]),
                                  smoothness=np.array([0.3, 1.2]))
  np.testing.assert_allclose(
      scaling.broken_power_law(x, params),
      _model_reference(x, 0.01, 2.0, 0.5, [30.0, 3e4], [-0.4, 0.7], [0.3, 1.2]), rtol=1e-12)


_GOOD_PARAMS = dict(floor=0.01, scale=2.0, slope=0.5, breaks=np.array([30.0, 3e4]),
                    slope_changes=np.array([-0.4, 0.7]), smoothness=np.array([0.3, 1.2]))


@pytest.mark.parametrize('field,value,match', [
    ('floor', -0.01, 'floor must be >= 0'),  # before: read as "no floor", y silently 0.01 high
    ('scale', 0.0, 'scale > 0'),
    ('scale', np.nan, 'params must be finite'),  # before: NaN everywhere
    ('slope', np.inf, 'params must be finite'),
    ('breaks', np.array([30.0, np.nan]), 'params must be finite'),
    ('slope_changes', np.array([np.nan, 0.7]), 'params must be finite'),
    ('breaks', np.array([3e4, 30.0]), 'increasing'),
    ('smoothness', np.array([0.3, 0.0]), 'smoothness positive'),
    ('smoothness', np.array([0.3]), 'same shape'),
])
def test_broken_power_law_rejects_bad_params(field, value, match):
  params = scaling.BrokenPowerLaw(**(_GOOD_PARAMS | {field: value}))
  with pytest.raises(ValueError, match=match):
    scaling.broken_power_law(np.array([1.0, 10.0]), params)


# Breaks live in log x within [2, 13], neighbours at least a factor 2 apart; theta stores
# each break as the fraction u_j of the slack the earlier breaks left (scaling._pack).
_BREAK_RANGE = scaling._BreakRange(2.0, 13.0, math.log(2.0))


@pytest.mark.parametrize('num_breaks', [1, 2, 3])
@pytest.mark.parametrize('floor', [False, True])
def test_jacobian_matches_finite_differences(floor, num_breaks):
  log_x = np.linspace(0, 15, 20)
  # [u_j, s_j, log f_j] per break; u away from 0 and 1 so every break moves the later ones.
  per_break = np.array([[0.3, -0.3, -0.5], [0.6, 0.6, 0.2], [0.4, 1.1, -1.0]])[:num_breaks]
  theta = np.concatenate([[-6.0] if floor else [], [0.5, 0.4], per_break.ravel()])
  args = (log_x, num_breaks, floor, _BREAK_RANGE)
  analytic = scaling._log_model_jacobian(theta, *args)
  numeric = np.empty_like(analytic)
  for i in range(theta.size):
    step = np.zeros_like(theta)
    step[i] = 1e-6
    numeric[:, i] = (scaling._log_model(theta + step, *args)
                     - scaling._log_model(theta - step, *args)) / 2e-6
  np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('num_breaks', [1, 2, 3])
def test_break_fractions_map_the_box_onto_the_admissible_breaks(num_breaks):
  low, high, gap = _BREAK_RANGE
  rng = np.random.default_rng(num_breaks)
  corners = np.array(list(np.ndindex(*(2,) * num_breaks)), dtype=np.float64)
  for fractions in np.concatenate([rng.uniform(size=(50, num_breaks)), corners]):
    log_d, _ = scaling._decode_breaks(fractions, _BREAK_RANGE)
    assert np.all(log_d >= low - 1e-12) and np.all(log_d <= high + 1e-12), log_d
    assert np.all(np.diff(log_d) >= gap - 1e-12), log_d
    if not np.any(fractions[:-1] == 1.0):  # u_j = 1 leaves no room: later u_j are moot
      np.testing.assert_allclose(scaling._encode_breaks(log_d, _BREAK_RANGE), fractions,
                                 atol=1e-12)
  # Every admissible break set has fractions: an ordered draw with the gaps added back.
  for _ in range(50):
    slack = high - low - (num_breaks - 1) * gap
    log_d = low + np.sort(rng.uniform(0.0, slack, num_breaks)) + gap * np.arange(num_breaks)
    fractions = scaling._encode_breaks(log_d, _BREAK_RANGE)
    assert np.all((fractions >= 0.0) & (fractions <= 1.0))
    np.testing.assert_allclose(scaling._decode_breaks(fractions, _BREAK_RANGE)[0], log_d,
                               rtol=1e-12)
  # The natural parameters round-trip through theta.
  natural = (-5.0, 0.5, 0.4, log_d, rng.normal(size=num_breaks), rng.normal(size=num_breaks))
  theta = scaling._pack(*natural, _BREAK_RANGE)
  for got, want in zip(scaling._split(theta, num_breaks, True, _BREAK_RANGE), natural):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fit_keeps_every_break_inside_the_data():
  # One clear break at 100 and the start of a second bend at 2e4, past the last x (1e4).
  # Before, a later break was a free log-gap from the one before it and landed at 2e4:
  # BIC selected a break the data do not show, and bootstrap refits went further still.
  x = np.geomspace(1, 1e4, 25)
  y = _model_reference(x, 0.0, 1.0, 0.5, [1e2, 2e4], [-0.4, 1.0], [0.3, 0.5])
  for bootstrap in ('residual', 'case'):
    fit = scaling.fit_broken_power_law(x, y, floor=False, num_bootstrap=20, seed=0,
                                       bootstrap=bootstrap)
    # The range the first break was always held to: min_segment_points=3 x values beyond it.
    low, high = x[2] * (1 - 1e-9), x[-3] * (1 + 1e-9)
    assert len(fit.models) == 3
    for model in fit.models:
      assert np.all((model.breaks >= low) & (model.breaks <= high)), model.breaks
      assert np.all(np.diff(model.breaks) >= 2.0 * (1 - 1e-9)), model.breaks
    boot = fit.bootstrap_breaks[np.isfinite(fit.bootstrap_breaks)]
    assert boot.size and np.all((boot >= low) & (boot <= high)), fit.bootstrap_breaks
    assert np.all((fit.break_ci >= low) & (fit.break_ci <= high))
    np.testing.assert_allclose(fit.models[1].breaks, [100.0], rtol=0.25)


def test_bootstrap_residuals_are_centred_and_rescaled_for_the_fits_parameters():
  residuals = np.array([0.3, -0.1, 0.25, -0.05, 0.1, -0.2, 0.15])
  want = (residuals - residuals.sum() / 7) * np.sqrt(7 / (7 - 3))
  np.testing.assert_allclose(scaling.bootstrap_residuals(residuals, 3), want, rtol=1e-12)
  for bad in (-1, 7):
    with pytest.raises(ValueError, match='num_params'):
      scaling.bootstrap_residuals(residuals, bad)
  # p = 0 (nothing fitted) is allowed: centred only, no rescale.
  np.testing.assert_allclose(scaling.bootstrap_residuals(residuals, 0),
                             residuals - residuals.mean(), rtol=1e-12)


def test_residual_bootstrap_resamples_the_rescaled_residuals(monkeypatch):
  # Resampled as they were, the residuals of an 8-parameter fit to 13-25 points are shrunk
  # by (T - p) / T and the breaks' 95% intervals covered the truth in 64-87% of curves.
  x = np.geomspace(1, 1e4, 25)
  noise = 0.05 * np.random.default_rng(0).standard_normal(25)
  y = _model_reference(x, 0.0, 1.0, 0.5, [30.0, 1e3], [-0.45, 0.45], [0.1, 0.1]) * np.exp(noise)
  calls = []
  real = scaling.bootstrap_residuals
  monkeypatch.setattr(scaling, 'bootstrap_residuals',
                      lambda r, p: calls.append((np.array(r), p)) or real(r, p))
  fit = scaling.fit_broken_power_law(x, y, floor=False, num_bootstrap=3, seed=0)
  assert fit.num_breaks == 2 and len(calls) == 1
  raw, num_params = calls[0]
  assert num_params == 8  # intercept, first slope, and (break, slope change, smoothness) x 2
  m = fit.models[2]
  log_fitted = np.log(_model_reference(x, m.floor, m.scale, m.slope, m.breaks, m.slope_changes,
                                       m.smoothness))
  np.testing.assert_allclose(raw, np.log(y) - log_fitted, atol=1e-6)


def test_residual_bootstrap_uses_the_rescaled_residuals(monkeypatch):
  # The replicates are fitted + bootstrap_residuals(...)[index]: with the rescaled residuals
  # stubbed to zero every replicate is the fitted curve itself and refits to the same
  # breaks; a fit that resampled the raw residuals instead would spread them.
  x = np.geomspace(1, 1e4, 25)
  noise = 0.05 * np.random.default_rng(0).standard_normal(25)
  y = _model_reference(x, 0.0, 1.0, 0.5, [30.0, 1e3], [-0.45, 0.45], [0.1, 0.1]) * np.exp(noise)
  monkeypatch.setattr(scaling, 'bootstrap_residuals', lambda r, p: np.zeros(np.shape(r)))
  fit = scaling.fit_broken_power_law(x, y, floor=False, num_bootstrap=3, seed=0)
  assert fit.num_breaks == 2
  np.testing.assert_allclose(fit.bootstrap_breaks, np.tile(fit.breaks, (3, 1)), rtol=1e-4)


def test_match_breaks():
  assert scaling.match_breaks([10.0, 100.0], [8.0, 200.0]) == [10.0, 100.0]
  assert all(math.isnan(v) for v in scaling.match_breaks([], [8.0, 200.0]))
  for fitted in ([300.0], [5.0, 300.0]):  # a NaN prediction (temperature's n1) stays NaN
    got = scaling.match_breaks(fitted, [math.nan, 200.0])
    assert math.isnan(got[0]) and got[1] == 300.0
  # Three fitted breaks for two predictions: each prediction takes its nearest.
  assert scaling.match_breaks([9.0, 50.0, 180.0], [8.0, 200.0]) == [9.0, 180.0]
  # Before: a break of 0 failed as log's 'math domain error', and [60, 4] was paired as
  # given (n1 = 60, n2 = 4) although breaks are increasing.
  with pytest.raises(ValueError, match='fitted must be positive finite breaks'):
    scaling.match_breaks([0.0], [5.0, 50.0])
  with pytest.raises(ValueError, match='fitted must be positive finite breaks'):
    scaling.match_breaks([math.nan, 40.0], [5.0, 50.0])
  with pytest.raises(ValueError, match='fitted must be increasing'):
    scaling.match_breaks([60.0, 4.0], [5.0, 50.0])
  with pytest.raises(ValueError, match='fitted must be increasing'):  # strictly
    scaling.match_breaks([60.0, 60.0], [5.0, 50.0])
  with pytest.raises(ValueError, match='fitted must be positive finite breaks'):
    scaling.match_breaks([40.0, math.inf], [5.0, 50.0])


def test_match_breaks_single_fitted_break_goes_to_the_nearest_prediction():
  got = scaling.match_breaks([150.0], [8.0, 200.0])
  assert math.isnan(got[0]) and got[1] == 150.0
  got = scaling.match_breaks([9.0], [8.0, 200.0])
  assert got[0] == 9.0 and math.isnan(got[1])
  # lemma1_theory once paired greedily in prediction order, so a break 1.2x below n2 was
  # reported as n1 at 10x.
  got = scaling.match_breaks([1000.0], [100.0, 1200.0])
  assert math.isnan(got[0]) and got[1] == 1000.0


def test_segment_slopes_are_the_curves_log_log_slopes_far_from_the_breaks():
  params = scaling.BrokenPowerLaw(floor=0.0, scale=2.0, slope=1.0, breaks=np.array([1e2, 1e6]),
                                  slope_changes=np.array([-0.8, 0.6]),
                                  smoothness=np.array([0.1, 0.1]))
  np.testing.assert_allclose(scaling.segment_slopes(params), [1.0, 0.2, 0.8])
  # The same from the curve itself: minus its log-log slope at n = 1, 1e4 and 1e8.
  for n, expected in ((1.0, 1.0), (1e4, 0.2), (1e8, 0.8)):
    y0, y1 = scaling.broken_power_law(np.array([n, n * 1.01]), params)
    assert -math.log(y1 / y0) / math.log(1.01) == pytest.approx(expected, abs=1e-3)


def test_breaks_on_edge_flags_a_break_held_at_the_end_of_the_range():
  # The curve of test_fit_keeps_every_break_inside_the_data: its second bend starts past
  # the data, so the selected second break is held at the top of the range (censored).
  x = np.geomspace(1, 1e4, 25)
  y = _model_reference(x, 0.0, 1.0, 0.5, [1e2, 2e4], [-0.4, 1.0], [0.3, 0.5])
  fit = scaling.fit_broken_power_law(x, y, floor=False, num_bootstrap=0)
  np.testing.assert_allclose(fit.break_range, (x[2], x[-3]), rtol=1e-12)
  assert fit.num_breaks == 2
  np.testing.assert_array_equal(scaling.breaks_on_edge(fit), [False, True])
  # Both bends inside the data: no break on an edge.
  inside = _model_reference(x, 0.0, 1.0, 0.5, [1e1, 1e3], [-0.4, 1.0], [0.1, 0.1])
  fit = scaling.fit_broken_power_law(x, inside, floor=False, num_bootstrap=0)
  assert fit.num_breaks == 2 and not np.any(scaling.breaks_on_edge(fit))


@pytest.mark.parametrize('min_break_ratio,feasible', [(3.0, 4), (4.0, 3), (20.0, 2)])
def test_fit_marks_too_many_breaks_for_the_range_infeasible(min_break_ratio, feasible):
  # Breaks may lie in [x[2], x[-3]], a factor 20^(16/19) = 12.5 apart: J breaks need
  # min_break_ratio^(J - 1) <= 12.5, and a J beyond that is infeasible (BIC and RSS inf, no
  # model), not an error. `feasible` counts the models J = 0, 1, ... that fit.
  x = np.geomspace(1, 20, 20)
  y = _model_reference(x, 0.0, 1.0, 0.5, [4.0], [0.6], [0.3])
  fit = scaling.fit_broken_power_law(x, y, floor=False, max_breaks=3, num_bootstrap=0,
                                     min_break_ratio=min_break_ratio)
  assert np.all(np.isfinite(fit.bic[:feasible])) and np.all(np.isinf(fit.bic[feasible:]))
  assert np.all(np.isinf(fit.rss[feasible:]))
  assert len(fit.models) == feasible and fit.num_breaks < feasible
  for model in fit.models:
    assert np.all((model.breaks >= x[2] * (1 - 1e-9)) & (model.breaks <= x[-3] * (1 + 1e-9)))


def test_fit_with_a_range_that_just_holds_its_breaks():
  # log x = 0..10: breaks in log x [1, 9], and three breaks e^4 apart fill it exactly (no
  # slack left to place them), which must fit, with the breaks at the range's ends.
  x = np.exp(np.linspace(0.0, 10.0, 21))
  y = _model_reference(x, 0.0, 1.0, 0.5, [np.e ** 3], [0.6], [0.3])
  fit = scaling.fit_broken_power_law(x, y, floor=False, max_breaks=3, num_bootstrap=0,
                                     grid_points=9, min_break_ratio=math.exp(4.0))
  assert np.isfinite(fit.bic[3])
  np.testing.assert_allclose(np.log(fit.models[3].breaks), [1.0, 5.0, 9.0], atol=1e-9)
  # A slack of round-off below 0 places the breaks as a slack of 0 does, still ordered.
  tight = scaling._BreakRange(1.0, 9.0, 4.0 + 1e-15)
  assert tight.slack(3) < 0
  log_d, jac = scaling._decode_breaks(np.array([0.3, 0.5, 0.7]), tight)
  np.testing.assert_allclose(log_d, [1.0, 5.0, 9.0], atol=1e-12)
  assert np.all(np.diff(log_d) > 0) and np.all(jac == 0.0)


@pytest.mark.parametrize('true_breaks,changes', [((1e3, 1e5), (-0.45, 0.45)),
                                                 ((3e2,), (0.6,))])
def test_fit_recovers_known_breaks(true_breaks, changes):
  rng = np.random.default_rng(0)
  x = np.geomspace(1, 1e8, 60)
  y = _model_reference(x, 0.0, 1.0, 0.5, true_breaks, changes, [0.3] * len(true_breaks))
  y = y * np.exp(0.01 * rng.standard_normal(x.size))  # 1% noise
  fit = scaling.fit_broken_power_law(x, y, floor=False, num_bootstrap=30, seed=1)
  assert fit.num_breaks == len(true_breaks)
  np.testing.assert_allclose(fit.breaks, true_breaks, rtol=0.15)
  np.testing.assert_allclose(fit.params.slope_changes, changes, atol=0.05)
  assert fit.break_ci.shape == (len(true_breaks), 2)
  assert np.all(fit.break_ci[:, 0] <= fit.breaks) and np.all(fit.breaks <= fit.break_ci[:, 1])
  # The interval is about the truth too (allowing the 15% the point estimate may miss).
  assert np.all(fit.break_ci[:, 0] / 1.15 <= true_breaks)
  assert np.all(np.asarray(true_breaks) <= fit.break_ci[:, 1] * 1.15)
  np.testing.assert_allclose(scaling.broken_power_law(x, fit.params), y, rtol=0.05)


def test_fit_selects_no_break_for_a_power_law_and_recovers_a_floor():
  rng = np.random.default_rng(2)
  x = np.geomspace(10, 1e7, 40)
  y = 3.0 * x ** -0.4 * np.exp(0.01 * rng.standard_normal(x.size))
  fit = scaling.fit_broken_power_law(x, y, floor=False, num_bootstrap=0)
  assert fit.num_breaks == 0 and fit.breaks.shape == (0,) and fit.break_ci.shape == (0, 2)
  assert math.isclose(fit.params.slope, 0.4, abs_tol=0.01)
  floored = scaling.fit_broken_power_law(x, y + 0.002, floor=True, num_bootstrap=0,
                                         max_breaks=1)
  assert math.isclose(floored.params.floor, 0.002, rel_tol=0.15)
  assert floored.num_breaks == 0


@pytest.mark.parametrize('beta,k', [(2.0, 70), (3.0, 30)])
def test_fit_finds_lemma1_breaks(beta, k):
  p = scaling.zipf(N, beta)
  q = scaling.mixture(p, scaling.synthetic_distribution(p, mode='hard', k=k), PI)
  ns = np.geomspace(10, 1e9, 49)
  fit = scaling.fit_broken_power_law(ns, scaling.expected_error(ns, p, q), floor=False,
                                     num_bootstrap=10)
  assert fit.num_breaks == 2
  ratios = fit.breaks / np.asarray(scaling.breakpoints(beta, k, PI))
  assert np.all((ratios > 0.5) & (ratios < 2.0)), ratios
  slopes = fit.params.slope + np.concatenate([[0], np.cumsum(fit.params.slope_changes)])
  s = 1 - 1 / beta
  np.testing.assert_allclose(slopes, [s, 0.0, s], atol=0.1)  # rapid, plateau, tail


def test_fit_of_a_rising_curve_needs_a_signed_slope_range():
  x = np.geomspace(1, 1e6, 40)
  y = _model_reference(x, 0.0, 1.0, -0.5, [1e3], [0.8], [0.3])  # rises, then falls
  fit = scaling.fit_broken_power_law(x, y, max_breaks=1, num_bootstrap=0,
                                     slope_range=(-5.0, 5.0), floor=False)
  assert fit.num_breaks == 1
  np.testing.assert_allclose(fit.breaks, [1e3], rtol=0.05)
  np.testing.assert_allclose([fit.params.slope, fit.params.slope_changes[0]], [-0.5, 0.8],
                             atol=0.02)
  monotone = scaling.fit_broken_power_law(x, y, max_breaks=1, num_bootstrap=0, floor=False)
  assert monotone.params.slope >= 0.0  # the default range cannot follow the rise
  assert monotone.rss.min() > 100 * fit.rss.min()


def test_fit_bootstrap_is_seeded():
  x = np.geomspace(1, 1e6, 30)
  y = _model_reference(x, 0.0, 1.0, 0.5, [1e3], [0.5], [0.3])
  y = y * np.exp(0.02 * np.random.default_rng(0).standard_normal(x.size))
  runs = [scaling.fit_broken_power_law(x, y, max_breaks=1, num_bootstrap=8, seed=s,
                                       bootstrap='case') for s in (7, 7, 8)]
  np.testing.assert_array_equal(runs[0].bootstrap_breaks, runs[1].bootstrap_breaks)
  assert not np.array_equal(runs[0].bootstrap_breaks, runs[2].bootstrap_breaks)


@pytest.mark.parametrize('floor', [False, True])
def test_fit_bic_and_break_ci_follow_their_formulas(floor):
  # sigma_floor = 0.05 is above the 2% noise: it binds for the models with a break and not
  # for the no-break one, so both sides of the max are exercised. The curve steepens, which
  # a floor cannot mimic.
  x = np.geomspace(10, 1e5, 40)
  y = _model_reference(x, 0.0, 1.0, 0.5, [1e3], [0.6], [0.3])
  y = y * np.exp(0.02 * np.random.default_rng(1).standard_normal(x.size))
  sigma_floor = 0.05
  fit = scaling.fit_broken_power_law(x, y, floor=floor, max_breaks=2, num_bootstrap=20,
                                     sigma_floor=sigma_floor)
  # [a,] b, c0, then d_j, c_j, f_j per break.
  num_params = (1 if floor else 0) + 2 + 3 * np.arange(3)
  variance = np.maximum(fit.rss / x.size, sigma_floor ** 2)
  assert variance[0] > sigma_floor ** 2 and variance[1] == sigma_floor ** 2
  np.testing.assert_allclose(
      fit.bic, x.size * np.log(variance) + num_params * math.log(x.size), rtol=1e-12)
  assert fit.num_breaks == 1
  # The 95% interval leaves 2.5% in each tail.
  boot = fit.bootstrap_breaks
  assert boot.shape == (20, 1) and np.unique(boot[np.isfinite(boot)]).size > 10
  np.testing.assert_allclose(fit.break_ci, np.nanpercentile(boot, [2.5, 97.5], axis=0).T,
                             rtol=1e-12)


@pytest.mark.parametrize('kwargs,match', [
    (dict(x=-np.ones(20)), 'x must be positive'), (dict(y=np.zeros(20)), 'y must be positive'),
    (dict(y=np.ones(19)), 'shape'), (dict(x=np.ones((20, 1))), 'shape'),
    (dict(max_breaks=4), 'max_breaks'), (dict(bootstrap='wild'), 'bootstrap'),
    (dict(ci_level=1.0), 'ci_level'), (dict(num_bootstrap=-1), 'num_bootstrap'),
    (dict(min_break_ratio=1.0), 'min_break_ratio'), (dict(sigma_floor=0.0), 'sigma_floor'),
    (dict(slope_range=(1.0, 0.0)), 'slope_range'),
    (dict(initial_smoothness=5.0), 'initial_smoothness must lie in smoothness_range'),
    (dict(initial_smoothness=0.5, smoothness_range=(1.0, 2.0)), 'initial_smoothness must lie'),
    (dict(x=np.geomspace(1, 10, 8), y=np.ones(8)), 'points')])
def test_fit_rejects(kwargs, match):
  arguments = dict(x=np.geomspace(1, 1e4, 20), y=np.geomspace(1, 1e-2, 20)) | kwargs
  x, y = arguments.pop('x'), arguments.pop('y')
  with pytest.raises(ValueError, match=match):
    scaling.fit_broken_power_law(x, y, **arguments)


def test_fit_needs_more_points_than_parameters():
  # The largest model has 1 + 2 + 3 * max_breaks parameters with a floor: as many points as
  # parameters fit them exactly and leave BIC no residual to judge by.
  x = np.geomspace(1, 1e3, 12)
  with pytest.raises(ValueError, match='x has 12 points; a model with 3 breaks has 12 '
                                       'parameters and needs more points'):
    scaling.fit_broken_power_law(x, x ** -0.5, max_breaks=3, num_bootstrap=0,
                                 min_segment_points=1, grid_points=4, min_break_ratio=1.5)
  x = np.geomspace(1, 1e3, 4)
  with pytest.raises(ValueError, match='x has 3 points; a model with 0 breaks has 3'):
    scaling.fit_broken_power_law(x[:3], x[:3] ** -0.5, max_breaks=0, min_segment_points=1)
  fit = scaling.fit_broken_power_law(x, 2.0 * x ** -0.5, max_breaks=0, min_segment_points=1)
  assert fit.num_breaks == 0 and math.isclose(fit.params.slope, 0.5, rel_tol=1e-3)


def test_fit_needs_min_segment_points_distinct_x_on_each_side():
  # Repeated x values do not pin a segment: 20 points at 5 distinct x cannot hold 3 on each
  # side of a break, 6 distinct x can.
  for distinct, ok in ((5, False), (6, True)):
    x = np.tile(np.geomspace(1, 1e3, distinct), 4)[:20]
    if ok:
      assert scaling.fit_broken_power_law(x, x ** -0.5, max_breaks=0).num_breaks == 0
    else:
      with pytest.raises(ValueError, match=r'x needs at least 6 distinct values '
                                           r'\(min_segment_points=3 on each side\)'):
        scaling.fit_broken_power_law(x, x ** -0.5, max_breaks=1, num_bootstrap=0)


def test_fit_options_takes_only_the_fits_keywords():
  section = {'max_breaks': 1, 'smoothness_range': [0.1, 2.0], 'seed_bootstrap': 50,
             'num_bootstrap': 0}
  options = scaling.fit_options(section, seed=3)
  assert options == {'max_breaks': 1, 'smoothness_range': (0.1, 2.0), 'num_bootstrap': 0,
                     'seed': 3}
  x = np.geomspace(1.0, 1e4, 20)
  fit = scaling.fit_broken_power_law(x, 2.0 * x ** -0.5, **options)
  assert fit.num_breaks == 0
  with pytest.raises(ValueError, match='seed_bootstrap'):
    scaling.fit_options({}, seed_bootstrap=3)


# ---------------------------------------------------------------------------------------
# Inputs that used to be misread without an error (an audit's fixes).


def test_simulate_error_refuses_counts_beyond_int64():
  # Before: n = 2^63 wrapped to a negative int64 count, nothing was drawn and the error
  # read 1.0 where E(n) is 0.
  p = scaling.zipf(5, 2.0)
  assert scaling.simulate_error(jax.random.PRNGKey(0), [2**62], p, p, trials=1).mean[0] == 0.0
  with pytest.raises(ValueError, match=r'n must be < 2\^63'):
    scaling.simulate_error(jax.random.PRNGKey(0), [2**63], p, p, trials=1)


@pytest.mark.parametrize('batch', [jax.random.split(jax.random.PRNGKey(0), 3),
                                   jax.random.split(jax.random.key(0), 3)])
def test_a_batch_of_keys_is_refused(batch):
  # Before: the [3, 2] words were flattened into one seed and the draws went ahead.
  p = scaling.zipf(5, 2.0)
  with pytest.raises(ValueError, match='key must be a single'):
    scaling.simulate_error(batch, [3], p, p, trials=1)
  with pytest.raises(ValueError, match='key must be a single'):
    scaling.synthetic_distribution(p, mode='finite_sample', num_samples=5, key=batch)


def test_complex_inputs_are_refused():
  # Before: the float64 cast dropped the imaginary part with only a ComplexWarning.
  p = scaling.zipf(4, 2.0)
  with pytest.raises(ValueError, match='n must be real'):
    scaling.expected_error(np.array([3 + 2j]), p, p)
  with pytest.raises(ValueError, match='q must be real'):
    scaling.expected_error(3.0, p, p + 0j)
  x = np.geomspace(1, 1e4, 20)
  with pytest.raises(ValueError, match='x must be real'):
    scaling.fit_broken_power_law(x + 0j, x ** -0.5, num_bootstrap=0)
  with pytest.raises(ValueError, match='n must be an array of numbers'):
    scaling.expected_error('ten', p, p)


@pytest.mark.parametrize('kwargs,match', [
    (dict(floor='False'), 'floor must be True or False'),  # before: a floor was fitted
    # seed=None drew a random bootstrap before.
    (dict(seed=None), r'seed must be an integer in \[0, 4294967295\]'),
    (dict(seed=-1), 'seed must be'), (dict(seed=1.5), 'seed must be'),
    (dict(seed=True), 'seed must be'),
    (dict(seed=2**32), 'seed must be'),  # PRNGKey(2**32) is seed 0's key
    (dict(smoothness_range=(0.1, 1.0, 2.0)), 'smoothness_range must be a pair'),
    (dict(smoothness_range=0.5), 'smoothness_range must be a pair'),
    (dict(slope_range=('0', '5')), 'slope_range must be a number'),
    (dict(ci_level='0.9'), 'ci_level must be a number'),
    (dict(initial_smoothness=None), 'initial_smoothness must be a number'),
    (dict(grid_points=1), 'grid_points must be >= 2'),  # before: SciPy's bounds message
    # Before: a TypeError from math.isfinite that named no option.
    (dict(min_break_ratio=None), 'min_break_ratio must be a number'),
    (dict(sigma_floor='1e-3'), 'sigma_floor must be a number'),
])
def test_fit_rejects_options_it_used_to_misread(kwargs, match):
  x = np.geomspace(1, 1e4, 20)
  with pytest.raises(ValueError, match=match):
    scaling.fit_broken_power_law(x, x ** -0.5, max_breaks=1, num_bootstrap=2, **kwargs)
  # The same check without data, as the experiments run it on their config before training.
  with pytest.raises(ValueError, match=match):
    scaling.check_fit_options(max_breaks=1, num_bootstrap=2, **kwargs)


def test_check_fit_options_fills_the_fits_defaults_and_refuses_unknown_options():
  options = scaling.check_fit_options(max_breaks=np.int64(1), slope_range=[0, 5])
  assert options['max_breaks'] == 1 and type(options['max_breaks']) is int
  assert options['slope_range'] == (0.0, 5.0) and options['grid_points'] == 25
  assert set(options) == set(inspect.signature(scaling.fit_broken_power_law).parameters) - {
      'x', 'y'}
  with pytest.raises(ValueError, match=r"\['seed_bootstrap'\] are not options"):
    scaling.check_fit_options(seed_bootstrap=3)


def test_fit_accepts_numpy_scalars_for_its_options():
  x = np.geomspace(1, 1e6, 30)
  y = _model_reference(x, 0.0, 1.0, 0.5, [1e3], [0.5], [0.3])
  y = y * np.exp(0.02 * np.random.default_rng(0).standard_normal(x.size))
  plain = scaling.fit_broken_power_law(x, y, max_breaks=1, num_bootstrap=4, seed=7,
                                       floor=False, ci_level=0.9, slope_range=[0, 10])
  numpy = scaling.fit_broken_power_law(
      x, y, max_breaks=1, num_bootstrap=4, seed=np.int64(7), floor=np.bool_(False),
      ci_level=np.float32(0.9), slope_range=(np.float64(0), 10), grid_points=np.int64(25))
  np.testing.assert_array_equal(plain.bootstrap_breaks, numpy.bootstrap_breaks)
  np.testing.assert_allclose(plain.break_ci, numpy.break_ci, rtol=1e-7)
  # max_breaks=0 needs no break grid: a single candidate stays allowed.
  assert scaling.fit_broken_power_law(x, y, max_breaks=0, grid_points=1).num_breaks == 0


def test_effective_k_refuses_a_p_syn_of_another_shape():
  # Before: the cut was read off p_syn alone, so a temperature p_syn (positive everywhere)
  # passed as 'hard' gave k = N, and finite_sample never looked at p_syn at all.
  p = scaling.zipf(2000, 2.0)
  sharp = scaling.synthetic_distribution(p, mode='temperature', temperature=0.7)
  for mode in ('hard', 'top_p'):
    with pytest.raises(ValueError, match=f"p_syn is not a mode='{mode}' truncation"):
      scaling.effective_k(p, sharp, pi=PI, mode=mode)
  tail = np.zeros_like(p)
  tail[-10:] = p[-10:] / p[-10:].sum()  # a renormalised set, but of the rarest items
  with pytest.raises(ValueError, match="mode='top_p' truncation"):
    scaling.effective_k(p, tail, pi=PI, mode='top_p')
  with pytest.raises(ValueError, match="mode='hard' truncation"):
    scaling.effective_k(p, tail, pi=PI, mode='hard')
  empirical = scaling.synthetic_distribution(p, mode='finite_sample', num_samples=500,
                                             key=jax.random.PRNGKey(0))
  assert scaling.effective_k(p, empirical, pi=PI, mode='finite_sample', num_samples=500) == (
      math.floor((500 * p[0]) ** 0.5))
  # Counts that do not belong to p_syn (a multiple of 500, e.g. 5000, cannot be told
  # apart: 10 c_i / 5000 is an empirical distribution of 5000 draws too).
  for num_samples in (499, 250):
    with pytest.raises(ValueError, match=f'num_samples={num_samples} draws'):
      scaling.effective_k(p, empirical, pi=PI, mode='finite_sample', num_samples=num_samples)
  with pytest.raises(ValueError, match='empirical distribution'):
    scaling.effective_k(p, sharp, pi=PI, mode='finite_sample', num_samples=500)
  # Head truncations of an unsorted p (top_p keeps the most probable items) stay accepted.
  shuffled = p[np.random.default_rng(0).permutation(p.size)]
  nucleus = scaling.synthetic_distribution(shuffled, mode='top_p', top_p=0.9)
  assert scaling.effective_k(shuffled, nucleus, pi=PI, mode='top_p') == np.count_nonzero(
      nucleus)
