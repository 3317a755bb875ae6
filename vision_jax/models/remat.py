"""Activation rematerialisation per residual block (`config.model.remat`).

Training keeps every activation of the forward pass for the backward pass; for a ResNet at
224 px that, not the weights, is what fills a GPU's memory. With remat each residual block
runs under `nnx.remat` (jax.checkpoint): the backward pass recomputes the block's
activations from its input instead of reading them from memory, so only the blocks'
inputs stay alive between the passes. It costs about one more forward pass of the blocks
per step and buys a larger batch per device.

Settings: 'none' (default), 'blocks' (save nothing inside a block), or the name of a plain
`jax.checkpoint_policies` policy, which decides what inside a block is still saved. JAX's
dot policies look at `dot_general` only: a convolution is not a dot, so for these CNNs
'dots_saveable' and its kin save about as little as 'blocks'.

BatchNorm statistics are mutated inside the rematerialised block; `nnx.remat` carries that
update out of the forward pass once (the recomputation in the backward pass updates
nothing), so they equal those of a step without remat (tested). Dropout draws the same
mask in the recomputation: its key is part of the block's input state.

XLA:CPU removes jax.checkpoint's optimisation barriers early (before layout assignment)
and a later CSE pass then merges the recomputation back into the forward pass: on the CPU
backend remat changes nothing unless the step is compiled with
`ops.compiler_options(remat=True)`, which keeps them (steps.jit_train_step does). XLA:GPU
removes them only after scheduling, so there remat works as written.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
from flax import nnx

from vision_jax.errors import ConfigError

# Policies usable by name: those that are a policy themselves (not a factory of one that
# takes names or offload targets). Filtered by what this jax has.
_POLICY_NAMES = ('nothing_saveable', 'everything_saveable', 'dots_saveable',
                 'checkpoint_dots', 'dots_with_no_batch_dims_saveable',
                 'checkpoint_dots_with_no_batch_dims')


def allowed() -> tuple[str, ...]:
  """Every value `config.model.remat` accepts."""
  return ('none', 'blocks') + tuple(
      n for n in _POLICY_NAMES if hasattr(jax.checkpoint_policies, n))


def check(remat: str) -> str:
  """`remat` if it is a known setting; raises ConfigError naming the allowed ones."""
  if not isinstance(remat, str) or remat not in allowed():
    raise ConfigError(
        f'config.model.remat={remat!r} is not a rematerialisation setting. Use one of '
        f'{", ".join(allowed())}: "none" keeps every activation, "blocks" recomputes each '
        'residual block in the backward pass, a jax.checkpoint_policies name also decides '
        'what inside a block is saved.')
  return remat


def _policy(remat: str) -> Callable[..., bool] | None:
  return None if remat == 'blocks' else getattr(jax.checkpoint_policies, remat)


def run_blocks(blocks: Iterable[nnx.Module], x: jax.Array, remat: str,
               *args: Any) -> jax.Array:
  """`x = block(x, *args)` for each block in turn, each under `nnx.remat` unless remat is
  'none'. `args` are Python values (e.g. `train`), constant for the trace."""
  if remat == 'none':
    for block in blocks:
      x = block(x, *args)
    return x
  call = nnx.remat(lambda block, x: block(x, *args), policy=_policy(remat))
  for block in blocks:
    x = call(block, x)
  return x
