"""train_and_evaluate(config, workdir): the training loop, top to bottom.

mesh -> data -> state (fresh, restored from the workdir's latest checkpoint, or initialised
from another run) -> jitted steps -> loop: step, log, evaluate, checkpoint -> final
evaluation -> results.json, curves.png.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import time
from typing import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from vision_jax import checkpoint
from vision_jax import device_memory
from vision_jax import evaluate
from vision_jax import finetune
from vision_jax import parallel
from vision_jax import run_identity
from vision_jax import steps
from vision_jax import tasks
from vision_jax import train_state
from vision_jax import workdir as workdir_lib
from vision_jax import writers
from vision_jax.data import input_pipeline
from vision_jax.errors import UserError
from vision_jax.preemption import PreemptionWatcher


class NonFiniteError(UserError):
  """Training produced a non-finite loss or gradient."""


def device_batches(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh,
                   size: int) -> Iterator[dict]:
  """Host batches as global arrays on `mesh`, `size` of them on their way ahead of use.

  A transfer is asynchronous: it is started `size` batches before the step that takes it,
  so it overlaps the running step. size=0 hands the host arrays to the step as they are
  (with one process; jit then moves them itself). size=-1: 0 on the CPU backend, where
  the copy runs on the cores the step needs (measured slower, bench/README.md), else 2.
  """
  if size < 0:
    size = 0 if jax.default_backend() == 'cpu' else 2
  if size == 0 and jax.process_count() == 1:
    yield from batches
    return
  queue = collections.deque()
  for batch in batches:
    queue.append(parallel.to_global(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  yield from queue


class MetricsLog:
  """Finished steps' train metrics: checked, then their means written every `log_every`.

  Every step's metrics are read (they are a few scalars), so a non-finite loss or gradient
  is reported at the step where it happened; the step left the state unchanged.
  """

  def __init__(self, writer: writers.Writer, workdir: str, ckpt: checkpoint.Checkpointer,
               log_every: int):
    self.writer, self.ckpt, self.log_every = writer, ckpt, log_every
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.pending: list[dict] = []
    self.last_step = 0

  def add(self, step: int, device_metrics: dict) -> None:
    """Waits for the step's metrics; raises NonFiniteError if it did not apply."""
    metrics = parallel.fetch(device_metrics)
    self.last_step = step
    if not metrics['finite']:
      self.ckpt.wait()
      last = self.ckpt.latest_step()
      kept = (f'The last good checkpoint is step {last} in {self.ckpt.directory} (kept); '
              'rerun to resume from it' if last else 'No checkpoint was saved before it; rerun')
      raise NonFiniteError(
          f'Non-finite loss or gradient at step {step} (loss={metrics["loss"]}). The update '
          f'was not applied and training stopped. {kept} with a lower '
          'config.optim.learning_rate or with config.optim.grad_clip_norm set.')
    self.pending.append(metrics)
    if step % self.log_every == 0:
      self.write(step)

  def write(self, step: int) -> None:
    if not self.pending:
      return
    means = {f'train/{k}': float(np.mean([m[k] for m in self.pending]))
             for k in self.pending[0] if k != 'finite'}
    self.pending = []
    self.writer.write_scalars(step, means)
    if jax.process_index() == 0:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, **means}) + '\n')


class Stopwatch:
  """Wall time of the loop's phases, written to timing.json: where a run's time went.

  'data' is the time the loop waited for the next batch (the input pipeline reads ahead,
  so it is ~0 when input keeps up), 'step' the time spent dispatching and waiting for
  steps. The median and 90th percentile of the intervals between step dispatches give
  the steady step time, untouched by the evaluations and saves between some steps.
  """

  def __init__(self):
    self.totals: dict[str, float] = collections.defaultdict(float)
    self.ticks: list[float] = []

  def time(self, phase: str, start: float) -> None:
    self.totals[phase] += time.perf_counter() - start

  def report(self, workdir: str, *, steps: int, loop_s: float) -> None:
    timing = {'steps': steps, 'loop_s': loop_s,
              **{f'{k}_s': v for k, v in sorted(self.totals.items())}}
    intervals = np.diff(self.ticks[1:]) * 1e3  # From the second step on.
    if intervals.size:
      timing |= {'step_ms_median': float(np.median(intervals)),
                 'step_ms_p90': float(np.percentile(intervals, 90))}
    logging.info('Loop timing: %s', ', '.join(f'{k}={v:.2f}' for k, v in timing.items()))
    if jax.process_index() == 0:
      evaluate.write_json(os.path.join(workdir, 'timing.json'), timing)


def _compile_checked(train_step, state, data: input_pipeline.Data, task: tasks.Task):
  """The train step compiled ahead of its first batch, refused if XLA's estimate of its
  memory exceeds a device's: before anything of that size is allocated."""
  batch = task.config.train.batch_size
  spec = task.batch_spec(data)
  compiled = train_step.lower(state, spec).compile()
  memory = device_memory.of_compiled(compiled)
  available = device_memory.available_bytes()
  if memory and available and memory.total > available:
    fits = device_memory.batch_that_fits(memory, available, batch)
    raise UserError(
        f'config.train.batch_size={batch} does not fit in memory: XLA estimates '
        f'{memory.total / 2**30:.1f} GiB per device for the train step (its arguments '
        f'{memory.arguments / 2**30:.1f} GiB, temporaries {memory.temp / 2**30:.1f} GiB), '
        f'and a device has {available / 2**30:.1f} GiB. A global batch of about {fits} '
        'fits; or keep the batch and set config.optim.accum_steps (micro-batches) or '
        'config.model.remat, or use more devices.')
  return compiled


def _warn_if_stream_changed(stream: dict, config: ml_collections.ConfigDict,
                            step: int) -> None:
  """The input stream is a function of (seed, global batch, step): resuming with another
  seed or batch size reads a different stream from `step` on. Allowed, but said."""
  now = {'seed': config.seed, 'train.batch_size': config.train.batch_size}
  then = {'seed': stream.get('seed'), 'train.batch_size': stream.get('global_batch')}
  changed = [f'{k} {then[k]} -> {now[k]}' for k in now if then[k] not in (None, now[k])]
  if changed:
    logging.warning(
        'Resuming at step %d with %s: the checkpoint was reading another input stream, so '
        'from here on examples of the current epoch may repeat or be skipped and the run '
        'will not equal an uninterrupted one. Rerun with the original values to continue '
        'the same stream.', step, ', '.join(changed))


def _finish(workdir: str, step: int, evals: dict, class_names: list[str]) -> dict:
  out = evaluate.write_results(workdir, step, evals, class_names)
  if jax.process_index() == 0:
    from vision_jax import visualize  # pylint: disable=g-import-not-at-top  # (matplotlib)
    visualize.write_curves(workdir)
  return out


def _log_evals(writer: writers.Writer, workdir: str, step: int, evals: dict) -> None:
  scalars = {f'eval/{k}': v for k, v in evaluate.scalars(evals).items()}
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:  # For curves.png: one line per evaluation.
    with open(os.path.join(workdir, 'eval_metrics.jsonl'), 'a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')


def _loop(state, start: int, total: int, train_step, batches: Iterator[dict], run_evals,
          config: ml_collections.ConfigDict, ckpt: checkpoint.Checkpointer, log: 'MetricsLog',
          writer: writers.Writer, watch: 'Stopwatch', workdir: str, identity: dict,
          preemption: PreemptionWatcher) -> dict | None:
  """Steps start + 1 .. total: step, log, evaluate, save. Returns the last evaluation's
  results, or None when a preemption notice (SIGTERM) stopped it after saving. Each
  checkpoint records `identity` (run_identity.claim)."""
  progress = writers.Progress(total, writer)
  show_bar = sys.stdout.isatty() and jax.process_index() == 0
  running = collections.deque()  # (step, metrics) dispatched and not yet waited for.
  batch, evals = next(batches), {}
  for step in range(start + 1, total + 1):
    t = time.perf_counter()
    state, metrics = train_step(state, batch)  # Runs while the host reads the next batch.
    watch.ticks.append(t)
    watch.time('first_step' if step == start + 1 else 'step', t)
    running.append((step, metrics))
    if step < total:
      t = time.perf_counter()
      batch = next(batches)
      watch.time('data', t)
    ckpt.check()  # A save that failed in the background stops the run now.
    evals, stop = {}, preemption.should_stop(step)
    do_eval = step == total or (config.train.eval_every and
                                step % config.train.eval_every == 0)
    do_save = step % config.checkpoint.every_steps == 0 or step == total or stop
    t = time.perf_counter()
    while running and (len(running) > parallel.steps_ahead() or do_eval or do_save):
      log.add(*running.popleft())  # Never evaluate or save after a non-finite step.
    watch.time('step', t)
    progress(step)
    if show_bar:
      print(f'\rstep {step}/{total}', end='', flush=True)
    if do_eval:
      t = time.perf_counter()
      evals = run_evals(state)
      _log_evals(writer, workdir, step, evals)
      watch.time('eval', t)
    if do_save:
      log.write(step)
      t = time.perf_counter()
      ckpt.save(step, state, {'next_step': step, 'seed': config.seed,
                              'global_batch': config.train.batch_size, **identity},
                metrics=evaluate.scalars(evals))
      watch.time('checkpoint', t)
    if stop:
      ckpt.wait()
      writer.close()
      logging.warning('Preempted: saved step %d in %s; rerun the same command to resume.',
                      step, ckpt.directory)
      return None
  if show_bar:
    print()
  return evals


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: tasks.Task | None = None) -> dict:
  """Trains (or resumes) the configured run in `workdir`; returns the final results.
  `task` is the run's task (main builds it once); by default built from `config`."""
  task = task or tasks.build(config)
  # Whose checkpoints these are, before anything is built: another run's are refused.
  run_identity.check_resume(workdir, config)
  mesh = parallel.make_mesh(config)
  shard = input_pipeline.HostShard(jax.process_index(), jax.process_count())
  data = task.build_data(shard, augment_on_device=True)
  logging.info('Dataset %s: %d train examples, eval %s, %d classes, %dx%dx%d images.',
               config.dataset.name, data.num_train, data.eval_sizes, data.num_classes,
               data.image_size, data.image_size, data.channels)
  steps_per_epoch = max(1, data.num_train // config.train.batch_size)
  structure, state = train_state.create(
      task, mesh, num_classes=data.num_classes, image_size=data.image_size,
      in_channels=data.channels, steps_per_epoch=steps_per_epoch)
  logging.info('Parameters: %s', ', '.join(
      f'{name} {n:,}' for name, n in train_state.num_params(state).items()))

  ckpt = checkpoint.Checkpointer(workdir, keep=config.checkpoint.keep,
                                best_metric=config.checkpoint.keep_best,
                                best_mode=config.checkpoint.keep_best_mode)
  start = 0
  restored = ckpt.restore_latest(train_state.abstract(state), config.checkpoint.on_corrupt)
  if restored:
    start, state, stream = restored
    logging.info('Resumed from checkpoint at step %d (%s).', start, {
        k: stream.get(k) for k in ('next_step', 'seed', 'global_batch', 'run')})
    _warn_if_stream_changed(stream, config, start)
  report = None
  if not restored and config.init_from.checkpoint:
    state, report = finetune.init_from_checkpoint(config, state, structure)
    logging.info('Initialised from %s: %s', config.init_from.checkpoint, report['counts'])

  eval_step = steps.jit_eval_step(task, structure, mean=data.mean, std=data.std, mesh=mesh)
  run_evals = lambda state: evaluate.evaluate_splits(eval_step, state, data, mesh, task)
  total = config.train.steps
  t0 = time.perf_counter()  # The loop's clock: compilation included, start-up not.
  if start < total:
    train_step = _compile_checked(
        steps.jit_train_step(task, structure, mean=data.mean, std=data.std,
                             num_classes=data.num_classes, mesh=mesh,
                             device_recipe=data.device_augment,
                             image_size=data.image_size), state, data, task)
  compile_s = time.perf_counter() - t0
  # Every check that can fail before the first step has passed: the run is real now.
  identity = run_identity.claim(workdir, config)  # run.json at the workdir's first run.
  if jax.process_index() == 0:
    workdir_lib.write_metadata(workdir, config.to_json_best_effort(indent=2),
                               data.describe())
    if report is not None:
      evaluate.write_json(os.path.join(workdir, 'init_report.json'), report)
    for log_file in ('metrics.jsonl', 'eval_metrics.jsonl'):  # A killed run's extra lines.
      workdir_lib.truncate_jsonl(os.path.join(workdir, log_file), start)
  if start >= total:
    logging.info('Training already finished at step %d; re-evaluating only.', start)
    return _finish(workdir, start, run_evals(state), data.class_names)

  writer = writers.Writer(workdir if jax.process_index() == 0 else None)  # Log-only elsewhere.
  log = MetricsLog(writer, workdir, ckpt, config.train.log_every)
  watch = Stopwatch()
  watch.totals['compile'] = compile_s
  t = time.perf_counter()
  evaluate.compile_ahead(eval_step, state, data.evals, mesh)  # Fails before training if so.
  watch.time('compile_eval', t)
  host_batches = data.train_batches(start)  # Worker processes end with the loop.
  preemption = PreemptionWatcher()
  try:
    evals = _loop(state, start, total, train_step, device_batches(
        host_batches, mesh, config.train.device_prefetch), run_evals, config, ckpt,
                  log, writer, watch, workdir, identity, preemption)
  except BaseException:
    ckpt.abandon()  # A save still being written finishes first; the error is the story.
    raise
  finally:
    preemption.close()  # After the loop a SIGTERM has no step to save at.
    host_batches.close()
  if evals is None:  # Preempted: saved, and said so.
    return {'preempted_at_step': log.last_step}
  writer.close()
  t = time.perf_counter()
  ckpt.wait()
  ckpt.close()
  watch.time('checkpoint', t)
  watch.report(workdir, steps=total - start, loop_s=time.perf_counter() - t0)
  return _finish(workdir, total, evals, data.class_names)
