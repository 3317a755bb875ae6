"""The backend JAX_PLATFORMS asks for, started once before anything else touches JAX.

`JAX_PLATFORMS=gpu` (or cuda, rocm, tpu) on a machine without that accelerator, or without
the jaxlib plugin that drives it, fails inside JAX's backend start-up with a traceback; the
run then says in one paragraph which backend is missing and how to get it.
"""
from __future__ import annotations

import os

from vision_jax.errors import UserError

# What to install for each backend JAX_PLATFORMS can name.
_INSTALL = {
    'gpu': 'an NVIDIA GPU with its driver, and JAX\'s CUDA plugin: pip install -U '
           '"jax[cuda12]"',
    'cuda': 'an NVIDIA GPU with its driver, and JAX\'s CUDA plugin: pip install -U '
            '"jax[cuda12]"',
    'rocm': 'an AMD GPU with ROCm, and JAX\'s ROCm plugin (see the JAX installation guide, '
            'https://docs.jax.dev/en/latest/installation.html)',
    'tpu': 'a Cloud TPU VM, and JAX\'s TPU runtime: pip install -U "jax[tpu]"',
}


class PlatformError(UserError):
  """The backend JAX_PLATFORMS names cannot be started here."""


def check() -> None:
  """Starts JAX's backends; raises PlatformError naming the missing one and the fix."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.devices()
  except (RuntimeError, AssertionError, ValueError) as e:
    asked = os.environ.get('JAX_PLATFORMS', '') or jax.config.jax_platforms or ''
    names = [p.strip() for p in str(asked).split(',') if p.strip()]
    missing = next((p for p in names if p != 'cpu'), names[0] if names else 'default')
    detail = ' '.join(str(e).split(' (set JAX_PLATFORMS=')[0].split())[:300]
    # JAX's own line can be about another backend it tried (gpu -> rocm): shown only if
    # it is about this one.
    detail = f' ({detail})' if f"'{missing}'" in detail else ''
    need = _INSTALL.get(missing, f'the jaxlib plugin of the {missing!r} backend')
    raise PlatformError(
        f'JAX_PLATFORMS={asked} asks for the {missing!r} backend, which JAX cannot start on '
        f'this machine{detail}. It needs {need}. To run on the CPU instead, unset '
        'JAX_PLATFORMS or set JAX_PLATFORMS=cpu.') from e
