"""Tests of dv_jax.valuation and dv_jax.features.

Tiny data (6 features, 3 classes, a handful of examples per contributor) so that every
term can be recomputed independently in float64 NumPy: the cross-entropy, the MK-MMD from
its definition, the NTK from `jax.jacrev` per example contracted by hand, the composition
from its closed form. Coalition kernels are checked against a from-scratch computation,
leave-one-out and Shapley against brute-force enumeration, the NNLS fit for being
non-negative and out of sample, and every bad input for naming the contributor.
"""

import collections
import functools
import itertools
import logging
import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dv_jax import bound
from dv_jax import features as features_lib
from dv_jax import ntk as ntk_lib
from dv_jax import valuation
from dv_jax.data.contributors import Contributor
from dv_jax.data.contributors import fold_in_name
from dv_jax.data.contributors import Split
from dv_jax.models.cnn import SmallCNN
from dv_jax.models.common import bind_apply
from dv_jax.models.common import init_model
from dv_jax.models.mlp import MLP

NUM_CLASSES = 3
DIM = 6


def _data(key, n, shift=0.0):
  kx, ky = jax.random.split(key)
  x = np.asarray(jax.random.normal(kx, (n, DIM)), np.float32) + np.float32(shift)
  y = np.asarray(jax.random.randint(ky, (n,), 0, NUM_CLASSES), np.int32)
  return x, y


def _contributors():
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  xr0, yr0 = _data(keys[0], 7)
  xs0, ys0 = _data(keys[1], 5, shift=0.5)
  xr1, yr1 = _data(keys[2], 9)
  xs2, ys2 = _data(keys[3], 6, shift=-0.3)
  return [
      Contributor('mixed', xr0, yr0, xs0, ys0),
      Contributor('real_only', xr1, yr1, None, None),
      Contributor('synthetic_only', np.zeros((0, DIM), np.float32), np.zeros((0,), np.int32),
                  xs2, ys2),
  ]


@pytest.fixture(scope='module')
def setup():
  model = MLP(hidden_sizes=(5,), num_classes=NUM_CLASSES)
  tx, ty = _data(jax.random.PRNGKey(42), 10)
  variables = init_model(model, jax.random.PRNGKey(1), tx)
  apply_fn, params = bind_apply(model, variables)
  target = Split(tx, ty, np.zeros(10, bool))
  return dict(model=model, variables=variables, apply_fn=apply_fn, params=params,
              target=target, contributors=_contributors())


def _config(**overrides):
  config = valuation.default_config()
  for field, value in overrides.items():
    section, name = field.split('__')
    config[section][name] = value
  return config


# ----------------------------------------------------------------------------------------
# Independent float64 references.


def _np_logits(apply_fn, params, x):
  return np.asarray(apply_fn(params, jnp.asarray(x)), np.float64)


def _np_ce(logits, y):
  z = logits - logits.max(axis=1, keepdims=True)
  logz = np.log(np.exp(z).sum(axis=1)) + logits.max(axis=1)
  return logz - logits[np.arange(len(y)), y]


def _np_mmd(x, t, s_j, x_labels=None, t_labels=None):
  """Biased MK-MMD from the definition, float64."""
  x = np.asarray(x, np.float64)
  t = np.asarray(t, np.float64)

  def k(a, b, la, lb):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    kern = np.mean([np.exp(-d2 / (2 * s)) for s in s_j], axis=0)
    if la is not None:
      kern = kern * (la[:, None] == lb[None, :])
    return kern.mean()

  mmd2 = k(x, x, x_labels, x_labels) + k(t, t, t_labels, t_labels) - 2 * k(x, t, x_labels,
                                                                          t_labels)
  return math.sqrt(max(mmd2, 0.0))


def _np_bandwidths(t, num_kernels=5):
  t = np.asarray(t, np.float64)
  d2 = ((t[:, None, :] - t[None, :, :]) ** 2).sum(-1)
  s = np.median(d2[np.triu_indices(t.shape[0], 1)])
  return s * 2.0 ** (np.arange(num_kernels) - num_kernels // 2)


def _np_jacobian(apply_fn, params, x):
  """`[n, c, p]` per-example Jacobians of the logits, by jacrev one example at a time."""
  rows = []
  for x_i in x:
    jac = jax.jacrev(lambda p, x_i=x_i: apply_fn(p, jnp.asarray(x_i)[None])[0])(params)
    leaves = jax.tree_util.tree_leaves(jac)
    rows.append(np.concatenate([np.asarray(l, np.float64).reshape(NUM_CLASSES, -1)
                                for l in leaves], axis=1))
  return np.stack(rows)


def _np_ntk_term(apply_fn, params, x, y, *, residual, eps=1e-4):
  jac = _np_jacobian(apply_fn, params, x)
  logits = _np_logits(apply_fn, params, x)
  n = x.shape[0]
  if residual == 'true_class':
    g = jac[np.arange(n), y]
    theta = g @ g.T
    r = (1.0 - logits[np.arange(n), y])[:, None]
  else:
    theta = np.einsum('acp,bcp->ab', jac, jac) / NUM_CLASSES
    r = np.eye(NUM_CLASSES)[y] - logits
  lam = eps * np.trace(theta) / n
  q = np.sum(r * np.linalg.solve(theta + lam * np.eye(n), r))
  return math.sqrt(q / n)


def _parts(c):
  xs, ys = [], []
  for x, y in ((c.x_real, c.y_real), (c.x_synthetic, c.y_synthetic)):
    if x is not None and np.shape(x)[0]:
      xs.append(np.asarray(x))
      ys.append(np.asarray(y))
  return np.concatenate(xs), np.concatenate(ys)


# ----------------------------------------------------------------------------------------
# End to end and the four terms.


def test_value_contributors_end_to_end(setup):
  result = valuation.value_contributors(setup['contributors'], setup['target'],
                                        apply_fn=setup['apply_fn'], params=setup['params'])
  k = len(setup['contributors'])
  assert result.names == ('mixed', 'real_only', 'synthetic_only')
  assert result.values.shape == (k,) and np.all(np.isfinite(result.values))
  assert result.terms.raw.shape == (k, 4) and result.terms.standardized.shape == (k, 4)
  np.testing.assert_allclose(np.asarray(result.terms.standardized).mean(axis=0), 0, atol=1e-6)
  np.testing.assert_allclose(result.values, -np.asarray(result.terms.standardized).sum(1),
                             rtol=1e-6, atol=1e-9)
  values = np.asarray(result.values)
  assert list(np.asarray(result.ranking)) == list(np.argsort(-values, kind='stable'))
  for stage in ('forward', 'features', 'ntk_gradients', 'terms', 'total'):
    assert result.seconds[stage] >= 0
  assert result.fit is None


@pytest.mark.parametrize('residual', ['true_class', 'one_hot'])
@pytest.mark.parametrize('label_aware', [False, True])
@pytest.mark.parametrize('num_kernels', [5, 1])
def test_terms_match_numpy_float64(setup, residual, label_aware, num_kernels):
  """All four terms of the 'mixed' contributor against independent float64 references."""
  config = _config(ntk__residual=residual, mmd__label_aware=label_aware,
                   mmd__num_kernels=num_kernels)
  result = valuation.value_contributors(setup['contributors'], setup['target'],
                                        apply_fn=setup['apply_fn'], params=setup['params'],
                                        config=config)
  c = setup['contributors'][0]
  apply_fn, params = setup['apply_fn'], setup['params']
  n1, n2 = c.num_real, c.num_synthetic
  n, pi = n1 + n2, n1 / (n1 + n2)
  loss_real = _np_ce(_np_logits(apply_fn, params, c.x_real), np.asarray(c.y_real))
  loss_syn = _np_ce(_np_logits(apply_fn, params, c.x_synthetic), np.asarray(c.y_synthetic))
  empirical = pi * loss_real.mean() + (1 - pi) * loss_syn.mean()
  # Raw features standardised with T's mean / std; bandwidths from T's median heuristic.
  tx = np.asarray(setup['target'].x, np.float64)
  mean, std = tx.mean(0), tx.std(0)
  t_std = (tx - mean) / std
  s_j = _np_bandwidths(t_std, num_kernels)
  ty = np.asarray(setup['target'].y)
  labels = label_aware
  mmd_real = _np_mmd((np.asarray(c.x_real) - mean) / std, t_std, s_j,
                     np.asarray(c.y_real) if labels else None, ty if labels else None)
  mmd_syn = _np_mmd((np.asarray(c.x_synthetic) - mean) / std, t_std, s_j,
                    np.asarray(c.y_synthetic) if labels else None, ty if labels else None)
  discrepancy = pi * mmd_real + (1 - pi) * mmd_syn
  x, y = _parts(c)
  ntk_value = _np_ntk_term(apply_fn, params, x, y, residual=residual)
  composition = math.sqrt(max(pi, 1 - pi)) / n
  np.testing.assert_allclose(np.asarray(result.terms.raw)[0],
                             [empirical, discrepancy, ntk_value, composition], rtol=2e-4)


def _np_raw_terms(setup, *, residual, mixture=False):
  """`[K, 4]` float64 terms of every contributor, from the references above."""
  apply_fn, params = setup['apply_fn'], setup['params']
  tx = np.asarray(setup['target'].x, np.float64)
  mean, std = tx.mean(0), tx.std(0)
  t_std = (tx - mean) / std
  s_j = _np_bandwidths(t_std)
  rows = []
  for c in setup['contributors']:
    n1, n2 = c.num_real, c.num_synthetic
    n, pi = n1 + n2, n1 / (n1 + n2)
    parts = [(np.asarray(x), np.asarray(y), w) for x, y, w in
             ((c.x_real, c.y_real, pi), (c.x_synthetic, c.y_synthetic, 1 - pi))
             if x is not None and np.shape(x)[0]]
    empirical = sum(w * _np_ce(_np_logits(apply_fn, params, x), y).mean() for x, y, w in parts)
    x, y = _parts(c)
    if mixture:
      discrepancy = _np_mmd((x - mean) / std, t_std, s_j)
    else:
      discrepancy = sum(w * _np_mmd((xp - mean) / std, t_std, s_j) for xp, _, w in parts)
    rows.append([empirical, discrepancy,
                 _np_ntk_term(apply_fn, params, x, y, residual=residual),
                 math.sqrt(max(pi, 1 - pi)) / n])
  return np.array(rows)


@pytest.mark.parametrize('preset,drop', [
    ('paper', None), ('paper', 'empirical_loss'), ('paper', 'discrepancy'),
    ('paper', 'ntk'), ('paper', 'composition'), ('recommended', None), ('proposed', None)])
def test_values_of_presets_and_ablations_match_numpy(setup, preset, drop):
  """`v = -sum` of the z-scores of the terms in `bound.terms` only, larger = more valuable.

  The whole value vector and ranking of a preset (or of the paper defaults with one term
  dropped, as the ablation runs them) against float64 NumPy: terms from the references
  above, z-scored across the contributors with the population std.
  """
  config = valuation.preset_config(preset)
  if drop is not None:
    config.bound.terms = tuple(t for t in valuation.TERM_NAMES if t != drop)
  result = valuation.value_contributors(setup['contributors'], setup['target'],
                                        apply_fn=setup['apply_fn'], params=setup['params'],
                                        config=config)
  raw = _np_raw_terms(setup, residual=config.ntk.residual,
                      mixture=config.mmd.discrepancy == 'mixture')
  np.testing.assert_allclose(np.asarray(result.terms.raw), raw, rtol=2e-4)
  z = (raw - raw.mean(0)) / raw.std(0)
  keep = [t in config.bound.terms for t in valuation.TERM_NAMES]
  expected = -z[:, keep].sum(axis=1)
  np.testing.assert_allclose(np.asarray(result.values), expected, rtol=1e-3, atol=1e-3)
  assert list(np.asarray(result.ranking)) == list(np.argsort(-expected, kind='stable'))


def test_mixture_discrepancy_is_the_mmd_of_the_union(setup):
  """mmd.discrepancy='mixture': MMD(T, S1 ∪ S2), never above Eq. 8's weighted parts."""
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])
  parts = valuation.value_contributors(setup['contributors'], setup['target'], **kwargs)
  mixture = valuation.value_contributors(setup['contributors'], setup['target'], **kwargs,
                                         config=_config(mmd__discrepancy='mixture'))
  tx = np.asarray(setup['target'].x, np.float64)
  mean, std = tx.mean(0), tx.std(0)
  t_std = (tx - mean) / std
  x, _ = _parts(setup['contributors'][0])
  expected = _np_mmd((x - mean) / std, t_std, _np_bandwidths(t_std))
  np.testing.assert_allclose(np.asarray(mixture.terms.raw)[0, 1], expected, rtol=2e-4)
  # Triangle inequality of the (biased) mean embeddings; equal for single-part contributors.
  d_mix = np.asarray(mixture.terms.raw)[:, 1]
  d_parts = np.asarray(parts.terms.raw)[:, 1]
  assert d_mix[0] < d_parts[0]
  np.testing.assert_allclose(d_mix[1:], d_parts[1:], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(mixture.terms.raw)[:, [0, 2, 3]],
                             np.asarray(parts.terms.raw)[:, [0, 2, 3]], rtol=1e-6)


def test_empty_part_weighs_zero(setup):
  result = valuation.value_contributors(setup['contributors'], setup['target'],
                                        apply_fn=setup['apply_fn'], params=setup['params'])
  c = setup['contributors'][1]  # real only: pi = 1
  loss = _np_ce(_np_logits(setup['apply_fn'], setup['params'], c.x_real), np.asarray(c.y_real))
  raw = np.asarray(result.terms.raw)
  np.testing.assert_allclose(raw[1, 0], loss.mean(), rtol=1e-5)
  np.testing.assert_allclose(raw[1, 3], 1.0 / c.size, rtol=1e-6)
  assert np.all(np.isfinite(raw))


def test_paper_normalization_is_per_example_over_sqrt_n(setup):
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])
  per_example = valuation.value_contributors(setup['contributors'], setup['target'], **kwargs)
  paper = valuation.value_contributors(setup['contributors'], setup['target'], **kwargs,
                                       config=_config(ntk__normalization='paper'))
  sizes = np.array([c.size for c in setup['contributors']])
  np.testing.assert_allclose(np.asarray(paper.terms.raw)[:, 2],
                             np.asarray(per_example.terms.raw)[:, 2] / np.sqrt(sizes),
                             rtol=1e-6)


@pytest.mark.parametrize('overrides', [
    dict(ntk__method='block_diagonal', ntk__block_size=4, ntk__num_permutations=2),
    dict(ntk__method='subsample', ntk__num_sub=5, ntk__residual='one_hot'),
    dict(mmd__feature_space='init_features', mmd__estimator='unbiased'),
])
def test_variants_run_and_are_finite(setup, overrides):
  result = valuation.value_contributors(setup['contributors'], setup['target'],
                                        apply_fn=setup['apply_fn'], params=setup['params'],
                                        config=_config(**overrides))
  assert np.all(np.isfinite(np.asarray(result.terms.raw)))
  assert np.all(np.isfinite(np.asarray(result.values)))


def test_projected_filtered_ntk_term_matches_numpy(setup):
  # ntk.projection_dim / param_filter: the NTK of the projected gradients of the readout
  # only. Before, nothing but finiteness was checked: a projection left unused passed.
  # 24 dimensions: a contributor's (<= 12 rows) block stays within k / 2.
  apply_fn, params = setup['apply_fn'], setup['params']
  config = _config(ntk__projection_dim=24, ntk__param_filter='Dense_1')
  result = valuation.value_contributors(setup['contributors'], setup['target'],
                                        apply_fn=apply_fn, params=params, config=config)
  # The projection valuation draws: stage 0 of config.seed.
  projection = ntk_lib.Projection(24, 'rademacher', valuation.stage_key(config, 0))
  for i, c in enumerate(setup['contributors']):
    x, y = _parts(c)
    g = np.asarray(ntk_lib.per_example_grads(ntk_lib.true_class_logit(apply_fn), params, x, y,
                                             param_filter='Dense_1', projection=projection),
                   np.float64)
    assert g.shape == (len(y), 24)
    n = len(y)
    theta = g @ g.T
    r = 1.0 - _np_logits(apply_fn, params, x)[np.arange(n), y]
    lam = 1e-4 * np.trace(theta) / n
    expected = math.sqrt(r @ np.linalg.solve(theta + lam * np.eye(n), r) / n)
    np.testing.assert_allclose(np.asarray(result.terms.raw)[i, 2], expected, rtol=2e-4)


@pytest.mark.parametrize('method, field, value, refused', [
    ('full', None, None, True),             # the largest coalition, 12 rows, on 16 dims
    ('full', 'block_size', 2, True),        # block_size caps only block_diagonal's blocks
    ('block_diagonal', 'block_size', 8, False),
    ('block_diagonal', 'block_size', 9, True),
    ('subsample', 'num_sub', 8, False),
])
def test_projected_ntk_block_larger_than_half_the_projection_is_refused(setup, method, field,
                                                                        value, refused):
  # The projected NTK has rank <= projection_dim: a block nearing it is set by the jitter.
  overrides = dict(ntk__projection_dim=16, ntk__method=method)
  if field:
    overrides[f'ntk__{field}'] = value
  call = functools.partial(valuation.value_contributors, setup['contributors'],
                           setup['target'], apply_fn=setup['apply_fn'],
                           params=setup['params'], config=_config(**overrides))
  if refused:
    with pytest.raises(ValueError, match=fr"ntk.method='{method}'.* holds up to "
                                         r'\d+ examples, more than half of projection_dim=16'):
      call()
  else:
    assert np.all(np.isfinite(np.asarray(call().values)))


@pytest.mark.parametrize('method, subsample', [('value_contributors', 0),
                                               ('leave_one_out', 0), ('shapley', 0),
                                               ('leave_one_out', 14)])
def test_projected_ntk_block_too_large_is_refused_before_the_gradients(setup, method,
                                                                        subsample, monkeypatch):
  """A projected NTK block over half of projection_dim was refused only when a coalition
  was scored, after the pool's gradients (for an LLM, the costly pass): leave_one_out's
  grand coalition of 27 rows against projection_dim=40 (its singletons, <= 12 rows, pass).
  value_contributors scores singletons only, so the same config runs there."""
  # Subsampled to 14 of 27 rows, the grand coalition's NTK holds 11 (the singletons <= 5).
  dim = 16 if method == 'value_contributors' else (20 if subsample else 40)
  config = _config(ntk__projection_dim=dim, valuation__subsample=subsample)
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'], config=config)
  if method == 'shapley':
    kwargs.update(num_permutations=2, key=jax.random.PRNGKey(0))

  def no_gradients(*args, **kw):
    raise AssertionError('the gradients were computed before the config was refused')
  monkeypatch.setattr(valuation, '_ntk_factor', no_gradients)
  with pytest.raises(ValueError, match=r'NTK block of coalition \[0, 1, 2\].*more than half '
                                       r'of projection_dim'
                     if method != 'value_contributors' else
                     r'NTK block of coalition \[\d\].*projection_dim=16'):
    getattr(valuation, method)(setup['contributors'], setup['target'], **kwargs)
  monkeypatch.undo()
  if method == 'value_contributors':  # singletons of <= 12 rows: fine at 40
    result = valuation.value_contributors(setup['contributors'], setup['target'],
                                          **dict(kwargs, config=_config(ntk__projection_dim=40)))
    assert np.all(np.isfinite(np.asarray(result.values)))


def test_upfront_ntk_row_counts_are_the_coalition_rows(subsampled):
  """The counts checked before the gradients are those coalition_rows then draws."""
  pool, config, contributors = subsampled['pool'], subsampled['config'], subsampled['contributors']
  counts = valuation._subsample_counts(contributors, int(config.valuation.subsample),
                                       int(config.valuation.min_subsample))
  k = len(contributors)
  seen = []
  original = valuation._check_ntk_block
  try:
    valuation._check_ntk_block = lambda cfg, members, rows: seen.append((tuple(members), rows))
    coalitions = [c for r in range(1, k + 1) for c in itertools.combinations(range(k), r)]
    valuation._check_ntk_blocks_first(contributors, _config(ntk__projection_dim=8), counts,
                                      coalitions)
  finally:
    valuation._check_ntk_block = original
  assert [m for m, _ in seen] == coalitions
  for members, rows in seen:
    assert rows == valuation.coalition_rows(pool, members, config=config).size, members


def test_init_features_discrepancy_matches_numpy(setup):
  # mmd.feature_space='init_features': the MMD in the space of the readout's input (ReLU of
  # the hidden layer at theta0), standardised with T's mean / std (1 where T is constant).
  config = _config(mmd__feature_space='init_features')
  result = valuation.value_contributors(setup['contributors'], setup['target'],
                                        apply_fn=setup['apply_fn'], params=setup['params'],
                                        config=config)
  dense = {name: {k: np.asarray(v, np.float64) for k, v in leaf.items()}
           for name, leaf in setup['variables']['params'].items()}

  def phi(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return np.maximum(x @ dense['Dense_0']['kernel'] + dense['Dense_0']['bias'], 0.0)

  t = phi(setup['target'].x)
  mean, std = t.mean(0), t.std(0)
  std = np.where(std > 1e-6, std, 1.0)
  t_std = (t - mean) / std
  s_j = _np_bandwidths(t_std)
  for i, c in enumerate(setup['contributors']):
    pi = c.num_real / c.size
    parts = [(x, w) for x, w in ((c.x_real, pi), (c.x_synthetic, 1 - pi))
             if x is not None and np.shape(x)[0]]
    expected = sum(w * _np_mmd((phi(x) - mean) / std, t_std, s_j) for x, w in parts)
    np.testing.assert_allclose(np.asarray(result.terms.raw)[i, 1], expected, rtol=2e-4)


def test_subsample_keeps_full_sizes(setup):
  config = _config(valuation__subsample=10)
  pool = valuation.prepare_pool(setup['contributors'], setup['target'],
                                apply_fn=setup['apply_fn'], params=setup['params'],
                                config=config)
  assert pool.owner.size < sum(c.size for c in setup['contributors'])
  # Every non-empty part keeps at least min_subsample examples; n and pi are the full ones.
  for i, c in enumerate(setup['contributors']):
    rows = pool.owner == i
    assert (pool.is_synthetic[rows] == False).sum() >= min(c.num_real, 2)  # noqa: E712
    assert pool.is_synthetic[rows].sum() >= min(c.num_synthetic, 2)
    terms, _ = valuation.coalition_terms(pool, (i,), config=config)
    np.testing.assert_allclose(terms[3], math.sqrt(max(c.pi, 1 - c.pi)) / c.size)


@pytest.mark.parametrize('overrides, fields', [
    (dict(ntk__residual='one_hot'), ['ntk.residual']),
    (dict(mmd__num_kernels=1, mmd__feature_space='init_features'),
     ['mmd.feature_space', 'mmd.num_kernels']),
    (dict(ntk__projection_dim=4), ['seed', 'ntk.projection_dim', 'ntk.projection_kind']),
    (dict(ntk__param_filter='kernel', mmd__standardize=False),
     ['ntk.param_filter', 'mmd.standardize']),
    (dict(valuation__subsample=8),
     ['seed', 'valuation.subsample', 'valuation.min_subsample']),
])
def test_coalition_terms_refuse_a_config_the_pool_was_not_built_with(setup, overrides, fields):
  # Before: the pool's terms came back as if computed under the other config (a one_hot
  # config on a true_class pool returned the true_class NTK term).
  config = _config()
  pool = valuation.prepare_pool(setup['contributors'], setup['target'],
                                apply_fn=setup['apply_fn'], params=setup['params'],
                                config=config)
  other = _config(**overrides)
  for call in (lambda: valuation.coalition_terms(pool, (0, 1), config=other),
               lambda: valuation.Utility(pool, config=other)):
    with pytest.raises(ValueError, match='config differs from the config the pool was built '
                       'with in ' + r'.*, '.join(re.escape(f) for f in fields)):
      call()
  # Fields read per coalition may change: the NTK method, the MMD estimator; and so may
  # those that shape nothing in this pool (the seed and the projection's kind without a
  # projection or a subsample).
  same = _config(ntk__method='block_diagonal', mmd__estimator='unbiased',
                 ntk__projection_kind='gaussian')
  same.seed = int(config.seed) + 1
  valuation.coalition_terms(pool, (0, 1), config=same)


def test_user_feature_space(setup):
  config = _config(mmd__feature_space='user', mmd__standardize=False)
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'], config=config)
  result = valuation.value_contributors(
      setup['contributors'], setup['target'], **kwargs,
      features_fn=lambda x: jnp.asarray(x).reshape(np.shape(x)[0], -1)[:, :2])
  c = setup['contributors'][1]
  t = np.asarray(setup['target'].x)[:, :2]
  expected = _np_mmd(np.asarray(c.x_real)[:, :2], t, _np_bandwidths(t))
  np.testing.assert_allclose(np.asarray(result.terms.raw)[1, 1], expected, rtol=2e-4)
  with pytest.raises(ValueError, match='features_fn'):
    valuation.value_contributors(setup['contributors'], setup['target'], **kwargs)


# ----------------------------------------------------------------------------------------
# Coalitions: sub-matrices, leave-one-out, Shapley.


@pytest.mark.parametrize('residual', ['true_class', 'one_hot'])
def test_coalition_ntk_is_the_submatrix(setup, residual):
  config = _config(ntk__residual=residual)
  pool = valuation.prepare_pool(setup['contributors'], setup['target'],
                                apply_fn=setup['apply_fn'], params=setup['params'],
                                config=config)
  members = (0, 2)
  from_factor, _ = valuation.coalition_terms(pool, members, config=config)
  from_kernel, _ = valuation.coalition_terms(valuation.with_pool_kernel(pool), members,
                                             config=config)
  # From scratch: gradients and residuals of the coalition's examples only.
  parts = [_parts(setup['contributors'][i]) for i in members]
  x = np.concatenate([p[0] for p in parts])
  y = np.concatenate([p[1] for p in parts])
  apply_fn, params = setup['apply_fn'], setup['params']
  logits = apply_fn(params, jnp.asarray(x))
  scalar = ntk_lib.true_class_logit(apply_fn)
  if residual == 'true_class':
    grads = ntk_lib.per_example_grads(scalar, params, x, y)
    res = 1.0 - logits[np.arange(len(y)), y]
  else:
    grads = jnp.concatenate([ntk_lib.per_example_grads(scalar, params, x, np.full_like(y, j))
                             for j in range(NUM_CLASSES)], axis=1) / np.sqrt(NUM_CLASSES)
    res = jax.nn.one_hot(y, NUM_CLASSES) - logits
  scratch = bound.ntk_term(grads, res, method='full').value
  np.testing.assert_allclose(from_factor[2], scratch, rtol=1e-5)
  np.testing.assert_allclose(from_kernel, from_factor, rtol=1e-5)
  np.testing.assert_allclose(from_factor[2],
                             _np_ntk_term(apply_fn, params, x, y, residual=residual),
                             rtol=2e-4)


def test_linear_mmd_reads_every_member_and_both_parts(setup):
  # The linear estimator reads only the leading min(n, m) rows of each set. Before, rows
  # came in pool order, so a coalition's D was its first member's alone and a mixture's D
  # its real part's: a far-off second member or synthetic part changed nothing.
  keys = jax.random.split(jax.random.PRNGKey(5), 5)
  near, far = _data(keys[0], 60), _data(keys[1], 60, shift=4.0)
  tx, ty = _data(keys[2], 40)
  target = Split(tx, ty, np.zeros(40, bool))
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])

  def discrepancies(contributors, discrepancy):
    # Averaged over four row orders (config.seed): one linear estimate from 40 pairs of
    # rows is noisy, and its square root floors negative estimates at 0.
    totals = collections.Counter()
    for seed in range(4):
      config = _config(mmd__estimator='linear', mmd__discrepancy=discrepancy)
      config.seed = seed
      pool = valuation.prepare_pool(contributors, target, config=config, **kwargs)
      for members in ((0,), (1,), (0, 1), (1, 0)):
        totals[members] += valuation.coalition_terms(pool, members, config=config)[0][1] / 4
    return totals

  d = discrepancies([Contributor('near', *near, None, None),
                     Contributor('far', *far, None, None)], 'parts')
  assert d[0,] + 0.2 < d[0, 1] < d[1,]
  assert d[1, 0] == d[0, 1]  # the same rows whatever the order of the members
  d = discrepancies([Contributor('near_synthetic', *near, *_data(keys[3], 60)),
                     Contributor('far_synthetic', *near, *_data(keys[4], 60, shift=4.0))],
                    'mixture')
  assert d[1,] > d[0,] + 0.2


def test_coalition_key_takes_names_only():
  # It took member indices before: an old call with ints (or a bare name, read as its
  # letters) would give another key than the one coalition_terms uses.
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(valuation.coalition_key(key, ['b', 'a']),
                                valuation.coalition_key(key, ('a', 'b', 'a')))
  for bad in ([0, 2], 'ab', ['a', 1]):
    with pytest.raises(TypeError, match='names must be a sequence of contributor names'):
      valuation.coalition_key(key, bad)


@pytest.mark.parametrize('overrides', [
    dict(ntk__method='block_diagonal', ntk__block_size=4),
    dict(ntk__method='subsample', ntk__num_sub=4),
    dict(mmd__estimator='linear'),
    dict(valuation__subsample=10, valuation__min_subsample=1),
], ids=['block_diagonal', 'subsample', 'linear_mmd', 'valuation_subsample'])
def test_random_stages_follow_names_not_list_positions(setup, overrides):
    """A contributor's (and a coalition's) terms do not depend on where its members stand in
    the contributor list. The random rows of these options were keyed by list position:
    reordering the list moved a contributor's N by up to 10% and its D from 0.28 to 0 (the
    linear estimator), and re-ranked the digits benchmark's contributors (as DAVINZ's
    blocks once did)."""
    config = _config(**overrides)
    contributors = setup['contributors']

    def terms(order):
      pool = valuation.prepare_pool([contributors[i] for i in order], setup['target'],
                                    apply_fn=setup['apply_fn'], params=setup['params'],
                                    config=config)
      where = {i: order.index(i) for i in range(len(contributors))}
      return {members: valuation.coalition_terms(
          pool, [where[i] for i in members], config=config)[0]
              for members in ((0,), (1,), (2,), (0, 1), (0, 2), (0, 1, 2))}

    reference = terms([0, 1, 2])
    for order in ([2, 1, 0], [1, 2, 0]):
      got = terms(order)
      for members, expected in reference.items():
        np.testing.assert_allclose(got[members], expected, rtol=1e-5,
                                   err_msg=f'{order} {members}')
    if 'valuation__subsample' in overrides:
      return  # a budget of pooled rows: a subset of the list keeps more rows of each member
    # A subset of the list scores its contributors as the whole list does.
    pool = valuation.prepare_pool([contributors[2], contributors[0]], setup['target'],
                                  apply_fn=setup['apply_fn'], params=setup['params'],
                                  config=config)
    np.testing.assert_allclose(valuation.coalition_terms(pool, [1], config=config)[0],
                               reference[(0,)], rtol=1e-5)


@pytest.mark.parametrize('normalization', ['per_example', 'paper'])
def test_approximate_ntk_methods_match_numpy_on_the_same_rows(setup, normalization):
  """block_diagonal and subsample through coalition_terms, against float64 NumPy.

  The one-hot residual `[n, c]` and the trace-averaged kernel, on the rows (and in the
  order) that the coalition's seeded key picks; `paper` divides by `sqrt(n)`.
  """
  config = _config(ntk__residual='one_hot')
  pool = valuation.prepare_pool(setup['contributors'], setup['target'],
                                apply_fn=setup['apply_fn'], params=setup['params'],
                                config=config)
  members = (0, 2)
  parts = [_parts(setup['contributors'][i]) for i in members]
  x = np.concatenate([p[0] for p in parts])
  y = np.concatenate([p[1] for p in parts])
  n = len(y)
  factor = _np_jacobian(setup['apply_fn'], setup['params'], x).reshape(n, -1)
  factor /= math.sqrt(NUM_CLASSES)  # F F^T = (1 / c) sum_j J_j J_j^T
  residual = np.eye(NUM_CLASSES)[y] - _np_logits(setup['apply_fn'], setup['params'], x)

  def quad(rows):
    theta = factor[rows] @ factor[rows].T
    lam = 1e-4 * np.trace(theta) / len(rows)
    return np.sum(residual[rows] * np.linalg.solve(theta + lam * np.eye(len(rows)),
                                                   residual[rows]))

  def normalize(q):  # q estimates the quadratic form of all n rows
    return math.sqrt(q / n) if normalization == 'per_example' else math.sqrt(q) / n

  names = [setup['contributors'][i].name for i in members]
  assert names == sorted(names)  # so the rows' name order is their order in x above
  key = valuation.coalition_key(valuation.stage_key(config, 1), names)
  blocked = _config(ntk__residual='one_hot', ntk__method='block_diagonal', ntk__block_size=4,
                    ntk__num_permutations=2, ntk__normalization=normalization)
  quads = []
  for perm_key in jax.random.split(key, 2):
    order = np.asarray(jax.random.permutation(perm_key, n))
    quads.append(sum(quad(order[s:s + 4]) for s in range(0, n, 4)))
  np.testing.assert_allclose(valuation.coalition_terms(pool, members, config=blocked)[0][2],
                             normalize(np.mean(quads)), rtol=2e-4)
  sub = _config(ntk__residual='one_hot', ntk__method='subsample', ntk__num_sub=5,
                ntk__normalization=normalization)
  rows = np.asarray(jax.random.permutation(key, n))[:5]
  np.testing.assert_allclose(valuation.coalition_terms(pool, members, config=sub)[0][2],
                             normalize(quad(rows) * n / 5), rtol=2e-4)
  # Both approximations differ from the full solve here, so the checks have teeth.
  full = quad(np.arange(n))
  assert abs(np.mean(quads) - full) > 1e-2 * full and abs(quad(rows) * n / 5 - full) > 1e-2 * full


def test_block_diagonal_coalitions_compile_nothing_per_size(setup, monkeypatch):
  # The digits table's block-diagonal rows compiled, for every coalition size, the gather of
  # pool.factor[rows], its finiteness check and jax.random.permutation's sort (about 1.5 s
  # per contributor on 2 CPU cores, 14% of the table's wall time). Sizes 12 (warm), 9, 15
  # now compile nothing: permutations share the bucket of 16 and blocks are [B] gathers.
  # (The MMD is stubbed out: its blocks still compile per part size.)
  config = _config(ntk__method='block_diagonal', ntk__block_size=4)
  pool = valuation.prepare_pool(setup['contributors'], setup['target'],
                                apply_fn=setup['apply_fn'], params=setup['params'],
                                config=config)
  stub = valuation.mmd_lib.MMD(jnp.float32(0.5), jnp.float32(0.25), pool.bandwidths)
  monkeypatch.setattr(valuation.mmd_lib, 'mk_mmd', lambda *args, **kwargs: stub)
  assert list(pool.sizes) == [12, 9, 6]
  valuation.coalition_terms(pool, [0], config=config)
  compiled = []

  class _Compiles(logging.Handler):

    def emit(self, record):
      if record.getMessage().startswith('Finished XLA compilation of '):
        compiled.append(record.getMessage())

  handler, logger = _Compiles(logging.WARNING), logging.getLogger('jax')
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      for members in ([1], [1, 2]):
        valuation.coalition_terms(pool, members, config=config)
  finally:
    logger.removeHandler(handler)
  assert not compiled, compiled


def test_one_hot_pool_kernel_is_the_trace_averaged_ntk(setup):
  config = _config(ntk__residual='one_hot')
  pool = valuation.with_pool_kernel(valuation.prepare_pool(
      setup['contributors'], setup['target'], apply_fn=setup['apply_fn'],
      params=setup['params'], config=config))
  x = np.concatenate([_parts(c)[0] for c in setup['contributors']])
  ntk_fn = ntk_lib.empirical_ntk_fn(setup['apply_fn'], trace_axes=(-1,))
  np.testing.assert_allclose(pool.kernel, ntk_fn(x, None, setup['params']), rtol=1e-4,
                             atol=1e-6)


def _brute_force_utility(setup, config, scales_from, weights=None):
  """v(S) from a FRESH pool of S's contributors only, scaled by the full pool's singletons;
  each term weighted by `weights` (default: 1 for the terms in `bound.terms`, else 0)."""
  if weights is None:
    weights = np.array([t in config.bound.terms for t in valuation.TERM_NAMES], np.float64)
  contributors = setup['contributors']
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'], config=config)
  full = valuation.prepare_pool(contributors, setup['target'], **kwargs)
  singles = np.stack([valuation.coalition_terms(full, (i,), config=config)[0]
                      for i in range(len(contributors))])
  scale = singles.std(axis=0)
  varies = scale > 0  # a term constant across the singletons weighs nothing (Utility)
  del scales_from

  def nonempty(members):
    sub = valuation.prepare_pool([contributors[i] for i in members], setup['target'], **kwargs)
    terms, _ = valuation.coalition_terms(sub, tuple(range(len(members))), config=config)
    return float(-np.sum(weights[varies] * terms[varies] / scale[varies]))

  # v(empty): the singletons' mean utility (see valuation.Utility).
  empty = float(np.mean([nonempty((i,)) for i in range(len(contributors))]))

  def utility(members):
    return nonempty(members) if members else empty
  return utility


def test_leave_one_out_matches_brute_force(setup):
  config = _config()
  result = valuation.leave_one_out(setup['contributors'], setup['target'],
                                   apply_fn=setup['apply_fn'], params=setup['params'],
                                   config=config)
  utility = _brute_force_utility(setup, config, None)
  k = len(setup['contributors'])
  everyone = tuple(range(k))
  expected = [utility(everyone) - utility(tuple(j for j in everyone if j != i))
              for i in range(k)]
  np.testing.assert_allclose(result.values, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(result.extras['grand_value'], utility(everyone), rtol=1e-4)


@pytest.mark.parametrize('terms, term_weights', [
    (('discrepancy', 'ntk'), None),
    (valuation.TERM_NAMES, [0.5, 2.0, 0.0, 1.0]),
])
def test_leave_one_out_and_shapley_weigh_the_terms_as_asked(setup, terms, term_weights):
  # Both read `bound.terms` (or `term_weights`) through Utility; ignoring either left every
  # earlier test passing (all terms weighted 1 there).
  config = _config(bound__terms=tuple(terms))
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'], config=config,
                term_weights=term_weights)
  weights = None if term_weights is None else np.asarray(term_weights)
  utility = _brute_force_utility(setup, config, None, weights)
  k = len(setup['contributors'])
  everyone = tuple(range(k))
  loo = valuation.leave_one_out(setup['contributors'], setup['target'], **kwargs)
  np.testing.assert_allclose(
      loo.values, [utility(everyone) - utility(tuple(j for j in everyone if j != i))
                   for i in range(k)], rtol=1e-4, atol=1e-5)
  exact = np.zeros(k)  # Shapley by enumeration; Monte Carlo over all 3! orders is exact
  perms = list(itertools.permutations(range(k)))
  for perm in perms:
    for pos, i in enumerate(perm):
      exact[i] += (utility(tuple(sorted(perm[:pos + 1]))) - utility(tuple(sorted(perm[:pos])))
                   ) / len(perms)
  mc = valuation.shapley(setup['contributors'], setup['target'], **kwargs,
                         num_permutations=200, key=jax.random.PRNGKey(0))
  np.testing.assert_allclose(mc.values, exact, atol=4 * float(np.max(mc.extras['stderr']))
                             + 1e-4)


@pytest.mark.parametrize('method', ['leave_one_out', 'shapley', 'utility'])
def test_coalition_utilities_refuse_fit_weights_they_cannot_fit(setup, method, monkeypatch):
  """`valuation.weights='fit'` is fitted on probes, which only value_contributors takes:
  leave_one_out, shapley and Utility silently weighed the terms by 1 instead (the same
  values as 'standardize'). Refused before the pool's per-example work; explicit
  term_weights stand in for it."""
  config = _config(valuation__weights='fit')
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'], config=config)
  if method == 'utility':
    pool = valuation.prepare_pool(setup['contributors'], setup['target'], **kwargs)
    call = functools.partial(valuation.Utility, pool, config=config)
  else:
    def no_pool(*args, **kw):
      raise AssertionError('the pool was built before the config was refused')
    monkeypatch.setattr(valuation, 'prepare_pool', no_pool)
    extra = dict(num_permutations=2, key=jax.random.PRNGKey(0)) if method == 'shapley' else {}
    call = functools.partial(getattr(valuation, method), setup['contributors'],
                             setup['target'], **kwargs, **extra)
  with pytest.raises(ValueError, match=r"config\.valuation\.weights='fit'.*term_weights"):
    call()
  if method == 'utility':  # explicit weights: the config's mode is not read
    utility = call(term_weights=[1.0, 1.0, 0.5, 1.0])
    assert np.isfinite(utility((0, 1)))


def test_leave_one_out_drops_a_term_constant_across_the_singletons(setup):
  """Three real-only contributors of 8 rows: every singleton's composition term is
  sqrt(1) / 8, so it weighs nothing, in the coalitions too, where it is not constant
  (1 / 16 without one member, 1 / 24 for all: weighted, it would move each value by 1 / 48).
  """
  keys = jax.random.split(jax.random.PRNGKey(7), 3)
  contributors = [Contributor(f'real_{i}', *_data(keys[i], 8, shift=0.3 * i), None, None)
                  for i in range(3)]
  config = _config()
  result = valuation.leave_one_out(contributors, setup['target'], apply_fn=setup['apply_fn'],
                                   params=setup['params'], config=config)
  utility = _brute_force_utility(dict(setup, contributors=contributors), config, None)
  everyone = (0, 1, 2)
  expected = [utility(everyone) - utility(tuple(j for j in everyone if j != i))
              for i in range(3)]
  np.testing.assert_allclose(result.values, expected, rtol=1e-4, atol=1e-5)


def test_a_composition_term_constant_only_up_to_its_float_mean_weighs_nothing(setup):
  """Seven contributors of 5 real + 5 synthetic rows share the composition term
  sqrt(0.5) / 10, whose float64 mean is an ulp off it: its std came out 1e-17, not 0, so
  `Utility` divided the term by 1e-17 and every leave-one-out value was 1.2e14 (the ranking
  read from the other terms at 0.016 resolution)."""
  keys = jax.random.split(jax.random.PRNGKey(0), 14)
  contributors = [Contributor(f'c{i}', *_data(keys[2 * i], 5),
                              *_data(keys[2 * i + 1], 5, shift=0.3 * i)) for i in range(7)]
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])
  composition = valuation.TERM_NAMES.index('composition')
  result = valuation.value_contributors(contributors, setup['target'], **kwargs)
  raw = np.asarray(result.terms.raw, np.float64)[:, composition]
  assert np.all(raw == raw[0])
  value = math.sqrt(0.5) / 10  # the float64 term inside; the case: its mean is an ulp off
  assert np.full(7, value).mean() != value
  np.testing.assert_array_equal(np.asarray(result.terms.standardized)[:, composition], 0.0)
  without = _config(bound__terms=('empirical_loss', 'discrepancy', 'ntk'))
  loo = valuation.leave_one_out(contributors, setup['target'], **kwargs)
  expected = valuation.leave_one_out(contributors, setup['target'], config=without, **kwargs)
  np.testing.assert_allclose(loo.values, expected.values, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(loo.values)).max() < 10


def test_shapley_exact_by_enumeration_and_monte_carlo_converges(setup):
  config = _config()
  utility = _brute_force_utility(setup, config, None)
  k = len(setup['contributors'])
  cache = {}

  def cached(members):
    key = tuple(sorted(members))
    if key not in cache:
      cache[key] = utility(key)
    return cache[key]

  exact = np.zeros(k)
  perms = list(itertools.permutations(range(k)))
  for perm in perms:
    for pos, i in enumerate(perm):
      exact[i] += cached(perm[:pos + 1]) - cached(perm[:pos])
  exact /= len(perms)
  # Efficiency: the values add up to v(D) - v(empty).
  np.testing.assert_allclose(exact.sum(), cached(tuple(range(k))) - cached(()), rtol=1e-6)
  mc = valuation.shapley(setup['contributors'], setup['target'], apply_fn=setup['apply_fn'],
                         params=setup['params'], config=config, num_permutations=400,
                         key=jax.random.PRNGKey(3))
  values = np.asarray(mc.values)
  stderr = mc.extras['stderr']
  assert np.all(np.abs(values - exact) <= 4 * stderr + 1e-4), (values, exact, stderr)
  np.testing.assert_allclose(values.sum(), exact.sum(), rtol=1e-4)
  # The estimator itself on a known utility: with every permutation it is exact.
  additive = np.array([1.0, -2.0, 0.5])
  est, _ = valuation.shapley_from_utility(lambda m: float(additive[list(m)].sum()), 3,
                                          num_permutations=5, key=jax.random.PRNGKey(0))
  np.testing.assert_allclose(est, additive, atol=1e-12)


def test_monte_carlo_shapley_follows_names_not_list_positions(setup):
  """Two sampled permutations, the contributors listed in reverse: each name keeps its
  estimate. The permutations were drawn over list positions, so reversing the list drew
  other orders of the players, as another key would."""
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'], config=_config(),
                num_permutations=2, key=jax.random.PRNGKey(1))
  contributors = setup['contributors']
  forward = valuation.shapley(contributors, setup['target'], **kwargs)
  backward = valuation.shapley(contributors[::-1], setup['target'], **kwargs)
  np.testing.assert_allclose(np.asarray(backward.values)[::-1], forward.values, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(backward.extras['stderr'][::-1], forward.extras['stderr'],
                             rtol=1e-5, atol=1e-5)


def test_shapley_from_utility_stderr_is_the_sample_std_over_sqrt_t():
  """stderr = std(marginals, ddof=1) / sqrt(T), the marginals of v(S) = (sum_S a)^2 by hand
  on the documented permutations (permutation t from fold_in(key, t)); one permutation: 0."""
  a = np.array([1.0, 2.0, 4.0])
  key = jax.random.PRNGKey(0)
  marginals = np.zeros((4, 3))
  for t in range(4):
    before = 0.0
    for i in np.asarray(jax.random.permutation(jax.random.fold_in(key, t), 3)):
      marginals[t, i] = (before + a[i]) ** 2 - before ** 2
      before += a[i]
  assert np.all(marginals.std(axis=0) > 0)  # every player seen at two positions at least

  def utility(members):
    return float(a[list(members)].sum() ** 2)

  values, stderr = valuation.shapley_from_utility(utility, 3, num_permutations=4, key=key)
  # Before: a raw JAX error that did not name key.
  with pytest.raises(ValueError, match=r'key must be a single jax\.random\.PRNGKey'):
    valuation.shapley_from_utility(utility, 3, num_permutations=4, key=None)
  np.testing.assert_allclose(values, marginals.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stderr, marginals.std(axis=0, ddof=1) / 2, rtol=1e-12)
  # One permutation: unknown (NaN), not 0, which read as an exact value.
  _, stderr = valuation.shapley_from_utility(utility, 3, num_permutations=1, key=key)
  assert np.all(np.isnan(stderr))


# ----------------------------------------------------------------------------------------
# Subsampling (valuation.subsample > 0): every term estimates the FULL coalition's.


SUBSAMPLE_BUDGET = 40


def _identity_features(x):
  return jnp.asarray(x).reshape(np.shape(x)[0], -1)


def _subsample_contributors():
  """108 rows at a budget of 40: 'few_real' (3 real + 30 synthetic, 9% real) keeps 2 + 11.

  The floor `min_subsample = 2` lifts its real part to 2 of 13 kept rows (15% real): the
  distortion the reweighting removes. The parts are shifted apart so that it shows.
  """
  keys = jax.random.split(jax.random.PRNGKey(5), 5)
  return [
      Contributor('few_real', *_data(keys[0], 3, shift=1.5), *_data(keys[1], 30, shift=-1.0)),
      Contributor('both', *_data(keys[2], 20), *_data(keys[3], 15, shift=0.5)),
      Contributor('real_only', *_data(keys[4], 40, shift=0.3), None, None),
  ]


@pytest.fixture(scope='module')
def subsampled(setup):
  """A subsampled pool whose features are the raw inputs, so NumPy sees the kept rows."""
  contributors = _subsample_contributors()
  config = _config(valuation__subsample=SUBSAMPLE_BUDGET, mmd__feature_space='user',
                   mmd__standardize=False)
  pool = valuation.prepare_pool(contributors, setup['target'], apply_fn=setup['apply_fn'],
                                params=setup['params'], config=config,
                                features_fn=_identity_features)
  t = np.asarray(setup['target'].x, np.float64)
  return dict(contributors=contributors, config=config, pool=pool, t=t,
              s_j=_np_bandwidths(t))


def _kept(pool, i, synthetic):
  """Pool rows of contributor i's real (or synthetic) part."""
  return np.flatnonzero((pool.owner == i) & (pool.is_synthetic == synthetic))


def _full_parts(contributors, members):
  """`(i, synthetic, N_p)` of the members' non-empty parts, with their FULL sizes."""
  return [(i, synthetic, size) for i in members
          for synthetic, size in ((False, contributors[i].num_real),
                                  (True, contributors[i].num_synthetic)) if size]


def _np_kernel(a, b, s_j):
  d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  return np.mean([np.exp(-d2 / (2 * s)) for s in s_j], axis=0)


def _np_weighted_mmd(parts, t, s_j, *, estimator):
  """MMD of the mixture `sum_p w_p P_p` (parts: `(x_p, w_p)`, sum w = 1) to T, float64.

  Biased: the V-statistic of the weighted empirical mixture, each row of part p weighted
  `w_p / |x_p|`. Unbiased: `sum_pq w_p w_q mean k(P_p, P_q) - 2 ... + ...` with each
  set's own mean over pairs of distinct rows.
  """
  if estimator == 'biased':
    x = np.concatenate([xp for xp, _ in parts])
    alpha = np.concatenate([np.full(len(xp), w / len(xp)) for xp, w in parts])
    mmd2 = (alpha @ _np_kernel(x, x, s_j) @ alpha
            - 2 * alpha @ _np_kernel(x, t, s_j).mean(axis=1) + _np_kernel(t, t, s_j).mean())
    return math.sqrt(max(mmd2, 0.0))
  sets = list(parts) + [(t, -1.0)]
  mmd2 = 0.0
  for i, (a, wa) in enumerate(sets):
    for j, (b, wb) in enumerate(sets):
      kern = _np_kernel(a, b, s_j)
      mean = (kern.sum() - np.trace(kern)) / (len(a) * (len(a) - 1)) if i == j else kern.mean()
      mmd2 += wa * wb * mean
  return math.sqrt(max(mmd2, 0.0))


def test_subsample_floor_distorts_the_kept_proportions(subsampled):
  """The premise of the tests below: the kept rows are NOT in the full proportions."""
  pool = subsampled['pool']
  kept = [(_kept(pool, i, False).size, _kept(pool, i, True).size) for i in range(3)]
  assert kept == [(2, 11), (7, 6), (15, 0)]
  assert pool.part_kernel_sums is not None
  assert pool.part_kernel_sums.counts.tolist() == [2, 11, 7, 6, 15, 0, 10]


def test_stage_keys_differ_and_the_subsample_draws_with_stage_two(subsampled):
  # The five stages (projection, approximate-NTK rows, subsample, coalition rows, linear-MMD
  # orders) must not share a key, and the pool keeps exactly the rows stage 2 draws (a
  # subsample drawn with the projection's key would correlate the two).
  config, contributors = subsampled['config'], subsampled['contributors']
  keys = {tuple(np.asarray(jax.random.key_data(valuation.stage_key(config, s))).tolist())
          for s in range(5)}
  assert len(keys) == 5
  rows = valuation._subsample_rows(contributors, SUBSAMPLE_BUDGET,
                                   int(config.valuation.min_subsample),
                                   valuation.stage_key(config, 2))
  want = np.concatenate([np.asarray(x, np.float32)[r] for c, parts in zip(contributors, rows)
                         for x, r in zip((c.x_real, c.x_synthetic), parts) if r.size])
  np.testing.assert_array_equal(subsampled['pool'].features, want.reshape(want.shape[0], -1))


def test_coalition_keys_are_order_free_and_distinct_per_coalition():
  # The same members in any order share a key; different coalitions do not, even where
  # their names concatenate to the same text (joined without a separator, {'ab', 'c'} and
  # {'a', 'bc'} drew the same rows), or one is a single name spelling two.
  root = jax.random.PRNGKey(0)

  def key(names):
    return tuple(np.asarray(jax.random.key_data(valuation.coalition_key(root, names))).tolist())

  assert key(['c', 'ab']) == key(['ab', 'c'])
  assert len({key(['ab', 'c']), key(['a', 'bc']), key(['abc']), key(['a', 'b', 'c'])}) == 4


@pytest.mark.parametrize('estimator', ['biased', 'unbiased'])
def test_subsampled_mixture_mmd_weighs_parts_by_full_size(subsampled, estimator):
  """discrepancy='mixture': MMD of the mixture with w_p = N_p / n, not of the kept union.

  'few_real' keeps 2 real + 11 synthetic rows (15% real, against its true 3 / 33 = 9%).
  """
  pool, t, s_j = subsampled['pool'], subsampled['t'], subsampled['s_j']
  contributors = subsampled['contributors']
  config = _config(valuation__subsample=SUBSAMPLE_BUDGET, mmd__feature_space='user',
                   mmd__standardize=False, mmd__discrepancy='mixture',
                   mmd__estimator=estimator)
  features = np.asarray(pool.features, np.float64)
  for members in ((0,), (0, 1), (0, 1, 2)):
    parts = _full_parts(contributors, members)
    n = sum(size for _, _, size in parts)
    expected = _np_weighted_mmd([(features[_kept(pool, i, syn)], size / n)
                                 for i, syn, size in parts], t, s_j, estimator=estimator)
    got = valuation.coalition_terms(pool, members, config=config)[0][1]
    np.testing.assert_allclose(got, expected, rtol=1e-4, err_msg=str(members))
    if members == (0,):
      # The old value, the MMD of the union of the kept rows, is off by far more.
      union = features[np.flatnonzero(np.isin(pool.owner, members))]
      old = _np_weighted_mmd([(union, 1.0)], t, s_j, estimator=estimator)
      assert abs(old - expected) > 1e-2 * expected, (old, expected)


@pytest.mark.parametrize('estimator', ['biased', 'unbiased'])
def test_subsampled_parts_mmd_weighs_each_side_by_full_size(subsampled, estimator):
  """discrepancy='parts': pi MMD(T, real mixture) + (1 - pi) MMD(T, synthetic mixture).

  Each side's mixture weighs the members' parts by their full sizes (`N_p / n_real`).
  """
  pool, t, s_j = subsampled['pool'], subsampled['t'], subsampled['s_j']
  contributors = subsampled['contributors']
  config = _config(valuation__subsample=SUBSAMPLE_BUDGET, mmd__feature_space='user',
                   mmd__standardize=False, mmd__estimator=estimator)
  features = np.asarray(pool.features, np.float64)
  for members in ((0,), (0, 1), (0, 2), (0, 1, 2)):
    parts = _full_parts(contributors, members)
    n = sum(size for _, _, size in parts)
    expected, old = 0.0, 0.0
    for side in (False, True):
      side_parts = [(i, size) for i, syn, size in parts if syn == side]
      side_size = sum(size for _, size in side_parts)
      expected += side_size / n * _np_weighted_mmd(
          [(features[_kept(pool, i, side)], size / side_size) for i, size in side_parts],
          t, s_j, estimator=estimator)
      union = np.concatenate([features[_kept(pool, i, side)] for i, _ in side_parts])
      old += side_size / n * _np_weighted_mmd([(union, 1.0)], t, s_j, estimator=estimator)
    got = valuation.coalition_terms(pool, members, config=config)[0][1]
    np.testing.assert_allclose(got, expected, rtol=1e-4, err_msg=str(members))
    if members == (0, 2):  # both real parts kept at very different rates (2/3 vs 15/40)
      # The old formula fails the check above by a margin (how far depends on the rows
      # the subsample drew: 0.45% of the value with these keys, over 1% with earlier ones).
      assert abs(old - expected) > 10 * 1e-4 * expected, (old, expected)


def test_subsampled_empirical_loss_weighs_parts_by_full_size(setup, subsampled):
  """E = sum_p (N_p / n) mean(loss of p's kept rows), contributors of unequal sizes."""
  pool, contributors = subsampled['pool'], subsampled['contributors']
  features = np.asarray(pool.features)
  losses = _np_ce(_np_logits(setup['apply_fn'], setup['params'], features), pool.y)
  for members in ((0,), (0, 1), (0, 2), (0, 1, 2)):
    parts = _full_parts(contributors, members)
    n = sum(size for _, _, size in parts)
    expected = sum(size / n * losses[_kept(pool, i, syn)].mean() for i, syn, size in parts)
    got = valuation.coalition_terms(pool, members, config=subsampled['config'])[0][0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=str(members))
  # The old value, the full pi on the means of the kept real and synthetic unions: the
  # real union holds 'few_real' at 2 of 17 kept rows, against its 3 of 43 full ones.
  members = (0, 2)
  pi = (3 + 40) / 73
  real = np.concatenate([_kept(pool, i, False) for i in members])
  old = pi * losses[real].mean() + (1 - pi) * losses[_kept(pool, 0, True)].mean()
  got = valuation.coalition_terms(pool, members, config=subsampled['config'])[0][0]
  assert abs(old - got) > 1e-3 * abs(got), (old, got)


def test_subsampled_ntk_rows_are_proportional_and_order_free(setup, subsampled):
  """N on kept rows in proportion to the full part sizes, drawn with the coalition's key.

  Coalition ('few_real', 'both'): kept fractions 2/3, 11/30, 7/20, 6/15, so f = 7/20 and
  the rows per part are max(1, round(f N_p)) = 1, 10, 7, 5 (the floored real part of
  'few_real' thinned back from 2 to 1).
  """
  pool, config = subsampled['pool'], subsampled['config']
  apply_fn, params = setup['apply_fn'], setup['params']
  features = np.asarray(pool.features)
  members = (0, 1)
  got = valuation.coalition_terms(pool, members, config=config)[0][2]
  # First the old value, the NTK term of every kept row of the coalition: not it.
  union = np.flatnonzero(np.isin(pool.owner, members))
  old = _np_ntk_term(apply_fn, params, features[union], pool.y[union], residual='true_class')
  assert abs(old - got) > 1e-2 * got, (old, got)

  rows = valuation.coalition_rows(pool, members, config=config)
  np.testing.assert_array_equal(rows, valuation.coalition_rows(pool, (1, 0, 1), config=config))
  counts = [np.isin(rows, _kept(pool, i, syn)).sum() for i, syn, _ in
            _full_parts(subsampled['contributors'], members)]
  fraction = min(2 / 3, 11 / 30, 7 / 20, 6 / 15)
  assert counts == [max(1, round(fraction * size)) for size in (3, 30, 20, 15)] == [1, 10, 7, 5]
  assert np.all(np.isin(rows, union)) and np.all(np.diff(rows) > 0)
  # The value, as without subsampling, on those rows: sqrt(r^T (Theta + lam I)^-1 r / n_rows)
  # with lam = 1e-4 trace(Theta) / n_rows (the jitter rule of bound.ntk_term).
  expected = _np_ntk_term(apply_fn, params, features[rows], pool.y[rows], residual='true_class')
  np.testing.assert_allclose(got, expected, rtol=2e-4)
  # The same through the pool's kernel (Utility's path), which keeps the kernel sums.
  with_kernel = valuation.with_pool_kernel(pool)
  assert with_kernel.part_kernel_sums is pool.part_kernel_sums
  np.testing.assert_allclose(valuation.coalition_terms(with_kernel, (1, 0), config=config)[0],
                             valuation.coalition_terms(pool, members, config=config)[0],
                             rtol=1e-5)
  # A singleton with one part keeps every kept row (f N_p = kept_p).
  np.testing.assert_array_equal(valuation.coalition_rows(pool, (2,), config=config),
                                _kept(pool, 2, False))


def test_subsampled_rows_draw_each_part_with_its_own_key(subsampled):
  """Each thinned part is drawn with the coalition's key folded with its member's name and
  the part (0 real, 1 synthetic), as documented: with one key for both parts, a member's
  real and synthetic parts of one bucket size kept the same positions (correlated draws)."""
  pool, config = subsampled['pool'], subsampled['config']
  members = (0, 1)
  key = valuation.coalition_key(valuation.stage_key(config, 3), ['few_real', 'both'])
  kept = [(i, syn, _kept(pool, i, syn)) for i, syn, _ in
          _full_parts(subsampled['contributors'], members)]
  take = [1, 10, 7, 5]  # test_subsampled_ntk_rows_are_proportional_and_order_free
  expected = []
  for (i, syn, rows), n in zip(kept, take):
    if n < rows.size:
      part_key = jax.random.fold_in(fold_in_name(key, pool.names[i]), int(syn))
      order = np.asarray(jax.random.permutation(part_key, valuation.bucket_size(rows.size)))
      rows = rows[order[order < rows.size][:n]]
    expected.append(rows)
  assert sum(n < rows.size for (_, _, rows), n in zip(kept, take)) >= 2  # two parts thinned
  np.testing.assert_array_equal(valuation.coalition_rows(pool, members, config=config),
                                np.sort(np.concatenate(expected)))


def test_subsampled_ntk_rows_round_f_n_p(subsampled):
  """Coalition ('few_real', 'real_only'): kept fractions 2/3, 11/30, 15/40, so f = 11/30
  and f N_p = 1.1, 11, 14.67; max(1, round(f N_p)) = 1, 11, 15 rows, where a floor would
  take 14 of the 15 kept rows of 'real_only'."""
  pool = subsampled['pool']
  members = (0, 2)
  rows = valuation.coalition_rows(pool, members, config=subsampled['config'])
  counts = [np.isin(rows, _kept(pool, i, syn)).sum() for i, syn, _ in
            _full_parts(subsampled['contributors'], members)]
  fraction = min(2 / 3, 11 / 30, 15 / 40)
  assert counts == [max(1, round(fraction * size)) for size in (3, 30, 40)] == [1, 11, 15]


def test_subsampled_paper_normalization_divides_by_the_full_size(setup, subsampled):
  """ntk.normalization='paper': the per-example value on the coalition's rows over
  sqrt(n), n the FULL size: 33 for 'few_real', of which 12 rows (1 + 11) are read."""
  pool = subsampled['pool']
  config = _config(valuation__subsample=SUBSAMPLE_BUDGET, mmd__feature_space='user',
                   mmd__standardize=False, ntk__normalization='paper')
  rows = valuation.coalition_rows(pool, (0,), config=config)
  assert rows.size == 12
  features = np.asarray(pool.features)
  per_example = _np_ntk_term(setup['apply_fn'], setup['params'], features[rows],
                             pool.y[rows], residual='true_class')
  np.testing.assert_allclose(valuation.coalition_terms(pool, (0,), config=config)[0][2],
                             per_example / math.sqrt(33), rtol=2e-4)


def test_weighted_kernel_sums_match_the_direct_estimator_without_subsampling(setup):
  """The kernel-sum route and mk_mmd on the rows agree where they must (no subsampling).

  Biased: for any coalition the full-size weights are the kept proportions, and the
  quadratic form is then the V-statistic of the union. Unbiased: for single parts. The
  sums are formed in blocks of 8 rows, so tiles of distinct blocks (and their transposes)
  are exercised; the label-aware kernel too.
  """
  pool = valuation.prepare_pool(setup['contributors'], setup['target'],
                                apply_fn=setup['apply_fn'], params=setup['params'],
                                config=_config())
  assert pool.part_kernel_sums is None
  for label_aware in (False, True):
    sums = valuation._part_kernel_sums(pool, label_aware=label_aware, block_size=8)
    weighted_pool = pool._replace(part_kernel_sums=sums)
    cases = [('biased', discrepancy, members) for discrepancy in ('parts', 'mixture')
             for r in (1, 2, 3) for members in itertools.combinations(range(3), r)]
    cases += [('unbiased', 'parts', (i,)) for i in range(3)]
    for estimator, discrepancy, members in cases:
      config = _config(mmd__label_aware=label_aware, mmd__estimator=estimator,
                       mmd__discrepancy=discrepancy)
      direct = valuation.coalition_terms(pool, members, config=config)[0]
      n = int(pool.sizes[list(members)].sum())
      pi = float(pool.num_real[list(members)].sum()) / n
      weighted = valuation._subsampled_loss_and_discrepancy(weighted_pool, members,
                                                            config=config, n=n, pi=pi)
      # The discrepancy is a difference of kernel means of order one, so the two float32
      # routes differ by an absolute ~1e-6, which is 2e-5 of a small unbiased estimate
      # (0.069 for part 1 at XLA's optimisation level 0).
      np.testing.assert_allclose(weighted, direct[:2], rtol=2e-5, atol=1e-5,
                                 err_msg=f'{label_aware} {estimator} {discrepancy} {members}')


def test_subsample_budget_that_keeps_every_row_is_bit_for_bit_the_full_pool(setup):
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])
  full_config, budget_config = _config(), _config(valuation__subsample=10**6)
  full = valuation.prepare_pool(setup['contributors'], setup['target'], config=full_config,
                                **kwargs)
  budget = valuation.prepare_pool(setup['contributors'], setup['target'],
                                  config=budget_config, **kwargs)
  assert budget.part_kernel_sums is None and 'mmd_part_sums' not in budget.seconds
  for r in (1, 2, 3):
    for members in itertools.combinations(range(3), r):
      np.testing.assert_array_equal(
          valuation.coalition_terms(budget, members, config=budget_config)[0],
          valuation.coalition_terms(full, members, config=full_config)[0])
      np.testing.assert_array_equal(
          valuation.coalition_rows(budget, members, config=budget_config),
          np.flatnonzero(np.isin(full.owner, members)))


def test_subsample_refuses_linear_and_one_row_unbiased_parts(setup, monkeypatch):
  """Before any per-example work, naming the fields (or the contributor and its part)."""
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])

  def unreachable(*args, **kwargs):
    raise AssertionError('per-example work started before the check')

  x, y = _data(jax.random.PRNGKey(9), 5)
  one_real = Contributor('one_real', x[:1], y[:1], x[1:], y[1:])
  contributors = _subsample_contributors()
  with monkeypatch.context() as patch:
    patch.setattr(valuation, 'logits_at', unreachable)
    with pytest.raises(ValueError, match=r"config.mmd.estimator='linear' cannot be combined "
                                         r'with config.valuation.subsample=40'):
      valuation.prepare_pool(contributors, setup['target'], **kwargs,
                             config=_config(valuation__subsample=40, mmd__estimator='linear'))
    with pytest.raises(ValueError, match=r"contributor 'one_real': its real part has 1 row.*"
                                         r"'unbiased' with config.valuation.subsample"):
      valuation.prepare_pool(contributors + [one_real], setup['target'], **kwargs,
                             config=_config(valuation__subsample=40, mmd__estimator='unbiased',
                                            mmd__discrepancy='mixture'))
  # A budget that keeps every row subsamples nothing: linear stays available.
  valuation.prepare_pool(setup['contributors'], setup['target'], **kwargs,
                         config=_config(valuation__subsample=10**6, mmd__estimator='linear'))


def test_subsampled_pool_rejects_another_label_kernel(subsampled):
  config = _config(valuation__subsample=SUBSAMPLE_BUDGET, mmd__feature_space='user',
                   mmd__standardize=False, mmd__label_aware=True)
  with pytest.raises(ValueError, match='config.mmd.label_aware=True'):
    valuation.coalition_terms(subsampled['pool'], (0,), config=config)


# ----------------------------------------------------------------------------------------
# Fitted weights.


def test_fit_weights_nonnegative_and_recovers_a_known_fit():
  rng = np.random.default_rng(0)
  terms = rng.normal(size=(20, 4))
  z = (terms - terms.mean(0)) / terms.std(0)
  losses = 3.0 + 2.0 * z[:, 0] + 0.5 * z[:, 2] - 1.0 * z[:, 3]  # negative weight on term 3
  fit = valuation.fit_weights(terms, losses)
  assert np.all(fit.weights >= 0)
  assert fit.weights[3] == 0.0
  # Brute force over active sets: the best feasible least-squares fit on any subset of
  # the terms (an NNLS solution is one of them).
  target = losses - losses.mean()
  best, best_w = np.inf, None
  for r in range(5):
    for subset in itertools.combinations(range(4), r):
      w = np.zeros(4)
      if subset:
        w[list(subset)] = np.linalg.lstsq(z[:, subset], target, rcond=None)[0]
      if np.all(w >= -1e-12) and np.sum((z @ w - target) ** 2) < best:
        best, best_w = np.sum((z @ w - target) ** 2), w
  np.testing.assert_allclose(fit.weights, best_w, atol=1e-8)
  np.testing.assert_allclose(fit.intercept, losses.mean())
  np.testing.assert_allclose(fit.predict(terms[:2]), fit.intercept + z[:2] @ fit.weights)
  with pytest.raises(ValueError, match='>= 2 probes'):
    valuation.fit_weights(terms[:1], losses[:1])
  # Before: a bare broadcasting error for the wrong width, and NaN predicted as NaN.
  with pytest.raises(ValueError, match=r'terms must be \[R, 4\]'):
    fit.predict(np.ones((1, 5)))
  with pytest.raises(ValueError, match=r'terms must be \[R, 4\]'):
    fit.predict(np.ones(4))
  with pytest.raises(ValueError, match='terms contains NaN'):
    fit.predict(np.where(np.eye(1, 4) > 0, np.nan, terms[:1]))


@pytest.mark.parametrize('seed', range(5))
def test_fit_weights_gives_a_constant_column_no_weight(seed):
  """A column of 0.1 (its float64 mean an ulp off) got z-scores +-1, a ~1e-16 NNLS weight and
  a 1e-17 scale: predicting a row whose value there differs moved the loss by O(1)."""
  rng = np.random.default_rng(seed)
  first = rng.normal(size=7)
  terms = np.c_[first, np.full(7, 0.1)]
  losses = 2.0 - 0.5 * first + 0.3 * rng.normal(size=7)
  fit = valuation.fit_weights(terms, losses)
  assert fit.weights[1] == 0.0
  np.testing.assert_allclose(fit.predict([[0.0, 0.2]]), fit.predict([[0.0, 0.1]]), rtol=1e-12)


def test_fit_weights_refuses_terms_without_columns():
  # Before: scipy's nnls aborted the whole interpreter (rc 134) on terms [3, 0]; a
  # subprocess keeps the old behaviour from taking the test session down with it.
  code = ('import numpy as np\nfrom dv_jax import valuation\n'
          'valuation.fit_weights(np.zeros((3, 0)), [1.0, 2.0, 3.0])\n')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 1, done.stderr[-2000:]
  assert 'ValueError: terms must be [P, F] with F >= 1' in done.stderr


def test_fit_mode_is_leave_one_contributor_out(setup):
  config = _config(valuation__weights='fit')
  coalitions = ((0,), (1,), (2,), (0, 1), (1, 2), (0, 2))
  losses = np.array([1.0, 0.8, 1.5, 0.7, 0.9, 1.1])
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'], config=config)
  result = valuation.value_contributors(setup['contributors'], setup['target'], **kwargs,
                                        probes=valuation.Probes(coalitions, losses))
  used = np.asarray(result.fit.used_probes)
  for i in range(3):
    for p, c in enumerate(coalitions):
      assert used[i, p] == (i not in c)
  assert np.all(np.asarray(result.fit.weights) >= 0)
  # Changing the losses of every probe that contains contributor 0 leaves its value alone.
  changed = losses.copy()
  changed[[0, 3, 5]] = [9.0, 0.1, 2.5]
  again = valuation.value_contributors(setup['contributors'], setup['target'], **kwargs,
                                       probes=valuation.Probes(coalitions, changed))
  np.testing.assert_allclose(again.values[0], result.values[0], rtol=1e-9)
  assert not np.allclose(again.values[1:], result.values[1:])
  with pytest.raises(ValueError, match='needs probes'):
    valuation.value_contributors(setup['contributors'], setup['target'], **kwargs)


def test_fit_on_log_loss(setup):
  coalitions = ((0,), (1,), (2,), (0, 1), (1, 2), (0, 2))
  losses = np.array([1.0, 0.8, 1.5, 0.7, 0.9, 1.1])
  config = _config(valuation__weights='fit', valuation__fit_target='log_loss')
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])
  result = valuation.value_contributors(setup['contributors'], setup['target'], **kwargs,
                                        config=config,
                                        probes=valuation.Probes(coalitions, losses))
  pool = valuation.prepare_pool(setup['contributors'], setup['target'], **kwargs,
                                config=config)
  terms = {c: valuation.coalition_terms(pool, c, config=config)[0] for c in coalitions}
  for i in range(3):
    keep = [p for p, c in enumerate(coalitions) if i not in c]
    fit = valuation.fit_weights(np.stack([terms[coalitions[p]] for p in keep]),
                                np.log(losses[keep]))
    np.testing.assert_allclose(result.values[i], -fit.predict(terms[(i,)][None])[0],
                               rtol=1e-5)
    # ... and the report says which fit that was.
    np.testing.assert_allclose(result.fit.weights[i], fit.weights, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.fit.intercepts[i], fit.intercept, rtol=1e-5)
    np.testing.assert_allclose(result.fit.predicted_loss[i],
                               fit.predict(terms[(i,)][None])[0], rtol=1e-5)
    np.testing.assert_array_equal(result.fit.used_probes[i], [i not in c for c in coalitions])
  everything = valuation.fit_weights(np.stack([terms[c] for c in coalitions]), np.log(losses))
  np.testing.assert_allclose(result.fit.all_weights, everything.weights, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='> 0'):
    valuation.value_contributors(setup['contributors'], setup['target'], **kwargs,
                                 config=config,
                                 probes=valuation.Probes(coalitions, losses - 1.0))


@pytest.mark.parametrize('coalition, losses, match', [
    # Before: int() cut 2.7 to contributor 2, and a loss of -1 was fitted as a loss.
    ((0, 2.7), [1.0, 0.8, 0.9], r'probes\.coalitions\[2\] must be integers'),
    ((True,), [1.0, 0.8, 0.9], r'probes\.coalitions\[2\] must be integers'),
    ((0, 2), [-1.0, 0.8, 0.9], r'probes\.losses must be >= 0'),
])
def test_fit_probes_refuse_fractional_members_and_negative_losses(setup, coalition, losses,
                                                                  match):
  probes = valuation.Probes(((0,), (1, 2), coalition), np.array(losses))
  with pytest.raises(ValueError, match=match):
    valuation.value_contributors(setup['contributors'], setup['target'],
                                 apply_fn=setup['apply_fn'], params=setup['params'],
                                 config=_config(valuation__weights='fit'), probes=probes)


@pytest.mark.parametrize('coalitions', [(), ((0,), (1, 2), (0, 1))])
def test_fit_probes_that_leave_a_contributor_out_of_fewer_than_two_are_refused_first(
    setup, monkeypatch, coalitions):
  # No probes failed inside NumPy ("need at least one array to stack"), and a contributor
  # left out of one probe only (here contributors 0 and 1) after the pool's per-example
  # work.
  def no_pool(*args, **kwargs):
    raise AssertionError('the pool was prepared')
  monkeypatch.setattr(valuation, 'prepare_pool', no_pool)
  probes = valuation.Probes(coalitions, np.ones(len(coalitions)))
  with pytest.raises(ValueError, match=r"probes: [01] of the \d coalitions exclude "
                                       r"contributor 0 \('mixed'\); "
                                       r'the out-of-sample fit'):
    valuation.value_contributors(setup['contributors'], setup['target'],
                                 apply_fn=setup['apply_fn'], params=setup['params'],
                                 config=_config(valuation__weights='fit'), probes=probes)


@pytest.mark.parametrize('coalitions, excluding, contributor', [
    (((0, 2), (1, 2), (2,), (0, 1)), 1, 2),  # only the last contributor is short
    (((0, 1, 2), (0, 2), (1, 2), (0, 1)), 1, 0),
])
def test_fit_probes_count_the_coalitions_that_exclude_each_contributor(
    setup, monkeypatch, coalitions, excluding, contributor):
  # The count is of probes WITHOUT the contributor, for every contributor up to the last:
  # counting those with it, or skipping the last, passed the regex above (which any of
  # contributors 0 and 2 matched) and let these probes through to the pool.
  def no_pool(*args, **kwargs):
    raise AssertionError('the pool was prepared')
  monkeypatch.setattr(valuation, 'prepare_pool', no_pool)
  probes = valuation.Probes(coalitions, np.ones(len(coalitions)))
  with pytest.raises(ValueError, match=rf'^probes: {excluding} of the {len(coalitions)} '
                                       rf'coalitions exclude contributor {contributor} \('):
    valuation.value_contributors(setup['contributors'], setup['target'],
                                 apply_fn=setup['apply_fn'], params=setup['params'],
                                 config=_config(valuation__weights='fit'), probes=probes)
  # Two probes without each contributor: past the check, to the pool.
  with pytest.raises(AssertionError, match='the pool was prepared'):
    valuation.value_contributors(setup['contributors'], setup['target'],
                                 apply_fn=setup['apply_fn'], params=setup['params'],
                                 config=_config(valuation__weights='fit'),
                                 probes=valuation.Probes(coalitions + ((1,), (0,)),
                                                         np.ones(len(coalitions) + 2)))


def test_utility_keeps_the_config_it_was_built_with(setup):
  # Utility held the caller's ConfigDict: changed afterwards, cached coalitions kept the old
  # utility and new ones mixed the new terms with the old scales.
  config = _config()
  pool = valuation.prepare_pool(setup['contributors'], setup['target'],
                                apply_fn=setup['apply_fn'], params=setup['params'],
                                config=config)
  utility = valuation.Utility(pool, config=config)
  before = valuation.Utility(pool, config=_config())((0, 2))
  config.mmd.discrepancy = 'mixture'
  assert utility((0, 2)) == before


def test_coalition_members_must_be_integers(setup):
  config = _config()
  pool = valuation.prepare_pool(setup['contributors'], setup['target'],
                                apply_fn=setup['apply_fn'], params=setup['params'],
                                config=config)
  utility = valuation.Utility(pool, config=config)
  # Before: int() read 1.9 as contributor 1 and True as contributor 1.
  for members in ((1.9,), (True,), (0, 1.5)):
    for call in (lambda: valuation.coalition_terms(pool, members, config=config),
                 lambda: valuation.coalition_rows(pool, members, config=config),
                 lambda: utility(members)):
      with pytest.raises(ValueError, match='members must be integers'):
        call()
  # Any order, repeats and a set name the same coalition.
  np.testing.assert_array_equal(valuation.coalition_terms(pool, {1, 0}, config=config)[0],
                                valuation.coalition_terms(pool, (1, 0, 1), config=config)[0])
  assert utility(np.array([2, 0])) == utility((0, 2))
  # v(empty) is the singletons' mean utility: with 0, every v(S) ~ -40 below it made the
  # Monte Carlo Shapley ranking record how often each player was drawn first.
  singles = [utility((i,)) for i in range(len(setup['contributors']))]
  assert utility(()) == pytest.approx(np.mean(singles), rel=1e-12)


# ----------------------------------------------------------------------------------------
# Features.


@pytest.mark.parametrize('model', [MLP(hidden_sizes=(7, 5), num_classes=4),
                                   SmallCNN(channels=(2, 3), num_classes=4)])
def test_init_features_are_the_readout_input(model):
  x = jax.random.normal(jax.random.PRNGKey(0), (9, 8, 8, 1))
  variables = init_model(model, jax.random.PRNGKey(1), x)
  apply_fn, params = bind_apply(model, variables)
  feats = features_lib.init_features(apply_fn, params, x, block_size=4)
  _, expected = model.apply(variables, x, return_features=True)
  np.testing.assert_allclose(feats, expected, rtol=1e-6, atol=1e-6)


def test_init_features_compile_once_per_size_bucket():
  model = MLP(hidden_sizes=(5,), num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (40, 11))
  apply_fn, params = bind_apply(model, init_model(model, jax.random.PRNGKey(1), x))
  _, expected = model.apply({'params': params}, x, return_features=True)
  for n in (1, 3, 17, 40):
    np.testing.assert_allclose(features_lib.init_features(apply_fn, params, x[:n],
                                                          block_size=16),
                               expected[:n], rtol=1e-6, atol=1e-6)
  # Below block_size, sizes share their power-of-two bucket: 17..32 rows, one program (it
  # was one per n); <= because an equal model elsewhere in the session may have compiled it.
  before = features_lib._features_block._cache_size()  # pylint: disable=protected-access
  for n in (17, 23, 32):
    features_lib.init_features(apply_fn, params, x[:n], block_size=64)
  assert features_lib._features_block._cache_size() - before <= 1  # pylint: disable=protected-access


def test_init_features_needs_a_dense_layer():
  with pytest.raises(ValueError, match='Dense'):
    features_lib.init_features(lambda p, x: x * p, jnp.ones(()), jnp.ones((3, 2)))


def test_standardizer_keeps_constant_features_unscaled():
  t = np.array([[1.0, 5.0], [3.0, 5.0]])
  st = features_lib.fit_standardizer(t)
  np.testing.assert_allclose(st.scale, [1.0, 1.0])
  np.testing.assert_allclose(features_lib.standardize_like(t, st), [[-1, 0], [1, 0]])
  with pytest.raises(ValueError, match='features contains NaN'):
    features_lib.standardize_like(np.array([[np.nan, 5.0]]), st)
  with pytest.raises(ValueError, match=r'features must be \[n, 2\]'):
    features_lib.standardize_like(np.ones((2, 3)), st)


def test_logits_that_overflow_at_theta0_are_named(setup):
  # Finite params whose logits overflow failed inside the NTK's Cholesky ("a contains NaN
  # or Inf"), naming neither the model nor a contributor.
  big = jax.tree_util.tree_map(lambda leaf: leaf * 1e20, setup['params'])
  names = sorted(c.name for c in setup['contributors'])
  with pytest.raises(ValueError, match=r'model at theta0 gives a NaN or Inf loss on '
                                       rf'\d+ rows of contributors \[.*{names[0]!r}'):
    valuation.value_contributors(setup['contributors'], setup['target'],
                                 apply_fn=setup['apply_fn'], params=big, config=_config())


def test_finite_logits_whose_loss_overflows_are_named_with_their_contributor_only(setup):
  # Logits +-3e38 are finite, but the label's log-softmax overflows to -inf.
  first = setup['contributors'][0]

  def apply_fn(params, x):
    logits = setup['apply_fn'](params, x)
    # Rows equal to the first contributor's first real row get huge logits.
    row = jnp.asarray(first.x_real[:1], x.dtype)
    hit = jnp.all(x == row, axis=tuple(range(1, x.ndim)))
    huge = jnp.full_like(logits, -3e38).at[:, 0].set(3e38)
    return jnp.where(hit[:, None], huge, logits)

  assert int(first.y_real[0]) != 0
  others = [c.name for c in setup['contributors'][1:]]
  with pytest.raises(ValueError, match=rf"gives a NaN or Inf loss on 1 rows of contributors "
                                       rf"\[{first.name!r}\]") as error:
    valuation.value_contributors(setup['contributors'], setup['target'], apply_fn=apply_fn,
                                 params=setup['params'], config=_config())
  assert not any(repr(name) in str(error.value) for name in others)


def test_a_masked_class_is_valued_and_its_one_hot_residual_names_the_field(setup):
  # A -inf logit of a class no label uses is a valid model (the loss stays finite); the
  # check for overflowing logits refused it. Its one-hot residual is infinite, though.
  def binary(y):  # labels in {0, 1}: class 2 is masked
    return None if y is None else np.asarray(y) % 2

  contributors = [c._replace(y_real=binary(c.y_real), y_synthetic=binary(c.y_synthetic))
                  for c in setup['contributors']]
  target = setup['target']._replace(y=binary(setup['target'].y))

  def masked(params, x):
    return setup['apply_fn'](params, x).at[:, 2].set(-jnp.inf)

  result = valuation.value_contributors(contributors, target, apply_fn=masked,
                                        params=setup['params'], config=_config())
  assert np.all(np.isfinite(result.values))
  with pytest.raises(ValueError, match=r"NTK residual \(config\.ntk\.residual='one_hot'\) "
                                       r"is NaN or Inf .*use ntk\.residual 'true_class'"):
    valuation.value_contributors(contributors, target, apply_fn=masked,
                                 params=setup['params'], config=_config(ntk__residual='one_hot'))


def test_a_target_of_coinciding_rows_names_the_feature_space(setup):
  # mmd's "pass bandwidths explicitly" named a remedy value_contributors does not offer.
  tx = np.array(setup['target'].x)
  tx[:8] = tx[0]  # 28 of 45 pairs coincide: the median is 0
  target = Split(tx, setup['target'].y, np.zeros(10, bool))
  with pytest.raises(ValueError, match=r"config\.mmd\.feature_space='raw'\) have median "
                                       r'pairwise squared distance 0.*features_fn'):
    valuation.value_contributors(setup['contributors'], target, apply_fn=setup['apply_fn'],
                                 params=setup['params'], config=_config())


def test_user_features_fn_must_return_finite_n_by_d():
  x = np.ones((3, 4), np.float32)
  nan_phi = features_lib.feature_fn('user', user_fn=lambda v: np.full((len(v), 2), np.nan))
  with pytest.raises(ValueError, match='features_fn returned NaN or Inf'):
    nan_phi(x)
  flat_phi = features_lib.feature_fn('user', user_fn=lambda v: np.ones(len(v)))
  with pytest.raises(ValueError, match=r'features_fn must return \[n, d\] = \[3, d\]'):
    flat_phi(x)


# ----------------------------------------------------------------------------------------
# Bad input.


def _bad(setup, contributor):
  valuation.value_contributors(setup['contributors'][:1] + [contributor], setup['target'],
                               apply_fn=setup['apply_fn'], params=setup['params'])


@pytest.mark.parametrize('make, message', [
    (lambda x, y: Contributor('nan_guy', np.where(np.arange(DIM) == 2, np.nan, x), y, None,
                              None), 'NaN'),
    (lambda x, y: Contributor('wide_guy', np.concatenate([x, x], 1), y, None, None),
     'feature shape'),
    (lambda x, y: Contributor('label_guy', x, y + NUM_CLASSES, None, None), 'labels'),
    (lambda x, y: Contributor('empty_guy', None, None, None, None), 'no examples'),
])
def test_bad_input_names_the_contributor(setup, make, message):
  x, y = _data(jax.random.PRNGKey(9), 4)
  bad = make(x, y)
  with pytest.raises(ValueError, match=message) as info:
    _bad(setup, bad)
  assert bad.name in str(info.value)


@pytest.mark.parametrize('defect, message', [
    ('label_below', r'target.y has labels outside \[0, 3\)'),
    ('label_c', r'target.y has labels outside \[0, 3\)'),
    ('nan', 'target.x contains NaN'),
    ('one_row', r'target.x must be \[m, ...\] with m >= 2, got shape \(1, 6\)'),
])
def test_bad_target_is_named_before_per_example_work(setup, monkeypatch, defect, message):
  # The target's labels enter the label-aware kernel and its rows the bandwidths: a label
  # outside [0, c), a NaN or a single row must fail as a contributor's do, up front.
  def unreachable(*args, **kwargs):
    raise AssertionError('per-example work started before the check')

  monkeypatch.setattr(valuation, 'logits_at', unreachable)
  x, y = np.array(setup['target'].x), np.array(setup['target'].y)
  if defect == 'label_below':
    y[3] = -1
  elif defect == 'label_c':
    y[3] = NUM_CLASSES
  elif defect == 'nan':
    x[3, 1] = np.nan
  else:
    x, y = x[:1], y[:1]
  with pytest.raises(ValueError, match=message):
    valuation.value_contributors(setup['contributors'], (x, y), apply_fn=setup['apply_fn'],
                                 params=setup['params'])


def test_bad_config_and_duplicate_names(setup):
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])
  with pytest.raises(ValueError, match='residual'):
    valuation.value_contributors(setup['contributors'], setup['target'], **kwargs,
                                 config=_config(ntk__residual='softmax'))
  with pytest.raises(ValueError, match='terms'):
    valuation.value_contributors(setup['contributors'], setup['target'], **kwargs,
                                 config=_config(bound__terms=('loss',)))
  twins = [setup['contributors'][0], setup['contributors'][0]]
  with pytest.raises(ValueError, match='unique'):
    valuation.value_contributors(twins, setup['target'], **kwargs)


@pytest.mark.parametrize('field,value,match', [
    ('seed', 1.5, r'config.seed must be an integer'),      # int() ran seed 1
    ('seed', True, r'config.seed must be an integer'),
    ('seed', None, r'config.seed must be an integer'),
    ('seed', 2**32, r'config.seed must be an integer in \[0, 4294967295\]'),  # seed 0's key
    ('seed', -1, r'config.seed must be an integer in \[0, 4294967295\]'),
    ('valuation.subsample', 99.5, r'config.valuation.subsample must be an integer >= 0'),
    ('valuation.subsample', -1, r'config.valuation.subsample must be an integer >= 0'),
    ('valuation.min_subsample', 0, r'config.valuation.min_subsample must be an integer >= 1'),
    # The per-example stages' settings: before, each failed after the pool's gradients
    # (and an experiment's retraining), naming an inner argument ('initial_jitter').
    ('ntk.eps', -1.0, r'config.ntk.eps must be finite and > 0'),
    ('ntk.eps', float('nan'), r'config.ntk.eps must be finite and > 0'),
    ('ntk.num_sub', 0, r'config.ntk.num_sub must be an integer >= 1'),
    ('ntk.block_size', 0, r'config.ntk.block_size must be an integer >= 1'),
    ('ntk.num_permutations', 0, r'config.ntk.num_permutations must be an integer >= 1'),
    ('ntk.projection_dim', -3, r'config.ntk.projection_dim must be an integer >= 0'),
    ('ntk.projection_kind', 'bogus', r'config.ntk.projection_kind must be one of'),
    ('ntk.grad_block_size', 0, r'config.ntk.grad_block_size must be an integer >= 1'),
    ('mmd.num_kernels', 0, r'config.mmd.num_kernels must be an integer >= 1'),
    ('mmd.block_size', 0, r'config.mmd.block_size must be an integer >= 1'),
    ('mmd.feature_block_size', 2.5, r'config.mmd.feature_block_size must be an integer'),
    ('mmd.standardize', 'False', r'config.mmd.standardize must be True or False'),
    # A misspelt field left the default in force without a word.
    ('ntk.projection_dimension', 4, r"config.ntk has unknown fields \['projection_dimension'\]"),
    ('mmd.estimater', 'unbiased', r"config.mmd has unknown fields \['estimater'\]"),
])
def test_check_config_refuses_fractional_seed_and_budgets(field, value, match):
  # Built from a dict: assigning into a typed ConfigDict field would be refused earlier.
  fields = valuation.default_config().to_dict()
  section, _, name = field.rpartition('.')
  (fields[section] if section else fields)[name] = value
  with pytest.raises(ValueError, match=match):
    valuation.check_config(ml_collections.ConfigDict(fields))


def test_default_config_refuses_a_misspelt_field():
  config = valuation.default_config()
  with pytest.raises(AttributeError, match='weight'):
    config.valuation.weight = 'fit'  # before: added a field no stage reads
  config.valuation.weights = 'fit'  # an existing field can still be set


@pytest.mark.parametrize('call', ['fit_without_probes', 'fit_bad_probes', 'loo_weights',
                                  'shapley_weights', 'shapley_permutations', 'shapley_key'])
def test_bad_arguments_fail_before_per_example_work(setup, monkeypatch, call):
  # Before: probes, term_weights and num_permutations were checked after the pool's
  # logits and gradients had been computed.
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])
  contributors, target = setup['contributors'], setup['target']

  def unreachable(*args, **kwargs):
    raise AssertionError('per-example work started before the check')

  monkeypatch.setattr(valuation, 'logits_at', unreachable)
  fit = _config(valuation__weights='fit')
  with pytest.raises(ValueError) as info:
    if call == 'fit_without_probes':
      valuation.value_contributors(contributors, target, **kwargs, config=fit)
    elif call == 'fit_bad_probes':
      probes = valuation.Probes(((0,), (1, 2)), np.array([1.0]))
      valuation.value_contributors(contributors, target, **kwargs, config=fit,
                                   probes=probes)
    elif call == 'loo_weights':
      valuation.leave_one_out(contributors, target, **kwargs, term_weights=[1.0, 2.0])
    elif call == 'shapley_weights':
      valuation.shapley(contributors, target, **kwargs, num_permutations=2,
                        key=jax.random.PRNGKey(0), term_weights=[np.nan, 1, 1, 1])
    elif call == 'shapley_permutations':
      valuation.shapley(contributors, target, **kwargs, num_permutations=0,
                        key=jax.random.PRNGKey(0))
    else:  # before: a raw JAX error naming no argument, after the pool's work
      valuation.shapley(contributors, target, **kwargs, num_permutations=2, key=3)
  assert {'fit_without_probes': 'needs probes', 'fit_bad_probes': 'probes.losses',
          'loo_weights': 'term_weights', 'shapley_weights': 'term_weights',
          'shapley_permutations': 'num_permutations',
          'shapley_key': 'key must be a single'}[call] in str(info.value)


@pytest.mark.parametrize('estimator', ['unbiased', 'linear'])
@pytest.mark.parametrize('part', ['real', 'synthetic'])
def test_one_row_part_fails_up_front_for_estimators_that_need_two(setup, monkeypatch,
                                                                   estimator, part):
  # Before: the valuation aborted inside coalition_terms with mmd's "needs >= 2 rows",
  # after every per-example quantity had been computed, without naming the contributor.
  x, y = _data(jax.random.PRNGKey(9), 5)
  parts = (x[:1], y[:1], x[1:], y[1:]) if part == 'real' else (x[1:], y[1:], x[:1], y[:1])
  tiny = Contributor('tiny', *parts)
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])

  def unreachable(*args, **kwargs):
    raise AssertionError('per-example work started before the check')

  with monkeypatch.context() as patch:
    patch.setattr(valuation, 'logits_at', unreachable)
    with pytest.raises(ValueError, match=f"contributor 'tiny': its {part} part has 1 row") \
        as info:
      valuation.value_contributors(setup['contributors'][:1] + [tiny], setup['target'],
                                   config=_config(mmd__estimator=estimator), **kwargs)
  assert estimator in str(info.value) and "mmd.estimator='biased'" in str(info.value)
  # The biased estimator is defined for one row; the mixture pools the parts (5 rows).
  for overrides in (dict(), dict(mmd__estimator=estimator, mmd__discrepancy='mixture')):
    result = valuation.value_contributors(setup['contributors'][:1] + [tiny],
                                          setup['target'], config=_config(**overrides),
                                          **kwargs)
    assert np.all(np.isfinite(np.asarray(result.terms.raw)))


@pytest.mark.skipif(jax.device_count() < 2, reason='needs several devices (tests/conftest.py)')
def test_data_parallel_block_size_fails_up_front(setup, monkeypatch):
  # ntk.data_parallel splits each gradient block over the devices: a block size they do
  # not divide fails before any per-example work, naming the field (tests/test_data_parallel.py
  # checks the values on four devices).
  def unreachable(*args, **kwargs):
    raise AssertionError('per-example work started before the check')

  monkeypatch.setattr(valuation, 'logits_at', unreachable)
  block = jax.device_count() + 1
  with pytest.raises(ValueError, match=f'config.ntk.grad_block_size must be a multiple of '
                                       f'{jax.device_count()}, got {block}'):
    valuation.value_contributors(setup['contributors'], setup['target'],
                                 apply_fn=setup['apply_fn'], params=setup['params'],
                                 config=_config(ntk__data_parallel=True,
                                                ntk__grad_block_size=block))


def test_one_row_contributor_fails_under_the_mixture(setup):
  x, y = _data(jax.random.PRNGKey(9), 1)
  with pytest.raises(ValueError, match=r"contributor 'single': its pooled .* has 1 row"):
    valuation.value_contributors(
        setup['contributors'][:1] + [Contributor('single', x, y, None, None)],
        setup['target'], apply_fn=setup['apply_fn'], params=setup['params'],
        config=_config(mmd__estimator='linear', mmd__discrepancy='mixture'))


def test_subsample_needs_min_subsample_two_for_unbiased(setup):
  kwargs = dict(apply_fn=setup['apply_fn'], params=setup['params'])
  config = _config(mmd__estimator='unbiased', valuation__subsample=10,
                   valuation__min_subsample=1)
  with pytest.raises(ValueError, match='config.valuation.min_subsample must be >= 2'):
    valuation.value_contributors(setup['contributors'], setup['target'], config=config,
                                 **kwargs)
  # min_subsample = 1 stays valid for the biased estimator or without subsampling.
  for overrides in (dict(mmd__estimator='biased'), dict(valuation__subsample=0)):
    config = _config(**dict(dict(mmd__estimator='unbiased', valuation__subsample=10,
                                 valuation__min_subsample=1), **overrides))
    valuation.prepare_pool(setup['contributors'], setup['target'], config=config, **kwargs)


def test_gram_quad_form_checks_the_residual_shape():
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(4, 6)).astype(np.float32)
  # Before: a residual [8] for n = 4 was reshaped to [4, 2] and gave a number.
  for residual in (np.ones(8), np.ones((8, 1)), np.ones(3), np.ones((4, 1, 1))):
    with pytest.raises(ValueError, match='residual must be'):
      valuation.gram_quad_form(grads, residual)
  with pytest.raises(ValueError, match='grads must be'):
    valuation.gram_quad_form(grads[0], np.ones(1))
  # Before: grads [n, 0] gave 50000.0 (Theta = 0 with the fallback jitter), and a residual
  # [n, 0] gave 0.0.
  with pytest.raises(ValueError, match=r'grads must be \[n, q\] with n >= 1 and q >= 1'):
    valuation.gram_quad_form(np.zeros((5, 0)), np.ones(5))
  with pytest.raises(ValueError, match=r'residual must be .* and c >= 1'):
    valuation.gram_quad_form(grads, np.ones((4, 0)))
  with pytest.raises(ValueError, match='grads contains NaN'):
    valuation.gram_quad_form(np.where(grads > 1, np.nan, grads), np.ones(4))
  with pytest.raises(ValueError, match='residual contains NaN'):
    valuation.gram_quad_form(grads, np.array([1.0, np.inf, 0.0, 1.0]))
  # Valid shapes: y^T (G G^T + lam I)^-1 y in float64, lam = 1e-4 trace / n.
  theta = grads.astype(np.float64) @ grads.T.astype(np.float64)
  system = theta + 1e-4 * np.trace(theta) / 4 * np.eye(4)
  residual = rng.normal(size=(4, 2))
  expected = np.sum(residual * np.linalg.solve(system, residual))
  np.testing.assert_allclose(float(valuation.gram_quad_form(grads, residual).value),
                             expected, rtol=1e-3)
  np.testing.assert_allclose(float(valuation.gram_quad_form(grads, residual[:, 0]).value),
                             residual[:, 0] @ np.linalg.solve(system, residual[:, 0]),
                             rtol=1e-3)


def test_standardize_terms_matches_numpy_and_rejects_bad_input():
  raw = np.array([[1.0, 5.0, 0.2], [3.0, 5.0, 0.1], [8.0, 5.0, 0.6]])
  z = valuation.standardize_terms(raw)
  mean, std = raw.mean(0), raw.std(0)  # population std (ddof 0)
  np.testing.assert_allclose(z[:, [0, 2]], ((raw - mean) / np.where(std > 0, std, 1))[:, [0, 2]],
                             rtol=1e-12)
  np.testing.assert_array_equal(z[:, 1], 0.0)  # a constant column
  # ... also where the float64 mean of the equal entries is an ulp off them (it gave +-1).
  for k, value in ((7, 0.1), (3, 0.1), (20, math.sqrt(0.5) / 10)):
    column = np.full(k, value)
    assert column.mean() != value
    np.testing.assert_array_equal(
        valuation.standardize_terms(np.stack([np.arange(k), column], 1))[:, 1], 0.0)
  with pytest.raises(ValueError, match=r'raw must be \[K, F\]'):
    valuation.standardize_terms(raw[0])
  with pytest.raises(ValueError, match='raw contains NaN'):
    valuation.standardize_terms(np.where(raw > 7, np.nan, raw))


def test_only_exactly_equal_terms_count_as_constant():
  # A term constant only up to a tolerance is not constant: tiny terms (an MMD of 1e-9
  # between near-identical sets) or close ones still rank the contributors, so they keep
  # their z-scores and fitted weights; a tolerance (np.isclose) zeroed them.
  raw = np.array([[1e-9, 1.0, 0.0], [2e-9, 1.0 + 1e-7, 1.0], [4e-9, 1.0 - 1e-7, 2.0]])
  mean, std = raw.mean(0), raw.std(0)
  np.testing.assert_allclose(valuation.standardize_terms(raw), (raw - mean) / std, rtol=1e-6)
  fit = valuation.fit_weights(raw[:, :1], np.array([1.0, 2.0, 4.0]))
  assert fit.weights[0] > 0
  np.testing.assert_allclose(fit.predict(raw[:, :1]), [1.0, 2.0, 4.0], rtol=1e-6)


def test_cross_entropy_matches_numpy_and_rejects_bad_labels(setup):
  logits = np.random.default_rng(1).normal(size=(5, NUM_CLASSES)).astype(np.float32) * 4
  labels = np.array([0, 2, 1, 1, 0])
  np.testing.assert_allclose(valuation.cross_entropy(logits, labels),
                             _np_ce(logits.astype(np.float64), labels), rtol=1e-5)
  # Before: label 3 of 3 classes was gathered as NaN, -1 wrapped to class 2.
  for bad, match in ((np.array([0, 3, 1, 1, 0]), r'labels must lie in \[0, 3\)'),
                     (np.array([0, -1, 1, 1, 0]), r'labels must lie in \[0, 3\)'),
                     (labels[:4], r'labels must be \[5\]'),
                     (labels.astype(np.float32), 'labels must be integer')):
    with pytest.raises(ValueError, match=match):
      valuation.cross_entropy(logits, bad)
  with pytest.raises(ValueError, match=r'logits must be \[n, c\]'):
    valuation.cross_entropy(logits[0], labels[:1])
  with pytest.raises(ValueError, match='x must be a non-empty batch'):
    valuation.logits_at(setup['apply_fn'], setup['params'], np.zeros((0, DIM), np.float32))
  with pytest.raises(ValueError, match='block_size must be an integer >= 1'):
    valuation.logits_at(setup['apply_fn'], setup['params'], np.zeros((2, DIM), np.float32),
                        block_size=0)
  with pytest.raises(ValueError, match='num_players must be an integer >= 1'):
    valuation.shapley_from_utility(lambda m: 0.0, 0, num_permutations=2,
                                   key=jax.random.PRNGKey(0))


def test_ranking_of_breaks_ties_by_index():
  np.testing.assert_array_equal(valuation.ranking_of([1.0, 3.0, 1.0, 2.0]), [1, 3, 0, 2])


def test_ranking_of_puts_nan_last():
  np.testing.assert_array_equal(valuation.ranking_of([1.0, np.nan, 3.0, 2.0]), [2, 3, 0, 1])


def test_ranking_of_refuses_a_table():
  # Before: [[1, 2], [3, 4]] came back ranked row by row, a [2, 2] "ranking".
  with pytest.raises(ValueError, match=r'values must be 1-D \[K\], got shape \(2, 2\)'):
    valuation.ranking_of([[1.0, 2.0], [3.0, 4.0]])


def test_integer_inputs_of_an_embedding_model_name_the_token_wrapper():
  """A user's own embedding model on integer ids failed deep inside flax ('Input type must
  be an integer'): the pipeline moves inputs as float32. The error now names the wrapper
  that casts them back, and with it the valuation runs."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from dv_jax import tasks  # pylint: disable=g-import-not-at-top

  class BagOfEmbeddings(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      return nn.Dense(2)(nn.Embed(50, 8)(tokens).mean(axis=1))

  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 50, (30, 6)).astype(np.int32)
  labels = rng.integers(0, 2, 30).astype(np.int32)
  model = BagOfEmbeddings()
  apply_fn, params = bind_apply(model, model.init(jax.random.PRNGKey(0), tokens[:1]))
  contributors = [Contributor(name, tokens[a:b], labels[a:b], None, None)
                  for name, a, b in (('a', 0, 10), ('b', 10, 20), ('c', 20, 25))]
  target = (tokens[20:], labels[20:])
  with pytest.raises(ValueError, match=r'pass dv_jax.tasks.TokenInputs\(apply_fn\)'):
    valuation.value_contributors(contributors, target, apply_fn=apply_fn, params=params)
  result = valuation.value_contributors(contributors, target,
                                        apply_fn=tasks.TokenInputs(apply_fn), params=params)
  assert np.all(np.isfinite(np.asarray(result.values)))
  # A model that indexes its own table fails with a TypeError: named the same way.
  class TableLookup(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      table = self.param('table', nn.initializers.normal(), (50, 2))
      return table[tokens].mean(axis=1)

  lookup = TableLookup()
  lookup_fn, lookup_params = bind_apply(lookup, lookup.init(jax.random.PRNGKey(0), tokens[:1]))
  with pytest.raises(ValueError, match=r'pass dv_jax.tasks.TokenInputs\(apply_fn\)'):
    valuation.value_contributors(contributors, target, apply_fn=lookup_fn,
                                 params=lookup_params)
  # Float inputs the model fails on are not ids: its own error, with no word of TokenInputs.
  floats = [Contributor(name, tokens[a:b].astype(np.float32), labels[a:b], None, None)
            for name, a, b in (('a', 0, 10), ('b', 10, 20), ('c', 20, 25))]
  with pytest.raises((TypeError, ValueError)) as error:
    valuation.value_contributors(floats, (target[0].astype(np.float32), target[1]),
                                 apply_fn=apply_fn, params=params)
  assert 'TokenInputs' not in str(error.value)


class _Bfloat16Apply(ntk_lib.ApplyFnWrapper):
  """`apply_fn` computed in bfloat16 (params and inputs cast): bfloat16 logits."""

  def __call__(self, params, x):
    cast = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.bfloat16), params)
    return self.apply_fn(cast, x.astype(jnp.bfloat16))


@pytest.mark.parametrize('overrides', [
    dict(ntk__method='full'),
    dict(ntk__method='block_diagonal', ntk__block_size=4),
    dict(ntk__method='subsample', ntk__num_sub=8),
])
def test_a_bfloat16_model_is_valued_by_every_ntk_method(setup, overrides):
  # The residual of a bfloat16 model is kept as a NumPy bfloat16 array (NumPy kind 'V');
  # block_diagonal and subsample hand it on as such, and it was refused as 'residual must be
  # real-valued' (full converted it to a JAX array first and ran). Scores within bfloat16's
  # rounding of the float32 model's.
  kwargs = dict(params=setup['params'], config=_config(**overrides))
  want = np.asarray(valuation.value_contributors(
      setup['contributors'], setup['target'], apply_fn=setup['apply_fn'], **kwargs).values)
  got = np.asarray(valuation.value_contributors(
      setup['contributors'], setup['target'], apply_fn=_Bfloat16Apply(setup['apply_fn']),
      **kwargs).values)
  np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
