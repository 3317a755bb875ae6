"""The BYOL task: self-supervised pretraining without negatives (Grill et al. 2020).

Two state parts: 'online' (the configured classifier's backbone, a projector and a
predictor, models/ssl.py; trained by config.optim, LARS in the paper) and 'target' (the
same backbone and projector, no predictor, no optimiser), which starts as a copy of the
online network and after every update moves towards it:

  target <- tau * target + (1 - tau) * online,   tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2

(target_network.py; base `config.task.target_decay`, 0.996 in the paper, 0.99 in
solo-learn's CIFAR recipes; k the step, K config.train.steps). Batches are SimCLR's two
views of each image (`config.task.views='byol'` for BYOL's asymmetric blur and
solarisation). The target projects both views in train mode (batch statistics, as in
BYOL), without gradient; the online network predicts each view's target projection from the
other view: the symmetric loss losses.byol_loss, 2 - 2 cos per direction. Evaluation,
predict and export are SimCLR's, on the online backbone's pooled features (weighted k-NN
accuracy; a classifier is initialised from it with init_from.parts=(('model', 'online'),)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vision_jax import losses
from vision_jax import target_network
from vision_jax import train_state as ts
from vision_jax.errors import ConfigError
from vision_jax.tasks.simclr import SimCLR


class BYOL(SimCLR):
  name = 'byol'
  serving_parts = ('online',)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.decay_base = float(config.task.target_decay)
    self.total_steps = int(config.train.steps)

  def validate(self) -> None:
    super().validate()
    t = self.config.task
    if not isinstance(t.predictor_hidden_dim, int) or t.predictor_hidden_dim < 1:
      raise ConfigError(f'config.task.predictor_hidden_dim={t.predictor_hidden_dim!r} must be '
                        'a positive integer (BYOL: 4096).')
    if not isinstance(t.target_decay, (int, float)) or not 0 <= t.target_decay <= 1:
      raise ConfigError(f'config.task.target_decay={t.target_decay!r} is the decay of the '
                        "target network's moving average at the first step; use a value in "
                        '[0, 1] (BYOL: 0.996; 0.99 on CIFAR).')

  def create_parts(self, num_classes: int, *, rngs: nnx.Rngs, **kwargs):
    from vision_jax.models import ssl  # pylint: disable=g-import-not-at-top
    del num_classes  # The projector's width is the output; labels are for k-NN only.
    t = self.config.task
    online = ssl.create_ssl_model(
        self.config.model.name, rngs=rngs, projector_hidden_dim=t.projector_hidden_dim,
        projector_output_dim=t.projector_output_dim, projector_layers=t.projector_layers,
        predictor_hidden_dim=t.predictor_hidden_dim, **kwargs)
    target = nnx.clone(online)  # BYOL starts the target as a copy of the online network.
    target.predictor = None
    return {'online': online, 'target': target}

  def part_optim(self, name: str) -> ml_collections.ConfigDict | None:
    return self.config.optim if name == 'online' else None

  def update(self, updater, state: ts.TrainState, inputs):
    n = inputs['view1'].shape[0]
    target = updater.model(state, 'target')
    z = jax.lax.stop_gradient(
        target(jnp.concatenate([inputs['view1'], inputs['view2']]), train=True))
    _, _, target_rest = ts.split(target)  # Its BatchNorm statistics advanced.
    inputs = {**inputs, 'target1': z[:n], 'target2': z[n:]}
    online, metrics = updater.gradient_update(state, 'online', self.loss, self.train_metrics,
                                              inputs)
    tau = target_network.target_decay(state.step, self.total_steps, self.decay_base)
    old = state.parts['target']
    moved = target_network.update_target(
        old.params, {k: online.params[k] for k in old.params}, tau)
    new_target = ts.Part(params=moved, rest=target_rest)
    state = state.replace(parts={**state.parts, 'online': online, 'target': new_target})
    return state, {**metrics, 'target_decay': tau}

  def loss(self, model: nnx.Module, inputs):
    n = inputs['view1'].shape[0]
    z = model(jnp.concatenate([inputs['view1'], inputs['view2']]), train=True)
    p = model.predict(z, train=True)
    return losses.byol_loss(p[:n], p[n:], inputs['target1'], inputs['target2']), None

  def train_metrics(self, loss: jax.Array, aux, inputs) -> dict:
    return {'loss': loss}

  def apply(self, models: dict[str, nnx.Module], images: jax.Array) -> jax.Array:
    return models['online'].features(images, train=False)
