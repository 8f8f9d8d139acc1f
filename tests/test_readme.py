"""The README's library example runs as printed: a newcomer's first call must not rot."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np

_README = Path(__file__).resolve().parents[1] / 'README.md'


def test_readme_python_example_runs():
  blocks = re.findall(r'```python\n(.*?)```', _README.read_text(), flags=re.S)
  assert len(blocks) == 1, 'one python example in the README; test each new one here'
  namespace = {}
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(blocks[0], str(_README), 'exec'), namespace)  # pylint: disable=exec-used
  result = namespace['result']
  # What the example promises: a value and a rank per contributor, the best one printed.
  num_contributors = len(namespace['contribs'])
  assert sorted(np.asarray(result.ranking).tolist()) == list(range(num_contributors))
  assert np.all(np.isfinite(result.values)) and len(result.names) == num_contributors
  assert printed.getvalue().startswith(result.names[int(np.argmax(result.values))])
