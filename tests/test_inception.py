"""Tests of the FID InceptionV3 and its torch-free weights converter.

The real pytorch-fid weights cannot be downloaded here, so the network is checked against an
independent float64 numpy implementation of pytorch-fid's FIDInceptionV3 written below (NCHW,
OIHW weights, torch semantics, including the bilinear resize), both running the same random
torch-style state dict. The `.pth` reader is checked on files written opcode by opcode the way
`torch.save` writes them (zip and legacy layouts), and on pickles that try to run code.
"""

import collections
import os
import pickle
import struct
import zipfile
from typing import NamedTuple

import jax
import numpy as np
import pytest

from sweet_jax import torch_weights
from sweet_jax.nets import inception
from sweet_jax.weights import UnsafeWeightsError

# --------------------------------------------------------------------------------------------
# The numpy reference: pytorch-fid's FIDInceptionV3 (fid_inception_v3() + InceptionV3.forward).


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int], fill: float) -> np.ndarray:
  """[B, C, H, W] -> [B, C, H', W', kh, kw]: the (padded, strided) windows, torch-style."""
  (ph, pw), (sh, sw) = padding, stride
  padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
  windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=(2, 3))
  return windows[:, :, ::sh, ::sw]


def _conv2d(x, weight, stride, padding):
  """F.conv2d without bias: im2col windows contracted with OIHW weights (BLAS tensordot)."""
  windows = _windows(x, weight.shape[2:], stride, padding, 0.0)
  return np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def _max_pool(x, kernel, stride, padding=0):
  return _windows(x, _pair(kernel), _pair(stride), _pair(padding), -np.inf).max(axis=(-2, -1))


def _avg_pool_excluding_padding(x):
  """F.avg_pool2d(kernel 3, stride 1, padding 1, count_include_pad=False)."""
  sums = _windows(x, (3, 3), (1, 1), (1, 1), 0.0).sum(axis=(-2, -1))
  counts = _windows(np.ones_like(x[:1, :1]), (3, 3), (1, 1), (1, 1), 0.0).sum(axis=(-2, -1))
  return sums / counts


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
  """F.interpolate(mode='bilinear', align_corners=False) along one axis: output i reads source
  position max((i + 0.5) * in / out - 0.5, 0) between pixels floor(.) and min(floor(.) + 1,
  in - 1)."""
  in_size = x.shape[axis]
  source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  lower = np.floor(source).astype(int)
  upper = np.minimum(lower + 1, in_size - 1)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = (source - lower).reshape(shape)
  return np.take(x, lower, axis=axis) * (1 - frac) + np.take(x, upper, axis=axis) * frac


def torch_resize_and_normalize(images_nchw: np.ndarray) -> np.ndarray:
  resized = _resize_axis(_resize_axis(images_nchw, 2, 299), 3, 299)
  return 2 * resized - 1


class NumpyFIDInceptionV3:
  """pytorch-fid's FIDInceptionV3 to pool3 in float64 numpy, NCHW, on a torch state dict.

  With `rng`, each BasicConv2d's missing weights are drawn when it first runs (He-scaled
  conv weights; BN scale, shift, mean and a positive variance), so the state dict is defined
  by this reference's own layer list, not by the Flax module. `blocks` keeps each Mixed
  block's output.
  """

  def __init__(self, state_dict: dict[str, np.ndarray], rng: np.random.Generator | None = None):
    self.state_dict = state_dict
    self.rng = rng
    self.blocks: dict[str, np.ndarray] = {}

  def _draw_weights(self, name: str, out_channels: int, in_channels: int, kernel) -> None:
    rng, fan_in = self.rng, in_channels * kernel[0] * kernel[1]
    drawn = {
        "conv.weight": rng.normal(0, np.sqrt(2 / fan_in), (out_channels, in_channels, *kernel)),
        "bn.weight": rng.uniform(0.5, 1.5, out_channels),
        "bn.bias": rng.normal(0, 0.2, out_channels),
        "bn.running_mean": rng.normal(0, 0.2, out_channels),
        "bn.running_var": rng.uniform(0.5, 2.0, out_channels),
    }
    self.state_dict.update({f"{name}.{k}": v.astype(np.float32) for k, v in drawn.items()})

  def conv(self, name, x, out_channels, kernel_size, stride=1, padding=0):
    """torchvision's BasicConv2d: conv (no bias), BatchNorm2d(eps=0.001) in eval mode, ReLU."""
    kernel = _pair(kernel_size)
    if self.rng is not None and f"{name}.conv.weight" not in self.state_dict:
      self._draw_weights(name, out_channels, x.shape[1], kernel)
    sd = {k[len(name) + 1:]: v.astype(np.float64) for k, v in self.state_dict.items()
          if k.startswith(f"{name}.")}
    y = _conv2d(x, sd["conv.weight"], _pair(stride), _pair(padding))
    per_channel = lambda v: v[None, :, None, None]
    y = ((y - per_channel(sd["bn.running_mean"])) / np.sqrt(per_channel(sd["bn.running_var"])
                                                             + 0.001)
         * per_channel(sd["bn.weight"]) + per_channel(sd["bn.bias"]))
    return np.maximum(y, 0)

  def inception_a(self, name, x, pool_features):
    c = lambda n, *a, **k: self.conv(f"{name}.{n}", *a, **k)
    branch1x1 = c("branch1x1", x, 64, 1)
    branch5x5 = c("branch5x5_2", c("branch5x5_1", x, 48, 1), 64, 5, padding=2)
    branch3x3dbl = c("branch3x3dbl_1", x, 64, 1)
    branch3x3dbl = c("branch3x3dbl_2", branch3x3dbl, 96, 3, padding=1)
    branch3x3dbl = c("branch3x3dbl_3", branch3x3dbl, 96, 3, padding=1)
    branch_pool = c("branch_pool", _avg_pool_excluding_padding(x), pool_features, 1)
    return np.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=1)

  def inception_b(self, name, x):
    c = lambda n, *a, **k: self.conv(f"{name}.{n}", *a, **k)
    branch3x3 = c("branch3x3", x, 384, 3, stride=2)
    branch3x3dbl = c("branch3x3dbl_1", x, 64, 1)
    branch3x3dbl = c("branch3x3dbl_2", branch3x3dbl, 96, 3, padding=1)
    branch3x3dbl = c("branch3x3dbl_3", branch3x3dbl, 96, 3, stride=2)
    return np.concatenate([branch3x3, branch3x3dbl, _max_pool(x, 3, 2)], axis=1)

  def inception_c(self, name, x, c7):
    c = lambda n, *a, **k: self.conv(f"{name}.{n}", *a, **k)
    branch1x1 = c("branch1x1", x, 192, 1)
    branch7x7 = c("branch7x7_1", x, c7, 1)
    branch7x7 = c("branch7x7_2", branch7x7, c7, (1, 7), padding=(0, 3))
    branch7x7 = c("branch7x7_3", branch7x7, 192, (7, 1), padding=(3, 0))
    branch7x7dbl = c("branch7x7dbl_1", x, c7, 1)
    branch7x7dbl = c("branch7x7dbl_2", branch7x7dbl, c7, (7, 1), padding=(3, 0))
    branch7x7dbl = c("branch7x7dbl_3", branch7x7dbl, c7, (1, 7), padding=(0, 3))
    branch7x7dbl = c("branch7x7dbl_4", branch7x7dbl, c7, (7, 1), padding=(3, 0))
    branch7x7dbl = c("branch7x7dbl_5", branch7x7dbl, 192, (1, 7), padding=(0, 3))
    branch_pool = c("branch_pool", _avg_pool_excluding_padding(x), 192, 1)
    return np.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=1)

  def inception_d(self, name, x):
    c = lambda n, *a, **k: self.conv(f"{name}.{n}", *a, **k)
    branch3x3 = c("branch3x3_2", c("branch3x3_1", x, 192, 1), 320, 3, stride=2)
    branch7x7x3 = c("branch7x7x3_1", x, 192, 1)
    branch7x7x3 = c("branch7x7x3_2", branch7x7x3, 192, (1, 7), padding=(0, 3))
    branch7x7x3 = c("branch7x7x3_3", branch7x7x3, 192, (7, 1), padding=(3, 0))
    branch7x7x3 = c("branch7x7x3_4", branch7x7x3, 192, 3, stride=2)
    return np.concatenate([branch3x3, branch7x7x3, _max_pool(x, 3, 2)], axis=1)

  def inception_e(self, name, x, max_pool_branch):
    """FIDInceptionE_1 (average pool, padding excluded) or FIDInceptionE_2 (max pool)."""
    c = lambda n, *a, **k: self.conv(f"{name}.{n}", *a, **k)
    branch1x1 = c("branch1x1", x, 320, 1)
    branch3x3 = c("branch3x3_1", x, 384, 1)
    branch3x3 = np.concatenate([c("branch3x3_2a", branch3x3, 384, (1, 3), padding=(0, 1)),
                                c("branch3x3_2b", branch3x3, 384, (3, 1), padding=(1, 0))], axis=1)
    branch3x3dbl = c("branch3x3dbl_1", x, 448, 1)
    branch3x3dbl = c("branch3x3dbl_2", branch3x3dbl, 384, 3, padding=1)
    branch3x3dbl = np.concatenate([
        c("branch3x3dbl_3a", branch3x3dbl, 384, (1, 3), padding=(0, 1)),
        c("branch3x3dbl_3b", branch3x3dbl, 384, (3, 1), padding=(1, 0))], axis=1)
    pooled = _max_pool(x, 3, 1, padding=1) if max_pool_branch else _avg_pool_excluding_padding(x)
    branch_pool = c("branch_pool", pooled, 192, 1)
    return np.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=1)

  def __call__(self, images_nchw: np.ndarray) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> [B, 2048]."""
    x = torch_resize_and_normalize(images_nchw.astype(np.float64))
    x = self.conv("Conv2d_1a_3x3", x, 32, 3, stride=2)
    x = self.conv("Conv2d_2a_3x3", x, 32, 3)
    x = self.conv("Conv2d_2b_3x3", x, 64, 3, padding=1)
    x = _max_pool(x, 3, 2)
    x = self.conv("Conv2d_3b_1x1", x, 80, 1)
    x = self.conv("Conv2d_4a_3x3", x, 192, 3)
    x = _max_pool(x, 3, 2)
    for name, block in [
        ("Mixed_5b", lambda n, x: self.inception_a(n, x, 32)),
        ("Mixed_5c", lambda n, x: self.inception_a(n, x, 64)),
        ("Mixed_5d", lambda n, x: self.inception_a(n, x, 64)),
        ("Mixed_6a", self.inception_b),
        ("Mixed_6b", lambda n, x: self.inception_c(n, x, 128)),
        ("Mixed_6c", lambda n, x: self.inception_c(n, x, 160)),
        ("Mixed_6d", lambda n, x: self.inception_c(n, x, 160)),
        ("Mixed_6e", lambda n, x: self.inception_c(n, x, 192)),
        ("Mixed_7a", self.inception_d),
        ("Mixed_7b", lambda n, x: self.inception_e(n, x, max_pool_branch=False)),
        ("Mixed_7c", lambda n, x: self.inception_e(n, x, max_pool_branch=True)),
    ]:
      x = block(name, x)
      self.blocks[name] = x
    return x.mean(axis=(2, 3))  # AdaptiveAvgPool2d(1), flattened.


# --------------------------------------------------------------------------------------------
# Writing torch files by hand: protocol-2 pickle opcodes as `torch.save` emits them.


class FakeTensor(NamedTuple):
  """A tensor as torch pickles it: a view (offset, size, stride) of a keyed storage."""
  storage_type: str  # e.g. 'FloatStorage'
  storage_key: str
  storage_numel: int
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _op_global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _op_str(text: str) -> bytes:
  data = text.encode()
  return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _op_int(value: int) -> bytes:
  return pickle.BININT + struct.pack("<i", value)


def _op_int_tuple(values) -> bytes:
  return pickle.MARK + b"".join(_op_int(v) for v in values) + pickle.TUPLE


def pickle_state_dict(tensors: dict[str, FakeTensor], legacy: bool) -> bytes:
  """OrderedDict{name: torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
  requires_grad=False, OrderedDict())}, each storage a persistent id
  ('storage', torch.<Type>Storage, key, 'cpu', numel[, view_metadata=None if legacy])."""
  ops = [pickle.PROTO + b"\x02", _op_global("collections", "OrderedDict"), pickle.EMPTY_TUPLE,
         pickle.REDUCE, pickle.MARK]
  for name, t in tensors.items():
    storage_id = (pickle.MARK + _op_str("storage") + _op_global("torch", t.storage_type)
                  + _op_str(t.storage_key) + _op_str("cpu") + _op_int(t.storage_numel)
                  + (pickle.NONE if legacy else b"") + pickle.TUPLE + pickle.BINPERSID)
    ops += [_op_str(name), _op_global("torch._utils", "_rebuild_tensor_v2"), pickle.MARK,
            storage_id, _op_int(t.offset), _op_int_tuple(t.size), _op_int_tuple(t.stride),
            pickle.NEWFALSE, _op_global("collections", "OrderedDict"), pickle.EMPTY_TUPLE,
            pickle.REDUCE, pickle.TUPLE, pickle.REDUCE]
  return b"".join(ops + [pickle.SETITEMS, pickle.STOP])


def write_zip_pth(path: str, object_pickle: bytes, storages: dict[str, np.ndarray]) -> None:
  """torch >= 1.6's layout: <archive>/data.pkl, <archive>/data/<key>, byteorder, version."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("fake_model/data.pkl", object_pickle)
    archive.writestr("fake_model/byteorder", "little")
    for key, storage in storages.items():
      archive.writestr(f"fake_model/data/{key}", storage.astype(storage.dtype.newbyteorder("<"))
                       .tobytes())
    archive.writestr("fake_model/version", "3\n")


def write_legacy_pth(path: str, object_pickle: bytes, storages: dict[str, np.ndarray]) -> None:
  """The pre-1.6 layout: magic, protocol, sys info, object, storage keys, then per storage
  an int64 element count and the raw little-endian elements."""
  header = [torch_weights.LEGACY_MAGIC_NUMBER, torch_weights.LEGACY_PROTOCOL_VERSION,
            dict(protocol_version=1001, little_endian=True,
                 type_sizes=dict(short=2, int=4, long=8))]
  with open(path, "wb") as f:
    for value in header:
      f.write(pickle.dumps(value, protocol=2))
    f.write(object_pickle)
    f.write(pickle.dumps(list(storages), protocol=2))
    for storage in storages.values():
      f.write(struct.pack("<q", storage.size))
      f.write(storage.astype(storage.dtype.newbyteorder("<")).tobytes())


def write_pth(path: str, tensors: dict[str, FakeTensor], storages: dict[str, np.ndarray],
              legacy: bool) -> None:
  write = write_legacy_pth if legacy else write_zip_pth
  write(path, pickle_state_dict(tensors, legacy), storages)


def contiguous(storage_type: str, key: str, array: np.ndarray) -> FakeTensor:
  strides = tuple(s // array.itemsize for s in np.ascontiguousarray(array).strides)
  return FakeTensor(storage_type, key, array.size, 0, array.shape, strides)


# --------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def reference():
  """Random torch-style weights drawn by the numpy reference, two uint8 43x61 images (so the
  resize upsamples, differently along each axis), the reference features and blocks."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 43, 61, 3), dtype=np.uint8)
  state_dict = {}
  network = NumpyFIDInceptionV3(state_dict, rng)
  features = network(images.transpose(0, 3, 1, 2) / 255.0)
  return dict(state_dict=state_dict, images=images, features=features, blocks=network.blocks)


@pytest.fixture(scope="module")
def weights_npz(reference, tmp_path_factory) -> str:
  """The state dict as pytorch-fid's file holds it: with the 1008-way classifier and
  BatchNorm's num_batches_tracked counters, which the loader must ignore."""
  state_dict = dict(reference["state_dict"])
  rng = np.random.default_rng(1)
  state_dict["fc.weight"] = rng.normal(size=(1008, 2048)).astype(np.float32)
  state_dict["fc.bias"] = np.zeros(1008, np.float32)
  state_dict["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, np.int64)
  path = str(tmp_path_factory.mktemp("inception") / "random_fid_inception.npz")
  np.savez(path, **state_dict)
  return path


# --------------------------------------------------------------------------------------------
# The network.


def _relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def test_features_match_the_numpy_reference(reference, weights_npz):
  variables = inception.load_inception_variables(weights_npz)
  features = np.asarray(inception.make_inception_features_fn(variables)(reference["images"]))
  assert features.shape == (2, inception.FEATURE_DIM) and features.dtype == np.float32
  expected = reference["features"]
  # The random weights keep activations O(1) to the end (else the comparison would be vacuous).
  assert 0.05 < np.std(expected) < 20 and np.mean(expected > 0) > 0.3
  error = _relative_error(features, expected)
  print(f"pool3 features: max |ours - numpy| / max |numpy| = {error:.2e}")
  assert error < 1e-4
  assert not np.allclose(features[0], features[1])  # The two images stay distinguishable.


def test_block_outputs_match_the_numpy_reference(reference, weights_npz):
  variables = inception.load_inception_variables(weights_npz)
  images = reference["images"][:1] / np.float32(255.0)
  names = ("Mixed_5d", "Mixed_6e", "Mixed_7c")
  _, state = jax.jit(lambda v, x: inception.FIDInceptionV3().apply(
      v, x, capture_intermediates=lambda module, method: module.name in names,
      mutable=["intermediates"]))(variables, images)
  for name in names:
    ours = np.asarray(state["intermediates"][name]["__call__"][0])
    theirs = reference["blocks"][name][:1].transpose(0, 2, 3, 1)  # NCHW -> NHWC.
    error = _relative_error(ours, theirs)
    print(f"{name}: max |ours - numpy| / max |numpy| = {error:.2e}")
    assert error < 1e-4, name


@pytest.mark.parametrize("size", [(43, 61), (420, 333), (299, 299)])
def test_resize_is_torch_bilinear_without_align_corners(size):
  images = np.random.default_rng(2).uniform(size=(1, *size, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(inception.resize_and_normalize)(images))
  theirs = torch_resize_and_normalize(images.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
  # Exact up to the float32 source coordinates (as in torch): near 420, 3e-5 apart.
  np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_float_and_uint8_images_give_the_same_features(reference, weights_npz):
  fn = inception.make_inception_features_fn(inception.load_inception_variables(weights_npz))
  images = reference["images"]
  np.testing.assert_allclose(np.asarray(fn(images / np.float32(255.0))), np.asarray(fn(images)),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(TypeError):
    fn(images.astype(np.int32))


def test_loader_rejects_a_state_dict_of_another_network(reference, tmp_path):
  state_dict = dict(reference["state_dict"])
  del state_dict["Mixed_7c.branch_pool.conv.weight"]
  state_dict["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  path = str(tmp_path / "wrong.npz")
  np.savez(path, **state_dict)
  with pytest.raises(ValueError, match="Mixed_7c/branch_pool/conv/kernel") as error:
    inception.load_inception_variables(path)
  assert "params/Mixed_5b/branch1x1/conv/kernel: (3, 3, 192, 64) != (1, 1, 192, 64)" in str(
      error.value)


@pytest.mark.parametrize("path", [None, "/no/such/pt_inception.npz"])
def test_missing_weights_say_what_to_supply(path):
  with pytest.raises(FileNotFoundError) as error:
    inception.load_inception_variables(path)
  message = str(error.value)
  for needed in ("pt_inception-2015-12-05-6726825d.pth", inception.FID_WEIGHTS_URL,
                 "python -m sweet_jax.nets.inception convert", "--config.eval.inception_weights"):
    assert needed in message


# --------------------------------------------------------------------------------------------
# The torch-file reader and the converter.


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_files_read_back_exactly(tmp_path, legacy):
  rng = np.random.default_rng(3)
  kernel = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
  matrix = rng.normal(size=(5, 3)).astype(np.float32)  # Stored row-major, read transposed.
  halves = rng.normal(size=10).astype(np.float16)
  storages = {"0": kernel.ravel(), "1": matrix.ravel(), "2": halves,
              "3": np.array([7, -2], np.int64)}
  tensors = {
      "block.conv.weight": contiguous("FloatStorage", "0", kernel),
      "transposed": FakeTensor("FloatStorage", "1", 15, 0, (3, 5), (1, 3)),
      "offset_slice": FakeTensor("HalfStorage", "2", 10, 4, (3,), (2,)),
      "block.bn.num_batches_tracked": FakeTensor("LongStorage", "3", 2, 0, (), ()),
  }
  path = str(tmp_path / "fake.pth")
  write_pth(path, tensors, storages, legacy)
  loaded = torch_weights.load_torch_state_dict(path)
  expected = {"block.conv.weight": kernel, "transposed": matrix.T, "offset_slice": halves[4:10:2],
              "block.bn.num_batches_tracked": np.array(7, np.int64)}
  assert list(loaded) == list(expected)
  for name, array in expected.items():
    assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
    np.testing.assert_array_equal(loaded[name], array, err_msg=name)


def test_convert_command_writes_the_state_dict_as_npz(reference, tmp_path, capsys):
  """The full random state dict as a legacy .pth (pytorch-fid's file predates the zip
  layout) -> `convert` -> an .npz that loads into the same variables as the original."""
  state_dict = {**reference["state_dict"],
                "Mixed_5b.branch1x1.bn.num_batches_tracked": np.array(5, np.int64)}
  tensors, storages = {}, {}
  for index, (name, array) in enumerate(state_dict.items()):
    storage_type = "LongStorage" if array.dtype == np.int64 else "FloatStorage"
    tensors[name] = contiguous(storage_type, str(index), array)
    storages[str(index)] = array.ravel()
  pth = str(tmp_path / inception.FID_WEIGHTS_FILE)
  write_pth(pth, tensors, storages, legacy=True)
  npz = str(tmp_path / "converted.npz")
  assert inception.main(["convert", f"--pth={pth}", f"--out={npz}"]) == 0
  assert "--config.eval.inception_weights=" in capsys.readouterr().out
  with np.load(npz) as converted:
    assert set(converted.files) == set(reference["state_dict"])  # num_batches_tracked dropped.
    for name in converted.files:
      np.testing.assert_array_equal(converted[name], reference["state_dict"][name])
  variables = inception.load_inception_variables(npz)
  np.testing.assert_array_equal(
      variables["params"]["Mixed_5b"]["branch5x5_2"]["conv"]["kernel"],
      reference["state_dict"]["Mixed_5b.branch5x5_2.conv.weight"].transpose(2, 3, 1, 0))


class _RunsAShellCommand:

  def __init__(self, command: str):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pth_whose_pickle_runs_code_is_refused(tmp_path, capsys, legacy):
  sentinel = tmp_path / "pwned"
  payload = pickle.dumps(collections.OrderedDict(
      weight=_RunsAShellCommand(f"touch {sentinel}")), protocol=2)
  path = str(tmp_path / "malicious.pth")
  (write_legacy_pth if legacy else write_zip_pth)(path, payload, {})
  with pytest.raises(UnsafeWeightsError, match="posix.system|os.system"):
    torch_weights.load_torch_state_dict(path)
  assert inception.main(["convert", f"--pth={path}", f"--out={tmp_path / 'out.npz'}"]) == 1
  assert "refusing to load" in capsys.readouterr().err
  assert not sentinel.exists() and not (tmp_path / "out.npz").exists()


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
  storages = {"0": np.zeros(6, np.float32)}
  tensors = {"too_long": FakeTensor("FloatStorage", "0", 6, 2, (2, 3), (3, 1))}
  path = str(tmp_path / "overrun.pth")
  write_pth(path, tensors, storages, legacy=False)
  with pytest.raises(ValueError, match="past the end"):
    torch_weights.load_torch_state_dict(path)


def test_torch_reader_rejects_files_that_are_not_torch_files(tmp_path):
  path = tmp_path / "notes.pth"
  path.write_bytes(b"just some text")
  with pytest.raises(ValueError, match="not a readable torch weights file"):
    torch_weights.load_torch_state_dict(str(path))
