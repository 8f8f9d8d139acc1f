"""Block-diagonal NTK terms of coalitions of one pool: compiles, the old way and the new.

The digits valuation table's `ours-block-diagonal-N` row values each of its 12
contributors, all of different sizes `n`, by the block-diagonal NTK term on the
contributor's rows of the pool's `[N, q]` gradient factor. The old way,
`bound.ntk_term(factor[rows], residual[rows], method='block_diagonal')`, compiled for every
`n` the gather `factor[rows]`, the finiteness check of the `[n, q]` result and
`_permuted_blocks`, a program that drew `jax.random.permutation(key, n)` (a threefry draw
and a sort, about a second on 2 CPU cores) and cut the rows into blocks. The new
`bound.block_diagonal_ntk_term_of_rows(factor, residual, rows, ...)` draws the same
permutation with a program compiled once per power-of-two bucket of `n`
(`bound.permutation`) and gathers each `[B]` block from the factor, so after the first
coalition nothing compiles per size.

Each way runs in a fresh subprocess (`case_runner.spawn`: nothing compiled is shared); both
compute the terms of the same coalitions (default: the digits draw-0 contributor sizes, a
pool of N = 1440 rows, q = 4810 as the digits MLP, a `[N]` residual, B = 64), cold. The
script prints each way's wall time and XLA compiles, the ratio old / new, and whether the
values agree bit for bit (they must: the same permutations, the same block programs).

Usage:
  .venv/bin/python benchmarks/bench_block_diagonal_compiles.py            # ~20 s idle
  .venv/bin/python benchmarks/bench_block_diagonal_compiles.py --sizes 40 57 --q 64
"""

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import case_runner  # pylint: disable=g-import-not-at-top,wrong-import-position

# The digits table's 12 draw-0 contributor sizes (valuation_table.py:digits).
DIGITS_SIZES = (171, 69, 142, 98, 113, 200, 40, 84, 127, 185, 156, 55)


def _old_ntk_term(grads, residual, *, block_size, key, eps=1e-4):
  """`bound.ntk_term(..., method='block_diagonal')` as it was (one permutation)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dv_jax import bound  # pylint: disable=g-import-not-at-top
  from dv_jax import linalg  # pylint: disable=g-import-not-at-top

  @functools.partial(jax.jit, static_argnames=('block_size',))
  def permuted_blocks(key, grads_NxP, residual, *, block_size):
    n = grads_NxP.shape[0]
    num_blocks = -(-n // block_size)
    order = jax.random.permutation(key, n)
    order = jnp.concatenate([order, jnp.zeros((num_blocks * block_size - n,), order.dtype)])
    return (grads_NxP[order].reshape(num_blocks, block_size, -1),
            residual[order].reshape(num_blocks, block_size, -1))

  if not hasattr(_old_ntk_term, 'permuted_blocks'):
    _old_ntk_term.permuted_blocks = permuted_blocks
  grads = linalg.checked_float_array(grads, 'grads', ndims=(2,))
  residual = linalg.checked_float_array(residual, 'residual', ndims=(1, 2))
  n = grads.shape[0]
  block_size = min(block_size, n)
  num_blocks = -(-n // block_size)
  perm_key = jax.random.split(key, 1)[0]
  grads_blocks, residual_blocks = _old_ntk_term.permuted_blocks(perm_key, grads, residual,
                                                                block_size=block_size)
  total, max_jitter = jnp.zeros((), grads.dtype), 0.0
  for b in range(num_blocks):
    num_valid = min(block_size, n - b * block_size)
    theta, res, trace = bound._padded_block_gram(  # pylint: disable=protected-access
        grads_blocks[b], residual_blocks[b], num_valid)
    initial = eps * float(trace) / num_valid
    quad, jitter = linalg.quad_form(theta, res, initial_jitter=initial if initial > 0 else eps)
    total, max_jitter = total + quad, max(max_jitter, jitter)
  return linalg.safe_sqrt(jnp.mean(jnp.stack([total])) / n), max_jitter


def run_case(case: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.monitoring  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dv_jax import bound  # pylint: disable=g-import-not-at-top

  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **_: compiles.append(secs)
      if event == '/jax/core/compile/backend_compile_duration' else None)
  rng = np.random.default_rng(0)
  sizes = case['sizes']
  factor = jax.device_put(rng.normal(size=(sum(sizes), case['q'])).astype(np.float32))
  residual = rng.normal(size=(sum(sizes),) if case['c'] == 0
                        else (sum(sizes), case['c'])).astype(np.float32)
  bounds = np.cumsum([0] + list(sizes))
  coalitions = [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
  keys = jax.random.split(jax.random.PRNGKey(0), len(sizes))
  keys = [keys[i] for i in range(len(sizes))]  # sliced before the clock starts
  jax.block_until_ready(factor)
  values = []
  start = time.perf_counter()
  for rows, key in zip(coalitions, keys):
    if case['way'] == 'old':
      value, jitter = _old_ntk_term(factor[rows], residual[rows],
                                    block_size=case['block_size'], key=key)
    else:
      value, jitter = bound.block_diagonal_ntk_term_of_rows(
          factor, residual, rows, block_size=case['block_size'], num_permutations=1, key=key)
    values.append([float(value), jitter])
  seconds = time.perf_counter() - start
  return {'seconds': seconds, 'compiles': len(compiles), 'compile_s': sum(compiles),
          'values': values}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--case', help=argparse.SUPPRESS)
  parser.add_argument('--sizes', type=int, nargs='+', default=list(DIGITS_SIZES))
  parser.add_argument('--q', type=int, default=4810, help='factor width (the digits MLP)')
  parser.add_argument('--c', type=int, default=0, help='residual columns (0: a [N] residual)')
  parser.add_argument('--block-size', type=int, default=64)
  parser.add_argument('--timeout', type=float, default=600)
  args = parser.parse_args()
  if args.case:
    case_runner.print_result(run_case(json.loads(args.case)))
    return
  results = {}
  for way in ('old', 'new'):
    case = dict(way=way, sizes=args.sizes, q=args.q, c=args.c, block_size=args.block_size)
    results[way] = case_runner.spawn(__file__, case, args.timeout)
    if 'status' in results[way]:
      sys.exit(f'{way}: {results[way]["status"]}')
  print(f'{len(args.sizes)} coalitions of a pool of N = {sum(args.sizes)}, n = '
        f'{min(args.sizes)}..{max(args.sizes)}, q = {args.q}, c = {args.c or "[N]"}, '
        f'B = {args.block_size}: block-diagonal NTK terms, a cold process each')
  print(f'{"way":<4} {"seconds":>8} {"compiles":>9} {"compile_s":>10}')
  for way in ('old', 'new'):
    r = results[way]
    print(f'{way:<4} {r["seconds"]:8.2f} {r["compiles"]:9d} {r["compile_s"]:10.2f}')
  identical = results['old']['values'] == results['new']['values']
  print(f'ratio old/new {results["old"]["seconds"] / results["new"]["seconds"]:.2f}x; '
        f'values identical: {identical}')
  if not identical:
    sys.exit('the values differ')


if __name__ == '__main__':
  main()
