"""CPU fast paths for convolution, max-pool and BatchNorm gradients (XLA's own ops elsewhere).

`conv.conv_general_dilated` and `pool.max_pool` compute the same values and gradients as
XLA's ops (within float32 rounding) but run the backward pass several times faster on
XLA:CPU; `batch_norm.batch_norm_train` is training-mode BatchNorm with a gradient that
reads the activations fewer times than autodiff's. Models switch to them with
`create_model(..., fast_cpu_ops=True)`; the training
loop decides with `resolve_fast_cpu_ops(config.model.fast_cpu_ops)`. Every step jitted on
the CPU backend also compiles with `cpu_compiler_options()` (multi-threaded convolutions).
On x86-64 Linux the convolutions themselves are oneDNN's (`onednn.py`, built with g++ on
first use; `VISION_JAX_ONEDNN=0` turns it off), the library PyTorch's CPU convolutions use.
"""
from __future__ import annotations

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp

_ON = ('true', 'on', 'yes', '1')
_OFF = ('false', 'off', 'no', '0')


def resolve_fast_cpu_ops(setting: str | bool) -> bool:
  """'auto' -> on iff the default backend is the CPU; True/False (or 'on'/'off') as given.

  Off on GPU/TPU under 'auto' because there XLA's own gradients are fast and cuDNN/TPU
  convolutions would lose to per-tap matmuls.
  """
  if isinstance(setting, bool):
    return setting
  if isinstance(setting, str):
    value = setting.strip().lower()
    if value == 'auto':
      return jax.default_backend() == 'cpu'
    if value in _ON:
      return True
    if value in _OFF:
      return False
  raise ValueError(f'config.model.fast_cpu_ops must be "auto", True or False, got '
                   f'{setting!r}.')


# XLA:CPU (jaxlib 0.10.2) hands convolutions to YNNPACK, which runs a convolution with fewer
# than 128 input channels on one thread; XLA's own (Eigen) convolution uses every core: 3x3
# 64->64 on 128x32x32 77 -> 37 ms, the 3->64 stem 16 -> 3 ms, none slower (bench/README).
# The value is XLA's default YNNPACK set minus convolutions (the compiled HLO is identical
# to XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution): dots and
# reductions stay on YNNPACK, where they are fastest.
_YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
_YNN_WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


def cpu_compiler_options() -> dict[str, str] | None:
  """Compiler options for every jitted step on the CPU backend; None elsewhere.

  Also None when XLA_FLAGS chooses the YNNPACK fusions itself (the user's choice wins) or
  this jaxlib rejects the option (XLA's defaults are correct, only slower).
  """
  if jax.default_backend() != 'cpu' or _YNN_OPTION in os.environ.get('XLA_FLAGS', ''):
    return None
  return _cpu_options_if_supported()


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
