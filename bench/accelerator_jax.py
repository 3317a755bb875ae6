"""Our side of bench/accelerator.py: the training loop's own jitted steps, timed on device.

`measure(figure, ...)` builds the run's state and step exactly as `vision_jax.train` does
(`train_state.create`, `steps.jit_train_step` / `steps.jit_eval_step`) from a recipe in
configs/, on XLA's own kernels (what any GPU or TPU runs, and what the CPU smoke test
runs too), and times it on synthetic uint8 images already on the device. Imports only
the TensorFlow-free core.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(figure: dict[str, Any], remat: str = 'none'):
  """The figure's recipe with its model, batch and bf16 compute (fp32 parameters)."""
  # pylint: disable=g-import-not-at-top
  from vision_jax import config as config_lib
  from vision_jax import config_files
  config = config_files.load_config_file(os.path.join(REPO, figure['recipe']))
  config.model.name = figure['model']
  config.model.dtype = 'bfloat16'
  if remat != 'none':
    config.model.remat = remat
  # The recipe's schedule over as many epochs as it trains, at this batch size.
  config.train.steps = max(1, config.train.steps * config.train.batch_size // figure['batch'])
  config.train.batch_size = config.eval.batch_size = figure['batch']
  config_lib.validate(config, num_devices=1)
  return config


def build(figure: dict[str, Any], remat: str = 'none'):
  """(jitted step, state, batch on device, config) for one figure on the first device."""
  # pylint: disable=g-import-not-at-top
  from vision_jax import ops, parallel, steps, tasks, train_state
  config = make_config(figure, remat)
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  size, batch, classes = figure['image_size'], figure['batch'], figure['num_classes']
  task = tasks.build(config)
  structure, state = train_state.create(
      task, mesh, num_classes=classes, image_size=size, in_channels=3,
      steps_per_epoch=max(1, figure['train_images'] // batch), kernels=ops.XLA)
  mean, std = tuple(config.dataset.mean), tuple(config.dataset.std)
  if figure['task'] == 'train':
    step = steps.jit_train_step(task, structure, mean=mean, std=std, num_classes=classes,
                                mesh=mesh)
  else:
    step = steps.jit_eval_step(task, structure, mean=mean, std=std, mesh=mesh)
  rng = np.random.default_rng(0)
  host = {'image': rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
          'label': rng.integers(0, classes, batch).astype(np.int32)}
  if figure['task'] == 'eval':
    host['mask'] = np.ones(batch, bool)
  return step, state, parallel.to_global(host, mesh), config


def flops_of(compiled, lowered) -> tuple[float | None, str]:
  """FLOPs of one step from XLA's cost analysis: of the compiled executable where the
  backend reports it, else of the lowered (unoptimised) HLO. Both are best-effort APIs
  whose return type changed across jax versions (a list of dicts before 0.4.30)."""
  for source, stage in (('compiled', compiled), ('lowered', lowered)):
    try:
      cost = stage.cost_analysis()
    except Exception:  # pylint: disable=broad-except  # Unimplemented on some backends.
      continue
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    flops = (cost or {}).get('flops')
    if flops and flops > 0:
      return float(flops), f'xla_cost_analysis_{source}'
  return None, 'unavailable'


def xla_memory(compiled) -> dict[str, float]:
  """XLA's buffer assignment of the compiled step: arguments + outputs + temporaries -
  aliased (donated) bytes, and the temporaries alone."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats is None:
    return {}
  total = sum(getattr(stats, f'{k}_size_in_bytes', 0) for k in ('argument', 'output', 'temp'))
  total -= getattr(stats, 'alias_size_in_bytes', 0)
  return {'xla_memory_bytes': float(total),
          'xla_temp_bytes': float(getattr(stats, 'temp_size_in_bytes', 0))}


def _rounds(run: Callable[[int], None], steps: int, rounds: int) -> list[float]:
  """Seconds per step, one figure per round of `steps` steps."""
  out = []
  for _ in range(rounds):
    start = time.perf_counter()
    run(steps)
    out.append((time.perf_counter() - start) / steps)
  return out


def measure(figure: dict[str, Any], *, steps: int, rounds: int, warmup: int,
            remat: str = 'none') -> dict[str, Any]:
  """One figure: images/s (median over rounds), compile time, memory, FLOPs per step."""
  start = time.perf_counter()
  step, state, batch, _ = build(figure, remat)
  build_s = time.perf_counter() - start
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops, flops_source = flops_of(compiled, lowered)
  held = [state]

  def run(n: int) -> None:
    if n == 0:
      return
    if figure['task'] == 'train':
      for _ in range(n):  # Each step waits for the previous one's state, as in training.
        held[0], out = compiled(held[0], batch)
      jax.block_until_ready(out)
    else:
      outs = [compiled(held[0], batch) for _ in range(n)]
      jax.block_until_ready(outs)

  run(warmup)
  per_step = _rounds(run, steps, rounds)
  device = jax.devices()[0]
  result = {'contender': 'ours', 'img_s': figure['batch'] / statistics.median(per_step),
            'img_s_rounds': [figure['batch'] / t for t in per_step],
            'step_ms': 1e3 * statistics.median(per_step), 'compile_s': compile_s,
            'build_s': build_s,
            'flops_source': flops_source, 'device_kind': device.device_kind,
            'platform': device.platform, 'remat': remat, **xla_memory(compiled)}
  if flops:
    result['flops_per_step'] = flops
  stats = device.memory_stats() or {}  # None on the CPU backend.
  if stats.get('peak_bytes_in_use'):
    result['peak_memory_bytes'] = float(stats['peak_bytes_in_use'])
    result['peak_memory_source'] = 'device.memory_stats'
    if stats.get('bytes_limit'):
      result['device_memory_limit_bytes'] = float(stats['bytes_limit'])
  elif 'xla_memory_bytes' in result:
    result['peak_memory_bytes'] = result['xla_memory_bytes']
    result['peak_memory_source'] = 'xla_memory_analysis'
  return result


def compiled_memory(figure: dict[str, Any], remat: str, base=None):
  """Compile (not run) the train step of `figure` under `remat`: XLA's memory analysis.

  Returns (figures, base); pass `base` back to skip the initialisation next time (the
  state, optimiser and shardings depend neither on remat nor on the batch). On the CPU
  backend the step is compiled with `ops.compiler_options(remat=True)`, without which
  XLA:CPU undoes remat (models/remat.py).
  """
  # pylint: disable=g-import-not-at-top
  from vision_jax import ops, parallel, steps, tasks, train_state
  config = make_config(figure, remat)
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  size, batch, classes = figure['image_size'], figure['batch'], figure['num_classes']
  kwargs = dict(num_classes=classes, image_size=size, in_channels=3, kernels=ops.XLA)
  task = tasks.build(config)
  if base is None:
    structure, state = train_state.create(task, mesh, steps_per_epoch=1, **kwargs)
    base = (train_state.abstract(state), structure)
  abstract_state, structure = base
  models = nnx.eval_shape(lambda: train_state.build_models(task, mesh=mesh, **kwargs))
  structure = dataclasses.replace(structure, graphdefs={
      name: train_state.split(model)[0] for name, model in models.items()})
  step = steps.jit_train_step(task, structure, mean=(0.5,) * 3, std=(0.5,) * 3,
                              num_classes=classes, mesh=mesh)
  sharding = parallel.batch_sharding(mesh)
  batch_spec = {'image': jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8,
                                              sharding=sharding),
                'label': jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharding)}
  options = ops.compiler_options(remat=remat not in ('none', ''))
  lowered = step.lower(abstract_state, batch_spec)
  compiled = lowered.compile(options)
  flops, _ = flops_of(compiled, lowered)
  return {'remat': remat, 'batch': batch, 'flops_per_step': flops,
          **xla_memory(compiled)}, base
