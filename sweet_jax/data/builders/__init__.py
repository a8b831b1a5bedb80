"""TFDS builders for the datasets that ship with sweet_jax (importing a module registers it)."""
