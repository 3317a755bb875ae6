"""A tfds mock of oxford_iiit_pet whose examples are consistent (mask size = image size,
trimap values 1..3), for tests and for running segmentation configs on mock data.

`tfds.testing.mock_data`'s default generator draws every feature independently, so a
mocked segmentation mask has neither its image's size nor trimap values: a real reader
rejects it (tested). Usage:

  with mock_pets(num_examples=6):
    source, info = segmentation_sources.open_split('oxford_iiit_pet', 'train', download=True)
"""
from __future__ import annotations

import contextlib

import numpy as np
import tensorflow_datasets as tfds


def pet_example(i: int) -> dict:
  """A varying-size RGB image with a trimap: background 2, an elliptic pet 1, a border 3."""
  rng = np.random.default_rng(i)
  h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
  y, x = np.mgrid[0:h, 0:w]
  r = ((y - h / 2) / (h / 3)) ** 2 + ((x - w / 2) / (w / 3)) ** 2
  trimap = np.where(r < 0.8, 1, np.where(r < 1.2, 3, 2)).astype(np.uint8)
  image = rng.integers(0, 256, (h, w, 3), np.uint8)
  image[trimap == 1] //= 2  # The pet is darker: something to learn.
  return {'image': image, 'segmentation_mask': trimap[..., None], 'label': i % 37,
          'species': i % 2, 'file_name': f'pet_{i}.jpg'.encode(),
          'head_bbox': np.zeros(4, np.float32)}


@contextlib.contextmanager
def mock_pets(num_examples: int = 8):
  """tfds mocked so that every split of oxford_iiit_pet holds `pet_example(0..n-1)`."""
  def as_data_source(self, split, decoders=None, **kwargs):
    del self, split, decoders, kwargs
    return [pet_example(i) for i in range(num_examples)]
  with tfds.testing.mock_data(num_examples=num_examples, as_data_source_fn=as_data_source):
    yield
