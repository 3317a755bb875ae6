"""The full training loop against a bare loop of the same jitted step.

  python bench/loop_overhead.py [--config configs/default.py] [--steps 600] [--repeats 3]

Full loop: `train.train_and_evaluate` as the CLI runs it (input pipeline, logging every
log_every, evaluation, async checkpoints), timed by its own stopwatch (timing.json), the
first (compiling) step excluded. Bare loop: the same state, jitted step and shardings fed
from a few batches already on device, one step after another, each waited for as the CPU
loop does. Prints both, their ratio, and the share of the loop spent waiting for data.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
from absl import logging

from vision_jax import ops, parallel, steps, train, train_state
from vision_jax.data import input_pipeline, mixing


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def full_loop(config) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, 'timing.json')) as f:
      return json.load(f)


def bare_loop(config, num_steps: int) -> float:
  """Seconds for num_steps steps of the same jitted step on pre-placed batches."""
  mesh = parallel.make_mesh(config)
  data = input_pipeline.build(config)
  graphdef, state, tx, schedule, shardings = train_state.create(
      config, mesh, num_classes=data.num_classes, image_size=data.image_size,
      in_channels=data.channels, steps_per_epoch=max(1, data.num_train // config.train.batch_size))
  step_fn = jax.jit(
      steps.make_train_step(graphdef, tx, schedule, mean=data.mean, std=data.std,
                            label_smoothing=config.optim.label_smoothing,
                            accum_steps=config.optim.accum_steps,
                            mix=mixing.from_config(config.dataset, data.num_classes, config.seed),
                            fast_cpu_ops=ops.resolve_fast_cpu_ops(config.model.fast_cpu_ops)),
      in_shardings=(shardings, parallel.batch_sharding(mesh)),
      out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)
  it = input_pipeline.iterate(data.train, 0, 1)
  batches = [parallel.to_global(next(it), mesh) for _ in range(8)]
  state, metrics = step_fn(state, batches[0])  # Compile.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(num_steps):
    state, metrics = step_fn(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--num_threads', type=int, default=None,
                      help='Override config.dataset.num_threads.')
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  config = load_config(args.config)
  config.train.steps = args.steps
  if args.num_threads is not None:
    config.dataset.num_threads = args.num_threads
  rows = []
  for _ in range(args.repeats):  # Alternate, so both see the same machine load.
    timing = full_loop(config)
    bare = bare_loop(config, timing['steps'] - 1)
    loop = timing['loop_s'] - timing['first_step_s']
    rest = loop - timing.get('eval_s', 0.0) - timing['log_s'] - timing['checkpoint_s']
    rows.append({'full_s': loop, 'full_no_eval_s': loop - timing.get('eval_s', 0.0),
                 'full_steps_and_data_s': rest, 'bare_s': bare, 'data_s': timing['data_s']})
    print(f"full {loop:.2f}s (eval {timing.get('eval_s', 0):.2f}s, data {timing['data_s']:.2f}s,"
          f" log {timing['log_s']:.2f}s, checkpoint {timing['checkpoint_s']:.2f}s)  "
          f"bare {bare:.2f}s", flush=True)
  med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
  print(f"\nmedian of {args.repeats}, {args.steps} steps of {args.config}:")
  print(f"  full loop / bare loop            {med['full_s'] / med['bare_s']:.3f}")
  print(f"  same, evaluation time excluded   {med['full_no_eval_s'] / med['bare_s']:.3f}")
  # The next batch is read while the dispatched step runs, so time inside the reader is not
  # waiting; what the input costs is the loop's steps + reads against the bare steps.
  print(f"  input cost (steps+reads vs bare)  {med['full_steps_and_data_s'] / med['bare_s'] - 1:.1%}")
  print(f"  time inside the reader (overlaps) {med['data_s'] / med['full_s']:.1%} of the loop")
  print(json.dumps({k: round(v, 4) for k, v in med.items()}))


if __name__ == '__main__':
  main()
