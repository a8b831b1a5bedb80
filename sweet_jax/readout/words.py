"""The words behind each token of a language-codebook tokenizer.

With the MLC quantizer every spatial token is two adjectives (averaged) and a noun, and
every temporal token of the video CQAE two adverbs and a verb. These functions turn
token indices into those words and into the Markdown tables that the trainer writes to
`words.md` and TensorBoard, and that the readout command and the API print.

Whatever is printed lands on someone's photo, so a word on the default exclusion list
(sweet_jax/codebook/exclusions.py: profanity, slurs, sexual terms, protected attributes,
violence, drugs), itself or as its lemma ("nazis"), prints as WITHHELD. New codebooks
hold no such word; the check is for those built before the list (builder version < 3)
or with an older one, which a run keeps in its workdir. A codebook whose manifest says
the user chose their own list (`--exclude=FILE`, or none) prints as it is: that choice
was deliberate and is honoured.
"""

import functools
from typing import Sequence

import numpy as np

from sweet_jax.codebook import exclusions, pos
from sweet_jax.codebook.artifact import WordGroup
from sweet_jax.models.tokenizer import Tokenizer

WITHHELD = "[withheld]"


def token_words(model: Tokenizer, indices: np.ndarray, branch: str = "spatial"
                ) -> list[list[str]]:
  """Indices [B, Q, 3] -> per sample, per token 'adjective+adjective noun' (the
  "temporal" branch of the video CQAE: 'adverb+adverb verb')."""
  if not model.has_words:
    raise ValueError(f"{type(model).__name__} does not quantize with the language codebook "
                     "(config.model.quantizer_type='mlc'); its tokens are not words")
  quantizer = model.quantizers()[branch]
  withheld = withheld_words(quantizer.group)

  def shown(word: str) -> str:
    return WITHHELD if word in withheld else word

  words = quantizer.words(np.asarray(indices))
  return [[f"{shown(a)}+{shown(b)} {shown(n)}" for a, b, n in sample] for sample in words]


@functools.lru_cache(maxsize=4)
def withheld_words(group: WordGroup) -> frozenset[str]:
  """The words of `group` the readout prints as WITHHELD (see the module docstring)."""
  if group.user_exclusions:
    return frozenset()
  return frozenset(exclusions.unsafe_words((str(w) for w in group.words), exclusions.load(),
                                           pos.load_lemma_of()))


def words_markdown(model: Tokenizer, indices: np.ndarray,
                   names: Sequence[str] | None = None) -> str:
  """A markdown table per image (TensorBoard renders it), one row per token."""
  parts = []
  for i, tokens in enumerate(token_words(model, indices)):
    title = names[i] if names else f"held-out image {i}"
    rows = "\n".join(f"| {t} | {w} |" for t, w in enumerate(tokens))
    parts.append(f"**{title}**\n\n| token | words |\n|---|---|\n{rows}\n")
  return "\n".join(parts)


def temporal_words_markdown(model: Tokenizer, indices: np.ndarray,
                            names: Sequence[str] | None = None) -> str:
  """The video CQAE's temporal tokens [B, N, 3] (one per patch position, row-major), as
  a grid of 'adverb+adverb verb' per clip."""
  clips = token_words(model, indices, "temporal")
  side = int(round(len(clips[0]) ** 0.5))
  parts = []
  for i, cells in enumerate(clips):
    rows = "\n".join("| " + " | ".join(cells[r * side:(r + 1) * side]) + " |" for r in range(side))
    header = "| " + " | ".join(f"x{c}" for c in range(side)) + " |\n|" + "---|" * side
    title = names[i] if names else f"held-out clip {i}"
    parts.append(f"**{title}: temporal tokens by position**\n\n{header}\n{rows}\n")
  return "\n".join(parts)


def sample_words_markdown(model: Tokenizer, indices, names: Sequence[str] | None = None) -> str:
  """`words_markdown` of the spatial tokens, then the temporal grid when there are
  temporal tokens (`indices` is an array, or a dict per branch for the video CQAE)."""
  if not isinstance(indices, dict):
    return words_markdown(model, indices, names)
  text = words_markdown(model, indices["spatial"], names)
  if "temporal" in indices:
    text += "\n" + temporal_words_markdown(model, indices["temporal"], names)
  return text
