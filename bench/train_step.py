"""Train-step throughput, side by side: our jitted JAX step vs a PyTorch twin.

For each model, these contenders run the same architecture, batch, loss (softmax
cross-entropy) and optimiser (SGD, momentum 0.9, fp32) on the same number of threads:
  ours       the training loop's own jitted step (`steps.jit_train_step`, SGD with
             momentum, constant lr) on the CPU fast path (`config.model.fast_cpu_ops`):
             oneDNN's convolutions where built (vision_jax/ops/onednn.py), our gradients
             around them, BatchNorm with its hand-written gradient (ops/batch_norm.py)
  ours_plain_bn  the same with BatchNorm's plain formula (autodiff), to show what that is worth
  ours_eigen the fast path without oneDNN (XLA's convolutions, our gradients)
  ours_xla   the same step on XLA's own ops (what a GPU or TPU runs)
  torch_cl   PyTorch, channels_last (the faster PyTorch layout on CPU: the reference)
  torch      PyTorch, NCHW
They run interleaved in one process (round r runs every contender for `--steps` steps) so
that all of them see the same machine load; each figure is the median over rounds. Mind the
load printed with each round: with other processes on the cores, PyTorch's OpenMP threads
slow down far more than XLA's (4x at load 4 on 2 cores), so compare quiet runs.

  python bench/train_step.py                       # all three models, a few minutes
  python bench/train_step.py --models convnet --rounds 3 --steps 2 --json

PyTorch is a benchmark-only dependency: `pip install -r bench/requirements.txt`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import dataclasses  # pylint: disable=g-import-not-at-top,g-bad-import-order
import functools  # pylint: disable=g-import-not-at-top,g-bad-import-order

import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,g-bad-import-order
import numpy as np  # pylint: disable=g-import-not-at-top,g-bad-import-order

from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from vision_jax import ops, parallel, steps, tasks, train_state  # pylint: disable=g-import-not-at-top
from vision_jax.ops import conv  # pylint: disable=g-import-not-at-top

import torch  # pylint: disable=g-import-not-at-top,g-bad-import-order
from torch import nn  # pylint: disable=g-import-not-at-top,g-bad-import-order
from torch.nn import functional as F  # pylint: disable=g-import-not-at-top,g-bad-import-order

# name -> (vision_jax registry name, image size, default batch, PyTorch twin builder)
MODELS: dict[str, tuple[str, int, int, str]] = {
    'convnet': ('convnet', 32, 128, 'convnet'),
    'cifar_resnet18': ('cifar_resnet18', 32, 128, 'cifar_resnet18'),
    'resnet50': ('resnet50', 224, 8, 'resnet50'),
}
NUM_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9


# ---------------------------------------------------------------- PyTorch twins
class TorchConvNet(nn.Module):
  """Twin of vision_jax.models.cnn.ConvNet."""

  def __init__(self, image_size: int, num_classes: int):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
    self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
    self.fc1 = nn.Linear((image_size // 4)**2 * 128, 1024)
    self.head = nn.Linear(1024, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    # Flatten in NHWC order like ours (same FLOPs either way).
    x = x.permute(0, 2, 3, 1).flatten(1)
    return self.head(F.relu(self.fc1(x)))


class TorchBlock(nn.Module):
  """torchvision's BasicBlock / Bottleneck (v1.5: stride on the 3x3)."""

  def __init__(self, cin: int, width: int, stride: int, bottleneck: bool):
    super().__init__()
    cout = width * (4 if bottleneck else 1)
    if bottleneck:
      convs = [nn.Conv2d(cin, width, 1, bias=False),
               nn.Conv2d(width, width, 3, stride, 1, bias=False),
               nn.Conv2d(width, cout, 1, bias=False)]
    else:
      convs = [nn.Conv2d(cin, width, 3, stride, 1, bias=False),
               nn.Conv2d(width, cout, 3, 1, 1, bias=False)]
    self.convs = nn.ModuleList(convs)
    self.bns = nn.ModuleList(nn.BatchNorm2d(c.out_channels) for c in convs)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = x
    for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
      y = bn(conv(y))
      if i < len(self.convs) - 1:
        y = F.relu(y)
    return F.relu(y + (x if self.proj is None else self.proj(x)))


class TorchResNet(nn.Module):
  """Twin of vision_jax.models.resnet.ResNet (v1.5), 'imagenet' or 'cifar' stem."""

  def __init__(self, stages: tuple[int, ...], bottleneck: bool, stem: str,
               num_classes: int):
    super().__init__()
    self.stem = stem
    if stem == 'imagenet':
      self.stem_conv = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    else:
      self.stem_conv = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    self.stem_bn = nn.BatchNorm2d(64)
    blocks, cin = [], 64
    for i, n in enumerate(stages):
      for j in range(n):
        blocks.append(TorchBlock(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1, bottleneck))
        cin = 64 * 2**i * (4 if bottleneck else 1)
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem_conv(x)))
    if self.stem == 'imagenet':
      x = F.max_pool2d(x, 3, 2, 1)
    return self.head(self.blocks(x).mean((2, 3)))


def torch_model(name: str, image_size: int) -> nn.Module:
  if name == 'convnet':
    return TorchConvNet(image_size, NUM_CLASSES)
  if name == 'cifar_resnet18':
    return TorchResNet((2, 2, 2, 2), False, 'cifar', NUM_CLASSES)
  if name == 'resnet50':
    return TorchResNet((3, 4, 6, 3), True, 'imagenet', NUM_CLASSES)
  raise ValueError(f'No PyTorch twin for {name!r}.')


# ---------------------------------------------------------------- step builders
def _kernels(contender: str, mesh: jax.sharding.Mesh) -> ops.Kernels:
  if contender == 'ours_xla':
    return ops.XLA
  fast = ops.choose('on', platform='cpu', mesh=mesh)
  if contender == 'ours_plain_bn':
    return dataclasses.replace(fast, batch_norm_train=None)
  if contender == 'ours_eigen':
    return dataclasses.replace(fast, conv=functools.partial(
        conv.conv_general_dilated, mesh=mesh, use_onednn=False))
  return fast


def ours_step(name: str, image_size: int, batch: int, contender: str, seed: int = 0
              ) -> tuple[Callable[[], None], float, int]:
  """The training loop's jitted step on `contender`'s kernels: (run one step, compile s,
  #params).

  Over every jax device: with `--cpu_devices N` the batch is split over N CPU devices
  (data parallel, as `parallel.make_mesh` lays them out) and the fast ops run per device.
  """
  config = config_lib.base_config()
  config.seed, config.model.name = seed, name
  config.optim.update(name='sgd', momentum=MOMENTUM, learning_rate=LR, schedule='constant',
                      warmup_steps=0, weight_decay=0.0)
  config.train.batch_size = batch
  mesh = parallel.make_mesh(config)
  task = tasks.build(config)
  structure, state = train_state.create(
      task, mesh, num_classes=NUM_CLASSES, image_size=image_size, in_channels=3,
      steps_per_epoch=1, kernels=_kernels(contender, mesh))
  step = steps.jit_train_step(task, structure, mean=(0.5,) * 3,
                              std=(0.5,) * 3, num_classes=NUM_CLASSES, mesh=mesh)
  rng = np.random.default_rng(seed)
  host = {'image': rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
          'label': rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}
  images = parallel.to_global(host, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, images).compile()
  compile_s = time.perf_counter() - start
  held = [state]
  num_params = sum(train_state.num_params(state).values())

  def run() -> None:
    held[0], metrics = compiled(held[0], images)
    metrics['loss'].block_until_ready()  # Also keeps XLA:CPU from queueing steps.

  return run, compile_s, num_params


def torch_step(name: str, image_size: int, batch: int, channels_last: bool, seed: int = 0
               ) -> tuple[Callable[[], None], int]:
  torch.manual_seed(seed)
  model = torch_model(name, image_size)
  images = torch.rand(batch, 3, image_size, image_size)
  labels = torch.randint(0, NUM_CLASSES, (batch,))
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

  def run() -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    opt.step()

  return run, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- the benchmark
def bench_model(name: str, batch: int, rounds: int, steps: int, warmup: int,
                contenders: list[str]) -> dict[str, float]:
  registry_name, image_size, _, _ = MODELS[name]
  runs: dict[str, Callable[[], None]] = {}
  info = []
  for c in contenders:
    if c.startswith('ours'):
      runs[c], compile_s, n = ours_step(registry_name, image_size, batch, c)
      info.append(f'{c}: compile {compile_s:.1f} s, {n:,} params')
    else:
      runs[c], n = torch_step(name, image_size, batch, c == 'torch_cl')
      info.append(f'{c}: {n:,} params')
  print(f'== {name} ({image_size}x{image_size}x3, batch {batch}); ' + '; '.join(info),
        flush=True)
  for run in runs.values():
    for _ in range(warmup):
      run()
  times: dict[str, list[float]] = {c: [] for c in runs}
  for r in range(rounds):
    for c, run in runs.items():
      start = time.perf_counter()
      for _ in range(steps):
        run()
      times[c].append((time.perf_counter() - start) / steps)
    print(f'  round {r + 1}/{rounds}: ' + '  '.join(
        f'{c} {batch / times[c][-1]:.1f}' for c in runs) +
          f' img/s  (load {os.getloadavg()[0]:.2f})', flush=True)
  img_s = {c: batch / statistics.median(t) for c, t in times.items()}
  best = {c: batch / min(t) for c, t in times.items()}  # The least disturbed round.
  ref = next((c for c in ('torch_cl', 'torch') if c in img_s), None)
  print('  median img/s: ' + '  '.join(f'{c} {v:.1f}' for c, v in img_s.items()))
  print('  best img/s:   ' + '  '.join(f'{c} {v:.1f}' for c, v in best.items()))
  result = {'ours_img_s': img_s.get('ours'), 'torch_img_s': img_s.get(ref)}
  if 'ours' in img_s and ref:
    result['ratio'] = img_s['ours'] / img_s[ref]
    result['ratio_best'] = best['ours'] / best[ref]
    print(f'  ratio ours/{ref}: {result["ratio"]:.2f} (medians), '
          f'{result["ratio_best"]:.2f} (best rounds)', flush=True)
  extra = {'ours_plain_bn': 'ours_plain_bn_img_s', 'ours_eigen': 'ours_eigen_img_s',
           'ours_xla': 'ours_xla_img_s', 'torch': 'torch_nchw_img_s'}
  extra.pop(ref, None)
  result.update({extra[c]: v for c, v in img_s.items() if c in extra})
  result = {k: round(v, 3) for k, v in result.items() if v is not None}
  return {**result, 'reference': ref, 'batch': batch}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default=','.join(MODELS),
                      help=f'comma-separated subset of {",".join(MODELS)}')
  parser.add_argument('--batch', type=int, default=0, help='0: the model default')
  parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds')
  parser.add_argument('--steps', type=int, default=2, help='timed steps per round')
  parser.add_argument('--warmup', type=int, default=3,
                      help='untimed steps first (compilation, the heap settling)')
  parser.add_argument('--contenders',
                      default='ours,ours_plain_bn,ours_eigen,ours_xla,torch_cl,torch')
  parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                      help='PyTorch threads; XLA:CPU uses every core')
  parser.add_argument('--cpu_devices', type=int, default=1,
                      help='split the host into this many XLA:CPU devices, data parallel')
  parser.add_argument('--json', action='store_true', help='end with one JSON line')
  args = parser.parse_args(argv)
  jax.config.update('jax_num_cpu_devices', args.cpu_devices)  # Before the backend starts.
  torch.set_num_threads(args.threads)
  names = [m for m in args.models.split(',') if m]
  unknown = [m for m in names if m not in MODELS]
  if unknown:
    parser.error(f'unknown model(s) {unknown}; choose from {list(MODELS)}')
  contenders = [c for c in args.contenders.split(',') if c]
  print(f'jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} devices), '
        f'torch {torch.__version__} '
        f'({torch.get_num_threads()} threads), {os.cpu_count()} cores, '
        f'load {os.getloadavg()[0]:.2f}', flush=True)
  results = {}
  for name in names:
    batch = args.batch or MODELS[name][2]
    results[name] = bench_model(name, batch, args.rounds, args.steps, args.warmup,
                                contenders)
  print(f'load average at the end: {os.getloadavg()[0]:.2f}')
  if args.json:
    print(json.dumps(results))


if __name__ == '__main__':
  main()
