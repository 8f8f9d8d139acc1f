"""Test-wide JAX settings.

Four host devices let the sharded code paths run on this CPU-only machine, and XLA emits
unoptimised machine code, which compiles faster than the tests run it; rank promotion
raises so silent broadcasting is a test failure, as STYLE.md asks; on an accelerator,
float32 matmuls run at full precision, as the float64 references need, and each pytest
worker allocates device memory as it goes. One compilation cache on disk serves the whole
session, so a program compiled by one test or worker is not compiled again.
"""

import atexit
import os
import shutil
import tempfile

# LLVM's optimisation level 0 for the code XLA emits: the suite is mostly compiling small
# programs that then run for milliseconds, and at level 0 the main environment's suite
# takes 4:41 instead of 6:07 on 2 cores (the neural-tangents one 1:38 instead of 2:26).
# The tests check what the programs compute, which does not depend on the level beyond
# float32 rounding; the suite passes at both. The experiments and the benchmark scripts
# run at XLA's default level. Setting XLA_FLAGS yourself replaces both flags.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4 '
                      '--xla_backend_optimization_level=0')
# On a GPU, JAX takes 75% of its memory at start; the pytest workers share one device, so
# each takes what it uses instead (as in the H200 runs). No effect on a CPU.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('MPLBACKEND', 'Agg')
# Compilation is over half of the suite's CPU time, and many tests compile the same
# programs (a model's train step, a gradient block) as fresh closures, which JAX's
# in-memory caches key by identity. A persistent cache keys them by their HLO instead:
# 13:44 instead of 17:47 CPU minutes for the main environment on 2 cores. The directory is
# new for every session (made by the pytest process that starts the xdist workers, which
# inherit it), so nothing compiled by an earlier checkout is ever reused. No size limit:
# a limit turns on JAX's file lock and eviction scan, which cost more than they save (the
# neural-tangents tests went from 33 s to 46 s). Unlocked, a worker may find an entry the
# other is still writing; JAX then fails to decompress it, warns and compiles instead.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ and 'PYTEST_XDIST_WORKER' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='dv_jax_tests_xla_cache_')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import jax  # noqa: E402  (the environment above must be set before JAX starts)
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')
# The tests check models, gradients and kernels against float64 NumPy at float32
# tolerances. A GPU's default float32 matmul and convolution is TF32 (a TPU's, bfloat16
# passes): on an H200, 42 such tests missed by TF32's rounding (by up to 1.6e-2, on trained
# ResNet-18 logits) and all passed at 'highest'. The CPU computes float32 in full either
# way, so nothing changes there; the library's own kernel contractions and solves ask for
# HIGHEST themselves.
if jax.default_backend() != 'cpu':
  jax.config.update('jax_default_matmul_precision', 'highest')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: runs an experiment end to end (smoke config), '
                          'checks config wiring through whole methods or runs a benchmark '
                          'script at tiny sizes; make test-nt skips it')


@pytest.fixture(scope='session')
def require_neural_tangents():
  """Imports neural-tangents; in the .venv-nt run (DV_JAX_REQUIRE_NT=1) a failure is an error."""
  if os.environ.get('DV_JAX_REQUIRE_NT') == '1':
    import neural_tangents  # pylint: disable=g-import-not-at-top
    return neural_tangents
  return pytest.importorskip('neural_tangents')
