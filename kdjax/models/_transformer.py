"""A small pre-LN transformer encoder classifier for short sequences.

Signals become tokens: an MNIST-1D signal ``[B, 40]`` is cut into patches of
``patch`` steps (patch 4: 10 tokens of 4 values), a ``[B, L, F]`` input is
taken as ``L`` tokens of ``F`` features, and an image ``[B, H, W, C]`` (e.g.
the 8×8 digits) as ``H`` row tokens of ``W·C`` values. Each block sows its
attention probabilities and its output, so the transformer distillation terms
(:func:`kdjax.steps.attention_distribution`,
:func:`kdjax.steps.hidden_transfer`) can read them by name.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils


class SelfAttention(nn.Module):
  """Multi-head scaled dot-product self-attention that also returns its probabilities.

  Attributes:
    heads: number of heads; must divide the width of the input.
    dtype: computation dtype.

  Returns (from ``__call__``):
    ``(out [B, L, D], probs [B, heads, L, L])``; each row of ``probs`` (a
    query's distribution over the keys) sums to 1.
  """
  heads: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    width = x.shape[-1]
    if width % self.heads:
      raise ValueError(f'`heads` = {self.heads} must divide the width {width}.')
    head_dim = width // self.heads
    dense = lambda name: nn.DenseGeneral((self.heads, head_dim), dtype=self.dtype,  # noqa: E731
                                         name=name)
    q, k, v = dense('query')(x), dense('key')(x), dense('value')(x)  # [B, L, H, Dh]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim).astype(q.dtype)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name='out')(out)
    return out, probs


class EncoderBlock(nn.Module):
  """Pre-LN block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU MLP).

  Attributes:
    heads: attention heads.
    mlp_ratio: the MLP's hidden width over the model width.
    dtype: computation dtype.
  """
  heads: int
  mlp_ratio: int = 2
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    width = x.shape[-1]
    attn, probs = SelfAttention(self.heads, dtype=self.dtype, name='attention')(
        nn.LayerNorm(dtype=self.dtype, name='ln1')(x))
    x = x + attn
    h = nn.LayerNorm(dtype=self.dtype, name='ln2')(x)
    h = nn.gelu(nn.Dense(width * self.mlp_ratio, dtype=self.dtype, name='mlp1')(h))
    x = x + nn.Dense(width, dtype=self.dtype, name='mlp2')(h)
    return x, probs


def tokens_of(x: jax.Array, patch: int) -> jax.Array:
  """Tokens of ``x``: ``[B, N] -> [B, N / patch, patch]``, ``[B, H, W, C] -> [B, H, W·C]``.

  A ``[B, L, F]`` input is returned as it is.

  Raises:
    ValueError: for another rank, or ``N`` not a multiple of ``patch``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tokens_of(jnp.zeros((2, 40)), 4).shape, tokens_of(jnp.zeros((2, 8, 8, 1)), 4).shape
    ((2, 10, 4), (2, 8, 8))
  """
  _utils.check_input_rank(x, (2, 3, 4), 'Transformer')
  if x.ndim == 2:
    if x.shape[1] % patch:
      raise ValueError(f'Transformer: input length {x.shape[1]} of `x` is not a multiple of '
                       f'`patch` = {patch}.')
    return jnp.reshape(x, (x.shape[0], x.shape[1] // patch, patch))
  if x.ndim == 4:
    return jnp.reshape(x, (x.shape[0], x.shape[1], -1))
  return x


class Transformer(nn.Module):
  """Pre-LN transformer encoder classifier over patch or row tokens.

  Tokens (see :func:`tokens_of`) are embedded by a Dense layer, a learned
  position embedding is added, ``depth`` :class:`EncoderBlock` s follow, then
  a final LayerNorm, mean pooling over the tokens and a Dense classifier.

  Sown features (``[B, ...]``, into ``'intermediates'``, plain names):

  * ``'hidden0'``: the embedded tokens ``[B, L, width]``;
  * ``'attention{i}'``: block ``i``'s attention probabilities
    ``[B, heads, L, L]`` (``i = 1 .. depth``);
  * ``'hidden{i}'``: block ``i``'s output ``[B, L, width]``;
  * ``'embedding'``: the pooled ``[B, width]`` input of the classifier.

  Parameters: ``'embed'``, ``'pos_embed'``, ``'block1'`` .. ``'block{depth}'``,
  ``'ln_final'`` and ``'classifier'`` (the names progressive transfer freezes by).

  Attributes:
    width: model width ``D``.
    depth: number of blocks.
    heads: attention heads per block.
    mlp_ratio: MLP hidden width over ``width``.
    patch: steps per token for ``[B, N]`` inputs.
    num_classes: number of output logits.
    dtype: computation dtype.

  References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017; pre-LN: Xiong
    et al., "On Layer Normalization in the Transformer Architecture", ICML 2020.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax import models
    >>> model = models.Transformer(width=16, depth=2, heads=2, patch=4)
    >>> x = jnp.zeros((3, 40))
    >>> variables = models.init_variables(model, jax.random.key(0), x)
    >>> logits, state = model.apply(variables, x, mutable=['intermediates'])
    >>> feats = models.get_features(state['intermediates'])
    >>> logits.shape, feats['attention2'].shape, feats['hidden2'].shape
    ((3, 10), (3, 2, 10, 10), (3, 10, 16))
  """
  width: int = 128
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 2
  patch: int = 4
  num_classes: int = 10
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``[B, num_classes]`` logits."""
    del train  # No dropout.
    tokens = tokens_of(x, self.patch)
    h = nn.Dense(self.width, dtype=self.dtype, name='embed')(tokens)
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (h.shape[1], self.width))
    h = h + pos.astype(h.dtype)
    _utils.sow_feature(self, 'hidden0', h)
    for i in range(1, self.depth + 1):
      h, probs = EncoderBlock(self.heads, self.mlp_ratio, dtype=self.dtype,
                              name=f'block{i}')(h)
      _utils.sow_feature(self, f'attention{i}', probs)
      _utils.sow_feature(self, f'hidden{i}', h)
    h = nn.LayerNorm(dtype=self.dtype, name='ln_final')(h)
    pooled = jnp.mean(h, axis=1)
    _utils.sow_feature(self, 'embedding', pooled)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(pooled)


def transformer_teacher(num_classes: int = 10, **kwargs) -> Transformer:
  """The teacher: 4 blocks of width 128 with 4 heads (options override)."""
  return Transformer(**{'width': 128, 'depth': 4, 'heads': 4, 'num_classes': num_classes,
                        **kwargs})


def transformer_student(num_classes: int = 10, **kwargs) -> Transformer:
  """The thin student: the teacher's depth and heads at width 32 (MobileBERT keeps depth)."""
  return Transformer(**{'width': 32, 'depth': 4, 'heads': 4, 'num_classes': num_classes,
                        **kwargs})
