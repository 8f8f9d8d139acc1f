"""One benchmark case per fresh subprocess, so its peak resident memory is its own.

A benchmark script calls `spawn(__file__, case, timeout)` in the parent; the child is the
same script run with `--case '<json>'`, which computes the case and prints one line
`RESULT <json>` (`print_result`). The parent reads that line, or reports a timeout, a
signal (out of memory) or the child's last stderr line as the case's `status`.
"""

import json
import os
import resource
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PREFIX = 'RESULT '


def maxrss_mb() -> float:
  """This process's peak resident memory so far, MB.

  Linux: `VmHWM` of /proc/self/status, this program's own high-water mark. Not
  `ru_maxrss`, which keeps the peak from before `exec`: the child starts as a copy of the
  benchmark's parent (vfork), so it reported at least the parent's peak (160 MB with JAX
  imported) whatever the case used. Elsewhere `ru_maxrss` (KiB on Linux, bytes on macOS).
  """
  try:
    with open('/proc/self/status', encoding='ascii') as status:
      for line in status:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024  # kB
  except (OSError, ValueError, IndexError):
    pass
  scale = 2**20 if sys.platform == 'darwin' else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def current_rss_mb() -> float:
  """This process's resident memory now, MB."""
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def print_result(result: dict) -> None:
  """The child's answer: one line the parent recognises."""
  print(_PREFIX + json.dumps(result), flush=True)


def spawn(script: str, case: dict, timeout: float) -> dict:
  """Runs `script --case <case>` in a fresh interpreter; its result dict plus `wall_s`."""
  env = dict(os.environ)
  env['PYTHONPATH'] = _ROOT + os.pathsep + env.get('PYTHONPATH', '')
  start = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, os.path.abspath(script), '--case', json.dumps(case)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
  except subprocess.TimeoutExpired:
    return {'status': f'timeout (> {timeout:.0f} s)'}
  wall_s = time.perf_counter() - start
  for line in proc.stdout.splitlines():
    if line.startswith(_PREFIX):
      return dict(json.loads(line[len(_PREFIX):]), wall_s=wall_s)
  if proc.returncode < 0:
    return {'status': f'killed by signal {-proc.returncode}'
                      + (' (out of memory?)' if proc.returncode == -9 else '')}
  last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
  return {'status': f'failed (rc {proc.returncode}): {last[:70]}'}
