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
