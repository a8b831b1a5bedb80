"""Hostile and malformed `.pth` files (sweet_jax/torch_weights.py): every view is checked
before memory is allocated for it, and a pickle never runs anything.

The files are written opcode by opcode the way `torch.save` writes them (torch is not a
dependency), with whatever offsets, sizes and strides a hostile file could name.
"""

import builtins
import collections
import pickle
import struct
import zipfile

import numpy as np
import pytest
from etils import epath

from sweet_jax import torch_weights
from sweet_jax.torch_weights import MalformedWeightsError
from sweet_jax.weights import UnsafeWeightsError


def _value(value) -> bytes:
  """The protocol-2 opcodes of a plain value (int, str, tuple, list, None), without PROTO/STOP."""
  return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _pickle(tensors: dict, legacy: bool) -> bytes:
  """OrderedDict{name: _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())}.

  `tensors` maps a name to (storage type, key, numel, offset, size, stride[, view]); the
  legacy persistent id has a sixth field, the view (None or (view_key, offset, numel)).
  """
  ops = [pickle.PROTO + b"\x02", _global("collections", "OrderedDict"), pickle.EMPTY_TUPLE,
         pickle.REDUCE, pickle.MARK]
  for name, (storage_type, key, numel, offset, size, stride, *view) in tensors.items():
    pid = (pickle.MARK + _value("storage") + _global("torch", storage_type) + _value(key)
           + _value("cpu") + _value(numel) + (_value(view[0] if view else None) if legacy else b"")
           + pickle.TUPLE + pickle.BINPERSID)
    ops += [_value(name), _global("torch._utils", "_rebuild_tensor_v2"), pickle.MARK, pid,
            _value(offset), _value(size), _value(stride), pickle.NEWFALSE,
            _global("collections", "OrderedDict"), pickle.EMPTY_TUPLE, pickle.REDUCE,
            pickle.TUPLE, pickle.REDUCE]
  return b"".join(ops + [pickle.SETITEMS, pickle.STOP])


def _write(path, tensors: dict, storages: dict[str, bytes], legacy: bool = False,
           counts: dict[str, int] | None = None) -> str:
  """A zip (torch >= 1.6) or legacy `.pth`; `counts` overrides a legacy storage's count."""
  path = str(path)
  if not legacy:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
      archive.writestr("m/data.pkl", _pickle(tensors, legacy=False))
      archive.writestr("m/byteorder", "little")
      for key, raw in storages.items():
        archive.writestr(f"m/data/{key}", raw)
    return path
  header = [torch_weights.LEGACY_MAGIC_NUMBER, torch_weights.LEGACY_PROTOCOL_VERSION,
            dict(protocol_version=1001, little_endian=True)]
  parts = [pickle.dumps(value, protocol=2) for value in header]
  parts += [_pickle(tensors, legacy=True), pickle.dumps(list(storages), protocol=2)]
  for key, raw in storages.items():
    itemsize = 4  # The legacy tests below use FloatStorage only.
    parts += [struct.pack("<q", (counts or {}).get(key, len(raw) // itemsize)), raw]
  epath.Path(path).write_bytes(b"".join(parts))
  return path


def _floats(n: int) -> bytes:
  return np.arange(n, dtype="<f4").tobytes()


def _load_one(tmp_path, size, stride, offset=0, numel=4, legacy=False):
  path = _write(tmp_path / "t.pth", {"w": ("FloatStorage", "0", numel, offset, size, stride)},
                {"0": _floats(numel)}, legacy)
  return torch_weights.load_torch_state_dict(path)["w"]


# --------------------------------------------------------------------------------------------
# Views: bounds, signs, types.


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_legitimate_views_load(tmp_path, legacy):
  """Transposed, offset, strided, size-1 dimensions with any stride, empty, and a harmless
  overlapping view (8 elements read from a 23-element stretch) all come out as numpy's."""
  storage = np.arange(30, dtype=np.float32)
  cases = {"transposed": (0, (3, 5), (1, 3)), "slice": (4, (3,), (2,)),
           "size_one": (2, (1, 4), (999, 1)), "scalar": (7, (), ()),
           "empty": (0, (0, 5), (5, 1)), "overlap": (1, (2, 2, 2), (1, 10, 11))}
  tensors = {k: ("FloatStorage", "0", 30, *v) for k, v in cases.items()}
  path = _write(tmp_path / "ok.pth", tensors, {"0": storage.tobytes()}, legacy)
  loaded = torch_weights.load_torch_state_dict(path)
  for name, (offset, size, stride) in cases.items():
    expected = np.lib.stride_tricks.as_strided(
        storage[offset:], size, [s * 4 if n > 1 else 0 for n, s in zip(size, stride)])
    assert loaded[name].shape == tuple(size) and loaded[name].dtype == np.float32, name
    np.testing.assert_array_equal(loaded[name], expected, err_msg=name)
    assert loaded[name].flags.owndata and loaded[name].flags.writeable


@pytest.mark.parametrize("numel, size, stride, match", [
    # The finding: stride 0 over a 4-byte storage gave a 549 MiB array ...
    (1, (2**27,), (0,), r"is a broadcast \(stride-0\) or overlapping view: 134217728 elements "
                        r"from 1 stored ones .* save such tensors with \.contiguous\(\)"),
    # ... and a larger one a raw MemoryError; now the byte limit refuses it first.
    (1, (2**40,), (0,), r"has shape \(1099511627776,\) of float32: 4096\.0 GiB, above "
                        r"MAX_TENSOR_BYTES \(16 GiB\) and refused before reading"),
    (9, (3, 3), (1, 1), r"is a .* overlapping view: 9 elements from 5 stored ones"),
    (9, (2, 3), (0, 1), r"is a .* overlapping view: 6 elements from 3 stored ones"),
])
def test_views_that_would_expand_the_file_are_refused(tmp_path, numel, size, stride, match):
  with pytest.raises(MalformedWeightsError, match=r"^\S*t\.pth: tensor 'w' " + match) as e:
    _load_one(tmp_path, size, stride, numel=numel)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("offset, size, stride, match", [
    (-1, (2,), (1,), r"negative offset, size or stride \(offset -1"),
    (0, (-2,), (1,), r"negative offset, size or stride"),
    (3, (2,), (-1,), r"negative offset, size or stride"),
    (3, (2,), (1,), r"reaches past the end of its storage \(element 4 of 4"),
    (0, (2, 2), (3, 1), r"reaches past the end of its storage \(element 4 of 4"),
    (0, (2,), (1, 1), r"malformed view"),
    (0, (2.5,), (1,), r"malformed view"),
    (0, "ab", (1, 1), r"malformed view"),
    (None, (2,), (1,), r"malformed view"),
])
def test_bad_views_are_refused(tmp_path, legacy, offset, size, stride, match):
  with pytest.raises(MalformedWeightsError, match=r"t\.pth: tensor 'w' .*" + match) as e:
    _load_one(tmp_path, size, stride, offset, legacy=legacy)
  assert "re-save the state dict with torch.save" in str(e.value)


def test_tensor_byte_limit_is_stated_and_adjustable(tmp_path, monkeypatch):
  monkeypatch.setattr(torch_weights, "MAX_TENSOR_BYTES", 8)
  with pytest.raises(MalformedWeightsError, match=r"storage 0 declares 4 elements of float32: "
                     r".* above MAX_TENSOR_BYTES .* raise sweet_jax\.torch_weights\.MAX_TENSOR"):
    _load_one(tmp_path, (2,), (1,))
  monkeypatch.setattr(torch_weights, "MAX_TENSOR_BYTES", 16)
  np.testing.assert_array_equal(_load_one(tmp_path, (2, 2), (2, 1)), [[0, 1], [2, 3]])


# --------------------------------------------------------------------------------------------
# Storages: declared sizes against the bytes in the file, before reading them.


def test_zip_storage_sizes_must_match_their_declaration(tmp_path):
  def load(numel, raw, key="0", types=("FloatStorage",)):
    tensors = {f"w{i}": (t, key, numel, 0, (1,), (1,)) for i, t in enumerate(types)}
    return torch_weights.load_torch_state_dict(_write(tmp_path / "s.pth", tensors, {"0": raw}))

  with pytest.raises(MalformedWeightsError, match=r"s\.pth: storage 0 holds 8 bytes, but is "
                     r"declared as 4 elements of float32 \(16 bytes\)"):
    load(4, _floats(2))
  with pytest.raises(MalformedWeightsError, match=r"storage 0 holds 16 bytes, but is declared "
                     r"as 2 elements"):
    load(2, _floats(4))
  with pytest.raises(MalformedWeightsError, match=r"storage 0 declares 4398046511104 elements "
                     r"of float32: 16384\.0 GiB, above MAX_TENSOR_BYTES"):
    load(2**42, _floats(1))  # Refused from the pickle: the zip member is never read.
  with pytest.raises(MalformedWeightsError, match=r"storage 0 declares -1 elements, not a count"):
    load(-1, b"")
  with pytest.raises(MalformedWeightsError, match=r"storage 0 is declared as 4 elements of "
                     r"float64 and as 4 of float32"):
    load(4, _floats(4), types=("FloatStorage", "DoubleStorage"))
  with pytest.raises(MalformedWeightsError, match=r"storage 1 is missing \(m/data/1\)"):
    load(1, _floats(1), key="1")
  assert load(1, _floats(1))["w0"].tolist() == [0.0]


def test_legacy_storage_counts_and_views_must_match(tmp_path):
  tensor = ("FloatStorage", "0", 4, 0, (2,), (1,))
  with pytest.raises(MalformedWeightsError, match=r"storage 0 holds 5 elements, but is "
                     r"declared with 4"):
    torch_weights.load_torch_state_dict(
        _write(tmp_path / "a.pth", {"w": tensor}, {"0": _floats(4)}, True, counts={"0": 5}))
  with pytest.raises(MalformedWeightsError, match=r"storage 0 holds -1 elements"):
    torch_weights.load_torch_state_dict(
        _write(tmp_path / "b.pth", {"w": tensor}, {"0": _floats(4)}, True, counts={"0": -1}))
  with pytest.raises(MalformedWeightsError, match=r"storage 0 is truncated \(12 of 16 bytes\)"):
    torch_weights.load_torch_state_dict(
        _write(tmp_path / "c.pth", {"w": tensor}, {"0": _floats(3)}, True, counts={"0": 4}))
  # A legacy view (key, offset, numel) must lie in its root storage, and tensors in the view.
  view = {"w": ("FloatStorage", "0", 4, 1, (2,), (1,), ("v", 1, 3))}
  loaded = torch_weights.load_torch_state_dict(
      _write(tmp_path / "d.pth", view, {"0": _floats(4)}, True))
  np.testing.assert_array_equal(loaded["w"], [2, 3])
  with pytest.raises(MalformedWeightsError, match=r"storage 0 has a view \('v', 2, 3\) that is "
                     r"not \(key, offset, numel\) inside its 4 elements"):
    torch_weights.load_torch_state_dict(_write(
        tmp_path / "e.pth", {"w": ("FloatStorage", "0", 4, 0, (1,), (1,), ("v", 2, 3))},
        {"0": _floats(4)}, True))
  with pytest.raises(MalformedWeightsError, match=r"reaches past the end of its storage "
                     r"\(element 3 of 3"):
    torch_weights.load_torch_state_dict(_write(
        tmp_path / "f.pth", {"w": ("FloatStorage", "0", 4, 2, (2,), (1,), ("v", 1, 3))},
        {"0": _floats(4)}, True))


# --------------------------------------------------------------------------------------------
# Pickles that try to run something.


class _CreatesAFile:
  """Unpickling this would create `path` (a hostile pickle need not use os.system)."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_pickle_that_creates_a_file_is_refused(tmp_path, legacy):
  sentinel = tmp_path / "created"
  payload = pickle.dumps(collections.OrderedDict(w=_CreatesAFile(str(sentinel))), protocol=2)
  path = str(tmp_path / "hostile.pth")
  if legacy:
    header = [torch_weights.LEGACY_MAGIC_NUMBER, torch_weights.LEGACY_PROTOCOL_VERSION, {}]
    epath.Path(path).write_bytes(b"".join(pickle.dumps(v, protocol=2) for v in header) + payload)
  else:
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("m/data.pkl", payload)
  with pytest.raises(UnsafeWeightsError, match=r"hostile\.pth: refusing to load: the pickle "
                     r"references (builtins|io)\.open"):
    torch_weights.load_torch_state_dict(path)
  assert not sentinel.exists()
