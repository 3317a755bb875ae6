"""Optimisers, learning-rate schedules and per-parameter rules, all built from `config.optim`.

`make_optimizer(config, params)` returns an optax transformation and the schedule (to log).
For the trainable parameters the chain is always, in this order:

  clip global norm -> adaptive clipping -> the optimiser's own scaling (momentum, Adam
  moments, ...) -> decoupled weight decay (+ wd * mult * param) -> lr multipliers ->
  -schedule(step)

so weight decay is multiplied by the learning rate and its schedule, as in AdamW, and never
enters the gradient moments. For 'sgd' it is added after momentum, so it acts ~1/(1 - momentum)
times weaker than PyTorch's coupled `weight_decay` (SGD wd 5e-4 at momentum 0.9 ~ decoupled
5e-3 here). 'lamb' and 'lars' are defined with the decay inside their trust ratio, so they add
it before the trust ratio (LARS also before its momentum), as in their papers and in optax.
`agc_clip` > 0 is NFNets' adaptive gradient clipping (optax.adaptive_grad_clip, eps 1e-3):
each output unit's gradient (a conv kernel's output channel, a dense layer's column, a bias
element) is scaled down to at most agc_clip x its weights' norm. Every parameter is
clipped, as timm's `--clip-mode agc` does (the NFNet paper exempts the final linear layer).
The EMA of the weights (ema_decay > 0) is not an optimiser transform: it lives in the
training state (train_state.update_ema), since it averages BatchNorm statistics too.

Per-parameter rules are tuples of (regex, value) matched with `re.fullmatch` against
`param_path` ('conv1/kernel', 'layer1/0/bn1/scale'); the FIRST matching rule wins and a
parameter no rule matches gets the default. A rule matching no parameter is an error (typo).
  wd_rules  weight-decay multiplier; default 1.0 for params with ndim > 1 and 0.0 for
            biases and norm scales (ndim <= 1). E.g. (('head/.*', 0.0),) or (('.*', 1.0),).
  lr_rules  learning-rate multiplier; default 1.0. Layer-wise lr decay is a rule per depth,
            deepest first, e.g. for a ResNet-50 (blocks 0..15) with decay 0.7 per stage:
            (('head/.*', 1.0), ('blocks/1[3-5]/.*', 1.0), ('blocks/([7-9]|1[0-2])/.*', 0.7),
             ('blocks/[3-6]/.*', 0.49), ('.*', 0.343)).
  freeze    regexes; matching parameters get zero updates and no optimiser state at all
            (optax.multi_transform with optax.set_to_zero).
"""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

OPTIMIZERS = ('sgd', 'adamw', 'adafactor', 'lamb', 'lars')
SCHEDULES = ('constant', 'warmup_cosine', 'warmup_linear', 'warmup_poly', 'rsqrt', 'piecewise')
Schedule = Callable[[Any], Any]
PyTree = Any


# ----------------------------------------------------------------------------- paths & rules

def param_path(path: tuple) -> str:
  """A jax key path (or a tuple of names) -> 'conv1/kernel': the string rules match against.

  The trailing `.value` of an nnx.Variable leaf is dropped, so a path reads like the module
  tree: nnx.State's ('layer1', 0, 'bn1', 'scale', .value) -> 'layer1/0/bn1/scale'.
  """
  names = []
  for i, key in enumerate(path):
    if isinstance(key, jax.tree_util.GetAttrKey):
      if key.name == 'value' and i == len(path) - 1:
        continue
      names.append(key.name)
    elif isinstance(key, jax.tree_util.DictKey):
      names.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      names.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      names.append(str(key.key))
    else:
      names.append(str(key))
  return '/'.join(names)


def _paths_and_leaves(tree: PyTree) -> list[tuple[str, Any]]:
  return [(param_path(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _resolve_rules(name: str, rules, paths: list[str], default: Callable[[str], Any]
                   ) -> dict[str, Any]:
  """{path: value of the first rule that fully matches it, else default(path)}."""
  compiled = []
  for rule in rules:
    if isinstance(rule, str) or len(rule) != 2:
      raise ValueError(f'config.optim.{name}: each rule is a (regex, value) pair, got {rule!r}.')
    try:
      compiled.append((re.compile(rule[0]), rule[1]))
    except re.error as e:
      raise ValueError(f'config.optim.{name}: bad regex {rule[0]!r}: {e}.') from e
  for regex, _ in compiled:
    if not any(regex.fullmatch(p) for p in paths):
      raise ValueError(f'config.optim.{name}: rule {regex.pattern!r} matches no parameter '
                       f'(rules must match the whole path). Parameters: {_preview(paths)}.')

  def value(path: str):
    for regex, v in compiled:
      if regex.fullmatch(path):
        return v
    return default(path)
  return {p: value(p) for p in paths}


def _ndim(x) -> int:
  """Rank of an array or a jax.ShapeDtypeStruct (np.ndim would say 0 for the latter)."""
  return len(x.shape) if hasattr(x, 'shape') else np.ndim(x)


def _preview(paths: list[str], n: int = 12) -> str:
  return ', '.join(paths[:n]) + (f', ... ({len(paths)} in all)' if len(paths) > n else '')


# ----------------------------------------------------------------------------- schedules

def _to_steps(o: ml_collections.ConfigDict, steps_key: str, epochs_key: str,
              steps_per_epoch: int | None):
  """A duration given in steps or in epochs (exactly one may be set) -> steps."""
  steps, epochs = o[steps_key], o[epochs_key]
  if not _nonzero(epochs):
    return steps
  if _nonzero(steps):
    raise ValueError(f'Set config.optim.{steps_key} or config.optim.{epochs_key}, not both '
                     f'(got {steps!r} and {epochs!r}).')
  if not steps_per_epoch:
    raise ValueError(f'config.optim.{epochs_key}={epochs!r} is in epochs, so make_optimizer '
                     'needs steps_per_epoch.')
  if isinstance(epochs, (tuple, list)):
    return tuple(int(round(e * steps_per_epoch)) for e in epochs)
  return int(round(epochs * steps_per_epoch))


def _nonzero(v) -> bool:
  return bool(v) if isinstance(v, (tuple, list)) else v > 0


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int | None = None,
                  optim_config: ml_collections.ConfigDict | None = None) -> Schedule:
  """step -> learning rate = base * min(1, step / warmup) * decay(step).

  base = learning_rate (* batch_size / 256 if scale_lr_by_batch). The warmup is linear from 0
  for every schedule; the decay runs from the end of warmup to config.train.steps, except
  'piecewise', whose boundaries are absolute steps: from step b_i on, the lr is multiplied by
  scales[i] (cumulatively, so (0.1, 0.1) gives 0.1x then 0.01x). `optim_config` (default
  config.optim) is the optimiser section of the state part being trained.
  """
  o, total = optim_config or config.optim, config.train.steps
  if o.schedule not in SCHEDULES:
    raise ValueError(f'Unknown config.optim.schedule {o.schedule!r}; '
                     f'allowed: {", ".join(SCHEDULES)}.')
  base = o.learning_rate * (config.train.batch_size / 256 if o.scale_lr_by_batch else 1.0)
  warmup = _to_steps(o, 'warmup_steps', 'warmup_epochs', steps_per_epoch)
  if not 0 <= warmup <= total:
    raise ValueError(f'The warmup ({warmup} steps) must lie within config.train.steps={total}.')
  span, name, min_ratio = max(total - warmup, 1), o.schedule, o.min_lr_ratio

  def frac(step):  # Progress through the decay phase, in [0, 1].
    return jnp.clip((step - warmup) / span, 0.0, 1.0)

  if name == 'constant':
    decay = jnp.ones_like
  elif name == 'warmup_cosine':
    decay = lambda step: min_ratio + (1 - min_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * frac(step)))
  elif name in ('warmup_linear', 'warmup_poly'):
    power = 1.0 if name == 'warmup_linear' else o.poly_power
    decay = lambda step: min_ratio + (1 - min_ratio) * (1 - frac(step)) ** power
  elif name == 'rsqrt':
    timescale = o.rsqrt_timescale
    if timescale <= 0:
      raise ValueError(f'config.optim.rsqrt_timescale must be > 0, got {timescale}.')
    decay = lambda step: jax.lax.rsqrt(1 + jnp.maximum(step - warmup, 0) / timescale)
  else:  # piecewise
    bounds = _to_steps(o, 'piecewise_boundaries', 'piecewise_boundary_epochs', steps_per_epoch)
    scales = tuple(o.piecewise_scales)
    if len(bounds) != len(scales) or list(bounds) != sorted(bounds):
      raise ValueError('config.optim.piecewise_boundaries (or _boundary_epochs) must be '
                       'increasing and as many as config.optim.piecewise_scales; got '
                       f'{tuple(bounds)} and {scales}.')

    def decay(step):
      factor = jnp.ones_like(step)
      for boundary, scale in zip(bounds, scales):
        factor = factor * jnp.where(step >= boundary, scale, 1.0)
      return factor

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    ramp = jnp.minimum(step / warmup, 1.0) if warmup else 1.0
    return base * ramp * decay(step)
  return schedule


# ----------------------------------------------------------------------------- transforms

def _per_param(values: dict[str, float], fn: Callable[[Any, Any, float], Any]
               ) -> optax.GradientTransformation:
  """Stateless transform: update = fn(update, param, values[param_path]) leaf by leaf.

  Values are looked up by path at trace time, so the transform works inside
  multi_transform, whose masked-out leaves (optax.MaskedNode) have no leaves to visit.
  """
  def update(updates, state, params=None):
    if params is None:
      raise ValueError('This optimiser needs `params` in tx.update(grads, state, params).')
    new = jax.tree_util.tree_map_with_path(
        lambda k, u, p: fn(u, p, values[param_path(k)]), updates, params)
    return new, state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _decay(values: dict[str, float]) -> optax.GradientTransformation:
  return _per_param(values, lambda u, p, wd: u + wd * p if wd else u)


def _lr_mults(values: dict[str, float]) -> optax.GradientTransformation:
  return _per_param(values, lambda u, p, m: u * m if m != 1.0 else u)


# ----------------------------------------------------------------------------- optimiser

def make_optimizer(config: ml_collections.ConfigDict, params: PyTree, *,
                   steps_per_epoch: int | None = None,
                   optim_config: ml_collections.ConfigDict | None = None
                   ) -> tuple[optax.GradientTransformation, Schedule]:
  """(tx, learning_rate_schedule) for `params` (nnx.State of nnx.Param, or any pytree).

  `tx.update(grads, opt_state, params)` needs params (weight decay, trust ratios).
  Durations given in epochs need `steps_per_epoch`. `optim_config` (default config.optim)
  is the optimiser section of the state part `params` belong to (a task with several
  trained parts gives each its own, train_state.create).
  """
  o = optim_config or config.optim
  if o.name not in OPTIMIZERS:
    raise ValueError(f'Unknown config.optim.name {o.name!r}; allowed: {", ".join(OPTIMIZERS)}.')
  lr = o.learning_rate
  if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not np.isfinite(lr) or lr < 0:
    raise ValueError(f'config.optim.learning_rate must be a finite number >= 0, got {lr!r}. '
                     'It is the peak rate of config.optim.schedule, e.g. 1e-3 for adamw or '
                     '0.1 for sgd at batch 256.')
  for key in ('weight_decay', 'grad_clip_norm', 'ema_decay', 'agc_clip'):
    if o[key] < 0:
      raise ValueError(f'config.optim.{key} must be >= 0, got {o[key]}.')
  if o.ema_decay >= 1:
    raise ValueError(f'config.optim.ema_decay must be < 1 (0 = off), got {o.ema_decay}.')
  if not 0 <= o.label_smoothing < 1:
    raise ValueError(f'config.optim.label_smoothing must be in [0, 1), got {o.label_smoothing}.')
  k, batch = o.accum_steps, config.train.batch_size
  if not isinstance(k, int) or k < 1 or batch % k:
    raise ValueError(f'config.optim.accum_steps={k!r} must be a positive integer that divides '
                     f'config.train.batch_size={batch}.')
  schedule = make_schedule(config, steps_per_epoch, o)

  leaves = _paths_and_leaves(params)
  paths = [p for p, _ in leaves]
  ndim = {p: _ndim(x) for p, x in leaves}
  wd = _resolve_rules('wd_rules', o.wd_rules, paths, lambda p: float(ndim[p] > 1))
  wd = {p: o.weight_decay * m for p, m in wd.items()}
  lr = _resolve_rules('lr_rules', o.lr_rules, paths, lambda p: 1.0)
  frozen = _resolve_rules('freeze', [(r, True) for r in o.freeze], paths, lambda p: False)
  if all(frozen.values()):
    raise ValueError(f'config.optim.freeze={tuple(o.freeze)} freezes every parameter.')
  trust_mask = lambda tree: jax.tree.map(lambda x: _ndim(x) > 1, tree)  # Not biases/norms.

  steps = []
  if o.grad_clip_norm:
    steps.append(optax.clip_by_global_norm(o.grad_clip_norm))
  if o.agc_clip:
    steps.append(optax.adaptive_grad_clip(o.agc_clip, eps=1e-3))
  if o.name == 'sgd':
    if o.momentum:
      steps.append(optax.trace(decay=o.momentum, nesterov=o.nesterov))
    steps.append(_decay(wd))
  elif o.name == 'adamw':
    steps += [optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps), _decay(wd)]
  elif o.name == 'adafactor':
    # Absolute lr (no parameter-scale multiplication), update clipping of the paper,
    # optional momentum as in big_vision's Adafactor recipes.
    steps += [optax.scale_by_factored_rms(decay_rate=o.adafactor_decay_rate),
              optax.clip_by_block_rms(1.0)]
    if o.momentum:
      steps.append(optax.ema(o.momentum, debias=False))
    steps.append(_decay(wd))
  elif o.name == 'lamb':
    steps += [optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps), _decay(wd),
              optax.masked(optax.scale_by_trust_ratio(), trust_mask)]
  else:  # lars
    steps += [_decay(wd), optax.masked(
        optax.scale_by_trust_ratio(trust_coefficient=o.trust_coefficient), trust_mask)]
  steps += [_lr_mults(lr), optax.scale_by_schedule(lambda step: -schedule(step))]
  if o.name == 'lars' and o.momentum:
    steps.append(optax.trace(decay=o.momentum, nesterov=o.nesterov))
  tx = optax.chain(*steps)

  if any(frozen.values()):
    labels = lambda tree: jax.tree_util.tree_map_with_path(
        lambda k, _: 'frozen' if frozen[param_path(k)] else 'trainable', tree)
    tx = optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx, schedule


# ----------------------------------------------------------------------------- loss & steps

def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32, with label smoothing.

  `labels` are integer classes [B], or already a distribution [B, C] (mixup / cutmix), which
  is smoothed the same way: (1 - ls) * labels + ls / num_classes.
  """
  if not 0 <= label_smoothing < 1:
    raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}.')
  targets = labels if labels.ndim == logits.ndim else jax.nn.one_hot(labels, num_classes)
  targets = targets.astype(jnp.float32)
  if label_smoothing:
    targets = (1 - label_smoothing) * targets + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def accumulate_gradients(loss_and_grad_fn: Callable[[PyTree, Any], tuple[PyTree, Any]],
                         batch: PyTree, k: int, carry: Any = None) -> tuple[PyTree, Any]:
  """Averages `loss_and_grad_fn` over k micro-batches of `batch`, one at a time (lax.scan).

  `loss_and_grad_fn(micro_batch, carry) -> (out, carry)`: `out` (grads, loss, metrics: any
  pytree) is averaged over the k micro-batches, accumulated in float32; `carry` is threaded
  through (e.g. BatchNorm statistics; pass None when there is none). Returns (mean out, carry).
  With a per-example mean loss this equals one step on the whole batch, exactly for models
  without BatchNorm. Micro-batch j holds examples j, j+k, j+2k, ...: when the batch is
  sharded over devices, every micro-batch then stays spread over all of them.
  """
  if k == 1:
    return loss_and_grad_fn(batch, carry)
  for x in jax.tree.leaves(batch):
    if x.shape[0] % k:
      raise ValueError(f'The batch of {x.shape[0]} does not split into accum_steps={k} '
                       'equal micro-batches.')
  micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(-1, k, *x.shape[1:]), 1, 0), batch)
  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(loss_and_grad_fn, first, carry)[0]
  acc = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

  def body(state, micro_batch):
    acc, carry = state
    out, carry = loss_and_grad_fn(micro_batch, carry)
    return (jax.tree.map(lambda a, x: a + x.astype(jnp.float32), acc, out), carry), None

  (acc, carry), _ = jax.lax.scan(body, (acc, carry), micro)
  mean = jax.tree.map(
      lambda a, s: (a / k).astype(s.dtype if jnp.issubdtype(s.dtype, jnp.floating)
                                  else jnp.float32), acc, shapes)
  return mean, carry
