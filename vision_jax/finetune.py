"""Initialise a new run from another run's checkpoint: the pretrain -> fine-tune step.

Every parameter and BatchNorm statistic of the new model is loaded from the checkpoint by
its path ('blocks/0/conv1/kernel'), except those matching `config.init_from.skip` (default:
the classifier head), which keep a fresh initialisation, zeros when
`init_from.zero_init_skipped` (a zero head starts at uniform predictions, as in BiT).
Anything else that is missing or has another shape is an error listing every such path
with both shapes: a fine-tune never half-loads silently. `init_from.use_ema` loads the
checkpoint's moving averages (of a run with `optim.ema_decay` > 0) instead of its raw
weights. Freezing and learning-rate multipliers are optimiser rules (`config.optim.freeze`,
`lr_rules`). A state of several parts (BYOL's online and target networks) loads each of ours
from a part of the checkpoint: the one of the same name, or as `init_from.parts` says (e.g.
(('model', 'online'),) for a classifier from a BYOL run). The outcome is logged and written
to `init_report.json`.
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


def part_sources(config: ml_collections.ConfigDict, ours: list[str],
                 theirs: list[str]) -> dict[str, str]:
  """{our part: the checkpoint's part it loads from}: `config.init_from.parts` pairs
  ('ours', 'theirs'), else the part of the same name, else the checkpoint's only part."""
  given = {str(a): str(b) for a, b in config.init_from.parts}
  out = {}
  for name in ours:
    source = given.get(name, name if name in theirs else (
        theirs[0] if len(theirs) == 1 else None))
    if source is None or source not in theirs:
      raise CheckpointError(
          f'config.init_from.checkpoint={config.init_from.checkpoint} holds the state parts '
          f'{", ".join(theirs)}, and none is named {name!r} (a part of this run). Say which '
          f'one loads into it: --config.init_from.parts="(({name!r}, {theirs[0]!r}),)".')
    out[name] = source
  return out


def init_from_checkpoint(config: ml_collections.ConfigDict, state: ts.TrainState,
                         structure: ts.Structure) -> tuple[ts.TrainState, dict]:
  """Returns the state with the checkpoint's weights in place, and the init report.

  Every part of the state is loaded from a part of the checkpoint (`part_sources`), by
  path; `init_from.skip` regexes apply to every part's paths. The optimiser state of each
  trained part restarts from zero, its moving average from the loaded weights.
  """
  cfg = config.init_from
  init_source.check(cfg.checkpoint)  # A weights file, a directory that is no run: said so.
  step, raw = read_state(cfg.checkpoint)
  sources = part_sources(config, list(state.parts), list(raw['parts']))
  use_ema = cfg.use_ema
  skip = [re.compile(p) for p in cfg.skip]
  report: dict[str, Any] = {'checkpoint': cfg.checkpoint, 'checkpoint_step': step,
                            'use_ema': bool(use_ema), 'parts': sources, 'loaded': [],
                            'reinitialized': []}
  problems: list[str] = []
  unused: set[str] = set()
  parts = dict(state.parts)
  for name, source_name in sources.items():
    source_part = raw['parts'][source_name]
    if use_ema:
      if not source_part.get('ema'):
        raise CheckpointError(
            f'config.init_from.use_ema=True, but part {source_name!r} of the checkpoint '
            f'{cfg.checkpoint} (step {step}) holds no moving average (its run had '
            'config.optim.ema_decay=0). Set config.init_from.use_ema=False to load its '
            'weights.')
      source_part = source_part['ema']
    source = flat(source_part['params']) | flat(source_part.get('rest', {}))
    part = state.parts[name]
    common = dict(source=source, skip=skip, report=report, problems=problems)
    n_loaded = len(report['loaded'])
    params = _load(part.params, loadable=lambda x: True, zero_skipped=cfg.zero_init_skipped,
                   **common)
    rest = _load(part.rest, loadable=_is_statistic, zero_skipped=False, **common)
    used = set(report['loaded'][n_loaded:])
    unused |= {f'{source_name}:{k}' if len(sources) > 1 else k
               for k in set(source) - used if '/rngs/' not in f'/{k}/'}
    tx = structure.txs.get(name)
    opt_state = None if tx is None else jax.jit(
        tx.init, out_shardings=structure.shardings.parts[name].opt_state)(params)
    # The moving average restarts from the loaded weights (own buffers: the step donates).
    ema = None if part.ema is None else jax.tree.map(jnp.copy, {'params': params,
                                                                'rest': rest})
    parts[name] = ts.Part(params=params, rest=rest, opt_state=opt_state, ema=ema)
  if problems:
    other = init_source.mismatch(cfg.checkpoint, config.model.name,
                                 config.task.name)
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
  report['unused_from_checkpoint'] = sorted(unused)
  report['counts'] = {k: len(report[k]) for k in
                      ('loaded', 'reinitialized', 'frozen', 'unused_from_checkpoint')}
  return state.replace(parts=parts), report
