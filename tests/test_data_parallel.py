"""Tests of the opt-in data parallelism of the gradient blocks (`mesh=`, `ntk.data_parallel`).

The sharded checks need several devices, and XLA fixes the device count when JAX starts,
so they run in ONE fresh interpreter with four CPU devices (this file run as a script by
`test_sharded_on_four_devices`, 20-25 s on 2 CPU cores). Against the same calls without a mesh:
`per_example_grads` (an MLP with and without a projection and a param_filter, and a CNN;
`n` not a multiple of the block; one compile for every `n`) and the shardings of what each
jitted block receives and returns (the examples split over the four devices, the
parameters replicated); `empirical_ntk_fn` for each implementation installed (a CNN or
an MLP), and that each of its blocks really runs split; inputs the caller sharded over the
devices by examples, with no mesh (gathered onto one device: left to XLA's partitioner a
CNN's gradients came out wrong); `value_contributors` with `config.ntk.data_parallel=True`,
whose gradient calls get the mesh; and the errors for a
block size the device count does not divide, from the kernels and, before any training,
from our score and each gradient baseline. Agreement is asserted to 1e-5 of the largest
entry: no sum runs across examples, so only float32 rounding may differ (measured here:
<= 4e-7).

In process: the default path (no mesh) is unchanged, the config field is off by default,
read tolerantly, must be a bool and is left out of the experiments' unit fingerprints, and
a bad `mesh` is refused.
"""

import functools
import json
import os
from pathlib import Path
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dv_jax import ntk
from dv_jax import valuation
from dv_jax.models.cnn import SmallCNN
from dv_jax.models.common import bind_apply
from dv_jax.models.mlp import MLP

_ROOT = Path(__file__).resolve().parents[1]
NUM_DEVICES = 4
RTOL = 1e-5  # of the largest entry: float32 rounding only (see the module docstring)


@functools.lru_cache(maxsize=None)  # init once: flax init is slow on CPU
def _tiny_mlp(hidden=(16,), dim=5, num_classes=3):
  model = MLP(hidden_sizes=hidden, num_classes=num_classes)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (37, dim)), np.float32)
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (37,), 0, num_classes), np.int32)
  # Jitted: flax's eager init is slower.
  apply_fn, params = bind_apply(model, jax.jit(model.init)(jax.random.PRNGKey(0), x[:1]))
  return apply_fn, params, x, y


@functools.lru_cache(maxsize=None)
def _tiny_cnn(num_classes=3):
  # Convolutions matter: split over devices by XLA's automatic partitioner instead of
  # shard_map, their per-example weight gradients came out wrong (dv_jax.ntk._per_device).
  model = SmallCNN(channels=(4,), num_classes=num_classes)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (37, 6, 6, 1)), np.float32)
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (37,), 0, num_classes), np.int32)
  # Jitted: flax's eager init is slower.
  apply_fn, params = bind_apply(model, jax.jit(model.init)(jax.random.PRNGKey(0), x[:1]))
  return apply_fn, params, x, y


def _max_rel_diff(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


# ----------------------------------------------------------------------------------------
# The sharded checks: run in a subprocess with four CPU devices.


def _check_per_example_grads(report):
  """Equal to the unsharded call; each jitted block really runs split over the devices."""
  mesh = ntk.data_parallel_mesh()
  original = ntk._grads_block  # pylint: disable=protected-access
  blocks = []

  def spy(spec, params_, key, x_b, y_b, **kwargs):  # records what the block sees and returns
    out = original(spec, params_, key, x_b, y_b, **kwargs)
    blocks.append((x_b.sharding, jax.tree_util.tree_leaves(params_)[0].sharding, out))
    return out

  settings = {
      'mlp': (_tiny_mlp, {}),
      'mlp filter+projection': (_tiny_mlp, dict(
          param_filter='Dense_1', projection=ntk.Projection(16, 'rademacher',
                                                            jax.random.PRNGKey(4)))),
      'cnn': (_tiny_cnn, {}),
  }
  for name, (make_model, kwargs) in settings.items():
    apply_fn, params, x, y = make_model()
    scalar_fn = ntk.true_class_logit(apply_fn)
    expected = ntk.per_example_grads(scalar_fn, params, x, y, block_size=8, **kwargs)
    before = original._cache_size()  # pylint: disable=protected-access
    ntk._grads_block = spy  # pylint: disable=protected-access
    try:
      for n in (37, 5):  # 5 blocks, the last one padded; one padded block
        got = ntk.per_example_grads(scalar_fn, params, x[:n], y[:n], block_size=8, mesh=mesh,
                                    **kwargs)
        diff = _max_rel_diff(got, expected[:n])
        assert diff <= RTOL, (name, n, diff)
        # Gathered onto one device, the mesh's first: an ordinary array for the caller.
        assert got.sharding.device_set == {jax.devices()[0]}, got.sharding
        report[f'per_example_grads {name} n={n}'] = diff
    finally:
      ntk._grads_block = original  # pylint: disable=protected-access
    compiles = original._cache_size() - before  # pylint: disable=protected-access
    assert compiles == 1, (name, compiles)  # one compile serves every n, as without a mesh

  assert len(blocks) == len(settings) * (5 + 1)  # ceil(37 / 8) + ceil(5 / 8) per setting
  for x_sharding, param_sharding, out in blocks:
    assert len(x_sharding.device_set) == NUM_DEVICES and not x_sharding.is_fully_replicated
    assert len(param_sharding.device_set) == NUM_DEVICES and param_sharding.is_fully_replicated
    assert len(out.sharding.device_set) == NUM_DEVICES and not out.sharding.is_fully_replicated
    shards = sorted((s.device.id, s.index[0].start, s.data.shape[0])
                    for s in out.addressable_shards)
    # Device d computed rows [2 d, 2 d + 2) of the block of 8: the examples are split.
    assert shards == [(d, 2 * d, 2) for d in range(NUM_DEVICES)], shards
  report['block output shards (device, first row, rows)'] = str(shards)


def _check_empirical_ntk(report):
  """Each implementation once: a CNN's traced kernel of x1 with itself (only the upper
  block triangle is computed), or an MLP's untraced, filtered, projected kernel of x1, x2."""
  cases = {
      'jacobian_contraction': 'cnn traced x2=None',
      'ntk_vector_products': 'mlp untraced+filter+projection x2',
  }
  try:
    import neural_tangents  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    cases['neural_tangents'] = 'cnn traced x2=None'
  except ImportError:
    pass
  mesh = ntk.data_parallel_mesh()
  for implementation, case in cases.items():
    apply_fn, params, x, _ = _tiny_cnn() if case.startswith('cnn') else _tiny_mlp()
    kwargs = {} if case.startswith('cnn') else dict(
        trace_axes=(), param_filter='Dense_1',
        projection=ntk.Projection(8, 'rademacher', jax.random.PRNGKey(6)))
    x1, x2 = x[:11], None if case.endswith('None') else x[11:17]  # 3 and 2 blocks of 4
    want = ntk.empirical_ntk_fn(apply_fn, implementation=implementation, block_size=4,
                                **kwargs)(x1, x2, params)
    got = ntk.empirical_ntk_fn(apply_fn, implementation=implementation, block_size=4,
                               mesh=mesh, **kwargs)(x1, x2, params)
    diff = _max_rel_diff(got, want)
    assert diff <= RTOL, (implementation, case, diff)
    report[f'empirical_ntk {implementation} {case}'] = diff


def _check_sharded_input_without_mesh(report):
  """Inputs the caller already split over the devices by examples, no mesh: each block is
  gathered onto one device first. Handed to jit as they were, XLA's automatic partitioner
  split them, and a CNN's per-example gradients came out wrong (0.38 of the largest entry
  off) and its kernel too (0.15; jax 0.5.3 failed to compile it)."""
  apply_fn, params, x, y = _tiny_cnn()
  mesh = ntk.data_parallel_mesh()
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
  x_sharded, y_sharded = jax.device_put(x[:32], rows), jax.device_put(y[:32], rows)
  assert len(x_sharded.sharding.device_set) == NUM_DEVICES
  scalar_fn = ntk.true_class_logit(apply_fn)
  want = ntk.per_example_grads(scalar_fn, params, x[:32], y[:32], block_size=32)
  got = ntk.per_example_grads(scalar_fn, params, x_sharded, y_sharded, block_size=32)
  report['per_example_grads cnn, sharded x, no mesh'] = _max_rel_diff(got, want)
  assert report['per_example_grads cnn, sharded x, no mesh'] <= RTOL, report
  assert got.sharding.device_set == {jax.devices()[0]}, got.sharding
  for implementation in ('jacobian_contraction', 'ntk_vector_products'):
    kernel_fn = ntk.empirical_ntk_fn(apply_fn, implementation=implementation)
    want = kernel_fn(x[:32], x[:12], params)
    got = kernel_fn(x_sharded, jax.device_put(x[:12], rows), params)
    name = f'empirical_ntk {implementation} cnn, sharded x, no mesh'
    report[name] = _max_rel_diff(got, want)
    assert report[name] <= RTOL, report
    assert got.sharding.device_set == {jax.devices()[0]}, got.sharding
  # Gathered onto THIS process's default device: it was jax.devices()[0], which in a
  # multi-process run is process 0's, so every other process got arrays it could not read.
  with jax.default_device(jax.devices()[2]):
    got = ntk.per_example_grads(scalar_fn, params, x_sharded, y_sharded, block_size=32)
  assert got.sharding.device_set == {jax.devices()[2]}, got.sharding


def _check_mesh_is_used(report):
  """The mesh really splits `empirical_ntk_fn`'s blocks (equal values alone would not show
  a mesh that is checked and then ignored), and `config.ntk.data_parallel` really hands
  our score's gradient calls a mesh of every device."""
  apply_fn, params, x, _ = _tiny_cnn()
  mesh = ntk.data_parallel_mesh()
  seen = []
  originals = {name: getattr(ntk, name) for name in
               ('_jacobian_block', '_contract_block', '_vector_products_block')}

  def spy(name):
    def wrapped(*args, **kwargs):
      out = originals[name](*args, **kwargs)
      seen.append((name, out))
      return out
    return wrapped

  for name in originals:
    setattr(ntk, name, spy(name))
  try:
    for implementation in ('jacobian_contraction', 'ntk_vector_products'):
      kernel = ntk.empirical_ntk_fn(apply_fn, implementation=implementation, block_size=8,
                                    mesh=mesh)(x[:16], x[16:24], params)
      assert kernel.sharding.device_set == {jax.devices()[0]}, kernel.sharding
  finally:
    for name, original in originals.items():
      setattr(ntk, name, original)
  assert {name for name, _ in seen} == set(originals), seen
  for name, out in seen:
    leaf = jax.tree_util.tree_leaves(out)[0]
    shards = sorted((s.device.id, s.index[0].start, s.data.shape[0])
                    for s in leaf.addressable_shards)
    assert shards == [(d, 2 * d, 2) for d in range(NUM_DEVICES)], (name, shards)
  report['empirical_ntk blocks split over the mesh'] = len(seen)

  contributors, target, apply_fn, params = _valuation_setup()
  config = valuation.default_config()
  config.ntk.grad_block_size = 8
  config.ntk.data_parallel = True
  meshes = []
  original = ntk.per_example_grads

  def grads_spy(*args, **kwargs):
    meshes.append(kwargs.get('mesh'))
    return original(*args, **kwargs)

  ntk.per_example_grads = grads_spy
  try:
    valuation.value_contributors(contributors, target, apply_fn=apply_fn, params=params,
                                 config=config)
  finally:
    ntk.per_example_grads = original
  assert meshes and all(isinstance(m, jax.sharding.Mesh) and m.size == NUM_DEVICES
                        for m in meshes), meshes
  report['ours: gradient calls given the mesh'] = len(meshes)


def _valuation_setup():
  from dv_jax.data.contributors import Contributor  # pylint: disable=g-import-not-at-top
  from dv_jax.data.contributors import Split  # pylint: disable=g-import-not-at-top
  apply_fn, params, _, _ = _tiny_mlp()
  keys = jax.random.split(jax.random.PRNGKey(0), 4)

  def data(key, n, shift=0.0):
    kx, ky = jax.random.split(key)
    return (np.asarray(jax.random.normal(kx, (n, 5)), np.float32) + np.float32(shift),
            np.asarray(jax.random.randint(ky, (n,), 0, 3), np.int32))

  xr0, yr0 = data(keys[0], 7)
  xs0, ys0 = data(keys[1], 5, 0.5)
  xr1, yr1 = data(keys[2], 9)
  xs2, ys2 = data(keys[3], 6, -0.3)
  contributors = [Contributor('mixed', xr0, yr0, xs0, ys0),
                  Contributor('real_only', xr1, yr1, None, None),
                  Contributor('synthetic_only', None, None, xs2, ys2)]
  tx, ty = data(jax.random.PRNGKey(42), 10)
  return contributors, Split(tx, ty, np.zeros(10, bool)), apply_fn, params


def _check_valuation_and_baselines(report):
  """Our values with and without `ntk.data_parallel`; every method's block-size error.

  (The baselines' values with and without it are checked by tests/test_baselines.py, in
  process, where their training and gradients are compiled already.)
  """
  from dv_jax import baselines  # pylint: disable=g-import-not-at-top
  from dv_jax import training  # pylint: disable=g-import-not-at-top
  contributors, target, apply_fn, params = _valuation_setup()
  config = baselines.default_config()
  config.update(valuation.preset_config('recommended'))  # one_hot: a grads call per class
  config.ntk.grad_block_size = 8  # 27 pooled examples: 4 blocks, the last one padded
  results = []
  for data_parallel in (False, True):
    config.ntk.data_parallel = data_parallel
    results.append(valuation.value_contributors(contributors, target, apply_fn=apply_fn,
                                                params=params, config=config))
  report['ours values, data_parallel True vs False'] = _max_rel_diff(results[1].values,
                                                                     results[0].values)
  report['ours terms, data_parallel True vs False'] = _max_rel_diff(results[1].terms.raw,
                                                                    results[0].terms.raw)
  assert report['ours values, data_parallel True vs False'] <= RTOL, report
  assert report['ours terms, data_parallel True vs False'] <= RTOL, report

  # A block size the 4 devices do not divide fails first, naming the config field.
  def no_training(*args, **kwargs):
    raise AssertionError('trained before checking the block size')

  training.train, training.train_many_seeds = no_training, no_training
  config.ntk.data_parallel = True
  config.ntk.grad_block_size = 6
  methods = {'ntk': valuation.value_contributors,
             **{f'baselines.{name}': baselines.BASELINES[name]
                for name in ('davinz', 'tracin', 'trak')}}
  for section, method in methods.items():
    if section != 'ntk':
      config[section].grad_block_size = 6
    try:
      method(contributors, target, apply_fn=apply_fn, params=params, config=config)
    except ValueError as e:
      assert f'config.{section}.grad_block_size must be a multiple of {NUM_DEVICES}' in str(e)
      assert 'config.ntk.data_parallel=True' in str(e), str(e)
      report[f'error {section}'] = str(e)
    else:
      raise AssertionError(f'{section}: grad_block_size 6 on 4 devices was accepted')


def _check_errors(report):
  apply_fn, params, x, y = _tiny_mlp()
  mesh = ntk.data_parallel_mesh()
  cases = {
      'grads block 6': lambda: ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x,
                                                     y, block_size=6, mesh=mesh),
      'ntk block 6': lambda: ntk.empirical_ntk_fn(apply_fn, block_size=6, mesh=mesh),
      'ntk block None': lambda: ntk.empirical_ntk_fn(apply_fn, mesh=mesh),
  }
  for name, call in cases.items():
    try:
      call()
    except ValueError as e:
      assert 'block_size must be a multiple of the 4 devices' in str(e), (name, str(e))
      report[f'error {name}'] = str(e)
    else:
      raise AssertionError(f'{name} was accepted')
  try:
    ntk.empirical_ntk_fn(apply_fn, vmap_axes=None, mesh=mesh)
  except ValueError as e:
    assert 'mesh must be None when vmap_axes is None' in str(e), str(e)
  else:
    raise AssertionError('vmap_axes=None with a mesh was accepted')
  # jax.make_mesh gives Explicit axes in recent JAX; a 2 x 2 one works as well.
  mesh_2x2 = jax.make_mesh((2, 2), ('a', 'b'))
  got = ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, y, block_size=8,
                              mesh=mesh_2x2)
  want = ntk.per_example_grads(ntk.true_class_logit(apply_fn), params, x, y, block_size=8)
  report['per_example_grads 2x2 make_mesh'] = _max_rel_diff(got, want)
  assert report['per_example_grads 2x2 make_mesh'] <= RTOL


def _run_sharded_checks() -> None:
  jax.config.update('jax_numpy_rank_promotion', 'raise')  # as tests/conftest.py
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  report = {}
  for check in (_check_per_example_grads, _check_empirical_ntk,
                _check_sharded_input_without_mesh, _check_mesh_is_used,
                _check_valuation_and_baselines, _check_errors):
    start = time.perf_counter()
    check(report)
    report[f'seconds {check.__name__}'] = round(time.perf_counter() - start, 2)
  print('REPORT ' + json.dumps(report))


def test_sharded_on_four_devices():
  # The session's other XLA flags (conftest's optimisation level) carry over; the device
  # count is this test's own.
  flags = [flag for flag in os.environ.get('XLA_FLAGS', '').split()
           if not flag.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={NUM_DEVICES}')
  env = dict(os.environ, XLA_FLAGS=' '.join(flags), JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = str(_ROOT) + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                        timeout=300, check=False, cwd=str(_ROOT))
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = next(json.loads(line[len('REPORT '):]) for line in proc.stdout.splitlines()
                if line.startswith('REPORT '))
  print(json.dumps(report, indent=1))  # shown with pytest -s
  assert any(k.startswith('empirical_ntk ntk_vector_products') for k in report)


# ----------------------------------------------------------------------------------------
# In process: the default path and the config field.


def _pure_apply(params, x):  # a plain-function model: no flax init in process
  return jnp.tanh(x @ params['w1'] + params['b1'][None]) @ params['w2']


def _pure_model():
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {'w1': jax.random.normal(k1, (5, 7)), 'b1': jax.random.normal(k2, (7,)),
            'w2': jax.random.normal(k3, (7, 3))}
  x = jax.random.normal(k4, (13, 5))
  return params, x, jnp.arange(13, dtype=jnp.int32) % 3


def test_no_mesh_is_the_unchanged_default_path():
  params, x, y = _pure_model()
  scalar_fn = ntk.true_class_logit(_pure_apply)
  before = ntk._grads_block._cache_size()  # pylint: disable=protected-access
  default = ntk.per_example_grads(scalar_fn, params, x, y, block_size=8)
  explicit = ntk.per_example_grads(scalar_fn, params, x, y, block_size=8, mesh=None)
  # The same jitted program (no sharding argument, no second compile), the same numbers,
  # on the default device.
  assert ntk._grads_block._cache_size() - before == 1  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))
  assert explicit.sharding.device_set == {jax.devices()[0]}
  # Example 0's row by hand: d g / d w2[:, y] = tanh(x W1 + b1), the other columns 0.
  h = np.tanh(np.asarray(x[0], np.float64) @ np.asarray(params['w1'], np.float64)
              + np.asarray(params['b1'], np.float64))
  w2_grad = np.zeros((7, 3))
  w2_grad[:, int(y[0])] = h
  w2_columns = slice(7 + 35, 7 + 35 + 21)  # leaf order b1 [7], w1 [35], w2 [21]
  assert _max_rel_diff(explicit[0, w2_columns], w2_grad.ravel()) <= RTOL


def test_data_parallel_is_off_by_default_and_read_tolerantly():
  config = valuation.default_config()
  assert config.ntk.data_parallel is False
  assert valuation.gradient_mesh(config, block_size=5, field='ntk.grad_block_size') is None
  # Baseline configs have no ntk section; older configs no field: one device.
  for section in (None, {'grad_block_size': 5}):
    other = valuation.default_config()
    other.unlock()  # default_config() is locked: a field cannot be removed from it
    if section is None:
      del other['ntk']
    else:
      other.ntk = section
    assert valuation.gradient_mesh(other, block_size=5, field='x') is None
  config.ntk.data_parallel = True
  mesh = valuation.gradient_mesh(config, block_size=jax.device_count() * 8, field='x')
  assert isinstance(mesh, jax.sharding.Mesh) and mesh.size == jax.device_count()
  assert list(mesh.devices.flat) == jax.local_devices()


def test_unit_fingerprints_leave_data_parallel_out():
  # It changes where the gradients are computed, not what: toggling it reuses every saved
  # unit, and units saved before the field existed keep their fingerprints.
  import importlib.util  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(_ROOT / 'experiments'))
  import valuation_table  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('valuation_table_config',
                                                _ROOT / 'configs' / 'valuation_table.py')
  configs = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(configs)
  assert configs.get_config('digits').ntk.data_parallel is False
  fingerprints = []
  for data_parallel in (False, True, None):  # None: a config saved before the field
    variant = configs.get_config('digits')
    if data_parallel is None:
      del variant.ntk['data_parallel']
    else:
      variant.ntk.data_parallel = data_parallel
    fingerprints.append([valuation_table.method_fingerprint(
        variant, valuation_table.method_config(variant, valuation_table.parse_variant(v)[1]))
                         for v in variant.valuation.variants])
  assert fingerprints[0] == fingerprints[1] == fingerprints[2]


@pytest.mark.parametrize('value', ['True', 1, None])
def test_data_parallel_must_be_a_bool(value):
  # A ConfigDict refuses a non-bool for the bool field; a plain mapping (a config read
  # back from JSON) is checked here.
  config = {'ntk': {'data_parallel': value}}
  with pytest.raises(ValueError, match='config.ntk.data_parallel must be True or False'):
    valuation.gradient_mesh(config, block_size=8, field='ntk.grad_block_size')


@pytest.mark.parametrize('mesh, message', [
    ('devices', 'mesh must be a jax.sharding.Mesh or None'),
    (jax.devices(), 'mesh must be a jax.sharding.Mesh or None'),
])
def test_mesh_must_be_a_mesh(mesh, message):
  params, x, y = _pure_model()
  with pytest.raises(ValueError, match=message):
    ntk.per_example_grads(ntk.true_class_logit(_pure_apply), params, x, y, mesh=mesh)
  with pytest.raises(ValueError, match=message):
    ntk.empirical_ntk_fn(_pure_apply, block_size=8, mesh=mesh)


if __name__ == '__main__':
  _run_sharded_checks()
