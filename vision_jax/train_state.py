"""The training state: one pytree that the step transforms, orbax saves and fine-tuning edits.

A model is split once into a static `graphdef` and arrays: trainable `params` (nnx.Param)
and everything else in `rest` (BatchNorm statistics, dropout RNG state). The jitted step
merges them back into a module, runs it, and splits again (see `steps.py`). This is the
only place that decides how a model becomes a state and back.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vision_jax import config as config_lib
from vision_jax import models
from vision_jax import ops
from vision_jax import optim
from vision_jax import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  rest: nnx.State
  opt_state: Any


def build_model(config: ml_collections.ConfigDict, *, num_classes: int, image_size: int,
                in_channels: int, seed: int | None = None) -> nnx.Module:
  """The configured model, on the CPU fast path when config.model.fast_cpu_ops says so."""
  fast = ops.resolve_fast_cpu_ops(config.model.get('fast_cpu_ops', False))
  return models.create_model(
      config.model.name, num_classes, rngs=nnx.Rngs(config.seed if seed is None else seed),
      image_size=image_size, in_channels=in_channels, fast_cpu_ops=fast,
      **config_lib.model_kwargs(config))


def split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """model -> (graphdef, params, rest)."""
  return nnx.split(model, nnx.Param, ...)


def merge(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  return nnx.merge(graphdef, state.params, state.rest)


def create(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, num_classes: int,
           image_size: int, in_channels: int, steps_per_epoch: int):
  """Initialises the state directly in its sharding (no host copy of a big model).

  Returns (graphdef, state, tx, learning_rate_schedule, state_shardings).
  """
  def make_model():
    return build_model(config, num_classes=num_classes, image_size=image_size,
                       in_channels=in_channels)

  graphdef, abstract_params, _ = split(nnx.eval_shape(make_model))
  try:
    tx, schedule = optim.make_optimizer(config, abstract_params,
                                        steps_per_epoch=steps_per_epoch)
  except ValueError as e:  # A bad optim value (name, rule, schedule length): the user's fix.
    raise config_lib.ConfigError(str(e)) from e

  def init() -> TrainState:
    _, params, rest = split(make_model())
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                      opt_state=tx.init(params))

  # Replicated, or FSDP-sharded by config.mesh (see parallel.state_shardings).
  shardings = parallel.state_shardings(jax.eval_shape(init), mesh, config)
  state = jax.jit(init, out_shardings=shardings)()
  return graphdef, state, tx, schedule, shardings


def abstract(state: TrainState) -> TrainState:
  """ShapeDtypeStructs (with shardings) of a state: the target for a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)

