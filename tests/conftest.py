"""Test-wide JAX settings.

Four host devices let the sharded code paths run on this CPU-only machine; rank promotion
raises so silent broadcasting is a test failure, as STYLE.md asks.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('MPLBACKEND', 'Agg')

import jax  # noqa: E402  (the environment above must be set before JAX starts)
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')


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
