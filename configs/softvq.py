r"""SoftVQ-VAE (arXiv 2412.10958): a 1-D tokenizer with a soft categorical posterior.

ViT encoder with L latent tokens appended to the patch tokens, each latent a softmax-
weighted mix of codewords (no straight-through estimator), a ViT decoder from mask
tokens, and representation alignment with a frozen DINOv2 teacher
(sweet_jax/models/softvq.py, quantizers/softvq.py, losses/alignment.py;
docs/one_d_tokenizers.md).
Variants (`--config=configs/softvq.py:VARIANT[,TOKENS]`):

  cpu       the embedded photos at 64x64, sized to match SweetTokenizer's cpu config
            (configs/sweet_image.py:cpu; parameter count and steps): the tokenizer
            comparison (./launch/compare.sh). No alignment: no DINOv2 weights ship
            offline (set config.alignment.teacher_path and config.loss.alignment=0.1
            to add it).
            Expected results: docs/results.md#1-d-tokenizers-compared
  runlocal  a tiny model for tests (seconds).
  S, B, BL, L  the published sizes on ImageNet 256x256 (encoder / decoder ViT-S+S, B+B,
            B+L, L+L; 4 codebooks x 8192 x 32; TOKENS 64 (default) or 32), with the
            official recipe (softvq-l-64.yaml): needs the DINOv2-L teacher file:
            python -m sweet_jax.main --config=configs/softvq.py:BL,64 \
              --workdir=gs://BUCKET/softvq_bl64 --config.data.data_dir=gs://BUCKET/tfds \
              --config.alignment.teacher_path=/path/vit_large_patch14_dinov2.safetensors

Differences from the official recipe: the discriminator is our PatchGAN (the official
one is a frozen-DINO-S/16 feature discriminator with DiffAugment and consistency
regularisation, whose weights cannot be had offline); LeCam 0.001 as theirs.
"""

import ml_collections

from configs import common
from sweet_jax.models.softvq import softvq_preset

VARIANTS = ("cpu", "runlocal", "S", "B", "BL", "L")
TOKENS = ("64", "32")
PARAM_GROUPS = (
    ("encoder", r"^encoder/"),
    ("quantizer", r"^quantizer/"),
    ("decoder", r"^decoder/"),
    ("projector", r"^projector/"),  # the alignment MLP (present when align_width > 0)
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, tokens = common.parse_arg(arg if arg and "," in arg else f"{arg or 'cpu'},64",
                                     "softvq", VARIANTS, TOKENS)
  c = common.base_config()
  c.variant = variant if variant in ("cpu", "runlocal") else f"{variant},{tokens}"
  image_size = ml_collections.FieldReference(64)
  c.data.image_size = image_size
  c.model = ml_collections.ConfigDict(dict(
      name="softvq",
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
      code_dim=32,
      num_codebooks=1,
      temperature=0.07,
      entropy_temperature=0.01,
      align_width=0,
      align_hidden=1024,
      align_mode="repeat",
      compute_dtype="float32",
      remat="none",
  ))
  c.optim.param_groups = PARAM_GROUPS
  c.optim.lr_mult = ml_collections.ConfigDict({name: 1.0 for name, _ in PARAM_GROUPS})
  # The official objective (arXiv:2412.10958; official configs/softvq-l-64.yaml): MSE, no
  # commitment / codebook terms, the entropy term at 0.01; perceptual, GAN and alignment
  # where a variant turns them on.
  c.loss.update(commitment=0.0, codebook=0.0, entropy=0.01)
  c.gan.adaptive_layer = r"^decoder/to_pixel/"

  if variant == "cpu":
    # As sweet_image.py:cpu: 64x64 crops of the embedded photos, 32 tokens, batch 32,
    # 2600 steps, AdamW with warm-up and cosine decay.
    c.data.color_jitter = 0.3
    c.data.crop_min_scale = 0.2
    c.total_steps = 2600
    c.batch_size = 32
    c.optim.update(lr=2e-3, warmup_steps=200, b2=0.95)
  elif variant == "runlocal":
    image_size.set(32)
    c.model.update(encoder_width=32, encoder_depth=1, decoder_width=32, decoder_depth=1,
                   num_latent_tokens=8, codebook_size=64, code_dim=8, num_codebooks=2,
                   align_hidden=16)
    common.runlocal_schedule(c)
  else:  # ImageNet 256x256, the published sizes and the official recipe (§2.2, §2.5, §2.6).
    image_size.set(256)
    preset = softvq_preset(variant, int(tokens))
    c.model.update(patch_size=16, align_width=1024, **preset)  # DINOv2-L teacher
    c.loss.update(perceptual=1.0, adversarial=0.2, alignment=0.1)
    c.perceptual.update(network="vgg16", warmup_steps=10_000)
    c.gan.update(start_step=20_000, lecam_weight=0.001, adaptive_weight=False,
                 lr=1e-4, b1=0.9, b2=0.95, weight_decay=1e-4)
    c.data.update(name="imagenet2012", train_split="train", eval_split="validation",
                  crop_min_scale=0.8, color_jitter=0.0,
                  eval_preprocess="resize_shorter_center_crop",
                  num_threads=16, prefetch_buffer_size=8)
    c.batch_size = 256
    c.eval_batch_size = 256
    c.total_steps = 250_000  # 50 epochs of ImageNet-1K at batch 256
    c.optim.update(lr=1e-4, warmup_steps=5_000, end_lr_fraction=0.1, b1=0.9, b2=0.95,
                   weight_decay=1e-4, clip_norm=1.0)
    c.ema.decay = 0.9999
    c.seed = 42
    c.log_every_steps = 100
    c.summary_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
  return c
