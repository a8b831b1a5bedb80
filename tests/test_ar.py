"""The autoregressive transformer (models/ar.py, nn/llama.py) and its sampler
(sampling/ar.py): causality, the KV cache against full recomputation, the filters,
label dropout, vocabulary ranges, logical axis names and a sharded forward pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from configs.common import SHARDING_RULES
from sweet_jax import parallel
from sweet_jax.models.ar import ARTransformer
from sweet_jax.nn.llama import llama_mlp_hidden
from sweet_jax.sampling.ar import sample, top_k_filter, top_p_filter

VOCAB, CLASSES, LENGTH = 50, 5, 12
MODEL = ARTransformer(vocab_size=VOCAB, num_classes=CLASSES, seq_len=LENGTH, width=32, depth=2,
                      num_heads=4, mlp_multiple_of=32, num_class_tokens=2, class_dropout=0.1)
BATCH = 4


def random_tokens(seed: int, batch: int = BATCH) -> jax.Array:
  return jax.random.randint(jax.random.key(seed), (batch, LENGTH), 0, VOCAB, jnp.int32)


@pytest.fixture(scope="module")
def boxed_params():
  return MODEL.init(jax.random.key(0), random_tokens(0), jnp.zeros((BATCH,), jnp.int32))["params"]


@pytest.fixture(scope="module")
def params(boxed_params):
  return parallel.strip_boxes(boxed_params)


@pytest.fixture(scope="module")
def sharp_params(params):
  """At initialisation (std 0.02) the next-token distributions are nearly uniform, so a
  sampler would draw the same tokens from slightly wrong logits: sharpen them (logits of
  std ~2) and make the class matter, so that guidance changes the distribution."""
  return {**params, "head_kernel": params["head_kernel"] * 20.0,
          "class_embedding": params["class_embedding"] * 20.0}


@pytest.fixture(scope="module")
def forward(params):
  return jax.jit(lambda tokens, labels: MODEL.apply({"params": params}, tokens, labels))


LABELS = jnp.array([0, 1, 3, 4], jnp.int32)


def test_default_mlp_hidden_is_llamagens():
  assert llama_mlp_hidden(768) == 2048  # GPT-B
  assert llama_mlp_hidden(1024) == 2816  # GPT-L
  assert llama_mlp_hidden(1280) == 3584  # GPT-XL
  assert ARTransformer(vocab_size=8, num_classes=0, seq_len=4, width=1024).hidden_dim == 2816
  assert ARTransformer(vocab_size=8, num_classes=0, seq_len=4, width=32,
                       mlp_multiple_of=32).hidden_dim == 96


def test_logits_are_causal(forward):
  tokens = random_tokens(1)
  logits = forward(tokens, LABELS)
  assert logits.shape == (BATCH, LENGTH, VOCAB) and logits.dtype == jnp.float32
  t = 5
  changed = tokens.at[:, t:].set((tokens[:, t:] + 7) % VOCAB)
  other = forward(changed, LABELS)
  # Token t is predicted from tokens < t: positions <= t do not see the change.
  np.testing.assert_array_equal(logits[:, :t + 1], other[:, :t + 1])
  assert not np.allclose(logits[:, t + 1:], other[:, t + 1:])


def test_cached_decode_matches_full_forward(params, forward):
  tokens = random_tokens(2)
  full = forward(tokens, LABELS)
  variables = {"params": params}
  logits, cache = jax.jit(functools.partial(MODEL.apply, method=ARTransformer.prefill))(
      variables, LABELS)
  np.testing.assert_allclose(logits, full[:, 0], atol=1e-5)
  decode = jax.jit(functools.partial(MODEL.apply, method=ARTransformer.decode_step))
  for i in range(LENGTH - 1):
    logits, cache = decode(variables, tokens[:, i], jnp.int32(i), cache)
    np.testing.assert_allclose(logits, full[:, i + 1], atol=1e-5, err_msg=f"token {i + 1}")
  # A prompt of given tokens is prefilled in one go.
  prompt_logits, _ = MODEL.apply(variables, LABELS, tokens[:, :4], method=ARTransformer.prefill)
  np.testing.assert_allclose(prompt_logits, full[:, 4], atol=1e-5)


SAMPLERS = {
    "greedy": dict(temperature=0.0),
    "top_k_top_p": dict(temperature=1.0, top_k=10, top_p=0.9),
    "guided": dict(temperature=1.0, top_k=20, top_p=0.95, cfg_scale=3.0),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cached_sampling_matches_recomputation(sharp_params, name):
  settings = SAMPLERS[name]
  rng = jax.random.key(7)
  run = lambda use_cache: jax.jit(functools.partial(
      sample, MODEL, **settings, use_cache=use_cache))(sharp_params, LABELS, rng)
  cached, recomputed = run(True), run(False)
  assert cached.shape == (BATCH, LENGTH) and cached.dtype == jnp.int32
  np.testing.assert_array_equal(cached, recomputed)
  if name != "greedy":  # the draw depends on the rng
    other = jax.jit(functools.partial(sample, MODEL, **settings))(sharp_params, LABELS,
                                                                 jax.random.key(8))
    assert not np.array_equal(cached, other)


def test_sampled_tokens_stay_in_allowed_ranges(sharp_params):
  starts = np.array([0, 10, 20, 30] * 3)
  ranges = np.stack([starts, starts + 10], axis=1)
  tokens = jax.jit(functools.partial(sample, MODEL, temperature=1.5, cfg_scale=2.0,
                                     allowed_ranges=ranges))(sharp_params, LABELS, jax.random.key(3))
  assert np.all((tokens >= ranges[:, 0]) & (tokens < ranges[:, 1]))


def test_top_k_and_top_p_keep_the_right_tokens():
  probs = np.array([0.15, 0.05, 0.5, 0.1, 0.2])  # ranked: 2, 4, 0, 3, 1
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
  kept = lambda filtered: set(np.flatnonzero(np.isfinite(np.asarray(filtered[0]))))
  assert kept(top_k_filter(logits, 1)) == {2}
  assert kept(top_k_filter(logits, 3)) == {2, 4, 0}
  assert kept(top_k_filter(logits, 0)) == set(range(5))
  assert kept(top_p_filter(logits, 0.4)) == {2}
  assert kept(top_p_filter(logits, 0.6)) == {2, 4}
  assert kept(top_p_filter(logits, 0.8)) == {2, 4, 0}
  assert kept(top_p_filter(logits, 0.9)) == {2, 4, 0, 3}
  assert kept(top_p_filter(logits, 1.0)) == set(range(5))
  # top-p after top-k renormalises: {2: 5/7, 4: 2/7}.
  assert kept(top_p_filter(top_k_filter(logits, 2), 0.7)) == {2}
  assert kept(top_p_filter(top_k_filter(logits, 2), 0.75)) == {2, 4}


def test_label_dropout_gives_the_null_class(params):
  tokens = random_tokens(4)
  variables = {"params": params}
  null = jnp.full_like(LABELS, CLASSES)
  always = MODEL.clone(class_dropout=1.0)
  dropped = always.apply(variables, tokens, LABELS, train=True,
                         rngs={"dropout": jax.random.key(0)})
  np.testing.assert_allclose(dropped, MODEL.apply(variables, tokens, null), atol=1e-6)
  kept = always.apply(variables, tokens, LABELS)
  np.testing.assert_allclose(kept, MODEL.apply(variables, tokens, LABELS), atol=1e-6)
  assert not np.allclose(kept, dropped)


def test_remat_computes_the_same_logits_and_gradients(params):
  tokens = random_tokens(5)

  def loss(model, params):
    return jnp.mean(model.apply({"params": params}, tokens, LABELS) ** 2)

  plain = jax.value_and_grad(functools.partial(loss, MODEL))(params)
  rematted = jax.value_and_grad(functools.partial(loss, MODEL.clone(remat="full")))(params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               plain, rematted)


def test_parameters_are_named_and_sharded_forward_matches(boxed_params, forward):
  leaves = jax.tree.leaves(boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), f"an unnamed parameter {leaf.shape}"
    assert len(leaf.names) == leaf.value.ndim
  specs = jax.tree.leaves(nn.get_partition_spec(boxed_params))
  # Only the class table's class and class-token axes are left unnamed.
  unnamed = sorted(sum(name is None for name in spec) for spec in specs)
  assert unnamed == [0] * (len(specs) - 1) + [2]

  mesh = parallel.make_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  rules = SHARDING_RULES
  shardings = parallel.logical_to_sharding(boxed_params, mesh, rules)
  params = jax.device_put(parallel.strip_boxes(boxed_params), shardings)
  assert params["block_0"]["attn"]["query_kernel"].sharding.spec == P("fsdp", "model", None)
  tokens, labels = random_tokens(6, batch=8), jnp.arange(8, dtype=jnp.int32) % (CLASSES + 1)
  batch = parallel.batch_sharding(mesh, rules)
  with parallel.run_context(mesh, rules):
    sharded = jax.jit(lambda p, t, y: MODEL.apply({"params": p}, t, y))(
        params, jax.device_put(tokens, batch), jax.device_put(labels, batch))
  np.testing.assert_allclose(sharded, forward(tokens, labels), atol=1e-5)


def test_bfloat16_compute_keeps_float32_logits(params, forward):
  tokens = random_tokens(9)
  model = MODEL.clone(compute_dtype="bfloat16")
  variables = {"params": params}
  logits = model.apply(variables, tokens, LABELS)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, forward(tokens, LABELS), atol=5e-3)
  first, cache = model.apply(variables, LABELS, method=ARTransformer.prefill)
  assert cache[0].key.dtype == jnp.bfloat16
  np.testing.assert_allclose(first, logits[:, 0], atol=5e-3)


@pytest.mark.parametrize("remat", ["none", "full", "dots_no_batch"])
def test_query_chunked_attention_computes_the_same_logits_and_gradients(params, remat):
  # 13 positions in chunks of 5: three chunks, the last one padded by two queries.
  tokens = random_tokens(10)

  def loss(model, params):
    return jnp.mean(model.apply({"params": params}, tokens, LABELS) ** 2)

  plain = jax.value_and_grad(functools.partial(loss, MODEL.clone(attention_chunk=0)))(params)
  chunked_model = MODEL.clone(attention_chunk=5, remat=remat)
  chunked = jax.jit(jax.value_and_grad(functools.partial(loss, chunked_model)))(params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               plain, chunked)


def test_query_chunked_prefill_matches_full_forward(params, forward):
  # A prompt longer than a chunk goes through the cache path in chunks.
  model = MODEL.clone(attention_chunk=4)
  tokens = random_tokens(11)
  full = forward(tokens, LABELS)
  variables = {"params": params}
  logits, cache = model.apply(variables, LABELS, tokens[:, :7], method=ARTransformer.prefill)
  np.testing.assert_allclose(logits, full[:, 7], atol=1e-5)
  logits, _ = model.apply(variables, tokens[:, 7], jnp.int32(7), cache,
                          method=ARTransformer.decode_step)
  np.testing.assert_allclose(logits, full[:, 8], atol=1e-5)
