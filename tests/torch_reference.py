"""Random ResNet weights in torchvision's names and layout, drawn from a seed with numpy.

Both sides of the equivalence check use them: tests/fixtures/make_torchvision_logits.py
loads them into torchvision's (and timm's) own ResNets and records their eval-mode logits;
tests/test_convert.py converts the same arrays and compares. BatchNorm statistics and
affine parameters are random as well, so eval-mode BatchNorm is a real affine map rather
than the identity of a freshly initialised layer. Needs numpy only.
"""
from __future__ import annotations

import numpy as np

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def random_state_dict(names_shapes: list[tuple[str, tuple[int, ...]]], seed: int = 0
                      ) -> dict[str, np.ndarray]:
  """One array per (name, shape), drawn in the given order: He-scaled conv and fc weights,
  BatchNorm weight in [0.5, 1.5], biases and running means N(0, 0.2^2), running variances
  in [0.5, 2]; `num_batches_tracked` an int64 count, as torch stores it."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in names_shapes:
    shape = tuple(int(s) for s in shape)
    suffix = name.rsplit('.', 1)[-1]
    if suffix == 'num_batches_tracked':
      value = np.asarray(rng.integers(1, 10_000), np.int64).reshape(shape)
    elif suffix == 'running_var':
      value = rng.uniform(0.5, 2.0, shape)
    elif suffix in ('running_mean', 'bias'):
      value = rng.normal(0.0, 0.2, shape)
    elif len(shape) == 1:  # A BatchNorm weight.
      value = rng.uniform(0.5, 1.5, shape)
    else:  # conv OIHW or fc (out, in): fan-in scaled, as He et al.
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    out[name] = value if value.dtype == np.int64 else value.astype(np.float32)
  return out


def checksum(state: dict[str, np.ndarray]) -> float:
  """Sum of |x| over the float arrays: tells whether numpy drew the same weights."""
  return float(sum(np.abs(v.astype(np.float64)).sum() for v in state.values()
                   if v.dtype == np.float32))


def random_images(seed: int, count: int = 2, size: int = 33) -> np.ndarray:
  """uint8 NHWC images; an odd size exercises torchvision's padding at every stride."""
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), np.uint8)


def torch_input(images: np.ndarray) -> np.ndarray:
  """uint8 NHWC -> float32 NCHW normalised as torchvision's ImageNet weights expect."""
  x = (images.astype(np.float64) / 255.0 - MEAN) / STD
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)


def with_head(state: dict[str, np.ndarray], scale: float, bias: np.ndarray
              ) -> dict[str, np.ndarray]:
  """`state` with its classifier (`fc`) weight times `scale` and bias replaced: random
  deep ResNets give every image nearly the same huge logits; a head that subtracts their
  image-independent part and scales the rest (tests/fixtures/make_eval_transform_fixtures.py
  stores both) makes the probabilities depend on the image, as a trained model's do."""
  out = dict(state)
  out['fc.weight'] = state['fc.weight'] * np.float32(scale)
  out['fc.bias'] = np.asarray(bias, np.float32)
  return out
