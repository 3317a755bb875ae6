"""Model registry: `config.model.name` -> an `nnx.Module` class.

Every model is called as `model(images_nhwc, train: bool) -> float32 logits`, and names its
classifier `head` (fine-tuning re-initialises it by that name).
"""
from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from vision_jax.models import cnn
from vision_jax.models import layers

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    'convnet': cnn.ConvNet,
}


def list_models() -> list[str]:
  """The names `create_model` accepts."""
  return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, *, rngs: nnx.Rngs | None = None,
                 fast_cpu_ops: bool = False, **kwargs: Any) -> nnx.Module:
  """Builds model `name` with `num_classes` outputs; kwargs go to its constructor."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}. Known models: {", ".join(list_models())}. '
                     'Set config.model.name to one of them.')
  with layers.fast_cpu_ops(fast_cpu_ops):
    return _REGISTRY[name](num_classes, rngs=rngs or nnx.Rngs(0), **kwargs)
