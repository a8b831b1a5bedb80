"""A class-conditional autoregressive transformer over discrete tokens: LlamaGen's GPT
(arXiv:2406.06525), a LLaMA decoder with 1-D RoPE (arXiv:2104.09864), as GPT trains it:
next-token prediction with teacher forcing.

Sequence layout (C = num_class_tokens, L = seq_len, T = C + L - 1 positions):

  positions 0..C-1   the class embedding (C learned vectors per class; row
                     `num_classes` is the null class of classifier-free guidance)
  positions C..T-1   the embeddings of tokens[0..L-2]
  logits             read at positions C-1..T-1: position C-1+i predicts token i

The sampler (sampling/ar.py) calls `prefill` once (the class tokens, optionally a prompt
of given tokens) and then `decode_step` per token, carrying an explicit `KVCache` per
layer (nn/llama.py) with T slots.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.nn.layers import ComputeOptions, param_init
from sweet_jax.nn.llama import (INIT_STDDEV, KVCache, RMSNorm, init_kv_cache, llama_block,
                                llama_mlp_hidden, rope_1d_angles)

Cache = tuple[KVCache, ...]  # one per block


class ARTransformer(nn.Module):
  """LlamaGen-style GPT: class token(s), then tokens; logits [B, seq_len, vocab_size]."""

  vocab_size: int  # the flat token vocabulary
  num_classes: int  # 0: unconditional (every label is the null class 0)
  seq_len: int  # tokens per sequence (generated tokens)
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  # SwiGLU hidden width; None: LlamaGen's rule, 2/3 of 4*width (times mlp_multiplier)
  # rounded up to a multiple of mlp_multiple_of.
  mlp_hidden: int | None = None
  mlp_multiple_of: int = 256
  mlp_multiplier: float | None = None
  num_class_tokens: int = 1  # LlamaGen's cls_token_num
  dropout: float = 0.0  # token-embedding and residual-branch dropout (train only)
  class_dropout: float = 0.1  # labels -> null class during training, for guidance
  rope_theta: float = 1e4
  norm_epsilon: float = 1e-5
  compute_dtype: str = "float32"  # layers.ComputeOptions: float32 | bfloat16 matmuls
  # none | full | dots | dots_no_batch. "dots" also saves the attention's logits matmul
  # (every chunk's: float32 [B, heads, T, T] per layer again); "dots_no_batch" saves the
  # weight matmuls only and recomputes the attention.
  remat: str = "none"
  # Attention over this many queries at a time (nn/llama.py causal_attention): float32
  # logits [B, heads, attention_chunk, T] instead of [B, heads, T, T]; 0: all at once.
  attention_chunk: int = 512

  @property
  def null_class(self) -> int:
    return self.num_classes

  @property
  def num_positions(self) -> int:
    """T: class tokens plus every token but the last (the cache's length)."""
    return self.num_class_tokens + self.seq_len - 1

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def hidden_dim(self) -> int:
    if self.mlp_hidden is not None:
      return self.mlp_hidden
    return llama_mlp_hidden(self.width, self.mlp_multiple_of, self.mlp_multiplier)

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
    if self.num_class_tokens < 1 or self.seq_len < 1:
      raise ValueError("an ARTransformer needs num_class_tokens >= 1 and seq_len >= 1")
    compute = ComputeOptions(self.compute_dtype, self.remat)
    self.compute = compute
    init = nn.initializers.normal(INIT_STDDEV)
    self.class_embedding = self.param(
        "class_embedding", param_init(init, (None, None, "embed")),
        (self.num_classes + 1, self.num_class_tokens, self.width))
    self.token_embedding = self.param(
        "token_embedding", param_init(init, ("vocab", "embed")), (self.vocab_size, self.width))
    self.blocks = [
        llama_block(compute, self.num_heads, self.hidden_dim, self.dropout, self.norm_epsilon,
                    query_chunk=self.attention_chunk, name=f"block_{i}")
        for i in range(self.depth)]
    self.embedding_dropout = nn.Dropout(self.dropout)  # LlamaGen's tok_dropout
    self.final_norm = RMSNorm(self.norm_epsilon)
    self.head = self.param("head_kernel", param_init(init, ("embed", "vocab")),
                           (self.width, self.vocab_size))

  def drop_labels(self, labels: jax.Array, train: bool) -> jax.Array:
    """During training, each label becomes the null class with probability
    `class_dropout` (rng "dropout"): the unconditional model of classifier-free guidance."""
    if self.num_classes == 0:
      return jnp.zeros_like(labels)
    if not train or self.class_dropout <= 0.0:
      return labels
    dropped = jax.random.uniform(self.make_rng("dropout"), labels.shape) < self.class_dropout
    return jnp.where(dropped, self.null_class, labels)

  def _class_tokens(self, labels: jax.Array) -> jax.Array:
    return jnp.take(self.class_embedding, labels, axis=0)  # [B, C, D]

  def _tokens(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.token_embedding, tokens, axis=0)

  def _transform(self, x: jax.Array, start, cache: Cache | None,
                 train: bool) -> tuple[jax.Array, Cache | None]:
    """The blocks over x [B, N, D] at positions start..start+N-1 -> logits [B, N, V]."""
    x = self.embedding_dropout(x, deterministic=not train)
    angles = rope_1d_angles(start + jnp.arange(x.shape[1]), self.head_dim, self.rope_theta)
    new_cache = []
    for i, block in enumerate(self.blocks):
      x, layer_cache = block(x, angles, not train, None if cache is None else cache[i], start)
      new_cache.append(layer_cache)
    x = self.final_norm(x)
    dtype = self.compute.jnp_dtype
    logits = jnp.einsum("bnd,dv->bnv", x.astype(dtype), self.head.astype(dtype),
                        preferred_element_type=jnp.float32)
    return logits, None if cache is None else tuple(new_cache)

  def __call__(self, tokens: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    """Teacher-forced logits [B, L, V] for tokens [B, L] int32 given labels [B] int32."""
    if tokens.ndim != 2 or tokens.shape[1] != self.seq_len:
      raise ValueError(f"expected tokens [B, {self.seq_len}], got {tuple(tokens.shape)}")
    labels = self.drop_labels(labels, train)
    x = jnp.concatenate([self._class_tokens(labels), self._tokens(tokens[:, :-1])], axis=1)
    logits, _ = self._transform(x, 0, None, train)
    return logits[:, self.num_class_tokens - 1:]

  def init_cache(self, batch_size: int) -> Cache:
    """An empty cache of `num_positions` slots per block (needs no parameters)."""
    dtype = ComputeOptions(self.compute_dtype, self.remat).jnp_dtype
    return tuple(init_kv_cache(batch_size, self.num_positions, self.num_heads, self.head_dim,
                               dtype) for _ in range(self.depth))

  def prefill(self, labels: jax.Array, prompt: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """Writes the class tokens (and the given first tokens `prompt` [B, P], P < seq_len)
    into a fresh cache: -> (logits [B, V] of token P, cache). Labels are used as given
    (the null class for the unconditional half of guidance)."""
    x = self._class_tokens(labels)
    if prompt is not None:
      if prompt.shape[1] >= self.seq_len:
        raise ValueError(f"a prompt of {prompt.shape[1]} tokens leaves none of {self.seq_len}")
      x = jnp.concatenate([x, self._tokens(prompt)], axis=1)
    logits, cache = self._transform(x, 0, self.init_cache(labels.shape[0]), False)
    return logits[:, -1], cache

  def decode_step(self, token: jax.Array, token_index: jax.Array,
                  cache: Cache) -> tuple[jax.Array, Cache]:
    """Feeds token number `token_index` (0-based, < seq_len - 1) [B] int32: -> (logits
    [B, V] of token token_index + 1, the cache with its keys and values written)."""
    position = self.num_class_tokens + jnp.asarray(token_index, jnp.int32)
    logits, cache = self._transform(self._tokens(token[:, None]), position, cache, False)
    return logits[:, 0], cache
