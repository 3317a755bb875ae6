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

from vision_jax import losses
from vision_jax import ops
from vision_jax import optim
from vision_jax import parallel
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


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: Callable, *, mean: Sequence[float], std: Sequence[float],
                    label_smoothing: float = 0.0, accum_steps: int = 1,
                    augment: Callable | None = None, mix: Callable | None = None,
                    ema_decay: float = 0.0, example_loss: Callable | None = None):
  """Returns train_step(state, batch) -> (state, metrics); jit it with shardings.

  With accum_steps=k the batch is split into k micro-batches whose gradients are averaged
  before one update. BatchNorm's running statistics then also advance once per update:
  every micro-batch starts from the same statistics and the k updated ones are averaged,
  i.e. new = m * old + (1 - m) * mean over micro-batches of their batch statistics (dropout
  RNG state still advances per micro-batch). `augment` (data/device_augment.py) changes the
  uint8 images on device, keyed by (seed, step), before they are normalised; `mix`
  (data/mixing.py: mixup / cutmix) turns
  the normalised batch and its labels into mixed images and soft labels, keyed by (seed,
  step); accuracy is then against the larger share. `ema_decay` > 0 updates `state.ema`
  (train_state.update_ema). `example_loss(logits, labels) -> [B]`
  (losses.classification_loss) defaults to the softmax cross-entropy with `label_smoothing`.
  """
  if example_loss is None:
    example_loss = losses.classification_loss('softmax_xent', label_smoothing=label_smoothing)

  def micro_step(micro: Batch, carry):
    """Loss, gradients, metrics and updated BatchNorm statistics of one micro-batch.

    The carry holds the parameters and the state as it was before the step (only its RNG
    leaves advance): under accumulation this runs inside `lax.scan`, and NNX refuses to
    build a module from arrays of an outer trace.
    """
    params, rest = carry
    model = ts.merge(graphdef, params, rest)

    def loss_fn(model):
      logits = model(micro['image'], train=True)
      loss = example_loss(logits, micro['label']).mean()
      return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    grads = nnx.to_pure_dict(grads)  # The same nested dicts as state.params.
    labels = micro['label']
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == hard)
    new_rest = ts.split(model)[2]
    stats = jax.tree.map(lambda x: x if _is_float(x) else jnp.zeros((), jnp.float32),
                         new_rest)
    rngs = jax.tree.map(lambda new, old: old if _is_float(old) else new, new_rest, rest)
    return (grads, {'loss': loss, 'accuracy': accuracy}, stats), (params, rngs)

  def train_step(state: ts.TrainState, batch: Batch):
    images = batch['image'] if augment is None else augment(batch['image'], state.step)
    inputs = {'image': normalize(images, mean, std), 'label': batch['label']}
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
                   top_k: int = 5):
  """Returns eval_step(state, batch) -> per-example loss, top-k predictions, label, mask.

  It evaluates `state.eval_variables()`: the EMA of the weights and statistics when the
  run keeps one.
  """

  def eval_step(state: ts.TrainState, batch: Batch):
    model = ts.merge(graphdef, *state.eval_variables())
    logits = model(normalize(batch['image'], mean, std), train=False)
    k = min(top_k, logits.shape[-1])
    return {
        'loss': optim.cross_entropy(logits, batch['label'], logits.shape[-1]),
        'top_k': jax.lax.top_k(logits, k)[1],
        'label': batch['label'],
        'mask': batch['mask'],
    }

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
      ema_decay=config.optim.ema_decay, example_loss=losses.classification_loss(
          config.optim.loss, label_smoothing=config.optim.label_smoothing,
          threshold=config.optim.bce_target_threshold))
  remat = config.model.get('remat', 'none') not in ('none', '')
  return jax.jit(step, in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=0, compiler_options=ops.compiler_options(remat=remat))


def jit_eval_step(graphdef: nnx.GraphDef, *, mean: Sequence[float], std: Sequence[float],
                  mesh: Mesh, state_shardings: Any) -> Callable:
  """The eval step jitted over `mesh`: the batch split over every device, as in training
  (for the loop's evaluations and for --mode=eval alike)."""
  return jax.jit(make_eval_step(graphdef, mean=mean, std=std),
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh),
                 compiler_options=ops.compiler_options())
