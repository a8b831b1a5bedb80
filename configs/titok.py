r"""TiTok (arXiv 2406.07550): a 1-D tokenizer of 32-128 discrete tokens.

ViT encoder with latent tokens appended to the patch tokens, an L2-normalised VQ
(4096 x 12, commitment 0.25), a ViT decoder from mask tokens with a direct pixel head
(sweet_jax/models/titok.py; docs/one_d_tokenizers.md). Variants
(`--config=configs/titok.py:VARIANT`):

  cpu       the embedded photos at 64x64, sized to match SweetTokenizer's cpu config
            (configs/sweet_image.py:cpu; parameter count and steps): the tokenizer
            comparison (./launch/compare.sh).
            Expected results: docs/results.md#1-d-tokenizers-compared
  runlocal  a tiny model for tests (seconds).
  S-128, B-64, L-32  the published models on ImageNet 256x256:
            python -m sweet_jax.main --config=configs/titok.py:B-64 \
              --workdir=gs://BUCKET/titok_b64 --config.data.data_dir=gs://BUCKET/tfds

The recipe is the official single-stage one (pixel losses from the start: L2,
perceptual 0.1, hinge GAN 0.01 from step 20k with LeCam 0.001, the weights of the
official configs/training/TiTok/stage2/; TiTok, arXiv:2406.07550, and
bytedance/1d-tokenizer issue #67 for the single-stage recipe), not the
two-stage one, whose first stage regresses MaskGIT-VQGAN proxy codes: those weights
cannot be had offline. Perceptual: LPIPS-VGG16 (the official one adds ConvNeXt-S).
"""

import ml_collections

from configs import common
from sweet_jax.models.titok import titok_preset

VARIANTS = ("cpu", "runlocal", "S-128", "B-64", "L-32")
PARAM_GROUPS = (
    ("encoder", r"^encoder/"),
    ("quantizer", r"^quantizer/"),
    ("decoder", r"^decoder/"),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, _ = common.parse_arg(f"{arg or 'cpu'},vq", "titok", VARIANTS, ("vq",))
  c = common.base_config()
  c.variant = variant
  image_size = ml_collections.FieldReference(64)
  c.data.image_size = image_size
  c.model = ml_collections.ConfigDict(dict(
      name="titok",
      image_size=image_size,
      patch_size=8,
      encoder_width=64,
      encoder_depth=4,
      encoder_heads=2,
      decoder_width=64,
      decoder_depth=5,  # (cpu: with 4 + 5 blocks, within 2.5 % of sweet_image.py:cpu's 515k)
      decoder_heads=2,
      num_latent_tokens=32,
      codebook_size=1024,
      code_dim=12,
      compute_dtype="float32",
      remat="none",
  ))
  c.optim.param_groups = PARAM_GROUPS
  c.optim.lr_mult = ml_collections.ConfigDict({name: 1.0 for name, _ in PARAM_GROUPS})
  # The official VQ weights (commitment 0.25, codebook 1.0), no entropy term.
  c.loss.update(commitment=0.25, codebook=1.0, entropy=0.0)
  c.gan.adaptive_layer = r"^decoder/conv_out/"

  if variant == "cpu":
    # As sweet_image.py:cpu: 64x64 crops of the embedded photos, 32 tokens, batch 32,
    # 2600 steps, AdamW with warm-up and cosine decay.
    c.data.color_jitter = 0.3
    c.data.crop_min_scale = 0.2
    c.total_steps = 2600
    c.batch_size = 32
    c.optim.update(lr=2e-3, warmup_steps=200)
  elif variant == "runlocal":
    image_size.set(32)
    c.model.update(encoder_width=32, encoder_depth=1, decoder_width=32, decoder_depth=1,
                   num_latent_tokens=8, codebook_size=64, code_dim=8)
    common.runlocal_schedule(c)
  else:  # ImageNet 256x256, the published models (§3.2, §3.3).
    image_size.set(256)
    c.model.update(patch_size=16, codebook_size=4096, code_dim=12, **titok_preset(variant))
    c.loss.update(perceptual=0.1, adversarial=0.01)
    c.perceptual.network = "vgg16"
    c.gan.update(start_step=20_000, lecam_weight=0.001, adaptive_weight=False,
                 lr=1e-4, b1=0.9, b2=0.999, weight_decay=1e-4)
    c.data.update(name="imagenet2012", train_split="train", eval_split="validation",
                  crop_min_scale=0.8, color_jitter=0.0,
                  eval_preprocess="resize_shorter_center_crop",
                  num_threads=16, prefetch_buffer_size=8)
    c.batch_size = 256
    c.eval_batch_size = 256
    c.total_steps = 1_000_000
    c.optim.update(lr=1e-4, warmup_steps=10_000, end_lr_fraction=0.1, b1=0.9, b2=0.999,
                   weight_decay=1e-4, clip_norm=1.0)
    c.ema.decay = 0.999
    c.log_every_steps = 100
    c.summary_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
  return c
