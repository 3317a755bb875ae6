"""The machine a run starts on, checked before anything slow: paths it reads data from
and the process's open-file limit.

* The tfds data directory (`config.dataset.data_dir`, else $TFDS_DATA_DIR, else
  ~/tensorflow_datasets) must be a directory, or creatable: a path that is a file, or lies
  under one, is refused in one paragraph naming the variable it came from.
* Input worker processes hand batches over through shared memory and pipes, each an open
  file: with a low soft limit (`ulimit -Sn 64`) a run with workers fails at its first
  batch. The soft limit is raised to the hard limit (at most `WANTED_NOFILE`), which any
  process may do; a hard limit that is still low is left as it is, and running out is
  reported in one paragraph (outputs.explain) when it happens.
"""
from __future__ import annotations

import os
import resource

from absl import logging

from vision_jax.errors import UserError

WANTED_NOFILE = 4096


class HostError(UserError):
  """A machine setting the run cannot work with; the message names it and the fix."""


def data_dir(config) -> tuple[str, str]:
  """(the tfds data directory a run reads, what set it)."""
  if config.dataset.get('data_dir'):
    return config.dataset.data_dir, 'config.dataset.data_dir'
  if os.environ.get('TFDS_DATA_DIR'):
    return os.environ['TFDS_DATA_DIR'], 'TFDS_DATA_DIR'
  return os.path.expanduser('~/tensorflow_datasets'), 'the default (~/tensorflow_datasets)'


def check_data_dir(config) -> None:
  """Refuses a tfds data directory that is a file or lies under one (folder datasets
  do not use it)."""
  if str(config.dataset.get('name', '')).startswith('folder:'):
    return
  path, source = data_dir(config)
  if '://' in path:  # gs://, s3://: not a local path.
    return
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise HostError(f'The tfds data directory {path} (from {source}) is a file, not '
                            'a directory. Point it at a directory (it is created if '
                            'missing), e.g. export TFDS_DATA_DIR=~/tensorflow_datasets.')
  parent = os.path.dirname(path)
  while parent and not os.path.exists(parent) and os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
  if parent and os.path.exists(parent) and not os.path.isdir(parent):
    raise HostError(f'The tfds data directory {path} (from {source}) lies under '
                            f'{parent}, which is a file, so it cannot be created. Point it at '
                            'a directory, e.g. export TFDS_DATA_DIR=~/tensorflow_datasets.')


def raise_open_file_limit() -> None:
  """Raises the soft open-file limit towards the hard one (module docstring)."""
  try:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  except (ValueError, OSError):
    return
  target = WANTED_NOFILE if hard == resource.RLIM_INFINITY else min(hard, WANTED_NOFILE)
  if soft != resource.RLIM_INFINITY and soft < target:
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
      logging.info('Raised the open-file limit from %d to %d (the hard limit allows it).',
                   soft, target)
    except (ValueError, OSError):
      pass


def check(config) -> None:
  """Every check of this module, for a run about to read data."""
  raise_open_file_limit()
  check_data_dir(config)
