"""Run a fast op on each device's share of the batch (`shard_map`), not on the global batch.

Under `jax.jit` with a batch split over several devices, XLA's partitioner cannot keep the
fast ops' reshapes and custom calls local and gathers the whole batch onto every device.
Inside `shard_map` every op sees its local batch, and a weight gradient is one `psum`.
The ops call `per_shard(f, mesh, ...)` with the mesh their model was built for
(`ops.choose`); without a mesh, or with one shard, `f` runs as it is.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

# The mesh axes the training loop splits the batch over (vision_jax.parallel.AXES; a test
# checks they agree). Kept here so that the ops do not import the training code.
BATCH_AXES = ('data', 'fsdp')
BATCH = P(BATCH_AXES)
REPLICATED = P()
SUM = object()  # Output spec: partial sums, one per shard, summed over them (`psum`).


def _shards(mesh: Mesh | None, batch_size: int) -> int:
  if mesh is None or not set(BATCH_AXES) <= set(mesh.axis_names):
    return 1
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  return shards if batch_size % shards == 0 else 1  # Indivisible: run on the global batch.


def per_shard(f: Callable[..., Any], mesh: Mesh | None, batch_size: int, in_specs: tuple,
              out_specs: Any) -> Callable[..., Any]:
  """`f` mapped over the batch shards of `mesh`, or `f` itself with nothing to split.

  Specs: `BATCH` (split along axis 0), `REPLICATED`, or for outputs `SUM`: each shard
  returns a partial sum (e.g. a weight gradient over its examples), summed over the shards.
  `out_specs` is one spec for a single output or a tuple matching `f`'s output tuple.
  """
  if _shards(mesh, batch_size) == 1:
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
