"""The kernels a model is built with: XLA's own ops, or the CPU fast path.

A model takes a `Kernels` when it is built (`models.create_model(..., kernels=...)`): its
convolution (a drop-in for `lax.conv_general_dilated`, as `nnx.Conv` calls it), its
max-pool and its training-mode BatchNorm. `XLA` is XLA's own ops and lowers for every
platform. `choose` returns the CPU fast path where it applies (the CPU backend, and
`config.model.fast_cpu_ops` allowing it): oneDNN's convolutions as XLA custom calls
(`onednn.py`, built with g++ on first use on x86-64 Linux), convolution and max-pool
gradients written for XLA:CPU (`conv.py`, `pool.py`) and a BatchNorm whose gradient reads
the activations fewer times (`batch_norm.py`), each run per device on a multi-device mesh
(`per_shard.py`). All of them compute XLA's values within float32 rounding (tests).

This package is the only place that knows about the fast path; nothing else imports its
modules. Every jitted function takes its compiler options from `compiler_options()`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx
from jax import lax
from jax.sharding import Mesh

_ON = ('true', 'on', 'yes', '1')
_OFF = ('false', 'off', 'no', '0')


@dataclasses.dataclass(frozen=True, eq=False)
class Kernels:
  """The convolution, max-pool and BatchNorm implementations of one model.

  conv: `lax.conv_general_dilated`'s signature (what `nnx.Conv(conv_general_dilated=...)`
      calls). max_pool: `(x, window, strides, padding) -> y` over H and W of NHWC x.
  batch_norm_train: `(x, scale, bias, epsilon) -> (y, batch mean, batch var)` for float32
      NHWC x in training mode, or None for the plain formula.
  """
  name: str
  conv: Callable
  max_pool: Callable
  batch_norm_train: Callable | None = None


def _xla_max_pool(x: jax.Array, window: int, strides: int, padding='VALID') -> jax.Array:
  return nnx.max_pool(x, (window, window), (strides, strides), padding)


XLA = Kernels('xla', lax.conv_general_dilated, _xla_max_pool)


def wants_fast_path(setting: str | bool, platform: str) -> bool:
  """config.model.fast_cpu_ops for a run on `platform`: 'auto' -> on for 'cpu' only.

  Raises ValueError for a value it does not know, or 'on' for another platform (oneDNN's
  custom calls and the XLA:CPU gradients exist for the CPU backend only).
  """
  if isinstance(setting, str) and setting.strip().lower() in (*_ON, *_OFF, 'auto'):
    value = setting.strip().lower()
    on = platform == 'cpu' if value == 'auto' else value in _ON
  elif isinstance(setting, bool):
    on = setting
  else:
    raise ValueError(f'config.model.fast_cpu_ops must be "auto", True or False, got '
                     f'{setting!r}.')
  if on and platform != 'cpu':
    raise ValueError(f'config.model.fast_cpu_ops={setting!r} asks for the CPU fast path, but '
                     f'this run is on {platform!r}: it exists for the CPU backend only. Use '
                     '"auto" (on for the CPU only) or False.')
  return on


def choose(setting: str | bool, *, platform: str, mesh: Mesh | None = None) -> Kernels:
  """The kernels for a model trained on `platform` over `mesh` (None: one device).

  The fast path's ops run per device on the mesh's batch shards, so a model built with
  them is bound to that mesh; build another for another mesh (or use XLA).
  """
  if not wants_fast_path(setting, platform):
    return XLA
  # pylint: disable=g-import-not-at-top
  from vision_jax.ops import batch_norm, conv, onednn, pool
  use_onednn = onednn.available()
  return Kernels('cpu_onednn' if use_onednn else 'cpu',
                 functools.partial(conv.conv_general_dilated, mesh=mesh, use_onednn=use_onednn),
                 functools.partial(pool.max_pool, mesh=mesh), batch_norm.batch_norm_train)


# XLA:CPU hands convolutions to YNNPACK, which runs a convolution with fewer than 128 input
# channels on one thread, while XLA's own (Eigen) convolution uses every core. The value
# is XLA's default YNNPACK set minus convolutions (the same HLO as
# XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution): dots and
# reductions stay on YNNPACK. Measurements: bench/README.md.
_YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
_YNN_WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


# XLA:CPU removes jax.checkpoint's optimisation barriers before layout assignment, and a
# later CSE pass folds the recomputation back into the forward pass: remat would silently
# do nothing. XLA:GPU and TPU keep the barriers until after scheduling.
_KEEP_REMAT_BARRIERS = {'xla_disable_hlo_passes': 'cse_barrier_expander'}


def compiler_options(remat: bool = False) -> dict[str, str] | None:
  """Compiler options for every jitted step on the default backend (None: XLA's own).

  On the CPU backend: convolutions off YNNPACK (see above), unless XLA_FLAGS chooses the
  YNNPACK fusions itself (the user's choice wins) or this jaxlib rejects the option; with
  `remat` (the step recomputes activations), the barriers that keep it are kept.
  """
  if jax.default_backend() != 'cpu':
    return None
  options = {} if _YNN_OPTION in os.environ.get('XLA_FLAGS', '') else dict(
      _cpu_options_if_supported() or {})
  if remat:
    options |= _KEEP_REMAT_BARRIERS
  return options or None


@functools.cache
def _cpu_options_if_supported() -> dict[str, str] | None:
  options = {_YNN_OPTION: _YNN_WITHOUT_CONVOLUTIONS}
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros(())).compile(options)
  except Exception as e:  # pylint: disable=broad-except  # The error type varies by version.
    logging.warning('XLA:CPU does not accept %s=%s (%s); using its defaults.', _YNN_OPTION,
                    _YNN_WITHOUT_CONVOLUTIONS, e)
    return None
  return options
