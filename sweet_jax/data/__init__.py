"""Input data: TFDS sources read through one grain pipeline.

`pipeline` turns any TFDS dataset (the embedded `sweet_embedded_photos` and
`sweet_embedded_clips`, or `imagenet2012` prepared as ArrayRecord) into checkpointable
train iterators and equal-step eval batches, of images or of clips; `preprocess` holds
the numpy/PIL image ops, `video` the PyAV decoding and clip crops.
Nothing is re-exported here so that importing `preprocess` stays cheap (no
grain or TFDS import).
"""
