"""Representation alignment of tokenizer latents with a frozen teacher (SoftVQ-VAE,
arXiv:2412.10958).

The official code (`VQModel.encode` in `modelling/tokenizer.py` of
Hhhhhhao/continuous_tokenizer) projects the *quantized* latent z_q (before
`post_quant_conv`) with a 3-layer SiLU MLP to the teacher's width and pulls it towards
the teacher's patch features (DINOv2, `forward_features(x)[:, num_prefix_tokens:]`)
with a negative cosine, weighted by `repa_loss_weight` (0.1). It only does so in
training mode. How latent tokens meet teacher patches is the `mode`:

  repeat  the projected token i is repeated N/L times consecutively, so it pairs with
          raster patches i*N/L .. (i+1)*N/L - 1 (`z_hat.unsqueeze(2).expand(...)`);
          the released config's mode, "the best generation results" (maintainer).
  global  teacher and latent both mean-pooled over tokens; the official code pools
          z_q *before* the projector (`self.projection(quant.mean(dim=1))`), so feed
          the projector `projector_input(z_q, "global")`.
  avg_1d  the teacher's N patch features are average-pooled to L tokens
          (`F.adaptive_avg_pool1d`, bins over raster order) and each projected latent
          token pairs with its bin: the reverse of `repeat`.

(The official `avg_1d_shuffle` pools randomly permuted patches; not implemented.)
`alignment_loss` is unweighted: the train step applies the configured weight.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sweet_jax.models.projector import check_alignment_mode
from sweet_jax.nn.layers import l2_normalize


def adaptive_avg_pool_matrix(length_in: int, length_out: int) -> np.ndarray:
  """[length_out, length_in] averaging weights of torch's `adaptive_avg_pool1d`:
  bin i averages inputs floor(i*n/m) .. ceil((i+1)*n/m) - 1."""
  weights = np.zeros((length_out, length_in), np.float32)
  for i in range(length_out):
    start = (i * length_in) // length_out
    end = -((-(i + 1) * length_in) // length_out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def alignment_loss(projected: jax.Array, teacher: jax.Array, mode: str) -> jax.Array:
  """Mean over batch and tokens of -cos(teacher, projected latent), paired as `mode` says.

  projected [B, L, C]: the projector's output (for "global", of `projector_input`);
  teacher [B, N, C]: the teacher's patch features in raster order.
  """
  check_alignment_mode(mode)
  if projected.ndim != 3 or teacher.ndim != 3:
    raise ValueError(f"expected projected [B, L, C] and teacher [B, N, C], got "
                     f"{tuple(projected.shape)} and {tuple(teacher.shape)}")
  if projected.shape[0] != teacher.shape[0] or projected.shape[2] != teacher.shape[2]:
    raise ValueError(f"projected {tuple(projected.shape)} and teacher {tuple(teacher.shape)} "
                     f"differ in batch or width (the projector's out_dim must be the teacher's)")
  num_latents, num_patches = projected.shape[1], teacher.shape[1]
  if mode == "repeat":
    if num_patches % num_latents:
      raise ValueError(f"'repeat' alignment needs the latent count ({num_latents}) to divide "
                       f"the teacher's patch count ({num_patches})")
    projected = jnp.repeat(projected, num_patches // num_latents, axis=1)
  elif mode == "global":
    projected = jnp.mean(projected, axis=1, keepdims=True)
    teacher = jnp.mean(teacher, axis=1, keepdims=True)
  else:  # avg_1d
    pool = jnp.asarray(adaptive_avg_pool_matrix(num_patches, num_latents))
    teacher = jnp.einsum("ln,bnc->blc", pool, teacher.astype(jnp.float32))
  cosine = jnp.sum(l2_normalize(teacher.astype(jnp.float32))
                   * l2_normalize(projected.astype(jnp.float32)), axis=-1)
  return -jnp.mean(cosine)
