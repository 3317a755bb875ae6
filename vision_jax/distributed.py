"""Multi-host start-up: `jax.distributed`, and the check that every host sees one workdir.

The same command runs on every host. `initialize_distributed` connects the processes
before anything touches a device; `check_shared_workdir` then makes sure the workdir is
one directory for all of them (orbax saves and restores one checkpoint from every
process).
"""
from __future__ import annotations

import importlib.util
import os
import secrets

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vision_jax.errors import UserError


class DistributedError(UserError):
  """Multi-host start-up that cannot work; the message says what to pass instead."""


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
  if cpu_only_run():  # Collectives between CPU processes; GPUs and TPUs bring their own.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info('jax.distributed: process %d of %d.', jax.process_index(),
               jax.process_count())


_ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                        'jax_rocm7_plugin', 'libtpu')


def cpu_only_run(platforms: str | None = None) -> bool:
  """Whether this process will run on the CPU backend, decided before JAX starts one.

  `platforms` (default: jax.config's jax_platforms, i.e. JAX_PLATFORMS) naming only 'cpu'
  says so; unset, a run is on the CPU when no GPU or TPU plugin is installed (JAX would
  pick an accelerator).
  """
  if platforms is None:
    platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return {p.strip() for p in platforms.split(',') if p.strip()} <= {'cpu'}
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


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
