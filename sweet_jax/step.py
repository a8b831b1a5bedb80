"""Pure train / eval steps. `experiment.build` jits them with explicit shardings.

Everything that depends on time (learning rate, loss weights, the rng) is
derived from the step counter kept in the optimizer state, so a resumed run
computes exactly what an uninterrupted one would.

A train step updates, in one jitted function: the tokenizer (reconstruction,
quantizer, perceptual and adversarial terms), its EMA, and the discriminator (hinge
loss on the same step's reconstructions, LeCam regulariser) with its own optimizer.
Frozen networks (LPIPS) come in as a separate, replicated argument, never as state.
"""

import re
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from sweet_jax.losses import gan as gan_loss
from sweet_jax.losses.alignment import alignment_loss
from sweet_jax.losses.gan import DiscriminatorState, GanOptions
from sweet_jax.losses.perceptual import perceptual_loss
from sweet_jax.losses.reconstruction import low_pass_loss, mean_color_loss, reconstruction_loss
from sweet_jax.metrics import codebook_stats_by_group, per_frame_metrics, psnr, ssim
from sweet_jax.nets.dinov2 import teacher_features
from sweet_jax.nets.i3d import fvd_preprocess
from sweet_jax.nets.lpips import LPIPS, pooled_vgg_features
from sweet_jax.optim import (Schedule, StepCountState, get_step, group_hyperparams, map_with_path,
                             param_group_labels)


@flax.struct.dataclass
class TrainState:
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32[2] key, folded with the step each update
  ema_params: Any = None  # None when config.ema.decay == 0
  disc: DiscriminatorState | None = None  # None without an adversarial loss

  @property
  def step(self) -> jax.Array:
    return get_step(self.opt_state)

  @property
  def eval_params(self) -> Any:
    """What evaluation uses: the EMA weights when kept."""
    return self.params if self.ema_params is None else self.ema_params


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
  return images[:, None] if model.modality == "video" else images


def _frames(x: jax.Array) -> jax.Array:
  """[B, T, H, W, C] or [B, H, W, C] -> [N, H, W, C] (per-frame metrics)."""
  return x.reshape((-1,) + x.shape[-3:])


def _layer_gradient(grads: Any, pattern: str) -> jax.Array:
  """The gradient leaves whose paths match `pattern`, flattened into one vector."""
  regex = re.compile(pattern)
  picked = []
  map_with_path(lambda path, g: picked.append(g.ravel()) if regex.search(path) else None, grads)
  return jnp.concatenate(picked)


def check_adaptive_layer(params: Any, pattern: str) -> None:
  """Fails at start when config.gan.adaptive_layer matches no parameter."""
  regex = re.compile(pattern)
  paths = []
  map_with_path(lambda path, _: paths.append(path), params)
  if not any(regex.search(p) for p in paths):
    raise ValueError(f"config.gan.adaptive_layer={pattern!r} matches no parameter; "
                     f"the decoder's last layers are e.g. {[p for p in paths if 'decoder' in p][-3:]}")


def _time_advanced(old: Any, new: Any) -> Any:
  """The optimizer state of a discarded update: the counters that measure time (the global
  step, the curriculum gate's step, inject_hyperparams' count and hyperparameters) take
  their new values, so schedules stay on the step; everything learned (Adam's moments and
  count) keeps its old value."""
  time_nodes = (StepCountState, optax.InjectStatefulHyperparamsState)

  def pick(o, n):
    if isinstance(o, StepCountState):
      return n
    if isinstance(o, optax.InjectStatefulHyperparamsState):
      return n._replace(inner_state=o.inner_state)
    return o

  return jax.tree.map(pick, old, new, is_leaf=lambda x: isinstance(x, time_nodes))


def discard_unless_finite(finite: jax.Array, old: TrainState, new: TrainState) -> TrainState:
  """`new` when `finite`, else `old` with only its step counters advanced: a non-finite
  step never reaches the parameters, moments, EMA or discriminator."""
  kept = old.replace(opt_state=_time_advanced(old.opt_state, new.opt_state))
  if old.disc is not None:
    kept = kept.replace(disc=old.disc.replace(
        opt_state=_time_advanced(old.disc.opt_state, new.disc.opt_state)))
  return jax.tree.map(lambda n, k: jnp.where(finite, n, k), new, kept)


def ema_update(ema_params: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """The EMA of the weights after this step (None when not kept); the decay warms up as
  min(decay, (1 + step) / (10 + step))."""
  if ema_params is None:
    return None
  rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


def grad_norms_by_group(grads: Any, groups: tuple[tuple[str, str], ...]) -> dict[str, jax.Array]:
  """Global gradient norm of each parameter group (names a non-finite group)."""
  if not groups:
    return {}
  labels = jax.tree.leaves(param_group_labels(grads, groups))
  squares: dict[str, list[jax.Array]] = {}
  for label, g in zip(labels, jax.tree.leaves(grads)):
    squares.setdefault(label, []).append(jnp.sum(jnp.square(g.astype(jnp.float32))))
  return {f"grad_norm_{name}": jnp.sqrt(sum(parts)) for name, parts in squares.items()}


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation,
                 image_shape: tuple[int, ...], *, ema: bool = False,
                 discriminator: nn.Module | None = None,
                 disc_tx: optax.GradientTransformation | None = None
                 ) -> Callable[[jax.Array], TrainState]:
  """rng -> TrainState with Linen-boxed (logically annotated) leaves.

  Evaluate it under `jax.eval_shape` for the abstract state and its shardings,
  and under `jax.jit(..., out_shardings=...)` (unboxed) to materialise it sharded.
  """

  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng, disc_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    params = model.init(init_rng, dummy)["params"]
    disc = None
    if discriminator is not None:
      disc_params = discriminator.init(disc_rng, dummy)["params"]
      disc = DiscriminatorState(params=disc_params, opt_state=disc_tx.init(disc_params),
                                logit_ema=jnp.zeros([2], jnp.float32))
    return TrainState(params=params, opt_state=tx.init(params), rng=state_rng,
                      ema_params=params if ema else None, disc=disc)

  return init


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    learning_rate: Schedule, loss_weights: Mapping[str, Schedule],
                    quantizer_mix: Schedule, quantizer_train: bool = True,
                    perceptual: LPIPS | None = None,
                    discriminator: nn.Module | None = None,
                    disc_tx: optax.GradientTransformation | None = None,
                    gan: GanOptions = GanOptions(), ema_decay: float = 0.0,
                    param_groups: tuple[tuple[str, str], ...] = (),
                    inject_nan_at_step: int = -1,
                    teacher: nn.Module | None = None, low_pass_block: int = 8,
                    ) -> Callable[[TrainState, dict, dict], tuple[TrainState, dict]]:
  """Returns train_step(state, batch, frozen) -> (state, metrics); batch["image"] or
  batch["video"] is uint8, frozen = {"perceptual": LPIPS params} when `perceptual` is given.

  `quantizer_train=False` runs the quantizer as in evaluation (no GCN dropout): for
  stages in which the codebook is frozen. `perceptual` / `discriminator` / `teacher` add
  the "perceptual" / "adversarial" / "alignment" terms (weights from `loss_weights`; the
  frozen teacher's parameters in frozen["teacher"], its patch features the target of the
  model's aux["aligned"], paired as the model's `align_mode` says); a state with a
  discriminator but a step without one (a stage with no adversarial term) keeps the
  discriminator's step count in line with a zero, inactive update.

  "low_pass" is the error of the `low_pass_block`-pixel block means (the coarse colour),
  "mean_color" that of each frame's mean colour; both are computed always (diagnostics),
  weighted as `loss_weights` says.

  A step with a non-finite loss term or gradient is discarded (`discard_unless_finite`);
  its metrics say so ("nonfinite" = 1, the terms and per-group gradient norms
  `grad_norm_<group>` of `param_groups` show which). `inject_nan_at_step` >= 0 turns
  that step's input into NaN (a test switch).
  """
  index_groups = model.index_groups()

  def train_step(state: TrainState, batch: dict[str, jax.Array], frozen: dict[str, Any]):
    step = state.step
    rng = jax.random.fold_in(state.rng, step)
    dropout_rng, frame_rng = jax.random.split(rng)
    images = model_input(model, batch)
    if inject_nan_at_step >= 0:
      images = jnp.where(step == inject_nan_at_step, jnp.nan, images)
    weights = {name: jnp.asarray(fn(step), jnp.float32) for name, fn in loss_weights.items()}
    mix = quantizer_mix(step)
    if teacher is not None:
      teacher_tokens = teacher_features(teacher, frozen["teacher"], images)

    def loss_terms(params):
      recon, aux = model.apply({"params": params}, images, mix, quantizer_train,
                               rngs={"dropout": dropout_rng})
      terms = {
          "recon": reconstruction_loss(recon, images),
          "low_pass": low_pass_loss(recon, images, low_pass_block),
          "mean_color": mean_color_loss(recon, images),
          "commitment": aux["commitment_loss"],
          "codebook": aux["codebook_loss"],
          "entropy": aux["entropy_loss"],
      }
      if perceptual is not None:
        terms["perceptual"] = perceptual_loss(perceptual, frozen["perceptual"], frame_rng,
                                              recon, images)
      if discriminator is not None:
        fake_logits = discriminator.apply({"params": state.disc.params}, recon)
        terms["adversarial"] = gan_loss.generator_adversarial_loss(fake_logits)
      if teacher is not None:
        terms["alignment"] = alignment_loss(aux["aligned"], teacher_tokens, model.align_mode)
      return terms, (recon, aux["indices"])

    terms, backward, (recon, indices) = jax.vjp(loss_terms, state.params, has_aux=True)
    adaptive = discriminator is not None and gan.adaptive_weight
    cotangent = {k: (jnp.zeros_like(weights[k]) if adaptive and k == "adversarial" else weights[k])
                 for k in terms}
    (grads,) = backward(cotangent)
    effective = dict(cotangent)
    metrics = {}
    if adaptive:  # a second backward pass through the same forward, for the GAN term alone
      (adv_grads,) = backward({k: jnp.asarray(k == "adversarial", jnp.float32) for k in terms})
      scale = gan_loss.adaptive_generator_weight(_layer_gradient(grads, gan.adaptive_layer),
                                               _layer_gradient(adv_grads, gan.adaptive_layer),
                                               gan.adaptive_max)
      effective["adversarial"] = weights["adversarial"] * scale
      grads = jax.tree.map(lambda g, a: g + effective["adversarial"] * a, grads, adv_grads)
      metrics["adaptive_weight"] = scale
    loss = sum(effective[k] * v for k, v in terms.items())
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    ema_params = ema_update(state.ema_params, params, step, ema_decay)

    disc = state.disc
    if disc is not None:
      disc, disc_metrics = gan_loss.discriminator_update(
          discriminator, disc_tx, gan, disc, images, jax.lax.stop_gradient(recon),
          playing=weights.get("adversarial", 0.0) > 0)
      metrics.update(disc_metrics)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for name in ("disc_loss", "disc_grad_norm"):
      if name in metrics:
        finite &= jnp.isfinite(metrics[name])
    metrics.update({
        "loss": loss,
        "nonfinite": 1.0 - finite.astype(jnp.float32),
        **{f"loss_{name}": value for name, value in terms.items()},
        "psnr": jnp.mean(psnr(_frames(model_to_unit(recon)), _frames(model_to_unit(images)))),
        "grad_norm": grad_norm,
        **grad_norms_by_group(grads, param_groups),
        "param_norm": optax.tree.norm(params),
        "learning_rate": learning_rate(step),
        "quantizer_mix": mix,
        **{f"weight_{k}": v for k, v in weights.items() if k in ("perceptual", "adversarial")},
        **codebook_stats_by_group(indices, index_groups),
        **group_hyperparams(opt_state),
    })
    new_state = TrainState(params=params, opt_state=opt_state, rng=state.rng,
                           ema_params=ema_params, disc=disc)
    return discard_unless_finite(finite, state, new_state), metrics

  return train_step


def make_eval_step(model: nn.Module, perceptual: LPIPS | None = None,
                   i3d: nn.Module | None = None, inception: nn.Module | None = None,
                   real_features: bool = True) -> Callable[[Any, dict, dict], dict]:
  """eval_step(params, batch, frozen) -> reconstructions in [0,1], PSNR/SSIM per image
  ([B]) or, for clips, per frame ([B, T]), and the token indices. Optional frozen networks
  add, for reconstructions ("_fake") and, with `real_features`, originals ("_real"; off
  when cached reference statistics stand in for them):
    perceptual (frozen["lpips"])   LPIPS (same shape as PSNR) and pooled VGG16 relu5_3
                                   features `vgg_*` ([B, 512], per frame [B, T, 512]): FD-VGG
    i3d (frozen["i3d"], clips)     I3D Kinetics-400 logits `i3d_*` ([B, 400]): rFVD
    inception (frozen["inception"], images)  pool3 features `inception_*` ([B, 2048]): rFID
  """

  def eval_step(params, batch, frozen):
    inputs = model_input(model, batch)
    recon, aux = model.apply({"params": params}, inputs)
    recon, target = model_to_unit(recon), model_to_unit(inputs)
    if "video" in batch:
      frame_psnr, frame_ssim = per_frame_metrics(recon, target)
    else:
      frame_psnr, frame_ssim = psnr(recon, target), ssim(recon, target)
    out = {"recon": recon, "psnr": frame_psnr, "ssim": frame_ssim, "indices": aux["indices"]}
    sides = (("real", target), ("fake", recon)) if real_features else (("fake", recon),)
    if perceptual is not None:
      lead = recon.shape[:-3]
      lpips_params = {"params": frozen["lpips"]}
      out["lpips"] = perceptual.apply(lpips_params, _frames(recon) * 2 - 1,
                                      _frames(target) * 2 - 1).reshape(lead)
      for side, x in sides:
        taps = perceptual.apply(lpips_params, _frames(x) * 2 - 1, method=LPIPS.trunk_features)
        out[f"vgg_{side}"] = pooled_vgg_features(taps).reshape(lead + (-1,))
    if i3d is not None and "video" in batch:
      for side, x in sides:
        out[f"i3d_{side}"] = i3d.apply(frozen["i3d"], fvd_preprocess(x))
    if inception is not None and "video" not in batch:
      for side, x in sides:
        out[f"inception_{side}"] = inception.apply(frozen["inception"], x)
    return out

  return eval_step
