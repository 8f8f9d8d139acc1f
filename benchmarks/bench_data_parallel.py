"""Per-example gradients on one device against the same blocks split over all devices.

`dv_jax.ntk.per_example_grads` (the kernel every gradient-based method shares: our NTK
term, DAVINZ, TracIn, TRAK) is timed in ONE process, on the same inputs, without a mesh
(each block on the default device) and with `mesh=dv_jax.ntk.data_parallel_mesh()` (each
block's examples split over every device, parameters replicated), what
`config.ntk.data_parallel=True` does. On a CPU-only machine the script asks XLA for
`--devices` host devices (4) before JAX starts, unless XLA_FLAGS already sets a count; on a
GPU / TPU host the flag is inert and the mesh is the accelerators.

Cases (true-class logit, `n` examples, blocks of `--block-size`):
  - `mlp`: flax MLP `d-width-width-10` on `d = 64` inputs;
  - `cnn`: `dv_jax.models.cnn.SmallCNN(channels=(16, 32))` on 28 x 28 x 1 images;
  - `mlp+proj`, `cnn+proj`: the same with a Rademacher projection to `--projection-dim`.
    Every device draws the whole projection matrix for its block (the key is replicated),
    so that part of a block's work is not split.

Times exclude compilation (both paths are run once first) and are the median of
`--repeats` calls; `ratio` is the one-device time over the mesh time; `err` the largest
difference between the two results over the largest entry (float32 rounding only: no sum
runs across examples). The mesh time includes gathering each block's `[b, out]` result
onto the first device, a copy that is cheap between accelerators but a plain (and on
this machine slow, ~2 GB/s) memory copy between virtual CPU devices.

Virtual CPU devices share the machine's cores: with `c` physical cores the ratio cannot
exceed ~`c`, and XLA already spreads one device's larger ops over the cores (intra-op
threads), so the split mostly helps where a block's ops are too small to use them all.
On accelerators each device is real and the ratio is what the hardware gives.

Usage:
  .venv/bin/python benchmarks/bench_data_parallel.py                 # about a minute
  .venv/bin/python benchmarks/bench_data_parallel.py --n 512 --repeats 2
  PYTHONPATH=. .venv-nt/bin/python benchmarks/bench_data_parallel.py  # jax 0.5.3
"""

import argparse
import os
import sys
import time


def _set_device_count(count: int) -> None:
  """Asks XLA for `count` host devices; must run before JAX is imported."""
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_force_host_platform_device_count' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={count}'.strip()


def _models(width: int):
  from dv_jax.models.cnn import SmallCNN  # pylint: disable=g-import-not-at-top
  from dv_jax.models.mlp import MLP  # pylint: disable=g-import-not-at-top
  mlp = MLP(hidden_sizes=(width, width), num_classes=10)
  return {'mlp': (mlp, (64,)), 'cnn': (SmallCNN(channels=(16, 32)), (28, 28, 1))}


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn().block_until_ready()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--devices', type=int, default=4,
                      help='host devices asked of XLA (CPU only; ignored if XLA_FLAGS sets it)')
  parser.add_argument('--n', type=int, default=1024, help='examples')
  parser.add_argument('--block-size', type=int, default=256)
  parser.add_argument('--width', type=int, default=256, help='MLP hidden width')
  parser.add_argument('--projection-dim', type=int, default=512)
  parser.add_argument('--repeats', type=int, default=3, help='timed calls per path (median)')
  parser.add_argument('--cases', nargs='+', default=['mlp', 'mlp+proj', 'cnn', 'cnn+proj'])
  args = parser.parse_args()
  _set_device_count(args.devices)

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from dv_jax import ntk  # pylint: disable=g-import-not-at-top

  mesh = ntk.data_parallel_mesh()
  print(f'jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices, '
        f'{os.cpu_count()} CPUs visible, n = {args.n}, block = {args.block_size} '
        f'({args.block_size // mesh.size} examples per device)')
  header = (f'{"case":<9} {"p":>9} {"out":>9} {"one device s":>13} {"mesh s":>9} '
            f'{"ratio":>6} {"err":>8}')
  print(header)
  print('-' * len(header))
  models = _models(args.width)
  for case in args.cases:
    model, shape = models[case.split('+')[0]]
    x = jax.random.normal(jax.random.PRNGKey(1), (args.n, *shape))
    y = jax.random.randint(jax.random.PRNGKey(2), (args.n,), 0, 10)
    params = model.init(jax.random.PRNGKey(0), x[:1])
    num_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    projection = (ntk.Projection(args.projection_dim, 'rademacher', jax.random.PRNGKey(3))
                  if case.endswith('+proj') else None)
    scalar_fn = ntk.true_class_logit(model.apply)

    def grads(use_mesh, scalar_fn=scalar_fn, params=params, x=x, y=y, projection=projection):
      return ntk.per_example_grads(scalar_fn, params, x, y, projection=projection,
                                   block_size=args.block_size,
                                   mesh=mesh if use_mesh else None)

    one, split = grads(False), grads(True)  # compiles both paths
    err = float(np.abs(np.asarray(one) - np.asarray(split)).max()
                / np.abs(np.asarray(one)).max())
    del one, split
    one_s = _median_seconds(lambda: grads(False), args.repeats)
    mesh_s = _median_seconds(lambda: grads(True), args.repeats)
    out = args.projection_dim if projection else num_params
    print(f'{case:<9} {num_params:>9,} {out:>9,} {one_s:>13.3f} {mesh_s:>9.3f} '
          f'{one_s / mesh_s:>5.2f}x {err:>8.1e}')


if __name__ == '__main__':
  main()
