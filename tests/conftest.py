"""Shared test settings."""

import json
import os

import hypothesis
import pytest


# The test programs are tiny, so XLA's compile time dominates the suite: compile
# them with LLVM's optimisations off (about a quarter less CPU time). Subprocesses
# (the multi-device and kill/resume tests) inherit it. KDJAX_TEST_XLA_OPT=1 keeps
# XLA's defaults. Set before any test module imports JAX.
FAST_COMPILE_FLAGS = ('--xla_backend_optimization_level=0',
                      '--xla_llvm_disable_expensive_passes=true')
if os.environ.get('KDJAX_TEST_XLA_OPT') != '1':
  _flags = os.environ.get('XLA_FLAGS', '').split()
  os.environ['XLA_FLAGS'] = ' '.join(_flags + [f for f in FAST_COMPILE_FLAGS if f not in _flags])


# Deterministic, bounded property tests: CI must be reproducible and fast.
hypothesis.settings.register_profile(
    'kdjax', max_examples=25, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'kdjax'))


# ---------------------------------------------------------------- experiment smoke runs

@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A TFDS data directory shared by a module's tests (datasets are built once)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def results(tmp_path, monkeypatch):
  """Redirects ``experiments/results`` to a temporary directory."""
  from experiments import common  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'results'
  monkeypatch.setattr(common, 'RESULTS', str(out))
  return out


@pytest.fixture
def quick_config(data_dir, tmp_path):
  """``make(config_module, mode='quick')``: a config whose runs go to ``tmp_path``."""

  def make(module, mode='quick'):
    c = module.get_config(mode)
    c.workdir = str(tmp_path / 'runs')
    c.data_dir = data_dir
    return c

  return make


def check_results(path, columns, rows, pngs):
  """Asserts an experiment wrote its table, verdict and plots; returns its records."""
  for f in ('results.md', 'results.csv', 'records.json', *pngs):
    assert (path / f).is_file(), f
  md = (path / 'results.md').read_text()
  assert '**Finding tested:**' in md and '**Verdict on our data:**' in md
  assert '**Regenerate:**' in md
  assert md.count('\n|') >= len(rows) + 1
  assert all(set(columns) <= set(r) for r in rows)
  return json.loads((path / 'records.json').read_text())


@pytest.fixture(name='check_results')
def check_results_fixture():
  return check_results
