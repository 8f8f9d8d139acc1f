"""The benchmark scripts still run against the library (tiny sizes; the timings are not
checked, only that every case runs and agrees with its reference, and that the runtime
estimate adds its parts up).

Benchmarks are not part of `make test`'s claims about speed: they print ratios against a
reference measured in the same run. These smoke runs only keep them from rotting when a
library signature changes. Marked slow (subprocesses that import JAX per case): the main
environment runs them. bench_kernels.py is left out (seven subprocesses, ~30 s even at
n = 32, for the NTK and MMD functions the unit tests already check against references):
`.venv/bin/python benchmarks/bench_kernels.py --sizes 32 --repeats 1` is its smoke run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
  # Prepended, not replaced: packages reached through PYTHONPATH stay importable.
  env = {**os.environ,
         'PYTHONPATH': os.pathsep.join(filter(None, [str(_ROOT), os.environ.get('PYTHONPATH')]))}
  env.pop('XLA_FLAGS', None)  # bench_data_parallel sets its own device count
  out = subprocess.run([sys.executable, str(_ROOT / 'benchmarks' / script), *args],
                       capture_output=True, text=True, cwd=_ROOT, env=env, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


@pytest.mark.slow
def test_bench_data_parallel_runs_and_agrees_with_one_device():
  text = _run('bench_data_parallel.py', '--devices', '2', '--n', '16', '--block-size', '8',
              '--width', '8', '--projection-dim', '8', '--repeats', '1',
              '--cases', 'mlp', 'cnn+proj')
  rows = [line.split() for line in text.splitlines()
          if line.startswith(('mlp ', 'cnn+proj '))]
  assert [row[0] for row in rows] == ['mlp', 'cnn+proj'], text
  assert all(float(row[-1]) < 1e-5 for row in rows), text


@pytest.mark.slow
def test_bench_lm_ntk_memory_compiles_the_paper_scale_block():
  text = _run('bench_lm_ntk_memory.py', '--quick', '--cases', 'reference', 'last2+proj',
              '--block-size', '1', '--proj-dim', '16')
  rows = [line for line in text.splitlines() if line.startswith('| Qwen2.5-0.5B |')]
  assert len(rows) == 2 and all(row.rstrip().endswith('| ok |') for row in rows), text
  # The last two blocks, projected, need less than all parameters unprojected.
  ratio = float(rows[1].split('|')[9].strip().rstrip('x'))
  assert ratio > 1.0, rows


@pytest.mark.slow
def test_estimate_cifar100_runtime_times_the_experiment_units(tmp_path):
  out = tmp_path / 'estimate.json'
  text = _run('estimate_cifar100_runtime.py',
              f'--config={_ROOT / "configs" / "three_phase_scaling.py"}:cifar100_smoke',
              '--steps=2', '--per_class=2,1', f'--out={out}',
              '--config.scaling.num_seeds=2')  # the estimate counts every seed's units
  estimate = json.loads(out.read_text())
  assert sorted(estimate['timings']) == ['2_first', '2_steady', '4_first', '4_steady'], text
  # The estimate is the sum of the printed rows' parts, over every unit the run trains:
  # the 10 sizes x 2 seeds, and no measured truncation modes (before: one per size).
  assert len(estimate['grid']) == 10
  assert len(estimate['units']) == len(estimate['steps']) == 20
  assert sorted(n for _, n, _ in estimate['units']) == sorted(2 * estimate['grid'])
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
