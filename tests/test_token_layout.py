"""The flat token layout a generator models: round trips, id ranges, the official sizes."""

import numpy as np
import pytest

from sweet_jax.models.token_layout import MARKERS, TokenLayout

WORDS = {"adj": ((0, 1), 7), "noun": ((2,), 5)}
VERBS = {"adv": ((0, 1), 4), "verb": ((2,), 6)}


def _words(rng, batch, tokens, first, second):
  return np.concatenate([rng.integers(0, first, (batch, tokens, 2)),
                         rng.integers(0, second, (batch, tokens, 1))], axis=-1)


def test_image_words_round_trip_with_the_official_markers():
  layout = TokenLayout.from_index_groups({"spatial": (3, 3)}, {"spatial": WORDS})
  indices = _words(np.random.default_rng(0), 4, 3, 7, 5)
  seq = layout.flatten(indices)
  assert seq.shape == (4, 1 + 6 + 2 + 3 + 1) == (4, layout.seq_len)
  assert layout.vocab_size == len(MARKERS) + 7 + 5
  # [S_start] adjectives (token-major, both of each token) [smn] [sms] nouns [S_end]
  np.testing.assert_array_equal(seq[:, 0], 0)
  np.testing.assert_array_equal(seq[:, 1:7], indices[..., :2].reshape(4, 6) + 8)
  np.testing.assert_array_equal(seq[:, 7:9], [[5, 4]] * 4)
  np.testing.assert_array_equal(seq[:, 9:12], indices[..., 2] + 8 + 7)
  np.testing.assert_array_equal(seq[:, 12], 1)
  np.testing.assert_array_equal(layout.unflatten(seq)["spatial"], indices)


def test_video_words_and_ranges():
  layout = TokenLayout.from_index_groups({"temporal": (4, 3), "spatial": (2, 3)},
                                         {"temporal": VERBS, "spatial": WORDS})
  rng = np.random.default_rng(1)
  indices = {"spatial": _words(rng, 2, 2, 7, 5), "temporal": _words(rng, 2, 4, 4, 6)}
  seq = layout.flatten(indices)
  ranges = layout.allowed_ranges()
  assert ranges.shape == (layout.seq_len, 2)
  assert np.all((seq >= ranges[:, 0]) & (seq < ranges[:, 1]))
  markers = ranges[:, 1] - ranges[:, 0] == 1
  assert markers.sum() == 8 and set(seq[0, markers]) == set(range(8))
  # Spatial first; then the temporal branch opens with T_start (2) and ends with T_end (3).
  assert seq[0, 0] == 0 and seq[0, 1 + 4 + 2 + 2] == 1 and seq[0, 1 + 4 + 2 + 2 + 1] == 2
  assert seq[0, -1] == 3
  # Each part of speech has its own id range, in the official order adj, noun, adv, verb.
  words = ranges[~markers]
  assert list(dict.fromkeys(map(tuple, words))) == [(8, 15), (15, 20), (20, 24), (24, 30)]
  back = layout.unflatten(seq)
  for branch in indices:
    np.testing.assert_array_equal(back[branch], indices[branch])


def test_codes_without_markers_and_codebook_groups():
  vq = TokenLayout.from_index_groups({"spatial": (6,)}, {"spatial": {"code": (None, 9)}})
  codes = np.random.default_rng(2).integers(0, 9, (3, 6))
  assert vq.seq_len == 6 and vq.vocab_size == 9
  np.testing.assert_array_equal(vq.flatten(codes), codes)
  # SoftVQ with two codebooks: token columns, each codebook its own range.
  groups = {"group0": ((0, 1, 2), 9), "group1": ((3, 4, 5), 9)}
  two = TokenLayout.from_index_groups({"spatial": (6,)}, {"spatial": groups})
  seq = two.flatten(codes)
  np.testing.assert_array_equal(seq[:, 3:], codes[:, 3:] + 9)
  np.testing.assert_array_equal(two.unflatten(seq)["spatial"], codes)


def test_the_official_generator_sizes():
  """SweetTokenizer's UCF-101 generator: 256 spatial and 1024 temporal tokens over
  5078 + 5403 + 1872 + 9267 words: 3840 ids + 8 markers = block size 3848."""
  layout = TokenLayout.from_index_groups(
      {"spatial": (256, 3), "temporal": (1024, 3)},
      {"spatial": {"adj": ((0, 1), 5078), "noun": ((2,), 5403)},
       "temporal": {"adv": ((0, 1), 1872), "verb": ((2,), 9267)}})
  assert layout.seq_len == 3848
  assert layout.vocab_size == 8 + 10481 + 11139


def test_metadata_round_trip_and_bad_input():
  layout = TokenLayout.from_index_groups({"spatial": (3, 3)}, {"spatial": WORDS})
  again = TokenLayout.from_metadata(layout.to_metadata())
  assert again == layout
  with pytest.raises(ValueError, match=r"expects \(3, 3\)"):
    layout.flatten(np.zeros((2, 4, 3), np.int32))
  with pytest.raises(ValueError, match="outside"):
    layout.flatten(np.full((2, 3, 3), 6))  # noun index 6 >= 5
  with pytest.raises(ValueError, match="seq_len|expected"):
    layout.unflatten(np.zeros((2, 5), np.int32))
