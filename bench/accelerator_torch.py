"""The PyTorch side of bench/accelerator.py: the same models, batches and optimiser.

torchvision's ResNets where torchvision is installed (the GPU machine has it), else the
twins of bench/train_step.py (same layers and parameter counts); channels_last, bf16
autocast over fp32 weights, SGD with Nesterov momentum 0.9 for training,
`torch.inference_mode` for evaluation. Inputs are uint8 NHWC images already on the device,
normalised inside the step as ours are. `torch.compile` is optional (mode 'compile').
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import torch
from torch.nn import functional as F

BENCH = os.path.dirname(os.path.abspath(__file__))

# (stages, bottleneck, stem) of the twins in bench/train_step.py.
_TWINS = {'resnet18': ((2, 2, 2, 2), False, 'imagenet'),
          'resnet50': ((3, 4, 6, 3), True, 'imagenet'),
          'cifar_resnet18': ((2, 2, 2, 2), False, 'cifar')}


def torch_model(name: str, num_classes: int) -> tuple[torch.nn.Module, str]:
  """(model, where it comes from) for a vision_jax registry name."""
  if name in ('resnet18', 'resnet50'):
    try:
      import torchvision  # pylint: disable=g-import-not-at-top
      return getattr(torchvision.models, name)(num_classes=num_classes), \
          f'torchvision.models.{name}'
    except ImportError:
      pass
  if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
  from train_step import TorchResNet  # pylint: disable=g-import-not-at-top
  stages, bottleneck, stem = _TWINS[name]
  return TorchResNet(stages, bottleneck, stem, num_classes), 'bench/train_step.TorchResNet'


def _sync(device: str) -> None:
  if device == 'cuda':
    torch.cuda.synchronize()


def measure(figure: dict[str, Any], *, mode: str, steps: int, rounds: int, warmup: int
            ) -> dict[str, Any]:
  """One figure with PyTorch: images/s (median over rounds), first-step (compile) time and
  peak CUDA memory."""
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.backends.cudnn.benchmark = True
  torch.manual_seed(0)
  batch, size, classes = figure['batch'], figure['image_size'], figure['num_classes']
  model, source = torch_model(figure['model'], classes)
  model = model.to(device, memory_format=torch.channels_last)
  images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
  labels = torch.randint(0, classes, (batch,), device=device)
  mean = torch.tensor(figure['mean'], device=device).view(1, 3, 1, 1) * 255
  std = torch.tensor(figure['std'], device=device).view(1, 3, 1, 1) * 255
  forward = torch.compile(model, dynamic=False) if mode == 'compile' else model

  def inputs() -> torch.Tensor:
    # NHWC memory seen as NCHW is channels_last already; arithmetic keeps the layout.
    return (images.permute(0, 3, 1, 2).float() - mean) / std

  if figure['task'] == 'train':
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)

    def step() -> None:
      opt.zero_grad(set_to_none=True)
      with torch.autocast(device, dtype=torch.bfloat16):
        loss = F.cross_entropy(forward(inputs()), labels)
      loss.backward()
      opt.step()
  else:
    model.eval()

    def step() -> None:
      with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        logits = forward(inputs()).float()
        F.cross_entropy(logits, labels, reduction='none')
        torch.topk(logits, 5)

  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  step()  # torch.compile compiles here.
  _sync(device)
  first_step_s = time.perf_counter() - start

  def run(n: int) -> None:
    for _ in range(n):
      step()
    _sync(device)

  run(warmup)
  per_step = []
  for _ in range(rounds):
    start = time.perf_counter()
    run(steps)
    per_step.append((time.perf_counter() - start) / steps)
  result = {'contender': f'torch_{mode}', 'img_s': batch / statistics.median(per_step),
            'img_s_rounds': [batch / t for t in per_step],
            'step_ms': 1e3 * statistics.median(per_step), 'first_step_s': first_step_s,
            'torch_model': source, 'torch_device': (torch.cuda.get_device_name(0)
                                                    if device == 'cuda' else 'cpu')}
  if device == 'cuda':
    result['peak_memory_bytes'] = float(torch.cuda.max_memory_allocated())
    result['peak_memory_source'] = 'torch.cuda.max_memory_allocated'
  del model, forward, images
  if device == 'cuda':
    torch.cuda.empty_cache()
  return result
