"""Test-session setup shared by tests/.

Eight host CPU devices are requested before JAX initialises, so the sharding
tests can build meshes; single-device computations still run on device 0.

Compiled programs go to JAX's persistent compilation cache (a folder under
the system's temp dir unless ``JAX_COMPILATION_CACHE_DIR`` is set): the suite
compiles many identical programs in different tests and both xdist workers,
and a cold cache already saves about 8% of the run on 2 cores; a warm one
(a re-run) much more. Keys include the jax version, backend and flags.
"""

import os
import tempfile

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG
  ).strip()
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  os.path.join(tempfile.gettempdir(), 'optimflow-jax-cache'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
