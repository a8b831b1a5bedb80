"""sweet_jax: compact, semantic visual tokenizers in JAX/Flax.

`sweet_jax.load_tokenizer(workdir)` loads a trained tokenizer (see `sweet_jax.api`);
imported on first use, so that `import sweet_jax.<module>` stays light."""


def __getattr__(name: str):
  if name in ("load_tokenizer", "LoadedTokenizer"):
    from sweet_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'sweet_jax' has no attribute {name!r}")
