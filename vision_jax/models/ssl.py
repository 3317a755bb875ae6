"""Self-supervised models: a registered classifier's backbone with a projection MLP (SimCLR)
and optionally a predictor MLP (BYOL) instead of its head.

An SSL model *is* its backbone class (a subclass made once per class by `ssl_class`), built
by the backbone's own constructor, so every backbone variable keeps the path it has in the
classifier ('stem_conv/kernel', 'blocks/0/conv1/kernel', ...). The classifier's `head`
is replaced by a parameter-free pass-through, and the new layers are named `projector` and
`predictor`. After pretraining, `init_from.checkpoint=<the SSL workdir>` into the plain
classifier loads the backbone by path; the classifier's default `init_from.skip=('head/.*',)`
re-initialises its head, and the projector and predictor are listed as unused in
`init_report.json`. The backbone is initialised exactly as the classifier of the same seed
(its head's draws come last), so a random-backbone baseline is the same network.

Pooled features are what the classifier feeds its head: the global average pool of the
ResNets and BiT, fc1's activations of the ConvNet. `pooled_features(model, x)` gives them
for a classifier as well, by running it with the pass-through in place of its head.

Every registered classifier ends its forward pass with `self.head(pooled).astype(float32)`
(models/__init__.py's contract); this module relies on that and on nothing else.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import models
from vision_jax import ops
from vision_jax.models import layers


class PassThrough(nnx.Module):
  """Stands in for a classifier's head: returns the pooled features unchanged."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


class MLP(nnx.Module):
  """(Linear-BN-ReLU) x (num_layers - 1), then Linear, then BN when `last_bn`.

  SimCLR v1's projector is num_layers=2 (v2: 3, last_bn=True), BYOL's projector and
  predictor num_layers=2. Linears followed by BN have no bias (BN's shift replaces it).
  BatchNorm as the ResNets' (momentum 0.9, epsilon 1e-5): in training its statistics are
  those of the whole global batch, as SimCLR's global BN, by construction of the jitted
  step. The output is float32.
  """

  def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, num_layers: int = 2,
               last_bn: bool = False, dtype='float32', kernels: ops.Kernels = ops.XLA,
               rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f'An MLP needs at least one layer, got num_layers={num_layers}.')
    dtype = layers.as_dtype(dtype)
    self.last_bn = last_bn
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    with_bn = [True] * (num_layers - 1) + [last_bn]
    self.linears = nnx.List([
        nnx.Linear(dims[i], dims[i + 1], use_bias=not with_bn[i], dtype=dtype, rngs=rngs)
        for i in range(num_layers)])
    self.norms = nnx.List([
        layers.BatchNorm(dims[i + 1], momentum=0.9, epsilon=1e-5, dtype=dtype,
                         kernels=kernels, rngs=rngs)
        for i in range(num_layers) if with_bn[i]])

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norms = iter(self.norms)
    last = len(self.linears) - 1
    for i, linear in enumerate(self.linears):
      x = linear(x)
      if i < last or self.last_bn:
        x = next(norms)(x, use_running_average=not train)
      if i < last:
        x = nnx.relu(x)
    return x.astype(jnp.float32)


class SSLModel(nnx.Module):
  """Mixed into a backbone class by `ssl_class`: the backbone's layers, `projector` and,
  for BYOL, `predictor`.

    features(x, train)  the pooled backbone features [B, F] (k-NN, linear probes)
    __call__(x, train)  the projection [B, projector_output_dim] (SimCLR's z, BYOL's
                        projection), float32
    predict(z, train)   BYOL's predictor applied to a projection
  """

  def __init__(self, *, projector_hidden_dim: int = 2048, projector_output_dim: int = 128,
               projector_layers: int = 2, projector_last_bn: bool = False,
               predictor_hidden_dim: int = 0, dtype='float32',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs, **backbone_kwargs: Any):
    super().__init__(1, dtype=dtype, kernels=kernels, rngs=rngs, **backbone_kwargs)
    feature_dim = self.head.in_features
    self.head = PassThrough()
    self.feature_dim = feature_dim
    self.projector = MLP(feature_dim, projector_hidden_dim, projector_output_dim,
                         num_layers=projector_layers, last_bn=projector_last_bn, dtype=dtype,
                         kernels=kernels, rngs=rngs)
    self.predictor = MLP(projector_output_dim, predictor_hidden_dim, projector_output_dim,
                         num_layers=2, dtype=dtype, kernels=kernels,
                         rngs=rngs) if predictor_hidden_dim else None

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    feature_map = getattr(super(), 'features', None)
    if feature_map is not None:  # ResNet, BiT: their last map, pooled as __call__ pools it.
      return jnp.mean(feature_map(x, train), axis=(1, 2)).astype(jnp.float32)
    return super().__call__(x, train)  # The head is the pass-through: the pooled features.

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.projector(self.features(x, train), train)

  def predict(self, z: jax.Array, train: bool = False) -> jax.Array:
    if self.predictor is None:
      raise ValueError('This SSL model has no predictor: build it with '
                       'predictor_hidden_dim > 0 (BYOL).')
    return self.predictor(z, train)


@functools.cache
def ssl_class(backbone_cls: type) -> type:
  """The SSL model class of a backbone class: `SSLModel` mixed into it. One class per
  backbone (cached), so graph definitions of two such models compare equal."""
  return type(f'SSL{backbone_cls.__name__}', (SSLModel, backbone_cls),
              {'__module__': __name__, '__doc__': SSLModel.__doc__})


def create_ssl_model(backbone: str, *, rngs: nnx.Rngs, kernels: ops.Kernels = ops.XLA,
                     projector_hidden_dim: int = 2048, projector_output_dim: int = 128,
                     projector_layers: int = 2, projector_last_bn: bool = False,
                     predictor_hidden_dim: int = 0, **backbone_kwargs: Any) -> SSLModel:
  """The SSL model on the registered classifier `backbone` ('cifar_resnet18', ...);
  `backbone_kwargs` go to its constructor as in `models.create_model` (image_size only to
  the models that take it)."""
  cls = models.model_class(backbone)
  if 'image_size' in backbone_kwargs and (
      'image_size' not in inspect.signature(cls.__init__).parameters):
    del backbone_kwargs['image_size']
  return ssl_class(cls)(
      projector_hidden_dim=projector_hidden_dim, projector_output_dim=projector_output_dim,
      projector_layers=projector_layers, projector_last_bn=projector_last_bn,
      predictor_hidden_dim=predictor_hidden_dim, kernels=kernels, rngs=rngs,
      **backbone_kwargs)


def pooled_features(model: nnx.Module, x: jax.Array, *, train: bool = False) -> jax.Array:
  """The pooled features [B, F] of any registered classifier or SSL model (float32): what
  the classifier's head would see. For a classifier the head is swapped for the
  pass-through for the call and put back (BatchNorm statistics advance in train mode as
  in a normal forward pass)."""
  if isinstance(model, SSLModel):
    return model.features(x, train)
  head = model.head
  model.head = PassThrough()
  try:
    return model(x, train=train)
  finally:
    model.head = head
