"""mIoU, per-class IoU and pixel accuracy against scikit-learn, on one and on 8 devices.

The reference is `sklearn.metrics.jaccard_score` over the counted pixels (label not 255,
example not padding), with its labels restricted to the classes present in the labels or
the predictions, as our convention leaves absent classes out of the mean.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from vision_jax import segmentation_metrics as sm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 6  # Class 5 never appears: neither in the labels nor in the predictions.


def random_batch(seed: int, batch: int = 5, size: tuple[int, int] = (7, 9)):
  """Logits whose argmax avoids class 5, labels in 0..4 with ~20% ignored (255), and an
  example mask whose last row is padding (its labels are garbage that must not count)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 5, (batch, *size)).astype(np.uint8)
  labels[rng.random(labels.shape) < 0.2] = 255
  logits = rng.normal(0, 1, (batch, *size, K)).astype(np.float32)
  logits[..., 5] = -10.0
  # Predictions agree with the labels on about half the pixels.
  agree = (rng.random(labels.shape) < 0.5) & (labels != 255)
  logits[agree, labels[agree].astype(int)] += 10.0
  mask = np.ones(batch, np.int32)
  mask[-1] = 0
  labels[-1] = rng.integers(0, K, size)  # Padding: would count class 5 if not masked.
  return logits, labels, mask


def reference(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
  keep = (labels != 255) & (mask[:, None, None] > 0)
  y_true, y_pred = labels[keep].astype(int), np.argmax(logits, -1)[keep]
  present = np.union1d(y_true, y_pred)
  return {'confusion': skm.confusion_matrix(y_true, y_pred, labels=range(K)),
          'present': present,
          'per_class': skm.jaccard_score(y_true, y_pred, labels=present, average=None),
          'mean': skm.jaccard_score(y_true, y_pred, labels=present, average='macro'),
          'accuracy': skm.accuracy_score(y_true, y_pred)}


def test_jitted_confusion_matrix_and_summary_equal_sklearn():
  logits, labels, mask = random_batch(0)
  confusion = jax.jit(sm.confusion_matrix, static_argnums=2)(
      jnp.asarray(logits), jnp.asarray(labels), K, example_mask=jnp.asarray(mask))
  ref = reference(logits, labels, mask)
  assert confusion.dtype == jnp.int32
  np.testing.assert_array_equal(confusion, ref['confusion'])
  iou = sm.per_class_iou(confusion)
  np.testing.assert_allclose(iou[ref['present']], ref['per_class'], rtol=1e-12)
  assert list(ref['present']) == [0, 1, 2, 3, 4] and np.isnan(iou[5])
  assert sm.mean_iou(confusion) == pytest.approx(ref['mean'], rel=1e-12)
  assert sm.pixel_accuracy(confusion) == pytest.approx(ref['accuracy'], rel=1e-12)
  summary = sm.summarize(confusion, [f'c{k}' for k in range(K)])
  assert summary['per_class_iou']['c5'] is None
  assert summary['mean_iou'] == pytest.approx(ref['mean'], rel=1e-12)
  assert summary['num_pixels'] == int(ref['confusion'].sum())
  json.dumps(summary, allow_nan=False)  # Valid JSON: no NaN.


def test_predictions_equal_to_argmax_and_a_class_only_predicted_has_iou_zero():
  labels = np.array([[[0, 0, 1, 255]]])
  predictions = np.array([[[0, 2, 1, 2]]])  # Class 2 only predicted: IoU 0, in the mean.
  confusion = sm.confusion_matrix(jnp.asarray(predictions), jnp.asarray(labels), 4)
  ref = skm.jaccard_score([0, 0, 1], [0, 2, 1], labels=[0, 1, 2], average=None)
  np.testing.assert_allclose(sm.per_class_iou(confusion)[:3], ref)
  assert np.isnan(sm.per_class_iou(confusion)[3])
  assert sm.mean_iou(confusion) == pytest.approx((0.5 + 1 + 0) / 3)


def test_accumulating_batches_with_a_padded_last_one_equals_the_whole_split():
  batches = [random_batch(seed) for seed in range(3)]
  step = jax.jit(sm.confusion_matrix, static_argnums=2)
  total = None
  for logits, labels, mask in batches:
    total = sm.accumulate(total, step(logits, labels, K, example_mask=mask))
  assert total.dtype == np.int64
  whole = reference(*(np.concatenate(parts) for parts in zip(*batches)))
  np.testing.assert_array_equal(total, whole['confusion'])
  assert sm.mean_iou(total) == pytest.approx(whole['mean'], rel=1e-12)


def test_nothing_counted_gives_nan_summaries_not_errors():
  empty = np.zeros((3, 3), np.int64)
  summary = sm.summarize(empty)
  assert summary['mean_iou'] is None and summary['pixel_accuracy'] is None
  assert summary['per_class_iou'] == {'0': None, '1': None, '2': None}


_EIGHT_DEVICES = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from vision_jax import config as config_lib, parallel, segmentation_metrics as sm
sys.path.insert(0, 'tests')
from test_segmentation_metrics import K, random_batch
assert jax.device_count() == 8, jax.devices()
mesh = parallel.make_mesh(config_lib.base_config())
step = jax.jit(lambda logits, labels, mask: sm.confusion_matrix(
                   logits, labels, K, example_mask=mask),
               in_shardings=(parallel.batch_sharding(mesh),) * 3,
               out_shardings=parallel.replicated(mesh))
total, shards = None, set()
for seed in range(3):
  logits, labels, mask = random_batch(seed, batch=16)
  batch = parallel.to_global({'logits': logits, 'labels': labels, 'mask': mask}, mesh)
  shards.add(len(batch['labels'].addressable_shards))
  confusion = step(batch['logits'], batch['labels'], batch['mask'])
  confusion.block_until_ready()
  total = sm.accumulate(total, confusion)
print('RESULT', json.dumps({'total': total.tolist(), 'shards': sorted(shards)}))
'''


def test_eight_simulated_devices_give_the_same_matrix():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _EIGHT_DEVICES], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads([l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1][7:])
  assert result['shards'] == [8]  # The batch really was split over the 8 devices.
  batches = [random_batch(seed, batch=16) for seed in range(3)]
  whole = reference(*(np.concatenate(parts) for parts in zip(*batches)))
  np.testing.assert_array_equal(result['total'], whole['confusion'])
