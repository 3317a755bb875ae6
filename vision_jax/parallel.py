"""Device mesh, shardings, multi-host start-up, and moving host batches onto the mesh.

One code path from one CPU to a TPU pod: a `Mesh` with axes ('data', 'fsdp') sized by
`config.mesh`. The batch is split over *both* axes, so every device computes on its own
slice of the global batch (data parallel over all devices). Parameters and optimiser
state are replicated, or with fsdp > 1 each large leaf is split along its largest
dimension divisible by the fsdp size (the rule of big_vision's `fsdp` sharding); XLA then
gathers parameters for the forward pass and reduce-scatters the gradients. Because the
jitted step sees one global batch, BatchNorm statistics are global-batch statistics by
construction, whatever the mesh.
"""
from __future__ import annotations

import os
import secrets
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vision_jax.config import ConfigError
from vision_jax.errors import UserError

AXES = ('data', 'fsdp')


class DistributedError(UserError):
  """Multi-host start-up that cannot work; the message says what to pass instead."""


# ----------------------------------------------------------------------------- the mesh

def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes from config.mesh for `num_devices`; -1 takes the remaining devices.

  Pure arithmetic (no devices touched), so config validation can call it before anything
  is compiled. Raises ConfigError naming the numbers to change.
  """
  sizes = {'data': mesh_config.data, 'fsdp': mesh_config.get('fsdp', 1)}
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

  With several processes the devices are ordered by process, so each process owns one
  contiguous block of every global batch, in process order: the block the input pipeline
  (`HostShard`) reads. The global batch is then the same for any number of processes.
  Within one process the order follows the physical topology (matters on TPU).
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(config.mesh, len(devices))
  if len({d.process_index for d in devices}) > 1:
    grid = np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id))).reshape(shape)
  else:
    try:
      grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):  # Shapes it has no layout for.
      grid = np.asarray(devices).reshape(shape)
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
  min_bytes = config.mesh.get('fsdp_min_mib', 4.0) * 2**20
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

  Each process passes its contiguous block of the global batch (see `make_mesh`).
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:  # Local rows are the global batch: one cheaper transfer.
    return jax.device_put(batch, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def steps_ahead() -> int:
  """How many dispatched steps may run beyond the one a loop waits for.

  One keeps the device busy while the host reads the next batch and logs the last. None
  with XLA:CPU over several devices: its collectives could deadlock with steps in flight
  (shared/DESIGN.md).
  """
  return 0 if jax.default_backend() == 'cpu' and jax.device_count() > 1 else 1


def step_input(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """What a jitted step (with batch_sharding as in_shardings) is given for a batch.

  With one process the host rows are the global batch and go in as numpy: jit moves them
  itself, which slowed a running step less than a separate `device_put` (1.00 vs 1.03 on
  the digits step, bench/README.md "Loop overhead"). With several, global arrays.
  """
  if jax.process_count() == 1:
    return batch
  return to_global(batch, mesh)


def fetch(tree: Any) -> Any:
  """Device arrays -> numpy on this host (fully replicated values only).

  On CPU the values already sit in host memory and are read as they are: `device_get`'s
  async copy per array made fetching 50 steps' metrics 7x slower (1.07 vs 0.14 ms).
  Elsewhere all copies are started before any is waited for.
  """
  if jax.default_backend() != 'cpu':
    tree = jax.device_get(tree)
  return jax.tree.map(np.asarray, tree)


# --------------------------------------------------------------------------- multi-host

def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts jax.distributed when there is more than one process to connect.

  Explicit flags win (all three together; what launch/local.sh passes). Otherwise JAX's
  own cluster detection runs when a multi-process launcher is recognised: a SLURM step
  with several tasks, Open MPI, a TPU slice that lists its workers, or
  VISION_JAX_DISTRIBUTED=1 (what launch/tpu_vm_pod.sh sets on Cloud TPU VMs). Must run
  before anything touches a device. Collectives between CPU processes use gloo.
  """
  explicit = {'--coordinator_address': coordinator_address, '--num_processes': num_processes,
              '--process_id': process_id}
  given = [k for k, v in explicit.items() if v is not None]
  if given and len(given) < 3:
    missing = [k for k in explicit if k not in given]
    raise DistributedError(f'{", ".join(given)} given without {", ".join(missing)}. Pass '
                           'all three to start processes by hand (launch/local.sh does), or '
                           'none and let a launcher (SLURM, TPU pod) provide them.')
  if given:
    if not 0 <= process_id < num_processes:
      raise DistributedError(f'--process_id={process_id} must be in [0, --num_processes='
                             f'{num_processes}).')
  elif not _launched_multiprocess():
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info('jax.distributed: process %d of %d.', jax.process_index(),
               jax.process_count())


def _launched_multiprocess() -> bool:
  env = os.environ
  forced = env.get('VISION_JAX_DISTRIBUTED', '')
  if forced in ('0', '1'):
    return forced == '1'
  if 'SLURM_JOB_ID' in env and 'SLURM_STEP_NODELIST' in env:  # Inside srun, not sbatch.
    return int(env.get('SLURM_STEP_NUM_TASKS', env.get('SLURM_NTASKS', '1')) or 1) > 1
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return True
  workers = env.get('TPU_PROCESS_ADDRESSES') or env.get('TPU_WORKER_HOSTNAMES') or ''
  return ',' in workers or bool(env.get('MEGASCALE_COORDINATOR_ADDRESS'))


def check_shared_workdir(workdir: str) -> None:
  """Every process must see the same workdir, or checkpointing hangs or forks the run.

  Orbax writes one checkpoint from all processes into one directory and each process lists
  that directory to resume. On per-host disks the processes would disagree about the
  latest step. Process 0 writes a token; every process reads it; all agree or all stop.
  """
  if jax.process_count() == 1:
    return
  token = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))
  path = os.path.join(workdir, f'.shared_check_{token}')
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      f.write(str(token))
  multihost_utils.sync_global_devices('vision_jax: shared workdir token written')
  try:
    with open(path) as f:
      seen = f.read() == str(token)
  except OSError:
    seen = False
  seen_by = np.asarray(multihost_utils.process_allgather(np.int32(seen))).reshape(-1)
  if jax.process_index() == 0:
    os.remove(path)
  blind = [i for i, ok in enumerate(seen_by) if not ok]
  if blind:
    raise DistributedError(
        f'--workdir={workdir} is not shared between the processes: process(es) '
        f'{", ".join(map(str, blind))} cannot see what process 0 writes there. Every '
        'process saves and restores the same checkpoints, so put the workdir on a '
        'filesystem all hosts mount (NFS, Filestore, a gcsfuse-mounted bucket).')
