"""SweetTokenizer's MLC quantizer: visual tokens quantized against word embeddings.

The codebook rows are frozen word vectors (one `WordGroup` of the language codebook:
adjectives then nouns for spatial tokens, adverbs then verbs for temporal ones) passed
through a trainable 2-layer graph convolution over the word graph, as the official
`MLC_quantizer_noun/verb` (SweetTok, arXiv:2412.10443; official modeling/quantizer/quantizer.py):

    C = GCN2(relu(GCN1(words)), dropout in training),   GCN(h) = Â h W + b

with message passing over the edge list (never a dense V x V matrix). Because the
word vectors X are frozen, the first layer's Â X W is computed as (Â X) W with Â X
propagated once, outside the step (Â(XW) = (ÂX)W); the second layer propagates by
segment sums at the narrow code width. Same function as the official order, without
the widest gather/scatter (at the hidden width) in every step.

Each latent is L2-normalised over its full width and split in two halves: the first
half becomes the mean of its 2 nearest first-POS codes (adjectives / adverbs), the
second its nearest second-POS code (nouns / verbs), by squared L2 distance as the
official code. Every token therefore carries 3 indices, laid out `[..., 3]` as
(nearest first-POS, 2nd-nearest first-POS, nearest second-POS), each counted from the
start of its own POS block; `lookup` inverts that layout exactly. (The official
`get_codebook_entry` reshapes its token-major pairs k-major and averages the wrong
pairs; ours round-trips.)

Losses are returned unweighted; the train step applies config weights. We use the
VQ-VAE convention (commitment 0.25 on the encoder side, codebook 1.0): the official code
keeps taming's "legacy" swap (1.0 on the encoder term, 0.25 on the codebook term).

`codebook="learned"` replaces GCN(words) by a free table of the same shape: the
ablation that asks whether the words matter.
"""

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from flax import linen as nn

from sweet_jax.codebook.artifact import WordGroup
from sweet_jax.nn.layers import l2_normalize, param_init
from sweet_jax.quantizers.vq import entropy_penalty


class GraphConv(nn.Module):
  """One GCNConv as torch_geometric computes it: Â (h W) + b, Â given as weighted edges
  (`senders`, `receivers` sorted by receiver, `edge_weights`)."""

  features: int

  def setup(self):
    self.linear = nn.Dense(self.features, use_bias=False, name="Dense_0",
                           kernel_init=param_init(nn.initializers.glorot_uniform(), (None, "code")))
    self.bias = self.param("bias", param_init(nn.initializers.zeros, ("code",)), (self.features,))

  def __call__(self, h: jax.Array, senders: np.ndarray, receivers: np.ndarray,
               edge_weights: np.ndarray) -> jax.Array:
    h = self.linear(h)
    messages = h[senders] * edge_weights[:, None]
    h = jax.ops.segment_sum(messages, receivers, num_segments=h.shape[0],
                            indices_are_sorted=True)
    return h + self.bias

  def transform(self, propagated: jax.Array) -> jax.Array:
    """The same layer given Â h already: (Â h) W + b."""
    return self.linear(propagated) + self.bias


@functools.lru_cache(maxsize=4)
def propagated_vectors(group: WordGroup) -> np.ndarray:
  """Â X for a group's frozen word vectors (cached per group; float64 sum, float32 out)."""
  adjacency = scipy.sparse.csr_matrix(
      (group.edge_weights.astype(np.float64), (group.receivers, group.senders)),
      shape=(group.size, group.size))
  return np.asarray(adjacency @ group.vectors.astype(np.float64), np.float32)


class WordProjection(nn.Module):
  """GCN(words) -> relu -> dropout -> GCN: the trainable map from word vectors to codes.

  Parameters are laid out as two `GraphConv`s (`gcn_0`, `gcn_1`); the first layer's
  propagation of the frozen vectors is precomputed (see the module docstring).
  """

  hidden: int
  features: int
  dropout: float

  @nn.compact
  def __call__(self, group: WordGroup, train: bool) -> jax.Array:
    h = GraphConv(self.hidden, name="gcn_0").transform(jnp.asarray(propagated_vectors(group)))
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(h))
    return GraphConv(self.features, name="gcn_1")(
        h, group.senders, group.receivers, group.edge_weights)


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """||z||^2 + ||c||^2 - 2 z.c for every latent and code: [..., d] x [K, d] -> [..., K]."""
  return (jnp.sum(jnp.square(z), axis=-1, keepdims=True) + jnp.sum(jnp.square(codebook), -1)
          - 2.0 * jnp.einsum("...d,kd->...k", z, codebook))


def top2_mean_and_nearest(z_first: jax.Array, z_second: jax.Array, first: jax.Array,
                          second: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(q_first, q_second, indices [..., 3], (distances_first, distances_second))."""
  d_first = squared_distances(z_first, first)
  d_second = squared_distances(z_second, second)
  # top_k on 2-D inputs without gradient: XLA:CPU then uses its TopK kernel. At ~10k words
  # the quantizer's forward+backward took 0.2 s this way, 1.0 s with a 3-D top_k (compiled
  # to a full sort) and 0.28 s with argmin (a variadic reduce).
  def nearest(distances: jax.Array, k: int) -> jax.Array:
    flat = jax.lax.stop_gradient(distances).reshape(-1, distances.shape[-1])
    return jax.lax.top_k(-flat, k)[1].reshape(distances.shape[:-1] + (k,))

  top2, top1 = nearest(d_first, 2), nearest(d_second, 1)
  indices = jnp.concatenate([top2, top1], axis=-1).astype(jnp.int32)
  return *codes_from_indices(indices, first, second), indices, (d_first, d_second)


def codes_from_indices(indices: jax.Array, first: jax.Array, second: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """The one place codes are formed from indices, so forward and lookup agree bit for bit."""
  q_first = 0.5 * (jnp.take(first, indices[..., 0], axis=0)
                   + jnp.take(first, indices[..., 1], axis=0))
  q_second = jnp.take(second, indices[..., 2], axis=0)
  return q_first, q_second


def straight_through(z: jax.Array, q: jax.Array, mix: float | jax.Array) -> jax.Array:
  """Forward value exactly `q` at mix=1 (z - sg(z) is exactly 0); gradient to z is identity.

  `mix` < 1 passes `(1 - mix)` of the continuous latent (the quantizer warm-up).
  """
  sg = jax.lax.stop_gradient
  return sg(q) + (z - sg(z)) + (1.0 - mix) * sg(z - q)


class LanguageQuantizer(nn.Module):
  """MLC quantizer over one `WordGroup` (see the module docstring)."""

  group: WordGroup
  code_dim: int  # the full latent width; each half is code_dim // 2
  hidden: int = 256
  dropout: float = 0.5
  codebook: Literal["language", "learned"] = "language"
  normalize_codes: bool = False
  entropy_temperature: float = 0.01

  def setup(self):
    if self.code_dim % 2:
      raise ValueError(f"the MLC quantizer splits latents in two halves; code_dim "
                       f"{self.code_dim} is odd")
    if self.codebook not in ("language", "learned"):
      raise ValueError(f"codebook must be 'language' or 'learned', got {self.codebook!r}")
    if self.group.num_first < 2:
      raise ValueError(f"codebook group {self.group.name!r} needs at least 2 "
                       f"{self.group.pos_names[0]} words for top-2 averaging")
    half = self.code_dim // 2
    if self.codebook == "language":
      self.projection = WordProjection(self.hidden, half, self.dropout)
    else:
      self.table = self.param(
          "codebook", param_init(nn.initializers.normal(1.0 / math.sqrt(half)),
                                 ("codebook", "code")), (self.group.size, half))

  def codebooks(self, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """(first-POS codes [n1, d/2], second-POS codes [n2, d/2])."""
    if self.codebook == "language":
      rows = self.projection(self.group, train)
    else:
      rows = self.table
    if self.normalize_codes:
      rows = l2_normalize(rows)
    n = self.group.num_first
    return rows[:n], rows[n:]

  def __call__(self, latents: jax.Array, mix: float | jax.Array = 1.0, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    if latents.shape[-1] != self.code_dim:
      raise ValueError(f"latents have width {latents.shape[-1]}, the quantizer {self.code_dim}")
    half = self.code_dim // 2
    z = l2_normalize(latents.astype(jnp.float32))
    z_first, z_second = z[..., :half], z[..., half:]
    first, second = self.codebooks(train)
    q_first, q_second, indices, (d_first, d_second) = top2_mean_and_nearest(
        z_first, z_second, first, second)
    q = jnp.concatenate([q_first, q_second], axis=-1)
    sg = jax.lax.stop_gradient
    # Per-half means, summed over the halves as the official code does.
    commitment = sum(jnp.mean(jnp.square(a - sg(b))) for a, b in
                     ((z_first, q_first), (z_second, q_second)))
    codebook_loss = sum(jnp.mean(jnp.square(sg(a) - b)) for a, b in
                        ((z_first, q_first), (z_second, q_second)))
    entropy = 0.5 * (entropy_penalty(-d_first, self.entropy_temperature)
                     + entropy_penalty(-d_second, self.entropy_temperature))
    return straight_through(z, q, mix), {
        "indices": indices,
        "commitment_loss": commitment,
        "codebook_loss": codebook_loss,
        "entropy_loss": entropy,
    }

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Indices [..., 3] -> codes [..., code_dim], exactly what `__call__` emits (eval mode)."""
    if indices.shape[-1] != 3:
      raise ValueError(f"MLC indices end in 3 per token, got shape {tuple(indices.shape)}")
    first, second = self.codebooks(train=False)
    return jnp.concatenate(codes_from_indices(indices, first, second), axis=-1)

  def index_groups(self) -> dict[str, tuple[tuple[int, ...], int]]:
    """POS name -> (index columns, codebook size) for usage statistics."""
    first, second = self.group.pos_names
    return {first: ((0, 1), self.group.num_first), second: ((2,), self.group.num_second)}

  def bits_per_token(self) -> float:
    """log2 of the number of distinct codes: an unordered pair of first-POS words
    times one second-POS word."""
    n1, n2 = self.group.num_first, self.group.num_second
    return math.log2(n1 * (n1 - 1) / 2) + math.log2(n2)

  def words(self, indices: np.ndarray) -> list[list[tuple[str, str, str]]]:
    """Indices [B, Q, 3] -> per image, per token (word, word, word)."""
    indices = np.asarray(indices)
    first_words = self.group.words[:self.group.num_first]
    second_words = self.group.words[self.group.num_first:]
    return [[(str(first_words[a]), str(first_words[b]), str(second_words[c]))
             for a, b, c in image] for image in indices]
