"""Transformer building blocks shared by every tokenizer.

Every parameter is created with *logical* axis names; how those names map onto
the device mesh is decided only by the config's `sharding_rules`. Logical names:

  embed   model width              heads   attention heads
  kv      per-head width           mlp     MLP hidden width
  length  token positions          patch   flattened pixel patch
  query   learnable query tokens   codebook / code   codebook rows / width
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

# Activations are constrained at block boundaries so that GSPMD keeps the batch
# sharded as the rules say instead of guessing.
ACTIVATION_AXES = ("batch", "length", "embed")


def param_init(init, names: Sequence[str | None]):
  """An initializer that also records the parameter's logical axis names."""
  return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


class LayerNorm(nn.Module):
  """LayerNorm whose scale and bias carry the `embed` logical axis."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.LayerNorm(
        epsilon=1e-6,
        scale_init=param_init(nn.initializers.ones, ("embed",)),
        bias_init=param_init(nn.initializers.zeros, ("embed",)),
    )(x)


class Attention(nn.Module):
  """Multi-head attention; self-attention when `context` is None.

  Projections are explicit [embed, heads, kv] kernels (Flax's DenseGeneral
  creates kernels flat and reshapes them, which drops 3-D logical names).
  """

  num_heads: int
  head_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    context = x if context is None else context
    width = x.shape[-1]
    kernel_init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    heads = (self.num_heads, self.head_dim)

    def project(name: str, inputs: jax.Array) -> jax.Array:
      kernel = self.param(f"{name}_kernel", param_init(kernel_init, ("embed", "heads", "kv")),
                          (width,) + heads)
      bias = self.param(f"{name}_bias", param_init(nn.initializers.zeros, ("heads", "kv")), heads)
      return jnp.einsum("bnd,dhk->bnhk", inputs, kernel) + bias

    q = project("query", x)
    k = project("key", context)
    v = project("value", context)
    out = jax.nn.dot_product_attention(q, k, v)  # [B, N, heads, head_dim]
    out_kernel = self.param(
        "out_kernel",
        param_init(nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2), ("heads", "kv", "embed")),
        heads + (width,))
    out_bias = self.param("out_bias", param_init(nn.initializers.zeros, ("embed",)), (width,))
    return jnp.einsum("bnhk,hkd->bnd", out, out_kernel) + out_bias


class Mlp(nn.Module):
  hidden_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    kernel = nn.initializers.xavier_uniform()
    h = nn.Dense(
        self.hidden_dim,
        kernel_init=param_init(kernel, ("embed", "mlp")),
        bias_init=param_init(nn.initializers.zeros, ("mlp",)),
        name="fc1",
    )(x)
    h = nn.gelu(h)
    return nn.Dense(
        width,
        kernel_init=param_init(kernel, ("mlp", "embed")),
        bias_init=param_init(nn.initializers.zeros, ("embed",)),
        name="fc2",
    )(h)


class Block(nn.Module):
  """Pre-LN transformer block: self-attention, optional cross-attention, MLP.

  With `cross_attention`, the tokens also attend to a `context` sequence (the
  context gets its own LayerNorm, as in the official CQAE code).
  """

  num_heads: int
  mlp_ratio: float = 4.0
  cross_attention: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    x = x + Attention(self.num_heads, head_dim, name="self_attn")(LayerNorm(name="ln_self")(x))
    if self.cross_attention:
      if context is None:
        raise ValueError("a cross-attention block needs a context")
      x = x + Attention(self.num_heads, head_dim, name="cross_attn")(
          LayerNorm(name="ln_cross")(x), LayerNorm(name="ln_context")(context))
    x = x + Mlp(int(width * self.mlp_ratio), name="mlp")(LayerNorm(name="ln_mlp")(x))
    return constrain(x)


def learned_embedding(module: nn.Module, name: str, shape: tuple[int, int],
                      names: tuple[str, str], stddev: float = 0.02) -> jax.Array:
  """A learned table such as position embeddings or query tokens."""
  return module.param(name, param_init(nn.initializers.normal(stddev), names), shape)


def sincos_2d(grid: int, width: int) -> jax.Array:
  """MAE's fixed 2-D sine-cosine table [grid*grid, width] (row-major patches)."""
  if width % 4:
    raise ValueError(f"2-D sin-cos position embeddings need width % 4 == 0, got {width}")
  omega = 1.0 / 10000 ** (jnp.arange(width // 4, dtype=jnp.float32) / (width // 4))
  ys, xs = jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32),
                        jnp.arange(grid, dtype=jnp.float32), indexing="ij")
  parts = []
  for coord in (ys.reshape(-1), xs.reshape(-1)):
    angles = coord[:, None] * omega[None, :]
    parts += [jnp.sin(angles), jnp.cos(angles)]
  return jnp.concatenate(parts, axis=1)


def patch_position_embedding(module: nn.Module, name: str, grid: int, width: int) -> jax.Array:
  """Learned patch position embeddings, initialised with MAE's 2-D sin-cos table.

  This gives every patch (and every decoder mask token) a distinct, spatially
  smooth identity from step 0 rather than a std-0.02 random one. Measured on the
  CPU config it did not shorten the early "mean image" plateau (README, Results).
  """
  init = lambda key, shape, dtype=jnp.float32: sincos_2d(grid, width).astype(dtype)
  return module.param(name, param_init(init, ("length", "embed")), (grid * grid, width))


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C] in row-major patch order."""
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"patch size {p} does not divide the image size {h}x{w}")
  x = images.reshape(b, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, height: int, width: int,
               channels: int = 3) -> jax.Array:
  """Inverse of `patchify`."""
  b = patches.shape[0]
  p = patch_size
  x = patches.reshape(b, height // p, width // p, p, p, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, channels)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))
