"""Shared Flax layers (attention, MLP, blocks, initialisers) and the ViT backbone: the
bottom layer, importing nothing else of the package."""
