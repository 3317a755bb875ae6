"""The detectors as trainable models: parameter paths shared with the classifier, frozen or
training BatchNorm, a jitted loss + gradient step that learns, fixed-size detections,
configuration errors. Small shapes (ResNet-18, 32-channel FPN, 64 px)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vision_jax import models, optim
from vision_jax.detection import postprocess
from vision_jax.errors import ConfigError
from vision_jax.models import detection, resnet


class RetinaNetV2ResNet18FPN(detection.DetectorResNet, resnet.ResNet18):
  KIND = 'retinanet_v2'


def _paths(model):
  return {optim.param_path(p) for p, _ in
          jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]}


def test_backbone_keeps_the_classifiers_paths():
  detector = nnx.eval_shape(lambda: models.create_model('fcos_resnet50_fpn', 91))
  classifier = nnx.eval_shape(lambda: models.create_model('resnet50', 1000))
  ours = {p for p in _paths(detector) if not p.startswith(('head/', 'fpn/'))}
  assert ours == {p for p in _paths(classifier) if not p.startswith('head/')}
  assert models.model_task('retinanet_resnet50_fpn_v2') == 'detection'


TARGETS = {'boxes': jnp.array([[[10., 12., 40., 50.], [0, 0, 0, 0]],
                               [[20., 8., 60., 58.], [5., 30., 30., 60.]]]),
           'labels': jnp.array([[1, 0], [2, 0]]), 'mask': jnp.array([[True, False],
                                                                    [True, True]])}


def _images(seed=0):
  return jax.random.normal(jax.random.key(seed), (2, 64, 64, 3))


def _stats(model):
  return [np.asarray(s) for s in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_retinanet_v2_batch_norm_trains():
  """torchvision builds retinanet_resnet50_fpn_v2 with BatchNorm2d: train mode updates the
  statistics (fcos and retinanet freeze them: test_training_steps_lower_the_loss)."""
  model = RetinaNetV2ResNet18FPN(3, fpn_channels=32, head_depth=1, rngs=nnx.Rngs(0))
  assert not model.frozen_batch_norm
  before = _stats(model)
  nnx.jit(lambda m, x: m(x, train=True))(model, _images())
  assert any(not np.array_equal(a, b) for a, b in zip(before, _stats(model)))


def test_training_steps_lower_the_loss():
  """model.loss inside a jitted value_and_grad step: finite, Adam lowers it, the frozen
  BatchNorm statistics stay (RetinaNet's loss gradients: test_detection_assign.py)."""
  model = models.create_model('fcos_resnet18_fpn', 3, fpn_channels=32, head_depth=1,
                              rngs=nnx.Rngs(1))
  optimizer = nnx.Optimizer(model, optax.adam(3e-4), wrt=nnx.Param)
  images = _images(1)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      return model.loss(model(images, train=True), TARGETS, images.shape[1:3])
    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, metrics

  assert model.frozen_batch_norm
  before = _stats(model)
  losses = []
  for _ in range(5):
    loss, metrics = step(model, optimizer)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and float(metrics['num_foreground']) > 0
  assert all(np.array_equal(a, b) for a, b in zip(before, _stats(model)))  # Frozen BN.
  assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], \
      losses


def test_detect_fixed_size_in_jit():
  model = detection.FCOSResNet18FPN(3, fpn_channels=32, head_depth=1, rngs=nnx.Rngs(0))

  # At initialisation scores are about sqrt(0.01 x 0.5): under FCOS's 0.2, above 0.05.
  config = postprocess.PostprocessConfig(score_thresh=0.05, nms_thresh=0.6, max_detections=50)

  @nnx.jit
  def run(model, x, sizes):
    return model.detect(model(x), x.shape[1:3], sizes, config)
  out = run(model, _images(), jnp.array([[64, 64], [40, 56]]))
  assert out['boxes'].shape == (2, 50, 4) and out['num_detections'].shape == (2,)
  n = int(out['num_detections'][1])
  assert n > 0
  assert float(out['boxes'][1, :n, 2].max()) <= 56 and float(out['boxes'][1, :n, 3].max()) <= 40


@pytest.mark.parametrize('kwargs,match', [({'fpn_channels': 48}, 'multiple of 32'),
                                          ({'prior_probability': 0.0}, 'prior_probability'),
                                          ({'p6_input': 'c4'}, None)])
def test_bad_options(kwargs, match):
  if match is None:
    from vision_jax.models import fpn  # pylint: disable=import-outside-toplevel
    with pytest.raises(ConfigError, match='p6_input'):
      fpn.FPN([8, 16, 32], 32, rngs=nnx.Rngs(0), **kwargs)
    return
  with pytest.raises(ConfigError, match=match):
    models.create_model('fcos_resnet18_fpn', 3, rngs=nnx.Rngs(0), **kwargs)
