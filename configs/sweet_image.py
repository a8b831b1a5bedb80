r"""SweetTokenizer, image CQAE quantized against the language codebook (MLC).

Every token is two adjectives (averaged) and a noun: the code rows are GloVe word
vectors through a trainable 2-layer GCN over a kNN word graph (quantizers/mlc.py,
codebook/). Variants (`--config=configs/sweet_image.py:VARIANT[,CODEBOOK]`):

  cpu       the main job: the embedded real photos (pip packages' own), 64x64 crops,
            32 tokens x (2 of 1024 adjectives + 1 of 1024 nouns), width 64, 2600 steps.
            About 11.5 minutes on 2 CPU cores (docs/results.md).
            ./launch/local.sh   (or)
            python -m sweet_jax.main --config=configs/sweet_image.py:cpu --workdir=workdirs/cpu
            Expected results: docs/results.md#image-the-main-job
  runlocal  a tiny model for tests (seconds).
  B, L      ImageNet 256x256, patch 16, 256 query tokens:
            python -m sweet_jax.main --config=configs/sweet_image.py:B \
              --workdir=gs://BUCKET/sweet_image_B --config.data.data_dir=gs://BUCKET/tfds
            (imagenet2012 prepared once with TFDS, file_format=array_record.)

CODEBOOK (optional, for ablations; default `language`):
  plain     the same MLC quantizer with a free learnable table of equal size and
            dimension instead of GCN(word vectors): asks whether the words matter.
  vq        the L2-normalised VQ of config.model.codebook_size codes, one index per token.
e.g. --config=configs/sweet_image.py:cpu,plain

Override any field with --config.FIELD=VALUE, e.g. --config.total_steps=200.
"""

import ml_collections

from configs import common

VARIANTS = ("cpu", "runlocal", "B", "L")
CODEBOOKS = ("language", "plain", "vq")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, codebook = common.parse_arg(arg, "sweet_image", VARIANTS, CODEBOOKS)
  c = common.base_config()
  c.variant = f"{variant},{codebook}"
  image_size = ml_collections.FieldReference(64)
  c.data.image_size = image_size
  c.model = ml_collections.ConfigDict(dict(
      name="cqae_image",
      image_size=image_size,
      patch_size=8,
      width=128,
      num_heads=4,
      mlp_ratio=4.0,
      encoder_depth=4,
      decoder_depth=4,
      num_queries=32,
      codebook_size=4096,
      code_dim=12,
      attention_prior=True,
      position_conv=True,
      # Ours, off in the official design: a per-image colour offset in the decoder and
      # edge padding for its final 3x3 convolution (docs/training.md, Colour).
      global_color=False,
      smoothing_padding="zeros",
      quantizer_type="vq" if codebook == "vq" else "mlc",
      mlc_codebook="learned" if codebook == "plain" else "language",
      gcn_hidden=256,
      gcn_dropout=0.5,
      normalize_word_codes=False,
      # Transformer blocks: float32 | bfloat16 matmuls (parameters stay float32), and
      # rematerialisation none | full | dots | dots_no_batch (nn/layers.py).
      compute_dtype="float32",
      remat="none",
  ))

  c.data.color_jitter = 0.3
  if variant == "cpu":
    # A small model: on 2 cores it gets through more steps in the same minutes,
    # and steps (not FLOPs) are what this architecture is short of on CPU (width 128
    # gave the same PSNR per step, 1.6x slower). lr 1e-2 beat 2e-3 and 5e-3 by
    # 0.7 / 0.2 dB held-out at 600 steps.
    c.model.update(width=64, num_heads=2, encoder_depth=2, decoder_depth=2, codebook_size=1024,
                   gcn_hidden=64)
    # The decoder's per-image colour offset and edge-padded last convolution: +0.14 to
    # +0.58 dB and +0.005 to +0.035 SSIM held-out over the same three seeds (the colour
    # error unchanged; docs/training.md, Colour).
    c.model.update(global_color=True, smoothing_padding="edge")
    # A CPU-sized vocabulary: the 1024 most frequent words per part of speech. The
    # quantizer's cost grows with the word count (distances, top-k and the entropy term
    # over [tokens, words]): with ~10k words (the paper's 5078 + 5403) its forward and
    # backward took 215 ms per batch here, with 1024 + 1024 62 ms (the whole step ~250 ms).
    c.codebook.sizes.update(adj=1024, noun=1024, adv=1024, verb=1024)
    c.data.crop_min_scale = 0.2
    # The summaries every 250 steps score a quarter of the held-out crops (8 per photo):
    # the whole split took 3 of the job's 15 minutes. The final evaluation scores all.
    c.summary_eval_split = "eval[:25%]"
    c.total_steps = 2600
    c.batch_size = 32
    c.optim.update(lr=1e-2, warmup_steps=200)
    # Perceptual + adversarial training, off unless weighted (the README's comparison:
    # --config.loss.perceptual=0.1 --config.loss.adversarial=0.1). Sized for this tiny
    # tokenizer on 2 cores (step 0.14 s without): LPIPS-AlexNet as the loss, 0.25 s
    # (LPIPS-VGG16 stays the metric; VGG16 as the loss with a 64-wide PatchGAN took 4.1 s),
    # and a 16-wide PatchGAN, 0.41 s with both (64 wide alone: 74 GFLOP per step, 12x the
    # tokenizer's). The GAN starts once reconstructions have formed.
    c.perceptual.network = "alexnet"
    c.gan.update(width=16, start_step=1000, adaptive_weight=True, lecam_weight=0.001)
  elif variant == "runlocal":
    image_size.set(32)
    c.model.update(width=32, num_heads=2, encoder_depth=1, decoder_depth=1,
                   num_queries=8, codebook_size=64, code_dim=8, gcn_hidden=16)
    c.codebook.sizes.update(adj=64, noun=64, adv=32, verb=64)
    common.runlocal_schedule(c)
  else:  # ImageNet-256 production sizes.
    image_size.set(256)
    size = {"B": dict(width=768, num_heads=12, encoder_depth=12, decoder_depth=12),
            "L": dict(width=1024, num_heads=16, encoder_depth=24, decoder_depth=24)}[variant]
    c.model.update(patch_size=16, num_queries=256, codebook_size=16384, code_dim=16, **size)
    c.data.update(name="imagenet2012", train_split="train", eval_split="validation",
                  crop_min_scale=0.8, color_jitter=0.0,
                  eval_preprocess="resize_shorter_center_crop",
                  num_threads=16, prefetch_buffer_size=8)
    c.batch_size = 256
    c.eval_batch_size = 256
    c.total_steps = 500_000
    c.optim.update(lr=1e-4, warmup_steps=10_000, end_lr_fraction=0.1, b2=0.99)
    c.log_every_steps = 100
    c.summary_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
  return c
