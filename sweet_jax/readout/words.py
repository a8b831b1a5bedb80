"""The words behind each token of a language-codebook tokenizer.

With the MLC quantizer every spatial token is two adjectives (averaged) and a noun, and
every temporal token of the video CQAE two adverbs and a verb. These functions turn
token indices into those words and into the Markdown tables that the trainer writes to
`words.md` and TensorBoard, and that the readout command and the API print.
"""

from typing import Sequence

import numpy as np

from sweet_jax.models.tokenizer import Tokenizer


def token_words(model: Tokenizer, indices: np.ndarray, branch: str = "spatial"
                ) -> list[list[str]]:
  """Indices [B, Q, 3] -> per sample, per token 'adjective+adjective noun' (the
  "temporal" branch of the video CQAE: 'adverb+adverb verb')."""
  if not model.has_words:
    raise ValueError(f"{type(model).__name__} does not quantize with the language codebook "
                     "(config.model.quantizer_type='mlc'); its tokens are not words")
  words = model.quantizers()[branch].words(np.asarray(indices))
  return [[f"{a}+{b} {n}" for a, b, n in sample] for sample in words]


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
