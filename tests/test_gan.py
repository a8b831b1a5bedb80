"""Perceptual and adversarial training, the discriminators, their losses, and the EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sweet_image
from sweet_jax.losses import gan as losses
from sweet_jax.nets.lpips import LPIPS
from sweet_jax.models.discriminator import PatchDiscriminator
from sweet_jax.optim import get_step
from sweet_jax.step import model_input
from sweet_jax import experiment


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_patch_discriminators_give_patch_logits_for_images_and_clips(norm):
  rng = jax.random.key(0)
  image_d = PatchDiscriminator(width=8, depth=3, norm=norm, spatial_dims=2)
  images = jnp.zeros((2, 64, 64, 3))
  logits = image_d.apply(image_d.init(rng, images), images)
  assert logits.shape == (2, 6, 6, 1)  # taming's 70x70-style PatchGAN on 64x64
  clip_d = PatchDiscriminator(width=8, depth=3, norm=norm, spatial_dims=3)
  for frames, out_frames in ((17, 3), (1, 1)):  # a 17-frame clip; an image stage's 1-frame clip
    clips = jnp.zeros((2, frames, 32, 32, 3))
    assert clip_d.apply(clip_d.init(rng, clips), clips).shape == (2, out_frames, 2, 2, 1)
  with pytest.raises(ValueError, match="3-D discriminator takes 5-D inputs"):
    clip_d.init(rng, images)


def test_batch_norm_discriminator_is_the_same_on_a_sharded_batch():
  """The discriminator's batch statistics are over the global batch (SyncBatchNorm)."""
  d = PatchDiscriminator(width=8, depth=2, norm="batch")
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  variables = d.init(jax.random.key(0), x)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("data")))
  np.testing.assert_allclose(jax.jit(d.apply)(variables, sharded), d.apply(variables, x),
                             atol=1e-5)


def test_gan_losses_match_numpy_references():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(4, 6, 6, 1)), rng.normal(size=(4, 6, 6, 1))
  expected = 0.5 * (np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)))
  np.testing.assert_allclose(losses.hinge_discriminator_loss(real, fake), expected, rtol=1e-6)
  np.testing.assert_allclose(losses.generator_adversarial_loss(fake), -fake.mean(), rtol=1e-6)
  ema_real, ema_fake = 0.3, -0.2
  expected = (np.mean(np.maximum(0, real - ema_fake) ** 2)
              + np.mean(np.maximum(0, ema_real - fake) ** 2))
  np.testing.assert_allclose(losses.lecam_regularization(real, fake, ema_real, ema_fake),
                             expected, rtol=1e-6)
  g_nll, g_adv = rng.normal(size=10), rng.normal(size=10) * 1e-3
  np.testing.assert_allclose(losses.adaptive_generator_weight(g_nll, g_adv),
                             np.linalg.norm(g_nll) / (np.linalg.norm(g_adv) + 1e-4), rtol=1e-5)
  assert losses.adaptive_generator_weight(g_nll, 0 * g_adv, max_weight=7.0) == 7.0


def _gan_config(data_dir, **gan):
  config = sweet_image.get_config("runlocal,vq")  # deterministic quantizer (no dropout)
  with config.unlocked():
    config.data.data_dir = data_dir
    config.loss.perceptual = 1.0
    config.loss.adversarial = 0.5
    config.ema.decay = 0.9
    config.eval.lpips = False
    config.gan.width = 8
    config.gan.depth = 2
    config.gan.update(gan)
  return config


@pytest.mark.expensive
def test_gan_step_updates_generator_discriminator_and_ema(embedded_data_dir):
  config = _gan_config(embedded_data_dir, start_step=1, adaptive_weight=True, lecam_weight=0.1)
  with config.unlocked():
    config.batch_size = 4
  c = experiment.build(config, devices=jax.devices()[:1])  # one device compiles faster
  batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)}
  batch = jax.device_put(batch, c.batch_sharding)
  state0 = jax.device_get(c.init_state())

  # Step 0 is before the GAN start: no adversarial weight, the discriminator stays put
  # (its moments and LeCam averages too) while its step count advances.
  state1, m0 = c.train_step(jax.device_put(state0, c.state_sharding), batch)
  state1 = jax.device_get(state1)
  assert float(m0["weight_adversarial"]) == 0.0 and float(m0["active_discriminator"]) == 0.0
  for a, b in zip(jax.tree.leaves(state0.disc.params), jax.tree.leaves(state1.disc.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(state1.disc.logit_ema, 0.0)
  assert int(get_step(state1.disc.opt_state)) == int(state1.step) == 1
  # EMA: decay min(0.9, (1 + 0) / (10 + 0)) = 0.1 at step 0.
  for e0, p1, e1 in zip(jax.tree.leaves(state0.ema_params), jax.tree.leaves(state1.params),
                        jax.tree.leaves(state1.ema_params)):
    np.testing.assert_allclose(e1, 0.1 * e0 + 0.9 * p1, rtol=1e-5, atol=1e-7)

  # Step 1: the game is on. The adaptive weight is |grad nll| / |grad adv| at the decoder's
  # last layer, recomputed here from the same forward pass.
  state2, m1 = c.train_step(jax.device_put(state1, c.state_sharding), batch)
  state2 = jax.device_get(state2)
  assert float(m1["weight_adversarial"]) == 0.5 and float(m1["active_discriminator"]) == 1.0
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state1.disc.params),
                                                   jax.tree.leaves(state2.disc.params))]
  assert all(moved)
  assert np.all(state2.disc.logit_ema != 0.0)

  images = model_input(c.model, batch)
  weights = dict(recon=1.0, commitment=0.25, codebook=1.0, entropy=0.01, perceptual=1.0)
  lpips = LPIPS("vgg16")

  def nll(params):
    recon, aux = c.model.apply({"params": params}, images, 1.0, True)
    terms = dict(recon=jnp.mean(jnp.square(recon - images)), commitment=aux["commitment_loss"],
                 codebook=aux["codebook_loss"], entropy=aux["entropy_loss"],
                 perceptual=jnp.mean(lpips.apply({"params": c.frozen["perceptual"]}, recon, images)))
    return sum(weights[k] * v for k, v in terms.items())

  def adversarial(params):
    recon, _ = c.model.apply({"params": params}, images, 1.0, True)
    d = PatchDiscriminator(width=8, depth=2)
    return losses.generator_adversarial_loss(d.apply({"params": state1.disc.params}, recon))

  last = lambda g: np.concatenate([np.ravel(x) for x in
                                   jax.tree.leaves(g["decoder"]["smooth_pixels"])])
  g_nll, g_adv = (last(jax.jit(jax.grad(f))(state1.params)) for f in (nll, adversarial))
  expected = np.linalg.norm(g_nll) / (np.linalg.norm(g_adv) + 1e-4)
  np.testing.assert_allclose(float(m1["adaptive_weight"]), expected, rtol=2e-3)


def test_gan_needs_a_real_adaptive_layer_and_discriminator(embedded_data_dir):
  config = _gan_config(embedded_data_dir, adaptive_weight=True, adaptive_layer="^nowhere/")
  with pytest.raises(ValueError, match="config.gan.adaptive_layer='\\^nowhere/' matches no"):
    experiment.build(config)
  config = _gan_config(embedded_data_dir, discriminator="stylegan")
  with pytest.raises(ValueError, match="config.gan.discriminator='stylegan'"):
    experiment.build(config)


@pytest.mark.parametrize("frames,stride", [(17, 2), (9, 1), (1, 2), (2, 2)])
def test_temporal_tap_conv_is_the_3d_convolution(frames, stride):
  """Same parameters, same initial values and same outputs and gradients as nn.Conv 3-D."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from sweet_jax.models.discriminator import TemporalTapConv  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, frames, 12, 12, 5))
  taps = TemporalTapConv(7, (3, 4, 4), stride, use_bias=True)
  conv = nn.Conv(7, (3, 4, 4), strides=stride, padding=[(1, 1)] * 3,
                 kernel_init=nn.initializers.normal(0.02))
  params = nn.unbox(taps.init(jax.random.key(1), x))
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, conv.init(jax.random.key(1), x))
  np.testing.assert_array_equal(params["params"]["kernel"],
                                conv.init(jax.random.key(1), x)["params"]["kernel"])
  params["params"]["bias"] = jax.random.normal(jax.random.key(2), (7,))
  np.testing.assert_allclose(taps.apply(params, x), conv.apply(params, x), atol=1e-5)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  for a, b in zip(jax.tree.leaves(jax.grad(loss(taps), argnums=(0, 1))(params, x)),
                  jax.tree.leaves(jax.grad(loss(conv), argnums=(0, 1))(params, x))):
    np.testing.assert_allclose(a, b, atol=1e-4)
