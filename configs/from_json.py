r"""Rerun an experiment from the `config.json` a finished run left in its workdir.

Every experiment script writes its whole resolved config (overrides included) to
`<workdir>/config.json`. This config file reads it back, for any script:

  python experiments/valuation_table.py \
      --config=configs/from_json.py:workdirs/valuation_table/config.json \
      --workdir=workdirs/valuation_table          # or a fresh one, to reproduce it

Overrides work as with the scripts' own configs (`--config.ground_truth.steps=400`). JSON
has no tuples, so every list is read back as a tuple, which is what the configs hold: the
reloaded config writes the same `config.json` and so gets the same unit fingerprints, and a
rerun into the old workdir reuses its units. A non-finite float was written as null and
comes back as None; no shipped config holds one.
"""

import json
from pathlib import Path

import ml_collections


def _tuples(value):
  if isinstance(value, list):
    return tuple(_tuples(item) for item in value)
  if isinstance(value, dict):
    return {key: _tuples(item) for key, item in value.items()}
  return value


def get_config(path=None) -> ml_collections.ConfigDict:
  """The ConfigDict saved at `path` (a run's `config.json`)."""
  if not path:
    raise ValueError('name the saved config: --config=configs/from_json.py:<workdir>/config.json')
  file = Path(path)
  if file.is_dir():
    file = file / 'config.json'
  if not file.is_file():
    raise ValueError(f'no saved config at {str(file)!r}')
  try:
    saved = json.loads(file.read_text(encoding='utf-8'))
  except ValueError as e:
    raise ValueError(f'{file} is not a JSON config: {e}') from None
  if not isinstance(saved, dict):
    raise ValueError(f'{file} is not a JSON object of config fields')
  return ml_collections.ConfigDict(_tuples(saved))
