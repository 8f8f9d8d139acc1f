"""Text tasks of the paper's valuation tables, read from local JSONL or `datasets` directories.

Three layouts, one per task (METHOD.md section 5):
  * `sentiment`: SST-2 (`sentence`, `label`) or IMDB (`text`, `label`); `label` an integer
    class (0 negative, 1 positive for both) or one of `label_names`. In a `datasets`
    directory whose `label` is a `ClassLabel`, its names decide which integer is which.
  * `instruction`: Alpaca (`instruction`, optional `input`, `output`).
  * `reasoning`: GSM8K (`question`, `answer`); the final answer is the text after the last
    `####` of `answer`.
Text fields must be non-empty (Alpaca's `input` may be empty), or their records are skipped
with `drop_empty`. Every record may carry
`source: real | synthetic` (missing or null means real), which becomes the `is_synthetic`
flag that the valuation keeps end to end. Files are JSON lines (`.jsonl`, or a `.json`
written by `Dataset.to_json`) or one JSON array of records (`.json`, as Stanford Alpaca's
`alpaca_data.json`). Nothing is downloaded: a Hugging Face `datasets` directory is one
written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, and `datasets` is imported
only on that branch.

Shape legend: `n` records.
"""

import itertools
import json
import os
from pathlib import Path
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple
import warnings

import numpy as np

from dv_jax import checks

TASKS = ('sentiment', 'instruction', 'reasoning')
SENTIMENT_LABEL_NAMES = ('negative', 'positive')
SOURCES = ('real', 'synthetic')
# Keys a hand-made file may use for the real/synthetic flag instead of `source`.
_SOURCE_LOOKALIKES = ('source', 'is_synthetic', 'synthetic')
_ANSWER_MARK = '####'


class TextDataset(NamedTuple):
  """Records of one text task.

  Attributes:
    prompts: [n] the model input: the review / sentence (sentiment), the instruction plus
      `'\\n\\n' + input` when the input is non-empty (instruction), the question (reasoning).
    responses: [n] the target text: the label name (sentiment), `output` (instruction), the
      full worked answer (reasoning).
    labels: int32 [n] class ids for sentiment, else None.
    final_answers: [n] the text after the last `####` (whitespace and thousands separators
      removed) for reasoning, else None.
    is_synthetic: bool [n].
  """
  prompts: List[str]
  responses: List[str]
  labels: Optional[np.ndarray]
  final_answers: Optional[List[str]]
  is_synthetic: np.ndarray


def gsm8k_final_answer(answer: str) -> str:
  """The final answer of a GSM8K solution: the text after its last `####`.

  Raises:
    ValueError: if `answer` has no `####`, or nothing after its last one.
  """
  if _ANSWER_MARK not in answer:
    raise ValueError(f'answer has no {_ANSWER_MARK!r} final-answer marker: {answer[-80:]!r}')
  final = answer.rsplit(_ANSWER_MARK, 1)[1].strip()
  if not final:
    # An empty final answer would match any empty generation when answers are compared.
    raise ValueError(f'answer has nothing after its last {_ANSWER_MARK!r} final-answer '
                     f'marker: {answer[-80:]!r}')
  # GSM8K writes a few large numbers as '1,000'; compare answers as bare numbers.
  return final.replace(',', '')


class _EmptyField(ValueError):
  """A required text field that is empty; `drop_empty` skips its record instead."""


def _field(record: dict, name: str, where: str, *, required: bool = True):
  if name not in record or record[name] is None:
    if required:
      raise ValueError(f'{where}: missing field {name!r} (fields: {sorted(record)})')
    return None
  return record[name]


def _text_field(record: dict, name: str, where: str, *, required: bool = True,
                allow_empty: bool = False) -> str:
  value = _field(record, name, where, required=required)
  if value is None:
    return ''
  if not isinstance(value, str):
    raise ValueError(f'{where}: field {name!r} must be a string, got {type(value).__name__}')
  if not allow_empty and not value.strip():
    # Real files have such records (Stanford's alpaca_data.json has empty outputs), and
    # one of them stops the whole file: say how to go on.
    raise _EmptyField(f'{where}: field {name!r} is empty; drop the records with an empty '
                      f'{name!r} from the file first, or skip them with drop_empty=True '
                      '(config.data.drop_empty)')
  return value


def _is_synthetic(record: dict, where: str) -> bool:
  source = record.get('source')
  if source is None:
    # A flag under another name (`is_synthetic: true`, `Source`) would otherwise leave
    # every record real without a word, and pi = 1 for every contributor.
    for key in record:
      if key != 'source' and str(key).strip().lower() in _SOURCE_LOOKALIKES:
        raise ValueError(f"{where}: no 'source' field but a {key!r} field; name the "
                         f"real/synthetic flag 'source' with values {SOURCES} (a record "
                         "without 'source' is read as real)")
    return False
  if source not in SOURCES:
    raise ValueError(f'{where}: source must be one of {SOURCES}, got {source!r}')
  return source == 'synthetic'


def _sentiment_label(record: dict, where: str, label_names: Sequence[str]) -> int:
  label = _field(record, 'label', where)
  if isinstance(label, str):
    if label not in label_names:
      raise ValueError(f'{where}: label {label!r} is not one of {tuple(label_names)}')
    return label_names.index(label)
  if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
    raise ValueError(f'{where}: label must be an integer or a label name, got {label!r}')
  if label == -1:
    # Hugging Face's unlabelled splits: the hint named IMDB alone, read for SST-2 as if
    # only IMDB files had them.
    raise ValueError(f'{where}: label -1 marks an unlabelled record (GLUE SST-2\'s test '
                     "split and IMDB's unsupervised split have no labels); read a labelled "
                     'split')
  if not 0 <= label < len(label_names):
    raise ValueError(f'{where}: label {label} outside [0, {len(label_names)})')
  return int(label)


def _parse_record(record, where: str, task: str, label_names: Sequence[str]
                  ) -> Tuple[str, str, Optional[int], Optional[str]]:
  """(prompt, response, label or None, final answer or None) of one record of `task`."""
  if not isinstance(record, dict):
    raise ValueError(f'{where}: a record must be a JSON object, got {type(record).__name__}')
  if task == 'sentiment':
    if 'sentence' in record:
      text = _text_field(record, 'sentence', where)
    elif 'text' in record:
      text = _text_field(record, 'text', where)
    else:
      raise ValueError(f"{where}: sentiment records need 'sentence' (SST-2) or 'text' "
                       f'(IMDB); fields: {sorted(record)}')
    label = _sentiment_label(record, where, label_names)
    return text, label_names[label], label, None
  if task == 'instruction':
    instruction = _text_field(record, 'instruction', where)
    # Alpaca leaves `input` empty for instructions that need none.
    extra = _text_field(record, 'input', where, required=False, allow_empty=True)
    output = _text_field(record, 'output', where)
    return instruction + ('\n\n' + extra if extra.strip() else ''), output, None, None
  question = _text_field(record, 'question', where)
  answer = _text_field(record, 'answer', where)
  try:
    final = gsm8k_final_answer(answer)
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from None
  return question, answer, None, final


def parse_records(records: Iterable[Tuple[str, dict]], *, task: str,
                  label_names: Sequence[str] = SENTIMENT_LABEL_NAMES,
                  drop_empty: bool = False) -> TextDataset:
  """Builds a `TextDataset` from `(where, record)` pairs.

  Args:
    records: iterable of `(where, record)`; `where` locates the record in error messages
      (`'train.jsonl line 7'`).
    task: one of `TASKS`.
    label_names: sentiment class names, index = label id.
    drop_empty: skip records whose required text field is empty or blank (a warning says
      how many, and names the first), instead of refusing the file. Missing fields and other faults
      are refused either way.

  Returns:
    `TextDataset`.

  Raises:
    ValueError: naming the record and the field at fault, or if there are no records.
  """
  if task not in TASKS:
    raise ValueError(f'task must be one of {TASKS}, got {task!r}')
  label_names = list(label_names)
  prompts, responses, labels, finals, synthetic = [], [], [], [], []
  dropped = []
  for where, record in records:
    try:
      prompt, response, label, final = _parse_record(record, where, task, label_names)
    except _EmptyField as e:
      if not drop_empty:
        raise
      dropped.append(str(e).split(';')[0])
      continue
    prompts.append(prompt)
    responses.append(response)
    labels.append(label)
    finals.append(final)
    synthetic.append(_is_synthetic(record, where))
  if dropped:
    warnings.warn(f'skipped {len(dropped)} record(s) with an empty text field (drop_empty); '
                  f'the first: {dropped[0]}')
  if not prompts:
    raise ValueError('no records')
  return TextDataset(
      prompts=prompts, responses=responses,
      labels=np.asarray(labels, np.int32) if task == 'sentiment' else None,
      final_answers=finals if task == 'reasoning' else None,
      is_synthetic=np.asarray(synthetic, dtype=bool))


def _is_json_array(path: Path) -> bool:
  """Whether a `.json` file is one JSON array (Alpaca's layout), not JSON lines."""
  with open(path, 'rb') as f:
    head = f.read(4096)
  if head.startswith(b'\xef\xbb\xbf'):  # a byte-order mark, as `_jsonl_records` allows
    head = head[3:]
  return head.lstrip()[:1] == b'['


def _json_array_records(path: Path):
  try:
    records = json.loads(path.read_text(encoding='utf-8-sig'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} line {e.lineno}: invalid JSON ({e.msg})') from None
  except UnicodeDecodeError as e:
    raise ValueError(f'{path}: not UTF-8 text ({e.reason} at offset {e.start}); save the '
                     'file as UTF-8') from None
  if not isinstance(records, list):
    raise ValueError(f'{path}: a JSON array of records expected')
  for i, record in enumerate(records):
    yield f'{path} record {i}', record


def _jsonl_records(path: Path):
  # utf-8-sig: files saved by Windows tools start with a byte-order mark.
  with open(path, 'r', encoding='utf-8-sig') as f:
    try:
      for line_no, line in enumerate(f, start=1):
        if not line.strip():
          continue
        where = f'{path} line {line_no}'
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{where}: invalid JSON ({e.msg})') from None
        yield where, record
    except UnicodeDecodeError:
      # A UTF-16 (PowerShell's `>`) or cp1252 file used to raise the codec's bare message,
      # naming neither the file nor the line.
      raw = path.read_bytes()
      try:
        raw.decode('utf-8')
      except UnicodeDecodeError as e:
        bad_line = raw.count(b'\n', 0, e.start) + 1
        raise ValueError(f'{path} line {bad_line}: not UTF-8 text (byte {raw[e.start]:#04x} '
                         f'at offset {e.start}); save the file as UTF-8') from None
      raise


def _polarity(name: str) -> Optional[int]:
  """0 for a negative class name, 1 for a positive one, None if neither."""
  name = name.strip().lower()
  if name in ('neg', 'negative'):
    return 0
  if name in ('pos', 'positive'):
    return 1
  return None


def _class_label_ids(names: Sequence[str], label_names: Sequence[str]) -> List[int]:
  """Index into `label_names` of each `ClassLabel` id (the id is the list position).

  A name matching one of `label_names` (case-insensitively) maps to it; otherwise a binary
  `label_names` is read as (negative, positive) and the names by their polarity, so SST-2's
  ['negative', 'positive'], IMDB's ['neg', 'pos'] and a reversed order all map correctly.

  Raises:
    ValueError: naming `names` when they cannot be matched.
  """
  wanted = [n.strip().lower() for n in label_names]
  given = [n.strip().lower() for n in names]
  if set(given) <= set(wanted) and len(set(given)) == len(given):
    return [wanted.index(n) for n in given]
  polarities = [_polarity(n) for n in names]
  if (len(label_names) == 2 and None not in polarities
      and len(set(polarities)) == len(polarities)):
    return polarities
  raise ValueError(f'the label ClassLabel names {list(names)} match neither label_names '
                   f'{list(label_names)} nor negative / positive (neg / pos)')


def _class_label_names(feature) -> Optional[List[str]]:
  """The names of a `ClassLabel` feature, or None (not a ClassLabel, or only '0', '1', ...)."""
  import datasets  # pylint: disable=g-import-not-at-top
  if not isinstance(feature, datasets.ClassLabel) or not feature.names:
    return None
  # ClassLabel(num_classes=k) names its classes '0'..'k-1': the ids are the labels already.
  if list(feature.names) == [str(i) for i in range(len(feature.names))]:
    return None
  return list(feature.names)


def _datasets_records(path: Path, split: Optional[str], label_names: Sequence[str],
                      task: str):
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('reading a datasets directory needs the `datasets` package: '
                      'pip install "dv_jax[data]"') from e
  loaded = datasets.load_from_disk(str(path))
  if isinstance(loaded, datasets.DatasetDict):
    names = sorted(loaded.keys())
    if split is None:
      if len(names) != 1:
        raise ValueError(f'{path} is a DatasetDict with splits {names}; pass split=')
      split = names[0]
    if split not in loaded:
      raise ValueError(f'split {split!r} not in {path} (splits: {names})')
    loaded = loaded[split]
  elif split is not None:
    raise ValueError(f'split={split!r} given but {path} is a single Dataset, not a DatasetDict')
  # A directory saved after with_format('arrow' / 'numpy' / 'pandas') keeps that format;
  # reset it so columns come back as Python str / int.
  loaded = loaded.with_format(None)
  # Column-wise reads are one Arrow conversion per column instead of one per row.
  columns = {name: list(loaded[name]) for name in loaded.column_names}
  tag = f'{path}' + (f' (split {split!r})' if split is not None else '')
  label_classes = _class_label_names(loaded.features.get('label'))
  if task == 'sentiment' and label_classes is not None:
    try:
      ids = _class_label_ids(label_classes, label_names)
    except ValueError as e:
      raise ValueError(f'{tag}: {e}') from None
    # Out-of-range ids (IMDB's -1 'unlabelled') pass through to the range check.
    columns['label'] = [ids[v] if isinstance(v, int) and 0 <= v < len(ids) else v
                        for v in columns['label']]
  source_classes = _class_label_names(loaded.features.get('source'))
  if source_classes is not None:
    columns['source'] = [
        source_classes[v] if isinstance(v, int) and 0 <= v < len(source_classes) else v
        for v in columns['source']]
  for i in range(loaded.num_rows):
    yield f'{tag} record {i}', {name: values[i] for name, values in columns.items()}


def load_text_task(path, *, task: str, split: Optional[str] = None,
                   label_names: Sequence[str] = SENTIMENT_LABEL_NAMES,
                   max_records: Optional[int] = None, drop_empty: bool = False
                   ) -> TextDataset:
  """Loads a text task from a JSON / JSONL file or a `datasets` `save_to_disk` directory.

  Args:
    path: a `.jsonl` file (one JSON object per line, blank lines skipped), a `.json` file
      holding either JSON lines or one array of objects (`alpaca_data.json`), or a
      directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.
    task: 'sentiment', 'instruction' or 'reasoning' (see the module docstring for fields).
    split: for a `DatasetDict` directory with several splits, the one to read (an error for
      a JSONL file or a single `Dataset`, which have none).
    label_names: sentiment class names, index = label id (SST-2 and IMDB: 0 negative,
      1 positive). A `ClassLabel` `label` column is mapped through its names instead.
    max_records: read only the first `max_records` records (counted before `drop_empty`).
    drop_empty: skip records with an empty required text field instead of refusing the
      file (Stanford's `alpaca_data.json` has empty outputs); a warning counts them.

  Returns:
    `TextDataset`.

  Raises:
    ValueError: naming the file and line (or record) and field at fault, or the missing
      path.
  """
  path = Path(os.fspath(path))
  if max_records is not None:
    max_records = checks.check_int(max_records, 'max_records')
  if path.is_file():
    if path.suffix not in ('.jsonl', '.json'):
      raise ValueError(f'{path}: expected a .jsonl / .json file or a datasets directory')
    if split is not None:
      raise ValueError(f'split={split!r} given but {path} is a JSON file, which has no splits')
    records = (_json_array_records(path) if path.suffix == '.json' and _is_json_array(path)
               else _jsonl_records(path))
  elif path.is_dir():
    if not ((path / 'dataset_info.json').is_file() or (path / 'dataset_dict.json').is_file()):
      raise ValueError(f'{path} is not a datasets save_to_disk directory (no '
                       'dataset_info.json or dataset_dict.json)')
    records = _datasets_records(path, split, label_names, task)
  else:
    raise ValueError(f'text task path {path} does not exist')
  if max_records is not None:
    records = itertools.islice(records, max_records)
  try:
    return parse_records(records, task=task, label_names=label_names, drop_empty=drop_empty)
  except ValueError as e:
    if str(e) == 'no records':
      raise ValueError(f'{path}: no records') from None
    raise


def subset(data: TextDataset, indices) -> TextDataset:
  """The records at `indices` (int [k]), in that order."""
  # A boolean mask (`~data.is_synthetic`) is refused, not read as the positions 0 and 1.
  idx = checks.check_indices(indices)
  pick = lambda seq: [seq[i] for i in idx]  # pylint: disable=unnecessary-lambda-assignment
  return TextDataset(
      prompts=pick(data.prompts), responses=pick(data.responses),
      labels=None if data.labels is None else data.labels[idx],
      final_answers=None if data.final_answers is None else pick(data.final_answers),
      is_synthetic=data.is_synthetic[idx])


def concatenate(parts: Sequence[TextDataset]) -> TextDataset:
  """Concatenates data sets of one task, in order."""
  if not parts:
    raise ValueError('parts is empty')
  has_labels = {p.labels is not None for p in parts}
  has_finals = {p.final_answers is not None for p in parts}
  if len(has_labels) != 1 or len(has_finals) != 1:
    raise ValueError('parts mix different tasks')
  return TextDataset(
      prompts=[s for p in parts for s in p.prompts],
      responses=[s for p in parts for s in p.responses],
      labels=np.concatenate([p.labels for p in parts]) if has_labels == {True} else None,
      final_answers=([s for p in parts for s in p.final_answers] if has_finals == {True}
                     else None),
      is_synthetic=np.concatenate([p.is_synthetic for p in parts]))
