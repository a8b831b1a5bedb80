"""Tokenizer registry: configs name a model, the assembly builds it from typed fields."""

from flax import linen as nn

from sweet_jax.models.cqae import ImageCQAE
from sweet_jax.models.softvq import SoftVQVAE
from sweet_jax.models.titok import TiTok
from sweet_jax.models.tokenizer import Tokenizer
from sweet_jax.models.video_cqae import VideoCQAE

MODELS: dict[str, type[Tokenizer]] = {
    "cqae_image": ImageCQAE,
    "cqae_video": VideoCQAE,
    "softvq": SoftVQVAE,
    "titok": TiTok,
}


def model_class(name: str) -> type[Tokenizer]:
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
  return MODELS[name]


def build_model(name: str, **fields) -> nn.Module:
  """Builds the named tokenizer from its own fields (never a whole config)."""
  return model_class(name)(**fields)
