"""The training state: one pytree that the step transforms, orbax saves and fine-tuning edits.

A model is split once into a static `graphdef` and plain nested dicts of arrays: trainable
`params` (the nnx.Param values) and everything else in `rest` (BatchNorm statistics,
dropout RNG state). The jitted step merges them back into a module, runs it, and splits
again (see `steps.py`). With `config.optim.ema_decay > 0`, `ema` holds an exponential
moving average of both the parameters and the BatchNorm statistics, which evaluation uses.
This is the only place that decides how a model becomes a state and back.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vision_jax import config as config_lib
from vision_jax import tasks
from vision_jax import ops
from vision_jax import optim
from vision_jax import parallel

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree      # {'conv1': {'kernel': array, ...}, ...}
  rest: PyTree        # BatchNorm statistics, dropout RNG state.
  opt_state: PyTree
  ema: PyTree = None  # {'params': ..., 'rest': ...} when config.optim.ema_decay > 0.

  def eval_variables(self) -> tuple[PyTree, PyTree]:
    """(params, rest) that evaluation runs: the moving average when there is one."""
    if self.ema is not None:
      return self.ema['params'], self.ema['rest']
    return self.params, self.rest


def build_model(config: ml_collections.ConfigDict, *, num_classes: int, image_size: int,
                in_channels: int, mesh: jax.sharding.Mesh | None = None,
                platform: str | None = None, kernels: ops.Kernels | None = None,
                seed: int | None = None) -> nnx.Module:
  """The configured model, on `kernels`, or by default on those `config.model.fast_cpu_ops`
  chooses for `platform` (default: this backend) and `mesh` (see `ops.choose`).

  `kernels=ops.XLA` builds it on XLA's own ops whatever the platform: what export lowers
  for CPU, CUDA and TPU at once.
  """
  if kernels is None:
    try:
      kernels = ops.choose(config.model.get('fast_cpu_ops', 'auto'),
                           platform=platform or jax.default_backend(), mesh=mesh)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from e
  try:
    return tasks.get(config).create_model(
        config, num_classes, rngs=nnx.Rngs(config.seed if seed is None else seed),
        image_size=image_size, in_channels=in_channels, kernels=kernels,
        **config_lib.model_kwargs(config))
  except (ValueError, TypeError) as e:  # An option or image size the model cannot take.
    raise config_lib.ConfigError(
        f'config.model.name={config.model.name!r} cannot be built for {image_size}x'
        f'{image_size}x{in_channels} images with config.model={dict(config.model)}: {e} '
        'Change config.dataset.image_size or the model options.') from e


def split(model: nnx.Module) -> tuple[nnx.GraphDef, PyTree, PyTree]:
  """model -> (graphdef, params, rest), the last two as plain nested dicts of arrays."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge(graphdef: nnx.GraphDef, params: PyTree, rest: PyTree) -> nnx.Module:
  return nnx.merge(graphdef, params, rest)


def update_ema(ema: PyTree, params: PyTree, rest: PyTree, step: jax.Array,
               decay: float) -> PyTree:
  """One EMA step over parameters and BatchNorm statistics, with a warm-up.

  The decay used at step t is min(decay, (1 + t) / (10 + t)) (the `num_updates` warm-up of
  TensorFlow's ExponentialMovingAverage): early averages are not dominated by the initial
  weights, so early evaluations and best-checkpoint ranking see trained weights. Integer
  and key leaves of `rest` (RNG state) are taken as they are.
  """
  t = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))

  def average(e, x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    return (d * e + (1.0 - d) * x.astype(jnp.float32)).astype(e.dtype)

  return {'params': jax.tree.map(average, ema['params'], params),
          'rest': jax.tree.map(average, ema['rest'], rest)}


def create(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, num_classes: int,
           image_size: int, in_channels: int, steps_per_epoch: int,
           platform: str | None = None, kernels: ops.Kernels | None = None):
  """Initialises the state directly in its sharding (no host copy of a big model).

  `platform` and `kernels` as for `build_model`. Returns (graphdef, state, tx,
  learning_rate_schedule, state_shardings).
  """
  def make_model():
    return build_model(config, num_classes=num_classes, image_size=image_size,
                       in_channels=in_channels, mesh=mesh, platform=platform,
                       kernels=kernels)

  graphdef, abstract_params, _ = split(nnx.eval_shape(make_model))
  try:
    tx, schedule = optim.make_optimizer(config, abstract_params,
                                        steps_per_epoch=steps_per_epoch)
  except ValueError as e:  # A bad optim value (name, rule, schedule length): the user's fix.
    raise config_lib.ConfigError(str(e)) from e

  def init() -> TrainState:
    _, params, rest = split(make_model())
    ema = None
    if config.optim.ema_decay > 0:
      ema = {'params': params, 'rest': rest}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                      opt_state=tx.init(params), ema=ema)

  # Replicated, or FSDP-sharded by config.mesh (see parallel.state_shardings).
  shardings = parallel.state_shardings(jax.eval_shape(init), mesh, config)
  state = jax.jit(init, out_shardings=shardings)()
  return graphdef, state, tx, schedule, shardings


def abstract(state: TrainState) -> TrainState:
  """ShapeDtypeStructs (with shardings) of a state: the target for a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)
