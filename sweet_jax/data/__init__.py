"""Input data: TFDS sources read through one grain pipeline.

`pipeline` turns any TFDS dataset (the embedded `sweet_embedded_photos`, or
`imagenet2012` prepared as ArrayRecord) into checkpointable train iterators and
equal-step eval batches; `preprocess` holds the numpy/PIL image ops they share.
Nothing is re-exported here so that importing `preprocess` stays cheap (no
grain or TFDS import).
"""
