"""train_and_evaluate(config, workdir): the training loop, top to bottom.

mesh -> data -> state (fresh, or restored from the workdir's latest checkpoint) -> jitted
steps -> loop: step, log, evaluate, checkpoint -> final evaluation -> results.json.
"""
from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from vision_jax import checkpoint
from vision_jax import evaluate
from vision_jax import finetune
from vision_jax import ops
from vision_jax import parallel
from vision_jax import steps
from vision_jax import train_state
from vision_jax import visualize
from vision_jax import writers
from vision_jax.data import input_pipeline
from vision_jax.data import mixing
from vision_jax.errors import UserError
from vision_jax.preemption import PreemptionWatcher


class NonFiniteError(UserError):
  """Training produced a non-finite loss or gradient."""


def _write_json(path: str, obj) -> None:
  if jax.process_index() == 0:
    evaluate.write_json(path, obj)


def _run_evals(eval_step, state, data, mesh) -> dict:
  return evaluate.evaluate_splits(eval_step, state, data.evals, mesh, data.num_classes,
                                  data.num_threads)


def _log_evals(writer, step: int, results: dict, workdir: str) -> None:
  scalars = {f'eval/{split}/{k}': v for split, r in results.items()
             for k, v in r.items() if isinstance(v, float)}
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:  # For curves.png: one line per evaluation.
    with open(os.path.join(workdir, 'eval_metrics.jsonl'), 'a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')


def _finish(workdir: str, step: int, results: dict) -> dict:
  """Writes results.json (scalars) and confusion_<split>.json; returns what it wrote."""
  for split, r in results.items():
    _write_json(os.path.join(workdir, f'confusion_{split}.json'), r.pop('confusion_matrix'))
  out = {'step': step, 'eval': results}
  _write_json(os.path.join(workdir, 'results.json'), out)
  if jax.process_index() == 0:
    visualize.write_run_pictures(workdir)  # curves.png, confusion_<split>.png
  return out


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


class _StepLog:
  """The steps still running, and the means of finished steps' metrics every `log_every`.

  `add` is called right after a step is dispatched. It waits for the steps before it but
  the last `lag` (with lag 1 the next step is queued while the loop does its bookkeeping,
  so the device does not idle on it) and writes a log line when a finished step is a
  multiple of `log_every`. `settle` waits for all of them and writes what is left: before
  a checkpoint (never save parameters from after a non-finite step) and at the end.
  """

  def __init__(self, writer, workdir: str, ckpt: checkpoint.Checkpointer, *,
               log_every: int, lag: int, watch: '_Stopwatch'):
    self.writer, self.ckpt, self.log_every, self.lag, self.watch = (
        writer, ckpt, log_every, lag, watch)
    self.running, self.finished = collections.deque(), []
    self.path = os.path.join(workdir, 'metrics.jsonl')

  def add(self, step: int, metrics) -> None:
    self.running.append((step, metrics))
    while len(self.running) > self.lag:
      self._finish_oldest()

  def settle(self) -> None:
    while self.running:
      self._finish_oldest()
    with self.watch('log'):
      self._write()

  def _finish_oldest(self) -> None:
    step, metrics = self.running.popleft()
    with self.watch('step_wait'):
      jax.block_until_ready(metrics)
    self.finished.append((step, metrics))
    if step % self.log_every == 0:
      with self.watch('log'):
        self._write()

  def _write(self) -> None:
    if not self.finished:
      return
    steps_, device_metrics = zip(*self.finished)
    fetched = list(zip(steps_, parallel.fetch(list(device_metrics))))
    self.finished = []
    for s, m in fetched:
      if not m['finite']:
        self.ckpt.wait()
        last = self.ckpt.latest_step()
        kept = (f'The last good checkpoint is step {last} in {self.ckpt.directory} (kept); '
                'rerun to resume from it' if last else 'No checkpoint was saved before it; rerun')
        raise NonFiniteError(
            f'Non-finite loss or gradient at step {s} (loss={m["loss"]}). The update was not '
            f'applied and training stopped. {kept} with a lower config.optim.learning_rate '
            'or with config.optim.grad_clip_norm set.')
    step = fetched[-1][0]
    means = {f'train/{k}': float(np.mean([m[k] for _, m in fetched]))
             for k in fetched[-1][1] if k != 'finite'}
    self.writer.write_scalars(step, means)
    if jax.process_index() == 0:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, **means}) + '\n')


class _Stopwatch:
  """Wall time per phase of the loop: logged and written to timing.json at the end.

  The next batch is read while the dispatched step runs, so 'data' overlaps the step;
  on the CPU backend each step is then waited for ('step_wait'). 'data_wait' bounds the
  time the device sat idle for input: the reads that ended after their step had finished.
  `tick` after each dispatch gives the median and 90th percentile of the intervals between
  them: the steady step time, untouched by the evaluations and saves between some steps.
  """

  def __init__(self, num_steps: int):
    self.totals: dict[str, float] = collections.defaultdict(float)
    self.ticks, self.num_ticks = np.empty(num_steps), 0

  @contextlib.contextmanager
  def __call__(self, phase: str):
    start = time.perf_counter()
    yield
    self.totals[phase] += time.perf_counter() - start

  def add(self, phase: str, seconds: float) -> None:
    self.totals[phase] += seconds

  def tick(self) -> None:
    self.ticks[self.num_ticks] = time.perf_counter()
    self.num_ticks += 1

  def report(self, workdir: str, *, steps: int, loop_s: float) -> None:
    timing = {'steps': steps, 'loop_s': loop_s,
              **{f'{k}_s': v for k, v in sorted(self.totals.items())}}
    intervals = np.diff(self.ticks[1:self.num_ticks]) * 1e3  # From the second step on.
    if intervals.size:
      timing |= {'step_ms_median': float(np.median(intervals)),
                 'step_ms_p90': float(np.percentile(intervals, 90))}
    logging.info('Loop timing: %s', ', '.join(f'{k}={v:.2f}' for k, v in timing.items()))
    _write_json(os.path.join(workdir, 'timing.json'), timing)


@contextlib.contextmanager
def _old_objects_frozen():
  """Keeps Python's collector to the objects the loop makes.

  A full collection walks every object in the process (~300k once jax, flax and tfds are
  imported; 0.18 s on the 2-core VM), and the loop's allocations set one off at some
  step: alone 5% of the default run when it fell inside it. Objects older than the loop
  are frozen while it runs and handed back to the collector after.
  """
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()


def jit_train_step(config: ml_collections.ConfigDict, graphdef, tx, schedule,
                   data: input_pipeline.Data, mesh, shardings):
  """The loop's train step over the state's leaves, `step(leaves, batch) -> (leaves,
  metrics)`, jitted with its shardings and donated state (benchmarks time this very one).

  Leaves, not the TrainState: its parameters and optimiser state are nnx Variables, and a
  jitted call flattens every Variable and builds a new one per output in Python. For 599
  digits steps the host thread spent 0.30 s of CPU on the TrainState, 0.17 s on leaves,
  and on two cores that time is taken from the step's own threads: the loop ran 5.8%
  faster on leaves (bench/README.md, "Loop overhead", sixth pass). The loop rebuilds the
  state (`jax.tree.unflatten`) only to evaluate or save it.
  """
  step = steps.make_train_step(
      graphdef, tx, schedule, mean=data.mean, std=data.std,
      label_smoothing=config.optim.label_smoothing, accum_steps=config.optim.accum_steps,
      mix=mixing.from_config(config.dataset, data.num_classes, config.seed),
      fast_cpu_ops=ops.resolve_fast_cpu_ops(config.model.fast_cpu_ops), mesh=mesh)
  treedef, leaf_shardings = jax.tree.structure(shardings), jax.tree.leaves(shardings)

  def leaf_step(leaves: list[jax.Array], batch):
    state, metrics = step(jax.tree.unflatten(treedef, leaves), batch)
    return jax.tree.leaves(state), metrics

  return jax.jit(leaf_step, in_shardings=(leaf_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(leaf_shardings, parallel.replicated(mesh)), donate_argnums=0,
                 compiler_options=ops.cpu_compiler_options())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the configured run in `workdir`; returns the final results."""
  mesh = parallel.make_mesh(config)
  shard = input_pipeline.HostShard(jax.process_index(), jax.process_count())
  data = input_pipeline.build(config, shard)
  logging.info('Dataset %s: %d train examples, eval %s, %d classes, %dx%dx%d images.',
               config.dataset.name, data.num_train, data.eval_sizes, data.num_classes,
               data.image_size, data.image_size, data.channels)
  _write_json(os.path.join(workdir, 'dataset.json'), data.describe())
  steps_per_epoch = max(1, data.num_train // config.train.batch_size)
  graphdef, state, tx, schedule, shardings = train_state.create(
      config, mesh, num_classes=data.num_classes, image_size=data.image_size,
      in_channels=data.channels, steps_per_epoch=steps_per_epoch)
  logging.info('Parameters: %d', sum(x.size for x in jax.tree.leaves(state.params)))

  ckpt = checkpoint.Checkpointer(workdir, keep=config.checkpoint.keep,
                                best_metric=config.checkpoint.keep_best,
                                best_mode=config.checkpoint.keep_best_mode)
  start = 0
  restored = ckpt.restore_latest(train_state.abstract(state), config.checkpoint.on_corrupt)
  if restored:
    start, state, stream = restored
    logging.info('Resumed from checkpoint at step %d (%s).', start, stream)
    _warn_if_stream_changed(stream, config, start)
  elif config.init_from.checkpoint:
    state, report = finetune.init_from_checkpoint(config, state, tx, shardings)
    logging.info('Initialised from %s: %s', config.init_from.checkpoint, report['counts'])
    _write_json(os.path.join(workdir, 'init_report.json'), report)

  train_step = jit_train_step(config, graphdef, tx, schedule, data, mesh, shardings)
  eval_step = jax.jit(steps.make_eval_step(graphdef, mean=data.mean, std=data.std,
                                           use_ema=config.optim.ema_decay > 0, mesh=mesh),
                      in_shardings=(shardings, parallel.batch_sharding(mesh)),
                      out_shardings=parallel.replicated(mesh),
                      compiler_options=ops.cpu_compiler_options())
  writer = writers.Writer(workdir if jax.process_index() == 0 else None)  # Log-only elsewhere.
  total, eval_every = config.train.steps, config.train.eval_every
  save_every = config.checkpoint.every_steps
  if start >= total:
    logging.info('Training already finished at step %d; re-evaluating only.', start)
    return _finish(workdir, start, _run_evals(eval_step, state, data, mesh))

  progress = writers.Progress(total, writer)
  watch = _Stopwatch(total - start)
  step_log = _StepLog(writer, workdir, ckpt, log_every=config.train.log_every,
                      lag=parallel.steps_ahead(), watch=watch)
  show_bar = sys.stdout.isatty() and jax.process_index() == 0
  batches = input_pipeline.iterate(data.train, start, data.num_threads)
  preemption = PreemptionWatcher()
  t0 = time.time()
  with watch('compile_eval'):  # Start-up, like the first step: excluded from rates.
    evaluate.compile_ahead(eval_step, state, data.evals, mesh)
  with watch('data'):
    batch = parallel.step_input(next(batches), mesh)
  treedef, leaves = jax.tree.structure(state), jax.tree.leaves(state)
  del state  # Its arrays are donated to the first step; rebuilt from `leaves` when needed.
  with _old_objects_frozen():
    for step in range(start + 1, total + 1):
      with watch('step' if step > start + 1 else 'first_step'):
        leaves, metrics = train_step(leaves, batch)  # Runs while we fetch the next batch.
      watch.tick()
      if step < total:
        read_start = time.perf_counter()
        batch = parallel.step_input(next(batches), mesh)
        read_s = time.perf_counter() - read_start
        watch.add('data', read_s)
        if metrics['loss'].is_ready():  # The step finished first: the device waited on data.
          watch.add('data_wait', read_s)
      step_log.add(step, metrics)
      with watch('log'):
        progress(step)
        if show_bar:
          print(f'\rstep {step}/{total} ({(step - start) / (time.time() - t0):.1f} steps/s)',
                end='', flush=True)
      evals = {}
      if step == total or (eval_every and step % eval_every == 0):
        with watch('eval'):
          evals = _run_evals(eval_step, jax.tree.unflatten(treedef, leaves), data, mesh)
          _log_evals(writer, step, evals, workdir)
      stop = preemption.should_stop(step)
      if step % save_every == 0 or step == total or stop:
        step_log.settle()  # Never save parameters from after a non-finite step.
        with watch('checkpoint'):
          ckpt.save(step, jax.tree.unflatten(treedef, leaves),
                    {'next_step': step, 'seed': config.seed,
                     'global_batch': config.train.batch_size},
                    metrics={f'{split}/{k}': v for split, r in evals.items()
                             for k, v in r.items() if isinstance(v, float)})
      if stop:
        ckpt.wait()
        writer.close()
        logging.warning('Preempted: saved step %d in %s; rerun the same command to resume.',
                        step, ckpt.directory)
        return {'preempted_at_step': step}
  if show_bar:
    print()
  writer.close()
  with watch('checkpoint'):
    ckpt.wait()
    ckpt.close()
  watch.report(workdir, steps=total - start, loop_s=time.time() - t0)
  return _finish(workdir, total, evals)
