"""MaskGIT (arXiv:2202.04200) as TiTok trains it on its 1-D codes (arXiv:2406.07550 §4.1).

A bidirectional transformer predicts the codes hidden behind a mask token, conditioned on
a class. It follows the official `ImageBert` (bytedance/1d-tokenizer `modeling/maskgit.py`):

  ids     one table for every token: [0, K) codes, K the mask token, K+1+c class c,
          K+1+C the null class of classifier-free guidance (C classes)
  input   [class token, L codes] + learned position embeddings (L+1 of them)
  output  Dense(W -> K) on the L code positions (the class position is dropped)
  train   `mask_tokens` hides a scheduled number of codes; the label becomes the null
          class with probability `class_dropout`; `masked_cross_entropy` scores the
          masked positions (decoding is in sweet_jax.sampling.maskgit)

Deviations from `ImageBert` (an HF `BertModel`):
- Blocks are our pre-LN `layers.Block` (exact-erf GELU as BERT's), with a final LayerNorm
  before the head; BERT is post-LN, with LayerNorm eps 1e-12 (ours 1e-6) and N(0, 0.02)
  block weights (ours xavier). The embedding LayerNorm of BERT is kept.
- `dropout` applies to the summed embeddings only (BERT's embedding dropout):
  `layers.Block` has no residual or attention-probability dropout, which BERT also
  applies (TiTok's config: 0.1 and 0.1).
- No token-type embedding (BERT's is a single learned vector added everywhere, which the
  position embeddings absorb).
Outside the blocks the init is BERT's: N(0, 0.02) tables and head, zero bias.

Training-side pure functions here: `mask_schedule` (MaskGIT's "cosine" and TiTok's
"arccos"), `mask_tokens`, `masked_cross_entropy`.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from sweet_jax.nn.layers import ComputeOptions, LayerNorm, block, learned_embedding, param_init


def _xp(x):
  """numpy for host values (the sampler's static per-step tables, in float64 as the
  official code), jax.numpy for arrays that may be traced."""
  return np if isinstance(x, (int, float, np.ndarray, np.number)) else jnp


def cosine_schedule(ratio):
  """MaskGIT's mask schedule gamma(r) = cos(pi/2 r) (arXiv:2202.04200 §3.2-3.3): the
  fraction of tokens still masked at progress r in [0, 1]; 1 at r=0, 0 at r=1."""
  xp = _xp(ratio)
  return xp.cos(0.5 * math.pi * xp.asarray(ratio))


def arccos_schedule(ratio):
  """TiTok's schedule arccos(r) / (pi/2), used both in `masking_input_tokens` and in
  `generate` (official `mask_ratio = torch.acos(timesteps) / (math.pi * 0.5)`; the
  inverse function of the cosine one): also 1 at r=0, 0 at r=1, decreasing."""
  xp = _xp(ratio)
  return xp.arccos(xp.asarray(ratio)) / (0.5 * math.pi)


MASK_SCHEDULES: dict[str, Callable] = {"cosine": cosine_schedule, "arccos": arccos_schedule}


def mask_schedule(name: str) -> Callable:
  if name not in MASK_SCHEDULES:
    raise ValueError(f"mask schedule {name!r}: use one of {sorted(MASK_SCHEDULES)}")
  return MASK_SCHEDULES[name]


def mask_tokens(tokens: jax.Array, rng: jax.Array, mask_id: int, *, schedule: str = "arccos",
                timesteps: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Hides a scheduled number of codes per example: TiTok's `masking_input_tokens`.

  t ~ U(0, 1) per example (or `timesteps` [B]), ratio = clip(schedule(t), 1e-6, 1),
  count = max(1, round(L * ratio)) (torch's round: half to even, as jnp.round), and that
  many positions chosen uniformly at random. The default is TiTok's "arccos" schedule;
  "cosine" is MaskGIT's (whose paper draws the count as ceil(gamma(r) L), §3.2: the two
  roundings differ by at most one token). Returns (tokens with mask_id at the masked
  positions, the bool mask [B, L]).
  """
  batch, length = tokens.shape
  time_key, perm_key = jax.random.split(rng)
  if timesteps is None:
    timesteps = jax.random.uniform(time_key, (batch,))
  ratio = jnp.clip(mask_schedule(schedule)(timesteps), 1e-6, 1.0)
  count = jnp.maximum(jnp.round(length * ratio), 1.0)
  # A uniformly random permutation per row: positions whose entry is < count are masked.
  perm = jnp.argsort(jax.random.uniform(perm_key, (batch, length)), axis=-1)
  mask = perm < count[:, None]
  return jnp.where(mask, mask_id, tokens).astype(tokens.dtype), mask


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array,
                           label_smoothing: float = 0.0) -> jax.Array:
  """Per-position cross-entropy [...] of logits [..., K] (computed in float32) against
  integer targets [...] with labels smoothed as optax.smooth_labels does, (1 - s) one_hot
  + s / K: optax.softmax_cross_entropy(logits, smooth_labels(one_hot(targets), s)) without
  building the one-hot (and the smoothed labels) of the logits' shape. As the labels sum
  to 1, -sum(labels * log_softmax(z)) = logsumexp(z) - (1 - s) z[target] - s mean(z)."""
  logits = logits.astype(jnp.float32)
  target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32),
                                      axis=-1)[..., 0]
  loss = jax.nn.logsumexp(logits, axis=-1) - (1.0 - label_smoothing) * target_logits
  if label_smoothing:
    loss = loss - label_smoothing * jnp.mean(logits, axis=-1)
  return loss


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                         label_smoothing: float = 0.0, unmasked_weight: float = 0.0) -> jax.Array:
  """Cross-entropy [B, L, K] vs [B, L] averaged over the masked positions: TiTok's
  `MLMLoss` (torch's CrossEntropyLoss label smoothing = optax.smooth_labels). Unmasked
  positions get weight `unmasked_weight` (TiTok's config uses 0.1; 0 scores the masked
  tokens only, MaskGIT §3.2)."""
  loss = smoothed_cross_entropy(logits, targets, label_smoothing)
  weights = jnp.where(mask, 1.0, unmasked_weight)
  loss = jnp.where(weights > 0, loss * weights, 0.0)  # a zero weight ignores even inf
  return jnp.sum(loss) / (jnp.sum(weights) + 1e-8)


class MaskGITTransformer(nn.Module):
  """The class-conditional masked-token transformer (TiTok's `ImageBert`).

  Defaults are TiTok's generator (configs/training/generator/maskgit.yaml: 768 wide, 24
  deep, 16 heads, 4x MLP, dropout 0.1, label dropout 0.1) for TiTok-B-64 codes.
  Labels are in [0, num_classes]; `num_classes` itself (`null_class`) is the
  unconditional label that classifier-free guidance pairs every label with.
  """

  codebook_size: int = 4096
  seq_len: int = 64
  num_classes: int = 1000
  width: int = 768
  depth: int = 24
  num_heads: int = 16
  mlp_ratio: float = 4.0
  dropout: float = 0.1
  class_dropout: float = 0.1
  # How the transformer blocks compute (layers.ComputeOptions).
  compute_dtype: str = "float32"
  remat: str = "none"

  @property
  def mask_id(self) -> int:
    return self.codebook_size

  @property
  def null_class(self) -> int:
    return self.num_classes

  @property
  def vocab_size(self) -> int:
    """Codes, the mask token, the classes and the null class in one table."""
    return self.codebook_size + self.num_classes + 2

  def condition_ids(self, labels: jax.Array | None, batch: int, train: bool) -> jax.Array:
    """Labels [B] -> class token ids [B]; None means unconditional (the null class).

    In training each label becomes the null class with probability `class_dropout`
    (official `torch.rand_like(condition) < cond_drop_prob`), drawn from rng "dropout".
    """
    if labels is None:
      labels = jnp.full((batch,), self.null_class, jnp.int32)
    labels = labels.astype(jnp.int32)
    if train and self.class_dropout > 0:
      drop = jax.random.uniform(self.make_rng("dropout"), labels.shape) < self.class_dropout
      labels = jnp.where(drop, self.null_class, labels)
    return labels + self.codebook_size + 1

  @nn.compact
  def __call__(self, tokens: jax.Array, labels: jax.Array | None, train: bool = False) -> jax.Array:
    """Codes [B, L] int (mask_id where hidden), labels [B] -> logits [B, L, K] float32."""
    batch, length = tokens.shape
    if length != self.seq_len:
      raise ValueError(f"expected tokens [B, {self.seq_len}], got {tuple(tokens.shape)}")
    compute = ComputeOptions(self.compute_dtype, self.remat)
    ids = jnp.concatenate([self.condition_ids(labels, batch, train)[:, None],
                           tokens.astype(jnp.int32)], axis=1)
    table = learned_embedding(self, "token_embed", (self.vocab_size, self.width),
                              ("vocab", "embed"))
    x = jnp.take(table, ids, axis=0)
    x = x + learned_embedding(self, "pos_embed", (self.seq_len + 1, self.width),
                              ("length", "embed"))
    x = LayerNorm(name="ln_embed")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.depth):
      x = block(compute, self.num_heads, self.mlp_ratio, approximate_gelu=False,
                name=f"block_{i}")(x)
    x = LayerNorm(name="ln_out")(x[:, 1:])  # drop the class position, as the official head
    return nn.Dense(self.codebook_size,
                    kernel_init=param_init(nn.initializers.normal(0.02), ("embed", "vocab")),
                    bias_init=param_init(nn.initializers.zeros, ("vocab",)),
                    name="head")(x.astype(jnp.float32))
