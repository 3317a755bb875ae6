"""The jitted train and eval steps: pure functions of (state, batch).

Inside the step the state is merged into a module (`train_state.merge`), differentiated
with `nnx.value_and_grad`, and split again, so BatchNorm statistics and dropout RNG state
advance exactly as in eager NNX code while the step itself stays functional.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from vision_jax import optim
from vision_jax import train_state as ts
from vision_jax.data.preprocess import normalize
from vision_jax.models import layers
from vision_jax.ops import per_shard

Batch = dict[str, jax.Array]


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: Callable, *, mean: Sequence[float], std: Sequence[float],
                    label_smoothing: float = 0.0, accum_steps: int = 1,
                    mix: Callable | None = None, fast_cpu_ops: bool = False,
                    mesh: Mesh | None = None):
  """Returns train_step(state, batch) -> (state, metrics); jit it with shardings.

  `fast_cpu_ops` traces the step with the CPU fast path on (layers.fast_cpu_ops), which
  max-pools follow; convolutions chose theirs when the model was built. `mesh` (the one the
  step is jitted over) lets the fast ops run per device on its batch shard (ops.per_shard).

  With accum_steps=k the batch is split into k micro-batches whose gradients are averaged
  before one update (BatchNorm statistics advance once per micro-batch). `mix`
  (data/mixing.py: mixup / cutmix) turns the normalised batch and its labels into mixed
  images and soft labels, keyed by (seed, step); accuracy is then against the larger share.
  """

  def train_step(state: ts.TrainState, batch: Batch):
    # Active while jax traces the step.
    with layers.fast_cpu_ops(fast_cpu_ops), per_shard.batch_parallel(mesh):
      return _train_step(state, batch)

  def _train_step(state: ts.TrainState, batch: Batch):

    def micro_step(micro: Batch, carry: tuple[nnx.State, nnx.State]):
      """Loss, gradients and metrics of one micro-batch; threads the BatchNorm stats.

      The parameters travel in the carry, unchanged: under accumulation this runs inside
      `lax.scan`, and NNX refuses to build a module from arrays of an outer trace.
      """
      params, rest = carry
      model = nnx.merge(graphdef, params, rest)

      def loss_fn(model):
        logits = model(micro['image'], train=True)
        loss = optim.cross_entropy(logits, micro['label'], logits.shape[-1],
                                   label_smoothing).mean()
        return loss, logits

      (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
      labels = micro['label']
      hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
      accuracy = jnp.mean(jnp.argmax(logits, -1) == hard)
      return (grads, {'loss': loss, 'accuracy': accuracy}), (params, ts.split(model)[2])

    inputs = {'image': normalize(batch['image'], mean, std), 'label': batch['label']}
    if mix is not None:
      inputs['image'], inputs['label'] = mix(inputs['image'], inputs['label'], state.step)
    (grads, metrics), (_, rest) = optim.accumulate_gradients(
        micro_step, inputs, accum_steps, (state.params, state.rest))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient leaves the state untouched; the loop stops on it.
    finite = jnp.isfinite(metrics['loss']) & _all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = ts.TrainState(step=state.step + 1, params=keep(new_params, state.params),
                              rest=keep(rest, state.rest),
                              opt_state=keep(opt_state, state.opt_state))
    metrics |= {'learning_rate': schedule(state.step), 'grad_norm': optax.global_norm(grads),
                'finite': finite}
    return new_state, metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, *, mean: Sequence[float], std: Sequence[float],
                   top_k: int = 5, use_ema: bool = False, mesh: Mesh | None = None):
  """Returns eval_step(state, batch) -> per-example loss, top-k predictions, label, mask.

  `mesh`: as for `make_train_step` (models built with the fast path run it per device).
  """

  def eval_step(state: ts.TrainState, batch: Batch):
    with per_shard.batch_parallel(mesh):
      return _eval_step(state, batch)

  def _eval_step(state: ts.TrainState, batch: Batch):
    params = state.params
    if use_ema:  # Evaluate the moving average of the weights instead of the weights.
      params = optim.ema_params(state.opt_state, state.params)
    model = nnx.merge(graphdef, params, state.rest)
    logits = model(normalize(batch['image'], mean, std), train=False)
    k = min(top_k, logits.shape[-1])
    return {
        'loss': optim.cross_entropy(logits, batch['label'], logits.shape[-1]),
        'top_k': jax.lax.top_k(logits, k)[1],
        'label': batch['label'],
        'mask': batch['mask'],
    }

  return eval_step
