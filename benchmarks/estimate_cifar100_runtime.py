"""How long the paper-scale `:cifar100` three-phase run takes on this machine, from timed units.

`experiments/three_phase_scaling.py --config=configs/three_phase_scaling.py:cifar100` trains
one ResNet-18 per |S| of its grid (11 sizes, 306 to 313,600 examples), each for
`steps_for(n)` SGD steps of batch 128 (512 to 32,768; 99,328 in all), then re-estimates
BatchNorm statistics (64 batches) and evaluates on the 10,000 test images. Running it
takes a GPU and the CIFAR-100 files; this script measures what one unit costs and adds the
units up, so a researcher knows what the full run asks before starting it.

What runs is the experiment's own code: `make_task` builds the `Cifar100Task` of the
config (the experiments' command line: `--config=configs/three_phase_scaling.py:<variant>`,
default the `cifar100` variant, with `--config.a.b=value` overrides), and `task.run_unit`
is the unit the experiment calls. Without `--data_dir` the task reads a `cifar100.npz` the
script writes with random pixels at the real sizes (500 train and 100 test images per
class, or `--per_class`): timing does not depend on the pixel values.

Measured (each call blocks until its result is on the host):
  - the smallest size's unit at S1 and then at S2 = 2 S1 steps (`--steps`), each twice:
    a first call compiles the training program (one per (steps, capacity), as in the
    run), the second is the steady cost;
  - per step = (steady(S2) - steady(S1)) / (S2 - S1); overhead = steady(S1) - S1 * per
    step (sampling, init, BatchNorm re-estimation, evaluation); compile per unit =
    first(S2) - steady(S2), the training program alone; one-off = first(S1) - steady(S1)
    - compile per unit, the programs every unit shares (init, BatchNorm step, evaluation),
    which the first unit of a run compiles;
  - estimate = one-off + sum over the run's units (`planned_units`: every seed of every
    size, and the measured truncation modes' units if `truncation.measure`) of
    steps(n) * per step + overhead, plus compile
    per unit once per training program of the run, i.e. per distinct (steps, capacity):
    the capacity is the next power of two >= n, so each size has its own, unless
    `train.pad_to_max` pads every size to the largest one's (then sizes with equal step
    counts share a program). The units are timed with the experiment's own `pad_to`. The
    largest sizes also copy their padded data to the device (capacity * 3072 * 4 bytes:
    6.4 GB at 313,600 examples) once; that is not in the estimate.

One run (NVIDIA H200, jax 0.11.2, the paper's config, `--steps 256`, random pixels): per
step 4.39 ms, overhead 0.45 s, compile per unit 2.9 s, one-off 8.8 s; 99,328 steps in
all (one seed, 11 units): about 480 s (8 min) for the whole grid, of which 436 s are
steps. The training runs at JAX's default matmul precision (TF32 on this GPU), as the
experiment does.

Usage:
  python benchmarks/estimate_cifar100_runtime.py                     # the paper's config
  python benchmarks/estimate_cifar100_runtime.py --steps 64 --config.model.num_filters=8
  python benchmarks/estimate_cifar100_runtime.py --data_dir /data/cifar100 --out est.json
"""

import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from absl import app
from absl import flags
from ml_collections import config_flags

_ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, relative: str):
  spec = importlib.util.spec_from_file_location(name, _ROOT / relative)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_random_cifar100(directory: Path, *, per_class_train: int, per_class_test: int,
                          seed: int = 0) -> Path:
  """`directory/cifar100.npz` (a layout `load_cifar100` reads): random uint8 pixels, every
  class present, `per_class_*` images of each class per split."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  y_train = np.repeat(np.arange(100), per_class_train)
  y_test = np.repeat(np.arange(100), per_class_test)
  directory.mkdir(parents=True, exist_ok=True)
  np.savez(directory / 'cifar100.npz',
           x_train=rng.integers(0, 256, size=(y_train.size, 32, 32, 3), dtype=np.uint8),
           y_train=y_train,
           x_test=rng.integers(0, 256, size=(y_test.size, 32, 32, 3), dtype=np.uint8),
           y_test=y_test)
  return directory


def _with_steps(config, steps: int):
  """A copy of `config` whose recipe gives exactly `steps` steps at every size."""
  copy = config.copy_and_resolve_references()
  copy.train.min_steps = steps
  copy.train.max_steps = steps
  return copy


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  args = flags.FLAGS
  per_class = [int(v) for v in args.per_class]
  if len(per_class) != 2 or min(per_class) < 1:
    raise app.UsageError(f'--per_class must be two counts >= 1 (train,test), got '
                         f'{args.per_class}')
  config = args.config  # the variant with its --config.a.b overrides, locked

  import jax  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, str(_ROOT))
  from dv_jax import training  # pylint: disable=g-import-not-at-top
  tps = _load('three_phase_scaling', 'experiments/three_phase_scaling.py')

  with tempfile.TemporaryDirectory() as tmp:
    if args.data_dir:
      config.data.directory = args.data_dir
    else:
      start = time.perf_counter()
      config.data.directory = str(write_random_cifar100(
          Path(tmp), per_class_train=per_class[0], per_class_test=per_class[1]))
      print(f'random CIFAR-100 folder written in {time.perf_counter() - start:.1f} s',
            flush=True)
    start = time.perf_counter()
    task = tps.make_task(config, jax.random.PRNGKey(config.seed))
    setup_s = time.perf_counter() - start
    grid = [int(n) for n in tps.size_grid(config)]
    # Every unit the experiment's run() trains, in its order: each seed of each size, and
    # the measured truncation modes' units when config.truncation.measure is set.
    units = [(mode, int(n), replicate) for mode, n, replicate in tps.planned_units(config)]
    steps = [tps.steps_for(n, config.train) for _, n, _ in units]
    pad_to = tps.run_pad_to(config, grid)  # as the experiment's run()
    print(f'jax {jax.__version__}, {jax.devices()[0].device_kind} ({jax.default_backend()}); '
          f'ResNet-18 num_filters={config.model.num_filters}, '
          f'batch {config.train.batch_size}, {len(task.data.y_train)} train / '
          f'{len(task.data.y_test)} test images; task set-up {setup_s:.1f} s', flush=True)

    n = grid[0]
    timings = {}
    for num_steps in (args.steps, 2 * args.steps):
      task.config = _with_steps(config, num_steps)
      for call in ('first', 'steady'):
        start = time.perf_counter()
        out = task.run_unit('hard', n, jax.random.PRNGKey(0), jax.random.PRNGKey(1), pad_to)
        timings[(num_steps, call)] = time.perf_counter() - start
        print(f'  n = {n}, {num_steps} steps, {call} call: {timings[(num_steps, call)]:.2f} s '
              f'(test loss {out["loss"]:.3f})', flush=True)
    task.config = config

  s1, s2 = args.steps, 2 * args.steps
  per_step = (timings[(s2, 'steady')] - timings[(s1, 'steady')]) / (s2 - s1)
  overhead = timings[(s1, 'steady')] - s1 * per_step
  compile_s = timings[(s2, 'first')] - timings[(s2, 'steady')]
  one_off_s = timings[(s1, 'first')] - timings[(s1, 'steady')] - compile_s
  # A unit compiles its training program unless an earlier unit compiled the same one.
  # A unit's cost depends on its size and steps, not on its truncation mode.
  programs, compiles = set(), []
  for (_, size, _), num in zip(units, steps):
    program = (num, training.padded_capacity(size, pad_to))
    compiles.append(0.0 if program in programs else compile_s)
    programs.add(program)
  unit_s = [num * per_step + overhead + c for num, c in zip(steps, compiles)]
  total = one_off_s + sum(unit_s)
  print(f'\nper step {per_step * 1e3:.2f} ms; per unit overhead {overhead:.2f} s; '
        f'compile per program {compile_s:.1f} s ({len(programs)} programs); one-off compile '
        f'{one_off_s:.1f} s')
  print('| n | units | steps per unit | estimated s |')
  print('|---:|---:|---:|---:|')
  for size in grid:
    mine = [i for i, (_, n, _) in enumerate(units) if n == size]
    print(f'| {size:,} | {len(mine)} | {steps[mine[0]]:,} | '
          f'{sum(unit_s[i] for i in mine):,.0f} |')
  print(f'| all {len(units)} units ({len(grid)} sizes), one-off compile included | | '
        f'{sum(steps):,} in all | {total:,.0f} ({total / 3600:.2f} h) |')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'config': config.to_dict(), 'jax': jax.__version__,
                 'device': jax.devices()[0].device_kind, 'cpus': os.cpu_count(),
                 'grid': grid, 'units': units, 'steps': steps, 'pad_to': pad_to,
                 'compiles_s': compiles, 'num_programs': len(programs),
                 'timings': {f'{k[0]}_{k[1]}': v for k, v in timings.items()},
                 'per_step_s': per_step, 'overhead_s': overhead, 'compile_s': compile_s,
                 'one_off_s': one_off_s, 'estimate_s': total}, f, indent=1, default=str)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  # The experiments' command line (experiments/launch.py): --config=FILE:variant, locked,
  # with --config.a.b=value overrides checked against the config's keys (before the flag
  # is defined: config_flags applies the overrides to its default as it defines it).
  sys.path.insert(0, str(_ROOT / 'experiments'))
  import launch  # pylint: disable=g-import-not-at-top
  default_config = str(_ROOT / 'configs' / 'three_phase_scaling.py') + ':cifar100'
  has_config = any(a == '--config' or a.startswith('--config=') for a in sys.argv[1:])
  try:
    launch.check_config_overrides(
        sys.argv if has_config else [sys.argv[0], f'--config={default_config}', *sys.argv[1:]])
  except app.UsageError as error:
    sys.exit(f'FATAL Flags parsing error: {error}')
  config_flags.DEFINE_config_file('config', default_config,
                                  'The three-phase config[:variant] (a cifar100 one).',
                                  lock_config=True)
  flags.DEFINE_string('data_dir', None, 'A real CIFAR-100 folder (default: random pixels).')
  flags.DEFINE_integer('steps', 256, 'S1; S2 = 2 S1.', lower_bound=1)
  flags.DEFINE_list('per_class', ['500', '100'],
                    'TRAIN,TEST images per class of the random folder (the real sizes).')
  flags.DEFINE_string('out', None, 'Write the measurements and the estimate as JSON.')
  app.run(main)
