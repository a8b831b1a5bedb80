"""Evaluation of visual tokenizers: reconstruction metrics, baselines, image grids."""
