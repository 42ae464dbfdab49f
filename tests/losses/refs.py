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


# ---- KD-topk / KD-pt / KD-sim / DKD / DML / DIST (tests/losses/test_logits.py) ----

def topk_target(t, k, tau=1.0):
  """Tang et al. 2020 KD-topk target: keep the top-k teacher probabilities,
  spread 1 - (their sum) uniformly over the other C - k classes. Ties: the
  lowest class index ranks first (stable sort)."""
  p = softmax(t, tau)
  num_classes = p.shape[-1]
  order = np.argsort(-np.asarray(t, np.float64), axis=-1, kind='stable')
  keep = np.zeros(p.shape, bool)
  np.put_along_axis(keep, order[..., :k], True, axis=-1)
  kept = np.where(keep, p, 0.0)
  rest = 1.0 - kept.sum(axis=-1, keepdims=True)
  if k == num_classes:
    return kept
  return np.where(keep, p, rest / (num_classes - k))


def pt_target(t, y, tau=1.0):
  """Tang et al. 2020 KD-pt target: p_y on the true class, (1 - p_y)/(C - 1) elsewhere."""
  p = softmax(t, tau)
  num_classes = p.shape[-1]
  y = np.asarray(y)
  p_y = np.take_along_axis(p, y[..., None], axis=-1)
  onehot = np.eye(num_classes)[y]
  return onehot * p_y + (1.0 - onehot) * (1.0 - p_y) / (num_classes - 1)


def sim_target(w, y, tau=1.0):
  """Tang et al. 2020 KD-sim target: softmax of the true class's row of the
  cosine-similarity matrix between the columns of the [D, C] kernel."""
  w = np.asarray(w, np.float64)
  unit = w / np.linalg.norm(w, axis=0, keepdims=True)
  similarity = unit.T @ unit
  return softmax(similarity[np.asarray(y)], tau)


def dkd(s, t, y, alpha, beta, tau):
  """Zhao et al. 2022: tau^2 (alpha KL(b_T||b_S) + beta KL(hat p_T || hat p_S))."""
  p_s, p_t = softmax(s, tau), softmax(t, tau)
  num_classes = p_s.shape[-1]
  y = np.asarray(y)
  ys = y[..., None]
  py_s = np.take_along_axis(p_s, ys, axis=-1)[..., 0]
  py_t = np.take_along_axis(p_t, ys, axis=-1)[..., 0]
  tckd = kl(np.stack([py_t, 1 - py_t], -1), np.stack([py_s, 1 - py_s], -1))
  others = ~np.eye(num_classes, dtype=bool)[y]
  shape = p_s.shape[:-1] + (num_classes - 1,)
  rest_s = p_s[others].reshape(shape)
  rest_t = p_t[others].reshape(shape)
  rest_s = rest_s / rest_s.sum(-1, keepdims=True)
  rest_t = rest_t / rest_t.sum(-1, keepdims=True)
  nckd = kl(rest_t, rest_s)
  return tau**2 * (alpha * tckd + beta * nckd)


def mutual_kl(peers, tau=1.0, targets=None):
  """Zhang et al. 2018: entry k = 1/(K-1) sum_{l != k} tau^2 KL(p_l || p_k)."""
  peers = np.asarray(peers, np.float64)
  targets = peers if targets is None else np.asarray(targets, np.float64)
  num_peers = peers.shape[0]
  out = []
  for k in range(num_peers):
    q_k = softmax(peers[k], tau)
    total = sum(kl(softmax(targets[l], tau), q_k) for l in range(num_peers) if l != k)
    out.append(tau**2 * total / (num_peers - 1))
  return np.stack(out)


def pearson_rows(a, b, eps=1e-8):
  """Pearson correlation of each row pair, with eps added to the norm product."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def dist(s, t, beta=1.0, gamma=1.0, tau=1.0, eps=1e-8):
  """Huang et al. 2022 DIST on [B, C]: tau^2 (beta inter + gamma intra)."""
  p_s, p_t = softmax(s, tau), softmax(t, tau)
  inter = np.mean(1.0 - pearson_rows(p_s, p_t, eps))
  intra = np.mean(1.0 - pearson_rows(p_s.T, p_t.T, eps))
  return tau**2 * (beta * inter + gamma * intra)
