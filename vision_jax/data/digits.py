"""The offline default dataset: scikit-learn's real handwritten digits as a tfds dataset.

1,797 grey 8x8 images of the digits 0-9 (UCI optdigits, 16 grey levels) ship inside
scikit-learn, so the default run needs no network. The builder writes them into the tfds
data dir like any other dataset, in ArrayRecord format for random access by grain.

Split: stratified 80/20 by label with `sklearn.model_selection.train_test_split(
random_state=0)`: 1,437 train and 360 test images. Pixel values 0..16 are scaled to
0..255 (round(v * 255 / 16)).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _split_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
  return {'train': (x_train, y_train), 'test': (x_test, y_test)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits (8x8 grey, 10 classes), stratified 80/20 split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 80/20 split with random_state=0.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is on disk already.
    return {name: self._generate_examples(*arrays) for name, arrays in _split_arrays().items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}


def prepare(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds the digits into `data_dir` (offline, a few seconds) unless already there.

  Opened without a file format so that a copy prepared as TFRecord is still found.
  """
  builder = Digits(data_dir=data_dir or None)
  if not builder.is_prepared():
    builder.download_and_prepare(file_format='array_record')
  return builder
