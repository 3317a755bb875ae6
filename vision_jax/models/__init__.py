"""Model registry: `config.model.name` -> an `nnx.Module` class.

Every model is called as `model(images_nhwc, train: bool) -> float32 logits`, and names its
classifier `head` (fine-tuning re-initialises it by that name).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from flax import nnx

from vision_jax import ops
from vision_jax.models import bit
from vision_jax.models import cnn
from vision_jax.models import resnet
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
}


def list_models() -> list[str]:
  """The names `create_model` accepts."""
  return sorted(_REGISTRY)


def model_class(name: str) -> Callable[..., nnx.Module]:
  """The class registered as `name` (for inspecting its options without building it)."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}. Known models: {", ".join(list_models())}.')
  return _REGISTRY[name]


def _takes_argument(constructor: Callable[..., nnx.Module], name: str) -> bool:
  # nnx.Module's metaclass hides a class's signature behind (*args, **kwargs): read __init__.
  target = constructor.__init__ if isinstance(constructor, type) else constructor
  return name in inspect.signature(target).parameters


def create_model(name: str, num_classes: int, *, rngs: nnx.Rngs | None = None,
                 kernels: ops.Kernels = ops.XLA, **kwargs: Any) -> nnx.Module:
  """Builds model `name` with `num_classes` outputs on `kernels` (XLA's own ops by default,
  see `ops.choose`); kwargs go to its constructor."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}. Known models: {", ".join(list_models())}. '
                     'Set config.model.name to one of them.')
  constructor = _REGISTRY[name]
  # The training loop always passes image_size; only models whose dense sizes depend on it
  # (ConvNet, AlexNet) name it in their signature. The others pool globally.
  if 'image_size' in kwargs and not _takes_argument(constructor, 'image_size'):
    del kwargs['image_size']
  return constructor(num_classes, rngs=rngs or nnx.Rngs(0), kernels=kernels, **kwargs)
