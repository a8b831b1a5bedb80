"""Tokenizer registry: configs name a model, the trainer builds it from typed fields."""

from flax import linen as nn

from sweet_jax.models.cqae import ImageCQAE

MODELS: dict[str, type[nn.Module]] = {"cqae_image": ImageCQAE}


def build_model(name: str, **fields) -> nn.Module:
  """Builds the named tokenizer from its own fields (never a whole config)."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
  return MODELS[name](**fields)
