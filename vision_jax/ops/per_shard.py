"""Run the fast ops on each device's share of the batch (`shard_map`), not on the global batch.

The CPU fast path chunks the batch (`lax.map`/`lax.scan` over reshaped batch axes) to stay
in cache. Under `jax.jit` with a batch split over several devices, XLA's partitioner cannot
keep those reshapes local and gathers the whole batch onto every device: on 2 CPU devices a
ResNet-18 step ran at half the speed of one device. Inside `shard_map` every op sees its
local batch, so the chunking works per device and the weight gradient is one `psum`.

The training and evaluation steps trace the model inside `batch_parallel(mesh)`; the ops
then call `per_shard(...)`. Outside that context (or on one device) `per_shard` returns the
function unchanged.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

# The axes the batch is split over (vision_jax.parallel.AXES). Kept here, not imported, so
# that the ops do not depend on the training code.
BATCH_AXES = ('data', 'fsdp')
BATCH = P(BATCH_AXES)
REPLICATED = P()
SUM = object()  # Output spec: partial sums, one per shard, summed over them (`psum`).

_MESH: Mesh | None = None


@contextlib.contextmanager
def batch_parallel(mesh: Mesh | None) -> Iterator[None]:
  """Ops traced inside run per device over `mesh`'s batch axes (None: global, as before)."""
  global _MESH
  previous, _MESH = _MESH, mesh
  try:
    yield
  finally:
    _MESH = previous


def _active_mesh(batch_size: int) -> Mesh | None:
  mesh = _MESH
  if mesh is None or not set(BATCH_AXES) <= set(mesh.axis_names):
    return None
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if shards == 1 or batch_size % shards:
    return None  # Nothing to split, or a batch the devices cannot share: run globally.
  return mesh


def per_shard(f: Callable[..., Any], batch_size: int, in_specs: tuple, out_specs: Any
              ) -> Callable[..., Any]:
  """`f` mapped over the batch shards when a batch-parallel mesh is active, else `f`.

  Specs: `BATCH` (split along axis 0), `REPLICATED`, or for outputs `SUM`: each shard
  returns a partial sum (e.g. a weight gradient over its examples), summed over the shards.
  `out_specs` is one spec for a single output or a tuple matching `f`'s output tuple.
  """
  mesh = _active_mesh(batch_size)
  if mesh is None:
    return f
  single = not isinstance(out_specs, tuple)
  specs = (out_specs,) if single else out_specs

  def local(*args):
    outs = f(*args)
    outs = (outs,) if single else outs
    outs = tuple(jax.lax.psum(o, BATCH_AXES) if s is SUM else o for o, s in zip(outs, specs))
    return outs[0] if single else outs

  final = tuple(REPLICATED if s is SUM else s for s in specs)
  # check_vma=False: the ops' scans start from replicated zeros and accumulate per-shard
  # values; the specs above state what is split and what is summed.
  return jax.shard_map(local, mesh=mesh, in_specs=in_specs,
                       out_specs=final[0] if single else final, check_vma=False)
