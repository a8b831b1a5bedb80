"""Model registries: configs name a tokenizer or a generator on tokens; the assembly builds
it from typed fields."""

from flax import linen as nn

from sweet_jax.models.ar import ARTransformer
from sweet_jax.models.cqae import ImageCQAE
from sweet_jax.models.maskgit import MaskGITTransformer
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


GENERATORS: dict[str, type[nn.Module]] = {
    "ar": ARTransformer,
    "maskgit": MaskGITTransformer,
}


def is_generator(name: str) -> bool:
  """Whether config.model.name names a generator on tokens (not a tokenizer)."""
  return name in GENERATORS


def model_class(name: str) -> type[Tokenizer]:
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)} (tokenizers), "
                     f"{sorted(GENERATORS)} (generators)")
  return MODELS[name]


def build_model(name: str, **fields) -> nn.Module:
  """Builds the named tokenizer from its own fields (never a whole config)."""
  return model_class(name)(**fields)
