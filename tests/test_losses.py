"""Binary cross-entropy (timm's BinaryCrossEntropy): hand-computed values, optax, PyTorch."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax.losses import binary_cross_entropy

LOGITS = np.array([[2.0, -1.0, 0.5], [-0.3, 4.0, -2.5]], np.float32)
LABELS = np.array([0, 1])


def _bce(x: float, t: float, pos_weight: float = 1.0) -> float:
  """-(w t log s(x) + (1 - t) log(1 - s(x))), written out with math."""
  s = 1 / (1 + math.exp(-x))
  return -(pos_weight * t * math.log(s) + (1 - t) * math.log(1 - s))


def test_one_hot_with_smoothing_equals_the_hand_computed_value():
  ls, k = 0.1, 3
  off, on = ls / k, 1 - ls + ls / k  # timm's off/on values.
  want = [np.mean([_bce(x, on if c == label else off) for c, x in enumerate(row)])
          for row, label in zip(LOGITS, LABELS)]
  got = binary_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), k, label_smoothing=ls)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  summed = binary_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), k,
                                label_smoothing=ls, sum_classes=True)
  np.testing.assert_allclose(summed, np.array(want) * k, rtol=1e-6)
  # timm's default reduction, the mean over all B x K entries, is our batch mean.
  entries = [_bce(x, on if c == label else off)
             for row, label in zip(LOGITS, LABELS) for c, x in enumerate(row)]
  assert float(got.mean()) == pytest.approx(np.mean(entries), rel=1e-6)


def test_soft_targets_equal_optax_sigmoid_bce():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (16, 10)).astype(np.float32)
  targets = rng.dirichlet(np.ones(10), 16).astype(np.float32)
  want = optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)
  got = binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 10)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  as_int = binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets.argmax(-1)), 10)
  one_hot = binary_cross_entropy(jnp.asarray(logits),
                                 jax.nn.one_hot(targets.argmax(-1), 10), 10)
  np.testing.assert_array_equal(as_int, one_hot)


def test_target_threshold_binarises_smoothed_mixed_targets():
  # A mixup row lam = 0.7 of class 0 and 0.3 of class 1, smoothed 0.1 over 3 classes:
  # 0.7 * 0.9 + 0.0333 = 0.663, 0.3 * 0.9 + 0.0333 = 0.303, 0.0333 -> thresholded at 0.2.
  soft = np.array([[0.7, 0.3, 0.0]], np.float32)
  got = binary_cross_entropy(jnp.asarray(LOGITS[:1]), jnp.asarray(soft), 3,
                             label_smoothing=0.1, target_threshold=0.2)
  want = np.mean([_bce(x, t) for x, t in zip(LOGITS[0], (1.0, 1.0, 0.0))])
  assert float(got[0]) == pytest.approx(want, rel=1e-6)
  # Smoothing a mixed row equals mixing smoothed one-hots (timm smooths before mixing).
  smooth = lambda t: 0.9 * t + 0.1 / 3
  mixed_after = 0.7 * smooth(np.eye(3)[0]) + 0.3 * smooth(np.eye(3)[1])
  direct = binary_cross_entropy(jnp.asarray(LOGITS[:1]), jnp.asarray(mixed_after[None]), 3)
  ours = binary_cross_entropy(jnp.asarray(LOGITS[:1]), jnp.asarray(soft), 3,
                              label_smoothing=0.1)
  np.testing.assert_allclose(ours, direct, rtol=1e-6)


def test_pos_weight_and_float32_from_bfloat16_logits():
  got = binary_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), 3, pos_weight=2.5)
  want = [np.mean([_bce(x, float(c == label), 2.5) for c, x in enumerate(row)])
          for row, label in zip(LOGITS, LABELS)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  low = binary_cross_entropy(jnp.asarray(LOGITS, jnp.bfloat16), jnp.asarray(LABELS), 3)
  assert low.dtype == jnp.float32
  big = binary_cross_entropy(jnp.asarray([[80.0, -80.0]]), jnp.asarray([1]), 2)
  assert np.isfinite(big).all() and float(big[0]) == pytest.approx(80.0, rel=1e-4)
  with pytest.raises(ValueError, match='label_smoothing'):
    binary_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), 3, label_smoothing=1.0)


def test_equals_pytorch_binary_cross_entropy_with_logits():
  """The function timm calls, where PyTorch is installed (it is not a requirement)."""
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 2, (8, 5)).astype(np.float32)
  targets = rng.uniform(0, 1, (8, 5)).astype(np.float32)
  want = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.from_numpy(logits), torch.from_numpy(targets), pos_weight=torch.tensor(1.7),
      reduction='none').numpy().mean(-1)
  got = binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 5, pos_weight=1.7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- per-pixel cross-entropy

def _log_softmax(row) -> list[float]:
  z = math.log(sum(math.exp(v) for v in row))
  return [v - z for v in row]


def test_pixel_cross_entropy_excludes_ignored_pixels_and_padded_rows_by_hand():
  """Two 1x2 label maps over 3 classes; one pixel ignored, the second example padding."""
  from vision_jax.losses import mean_pixel_cross_entropy, pixel_cross_entropy
  logits = np.array([[[[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]]],
                     [[[1.0, 1.0, 1.0], [5.0, 0.0, 0.0]]]], np.float32)  # [2, 1, 2, 3]
  labels = np.array([[[0, 255]], [[2, 1]]])
  total, count = pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  first = -_log_softmax(logits[0, 0, 0])[0]
  second = [-_log_softmax(logits[1, 0, 0])[2], -_log_softmax(logits[1, 0, 1])[1]]
  np.testing.assert_allclose(total, [first, sum(second)], rtol=1e-6)
  np.testing.assert_array_equal(count, [1, 2])
  assert float(mean_pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))) == (
      pytest.approx((first + sum(second)) / 3, rel=1e-6))
  padded = mean_pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                    example_mask=jnp.array([1, 0]))
  assert float(padded) == pytest.approx(first, rel=1e-6)
  ls = 0.2
  smoothed = pixel_cross_entropy(jnp.asarray(logits[:1]), jnp.asarray(labels[:1]),
                                 label_smoothing=ls)[0]
  logp = _log_softmax(logits[0, 0, 0])
  want = -sum(((1 - ls) * (c == 0) + ls / 3) * lp for c, lp in enumerate(logp))
  np.testing.assert_allclose(smoothed, [want], rtol=1e-6)


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_mean_pixel_cross_entropy_equals_pytorch_ignore_index(label_smoothing):
  torch = pytest.importorskip('torch')
  from vision_jax.losses import mean_pixel_cross_entropy
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (3, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, (3, 5, 6))
  labels[rng.random(labels.shape) < 0.3] = 255
  ours = mean_pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                  label_smoothing=label_smoothing)
  theirs = torch.nn.functional.cross_entropy(
      torch.from_numpy(logits.transpose(0, 3, 1, 2)), torch.from_numpy(labels),
      ignore_index=255, label_smoothing=label_smoothing)
  assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_pixel_cross_entropy_of_nothing_counted_is_zero_with_zero_gradient():
  from vision_jax.losses import mean_pixel_cross_entropy
  logits = jnp.ones((1, 2, 2, 3))
  labels = jnp.full((1, 2, 2), 255)
  loss, grad = jax.value_and_grad(mean_pixel_cross_entropy)(logits, labels)
  assert float(loss) == 0.0 and not np.any(np.asarray(grad))
