"""SoftVQ-VAE's soft vector quantizer (arXiv:2412.10958), as the official code
(modelling/quantizers/softvq.py) computes it.

Each latent token becomes a convex combination of codewords, weighted by a softmax
over cosine similarities, so the bottleneck is fully differentiable: no nearest-code
lookup, no straight-through estimator, no codebook or commitment loss.

Where the official code (`modelling/quantizers/softvq.py` of
Hhhhhhao/continuous_tokenizer) differs from the paper, we follow the code:
- logits are cosines of L2-normalised latents and codewords (the paper writes
  -||z - c|| / tau), and the codebook is *detached* in the logits: it learns only
  through z_q = p @ C, never through the assignment probabilities;
- the entropy (KL) term uses its own temperature (0.01, not tau) and its batch mean
  runs over every token of every group flattened together
  (`compute_entropy_loss(logits.view(-1, self.n_e))`), so code k of group 0 and code k
  of group 1 share one bin of the batch-mean distribution;
- "multiple codebooks" split the token *sequence* into contiguous groups, one codebook
  per group (`z.view(batch, num_codebooks, segment_length, e_dim)`), not channels.

The official quantizer multiplies the entropy term by `entropy_loss_ratio` (0.01 in
the released config); here it is returned unweighted and the train step applies the
configured weight, as for every sweet_jax quantizer.
"""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.nn.layers import l2_normalize, param_init
from sweet_jax.quantizers.vq import entropy_penalty, symmetric_uniform


def normalized_uniform(limit: float):
  """U(-limit, limit) rows, L2-normalised: the official init with `l2_norm=True`
  (uniform(-1/K, 1/K), then `F.normalize`). Starting on the unit sphere matters for
  the optimizer: raw rows of norm ~1/K would make every step a huge relative change."""
  uniform = symmetric_uniform(limit)

  def init(key, shape, dtype=jnp.float32):
    return l2_normalize(uniform(key, shape, dtype))
  return init


class SoftVectorQuantizer(nn.Module):
  """Latents [B, L, D] -> (soft codes [B, L, D], aux), with G = `num_codebooks`
  codebooks of K = `codebook_size` rows: token group g (tokens g*L/G .. (g+1)*L/G - 1)
  uses codebook g."""

  codebook_size: int
  code_dim: int
  num_codebooks: int = 1
  temperature: float = 0.07  # tau of the assignment softmax
  entropy_temperature: float = 0.01  # temperature of the entropy term's softmax

  def setup(self):
    self.codebook = self.param(
        "codebook",
        param_init(normalized_uniform(1.0 / self.codebook_size), (None, "codebook", "code")),
        (self.num_codebooks, self.codebook_size, self.code_dim),
    )

  def normalized_codebook(self) -> jax.Array:
    return l2_normalize(self.codebook)

  def _group_length(self, num_tokens: int) -> int:
    if num_tokens % self.num_codebooks:
      raise ValueError(f"{num_tokens} tokens cannot be split into {self.num_codebooks} "
                       f"equal codebook groups (num_codebooks must divide the token count)")
    return num_tokens // self.num_codebooks

  def __call__(self, latents: jax.Array, mix: float | jax.Array = 1.0, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`mix` < 1 returns `mix * z_q + (1 - mix) * z` (z the normalised latent), the
    analogue of the VQ's quantizer warm-up (the official code has none; `mix=1`, the
    default, is exactly the official z_q). `train` is accepted for the shared
    interface; nothing here depends on it (the official code skips the entropy term
    in eval mode; we always compute it)."""
    del train
    if latents.ndim != 3 or latents.shape[-1] != self.code_dim:
      raise ValueError(f"expected latents [B, L, {self.code_dim}], got {tuple(latents.shape)}")
    batch, length, _ = latents.shape
    group_length = self._group_length(length)
    z = l2_normalize(latents.astype(jnp.float32))
    z = z.reshape(batch, self.num_codebooks, group_length, self.code_dim)
    codebook = self.normalized_codebook()
    logits = jnp.einsum("bgsd,gkd->bgsk", z, jax.lax.stop_gradient(codebook))
    probs = jax.nn.softmax(logits / self.temperature, axis=-1)
    z_q = jnp.einsum("bgsk,gkd->bgsd", probs, codebook)
    codes = z_q + (1.0 - mix) * (z - z_q)
    return codes.reshape(latents.shape), {
        # argmax of p; softmax is monotone, so the logits give the same code without
        # ties from probabilities that round to equal values.
        "indices": jnp.argmax(logits, axis=-1).reshape(batch, length).astype(jnp.int32),
        "commitment_loss": jnp.zeros((), jnp.float32),  # none in the official config
        "codebook_loss": jnp.zeros((), jnp.float32),
        "entropy_loss": entropy_penalty(logits, self.entropy_temperature, eps=1e-6),
        # Logged by the official code: how peaked the assignment is, and how close the
        # soft code stays to the (normalised) latent.
        "max_probability": jnp.mean(jnp.max(probs, axis=-1)),
        "code_cosine": jnp.mean(jnp.sum(z * l2_normalize(z_q), axis=-1)),
    }

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Indices [B, L] -> the hard codeword of each token in its group's codebook
    (unit norm) [B, L, D]. Soft codes are not recoverable from indices: decoding these
    is an approximation of the soft code (a one-hot p)."""
    if indices.ndim != 2:
      raise ValueError(f"expected indices [B, L], got shape {tuple(indices.shape)}")
    group_length = self._group_length(indices.shape[1])
    groups = jnp.arange(indices.shape[1]) // group_length
    return self.normalized_codebook()[groups[None, :], indices]

  def bits_per_token(self) -> float:
    return math.log2(self.codebook_size)

  def index_groups(self, num_tokens: int | None = None
                   ) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """Codebook name -> (token columns of the [B, L] indices, K), one entry per group
    codebook so usage is counted per codebook. With one codebook the columns are
    None and `num_tokens` is not needed."""
    if self.num_codebooks == 1:
      return {"code": (None, self.codebook_size)}
    if num_tokens is None:
      raise ValueError("index_groups needs num_tokens when there are several codebooks")
    size = self._group_length(num_tokens)
    return {f"group{g}": (tuple(range(g * size, (g + 1) * size)), self.codebook_size)
            for g in range(self.num_codebooks)}
