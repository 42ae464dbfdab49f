"""Shared fixtures for kdjax.data tests: one TFDS data dir per test session/worker."""

import pytest

from kdjax import data as kd


# A small labeled MNIST-1D config (160 train / 40 test) that builds in ~0.1 s.
SMALL = kd.mnist1d_config(200)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data dir private to this pytest worker (xdist workers never share it)."""
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='session')
def small_train(data_dir):
  return kd.load('mnist1d', 'train', data_dir=data_dir, config=SMALL)


@pytest.fixture(scope='session')
def small_test(data_dir):
  return kd.load('mnist1d', 'test', data_dir=data_dir, config=SMALL)
