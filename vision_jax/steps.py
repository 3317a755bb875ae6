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

from vision_jax import train_state as ts
from vision_jax.data.preprocess import normalize

Batch = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy with optional label smoothing."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: Callable, *, mean: Sequence[float], std: Sequence[float],
                    label_smoothing: float = 0.0):
  """Returns train_step(state, batch) -> (state, metrics); jit it with shardings."""

  def train_step(state: ts.TrainState, batch: Batch):
    model = ts.merge(graphdef, state)
    images = normalize(batch['image'], mean, std)

    def loss_fn(model):
      logits = model(images, train=True)
      loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
      return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    _, _, rest = ts.split(model)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient leaves the state untouched; the loop stops on it.
    finite = jnp.isfinite(loss) & _all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = ts.TrainState(step=state.step + 1, params=keep(params, state.params),
                              rest=keep(rest, state.rest),
                              opt_state=keep(opt_state, state.opt_state))
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'learning_rate': schedule(state.step),
        'grad_norm': optax.global_norm(grads),
        'finite': finite,
    }
    return new_state, metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, *, mean: Sequence[float], std: Sequence[float],
                   top_k: int = 5):
  """Returns eval_step(state, batch) -> per-example loss, top-k predictions, label, mask."""

  def eval_step(state: ts.TrainState, batch: Batch):
    model = ts.merge(graphdef, state)
    logits = model(normalize(batch['image'], mean, std), train=False)
    k = min(top_k, logits.shape[-1])
    return {
        'loss': cross_entropy(logits, batch['label']),
        'top_k': jax.lax.top_k(logits, k)[1],
        'label': batch['label'],
        'mask': batch['mask'],
    }

  return eval_step
