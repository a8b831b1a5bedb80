"""MaskGIT iterative decoding (arXiv:2202.04200 §3.2) as TiTok's `ImageBert.generate`
(bytedance/1d-tokenizer `modeling/maskgit.py`, after MUSE-Pytorch), in JAX.

Start from L mask tokens; at step s of S (ratio r = (s+1)/S, T = randomize_temperature
* (1 - r)):
  1. logits of the codes, with classifier-free guidance (below), divided by
     0.5 + 0.8 (1 - r) under `softmax_temperature_annealing`
  2. sample every position by Gumbel-max at temperature T (argmax(logits + T g): a draw
     from softmax(logits / T), greedy at the last step where T = 0); known positions keep
     their code
  3. confidence = the sampled code's logit + T g' (fresh Gumbel noise); known positions +inf
  4. keep floor(L * schedule(r)), clipped to [1, still-masked - 1], of the least
     confident positions masked (at the last step none: every position is filled)

Guidance at step s, c / u the conditional / null-class logits:
  constant      c + (c - u) w
  linear        c + (c - u) w s/S         (MUSE: 0 at the first step; official updates
                                           cfg_scale = ratio * w after each step)
  power-cosine  u + (c - u) ((w - 1) (1 - cos((s/S)^p pi)) / 2 + 1)   (MDT, p = pow)
and a step whose guidance factor is 0 uses c alone, as the official code.

Where this differs from the official code:
- The confidence ranking masks exactly that many positions (stable order on ties); the
  official `confidence <= sorted_confidence[mask_len - 1]` masks all tied ones (ties
  only arise with randomize_temperature = 0). The official code also takes the count of
  example 0 for the whole batch; here it is per example (equal without ties).
- The default schedule is TiTok's "arccos" (its `mask_ratio = np.arccos(ratio) /
  (math.pi * 0.5)`); "cosine" gives MaskGIT's cos(pi/2 r). The per-step counts are
  computed on the host in float64, as the official numpy code.
- The confidence is the raw (guided, temperature-scaled) logit as the official code, not
  MaskGIT's log-probability (which subtracts each position's logsumexp).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sweet_jax.models.maskgit import MaskGITTransformer, mask_schedule

GUIDANCE_DECAYS = ("constant", "linear", "power-cosine")


def guidance_scales(num_steps: int, guidance_scale: float, guidance_decay: str = "constant",
                    guidance_scale_pow: float = 3.0) -> np.ndarray:
  """The guidance factor of each step [num_steps] (float64), as the official code."""
  if guidance_decay not in GUIDANCE_DECAYS:
    raise ValueError(f"guidance decay {guidance_decay!r}: use one of {GUIDANCE_DECAYS}")
  progress = np.arange(num_steps, dtype=np.float64) / num_steps  # s / S
  if guidance_decay == "constant":
    return np.full(num_steps, float(guidance_scale))
  if guidance_decay == "linear":
    return progress * guidance_scale
  scale_step = (1.0 - np.cos(progress**guidance_scale_pow * np.pi)) * 0.5
  return (guidance_scale - 1.0) * scale_step + 1.0


def guided_logits(cond: jax.Array, uncond: jax.Array, scale: jax.Array | float,
                  guidance_decay: str = "constant") -> jax.Array:
  """Classifier-free guidance (arXiv:2207.12598) as the official `generate` combines it:
  around the null-class logits for "power-cosine", around the conditional ones otherwise;
  a zero factor gives the conditional logits (the official code then skips guidance)."""
  if guidance_decay == "power-cosine":
    guided = uncond + (cond - uncond) * scale
  else:
    guided = cond + (cond - uncond) * scale
  return jnp.where(scale == 0, cond, guided)


def masked_counts(seq_len: int, num_steps: int, schedule: str = "arccos") -> np.ndarray:
  """floor(L * schedule((s+1)/S)) per step [num_steps], before the clip to
  [1, still-masked - 1]; the official `np.floor(self.image_seq_len * mask_ratio)`."""
  ratios = np.arange(1, num_steps + 1, dtype=np.float64) / num_steps
  return np.floor(seq_len * mask_schedule(schedule)(ratios)).astype(np.int32)


def sample(model: MaskGITTransformer, params: Any, labels: jax.Array | None, rng: jax.Array, *,
           num_steps: int = 8, guidance_scale: float = 0.0, guidance_decay: str = "constant",
           guidance_scale_pow: float = 3.0, randomize_temperature: float = 1.0,
           softmax_temperature_annealing: bool = False, schedule: str = "arccos",
           batch_size: int | None = None, return_history: bool = False):
  """Decodes codes [B, L] int32 for class labels [B] (None: unconditional, `batch_size`).

  `params` are the variables `model.apply` takes ({"params": ...}). Pure and of static
  shapes (a `lax.scan` over the steps): the caller jits it, with everything but
  `params`, `labels` and `rng` static. With `return_history`, also returns {"tokens":
  [S, B, L] the codes after each step (mask_id where still masked), "num_masked":
  [S + 1, B] the masked count before the first and after each step}.
  The official defaults differ: guidance 3.0, randomize_temperature 4.5 (TiTok's
  configs: guidance 4.5, randomize_temperature 1.0).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if labels is None:
    if batch_size is None:
      raise ValueError("unconditional sampling (labels=None) needs batch_size")
    labels = jnp.full((batch_size,), model.null_class, jnp.int32)
  labels = jnp.asarray(labels, jnp.int32)
  batch, length, mask_id = labels.shape[0], model.seq_len, model.mask_id
  scales = guidance_scales(num_steps, guidance_scale, guidance_decay, guidance_scale_pow)
  use_guidance = guidance_decay == "power-cosine" or guidance_scale != 0
  ratios = np.arange(1, num_steps + 1, dtype=np.float64) / num_steps
  temps = randomize_temperature * (1.0 - ratios)
  softmax_temps = 0.5 + 0.8 * (1.0 - ratios) if softmax_temperature_annealing else np.ones(num_steps)
  steps = dict(index=np.arange(num_steps, dtype=np.int32),
               scale=scales.astype(np.float32), temp=temps.astype(np.float32),
               softmax_temp=softmax_temps.astype(np.float32),
               count=masked_counts(length, num_steps, schedule))

  def logits_of(ids: jax.Array, scale: jax.Array) -> jax.Array:
    if not use_guidance:
      return model.apply(params, ids, labels)
    null = jnp.full_like(labels, model.null_class)
    both = model.apply(params, jnp.concatenate([ids, ids]), jnp.concatenate([labels, null]))
    return guided_logits(both[:batch], both[batch:], scale, guidance_decay)

  def step(ids: jax.Array, xs: dict) -> tuple[jax.Array, jax.Array]:
    sample_key, confidence_key = jax.random.split(jax.random.fold_in(rng, xs["index"]))
    is_mask = ids == mask_id
    logits = logits_of(ids, xs["scale"]) / xs["softmax_temp"]
    temp = xs["temp"]
    sampled = jnp.argmax(logits + temp * jax.random.gumbel(sample_key, logits.shape), axis=-1)
    sampled_logit = jnp.take_along_axis(logits, sampled[..., None], axis=-1)[..., 0]
    sampled = jnp.where(is_mask, sampled.astype(jnp.int32), ids)
    confidence = jnp.where(is_mask, sampled_logit, jnp.inf)
    confidence = confidence + temp * jax.random.gumbel(confidence_key, confidence.shape)
    remaining = jnp.sum(is_mask, axis=-1, keepdims=True)
    keep_masked = jnp.maximum(1, jnp.minimum(remaining - 1, xs["count"]))
    rank = jnp.argsort(jnp.argsort(confidence, axis=-1, stable=True), axis=-1)
    remask = (rank < keep_masked) & (xs["index"] < num_steps - 1)
    ids = jnp.where(remask, mask_id, sampled)
    return ids, ids

  start = jnp.full((batch, length), mask_id, jnp.int32)
  tokens, history = jax.lax.scan(step, start, steps)
  if not return_history:
    return tokens
  num_masked = jnp.sum(jnp.concatenate([start[None], history]) == mask_id, axis=-1)
  return tokens, {"tokens": history, "num_masked": num_masked.astype(jnp.int32)}
