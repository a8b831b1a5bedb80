"""Tokenizer registry: configs name a model, the trainer builds it from typed fields.

Entries are import paths, resolved on use, so that importing `sweet_jax.models.layers`
(as the quantizers do) never pulls in the models that import the quantizers.
"""

import importlib

from flax import linen as nn

MODELS: dict[str, str] = {
    "cqae_image": "sweet_jax.models.cqae:ImageCQAE",
    "cqae_video": "sweet_jax.models.video_cqae:VideoCQAE",
    "softvq": "sweet_jax.models.softvq:SoftVQVAE",
    "titok": "sweet_jax.models.titok:TiTok",
}


def model_class(name: str) -> type[nn.Module]:
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
  module, cls = MODELS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def build_model(name: str, **fields) -> nn.Module:
  """Builds the named tokenizer from its own fields (never a whole config)."""
  return model_class(name)(**fields)
