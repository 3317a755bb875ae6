"""Detection train-step throughput, side by side: our jitted FCOS step vs torchvision's.

FCOS ResNet-50-FPN (91 classes), square images of `--image_size` px (512: no resize on
either side), random images and a few random ground-truth boxes per image (the same arrays
on both sides, drawn from one seed), SGD momentum 0.9 with weight decay 1e-4, fp32, random
weights, the detector's own loss (focal + GIoU + centerness) on both sides:
  ours      the training loop's own jitted step (`steps.jit_train_step`) of the 'detection'
            task built from configs/coco_fcos_resnet50_fpn.py (image_size, min_size and
            max_size set to `--image_size`, constant lr), on the CPU fast path
            (`ops.choose('on')`: oneDNN convolutions where built, our gradients)
  ours_xla  the same step on XLA's own ops (what a GPU or TPU runs)
  torch_cl  torchvision's FCOS in train mode (`model(images, targets)` returns its losses;
            min_size = max_size = `--image_size`, so its transform normalises, keeps the
            size and pads to a multiple of 32), channels_last
  torch     the same, NCHW
`--frozen recipe` (default) trains what the COCO recipe trains on both sides: the stem, the
first stage and every BatchNorm fixed (ours: the config's `optim.freeze` and the model's
frozen BatchNorm; torchvision: FrozenBatchNorm2d and trainable_backbone_layers=3, built
exactly as `fcos_resnet50_fpn` builds them for a pretrained backbone). `--frozen none`
trains everything with BatchNorm on batch statistics on both sides (torchvision:
`fcos_resnet50_fpn(weights=None, weights_backbone=None)` as is).

Each PyTorch contender runs in its own worker process (this script with `--worker`) under
`--torch_python` (default: this interpreter), so torchvision may live in another virtual
environment than jax. The contenders run interleaved (round r runs each for `--steps`
steps, one after the other) so that all see the same machine load; each figure is the
median over rounds. Mind the load printed with each round (bench/README.md, "Machine").

  python bench/detection_step.py --torch_python /work/torchenv/bin/python
  python bench/detection_step.py --contenders ours,torch_cl --rounds 3 --steps 2 --json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
NUM_CLASSES = 91  # torchvision's COCO detectors: the category ids, 0 and unused ids included.
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
MAX_BOXES = 100  # Ours: ground-truth rows per image, padded and masked (the COCO config's).


def random_batch(batch: int, image_size: int, boxes_per_image: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(uint8 images [B, S, S, 3], float32 boxes [B, K, 4] x1 y1 x2 y2 in pixels, int32
  labels [B, K] in 1..90): the same arrays in both processes for one seed."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
  size = rng.uniform(24, image_size / 2, (batch, boxes_per_image, 2))
  corner = rng.uniform(0, 1, (batch, boxes_per_image, 2)) * (image_size - size)
  boxes = np.concatenate([corner, corner + size], -1).astype(np.float32)
  labels = rng.integers(1, NUM_CLASSES, (batch, boxes_per_image)).astype(np.int32)
  return images, boxes, labels


# ---------------------------------------------------------------- torchvision (worker)
def torch_worker(args: argparse.Namespace) -> None:
  """Serves `run N` lines on stdin: N train steps, answers `seconds loss` on stdout."""
  # pylint: disable=g-import-not-at-top
  import torch
  import torchvision
  from torchvision.models import resnet50
  from torchvision.models.detection import FCOS, fcos_resnet50_fpn
  from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
  from torchvision.ops import misc as misc_nn_ops
  from torchvision.ops.feature_pyramid_network import LastLevelP6P7
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  size = args.image_size
  if args.frozen == 'recipe':  # fcos_resnet50_fpn's build for a pretrained backbone.
    backbone = resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(backbone, 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    model = FCOS(backbone, NUM_CLASSES, min_size=size, max_size=size)
  else:
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                              min_size=size, max_size=size)
  images, boxes, labels = random_batch(args.batch, size, args.boxes, args.seed)
  inputs = [torch.from_numpy(im).permute(2, 0, 1).float().div(255) for im in images]
  targets = [{'boxes': torch.from_numpy(b), 'labels': torch.from_numpy(l).long()}
             for b, l in zip(boxes, labels)]
  if args.worker == 'torch_cl':
    # The transform batches the images into a new NCHW tensor; channels_last weights make
    # the convolutions run channels_last from the first one on.
    model = model.to(memory_format=torch.channels_last)
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  print(f'ready torch {torch.__version__} torchvision {torchvision.__version__} '
        f'{torch.get_num_threads()} threads, {sum(p.numel() for p in params):,} trained '
        f'of {sum(p.numel() for p in model.parameters()):,} params', flush=True)
  for line in sys.stdin:
    n = int(line.split()[1])
    start = time.perf_counter()
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      loss = sum(model(inputs, targets).values())
      loss.backward()
      opt.step()
    print(f'{time.perf_counter() - start} {float(loss.detach())}', flush=True)


class TorchContender:
  """A torch worker process: `run(n)` -> (seconds for n steps, last loss)."""

  def __init__(self, name: str, args: argparse.Namespace):
    command = [args.torch_python, os.path.abspath(__file__), '--worker', name,
               '--threads', str(args.threads), '--image_size', str(args.image_size),
               '--batch', str(args.batch), '--boxes', str(args.boxes),
               '--frozen', args.frozen, '--seed', str(args.seed)]
    self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    self.info = self.proc.stdout.readline().strip()
    if not self.info.startswith('ready'):
      raise RuntimeError(f'The {name} worker ({args.torch_python}) did not start: see its '
                         'stderr above (torch and torchvision must import there).')
    self.info = self.info[len('ready '):]

  def run(self, n: int) -> tuple[float, float]:
    self.proc.stdin.write(f'run {n}\n')
    self.proc.stdin.flush()
    seconds, loss = self.proc.stdout.readline().split()
    return float(seconds), float(loss)

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


# ---------------------------------------------------------------- ours
def ours_config(image_size: int, batch: int, frozen: str, seed: int):
  """configs/coco_fcos_resnet50_fpn.py at `image_size`, batch `batch`, constant lr."""
  spec = importlib.util.spec_from_file_location(
      'coco_fcos', os.path.join(REPO, 'configs', 'coco_fcos_resnet50_fpn.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.seed = seed
  config.dataset.image_size = image_size
  config.task.min_size = config.task.max_size = image_size
  config.train.batch_size = batch
  config.optim.update(schedule='constant', warmup_steps=0, learning_rate=LR)
  if frozen == 'none':
    config.optim.freeze = ()
    config.model.frozen_batch_norm = False
  return config


def ours_step(contender: str, args: argparse.Namespace
              ) -> tuple[Callable[[int], tuple[float, float]], str]:
  """The training loop's jitted detection step: (run n steps -> (s, last loss), info)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from vision_jax import config as config_lib
  from vision_jax import ops, parallel, steps, tasks, train_state
  from vision_jax.data import preprocess
  config = ours_config(args.image_size, args.batch, args.frozen, args.seed)
  mesh = parallel.make_mesh(config)
  task = tasks.build(config)
  config_lib.validate(config, jax.device_count(), task)
  kernels = ops.XLA if contender == 'ours_xla' else ops.choose('on', platform='cpu', mesh=mesh)
  structure, state = train_state.create(
      task, mesh, num_classes=NUM_CLASSES, image_size=args.image_size, in_channels=3,
      steps_per_epoch=1, kernels=kernels)
  ds = config.dataset
  mean, std = preprocess.mean_std(ds.mean, ds.std, ds.normalization, 3)
  step = steps.jit_train_step(task, structure, mean=mean, std=std, num_classes=NUM_CLASSES,
                              mesh=mesh)
  images, boxes, labels = random_batch(args.batch, args.image_size, args.boxes, args.seed)
  k = args.boxes
  host = {'image': images,
          'boxes': np.zeros((args.batch, MAX_BOXES, 4), np.float32),
          'classes': np.zeros((args.batch, MAX_BOXES), np.int32),
          'box_mask': np.zeros((args.batch, MAX_BOXES), np.float32)}
  host['boxes'][:, :k], host['classes'][:, :k], host['box_mask'][:, :k] = boxes, labels, 1.0
  batch = parallel.to_global(host, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  held = [state]
  num_params = sum(train_state.num_params(state).values())

  def run(n: int) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(n):
      held[0], metrics = compiled(held[0], batch)
      metrics['loss'].block_until_ready()  # Also keeps XLA:CPU from queueing steps.
    return time.perf_counter() - start, float(metrics['loss'])

  return run, f'compile {compile_s:.1f} s, {num_params:,} params'


# ---------------------------------------------------------------- the benchmark
def bench(args: argparse.Namespace, contenders: list[str]) -> dict:
  runs: dict[str, Callable[[int], tuple[float, float]]] = {}
  workers = []
  try:
    for c in sorted(contenders, key=lambda c: c.startswith('ours')):  # Workers first.
      if c.startswith('ours'):
        runs[c], info = ours_step(c, args)
      else:
        workers.append(TorchContender(c, args))
        runs[c], info = workers[-1].run, workers[-1].info
      print(f'{c}: {info}', flush=True)
    runs = {c: runs[c] for c in contenders}
    print(f'== FCOS ResNet-50-FPN, {args.image_size}x{args.image_size}x3, batch {args.batch}, '
          f'{args.boxes} boxes per image, frozen={args.frozen}', flush=True)
    losses = {}
    for c, run in runs.items():
      if args.warmup:
        _, losses[c] = run(args.warmup)
    times: dict[str, list[float]] = {c: [] for c in runs}
    for r in range(args.rounds):
      for c, run in runs.items():
        seconds, losses[c] = run(args.steps)
        times[c].append(seconds / args.steps)
      print(f'  round {r + 1}/{args.rounds}: ' + '  '.join(
          f'{c} {args.batch / times[c][-1]:.2f}' for c in runs) +
            f' img/s  (load {os.getloadavg()[0]:.2f})', flush=True)
  finally:
    for w in workers:
      w.close()
  img_s = {c: args.batch / statistics.median(t) for c, t in times.items()}
  best = {c: args.batch / min(t) for c, t in times.items()}
  print('  median img/s: ' + '  '.join(f'{c} {v:.2f}' for c, v in img_s.items()))
  print('  best img/s:   ' + '  '.join(f'{c} {v:.2f}' for c, v in best.items()))
  print('  last loss:    ' + '  '.join(f'{c} {v:.3f}' for c, v in losses.items()))
  result = {f'{c}_img_s': round(v, 3) for c, v in img_s.items()}
  if 'ours' in img_s:
    for ref in (c for c in ('torch_cl', 'torch') if c in img_s):
      result[f'ratio_{ref}'] = round(img_s['ours'] / img_s[ref], 3)
      print(f'  ratio ours/{ref}: {img_s["ours"] / img_s[ref]:.2f} (medians), '
            f'{best["ours"] / best[ref]:.2f} (best rounds)', flush=True)
  return result


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--contenders', default='ours,torch_cl,torch',
                      help='comma-separated subset of ours,ours_xla,torch_cl,torch')
  parser.add_argument('--image_size', type=int, default=512)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--boxes', type=int, default=4, help='ground-truth boxes per image')
  parser.add_argument('--frozen', choices=('recipe', 'none'), default='recipe')
  parser.add_argument('--rounds', type=int, default=3, help='interleaved rounds')
  parser.add_argument('--steps', type=int, default=2, help='timed steps per round')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed steps first (after compilation; the heap settling)')
  parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                      help='PyTorch threads; XLA:CPU uses every core')
  parser.add_argument('--torch_python', default=sys.executable,
                      help='the interpreter of the PyTorch workers (torch + torchvision)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
  parser.add_argument('--json', action='store_true', help='end with one JSON line')
  args = parser.parse_args(argv)
  if args.worker:
    torch_worker(args)
    return
  contenders = [c for c in args.contenders.split(',') if c]
  unknown = set(contenders) - {'ours', 'ours_xla', 'torch_cl', 'torch'}
  if unknown:
    parser.error(f'unknown contender(s) {sorted(unknown)}')
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  flags = sorted(set(subprocess.run(['grep', '-o', r'avx512[a-z_0-9]*', '/proc/cpuinfo'],
                                    capture_output=True, text=True).stdout.split()))
  print(f'jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} devices), '
        f'{os.cpu_count()} cores, {" ".join(flags) or "no AVX-512"}, '
        f'load {os.getloadavg()[0]:.2f}', flush=True)
  result = bench(args, contenders)
  print(f'load average at the end: {os.getloadavg()[0]:.2f}')
  if args.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
