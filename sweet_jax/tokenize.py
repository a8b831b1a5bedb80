r"""Encode a dataset with a trained tokenizer into a token dataset, for a generator.

    python -m sweet_jax.tokenize --workdir=TOKENIZER_RUN --out=DIR [--split=train]
        [--dataset=NAME --data_dir=DIR] [--flip] [--crops_per_image=N] [--step=N]

The run's tokenizer (`load_tokenizer`: the latest checkpoint's EMA weights) codes every
example of --dataset's --split (default: the run's own training data): the model's view
of each image (its shorter side resized, the central square) or clip, or, with
--crops_per_image=N > 1, N random resized crops of each image (the run's crop scales;
seeded, so a rerun gives the same crops). --flip also stores the tokens of each mirrored
view. Labels come from the dataset's `label` (-1 without one).

The output (`sweet_jax.data.tokens`) is a TFDS ArrayRecord dataset that records the
tokenizer (run, step, a hash of its weights, its config) and the index layout; a second
split goes into the same directory, tokens of other weights never do. Work is split into
shards of --shard_size examples, spread over the hosts of a multi-host job; a finished
shard is never redone, so an interrupted run resumes where it stopped.
"""

import math
import re
import tempfile
import time
from typing import Any, Iterator

import jax
import numpy as np
from absl import app, flags, logging
from array_record.python import array_record_module
from etils import epath

from sweet_jax import io
from sweet_jax.cli import run_tool
from sweet_jax.data import pipeline
from sweet_jax.data import tokens as token_data
from sweet_jax.progress import duration

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The tokenizer's training run directory.")
  flags.DEFINE_string("out", None, "The token dataset's directory (local or a bucket).")
  flags.DEFINE_string("dataset", None, "TFDS dataset name (default: the run's training data).")
  flags.DEFINE_string("split", None, "Split to code (default: the run's training split).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir of --dataset (default: the run's).")
  flags.DEFINE_string("out_split", None, "The split's name in --out (default: --split, "
                      "its slice written into the name: train[:10%] -> train_10).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("flip", False, "Also store the tokens of each mirrored view.")
  flags.DEFINE_integer("crops_per_image", 1, "1: the central view; N > 1: N random "
                       "resized crops of every image.")
  flags.DEFINE_integer("shard_size", 1024, "Examples per output shard.")
  flags.DEFINE_integer("seed", 0, "Seed of the random crops.")
  flags.mark_flags_as_required(["workdir", "out"])


def source_defaults(config: Any) -> tuple[str, str, str | None, tuple[float, float]]:
  """(dataset, split, data_dir, crop scale) of the run's own training data."""
  data = config.video_data if "video_data" in config else config.data
  return (data.name, data.train_split, data.get("data_dir"),
          (config.data.crop_min_scale, config.data.crop_max_scale))


def output_split_name(split: str) -> str:
  """A TFDS split name for the tokens of `split` (a slice such as `train[:10%]` becomes
  `train_10`: split names are file names)."""
  name = re.sub(r"[^A-Za-z0-9]+", "_", split).strip("_")
  if not name:
    raise ValueError(f"--split={split!r} gives no usable split name: set --out_split")
  return name


def split_settings(dataset: str, split: str, num_source: int, crops_per_image: int,
                   crop_scale: tuple[float, float], flip: bool, seed: int,
                   shard_size: int) -> dict[str, Any]:
  """What a split's tokens are: a resumed run must ask for exactly the same."""
  num_examples = num_source * crops_per_image
  return {"dataset": dataset, "source_split": split, "source_examples": num_source,
          "crops_per_image": crops_per_image,
          "crop_scale": list(crop_scale) if crops_per_image > 1 else None,
          "flip": flip, "seed": seed, "shard_size": shard_size,
          "num_examples": num_examples,
          "num_shards": max(1, math.ceil(num_examples / shard_size))}


def check_or_write_metadata(out: epath.Path, record: dict[str, Any], split: str,
                            settings: dict[str, Any], is_chief: bool) -> dict[str, Any]:
  """The directory's metadata with this split's settings: written when new; a directory
  of other weights or a split tokenized differently is an error (never mixed)."""
  meta = io.read_json(out / token_data.METADATA)
  if meta is not None:
    if meta["tokenizer"]["params_sha256"] != record["tokenizer"]["params_sha256"]:
      raise token_data.TokenDatasetError(
          f"{out} holds tokens of other weights ({meta['tokenizer']['workdir']} step "
          f"{meta['tokenizer']['step']}): use another --out for this tokenizer")
    old = meta["splits"].get(split)
    if old is not None and old != settings:
      changed = sorted(k for k in settings if old.get(k) != settings[k])
      raise token_data.TokenDatasetError(
          f"split {split!r} in {out} was tokenized with other settings ({', '.join(changed)}"
          f": {[old.get(k) for k in changed]}); rerun with those, or use another --out")
  else:
    meta = {**record, "splits": {}}
  meta["splits"][split] = settings
  if is_chief:
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / token_data.METADATA, meta)
  return meta


def shard_examples(source: Any, tok: Any, shard: int, settings: dict[str, Any]
                   ) -> Iterator[tuple[int, np.ndarray, int]]:
  """(example id, the model's view, label) of one shard; an unreadable example is
  skipped with a warning."""
  crops = settings["crops_per_image"]
  clip_frames = ((tok.model.temporal_patch_size, tok.model.num_frames)
                 if tok.modality == "video" else None)
  begin = shard * settings["shard_size"]
  end = min(begin + settings["shard_size"], settings["num_examples"])
  for example_id in range(begin, end):
    index = example_id // crops
    try:
      element = source[index]
      pixels = np.asarray(element["video"] if "video" in element else element["image"])
      view = token_data.source_view(pixels, example_id, settings, tok.image_size, clip_frames)
    except Exception as e:  # pylint: disable=broad-except; one bad example, reported
      logging.warning("Skipping example %d of %s: %s", index, settings["source_split"],
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
      continue
    yield example_id, view, int(element.get("label", -1))


def encode_shard(tok: Any, examples: list[tuple[int, np.ndarray, int]], flip: bool,
                 features: Any) -> list[bytes]:
  """Serialized examples of one shard."""
  if not examples:
    return []
  views = np.stack([v for _, v, _ in examples])
  coded = _by_branch(tok.encode(views))
  flipped = _by_branch(tok.encode(np.flip(views, axis=-2))) if flip else {}
  records = []
  for i, (example_id, _, label) in enumerate(examples):
    example = {"id": example_id, "label": label}
    example.update({b: x[i] for b, x in coded.items()})
    example.update({f"flip_{b}": x[i] for b, x in flipped.items()})
    records.append(features.serialize_example(example))
  return records


def _by_branch(indices: Any) -> dict[str, np.ndarray]:
  return dict(indices) if isinstance(indices, dict) else {"spatial": np.asarray(indices)}


def write_shard(path: epath.Path, records: list[bytes]) -> int:
  """Writes one ArrayRecord file (locally, then copied into place: any filesystem);
  returns its size in bytes."""
  with tempfile.TemporaryDirectory() as tmp:
    local = f"{tmp}/shard.array_record"
    writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
    for record in records:
      writer.write(record)
    writer.close()
    data = epath.Path(local).read_bytes()
  io.write_bytes(path, data)
  return len(data)


def finish(out: epath.Path, meta: dict[str, Any], features: Any) -> list[str]:
  """The TFDS metadata of every split whose shards are all written; returns them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  infos = []
  for split, settings in meta["splits"].items():
    done = [io.read_json(out / token_data.SHARDS / f"{split}-{j:05d}.json")
            for j in range(settings["num_shards"])]
    if any(d is None for d in done):
      continue
    template = tfds.core.ShardedFileTemplate(
        data_dir=out, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=token_data.DATASET_NAME, split=split, filetype_suffix="array_record")
    infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[d["count"] for d in done],
                                     num_bytes=sum(d["bytes"] for d in done),
                                     filename_template=template))
  tok = meta["tokenizer"]
  tfds.folder_dataset.write_metadata(
      data_dir=out, features=features, split_infos=infos, check_data=False,
      filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      description=f"Tokens of {tok['workdir']} (step {tok['step']}, "
                  f"weights sha256 {tok['params_sha256'][:12]}); see {token_data.METADATA}.")
  return [i.name for i in infos]


def tokenize(workdir: str, out: str, *, dataset: str | None = None, split: str | None = None,
             out_split: str | None = None, data_dir: str | None = None, step: int | None = None, flip: bool = False,
             crops_per_image: int = 1, shard_size: int = 1024, seed: int = 0) -> dict[str, Any]:
  """Codes one split into `out` (as `out_split`; resuming); returns the split's settings
  and counts."""
  from sweet_jax import api  # pylint: disable=g-import-not-at-top  (imports TF: after set-up)
  if crops_per_image < 1 or shard_size < 1:
    raise ValueError("--crops_per_image and --shard_size must be >= 1")
  tok = api.load_tokenizer(workdir, step)
  default_dataset, default_split, default_dir, crop_scale = source_defaults(tok.config)
  dataset, split = dataset or default_dataset, split or default_split
  name = out_split or output_split_name(split)
  if name != output_split_name(name):
    raise ValueError(f"--out_split={name!r}: use letters, digits and underscores")
  data_dir = data_dir or default_dir
  if crops_per_image > 1 and tok.modality == "video":
    raise ValueError("--crops_per_image > 1 is for images; a video model codes each clip's "
                     "central view (--crops_per_image=1)")
  source = pipeline.get_data_source(dataset, split, data_dir)
  settings = split_settings(dataset, split, len(source), crops_per_image, crop_scale, flip,
                            seed, shard_size)
  first = next(shard_examples(source, tok, 0, {**settings, "num_examples": 1}), None)
  if first is None:
    raise ValueError(f"the first example of {dataset} {split} cannot be read (see the "
                     "warning above); the token layout is taken from it")
  shapes = {b: tuple(x.shape[1:]) for b, x in _by_branch(tok.encode([first[1]])).items()}
  groups = tok.model.index_groups()
  groups = groups if set(groups) == set(shapes) else {"spatial": groups}
  from sweet_jax.models.token_layout import TokenLayout  # pylint: disable=g-import-not-at-top
  layout = TokenLayout.from_index_groups(shapes, groups)
  record = {"tokenizer": {"workdir": io.absolute(workdir), "step": tok.step, "ema": tok.ema,
                          "params_sha256": token_data.params_fingerprint(tok.params),
                          "model": tok.config.model.name,
                          "config": tok.config.to_json_best_effort()},
            "shapes": {b: list(s) for b, s in shapes.items()},
            "index_groups": {b: {k: [None if c is None else list(c), int(n)]
                                 for k, (c, n) in g.items()} for b, g in groups.items()},
            "layout": layout.to_metadata()}
  out_dir = epath.Path(out)
  is_chief = jax.process_index() == 0
  meta = check_or_write_metadata(out_dir, record, name, settings, is_chief)
  features = token_data.features(shapes, flip)

  mine = range(jax.process_index(), settings["num_shards"], jax.process_count())
  todo = [j for j in mine
          if not (out_dir / token_data.SHARDS / f"{name}-{j:05d}.json").exists()]
  logging.info("Tokenizing %s %s (%d examples, %d shards; %d to do here) into %s as %r",
               dataset, split, settings["num_examples"], settings["num_shards"], len(todo),
               out, name)
  start, coded, skipped = time.monotonic(), 0, 0
  for n, j in enumerate(todo):
    examples = list(shard_examples(source, tok, j, settings))
    expected = min(shard_size, settings["num_examples"] - j * shard_size)
    skipped += expected - len(examples)
    size = write_shard(out_dir / token_data.shard_name(name, j, settings["num_shards"]),
                       encode_shard(tok, examples, flip, features))
    io.write_json(out_dir / token_data.SHARDS / f"{name}-{j:05d}.json",
                  {"count": len(examples), "bytes": size, "skipped": expected - len(examples)})
    coded += len(examples)
    rate = coded / max(time.monotonic() - start, 1e-9)
    left = sum(min(shard_size, settings["num_examples"] - k * shard_size) for k in todo[n + 1:])
    logging.info("shard %d/%d | %.1f examples/s, ETA %s", n + 1, len(todo), rate,
                 duration(left / rate if rate else 0))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("sweet_jax.tokenize: shards written")
  finished = finish(out_dir, meta, features) if is_chief else []
  return {**settings, "split": name, "coded": coded, "skipped": skipped,
          "finished_splits": finished, "seq_len": layout.seq_len,
          "vocab_size": layout.vocab_size}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = tokenize(FLAGS.workdir, FLAGS.out, dataset=FLAGS.dataset, split=FLAGS.split,
                    out_split=FLAGS.out_split, data_dir=FLAGS.data_dir, step=FLAGS.step, flip=FLAGS.flip,
                    crops_per_image=FLAGS.crops_per_image, shard_size=FLAGS.shard_size,
                    seed=FLAGS.seed)
  if jax.process_index() == 0:
    print(f"Tokenized {result['dataset']} {result['source_split']} as split "
          f"{result['split']!r}: {result['coded']} "
          f"example(s) coded now, {result['skipped']} skipped, {result['num_examples']} in the "
          f"split; sequences of {result['seq_len']} ids over {result['vocab_size']}.\n"
          f"Wrote {FLAGS.out} (splits {', '.join(result['finished_splits'])})")


if __name__ == "__main__":
  define_flags()
  run_tool(main)
