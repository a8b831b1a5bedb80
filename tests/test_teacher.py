"""The frozen DINOv2 alignment teacher: loading timm state dicts, timm's resampling,
features without gradient, and clear errors.

The full-size agreement with timm itself (random-init vit_small_patch14_dinov2, loaded
at 256/16 through timm's checkpoint_filter_fn) is checked outside the suite, since torch
is not a project dependency; the pinned rows below come from that run.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from sweet_jax.nets import dinov2 as T
from sweet_jax.weights import UnsafeWeightsError

WIDTH, DEPTH, HEADS, HIDDEN, PATCH, GRID = 32, 2, 2, 128, 14, 3


def timm_state(width=WIDTH, depth=DEPTH, hidden=HIDDEN, patch=PATCH, grid=GRID, seed=0):
  """A random DINOv2 state dict with timm's names and torch layouts (+ DINOv2's mask_token)."""
  rng = np.random.default_rng(seed)
  n = lambda *shape, s=0.1: (s * rng.standard_normal(shape)).astype(np.float32)
  state = {"cls_token": n(1, 1, width, s=0.5), "pos_embed": n(1, 1 + grid * grid, width, s=0.5),
           "mask_token": np.zeros((1, width), np.float32),
           "patch_embed.proj.weight": n(width, 3, patch, patch, s=0.05),
           "patch_embed.proj.bias": n(width), "norm.weight": 1 + n(width), "norm.bias": n(width)}
  for i in range(depth):
    p = f"blocks.{i}."
    state.update({
        p + "norm1.weight": 1 + n(width), p + "norm1.bias": n(width),
        p + "attn.qkv.weight": n(3 * width, width, s=0.3), p + "attn.qkv.bias": n(3 * width),
        p + "attn.proj.weight": n(width, width), p + "attn.proj.bias": n(width),
        p + "ls1.gamma": 0.5 + n(width), p + "norm2.weight": 1 + n(width), p + "norm2.bias": n(width),
        p + "mlp.fc1.weight": n(hidden, width), p + "mlp.fc1.bias": n(hidden),
        p + "mlp.fc2.weight": n(width, hidden), p + "mlp.fc2.bias": n(width),
        p + "ls2.gamma": 0.5 + n(width)})
  return state


def reference_features(state, images, patch, heads):
  """timm's VisionTransformer.forward_features in numpy, on torch-layout weights,
  after the teacher's input normalisation; returns the patch tokens."""
  x = (np.asarray(images, np.float64) + 1) / 2
  x = (x - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD)
  b, size = x.shape[0], x.shape[1]
  g = size // patch
  patches = x.reshape(b, g, patch, g, patch, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b, g * g, 3, patch, patch)
  tok = np.einsum("bncij,ocij->bno", patches, state["patch_embed.proj.weight"]) + state["patch_embed.proj.bias"]
  width = tok.shape[-1]
  tok = np.concatenate([np.broadcast_to(state["cls_token"], (b, 1, width)), tok], 1) + state["pos_embed"]

  def ln(v, prefix):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-6) * state[prefix + ".weight"] + state[prefix + ".bias"]

  gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
  hd = width // heads
  depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
  for i in range(depth):
    p = f"blocks.{i}."
    qkv = ln(tok, p + "norm1") @ state[p + "attn.qkv.weight"].T + state[p + "attn.qkv.bias"]
    q, k, v = qkv.reshape(b, -1, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, -1, width)
    tok = tok + state[p + "ls1.gamma"] * (out @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"])
    h = gelu(ln(tok, p + "norm2") @ state[p + "mlp.fc1.weight"].T + state[p + "mlp.fc1.bias"])
    tok = tok + state[p + "ls2.gamma"] * (h @ state[p + "mlp.fc2.weight"].T + state[p + "mlp.fc2.bias"])
  return ln(tok, "norm")[:, 1:]


def images(size, batch=2, seed=1):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), minval=-1, maxval=1)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("dinov2")
  state = timm_state()
  np.savez(root / "teacher.npz", **state)
  save_file(state, str(root / "teacher.safetensors"))
  return state, root


# --- resampling -------------------------------------------------------------------


def test_resize_matrix_matches_torch_antialiased_bicubic():
  """Rows of torch 2.13's F.interpolate(mode='bicubic', antialias=True) on basis vectors
  (what timm's resample_patch_embed / resample_abs_pos_embed use), from the cross-check."""
  up = T.resize_matrix(14, 16)
  np.testing.assert_allclose(up[0, :2], [1.0285171, -0.02851711], atol=1e-6)
  np.testing.assert_allclose(up[7, 5:9], [-0.02746582, 0.9906006, 0.03869629, -0.00183105], atol=1e-6)
  down = T.resize_matrix(37, 16)
  np.testing.assert_allclose(down[0, :6], [0.38718635, 0.4414507, 0.20925617, -0.0030565,
                                           -0.03181696, -0.00301974], atol=1e-6)
  np.testing.assert_allclose(down[8, 15:24], [-0.00709342, -0.03186974, 0.01838402, 0.24359417,
                                              0.428314, 0.3204806, 0.07406781, -0.02951323,
                                              -0.01636432], atol=1e-6)
  for m in (up, down, T.resize_matrix(16, 16)):
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(T.resize_matrix(16, 16), np.eye(16), atol=1e-12)


def test_resample_patch_embed_to_the_same_size_is_the_identity():
  kernel = np.random.default_rng(0).standard_normal((4, 3, 14, 14)).astype(np.float32)
  np.testing.assert_array_equal(T.resample_patch_embed(kernel, (14, 14)), kernel)


def test_resampled_kernel_on_the_upsampled_patch_gives_the_original_response():
  """The defining property of the pseudo-inverse (FlexiViT): <pinv(R^T) k, R x> = <k, x>."""
  rng = np.random.default_rng(0)
  kernel = rng.standard_normal((4, 3, 14, 14))
  patch = rng.standard_normal((5, 3, 14, 14))
  new = T.resample_patch_embed(kernel, (16, 16))
  assert new.shape == (4, 3, 16, 16)
  upsampled = T.resize_2d(patch, (16, 16))
  np.testing.assert_allclose(np.einsum("ocij,ncij->no", new, upsampled),
                             np.einsum("ocij,ncij->no", kernel, patch), rtol=1e-8, atol=1e-8)
  # A plain resize of the kernel does not have that property.
  resized = T.resize_2d(kernel, (16, 16))
  assert not np.allclose(np.einsum("ocij,ncij->no", resized, upsampled),
                         np.einsum("ocij,ncij->no", kernel, patch), atol=1e-2)


def test_pos_embed_interpolation_keeps_cls_and_constants():
  rng = np.random.default_rng(0)
  cls = rng.standard_normal((1, 1, 8)).astype(np.float32)
  constant = np.broadcast_to(rng.standard_normal(8), (1, 37 * 37, 8)).astype(np.float32)
  out = T.resample_abs_pos_embed(np.concatenate([cls, constant], 1), (16, 16))
  assert out.shape == (1, 1 + 256, 8)
  np.testing.assert_array_equal(out[:, :1], cls)
  np.testing.assert_allclose(out[:, 1:], constant[:, :256], atol=1e-6)
  same = np.concatenate([cls, rng.standard_normal((1, 256, 8)).astype(np.float32)], 1)
  np.testing.assert_array_equal(T.resample_abs_pos_embed(same, (16, 16)), same)
  # Row-major grid: a table varying only along x still varies only along x.
  ramp = np.broadcast_to(np.arange(37.0)[None, :, None], (37, 37, 1)).reshape(1, -1, 1)
  grid = T.resample_abs_pos_embed(np.concatenate([np.zeros((1, 1, 1)), ramp], 1), (16, 16))[0, 1:, 0]
  grid = grid.reshape(16, 16)
  np.testing.assert_allclose(grid, np.broadcast_to(grid[:1], (16, 16)), atol=1e-9)
  assert np.all(np.diff(grid[0]) > 0)


# --- loading ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["npz", "safetensors"])
def test_load_at_native_size_matches_the_reference_vit(weight_files, suffix):
  state, root = weight_files
  module, params = T.load_teacher(root / f"teacher.{suffix}", image_size=GRID * PATCH,
                                  patch_size=PATCH, num_heads=HEADS)
  assert (module.width, module.depth, module.num_heads, module.mlp_ratio) == (WIDTH, DEPTH, HEADS, 4.0)
  x = images(GRID * PATCH)
  feats = T.teacher_features(module, params, x)
  assert feats.shape == (2, GRID * GRID, WIDTH)
  np.testing.assert_allclose(feats, reference_features(state, x, PATCH, HEADS), atol=2e-5)


def test_npz_and_safetensors_give_the_same_parameters(weight_files):
  _, root = weight_files
  _, a = T.load_teacher(root / "teacher.npz", 64, 16, num_heads=HEADS)
  _, b = T.load_teacher(root / "teacher.safetensors", 64, 16, num_heads=HEADS)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_load_at_another_patch_and_image_size_resamples_as_timm(weight_files):
  """14 -> 16 px patches and a 3x3 -> 4x4 position grid: the loaded model is the
  reference ViT with timm's resampled patch embedding and position table."""
  state, root = weight_files
  module, params = T.load_teacher(root / "teacher.safetensors", image_size=64, patch_size=16,
                                  num_heads=HEADS)
  resampled = dict(state)
  resampled["patch_embed.proj.weight"] = T.resample_patch_embed(state["patch_embed.proj.weight"], (16, 16))
  resampled["pos_embed"] = T.resample_abs_pos_embed(state["pos_embed"], (4, 4))
  assert resampled["pos_embed"].shape == (1, 17, WIDTH)
  x = images(64)
  np.testing.assert_allclose(T.teacher_features(module, params, x),
                             reference_features(resampled, x, 16, HEADS), atol=2e-5)


def test_heads_come_from_the_dinov2_width_table(tmp_path):
  path = tmp_path / "s.npz"
  np.savez(path, **timm_state(width=384, depth=1, hidden=1536, grid=2))
  module, _ = T.load_teacher(path, image_size=32, patch_size=16)
  assert (module.width, module.depth, module.num_heads) == (384, 1, 6)
  np.savez(tmp_path / "odd.npz", **timm_state(width=40, depth=1, hidden=160, grid=2))
  with pytest.raises(ValueError, match="width 40 is not a DINOv2 S/B/L width.*pass num_heads"):
    T.load_teacher(tmp_path / "odd.npz")


def test_missing_file_names_the_file_the_config_field_and_no_download(tmp_path):
  missing = tmp_path / "dinov2_vitl14.safetensors"
  with pytest.raises(FileNotFoundError) as e:
    T.load_teacher(missing)
  for words in (str(missing), "config.alignment.teacher_path", "supplied by the user",
                "nothing is downloaded"):
    assert words in str(e.value)
  with pytest.raises(FileNotFoundError, match="No DINOv2 teacher weights given.*teacher_path"):
    T.load_teacher(None)


def test_unsupported_formats_are_refused(tmp_path):
  path = tmp_path / "dinov2.pth"
  path.write_bytes(b"not loaded")
  with pytest.raises(UnsafeWeightsError, match="unsupported weights format"):
    T.load_teacher(path)


def _write(tmp_path, state):
  path = tmp_path / "t.npz"
  np.savez(path, **state)
  return path


def test_wrong_keys_and_shapes_are_named(tmp_path):
  state = timm_state()
  with pytest.raises(ValueError, match=r"missing \['blocks.1.attn.proj.weight'\]"):
    T.load_teacher(_write(tmp_path, {k: v for k, v in state.items() if k != "blocks.1.attn.proj.weight"}),
                   num_heads=HEADS)
  with pytest.raises(ValueError, match=r"unexpected \['head.weight'\]"):
    T.load_teacher(_write(tmp_path, {**state, "head.weight": np.zeros((10, WIDTH), np.float32)}),
                   num_heads=HEADS)
  bad = {**state, "blocks.0.mlp.fc2.weight": np.zeros((WIDTH, HIDDEN + 1), np.float32)}
  with pytest.raises(ValueError, match=r"blocks.0.mlp.fc2.weight \(32, 129\) \(expected \(32, 128\)\)"):
    T.load_teacher(_write(tmp_path, bad), num_heads=HEADS)
  with pytest.raises(ValueError, match="no 'cls_token' entry; not a timm/DINOv2 ViT"):
    T.load_teacher(_write(tmp_path, {"weight": np.zeros(3, np.float32)}))
  with pytest.raises(ValueError, match="register tokens"):
    T.load_teacher(_write(tmp_path, {**state, "register_tokens": np.zeros((1, 4, WIDTH), np.float32)}),
                   num_heads=HEADS)


def test_features_carry_no_gradient(weight_files):
  _, root = weight_files
  module, params = T.load_teacher(root / "teacher.npz", 64, 16, num_heads=HEADS)
  x = images(64)
  loss = lambda p, im: jnp.sum(T.teacher_features(module, p, im) ** 2)
  grad_params, grad_images = jax.grad(loss, argnums=(0, 1))(params, x)
  assert float(loss(params, x)) > 0
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(grad_params))
  assert float(jnp.max(jnp.abs(grad_images))) == 0
