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
that `load_torch_state_dict` resolves at the end.

The file is untrusted, so every size is checked before memory is allocated for it, and any
inconsistency is one `MalformedWeightsError` (a ValueError) naming the file, the problem and
the fix: each storage's bytes must be exactly its declared element count times its element
size and at most `MAX_TENSOR_BYTES`; each tensor's offset, sizes and strides must be
non-negative integers, its last element (offset + sum((size - 1) * stride)) inside its
storage, and its bytes at most `MAX_TENSOR_BYTES`. A tensor may not have more elements
than the stretch of storage it reads (its offset to its last element): that refuses
broadcast (stride-0) and other self-overlapping views, which would let a few bytes of file
expand into gigabytes of memory; `torch.save` writes such views only for `expand()`ed
tensors, which `.contiguous()` makes ordinary. So no tensor takes more memory than the
bytes the file holds for it. Overlapping views that read no more elements than that
stretch (harmless) are copied out like any other.
"""

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from etils import epath

from sweet_jax.weights import UnsafeWeightsError, is_count, is_int

# The most bytes one storage or one tensor may take, checked before it is read: 4x the
# largest single tensors of today's checkpoints (a 128k x 16k bf16 embedding is 4 GiB).
# A genuine file above it can be read by raising this.
MAX_TENSOR_BYTES = 16 * 2**30

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


_CORRUPT = ("the file is corrupt or was not written by torch.save; re-download it, or re-save "
            "the state dict with torch.save from a copy you trust")


class MalformedWeightsError(ValueError):
  """A torch file whose sizes do not add up; the message names the file, problem and fix."""


class StorageRef(NamedTuple):
  """A storage named in the pickle: the root storage's key, where this (legacy) view of it
  starts and how many elements the view has (all of the root's when it is no view)."""
  key: str
  dtype: np.dtype
  element_offset: int
  numel: int


class TensorRef(NamedTuple):
  """A tensor rebuilt from the pickle, to be read out of its storage once storages are loaded
  (the fields are as the pickle gave them, unchecked until then)."""
  storage: StorageRef
  storage_offset: Any
  size: Any
  stride: Any


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_flags_and_hooks) -> TensorRef:
  """Stands in for `torch._utils._rebuild_tensor` and `_rebuild_tensor_v2` (whose further
  arguments, requires_grad, backward hooks and metadata, do not affect the values)."""
  if not isinstance(storage, StorageRef):
    raise ValueError(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
  return TensorRef(storage, storage_offset, size, stride)  # Checked by `_read_tensor`.


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
    dtype, key, numel = pid[1], str(pid[2]), pid[4]
    where = f"{self._path}: storage {key}"
    if not is_count(numel):
      raise MalformedWeightsError(f"{where} declares {numel!r} elements, not a count; {_CORRUPT}.")
    _check_limit(numel * dtype.itemsize, f"{where} declares {numel} elements of {dtype}")
    if self.storages.setdefault(key, (dtype, numel)) != (dtype, numel):
      raise MalformedWeightsError(
          f"{where} is declared as {numel} elements of {dtype} and as "
          f"{self.storages[key][1]} of {self.storages[key][0]}; {_CORRUPT}.")
    view = pid[5] if len(pid) == 6 else None
    if view is None:
      return StorageRef(key, dtype, 0, numel)
    if not (isinstance(view, tuple) and len(view) == 3 and is_count(view[1])
            and is_count(view[2]) and view[1] + view[2] <= numel):
      raise MalformedWeightsError(f"{where} has a view {view!r} that is not (key, offset, "
                                  f"numel) inside its {numel} elements; {_CORRUPT}.")
    return StorageRef(key, dtype, view[1], view[2])


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
  except (UnsafeWeightsError, MalformedWeightsError):
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
      name = f"{prefix}data/{key}"
      if name not in archive.namelist():
        raise MalformedWeightsError(f"{path}: storage {key} is missing ({name}); {_CORRUPT}.")
      stored = archive.getinfo(name).file_size  # From the zip directory: nothing read yet.
      if stored != numel * dtype.itemsize:
        raise MalformedWeightsError(
            f"{path}: storage {key} holds {stored} bytes, but is declared as {numel} elements "
            f"of {dtype} ({numel * dtype.itemsize} bytes); {_CORRUPT}.")
      storages[key] = np.frombuffer(archive.read(name), dtype.newbyteorder(order), numel)
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
    if str(key) not in unpickler.storages:
      raise MalformedWeightsError(f"{path}: storage {key!r} is listed but no tensor declares "
                                  f"it; {_CORRUPT}.")
    dtype, declared = unpickler.storages[str(key)]
    (numel,) = struct.unpack("<q", stream.read(8))
    if numel != declared:
      raise MalformedWeightsError(f"{path}: storage {key} holds {numel} elements, but is "
                                  f"declared with {declared}; {_CORRUPT}.")
    raw = stream.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
      raise MalformedWeightsError(f"{path}: storage {key} is truncated ({len(raw)} of "
                                  f"{numel * dtype.itemsize} bytes); {_CORRUPT}.")
    storages[str(key)] = np.frombuffer(raw, dtype.newbyteorder("<"), numel)
  return tree, storages


def _read_tensor(tensor: TensorRef, storages: dict[str, np.ndarray], path: str,
                 name: str) -> np.ndarray:
  """The tensor's elements copied out of its storage: element [i, j, ...] is
  storage[view offset + storage_offset + i * stride[0] + j * stride[1] + ...].

  Everything is checked (module docstring) with Python integers before numpy sees a size,
  so a hostile view is refused rather than allocated, and the copy reads only in bounds.
  """
  where = f"{path}: tensor {name!r}"
  ref, offset, size, stride = tensor
  if isinstance(size, (tuple, list)) and not size:
    stride = ()  # A scalar reads the one element at its offset, whatever strides it names.
  if not (is_int(offset) and isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
          and len(size) == len(stride) and all(map(is_int, (*size, *stride)))):
    raise MalformedWeightsError(f"{where} has a malformed view (offset {offset!r}, size "
                                f"{size!r}, stride {stride!r}); {_CORRUPT}.")
  if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
    raise MalformedWeightsError(f"{where} has a negative offset, size or stride (offset {offset}, "
                                f"size {tuple(size)}, stride {tuple(stride)}); {_CORRUPT}.")
  storage = storages.get(ref.key)
  if storage is None:
    raise MalformedWeightsError(f"{where} refers to storage {ref.key}, which the file does not "
                                f"contain; {_CORRUPT}.")
  # A size-0 dimension empties the tensor but still counts as 1 here, so that numpy can make it.
  _check_limit(math.prod(max(n, 1) for n in size) * ref.dtype.itemsize,
               f"{where} has shape {tuple(size)} of {ref.dtype}")
  count = math.prod(size)
  if count == 0:
    return np.zeros(tuple(size), ref.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= ref.numel:
    raise MalformedWeightsError(
        f"{where} reaches past the end of its storage (element {last} of {ref.numel}: offset "
        f"{offset}, size {tuple(size)}, stride {tuple(stride)}); {_CORRUPT}.")
  if count > last - offset + 1:
    raise MalformedWeightsError(
        f"{where} is a broadcast (stride-0) or overlapping view: {count} elements from "
        f"{last - offset + 1} stored ones (size {tuple(size)}, stride {tuple(stride)}), which "
        "would expand the file in memory and is refused; save such tensors with "
        ".contiguous() before torch.save.")
  itemsize = ref.dtype.itemsize
  window = storage[ref.element_offset + offset:ref.element_offset + last + 1]
  view = np.lib.stride_tricks.as_strided(  # Size-1 dimensions may carry any stride: use 0.
      window, tuple(size), tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride)),
      writeable=False)
  return np.array(view, dtype=ref.dtype)  # Native byte order, own memory.


def _check_limit(nbytes: int, what: str) -> None:
  if nbytes > MAX_TENSOR_BYTES:
    raise MalformedWeightsError(
        f"{what}: {nbytes / 2**30:.1f} GiB, above MAX_TENSOR_BYTES "
        f"({MAX_TENSOR_BYTES / 2**30:.0f} GiB) and refused before reading; if the file is "
        "genuine, raise sweet_jax.torch_weights.MAX_TENSOR_BYTES.")
