"""Test-session setup shared by tests/ and the doctests in optimflow/.

Eight host CPU devices are requested before JAX initialises, so the sharding
tests can build meshes; single-device computations still run on device 0.
"""

import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG
  ).strip()
os.environ.setdefault('MPLBACKEND', 'Agg')
