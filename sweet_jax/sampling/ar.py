"""Sampling an `ARTransformer` token by token, as LlamaGen (arXiv:2406.06525) does:
classifier-free guidance on a doubled batch, temperature, top-k then top-p (nucleus)
filtering, optionally restricted to a vocabulary range per position.

Pure and jit-friendly: shapes follow from the model's fields and the labels' batch;
the caller jits (the hyperparameters are Python numbers, static under jit, since they
choose the program: greedy or not, guided or not, top-k's k). Position i draws with
`jax.random.fold_in(rng, i)`, so the cached sampler and the full recomputation
(`use_cache=False`, the reference) draw the same tokens from the same rng.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sweet_jax.models.ar import ARTransformer

NEG_INF = -jnp.inf


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Logits [..., V] outside the k largest set to -inf (ties with the k-th are kept);
  k <= 0 keeps all."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus filtering (Holtzman et al., arXiv:1904.09751): keeps the most probable
  tokens until their probability reaches p (a token is kept when the tokens more
  probable than it hold less than p), the rest set to -inf; p >= 1 keeps all."""
  if p >= 1.0:
    return logits
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  threshold = jnp.min(jnp.where(before < p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < threshold, NEG_INF, logits)


def restrict_vocabulary(logits: jax.Array, allowed: jax.Array) -> jax.Array:
  """Logits [B, V] outside [start, end) (allowed = (start, end)) set to -inf."""
  ids = jnp.arange(logits.shape[-1])
  return jnp.where((ids >= allowed[0]) & (ids < allowed[1]), logits, NEG_INF)


def choose_token(logits: jax.Array, key: jax.Array, temperature: float, top_k: int,
                 top_p: float) -> jax.Array:
  """One token per row of logits [B, V]: argmax at temperature 0, else a draw from the
  tempered, top-k- then top-p-filtered distribution."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def sample(model: ARTransformer, params, labels: jax.Array, rng: jax.Array, *,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           cfg_scale: float = 1.0, allowed_ranges: np.ndarray | None = None,
           use_cache: bool = True) -> jax.Array:
  """Tokens [B, seq_len] int32 for labels [B] int32.

  params        the model's "params" collection (boxed or not)
  cfg_scale     logits = uncond + cfg_scale * (cond - uncond), the unconditional half
                on the null class; 1.0: no guidance (and no doubled batch)
  allowed_ranges  [seq_len, 2] (start, end) per position: tokens outside are never drawn
  use_cache     False: recompute the whole padded sequence at every position (slow; the
                reference the cached sampler is tested against)
  """
  batch, length = labels.shape[0], model.seq_len
  guided = cfg_scale != 1.0
  if guided and model.num_classes == 0:
    raise ValueError("classifier-free guidance needs a class-conditional model")
  model_labels = labels
  if guided:
    model_labels = jnp.concatenate([labels, jnp.full_like(labels, model.null_class)])
  ranges = None
  if allowed_ranges is not None:
    ranges = np.asarray(allowed_ranges, np.int32)
    if ranges.shape != (length, 2):
      raise ValueError(f"allowed_ranges must be [{length}, 2], got {ranges.shape}")
    ranges = jnp.asarray(ranges)
  variables = {"params": params}

  def choose(logits: jax.Array, position) -> jax.Array:
    """Model logits [B or 2B, V] of token `position` -> tokens [B]."""
    logits = logits.astype(jnp.float32)
    if guided:
      cond, uncond = logits[:batch], logits[batch:]
      logits = uncond + cfg_scale * (cond - uncond)
    if ranges is not None:
      logits = restrict_vocabulary(logits, ranges[position])
    return choose_token(logits, jax.random.fold_in(rng, position), temperature, top_k, top_p)

  def model_tokens(tokens: jax.Array) -> jax.Array:
    return jnp.concatenate([tokens, tokens]) if guided else tokens

  if not use_cache:
    def recompute(position, tokens):
      logits = model.apply(variables, model_tokens(tokens), model_labels)
      step_logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
      return tokens.at[:, position].set(choose(step_logits, position))

    return jax.lax.fori_loop(0, length, recompute, jnp.zeros((batch, length), jnp.int32))

  logits, cache = model.apply(variables, model_labels, method=ARTransformer.prefill)
  first = choose(logits, 0)

  def decode(carry, token_index):
    token, cache = carry
    logits, cache = model.apply(variables, model_tokens(token), token_index, cache,
                                method=ARTransformer.decode_step)
    token = choose(logits, token_index + 1)
    return (token, cache), token

  _, rest = jax.lax.scan(decode, (first, cache), jnp.arange(length - 1, dtype=jnp.int32))
  return jnp.concatenate([first[:, None], rest.T], axis=1)
