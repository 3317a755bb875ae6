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
import re
import shutil
import sys
import threading
import time
import types
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from vision_jax.errors import UserError


class CheckpointError(UserError):
  """A checkpoint that cannot be used; the message names it and the way out."""


def _nbytes(state: Any) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(_to_saveable(state)))


def _messages(error: BaseException) -> list[str]:
  """The messages of an exception and its causes, innermost last."""
  out = []
  while error is not None and len(out) < 10:
    out.append(str(error))
    error = error.__cause__ or error.__context__
  return out


def _first_line(error: BaseException) -> str:
  """The most specific line of an error chain: TensorStore's spec dumps left out."""
  for message in reversed(_messages(error)):
    line = message.strip().splitlines()[0] if message.strip() else ''
    if line and 'See full TensorStore details' not in line:
      return line[:400]
  return f'{type(error).__name__}'


# What orbax and TensorStore say when a checkpoint is intact but holds another model than
# the one asked for (a changed config); anything else that fails to read is damage.
_MISMATCH = re.compile(r'tree structure|structure mismatch|shape|dtype|do(es)? not match|'
                       r'mismatch|[Mm]issing key|[Uu]nexpected key|not found in the target')


_DENIED = re.compile(r'PERMISSION_DENIED|Permission denied|\[Errno 13\]')


def permission_denied(path: str, error: BaseException) -> CheckpointError | None:
  """The error for a checkpoint this user may not read (intact as far as anyone knows:
  never to be called damaged, moved aside or skipped), or None if that is not the cause."""
  if not any(isinstance(e, PermissionError) or _DENIED.search(m)
             for e, m in zip(_chain(error), _messages(error))):
    return None
  return CheckpointError(
      f'Checkpoint {path} cannot be read by this user (permission denied: '
      f'{_first_line(error)}). That is no sign of damage, so it is neither skipped nor '
      'moved aside. Make them readable (e.g. chmod -R u+rX on it, or run as the user who wrote '
      'them) and rerun.')


def _chain(error: BaseException) -> list[BaseException]:
  out = []
  while error is not None and len(out) < 10:
    out.append(error)
    error = error.__cause__ or error.__context__
  return out


def diagnose(path: str, error: BaseException) -> tuple[bool, str]:
  """(the files are damaged, one line saying what failed) for a checkpoint that did not
  restore; not damaged means it does not fit the state asked for (another config)."""
  heads = '\n'.join(m.strip().splitlines()[0] for m in _messages(error) if m.strip())
  line = _first_line(error)
  if _MISMATCH.search(heads) and not isinstance(error, (OSError, EOFError)):
    return False, f'Checkpoint {path} does not fit this run: {line}.'
  return True, f'Checkpoint {path} is damaged: {line}.'


def _silence_abandoned_reads() -> None:
  """After a failed restore or save, orbax's other pending reads and writes are left
  behind: Python reports each unawaited one when it is collected ('Exception ignored in:
  <coroutine ...>'), and TensorStore's operations that finish later report, from their own
  threads and at any time, that orbax's event loop is closed. The failure itself reaches
  the caller and is reported once; these echoes are dropped. Installed before any save or
  restore (they can print before the failure is even raised)."""
  if getattr(sys.unraisablehook, 'vision_jax', False):
    return
  previous = sys.unraisablehook

  def unraisable_hook(unraisable):
    closed_loop = (unraisable.exc_type is RuntimeError and
                   str(unraisable.exc_value) == 'Event loop is closed')
    abandoned = isinstance(getattr(unraisable, 'object', None), types.CoroutineType)
    if not (closed_loop or abandoned):
      previous(unraisable)

  unraisable_hook.vision_jax = True
  sys.unraisablehook = unraisable_hook


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
               best_mode: str = 'max', async_save: bool = True, read_only: bool = False):
    _silence_abandoned_reads()
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._best_metric = best_metric
    self._watcher: threading.Thread | None = None  # Waits for the latest save.
    self._failure: CheckpointError | None = None  # What it found.
    if read_only:  # Inference: nothing is created or deleted (a read-only workdir works).
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=async_save,
          preservation_policy=_preservation(keep, best_metric, best_mode))
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler()})

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data: dict, metrics: dict | None = None) -> None:
    """Starts saving in the background. A save that fails (now, or the previous one still
    being written) raises CheckpointError here or from `check`."""
    self.wait()  # The previous save first: its failure is reported as its own.
    if self._best_metric and (metrics is None or self._best_metric not in metrics):
      metrics = None  # Kept by recency only.
    nbytes = _nbytes(state)
    try:
      self._manager.save(step, metrics=metrics, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_to_saveable(state)), data=ocp.args.JsonSave(data)))
    except Exception as e:  # pylint: disable=broad-except  # Disk full, permissions, ...
      raise self._save_failed(step, nbytes, e) from e
    # Orbax reports a failed background write only to whoever waits for it: a watcher
    # waits, so that the loop learns of it at the next step (`check`), not the next save.
    self._watcher = threading.Thread(target=self._watch, args=(step, nbytes), daemon=True,
                                     name=f'vision_jax checkpoint {step}')
    self._watcher.start()

  def _watch(self, step: int, nbytes: int) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._failure = self._save_failed(step, nbytes, e)
      self._failure.__cause__ = e

  def check(self) -> None:
    """Raises CheckpointError if a background save has failed (cheap: call it often)."""
    if self._failure is not None:
      failure, self._failure = self._failure, None
      raise failure

  def wait(self) -> None:
    """Blocks until pending saves are on disk; raises CheckpointError if one failed."""
    if self._watcher is not None:
      self._watcher.join()
      self._watcher = None
    self.check()

  def abandon(self) -> None:
    """On the way out of a failed run: lets a save still being written finish (a good
    checkpoint is kept), drops a save failure (the run's own error is reported) and
    closes the manager (whose threads would otherwise keep the process alive).
    Orbax may leave threads of a failed save waiting for ever; the CLI does not wait for
    them at exit (main._exit)."""
    try:
      self.wait()
    except CheckpointError:
      pass
    try:
      self._manager.close()
    except Exception:  # pylint: disable=broad-except  # The failure is reported already.
      pass

  def _save_failed(self, step: int, nbytes: int, error: Exception) -> 'CheckpointError':
    try:
      free = shutil.disk_usage(self.directory).free
      space = (f'{free / 2**30:.2f} GiB are free there; a checkpoint of this run needs '
               f'about {nbytes / 2**30:.2f} GiB')
    except OSError:
      space = f'a checkpoint of this run needs about {nbytes / 2**30:.2f} GiB'
    last = [s for s in self.all_steps() if s != step]
    kept = (f'The last good checkpoint is step {last[-1]} (kept)' if last else
            'No earlier checkpoint was saved')
    return CheckpointError(
        f'Saving checkpoint {step} to {self.directory} failed: {_first_line(error)}. '
        f'Training stopped. {kept}; {space}. Free space (or fix the directory) and rerun '
        'the same command to resume.')

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Exactly the saved arrays, placed with `abstract_state`'s shardings."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract_saveable(abstract_state)),
        data=ocp.args.JsonRestore()))
    return _from_saveable(restored['state'], abstract_state), dict(restored['data'])

  def restore_latest(self, abstract_state: Any, on_corrupt: str = 'error', *,
                     repair: bool = True) -> tuple[int, Any, dict] | None:
    """(step, state, data) of the newest usable checkpoint; None if there are none.

    A checkpoint that fails to restore raises CheckpointError, unless on_corrupt is
    'previous': then older checkpoints are tried, newest first, and with `repair` (a
    training run, which saves that step again) each damaged one is moved aside as
    checkpoints/<step>.damaged-<UTC time>, never deleted. Never returns None when
    checkpoints exist, so a run does not silently start over.
    """
    steps = self.all_steps()
    for i, step in enumerate(reversed(steps)):
      try:
        state, data = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        path = os.path.join(self.directory, str(step))
        denied = permission_denied(path, e)
        if denied is not None:  # Whatever on_corrupt says: the files may well be intact.
          raise denied from e
        damaged, problem = diagnose(path, e)
        if on_corrupt != 'previous':
          fix = ('rerun with --config.checkpoint.on_corrupt=previous to resume from the '
                 'checkpoint before it (the damaged one is kept aside)' if damaged else
                 'if the config changed since it was written, rerun with the original '
                 'config or a new --workdir')
          raise CheckpointError(f'{problem} To go on, {fix}.') from e
        if i == len(steps) - 1:
          raise CheckpointError(f'{problem} No older checkpoint in {self.directory} '
                                'restores either; move the directory away to start '
                                'over.') from e
        if repair:
          aside = self._move_aside(step)
          logging.warning('%s Moved it to %s; falling back to the checkpoint before it.',
                          problem, aside)
        else:
          logging.warning('%s Falling back to the checkpoint before it.', problem)
        continue
      return step, state, data
    return None

  def _move_aside(self, step: int) -> str:
    """Renames checkpoints/<step> so that it is no longer a step (kept, never deleted)."""
    aside = os.path.join(self.directory, f'{step}.damaged-' +
                         time.strftime('%Y%m%d-%H%M%S', time.gmtime()))
    if jax.process_index() == 0:
      os.rename(os.path.join(self.directory, str(step)), aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'vision_jax: checkpoint {step} moved aside')
    self._manager.reload()
    return aside

  def close(self) -> None:
    try:
      self.wait()
    finally:
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
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                      save_interval_steps=0),
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
