"""L2-normalised vector quantization with a straight-through estimator.

Latents and codebook rows are both projected onto the unit sphere (ViT-VQGAN /
TiTok style), so the nearest code in L2 is the one with the largest cosine.
This keeps a large codebook in use without k-means or restarts.

Losses (commitment, codebook, entropy) are returned *unweighted*: the train
step applies the configured (and possibly scheduled) weights. Note that the official
SweetTok code keeps the "legacy" taming weighting (1.0 on the encoder
commitment term, 0.25 on the codebook term); our defaults are the VQ-VAE
convention (commitment 0.25, codebook 1.0), set in the config.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.nn.layers import l2_normalize, param_init


def entropy_penalty(similarity: jax.Array, temperature: float, eps: float = 1e-8) -> jax.Array:
  """Mean per-token entropy minus the entropy of the batch-mean assignment.

  Low when each token is confident about its code *and* the batch spreads over
  many codes: the usual cure for codebook collapse (MAGVIT-v2 / SoftVQ). Every
  leading axis of `similarity` [..., K] counts as a token of the batch; `eps` guards
  the log of the batch mean (the official SoftVQ code uses 1e-6).
  """
  logits = similarity.reshape(-1, similarity.shape[-1]) / temperature
  probs = jax.nn.softmax(logits, axis=-1)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  sample_entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
  mean_probs = jnp.mean(probs, axis=0)
  batch_entropy = -jnp.sum(mean_probs * jnp.log(mean_probs + eps))
  return sample_entropy - batch_entropy


def symmetric_uniform(limit: float):
  """U(-limit, limit): taming/TiTok's codebook init with limit 1/K."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


class VectorQuantizer(nn.Module):
  codebook_size: int
  code_dim: int
  entropy_temperature: float = 0.01
  # "normal": N(0, 1) rows (ours); "uniform": U(-1/K, 1/K) as the official TiTok
  # quantizer. Only the init differs: rows are L2-normalised in every use.
  codebook_init: Literal["normal", "uniform"] = "normal"

  def setup(self):
    inits = {"normal": nn.initializers.normal(1.0),
             "uniform": symmetric_uniform(1.0 / self.codebook_size)}
    if self.codebook_init not in inits:
      raise ValueError(f"codebook_init {self.codebook_init!r}: use one of {sorted(inits)}")
    self.codebook = self.param(
        "codebook",
        param_init(inits[self.codebook_init], ("codebook", "code")),
        (self.codebook_size, self.code_dim),
    )

  def normalized_codebook(self) -> jax.Array:
    return l2_normalize(self.codebook)

  def __call__(self, latents: jax.Array, mix: float | jax.Array = 1.0, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Quantizes `latents`; `mix` < 1 passes `(1 - mix)` of the continuous latent
    through (a quantizer warm-up, `config.quantizer_warmup_steps`; off by default:
    on our CPU runs it did not shorten the early "mean image" plateau). `mix=1` is
    exact VQ with a straight-through gradient; indices and losses never depend on it.
    `train` is accepted for the shared quantizer interface; this quantizer has no dropout."""
    del train
    if latents.shape[-1] != self.code_dim:
      raise ValueError(f"latents have width {latents.shape[-1]}, the codebook {self.code_dim}")
    z = l2_normalize(latents.astype(jnp.float32))
    codebook = self.normalized_codebook()
    similarity = jnp.einsum("...d,kd->...k", z, codebook)
    indices = jnp.argmax(similarity, axis=-1)
    quantized = jnp.take(codebook, indices, axis=0)
    commitment = jnp.mean(jnp.square(z - jax.lax.stop_gradient(quantized)))
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - quantized))
    codes = z + mix * jax.lax.stop_gradient(quantized - z)
    return codes, {
        "indices": indices,
        "commitment_loss": commitment,
        "codebook_loss": codebook_loss,
        "entropy_loss": entropy_penalty(similarity, self.entropy_temperature),
    }

  def bits_per_token(self) -> float:
    return math.log2(self.codebook_size)

  def index_groups(self) -> dict[str, tuple[None, int]]:
    """One codebook, indices [..., ] without a trailing column axis."""
    return {"code": (None, self.codebook_size)}

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Indices [...] -> codes [..., code_dim] (what `__call__` emits in the forward pass)."""
    return jnp.take(self.normalized_codebook(), indices, axis=0)
