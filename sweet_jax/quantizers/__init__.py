"""Quantizers. Each maps latents [..., d] to (codes [..., d], aux dict) and back from indices."""

from sweet_jax.quantizers.mlc import LanguageQuantizer
from sweet_jax.quantizers.softvq import SoftVectorQuantizer
from sweet_jax.quantizers.vq import VectorQuantizer

__all__ = ["LanguageQuantizer", "SoftVectorQuantizer", "VectorQuantizer"]
