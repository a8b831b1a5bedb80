"""LLaMA-style decoder layers for autoregressive token models (LlamaGen, arXiv:2406.06525):
RMSNorm, 1-D rotary position embedding (RoPE, arXiv:2104.09864), SwiGLU MLP, causal
self-attention with a key/value cache, and the pre-norm block.

The KV cache is an explicit pytree (`KVCache` per layer) that goes in and comes back
out: static shapes, so a jitted `lax.scan` can carry it, and no mutable Linen
collection to thread through `apply`. Parameters carry logical axis names as in
layers.py (embed, heads, kv, mlp).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.nn.layers import REMAT_POLICIES, ComputeOptions, apply_rope, constrain, param_init

# LlamaGen initialises every linear layer and embedding with N(0, 0.02).
INIT_STDDEV = 0.02
CACHE_AXES = ("batch", "length", "heads", "kv")


def rope_1d_angles(positions: jax.Array, head_dim: int, theta: float = 1e4) -> jax.Array:
  """Rotation angles [N, head_dim/2] of 1-D RoPE for integer positions [N]; pair j
  rotates at frequency theta^(-2j/head_dim) (LlamaGen's `precompute_freqs_cis`).
  Applied with layers.apply_rope (consecutive channel pairs, as LlamaGen)."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head width, got {head_dim}")
  freqs = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  return jnp.asarray(positions, jnp.float32)[:, None] * freqs[None, :]


def llama_mlp_hidden(width: int, multiple_of: int = 256, multiplier: float | None = None) -> int:
  """LLaMA / LlamaGen's SwiGLU hidden size: 2/3 of 4*width (so the three matrices cost
  what a 4x GELU MLP's two do), times `multiplier` if given, rounded up to a multiple of
  `multiple_of` (GPT-B 768 -> 2048, GPT-L 1024 -> 2816)."""
  hidden = int(2 * 4 * width / 3)
  if multiplier is not None:
    hidden = int(multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class KVCache(NamedTuple):
  """One attention layer's keys and values, [B, T, heads, kv] each, for positions 0..T-1
  (slots not written yet are zeros and masked out)."""

  key: jax.Array
  value: jax.Array


def init_kv_cache(batch_size: int, length: int, num_heads: int, head_dim: int,
                  dtype: jnp.dtype = jnp.float32) -> KVCache:
  zeros = jnp.zeros((batch_size, length, num_heads, head_dim), dtype)
  return KVCache(zeros, zeros)


class RMSNorm(nn.Module):
  """Root-mean-square norm (no centring, no bias), computed in float32."""

  epsilon: float = 1e-5  # LlamaGen's norm_eps

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", param_init(nn.initializers.ones, ("embed",)), (x.shape[-1],))
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return x * scale


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)), no biases (LLaMA's FeedForward: w1, w3, w2)."""

  hidden_dim: int
  dtype: jnp.dtype = jnp.float32  # compute dtype; the output is x's dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    init = nn.initializers.normal(INIT_STDDEV)

    def kernel(name, shape, names):
      return self.param(name, param_init(init, names), shape).astype(self.dtype)

    h = x.astype(self.dtype)
    gate = h @ kernel("gate_kernel", (width, self.hidden_dim), ("embed", "mlp"))
    up = h @ kernel("up_kernel", (width, self.hidden_dim), ("embed", "mlp"))
    down = kernel("down_kernel", (self.hidden_dim, width), ("mlp", "embed"))
    return ((nn.silu(gate) * up) @ down).astype(x.dtype)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, query_positions: jax.Array,
            key_positions: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim), keys after the query masked) v: q [B, N, H, K],
  k and v [B, S, H, K] -> [B, N, H, K] in v's dtype. The logits and the softmax are
  float32, the weights are cast to v's dtype for the second matmul."""
  logits = jnp.einsum("bnhk,bshk->bhns", q, k, preferred_element_type=jnp.float32)
  logits = logits * q.shape[-1]**-0.5
  visible = key_positions[None, :] <= query_positions[:, None]
  logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhns,bshk->bnhk", weights, v)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, query_positions: jax.Array,
                     key_positions: jax.Array, query_chunk: int = 0) -> jax.Array:
  """Masked softmax attention of q [B, N, H, K] (at `query_positions` [N]) over k, v
  [B, S, H, K] (at `key_positions` [S]): each query sees the keys at positions <= its own.

  With `query_chunk` > 0 and N > query_chunk, the queries go through in ceil(N /
  query_chunk) equal chunks (the last one padded) in a `lax.scan` whose body is
  rematerialised: only one chunk's float32 logits [B, H, chunk, S] exist at a time, in
  the forward pass and in the backward pass (which recomputes them chunk by chunk),
  instead of [B, H, N, S] per layer kept for the gradient (1.76 GiB per layer for two
  sequences of N = S = 3848 positions and 16 heads). Each query row's softmax is the same
  computation either way: the result is identical up to float rounding in the backward
  pass (k's and v's gradients are summed over the chunks, in float32)."""
  length = q.shape[1]
  if query_chunk <= 0 or length <= query_chunk:
    return _attend(q, k, v, query_positions, key_positions)
  num_chunks = -(-length // query_chunk)
  size = -(-length // num_chunks)  # equal chunks, the padding < num_chunks
  pad = num_chunks * size - length
  batch, _, heads, head_dim = q.shape
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  query_positions = jnp.pad(query_positions, (0, pad), mode="edge")
  chunks = q.reshape(batch, num_chunks, size, heads, head_dim).swapaxes(0, 1)
  dtype = v.dtype
  # k and v enter the loop as float32 (an exact cast) so that their gradients, summed
  # over the chunks in the loop's carry, are summed in float32.
  k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_attention(q_chunk, positions):
    return _attend(q_chunk, k32.astype(k.dtype), v32.astype(dtype), positions, key_positions)

  def body(carry, inputs):
    return carry, chunk_attention(*inputs)

  _, out = jax.lax.scan(body, None, (chunks, query_positions.reshape(num_chunks, size)))
  out = out.swapaxes(0, 1).reshape(batch, num_chunks * size, heads, head_dim)
  return out[:, :length]


class CausalSelfAttention(nn.Module):
  """Causal multi-head self-attention with RoPE and an optional KV cache.

  x [B, N, D] holds the tokens at positions start..start+N-1, `angles` [N, head_dim/2]
  their RoPE rotations. Without a cache, x attends causally to itself (training, or a
  full recomputation; start is then 0). With a cache of T slots, x's keys and values are
  written at `start` (a prompt of N tokens at 0 is the prefill; N = 1 a decode step) and
  x attends to every cached position up to its own. Projections are explicit
  [embed, heads, kv] kernels without biases (LLaMA); the softmax is float32, over
  `query_chunk` queries at a time (`causal_attention`).
  """

  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32  # compute dtype; the output is x's dtype
  query_chunk: int = 0  # see causal_attention; 0: every query at once

  @nn.compact
  def __call__(self, x: jax.Array, angles: jax.Array, cache: KVCache | None = None,
               start: jax.Array | int = 0) -> tuple[jax.Array, KVCache | None]:
    width = x.shape[-1]
    length = x.shape[1]
    heads = (self.num_heads, self.head_dim)
    init = nn.initializers.normal(INIT_STDDEV)
    h = x.astype(self.dtype)

    def project(name: str) -> jax.Array:
      kernel = self.param(f"{name}_kernel", param_init(init, ("embed", "heads", "kv")),
                          (width,) + heads)
      return jnp.einsum("bnd,dhk->bnhk", h, kernel.astype(self.dtype))

    q = apply_rope(project("query"), angles)
    k = apply_rope(project("key"), angles)
    v = project("value")
    query_positions = start + jnp.arange(length)
    if cache is None:
      key_positions = query_positions
    else:
      index = (0, start, 0, 0)
      k = jax.lax.dynamic_update_slice(cache.key, k.astype(cache.key.dtype), index)
      v = jax.lax.dynamic_update_slice(cache.value, v.astype(cache.value.dtype), index)
      k = nn.with_logical_constraint(k, CACHE_AXES)
      v = nn.with_logical_constraint(v, CACHE_AXES)
      cache = KVCache(k, v)
      key_positions = jnp.arange(k.shape[1])
      k, v = k.astype(self.dtype), v.astype(self.dtype)
    out = causal_attention(q, k, v, query_positions, key_positions, self.query_chunk)
    out_kernel = self.param("out_kernel", param_init(init, ("heads", "kv", "embed")),
                            heads + (width,))
    out = jnp.einsum("bnhk,hkd->bnd", out, out_kernel.astype(self.dtype))
    return out.astype(x.dtype), cache


class LlamaBlock(nn.Module):
  """Pre-norm decoder block: x + attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)), with
  dropout on both branch outputs (LlamaGen's resid/ffn dropout) unless deterministic.
  The residual stream stays float32. Returns (x, cache); see CausalSelfAttention for
  `angles`, `cache` and `start`."""

  num_heads: int
  mlp_hidden: int
  dropout: float = 0.0
  norm_epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32  # compute dtype of the matmuls (ComputeOptions)
  query_chunk: int = 0  # attention over this many queries at a time (0: all)

  @nn.compact
  def __call__(self, x: jax.Array, angles: jax.Array, deterministic: bool = True,
               cache: KVCache | None = None,
               start: jax.Array | int = 0) -> tuple[jax.Array, KVCache | None]:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    attention = CausalSelfAttention(self.num_heads, width // self.num_heads, self.dtype,
                                    self.query_chunk, name="attn")
    branch, cache = attention(RMSNorm(self.norm_epsilon, name="attn_norm")(x), angles, cache,
                              start)
    x = x + nn.Dropout(self.dropout)(branch, deterministic=deterministic)
    branch = SwiGLU(self.mlp_hidden, self.dtype, name="mlp")(
        RMSNorm(self.norm_epsilon, name="mlp_norm")(x))
    x = x + nn.Dropout(self.dropout)(branch, deterministic=deterministic)
    return constrain(x), cache


def llama_block(compute: ComputeOptions, *args, **kwargs) -> LlamaBlock:
  """A `LlamaBlock` computing as `compute` says: in its dtype, rematerialised if asked
  (`deterministic`, the third positional argument, is static)."""
  cls = LlamaBlock
  if compute.remat != "none":
    cls = nn.remat(LlamaBlock, policy=REMAT_POLICIES[compute.remat], static_argnums=(3,))
  return cls(*args, dtype=compute.jnp_dtype, **kwargs)
