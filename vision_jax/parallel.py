"""Device mesh, shardings, and moving host batches onto the mesh.

One code path from one CPU to a TPU pod: a `Mesh` with axes ('data', 'fsdp') sized by
`config.mesh`. The batch is split over *both* axes, so every device computes on its own
slice of the global batch (data parallel over all devices). Parameters and optimiser
state are replicated, or with fsdp > 1 each large leaf is split along its largest
dimension divisible by the fsdp size (the rule of big_vision's `fsdp` sharding); XLA then
gathers parameters for the forward pass and reduce-scatters the gradients. Because the
jitted step sees one global batch, BatchNorm statistics are global-batch statistics by
construction, whatever the mesh. Multi-host start-up is in distributed.py.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vision_jax.errors import ConfigError

AXES = ('data', 'fsdp')


# ----------------------------------------------------------------------------- the mesh

def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes from config.mesh for `num_devices`; -1 takes the remaining devices.

  Pure arithmetic (no devices touched), so config validation can call it before anything
  is compiled. Raises ConfigError naming the numbers to change.
  """
  sizes = {'data': mesh_config.data, 'fsdp': mesh_config.fsdp}
  for name, value in sizes.items():
    if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
      raise ConfigError(f'config.mesh.{name} must be a positive integer or -1 (all remaining '
                        f'devices), got {value!r}.')
  if sizes['data'] == -1 and sizes['fsdp'] == -1:
    raise ConfigError('config.mesh.data and config.mesh.fsdp are both -1; at most one axis can '
                      'take "all remaining devices". Set --config.mesh.fsdp=1 (pure data '
                      'parallel) or give one of them a size.')
  fixed = sizes['fsdp'] if sizes['data'] == -1 else sizes['data']
  if -1 in sizes.values():
    if num_devices % fixed:
      free = 'data' if sizes['data'] == -1 else 'fsdp'
      other = 'fsdp' if free == 'data' else 'data'
      raise ConfigError(
          f'config.mesh.{other}={fixed} does not divide the {num_devices} devices, so '
          f'config.mesh.{free}=-1 cannot take the rest. Use a divisor of {num_devices} for '
          f'config.mesh.{other} ({", ".join(map(str, _divisors(num_devices)))}).')
    sizes = {k: (num_devices // fixed if v == -1 else v) for k, v in sizes.items()}
  if sizes['data'] * sizes['fsdp'] != num_devices:
    raise ConfigError(
        f'config.mesh.data={sizes["data"]} x config.mesh.fsdp={sizes["fsdp"]} = '
        f'{sizes["data"] * sizes["fsdp"]} devices, but {num_devices} are available. The '
        f'product must equal the device count: set --config.mesh.data=-1 to use all '
        f'remaining devices, or sizes whose product is {num_devices}.')
  return sizes['data'], sizes['fsdp']


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all), sized by config.mesh.

  Devices are laid out by `jax.make_mesh` (topology-aware on TPU). With
  `config.mesh.slices` > 1 (a multi-slice TPU job) the data axis is laid over the slices
  with `mesh_utils.create_hybrid_device_mesh`: gradients are reduced over the slow
  data-centre network once per step, everything else stays inside a slice. With several
  processes each process must own one contiguous block of every global batch, in process
  order (the block the input pipeline's `HostShard` reads, so that the global batch is
  the same for any number of processes): where the topology-aware order interleaves
  processes, devices are regrouped by process, keeping their order within each.
  """
  devices = list(devices if devices is not None else jax.devices())
  data, fsdp = mesh_shape(config.mesh, len(devices))
  slices = config.mesh.slices
  if slices > 1:
    if not all(hasattr(d, 'slice_index') for d in devices):
      raise ConfigError(f'config.mesh.slices={slices}, but these {devices[0].platform} '
                        'devices have no slice index (a multi-slice TPU job has). Use '
                        'config.mesh.slices=1.')
    if data % slices:
      raise ConfigError(f'config.mesh.slices={slices} does not divide config.mesh.data='
                        f'{data}: the data axis is laid over the slices.')
    grid = mesh_utils.create_hybrid_device_mesh((data // slices, fsdp), (slices, 1), devices)
  elif len(devices) == len(jax.devices()):
    grid = jax.make_mesh((data, fsdp), AXES, devices=devices).devices
  else:  # A subset (tests, inference on one device): as given.
    grid = np.asarray(devices).reshape(data, fsdp)
  flat = list(grid.reshape(-1))
  owners = [d.process_index for d in flat]
  if owners != sorted(owners):
    flat = sorted(flat, key=lambda d: d.process_index)  # Stable: keeps the order within.
    grid = np.asarray(flat).reshape(data, fsdp)
  return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device: both mesh axes."""
  return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# ----------------------------------------------------------------------- state shardings

def fsdp_spec(shape: tuple[int, ...], nbytes: int, fsdp: int, min_bytes: float) -> P:
  """The FSDP rule for one array: split its largest dimension divisible by `fsdp`.

  Arrays under `min_bytes` stay replicated (gathering them costs more than storing them),
  as do arrays with no dimension divisible by `fsdp`. Ties go to the last dimension
  (output features for kernels).
  """
  if fsdp == 1 or nbytes < min_bytes:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], -d)):
    if shape[dim] % fsdp == 0:
      return P(*([None] * dim + ['fsdp']))
  return P()


def _nbytes(x) -> int:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return 0  # RNG keys are tiny and opaque: never sharded.
  return int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize


def state_shardings(abstract_state: Any, mesh: Mesh,
                    config: ml_collections.ConfigDict) -> Any:
  """A NamedSharding for every leaf of `abstract_state` (from jax.eval_shape).

  The same rule covers parameters, optimiser moments (same shapes, so sharded alike),
  BatchNorm statistics and counters (small: replicated).
  """
  fsdp = mesh.shape['fsdp']
  min_bytes = config.mesh.fsdp_min_mib * 2**20
  specs = jax.tree.map(lambda x: fsdp_spec(x.shape, _nbytes(x), fsdp, min_bytes),
                       abstract_state)
  if fsdp > 1:
    leaves = jax.tree.leaves(abstract_state)
    flat = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
    sharded = [x for x, s in zip(leaves, flat) if s != P()]
    total = sum(map(_nbytes, leaves))
    per_device = total - sum(map(_nbytes, sharded)) * (1 - 1 / fsdp)
    logging.info('FSDP over %d devices: %d of %d state arrays sharded; state per device '
                 '%.1f MiB of %.1f MiB.', fsdp, len(sharded), len(leaves),
                 per_device / 2**20, total / 2**20)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda s: isinstance(s, P))


# ----------------------------------------------------------------------- host <-> device

def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy rows -> one global array per key, split over every device.

  Each process passes its contiguous block of the global batch (see `make_mesh`). The
  transfer is asynchronous: the arrays can be handed to a step before they arrive.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:  # Local rows are the global batch: one cheaper transfer.
    return jax.device_put(batch, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def fetch(tree: Any) -> Any:
  """Fully replicated device arrays -> numpy on this host (all copies started first)."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def steps_ahead() -> int:
  """How many dispatched steps a loop lets run beyond the one it waits for.

  One keeps the device busy while the host reads the next batch and logs the last. None
  with XLA:CPU over several devices: its collectives could deadlock with steps queued
  (DESIGN.md).
  """
  return 0 if jax.default_backend() == 'cpu' and jax.device_count() > 1 else 1
