"""The language codebook: word groups (adjectives + nouns, adverbs + verbs) with frozen
word vectors and a GCN-normalised word graph, as SweetTokenizer's MLC quantizer needs."""

from sweet_jax.codebook.artifact import LanguageCodebook, WordGroup, load, save
from sweet_jax.codebook.graph import gcn_normalize, knn_edges, pair_edges, read_pairs
from sweet_jax.codebook.pos import PosLexicon, load_pos_lexicon, load_stop_words, select_words
from sweet_jax.codebook.sources import SOURCES, load_embeddings

__all__ = [
    "DEFAULT_MIN_LOG_PROB", "DEFAULT_SIZES", "LanguageCodebook", "PosLexicon", "SOURCES",
    "WordGroup", "build_codebook", "cached_codebook", "default_cache_dir", "gcn_normalize",
    "knn_edges", "load", "load_embeddings", "load_pos_lexicon", "load_stop_words",
    "pair_edges", "read_pairs", "save", "select_words",
]
_BUILD_NAMES = ("DEFAULT_MIN_LOG_PROB", "DEFAULT_SIZES", "build_codebook", "cached_codebook",
                "default_cache_dir")


def __getattr__(name: str):
  """The builder's names, imported on first use: `python -m sweet_jax.codebook.build`
  must not find its own module already imported by this package."""
  if name in _BUILD_NAMES:
    from sweet_jax.codebook import build  # pylint: disable=g-import-not-at-top
    return getattr(build, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
