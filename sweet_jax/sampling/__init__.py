"""Samplers for the generators on tokens: autoregressive (KV cache) and MaskGIT."""
