"""Model registry: `config.model.name` -> an `nnx.Module` class.

Every model is called as `model(images_nhwc, train: bool) -> float32 logits`, and names its
output layer(s) `head` (fine-tuning re-initialises it by that name). A model's task is its
class's TASK ('classification' when absent): classifiers return [B, K], segmentation
models (models/segmentation.py) [B, H, W, K], detectors (models/detection.py) a dict of
per-anchor outputs; the GAN pairs (models/gan.py) hold a generator and a discriminator.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from flax import nnx

from vision_jax import ops
from vision_jax.errors import ConfigError
from vision_jax.models import bit
from vision_jax.models import cnn
from vision_jax.models import detection
from vision_jax.models import gan
from vision_jax.models import resnet
from vision_jax.models import segmentation
from vision_jax.models.summary import count_params, parameter_overview  # Re-exported.

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    'convnet': cnn.ConvNet,
    'alexnet': cnn.AlexNet,
    'resnet18': resnet.ResNet18,
    'resnet34': resnet.ResNet34,
    'resnet50': resnet.ResNet50,
    'resnet101': resnet.ResNet101,
    'resnet152': resnet.ResNet152,
    'resnet200': resnet.ResNet200,
    'cifar_resnet18': resnet.CifarResNet18,
    'cifar_resnet34': resnet.CifarResNet34,
    'cifar_resnet50': resnet.CifarResNet50,
    'wide_resnet28_10': resnet.WideResNet28_10,
    'bit_r50x1': bit.BitR50x1,
    'bit_r50x3': bit.BitR50x3,
    'bit_r101x1': bit.BitR101x1,
    **detection.DETECTORS,
    **gan.GAN_MODELS,  # Generator + discriminator pairs (TASK 'gan').
}
# Segmentation models by composition: '<head>_<backbone>' is a dense head (fcn, deeplabv3)
# on any registered backbone with a feature map; these are listed, any other such pair
# (e.g. 'deeplabv3_resnet34', or a fork's registered backbone) is made on first use.
_DENSE_LISTED = ('resnet18', 'resnet50', 'resnet101', 'cifar_resnet18', 'bit_r50x1')
_REGISTRY.update({f'{head}_{backbone}': segmentation.dense_model_class(
    _REGISTRY[backbone], head) for head in segmentation.HEADS for backbone in _DENSE_LISTED})


def register(name: str, constructor: Callable[..., nnx.Module]) -> None:
  """Adds a model family under `name` (config.model.name), e.g. from a research fork's own
  module; `constructor(num_classes, *, rngs, kernels, **config.model)` builds it. A name
  already taken is an error: models are not replaced silently."""
  if name in _REGISTRY:
    raise ValueError(f'A model named {name!r} is already registered '
                     f'({_REGISTRY[name].__module__}.{_REGISTRY[name].__name__}).')
  _REGISTRY[name] = constructor


def list_models() -> list[str]:
  """The names `create_model` accepts."""
  return sorted(_REGISTRY)


def _dense_pair(name: str) -> Callable[..., nnx.Module] | None:
  """The segmentation model '<head>_<backbone>' of a registered backbone, or None."""
  for head in segmentation.HEADS:
    backbone = _REGISTRY.get(name[len(head) + 1:]) if name.startswith(head + '_') else None
    if backbone is not None and segmentation.can_be_dense(backbone):
      return segmentation.dense_model_class(backbone, head)
  return None


def known(name: str) -> bool:
  """Whether `name` is a model: registered, or a dense head on a registered backbone."""
  return name in _REGISTRY or _dense_pair(name) is not None


def model_class(name: str) -> Callable[..., nnx.Module]:
  """The class registered as `name` (for inspecting its options without building it)."""
  if name not in _REGISTRY and _dense_pair(name) is not None:
    _REGISTRY[name] = _dense_pair(name)
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}. Known models: {", ".join(list_models())}.')
  return _REGISTRY[name]


def model_task(name: str) -> str:
  """The task model `name` is built for: 'classification', 'segmentation' or
  'detection'."""
  return getattr(model_class(name), 'TASK', 'classification')


def check_model_task(name: str, task: str) -> None:
  """Raises ConfigError unless model `name` does `task` (config validation calls this)."""
  have = model_task(name)
  if have == task:
    return
  fitting = ', '.join(n for n in list_models() if model_task(n) == task)
  hint = ''
  if task == 'segmentation' and not hasattr(model_class(name), 'features'):
    hint = (f' {name!r} returns no feature map, so no dense head can sit on it; the '
            'segmentation models use ResNet or BiT backbones.')
  raise ConfigError(f'config.model.name={name!r} is a {have} model, but config.task.name='
                    f'{task!r}.{hint} Use one of: {fitting or "(none registered)"}.')


def _takes_argument(constructor: Callable[..., nnx.Module], name: str) -> bool:
  # nnx.Module's metaclass hides a class's signature behind (*args, **kwargs): read __init__.
  target = constructor.__init__ if isinstance(constructor, type) else constructor
  return name in inspect.signature(target).parameters


def create_model(name: str, num_classes: int, *, rngs: nnx.Rngs | None = None,
                 kernels: ops.Kernels = ops.XLA, **kwargs: Any) -> nnx.Module:
  """Builds model `name` with `num_classes` outputs on `kernels` (XLA's own ops by default,
  see `ops.choose`); kwargs go to its constructor."""
  if not known(name):
    raise ValueError(f'Unknown model {name!r}. Known models: {", ".join(list_models())}. '
                     'Set config.model.name to one of them.')
  constructor = model_class(name)
  # The training loop always passes image_size; only models whose dense sizes depend on it
  # (ConvNet, AlexNet) name it in their signature. The others pool globally.
  if 'image_size' in kwargs and not _takes_argument(constructor, 'image_size'):
    del kwargs['image_size']
  return constructor(num_classes, rngs=rngs or nnx.Rngs(0), kernels=kernels, **kwargs)
