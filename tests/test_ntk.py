"""Tests of dv_jax.ntk against explicit jax.jacrev contractions (and one Jacobian written out
by hand) in float64 NumPy, and against neural-tangents where it is installed."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax import ntk

IMPLEMENTATIONS = ('jacobian_contraction', 'ntk_vector_products')


# ----------------------------------------------------------------------------------------
# Tiny models: a flax MLP, a flax CNN and a stax-style pair of pure functions.


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(16)(x))
    return nn.Dense(3)(x)


class CNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def stax_init(key, d=5, hidden=8, c=3):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return [(jax.random.normal(k1, (d, hidden)) / math.sqrt(d),
           0.1 * jax.random.normal(k2, (hidden,))),
          (),  # a parameterless layer, as stax keeps for activations
          (jax.random.normal(k3, (hidden, c)) / math.sqrt(hidden),
           0.1 * jax.random.normal(k4, (c,)))]


def stax_apply(params, x):
  (w1, b1), _, (w2, b2) = params
  h = jnp.tanh(x @ w1 + b1[None])
  return h @ w2 + b2[None]


@functools.lru_cache(maxsize=None)  # init once: flax init is slow on CPU
def _mlp():
  model = MLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
  return model.apply, model.init(jax.random.PRNGKey(0), x), x


@functools.lru_cache(maxsize=None)  # init once: flax init is slow on CPU
def _cnn():
  model = CNN()
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 6, 6, 1))
  return model.apply, model.init(jax.random.PRNGKey(0), x), x


@functools.lru_cache(maxsize=None)  # init once: flax init is slow on CPU
def _stax():
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 5))
  return stax_apply, stax_init(jax.random.PRNGKey(0)), x


MODELS = {'mlp': _mlp, 'cnn': _cnn, 'stax': _stax}


# ----------------------------------------------------------------------------------------
# Independent references.


def reference_jacobian(apply_fn, params, x, select=lambda path: True):
  """J[n, c, p] in float64 from jax.jacrev of the whole batch (no vmap, no blocks)."""
  jac = jax.jit(jax.jacrev(apply_fn))(params, x)
  n, c = apply_fn(params, x).shape
  cols = [np.asarray(leaf, np.float64).reshape(n, c, -1)
          for path, leaf in jax.tree_util.tree_flatten_with_path(jac)[0]
          if select(jax.tree_util.keystr(path))]
  return np.concatenate(cols, axis=2)


def reference_ntk(j1, j2, trace):
  full = np.einsum('aip,bjp->abij', j1, j2)
  return np.einsum('abii->ab', full) / j1.shape[1] if trace else full


def explicit_projection_matrices(params, key, dim, kind):
  """The per-leaf projection blocks, rebuilt from the scheme in ntk's module docstring."""
  mats = []
  for index, leaf in enumerate(jax.tree_util.tree_leaves(params)):
    size = leaf.size
    rows = min(ntk.PROJECTION_CHUNK_ROWS, size)
    leaf_key = jax.random.fold_in(key, index)
    chunks = []
    for j in range(-(-size // rows)):
      chunk_key = jax.random.fold_in(leaf_key, j)
      if kind == 'rademacher':  # the bits of each uint32 word, least significant first
        words = np.asarray(jax.random.bits(chunk_key, (rows, -(-dim // 32)), jnp.uint32))
        bits = (words[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1
        chunks.append(2.0 * bits.reshape(rows, -1)[:, :dim] - 1.0)
      else:
        chunks.append(jax.random.normal(chunk_key, (rows, dim), dtype=jnp.float32))
    mats.append(np.concatenate([np.asarray(ch, np.float64) for ch in chunks])[:size]
                / math.sqrt(dim))
  return mats


def assert_close(actual, expected, rtol=2e-5):
  actual = np.asarray(actual, np.float64)
  assert actual.shape == expected.shape
  scale = max(np.abs(expected).max(), 1e-12)
  np.testing.assert_allclose(actual / scale, expected / scale, atol=rtol)


# ----------------------------------------------------------------------------------------
# The empirical NTK against jacrev.


@pytest.mark.parametrize('model', list(MODELS))
@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_ntk_matches_jacrev(model, implementation):
  apply_fn, params, x = MODELS[model]()
  x2 = x[:4] * 0.5 + 0.1
  j1 = reference_jacobian(apply_fn, params, x)
  j2 = reference_jacobian(apply_fn, params, x2)
  for trace_axes in [(-1,), ()]:
    ntk_fn = ntk.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, block_size=3,
                                  implementation=implementation)
    assert_close(ntk_fn(x, x2, params), reference_ntk(j1, j2, trace=bool(trace_axes)))
    assert_close(ntk_fn(x, None, params), reference_ntk(j1, j1, trace=bool(trace_axes)))


def rank3_apply(params, x):
  """Outputs `[b, 2, 3]`: two untraced-or-traced output axes besides the batch."""
  h = jnp.tanh(x @ params['w1'])
  return jnp.einsum('bh,hij->bij', h, params['w2']) + jnp.sin(x[:, :2])[:, :, None]


def _rank3():
  rng = np.random.default_rng(0)  # NumPy draws: no per-shape compile of random ops
  params = {'w1': jnp.asarray(rng.normal(size=(4, 5)) / 2, jnp.float32),
            'w2': jnp.asarray(rng.normal(size=(5, 2, 3)) / 2, jnp.float32)}
  x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  return rank3_apply, params, x, x[:3] * 0.5 - 0.2


def rank3_reference(j1, j2, trace_axes):
  """Float64 NTK of `[b, 2, 3]` outputs in the zipped layout `[n1, n2, 2, 2, 3, 3]`."""
  full = np.einsum('aijp,bklp->abikjl', j1, j2)
  return {(): full,
          (-1,): np.einsum('abikjj->abik', full) / 3,
          (1,): np.einsum('abiijl->abjl', full) / 2,
          (1, 2): np.einsum('abiijj->ab', full) / 6}[trace_axes]


def _rank3_jacobian(params, x):
  """`J[n, 2, 3, p]` of `rank3_apply` by hand in float64 (p = 4 * 5 + 5 * 2 * 3).

  `d out[b, i, j] / d w1[d, h] = x[b, d] (1 - t[b, h]^2) w2[h, i, j]` and
  `d out[b, i, j] / d w2[h, i', j'] = t[b, h] [i = i'] [j = j']`, `t = tanh(x w1)`.
  """
  w1, w2 = (np.asarray(params[k], np.float64) for k in ('w1', 'w2'))
  x = np.asarray(x, np.float64)
  t = np.tanh(x @ w1)
  d_w1 = np.einsum('bd,bh,hij->bijdh', x, 1 - t**2, w2).reshape(len(x), 2, 3, -1)
  d_w2 = np.einsum('bh,ik,jl->bijhkl', t, np.eye(2), np.eye(3)).reshape(len(x), 2, 3, -1)
  return np.concatenate([d_w1, d_w2], axis=-1)


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_several_output_axes_trace_and_zip_like_the_reference(implementation):
  # Every other test has [b, c] logits; here two output axes exercise the zipped layout,
  # tracing either axis, and _swap_sides of two zipped pairs (x2=None, 3 blocks of 2).
  apply_fn, params, x, x2 = _rank3()
  j1, j2 = _rank3_jacobian(params, x), _rank3_jacobian(params, x2)
  for trace_axes in [(), (-1,), (1,), (1, 2)]:
    ntk_fn = ntk.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, block_size=2,
                                  implementation=implementation)
    assert_close(ntk_fn(x, x2, params), rank3_reference(j1, j2, trace_axes))
    assert_close(ntk_fn(x, None, params), rank3_reference(j1, j1, trace_axes))


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_unblocked_and_unbatched_agree(implementation):
  apply_fn, params, x = _mlp()
  j = reference_jacobian(apply_fn, params, x)
  expected = reference_ntk(j, j, trace=True)
  for kwargs in ({'block_size': None}, {'vmap_axes': None}, {'block_size': 100}):
    ntk_fn = ntk.empirical_ntk_fn(apply_fn, implementation=implementation, **kwargs)
    assert_close(ntk_fn(x, x, params), expected)


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
@pytest.mark.parametrize('param_filter, select', [
    ('Dense_1', lambda path: 'Dense_1' in path),
    ('params/Dense_0/kernel', lambda path: 'Dense_0' in path and 'kernel' in path),
    (lambda path, leaf: leaf.ndim == 2, lambda path: 'kernel' in path),
])
def test_param_filter_is_the_sub_jacobian_contraction(implementation, param_filter, select):
  apply_fn, params, x = _mlp()
  j = reference_jacobian(apply_fn, params, x, select)
  ntk_fn = ntk.empirical_ntk_fn(apply_fn, implementation=implementation, block_size=4,
                                param_filter=param_filter)
  assert_close(ntk_fn(x, None, params), reference_ntk(j, j, trace=True))


def test_param_filter_on_stax_list_params():
  apply_fn, params, x = _stax()
  j = reference_jacobian(apply_fn, params, x, lambda path: path.startswith('[2]'))
  ntk_fn = ntk.empirical_ntk_fn(apply_fn, param_filter='^2/')
  assert_close(ntk_fn(x, None, params), reference_ntk(j, j, trace=True))
  assert ntk.flat_param_count(params, '^2/') == j.shape[-1] == 8 * 3 + 3
  assert ntk.flat_param_count(params) == 5 * 8 + 8 + 8 * 3 + 3


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_theta_is_symmetric_and_psd(implementation):
  apply_fn, params, x = _cnn()
  x = jnp.concatenate([x, x[:2] + 0.3])  # 7 examples, blocks of 3: a padded last block
  for trace_axes in [(-1,), ()]:
    theta = np.asarray(ntk.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, block_size=3,
                                            implementation=implementation)(x, None, params),
                       np.float64)
    if not trace_axes:  # [n, n, c, c] -> [n c, n c]
      n, c = theta.shape[0], theta.shape[2]
      theta = theta.transpose(0, 2, 1, 3).reshape(n * c, n * c)
    np.testing.assert_allclose(theta, theta.T, rtol=0, atol=1e-5 * np.abs(theta).max())
    eigenvalues = np.linalg.eigvalsh((theta + theta.T) / 2)
    assert eigenvalues.min() >= -1e-5 * eigenvalues.max()


# ----------------------------------------------------------------------------------------
# Random projection.


class WideMLP(nn.Module):
  """A 64 x 80 kernel (5120 entries) is larger than one projection chunk of rows."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.tanh(nn.Dense(80)(x)))


@functools.lru_cache(maxsize=None)  # init once: flax init is slow on CPU
def _wide():
  model = WideMLP()
  x = jax.random.normal(jax.random.PRNGKey(2), (6, 64))
  return model.apply, model.init(jax.random.PRNGKey(0), x), x


def test_wide_model_exercises_row_chunks():
  _, params, _ = _wide()
  assert max(leaf.size for leaf in jax.tree_util.tree_leaves(params)) > ntk.PROJECTION_CHUNK_ROWS


@pytest.mark.parametrize('kind, param_filter', [('rademacher', None), ('gaussian', 'Dense_0')])
def test_projection_equals_explicit_matrices(kind, param_filter):
  apply_fn, params, x = _wide()
  y = jnp.arange(x.shape[0]) % 3
  key = jax.random.PRNGKey(7)
  projection = ntk.Projection(24, kind, key)
  mats = explicit_projection_matrices(params, key, 24, kind)
  select = (lambda path: True) if param_filter is None else (lambda path: 'Dense_0' in path)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  p_matrix = np.concatenate([m for m, path in zip(mats, paths) if select(path)])

  grads = ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, y,
                                param_filter=param_filter, block_size=4)
  projected = ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, y,
                                    param_filter=param_filter, projection=projection,
                                    block_size=4)
  assert projected.shape == (x.shape[0], 24)
  assert_close(projected, np.asarray(grads, np.float64) @ p_matrix)

  j = reference_jacobian(apply_fn, params, x, select) @ p_matrix
  # both implementations on the full model, the default one (cheaper) with the filter
  for implementation in IMPLEMENTATIONS[:1] if param_filter else IMPLEMENTATIONS:
    ntk_fn = ntk.empirical_ntk_fn(apply_fn, implementation=implementation, block_size=4,
                                  param_filter=param_filter, projection=projection)
    assert_close(ntk_fn(x, None, params), reference_ntk(j, j, trace=True))


def test_rademacher_draw_is_balanced_and_uncorrelated():
  """Entries +-1/sqrt(k), fair coins, uncorrelated across the bits of one word and beyond."""
  rows, dim = 4096, 40  # 40: one whole uint32 word and part of another
  draw = np.asarray(ntk._draw(jax.random.PRNGKey(3), (rows, dim), 'rademacher', jnp.float32),
                    np.float64)
  np.testing.assert_allclose(np.abs(draw), 1 / math.sqrt(dim), rtol=1e-6)
  values = np.sign(draw)
  # Each column's mean and each pair's correlation has standard error 1/sqrt(rows).
  bound = 5 / math.sqrt(rows)
  assert np.abs(values.mean(axis=0)).max() < bound
  gram = values.T @ values / rows
  assert np.abs(gram - np.eye(dim)).max() < bound


@pytest.mark.parametrize('key', [0, jax.random.split(jax.random.PRNGKey(0), 2)])
def test_projection_key_that_is_not_one_key_is_refused_by_name(key):
  # An int seed or a batch of keys failed inside jax.random, naming no projection.
  apply_fn, params, x = _mlp()
  with pytest.raises(ValueError, match='projection.key must be a single'):
    ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, jnp.zeros(7, jnp.int32),
                          projection=ntk.Projection(8, 'rademacher', key))


@pytest.mark.parametrize('kind', ['rademacher', 'gaussian'])
def test_projection_preserves_inner_products_in_expectation(kind):
  apply_fn, params, x = _mlp()
  y = jnp.arange(x.shape[0]) % 3
  scalar_fn = ntk.true_class_logit(apply_fn)
  g = np.asarray(ntk.per_example_grads(scalar_fn, params, x, y), np.float64)
  gram = g @ g.T
  dim, draws = 64, 24
  mean = np.zeros_like(gram)
  for seed in range(draws):
    gp = np.asarray(ntk.per_example_grads(scalar_fn, params, x, y,
                                          projection=ntk.Projection(dim, kind,
                                                                    jax.random.PRNGKey(seed))),
                    np.float64)
    mean += gp @ gp.T / draws
  # Var <Pg, Ph> <= (|g|^2 |h|^2 + <g, h>^2) / k for both kinds; allow 5 standard errors.
  norms = np.diag(gram)
  std_error = np.sqrt((np.outer(norms, norms) + gram**2) / dim / draws)
  assert np.all(np.abs(mean - gram) <= 5 * std_error)
  # and the scale is right (a missing 1/sqrt(k) would be off by a factor k)
  assert abs(np.trace(mean) / np.trace(gram) - 1) < 0.1


@pytest.mark.parametrize('kind', ['rademacher', 'gaussian'])
def test_bfloat16_model_is_projected_in_float32_by_the_same_matrix(kind):
  # bfloat16 gradients were projected by a bfloat16 P (a Gaussian one another draw
  # altogether) and summed over p in bfloat16, chunk after chunk (here 2 chunks of the
  # 5120-entry kernel): Rademacher rows were off by 0.6% of the largest entry, more as the
  # number of chunks grows (3% with 512 chunks).
  apply_fn, params, x = _wide()
  params = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.bfloat16), params)
  y = jnp.arange(x.shape[0]) % 3
  key = jax.random.PRNGKey(5)
  scalar_fn = ntk.true_class_logit(apply_fn)
  grads = ntk.per_example_grads(scalar_fn, params, x, y, block_size=4)
  assert grads.dtype == jnp.bfloat16  # unprojected gradients keep the model's dtype
  projected = ntk.per_example_grads(scalar_fn, params, x, y, block_size=4,
                                    projection=ntk.Projection(24, kind, key))
  p_matrix = np.concatenate(explicit_projection_matrices(params, key, 24, kind))
  # On an H200 the two differed by 1.4e-4 of the largest entry: the projecting program
  # need not round the gradients to bfloat16 first (XLA may keep bfloat16 intermediates
  # in float32 on a GPU). 1e-3 there still catches the 6e-3 of the old defect.
  rtol = 2e-5 if jax.default_backend() == 'cpu' else 1e-3
  assert_close(projected, np.asarray(grads.astype(jnp.float32), np.float64) @ p_matrix,
               rtol=rtol)
  assert projected.dtype == jnp.float32


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
@pytest.mark.parametrize('projected', [False, True])
def test_bfloat16_model_kernel_is_float32(implementation, projected):
  # A bfloat16 model's kernel came back in bfloat16 (both paths unprojected, the
  # vector-product path projected too): ~3 digits, 4e-3 of the largest entry off the
  # exact Gram matrix of the same bfloat16 Jacobian, where float32 sums keep 1e-6.
  apply_fn, params, x = _mlp()
  params = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.bfloat16), params)
  x = x.astype(jnp.bfloat16)
  key = jax.random.PRNGKey(3)
  projection = ntk.Projection(8, 'rademacher', key) if projected else None
  kernel = ntk.empirical_ntk_fn(apply_fn, implementation=implementation,
                                projection=projection)(x, None, params)
  assert kernel.dtype == jnp.float32
  j = reference_jacobian(apply_fn, params, x)  # the bfloat16 Jacobian's exact values
  if projected:
    j = j @ np.concatenate(explicit_projection_matrices(params, key, 8, 'rademacher'))
  # The contraction sums exact bfloat16 entries (projected ones in float32); the vector
  # products' entries are jvp outputs of the bfloat16 model, rounded to bfloat16.
  rtol = 1e-5 if implementation == 'jacobian_contraction' else 1e-2
  assert_close(kernel, reference_ntk(j, j, trace=True), rtol=rtol)


@pytest.mark.parametrize('projected', [False, True])
def test_bfloat16_model_kernel_is_float32_with_neural_tangents(projected,
                                                               require_neural_tangents):
  # The neural-tangents backend returned its bfloat16 block as it was: only the .venv-nt
  # run reaches it, so the two paths above did not pin its cast to float32.
  del require_neural_tangents
  apply_fn, params, x = _mlp()
  params = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.bfloat16), params)
  x = x.astype(jnp.bfloat16)
  key = jax.random.PRNGKey(3)
  projection = ntk.Projection(8, 'rademacher', key) if projected else None
  kernel = ntk.empirical_ntk_fn(apply_fn, implementation='neural_tangents',
                                projection=projection)(x, None, params)
  assert kernel.dtype == jnp.float32
  j = reference_jacobian(apply_fn, params, x)
  if projected:
    j = j @ np.concatenate(explicit_projection_matrices(params, key, 8, 'rademacher'))
  assert_close(kernel, reference_ntk(j, j, trace=True), rtol=2e-2)  # bfloat16 inside


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
def test_float64_model_kernel_stays_float64(implementation):
  # "At least float32" promotes half precision only: a float64 model (x64 on) must keep a
  # float64 kernel, not one cut to float32 (~1e-7 relative) by the promotion rule.
  enable_x64 = getattr(jax, 'enable_x64', None)
  if enable_x64 is None:
    from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
    context = enable_x64()
  else:
    context = enable_x64(True)
  apply_fn, params, x = _mlp()
  with context:
    params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float64), params)
    x = jnp.asarray(x, jnp.float64)
    kernel = ntk.empirical_ntk_fn(apply_fn, implementation=implementation)(x, None, params)
    assert kernel.dtype == jnp.float64
    j = reference_jacobian(apply_fn, params, x)
  assert_close(kernel, reference_ntk(j, j, trace=True), rtol=1e-12)


# ----------------------------------------------------------------------------------------
# Per-example gradients.


@pytest.mark.parametrize('model', list(MODELS))
def test_per_example_grads_are_jacrev_rows(model):
  apply_fn, params, x = MODELS[model]()
  y = (jnp.arange(x.shape[0]) * 2) % 3
  grads = ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, y, block_size=4)
  j = reference_jacobian(apply_fn, params, x)  # [n, c, p]
  expected = j[np.arange(x.shape[0]), np.asarray(y)]
  assert grads.shape == (x.shape[0], ntk.flat_param_count(params))
  assert_close(grads, expected)


def test_per_example_gram_is_the_true_class_ntk_entry():
  apply_fn, params, x = _cnn()
  y = jnp.array([0, 2, 1, 1, 0])
  grads = np.asarray(ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, y,
                                           param_filter='Conv'), np.float64)
  full = np.asarray(ntk.empirical_ntk_fn(apply_fn, trace_axes=(), param_filter='Conv')(
      x, None, params), np.float64)
  yy = np.asarray(y)
  # Theta[a, b] = <grad logit_{y_a}(x_a), grad logit_{y_b}(x_b)> = full[a, b, y_a, y_b]
  expected = full[np.arange(5)[:, None], np.arange(5)[None, :], yy[:, None], yy[None, :]]
  assert_close(grads @ grads.T, expected)


def test_per_example_grads_custom_scalar():
  apply_fn, params, x = _stax()
  targets = jnp.linspace(-1, 1, x.shape[0])

  def squared_error(p, x_i, y_i):
    return (apply_fn(p, x_i[None])[0, 0] - y_i) ** 2

  grads = ntk.per_example_grads(squared_error, params, x, targets, block_size=2)
  expected = jax.jacrev(lambda p: (apply_fn(p, x)[:, 0] - targets) ** 2)(params)
  rows = np.concatenate([np.asarray(leaf).reshape(x.shape[0], -1)
                         for leaf in jax.tree_util.tree_leaves(expected)], axis=1)
  assert_close(grads, rows.astype(np.float64))


# ----------------------------------------------------------------------------------------
# One compile serves every n.


def test_one_compile_across_sizes():
  model = MLP()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))

  def apply_fn(p, x):  # a fresh function: its blocks cannot be in the cache yet
    return model.apply(p, x)

  scalar_fn = ntk.true_class_logit(apply_fn)
  jitted = [ntk._jacobian_block, ntk._contract_block, ntk._vector_products_block,
            ntk._grads_block]
  before = [f._cache_size() for f in jitted]
  for n in (5, 37, 70):
    x = jax.random.normal(jax.random.PRNGKey(n), (n, 5))
    for implementation in IMPLEMENTATIONS:
      theta = ntk.empirical_ntk_fn(apply_fn, implementation=implementation, block_size=16)(
          x, None, params)
      assert theta.shape == (n, n)
    grads = ntk.per_example_grads(scalar_fn, params, x, jnp.zeros(n, jnp.int32),
                                  block_size=16)
    assert grads.shape == (n, ntk.flat_param_count(params))
  # (the contraction block is keyed by trace axes and Jacobian shapes only: no other test
  # uses blocks of 16, so its entry is new here too)
  assert [f._cache_size() - b for f, b in zip(jitted, before)] == [1, 1, 1, 1]


# ----------------------------------------------------------------------------------------
# neural-tangents agreement (runs in the .venv-nt environment).


# The two neural-tangents implementations the README says we cross-check (structured
# derivatives need jax <= 0.4.25).
NT_IMPLEMENTATIONS = ('JACOBIAN_CONTRACTION', 'NTK_VECTOR_PRODUCTS')


@pytest.mark.parametrize('nt_implementation', NT_IMPLEMENTATIONS)
@pytest.mark.parametrize('model', list(MODELS))
def test_agrees_with_neural_tangents(model, nt_implementation, require_neural_tangents):
  nt = require_neural_tangents
  apply_fn, params, x = MODELS[model]()
  x2 = x[:3] - 0.2
  for trace_axes in [(-1,), ()]:
    expected = np.asarray(nt.empirical_ntk_fn(
        apply_fn, trace_axes=trace_axes, vmap_axes=0,
        implementation=getattr(nt.NtkImplementation, nt_implementation))(x, x2, params),
                          np.float64)
    for implementation in IMPLEMENTATIONS + ('neural_tangents',):
      ntk_fn = ntk.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, block_size=2,
                                    implementation=implementation)
      assert_close(ntk_fn(x, x2, params), expected)


def test_several_output_axes_agree_with_neural_tangents(require_neural_tangents):
  nt = require_neural_tangents
  apply_fn, params, x, x2 = _rank3()
  for trace_axes in [(), (-1,), (1,), (1, 2)]:
    expected = np.asarray(nt.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, vmap_axes=0)(
        x, x2, params), np.float64)
    for implementation in IMPLEMENTATIONS + ('neural_tangents',):
      ntk_fn = ntk.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, block_size=2,
                                    implementation=implementation)
      assert_close(ntk_fn(x, x2, params), expected)


def test_neural_tangents_backend_maps_filter_and_projection(require_neural_tangents):
  del require_neural_tangents
  apply_fn, params, x = _wide()
  projection = ntk.Projection(16, 'gaussian', jax.random.PRNGKey(3))
  for kwargs in ({'param_filter': 'Dense_1'}, {'projection': projection},
                 {'projection': projection, 'param_filter': 'kernel'}):
    ours = ntk.empirical_ntk_fn(apply_fn, block_size=4, **kwargs)(x, None, params)
    theirs = ntk.empirical_ntk_fn(apply_fn, block_size=4, implementation='neural_tangents',
                                  **kwargs)(x, None, params)
    assert_close(theirs, np.asarray(ours, np.float64))


def test_neural_tangents_missing_is_a_clear_error():
  try:
    import neural_tangents  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(ImportError, match='.venv-nt'):
      ntk.empirical_ntk_fn(stax_apply, implementation='neural_tangents')
  else:
    pytest.skip('neural-tangents is installed here')


# ----------------------------------------------------------------------------------------
# Bad inputs.


def test_ntk_bad_inputs():
  apply_fn, params, x = _mlp()
  ntk_fn = ntk.empirical_ntk_fn(apply_fn)
  with pytest.raises(ValueError, match='x1'):
    ntk_fn(x.at[0, 0].set(jnp.nan), None, params)
  with pytest.raises(ValueError, match='x2'):
    ntk_fn(x, x.at[1, 1].set(jnp.inf), params)
  with pytest.raises(ValueError, match='x2'):
    ntk_fn(x, x[:, :4], params)
  with pytest.raises(ValueError, match='x1'):
    ntk_fn(x[:0], None, params)
  with pytest.raises(ValueError, match='x1'):
    ntk_fn(jnp.float32(1.0), None, params)
  with pytest.raises(ValueError, match='params'):
    ntk_fn(x, None, jax.tree_util.tree_map(lambda a: a * jnp.nan, params))
  with pytest.raises(ValueError, match='param_filter'):
    ntk.empirical_ntk_fn(apply_fn, param_filter='no_such_layer')(x, None, params)
  with pytest.raises(ValueError, match='param_filter'):
    ntk.empirical_ntk_fn(apply_fn, param_filter=lambda path, leaf: False)(x, None, params)
  with pytest.raises(ValueError, match='param_filter'):
    ntk.empirical_ntk_fn(apply_fn, param_filter=3)(x, None, params)
  with pytest.raises(ValueError, match='trace_axes'):
    ntk.empirical_ntk_fn(apply_fn, trace_axes=(0,))(x, None, params)
  with pytest.raises(ValueError, match='trace_axes'):
    ntk.empirical_ntk_fn(apply_fn, trace_axes=(2,))(x, None, params)


def test_ntk_bad_options():
  with pytest.raises(ValueError, match='implementation'):
    ntk.empirical_ntk_fn(stax_apply, implementation='jacobian')
  with pytest.raises(ValueError, match='vmap_axes'):
    ntk.empirical_ntk_fn(stax_apply, vmap_axes=1)
  with pytest.raises(ValueError, match='block_size'):
    ntk.empirical_ntk_fn(stax_apply, block_size=0)
  with pytest.raises(ValueError, match='block_size'):
    ntk.empirical_ntk_fn(stax_apply, vmap_axes=None, block_size=8)
  with pytest.raises(ValueError, match='trace_axes'):
    ntk.empirical_ntk_fn(stax_apply, trace_axes=None)
  for bad in [(1.5,), (True,), '1']:  # int() read each as axis 1 without a word
    with pytest.raises(ValueError, match='trace_axes entry must be an integer'):
      ntk.empirical_ntk_fn(stax_apply, trace_axes=bad)
  with pytest.raises(ValueError, match='projection.kind'):
    ntk.empirical_ntk_fn(stax_apply, projection=ntk.Projection(4, 'sparse', jax.random.PRNGKey(0)))
  with pytest.raises(ValueError, match='projection.key'):
    ntk.empirical_ntk_fn(stax_apply, projection=ntk.Projection(4))
  with pytest.raises(ValueError, match='projection.dim'):
    ntk.empirical_ntk_fn(stax_apply, projection=ntk.Projection(0, key=jax.random.PRNGKey(0)))


def test_per_example_grads_bad_inputs():
  apply_fn, params, x = _stax()
  scalar_fn = ntk.true_class_logit(apply_fn)
  y = jnp.zeros(x.shape[0], jnp.int32)
  with pytest.raises(ValueError, match='x'):
    ntk.per_example_grads(scalar_fn, params, x.at[2, 0].set(jnp.nan), y)
  with pytest.raises(ValueError, match='y'):
    ntk.per_example_grads(scalar_fn, params, x, y[:-1])
  with pytest.raises(ValueError, match='y'):
    ntk.per_example_grads(scalar_fn, params, x, jnp.full(x.shape[0], jnp.inf))
  with pytest.raises(ValueError, match='x'):
    ntk.per_example_grads(scalar_fn, params, x[:0], y[:0])
  with pytest.raises(ValueError, match='param_filter'):
    ntk.per_example_grads(scalar_fn, params, x, y, param_filter='^7/')
  with pytest.raises(ValueError, match='block_size'):
    ntk.per_example_grads(scalar_fn, params, x, y, block_size=-1)
  with pytest.raises(ValueError, match='projection'):
    ntk.per_example_grads(scalar_fn, params, x, y, projection=(4, 'rademacher', None))
  with pytest.raises(ValueError, match='param_filter'):
    ntk.flat_param_count(params, 'nothing')


@pytest.mark.parametrize('labels', [[0, 1, 3, 0, 1, 2], [0, -1, 2, 0, 1, 2]])
def test_out_of_range_labels_are_rejected_not_clamped(labels):
  # JAX indexing clamps label 3 of 3 classes to class 2 and wraps -1 to 2: without the
  # check these gradients silently equal those of a valid label.
  apply_fn, params, x = _stax()
  scalar_fn = ntk.true_class_logit(apply_fn)
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 3\)'):
    ntk.per_example_grads(scalar_fn, params, x, jnp.asarray(labels))
  with pytest.raises(ValueError, match='labels'):
    scalar_fn(params, x[0], next(l for l in labels if not 0 <= l < 3))
  with pytest.raises(ValueError, match='labels must be integer'):
    ntk.per_example_grads(scalar_fn, params, x, jnp.zeros(x.shape[0], jnp.float32))
  with pytest.raises(ValueError, match=r'labels \(y\) must be \[n\]'):  # was a deep TypeError
    ntk.per_example_grads(scalar_fn, params, x, jnp.zeros((x.shape[0], 1), jnp.int32))
  # Valid labels are unchanged, directly and under jit (where labels are tracers).
  valid = jnp.asarray([0, 1, 2, 0, 1, 2])
  assert np.isfinite(np.asarray(ntk.per_example_grads(scalar_fn, params, x, valid))).all()
  jitted = jax.jit(scalar_fn)(params, x[0], jnp.int32(2))
  assert_close(jitted, np.asarray(apply_fn(params, x[:1]), np.float64)[0, 2])


def test_custom_scalar_targets_are_not_checked_as_labels():
  # Only scalars that index the logits by y (takes_class_labels) check y as class labels.
  apply_fn, params, x = _stax()
  targets = jnp.full(x.shape[0], 7.0)
  grads = ntk.per_example_grads(lambda p, x_i, y_i: apply_fn(p, x_i[None])[0, 0] * y_i,
                                params, x, targets)
  assert np.isfinite(np.asarray(grads)).all()


@pytest.mark.parametrize('rows, projection_dim, refused', [
    (8, 16, False), (9, 16, True), (5000, 2048, True), (50, 2048, False), (10 ** 6, 0, False)])
def test_check_projected_block_rows_at_half_the_projection(rows, projection_dim, refused):
  if refused:
    with pytest.raises(ValueError, match=f'the block holds up to {rows} examples'):
      ntk.check_projected_block_rows(rows, projection_dim, what='the block')
  else:
    ntk.check_projected_block_rows(rows, projection_dim, what='the block')
