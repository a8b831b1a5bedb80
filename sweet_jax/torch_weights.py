"""Reading a PyTorch `.pth` of tensors into numpy, without torch and without running the pickle.

Why: some reference weights are published only as `torch.save` files (FID's InceptionV3 is
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`); torch is not a dependency here, and
`torch.load` would execute whatever callables the pickle names. This reader lets the pickle
name nothing but `collections.OrderedDict`, torch's tensor-rebuild functions (replaced by our
own, which only record storage, offset, size and stride) and the `torch.*Storage` type names
(which only select a numpy dtype). Any other global, or a persistent id that is not a storage
reference, is refused with `UnsafeWeightsError` before anything runs.

Both layouts `torch.save` has written are read (see torch/serialization.py):
  * zip (torch >= 1.6): `<archive>/data.pkl` (protocol-2 pickle) and one raw storage per
    `<archive>/data/<key>`, little-endian unless `<archive>/byteorder` says `big`;
    persistent ids are ('storage', storage_type, key, location, numel).
  * legacy: five pickles back to back (magic number, protocol version 1001, system info, the
    object, the list of storage keys), then for each listed key an int64 little-endian
    element count and that many raw little-endian elements; persistent ids are
    ('storage', storage_type, key, location, numel, view_metadata), where view_metadata is
    None or (view_key, element_offset, view_numel) for a slice of the storage `key`.
Storages are filled only after the object pickle (legacy), so rebuilt tensors are references
that `load_torch_state_dict` resolves at the end, by index math with numpy's bounds checks.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from etils import epath

from sweet_jax.weights import UnsafeWeightsError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# `torch.<name>` storage classes, as pickled for a tensor's storage, to the element type.
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class StorageRef(NamedTuple):
  """A storage named in the pickle: the root storage's key and where this view starts in it."""
  key: str
  dtype: np.dtype
  element_offset: int


class TensorRef(NamedTuple):
  """A tensor rebuilt from the pickle, to be read out of its storage once storages are loaded."""
  storage: StorageRef
  storage_offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_flags_and_hooks) -> TensorRef:
  """Stands in for `torch._utils._rebuild_tensor` and `_rebuild_tensor_v2` (whose further
  arguments, requires_grad, backward hooks and metadata, do not affect the values)."""
  if not isinstance(storage, StorageRef):
    raise ValueError(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
  return TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused_flags_and_hooks) -> TensorRef:
  """Stands in for `torch._utils._rebuild_parameter`: an nn.Parameter is its tensor."""
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _TorchUnpickler(pickle.Unpickler):
  """Resolves only the whitelisted globals; records the dtype and size of every storage."""

  def __init__(self, file, path: str):
    super().__init__(file, encoding="utf-8")
    self._path = path
    self.storages: dict[str, tuple[np.dtype, int]] = {}  # key -> (dtype, element count)

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch" and name in STORAGE_DTYPES:
      return STORAGE_DTYPES[name]
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    raise UnsafeWeightsError(
        f"{self._path}: refusing to load: the pickle references {module}.{name}; a torch "
        "weights file may only hold tensors in (ordered) dicts.")

  def persistent_load(self, pid: Any) -> StorageRef:
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)):
      raise UnsafeWeightsError(f"{self._path}: refusing to load: persistent id {pid!r} is not "
                               "a tensor storage reference.")
    dtype, key, numel = pid[1], str(pid[2]), int(pid[4])
    self.storages[key] = (dtype, numel)
    view = pid[5] if len(pid) == 6 else None
    return StorageRef(key, dtype, 0 if view is None else int(view[1]))


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: array} from a `torch.save`d dict of tensors (e.g. a state dict), zip or legacy."""
  path = os.fspath(path)
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"torch weights file not found: {path}")
  data = epath.Path(path).read_bytes()
  try:
    if zipfile.is_zipfile(io.BytesIO(data)):
      tree, storages = _load_zip(data, path)
    else:
      tree, storages = _load_legacy(data, path)
  except UnsafeWeightsError:
    raise
  except Exception as e:  # Truncated, corrupt or not a torch file at all.
    raise ValueError(f"{path}: not a readable torch weights file ({type(e).__name__}: {e})") from e
  if not isinstance(tree, dict):
    raise ValueError(f"{path}: holds a {type(tree).__name__}, not a dict of tensors.")
  arrays = {}
  for name, tensor in tree.items():
    if not isinstance(tensor, TensorRef):
      raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor.")
    arrays[str(name)] = _read_tensor(tensor, storages, path, name)
  return arrays


def _load_zip(data: bytes, path: str) -> tuple[Any, dict[str, np.ndarray]]:
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"expected one '<archive>/data.pkl', found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"  # What torch assumes for files written before this record existed.
    if f"{prefix}byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}byteorder").decode()
    order = {"little": "<", "big": ">"}[byteorder]
    unpickler = _TorchUnpickler(io.BytesIO(archive.read(pickles[0])), path)
    tree = unpickler.load()
    storages = {}
    for key, (dtype, numel) in unpickler.storages.items():
      storages[key] = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype.newbyteorder(order),
                                    numel)
  return tree, storages


def _load_legacy(data: bytes, path: str) -> tuple[Any, dict[str, np.ndarray]]:
  stream = io.BytesIO(data)
  if _TorchUnpickler(stream, path).load() != LEGACY_MAGIC_NUMBER:
    raise ValueError("neither a zip archive nor a legacy torch file (wrong magic number)")
  protocol = _TorchUnpickler(stream, path).load()
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise ValueError(f"unsupported legacy protocol version {protocol}")
  system_info = _TorchUnpickler(stream, path).load()
  if not system_info.get("little_endian", True):
    raise ValueError("written on a big-endian machine, which the legacy format stores natively")
  unpickler = _TorchUnpickler(stream, path)
  tree = unpickler.load()
  storages = {}
  for key in _TorchUnpickler(stream, path).load():
    dtype, _ = unpickler.storages[key]
    (numel,) = struct.unpack("<q", stream.read(8))
    raw = stream.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
      raise ValueError(f"storage {key} is truncated")
    storages[key] = np.frombuffer(raw, dtype.newbyteorder("<"), numel)
  return tree, storages


def _read_tensor(tensor: TensorRef, storages: dict[str, np.ndarray], path: str,
                 name: str) -> np.ndarray:
  """The tensor's elements gathered from its storage: element [i, j, ...] is
  storage[view offset + storage_offset + i * stride[0] + j * stride[1] + ...]."""
  start = tensor.storage.element_offset + tensor.storage_offset
  if start < 0 or min(tensor.stride, default=0) < 0 or min(tensor.size, default=0) < 0:
    raise ValueError(f"{path}: tensor {name!r} has a negative offset, size or stride.")
  storage = storages.get(tensor.storage.key)
  if storage is None:
    raise ValueError(f"{path}: tensor {name!r} refers to storage {tensor.storage.key}, "
                     "which the file does not contain.")
  index = np.asarray(start, np.int64)
  for length, step in zip(tensor.size, tensor.stride):
    index = index[..., None] + np.arange(length, dtype=np.int64) * step
  try:
    values = storage[index]
  except IndexError as e:
    raise ValueError(f"{path}: tensor {name!r} reaches past the end of its storage.") from e
  return np.array(values, dtype=tensor.storage.dtype)  # Native byte order, own memory.
