"""The shared machinery a task's update is written with: one part's gradient update.

A task's `update(updater, state, inputs)` (vision_jax/tasks) says what is trained against
what: classification and segmentation take one gradient step on their one part; BYOL steps
its online network and moves its target towards it; a GAN alternates its discriminator and
generator. `Updater.gradient_update` is the step of one part that they share: the loss and
its gradients (with gradient accumulation over micro-batches, BatchNorm statistics
advancing once per update), the part's optimiser, its moving average. The jitted step
around it (steps.py) adds the rest for every task alike: device augmentation, the
non-finite guard, shardings and donation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vision_jax import optim
from vision_jax import train_state as ts

Batch = dict[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, Any]]
MetricsFn = Callable[[jax.Array, Any, Batch], dict]


def _is_float(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


@dataclasses.dataclass(frozen=True)
class Updater:
  """What a task's update needs besides the state and the batch."""
  structure: ts.Structure
  accum_steps: int = 1

  def model(self, state: ts.TrainState, name: str) -> nnx.Module:
    """Part `name` as a module (its training variables)."""
    return self.structure.model(state, name)

  def gradient_update(self, state: ts.TrainState, name: str, loss_fn: LossFn,
                      metrics_fn: MetricsFn, inputs: Batch) -> tuple[ts.Part, dict]:
    """Part `name` after one optimiser step on `loss_fn(model, micro_batch) -> (loss,
    aux)`, and `metrics_fn(loss, aux, micro_batch)` plus 'grad_norm'.

    With accum_steps=k the batch is split into k micro-batches whose gradients are
    averaged before one update. BatchNorm's running statistics then also advance once per
    update: every micro-batch starts from the same statistics and the k updated ones are
    averaged, i.e. new = m * old + (1 - m) * mean over micro-batches of their batch
    statistics (dropout RNG state still advances per micro-batch). A part whose optimiser
    config has ema_decay > 0 also updates its moving average (train_state.update_ema).
    """
    graphdef, tx = self.structure.graphdefs[name], self.structure.txs[name]
    part = state.parts[name]

    def micro_step(micro: Batch, carry):
      """Loss, gradients, metrics and updated BatchNorm statistics of one micro-batch.

      The carry holds the parameters and the state as it was before the step (only its
      RNG leaves advance): under accumulation this runs inside `lax.scan`, and NNX
      refuses to build a module from arrays of an outer trace.
      """
      params, rest = carry
      model = ts.merge(graphdef, params, rest)
      (loss, aux), grads = nnx.value_and_grad(
          lambda model: loss_fn(model, micro), has_aux=True)(model)
      grads = nnx.to_pure_dict(grads)  # The same nested dicts as the part's params.
      metrics = metrics_fn(loss, aux, micro)
      new_rest = ts.split(model)[2]
      stats = jax.tree.map(lambda x: x if _is_float(x) else jnp.zeros((), jnp.float32),
                           new_rest)
      rngs = jax.tree.map(lambda new, old: old if _is_float(old) else new, new_rest, rest)
      return (grads, metrics, stats), (params, rngs)

    (grads, metrics, stats), (_, rngs) = optim.accumulate_gradients(
        micro_step, inputs, self.accum_steps, (part.params, part.rest))
    rest = jax.tree.map(lambda s, r: s if _is_float(r) else r, stats, rngs)
    updates, opt_state = tx.update(grads, part.opt_state, part.params)
    params = optax.apply_updates(part.params, updates)
    ema = part.ema
    if ema is not None:
      ema = ts.update_ema(ema, params, rest, state.step, self.structure.ema_decays[name])
    new = ts.Part(params=params, rest=rest, opt_state=opt_state, ema=ema)
    return new, {**metrics, 'grad_norm': optax.global_norm(grads)}
