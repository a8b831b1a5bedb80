"""Transformer building blocks shared by every tokenizer.

Every parameter is created with *logical* axis names; how those names map onto
the device mesh is decided only by the config's `sharding_rules`. Logical names:

  embed   model width              heads   attention heads
  kv      per-head width           mlp     MLP hidden width
  length  token positions          patch   flattened pixel patch
  query   learnable query tokens   codebook / code   codebook rows / width
"""

import dataclasses
import math
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


# What a rematerialised block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES = {
    "full": None,  # nothing: the whole block is recomputed (least memory)
    "dots": jax.checkpoint_policies.checkpoint_dots,  # every matmul output
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # weight matmuls
}


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
  """How transformer blocks compute; parameters always stay float32.

  dtype  "bfloat16": projections, attention and MLP matmuls in bfloat16 (float32
         accumulation where the backend does it); LayerNorms, the residual stream,
         the quantizer and the losses stay float32.
  remat  "none", or a key of REMAT_POLICIES: each block is rematerialised, trading
         recomputation in the backward pass for activation memory.
  """

  dtype: str = "float32"
  remat: str = "none"

  def __post_init__(self):
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"compute dtype {self.dtype!r}: use 'float32' or 'bfloat16'")
    if self.remat != "none" and self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat {self.remat!r}: use 'none' or one of {sorted(REMAT_POLICIES)}")

  @property
  def jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm whose scale and bias carry the `embed` logical axis."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.LayerNorm(
        epsilon=1e-6,
        scale_init=param_init(nn.initializers.ones, ("embed",)),
        bias_init=param_init(nn.initializers.zeros, ("embed",)),
    )(x)


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
  """Switches for the official SweetTok/OmniTokenizer attention (all off: plain softmax
  attention, what the image CQAE was tuned with).

  cosine       q and k L2-normalised per head, times learned per-dim scales (init 1),
               softmax scale fixed at 8.
  rope         2-D rotary position embedding in self-attention over a square token
               grid (x/y frequencies interleaved, theta 1e4); other sequences are left as
               they are.
  cross_null_kv  learned "null" key/value pairs appended to every cross-attention
               context (the official decoder uses 2), so a token may attend to nothing.
  """

  cosine: bool = False
  rope: bool = False
  cross_null_kv: int = 0


def rope_2d_angles(grid: int, head_dim: int, theta: float = 1e4) -> jax.Array:
  """Rotation angles [grid*grid, head_dim/2] for row-major grid tokens: pair j rotates
  with the y coordinate when j is even and with x when j is odd."""
  if head_dim % 4:
    raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
  num_freqs = head_dim // 4
  freqs = theta ** (-jnp.arange(num_freqs, dtype=jnp.float32) / num_freqs)
  ys, xs = jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32),
                        jnp.arange(grid, dtype=jnp.float32), indexing="ij")
  angles_y = ys.reshape(-1, 1) * freqs
  angles_x = xs.reshape(-1, 1) * freqs
  return jnp.stack([angles_y, angles_x], axis=-1).reshape(grid * grid, head_dim // 2)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates consecutive channel pairs of x [B, N, heads, k] by angles [N, k/2]."""
  pairs = x.reshape(x.shape[:-1] + (-1, 2))
  cos, sin = jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]
  first, second = pairs[..., 0], pairs[..., 1]
  rotated = jnp.stack([first * cos - second * sin, first * sin + second * cos], axis=-1)
  return rotated.reshape(x.shape).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head attention; self-attention when `context` is None.

  Projections are explicit [embed, heads, kv] kernels (Flax's DenseGeneral
  creates kernels flat and reshapes them, which drops 3-D logical names).
  """

  num_heads: int
  head_dim: int
  options: AttentionOptions = AttentionOptions()
  causal: bool = False  # self-attention only: token t sees tokens <= t
  dtype: jnp.dtype = jnp.float32  # compute dtype (ComputeOptions); the output is x's dtype

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               logit_bias: jax.Array | None = None) -> jax.Array:
    """`logit_bias` [heads, N, S] is added to the attention logits (a position prior)."""
    is_self = context is None
    out_dtype = x.dtype
    x = x.astype(self.dtype)
    context = x if is_self else context.astype(self.dtype)
    width = x.shape[-1]
    kernel_init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    heads = (self.num_heads, self.head_dim)

    def project(name: str, inputs: jax.Array) -> jax.Array:
      kernel = self.param(f"{name}_kernel", param_init(kernel_init, ("embed", "heads", "kv")),
                          (width,) + heads)
      bias = self.param(f"{name}_bias", param_init(nn.initializers.zeros, ("heads", "kv")), heads)
      kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
      return jnp.einsum("bnd,dhk->bnhk", inputs, kernel) + bias

    q = project("query", x)
    k = project("key", context)
    v = project("value", context)
    if not is_self and self.options.cross_null_kv:
      null = self.param("null_kv", param_init(nn.initializers.normal(1.0), (None, None, "heads", "kv")),
                        (2, self.options.cross_null_kv) + heads)
      null_k, null_v = (jnp.broadcast_to(n, (x.shape[0],) + n.shape).astype(k.dtype) for n in null)
      k = jnp.concatenate([k, null_k], axis=1)
      v = jnp.concatenate([v, null_v], axis=1)
      if logit_bias is not None:  # null keys get no position prior
        logit_bias = jnp.pad(logit_bias, ((0, 0), (0, 0), (0, self.options.cross_null_kv)))
    scale = None
    if self.options.cosine:
      ones = param_init(nn.initializers.ones, ("kv",))
      q = l2_normalize(q) * self.param("query_scale", ones, (self.head_dim,)).astype(self.dtype)
      k = l2_normalize(k) * self.param("key_scale", ones, (self.head_dim,)).astype(self.dtype)
      scale = 8.0
    if self.options.rope and is_self:
      grid = math.isqrt(x.shape[1])
      if grid * grid == x.shape[1] and x.shape[1] > 1:
        angles = rope_2d_angles(grid, self.head_dim)
        q, k = apply_rope(q, angles), apply_rope(k, angles)
    if logit_bias is not None:
      logit_bias = logit_bias[None].astype(q.dtype)
    out = jax.nn.dot_product_attention(q, k, v, bias=logit_bias, scale=scale,
                                       is_causal=self.causal and is_self)
    out_kernel = self.param(
        "out_kernel",
        param_init(nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2), ("heads", "kv", "embed")),
        heads + (width,))
    out_bias = self.param("out_bias", param_init(nn.initializers.zeros, ("embed",)), (width,))
    out = jnp.einsum("bnhk,hkd->bnd", out, out_kernel.astype(self.dtype))
    return (out + out_bias.astype(self.dtype)).astype(out_dtype)


class Mlp(nn.Module):
  hidden_dim: int
  dtype: jnp.dtype = jnp.float32  # compute dtype; the output is x's dtype
  # Flax's default tanh-approximated GELU; False gives the exact erf GELU of
  # torch's nn.GELU, which timm's ViTs (DINOv2) use.
  approximate_gelu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    kernel = nn.initializers.xavier_uniform()
    h = nn.Dense(
        self.hidden_dim,
        dtype=self.dtype,
        kernel_init=param_init(kernel, ("embed", "mlp")),
        bias_init=param_init(nn.initializers.zeros, ("mlp",)),
        name="fc1",
    )(x)
    h = nn.gelu(h, approximate=self.approximate_gelu)
    return nn.Dense(
        width,
        dtype=self.dtype,
        kernel_init=param_init(kernel, ("mlp", "embed")),
        bias_init=param_init(nn.initializers.zeros, ("embed",)),
        name="fc2",
    )(h).astype(x.dtype)


class Block(nn.Module):
  """Pre-LN transformer block: self-attention, optional cross-attention, MLP.

  With `cross_attention`, the tokens also attend to a `context` sequence (the
  context gets its own LayerNorm, as in the official CQAE code). With
  `position_conv`, tokens that form a square grid first get a depthwise 3x3
  convolution added (the official code's PEG, "positional encoding generator").
  `causal` makes the self-attention causal (the temporal transformers).

  With `layer_scale_init` (DINOv2 / CaiT LayerScale, timm's `init_values`), the
  attention and MLP branch outputs are multiplied by learned per-channel gammas
  `ls1` and `ls2` initialised to that value (1e-5 in DINOv2), so a deep stack starts
  close to the identity (a cross-attention branch, which DINOv2 does not have, is
  not scaled). Unset, the block has no such parameters and is unchanged.
  """

  num_heads: int
  mlp_ratio: float = 4.0
  cross_attention: bool = False
  position_conv: bool = False
  causal: bool = False
  attention: AttentionOptions = AttentionOptions()
  dtype: jnp.dtype = jnp.float32  # compute dtype of the matmuls (ComputeOptions)
  layer_scale_init: float | None = None
  approximate_gelu: bool = True  # False: exact erf GELU (timm / torch nn.GELU)

  def _layer_scale(self, name: str, branch: jax.Array) -> jax.Array:
    if self.layer_scale_init is None:
      return branch
    init = nn.initializers.constant(self.layer_scale_init)
    gamma = self.param(name, param_init(init, ("embed",)), (branch.shape[-1],))
    return branch * gamma.astype(branch.dtype)

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               cross_bias: jax.Array | None = None) -> jax.Array:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    if self.position_conv:
      x = x + PositionConv(name="peg")(x)
    x = x + self._layer_scale("ls1", Attention(
        self.num_heads, head_dim, self.attention, self.causal, self.dtype,
        name="self_attn")(LayerNorm(name="ln_self")(x)))
    if self.cross_attention:
      if context is None:
        raise ValueError("a cross-attention block needs a context")
      x = x + Attention(self.num_heads, head_dim, self.attention, dtype=self.dtype,
                        name="cross_attn")(
          LayerNorm(name="ln_cross")(x), LayerNorm(name="ln_context")(context), cross_bias)
    mlp = Mlp(int(width * self.mlp_ratio), self.dtype, self.approximate_gelu, name="mlp")
    x = x + self._layer_scale("ls2", mlp(LayerNorm(name="ln_mlp")(x)))
    return constrain(x)


def block(compute: ComputeOptions, *args, **kwargs) -> Block:
  """A `Block` computing as `compute` says: in its dtype, rematerialised if asked."""
  cls = Block
  if compute.remat != "none":
    cls = nn.remat(Block, policy=REMAT_POLICIES[compute.remat])
  return cls(*args, dtype=compute.jnp_dtype, **kwargs)


class PositionConv(nn.Module):
  """Depthwise 3x3 convolution over a square grid of tokens [B, g*g, D] (PEG).

  Gives every patch token a view of its neighbours before attention: the cheap
  local inductive bias the official SweetTok code puts in its spatial blocks.
  Written as nine shifted, per-channel-weighted adds rather than a grouped
  `lax.conv`: on XLA:CPU the grouped convolution's kernel gradient came out 1%
  different with a data-sharded batch (tests/test_parallel.py caught it).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    grid = math.isqrt(length)
    if grid * grid != length:
      raise ValueError(f"a position conv needs a square grid of tokens, got {length}")
    kernel = self.param("kernel", param_init(nn.initializers.normal(1.0 / 3.0), (None, None, "embed")),
                        (3, 3, width))
    bias = self.param("bias", param_init(nn.initializers.zeros, ("embed",)), (width,))
    padded = jnp.pad(x.reshape(batch, grid, grid, width), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(padded[:, dy:dy + grid, dx:dx + grid] * kernel[dy, dx]
              for dy in range(3) for dx in range(3))
    return (out + bias).reshape(batch, length, width)


def grid_shape(count: int) -> tuple[int, int]:
  """(rows, cols) with rows * cols == count, as close to square as possible."""
  rows = max(r for r in range(1, math.isqrt(count) + 1) if count % r == 0)
  return rows, count // rows


def grid_points(rows: int, cols: int, extent: int) -> jax.Array:
  """Centres of a rows x cols tiling of an extent x extent patch grid, [rows*cols, 2]
  (y, x) in patch units, row-major: where query token i "looks" at initialisation."""
  ys = (jnp.arange(rows, dtype=jnp.float32) + 0.5) * extent / rows - 0.5
  xs = (jnp.arange(cols, dtype=jnp.float32) + 0.5) * extent / cols - 0.5
  yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
  return jnp.stack([yy.reshape(-1), xx.reshape(-1)], axis=1)


class GaussianAttentionPrior(nn.Module):
  """A learned, ConViT-style locality prior for cross-attention between query tokens
  and patches: logits get `-|p_patch - c_query|^2 / (2 sigma_h^2)` added, with one
  width sigma per head.

  Why: with a handful of photos and minutes of CPU, a CQAE whose queries start out
  attending everywhere stays at the "mean image" plateau for thousands of steps (every
  query reads the same global average). Starting each query on its own region of the
  image (centres on a grid, widths of about one grid cell, head h twice as wide as head
  h-1) lets it learn a useful code at once: on the CPU config, 17.3 dB held-out after
  600 steps against 15.6 dB after 1500 steps without it. Centres and widths are trained, so a query can drift or widen to global
  attention. The official code has no such prior (it uses RoPE in self-attention, window
  attention and PEG); `ImageCQAE.attention_prior=False` removes it.
  """

  num_heads: int
  spacing: float  # side of the area per query, in patch units: head 0's initial width

  @nn.compact
  def __call__(self, query_points: jax.Array, key_points: jax.Array) -> jax.Array:
    """[N, 2] and [S, 2] points (patch units) -> bias [heads, N, S]."""
    init_scale = lambda key, shape, dtype=jnp.float32: jnp.log(
        self.spacing * 2.0 ** jnp.arange(shape[0], dtype=dtype))
    log_sigma = self.param("log_sigma", param_init(init_scale, ("heads",)), (self.num_heads,))
    sq_dist = jnp.sum(jnp.square(query_points[:, None] - key_points[None]), axis=-1)
    return -0.5 * sq_dist[None] * jnp.exp(-2.0 * log_sigma)[:, None, None]


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
  smooth identity from step 0 rather than a std-0.02 random one. On its own it did
  not shorten the early "mean image" plateau; the cross-attention locality prior
  (`GaussianAttentionPrior`) did (README, Results).
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


def check_images(images: jax.Array, image_size: int) -> None:
  """The tokenizers' input contract: a batch of square RGB images [B, S, S, 3]."""
  expected = (image_size, image_size, 3)
  if images.ndim != 4 or tuple(images.shape[1:]) != expected:
    raise ValueError(f"expected images [B, {image_size}, {image_size}, 3], "
                     f"got {tuple(images.shape)}")
