r"""A class-conditional autoregressive transformer over a tokenizer's tokens (LlamaGen-style
GPT, arXiv:2406.06525; sweet_jax/models/ar.py), trained on a token dataset written by
`python -m sweet_jax.tokenize`. Variants (`--config=configs/ar_generator.py:VARIANT`):

  cpu       a small GPT over the main job's words (./launch/local.sh generate does it all;
            its token dataset has the tokenizer's training split and its held-out `eval`):
            python -m sweet_jax.main --config=configs/ar_generator.py:cpu \
              --workdir=workdirs/generate/ar --config.tokens.dir=workdirs/generate/tokens
  runlocal  a tiny model for tests (seconds).
  ucf101    SweetTokenizer's UCF-101 video generator (arXiv:2412.10443; the official
            transformer_generate.yaml and utils/lm_transformer.py): 24 layers, width 1536,
            16 heads, 3848 positions (1 class token + 3840 word ids + 8 markers - 1),
            101 classes, AdamW 1e-4, betas (0.9, 0.96), weight decay 0.03, 40k warmup
            steps, cosine to 1e-5, label smoothing 0.1, global batch 64. Memory: 2 sequences
            per device on 32 (mesh data 4 x fsdp 8, e.g. TPU v5p-64): the planner gives
            31.5 GiB per device (python -m sweet_jax.plan --config=configs/ar_generator.py:ucf101
            --mesh="(('data', 4), ('fsdp', 8), ('model', 1))"), thanks to the query-chunked
            attention (attention_chunk; without it every layer's float32 attention logits,
            [2, 16, 3848, 3848] per device, stayed alive for the backward pass: 112 GiB)
            and remat "dots_no_batch" ("dots" would save those logits again):
            python -m sweet_jax.main --config=configs/ar_generator.py:ucf101 \
              --workdir=gs://BUCKET/ar_ucf101 --config.tokens.dir=gs://BUCKET/ucf_tokens

Differences from the official generator: LLaMA blocks (RMSNorm, RoPE, SwiGLU) instead of
minGPT's (LayerNorm, learned positions, GELU), and the class as its own embedding, not
a sequence id (the official ids of classes and markers overlap; models/token_layout.py).
"""

import ml_collections
from ml_collections import config_dict

from configs import common

VARIANTS = ("cpu", "runlocal", "ucf101")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.generator_variant(arg, "ar_generator", VARIANTS)
  c = common.generator_base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="ar",
      # None: from the token dataset's layout (python -m sweet_jax.tokenize).
      vocab_size=config_dict.placeholder(int),
      seq_len=config_dict.placeholder(int),
      num_classes=0,  # 0: unconditional
      width=256,
      depth=4,
      num_heads=4,
      mlp_hidden=config_dict.placeholder(int),  # None: LlamaGen's rule
      num_class_tokens=1,
      dropout=0.0,
      class_dropout=0.1,
      compute_dtype="float32",
      remat="none",
      # Attention over this many queries at a time (nn/llama.py causal_attention): the
      # float32 logits of one chunk, [B, heads, chunk, T], instead of [B, heads, T, T].
      attention_chunk=512,
  ))
  # Sampling (sweet_jax/sampling/ar.py): temperature, top-k then top-p, and classifier-
  # free guidance (1.0: none); each position draws from its own part of speech's range.
  c.sampling = ml_collections.ConfigDict(dict(temperature=1.0, top_k=0, top_p=1.0,
                                              cfg_scale=1.0))
  if variant == "cpu":
    # ~0.6 s per step on 2 cores: 1000 steps in about 10 minutes (3136 sequences of 100
    # ids from the generate job's tokens: 10 epochs).
    c.model.update(width=128, depth=4, num_heads=4, dropout=0.1)
    c.tokens.eval_split = "eval"
    c.optim.update(lr=1e-3, warmup_steps=100)
    c.total_steps = 1000
    c.batch_size = 32
    c.eval.num_samples = 256
    c.summary_every_steps = 500
  elif variant == "runlocal":
    c.model.update(width=32, depth=1, num_heads=2)
    common.generator_runlocal(c)
  else:  # ucf101
    c.model.update(vocab_size=8 + 5078 + 5403 + 1872 + 9267, seq_len=3848, num_classes=101,
                   width=1536, depth=24, num_heads=16, compute_dtype="bfloat16",
                   remat="dots_no_batch")
    c.optim.update(lr=1e-4, warmup_steps=40_000, end_lr_fraction=0.1, b2=0.96,
                   weight_decay=0.03)
    c.total_steps = 400_000
    c.batch_size = 64
    c.mesh = (("data", -1), ("fsdp", 8), ("model", 1))
    c.sampling.update(top_k=4096, top_p=0.9)
    c.eval.num_samples = 2048
    c.summary_every_steps = 10_000
    c.checkpoint_every_steps = 5_000
  return c.lock()
