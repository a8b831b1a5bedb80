"""MaskGIT generator (models/maskgit.py) and its decoding (sampling/maskgit.py): mask
schedules and training masks, the masked loss, the decoding loop's invariants, guidance
against a hand computation, a memorised sequence decoded end to end, label dropout,
logical names and a sharded forward."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from configs.common import SHARDING_RULES
from sweet_jax import parallel
from sweet_jax.models.maskgit import (MaskGITTransformer, arccos_schedule, cosine_schedule,
                                      mask_tokens, masked_cross_entropy, smoothed_cross_entropy)
from sweet_jax.sampling.maskgit import guidance_scales, guided_logits, masked_counts, sample

K, L, C = 20, 16, 5  # codebook, sequence length, classes
MODEL = MaskGITTransformer(codebook_size=K, seq_len=L, num_classes=C, width=32, depth=2,
                           num_heads=2, dropout=0.0, class_dropout=0.1)
RULES = tuple(SHARDING_RULES) + (("vocab", None),)


@functools.lru_cache(maxsize=None)
def _sampler(model, **options):
  """One jitted sampler per set of static options (the tests share compilations)."""
  return jax.jit(functools.partial(sample, model, **options))


@pytest.fixture(scope="module")
def variables():
  tokens = jnp.full((2, L), K, jnp.int32)
  return jax.jit(MODEL.init)(jax.random.key(0), tokens, jnp.zeros((2,), jnp.int32))


@pytest.fixture(scope="module")
def params(variables):
  return nn.unbox(variables)


def test_mask_schedules():
  for schedule in (cosine_schedule, arccos_schedule):
    assert schedule(0.0) == pytest.approx(1.0) and schedule(1.0) == pytest.approx(0.0, abs=1e-7)
    values = np.asarray(schedule(jnp.linspace(0.0, 1.0, 101)))
    assert np.all(np.diff(values) < 0)
    np.testing.assert_allclose(values, schedule(np.linspace(0.0, 1.0, 101)), atol=1e-6)
  assert cosine_schedule(0.5) == pytest.approx(math.cos(math.pi / 4))
  assert arccos_schedule(0.5) == pytest.approx(2 / 3)  # acos(1/2) = pi/3
  # Tokens left masked after each of 8 steps at L=16 (official floor(L * schedule)).
  assert masked_counts(16, 8).tolist() == [14, 13, 12, 10, 9, 7, 5, 0]
  assert masked_counts(16, 8, "cosine").tolist() == [15, 14, 13, 11, 8, 6, 3, 0]
  with pytest.raises(ValueError, match="mask schedule"):
    masked_counts(16, 8, "linear")


@pytest.mark.parametrize("schedule", ["arccos", "cosine"])
def test_mask_tokens_follows_the_schedule(schedule):
  timesteps = jnp.array([0.0, 0.1, 0.3, 0.5, 0.77, 0.9, 0.999, 1.0])
  tokens = jax.random.randint(jax.random.key(1), (8, L), 0, K)
  masked, mask = mask_tokens(tokens, jax.random.key(2), K, schedule=schedule,
                             timesteps=timesteps)
  gamma = {"arccos": lambda t: math.acos(t) / (math.pi / 2),
           "cosine": lambda t: math.cos(math.pi / 2 * t)}[schedule]
  # TiTok: max(1, round(L * clip(gamma(t), 1e-6, 1))), numpy's round is half-to-even as torch.
  expected = [max(1, int(np.round(L * min(max(gamma(float(t)), 1e-6), 1.0)))) for t in timesteps]
  assert np.asarray(mask.sum(-1)).tolist() == expected
  assert expected[0] == L and expected[-1] == 1
  np.testing.assert_array_equal(np.asarray(masked)[np.asarray(mask)], K)
  np.testing.assert_array_equal(np.asarray(masked)[~np.asarray(mask)],
                                np.asarray(tokens)[~np.asarray(mask)])
  # Drawn times: counts in [1, L], positions differ between rows and between keys.
  _, drawn = mask_tokens(jnp.zeros((64, L), jnp.int32), jax.random.key(3), K, schedule=schedule)
  counts = np.asarray(drawn.sum(-1))
  assert counts.min() >= 1 and counts.max() <= L and len(set(counts.tolist())) > 4
  _, other = mask_tokens(jnp.zeros((64, L), jnp.int32), jax.random.key(4), K, schedule=schedule)
  assert not np.array_equal(np.asarray(drawn), np.asarray(other))


def test_masked_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 5))
  mask = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], bool)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  eps = 0.1
  smoothed = np.eye(7)[targets] * (1 - eps) + eps / 7
  per_token = -(smoothed * log_probs).sum(-1)
  loss = masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), eps)
  assert float(loss) == pytest.approx(per_token[mask].mean(), rel=1e-5)
  # Unmasked positions do not count, whatever their logits (even infinite).
  changed = np.where(mask[..., None], logits, rng.normal(size=logits.shape) * 100)
  changed[0, 1, 0] = np.inf
  again = masked_cross_entropy(jnp.asarray(changed), jnp.asarray(targets), jnp.asarray(mask), eps)
  assert float(again) == pytest.approx(float(loss), rel=1e-6)
  # TiTok's weighting of unmasked tokens (its config: 0.1).
  weights = np.where(mask, 1.0, 0.1)
  weighted = masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask),
                                  eps, unmasked_weight=0.1)
  assert float(weighted) == pytest.approx((per_token * weights).sum() / weights.sum(), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_smoothed_cross_entropy_is_optax_without_a_one_hot(eps):
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(3, 4, 11)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, size=(3, 4)))

  def reference(logits):
    labels = optax.smooth_labels(jax.nn.one_hot(targets, 11), eps)
    return optax.softmax_cross_entropy(logits, labels)

  ours = lambda logits: smoothed_cross_entropy(logits, targets, eps)
  np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda z: ours(z).sum())(logits),
                             jax.grad(lambda z: reference(z).sum())(logits), atol=1e-6)
  # bfloat16 logits are scored in float32, as the reference on float32 logits.
  np.testing.assert_allclose(ours(logits.astype(jnp.bfloat16)),
                             reference(logits.astype(jnp.bfloat16).astype(jnp.float32)),
                             rtol=1e-6, atol=1e-6)


def test_decoding_loop_invariants(params):
  labels = jnp.array([0, 1, 2, 4])
  decode = _sampler(MODEL, num_steps=8, randomize_temperature=1.0, return_history=True)
  tokens, history = decode(params, labels, jax.random.key(5))
  tokens = np.asarray(tokens)
  assert tokens.shape == (4, L) and tokens.dtype == np.int32
  assert tokens.min() >= 0 and tokens.max() < K  # no mask id left
  counts = np.asarray(history["num_masked"])
  assert counts.shape == (9, 4)
  np.testing.assert_array_equal(counts, np.array([[16, 14, 13, 12, 10, 9, 7, 5, 0]] * 4).T)
  assert np.all(np.diff(counts, axis=0) < 0)
  # A code fixed at step k never changes afterwards.
  steps = np.asarray(history["tokens"])
  np.testing.assert_array_equal(steps[-1], tokens)
  for k in range(8):
    known = steps[k] != K
    for later in steps[k + 1:]:
      np.testing.assert_array_equal(later[known], steps[k][known])
  # Deterministic per key; another key gives other codes.
  again, _ = decode(params, labels, jax.random.key(5))
  np.testing.assert_array_equal(np.asarray(again), tokens)
  other, _ = decode(params, labels, jax.random.key(6))
  assert not np.array_equal(np.asarray(other), tokens)


def test_guidance_schedules():
  np.testing.assert_allclose(guidance_scales(4, 2.0, "constant"), [2.0] * 4)
  np.testing.assert_allclose(guidance_scales(4, 2.0, "linear"), [0.0, 0.5, 1.0, 1.5])
  power = guidance_scales(4, 3.0, "power-cosine", 2.0)
  hand = [(3.0 - 1) * (1 - math.cos((s / 4) ** 2 * math.pi)) / 2 + 1 for s in range(4)]
  np.testing.assert_allclose(power, hand)
  assert power[0] == 1.0  # first step: the conditional logits
  with pytest.raises(ValueError, match="guidance decay"):
    guidance_scales(4, 2.0, "cosine")
  c, u = jnp.array([1.0, 3.0]), jnp.array([2.0, 0.0])
  np.testing.assert_allclose(guided_logits(c, u, 2.0), [-1.0, 9.0])
  np.testing.assert_allclose(guided_logits(c, u, 2.0, "power-cosine"), [0.0, 6.0])
  np.testing.assert_allclose(guided_logits(c, u, 0.0, "power-cosine"), c)


def test_guided_one_step_decoding_equals_a_hand_computation(params):
  labels = jnp.array([0, 1, 2, 3])
  all_masked = jnp.full((4, L), K, jnp.int32)
  cond = MODEL.apply(params, all_masked, labels)
  uncond = MODEL.apply(params, all_masked, jnp.full((4,), MODEL.null_class))
  scale = 30.0
  # One step: ratio 1, temperature 0, so the codes are the argmax of the guided logits.
  hand = np.asarray(jnp.argmax(cond + (cond - uncond) * scale, axis=-1))
  guided = _sampler(MODEL, num_steps=1, guidance_scale=scale)(params, labels, jax.random.key(7))
  np.testing.assert_array_equal(np.asarray(guided), hand)
  plain = _sampler(MODEL, num_steps=1)(params, labels, jax.random.key(7))
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(jnp.argmax(cond, axis=-1)))
  assert not np.array_equal(np.asarray(plain), hand)


def test_memorised_sequence_is_decoded_exactly(params):
  """A few hundred Adam steps on one sequence (masking, label dropout and the masked loss
  of training), then the whole decoding loop at low temperature must return it."""
  pattern = jax.random.randint(jax.random.key(8), (L,), 0, K)
  targets = jnp.broadcast_to(pattern, (8, L))
  labels = jnp.full((8,), 3)
  optimizer = optax.adam(1e-2)

  def loss_fn(p, rng):
    mask_key, dropout_key = jax.random.split(rng)
    masked, mask = mask_tokens(targets, mask_key, MODEL.mask_id)
    logits = MODEL.apply(p, masked, labels, train=True, rngs={"dropout": dropout_key})
    return masked_cross_entropy(logits, targets, mask)

  @jax.jit
  def train(p, rng):
    def step(carry, key):
      p, opt = carry
      loss, grads = jax.value_and_grad(loss_fn)(p, key)
      updates, opt = optimizer.update(grads, opt, p)
      return (optax.apply_updates(p, updates), opt), loss
    (p, _), losses = jax.lax.scan(step, (p, optimizer.init(p)), jax.random.split(rng, 150))
    return p, losses

  trained, losses = train(params, jax.random.key(9))
  assert float(losses[-10:].mean()) < 0.05 < float(losses[0])
  decode = _sampler(MODEL, num_steps=8, randomize_temperature=0.1, return_history=True)
  tokens, _ = decode(trained, labels[:4], jax.random.key(10))
  np.testing.assert_array_equal(np.asarray(tokens), np.broadcast_to(pattern, (4, L)))


def test_label_dropout_and_null_class(params):
  tokens = jax.random.randint(jax.random.key(11), (3, L), 0, K + 1)
  labels = jnp.array([0, 2, 4])
  null = MODEL.apply(params, tokens, jnp.full((3,), MODEL.null_class))
  dropped = MODEL.clone(class_dropout=1.0).apply(params, tokens, labels, train=True,
                                                 rngs={"dropout": jax.random.key(12)})
  np.testing.assert_allclose(dropped, null, atol=1e-6)
  np.testing.assert_allclose(MODEL.apply(params, tokens, None), null, atol=1e-6)
  kept = MODEL.clone(class_dropout=0.0).apply(params, tokens, labels, train=True,
                                              rngs={"dropout": jax.random.key(12)})
  cond = MODEL.apply(params, tokens, labels)
  np.testing.assert_allclose(kept, cond, atol=1e-6)
  assert cond.shape == (3, L, K) and cond.dtype == jnp.float32
  assert not np.allclose(cond, null)
  with pytest.raises(ValueError, match="expected tokens"):
    MODEL.apply(params, tokens[:, :8], labels)


def test_every_parameter_has_logical_names(variables):
  boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxed and all(isinstance(x, nn.LogicallyPartitioned) for x in boxed)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["token_embed"]) == ("vocab", "embed")
  assert tuple(specs["pos_embed"]) == ("length", "embed")
  assert tuple(specs["head"]["kernel"]) == ("embed", "vocab")
  assert tuple(specs["head"]["bias"]) == ("vocab",)
  shapes = nn.unbox(variables)["params"]
  assert shapes["token_embed"].shape == (K + C + 2, 32) and shapes["pos_embed"].shape == (L + 1, 32)


def test_sharded_forward_equals_single_device(variables, params):
  mesh = parallel.make_mesh([("data", 2), ("fsdp", 2), ("model", 2)])
  shardings = parallel.logical_to_sharding(variables, mesh, RULES)
  sharded = jax.device_put(params, shardings)
  assert sharded["params"]["token_embed"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  tokens = jax.random.randint(jax.random.key(13), (4, L), 0, K + 1)
  labels = jnp.array([0, 1, 2, 5])
  batch = parallel.batch_sharding(mesh, RULES)
  with parallel.run_context(mesh, RULES):
    out = jax.jit(MODEL.apply)(sharded, jax.device_put(tokens, batch),
                               jax.device_put(labels, batch))
  single = jax.jit(MODEL.apply)(params, tokens, labels)
  np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-5)
