"""Frozen pretrained networks with their safe loaders: LPIPS, I3D, FID-InceptionV3, the DINOv2
alignment teacher. Parameters come in as a separate, replicated argument of the steps."""
