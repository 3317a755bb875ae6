"""The training state: one pytree that the step transforms, orbax saves and fine-tuning edits.

A state is a step counter and one or more named *parts*, each one network: classification,
segmentation and SimCLR train one part ('model'); BYOL an online network and its EMA target;
a GAN a generator and a discriminator. Each part is split once into a static graphdef and
plain nested dicts of arrays: trainable `params` (the nnx.Param values) and everything else
in `rest` (BatchNorm statistics, dropout RNG state, spectral-norm vectors), plus its
optimiser state (None for a part no optimiser trains, such as BYOL's target) and, when its
optimiser config has `ema_decay > 0`, an exponential moving average of its parameters and
statistics, which evaluation uses. The task (vision_jax/tasks) says which parts exist, how
each is built and which optimiser config trains it; this module is the only place that
decides how models become a state and back.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vision_jax import ops
from vision_jax import optim
from vision_jax import parallel
from vision_jax.errors import ConfigError

PyTree = Any


@flax.struct.dataclass
class Part:
  """One network of the state."""
  params: PyTree      # {'conv1': {'kernel': array, ...}, ...}
  rest: PyTree        # BatchNorm statistics, dropout RNG state.
  opt_state: PyTree = None  # None: not trained by an optimiser (an EMA target, a teacher).
  ema: PyTree = None  # {'params': ..., 'rest': ...} when the part keeps a moving average.

  def eval_variables(self) -> tuple[PyTree, PyTree]:
    """(params, rest) that evaluation runs: the moving average when there is one."""
    if self.ema is not None:
      return self.ema['params'], self.ema['rest']
    return self.params, self.rest


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  parts: dict[str, Part]

  def replace_part(self, name: str, part: Part) -> 'TrainState':
    return self.replace(parts={**self.parts, name: part})

  def serving(self, names) -> 'TrainState':
    """The parts `names` with their eval variables and no optimiser state: what predict,
    export and the pictures run."""
    parts = {}
    for name in names:
      params, rest = self.parts[name].eval_variables()
      parts[name] = Part(params=params, rest=rest)
    return TrainState(step=self.step, parts=parts)


@dataclasses.dataclass(frozen=True)
class Structure:
  """What is static about a state: each part's graphdef, and for each trained part its
  optimiser, learning-rate schedule and EMA decay; plus the state's shardings."""
  graphdefs: dict[str, nnx.GraphDef]
  txs: dict[str, optax.GradientTransformation]
  schedules: dict[str, Callable]
  ema_decays: dict[str, float]
  shardings: Any

  def model(self, state: TrainState, name: str, *, use_eval_variables: bool = False
            ) -> nnx.Module:
    """Part `name` of `state` as an NNX module."""
    part = state.parts[name]
    params, rest = part.eval_variables() if use_eval_variables else (part.params, part.rest)
    return merge(self.graphdefs[name], params, rest)

  @property
  def schedule(self) -> Callable:
    """The learning-rate schedule of the first trained part (the 'learning_rate' metric)."""
    return next(iter(self.schedules.values()), lambda step: jnp.zeros((), jnp.float32))


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


def _kernels(config: ml_collections.ConfigDict, mesh, platform: str | None) -> ops.Kernels:
  try:
    return ops.choose(config.model.fast_cpu_ops, platform=platform or jax.default_backend(),
                      mesh=mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from e


# config.model keys that change how the model computes, not what it computes (a run may
# change them on resume: run_identity.py).
COMPUTE_OPTIONS = ('dtype', 'fast_cpu_ops', 'remat')


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.model minus name and fast_cpu_ops: the keyword arguments of its constructor."""
  return {k: v for k, v in config.model.items() if k not in ('name', 'fast_cpu_ops')}


def build_models(task, *, num_classes: int, image_size: int, in_channels: int,
                 mesh: jax.sharding.Mesh | None = None, platform: str | None = None,
                 kernels: ops.Kernels | None = None, seed: int | None = None
                 ) -> dict[str, nnx.Module]:
  """The task's networks, {part name: module}, on `kernels`, or by default on those
  `config.model.fast_cpu_ops` chooses for `platform` (default: this backend) and `mesh`
  (see `ops.choose`). `kernels=ops.XLA` builds them on XLA's own ops whatever the platform:
  what export lowers for CPU, CUDA and TPU at once."""
  config = task.config
  if kernels is None:
    kernels = _kernels(config, mesh, platform)
  try:
    return task.create_parts(num_classes, rngs=nnx.Rngs(config.seed if seed is None else seed),
                             image_size=image_size, in_channels=in_channels, kernels=kernels,
                             **model_options(config))
  except (ValueError, TypeError) as e:  # An option or image size the model cannot take.
    raise ConfigError(
        f'config.model.name={config.model.name!r} cannot be built for {image_size}x'
        f'{image_size}x{in_channels} images with config.model={dict(config.model)}: {e} '
        'Change config.dataset.image_size or the model options.') from e


def create(task, mesh: jax.sharding.Mesh, *, num_classes: int, image_size: int,
           in_channels: int, steps_per_epoch: int, platform: str | None = None,
           kernels: ops.Kernels | None = None) -> tuple[Structure, TrainState]:
  """Initialises the task's state directly in its sharding (no host copy of a big model).

  `platform` and `kernels` as for `build_models`. Each part the task trains gets the
  optimiser of its optimiser config (`task.part_optim(name)`, with its own regex rules for
  freezing, weight decay and learning-rate multipliers over the part's paths).
  """
  config = task.config

  def make_models():
    return build_models(task, num_classes=num_classes, image_size=image_size,
                        in_channels=in_channels, mesh=mesh, platform=platform,
                        kernels=kernels)

  graphdefs, txs, schedules, ema_decays = {}, {}, {}, {}
  for name, model in nnx.eval_shape(make_models).items():
    graphdefs[name], abstract_params, _ = split(model)
    optim_config = task.part_optim(name)
    if optim_config is None:
      continue
    try:
      txs[name], schedules[name] = optim.make_optimizer(
          config, abstract_params, steps_per_epoch=steps_per_epoch, optim_config=optim_config)
    except ValueError as e:  # A bad optim value (name, rule, schedule length): the user's fix.
      raise ConfigError(str(e)) from e
    ema_decays[name] = float(optim_config.ema_decay)

  def init() -> TrainState:
    parts = {}
    for name, model in make_models().items():
      _, params, rest = split(model)
      tx = txs.get(name)
      ema = {'params': params, 'rest': rest} if ema_decays.get(name, 0.0) > 0 else None
      parts[name] = Part(params=params, rest=rest,
                         opt_state=None if tx is None else tx.init(params), ema=ema)
    return TrainState(step=jnp.zeros((), jnp.int32), parts=parts)

  # Replicated, or FSDP-sharded by config.mesh (see parallel.state_shardings).
  shardings = parallel.state_shardings(jax.eval_shape(init), mesh, config)
  state = jax.jit(init, out_shardings=shardings)()
  return Structure(graphdefs, txs, schedules, ema_decays, shardings), state


def from_model(model: nnx.Module, tx: optax.GradientTransformation, *,
               schedule: Callable | None = None, ema_decay: float = 0.0,
               name: str = 'model') -> tuple[Structure, TrainState]:
  """A one-part state of a module built by hand and an optimiser (unsharded): for
  notebooks, tests and benchmarks that bring their own network."""
  graphdef, params, rest = split(model)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  ema = {'params': copy(params), 'rest': copy(rest)} if ema_decay > 0 else None
  part = Part(params=params, rest=rest, opt_state=tx.init(params), ema=ema)
  schedules = {name: schedule} if schedule is not None else {}
  structure = Structure({name: graphdef}, {name: tx}, schedules, {name: ema_decay}, None)
  return structure, TrainState(step=jnp.zeros((), jnp.int32), parts={name: part})


def abstract(state: TrainState) -> TrainState:
  """ShapeDtypeStructs (with shardings) of a state: the target for a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def num_params(state: TrainState) -> dict[str, int]:
  """Trainable parameter count of each part."""
  return {name: sum(x.size for x in jax.tree.leaves(part.params))
          for name, part in state.parts.items()}
