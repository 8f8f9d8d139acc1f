"""The command line every experiment script shares.

  python experiments/<name>.py --config=configs/<name>.py:<variant> --workdir=DIR \
      [--config.section.field=value ...]

`main(run, name=...)` defines the two flags (`--config`, locked, and `--workdir`), checks the
overrides before absl parses them, and runs `main`: write `config.json` (a new workdir; a
rerun rewrites it once it succeeds), add the log file, log the command, `environment()` and
the config, call the script's importable `run(config, workdir)` (a failure is logged too;
SIGTERM stops it as Ctrl-C does, temporary files removed).
`--config=configs/from_json.py:<workdir>/config.json` reruns a saved config. Flags are
defined only when a script runs as `__main__`: tests import `run` from several scripts into
one process, and absl refuses a flag defined twice.
"""

import importlib.metadata
import importlib.util
import json
import math
import os
from pathlib import Path
import platform
import signal
import subprocess
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dv_jax import results


def _config_leaves(config, prefix: str = '') -> List[Tuple[str, Any]]:
  """`(dotted path, value)` of every field of a ConfigDict (tuples and lists are leaves)."""
  leaves = []
  for name, value in config.items():
    path = f'{prefix}{name}'
    if hasattr(value, 'items') and callable(value.items):
      leaves += _config_leaves(value, prefix=f'{path}.')
    else:
      leaves.append((path, value))
  return leaves


def valid_config_keys(config) -> List[str]:
  """Every dotted field path of a ConfigDict (tuples and lists are leaves)."""
  return [path for path, _ in _config_leaves(config)]


def nan_fields(config) -> List[str]:
  """Dotted paths of the NaN values in a ConfigDict (inside tuples / lists too).

  No setting of any experiment means anything as NaN, and a NaN that reaches a library
  function fails there under the function's argument name, not the config key.
  """
  def is_nan(value):
    return isinstance(value, float) and math.isnan(value)

  found = []
  for path, value in _config_leaves(config):
    if isinstance(value, (tuple, list)):
      found += [f'{path}[{i}]' for i, item in enumerate(value) if is_nan(item)]
    elif is_nan(value):
      found.append(path)
  return found


def _config_argument(argv: Sequence[str], flag: str) -> Optional[str]:
  """The value of `--flag=VALUE` or `--flag VALUE` (absl accepts both), else None."""
  value = None
  for index, arg in enumerate(argv):
    if arg.startswith(f'--{flag}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{flag}' and index + 1 < len(argv):
      value = argv[index + 1]
  return value


def load_config_file(config_arg: str, *, flag: str = 'config'):
  """The config `--<flag>=path[:variant]` names, built as config_flags builds it.

  Raises:
    app.UsageError: the file is missing, is not a Python config, or its `get_config` fails.
  """
  path, _, variant = config_arg.partition(':')
  if not Path(path).is_file():
    raise app.UsageError(f'--{flag}={config_arg}: no such config file {path!r}')
  spec = importlib.util.spec_from_file_location('_checked_config', path)
  if spec is None or spec.loader is None:
    raise app.UsageError(f'--{flag}={config_arg}: {path!r} is not a Python config file')
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    # As config_flags does: get_config(arg) with a ':arg' suffix, get_config() without.
    return module.get_config(variant) if variant else module.get_config()
  except Exception as error:  # the config file's own message, e.g. an unknown variant
    raise app.UsageError(f'--{flag}={config_arg}: {error}') from error


def floats_where_the_default_has_floats(config, default) -> List[str]:
  """Whole numbers typed into a float tuple become floats, in place; returns their paths.

  ml_collections keeps each tuple element's literal type, so `--config.data.pis=0,0.5` gave
  `(0, 0.5)`: the same setting as the default's `(0.0, 0.5)`, but another `config.json`,
  so its unit fingerprints differed and a rerun was refused as "a setting changed".
  """
  defaults = dict(_config_leaves(default))
  changed = []
  for path, value in _config_leaves(config):
    before = defaults.get(path)
    if not (isinstance(value, tuple) and isinstance(before, tuple) and before
            and all(isinstance(v, float) for v in before)):
      continue
    if any(isinstance(v, int) and not isinstance(v, bool) for v in value):
      section = config
      *parents, name = path.split('.')
      for parent in parents:
        section = section[parent]
      section[name] = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool)
                            else v for v in value)
      changed.append(path)
  return changed


def check_config_overrides(argv: Sequence[str], *, flag: str = 'config'):
  """Fails on a `--config.a.b=...` override that names no field, listing the valid ones.

  `lock_config=True` already rejects such a flag, but only with the bare unknown name; this
  check runs before flag parsing and says which keys exist. It loads the config file to do
  so, so a missing file or an unknown variant is reported here, in one line.

  Returns:
    The config as the file gives it, before the overrides (None without overrides).

  Raises:
    app.UsageError: an override names no field (or a whole section) of the config, or the
      config file cannot be loaded.
  """
  overrides = [arg.split('.', 1)[1].split('=', 1)[0] for arg in argv[1:]
               if arg.startswith((f'--{flag}.', f'--no{flag}.'))]
  config_arg = _config_argument(argv[1:], flag)
  if config_arg is None or not overrides:
    return None
  config = load_config_file(config_arg, flag=flag)
  valid = valid_config_keys(config)
  for key in overrides:
    if key in valid:
      continue
    if any(k.startswith(f'{key}.') for k in valid):
      fields = sorted({k[len(key) + 1:].split('.')[0] for k in valid if k.startswith(f'{key}.')})
      raise app.UsageError(f'--{flag}.{key} names a section, not a field; set one of its '
                           f'fields: ' + ', '.join(fields))
    # List the fields of the deepest section that exists (the top level if none does).
    parts = key.split('.')
    for depth in range(len(parts) - 1, -1, -1):
      section = '.'.join(parts[:depth])
      prefix = f'{section}.' if section else ''
      fields = sorted({k[len(prefix):].split('.')[0] for k in valid if k.startswith(prefix)})
      if fields:
        break
    where = f'{flag}.{section}' if section else flag
    raise app.UsageError(f'--{flag}.{key}: no such config field. Valid keys of {where}: '
                         + ', '.join(fields))
  return config


def environment() -> dict:
  """What a run's numbers depend on besides its config: versions, devices, precision flags.

  Unit fingerprints are of the config only (`dv_jax.results`), so this, logged at each
  run's start, is what tells later which code and which hardware produced a workdir. The
  commit is that of the checkout `dv_jax` was imported from (`dv_jax_path`): a script run
  from a second checkout with the first one's environment computes with the first one's
  library (its editable install), and `script_checkout` then names where the script lives.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import dv_jax  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'dv_jax'):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  root = Path(dv_jax.__file__).resolve().parent.parent
  script_root = Path(__file__).resolve().parent.parent

  def git(*args):
    return subprocess.run(['git', '-C', str(root), *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()

  try:
    commit, dirty = git('rev-parse', 'HEAD'), bool(git('status', '--porcelain', '--', '.'))
  except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
    commit, dirty = None, None
  return {'python': platform.python_version(), 'versions': versions,
          'dv_jax_path': str(Path(dv_jax.__file__).resolve().parent), 'git_commit': commit,
          'uncommitted_changes': dirty,
          **({} if script_root == root else {'script_checkout': str(script_root)}),
          'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
          # The random bits every key gives (flipping the first moves every init and draw);
          # read from jax.config, whichever way they were set.
          **{flag: getattr(jax.config, flag, None)
             for flag in ('jax_threefry_partitionable', 'jax_default_prng_impl',
                          'jax_enable_x64')},
          **{var: os.environ.get(var) for var in ('JAX_DEFAULT_MATMUL_PRECISION',
                                                  'JAX_ENABLE_X64', 'XLA_FLAGS')}}


def _exit_on_sigterm(signum: int, frame: Any) -> None:
  """SIGTERM (a scheduler's preemption, `kill`) ends the run as Ctrl-C does: by an
  exception, so a result being written loses its temporary file and log.txt says the run
  stopped. Python's default ends the process on the spot, leaving both undone. Exit status
  128 + 15, the shell's for a process killed by SIGTERM."""
  del frame
  raise SystemExit(128 + signum)


def main(run: Callable[[Any, str], Any], *, name: str) -> None:
  """Runs an experiment script: flags, override check, config.json, log, `run`."""
  config_flags.DEFINE_config_file('config', None, 'Path to the config file[:variant].',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for results, figures and the log.')
  flags.mark_flags_as_required(['config', 'workdir'])
  try:
    default = check_config_overrides(sys.argv)
  except app.UsageError as error:
    sys.exit(f'FATAL Flags parsing error: {error}')

  def _main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError('Too many command-line arguments.')
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    # `--workdir=$UNSET` wrote every output into the current directory, and bash does not
    # expand `~` after `=`: `--workdir=~/runs` made a folder literally named `~`.
    if not workdir.strip():
      raise app.UsageError('--workdir is empty (an unset variable?): name a directory')
    workdir = os.path.expanduser(workdir)
    if default is not None:  # overrides were given: read against the file's own values
      floats_where_the_default_has_floats(config, default)
    bad = nan_fields(config)
    if bad:
      raise app.UsageError('NaN is not a valid setting: ' + ', '.join(f'--config.{b}'
                                                                     for b in bad))
    # config.json describes the results in the workdir. A rerun may change a setting its
    # saved units depend on and be refused (UnitStore fingerprints): the old config.json
    # must survive that, so a rerun rewrites it only once it has succeeded.
    if not (Path(workdir) / 'config.json').exists():
      results.save_config(config, workdir)
    results.setup_logging(workdir)
    logging.info('command: %s', ' '.join(sys.argv))
    env = environment()
    logging.info('environment: %s', json.dumps(env))
    if 'script_checkout' in env:
      logging.warning('this script is from %s but dv_jax was imported from %s (the '
                      "environment's install): the results are computed with that library",
                      env['script_checkout'], env['dv_jax_path'])
    logging.info('config:\n%s', config)
    start = time.perf_counter()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
      run(config, workdir)
    except BaseException:
      # Into log.txt too: the config just logged is not what config.json and the results
      # in the workdir were computed under.
      logging.exception('%s stopped; config.json and the saved results are those of the '
                        'last run that finished', name)
      raise
    results.save_config(config, workdir)
    logging.info('%s finished in %.1f s', name, time.perf_counter() - start)

  app.run(_main)
