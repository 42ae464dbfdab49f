"""Multi-device tests: 8 simulated CPU devices, in their own process.

The default suite (``pytest -n 2``) imports JAX early with one CPU device, so
this directory is skipped there; ``tests/test_parallel.py`` runs it in a
subprocess with ``KDJAX_MULTIDEVICE=1`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. To run it by hand::

    KDJAX_MULTIDEVICE=1 XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m pytest tests/multidevice -q -p no:cacheprovider
"""

import os


NUM_DEVICES = 8

if os.environ.get('KDJAX_MULTIDEVICE') != '1':
  collect_ignore_glob = ['*']
else:
  _flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_force_host_platform_device_count' not in _flags:
    # Must happen before JAX initialises its backend (nothing here has run JAX yet).
    os.environ['XLA_FLAGS'] = f'{_flags} --xla_force_host_platform_device_count={NUM_DEVICES}'
