"""Orbax checkpoints of the training state plus the input-stream position.

A checkpoint holds two items: `state` (params, batch statistics, optimiser state, step,
dropout RNG state) and `data` (JSON: the next step of the input stream and the seed and
batch size it depends on). Saves are asynchronous; only finished saves are ever listed, so
a run killed mid-save resumes from the previous one.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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
  def convert(value, target):
    if _is_key(target):
      return jax.random.wrap_key_data(value, impl=jax.random.key_impl(target))
    return value
  return jax.tree.map(convert, restored, abstract_state)


class Checkpointer:
  """Saves and restores (state, data position) under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_names=('state', 'data'))

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_saveable(state)), data=ocp.args.JsonSave(data)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Exactly the saved arrays, placed with `abstract_state`'s shardings."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract_saveable(abstract_state)),
        data=ocp.args.JsonRestore()))
    return _from_saveable(restored['state'], abstract_state), dict(restored['data'])

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
