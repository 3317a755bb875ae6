"""How much memory a compiled step needs on a device, and how much a device has.

XLA's memory analysis of a compiled program gives its argument, output, temporary and
aliased (donated) bytes per device; a device's limit comes from its allocator statistics
on GPUs and TPUs, and from the host's physical memory (shared by its CPU devices) on the
CPU backend. The training loop compares the two before the first step, so a batch that
cannot fit is refused with a size that does, instead of failing deep inside XLA.
"""
from __future__ import annotations

import dataclasses
import os

import jax


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes per device of one compiled program (XLA's estimate)."""
  arguments: int
  outputs: int
  aliased: int
  temp: int

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temp


def of_compiled(compiled) -> StepMemory | None:
  """XLA's memory analysis of a `jax.stages.Compiled`, or None where the backend has none."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return None
  if analysis is None:
    return None
  return StepMemory(arguments=int(analysis.argument_size_in_bytes),
                    outputs=int(analysis.output_size_in_bytes),
                    aliased=int(analysis.alias_size_in_bytes),
                    temp=int(analysis.temp_size_in_bytes))


def available_bytes(device: jax.Device | None = None) -> int | None:
  """Memory one device may use: its allocator's limit, or on the CPU backend the host's
  physical memory divided among the local CPU devices; None if unknown."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  if device.platform == 'cpu':
    try:
      physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
      return None
    return physical // max(1, len(jax.local_devices()))
  return None


def batch_that_fits(memory: StepMemory, available: int, batch: int,
                    granule: int = 8) -> int:
  """The largest global batch (a multiple of `granule`) whose step would fit, assuming
  everything but the state grows in proportion to the batch."""
  per_example = max(memory.temp + memory.outputs - memory.aliased, 1) / batch
  room = available - memory.arguments
  fits = int(max(room, 0) / per_example) if room > 0 else 0
  return max(granule, fits // granule * granule)
