"""Pure train / eval steps. `train.py` jits them with explicit shardings.

Everything that depends on time (learning rate, loss weights, the rng) is
derived from the step counter kept in the optimizer state, so a resumed run
computes exactly what an uninterrupted one would.
"""

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from sweet_jax.curriculum import group_hyperparams
from sweet_jax.evaluate.metrics import codebook_stats_by_group, psnr, ssim
from sweet_jax.evaluate.video import per_frame_metrics
from sweet_jax.optim import Schedule, get_step


@flax.struct.dataclass
class TrainState:
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32[2] key, folded with the step each update

  @property
  def step(self) -> jax.Array:
    return get_step(self.opt_state)


def images_to_model(images: jax.Array) -> jax.Array:
  """uint8 [0,255] -> float32 [-1,1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def model_to_unit(images: jax.Array) -> jax.Array:
  """Model output -> float32 [0,1], clipped (what metrics and summaries see)."""
  return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def model_input(model: nn.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
  """The batch's pixels in [-1, 1]: clips for a clip model (images become one-frame
  clips), images otherwise."""
  if "video" in batch:
    return images_to_model(batch["video"])
  images = images_to_model(batch["image"])
  return images[:, None] if getattr(model, "takes_clips", False) else images


def _frames(x: jax.Array) -> jax.Array:
  """[B, T, H, W, C] or [B, H, W, C] -> [N, H, W, C] (per-frame metrics)."""
  return x.reshape((-1,) + x.shape[-3:])


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation,
                 image_shape: tuple[int, ...]) -> Callable[[jax.Array], TrainState]:
  """rng -> TrainState with Linen-boxed (logically annotated) leaves.

  Evaluate it under `jax.eval_shape` for the abstract state and its shardings,
  and under `jax.jit(..., out_shardings=...)` (unboxed) to materialise it sharded.
  """

  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    params = model.init(init_rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]
    return TrainState(params=params, opt_state=tx.init(params), rng=state_rng)

  return init


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    learning_rate: Schedule, loss_weights: Mapping[str, Schedule],
                    quantizer_mix: Schedule, quantizer_train: bool = True
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns train_step(state, batch) -> (state, metrics); batch["image"] or
  batch["video"] is uint8. `quantizer_train=False` runs the quantizer as in evaluation
  (no GCN dropout): for stages in which the codebook is frozen."""
  index_groups = model.index_groups()

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    step = state.step
    rng = jax.random.fold_in(state.rng, step)
    images = model_input(model, batch)
    weights = {name: fn(step) for name, fn in loss_weights.items()}
    mix = quantizer_mix(step)

    def loss_fn(params):
      recon, aux = model.apply({"params": params}, images, mix, quantizer_train,
                               rngs={"dropout": rng})
      terms = {
          "recon": jnp.mean(jnp.square(recon - images)),
          "commitment": aux["commitment_loss"],
          "codebook": aux["codebook_loss"],
          "entropy": aux["entropy_loss"],
      }
      total = sum(weights[name] * value for name, value in terms.items())
      return total, (recon, aux["indices"], terms)

    (loss, (recon, indices, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        **{f"loss_{name}": value for name, value in terms.items()},
        "psnr": jnp.mean(psnr(_frames(model_to_unit(recon)), _frames(model_to_unit(images)))),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "learning_rate": learning_rate(step),
        "quantizer_mix": mix,
        **codebook_stats_by_group(indices, index_groups),
        **group_hyperparams(opt_state),
    }
    return TrainState(params=params, opt_state=opt_state, rng=state.rng), metrics

  return train_step


def make_eval_step(model: nn.Module) -> Callable[[Any, dict], dict]:
  """eval_step(params, batch) -> reconstructions in [0,1], PSNR/SSIM per image ([B]) or,
  for clips, per frame ([B, T]), and the token indices."""

  def eval_step(params, batch):
    inputs = model_input(model, batch)
    recon, aux = model.apply({"params": params}, inputs)
    recon, target = model_to_unit(recon), model_to_unit(inputs)
    if "video" in batch:
      frame_psnr, frame_ssim = per_frame_metrics(recon, target)
    else:
      frame_psnr, frame_ssim = psnr(recon, target), ssim(recon, target)
    return {"recon": recon, "psnr": frame_psnr, "ssim": frame_ssim, "indices": aux["indices"]}

  return eval_step
