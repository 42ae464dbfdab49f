"""Relational and embedding distillation losses.

Batch-level losses (similarity preserving, RKD, PKT, CC) compare relations
between the examples of a batch ``[B, ...]`` and return a scalar; student and
teacher may have different feature sizes because only ``[B, B]`` (or
``[B, B, B]``) relation tensors are compared. The batch is always axis 0 and
no further leading axes are broadcast (``jax.vmap`` them for one loss per
group). ``crd_nce`` is per-example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses import _checks
from kdjax.losses._features import _floats
from kdjax.losses._features import _l2_normalize


def _check_batch_pair(s, t, name_s: str, name_t: str, *, rank=None) -> None:
  """Checks ``[B, ...]`` inputs (exact ``rank`` if given) with equal ``B``."""
  for x, name in ((s, name_s), (t, name_t)):
    if rank is None:
      _checks.check_min_rank(x, 2, name)
    else:
      _checks.check_rank(x, rank, name)
  if jnp.shape(s)[0] != jnp.shape(t)[0]:
    raise ValueError(
        f'`{name_s}` and `{name_t}` must have the same batch size (axis 0), got '
        f'shapes {jnp.shape(s)} and {jnp.shape(t)}.')


def _smooth_l1(x: jax.Array) -> jax.Array:
  """Huber loss with δ = 1: ``½x²`` if ``|x| < 1`` else ``|x| − ½``."""
  ax = jnp.abs(x)
  return jnp.where(ax < 1.0, 0.5 * jnp.square(x), ax - 0.5)


def _centered_gram(x: jax.Array) -> jax.Array:
  """Gram matrix of the rows of ``x`` after subtracting their mean.

  Distances and angles are translation invariant; centring first keeps the
  Gram-based differences below accurate when embeddings share a large offset.
  """
  x = x - jnp.mean(x, axis=0, keepdims=True)
  return x @ x.T


def _inverse_distances(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pairwise distances ``d_ij = ‖x_i − x_j‖`` and ``1/d_ij`` (0 where d = 0).

  The diagonal is exactly 0. ``sqrt`` is only evaluated at positive squared
  distances (the double-``where`` trick), so gradients stay finite when two
  examples coincide.
  """
  sq = jnp.diagonal(gram)
  d2 = sq[:, None] + sq[None, :] - 2.0 * gram
  valid = (d2 > 0) & ~jnp.eye(gram.shape[0], dtype=bool)
  d = jnp.sqrt(jnp.where(valid, d2, 1.0))
  return jnp.where(valid, d, 0.0), jnp.where(valid, 1.0 / d, 0.0)


def similarity_preserving(
    student_features: jax.Array,
    teacher_features: jax.Array,
) -> jax.Array:
  r"""Similarity-preserving (SP) loss (batch-level).

  Each example is flattened, ``Q = F.reshape(B, -1)``, its batch Gram matrix
  ``G = Q Qᵀ`` (``[B, B]``) is L2-normalised row by row,
  ``Ĝ_i = G_i / max(‖G_i‖₂, 1e-12)``, and the loss is
  ``‖Ĝ_T − Ĝ_S‖²_F / B²``.

  Args:
    student_features: ``[B, ...]`` student features (any trailing shape).
    teacher_features: ``[B, ...]`` teacher features; the trailing shape may
      differ from the student's.

  Returns:
    Scalar loss over the batch, in at least float32.

  Raises:
    ValueError: for inputs of rank < 2, different batch sizes or non-floating
      inputs.

  References:
    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
    arXiv:1907.09682.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import similarity_preserving
    >>> s = jnp.eye(2)                      # Ĝ_S = I
    >>> t = jnp.ones((2, 1))                # Ĝ_T = all 1/√2
    >>> similarity_preserving(s, t)         # (4 − 2√2) / 4
    Array(0.29289..., dtype=float32)
  """
  _check_batch_pair(student_features, teacher_features, 'student_features',
                    'teacher_features')
  s, t = _floats((student_features, 'student_features'),
                 (teacher_features, 'teacher_features'))
  b = s.shape[0]

  def similarity(f):
    q = f.reshape(b, -1)
    return _l2_normalize(q @ q.T, axis=-1)

  return jnp.sum(jnp.square(similarity(t) - similarity(s))) / b**2


def rkd_distance(
    student_embeddings: jax.Array,
    teacher_embeddings: jax.Array,
) -> jax.Array:
  r"""Relational KD, distance-wise potential (batch-level).

  ``ψ_D(x_i, x_j) = ‖x_i − x_j‖₂ / μ`` with ``μ`` the mean distance over the
  pairs with a non-zero distance (for distinct examples, all ``i ≠ j``). The
  loss is the smooth-L1 (Huber, δ = 1) difference
  ``mean_{i,j} l_1(ψ_D^S(i, j) − ψ_D^T(i, j))`` over all ``B²`` ordered pairs
  of ``X²`` as in the paper (the ``i = j`` terms are 0), which is the
  authors' averaging. Distances come from a centred Gram matrix, so memory is
  ``O(B²)``; the square root is evaluated only at positive squared distances,
  so gradients stay finite for coinciding examples. The loss is invariant to
  a positive rescaling of either embedding.

  Args:
    student_embeddings: ``[B, D_s]`` student embeddings.
    teacher_embeddings: ``[B, D_t]`` teacher embeddings (``D_t`` may differ).

  Returns:
    Scalar loss over the batch, in at least float32.

  Raises:
    ValueError: for inputs not of rank 2, different batch sizes or
      non-floating inputs.

  References:
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019,
    arXiv:1904.05068.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import rkd_distance
    >>> t = jnp.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    >>> abs(float(rkd_distance(0.5 * t, t))) < 1e-6  # same shape, other scale
    True
    >>> s = jnp.array([[0.0], [1.0], [2.0]])  # ψ_01, ψ_02, ψ_12 = [1, 2, 1] / (4/3)
    >>> rkd_distance(s, t)  # t: [3, 4, 5] / 4; 2 · 2 pairs of l_1(±0.5) = 0.125, / 9
    Array(0.05555..., dtype=float32)
  """
  _check_batch_pair(student_embeddings, teacher_embeddings, 'student_embeddings',
                    'teacher_embeddings', rank=2)
  s, t = _floats((student_embeddings, 'student_embeddings'),
                 (teacher_embeddings, 'teacher_embeddings'))

  def potential(x):
    d, _ = _inverse_distances(_centered_gram(x))
    count = jnp.sum(d > 0)
    mu = jnp.where(count > 0, jnp.sum(d) / jnp.maximum(count, 1), 1.0)
    return d / mu

  return jnp.mean(_smooth_l1(potential(s) - potential(t)))


def rkd_angle(
    student_embeddings: jax.Array,
    teacher_embeddings: jax.Array,
) -> jax.Array:
  r"""Relational KD, angle-wise potential (batch-level).

  For every triplet ``(i, j, k)`` the potential is the cosine of the angle at
  ``x_j``: ``ψ_A = ⟨e_ij, e_kj⟩`` with ``e_ij = (x_i − x_j) / ‖x_i − x_j‖``.
  The loss is ``mean_{i,j,k} l_1(ψ_A^S − ψ_A^T)`` (smooth-L1, δ = 1) over all
  ``B³`` triplets of ``X³`` as in the paper; a degenerate triplet (``i = j``,
  ``k = j`` or coinciding examples) has a zero difference vector, potential 0
  on both sides and contributes 0. Computed from a centred Gram matrix in
  ``O(B³)`` memory (no ``[B, B, D]`` tensor), with finite gradients at zero
  distances. Invariant to positive rescaling of either embedding.

  Args:
    student_embeddings: ``[B, D_s]`` student embeddings.
    teacher_embeddings: ``[B, D_t]`` teacher embeddings (``D_t`` may differ).

  Returns:
    Scalar loss over the batch, in at least float32.

  Raises:
    ValueError: for inputs not of rank 2, different batch sizes or
      non-floating inputs.

  References:
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019,
    arXiv:1904.05068.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import rkd_angle
    >>> t = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # right angle at 0
    >>> abs(float(rkd_angle(3.0 * t, t))) < 1e-6  # 0 up to float32 rounding
    True
    >>> s = jnp.array([[0.0], [1.0], [-1.0]])  # straight angle at 0
    >>> rkd_angle(s, t)  # (2·l_1(−1 − 0) + 4·l_1(1 − 1/√2)) / 27
    Array(0.04339..., dtype=float32)
  """
  _check_batch_pair(student_embeddings, teacher_embeddings, 'student_embeddings',
                    'teacher_embeddings', rank=2)
  s, t = _floats((student_embeddings, 'student_embeddings'),
                 (teacher_embeddings, 'teacher_embeddings'))

  def potential(x):
    g = _centered_gram(x)
    _, inv_d = _inverse_distances(g)
    sq = jnp.diagonal(g)
    # dot[j, i, k] = ⟨x_i − x_j, x_k − x_j⟩ = g_ik − g_ij − g_jk + g_jj.
    dot = g[None, :, :] - g[:, :, None] - g[:, None, :] + sq[:, None, None]
    return dot * inv_d[:, :, None] * inv_d[:, None, :]

  return jnp.mean(_smooth_l1(potential(s) - potential(t)))


def pkt(
    student_embeddings: jax.Array,
    teacher_embeddings: jax.Array,
    *,
    eps: float = 1e-7,
) -> jax.Array:
  r"""Probabilistic knowledge transfer (PKT) with the cosine kernel (batch-level).

  Rows are L2-normalised (``x / max(‖x‖₂, 1e-12)``), the cosine similarity
  matrix is mapped to ``[0, 1]`` by ``K = (cos + 1) / 2`` and each row is made
  a conditional distribution ``P_ij = K_ij / Σ_k K_ik`` (the self-similarity
  ``j = i`` is kept, as in the authors' code). The loss is the mean over all
  ``B²`` entries of ``P^T_ij · log((P^T_ij + ε) / (P^S_ij + ε))``.

  Args:
    student_embeddings: ``[B, D_s]`` student embeddings.
    teacher_embeddings: ``[B, D_t]`` teacher embeddings (``D_t`` may differ).
    eps: ``ε > 0`` guarding the logarithm.

  Returns:
    Scalar loss over the batch, in at least float32.

  Raises:
    ValueError: for inputs not of rank 2, different batch sizes, non-floating
      inputs or ``eps <= 0``.

  References:
    Passalis & Tefas, "Learning Deep Representations with Probabilistic
    Knowledge Transfer", ECCV 2018, arXiv:1803.10837.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import pkt
    >>> t = jnp.array([[1.0, 0.0], [0.0, 1.0]])      # P_T = [[2/3, 1/3], [1/3, 2/3]]
    >>> pkt(2.0 * t, t)
    Array(0., dtype=float32)
    >>> pkt(jnp.array([[1.0], [1.0]]), t)            # P_S = all 1/2
    Array(0.0283..., dtype=float32)
  """
  _check_batch_pair(student_embeddings, teacher_embeddings, 'student_embeddings',
                    'teacher_embeddings', rank=2)
  _checks.check_positive(eps, 'eps')
  s, t = _floats((student_embeddings, 'student_embeddings'),
                 (teacher_embeddings, 'teacher_embeddings'))

  def conditional(x):
    x = _l2_normalize(x, axis=-1)
    k = (x @ x.T + 1.0) / 2.0
    return k / jnp.sum(k, axis=-1, keepdims=True)

  p_s, p_t = conditional(s), conditional(t)
  return jnp.mean(p_t * (jnp.log(p_t + eps) - jnp.log(p_s + eps)))


def crd_nce(
    anchor: jax.Array,
    positive: jax.Array,
    negatives: jax.Array,
    *,
    temperature: float = 0.07,
) -> jax.Array:
  r"""Contrastive representation distillation (CRD), InfoNCE form (per-example).

  All embeddings are L2-normalised inside (``x / max(‖x‖₂, 1e-12)``); with
  ``a`` the student embedding, ``p`` the teacher embedding of the same input
  and ``n_1..n_N`` teacher embeddings of other inputs,

  ``loss = −log( exp(a·p/τ) / (exp(a·p/τ) + Σ_n exp(a·n_n/τ)) )``,

  computed stably with ``logsumexp``. This is the softmax (InfoNCE) estimate of
  the CRD objective; the paper's NCE variant with a fixed normaliser is not
  implemented. The projection heads (``g_S``, ``g_T``) and the memory bank of
  negatives are the caller's: the bank is plain state, e.g. an ``[M, D]`` array
  of teacher embeddings indexed by dataset position, sampled by index for the
  negatives and updated with momentum after each step.

  Args:
    anchor: ``[..., D]`` student embeddings.
    positive: ``[..., D]`` teacher embeddings of the same inputs.
    negatives: ``[..., N, D]`` teacher embeddings of other inputs. Its leading
      axes broadcast against ``anchor.shape[:-1]`` (so ``[N, D]`` shares one
      set of negatives across the batch).
    temperature: τ > 0 (the paper's 0.07).

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating inputs or
      ``temperature <= 0``.

  References:
    Tian, Krishnan & Isola, "Contrastive Representation Distillation",
    ICLR 2020, arXiv:1910.10699.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.losses import crd_nce
    >>> a = jnp.array([[1.0, 0.0]])
    >>> crd_nce(a, a, jnp.array([[[0.0, 1.0]]]), temperature=1.0)  # log(1 + e⁻¹)
    Array([0.31326...], dtype=float32)

    A memory bank as caller state (``M`` stored teacher embeddings):

    >>> M, N, D, momentum = 8, 4, 2, 0.5
    >>> bank = jax.random.normal(jax.random.key(0), (M, D))
    >>> ids = jnp.array([0, 1])                   # dataset indices of the batch
    >>> student, teacher = jnp.ones((2, D)), jnp.ones((2, D))
    >>> neg_ids = jax.random.randint(jax.random.key(1), (2, N), 0, M)
    >>> loss = crd_nce(student, teacher, bank[neg_ids])     # [B, N, D] negatives
    >>> loss.shape
    (2,)
    >>> new = momentum * bank[ids] + (1 - momentum) * teacher
    >>> bank = bank.at[ids].set(new / jnp.linalg.norm(new, axis=-1, keepdims=True))
  """
  _checks.check_min_rank(anchor, 1, 'anchor')
  _checks.check_same_shape(anchor, positive, 'anchor', 'positive')
  _checks.check_min_rank(negatives, 2, 'negatives')
  lead, dim = jnp.shape(anchor)[:-1], jnp.shape(anchor)[-1]
  neg_shape = jnp.shape(negatives)
  try:
    ok = neg_shape[-1] == dim and jnp.broadcast_shapes(neg_shape[:-2], lead) == lead
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(
        f'`negatives` must have shape [..., N, {dim}] with leading axes '
        f'broadcastable to {lead} (the shape of `anchor` without its last '
        f'axis), got {neg_shape}.')
  _checks.check_positive(temperature, 'temperature')
  a, p, n = _floats((anchor, 'anchor'), (positive, 'positive'), (negatives, 'negatives'))
  a, p, n = (_l2_normalize(x, axis=-1) for x in (a, p, n))
  pos = jnp.sum(a * p, axis=-1) / temperature                 # [...]
  neg = jnp.matmul(n, a[..., :, None])[..., 0] / temperature  # [..., N]
  logits = jnp.concatenate([pos[..., None], neg], axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - pos


def cc_loss(
    student_embeddings: jax.Array,
    teacher_embeddings: jax.Array,
    *,
    gamma: float = 0.4,
    order: int = 2,
) -> jax.Array:
  r"""Correlation congruence (CC) with a Taylor-expanded Gaussian RBF (batch-level).

  Rows are L2-normalised (``x / max(‖x‖₂, 1e-12)``). For unit vectors
  ``exp(−γ‖x − y‖²) = exp(−2γ) exp(2γ xᵀy)``, and the paper approximates it
  by the Taylor expansion of order ``P``:

  ``k(x, y) = exp(−2γ) Σ_{p=0..P} (2γ)^p / p! · (xᵀy)^p``.

  The correlation matrices ``C_ij = k(x_i, x_j)`` (``[B, B]``) are compared
  by ``‖C_T − C_S‖²_F / B²`` (the paper's ``1/n²`` normalisation). Student
  and teacher sizes may differ since only the ``[B, B]`` matrices are
  compared; in the paper both are projected to a common size first.

  Args:
    student_embeddings: ``[B, D_s]`` student embeddings.
    teacher_embeddings: ``[B, D_t]`` teacher embeddings (``D_t`` may differ).
    gamma: RBF parameter γ > 0 (paper: 0.4).
    order: Taylor order ``P >= 0`` (paper: 2).

  Returns:
    Scalar loss over the batch, in at least float32.

  Raises:
    ValueError: for inputs not of rank 2, different batch sizes, non-floating
      inputs, ``gamma <= 0`` or a negative or non-integer ``order``.

  References:
    Peng et al., "Correlation Congruence for Knowledge Distillation",
    ICCV 2019, arXiv:1904.01802.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import cc_loss
    >>> t = jnp.array([[1.0, 0.0], [0.0, 1.0]])        # orthogonal: C_01 = exp(−2γ)
    >>> s = jnp.array([[1.0], [1.0]])                  # parallel: C_01 ≈ exp(0)
    >>> cc_loss(s, t, gamma=0.5, order=1)  # 2·(e⁻¹(1 + 1) − e⁻¹)² / 4
    Array(0.0676..., dtype=float32)
  """
  _check_batch_pair(student_embeddings, teacher_embeddings, 'student_embeddings',
                    'teacher_embeddings', rank=2)
  _checks.check_positive(gamma, 'gamma')
  if isinstance(order, bool) or not isinstance(order, int) or order < 0:
    raise ValueError(f'`order` must be an int >= 0, got {order!r}.')
  s, t = _floats((student_embeddings, 'student_embeddings'),
                 (teacher_embeddings, 'teacher_embeddings'))
  b = s.shape[0]

  def correlation(x):
    x = _l2_normalize(x, axis=-1)
    g = x @ x.T
    term = jnp.ones_like(g)
    total = term
    for p in range(1, order + 1):
      term = term * (2.0 * gamma) * g / p
      total = total + term
    return jnp.exp(-2.0 * gamma) * total

  return jnp.sum(jnp.square(correlation(t) - correlation(s))) / b**2
