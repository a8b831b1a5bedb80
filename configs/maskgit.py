r"""MaskGIT (arXiv:2202.04200) over a 1-D tokenizer's codes, as TiTok trains and samples it
(arXiv:2406.07550 §4.1; the official configs/training/generator/maskgit.yaml and
`ImageBert.generate`; sweet_jax/models/maskgit.py), on a token dataset written by
`python -m sweet_jax.tokenize`. Variants (`--config=configs/maskgit.py:VARIANT`):

  cpu       a small MaskGIT on the tokens of the TiTok cpu tokenizer (configs/titok.py:cpu):
            python -m sweet_jax.main --config=configs/maskgit.py:cpu \
              --workdir=workdirs/maskgit --config.tokens.dir=workdirs/titok_tokens
  runlocal  a tiny model for tests (seconds).
  imagenet  TiTok-B-64's ImageNet generator: 64 codes of 4096, 1000 classes, width 768,
            24 layers, 16 heads, dropout 0.1, label dropout 0.1, label smoothing 0.1, AdamW
            2e-4 with betas (0.9, 0.96) and weight decay 0.03, 10k warmup steps, batch 2048;
            sampling with 8 steps, randomize_temperature 11.0, guidance 3.0 decaying linearly:
            python -m sweet_jax.main --config=configs/maskgit.py:imagenet \
              --workdir=gs://BUCKET/maskgit_b64 --config.tokens.dir=gs://BUCKET/titok_tokens

Differences from the official ImageBert: pre-LN blocks, dropout on the embeddings only
(see the module docstring of sweet_jax/models/maskgit.py).
"""

import ml_collections
from ml_collections import config_dict

from configs import common

VARIANTS = ("cpu", "runlocal", "imagenet")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.generator_variant(arg, "maskgit", VARIANTS)
  c = common.generator_base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="maskgit",
      # None: from the token dataset's layout (python -m sweet_jax.tokenize).
      vocab_size=config_dict.placeholder(int),
      seq_len=config_dict.placeholder(int),
      num_classes=0,
      width=256,
      depth=4,
      num_heads=4,
      mlp_ratio=4.0,
      dropout=0.1,
      class_dropout=0.1,
      compute_dtype="float32",
      remat="none",
  ))
  # Decoding (sweet_jax/sampling/maskgit.py), TiTok's `generate` arguments.
  c.sampling = ml_collections.ConfigDict(dict(
      num_steps=8, guidance_scale=0.0, guidance_decay="constant", guidance_scale_pow=3.0,
      randomize_temperature=1.0, softmax_temperature_annealing=False, schedule="arccos"))
  if variant == "cpu":
    c.model.update(width=128, depth=4, num_heads=4)
    c.optim.update(lr=1e-3, warmup_steps=100)
    c.total_steps = 1500
    c.eval.num_samples = 128
  elif variant == "runlocal":
    c.model.update(width=32, depth=1, num_heads=2)
    common.generator_runlocal(c)
  else:  # imagenet, TiTok-B-64
    c.model.update(vocab_size=4096, seq_len=64, num_classes=1000, width=768, depth=24,
                   num_heads=16, compute_dtype="bfloat16")
    c.optim.update(lr=2e-4, warmup_steps=10_000, b2=0.96, weight_decay=0.03)
    c.total_steps = 500_000
    c.batch_size = 2048
    c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
    c.sampling.update(num_steps=8, randomize_temperature=11.0, guidance_scale=3.0,
                      guidance_decay="linear")
    c.eval.num_samples = 50_000
    c.summary_every_steps = 10_000
    c.checkpoint_every_steps = 5_000
  return c.lock()
