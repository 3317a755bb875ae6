"""oneDNN's convolutions as XLA:CPU custom calls, compiled on first use.

XLA:CPU's own convolution limits a CPU ResNet step; oneDNN (the library PyTorch's CPU
convolutions call) is faster for the forward pass and both gradients (bench/README.md).
`onednn_conv.cc` wraps oneDNN's forward, input-gradient and weight-gradient convolutions as
XLA FFI handlers; `ops.conv` calls them from its custom VJP when `available()`.

Where it comes from: the `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` wheels
(requirements.txt, x86-64 Linux) for the library and its headers, jaxlib's FFI headers,
and the system C++ compiler (`$CXX`, else g++). The shared library is built once per
source/jaxlib/oneDNN combination into `$VISION_JAX_CACHE` (default ~/.cache/vision_jax),
~3 s. Anything missing: one warning, and XLA's convolutions as before (same results within
float32 rounding). `VISION_JAX_ONEDNN=0` turns it off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import site
import subprocess
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

Pads = tuple[tuple[int, int], tuple[int, int]]

_SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')
_TARGETS = {'forward': 'VjConvForward', 'input_grad': 'VjConvInputGrad',
            'weight_grad': 'VjConvWeightGrad'}
_PREFIX = 'vision_jax_onednn_'  # Names registered with XLA.


class Unavailable(RuntimeError):
  """Why oneDNN's convolutions cannot be used here (the message says how to get them)."""


def _dnnl_prefix() -> pathlib.Path:
  """The installation prefix holding include/dnnl.hpp and lib/libdnnl.so (the wheels')."""
  for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, site.getuserbase()]):
    root = pathlib.Path(prefix)
    if (root / 'include' / 'dnnl.hpp').exists() and list((root / 'lib').glob('libdnnl.so*')):
      return root
  raise Unavailable('oneDNN was not found (include/dnnl.hpp and lib/libdnnl.so under '
                    f'{sys.prefix}): pip install -r requirements.txt installs it '
                    '(onednn-cpu-gomp, onednn-devel-cpu-gomp).')


def _build() -> pathlib.Path:
  """The compiled handlers (built now unless this exact build is cached)."""
  if platform.system() != 'Linux' or platform.machine() not in ('x86_64', 'AMD64'):
    raise Unavailable(f'the oneDNN wheels are for x86-64 Linux, not {platform.machine()} '
                      f'{platform.system()}.')
  prefix = _dnnl_prefix()
  compiler = shutil.which(os.environ.get('CXX', 'g++'))
  if not compiler:
    raise Unavailable('no C++ compiler to build the oneDNN bridge: install g++ (or set '
                      'CXX).')
  source = _SOURCE.read_bytes()
  key = hashlib.sha256(b'|'.join([source, jax.__version__.encode(), str(prefix).encode(),
                                  compiler.encode()])).hexdigest()[:16]
  cache = pathlib.Path(os.environ.get('VISION_JAX_CACHE',
                                      pathlib.Path.home() / '.cache' / 'vision_jax'))
  out = cache / f'onednn_conv-{key}.so'
  if out.exists():
    return out
  cache.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(f'.{os.getpid()}.tmp')  # Renamed when complete: safe in parallel.
  lib = prefix / 'lib'
  cmd = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', str(_SOURCE),
         f'-I{prefix / "include"}', f'-I{jax.ffi.include_dir()}', f'-L{lib}', '-ldnnl',
         f'-Wl,-rpath,{lib}', '-o', str(tmp)]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise Unavailable(f'building the oneDNN bridge failed: {e}') from e
  if done.returncode:
    tmp.unlink(missing_ok=True)
    raise Unavailable(f'building the oneDNN bridge failed ({" ".join(cmd)}):\n'
                      f'{done.stderr[-2000:]}')
  os.replace(tmp, out)
  return out


@functools.cache
def _load() -> str:
  """Builds, loads and registers the handlers; '' when unavailable, else the .so path."""
  if os.environ.get('VISION_JAX_ONEDNN', '1').strip().lower() in ('0', 'off', 'false', 'no'):
    return ''
  try:
    path = _build()
    library = ctypes.cdll.LoadLibrary(str(path))
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(_PREFIX + name, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform='cpu')
  except (Unavailable, OSError, AttributeError) as e:
    logging.warning('oneDNN convolutions unavailable, using XLA:CPU\'s (same results, '
                    'slower): %s Set VISION_JAX_ONEDNN=0 to skip this check.', e)
    return ''
  logging.info('oneDNN convolutions: %s', path)
  return str(path)


def available() -> bool:
  """Whether the convolutions below can run (on the CPU backend, float32)."""
  return jax.default_backend() == 'cpu' and bool(_load())


def _call(target: str, out_shape: Sequence[int], a: jax.Array, b: jax.Array,
          strides: tuple[int, int], pads: Pads) -> jax.Array:
  (pt, pb), (pl, pr) = pads
  call = jax.ffi.ffi_call(_PREFIX + target, jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32),
                          vmap_method='sequential')
  return call(a, b, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt),
              pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr))


def output_hw(x_shape: Sequence[int], kernel_hw: Sequence[int], strides: tuple[int, int],
              pads: Pads) -> tuple[int, int]:
  """(Ho, Wo) of a convolution of NHWC `x_shape` with explicit (low, high) `pads`."""
  return tuple((x_shape[1 + i] + sum(pads[i]) - kernel_hw[i]) // strides[i] + 1
               for i in range(2))


def forward(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
  """NHWC x HWIO -> NHWC, float32; equals lax.conv_general_dilated within rounding."""
  ho, wo = output_hw(x.shape, w.shape[:2], strides, pads)
  return _call('forward', (x.shape[0], ho, wo, w.shape[3]), x, w, strides, pads)


def input_grad(dy: jax.Array, w: jax.Array, x_shape: Sequence[int],
               strides: tuple[int, int], pads: Pads) -> jax.Array:
  """dL/dx of `forward` for output gradient dy."""
  return _call('input_grad', x_shape, dy, w, strides, pads)


def weight_grad(x: jax.Array, dy: jax.Array, w_shape: Sequence[int],
                strides: tuple[int, int], pads: Pads) -> jax.Array:
  """dL/dw (HWIO) of `forward` for output gradient dy."""
  return _call('weight_grad', w_shape, x, dy, strides, pads)
