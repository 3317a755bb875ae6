"""Initialise a new run from another run's checkpoint: the pretrain -> fine-tune step.

Every parameter and BatchNorm statistic of the new model is loaded from the checkpoint by
its path ('blocks/0/conv1/kernel'), except those matching `config.init_from.skip` (default:
the classifier head), which keep a fresh initialisation, zeros when
`init_from.zero_init_skipped` (a zero head starts at uniform predictions, as in BiT).
Anything else that is missing or has another shape is an error listing every such path
with both shapes: a fine-tune never half-loads silently. `init_from.use_ema` loads the
checkpoint's moving averages (of a run with `optim.ema_decay` > 0) instead of its raw
weights. Freezing and learning-rate multipliers are optimiser rules (`config.optim.freeze`,
`lr_rules`). The outcome is logged and written to `init_report.json`.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vision_jax import init_source
from vision_jax import optim
from vision_jax import tasks
from vision_jax import train_state as ts
from vision_jax.checkpoint import CheckpointError, read_state


def flat(tree: Any) -> dict[str, Any]:
  """Nested dicts -> {'conv1/kernel': leaf}; checkpoints of older versions kept an extra
  'value' level per variable, which is dropped."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = optim.param_path(path)
    out[name[:-len('/value')] if name.endswith('/value') else name] = leaf
  return out


def _matches(path: str, patterns: list[re.Pattern]) -> bool:
  return any(p.fullmatch(path) for p in patterns)


def _is_statistic(x) -> bool:
  """The float leaves of `rest` (BatchNorm statistics); RNG state is not loaded."""
  return jnp.issubdtype(x.dtype, jnp.floating)


def _load(target: Any, source: dict[str, np.ndarray], *, loadable, skip: list[re.Pattern],
          zero_skipped: bool, report: dict, problems: list[str]) -> Any:
  """`target` with every loadable leaf replaced by its source value (same sharding)."""
  def load(path, value):
    name = optim.param_path(path)
    if not loadable(value):
      return value
    if _matches(name, skip):
      report['reinitialized'].append(name)
      return jnp.zeros_like(value) if zero_skipped else value
    if name not in source:
      problems.append(f'{name}: {tuple(value.shape)} in the model, missing in the checkpoint')
      return value
    if tuple(source[name].shape) != tuple(value.shape):
      problems.append(f'{name}: {tuple(value.shape)} in the model, '
                      f'{tuple(source[name].shape)} in the checkpoint')
      return value
    report['loaded'].append(name)
    return jax.device_put(np.asarray(source[name], value.dtype), value.sharding)
  return jax.tree_util.tree_map_with_path(load, target)


def init_from_checkpoint(config: ml_collections.ConfigDict, state: ts.TrainState, tx,
                         state_shardings: Any) -> tuple[ts.TrainState, dict]:
  """Returns the state with the checkpoint's weights in place, and the init report."""
  cfg = config.init_from
  step, raw = read_state(cfg.checkpoint)
  use_ema = cfg.get('use_ema', False)
  if use_ema:
    if not raw.get('ema'):
      raise CheckpointError(
          f'config.init_from.use_ema=True, but the checkpoint {cfg.checkpoint} (step {step}) '
          'holds no moving average (its run had config.optim.ema_decay=0). Set '
          'config.init_from.use_ema=False to load its weights.')
    raw = {'params': raw['ema']['params'], 'rest': raw['ema']['rest']}
  source = flat(raw['params']) | flat(raw.get('rest', {}))
  skip = [re.compile(p) for p in cfg.skip]
  report: dict[str, Any] = {'checkpoint': cfg.checkpoint, 'checkpoint_step': step,
                            'use_ema': bool(use_ema), 'loaded': [], 'reinitialized': []}
  problems: list[str] = []
  common = dict(source=source, skip=skip, report=report, problems=problems)
  params = _load(state.params, loadable=lambda x: True, zero_skipped=cfg.zero_init_skipped,
                 **common)
  rest = _load(state.rest, loadable=_is_statistic, zero_skipped=False, **common)
  if problems:
    other = init_source.mismatch(cfg.checkpoint, config.model.name,
                                 tasks.task_config(config).name)
    shown = problems if not other else problems[:3] + (
        [f'and {len(problems) - 3} more'] if len(problems) > 3 else [])
    raise CheckpointError(
        f'{other}The checkpoint {cfg.checkpoint} (step {step}) does not fit the model '
        f'{config.model.name!r} ({len(problems)} variables): ' +
        '; '.join(shown) + '. Add a regex matching these paths to config.init_from.skip to '
        're-initialise them, or use a checkpoint of the same architecture.')
  frozen = [re.compile(p) for p in config.optim.freeze]
  report['frozen'] = [p for p in report['loaded'] + report['reinitialized']
                      if _matches(p, frozen)]
  report['unused_from_checkpoint'] = sorted(
      set(source) - set(report['loaded']) - {k for k in source if '/rngs/' in f'/{k}/'})
  report['counts'] = {k: len(report[k]) for k in
                      ('loaded', 'reinitialized', 'frozen', 'unused_from_checkpoint')}
  opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
  # The moving average restarts from the loaded weights (own buffers: the step donates).
  ema = None if state.ema is None else jax.tree.map(jnp.copy, {'params': params, 'rest': rest})
  return state.replace(params=params, rest=rest, opt_state=opt_state, ema=ema), report
