"""The full training loop against a bare loop of the same jitted step.

  python bench/loop_overhead.py [--config configs/default.py] [--steps 600] [--repeats 5]
                               [--set dataset.image_size=32 --set train.eval_every=100 ...]

Full loop: `train.train_and_evaluate` as the CLI runs it (input pipeline, logging every
log_every, evaluation, async checkpoints), timed by its own stopwatch (timing.json), the
compiling first step and the eval step's compilation excluded. Bare loop: the same jitted
step and shardings fed from a few batches already on device, dispatched one after another
and waited for once at the end (on the 2-core VM the fastest of waiting for every step or
for the one, two or three before it). Each repeat is a fresh process that runs bare, full,
bare and divides the full loop by the mean of the two bare loops around it, so that a
change in machine load between repeats cancels; the figures are medians of those
per-repeat ratios, plus the fastest full loop over the fastest bare loop of all repeats.
Also the median interval between step dispatches in both loops: the steady step, which
shows whether the loop slows every step or only the steps near an evaluation or a save.

The loop's costs come per event (a save, an evaluation, a log line) and per step (~0.1 ms
of host work), so the ratio falls as the step grows: the default run's 5 ms step is the
hardest case. `--set` changes the config as `--config.key=value` does in the CLI, e.g.
digits upsampled to 32x32 (~125 ms steps), two evaluations and two saves as by default:
  --steps 200 --set dataset.image_size=32 --set train.eval_every=100 \
      --set checkpoint.every_steps=100
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from absl import logging

from vision_jax import config as config_lib
from vision_jax import parallel, steps, tasks, train, train_state
from vision_jax.data import input_pipeline


def load_config(path: str, overrides: Sequence[str] = ()):
  """The config file's get_config(), with `key.sub=value` overrides as the CLI takes them."""
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    key, _, text = item.partition('=')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # A bare string, e.g. model.name=cifar_resnet18.
    config.update_from_flattened_dict({key: value})
  config_lib.check_keys(config)  # A typo in a key fails here, not as a silent new key.
  return config


def full_loop(config) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, 'timing.json')) as f:
      return json.load(f)


class BareLoop:
  """The loop's jitted step (same model, optimiser, shardings), compiled once."""

  def __init__(self, config):
    mesh = parallel.make_mesh(config)
    data = input_pipeline.build(config)
    task = tasks.build(config)
    structure, state = train_state.create(
        task, mesh, num_classes=data.num_classes, image_size=data.image_size,
        in_channels=data.channels,
        steps_per_epoch=max(1, data.num_train // config.train.batch_size))
    self.step = steps.jit_train_step(task, structure, mean=data.mean, std=data.std,
                                     num_classes=data.num_classes, mesh=mesh)
    self.state = state
    it = input_pipeline.iterate(data.train, 0, 0)
    self.batches = [parallel.to_global(next(it), mesh) for _ in range(8)]
    self.run(1)  # Compile.

  def run(self, num_steps: int) -> float:
    """Seconds for num_steps steps on batches already on device; also `step_ms`, the
    median interval between dispatches (the loop's `step_ms_median`)."""
    ticks = np.empty(num_steps)
    start = time.perf_counter()
    for i in range(num_steps):
      self.state, metrics = self.step(self.state, self.batches[i % len(self.batches)])
      ticks[i] = time.perf_counter()
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    self.step_ms = float(np.median(np.diff(ticks))) * 1e3 if num_steps > 1 else float('nan')
    if self.step_ms < 0.5e3 * seconds / num_steps:
      # Dispatch ran ahead of the device (XLA:CPU queued a long step without blocking the
      # next call), so the intervals time dispatches, not steps: use the mean step.
      self.step_ms = 1e3 * seconds / num_steps
    return seconds


def one_repeat(config, num_steps: int) -> dict:
  """bare, full, bare in this process; the full loop against the mean of the two."""
  bare = BareLoop(config)
  before = bare.run(num_steps - 1)
  step_ms = [bare.step_ms]
  timing = full_loop(config)
  after = bare.run(num_steps - 1)
  step_ms.append(bare.step_ms)
  base = (before + after) / 2
  # The 599 steps after compiling (the first train step; the eval step ahead of time).
  loop = (timing['loop_s'] - timing['first_step_s'] - timing.get('compile_s', 0.0)
          - timing.get('compile_eval_s', 0.0))
  evals, ckpt = (timing.get(f'{k}_s', 0.0) for k in ('eval', 'checkpoint'))
  print(f"bare {before:.2f}s | full {loop:.2f}s (eval {evals:.2f}s, checkpoint "
        f"{ckpt:.2f}s, waiting for input {timing['data_s']:.2f}s) | bare {after:.2f}s  -> "
        f"full/bare {loop / base:.3f}; median step {timing['step_ms_median']:.2f} ms vs "
        f"{step_ms[0]:.2f} / {step_ms[1]:.2f} ms", file=sys.stderr, flush=True)
  return {'full': loop / base, 'full_s': loop, 'bare_s': min(before, after),
          'no_eval': (loop - evals) / base,
          'steps_and_data': (loop - evals - ckpt) / base,
          'median_step': timing['step_ms_median'] / statistics.mean(step_ms),
          'data': timing['data_s'] / loop}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--num_threads', type=int, default=None,
                      help='Override config.dataset.num_threads.')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='Config override, e.g. dataset.image_size=32 (repeatable).')
  parser.add_argument('--one_repeat', action='store_true',
                      help='(internal) one repeat in this process, a JSON line out')
  args = parser.parse_args()
  if args.one_repeat:
    logging.set_verbosity(logging.WARNING)
    config = load_config(args.config, args.set)
    config.train.steps = args.steps
    if args.num_threads is not None:
      config.dataset.num_threads = args.num_threads
    print('REPEAT ' + json.dumps(one_repeat(config, args.steps)))
    return
  # One fresh process per repeat: in a long-lived process every rebuilt step ran a little
  # slower than the last (4.1 -> 4.5 s over 6 builds), which would bias whichever loop
  # comes later.
  rows = []
  for _ in range(args.repeats):
    cmd = [sys.executable, os.path.abspath(__file__), '--one_repeat', '--config', args.config,
           '--steps', str(args.steps)]
    if args.num_threads is not None:
      cmd += ['--num_threads', str(args.num_threads)]
    cmd += [f'--set={item}' for item in args.set]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    rows.append(json.loads(out.split('REPEAT ')[-1]))
  med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
  med['best_full_over_best_bare'] = (min(r['full_s'] for r in rows)
                                     / min(r['bare_s'] for r in rows))
  overrides = ''.join(f' --set {item}' for item in args.set)
  print(f"\nmedians over {args.repeats} repeats, {args.steps} steps of {args.config}{overrides}:")
  print(f"  full loop / bare loop                    {med['full']:.3f}")
  print(f"  fastest full loop / fastest bare loop    {med['best_full_over_best_bare']:.3f}"
        "  (the machine's noise only ever slows a run)")
  print(f"  same, evaluation time excluded           {med['no_eval']:.3f}")
  print(f"  steps + input only (no eval/ckpt)        {med['steps_and_data']:.3f}")
  print(f"  median step interval, full / bare        {med['median_step']:.3f}"
        "  (the steady step: evaluations, saves and bursts of noise left out)")
  print(f"  waiting for the next batch               {med['data']:.2%} of the loop")
  print(json.dumps({k: round(v, 4) for k, v in med.items()}))


if __name__ == '__main__':
  main()
