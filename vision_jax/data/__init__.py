"""Data: tfds builders, preprocessing and the deterministic input pipeline."""
