"""Iterators shared by the tests."""

import numpy as np


class CyclingBatches:
  """Cycles over fixed batches; ``get_state`` / ``set_state`` as a grain iterator's."""

  def __init__(self, batches):
    self.batches = [{k: np.asarray(v) for k, v in b.items()} for b in batches]
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = self.batches[self.position % len(self.batches)]
    self.position += 1
    return batch

  def get_state(self):
    return {'position': self.position}

  def set_state(self, state):
    self.position = int(state['position'])
