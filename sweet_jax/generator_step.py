"""Pure train steps of the generators on tokens (the AR transformer, MaskGIT).

The same contract as the tokenizer's steps (step.py): the state is a `TrainState`
(parameters, the optax chain's state holding the step counter, rng, EMA), everything
time-dependent derives from the step counter, a non-finite step is discarded
(`discard_unless_finite`), and `experiment.build` jits the step with explicit shardings.
A batch is `{"tokens": int32 [B, L], "label": int32 [B]}` in the token layout
(data/tokens.py).

  ar       next-token cross-entropy over every position, with label smoothing
           (LlamaGen, arXiv:2406.06525; the official SweetTok generator uses 0.1)
  maskgit  a scheduled share of the codes hidden behind the mask token; cross-entropy
           on the hidden ones (TiTok's `MLMLoss`, arXiv:2406.07550)

`make_token_nll` scores held-out tokens the same way, without label smoothing or dropout.
"""

from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from sweet_jax.models.maskgit import mask_tokens, masked_cross_entropy, smoothed_cross_entropy
from sweet_jax.optim import Schedule, group_hyperparams
from sweet_jax.step import TrainState, discard_unless_finite, ema_update, grad_norms_by_group

GeneratorKind = Literal["ar", "maskgit"]


def make_generator_init_fn(model: nn.Module, tx: optax.GradientTransformation, seq_len: int,
                           *, ema: bool = False) -> Callable[[jax.Array], TrainState]:
  """rng -> TrainState with Linen-boxed (logically annotated) leaves."""

  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init(init_rng, tokens, jnp.zeros((1,), jnp.int32))["params"]
    return TrainState(params=params, opt_state=tx.init(params), rng=state_rng,
                      ema_params=params if ema else None)

  return init


def token_cross_entropy(logits: jax.Array, targets: jax.Array,
                        label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy of logits [B, L, V] against targets [B, L], labels smoothed as
  optax.smooth_labels does, without a one-hot [B, L, V] (0.6 GiB per two sequences of
  the UCF-101 generator)."""
  return jnp.mean(smoothed_cross_entropy(logits, targets, label_smoothing))


def make_generator_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                              kind: GeneratorKind, learning_rate: Schedule,
                              label_smoothing: float = 0.0, mask_schedule: str = "arccos",
                              ema_decay: float = 0.0,
                              param_groups: tuple[tuple[str, str], ...] = (),
                              inject_nan_at_step: int = -1
                              ) -> Callable[[TrainState, dict, dict], tuple[TrainState, dict]]:
  """train_step(state, batch, frozen) -> (state, metrics); `frozen` is unused (the
  tokenizer's steps take frozen networks in the same place). `inject_nan_at_step` >= 0
  makes that step's loss NaN (a test switch)."""
  if kind not in ("ar", "maskgit"):
    raise ValueError(f"generator kind {kind!r}: use 'ar' or 'maskgit'")

  def train_step(state: TrainState, batch: dict[str, jax.Array], frozen: dict[str, Any]):
    del frozen
    step = state.step
    dropout_rng, mask_rng = jax.random.split(jax.random.fold_in(state.rng, step))
    tokens, labels = batch["tokens"].astype(jnp.int32), batch["label"].astype(jnp.int32)
    if kind == "maskgit":
      inputs, mask = mask_tokens(tokens, mask_rng, model.mask_id, schedule=mask_schedule)
    else:
      inputs, mask = tokens, jnp.ones(tokens.shape, bool)

    def loss_fn(params):
      logits = model.apply({"params": params}, inputs, labels, train=True,
                           rngs={"dropout": dropout_rng})
      if kind == "maskgit":
        loss = masked_cross_entropy(logits, tokens, mask, label_smoothing)
      else:
        loss = token_cross_entropy(logits, tokens, label_smoothing)
      if inject_nan_at_step >= 0:
        loss = jnp.where(step == inject_nan_at_step, jnp.nan, loss)
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ema_update(state.ema_params, params, step, ema_decay)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    correct = (jnp.argmax(logits, axis=-1) == tokens) & mask
    metrics = {
        "loss": loss,
        "nonfinite": 1.0 - finite.astype(jnp.float32),
        # Of the scored positions (every one for AR, the hidden ones for MaskGIT).
        "accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(mask), 1),
        "grad_norm": grad_norm,
        **grad_norms_by_group(grads, param_groups),
        "param_norm": optax.tree.norm(params),
        "learning_rate": learning_rate(step),
        **group_hyperparams(opt_state),
    }
    new_state = TrainState(params=params, opt_state=opt_state, rng=state.rng,
                           ema_params=ema_params)
    return discard_unless_finite(finite, state, new_state), metrics

  return train_step


def make_token_nll(model: nn.Module, *, kind: GeneratorKind, mask_schedule: str = "arccos",
                   allowed_ranges: Any = None
                   ) -> Callable[[Any, dict, jax.Array], dict[str, jax.Array]]:
  """nll(params, batch, rng) -> {"nll_sum", "count"}: the summed negative log-likelihood
  (nats) of the tokens of the examples with batch["mask"], and how many were scored.
  AR: every token given the ones before it (the sequence's likelihood). MaskGIT: the
  hidden tokens given the rest, under the training schedule's masks drawn from `rng`.
  With `allowed_ranges` [L, 2] (the token layout's), each position's distribution is the
  one the sampler draws from: renormalised over its own id range."""
  if kind not in ("ar", "maskgit"):
    raise ValueError(f"generator kind {kind!r}: use 'ar' or 'maskgit'")

  def nll(params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
    tokens, labels = batch["tokens"].astype(jnp.int32), batch["label"].astype(jnp.int32)
    if kind == "maskgit":
      inputs, scored = mask_tokens(tokens, rng, model.mask_id, schedule=mask_schedule)
    else:
      inputs, scored = tokens, jnp.ones(tokens.shape, bool)
    scored = scored & batch["mask"][:, None]
    logits = model.apply({"params": params}, inputs, labels)
    if allowed_ranges is not None:
      ids = jnp.arange(logits.shape[-1])
      ranges = jnp.asarray(allowed_ranges)
      inside = (ids >= ranges[:, :1]) & (ids < ranges[:, 1:])  # [L, V]
      logits = jnp.where(inside, logits, -jnp.inf)
    loss = smoothed_cross_entropy(logits, tokens, 0.0)
    return {"nll_sum": jnp.sum(jnp.where(scored, loss, 0.0)),
            "count": jnp.sum(scored.astype(jnp.int32))}

  return nll
