"""Orbax checkpoints of the training state plus the input-stream position.

A checkpoint holds two items: `state` (params, batch statistics, optimiser state, step,
dropout RNG state) and `data` (JSON: the next step of the input stream and the seed and
batch size it depends on). Saves are asynchronous and atomic (orbax writes a temporary
directory and renames it when complete), so a save cut short by a kill is never listed and
the run resumes from the previous one. A finished checkpoint that fails to restore stops
the run unless `checkpoint.on_corrupt='previous'` allows falling back.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from vision_jax.errors import UserError


class CheckpointError(UserError):
  """A checkpoint that cannot be used; the message names it and the way out."""


def _is_key(x) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(state: Any) -> Any:
  """Typed PRNG keys cannot be serialised; store their raw key data."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def _abstract_saveable(abstract_state: Any) -> Any:
  def convert(x):
    if not _is_key(x):
      return x
    data = jax.eval_shape(jax.random.key_data, x)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, 'sharding', None))
  return jax.tree.map(convert, abstract_state)


def _from_saveable(restored: Any, abstract_state: Any) -> Any:
  """Raw key data back into typed keys. Every key of a state is made by `nnx.Rngs`, i.e.
  with JAX's default PRNG implementation; a key saved under another one has another data
  shape and fails the restore rather than being misread."""
  def convert(value, target):
    if _is_key(target):
      impl = (jax.random.key_impl(target) if isinstance(target, jax.Array)
              else jax.config.jax_default_prng_impl)
      return jax.random.wrap_key_data(value, impl=impl)
    return value
  return jax.tree.map(convert, restored, abstract_state)


def _preservation(keep: int, best_metric: str, best_mode: str):
  latest = checkpoint_managers.LatestN(n=keep)
  if not best_metric:
    return latest
  best = checkpoint_managers.BestN(get_metric_fn=lambda m: m[best_metric],
                                   reverse=best_mode == 'min', n=1,
                                   keep_checkpoints_without_metrics=False)
  return checkpoint_managers.AnyPreservationPolicy([latest, best])


class Checkpointer:
  """Saves and restores (state, data position) under `workdir/checkpoints`.

  Keeps the latest `keep` checkpoints, plus the best one by `best_metric` (an eval scalar
  such as 'test/accuracy') when given.
  """

  def __init__(self, workdir: str, *, keep: int, best_metric: str = '',
               best_mode: str = 'max', async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._best_metric = best_metric
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=async_save,
            preservation_policy=_preservation(keep, best_metric, best_mode)),
        item_names=('state', 'data'))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data: dict, metrics: dict | None = None) -> None:
    if self._best_metric and (metrics is None or self._best_metric not in metrics):
      metrics = None  # Kept by recency only.
    self._manager.save(step, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_saveable(state)), data=ocp.args.JsonSave(data)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Exactly the saved arrays, placed with `abstract_state`'s shardings."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract_saveable(abstract_state)),
        data=ocp.args.JsonRestore()))
    return _from_saveable(restored['state'], abstract_state), dict(restored['data'])

  def restore_latest(self, abstract_state: Any, on_corrupt: str = 'error'
                     ) -> tuple[int, Any, dict] | None:
    """(step, state, data) of the newest usable checkpoint; None if there are none.

    A checkpoint that fails to restore raises CheckpointError, unless on_corrupt is
    'previous': then older checkpoints are tried, newest first. Never returns None
    when checkpoints exist, so a run does not silently start over.
    """
    steps = self.all_steps()
    for i, step in enumerate(reversed(steps)):
      try:
        state, data = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        path = os.path.join(self.directory, str(step))
        problem = f'Checkpoint {path} cannot be restored ({type(e).__name__}: {e}).'
        if on_corrupt != 'previous':
          raise CheckpointError(
              f'{problem} If the config changed since it was written, rerun with the '
              'original config or a new --workdir. If the checkpoint is damaged, rerun with '
              '--config.checkpoint.on_corrupt=previous to resume from the one before it.'
          ) from e
        if i == len(steps) - 1:
          raise CheckpointError(f'{problem} No older checkpoint in {self.directory} '
                                'restores either; move the directory away to start '
                                'over.') from e
        logging.warning('%s Falling back to the previous checkpoint.', problem)
        continue
      return step, state, data
    return None

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def read_state(path: str) -> tuple[int, dict]:
  """(step, the state as nested dicts of numpy arrays) of a workdir's latest checkpoint,
  or of a step directory.

  For fine-tuning: the arrays come back as saved, whatever the model, so a checkpoint of
  a different model (another head, say) can be read and matched by path. They are read
  into host memory whole, whatever sharding they were saved with (FSDP, several
  processes): the target is built from the checkpoint's own metadata.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  if os.path.isdir(os.path.join(path, 'state')):  # A step directory.
    directory, step = os.path.dirname(path), os.path.basename(path)
    if not step.isdigit():
      raise CheckpointError(f'{path} is not a step directory of a checkpoints folder.')
    step = int(step)
  else:
    directory, step = path, None
  if not os.path.isdir(directory):
    raise CheckpointError(f'config.init_from.checkpoint={path} does not exist. Pass a '
                          'workdir of an earlier run, or one of its checkpoints/<step> '
                          'directories.')
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': ocp.JsonCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'No finished checkpoint in {directory}. Pass a workdir of a run '
                            'that saved at least one checkpoint.')
    host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
    metadata = manager.item_metadata(step)['state']
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host),
                          dict(metadata))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  finally:
    manager.close()
  return step, jax.tree.map(np.asarray, restored['state'])
