"""The shared command line of the experiment scripts (experiments/launch.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / 'experiments'))
import launch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

TPS_CONFIG = _ROOT / 'configs' / 'three_phase_scaling.py'
# The experiments' configs; from_json.py reads a saved config.json back instead.
CONFIGS = sorted(p.name for p in (_ROOT / 'configs').glob('*.py') if p.name != 'from_json.py')


def test_override_typo_lists_the_valid_keys():
  argv = ['prog', f'--config={TPS_CONFIG}:smoke', '--config.data.k=5', '--config.data.kk=3']
  with pytest.raises(Exception, match=r'config\.data\.kk: no such config field\. Valid keys '
                     r'of config\.data: beta, directory, k, name, normalize, num_answers'):
    launch.check_config_overrides(argv)
  with pytest.raises(Exception, match=r'Valid keys of config: data, fit, model, output'):
    launch.check_config_overrides(['prog', f'--config={TPS_CONFIG}', '--config.dat.k=3'])
  launch.check_config_overrides(argv[:3])  # valid overrides pass
  launch.check_config_overrides(['prog', f'--config={TPS_CONFIG}', '--noconfig.output.progress'])
  # absl's boolean spelling `--noconfig.x` is an override too, so its typo is caught as well.
  with pytest.raises(launch.app.UsageError, match=r'config\.output\.progres: no such config'):
    launch.check_config_overrides(['prog', f'--config={TPS_CONFIG}', '--noconfig.output.progres'])


def test_override_check_reads_every_spelling_and_reports_load_errors_in_one_line():
  # absl takes `--config PATH` as well as `--config=PATH`.
  with pytest.raises(launch.app.UsageError, match='config.data.kk: no such config field'):
    launch.check_config_overrides(['prog', '--config', f'{TPS_CONFIG}:smoke',
                                   '--config.data.kk=3'])
  with pytest.raises(launch.app.UsageError, match="unknown variant 'smok'"):
    launch.check_config_overrides(['prog', f'--config={TPS_CONFIG}:smok', '--config.seed=1'])
  with pytest.raises(launch.app.UsageError, match='no such config file'):
    launch.check_config_overrides(['prog', '--config=configs/nope.py:smoke', '--config.seed=1'])
  with pytest.raises(launch.app.UsageError, match='config.fit names a section, not a field; '
                     'set one of its fields: bootstrap'):
    launch.check_config_overrides(['prog', f'--config={TPS_CONFIG}:smoke', '--config.fit=3'])


def test_whole_numbers_in_a_float_tuple_become_floats():
  import ml_collections  # pylint: disable=g-import-not-at-top
  default = ml_collections.ConfigDict({'data': {'pis': (0.0, 0.5), 'ks': (10, 30),
                                                'modes': ('hard',)}, 'seed': 0})
  config = ml_collections.ConfigDict({'data': {'pis': (0, 0.5, 1, True), 'ks': (10, 20),
                                               'modes': ('hard',)}, 'seed': 1})
  assert launch.floats_where_the_default_has_floats(config, default) == ['data.pis']
  assert config.data.pis == (0.0, 0.5, 1.0, True)
  assert [type(v) for v in config.data.pis[:3]] == [float, float, float]
  assert config.data.ks == (10, 20) and type(config.data.ks[0]) is int  # int tuples stay
  # An empty default says nothing of the type: three_phase_scaling's model.hidden_sizes=()
  # typed as 64,64 must stay layer widths, not become (64.0, 64.0).
  default = ml_collections.ConfigDict({'model': {'hidden_sizes': ()}})
  config = ml_collections.ConfigDict({'model': {'hidden_sizes': (64, 64)}})
  assert launch.floats_where_the_default_has_floats(config, default) == []
  assert [type(v) for v in config.model.hidden_sizes] == [int, int]


def test_nan_fields_are_found_at_any_depth():
  import ml_collections  # pylint: disable=g-import-not-at-top
  nan = float('nan')
  config = ml_collections.ConfigDict({'a': 1.0, 'b': {'c': nan, 'd': (0.5, nan)}, 'e': 'nan'})
  assert launch.nan_fields(config) == ['b.c', 'b.d[1]']


@pytest.mark.parametrize('config_name', CONFIGS)
def test_every_config_builds_and_rejects_an_unknown_key(config_name):
  path = _ROOT / 'configs' / config_name
  first_key = launch.valid_config_keys(_load_config(path))[0]
  section = first_key.rsplit('.', 1)[0] if '.' in first_key else ''
  typo = f'{section}.no_such_field' if section else 'no_such_field'
  with pytest.raises(Exception, match='no such config field'):
    launch.check_config_overrides(['prog', f'--config={path}', f'--config.{typo}=1'])


@pytest.mark.parametrize('config_name,variant', [
    ('lemma1_theory.py', ''), ('three_phase_scaling.py', 'facts'),
    ('three_phase_scaling.py', 'cifar100'), ('valuation_table.py', 'digits'),
    ('valuation_table.py', 'instruction'), ('ablation.py', 'digits'),
    ('subsample_stability.py', ''), ('breakpoint_sweep.py', '')])
def test_from_json_reads_a_saved_config_back_to_the_same_fingerprint(tmp_path, config_name,
                                                                     variant):
  """configs/from_json.py turns a run's config.json back into the config it was: JSON lists
  become the configs' tuples, so the units it reruns carry the same fingerprints."""
  from dv_jax import results  # pylint: disable=g-import-not-at-top
  module = _load_module(_ROOT / 'configs' / config_name)
  config = module.get_config(variant) if variant else module.get_config()
  results.save_config(config, tmp_path)
  from_json = _load_module(_ROOT / 'configs' / 'from_json.py')
  reloaded = from_json.get_config(str(tmp_path / 'config.json'))
  assert reloaded == config  # ConfigDict equality: same fields, values and types
  assert results.fingerprint(reloaded) == results.fingerprint(config)
  assert from_json.get_config(str(tmp_path)) == config  # the workdir itself works too
  with pytest.raises(ValueError, match='no saved config at'):
    from_json.get_config(str(tmp_path / 'missing.json'))
  with pytest.raises(ValueError, match='name the saved config'):
    from_json.get_config()


def test_from_json_refuses_a_file_that_is_not_a_json_config_object(tmp_path):
  from_json = _load_module(_ROOT / 'configs' / 'from_json.py')
  path = tmp_path / 'config.json'
  path.write_text('[1, 2]')
  with pytest.raises(ValueError, match='config.json is not a JSON object of config fields'):
    from_json.get_config(str(path))
  path.write_text('{"seed": ')
  with pytest.raises(ValueError, match='config.json is not a JSON config'):
    from_json.get_config(str(path))


def test_environment_names_the_code_and_the_devices():
  """log.txt's `environment:` line: versions, the git commit and whether the checkout had
  uncommitted changes, and the devices, which the config-only fingerprints leave out."""
  import jax  # pylint: disable=g-import-not-at-top
  env = launch.environment()
  assert env['versions']['jax'] == jax.__version__
  assert env['backend'] == jax.default_backend()
  assert env['devices'] == [str(d) for d in jax.devices()]
  # The PRNG settings move every draw and init; log.txt is the only record of them.
  assert env['jax_threefry_partitionable'] is jax.config.jax_threefry_partitionable
  assert env['jax_default_prng_impl'] == jax.config.jax_default_prng_impl
  assert env['jax_enable_x64'] is jax.config.jax_enable_x64

  def git(*args):
    return subprocess.run(['git', '-C', str(_ROOT), *args], capture_output=True, text=True,
                          timeout=10, check=False)

  head = git('rev-parse', 'HEAD')
  if head.returncode != 0:
    pytest.skip('not a git checkout')
  assert env['git_commit'] == head.stdout.strip()
  dirty = bool(git('status', '--porcelain', '--', '.').stdout.strip())
  assert env['uncommitted_changes'] is dirty


def test_environment_names_the_checkout_dv_jax_was_imported_from(monkeypatch):
  # A script run from a second checkout with the first one's environment computes with the
  # first one's library; the log named the script's checkout (its commit, "no changes").
  import dv_jax  # pylint: disable=g-import-not-at-top
  library = Path(dv_jax.__file__).resolve().parent
  expected = launch.environment()
  assert expected['dv_jax_path'] == str(library)
  monkeypatch.setattr(launch, '__file__', '/nowhere/checkout/experiments/launch.py')
  env = launch.environment()
  assert env['script_checkout'] == '/nowhere/checkout'
  assert env['dv_jax_path'] == str(library)
  assert env['git_commit'] == expected['git_commit']


def _tiny_script(tmp_path):
  """An experiment script whose run only marks that it ran (the shared command line)."""
  script = tmp_path / 'tiny_experiment.py'
  script.write_text(
      'import sys\n'
      f'sys.path.insert(0, {str(_ROOT / "experiments")!r})\n'
      'import launch\n'
      'def run(config, workdir):\n'
      "  open(f'{workdir}/ran', 'w').close()\n"
      "launch.main(run, name='tiny_experiment')\n")
  return script


def test_an_empty_workdir_is_refused_and_a_tilde_is_expanded(tmp_path):
  # `--workdir=$UNSET` wrote every output into the current directory; bash leaves `~`
  # after `=` alone, so `--workdir=~/runs` made a folder named `~` there.
  script, cwd = _tiny_script(tmp_path), tmp_path / 'cwd'
  cwd.mkdir()
  config = f'--config={_ROOT / "configs" / "lemma1_theory.py"}:smoke'
  for blank in ('', '  '):
    empty = subprocess.run([sys.executable, str(script), config, f'--workdir={blank}'],
                           cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert empty.returncode != 0 and '--workdir is empty' in empty.stderr, empty.stderr[-2000:]
  assert list(cwd.iterdir()) == []
  env = dict(os.environ, HOME=str(tmp_path / 'home'))
  tilde = subprocess.run([sys.executable, str(script), config, '--workdir=~/runs/one'],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
  assert tilde.returncode == 0, tilde.stderr[-2000:]
  assert (tmp_path / 'home' / 'runs' / 'one' / 'ran').exists()
  assert list(cwd.iterdir()) == []


def test_script_exits_on_a_typo_with_the_valid_keys(tmp_path):
  """End to end: the real script, a misspelt override, a non-zero exit naming the keys."""
  proc = subprocess.run(
      [sys.executable, str(_ROOT / 'experiments' / 'lemma1_theory.py'),
       f'--config={_ROOT / "configs" / "lemma1_theory.py"}:smoke',
       '--config.scaling.no_such_field=3', f'--workdir={tmp_path}'],
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert 'no such config field' in proc.stderr and 'Valid keys of config.scaling' in proc.stderr
  assert not (tmp_path / 'config.json').exists()


def test_script_exits_on_a_stray_positional_argument(tmp_path):
  # absl hands positionals to main; a typo like `--workdir x y` must not run the experiment.
  workdir = tmp_path / 'work'
  proc = subprocess.run(
      [sys.executable, str(_ROOT / 'experiments' / 'lemma1_theory.py'),
       f'--config={_ROOT / "configs" / "lemma1_theory.py"}:smoke', f'--workdir={workdir}',
       'stray_positional'],
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert 'Too many command-line arguments' in proc.stderr
  assert not workdir.exists()


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path):
  """SIGTERM (a scheduler's preemption) ended the process on the spot: the result being
  written left its hidden temporary file, and log.txt never said the run had stopped."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  script = tmp_path / 'slow_experiment.py'
  workdir = tmp_path / 'work'
  script.write_text(
      'import sys, time\n'
      f'sys.path.insert(0, {str(_ROOT / "experiments")!r})\n'
      'import launch\n'
      'from dv_jax import results\n'
      'def run(config, workdir):\n'
      "  with results.atomic_path(f'{workdir}/result.json') as tmp:\n"
      "    tmp.write_text('half')\n"
      "    open(f'{workdir}/writing', 'w').close()\n"
      '    time.sleep(120)\n'
      "launch.main(run, name='slow_experiment')\n")
  proc = subprocess.Popen(
      [sys.executable, str(script),
       f'--config={_ROOT / "configs" / "lemma1_theory.py"}:smoke', f'--workdir={workdir}'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while not (workdir / 'writing').exists():
      assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
      time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  assert sorted(p.name for p in workdir.iterdir()) == ['config.json', 'log.txt', 'writing']
  assert 'slow_experiment stopped' in (workdir / 'log.txt').read_text()


def _load_module(path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(f'_module_under_test_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _load_config(path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('_config_under_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.slow
def test_a_refused_rerun_keeps_the_workdirs_config_json(tmp_path):
  """End to end: a rerun that changes a setting the saved units depend on fails, and the
  workdir's config.json still describes the results beside it."""

  def run_script(*overrides):
    return subprocess.run(
        [sys.executable, str(_ROOT / 'experiments' / 'lemma1_theory.py'),
         f'--config={_ROOT / "configs" / "lemma1_theory.py"}:smoke', f'--workdir={tmp_path}',
         *overrides], capture_output=True, text=True, timeout=300, check=False)

  first = run_script()
  assert first.returncode == 0, first.stderr[-2000:]
  saved = (tmp_path / 'config.json').read_text()
  log = (tmp_path / 'log.txt').read_text()
  # What the numbers depend on besides the config, for whoever reads the workdir later.
  assert 'environment: {"python": ' in log and '"jax": "' in log and '"devices": [' in log
  command = [line for line in log.splitlines() if 'command: ' in line]
  assert len(command) == 1 and 'lemma1_theory.py --config=' in command[0], command
  assert f'--workdir={tmp_path}' in command[0]
  refused = run_script('--config.scaling.mc_trials=5')
  assert refused.returncode != 0 and 'another config' in refused.stderr
  assert (tmp_path / 'config.json').read_text() == saved
  # log.txt says so too: it ended with the refused config and no word of the failure.
  new_log = (tmp_path / 'log.txt').read_text()[len(log):]
  assert 'mc_trials: 5' in new_log
  assert 'lemma1_theory stopped; config.json and the saved results are those of the last' in (
      new_log)
  # The refusal's advice works: the saved config.json, read back, reruns and reuses it all.
  relaunched = subprocess.run(
      [sys.executable, str(_ROOT / 'experiments' / 'lemma1_theory.py'),
       f'--config={_ROOT / "configs" / "from_json.py"}:{tmp_path / "config.json"}',
       f'--workdir={tmp_path}'], capture_output=True, text=True, timeout=300, check=False)
  assert relaunched.returncode == 0, relaunched.stderr[-2000:]
  assert (tmp_path / 'config.json').read_text() == saved
  # The default's betas, (2.0,), typed as a whole number: the same setting, so the same
  # fingerprints (it was refused as a changed setting: the tuple kept the int 2).
  whole = run_script('--config.data.betas=2')
  assert whole.returncode == 0, whole.stderr[-2000:]
  assert (tmp_path / 'config.json').read_text() == saved  # recorded as (2.0,), not (2,)
  # An output-only change reuses every unit and then records the new config.
  again = run_script('--config.output.figure_dpi=80')
  assert again.returncode == 0, again.stderr[-2000:]
  assert '"figure_dpi": 80' in (tmp_path / 'config.json').read_text()
