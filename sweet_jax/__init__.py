"""sweet_jax: compact, semantic visual tokenizers in JAX/Flax."""
