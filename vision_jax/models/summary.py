"""A parameter overview for any NNX model: one row per trainable array, a total at the end.

Works on abstract models from `nnx.eval_shape` too (shapes only, nothing allocated), so a
run can log the overview of a model before it is initialised on devices.
"""
from __future__ import annotations

import math

import numpy as np
from flax import nnx


def _rows(model: nnx.Module, kind=nnx.Param) -> list[tuple[str, tuple[int, ...], str, int]]:
  rows = []
  for path, variable in nnx.to_flat_state(nnx.state(model, kind)):
    value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
    shape = tuple(value.shape)
    rows.append(('/'.join(str(p) for p in path), shape, str(np.dtype(value.dtype)),
                 math.prod(shape)))
  return rows


def count_params(model: nnx.Module) -> int:
  """Number of trainable scalars (`nnx.Param`): BatchNorm running statistics excluded."""
  return sum(row[3] for row in _rows(model))


def parameter_overview(model: nnx.Module) -> str:
  """A table of path | shape | dtype | count for every `nnx.Param`, then the totals."""
  rows = [(path, str(shape), dtype, f'{count:,}') for path, shape, dtype, count in
          _rows(model)]
  header = ('path', 'shape', 'dtype', 'count')
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

  def line(cells) -> str:
    return ' | '.join(c.rjust(w) if i == 3 else c.ljust(w)
                      for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  rule = '-+-'.join('-' * w for w in widths)
  total = count_params(model)
  param_bytes = sum(count * np.dtype(dtype).itemsize for _, _, dtype, count in _rows(model))
  stats = sum(row[3] for row in _rows(model, nnx.BatchStat))
  lines = [line(header), rule, *(line(r) for r in rows), rule,
           f'Total: {total:,} trainable parameters ({param_bytes / 2**20:.1f} MiB)']
  if stats:
    lines.append(f'Plus {stats:,} BatchNorm statistics (not trained).')
  return '\n'.join(lines)
