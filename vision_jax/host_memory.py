"""Host memory: keep what the process frees, instead of page-faulting it back every step.

XLA:CPU allocates an executable's scratch buffer with `malloc` on every run and frees it
after: 1.29 GB for a CIFAR ResNet-18 train step at batch 128. glibc serves a block that
large from a worker thread's arena with a fresh `mmap` and unmaps it on `free`, so every
step page-faults its whole working set again (315,000 faults and ~0.5 s of kernel time per
step on the 2-core development VM; bench/README.md). PyTorch's CPU allocator does the same.

`keep_freed_memory()` tells glibc to serve every thread from one heap that it never hands
back to the kernel, so the next step reuses pages already mapped. Costs: the process keeps
its peak host memory until it exits (as a caching allocator does), and its threads share
one malloc lock. Measured on 2 cores: ResNet-18 at batch 128 ~10% faster, the digits
default run (7 ms steps, many small buffers) ~5% slower; many-threaded input pipelines
(JPEG decoding on a TPU host) would contend more. Hence opt-in: `vision_jax.main
--keep_host_memory` calls it first thing, before any other thread allocates.
"""
from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters (glibc malloc.h), each with the value set and why.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = (
    (_M_ARENA_MAX, 1),        # One heap for all threads: big blocks come from it,
    (_M_MMAP_MAX, 0),         # never from a private mmap that free() unmaps,
    (_M_TRIM_THRESHOLD, -1),  # and free() never shrinks it (glibc stores the value as a
                              # size_t, so -1 means no threshold; INT_MAX would be 2 GiB).
)


def keep_freed_memory() -> bool:
  """Configures glibc malloc as above; False (and nothing changed) off Linux/glibc."""
  if not sys.platform.startswith('linux'):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt  # The C library this process already runs on.
  except (OSError, AttributeError):  # A libc without mallopt.
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
