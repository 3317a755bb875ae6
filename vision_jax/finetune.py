"""Initialise a new run from another run's checkpoint: the pretrain -> fine-tune step.

Every parameter and BatchNorm statistic of the new model is loaded from the checkpoint by
its path ('layer1/0/conv1/kernel'), except those matching `config.init_from.skip` (default:
the classifier head), which keep a fresh initialisation, zeros when
`init_from.zero_init_skipped` (a zero head starts at uniform predictions, as in BiT).
Anything else that is missing or has another shape is an error listing every such path
with both shapes: a fine-tune never half-loads silently. Freezing and learning-rate
multipliers are optimiser rules (`config.optim.freeze`, `lr_rules`). The outcome is
logged and written to `init_report.json`.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vision_jax import optim
from vision_jax import train_state as ts
from vision_jax.checkpoint import CheckpointError, read_state


def _flat_source(tree: dict) -> dict[str, np.ndarray]:
  """Raw restored nested dicts -> {'conv1/kernel': array} (orbax keeps a 'value' level)."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = optim.param_path(path)
    flat[name[:-len('/value')] if name.endswith('/value') else name] = leaf
  return flat


def _matches(path: str, patterns: list[re.Pattern]) -> bool:
  return any(p.fullmatch(path) for p in patterns)


def _load(target: nnx.State, source: dict[str, np.ndarray], kinds: tuple[type, ...],
          skip: list[re.Pattern], zero_skipped: bool, report: dict,
          problems: list[str]) -> nnx.State:
  """Target state with every variable of `kinds` replaced by its source value."""
  out = []
  for path, var in nnx.to_flat_state(target):
    name = '/'.join(str(k) for k in path)
    if not isinstance(var, kinds):
      out.append((path, var))
      continue
    value = var.get_value()
    if _matches(name, skip):
      report['reinitialized'].append(name)
      if zero_skipped:
        value = jnp.zeros_like(value)
    elif name not in source:
      problems.append(f'{name}: {tuple(value.shape)} in the model, missing in the checkpoint')
    elif tuple(source[name].shape) != tuple(value.shape):
      problems.append(f'{name}: {tuple(value.shape)} in the model, '
                      f'{tuple(source[name].shape)} in the checkpoint')
    else:
      report['loaded'].append(name)
      value = jax.device_put(np.asarray(source[name], value.dtype), value.sharding)
    out.append((path, var.replace(value)))
  return nnx.from_flat_state(out)


def init_from_checkpoint(config: ml_collections.ConfigDict, state: ts.TrainState, tx,
                         state_shardings: Any) -> tuple[ts.TrainState, dict]:
  """Returns the state with the checkpoint's weights in place, and the init report."""
  cfg = config.init_from
  step, raw = read_state(cfg.checkpoint)
  source = _flat_source(raw['params']) | _flat_source(raw.get('rest', {}))
  skip = [re.compile(p) for p in cfg.skip]
  report: dict[str, Any] = {'checkpoint': cfg.checkpoint, 'checkpoint_step': step,
                            'loaded': [], 'reinitialized': []}
  problems: list[str] = []
  params = _load(state.params, source, (nnx.Param,), skip, cfg.zero_init_skipped, report,
                 problems)
  rest = _load(state.rest, source, (nnx.BatchStat,), skip, False, report, problems)
  if problems:
    raise CheckpointError(
        f'The checkpoint {cfg.checkpoint} (step {step}) does not fit the model '
        f'{config.model.name!r}: ' + '; '.join(problems) + '. Add a regex matching these '
        'paths to config.init_from.skip to re-initialise them, or use a checkpoint of the '
        'same architecture.')
  frozen = [re.compile(p) for p in config.optim.freeze]
  report['frozen'] = [p for p in report['loaded'] + report['reinitialized']
                      if _matches(p, frozen)]
  report['unused_from_checkpoint'] = sorted(
      set(source) - set(report['loaded']) - {k for k in source if '/rngs/' in f'/{k}/'})
  report['counts'] = {k: len(report[k]) for k in
                      ('loaded', 'reinitialized', 'frozen', 'unused_from_checkpoint')}
  opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
  return state.replace(params=params, rest=rest, opt_state=opt_state), report
