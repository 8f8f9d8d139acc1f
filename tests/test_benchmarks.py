"""The benchmark scripts still run against the library (tiny sizes; the timings are not
checked, only that every case runs and agrees with its reference, that the sizes it prints
are the ones its case defines, and that the runtime estimate adds its parts up).

Benchmarks are not part of `make test`'s claims about speed: they print ratios against a
reference measured in the same run. These smoke runs only keep them from rotting when a
library signature changes. Marked slow (subprocesses that import JAX per case): the main
environment runs them. bench_kernels.py is left out (seven subprocesses, ~30 s even at
n = 32, for the NTK and MMD functions the unit tests already check against references):
`.venv/bin/python benchmarks/bench_kernels.py --sizes 32 --repeats 1` is its smoke run.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
  # Prepended, not replaced: packages reached through PYTHONPATH stay importable.
  env = {**os.environ,
         'PYTHONPATH': os.pathsep.join(filter(None, [str(_ROOT), os.environ.get('PYTHONPATH')]))}
  # LLVM's optimisation level 0, as conftest.py sets for the suite: these runs check
  # what the scripts print, never their timings, and the memory figures they check are
  # XLA's buffer assignment, made before LLVM (84 s -> 46 s for this file on 2 cores).
  # No device count: bench_data_parallel asks for its own.
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  out = subprocess.run([sys.executable, str(_ROOT / 'benchmarks' / script), *args],
                       capture_output=True, text=True, cwd=_ROOT, env=env, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


@pytest.mark.slow
def test_bench_block_diagonal_compiles_runs_and_agrees():
  text = _run('bench_block_diagonal_compiles.py', '--sizes', '9', '13', '--q', '8',
              '--block-size', '4')
  rows = [line.split() for line in text.splitlines() if line.startswith(('old ', 'new '))]
  assert [row[0] for row in rows] == ['old', 'new'], text
  assert 'values identical: True' in text, text


@pytest.mark.slow
def test_bench_data_parallel_runs_and_agrees_with_one_device():
  text = _run('bench_data_parallel.py', '--devices', '2', '--n', '16', '--block-size', '8',
              '--width', '8', '--projection-dim', '8', '--repeats', '1',
              '--cases', 'mlp', 'cnn+proj')
  rows = [line.split() for line in text.splitlines()
          if line.startswith(('mlp ', 'cnn+proj '))]
  assert [row[0] for row in rows] == ['mlp', 'cnn+proj'], text
  assert all(float(row[-1]) < 1e-5 for row in rows), text
  # The mesh is the asked-for 2 devices, each given its share of a block (XLA_FLAGS is
  # inert on an accelerator host, whose mesh is its own devices).
  devices, platform, per_device = re.search(
      r'(\d+) (\w+) devices, .*\((\d+) examples per device\)', text).groups()
  if platform == 'cpu':
    assert int(devices) == 2, text
  assert int(per_device) == 8 // int(devices), text
  # Each case runs its own model, and only +proj is projected: out is p, or the dim.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dv_jax.models.cnn import SmallCNN  # pylint: disable=g-import-not-at-top
  cnn = SmallCNN(channels=(16, 32)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  cnn_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(cnn))
  mlp_params = (64 * 8 + 8) + (8 * 8 + 8) + (8 * 10 + 10)  # d-width-width-10, biases
  assert [(int(row[1].replace(',', '')), int(row[2].replace(',', ''))) for row in rows] == [
      (mlp_params, mlp_params), (cnn_params, 8)], text


@pytest.mark.slow
def test_bench_lm_ntk_memory_compiles_the_paper_scale_block(tmp_path):
  out = tmp_path / 'lm.json'
  text = _run('bench_lm_ntk_memory.py', '--quick', '--cases', 'reference', 'last2+proj',
              '--block-size', '2', '--proj-dim', '16', f'--out={out}')
  rows = [line for line in text.splitlines() if line.startswith('| Qwen2.5-0.5B |')]
  assert len(rows) == 2 and all(row.rstrip().endswith('| ok |') for row in rows), text
  # The last two blocks, projected, need less than all parameters unprojected.
  ratio = float(rows[1].split('|')[9].strip().rstrip('x'))
  assert ratio > 1.0, rows
  reference, last2 = (row['result'] for row in json.loads(out.read_text())['rows'])
  b, t, vocab = 2, 128, 151936  # --block-size, --quick's t, Qwen2.5-0.5B's vocabulary
  # Closed forms of the Qwen2.5-0.5B shape (d 896, MLP 4864, 2 KV heads of 64, q/k/v
  # biases, tied head): all parameters (its published count), and the last two blocks
  # plus the final norm, what 'last_layers:2' selects.
  block = (896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
  total = 151936 * 896 + 24 * block + 896
  assert total == 494_032_768
  assert (reference['p'], reference['k']) == (total, None)
  assert (last2['p'], last2['k']) == (2 * block + 896, 16)
  for r in (reference, last2):
    assert r['peak'] == r['argument'] + r['output'] + r['temp'] - r['alias'], r
    assert r['logits_mb'] == 4 * b * t * vocab / 2**20, r
  # The block's inputs: every parameter, and the b x t tokens and response mask (4 bytes each).
  assert reference['argument'] == 4 * total + 2 * 4 * b * t
  # Its output: [b, p] float32 unprojected, [b, k] projected.
  assert (reference['output'], last2['output']) == (4 * b * total, 4 * b * 16)
  # The filter cuts the backward pass itself: the block never holds a gradient of every
  # parameter (4 p bytes), as it would if only the output were restricted.
  assert last2['temp'] < 4 * total, last2
  # The pool column: 2000 x (k or p) x 4 bytes.
  assert [row.split('|')[10].strip() for row in rows] == ['3.59 TB', '125 KB'], rows


def _estimate(tmp_path, *args):
  """estimate_cifar100_runtime on the cifar100_smoke config: (its stdout, its JSON).

  Step counts 2 to 16 across the grid (the smoke recipe gives 2 at every size); the timed
  units set their own steps, so this costs nothing.
  """
  out = tmp_path / 'estimate.json'
  text = _run('estimate_cifar100_runtime.py',
              f'--config={_ROOT / "configs" / "three_phase_scaling.py"}:cifar100_smoke',
              f'--out={out}', '--config.train.epochs=1.0', '--config.train.max_steps=16', *args)
  return text, json.loads(out.read_text())


@pytest.mark.slow
def test_estimate_cifar100_runtime_times_the_experiment_units(tmp_path):
  text, estimate = _estimate(tmp_path, '--steps=2', '--per_class=2,1',
                             '--config.scaling.num_seeds=2')  # every seed's units count
  assert sorted(estimate['timings']) == ['2_first', '2_steady', '4_first', '4_steady'], text
  # The estimate is the sum of the printed rows' parts, over every unit the run trains:
  # the 10 sizes x 2 seeds, and no measured truncation modes (before: one per size).
  assert len(estimate['grid']) == 10
  assert len(estimate['units']) == len(estimate['steps']) == 20
  assert sorted(n for _, n, _ in estimate['units']) == sorted(2 * estimate['grid'])
  # Each unit's steps are its size's recipe, clip(next_pow2(ceil(epochs n / batch 4)), 2, 16).
  assert estimate['steps'] == [min(max(1 << (math.ceil(n / 4) - 1).bit_length(), 2), 16)
                               for _, n, _ in estimate['units']]
  assert len(set(estimate['steps'])) == 4
  # The smoke config pads every size to the largest one's capacity, as its run does: one
  # training program per distinct step count, compiled once (before: once per size).
  assert estimate['pad_to'] == 1 << (max(estimate['grid']) - 1).bit_length()
  assert estimate['num_programs'] == len(set(estimate['steps']))
  assert sum(c > 0 for c in estimate['compiles_s']) == estimate['num_programs']
  expected = estimate['one_off_s'] + sum(
      s * estimate['per_step_s'] + estimate['overhead_s'] + c
      for s, c in zip(estimate['steps'], estimate['compiles_s']))
  assert estimate['estimate_s'] == pytest.approx(expected)
  assert '| all 20 units (10 sizes), one-off compile included |' in text


@pytest.mark.slow
def test_estimate_cifar100_runtime_compiles_per_size_capacity_without_pad_to_max(tmp_path):
  text, estimate = _estimate(tmp_path, '--steps=1', '--per_class=1,1',
                             '--config.train.pad_to_max=False')
  # Each size pads to its own next power of two, so a program is a (steps, capacity) pair:
  # sizes with equal step counts but different capacities compile apart.
  assert estimate['pad_to'] is None
  programs = {(s, 1 << (n - 1).bit_length())
              for (_, n, _), s in zip(estimate['units'], estimate['steps'])}
  assert len(programs) > len(set(estimate['steps']))
  assert estimate['num_programs'] == len(programs), text
  assert sum(c > 0 for c in estimate['compiles_s']) == len(programs)


_RSS_CHILD = '''
import json
import numpy as np
import case_runner

mib = 256
before = (case_runner.current_rss_mb(), case_runner.maxrss_mb())
# Reserved, never touched: address space the kernel has not backed with memory.
reserved = np.empty(2 * mib * 2**20, np.uint8)
untouched = (case_runner.current_rss_mb(), case_runner.maxrss_mb())
touched = np.ones(mib * 2**20, np.uint8)
after = (case_runner.current_rss_mb(), case_runner.maxrss_mb())
del touched
print(json.dumps({'mib': mib, 'before': before, 'untouched': untouched, 'after': after}))
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self')
def test_case_runner_reads_resident_memory_in_mib():
  # The memory columns of bench_lm_ntk_memory --measure are these two readings: a child
  # that reserves 512 MiB and touches 256 MiB must see only the 256 MiB, in MiB.
  env = {**os.environ, 'PYTHONPATH': str(_ROOT / 'benchmarks')}
  out = subprocess.run([sys.executable, '-c', _RSS_CHILD], capture_output=True, text=True,
                       env=env, timeout=60)
  assert out.returncode == 0, out.stderr[-3000:]
  rss = json.loads(out.stdout)
  (rss0, hwm0), (rss1, hwm1), (rss2, hwm2) = rss['before'], rss['untouched'], rss['after']
  # Virtual size (statm's first field, VmPeak) would grow by the reserved 512 MiB.
  assert abs(rss1 - rss0) < 8 and abs(hwm1 - hwm0) < 8, rss
  # In MiB (2^20 bytes, the tables' MB): VmHWM's kB / 1000 would read 262 for the 256.
  assert rss2 - rss1 == pytest.approx(rss['mib'], abs=3), rss
  assert hwm2 - hwm1 == pytest.approx(rss['mib'], abs=3), rss


@pytest.mark.slow
def test_bench_llm_finetune_memory_compiles_each_pair(tmp_path):
  # ~20 s: eight programs of a 2-block model. Each of the LLM configs' settings needs less
  # than the program it replaced, and by about what the shapes say: R = 3 vmapped models
  # against one, 512 evaluation rows of 2 seeds against 8 of one.
  out = tmp_path / 'ft.json'
  text = _run('bench_llm_finetune_memory.py', '--tiny', f'--out={out}')
  rows = {row['program']: row for row in json.loads(out.read_text())['rows']}
  assert list(rows) == ['ground truth', 'TRAK', 'TracIn', 'evaluation'], text
  ratio = {name: row['reference_gib'] / row['gib'] for name, row in rows.items()}
  assert all(r > 1.2 for r in ratio.values()), ratio
  assert ratio['TRAK'] > ratio['ground truth'] and ratio['evaluation'] > 20, ratio
