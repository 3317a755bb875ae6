"""CPU fast paths for convolution and max-pool gradients (XLA's own ops elsewhere).

`conv.conv_general_dilated` and `pool.max_pool` compute the same values and gradients as
XLA's ops (within float32 rounding) but run the backward pass several times faster on
XLA:CPU. Models switch to them with `create_model(..., fast_cpu_ops=True)`; the training
loop decides with `resolve_fast_cpu_ops(config.model.fast_cpu_ops)`.
"""
from __future__ import annotations

import jax

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
