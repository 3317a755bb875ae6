"""The jitted train and eval steps: pure functions of (state, batch).

Inside the step the state is merged into a module (`train_state.merge`), differentiated
with `nnx.value_and_grad`, and split again, so BatchNorm statistics and dropout RNG state
advance exactly as in eager NNX code while the step itself stays functional.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from vision_jax import ops
from vision_jax import optim
from vision_jax import parallel
from vision_jax import tasks
from vision_jax import train_state as ts
from vision_jax.data import device_augment
from vision_jax.data import mixing
from vision_jax.data.normalize import normalize

Batch = dict[str, jax.Array]


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def _is_float(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


def _task_or_classification(task, label_smoothing: float = 0.0):
  if task is not None:
    return task
  from vision_jax.tasks.classification import Classification  # pylint: disable=g-import-not-at-top
  return Classification(label_smoothing=label_smoothing)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: Callable, *, mean: Sequence[float], std: Sequence[float],
                    label_smoothing: float = 0.0, accum_steps: int = 1,
                    augment: Callable | None = None, mix: Callable | None = None,
                    ema_decay: float = 0.0, task=None):
  """Returns train_step(state, batch) -> (state, metrics); jit it with shardings.

  `task` (vision_jax.tasks; default: classification with `label_smoothing`) says what the
  batch holds and computes the loss and train metrics of each micro-batch.

  With accum_steps=k the batch is split into k micro-batches whose gradients are averaged
  before one update. BatchNorm's running statistics then also advance once per update:
  every micro-batch starts from the same statistics and the k updated ones are averaged,
  i.e. new = m * old + (1 - m) * mean over micro-batches of their batch statistics (dropout
  RNG state still advances per micro-batch). `augment` (data/device_augment.py) changes the
  uint8 images on device, keyed by (seed, step), before they are normalised; `mix`
  (data/mixing.py: mixup / cutmix) turns
  the normalised batch and its labels into mixed images and soft labels, keyed by (seed,
  step); accuracy is then against the larger share. `ema_decay` > 0 updates `state.ema`
  (train_state.update_ema).
  """
  task = _task_or_classification(task, label_smoothing)

  def micro_step(micro: Batch, carry):
    """Loss, gradients, metrics and updated BatchNorm statistics of one micro-batch.

    The carry holds the parameters and the state as it was before the step (only its RNG
    leaves advance): under accumulation this runs inside `lax.scan`, and NNX refuses to
    build a module from arrays of an outer trace.
    """
    params, rest = carry
    model = ts.merge(graphdef, params, rest)

    (loss, aux), grads = nnx.value_and_grad(
        lambda model: task.loss(model, micro), has_aux=True)(model)
    grads = nnx.to_pure_dict(grads)  # The same nested dicts as state.params.
    metrics = task.train_metrics(loss, aux, micro)
    new_rest = ts.split(model)[2]
    stats = jax.tree.map(lambda x: x if _is_float(x) else jnp.zeros((), jnp.float32),
                         new_rest)
    rngs = jax.tree.map(lambda new, old: old if _is_float(old) else new, new_rest, rest)
    return (grads, metrics, stats), (params, rngs)

  def train_step(state: ts.TrainState, batch: Batch):
    if augment is not None:
      batch = {**batch, 'image': augment(batch['image'], state.step)}
    inputs = task.train_inputs(batch, lambda x: normalize(x, mean, std))
    if mix is not None:
      inputs['image'], inputs['label'] = mix(inputs['image'], inputs['label'], state.step)
    (grads, metrics, stats), (_, rngs) = optim.accumulate_gradients(
        micro_step, inputs, accum_steps, (state.params, state.rest))
    rest = jax.tree.map(lambda s, r: s if _is_float(r) else r, stats, rngs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = ts.TrainState(step=state.step + 1, params=params, rest=rest, opt_state=opt_state,
                        ema=None if state.ema is None else ts.update_ema(
                            state.ema, params, rest, state.step, ema_decay))
    # A non-finite loss or gradient leaves the state untouched (but its step); the loop
    # stops on it.
    finite = jnp.isfinite(metrics['loss']) & _all_finite(grads)
    keep = lambda n, o: jax.tree.map(lambda a, b: jnp.where(finite, a, b), n, o)
    new = new.replace(params=keep(new.params, state.params), rest=keep(new.rest, state.rest),
                      opt_state=keep(new.opt_state, state.opt_state),
                      ema=keep(new.ema, state.ema))
    metrics |= {'learning_rate': schedule(state.step), 'grad_norm': optax.global_norm(grads),
                'finite': finite}
    return new, metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, *, mean: Sequence[float], std: Sequence[float],
                   top_k: int = 5, task=None):
  """Returns eval_step(state, batch) -> the task's per-batch eval arrays (classification:
  per-example loss, top-k predictions, label, mask).

  It evaluates `state.eval_variables()`: the EMA of the weights and statistics when the
  run keeps one.
  """
  if task is None:
    from vision_jax.tasks.classification import Classification  # pylint: disable=g-import-not-at-top
    task = Classification(top_k=top_k)

  def eval_step(state: ts.TrainState, batch: Batch):
    model = ts.merge(graphdef, *state.eval_variables())
    return task.eval_outputs(task.apply(model, normalize(batch['image'], mean, std)), batch)

  return eval_step


def jit_train_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                   tx: optax.GradientTransformation, schedule: Callable, *,
                   mean: Sequence[float], std: Sequence[float], num_classes: int, mesh: Mesh,
                   state_shardings: Any, device_recipe: str = '',
                   image_size: int = 0) -> Callable:
  """The training loop's step for `config`, `step(state, batch) -> (state, metrics)`,
  jitted over `mesh` with the state's shardings, the batch split over every device and
  the state donated. `device_recipe` (input_pipeline.Data.device_augment) is the part of
  the augmentation the device does. The benchmarks time this very function."""
  step = make_train_step(
      graphdef, tx, schedule, mean=mean, std=std,
      label_smoothing=config.optim.label_smoothing, accum_steps=config.optim.accum_steps,
      augment=device_augment.make_device_augment(device_recipe, config.seed, image_size),
      mix=mixing.from_config(config.dataset, num_classes, config.seed),
      ema_decay=config.optim.ema_decay, task=tasks.get(config))
  remat = config.model.get('remat', 'none') not in ('none', '')
  return jax.jit(step, in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=0, compiler_options=ops.compiler_options(remat=remat))


def jit_eval_step(graphdef: nnx.GraphDef, *, mean: Sequence[float], std: Sequence[float],
                  mesh: Mesh, state_shardings: Any, task=None) -> Callable:
  """The eval step jitted over `mesh`: the batch split over every device, as in training
  (for the loop's evaluations and for --mode=eval alike); `task` as in make_eval_step."""
  return jax.jit(make_eval_step(graphdef, mean=mean, std=std, task=task),
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh),
                 compiler_options=ops.compiler_options())
