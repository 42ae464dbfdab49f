"""Independent float64 NumPy/SciPy references written from the papers' formulas."""

import numpy as np
from scipy import special


def softmax(z, tau=1.0):
  return special.softmax(np.asarray(z, np.float64) / tau, axis=-1)


def kl(p, q):
  """KL(p || q) over the last axis, 0 log 0 = 0."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  return np.sum(special.rel_entr(p, q), axis=-1)


def cross_entropy(z, y):
  logp = special.log_softmax(np.asarray(z, np.float64), axis=-1)
  return -np.take_along_axis(logp, np.asarray(y)[..., None], axis=-1)[..., 0]
