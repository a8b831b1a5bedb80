"""Configs: every variant builds, overrides work, bad overrides are rejected."""

import pytest
from absl import flags
from ml_collections import config_flags

from configs import sweet_image, sweet_video

CONFIG = "configs/sweet_image.py"


def parse(*overrides, variant="runlocal"):
  argv = ["prog", f"--config={CONFIG}:{variant}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize("variant", sweet_image.VARIANTS)
def test_variants_are_consistent(variant):
  config = sweet_image.get_config(variant)
  assert config.model.image_size == config.data.image_size
  assert config.model.image_size % config.model.patch_size == 0
  assert config.model.width % config.model.num_heads == 0
  assert config.batch_size > 0 and config.total_steps > 0


def test_production_sizes():
  base, large = sweet_image.get_config("B"), sweet_image.get_config("L")
  assert base.data.name == large.data.name == "imagenet2012"
  assert base.model.image_size == 256 and base.model.num_queries == 256
  assert (base.model.width, large.model.width) == (768, 1024)


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown variant 'XL'"):
    sweet_image.get_config("XL")
  with pytest.raises(ValueError, match="unknown codebook 'words'"):
    sweet_image.get_config("cpu,words")


def test_codebook_choices():
  """Language codebook by default; the plain ablation has the same sizes and code width."""
  language, plain, vq = (sweet_image.get_config(f"cpu,{cb}") for cb in ("language", "plain", "vq"))
  assert sweet_image.get_config("cpu").model == language.model
  assert (language.model.quantizer_type, language.model.mlc_codebook) == ("mlc", "language")
  assert (plain.model.quantizer_type, plain.model.mlc_codebook) == ("mlc", "learned")
  assert plain.codebook == language.codebook and plain.model.code_dim == language.model.code_dim
  assert vq.model.quantizer_type == "vq"
  config = parse("--config.codebook.sizes.adj=300", "--config.codebook.source=minilm",
                 variant="cpu,plain")
  assert config.codebook.sizes.adj == 300 and config.codebook.source == "minilm"


def test_overrides():
  config = parse("--config.total_steps=3", "--config.optim.lr=0.01",
                 "--config.mesh=(('data', 4), ('fsdp', 1), ('model', 2))",
                 "--config.data.image_size=48")
  assert config.total_steps == 3 and config.optim.lr == 0.01
  assert config.mesh == (("data", 4), ("fsdp", 1), ("model", 2))
  assert config.model.image_size == 48  # one field reference for data and model


def test_misspelt_override_is_rejected():
  with pytest.raises(AttributeError, match='Did you mean "width"'):
    parse("--config.model.widht=3")


def test_badly_typed_override_is_rejected():
  with pytest.raises(flags.IllegalFlagValueError, match="total_steps=abc"):
    parse("--config.total_steps=abc")


def test_locked_config_rejects_new_fields():
  with pytest.raises(AttributeError):
    parse("--config.not_a_field=1")


def test_production_config_builds_with_the_paper_sized_codebook():
  """B on 8 CPU devices, abstractly: the language codebook at the paper's sizes feeds the
  model (GloVe gives 5403 nouns, and 4624 of the 5078 adjectives once the words unsafe
  to print are left out), no parameter is materialised."""
  from sweet_jax import experiment  # pylint: disable=g-import-not-at-top
  c = experiment.build(sweet_image.get_config("B"))
  assert c.model.index_groups() == {"adj": ((0, 1), 4624), "noun": ((2,), 5403)}
  gcn = c.abstract_state.params["quantizer"]["projection"]
  assert gcn["gcn_0"]["Dense_0"]["kernel"].value.shape == (50, 256)
  assert gcn["gcn_1"]["Dense_0"]["kernel"].value.shape == (256, 8)  # code_dim 16 = 2 x 8


def test_video_production_config_builds_with_both_word_groups():
  """ucf101 on 8 CPU devices, abstractly: 256 spatial + 1024 temporal tokens, nouns and
  adjectives for the spatial quantizer, verbs and adverbs for the temporal one."""
  from sweet_jax import experiment  # pylint: disable=g-import-not-at-top
  c = experiment.build(sweet_video.get_config("ucf101"))
  groups = c.model.index_groups()
  assert set(groups["spatial"]) == {"adj", "noun"} and set(groups["temporal"]) == {"adv", "verb"}
  assert c.model.num_temporal_tokens == 1024 and c.model.num_queries == 256
  params = c.abstract_state.params
  assert params["temporal_queries"]["tokens"].value.shape == (1024, 512)
  assert params["decoder"]["block_0"]["cross_attn"]["null_kv"].value.shape == (2, 2, 8, 64)
  assert [s.name for s in c.stages] == ["spatial", "temporal", "decoder"]


@pytest.mark.parametrize("variant", sweet_video.VARIANTS)
def test_video_variants_validate(variant):
  from sweet_jax import experiment  # pylint: disable=g-import-not-at-top
  experiment.validate(sweet_video.get_config(variant), 8)


def test_video_config_refuses_bad_frame_counts_and_total_steps():
  from sweet_jax import experiment  # pylint: disable=g-import-not-at-top
  config = sweet_video.get_config("runlocal")
  with config.unlocked():
    config.video_data.num_frames = 8  # one field reference: the model's changes too
  with pytest.raises(ValueError, match=r"1 \+ k\*4 frames"):
    experiment.validate(config, 8)
  config = sweet_video.get_config("runlocal")
  with config.unlocked():
    config.total_steps = 10
  with pytest.raises(ValueError, match="derived from config.curriculum"):
    experiment.validate(config, 8)
