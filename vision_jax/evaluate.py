"""Evaluation over a whole split: every example counted once, metrics computed on the host.

The one eval driver of every task (vision_jax/tasks). An eval step returns per-example rows
(e.g. losses and top-k predictions, replicated on every host), whose masked padding rows of
the last batch are dropped here so that any metric comes from the same arrays, and sums
over its batch (outputs named 'sum_*', e.g. a confusion matrix counted on device, padding
excluded there), added up here; the task summarises a split (possibly against a context
such as a k-NN bank of the train split's features). `write_results` is
the one place that writes results.json and the confusion files, for training and for
`run` (--mode=eval: the same evaluation on a saved checkpoint, without training).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from vision_jax import parallel
from vision_jax import steps


def collect(eval_step: Callable, state, batches: Iterable, mesh: Mesh) -> dict[str, np.ndarray]:
  """Runs eval_step over `batches`; returns the unpadded per-example arrays, and the sums
  over the split of the outputs named 'sum_*' (int64 / float64; e.g. a confusion matrix
  counted on device, padding already excluded there).

  Batch k+1 is dispatched before batch k's outputs are read (`parallel.steps_ahead`).
  """
  parts: dict[str, list[np.ndarray]] = {}
  sums: dict[str, np.ndarray] = {}
  pending: list = []

  def read_oldest():
    out = parallel.fetch(pending.pop(0))
    mask = out.pop('mask', None)
    for key, value in out.items():
      if key.startswith('sum_'):
        value = np.asarray(value, np.float64 if np.issubdtype(value.dtype, np.floating)
                           else np.int64)
        sums[key] = sums[key] + value if key in sums else value
      else:
        parts.setdefault(key, []).append(value[mask > 0])

  for batch in batches:
    pending.append(eval_step(state, parallel.to_global(batch, mesh)))
    if len(pending) > parallel.steps_ahead():
      read_oldest()
  while pending:
    read_oldest()
  return {k: np.concatenate(v) for k, v in parts.items()} | sums


def evaluate_splits(eval_step: Callable, state, data, mesh: Mesh, task) -> dict[str, dict]:
  """The task's summary of collect(...) for every eval split of `data` (an
  input_pipeline.Data)."""
  context = task.eval_context(data, lambda batches: collect(eval_step, state, batches, mesh))
  results = {}
  for split in data.evals:
    with data.eval_batches(split) as batches:
      results[split] = task.summarize(collect(eval_step, state, batches, mesh),
                                      num_classes=data.num_classes,
                                      class_names=data.class_names, context=context)
  return results


def compile_ahead(eval_step: Callable, state, evals: dict, mesh: Mesh) -> None:
  """Compiles (and runs once) eval_step on the first batch of the first eval split.

  Evaluations during training then cost only their batches, and an evaluation that cannot
  compile fails before any training time is spent. Every split has the same batch shape.
  """
  first = next(iter(evals.values()), None)
  if first is not None:
    jax.block_until_ready(eval_step(state, parallel.to_global(first[0], mesh)))


def scalars(results: dict[str, dict]) -> dict[str, float]:
  """{'test/accuracy': ..., ...}: the float metrics of every split, keyed 'split/name'."""
  return {f'{split}/{k}': v for split, r in results.items() for k, v in r.items()
          if isinstance(v, float)}


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (a temporary file renamed): never a half-written file; a
  failed write is an outputs.OutputError naming the path."""
  from vision_jax import outputs  # pylint: disable=g-import-not-at-top
  with outputs.atomic(path) as tmp:
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=2)


def write_results(workdir: str, step: int, results: dict[str, dict],
                  class_names: Sequence[str]) -> dict:
  """results.json, confusion_<split>.json and confusion_<split>.png for checkpoint `step`.

  `results` maps splits to `summarize` outputs; their confusion matrices and 'json_files'
  ({stem: object} -> <stem>_<split>.json) go to their own files. results.json always describes one checkpoint (its "step"): splits of the same
  step are merged, another step starts the file afresh. Returns what results.json holds.
  Writes on process 0 only.
  """
  from vision_jax import outputs  # pylint: disable=g-import-not-at-top
  from vision_jax import visualize  # pylint: disable=g-import-not-at-top
  results = {split: dict(r) for split, r in results.items()}
  confusions = {split: r.pop('confusion_matrix') for split, r in results.items()
                if 'confusion_matrix' in r}
  # A summary's 'json_files' {stem: JSON-able object} go to <stem>_<split>.json (e.g. a
  # split's predictions in a format other tools read), not into results.json.
  files = {split: r.pop('json_files') for split, r in results.items() if 'json_files' in r}
  path = os.path.join(workdir, 'results.json')
  old = {}
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError):
      old = {}
  if old.get('step') == step:
    out = {**old, 'eval': {**old.get('eval', {}), **results}}
  else:
    out = {'step': step, 'eval': results}
  if jax.process_index() != 0:
    return out
  for split, counts in confusions.items():
    write_json(os.path.join(workdir, f'confusion_{split}.json'), counts)
    names = list(class_names) if len(class_names) == len(counts) else [
        str(i) for i in range(len(counts))]
    with outputs.atomic(os.path.join(workdir, f'confusion_{split}.png')) as tmp:
      visualize.write_confusion(np.asarray(counts), names, tmp,
                                title=f'{split}, step {step}')
  for split, named in files.items():
    for stem, obj in named.items():
      write_json(os.path.join(workdir, f'{stem}_{split}.json'), obj)
  write_json(path, out)
  return out


def run(config: ml_collections.ConfigDict, workdir: str, output: str | None = None, *,
        task=None) -> dict:
  """--mode=eval: the latest (or config.eval.checkpoint) checkpoint on the eval splits.

  Writes results.json (eval/<split>), confusion_<split>.json and confusion_<split>.png
  into the workdir, or into `output` (a directory; e.g. for a read-only workdir); never
  trains or changes a checkpoint. `task`: the run's task (main builds it once).
  """
  from vision_jax import inference  # pylint: disable=g-import-not-at-top
  from vision_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  loaded = inference.load(workdir, config, portable=False, task=task)
  task = loaded.task
  data = task.build_data(input_pipeline.HostShard(jax.process_index(), jax.process_count()))
  if (data.num_classes, data.channels) != (loaded.num_classes, loaded.image_shape[2]):
    raise inference.WorkdirError(
        f'The configured dataset {config.dataset.name!r} has {data.num_classes} classes and '
        f'{data.channels} channels; the run in {workdir} was trained on '
        f'{loaded.num_classes} and {loaded.image_shape[2]}. Evaluate on the dataset it was '
        'trained on.')
  eval_step = steps.jit_eval_step(
      task, loaded.structure, mean=loaded.mean, std=loaded.std, mesh=loaded.mesh,
      state_shardings=jax.tree.map(lambda x: x.sharding, loaded.state))
  logging.info('Evaluating checkpoint %d of %s on %s.', loaded.step, workdir, list(data.evals))
  results = evaluate_splits(eval_step, loaded.state, data, loaded.mesh, task)
  if output:
    from vision_jax import outputs  # pylint: disable=g-import-not-at-top
    try:
      os.makedirs(output, exist_ok=True)
    except OSError as e:
      raise outputs.OutputError(outputs.explain(e, f'creating --output={output}')) from e
  return write_results(output or workdir, loaded.step, results, loaded.class_names)
