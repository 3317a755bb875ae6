"""Device mesh, shardings, and moving host batches onto it.

One code path from one CPU to a TPU pod: a `Mesh` with a 'data' axis. The batch is split
over 'data'; parameters and optimiser state are replicated. Because the jitted step sees
one global batch, BatchNorm statistics are global-batch statistics by construction.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vision_jax.config import ConfigError


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A ('data',) mesh over `devices` (default: all), sized by config.mesh.data."""
  devices = list(devices if devices is not None else jax.devices())
  data = config.mesh.data if config.mesh.data != -1 else len(devices)
  if data != len(devices):
    raise ConfigError(f'config.mesh.data={config.mesh.data} does not match the '
                      f'{len(devices)} devices available. Set --config.mesh.data=-1 (all '
                      f'devices) or {len(devices)}.')
  return Mesh(np.asarray(devices).reshape(data), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy rows -> one global array per key, sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def fetch(tree: Any) -> Any:
  """Device arrays -> numpy on this host (fully replicated values only)."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts jax.distributed when there is more than one process to connect.

  Explicit flags win; otherwise JAX's own cluster detection (TPU pods, SLURM, ...) decides.
  On CPU the collectives between processes use gloo.
  """
  if coordinator_address is not None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _in_cluster():
    jax.distributed.initialize()


def _in_cluster() -> bool:
  import os  # pylint: disable=g-import-not-at-top
  if os.environ.get('SLURM_NTASKS', '1') not in ('', '1'):
    return True
  return bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','))
