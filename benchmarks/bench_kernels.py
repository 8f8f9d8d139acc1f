"""Throughput of the empirical NTK and the multi-kernel MMD against references in one run.

NTK (trace over the logits, `x2 = None`, an MLP `d-width-width-10` on `d = 64` inputs):
  - dv_jax `jacobian_contraction` and `ntk_vector_products`, blocked
    (`min(--block-size, n)`);
  - dv_jax `neural_tangents` (neural-tangents per block) and neural-tangents' own
    `empirical_ntk_fn` on the whole batch, jitted, when neural-tangents is importable;
  - the reference: `jax.jacrev` of the whole batch, flattened to `[n, c, p]`, then one
    matmul (jitted). Reverse mode over the batched function back-propagates `n c`
    cotangents through the whole batch, so besides the Jacobian (`4 n c p` bytes) it holds
    `[n c, n, width]` activation cotangents per layer; it is skipped when that estimate,
    `4 n c (p + n (2 width + c))` bytes, exceeds `--max-whole-batch-gb` (the whole-batch
    neural-tangents case, which vmaps over examples, when `4 n c p` does).
MMD (biased, 5 kernels, `x, y` of `n` rows each in `d = 64`, the same explicit bandwidths):
  - `dv_jax.mmd.mk_mmd2` against a NumPy/SciPy reference: `scipy.spatial.distance.cdist`
    of the three pairs of sets, float64, the kernel sums in NumPy.

Every case runs in a fresh subprocess, so `peak MB` (the child's `VmHWM`) is the case's
own high-water mark, and `+MB` is that peak minus the child's resident size just before
the measured call (after imports, data and compilation). Times exclude compilation and
first calls: the blocked dv_jax kernels are warmed on one block (same compiled functions
as the full run), whole-batch jitted cases are compiled ahead of time and called once,
both MMD cases are warmed on the same inputs (the reference's first call imports SciPy)
and timed as the median of `--repeats` calls. `err` is the largest relative difference from
the reference case on a 16 x 16 probe of the kernel (NTK) or on the value (MMD).

Usage:
  .venv/bin/python benchmarks/bench_kernels.py              # n = 256 1024 4096
  .venv/bin/python benchmarks/bench_kernels.py --quick      # n = 64 128, ~35 s
  PYTHONPATH=. .venv-nt/bin/python benchmarks/bench_kernels.py --quick   # with neural-tangents
"""

import argparse
import json
import os
import sys
import time

import case_runner  # benchmarks/case_runner.py: the script's folder is on sys.path


NTK_CASES = ('reference', 'jacobian_contraction', 'ntk_vector_products', 'neural_tangents',
             'nt_whole_batch')
MMD_CASES = ('reference', 'mk_mmd2')
PROBE = 16


# ----------------------------------------------------------------------------------------
# Child side: one case, printed as one JSON line.


def _mlp(width: int):
  """The library's MLP, 2 hidden layers of `width` and 10 logits (p = 26,122 at 128, d = 64)."""
  from dv_jax.models.mlp import MLP  # pylint: disable=g-import-not-at-top
  return MLP(hidden_sizes=(width, width), num_classes=10)


def _run_ntk_case(case: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  n, name = case['n'], case['name']
  model = _mlp(case['width'])
  x = jax.random.normal(jax.random.PRNGKey(1), (n, case['dim']))
  params = model.init(jax.random.PRNGKey(0), x[:1])
  num_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  if name == 'reference':
    estimate_gb = 4 * n * 10 * (num_params + n * (2 * case['width'] + 10)) / 2**30
  else:
    estimate_gb = 4 * n * 10 * num_params / 2**30
  if name in ('reference', 'nt_whole_batch') and estimate_gb > case['max_whole_batch_gb']:
    return {'status': f'skipped (needs ~{estimate_gb:.1f} GB)'}

  compile_start = time.perf_counter()
  if name == 'reference':
    def reference(p, x_b):
      jac = jax.jacrev(model.apply)(p, x_b)
      j_ncp = jnp.concatenate([leaf.reshape(x_b.shape[0], 10, -1)
                               for leaf in jax.tree_util.tree_leaves(jac)], axis=2)
      j_np = j_ncp.reshape(x_b.shape[0], -1)
      return jnp.matmul(j_np, j_np.T, precision=jax.lax.Precision.HIGHEST) / 10
    compiled = jax.jit(reference).lower(params, x).compile()
    run = lambda: compiled(params, x)
    run().block_until_ready()  # an executable's first call is slower: warm, as the others
  elif name == 'nt_whole_batch':
    try:
      import neural_tangents as nt  # pylint: disable=g-import-not-at-top
    except ImportError:
      return {'status': 'not importable'}
    ntk_fn = nt.empirical_ntk_fn(model.apply, trace_axes=(-1,), vmap_axes=0,
                                 implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION)
    compiled = jax.jit(lambda x_b, p: ntk_fn(x_b, None, p)).lower(x, params).compile()
    run = lambda: compiled(x, params)
    run().block_until_ready()
  else:
    from dv_jax import ntk  # pylint: disable=g-import-not-at-top
    block_size = min(n, case['block_size'])  # no padding waste when n < block
    try:
      ntk_fn = ntk.empirical_ntk_fn(model.apply, implementation=name, block_size=block_size)
    except ImportError:
      return {'status': 'not importable'}
    # one block compiles every function the full run uses
    ntk_fn(x[:block_size], None, params).block_until_ready()
    run = lambda: ntk_fn(x, None, params)
  compile_s = time.perf_counter() - compile_start

  rss_before = case_runner.current_rss_mb()
  start = time.perf_counter()
  theta = run()
  theta.block_until_ready()
  run_s = time.perf_counter() - start
  probe = np.asarray(theta[:PROBE, :PROBE], np.float64)
  return {'status': 'ok', 'run_s': run_s, 'compile_s': compile_s, 'p': int(num_params),
          'peak_mb': case_runner.maxrss_mb(), 'delta_mb': case_runner.maxrss_mb() - rss_before,
          'probe': probe.tolist()}


def _reference_mmd2(x, y, bandwidths):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scipy.spatial.distance import cdist  # pylint: disable=g-import-not-at-top

  def mean_kernel(a, b):
    sq = cdist(a, b, 'sqeuclidean')
    return sum(np.exp(-sq / (2 * s)).mean() for s in bandwidths) / len(bandwidths)

  return mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)


def _run_mmd_case(case: dict) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top

  n, d = case['n'], case['dim']
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d))
  y = rng.normal(loc=0.1, size=(n, d))
  # the same bandwidths for both cases: METHOD.md's s_j = s * 2^(j - 2), s the median
  # pairwise squared distance of (the first 512 rows of) the target y
  yy = y[:512]
  pair_sq = ((yy[:, None, :] - yy[None, :, :]) ** 2).sum(-1)
  s = float(np.median(pair_sq[np.triu_indices(len(yy), 1)]))
  bandwidths = s * 2.0 ** (np.arange(5) - 2)

  if case['name'] == 'reference':
    run = lambda: _reference_mmd2(x, y, bandwidths)
  else:
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from dv_jax import mmd  # pylint: disable=g-import-not-at-top
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    bj = jnp.asarray(bandwidths, jnp.float32)
    run = lambda: float(mmd.mk_mmd2(xj, yj, bandwidths=bj, estimator='biased'))
  # Both warmed by one call: the compile, or SciPy's import on the reference's first call.
  start = time.perf_counter()
  run()
  compile_s = time.perf_counter() - start

  rss_before = case_runner.current_rss_mb()
  times = []
  for _ in range(case['repeats']):
    start = time.perf_counter()
    value = run()
    times.append(time.perf_counter() - start)
  return {'status': 'ok', 'run_s': float(np.median(times)), 'compile_s': compile_s,
          'peak_mb': case_runner.maxrss_mb(), 'delta_mb': case_runner.maxrss_mb() - rss_before,
          'probe': [[float(value)]]}


def _child(case: dict) -> None:
  result = _run_ntk_case(case) if case['kind'] == 'ntk' else _run_mmd_case(case)
  case_runner.print_result(result)


# ----------------------------------------------------------------------------------------
# Parent side: spawn, collect, print.


def _relative_error(probe, reference_probe) -> str:
  if reference_probe is None or probe is None:
    return '-'
  import numpy as np  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(probe), np.asarray(reference_probe)
  return f'{np.abs(a - b).max() / max(np.abs(b).max(), 1e-30):.1e}'


def _print_table(title: str, rows: list, unit: str) -> None:
  print(f'\n{title}')
  header = (f'{"n":>6}  {"case":<22} {"run s":>9} {unit:>12} {"vs ref":>8} '
            f'{"compile s":>9} {"peak MB":>8} {"+MB":>7} {"err":>8}  status')
  print(header)
  print('-' * len(header))
  for row in rows:
    r = row['result']
    if r['status'] != 'ok':
      print(f'{row["n"]:>6}  {row["name"]:<22} {"":>9} {"":>12} {"":>8} {"":>9} {"":>8} '
            f'{"":>7} {"":>8}  {r["status"]}')
      continue
    ref = row['reference']
    speedup = (f'{ref["run_s"] / r["run_s"]:.2f}x' if ref and ref['status'] == 'ok' else '-')
    throughput = row['n'] ** 2 / r['run_s']
    err = _relative_error(r.get('probe'), ref.get('probe') if ref and ref['status'] == 'ok'
                          else None)
    print(f'{row["n"]:>6}  {row["name"]:<22} {r["run_s"]:>9.4f} {throughput:>12.3g} '
          f'{speedup:>8} {r["compile_s"]:>9.2f} {r["peak_mb"]:>8.0f} {r["delta_mb"]:>7.0f} '
          f'{err:>8}  ok')
  sys.stdout.flush()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[256, 1024, 4096])
  parser.add_argument('--quick', action='store_true', help='n = 64 128 (overrides --sizes)')
  parser.add_argument('--width', type=int, default=128, help='MLP hidden width')
  parser.add_argument('--dim', type=int, default=64, help='input / feature dimension d')
  parser.add_argument('--block-size', type=int, default=256, help='dv_jax NTK block size')
  parser.add_argument('--max-whole-batch-gb', type=float, default=2.0,
                      help='skip whole-batch NTK cases whose estimated memory exceeds this')
  parser.add_argument('--repeats', type=int, default=3, help='timed MMD calls (median)')
  parser.add_argument('--timeout', type=float, default=600, help='seconds per case')
  parser.add_argument('--skip-ntk', action='store_true')
  parser.add_argument('--skip-mmd', action='store_true')
  parser.add_argument('--case', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.case:
    _child(json.loads(args.case))
    return

  sizes = [64, 128] if args.quick else args.sizes
  import jax  # pylint: disable=g-import-not-at-top
  print(f'python {sys.version.split()[0]}, jax {jax.__version__}, backend '
        f'{jax.default_backend()}, {os.cpu_count()} CPUs visible; MLP {args.dim}-'
        f'{args.width}-{args.width}-10, NTK block {args.block_size}, one subprocess per case')
  print('Times are noisy when the machine is shared.', flush=True)

  if not args.skip_ntk:
    rows = []
    for n in sizes:
      reference = None
      for name in NTK_CASES:
        case = {'kind': 'ntk', 'name': name, 'n': n, 'width': args.width, 'dim': args.dim,
                'block_size': args.block_size,
                'max_whole_batch_gb': args.max_whole_batch_gb}
        result = case_runner.spawn(__file__, case, args.timeout)
        if name == 'reference':
          reference = result
        rows.append({'n': n, 'name': name, 'result': result, 'reference': reference})
        print(f'  ntk n={n} {name}: {result["status"]}', file=sys.stderr, flush=True)
    _print_table('Empirical NTK, trace over logits, x2 = None (ref: jacrev + matmul)', rows,
                 'n^2/s')

  if not args.skip_mmd:
    rows = []
    for n in sizes:
      reference = None
      for name in MMD_CASES:
        case = {'kind': 'mmd', 'name': name, 'n': n, 'dim': args.dim, 'repeats': args.repeats}
        result = case_runner.spawn(__file__, case, args.timeout)
        if name == 'reference':
          reference = result
        rows.append({'n': n, 'name': name, 'result': result, 'reference': reference})
        print(f'  mmd n={n} {name}: {result["status"]}', file=sys.stderr, flush=True)
    _print_table('Multi-kernel MMD^2, biased, 5 kernels (ref: scipy cdist, float64)', rows,
                 'n^2/s')


if __name__ == '__main__':
  main()
