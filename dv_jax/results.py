"""The one writer: atomic JSON / CSV files, a resumable store of finished units, the log file.

Everything else in `dv_jax` is pure; experiments write only through this module (and
`plotting.save_figure`). Every file is written to a temporary file in the destination
directory and moved into place with `os.replace`, so a crash or a kill never leaves a
half-written result that a rerun would trust.

JSON conventions (`write_json`): NumPy and JAX scalars become Python numbers, arrays become
nested lists, `NamedTuple`s become objects with their field names, tuples become lists, sets
sorted lists, `Path`s strings, `ConfigDict`s plain objects. Non-finite floats (NaN, +-Inf),
which strict JSON cannot hold, become `null` (so `read_json` gives `None` for them; the
distinction between NaN and Inf is not kept). CSV (`write_csv`) writes NaN as `nan` and Inf
as `inf`, which `read_csv` reads back as floats.
"""

import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]

_LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
_UNSAFE = re.compile(r'[^A-Za-z0-9._-]')
_MAX_NAME = 120


def _process_umask() -> int:
  """The process umask, read without changing it where the system allows."""
  # Linux reports it in /proc (kernels >= 4.7). Elsewhere it can only be read by setting
  # it, and a file another thread creates in that instant gets mode 0o666.
  try:
    with open('/proc/self/status', encoding='ascii') as status:
      for line in status:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _file_mode() -> int:
  """The mode `open()` would give a new file: 0o666 less the process umask."""
  # `mkstemp` creates files 0600 whatever the umask; results are meant to be shared.
  return 0o666 & ~_process_umask()


def _fsync_directory(directory: Path) -> None:
  """Makes a rename inside `directory` survive a power cut (POSIX; a no-op elsewhere)."""
  # The rename is atomic but lives in the directory's entry table until that is flushed:
  # without this a crash right after a unit finished could lose it (never corrupt it).
  try:
    handle = os.open(directory, os.O_RDONLY)
  except OSError:  # Windows cannot open a directory.
    return
  try:
    os.fsync(handle)
  except OSError:  # Some file systems refuse fsync on a directory; the rename still stands.
    pass
  finally:
    os.close(handle)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
  """Yields a temporary path beside `path`; moves it onto `path` if the block succeeds.

  Parent directories are created. The file written there gets the mode a plain `open()`
  would give it (not `mkstemp`'s private 0600). After the rename the directory is fsynced,
  so a finished file survives a power cut. If the block raises, the temporary file is
  removed and `path` is untouched.

  Args:
    path: destination file.

  Yields:
    The temporary path to write.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  os.close(handle)
  try:
    yield Path(temporary)
    os.chmod(temporary, _file_mode())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise
  _fsync_directory(path.parent)


def atomic_write_text(path: PathLike, text: str) -> Path:
  """Writes `text` to `path` atomically (temporary file in the same directory + rename).

  Parent directories are created. The temporary file is removed if writing fails.

  Args:
    path: destination file.
    text: the whole content.

  Returns:
    `path` as a `Path`.
  """
  with atomic_path(path) as temporary:
    with open(temporary, 'w', encoding='utf-8', newline='') as stream:
      stream.write(text)
      stream.flush()
      os.fsync(stream.fileno())
  return Path(path)


def to_jsonable(obj: Any) -> Any:
  """Converts `obj` to plain JSON types following the module's conventions."""
  return _jsonable(obj, tag_nonfinite=False)


def _jsonable(obj: Any, *, tag_nonfinite: bool) -> Any:
  """`to_jsonable`; with `tag_nonfinite`, NaN / +-Inf become distinct strings, not null."""
  convert = functools.partial(_jsonable, tag_nonfinite=tag_nonfinite)
  if obj is None or isinstance(obj, (bool, str)):
    return obj
  if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  if isinstance(obj, (float, np.floating)):
    value = float(obj)
    if math.isfinite(value):
      return value
    return f'<float {value!r}>' if tag_nonfinite else None
  if isinstance(obj, Path):
    return str(obj)
  if hasattr(obj, 'to_dict') and callable(obj.to_dict):  # ml_collections.ConfigDict
    return convert(obj.to_dict())
  if isinstance(obj, tuple) and hasattr(obj, '_fields'):  # NamedTuple: keep field names
    return {name: convert(value) for name, value in zip(obj._fields, obj)}
  if isinstance(obj, Mapping):
    return {key: convert(value) for key, value in _string_keys(obj).items()}
  if isinstance(obj, (list, tuple)):
    return [convert(value) for value in obj]
  if isinstance(obj, (set, frozenset)):
    # Sorted: a set's iteration order (of strings) changes with the process's hash seed,
    # which would change the file and the `fingerprint` from one run to the next.
    items = [convert(value) for value in obj]
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
  if isinstance(obj, np.ndarray) or hasattr(obj, '__array__'):  # NumPy and JAX arrays
    array = np.asarray(obj)
    if array.ndim == 0:
      return convert(array.item())
    return [convert(value) for value in array]
  if isinstance(obj, complex):
    raise TypeError(f'complex numbers are not JSON serialisable: {obj!r}')
  raise TypeError(f'cannot write an object of type {type(obj).__name__} as JSON')


def _string_keys(mapping: Mapping) -> Dict[str, Any]:
  """`mapping` with `str` keys; two keys with one string form (1 and '1') are an error."""
  # A plain `str(key)` comprehension kept only the last of two such keys: a dict keyed by
  # ints merged with one read back from JSON (string keys) lost entries without a word.
  out, original = {}, {}
  for key, value in mapping.items():
    text = str(key)
    if text in out:
      raise ValueError(f'keys {original[text]!r} and {key!r} would both be written as '
                       f'{text!r}; one would be lost')
    out[text], original[text] = value, key
  return out


def write_json(path: PathLike, obj: Any) -> Path:
  """Writes `obj` as indented strict JSON, atomically (conventions in the module docstring).

  Args:
    path: destination file.
    obj: nested dicts / lists / NamedTuples / scalars / NumPy or JAX arrays.

  Returns:
    `path` as a `Path`.

  Raises:
    TypeError: an object with no JSON form.
    ValueError: two keys of one mapping with the same string form (1 and '1').
  """
  text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
  return atomic_write_text(path, text + '\n')


def read_json(path: PathLike) -> Any:
  """Reads a JSON file written by `write_json` (non-finite floats come back as `None`)."""
  with open(path, encoding='utf-8') as stream:
    return json.load(stream)


def _csv_cell(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return repr(float(value))  # shortest round-tripping form; nan / inf stay readable
  if isinstance(value, str):
    return value
  if isinstance(value, os.PathLike):  # as a JSON cell it would keep its quotes: '"a/b"'
    return os.fspath(value)
  if (isinstance(value, np.ndarray) or hasattr(value, '__array__')) and np.ndim(value) == 0:
    # NumPy and JAX 0-d arrays are scalars: as a JSON cell a NaN would be written `null`
    # and a bool `true`, which `read_csv` returns as strings.
    return _csv_cell(np.asarray(value).item())
  # Lists, arrays, dicts: one JSON cell.
  return json.dumps(to_jsonable(value), allow_nan=False)


def write_csv(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
  """Writes rows (dicts) as CSV, atomically; columns are the union of keys in first-seen order.

  Missing values and `None` are empty cells; floats keep full precision; lists and dicts
  are written as one JSON cell.

  Args:
    path: destination file.
    rows: the rows; may be empty (then the file is empty).

  Returns:
    `path` as a `Path`.

  Raises:
    ValueError: a row that is not a mapping, or two keys of one row (or of a mapping
      written as a cell) with the same string form.
  """
  rows = list(rows)
  for row in rows:
    if not isinstance(row, Mapping):
      raise ValueError(f'rows must be mappings, got {type(row).__name__}')
  rows = [_string_keys(row) for row in rows]
  columns: Dict[str, None] = {}
  for row in rows:
    for key in row:
      columns.setdefault(key, None)
  buffer = io.StringIO()
  if columns:
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(columns)
    for row in rows:
      writer.writerow([_csv_cell(row.get(column)) for column in columns])
  return atomic_write_text(path, buffer.getvalue())


def _parse_cell(text: str) -> Any:
  if text == '':
    return None
  if text in ('True', 'False'):
    return text == 'True'
  try:
    return int(text)
  except ValueError:
    pass
  try:
    return float(text)  # also nan, inf, -inf
  except ValueError:
    return text


def read_csv(path: PathLike) -> List[Dict[str, Any]]:
  """Reads a CSV written by `write_csv`: ints, floats, bools and `None` are parsed back.

  Cells holding JSON lists / objects are returned as strings (`json.loads` them if needed).
  """
  with open(path, encoding='utf-8', newline='') as stream:
    return [{key: _parse_cell(value) for key, value in row.items()}
            for row in csv.DictReader(stream)]


def save_config(config: Any, workdir: PathLike) -> Path:
  """Writes `workdir/config.json` from an `ml_collections.ConfigDict` (or a mapping).

  Returns:
    The path written.
  """
  return write_json(Path(workdir) / 'config.json', config)


def unit_filename(name: str) -> str:
  """Safe file name (without suffix) of a unit name.

  Characters outside `[A-Za-z0-9._-]` become `_`; if that changed the name (or it had to be
  shortened) a short hash of the original is appended so distinct names never collide.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f'name must be a non-empty string, got {name!r}')
  safe = _UNSAFE.sub('_', name)
  if safe.startswith('.'):
    safe = '_' + safe[1:]  # no hidden files (temporary files start with '.')
  if safe != name or len(safe) > _MAX_NAME:
    digest = hashlib.sha1(name.encode('utf-8')).hexdigest()[:10]
    safe = f'{safe[:_MAX_NAME]}-{digest}'
  return safe


def fingerprint(*parts: Any) -> str:
  """A short hash of `parts` (configs, mappings, scalars) in their JSON form.

  Two configs that write the same JSON (`to_jsonable`, keys sorted) get the same
  fingerprint, except that NaN, +Inf, -Inf and None, which `to_jsonable` all writes as
  `null`, are told apart; a unit saved with one is what a later run checks its config
  against.
  """
  text = json.dumps(_jsonable(list(parts), tag_nonfinite=True), sort_keys=True)
  return hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]


class UnitStore:
  """Finished units of a long experiment, one JSON file each, skipped on rerun.

  `store.save(name, obj)` writes `directory/<safe name>.json` atomically holding
  `{"name": name, "value": obj}`; `name in store` says whether it is finished;
  `store.load(name)` returns the value as read back from JSON (see `write_json`).

  A unit may carry the `fingerprint` of the config it was computed under (`save(...,
  fingerprint=...)`); `load(..., fingerprint=...)` then refuses it under another config,
  so a rerun in the same workdir with a changed setting fails instead of reporting stale
  results. Units saved without one (before fingerprints existed) load under any config.
  """

  def __init__(self, directory: PathLike):
    self.directory = Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)

  def path(self, name: str) -> Path:
    """The file that holds unit `name`."""
    return self.directory / f'{unit_filename(name)}.json'

  def __contains__(self, name: str) -> bool:
    return self.path(name).is_file()

  def save(self, name: str, obj: Any, *, fingerprint: Optional[str] = None) -> Path:
    """Records unit `name` as finished with result `obj` (computed under `fingerprint`)."""
    record = {'name': name, 'value': obj}
    if fingerprint is not None:
      record['fingerprint'] = str(fingerprint)
    return write_json(self.path(name), record)

  def load(self, name: str, *, fingerprint: Optional[str] = None) -> Any:
    """The saved result of unit `name`.

    Args:
      name: the unit.
      fingerprint: the config the caller runs under; a unit saved under another one is
        refused (None: no check).

    Raises:
      KeyError: the unit is not finished.
      ValueError: the unit was computed under another config; its file is not a unit
        record (cut short by a copy, edited), naming the file.
    """
    path = self.path(name)
    if not path.is_file():
      raise KeyError(f'unit {name!r} is not in the store at {self.directory}')
    record = self._record(path, name)
    saved = record.get('fingerprint')
    if fingerprint is not None and saved is not None and saved != fingerprint:
      raise ValueError(
          f'unit {name!r} in {self.directory} was computed under another config '
          f'(fingerprint {saved}, this run {fingerprint}): a setting it depends on changed. '
          'Use a fresh --workdir, or rerun with the config that workdir saved: '
          '--config=configs/from_json.py:<workdir>/config.json')
    return record['value']

  def names(self) -> List[str]:
    """Names of every finished unit, sorted (ValueError naming a file that is no record)."""
    return sorted(self._record(path)['name'] for path in self.directory.glob('*.json'))

  @staticmethod
  def _record(path: Path, name: Optional[str] = None) -> Dict[str, Any]:
    # A unit file cut short (a partial rsync of a workdir) or edited by hand stopped every
    # rerun with json's bare message, naming neither the file nor the unit.
    what = f'unit {name!r}: ' if name is not None else ''
    try:
      record = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      raise ValueError(f'{what}{path} is not valid JSON ({error}); delete it and rerun to '
                       'recompute the unit') from error
    if not (isinstance(record, dict) and 'value' in record and 'name' in record):
      raise ValueError(f'{what}{path} is not a unit record (no name and value); delete it '
                       'and rerun to recompute the unit')
    return record

  def __len__(self) -> int:
    return sum(1 for _ in self.directory.glob('*.json'))


def setup_logging(workdir: PathLike, *, level: int = logging.INFO) -> logging.Handler:
  """Adds a file handler writing `workdir/log.txt` to the root logger.

  absl's logger propagates to the root logger, so both `absl.logging.info` and plain
  `logging` records land in the file. Calling it again for the same file returns the
  existing handler instead of adding a duplicate, set to the new `level` as a first call
  would set it (an earlier call's level must not decide which records this one writes).
  The root level is lowered to `level` if it was higher, so INFO records reach the file
  even before absl parses its flags.

  Args:
    workdir: directory of the log (created if missing).
    level: lowest level written.

  Returns:
    The handler (remove it with `logging.getLogger().removeHandler(handler)`).
  """
  path = Path(workdir).resolve() / 'log.txt'
  path.parent.mkdir(parents=True, exist_ok=True)
  root = logging.getLogger()
  handler = next((h for h in root.handlers if isinstance(h, logging.FileHandler)
                  and Path(h.baseFilename) == path), None)
  if handler is None:
    handler = logging.FileHandler(path, encoding='utf-8')
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root.addHandler(handler)
  handler.setLevel(level)
  if root.level == logging.NOTSET or root.level > level:
    root.setLevel(level)
  absl_logger = logging.getLogger('absl')
  if absl_logger.level > level:
    absl_logger.setLevel(level)
  return handler
