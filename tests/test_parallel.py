"""Sharding: mesh validation, parameters placed as the rules say, and a sharded
train step that computes what the single-device step computes."""

import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import sweet_image
from sweet_jax import parallel
from sweet_jax import experiment


def runlocal(mesh):
  config = sweet_image.get_config("runlocal")
  with config.unlocked():
    config.mesh = mesh
    config.optim.warmup_steps = 0
    # Adam's first update is lr * g / (|g| + eps): with eps=1e-8 the float
    # reassociation noise of a sharded reduction in a near-zero gradient is
    # amplified ~1e5x. A larger eps keeps the comparison about the computation.
    config.optim.eps = 1e-4
  return config


def test_mesh_fill_and_errors():
  assert parallel.mesh_shape([("data", -1), ("model", 2)], 8) == (("data", "model"), (4, 2))
  with pytest.raises(ValueError, match="has 6 devices but 8 are available"):
    parallel.mesh_shape([("data", 3), ("model", 2)], 8)
  with pytest.raises(ValueError, match="cannot be filled"):
    parallel.mesh_shape([("data", -1), ("model", 3)], 8)
  with pytest.raises(ValueError, match="at most one -1"):
    parallel.mesh_shape([("data", -1), ("model", -1)], 8)


def test_mesh_axes_are_auto():
  mesh = parallel.make_mesh([("data", 4), ("fsdp", 1), ("model", 2)])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def _run_steps(config, batches, devices=None):
  c = experiment.build(config, devices)
  with parallel.run_context(c.mesh, c.rules):
    state = c.init_state()
    metrics, params = [], []
    for batch in batches:
      state, m = c.train_step(state, parallel.to_global(batch, c.batch_sharding))
      metrics.append(jax.device_get(m))
      params.append(jax.device_get(state.params))
  return c, state, metrics, params


@pytest.fixture(scope="module")
def sharded_and_single():
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)} for _ in range(2)]
  single = _run_steps(runlocal([("data", 1), ("fsdp", 1), ("model", 1)]), batches,
                      jax.devices()[:1])
  sharded = _run_steps(runlocal([("data", 4), ("fsdp", 1), ("model", 2)]), batches)
  return single, sharded


def test_sharded_step_equals_single_device(sharded_and_single):
  (_, s1, m1, p1), (c2, s2, m2, p2) = sharded_and_single
  assert c2.mesh.devices.size == 8
  for step in range(2):
    for key in ("loss", "loss_recon", "grad_norm", "psnr"):
      np.testing.assert_allclose(m1[step][key], m2[step][key], rtol=1e-5, atol=1e-5)
  # One step: equal within 1e-5. After a second step the entropy term (a softmax at
  # temperature 0.01) has amplified float reassociation noise ~100x: 5e-5 there.
  for step, atol in ((0, 1e-5), (1, 5e-5)):
    for a, b in zip(jax.tree.leaves(p1[step]), jax.tree.leaves(p2[step])):
      np.testing.assert_allclose(a, b, atol=atol)
  assert int(s1.step) == int(s2.step) == 2


def test_parameters_are_sharded_as_the_rules_say(sharded_and_single):
  _, (c, state, _, _) = sharded_and_single
  block = state.params["encoder"]["block_0"]
  # ("mlp" -> model), ("heads" -> model), ("embed" -> fsdp of size 1).
  fc1 = block["mlp"]["fc1"]["kernel"]
  assert fc1.sharding.spec == P("fsdp", "model")
  assert fc1.addressable_shards[0].data.shape == (fc1.shape[0], fc1.shape[1] // 2)
  q = block["self_attn"]["query_kernel"]
  assert q.sharding.spec == P("fsdp", "model", None)
  assert q.addressable_shards[0].data.shape[1] == q.shape[1] // 2
  # Replicated where the rules say None: the language codebook's GCN ("code" -> None).
  gcn = state.params["quantizer"]["projection"]["gcn_0"]
  assert gcn["Dense_0"]["kernel"].sharding.spec == P(None, None)
  assert gcn["bias"].sharding.spec == P(None)
  # Adam moments follow their parameters.
  moments = {jax.tree_util.keystr(path): leaf for path, leaf
             in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]}
  fc1_mu = [v for k, v in moments.items()
            if ".mu" in k and "['encoder']['block_0']['mlp']['fc1']['kernel']" in k]
  assert len(fc1_mu) == 1 and fc1_mu[0].sharding.spec == P("fsdp", "model")


def test_fsdp_rules_shard_parameters_over_fsdp():
  config = runlocal([("data", 2), ("fsdp", 4), ("model", 1)])
  c = experiment.build(config)
  sharding = c.state_sharding.params["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert sharding.spec == P("fsdp", "model")
  assert parallel.data_parallel_size(c.mesh, c.rules) == 8


def test_steps_carry_the_activation_constraints_whoever_calls_them():
  """The planner, the benchmark and tests call the steps outside the trainer's mesh and
  rules context; they still compile its program, with the activation constraints (the
  planner once measured a program without them)."""
  c = experiment.build(runlocal([("data", 2), ("fsdp", 4), ("model", 1)]))
  batch = {"image": jax.ShapeDtypeStruct((8, 32, 32, 3), np.uint8, sharding=c.batch_sharding)}
  text = c.train_step.lower(c.restore_target(), batch).as_text()
  # (batch, length, embed): the batch over data x fsdp.
  constraints = re.findall(r'sdy.sharding_constraint %\w+ <@mesh, \[\{"data", "fsdp"\}, '
                           r'\{\}, \{\}\]>', text)
  assert len(constraints) >= 4, "no activation constraints in the lowered step"


def test_batch_not_divisible_by_data_parallel_size():
  config = runlocal([("data", 8), ("fsdp", 1), ("model", 1)])
  with config.unlocked():
    config.batch_size = 12
  with pytest.raises(ValueError, match="batch_size=12 is not divisible by the data-parallel size 8"):
    experiment.build(config)


def test_tensor_parallel_and_fsdp_steps_equal_data_parallel():
  """The same two steps under data parallel (8), FSDP (2 x 4) and tensor parallel
  (4 x model 2) meshes: the rules move shards, not results."""
  rng = np.random.default_rng(1)
  batches = [{"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)} for _ in range(2)]
  runs = {name: _run_steps(runlocal(mesh), batches) for name, mesh in {
      "data": [("data", 8), ("fsdp", 1), ("model", 1)],
      "fsdp": [("data", 2), ("fsdp", 4), ("model", 1)],
      "tensor": [("data", 4), ("fsdp", 1), ("model", 2)],
  }.items()}
  def shard_shape(name, get):
    leaf = get(runs[name][1].params["encoder"]["block_0"])
    assert leaf.sharding.spec[:2] == ("fsdp", "model")  # the rules; the mesh sizes them
    return leaf.addressable_shards[0].data.shape
  fc1 = lambda block: block["mlp"]["fc1"]["kernel"]  # [embed 32, mlp 128]
  query = lambda block: block["self_attn"]["query_kernel"]  # [embed 32, heads 2, kv 16]
  assert shard_shape("data", fc1) == (32, 128)  # replicated
  assert shard_shape("fsdp", fc1) == (8, 128)  # embed over fsdp (4)
  assert shard_shape("tensor", fc1) == (32, 64)  # mlp over model (2)
  assert shard_shape("tensor", query) == (32, 1, 16)  # heads over model (2)
  _, _, data_metrics, data_params = runs["data"]
  for name in ("fsdp", "tensor"):
    _, _, metrics, params = runs[name]
    np.testing.assert_allclose(metrics[0]["loss"], data_metrics[0]["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(data_params[0])):
      np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
  """Saved from an 8-way data-parallel run, restored onto a 2 x 2 x 2 FSDP + tensor
  parallel mesh: the same values, laid out as the new mesh's rules say."""
  from sweet_jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  batches = [{"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)}]
  _, saved, _, _ = _run_steps(runlocal([("data", 8), ("fsdp", 1), ("model", 1)]), batches)
  checkpointer = Checkpointer(str(tmp_path), max_to_keep=1, save_interval_steps=1)
  checkpointer.save_state(1, saved)
  target = experiment.build(runlocal([("data", 2), ("fsdp", 2), ("model", 2)]))
  with parallel.run_context(target.mesh, target.rules):
    restored = checkpointer.restore_state(1, target.restore_target())
  checkpointer.close()
  fc1 = restored.params["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert fc1.sharding.spec == P("fsdp", "model") and fc1.sharding.mesh.shape == target.mesh.shape
  assert int(restored.step) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(restored)),
                  jax.tree.leaves(jax.device_get(saved))):
    np.testing.assert_array_equal(a, b)
