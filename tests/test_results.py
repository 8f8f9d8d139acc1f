"""Tests of dv_jax.results (the one writer) and dv_jax.plotting.save_figure."""

import json
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

from absl import logging as absl_logging
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dv_jax import plotting
from dv_jax import results


class _Pair(NamedTuple):
  left: float
  right: np.ndarray


def _leftovers(directory: Path):
  return [path.name for path in directory.iterdir() if path.name.endswith('.tmp')]


def test_atomic_write_creates_parents_and_leaves_no_temp(tmp_path):
  target = tmp_path / 'a' / 'b' / 'out.txt'
  assert results.atomic_write_text(target, 'hello\n') == target
  assert target.read_text() == 'hello\n'
  results.atomic_write_text(target, 'again')
  assert target.read_text() == 'again'
  assert _leftovers(target.parent) == []


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / 'out.txt'
  target.write_text('old')

  def broken_replace(src, dst):
    raise OSError('disk gone')

  monkeypatch.setattr(os, 'replace', broken_replace)
  with pytest.raises(OSError, match='disk gone'):
    results.atomic_write_text(target, 'new')
  assert target.read_text() == 'old'
  assert _leftovers(tmp_path) == []


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
  events = []
  real_replace, real_fsync = os.replace, os.fsync

  def recording_replace(src, dst):
    events.append('replace')
    real_replace(src, dst)

  def recording_fsync(handle):
    kind = 'directory' if os.path.isdir(f'/proc/self/fd/{handle}') else 'file'
    events.append(f'fsync {kind}')
    real_fsync(handle)

  if not os.path.isdir('/proc/self/fd'):
    pytest.skip('needs /proc/self/fd to tell a directory handle from a file handle')
  monkeypatch.setattr(os, 'replace', recording_replace)
  monkeypatch.setattr(os, 'fsync', recording_fsync)
  results.atomic_write_text(tmp_path / 'out.txt', 'x')
  # The data reaches the disk before the rename, the directory entry after it.
  assert events == ['fsync file', 'replace', 'fsync directory']


def test_the_umask_is_read_without_being_changed(monkeypatch):
  old = os.umask(0o027)
  try:
    if os.path.exists('/proc/self/status'):  # Linux: read from /proc, os.umask never called
      monkeypatch.setattr(os, 'umask', lambda mask: pytest.fail('the umask was set'))
    assert results._process_umask() == 0o027  # pylint: disable=protected-access
    monkeypatch.undo()
  finally:
    os.umask(old)


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
  old = os.umask(0o022)
  try:
    text = results.atomic_write_text(tmp_path / 'shared.txt', 'x')
    figure, _ = plotting.new_figure()
    png = plotting.save_figure(figure, tmp_path / 'fig')[0]
    os.umask(0o077)
    private = results.write_json(tmp_path / 'private.json', {})
  finally:
    os.umask(old)
  assert text.stat().st_mode & 0o777 == 0o644
  assert png.stat().st_mode & 0o777 == 0o644
  assert private.stat().st_mode & 0o777 == 0o600


def test_write_json_converts_numpy_jax_namedtuples_and_nonfinite(tmp_path):
  config = ml_collections.ConfigDict({'seed': 3, 'fit': {'ks': (1, 2)}})
  obj = {
      'f32': np.float32(0.5), 'i64': np.int64(7), 'flag': np.bool_(True),
      'array': np.arange(6).reshape(2, 3), 'jax': jnp.array([1.5, 2.5]),
      'scalar_jax': jnp.float32(4.0), 'pair': _Pair(1.0, np.array([np.nan, np.inf])),
      'tuple': (1, 'a'), 'path': Path('/x/y'), 'config': config, 3: 'int key',
      'nan': float('nan'), 'minus_inf': -np.inf, 'none': None,
  }
  path = results.write_json(tmp_path / 'r.json', obj)
  loaded = results.read_json(path)
  assert loaded == {
      'f32': 0.5, 'i64': 7, 'flag': True, 'array': [[0, 1, 2], [3, 4, 5]], 'jax': [1.5, 2.5],
      'scalar_jax': 4.0, 'pair': {'left': 1.0, 'right': [None, None]}, 'tuple': [1, 'a'],
      'path': '/x/y', 'config': {'seed': 3, 'fit': {'ks': [1, 2]}}, '3': 'int key',
      'nan': None, 'minus_inf': None, 'none': None,
  }
  json.loads(path.read_text())  # strict JSON: no NaN tokens
  assert 'NaN' not in path.read_text() and 'Infinity' not in path.read_text()


def test_write_json_rejects_unknown_objects(tmp_path):
  with pytest.raises(TypeError, match='object'):
    results.write_json(tmp_path / 'bad.json', {'x': object()})
  assert not (tmp_path / 'bad.json').exists()


def test_csv_round_trip_with_union_of_columns(tmp_path):
  rows = [
      {'name': 'a', 'x': 0.1, 'n': 3},
      {'name': 'b', 'y': float('nan'), 'flag': True, 'list': [1, 2]},
      {'x': np.float64(1 / 3), 'n': np.int32(5), 'y': np.inf, 'none': None},
  ]
  path = results.write_csv(tmp_path / 'r.csv', rows)
  header = path.read_text().splitlines()[0]
  assert header == 'name,x,n,y,flag,list,none'
  back = results.read_csv(path)
  assert back[0] == {'name': 'a', 'x': 0.1, 'n': 3, 'y': None, 'flag': None, 'list': None,
                     'none': None}
  assert math.isnan(back[1]['y']) and back[1]['flag'] is True
  assert json.loads(back[1]['list']) == [1, 2]
  assert back[2]['x'] == 1 / 3 and back[2]['n'] == 5 and back[2]['y'] == math.inf
  assert results.write_csv(tmp_path / 'empty.csv', []).read_text() == ''
  with pytest.raises(ValueError, match='mappings'):
    results.write_csv(tmp_path / 'bad.csv', [[1, 2]])


def test_csv_jax_scalars_read_back_as_numbers_and_bools(tmp_path):
  # A JAX 0-d array is a scalar like NumPy's: NaN must come back a float, not 'null'.
  rows = [{'nan': jnp.float32(np.nan), 'inf': jnp.asarray(-np.inf), 'flag': jnp.asarray(True),
           'value': jnp.asarray(2.5), 'count': jnp.asarray(3, jnp.int32)}]
  back = results.read_csv(results.write_csv(tmp_path / 'j.csv', rows))[0]
  assert math.isnan(back['nan']) and back['inf'] == -math.inf
  assert back['flag'] is True and back['value'] == 2.5 and back['count'] == 3


def test_keys_with_one_string_form_are_refused_not_dropped(tmp_path):
  # An int-keyed dict merged with one read back from JSON: str() made both keys '100' and
  # the writer kept only the last value.
  merged = {100: 0.5, '100': 0.25}
  with pytest.raises(ValueError, match="keys 100 and '100' would both be written as '100'"):
    results.write_json(tmp_path / 'r.json', {'per_n': merged})
  with pytest.raises(ValueError, match="keys 100 and '100'"):
    results.write_csv(tmp_path / 'r.csv', [merged])
  with pytest.raises(ValueError, match="keys 100 and '100'"):
    results.fingerprint(merged)
  assert not (tmp_path / 'r.json').exists() and not (tmp_path / 'r.csv').exists()
  # Distinct string forms are still written.
  assert results.to_jsonable({1: 'a', np.int64(2): 'b'}) == {'1': 'a', '2': 'b'}


def test_csv_path_cells_are_plain_strings(tmp_path):
  # Written as a JSON cell a Path kept its quotes and read back as '"a/b.png"'.
  path = results.write_csv(tmp_path / 'p.csv', [{'figure': Path('a') / 'b.png'}])
  assert results.read_csv(path) == [{'figure': str(Path('a') / 'b.png')}]


def test_save_config_writes_config_json(tmp_path):
  config = ml_collections.ConfigDict({'seed': 0, 'data': {'betas': (2.0, 3.0)}})
  config.lock()
  path = results.save_config(config, tmp_path / 'work')
  assert path == tmp_path / 'work' / 'config.json'
  assert results.read_json(path) == {'seed': 0, 'data': {'betas': [2.0, 3.0]}}


def test_unit_store_saves_loads_and_persists(tmp_path):
  store = results.UnitStore(tmp_path / 'units')
  names = ['hard-k=70-beta=2-pi=0.0625', 'a/b', 'a_b', 'plain_name.v1', '.hidden']
  assert all(name not in store for name in names)
  for index, name in enumerate(names):
    store.save(name, {'index': index, 'values': np.arange(index)})
  assert len({store.path(name) for name in names}) == len(names)  # no collisions
  assert all(not path.name.startswith('.') for path in (tmp_path / 'units').iterdir())
  reopened = results.UnitStore(tmp_path / 'units')
  assert all(name in reopened for name in names)
  assert reopened.load('a/b') == {'index': 1, 'values': [0]}
  assert reopened.names() == sorted(names)
  assert len(reopened) == len(names)
  assert store.path('plain_name.v1').name == 'plain_name.v1.json'  # safe names stay readable
  with pytest.raises(KeyError, match='missing'):
    reopened.load('missing')
  with pytest.raises(ValueError, match='name'):
    reopened.save('', 1)
  assert _leftovers(tmp_path / 'units') == []


def test_fingerprint_is_the_configs_json_form():
  config = ml_collections.ConfigDict({'a': 1, 'b': {'c': (1, 2)}})
  assert results.fingerprint(config) == results.fingerprint({'b': {'c': [1, 2]}, 'a': 1})
  assert results.fingerprint(config) != results.fingerprint({'a': 2, 'b': {'c': [1, 2]}})
  assert results.fingerprint(config, 1) != results.fingerprint(config, 2)


def test_fingerprint_tells_non_finite_values_apart():
  # to_jsonable writes NaN, +-Inf and None all as null; a config changed from one to another
  # must still refuse the units computed under the old one.
  values = [float('nan'), float('inf'), -float('inf'), None, np.float32(np.nan)]
  prints = [results.fingerprint({'clip': v}) for v in values[:4]]
  assert len(set(prints)) == 4
  assert results.fingerprint({'clip': values[4]}) == prints[0]  # NaN is NaN in any dtype
  assert (results.fingerprint({'w': np.array([1.0, np.inf])})
          != results.fingerprint({'w': np.array([1.0, np.nan])}))
  config = ml_collections.ConfigDict({'a': float('inf')})
  assert results.fingerprint(config) == results.fingerprint({'a': float('inf')})


def test_sets_are_written_in_a_fixed_order():
  # A set of strings iterates in a hash-seed dependent order: the fingerprint (and the
  # file) must not change from one process to the next.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  # results.py alone (NumPy only): importing dv_jax would load JAX in every process.
  code = ('import importlib.util as u; '
          f's = u.spec_from_file_location("r", {results.__file__!r}); '
          'r = u.module_from_spec(s); s.loader.exec_module(r); '
          "print(r.fingerprint({'m': {'davinz', 'tracin', 'trak', 'ours', 'random'}}))")
  prints = {subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                           check=True, env={**os.environ, 'PYTHONHASHSEED': str(seed)}
                           ).stdout for seed in (1, 2, 3)}
  assert len(prints) == 1
  assert results.to_jsonable({'b', 'a', 'c'}) == ['a', 'b', 'c']


def test_unit_store_refuses_a_unit_computed_under_another_config(tmp_path):
  store = results.UnitStore(tmp_path / 'units')
  store.save('unit', {'v': 1}, fingerprint='aaaa')
  assert store.load('unit', fingerprint='aaaa') == {'v': 1}
  assert store.load('unit') == {'v': 1}  # no fingerprint asked: no check
  with pytest.raises(ValueError, match="'unit' .* another config .*fresh --workdir"):
    store.load('unit', fingerprint='bbbb')
  # Units written before fingerprints existed load under any config.
  store.save('legacy', 3)
  assert store.load('legacy', fingerprint='bbbb') == 3


def test_unit_store_names_a_unit_file_that_is_no_record(tmp_path):
  # A unit file cut short (a partial rsync of a workdir) stopped every rerun with json's
  # bare "Expecting value", naming neither the file nor the unit.
  store = results.UnitStore(tmp_path / 'units')
  path = store.save('draw0/mlp/trak', {'v': [1.0, 2.0]}, fingerprint='aaaa')
  path.write_text(path.read_text()[:20])
  with pytest.raises(ValueError, match=rf"unit 'draw0/mlp/trak': .*{path.name} is not valid "
                                       'JSON .*delete it and rerun'):
    store.load('draw0/mlp/trak')
  with pytest.raises(ValueError, match=rf'{path.name} is not valid JSON'):
    store.names()
  path.write_text('[1, 2]')
  with pytest.raises(ValueError, match='is not a unit record'):
    store.load('draw0/mlp/trak')


@pytest.mark.parametrize('content', [b'\xff\xfe{', b'{"name": "u"}', b'{"value": 1}'])
def test_unit_store_names_a_file_of_bad_bytes_or_a_partial_record(tmp_path, content):
  store = results.UnitStore(tmp_path / 'units')
  path = store.save('u', 1)
  path.write_bytes(content)
  match = 'is not valid JSON' if content.startswith(b'\xff') else 'is not a unit record'
  with pytest.raises(ValueError, match=rf"unit 'u': .*{path.name} {match}"):
    store.load('u')
  with pytest.raises(ValueError, match=rf'{path.name} {match}'):
    store.names()


@pytest.fixture
def loggers():
  """The root and absl loggers, left as they were: levels, and no handler the test added."""
  root, absl = logging.getLogger(), logging.getLogger('absl')
  levels, handlers = (root.level, absl.level), list(root.handlers)
  yield root, absl
  for handler in [h for h in root.handlers if h not in handlers]:
    root.removeHandler(handler)
    handler.close()
  root.setLevel(levels[0])
  absl.setLevel(levels[1])


def test_setup_logging_writes_absl_and_python_records(tmp_path, loggers):
  handler = results.setup_logging(tmp_path)
  assert results.setup_logging(tmp_path) is handler  # no duplicate handler
  absl_logging.info('absl says %d', 1)
  logging.getLogger('dv_jax.test').info('python says %d', 2)
  handler.flush()
  text = (tmp_path / 'log.txt').read_text()
  assert 'absl says 1' in text and 'python says 2' in text
  assert text.count('absl says 1') == 1


def test_setup_logging_lowers_a_raised_absl_level(tmp_path, loggers):
  # An absl logger set to WARNING kept its level, so absl INFO records never reached log.txt.
  _, absl = loggers
  absl.setLevel(logging.WARNING)
  handler = results.setup_logging(tmp_path)
  absl_logging.info('absl says %d', 3)
  handler.flush()
  assert 'absl says 3' in (tmp_path / 'log.txt').read_text()


def test_setup_logging_again_takes_the_new_level(tmp_path, loggers):
  # A second call for the same file returned the first call's handler unchanged: asked for
  # DEBUG after an INFO call, the file (and the root logger) stayed at INFO, so the second
  # call's debug records were dropped, as they are not when it runs in a fresh process.
  root, _ = loggers
  root.setLevel(logging.WARNING)
  handler = results.setup_logging(tmp_path)
  assert results.setup_logging(tmp_path, level=logging.DEBUG) is handler
  assert handler.level == logging.DEBUG and root.level == logging.DEBUG
  logging.getLogger('dv_jax.test').debug('debug says %d', 4)
  handler.flush()
  assert 'debug says 4' in (tmp_path / 'log.txt').read_text()
  # And back: a later call asking for WARNING writes from WARNING on, as a first one would.
  assert results.setup_logging(tmp_path, level=logging.WARNING) is handler
  assert handler.level == logging.WARNING


def test_a_long_safe_name_gets_a_short_file_name(tmp_path):
  # 300 safe characters used to become a 305-character file name: OSError 36 on save.
  store = results.UnitStore(tmp_path / 'units')
  long_name = 'a' * 300
  assert len(store.path(long_name).name) <= 136  # 120 characters, '-', 10 of a hash, .json
  assert store.path(long_name) != store.path(long_name + 'a')
  store.save(long_name, {'value': 1})
  assert store.load(long_name) == {'value': 1}


def test_plot_loglog_curves_draws_the_fit_and_the_fitted_break():
  _, axes = plotting.new_figure()
  curve = plotting.Curve([1, 10, 100], [1.0, 0.3, 0.1], 'c', predicted_breaks=[10.0],
                         fitted_breaks=[12.0], fit=[1.0, 0.31, 0.1])
  ax = plotting.plot_loglog_curves(axes[0, 0], [curve])
  drawn = [(line.get_linestyle(), list(line.get_xdata()), list(line.get_ydata()))
           for line in ax.lines]
  assert (':', [1, 10, 100], [1.0, 0.31, 0.1]) in drawn  # the fitted curve
  assert ('-', [10.0, 10.0], [0, 1]) in drawn  # the predicted break
  assert ('--', [12.0, 12.0], [0, 1]) in drawn  # the fitted break


def test_plot_loglog_curves_keys_only_what_is_drawn_in_its_colors():
  from matplotlib.colors import to_hex  # pylint: disable=g-import-not-at-top

  def keys(curves):
    _, axes = plotting.new_figure()
    legend = plotting.plot_loglog_curves(axes[0, 0], curves).get_legend()
    return {text.get_text(): to_hex(handle.get_color())
            for text, handle in zip(legend.get_texts(), legend.legend_handles)}

  blue = plotting.Curve([1, 10, 100], [1.0, 0.3, 0.1], 'blue', color='C0',
                        predicted_breaks=[10.0], fitted_breaks=[12.0], fit=[1.0, 0.31, 0.1],
                        fit_color='k')
  # One curve with breaks: the keys take its color, the fit's key the fit's color.
  assert keys([blue]) == {'blue': to_hex('C0'), 'predicted break': to_hex('C0'),
                          'fitted break': to_hex('C0'), 'broken power law': to_hex('k')}
  # Breaks of several colors: a neutral key; a curve without breaks adds no key.
  red = blue._replace(label='red', color='C3', fit=None)
  assert keys([blue, red])['fitted break'] == to_hex('gray')
  assert set(keys([blue._replace(predicted_breaks=[float('nan')], fitted_breaks=(),
                                 fit=None)])) == {'blue'}


def test_save_figure_writes_png_and_pdf(tmp_path):
  fig, axes = plotting.new_figure(nrows=1, ncols=2)
  assert axes.shape == (1, 2)
  curve = plotting.Curve([1, 10, 100], [1.0, 0.3, 0.1], 'c', predicted_breaks=[10.0],
                         fitted_breaks=[12.0, float('nan')], fit=[1.0, 0.31, 0.1])
  plotting.plot_loglog_curves(axes[0, 0], [curve],
                              points=[plotting.Points([10], [0.3], 'mc', yerr=[0.01])])
  paths = plotting.save_figure(fig, tmp_path / 'figs' / 'demo')
  assert [path.name for path in paths] == ['demo.png', 'demo.pdf']
  assert paths[0].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert paths[1].read_bytes()[:5] == b'%PDF-'
  assert _leftovers(tmp_path / 'figs') == []
  grid = plotting.curve_grid([('one', [curve]), ('two', [curve]), ('three', [curve])],
                             ncols=2, suptitle='grid')
  assert len([ax for ax in grid.axes if ax.get_visible()]) == 3
  with pytest.raises(ValueError, match='panels'):
    plotting.curve_grid([])


@pytest.mark.parametrize('ncols', [0, -1, 1.5])
def test_curve_grid_refuses_a_bad_ncols(ncols):
  # 0 divided by zero, a negative count reached matplotlib with a negative row count.
  curve = plotting.Curve([1, 10], [1.0, 0.3], 'c')
  with pytest.raises(ValueError, match='ncols must be an integer >= 1'):
    plotting.curve_grid([('one', [curve]), ('two', [curve])], ncols=ncols)


@pytest.mark.parametrize('level, text', [(0.95, '95%'), (0.975, '97.5%'), (0.999, '99.9%'),
                                         (0.5, '50%')])
def test_coverage_levels_print_as_given(level, text):
  # Rounded to whole percents, 0.975 printed "98%" and 0.999 "100%" in legends and tables.
  assert plotting.percent(level) == text
  assert plotting.whisker_key(level).get_label() == f'{text} bootstrap CI'


@pytest.mark.parametrize('horizontal', [False, True])
def test_interval_bars_span_the_recorded_ends(horizontal):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  ax = Figure().add_subplot()
  # The second interval lies wholly above anything it might be drawn beside; the third is
  # unknown and gets no whisker.
  plotting.interval_bars(ax, [1.0, 2.0, 3.0], [0.1, 0.6, math.nan], [0.4, 0.9, math.nan],
                         horizontal=horizontal)
  (container,) = ax.containers
  segments = container.lines[2][0].get_segments()
  along, across = (0, 1) if horizontal else (1, 0)
  np.testing.assert_allclose([s[:, along] for s in segments], [[0.1, 0.4], [0.6, 0.9]])
  np.testing.assert_allclose([s[:, across] for s in segments], [[1.0, 1.0], [2.0, 2.0]])
  assert container.get_label().startswith('_')  # not in a legend unless labelled
  plotting.interval_bars(ax, [1.0], [math.nan], [0.3])
  assert len(ax.containers) == 1  # nothing drawn for a half-known interval
  with pytest.raises(ValueError, match='positions, low and high must have one length'):
    plotting.interval_bars(ax, [1.0, 2.0], [0.1], [0.4])
